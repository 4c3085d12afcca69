//! Backward rules that replace the gradient of ReLU layers (Captum hooks `nn.ReLU`
//! modules the same way).

use crate::error::Result;
use crate::model::{BackwardRule, Batch, Layer, Op};

/// Guided backpropagation: the ReLU's gradient, then only its positive part.
pub struct GuidedBackprop;

/// Deconvolution: the ReLU applied to the incoming gradient, ignoring the forward input.
pub struct Deconvolution;

fn relu_rule(layer: &Layer, x: &Batch, gy: &Batch, use_input: bool) -> Option<Result<Batch>> {
    if !matches!(layer.op, Op::Relu) {
        return None;
    }
    let mut gx = gy.clone();
    for (g, v) in gx.data_mut().iter_mut().zip(x.data()) {
        let passed = if use_input && *v <= 0.0 { 0.0 } else { *g };
        *g = passed.max(0.0);
    }
    Some(Ok(gx))
}

impl BackwardRule for GuidedBackprop {
    fn backward(&self, _: usize, layer: &Layer, x: &Batch, _: &Batch, gy: &Batch) -> Option<Result<Batch>> {
        relu_rule(layer, x, gy, true)
    }
}

impl BackwardRule for Deconvolution {
    fn backward(&self, _: usize, layer: &Layer, x: &Batch, _: &Batch, gy: &Batch) -> Option<Result<Batch>> {
        relu_rule(layer, x, gy, false)
    }
}
