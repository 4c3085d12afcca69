//! The CAM family at a layer, as pytorch-grad-cam computes each map from the layer's
//! activations A (channels × positions) and the target's gradient G there: Grad-CAM++,
//! XGrad-CAM, HiRes-CAM, Layer-CAM, Eigen-CAM, EigenGrad-CAM, and the original CAM
//! (Σₖ W[c,k]·Aₖ through a global-average-pooled linear head). The maps are computed in
//! f64 from float32 values (pytorch-grad-cam's numpy sums are float32 and pairwise).

use super::linalg::{gram, top_eigen};
use crate::error::{Error, Result};
use crate::model::graph_ops::ReduceKind;
use crate::model::{Model, Op};

/// A member of the CAM family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CamKind {
    GradCamPlusPlus,
    XGradCam,
    HiResCam,
    LayerCam,
    EigenCam,
    EigenGradCam,
    Cam,
    ScoreCam,
    AblationCam,
}

impl CamKind {
    pub const ALL: [CamKind; 9] = [
        CamKind::GradCamPlusPlus,
        CamKind::XGradCam,
        CamKind::HiResCam,
        CamKind::LayerCam,
        CamKind::EigenCam,
        CamKind::EigenGradCam,
        CamKind::Cam,
        CamKind::ScoreCam,
        CamKind::AblationCam,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CamKind::GradCamPlusPlus => "gradcam_plus_plus",
            CamKind::XGradCam => "xgradcam",
            CamKind::HiResCam => "hirescam",
            CamKind::LayerCam => "layercam",
            CamKind::EigenCam => "eigencam",
            CamKind::EigenGradCam => "eigengradcam",
            CamKind::Cam => "cam",
            CamKind::ScoreCam => "scorecam",
            CamKind::AblationCam => "ablationcam",
        }
    }

    pub fn parse(name: &str) -> Option<CamKind> {
        CamKind::ALL.into_iter().find(|k| k.name().eq_ignore_ascii_case(name))
    }

    /// Whether the map reads the target's gradient at the layer (Eigen-CAM reads the
    /// activations alone; CAM the head's weights; Score-CAM and Ablation-CAM forward
    /// passes of changed copies).
    pub fn uses_gradient(self) -> bool {
        !matches!(
            self,
            CamKind::EigenCam | CamKind::Cam | CamKind::ScoreCam | CamKind::AblationCam
        )
    }

    /// Whether the channel weights come from forward passes of perturbed copies.
    pub fn perturbs(self) -> bool {
        matches!(self, CamKind::ScoreCam | CamKind::AblationCam)
    }
}

/// The rows of the linear head that follows `layer` through a global average pool (and
/// reshapes): [classes × channels], the weights CAM combines the channels with. An error
/// names what stands in the way on other models.
pub fn head_weights(model: &Model, layer: usize, out_layer: usize) -> Result<Vec<f32>> {
    let name = |i: usize| model.layers[i].name.as_str();
    let refuse = |why: String| {
        Error::value(format!(
            "cam needs the layer to be followed by a global average pool and a linear head: {why}"
        ))
        .hint("use gradcam, which weighs the channels by their mean gradient and applies to any layer")
    };
    let channels = model.layers[layer].out_shape.first().copied().unwrap_or(0);
    let mut pooled = false;
    for i in layer + 1..model.layers.len() {
        let l = &model.layers[i];
        if l.inputs != [i] {
            return Err(refuse(format!("`{}` does not read `{}` alone", l.name, name(i - 1))));
        }
        match &l.op {
            Op::AdaptiveAvgPool2d { out: (1, 1) } if !pooled => pooled = true,
            // A mean over each channel's positions (`x.mean((2, 3))`, ONNX ReduceMean).
            Op::Reduce(r)
                if !pooled
                    && r.kind == ReduceKind::Mean
                    && r.count * channels == r.map.len()
                    && r.map.iter().enumerate().all(|(i, &o)| o as usize == i / r.count) =>
            {
                pooled = true
            }
            Op::Flatten | Op::Identity if pooled => {}
            Op::Linear { inp, weight, .. } if pooled && *inp == channels => {
                if i != out_layer {
                    return Err(refuse(format!("its target is not the output of `{}`", l.name)));
                }
                return Ok(weight.clone());
            }
            _ => {
                let want = if pooled {
                    "a linear layer"
                } else {
                    "a global average pool"
                };
                return Err(refuse(format!("`{}` ({}) comes where {want} should", l.name, l.kind)));
            }
        }
    }
    Err(refuse(format!("nothing follows `{}`", name(layer))))
}

