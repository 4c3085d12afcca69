//! Backward rules that replace the gradient of ReLU layers (Captum hooks `nn.ReLU`
//! modules the same way), and DeepLift's rescale rule. LRP's rules are in `lrp`.

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
