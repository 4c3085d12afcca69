//! Integrated gradients (Captum's IntegratedGradients): attr = (x − b) · Σ_k w_k ∇F_t(b + α_k (x − b)).
//! One input × all its steps is the work tile: the scaled inputs go through the gradient
//! engine in chunks of at most `batch_rows`, and the weighted sum is kept as it goes.

use super::gradient::{batch_shape, gradients, par_items, zero_outside_window};
use super::{Control, Request, Rule};
use crate::error::Result;
use crate::model::{Batch, Gradient};

pub fn attribute(steps: usize, rule: Rule, req: &Request) -> Result<Vec<f32>> {
    let (alphas, weights) = rule.points(steps);
    let per_input = par_items(
        req.n(),
        req.control,
        |_| 1,
        |i| {
            let target = req.targets[i];
            integrate(
                req.input(i),
                req.baseline(i),
                &alphas,
                &weights,
                req.batch_rows,
                req.control,
                &|points, count| {
                    let batch = Batch::new(batch_shape(count, &req.model.input_shape), points)?;
                    gradients(req.model, batch, req.out_layer, &vec![target; count], &Gradient)
                },
            )
        },
    )?;
    let mut out = per_input.concat();
    zero_outside_window(&mut out, req);
    Ok(out)
}

/// The path integral shared by integrated gradients and its layer and neuron forms:
/// (x − b) · Σ_k w_k ∇(b + α_k (x − b)), with the points evaluated `chunk` at a time;
/// `gradient(points, count)` gives the gradient at each of `count` points.
pub(crate) fn integrate(
    x: &[f32],
    b: &[f32],
    alphas: &[f32],
    weights: &[f32],
    chunk: usize,
    control: &Control,
    gradient: &dyn Fn(Vec<f32>, usize) -> Result<Batch>,
) -> Result<Vec<f32>> {
    let mut total = vec![0.0f32; x.len()];
    let mut start = 0;
    while start < alphas.len() {
        let end = (start + chunk.max(1)).min(alphas.len());
        let grads = gradient(path(b, x, &alphas[start..end]), end - start)?;
        for (k, w) in weights[start..end].iter().enumerate() {
            for (t, g) in total.iter_mut().zip(grads.row(k)) {
                *t += g * w;
            }
        }
        control.check()?;
        start = end;
    }
    Ok(total
        .iter()
        .zip(x.iter().zip(b))
        .map(|(t, (x, b))| t * (x - b))
        .collect())
}

/// `b + α (x − b)` for each α, one after another.
pub(crate) fn path(b: &[f32], x: &[f32], alphas: &[f32]) -> Vec<f32> {
    let mut rows = Vec::with_capacity(alphas.len() * x.len());
    for &alpha in alphas {
        rows.extend(b.iter().zip(x).map(|(b, x)| b + alpha * (x - b)));
    }
    rows
}
