//! The model layer by layer: every operator's backward against central finite differences
//! of its forward, forwards against candle's where candle has the operator, PyTorch's
//! pooling conventions, and the hook-point and backward-rule mechanisms on the digits CNN.

use std::path::PathBuf;

use ialgebra::model::kernels::Window2d;
use ialgebra::model::{BackwardRule, Batch, Forward, Gradient, Layer, Model, Op, Step};
use ialgebra::ops::rng::Rng;

fn layer(op: Op, in_shape: &[usize], out_shape: &[usize]) -> Layer {
    Layer {
        name: "t".into(),
        kind: "t".into(),
        op,
        inputs: vec![0],
        in_shape: in_shape.to_vec(),
        out_shape: out_shape.to_vec(),
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed, 0);
    (0..n).map(|_| r.normal() as f32).collect()
}

/// Checks each input-gradient element against (L(x + h e_i) − L(x − h e_i)) / 2h with
/// L = ⟨f(x), gy⟩ accumulated in f64. Inputs are moved off the kinks of ReLU and max.
fn gradcheck(l: &Layer, batch: usize, seed: u64) {
    let in_len: usize = l.in_shape.iter().product();
    let mut shape = vec![batch];
    shape.extend_from_slice(&l.in_shape);
    let mut xs = random(batch * in_len, seed);
    for v in xs.iter_mut() {
        if v.abs() < 0.05 {
            *v += 0.1f32.copysign(*v);
        }
    }
    let x = Batch::new(shape.clone(), xs.clone()).unwrap();
    let (y, memo) = l.forward(&x, true).unwrap();
    let gy = Batch::new(y.shape().to_vec(), random(y.data().len(), seed + 1)).unwrap();
    let gx = l.backward(&x, &y, &memo, &gy).unwrap();
    let loss = |data: Vec<f32>| -> f64 {
        let (y, _) = l.forward(&Batch::new(shape.clone(), data).unwrap(), false).unwrap();
        y.data().iter().zip(gy.data()).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let h = 1e-2f32;
    for i in 0..xs.len() {
        let mut plus = xs.clone();
        plus[i] += h;
        let mut minus = xs.clone();
        minus[i] -= h;
        let numeric = (loss(plus) - loss(minus)) / (2.0 * h as f64);
        let analytic = gx.data()[i] as f64;
        let tol = 2e-2 * (1.0 + numeric.abs());
        assert!(
            (numeric - analytic).abs() < tol,
            "{}: d/dx[{i}] numeric {numeric} vs backward {analytic}",
            l.kind
        );
    }
}

fn win(k: usize, s: usize, p: usize, d: usize) -> Window2d {
    Window2d {
        kernel: (k, k),
        stride: (s, s),
        padding: (p, p),
        dilation: (d, d),
    }
}

fn conv(c: usize, h: usize, w: usize, out: usize, groups: usize, wn: Window2d, seed: u64) -> Layer {
    let (oh, ow) = wn.out_hw(h, w).unwrap();
    let weight = random(out * (c / groups) * wn.kernel.0 * wn.kernel.1, seed);
    let bias = Some(random(out, seed + 7));
    let mut l = layer(
        Op::Conv2d {
            out,
            groups,
            win: wn,
            weight,
            bias,
            adjoint: Default::default(),
        },
        &[c, h, w],
        &[out, oh, ow],
    );
    l.kind = "conv2d".into();
    l
}

#[test]
fn backward_matches_finite_differences() {
    let cases = vec![
        layer(
            Op::Linear {
                inp: 5,
                out: 3,
                weight: random(15, 1),
                bias: Some(random(3, 2)),
                transposed: Default::default(),
            },
            &[5],
            &[3],
        ),
        layer(
            Op::Linear {
                inp: 4,
                out: 2,
                weight: random(8, 3),
                bias: None,
                transposed: Default::default(),
            },
            &[3, 4],
            &[3, 2],
        ),
        conv(2, 5, 6, 4, 1, win(3, 1, 1, 1), 4),
        conv(4, 7, 7, 6, 2, win(3, 2, 1, 2), 5),
        conv(3, 6, 6, 3, 3, win(2, 2, 0, 1), 6),
        layer(Op::Relu, &[7], &[7]),
        layer(Op::LeakyRelu { slope: 0.1 }, &[7], &[7]),
        layer(Op::Sigmoid, &[7], &[7]),
        layer(Op::Tanh, &[7], &[7]),
        layer(Op::Gelu { tanh_approx: false }, &[7], &[7]),
        layer(Op::Gelu { tanh_approx: true }, &[7], &[7]),
        layer(Op::Softmax { axis: 0 }, &[6], &[6]),
        layer(Op::Softmax { axis: 0 }, &[3, 2], &[3, 2]),
        layer(Op::Softmax { axis: 1 }, &[2, 4], &[2, 4]),
        layer(Op::MaxPool2d { win: win(2, 2, 0, 1) }, &[2, 4, 4], &[2, 2, 2]),
        layer(Op::MaxPool2d { win: win(3, 2, 1, 1) }, &[2, 5, 5], &[2, 3, 3]),
        layer(Op::MaxPool2d { win: win(2, 1, 0, 2) }, &[1, 5, 5], &[1, 3, 3]),
        layer(
            Op::AvgPool2d {
                win: win(2, 2, 0, 1),
                count_include_pad: true,
            },
            &[2, 4, 4],
            &[2, 2, 2],
        ),
        layer(
            Op::AvgPool2d {
                win: win(3, 2, 1, 1),
                count_include_pad: true,
            },
            &[1, 5, 5],
            &[1, 3, 3],
        ),
        layer(
            Op::AvgPool2d {
                win: win(3, 2, 1, 1),
                count_include_pad: false,
            },
            &[1, 5, 5],
            &[1, 3, 3],
        ),
        layer(Op::AdaptiveAvgPool2d { out: (3, 2) }, &[2, 5, 4], &[2, 3, 2]),
        layer(Op::Flatten, &[2, 3, 2], &[12]),
        layer(Op::Identity, &[4], &[4]),
        layer(
            Op::BatchNorm {
                scale: vec![0.5, -2.0],
                shift: vec![1.0, 0.3],
            },
            &[2, 3, 3],
            &[2, 3, 3],
        ),
        layer(
            Op::BatchNorm {
                scale: vec![0.5, -2.0, 3.0],
                shift: vec![1.0, 0.3, 0.0],
            },
            &[3],
            &[3],
        ),
    ];
    for (i, l) in cases.iter().enumerate() {
        gradcheck(l, 2, 100 + i as u64);
    }
}

fn candle_tensor(b: &Batch) -> candle_core::Tensor {
    candle_core::Tensor::from_vec(b.data().to_vec(), b.shape(), &candle_core::Device::Cpu).unwrap()
}

fn assert_same(ours: &Batch, theirs: &candle_core::Tensor, what: &str) {
    let t: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ours.data().len(), t.len(), "{what}: sizes");
    for (i, (a, b)) in ours.data().iter().zip(&t).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "{what}: element {i}: ours {a}, candle {b}"
        );
    }
}

