//! The gradient engine: one forward keeping what the backward needs, one layer-wise
//! backward seeded with the target output, for a tile of rows at a time; tiles run in
//! parallel across the machine's threads. Saliency, input × gradient, SmoothGrad and
//! the rule-based methods are thin uses of it; integrated gradients is in integrated.rs.

use rayon::prelude::*;

use super::rng::Rng;
use super::rules::{Deconvolution, DeepLift, GuidedBackprop};
use super::{Control, Method, NoiseVariant, Request};
use crate::error::{Error, Result};
use crate::model::{BackwardRule, Batch, Forward, Gradient, Model};

/// Gradients of each row's target (a unit of layer `out_layer`'s output) with respect to
/// the row, which is the input of layer `from` (0: a model input; l + 1: hook point l).
/// `context`: the model inputs the rows stand for, when a pass from hook point l needs
/// values from before it (`Model::run_in`).
pub fn gradients_from(
    model: &Model,
    rows: Batch,
    (from, context): (usize, Option<&Batch>),
    out_layer: usize,
    targets: &[usize],
    rule: &dyn BackwardRule,
) -> Result<Batch> {
    let tape = forward_keeping(model, rows, (from, context), out_layer)?;
    model.backward(&tape, one_hot(tape.output(), targets)?, rule, &mut |_, _| {})
}

/// The whole model on `count` model inputs (`values`, row-major), keeping what a
/// backward pass needs: the pass INFLUENCE and TCAV take gradients at layers from.
pub fn full_pass(model: &Model, values: &[f32], count: usize) -> Result<crate::model::Tape> {
    let rows = Batch::new(batch_shape(count, &model.input_shape), values.to_vec())?;
    forward_keeping(model, rows, (0, None), model.layers.len() - 1)
}

/// Layers `from..=out_layer` on `rows`, keeping what a backward pass needs.
fn forward_keeping(
    model: &Model,
    rows: Batch,
    (from, context): (usize, Option<&Batch>),
    out_layer: usize,
) -> Result<crate::model::Tape> {
    let fwd = Forward {
        from,
        to: out_layer + 1,
        keep: true,
        hook: None,
    };
    model.run_in(rows, &fwd, context)
}

/// As `gradients_from`, with each row's target its predicted class (the argmax of its
/// output, found in this same forward pass); also returns the outputs.
pub fn predicted_gradients_from(
    model: &Model,
    rows: Batch,
    start: (usize, Option<&Batch>),
    out_layer: usize,
    rule: &dyn BackwardRule,
) -> Result<(Batch, Batch)> {
    let tape = forward_keeping(model, rows, start, out_layer)?;
    let output = tape.output().clone();
    let targets: Vec<usize> = (0..output.rows()).map(|r| argmax(output.row(r))).collect();
    let grads = model.backward(&tape, one_hot(&output, &targets)?, rule, &mut |_, _| {})?;
    Ok((grads, output))
}

/// Index of the largest value (the first, on ties, as torch.argmax; a NaN wins).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] || (x.is_nan() && !v[best].is_nan()) {
            best = i;
        }
    }
    best
}

/// Gradients of each row's target output with respect to the row (a model input).
pub fn gradients(
    model: &Model,
    rows: Batch,
    out_layer: usize,
    targets: &[usize],
    rule: &dyn BackwardRule,
) -> Result<Batch> {
    gradients_from(model, rows, (0, None), out_layer, targets, rule)
}

/// The seed of a backward pass: 1 at each row's target unit.
pub(crate) fn one_hot(out: &Batch, targets: &[usize]) -> Result<Batch> {
    let units = out.sample_len();
    let mut seed = Batch::zeros(out.shape().to_vec());
    for (r, &t) in targets.iter().enumerate() {
        if t >= units {
            return Err(Error::value(format!(
                "target {t} is out of range: the output has {units} units"
            )));
        }
        seed.row_mut(r)[t] = 1.0;
    }
    Ok(seed)
}

