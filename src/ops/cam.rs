//! The CAM family at a layer, as pytorch-grad-cam computes each map from the layer's
//! activations A (channels × positions) and the target's gradient G there: Grad-CAM++,
//! XGrad-CAM, HiRes-CAM, Layer-CAM, Eigen-CAM, EigenGrad-CAM, and the original CAM
//! (Σₖ W[c,k]·Aₖ through a global-average-pooled linear head). The maps are computed in
//! f64 from float32 values (pytorch-grad-cam's numpy sums are float32 and pairwise).

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
}

impl CamKind {
    pub const ALL: [CamKind; 7] = [
        CamKind::GradCamPlusPlus,
        CamKind::XGradCam,
        CamKind::HiResCam,
        CamKind::LayerCam,
        CamKind::EigenCam,
        CamKind::EigenGradCam,
        CamKind::Cam,
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
        }
    }

    pub fn parse(name: &str) -> Option<CamKind> {
        CamKind::ALL.into_iter().find(|k| k.name().eq_ignore_ascii_case(name))
    }

    /// Whether the map reads the target's gradient at the layer (Eigen-CAM reads the
    /// activations alone; CAM the head's weights).
    pub fn uses_gradient(self) -> bool {
        !matches!(self, CamKind::EigenCam | CamKind::Cam)
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
        CamKind::Cam => weighted(&|c| class_weights.map_or(0.0, |w| w[c] as f64)),
        CamKind::EigenCam => first_component(a, channels),
        CamKind::EigenGradCam => {
            let product: Vec<f32> = a.iter().zip(g).map(|(a, g)| a * g).collect();
            first_component(&product, channels)
        }
    }
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

/// MᵀM (`columns`: channels × channels) or MMᵀ (positions × positions) of the row-major
/// positions × channels matrix `m`.
fn gram(m: &[f64], rows: usize, cols: usize, columns: bool) -> Vec<f64> {
    let n = if columns { cols } else { rows };
    let mut g = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i..n {
            let s: f64 = if columns {
                (0..rows).map(|p| m[p * cols + i] * m[p * cols + j]).sum()
            } else {
                (0..cols).map(|c| m[i * cols + c] * m[j * cols + c]).sum()
            };
            g[i * n + j] = s;
            g[j * n + i] = s;
        }
    }
    g
}

/// The largest eigenvalue of a symmetric matrix and its unit eigenvector, by cyclic
/// Jacobi rotations (exact to rounding, whatever the gap to the second eigenvalue).
fn top_eigen(mut a: Vec<f64>, n: usize) -> (f64, Vec<f64>) {
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let scale: f64 = (0..n)
            .map(|i| a[i * n + i] * a[i * n + i])
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let top = (0..n)
        .max_by(|&i, &j| a[i * n + i].total_cmp(&a[j * n + j]))
        .unwrap_or(0);
    let vector = (0..n).map(|k| v.get(k * n + top).copied().unwrap_or(0.0)).collect();
    (a.get(top * n + top).copied().unwrap_or(0.0), vector)
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
    fn jacobi_finds_the_top_eigenpair() {
        // [[2, 1], [1, 2]]: eigenvalues 3 (1, 1)/√2 and 1.
        let (lambda, v) = top_eigen(vec![2.0, 1.0, 1.0, 2.0], 2);
        assert!((lambda - 3.0).abs() < 1e-12);
        assert!((v[0].abs() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert!((v[0] - v[1]).abs() < 1e-12);
    }

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
