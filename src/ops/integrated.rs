//! Integrated gradients (Captum's IntegratedGradients): attr = (x − b) · Σ_k w_k ∇F_t(b + α_k (x − b)).
//! One input × all its steps is the work tile: the scaled inputs go through the gradient
//! engine in chunks of at most `batch_rows`, and the weighted sum is kept as it goes.
//!
//! When the model begins with an affine layer (a convolution or a linear layer, not
//! edited), the path is taken past it: layer₀(b + α(x − b)) = z_b + α(z_x − z_b), so that
//! layer runs once per input instead of once per step, and since its input gradient is
//! linear in the output gradient, the weighted sum of the step gradients goes back through
//! it once. Same integral; the rounding differs from Captum's order by float32 ulps.

use rayon::prelude::*;

use super::gradient::{batch_shape, gradients, gradients_from, par_items, zero_outside_window};
use super::{Control, Request, Rule};
use crate::error::Result;
use crate::model::{Batch, Gradient, Layer, Model, Op};

pub fn attribute(steps: usize, rule: Rule, req: &Request) -> Result<Vec<f32>> {
    let (alphas, weights) = rule.points(steps);
    let first = affine_first_layer(req.model, req.out_layer);
    let chunks = Chunks::new(req.batch_rows, req.n());
    // Progress counts path steps (`Method::path_points`), advanced as they are done.
    let per_input = par_items(
        req.n(),
        req.control,
        |_| 0,
        |i| {
            let target = req.targets[i];
            let (x, b) = (req.input(i), req.baseline(i));
            let Some(first) = first else {
                return integrate(x, b, &alphas, &weights, chunks, req.control, &|points, count| {
                    let batch = Batch::new(batch_shape(count, &req.model.input_shape), points)?;
                    gradients(req.model, batch, req.out_layer, &vec![target; count], &Gradient)
                });
            };
            let ends = Batch::new(batch_shape(2, &req.model.input_shape), [x, b].concat())?;
            let (z, _) = first.forward(&ends, false)?;
            let sum = weighted_gradient_sum(
                z.row(0),
                z.row(1),
                &alphas,
                &weights,
                chunks,
                req.control,
                &|points, count| {
                    let batch = Batch::new(batch_shape(count, &first.out_shape), points)?;
                    gradients_from(
                        req.model,
                        batch,
                        (1, None),
                        req.out_layer,
                        &vec![target; count],
                        &Gradient,
                    )
                },
            )?;
            // The affine layer's input gradient needs neither its input nor its output.
            let one = |v: &[f32], shape: &[usize]| Batch::new(batch_shape(1, shape), v.to_vec());
            let grad = first.backward(
                &one(x, &req.model.input_shape)?,
                &one(z.row(0), &first.out_shape)?,
                &Default::default(),
                &one(&sum, &first.out_shape)?,
            )?;
            Ok(times_difference(grad.data(), x, b))
        },
    )?;
    let mut out = per_input.concat();
    zero_outside_window(&mut out, req);
    Ok(out)
}

/// The model's first layer, if the path may be taken past it: it is affine, no activation
/// edit touches its output, and the target lies beyond it.
fn affine_first_layer(model: &Model, out_layer: usize) -> Option<&Layer> {
    let first = model.layers.first()?;
    let affine = matches!(first.op, Op::Conv2d { .. } | Op::Linear { .. });
    // In a graph, no later layer may read the input past it.
    let only_reader = model.layers[1..].iter().all(|l| !l.inputs.contains(&0));
    (affine && only_reader && out_layer > 0 && !model.patches.iter().any(|p| p.layer == 0)).then_some(first)
}

/// How a path's points are evaluated: `rows` at a time, `lanes` batches at once — more
/// than one when there are fewer inputs than threads, so that one input's steps keep
/// every core busy (a ViT's IG of one input ran on one of two).
#[derive(Clone, Copy)]
pub(crate) struct Chunks {
    pub rows: usize,
    pub lanes: usize,
}

impl Chunks {
    pub fn new(batch_rows: usize, inputs: usize) -> Chunks {
        Chunks {
            rows: batch_rows.max(1),
            lanes: (rayon::current_num_threads() / inputs.max(1)).max(1),
        }
    }
}

/// The gradient at each of `count` points (given one after another).
pub(crate) type PointGradients<'a> = &'a (dyn Fn(Vec<f32>, usize) -> Result<Batch> + Sync);

/// The path integral shared by integrated gradients and its layer and neuron forms:
/// (x − b) · Σ_k w_k ∇(b + α_k (x − b)), with the points evaluated in `chunks`.
pub(crate) fn integrate(
    x: &[f32],
    b: &[f32],
    alphas: &[f32],
    weights: &[f32],
    chunks: Chunks,
    control: &Control,
    gradient: PointGradients,
) -> Result<Vec<f32>> {
    let total = weighted_gradient_sum(x, b, alphas, weights, chunks, control, gradient)?;
    Ok(times_difference(&total, x, b))
}

/// `g · (x − b)`, element by element: the path integral from its summed gradient.
fn times_difference(g: &[f32], x: &[f32], b: &[f32]) -> Vec<f32> {
    g.iter().zip(x.iter().zip(b)).map(|(g, (x, b))| g * (x - b)).collect()
}

/// Σ_k w_k ∇(b + α_k (x − b)). Batches run `chunks.lanes` at once; the sum is taken in
/// step order whatever ran together (a row's gradient does not depend on its batch), so
/// the result has the same bits for any batch size or thread count. Each wave of batches
/// counts its steps as progress and is a point where Ctrl-C stops the statement.
fn weighted_gradient_sum(
    x: &[f32],
    b: &[f32],
    alphas: &[f32],
    weights: &[f32],
    chunks: Chunks,
    control: &Control,
    gradient: PointGradients,
) -> Result<Vec<f32>> {
    let lanes = chunks.lanes.max(1);
    // Enough batches for the lanes, none above the budget.
    let rows = chunks.rows.max(1).min(alphas.len().div_ceil(lanes).max(1));
    let bounds: Vec<(usize, usize)> = (0..alphas.len())
        .step_by(rows)
        .map(|start| (start, (start + rows).min(alphas.len())))
        .collect();
    let mut total = vec![0.0f32; x.len()];
    for wave in bounds.chunks(lanes) {
        let grads: Vec<Batch> = wave
            .par_iter()
            .map(|&(start, end)| gradient(path(b, x, &alphas[start..end]), end - start))
            .collect::<Result<_>>()?;
        for (&(start, end), grads) in wave.iter().zip(&grads) {
            for (k, w) in weights[start..end].iter().enumerate() {
                for (t, g) in total.iter_mut().zip(grads.row(k)) {
                    *t += g * w;
                }
            }
            control.advance(end - start);
        }
        control.check()?;
    }
    Ok(total)
}

/// `b + α (x − b)` for each α, one after another.
pub(crate) fn path(b: &[f32], x: &[f32], alphas: &[f32]) -> Vec<f32> {
    let mut rows = Vec::with_capacity(alphas.len() * x.len());
    for &alpha in alphas {
        rows.extend(b.iter().zip(x).map(|(b, x)| b + alpha * (x - b)));
    }
    rows
}