/// LRP's starting relevance: each row's target output at its target, 0 elsewhere.
pub(crate) fn output_seed(out: &Batch, targets: &[usize]) -> Result<Batch> {
    let mut seed = one_hot(out, targets)?;
    for (r, &t) in targets.iter().enumerate() {
        seed.row_mut(r)[t] = out.row(r)[t];
    }
    Ok(seed)
}

/// Runs `work` on every item in parallel, stopping early if the statement is cancelled;
/// `units(i)` is how much progress item i makes.
pub fn par_items<T: Send>(
    n: usize,
    control: &Control,
    units: impl Fn(usize) -> usize + Sync,
    work: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            control.check()?;
            let out = work(i)?;
            control.advance(units(i));
            Ok(out)
        })
        .collect()
}

fn rule_of(method: &Method) -> &'static dyn BackwardRule {
    match method {
        Method::GuidedBackprop | Method::GuidedGradCam => &GuidedBackprop,
        Method::Deconvolution => &Deconvolution,
        _ => &Gradient,
    }
}

/// Saliency, input × gradient, SmoothGrad, guided backprop and deconvolution.
pub fn attribute(method: &Method, req: &Request) -> Result<Vec<f32>> {
    let d = req.d();
    let n = req.n();
    let shape = &req.model.input_shape;
    let mut out = match method {
        Method::SmoothGrad {
            samples,
            stdev,
            seed,
            abs,
            variant,
        } => {
            // Captum's NoiseTunnel: the mean over samples of saliency at x + N(0, stdev²);
            // noise only inside the window (outside, the input is held as it is).
            let per_input = par_items(
                n,
                req.control,
                |_| 1,
                |i| {
                    let mut rng = Rng::new(*seed, req.ids[i] as u64);
                    let x = req.input(i);
                    // Sums in f64: the variance is a difference of two of them.
                    let mut sum = vec![0.0f64; d];
                    let mut squares = vec![0.0f64; d];
                    // Noisy copies are made a batch at a time, so memory stays bounded.
                    let chunk = req.batch_rows.max(1);
                    let mut done = 0;
                    while done < *samples {
                        let rows = chunk.min(samples - done);
                        let mut noisy = Vec::with_capacity(rows * d);
                        for _ in 0..rows {
                            push_noisy(&mut noisy, x, req, &mut rng, *stdev);
                        }
                        let grads = gradients(
                            req.model,
                            Batch::new(batch_shape(rows, shape), noisy)?,
                            req.out_layer,
                            &vec![req.targets[i]; rows],
                            &Gradient,
                        )?;
                        for r in 0..rows {
                            for ((s, q), g) in sum.iter_mut().zip(squares.iter_mut()).zip(grads.row(r)) {
                                let a = if *abs { g.abs() } else { *g } as f64;
                                *s += a;
                                *q += a * a;
                            }
                        }
                        req.control.check()?;
                        done += rows;
                    }
                    // Captum's NoiseTunnel: the mean, the mean of squares, or their
                    // difference from the squared mean.
                    let k = *samples as f64;
                    Ok(sum
                        .into_iter()
                        .zip(squares)
                        .map(|(s, q)| match variant {
                            NoiseVariant::Mean => s / k,
                            NoiseVariant::Squared => q / k,
                            NoiseVariant::Variance => q / k - (s / k) * (s / k),
                        } as f32)
                        .collect::<Vec<f32>>())
                },
            )?;
            per_input.concat()
        }
        _ => {
            let tile = tile_rows(req.batch_rows, n);
            let tiles = n.div_ceil(tile);
            let rule = rule_of(method);
            let per_tile = par_items(
                tiles,
                req.control,
                |t| tile.min(n - t * tile),
                |t| {
                    let (a, b) = (t * tile, ((t + 1) * tile).min(n));
                    let rows = Batch::new(batch_shape(b - a, shape), req.inputs[a * d..b * d].to_vec())?;
                    let reference;
                    let deeplift;
                    let rule = if *method == Method::DeepLift {
                        // DeepLift's rules compare every layer with its value on the baseline.
                        let base = Batch::new(batch_shape(b - a, shape), req.baselines[a * d..b * d].to_vec())?;
                        reference = forward_keeping(req.model, base, (0, None), req.out_layer)?;
                        deeplift = DeepLift { reference: &reference };
                        &deeplift as &dyn BackwardRule
                    } else {
                        rule
                    };
                    if let Method::Lrp { spec } = method {
                        let lrp = spec.backward_rule(&req.model.layers);
                        let tape = forward_keeping(req.model, rows, (0, None), req.out_layer)?;
                        let output = tape.output().clone();
                        let targets: Vec<usize> = match req.predicted {
                            Some(_) => (0..output.rows()).map(|r| argmax(output.row(r))).collect(),
                            None => req.targets[a..b].to_vec(),
                        };
                        let seed = spec.seed(&output, &targets)?;
                        let relevance = req.model.backward(&tape, seed, lrp.as_ref(), &mut |_, _| {})?;
                        let outputs = if req.predicted.is_some() {
                            output.into_data()
                        } else {
                            Vec::new()
                        };
                        return Ok((relevance.into_data(), outputs));
                    }
                    if req.predicted.is_some() {
                        let (grads, outputs) =
                            predicted_gradients_from(req.model, rows, (0, None), req.out_layer, rule)?;
                        return Ok((grads.into_data(), outputs.into_data()));
                    }
                    let grads = gradients(req.model, rows, req.out_layer, &req.targets[a..b], rule)?;
                    Ok((grads.into_data(), Vec::new()))
                },
            )?;
            let (grads, outputs): (Vec<Vec<f32>>, Vec<Vec<f32>>) = per_tile.into_iter().unzip();
            if let Some(sink) = req.predicted {
                sink.put(outputs.concat());
            }
            let mut grads = grads.concat();
            match method {
                Method::Saliency { abs: true } => grads.iter_mut().for_each(|g| *g = g.abs()),
                Method::InputXGradient => grads.iter_mut().zip(req.inputs).for_each(|(g, x)| *g *= x),
                // DeepLift: (x − baseline) times the multipliers.
                Method::DeepLift => grads
                    .iter_mut()
                    .zip(req.inputs.iter().zip(req.baselines))
                    .for_each(|(g, (x, b))| *g *= x - b),
                _ => {}
            }
            grads
        }
    };
    zero_outside_window(&mut out, req);
    Ok(out)
}

