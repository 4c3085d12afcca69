//! The perturbation engine: copies of an input, each with some features set to the
//! baseline (or, for Shapley sampling, KernelSHAP and LIME, some set to the input; for
//! feature permutation, to another input's), run forward in batches of at most
//! `batch_rows`, keeping only the target output. The methods differ only in which copies
//! they make and how they credit the change: directly, or through a linear surrogate
//! fitted to the copies' outputs (KernelSHAP, LIME).

use rayon::prelude::*;

use super::gradient::{batch_shape, par_items};
use super::linalg;
use super::rng::Rng;
use super::{Features, Method, Request};
use crate::error::{Error, Result};
use crate::model::Batch;
use crate::model::local::{LocalPass, Region, Span};

/// The target output (a unit of layer `req.out_layer`) for `count` copies, in batches of
/// at most `batch_rows`: `make(k, row)` writes copy k's value where the copies enter the
/// model (`sample` shaped), and `run` takes a batch of them to the outputs of
/// `req.out_layer`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate(
    req: &Request,
    sample: &[usize],
    count: usize,
    target: usize,
    batch_rows: usize,
    make: &(dyn Fn(usize, &mut [f32]) -> Result<()> + Sync),
    run: &(dyn Fn(Batch) -> Result<Batch> + Sync),
) -> Result<Vec<f32>> {
    let pick = |_: usize, out: &[f32]| {
        out.get(target).copied().ok_or_else(|| {
            Error::value(format!(
                "target {target} is out of range: the model has {} outputs",
                out.len()
            ))
        })
    };
    evaluate_with(req, sample, count, batch_rows, make, run, &pick)
}

/// `evaluate` with what is kept of each copy's outputs chosen by `pick(k, outputs)` (the
/// metrics' copies belong to many inputs, each with its own target).
pub(crate) fn evaluate_with(
    req: &Request,
    sample: &[usize],
    count: usize,
    batch_rows: usize,
    make: &(dyn Fn(usize, &mut [f32]) -> Result<()> + Sync),
    run: &(dyn Fn(Batch) -> Result<Batch> + Sync),
    pick: &(dyn Fn(usize, &[f32]) -> Result<f32> + Sync),
) -> Result<Vec<f32>> {
    let d: usize = sample.iter().product();
    let chunk = batch_rows.max(1);
    let outputs: Vec<Vec<f32>> = (0..count.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            req.control.check()?;
            let (a, b) = (c * chunk, ((c + 1) * chunk).min(count));
            let mut rows = vec![0.0f32; (b - a) * d];
            rows.par_chunks_mut(d.max(1))
                .enumerate()
                .try_for_each(|(j, row)| make(a + j, row))?;
            let outputs = run(Batch::new(batch_shape(b - a, sample), rows)?)?;
            (0..b - a).map(|r| pick(a + r, outputs.row(r))).collect()
        })
        .collect::<Result<_>>()?;
    Ok(outputs.concat())
}

