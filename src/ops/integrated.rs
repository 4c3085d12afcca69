//! Integrated gradients (Captum's IntegratedGradients): attr = (x − b) · Σ_k w_k ∇F_t(b + α_k (x − b)).
//! One input × all its steps is the work tile: the scaled inputs go through the gradient
//! engine in chunks of at most `batch_rows`, and the weighted sum is kept as it goes.

use super::gradient::{batch_shape, gradients, par_items, zero_outside_window};
use super::{Request, Rule};
use crate::error::Result;
use crate::model::{Batch, Gradient};

pub fn attribute(steps: usize, rule: Rule, req: &Request) -> Result<Vec<f32>> {
    let d = req.d();
    let (alphas, weights) = rule.points(steps);
    let chunk = req.batch_rows.max(1);
    let per_input = par_items(
        req.n(),
        req.control,
        |_| 1,
        |i| {
            let x = req.input(i);
            let b = req.baseline(i);
            let diff: Vec<f32> = x.iter().zip(b).map(|(x, b)| x - b).collect();
            let mut total = vec![0.0f32; d];
            let mut start = 0;
            while start < steps {
                let end = (start + chunk).min(steps);
                let mut rows = Vec::with_capacity((end - start) * d);
                for &alpha in &alphas[start..end] {
                    rows.extend(b.iter().zip(&diff).map(|(b, dx)| b + alpha * dx));
                }
                let batch = Batch::new(batch_shape(end - start, &req.model.input_shape), rows)?;
                let grads = gradients(
                    req.model,
                    batch,
                    req.out_layer,
                    &vec![req.targets[i]; end - start],
                    &Gradient,
                )?;
                for (k, w) in weights[start..end].iter().enumerate() {
                    for (t, g) in total.iter_mut().zip(grads.row(k)) {
                        *t += g * w;
                    }
                }
                req.control.check()?;
                start = end;
            }
            Ok(total.iter().zip(&diff).map(|(t, dx)| t * dx).collect::<Vec<f32>>())
        },
    )?;
    let mut out = per_input.concat();
    zero_outside_window(&mut out, req);
    Ok(out)
}
