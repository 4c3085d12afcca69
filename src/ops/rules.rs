//! Backward rules that replace the gradient of ReLU layers (Captum hooks `nn.ReLU`
//! modules the same way).

use crate::error::{Error, Result};
use crate::model::graph_ops::ReduceKind;
use crate::model::{BackwardRule, Batch, Layer, Op, Step, Tape};

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

/// How LRP treats linear and convolution layers (Captum's rules; pooling and batch-norm
/// layers always take the ε-rule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrpRule {
    /// EpsilonRule: the layer as it is.
    Epsilon,
    /// GammaRule(γ): weights w + γ·max(w, 0), favouring positive contributions.
    Gamma(f32),
    /// Alpha1_Beta0_Rule (z⁺): the positive weights alone.
    ZPlus,
}

/// Layer-wise relevance propagation as Captum computes it: on linear, convolution,
/// pooling and batch-norm layers R_in = x ⊙ backward'(R_out / (z' + ε·s)), where the
/// primed layer has the rule's weights, z' = its output on the layer's input x and s the
/// sign of z' (+1 at 0); a residual sum splits R_out in proportion to its inputs; ReLU
/// and Tanh (and reshapes) pass relevance unchanged. Other layers have no rule here: an
/// error names them.
pub struct Lrp {
    pub epsilon: f32,
    pub rule: LrpRule,
    /// The layers with the rule's weights, made once per layer.
    modified: std::sync::Mutex<std::collections::HashMap<usize, std::sync::Arc<Layer>>>,
}

impl Lrp {
    pub fn new(epsilon: f32, rule: LrpRule) -> Lrp {
        Lrp {
            epsilon,
            rule,
            modified: Default::default(),
        }
    }

    /// The layer `index` with the rule's weights (itself for the ε-rule and for pools).
    fn primed(&self, index: usize, layer: &Layer) -> Result<Option<std::sync::Arc<Layer>>> {
        let map = |w: f32| match self.rule {
            LrpRule::Epsilon => w,
            LrpRule::Gamma(g) => w + g * w.max(0.0),
            LrpRule::ZPlus => w.max(0.0),
        };
        if self.rule == LrpRule::Epsilon || !matches!(layer.op, Op::Linear { .. } | Op::Conv2d { .. }) {
            return Ok(None);
        }
        let mut cache = self
            .modified
            .lock()
            .map_err(|_| Error::model("internal: a poisoned lock"))?;
        let primed = cache.entry(index).or_insert_with(|| {
            let mut copy = layer.clone();
            match &mut copy.op {
                // Fresh caches: the copy's transposed or flipped weights are its own.
                Op::Linear { weight, transposed, .. } => {
                    weight.iter_mut().for_each(|w| *w = map(*w));
                    *transposed = Default::default();
                }
                Op::Conv2d { weight, adjoint, .. } => {
                    weight.iter_mut().for_each(|w| *w = map(*w));
                    *adjoint = Default::default();
                }
                _ => {}
            }
            std::sync::Arc::new(copy)
        });
        Ok(Some(primed.clone()))
    }
}

impl BackwardRule for Lrp {
    fn backward(&self, step: &Step) -> Option<Result<Batch>> {
        match &step.layer.op {
            Op::Linear { .. }
            | Op::Conv2d { .. }
            | Op::MaxPool2d { .. }
            | Op::AvgPool2d { .. }
            | Op::AdaptiveAvgPool2d { .. }
            | Op::BatchNorm { .. } => Some(self.propagate(step)),
            // A mean or sum over axes (an export's spelling of a global pool) is linear:
            // the ε-rule, as for the pool.
            Op::Reduce(r) if matches!(r.kind, ReduceKind::Mean | ReduceKind::Sum) => Some(self.propagate(step)),
            Op::Relu | Op::Tanh | Op::Flatten | Op::Identity => Some(Ok(step.gy.clone())),
            _ => Some(Err(no_lrp_rule(step.layer))),
        }
    }

    /// A sum of inputs of the output's shape (a residual connection; Captum's
    /// Addition_Module): each input takes R_i = x_i ⊙ R / (z + ε·s), its share of the sum.
    fn backward_args(
        &self,
        layer: &Layer,
        args: &[&Batch],
        y: &Batch,
        gy: &Batch,
    ) -> Option<Result<Vec<Option<Batch>>>> {
        use crate::model::graph_ops::{NaryKind, Operand};
        let sum = match &layer.op {
            Op::Nary(n) => {
                n.kind == NaryKind::Add
                    && n.args
                        .iter()
                        .all(|a| matches!(a.operand, Operand::Input(_)) && a.map.is_none())
            }
            _ => false,
        };
        if !sum {
            return Some(Err(no_lrp_rule(layer)));
        }
        let mut scaled = gy.clone();
        for (r, z) in scaled.data_mut().iter_mut().zip(y.data()) {
            let sign = if *z < 0.0 { -1.0 } else { 1.0 };
            *r /= z + sign * self.epsilon;
        }
        Some(Ok(args
            .iter()
            .map(|x| {
                let mut share = scaled.clone();
                share.data_mut().iter_mut().zip(x.data()).for_each(|(r, x)| *r *= x);
                Some(share)
            })
            .collect()))
    }
}

impl Lrp {
    fn propagate(&self, step: &Step) -> Result<Batch> {
        let primed = self.primed(step.index, step.layer)?;
        let (layer, z, memo) = match &primed {
            Some(l) => {
                let (z, memo) = l.forward(step.x, true)?;
                (l.as_ref(), std::borrow::Cow::Owned(z), std::borrow::Cow::Owned(memo))
            }
            None => (
                step.layer,
                std::borrow::Cow::Borrowed(step.y),
                std::borrow::Cow::Borrowed(step.memo),
            ),
        };
        let mut scaled = step.gy.clone();
        for (r, z) in scaled.data_mut().iter_mut().zip(z.data()) {
            let sign = if *z < 0.0 { -1.0 } else { 1.0 };
            *r /= z + sign * self.epsilon;
        }
        let mut g = layer.backward(step.x, &z, &memo, &scaled)?;
        g.data_mut().iter_mut().zip(step.x.data()).for_each(|(g, x)| *g *= x);
        Ok(g)
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