#[test]
fn forwards_match_candle() {
    use candle_core::{D, Module};
    for (c, out, groups, wn, seed) in [
        (2, 4, 1, win(3, 1, 1, 1), 1),
        (4, 6, 2, win(3, 2, 1, 2), 2),
        (3, 3, 3, win(2, 2, 0, 1), 3),
    ] {
        let l = conv(c, 7, 7, out, groups, wn, seed);
        let x = Batch::new(vec![3, c, 7, 7], random(3 * c * 49, seed + 9)).unwrap();
        let (y, _) = l.forward(&x, false).unwrap();
        let Op::Conv2d { weight, bias, .. } = &l.op else {
            unreachable!()
        };
        let dev = candle_core::Device::Cpu;
        let w =
            candle_core::Tensor::from_vec(weight.clone(), (out, c / groups, wn.kernel.0, wn.kernel.1), &dev).unwrap();
        let b = candle_core::Tensor::from_vec(bias.clone().unwrap(), out, &dev).unwrap();
        let cfg = candle_nn::Conv2dConfig {
            padding: wn.padding.0,
            stride: wn.stride.0,
            dilation: wn.dilation.0,
            groups,
            cudnn_fwd_algo: None,
        };
        let theirs = candle_nn::Conv2d::new(w, Some(b), cfg)
            .forward(&candle_tensor(&x))
            .unwrap();
        assert_same(&y, &theirs, "conv2d");
    }
    let x = Batch::new(vec![2, 3, 4], random(24, 11)).unwrap();
    let t = candle_tensor(&x);
    let check = |op: Op, theirs: candle_core::Tensor, what: &str| {
        let (y, _) = layer(op, &[3, 4], &[3, 4]).forward(&x, false).unwrap();
        assert_same(&y, &theirs, what);
    };
    check(Op::Sigmoid, candle_nn::ops::sigmoid(&t).unwrap(), "sigmoid");
    check(Op::Tanh, t.tanh().unwrap(), "tanh");
    check(Op::Gelu { tanh_approx: false }, t.gelu_erf().unwrap(), "gelu");
    check(Op::Gelu { tanh_approx: true }, t.gelu().unwrap(), "gelu tanh");
    check(
        Op::Softmax { axis: 1 },
        candle_nn::ops::softmax(&t, D::Minus1).unwrap(),
        "softmax",
    );
    check(
        Op::Softmax { axis: 0 },
        candle_nn::ops::softmax(&t, 1).unwrap(),
        "softmax axis 0",
    );
    let img = Batch::new(vec![2, 2, 6, 6], random(144, 12)).unwrap();
    let (y, _) = layer(Op::MaxPool2d { win: win(2, 2, 0, 1) }, &[2, 6, 6], &[2, 3, 3])
        .forward(&img, false)
        .unwrap();
    assert_same(&y, &candle_tensor(&img).max_pool2d(2).unwrap(), "maxpool2d");
    // the forward that keeps its argmax for a backward gives the same maxima, NaN included
    let mut with_nan = img.clone();
    with_nan.data_mut()[7] = f32::NAN;
    let pool = layer(Op::MaxPool2d { win: win(2, 2, 0, 1) }, &[2, 6, 6], &[2, 3, 3]);
    let (fast, _) = pool.forward(&with_nan, false).unwrap();
    let (kept, _) = pool.forward(&with_nan, true).unwrap();
    let bits = |b: &Batch| b.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&fast), bits(&kept));
    assert!(fast.data().iter().any(|v| v.is_nan()), "NaN propagates as in PyTorch");
    let (y, _) = layer(
        Op::AvgPool2d {
            win: win(3, 3, 0, 1),
            count_include_pad: true,
        },
        &[2, 6, 6],
        &[2, 2, 2],
    )
    .forward(&img, false)
    .unwrap();
    assert_same(&y, &candle_tensor(&img).avg_pool2d(3).unwrap(), "avgpool2d");
}