/// One input's map (positions) from its activations `a` and gradient `g` (channels ×
/// positions each); `class_weights`: the head's row of the target, for CAM.
pub fn map(kind: CamKind, a: &[f32], g: &[f32], channels: usize, class_weights: Option<&[f32]>) -> Vec<f32> {
    let positions = a.len() / channels.max(1);
    let plane = |v: &[f32], c: usize| -> Vec<f64> {
        v[c * positions..(c + 1) * positions]
            .iter()
            .map(|x| *x as f64)
            .collect()
    };
    // Σ_c w_c A_c for channel weights w.
    let weighted = |w: &dyn Fn(usize) -> f64| -> Vec<f32> {
        let mut out = vec![0.0f64; positions];
        for c in 0..channels {
            let wc = w(c);
            for (o, x) in out.iter_mut().zip(&a[c * positions..(c + 1) * positions]) {
                *o += wc * *x as f64;
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    };
    // Σ_c f(A_c, G_c) position by position.
    let elementwise = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f32> {
        let mut out = vec![0.0f64; positions];
        for (i, (x, y)) in a.iter().zip(g).enumerate() {
            out[i % positions] += f(*x as f64, *y as f64);
        }
        out.into_iter().map(|v| v as f32).collect()
    };
    match kind {
        CamKind::GradCamPlusPlus => weighted(&|c| {
            // Chattopadhyay et al., eq. 19, with pytorch-grad-cam's ε = 1e-6.
            let (ac, gc) = (plane(a, c), plane(g, c));
            let sum: f64 = ac.iter().sum();
            gc.iter()
                .map(|&g| {
                    if g == 0.0 {
                        return 0.0;
                    }
                    let (g2, g3) = (g * g, g * g * g);
                    g.max(0.0) * g2 / (2.0 * g2 + sum * g3 + 1e-6)
                })
                .sum()
        }),
        CamKind::XGradCam => weighted(&|c| {
            let (ac, gc) = (plane(a, c), plane(g, c));
            let sum: f64 = ac.iter().sum();
            ac.iter().zip(&gc).map(|(a, g)| g * a / (sum + 1e-7)).sum()
        }),
        CamKind::HiResCam => elementwise(&|a, g| g * a),
        CamKind::LayerCam => elementwise(&|a, g| g.max(0.0) * a),
        // CAM's weights are the head's row; Score-CAM's and Ablation-CAM's come from
        // their forward passes (`perturbed_weights`), passed the same way.
        CamKind::Cam | CamKind::ScoreCam | CamKind::AblationCam => {
            weighted(&|c| class_weights.map_or(0.0, |w| w[c] as f64))
        }
        CamKind::EigenCam => first_component(a, channels),
        CamKind::EigenGradCam => {
            let product: Vec<f32> = a.iter().zip(g).map(|(a, g)| a * g).collect();
            first_component(&product, channels)
        }
    }
}

/// Score-CAM's or Ablation-CAM's channel weights for one input, from one forward pass per
/// channel through the perturbation engine: `input` the input, `a` its activation at
/// `layer` (channels × h × w), `score` its target output.
///
/// Score-CAM: each channel, brought to the input's size (bilinear, corners aligned, as
/// torch's UpsamplingBilinear2d) and min-max scaled (ε 1e-8), masks the input; the
/// weights are the softmax over channels of the masked inputs' target outputs.
/// Ablation-CAM: each channel of the activation set to 0 (to min − 1e7 where the
/// activation is not a ReLU's, whose minimum is 0), the rest of the model run from the
/// layer; weight = (score − ablated score) / score.
#[allow(clippy::too_many_arguments)]
pub fn perturbed_weights(
    kind: CamKind,
    req: &super::Request,
    input: &[f32],
    a: &[f32],
    layer: usize,
    target: usize,
    score: f32,
) -> Result<Vec<f32>> {
    use crate::model::{Batch, Forward};
    let model = req.model;
    let shape = &model.layers[layer].out_shape;
    // (The layer's shape was checked before: channels × rows × columns, or a sequence.)
    let [channels, h, w] = crate::model::layer::planar(shape);
    let plane = h * w;
    match kind {
        CamKind::ScoreCam => {
            let Some(((ci, hh, ww), _)) = req.features.image else {
                return Err(Error::value(
                    "scorecam masks the input with the layer's maps: it needs image inputs",
                ));
            };
            let masks: Vec<Vec<f32>> = (0..channels)
                .map(|c| {
                    let up = upsample_aligned(&a[c * plane..(c + 1) * plane], (h, w), (hh, ww));
                    let (min, max) = up.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                        (lo.min(*v), hi.max(*v))
                    });
                    up.iter().map(|v| (v - min) / (max - min + 1e-8)).collect()
                })
                .collect();
            let make = |k: usize, row: &mut [f32]| {
                for (i, (r, x)) in row.iter_mut().zip(input).enumerate() {
                    *r = x * masks[k][i % (hh * ww)];
                }
                debug_assert_eq!(row.len(), ci * hh * ww);
                Ok(())
            };
            let run = |batch: Batch| model.output_of(batch, req.out_layer);
            let scores =
                super::perturbation::evaluate(req, &model.input_shape, channels, target, req.batch_rows, &make, &run)?;
            // torch's softmax in float32: exp(s − max) / Σ.
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            Ok(exps.iter().map(|e| e / sum).collect())
        }
        CamKind::AblationCam => {
            let min = a.iter().copied().fold(f32::INFINITY, f32::min);
            let ablated = if min == 0.0 { 0.0 } else { min - 1e7 };
            let make = |k: usize, row: &mut [f32]| {
                row.copy_from_slice(a);
                row[k * plane..(k + 1) * plane].fill(ablated);
                Ok(())
            };
            let context = Batch::new(super::gradient::batch_shape(1, &model.input_shape), input.to_vec())?;
            let run = |batch: Batch| {
                let fwd = Forward {
                    from: layer + 1,
                    to: req.out_layer + 1,
                    keep: false,
                    hook: None,
                };
                Ok(model.run_in(batch, &fwd, Some(&context))?.into_output())
            };
            let scores = super::perturbation::evaluate(req, shape, channels, target, req.batch_rows, &make, &run)?;
            Ok(scores.iter().map(|s| (score - s) / score).collect())
        }
        other => Err(Error::value(format!(
            "internal: {} has no perturbed weights",
            other.name()
        ))),
    }
}

