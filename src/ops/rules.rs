//! Backward rules that replace the gradient of ReLU layers (Captum hooks `nn.ReLU`
//! modules the same way).

use crate::error::{Error, Result};
use crate::model::{BackwardRule, Batch, Op, Step, Tape};

/// Guided backpropagation: the ReLU's gradient, then only its positive part.
pub struct GuidedBackprop;

/// Deconvolution: the ReLU applied to the incoming gradient, ignoring the forward input.
pub struct Deconvolution;

fn relu_rule(step: &Step, use_input: bool) -> Option<Result<Batch>> {
    if !matches!(step.layer.op, Op::Relu) {
        return None;
    }
    let mut gx = step.gy.clone();
    for (g, v) in gx.data_mut().iter_mut().zip(step.x.data()) {
        let passed = if use_input && *v <= 0.0 { 0.0 } else { *g };
        *g = passed.max(0.0);
    }
    Some(Ok(gx))
}

impl BackwardRule for GuidedBackprop {
    fn backward(&self, step: &Step) -> Option<Result<Batch>> {
        relu_rule(step, true)
    }
}

impl BackwardRule for Deconvolution {
    fn backward(&self, step: &Step) -> Option<Result<Batch>> {
        relu_rule(step, false)
    }
}

/// DeepLift's rescale rule (Captum's DeepLift): a nonlinearity passes the gradient times
/// Δy/Δx against its value on the baseline, and max-pooling credits the change of each
/// output to the positions that were the maximum on the input and on the baseline. With
/// every multiplier chained this way the attributions sum to f(x) − f(baseline).
pub struct DeepLift<'a> {
    /// A forward pass over the baselines, row for row with the explained inputs.
    pub reference: &'a Tape,
}

/// Below this |Δx| the rule falls back to the plain gradient (Captum's eps).
const DEEPLIFT_EPS: f32 = 1e-10;

impl BackwardRule for DeepLift<'_> {
    fn backward(&self, step: &Step) -> Option<Result<Batch>> {
        let elementwise = matches!(
            step.layer.op,
            Op::Relu | Op::LeakyRelu { .. } | Op::Sigmoid | Op::Tanh | Op::Gelu { .. }
        );
        let pool = matches!(step.layer.op, Op::MaxPool2d { .. });
        if !elementwise && !pool {
            return None;
        }
        Some(self.rescale(step, pool))
    }
}

impl DeepLift<'_> {
    fn rescale(&self, step: &Step, pool: bool) -> Result<Batch> {
        let missing = || Error::model("internal: DeepLift's reference pass does not cover this layer");
        let x0 = self.reference.input_of(step.index).ok_or_else(missing)?;
        let y0 = self.reference.hook(step.index).ok_or_else(missing)?;
        let plain = step.gradient()?;
        let mut gx = if pool {
            // Δy split between the input's and the baseline's maximum: (u1 + u2) / Δx.
            let memo0 = self.reference.memo(step.index).ok_or_else(missing)?;
            let (y, gy) = (step.y.data(), step.gy.data());
            let mut to_input = step.gy.clone();
            let mut to_base = step.gy.clone();
            for (k, (a, b)) in to_input.data_mut().iter_mut().zip(to_base.data_mut()).enumerate() {
                let top = y[k].max(y0.data()[k]);
                *a = gy[k] * (top - y0.data()[k]);
                *b = gy[k] * (y[k] - top);
            }
            let mut u = step.layer.backward(step.x, step.y, step.memo, &to_input)?;
            let u2 = step.layer.backward(x0, y0, memo0, &to_base)?;
            for (a, b) in u.data_mut().iter_mut().zip(u2.data()) {
                *a += b;
            }
            u
        } else {
            let mut dy = step.y.clone();
            for ((d, y0), g) in dy.data_mut().iter_mut().zip(y0.data()).zip(step.gy.data()) {
                *d = (*d - y0) * g;
            }
            dy
        };
        // gx now holds the numerator; divide by Δx, or fall back where Δx vanishes.
        for (k, g) in gx.data_mut().iter_mut().enumerate() {
            let dx = step.x.data()[k] - x0.data()[k];
            *g = if dx.abs() < DEEPLIFT_EPS {
                plain.data()[k]
            } else {
                *g / dx
            };
        }
        Ok(gx)
    }
}

/// Layer-wise relevance propagation with Captum's default rules: the ε-rule on linear,
/// convolution, pooling and batch-norm layers — R_in = x ⊙ backward(R_out / (z + ε·s)),
/// z the layer's output, s its sign (+1 at 0) — and relevance passed through ReLU and
/// Tanh (and reshapes) unchanged. Other layers have no rule here: an error names them.
pub struct Lrp {
    pub epsilon: f32,
}

impl BackwardRule for Lrp {
    fn backward(&self, step: &Step) -> Option<Result<Batch>> {
        match &step.layer.op {
            Op::Linear { .. }
            | Op::Conv2d { .. }
            | Op::MaxPool2d { .. }
            | Op::AvgPool2d { .. }
            | Op::AdaptiveAvgPool2d { .. }
            | Op::BatchNorm { .. } => {
                let mut scaled = step.gy.clone();
                for (r, z) in scaled.data_mut().iter_mut().zip(step.y.data()) {
                    let sign = if *z < 0.0 { -1.0 } else { 1.0 };
                    *r /= z + sign * self.epsilon;
                }
                Some(step.layer.backward(step.x, step.y, step.memo, &scaled).map(|mut g| {
                    g.data_mut().iter_mut().zip(step.x.data()).for_each(|(g, x)| *g *= x);
                    g
                }))
            }
            Op::Relu | Op::Tanh | Op::Flatten | Op::Identity => Some(Ok(step.gy.clone())),
            _ => Some(Err(no_lrp_rule(step.layer))),
        }
    }
}

/// Why LRP cannot pass a layer.
pub fn no_lrp_rule(layer: &crate::model::Layer) -> Error {
    Error::value(format!(
        "lrp has no rule for layer `{}` ({}): Captum's default rules cover linear, convolution, pooling and batch-norm layers, ReLU and Tanh",
        layer.name, layer.kind
    ))
    .hint("use deeplift or integrated_gradients, which take every layer")
}