#[test]
fn padded_pools_follow_pytorch() {
    // plane 1..9, kernel 3, stride 2, padding 1 → 2×2 outputs
    let x = Batch::new(vec![1, 1, 3, 3], (1..=9).map(|v| v as f32).collect()).unwrap();
    let w = win(3, 2, 1, 1);
    let (avg, _) = layer(
        Op::AvgPool2d {
            win: w,
            count_include_pad: true,
        },
        &[1, 3, 3],
        &[1, 2, 2],
    )
    .forward(&x, false)
    .unwrap();
    // the top-left window holds 1, 2, 4, 5 among 9 cells (padding counted)
    assert_eq!(avg.data(), &[12.0 / 9.0, 16.0 / 9.0, 24.0 / 9.0, 28.0 / 9.0]);
    let (avg, _) = layer(
        Op::AvgPool2d {
            win: w,
            count_include_pad: false,
        },
        &[1, 3, 3],
        &[1, 2, 2],
    )
    .forward(&x, false)
    .unwrap();
    assert_eq!(avg.data(), &[3.0, 4.0, 6.0, 7.0]);
    let (max, _) = layer(Op::MaxPool2d { win: w }, &[1, 3, 3], &[1, 2, 2])
        .forward(&x, false)
        .unwrap();
    assert_eq!(max.data(), &[5.0, 6.0, 8.0, 9.0]);
    // adaptive 3 → 2 bins: [0, 2) and [1, 3)
    let (ad, _) = layer(Op::AdaptiveAvgPool2d { out: (2, 2) }, &[1, 3, 3], &[1, 2, 2])
        .forward(&x, false)
        .unwrap();
    assert_eq!(ad.data(), &[3.0, 4.0, 6.0, 7.0]);
}