/// torch's UpsamplingBilinear2d (bilinear, align_corners = True) of one plane.
fn upsample_aligned(plane: &[f32], from: (usize, usize), to: (usize, usize)) -> Vec<f32> {
    let ((h, w), (hh, ww)) = (from, to);
    let axis = |o: usize, len: usize, out: usize| -> (usize, usize, f32) {
        let scale = if out > 1 {
            (len - 1) as f32 / (out - 1) as f32
        } else {
            0.0
        };
        let src = o as f32 * scale;
        let i0 = (src.floor() as usize).min(len - 1);
        let i1 = (i0 + 1).min(len - 1);
        (i0, i1, src - i0 as f32)
    };
    let mut out = Vec::with_capacity(hh * ww);
    for r in 0..hh {
        let (r0, r1, lr) = axis(r, h, hh);
        for c in 0..ww {
            let (c0, c1, lc) = axis(c, w, ww);
            let top = (1.0 - lc) * plane[r0 * w + c0] + lc * plane[r0 * w + c1];
            let bottom = (1.0 - lc) * plane[r1 * w + c0] + lc * plane[r1 * w + c1];
            out.push((1.0 - lr) * top + lr * bottom);
        }
    }
    out
}

/// pytorch-grad-cam's FullGrad of each input, a map of its pixels: |∂F/∂x · x| of every
/// input channel, plus, for every convolution with a bias and every batch norm (its
/// shift: the bias BatchNorm2d contributes, which an ONNX export folds into the
/// convolution before it), |b_k · ∂F/∂z_k| of each of its channels k at its output z —
/// each plane min-max scaled ((v − min) / (max + 1e-7)) and brought to the input's size
/// (bilinear, half-pixel centres, as cv2.resize) before the sum. `normalize`: the
/// library's final min-max of the sum. Every channel of a pixel carries its value.
pub fn fullgrad(req: &super::Request, normalize: bool) -> Result<Vec<f32>> {
    use crate::model::{Batch, Forward, Gradient};
    let Some(((channels, hh, ww), _)) = req.features.image else {
        return Err(Error::value(
            "fullgrad maps the pixels of an image: it needs image inputs",
        ));
    };
    let model = req.model;
    let biases: Vec<Option<&[f32]>> = model
        .layers
        .iter()
        .map(|l| match (&l.op, l.out_shape.len()) {
            (Op::Conv2d { bias: Some(b), .. }, 3) => Some(b.as_slice()),
            (Op::BatchNorm { shift, .. }, 3) => Some(shift.as_slice()),
            _ => None,
        })
        .collect();
    let plane = hh * ww;
    let per_input = super::gradient::par_items(
        req.n(),
        req.control,
        |_| 1,
        |i| {
            let x = req.input(i);
            let rows = Batch::new(super::gradient::batch_shape(1, &model.input_shape), x.to_vec())?;
            let fwd = Forward {
                from: 0,
                to: req.out_layer + 1,
                keep: true,
                hook: None,
            };
            let tape = model.run(rows, &fwd)?;
            let seed = super::gradient::one_hot(tape.output(), &[req.targets[i]])?;
            let mut total = vec![0.0f32; plane];
            let mut add_scaled = |values: &[f32], (h, w): (usize, usize)| {
                let mut scaled = values.to_vec();
                let min = scaled.iter().copied().fold(f32::INFINITY, f32::min);
                scaled.iter_mut().for_each(|v| *v -= min);
                let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                scaled.iter_mut().for_each(|v| *v /= 1e-7 + max);
                let resized = if (h, w) == (hh, ww) {
                    scaled
                } else {
                    super::layer::interpolate(&scaled, 1, (h, w), (hh, ww), true)
                };
                total.iter_mut().zip(&resized).for_each(|(t, v)| *t += v);
            };
            let mut observe = |index: usize, g: &Batch| {
                let Some(bias) = biases.get(index).copied().flatten() else {
                    return;
                };
                let shape = &model.layers[index].out_shape;
                let (h, w) = (shape[1], shape[2]);
                for (k, b) in bias.iter().enumerate() {
                    let gk = &g.row(0)[k * h * w..(k + 1) * h * w];
                    let product: Vec<f32> = gk.iter().map(|v| (b * v).abs()).collect();
                    add_scaled(&product, (h, w));
                }
            };
            let gx = model.backward(&tape, seed, &Gradient, &mut observe)?;
            for c in 0..channels {
                let part: Vec<f32> = (0..plane)
                    .map(|p| (gx.row(0)[c * plane + p] * x[c * plane + p]).abs())
                    .collect();
                add_scaled(&part, (hh, ww));
            }
            if normalize {
                self::normalize(&mut total);
            }
            Ok((0..channels).flat_map(|_| total.iter().copied()).collect::<Vec<f32>>())
        },
    )?;
    let mut out = per_input.concat();
    super::gradient::zero_outside_window(&mut out, req);
    Ok(out)
}

