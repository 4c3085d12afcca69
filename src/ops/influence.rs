//! Training-data attribution: TracIn (Pruthi et al. 2020) on one checkpoint, the loaded
//! weights. influence(z, z′) = ∇θ L(z) · ∇θ L(z′), L the cross-entropy at z's class, θ
//! the weights and biases of the chosen layers. The per-sample parameter gradients come
//! from the layer-wise engine: one forward and one backward per tile of inputs, seeded
//! with softmax − one-hot at the output (computed in f64 without cancellation), the
//! gradient at each chosen layer's output observed on the way down. A linear layer's
//! gradient is the outer product g hᵀ of its output gradient and its input, so it is
//! kept factored — (g, h) — and two of them meet as (g·g′)(h·h′ + 1) (the 1 for the
//! bias); a convolution's is summed over its positions and kept whole. Dot products
//! accumulate in f64.

use rayon::prelude::*;

use super::Control;
use crate::error::{Error, Result};
use crate::model::{Batch, Gradient, Model, Op};

/// One input's loss gradient at one layer.
#[derive(Clone, Debug)]
pub enum Factor {
    /// A linear layer's ∂L/∂W = g hᵀ (and ∂L/∂b = g when it has a bias).
    Linear { g: Vec<f64>, h: Vec<f64>, bias: bool },
    /// Any other layer's gradient, whole (weights then bias).
    Dense(Vec<f64>),
}

impl Factor {
    fn dot(&self, other: &Factor) -> f64 {
        match (self, other) {
            (Factor::Linear { g, h, bias }, Factor::Linear { g: g2, h: h2, .. }) => {
                let gg = dot(g, g2);
                gg * dot(h, h2) + if *bias { gg } else { 0.0 }
            }
            (Factor::Dense(a), Factor::Dense(b)) => dot(a, b),
            _ => 0.0,
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// ∇θ L(z) · ∇θ L(z′) over the layers.
pub fn influence(a: &[Factor], b: &[Factor]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x.dot(y)).sum()
}

/// ‖∇θ L(z)‖ over the layers.
pub fn norm(a: &[Factor]) -> f64 {
    influence(a, a).sqrt()
}

/// The layers `Last` and `All` stand for, or why a named one cannot be used.
pub fn parameter_layers(model: &Model, named: Option<&[usize]>, all: bool) -> Result<Vec<usize>> {
    let has_weights = |l: usize| model.layers[l].op.is_linear_or_conv();
    match named {
        Some(ls) => {
            for &l in ls {
                let layer = &model.layers[l];
                if !has_weights(l) {
                    return Err(Error::value(format!(
                        "layer {} ({}) has no weights for TracIn: name linear or convolution layers",
                        layer.name, layer.kind
                    )));
                }
            }
            Ok(ls.to_vec())
        }
        None if all => Ok((0..model.layers.len()).filter(|&l| has_weights(l)).collect()),
        None => (0..model.layers.len())
            .rev()
            .find(|&l| matches!(model.layers[l].op, Op::Linear { .. }))
            .map(|l| vec![l])
            .ok_or_else(|| Error::value("the model has no linear layer: name the layers, layers = 'conv1,…'")),
    }
}

/// softmax(z) − one-hot(class), in f64: the class's entry as minus the sum of the others,
/// so a confidently classified sample's tiny 1 − p is not lost to cancellation.
fn loss_seed(logits: &[f32], class: usize) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let total: f64 = e.iter().sum();
    let mut seed: Vec<f64> = e.iter().map(|v| v / total).collect();
    let others: f64 = seed
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != class)
        .map(|(_, p)| p)
        .sum();
    seed[class] = -others;
    seed
}