/// `evaluate` for copies of the model input `start`, copy k modified by `fill(k, row)`.
fn evaluate_inputs(
    req: &Request,
    start: &[f32],
    count: usize,
    target: usize,
    batch_rows: usize,
    fill: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> Result<Vec<f32>> {
    let make = |k: usize, row: &mut [f32]| {
        row.copy_from_slice(start);
        fill(k, row);
        Ok(())
    };
    let run = |batch: Batch| req.model.output_of(batch, req.out_layer);
    evaluate(req, &req.model.input_shape, count, target, batch_rows, &make, &run)
}

pub fn attribute(method: &Method, req: &Request) -> Result<Vec<f32>> {
    // Occlusion's windows and ablation's groups, and how their copies run, are the same
    // for every input: found once.
    let copies = Copies::new(method, req.features, req.model, req.out_layer + 1)?;
    if let Method::FeaturePermutation { seed } = method {
        return permutation(req, *seed);
    }
    let per_input = par_items(
        req.n(),
        req.control,
        |_| 1,
        |i| match (method, &copies) {
            (Method::Occlusion { .. }, Some(c)) => occlusion(req, i, c),
            (Method::FeatureAblation, Some(c)) => ablation(req, i, c),
            (Method::ShapleySampling { samples, seed }, _) => shapley(req, i, *samples, *seed),
            (Method::KernelShap { .. } | Method::Lime { .. }, _) => surrogate(req, i, method),
            _ => Err(Error::value(format!("{} is not a perturbation method", method.name()))),
        },
    )?;
    Ok(per_input.concat())
}

/// The copies occlusion and feature ablation make of each input: the feature sets each
/// sets to the baseline, and, where the sets are boxes of an image whose first layers
/// can recompute only what each changes (`model::local`), their spans and the layer
/// where the copies continue densely.
pub struct Copies {
    pub sets: Vec<Vec<usize>>,
    pub boxes: Option<Boxes>,
}

pub struct Boxes {
    pub spans: Vec<Span>,
    /// The image's planes' height and width.
    pub plane: (usize, usize),
    /// Layers before it run on boxes.
    pub cut: usize,
    /// The cost model's share of the dense work that remains (for PLAN).
    pub share: f64,
}

impl Copies {
    /// None for a method that makes other copies (Shapley sampling).
    pub fn new(method: &Method, features: &Features, model: &crate::model::Model, to: usize) -> Result<Option<Copies>> {
        let sets = match method {
            Method::Occlusion { window, stride } => occlusion_sets(features, window.unwrap_or(1), stride.unwrap_or(1))?,
            Method::FeatureAblation => features.members(),
            _ => return Ok(None),
        };
        let boxes = features.image.and_then(|((_, h, w), _)| {
            let spans = sets
                .iter()
                .map(|s| Span::of_features(s, h, w))
                .collect::<Option<Vec<_>>>()?;
            let (cut, share) = crate::model::local::work_share(model, &spans, to);
            (cut > 0).then_some(Boxes {
                spans,
                plane: (h, w),
                cut,
                share,
            })
        });
        Ok(Some(Copies { sets, boxes }))
    }
}

/// Where occlusion windows start along an axis of `len`, as Captum places them: every
/// `stride` from 0, plus — when they do not tile the axis — a last window clipped at the
/// edge, so that every position is covered.
pub fn window_starts(len: usize, window: usize, stride: usize) -> Vec<usize> {
    let count = len.saturating_sub(window).div_ceil(stride.max(1)) + 1;
    (0..count).map(|p| p * stride).collect()
}

/// Occlusion's window and stride, settled: from `window = k` (features one by one), or
/// from GRANULARITY patch(k) (patch by patch, stride k) — not both, and not with another
/// grouping — then checked against each extent the window slides over.
pub fn settle_occlusion(
    window: &mut Option<usize>,
    stride: &mut Option<usize>,
    patch: Option<usize>,
    per_feature: bool,
    extents: &[(usize, &str)],
) -> Result<()> {
    match (*window, patch) {
        (Some(_), _) if per_feature => {}
        (Some(_), _) => {
            return Err(Error::value(
                "occlusion takes its window either from window = k or from GRANULARITY patch(k), not both",
            ));
        }
        (None, Some(k)) => {
            if stride.is_some_and(|s| s != k) {
                return Err(Error::value(format!(
                    "with GRANULARITY patch({k}) occlusion moves patch by patch: leave out stride, or give stride = {k}"
                )));
            }
            *window = Some(k);
            *stride = Some(k);
        }
        (None, None) => {
            return Err(Error::value("occlusion needs a window size").hint(
                "write USING occlusion(window = 2, stride = 1), or GRANULARITY patch(2) to occlude whole patches",
            ));
        }
    }
    let (k, st) = (window.unwrap_or(1), stride.unwrap_or(1));
    *stride = Some(st);
    for &(extent, what) in extents {
        check_occlusion(extent, k, st, what)?;
    }
    Ok(())
}

/// Checks an occlusion window against the extent it slides over (Captum's rules).
pub fn check_occlusion(extent: usize, window: usize, stride: usize, what: &str) -> Result<()> {
    if window > extent {
        return Err(Error::shape(format!(
            "an occlusion window of {window} does not fit the {extent} {what} it slides over"
        )));
    }
    if stride > window && window < extent {
        return Err(Error::value(format!(
            "occlusion stride {stride} is larger than its window {window}: features between windows would never be occluded"
        ))
        .hint("use stride ≤ window, as Captum requires"));
    }
    Ok(())
}

/// The feature sets the sliding windows cover (within the query's window).
pub fn occlusion_sets(f: &Features, window: usize, stride: usize) -> Result<Vec<Vec<usize>>> {
    let mut patches = Vec::new();
    if let Some(((_, h, w), rect)) = f.image {
        let (r0, r1) = rect.rows;
        let (c0, c1) = rect.cols;
        // A sequence is one row: its windows are `window` positions long.
        let (rows_window, rows_stride) = if h == 1 { (1, 1) } else { (window, stride) };
        check_occlusion(r1 - r0, rows_window, rows_stride, "rows")?;
        check_occlusion(c1 - c0, window, stride, "columns")?;
        for r in window_starts(r1 - r0, rows_window, rows_stride) {
            for c in window_starts(c1 - c0, window, stride) {
                let mut patch = Vec::new();
                for ch in rect.channels.0..rect.channels.1 {
                    for rr in r0 + r..(r0 + r + rows_window).min(r1) {
                        for cc in c0 + c..(c0 + c + window).min(c1) {
                            patch.push(ch * h * w + rr * w + cc);
                        }
                    }
                }
                patches.push(patch);
            }
        }
    } else {
        let order = &f.order;
        check_occlusion(order.len(), window, stride, "features")?;
        for s in window_starts(order.len(), window, stride) {
            patches.push(order[s..(s + window).min(order.len())].to_vec());
        }
    }
    Ok(patches)
}

/// For each feature set, F(x) − F(x with that set at the baseline), in one batched pass
/// (the unperturbed input is row 0).
fn drops(req: &Request, i: usize, copies: &Copies) -> Result<Vec<f32>> {
    let (x, b) = (req.input(i), req.baseline(i));
    let sets = &copies.sets;
    let (count, target) = (sets.len() + 1, req.targets[i]);
    let out = match &copies.boxes {
        Some(boxes) => {
            let pass = LocalPass::with_cut(req.model, x, boxes.cut, req.out_layer + 1)?;
            let (h, w) = boxes.plane;
            let make = |k: usize, row: &mut [f32]| match k.checked_sub(1) {
                None => {
                    row.copy_from_slice(pass.base_at_cut());
                    Ok(())
                }
                Some(k) => {
                    let span = boxes.spans[k];
                    let mut data = pass.input_box(span);
                    let (bh, bw) = (span.height(), span.width());
                    for &f in &sets[k] {
                        let (ch, r, c) = (f / (h * w), (f / w) % h, f % w);
                        data[ch * bh * bw + (r - span.rows.0) * bw + c - span.cols.0] = b[f];
                    }
                    pass.copy_at_cut(Region { span, data }, row)
                }
            };
            let run = |batch: Batch| pass.finish(batch.into_data());
            evaluate(req, pass.cut_shape(), count, target, req.batch_rows, &make, &run)?
        }
        None => evaluate_inputs(req, x, count, target, req.batch_rows, &|k, row| {
            if k > 0 {
                for &f in &sets[k - 1] {
                    row[f] = b[f];
                }
            }
        })?,
    };
    Ok(out[1..].iter().map(|y| out[0] - y).collect())
}

/// Captum's Occlusion: each feature gets the mean, over the windows covering it, of
/// F(x) − F(x with the window at the baseline).
fn occlusion(req: &Request, i: usize, copies: &Copies) -> Result<Vec<f32>> {
    let d = req.d();
    let mut total = vec![0.0f32; d];
    let mut count = vec![0u32; d];
    for (patch, diff) in copies.sets.iter().zip(drops(req, i, copies)?) {
        for &f in patch {
            total[f] += diff;
            count[f] += 1;
        }
    }
    // features outside the query's window are covered by no occlusion window
    Ok(total
        .iter()
        .zip(&count)
        .map(|(t, &c)| if c == 0 { 0.0 } else { t / c as f32 })
        .collect())
}

/// Captum's FeatureAblation: every feature of a group gets F(x) − F(x with the group at the baseline).
fn ablation(req: &Request, i: usize, copies: &Copies) -> Result<Vec<f32>> {
    Ok(spread(&copies.sets, drops(req, i, copies)?, req.d()))
}

/// Per-feature attributions from one value per group: every feature of a group carries
/// the group's value (Captum's feature_mask convention), features of no group 0.
fn spread(groups: &[Vec<usize>], values: impl IntoIterator<Item = f32>, d: usize) -> Vec<f32> {
    let mut attr = vec![0.0f32; d];
    for (group, v) in groups.iter().zip(values) {
        for &f in group {
            attr[f] = v;
        }
    }
    attr
}

/// Captum's ShapleyValueSampling: for each random order of the groups, add them one at a
/// time to the baseline and credit each with the change it makes; average over orders.
fn shapley(req: &Request, i: usize, samples: usize, seed: u64) -> Result<Vec<f32>> {
    let members = req.features.members();
    let g = members.len();
    let mut rng = Rng::new(seed, req.ids[i] as u64);
    let (x, b) = (req.input(i), req.baseline(i));
    let target = req.targets[i];
    let at_baseline = evaluate_inputs(req, b, 1, target, 1, &|_, _| {})?[0];
    let mut credit = vec![0.0f32; g];
    // Orders are drawn and evaluated a batch's worth at a time, so memory stays bounded
    // however many samples are asked for; the draws are the same either way.
    let per_chunk = (req.batch_rows / g.max(1)).max(1);
    let mut done = 0;
    while done < samples {
        let m = per_chunk.min(samples - done);
        let perms: Vec<Vec<usize>> = (0..m).map(|_| rng.permutation(g)).collect();
        // Row s·g + j has the first j + 1 groups of order s added to the baseline.
        let out = evaluate_inputs(req, b, m * g, target, req.batch_rows, &|k, row| {
            let (s, j) = (k / g, k % g);
            for &grp in &perms[s][..=j] {
                for &f in &members[grp] {
                    row[f] = x[f];
                }
            }
        })?;
        for (s, perm) in perms.iter().enumerate() {
            let mut prev = at_baseline;
            for (j, &grp) in perm.iter().enumerate() {
                let cur = out[s * g + j];
                credit[grp] += cur - prev;
                prev = cur;
            }
        }
        req.control.check()?;
        done += m;
    }
    Ok(spread(&members, credit.iter().map(|c| c / samples as f32), x.len()))
}

/// KernelSHAP and LIME, as Captum's LimeBase runs them: `samples` random coalitions of
/// the interpretable features (the GRANULARITY groups), each a copy of the input whose
/// absent groups are at the baseline; the target output of every copy; a linear model
/// fitted to (coalition, output) pairs with the method's weights; each feature gets its
/// group's coefficient.
fn surrogate(req: &Request, i: usize, method: &Method) -> Result<Vec<f32>> {
    let members = req.features.members();
    let groups = members.len();
    let (x, b) = (req.input(i), req.baseline(i));
    if groups == 0 {
        return Ok(vec![0.0; x.len()]);
    }
    let (samples, seed) = match method {
        Method::KernelShap { samples, seed } | Method::Lime { samples, seed, .. } => (*samples, *seed),
        _ => return Err(Error::value(format!("{} fits no surrogate", method.name()))),
    };
    let mut rng = Rng::new(seed, req.ids[i] as u64);
    let coalitions: Vec<Vec<bool>> = match method {
        Method::KernelShap { .. } => kernel_shap_coalitions(&mut rng, samples, groups),
        _ => (0..samples)
            .map(|_| (0..groups).map(|_| rng.uniform() < 0.5).collect())
            .collect(),
    };
    let copy = |k: usize, row: &mut [f32]| {
        for (present, fs) in coalitions[k].iter().zip(&members) {
            if *present {
                for &f in fs {
                    row[f] = x[f];
                }
            }
        }
    };
    let outputs = evaluate_inputs(req, b, samples, req.targets[i], req.batch_rows, &copy)?;
    let weights: Vec<f64> = match method {
        Method::Lime {
            kernel_width,
            euclidean,
            ..
        } => (0..samples)
            .map(|k| {
                let mut row = b.to_vec();
                copy(k, &mut row);
                let distance = if *euclidean {
                    x.iter()
                        .zip(&row)
                        .map(|(p, q)| ((p - q) as f64).powi(2))
                        .sum::<f64>()
                        .sqrt()
                } else {
                    1.0 - cosine_similarity(x, &row)
                };
                (-distance * distance / (2.0 * kernel_width * kernel_width)).exp()
            })
            .collect(),
        // The Shapley kernel's infinite weights of the empty and full coalitions, as
        // Captum approximates them.
        _ => coalitions
            .iter()
            .map(|c| match c.iter().filter(|p| **p).count() {
                k if k == 0 || k == groups => 1e6,
                _ => 1.0,
            })
            .collect(),
    };
    let design: Vec<f64> = coalitions
        .iter()
        .flatten()
        .map(|p| if *p { 1.0 } else { 0.0 })
        .collect();
    let targets: Vec<f64> = outputs.iter().map(|&v| v as f64).collect();
    let fit = match method {
        Method::Lime { alpha, .. } => linalg::lasso(&design, &targets, &weights, groups, *alpha),
        _ => linalg::least_squares(&design, &targets, &weights, groups),
    };
    Ok(spread(&members, fit.coef.iter().map(|&c| c as f32), x.len()))
}

/// Captum's KernelSHAP coalitions: all groups, then none, then each a uniformly random
/// set of k groups, k drawn with probability ∝ (M − 1) / (k (M − k)) for 0 < k < M
/// (which with equal weights is the Shapley kernel). With one group, k alternates.
fn kernel_shap_coalitions(rng: &mut Rng, samples: usize, groups: usize) -> Vec<Vec<bool>> {
    let sizes: Vec<f64> = (1..groups).map(|k| 1.0 / (k * (groups - k)) as f64).collect();
    let total: f64 = sizes.iter().sum();
    (0..samples)
        .map(|s| {
            let k = match s {
                0 => groups,
                1 => 0,
                _ if sizes.is_empty() => s % 2 * groups,
                _ => {
                    let mut u = rng.uniform() * total;
                    let mut k = sizes.len();
                    for (j, p) in sizes.iter().enumerate() {
                        if u < *p {
                            k = j + 1;
                            break;
                        }
                        u -= p;
                    }
                    k
                }
            };
            let mut present = vec![false; groups];
            for g in rng.permutation(groups).into_iter().take(k) {
                present[g] = true;
            }
            present
        })
        .collect()
}

/// torch's `CosineSimilarity(dim = 0)` of two flattened inputs (0 when one is zero).
fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt().max(1e-8);
    dot / (norm(a) * norm(b))
}