/// pytorch-grad-cam's `get_2d_projection`: the positions × channels matrix, each channel
/// centred over the positions, projected on its first right singular vector. The
/// singular vector's sign is arbitrary (LAPACK's choice there); here the projection's
/// largest magnitude is made positive.
fn first_component(values: &[f32], channels: usize) -> Vec<f32> {
    let positions = values.len() / channels.max(1);
    // m[p][c], centred per channel; NaN counts as 0, as there.
    let mut m = vec![0.0f64; positions * channels];
    for c in 0..channels {
        let col: Vec<f64> = values[c * positions..(c + 1) * positions]
            .iter()
            .map(|v| if v.is_nan() { 0.0 } else { *v as f64 })
            .collect();
        let mean = col.iter().sum::<f64>() / positions.max(1) as f64;
        for (p, v) in col.iter().enumerate() {
            m[p * channels + c] = v - mean;
        }
    }
    // The top eigenvector of the smaller Gram matrix gives the projection M·v₁:
    // channels ≤ positions: v₁ of MᵀM; else u₁ of MMᵀ, and M·v₁ = σ₁·u₁.
    let projection: Vec<f64> = if channels <= positions {
        let gram = gram(&m, positions, channels, true);
        let (_, v) = top_eigen(gram, channels);
        (0..positions)
            .map(|p| (0..channels).map(|c| m[p * channels + c] * v[c]).sum())
            .collect()
    } else {
        let gram = gram(&m, positions, channels, false);
        let (lambda, u) = top_eigen(gram, positions);
        let sigma = lambda.max(0.0).sqrt();
        u.iter().map(|x| sigma * x).collect()
    };
    let largest = projection
        .iter()
        .fold(0.0f64, |best, &x| if x.abs() > best.abs() { x } else { best });
    let sign = if largest < 0.0 { -1.0 } else { 1.0 };
    projection.iter().map(|x| (sign * x) as f32).collect()
}

