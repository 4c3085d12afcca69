//! The layer types of the architecture format: each has a forward that keeps what its
//! backward needs (the `Memo`) and a backward that returns the input gradient only.

use super::kernels::{self, ConvGeom, Planes, Window2d};
use super::tensor::Batch;
use crate::error::{Error, Result};

/// A layer with its weights, ready to run.
#[derive(Clone, Debug)]
pub enum Op {
    Linear {
        inp: usize,
        out: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    Conv2d {
        out: usize,
        groups: usize,
        win: Window2d,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    Relu,
    LeakyRelu {
        slope: f32,
    },
    Sigmoid,
    Tanh,
    Gelu {
        tanh_approx: bool,
    },
    /// Softmax along `axis` of the sample (the batch axis excluded).
    Softmax {
        axis: usize,
    },
    MaxPool2d {
        win: Window2d,
    },
    AvgPool2d {
        win: Window2d,
        count_include_pad: bool,
    },
    AdaptiveAvgPool2d {
        out: (usize, usize),
    },
    /// Reshape only: values keep their order (PyTorch's flatten is row-major).
    Flatten,
    Identity,
    /// Eval-mode batch norm folded to a per-channel affine map `x·scale + shift`.
    BatchNorm {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
}

/// What a forward pass keeps for the backward besides the layer's input and output.
#[derive(Clone, Debug, Default)]
pub enum Memo {
    #[default]
    None,
    /// For each max-pool output, the index of its maximum in its plane.
    Argmax(Vec<u32>),
}

/// A layer of a model: its hook-point name, its architecture type and the op.
#[derive(Clone, Debug)]
pub struct Layer {
    pub name: String,
    pub kind: String,
    pub op: Op,
    /// Shape of one sample of the input / output (batch dimension excluded).
    pub in_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
}

impl Op {
    pub fn param_count(&self) -> usize {
        match self {
            Op::Linear { weight, bias, .. } | Op::Conv2d { weight, bias, .. } => {
                weight.len() + bias.as_ref().map_or(0, Vec::len)
            }
            // weight, bias (the running statistics are buffers, not parameters)
            Op::BatchNorm { scale, .. } => 2 * scale.len(),
            _ => 0,
        }
    }

    /// True for element-wise nonlinearities, whose backward a rule may replace.
    pub fn is_nonlinearity(&self) -> bool {
        matches!(
            self,
            Op::Relu | Op::LeakyRelu { .. } | Op::Sigmoid | Op::Tanh | Op::Gelu { .. } | Op::Softmax { .. }
        )
    }
}

fn erf(x: f64) -> f64 {
    libm::erf(x)
}

fn gelu_forward(x: f32, tanh_approx: bool) -> f32 {
    let x = x as f64;
    let y = if tanh_approx {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
    } else {
        0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
    };
    y as f32
}

fn gelu_grad(x: f32, tanh_approx: bool) -> f32 {
    let x = x as f64;
    let g = if tanh_approx {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        let inner = k * (x + 0.044715 * x * x * x);
        let t = inner.tanh();
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
    } else {
        let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        cdf + x * pdf
    };
    g as f32
}

/// (outer, axis length, inner) strides for an axis of a sample shape.
fn axis_split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

impl Layer {
    /// Runs the layer on a batch. With `keep`, also returns what its backward needs.
    pub fn forward(&self, x: &Batch, keep: bool) -> Result<(Batch, Memo)> {
        let n = x.rows();
        let xs = x.data();
        let mut shape = Vec::with_capacity(self.out_shape.len() + 1);
        shape.push(n);
        shape.extend_from_slice(&self.out_shape);
        let mut y = Batch::zeros(shape);
        let mut memo = Memo::None;
        let ys = y.data_mut();
        match &self.op {
            Op::Linear { inp, out, weight, bias } => {
                let rows = xs.len() / inp;
                kernels::linear_forward(xs, rows, *inp, *out, weight, bias.as_deref(), ys);
            }
            Op::Conv2d {
                out,
                groups,
                win,
                weight,
                bias,
            } => {
                let g = self.conv_geom(*out, *groups, win);
                kernels::conv2d_forward(xs, n, &g, weight, bias.as_deref(), ys);
            }
            Op::Relu => map(xs, ys, |v| if v > 0.0 { v } else { 0.0 }),
            Op::LeakyRelu { slope } => map(xs, ys, |v| if v > 0.0 { v } else { v * slope }),
            Op::Sigmoid => map(xs, ys, |v| 1.0 / (1.0 + (-v).exp())),
            Op::Tanh => map(xs, ys, f32::tanh),
            Op::Gelu { tanh_approx } => map(xs, ys, |v| gelu_forward(v, *tanh_approx)),
            Op::Softmax { axis } => {
                let (outer, len, inner) = axis_split(&self.in_shape, *axis);
                for block in 0..n * outer {
                    for i in 0..inner {
                        let at = |k: usize| block * len * inner + k * inner + i;
                        let max = (0..len).map(|k| xs[at(k)]).fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0.0f32;
                        for k in 0..len {
                            let e = (xs[at(k)] - max).exp();
                            ys[at(k)] = e;
                            sum += e;
                        }
                        for k in 0..len {
                            ys[at(k)] /= sum;
                        }
                    }
                }
            }
            Op::MaxPool2d { win } => {
                let arg = kernels::maxpool2d_forward(xs, self.planes(n), win, ys);
                if keep {
                    memo = Memo::Argmax(arg);
                }
            }
            Op::AvgPool2d { win, count_include_pad } => {
                kernels::avgpool2d(xs, self.planes(n), win, *count_include_pad, ys, false)
            }
            Op::AdaptiveAvgPool2d { .. } => kernels::adaptive_avgpool2d(xs, self.planes(n), ys, false),
            Op::Flatten | Op::Identity => ys.copy_from_slice(xs),
            Op::BatchNorm { scale, shift } => {
                let channels = scale.len();
                let inner: usize = self.in_shape[1..].iter().product();
                for (i, (o, v)) in ys.iter_mut().zip(xs).enumerate() {
                    let c = (i / inner) % channels;
                    *o = v * scale[c] + shift[c];
                }
            }
        }
        Ok((y, memo))
    }

    /// The input gradient given the layer's input `x`, output `y`, memo and output gradient.
    pub fn backward(&self, x: &Batch, y: &Batch, memo: &Memo, gy: &Batch) -> Result<Batch> {
        let n = x.rows();
        let mut gx = Batch::zeros(x.shape().to_vec());
        let xs = x.data();
        let ys = y.data();
        let gys = gy.data();
        let gxs = gx.data_mut();
        match &self.op {
            Op::Linear { inp, out, weight, .. } => {
                let rows = xs.len() / inp;
                kernels::linear_backward(gys, rows, *inp, *out, weight, gxs);
            }
            Op::Conv2d {
                out,
                groups,
                win,
                weight,
                ..
            } => {
                let g = self.conv_geom(*out, *groups, win);
                kernels::conv2d_backward(gys, n, &g, weight, gxs);
            }
            // PyTorch's relu backward passes the gradient where the output is > 0.
            Op::Relu => zip3(gxs, xs, gys, |x, g| if x > 0.0 { g } else { 0.0 }),
            Op::LeakyRelu { slope } => zip3(gxs, xs, gys, |x, g| if x > 0.0 { g } else { g * slope }),
            Op::Sigmoid => zip3(gxs, ys, gys, |y, g| g * y * (1.0 - y)),
            Op::Tanh => zip3(gxs, ys, gys, |y, g| g * (1.0 - y * y)),
            Op::Gelu { tanh_approx } => zip3(gxs, xs, gys, |x, g| g * gelu_grad(x, *tanh_approx)),
            Op::Softmax { axis } => {
                let (outer, len, inner) = axis_split(&self.in_shape, *axis);
                for block in 0..n * outer {
                    for i in 0..inner {
                        let at = |k: usize| block * len * inner + k * inner + i;
                        let dot: f32 = (0..len).map(|k| gys[at(k)] * ys[at(k)]).sum();
                        for k in 0..len {
                            gxs[at(k)] = ys[at(k)] * (gys[at(k)] - dot);
                        }
                    }
                }
            }
            Op::MaxPool2d { .. } => {
                let Memo::Argmax(arg) = memo else {
                    return Err(Error::model(format!(
                        "internal: max-pool `{}` has no recorded maxima",
                        self.name
                    )));
                };
                kernels::maxpool2d_backward(gys, arg, self.planes(n), gxs);
            }
            Op::AvgPool2d { win, count_include_pad } => {
                kernels::avgpool2d(gys, self.planes(n), win, *count_include_pad, gxs, true)
            }
            Op::AdaptiveAvgPool2d { .. } => kernels::adaptive_avgpool2d(gys, self.planes(n), gxs, true),
            Op::Flatten | Op::Identity => gxs.copy_from_slice(gys),
            Op::BatchNorm { scale, .. } => {
                let channels = scale.len();
                let inner: usize = self.in_shape[1..].iter().product();
                for (i, (o, g)) in gxs.iter_mut().zip(gys).enumerate() {
                    *o = g * scale[(i / inner) % channels];
                }
            }
        }
        Ok(gx)
    }

    fn conv_geom(&self, out: usize, groups: usize, win: &Window2d) -> ConvGeom {
        ConvGeom {
            c: self.in_shape[0],
            h: self.in_shape[1],
            w: self.in_shape[2],
            out,
            groups,
            win: *win,
            oh: self.out_shape[1],
            ow: self.out_shape[2],
        }
    }

    /// The planes of a pooling layer over a batch of n.
    fn planes(&self, n: usize) -> Planes {
        let r = self.in_shape.len();
        Planes {
            planes: n * self.in_shape[..r - 2].iter().product::<usize>(),
            h: self.in_shape[r - 2],
            w: self.in_shape[r - 1],
            oh: self.out_shape[r - 2],
            ow: self.out_shape[r - 1],
        }
    }
}

fn map(xs: &[f32], ys: &mut [f32], f: impl Fn(f32) -> f32) {
    for (y, x) in ys.iter_mut().zip(xs) {
        *y = f(*x);
    }
}

fn zip3(out: &mut [f32], a: &[f32], g: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, a), g) in out.iter_mut().zip(a).zip(g) {
        *o = f(*a, *g);
    }
}

#[cfg(test)]
mod tests {
    //! Every operator's backward against central finite differences of its forward, and
    //! forwards against candle's where candle has the operator.

    use super::*;
    use crate::ops::rng::Rng;

    fn layer(op: Op, in_shape: &[usize], out_shape: &[usize]) -> Layer {
        Layer {
            name: "t".into(),
            kind: "t".into(),
            op,
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
            let w = candle_core::Tensor::from_vec(weight.clone(), (out, c / groups, wn.kernel.0, wn.kernel.1), &dev)
                .unwrap();
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
}