/// Captum's FeaturePermutation over the query's inputs: for each group, a random
/// permutation of the inputs (never the identity), drawn from the seed and the group's
/// index; every input gets F(x) − F(x with the group's features taken from the input the
/// permutation assigns it). Needs two or more inputs.
fn permutation(req: &Request, seed: u64) -> Result<Vec<f32>> {
    let n = req.n();
    if n < 2 {
        return Err(Error::value(format!(
            "feature_permutation shuffles features among the query's inputs, and it has {n}"
        ))
        .hint("select two or more inputs, e.g. FROM m(d[0:32])"));
    }
    let members = req.features.members();
    let identity: Vec<usize> = (0..n).collect();
    let mut perms = Vec::with_capacity(members.len());
    for g in 0..members.len() {
        let mut rng = Rng::new(seed, g as u64);
        let mut p = rng.permutation(n);
        while p == identity {
            p = rng.permutation(n);
        }
        perms.push(p);
    }
    let d = req.d();
    let per_input = par_items(
        n,
        req.control,
        |_| 1,
        |i| {
            let x = req.input(i);
            let out = evaluate_inputs(req, x, members.len() + 1, req.targets[i], req.batch_rows, &|k, row| {
                if k > 0 {
                    let from = req.input(perms[k - 1][i]);
                    for &f in &members[k - 1] {
                        row[f] = from[f];
                    }
                }
            })?;
            Ok(spread(&members, out[1..].iter().map(|y| out[0] - y), d))
        },
    )?;
    Ok(per_input.concat())
}