#[test]
fn max_pool_sends_gradient_to_first_maximum() {
    let x = Batch::new(vec![1, 1, 2, 2], vec![1.0, 3.0, 3.0, 0.0]).unwrap();
    let l = layer(Op::MaxPool2d { win: win(2, 2, 0, 1) }, &[1, 2, 2], &[1, 1, 1]);
    let (y, memo) = l.forward(&x, true).unwrap();
    let gx = l
        .backward(&x, &y, &memo, &Batch::new(vec![1, 1, 1, 1], vec![1.0]).unwrap())
        .unwrap();
    assert_eq!(gx.data(), &[0.0, 1.0, 0.0, 0.0]);
}

fn digits() -> Model {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Model::load(
        &root.join("models/digits_cnn.safetensors"),
        &root.join("models/digits_cnn.json"),
    )
    .unwrap()
}

fn input() -> Batch {
    Batch::new(
        vec![2, 1, 8, 8],
        (0..128).map(|i| ((i * 37) % 17) as f32 / 16.0).collect(),
    )
    .unwrap()
}

#[test]
fn hook_points_can_be_read_and_overwritten() {
    let m = digits();
    let conv2 = m.layer_index("conv2").unwrap();
    let full = m.run(input(), &m.full()).unwrap();
    // Reading: the tape holds every hook point.
    let at_conv2 = full.hook(conv2).unwrap().clone();
    assert_eq!(at_conv2.shape(), &[2, 16, 8, 8]);
    // Running from a hook point onwards reproduces the logits.
    let rest = m
        .run(
            at_conv2.clone(),
            &Forward {
                from: conv2 + 1,
                to: m.layers.len(),
                keep: false,
                hook: None,
            },
        )
        .unwrap();
    assert_eq!(rest.output(), full.output());
    // Overwriting: zero channel 3 of conv2 through a hook, and compare with a manual
    // forward from a patched activation.
    let patch = |index: usize, y: &mut Batch| -> ialgebra::error::Result<()> {
        if index == conv2 {
            for r in 0..y.rows() {
                y.row_mut(r)[3 * 64..4 * 64].fill(0.0);
            }
        }
        Ok(())
    };
    let patched = m
        .run(
            input(),
            &Forward {
                from: 0,
                to: m.layers.len(),
                keep: false,
                hook: Some(&patch),
            },
        )
        .unwrap();
    let mut manual = at_conv2;
    for r in 0..2 {
        manual.row_mut(r)[3 * 64..4 * 64].fill(0.0);
    }
    let expected = m
        .run(
            manual,
            &Forward {
                from: conv2 + 1,
                to: m.layers.len(),
                keep: false,
                hook: None,
            },
        )
        .unwrap();
    assert_eq!(patched.output(), expected.output());
    assert_ne!(patched.output(), full.output());
}

/// A backward rule replaces the gradient of the layers it chooses; `observe` sees the
/// gradient at each hook point on the way down.
#[test]
fn backward_rules_replace_layer_gradients() {
    struct BlockRelu3;
    impl BackwardRule for BlockRelu3 {
        fn backward(&self, step: &Step) -> Option<ialgebra::error::Result<Batch>> {
            (step.layer.name == "relu3").then(|| Ok(Batch::zeros(step.gy.shape().to_vec())))
        }
    }
    let m = digits();
    let tape = m.run(input(), &m.full()).unwrap();
    let mut seed = Batch::zeros(vec![2, 10]);
    seed.row_mut(0)[3] = 1.0;
    seed.row_mut(1)[3] = 1.0;
    let mut seen = Vec::new();
    let plain = m
        .backward(&tape, seed.clone(), &Gradient, &mut |i, g| {
            seen.push((i, g.shape().to_vec()))
        })
        .unwrap();
    assert!(plain.data().iter().any(|v| *v != 0.0));
    assert_eq!(seen.len(), m.layers.len());
    assert_eq!(seen[0], (8, vec![2, 10]));
    let blocked = m.backward(&tape, seed, &BlockRelu3, &mut |_, _| {}).unwrap();
    assert!(blocked.data().iter().all(|v| *v == 0.0));
}