/// Appends a copy of input `x` with N(0, stdev²) noise on the window's features (outside
/// it the input is held as it is), drawn in feature order.
pub(crate) fn push_noisy(out: &mut Vec<f32>, x: &[f32], req: &Request, rng: &mut Rng, stdev: f64) {
    for (f, &v) in x.iter().enumerate() {
        let noise = if req.features.in_window(f) {
            (rng.normal() * stdev) as f32
        } else {
            0.0
        };
        out.push(v + noise);
    }
}

/// Rows per work tile for `n` inputs: at most the batch budget and 64 (larger tiles
/// gain nothing), and small enough that every core gets several tiles.
pub(crate) fn tile_rows(batch_rows: usize, n: usize) -> usize {
    batch_rows
        .clamp(1, 64)
        .min(n.div_ceil(rayon::current_num_threads() * 4))
        .max(1)
}

pub(crate) fn batch_shape(rows: usize, sample: &[usize]) -> Vec<usize> {
    let mut s = Vec::with_capacity(sample.len() + 1);
    s.push(rows);
    s.extend_from_slice(sample);
    s
}

/// Projection: only the window's features are attributed.
pub(crate) fn zero_outside_window(out: &mut [f32], req: &Request) {
    let d = req.d();
    for (k, v) in out.iter_mut().enumerate() {
        if !req.features.in_window(k % d) {
            *v = 0.0;
        }
    }
}
