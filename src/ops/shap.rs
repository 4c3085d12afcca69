//! The SHAP methods that take a baseline *distribution* (Captum's GradientShap,
//! DeepLiftShap, LayerGradientShap, NeuronGradientShap): `BASELINE d[a:b]` is a set of
//! draws, whatever the number of explained inputs, where other methods pair one baseline
//! with each input. The request's `baselines` then hold the distribution's rows.

use super::gradient::{self, batch_shape, gradients, par_items, push_noisy, zero_outside_window};
use super::rng::Rng;
use super::{Method, Request};
use crate::error::Result;
use crate::model::{Batch, Gradient};

/// One input's random draws: per sample, the noisy input x + N(0, stdev²) (noise inside
/// the window only), a baseline drawn uniformly from the distribution (equal to the
/// input outside the window) and a point α ~ U(0, 1) on the way from one to the other.
struct Draws {
    noisy: Vec<f32>,
    baselines: Vec<f32>,
    points: Vec<f32>,
}

fn draws(req: &Request, i: usize, rng: &mut Rng, count: usize, stdev: f64) -> Draws {
    let (x, d) = (req.input(i), req.d());
    let pool = req.baselines.len() / d.max(1);
    let mut out = Draws {
        noisy: Vec::with_capacity(count * d),
        baselines: Vec::with_capacity(count * d),
        points: Vec::with_capacity(count * d),
    };
    for _ in 0..count {
        let start = out.noisy.len();
        push_noisy(&mut out.noisy, x, req, rng, stdev);
        let j = rng.below(pool.max(1));
        out.baselines.extend_from_slice(&req.baselines[j * d..(j + 1) * d]);
        req.features.hold_outside(&mut out.baselines[start..], x);
        let alpha = rng.uniform() as f32;
        for f in 0..d {
            let (xs, bs) = (out.noisy[start + f], out.baselines[start + f]);
            out.points.push(bs + alpha * (xs - bs));
        }
    }
    out
}

/// What a method computes from a batch of one input's draws: (input, draws, count) →
/// `count` rows of values.
type DrawWork<'a> = dyn Fn(usize, &Draws, usize) -> Result<Vec<f32>> + Sync + 'a;

/// Runs `work` on each input's draws, a batch's worth at a time, and averages what it
/// returns per draw (`units` values each) over the samples.
fn average_over_draws(
    req: &Request,
    samples: usize,
    stdev: f64,
    seed: u64,
    units: usize,
    work: &DrawWork,
) -> Result<Vec<f32>> {
    let per_input = par_items(
        req.n(),
        req.control,
        |_| 1,
        |i| {
            let mut rng = Rng::new(seed, req.ids[i] as u64);
            let mut sum = vec![0.0f64; units];
            let chunk = req.batch_rows.max(1);
            let mut done = 0;
            while done < samples {
                let count = chunk.min(samples - done);
                let drawn = draws(req, i, &mut rng, count, stdev);
                add_rows(&mut sum, &work(i, &drawn, count)?);
                req.control.check()?;
                done += count;
            }
            Ok(mean(&sum, samples))
        },
    )?;
    Ok(per_input.concat())
}

/// Adds each row of `values` (rows of `sum.len()`) to `sum`.
fn add_rows(sum: &mut [f64], values: &[f32]) {
    for row in values.chunks(sum.len().max(1)) {
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += *v as f64);
    }
}

fn mean(sum: &[f64], count: usize) -> Vec<f32> {
    sum.iter().map(|s| (s / count.max(1) as f64) as f32).collect()
}

/// GradientShap (and NeuronGradientShap, whose target is a unit): the mean over samples
/// of (x̃ − b) · ∂F/∂x at b + α(x̃ − b).
pub fn gradient_shap(req: &Request, samples: usize, stdev: f64, seed: u64) -> Result<Vec<f32>> {
    let (d, shape) = (req.d(), &req.model.input_shape);
    let mut out = average_over_draws(req, samples, stdev, seed, d, &|i, drawn, count| {
        let rows = Batch::new(batch_shape(count, shape), drawn.points.clone())?;
        let grads = gradients(req.model, rows, req.out_layer, &vec![req.targets[i]; count], &Gradient)?;
        Ok(grads
            .data()
            .iter()
            .zip(drawn.noisy.iter().zip(&drawn.baselines))
            .map(|(g, (x, b))| g * (x - b))
            .collect())
    })?;
    zero_outside_window(&mut out, req);
    Ok(out)
}

/// LayerGradientShap at hook point `layer` (units per input): the mean over samples of
/// (h(x̃) − h(b)) · ∂F/∂h at h(b + α(x̃ − b)).
pub fn layer_gradient_shap(
    req: &Request,
    layer: usize,
    units: usize,
    (samples, stdev, seed): (usize, f64, u64),
) -> Result<Vec<f32>> {
    let shape = &req.model.input_shape;
    average_over_draws(req, samples, stdev, seed, units, &|i, drawn, count| {
        let batch = |data: &[f32]| Batch::new(batch_shape(count, shape), data.to_vec());
        let hx = req.model.output_of(batch(&drawn.noisy)?, layer)?;
        let hb = req.model.output_of(batch(&drawn.baselines)?, layer)?;
        let points = batch(&drawn.points)?;
        let hp = req.model.output_of(points.clone(), layer)?;
        let g = gradient::gradients_from(
            req.model,
            hp,
            (layer + 1, Some(&points)),
            req.out_layer,
            &vec![req.targets[i]; count],
            &Gradient,
        )?;
        Ok(g.data()
            .iter()
            .zip(hx.data().iter().zip(hb.data()))
            .map(|(g, (x, b))| g * (x - b))
            .collect())
    })
}

/// DeepLiftShap: DeepLift of the input against every baseline of the distribution, averaged.
pub fn deeplift_shap(req: &Request) -> Result<Vec<f32>> {
    let d = req.d();
    let pool = req.baselines.len() / d.max(1);
    let per_input = par_items(
        req.n(),
        req.control,
        |_| 1,
        |i| {
            let x = req.input(i);
            let inputs: Vec<f32> = x.repeat(pool);
            let mut baselines = req.baselines.to_vec();
            for row in baselines.chunks_mut(d.max(1)) {
                req.features.hold_outside(row, x);
            }
            let targets = vec![req.targets[i]; pool];
            let ids = vec![req.ids[i]; pool];
            let each = Request {
                inputs: &inputs,
                baselines: &baselines,
                targets: &targets,
                ids: &ids,
                layer_values: None,
                predicted: None,
                kept: None,
                keep: None,
                ..*req
            };
            let attr = gradient::attribute(&Method::DeepLift, &each)?;
            let mut sum = vec![0.0f64; d];
            add_rows(&mut sum, &attr);
            Ok(mean(&sum, pool))
        },
    )?;
    Ok(per_input.concat())
}