/// Each input's loss gradient at each of `layers`: n inputs of the model's input size,
/// each at its class.
pub fn loss_gradients(
    model: &Model,
    inputs: &[f32],
    classes: &[usize],
    layers: &[usize],
    batch_rows: usize,
    control: &Control,
) -> Result<Vec<Vec<Factor>>> {
    let d = model.input_len().max(1);
    let n = classes.len();
    let outputs = model.output_len();
    if let Some(&c) = classes.iter().find(|&&c| c >= outputs) {
        return Err(Error::value(format!(
            "class {c} is out of range: the model has {outputs} outputs"
        )));
    }
    for &l in layers {
        let layer = &model.layers[l];
        match &layer.op {
            Op::Linear { inp, .. } if layer.in_shape.iter().product::<usize>() != *inp => {
                return Err(Error::value(format!(
                    "layer {} applies its weights at each of {} positions: TracIn takes linear layers of one vector per input",
                    layer.name,
                    layer.in_shape.iter().product::<usize>() / inp.max(&1)
                )));
            }
            Op::Conv2d { groups, .. } if *groups != 1 => {
                return Err(Error::value(format!(
                    "layer {} is a grouped convolution ({groups} groups), which TracIn does not take yet",
                    layer.name
                )));
            }
            _ => {}
        }
    }
    let last = model.layers.len() - 1;
    let tile = batch_rows.max(1);
    let tiles: Vec<Vec<Vec<Factor>>> = (0..n.div_ceil(tile))
        .into_par_iter()
        .map(|t| {
            control.check()?;
            let (a, b) = (t * tile, ((t + 1) * tile).min(n));
            let tape = super::gradient::full_pass(model, &inputs[a * d..b * d], b - a)?;
            let logits = tape.output();
            let seeds: Vec<Vec<f64>> = (0..b - a).map(|r| loss_seed(logits.row(r), classes[a + r])).collect();
            let mut seed = Batch::zeros(logits.shape().to_vec());
            for (r, s) in seeds.iter().enumerate() {
                for (x, v) in seed.row_mut(r).iter_mut().zip(s) {
                    *x = *v as f32;
                }
            }
            // The gradient at each chosen layer's output (the seed itself at the last).
            let mut at: Vec<Option<Batch>> = vec![None; layers.len()];
            model.backward(&tape, seed, &Gradient, &mut |hook, grad| {
                if let Some(k) = layers.iter().position(|&l| l == hook) {
                    at[k] = Some(grad.clone());
                }
            })?;
            let mut out: Vec<Vec<Factor>> = vec![Vec::with_capacity(layers.len()); b - a];
            for (k, &l) in layers.iter().enumerate() {
                let layer = &model.layers[l];
                let input = layer
                    .inputs
                    .first()
                    .and_then(|&v| tape.values.get(v))
                    .ok_or_else(|| Error::model(format!("internal: no input kept for layer {}", layer.name)))?;
                for (r, factors) in out.iter_mut().enumerate() {
                    let g: Vec<f64> = if l == last {
                        seeds[r].clone()
                    } else {
                        let grad = at[k].as_ref().ok_or_else(|| {
                            Error::model(format!("internal: no gradient observed at layer {}", layer.name))
                        })?;
                        grad.row(r).iter().map(|&v| v as f64).collect()
                    };
                    let h = input.row(r);
                    factors.push(match &layer.op {
                        Op::Linear { bias, .. } => Factor::Linear {
                            g,
                            h: h.iter().map(|&v| v as f64).collect(),
                            bias: bias.is_some(),
                        },
                        Op::Conv2d { out, win, bias, .. } => Factor::Dense(conv_gradient(
                            h,
                            &layer.in_shape,
                            &g,
                            &layer.out_shape,
                            *out,
                            win,
                            bias.is_some(),
                        )),
                        _ => return Err(Error::model(format!("internal: layer {} has no weights", layer.name))),
                    });
                }
            }
            control.advance(b - a);
            Ok(out)
        })
        .collect::<Result<_>>()?;
    Ok(tiles.into_iter().flatten().collect())
}

/// A 2-D convolution's weight gradient for one input (then the bias's): for each output
/// channel o, input channel c and kernel offset, Σ over output positions of
/// g[o, y, x] · input[c, y·s + i·dil − pad, x·s + j·dil − pad].
fn conv_gradient(
    input: &[f32],
    in_shape: &[usize],
    g: &[f64],
    out_shape: &[usize],
    out_channels: usize,
    win: &crate::model::kernels::Window2d,
    bias: bool,
) -> Vec<f64> {
    let (c_in, h, w) = (in_shape[0], in_shape[1], in_shape[2]);
    let (ho, wo) = (out_shape[1], out_shape[2]);
    let (kh, kw) = win.kernel;
    let mut grad = vec![0.0f64; out_channels * c_in * kh * kw + if bias { out_channels } else { 0 }];
    for o in 0..out_channels {
        for c in 0..c_in {
            for i in 0..kh {
                for j in 0..kw {
                    let mut acc = 0.0f64;
                    for y in 0..ho {
                        let iy = (y * win.stride.0 + i * win.dilation.0) as i64 - win.padding.0 as i64;
                        if iy < 0 || iy >= h as i64 {
                            continue;
                        }
                        for x in 0..wo {
                            let ix = (x * win.stride.1 + j * win.dilation.1) as i64 - win.padding.1 as i64;
                            if ix < 0 || ix >= w as i64 {
                                continue;
                            }
                            acc += g[(o * ho + y) * wo + x] * input[(c * h + iy as usize) * w + ix as usize] as f64;
                        }
                    }
                    grad[((o * c_in + c) * kh + i) * kw + j] = acc;
                }
            }
        }
        if bias {
            grad[out_channels * c_in * kh * kw + o] = g[o * ho * wo..(o + 1) * ho * wo].iter().sum();
        }
    }
    grad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_keeps_a_confident_samples_tiny_loss_gradient() {
        // p(class) = 1 − ~1e-9: in f32 1 − p rounds to 0; here it is −Σ others.
        let s = loss_seed(&[30.0, 9.3, 10.0], 0);
        assert!(s[0] < 0.0 && s[0] > -1e-8, "{s:?}");
        assert!((s.iter().sum::<f64>()).abs() < 1e-15);
    }
}