/// pytorch-grad-cam's output scaling of one map: ReLU, then min-max to [0, 1]:
/// (y − min y) / (max(y − min y) + 1e-7).
pub fn normalize(map: &mut [f32]) {
    map.iter_mut().for_each(|v| *v = v.max(0.0));
    let min = map.iter().copied().fold(f32::INFINITY, f32::min);
    map.iter_mut().for_each(|v| *v -= min);
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    map.iter_mut().for_each(|v| *v /= 1e-7 + max);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_gram_matrices_give_the_same_projection() {
        // A rank-1 matrix's projection is its centred pattern over the positions, scaled
        // by the channels' norm, whichever Gram matrix is used.
        let pattern = [1.0f32, -2.0, 0.5, 3.0];
        let scales = [2.0f32, -1.0, 0.5];
        let values: Vec<f32> = scales.iter().flat_map(|s| pattern.iter().map(move |p| s * p)).collect();
        let wide = first_component(&values, 3); // 3 channels ≤ 4 positions
        let mean = pattern.iter().sum::<f32>() / 4.0;
        let norm = scales.iter().map(|s| s * s).sum::<f32>().sqrt();
        let want: Vec<f32> = pattern.iter().map(|p| (p - mean) * norm).collect();
        // The convention: the largest magnitude comes out positive.
        let largest = want.iter().fold(0.0f32, |b, &x| if x.abs() > b.abs() { x } else { b });
        let sign = largest.signum();
        for (g, w) in wide.iter().zip(&want) {
            assert!((g - sign * w).abs() < 1e-5, "{wide:?} vs {want:?}");
        }
        // Many channels (8) over 2 positions: the MMᵀ route.
        let values: Vec<f32> = (0..8).flat_map(|c| [c as f32, -(c as f32)]).collect();
        let tall = first_component(&values, 8);
        let norm = (0..8).map(|c| (c * c) as f32).sum::<f32>().sqrt();
        assert!(
            (tall[0].abs() - norm).abs() < 1e-4 && (tall[0] + tall[1]).abs() < 1e-4,
            "{tall:?}"
        );
    }
}
