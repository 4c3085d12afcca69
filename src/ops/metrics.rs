//! How good an explanation is (`EVALUATE`): faithfulness metrics that run perturbed
//! copies of the inputs through the perturbation engine's batched forward passes
//! (`perturbation::evaluate_with`: every input's copies in full batches, not a loop per
//! sample), robustness that recomputes the explanation on perturbed inputs, and
//! complexity measures of the map itself. Each follows its reference's definition (the
//! `reference` of its `METRICS` entry); sampled metrics draw from the input id's stream
//! of the engine's own generator, so a row does not depend on which inputs share a query.

use std::fmt;

use super::perturbation::evaluate_with;
use super::rng::Rng;
use super::{GivenParam, ParamKind, ParamSpec, ParamValue, Params, Request};
use crate::error::{Error, Result};

/// One metric of an EVALUATE clause, with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// Captum's `infidelity`: E[(Σ I·φ − (f(x) − f(x − I)))²], I ~ N(0, stdev²).
    Infidelity {
        samples: usize,
        stdev: f64,
        seed: u64,
        normalize: bool,
    },
    /// Captum's `sensitivity_max`: max over perturbations U ~ U[−radius, radius] of
    /// ‖φ(x + U) − φ(x)‖ / ‖φ(x)‖.
    SensitivityMax { samples: usize, radius: f64, seed: u64 },
    /// RISE's deletion (`insert = false`) and insertion AUC.
    Curve { insert: bool, steps: usize, fill: Fill },
    /// Quantus' PixelFlipping: the trapezoid area (dx = 1) under the target's probability
    /// as the units are set to the baseline `features_in_step` at a time, most attributed
    /// first.
    PixelFlipping { features_in_step: usize },
    /// Quantus' FaithfulnessCorrelation: Pearson's r between Σφ over random subsets of
    /// units and the drop of the target's logit when they are set to the baseline.
    FaithfulnessCorrelation {
        samples: usize,
        /// Units per subset; None: a quarter of them.
        subset: Option<usize>,
        seed: u64,
    },
    /// The sanity check of Adebayo et al. (Quantus' ModelParameterRandomisation): the
    /// Spearman correlation between |φ| and |φ| of the model with its weighted layers
    /// re-initialised — cumulatively from the top (`top_down`) or one at a time — averaged
    /// over the steps. A map that survives randomisation does not explain the model.
    Randomization { cascade: bool, seed: u64 },
    /// pytorch-grad-cam's ROAD (Rong et al. 2022): the pixels above (MoRF) or below
    /// (LeRF) a percentile of the map replaced by noisy linear imputation from their
    /// neighbours; the change of the target's logit, averaged over the percentiles.
    Road {
        morf: bool,
        percentiles: Vec<u32>,
        seed: u64,
    },
    /// The Gini index of |φ| (Quantus' Sparseness).
    Sparseness,
    /// The entropy of |φ| / Σ|φ| (Quantus' Complexity).
    Complexity,
}

/// A metric as asked: `label` is its call as written (the `metric` column), `metric`
/// its parameters resolved (PLAN prints them all).
#[derive(Clone, Debug, PartialEq)]
pub struct Asked {
    pub label: String,
    pub metric: Metric,
}

/// What deletion removes features to and insertion starts from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    /// The interpretation's BASELINE (zero unless given).
    Baseline,
    /// A Gaussian blur of the input with this σ (in pixels), as RISE's insertion.
    Blur(f64),
}

impl Metric {
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Infidelity { .. } => "infidelity",
            Metric::SensitivityMax { .. } => "sensitivity_max",
            Metric::Curve { insert: false, .. } => "deletion",
            Metric::Curve { insert: true, .. } => "insertion",
            Metric::PixelFlipping { .. } => "pixel_flipping",
            Metric::FaithfulnessCorrelation { .. } => "faithfulness_correlation",
            Metric::Randomization { .. } => "randomization",
            Metric::Road { .. } => "road",
            Metric::Sparseness => "sparseness",
            Metric::Complexity => "complexity",
        }
    }

    /// Whether the metric removes features to the interpretation's BASELINE.
    pub fn uses_baseline(&self) -> bool {
        matches!(
            self,
            Metric::Curve {
                fill: Fill::Baseline,
                ..
            }
        )
    }

    /// Whether the metric runs the model on perturbed inputs (and so needs inputs the
    /// model takes as real numbers, not token ids, for the sampled ones).
    pub fn perturbs_values(&self) -> bool {
        matches!(self, Metric::Infidelity { .. } | Metric::SensitivityMax { .. })
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        match self {
            Metric::Infidelity {
                samples,
                stdev,
                seed,
                normalize,
            } => write!(
                f,
                "(samples = {samples}, stdev = {stdev}, seed = {seed}, normalize = {normalize})"
            ),
            Metric::SensitivityMax { samples, radius, seed } => {
                write!(f, "(samples = {samples}, radius = {radius}, seed = {seed})")
            }
            Metric::Curve { steps, fill, .. } => match fill {
                Fill::Baseline => write!(f, "(steps = {steps}, fill = 'baseline')"),
                Fill::Blur(sigma) => write!(f, "(steps = {steps}, fill = 'blur', sigma = {sigma})"),
            },
            Metric::PixelFlipping { features_in_step } => write!(f, "(features_in_step = {features_in_step})"),
            Metric::FaithfulnessCorrelation { samples, subset, seed } => match subset {
                Some(k) => write!(f, "(samples = {samples}, subset = {k}, seed = {seed})"),
                None => write!(f, "(samples = {samples}, subset = auto, seed = {seed})"),
            },
            Metric::Randomization { cascade, seed } => write!(
                f,
                "(layers = '{}', seed = {seed})",
                if *cascade { "top_down" } else { "independent" }
            ),
            Metric::Road {
                morf,
                percentiles,
                seed,
            } => {
                let p = if percentiles.len() == 1 {
                    percentiles[0].to_string()
                } else {
                    "all".to_string()
                };
                let mode = if *morf { "morf" } else { "lerf" };
                write!(f, "(mode = '{mode}', percentile = {p}, seed = {seed})")
            }
            Metric::Sparseness | Metric::Complexity => Ok(()),
        }
    }
}

pub struct MetricInfo {
    pub name: &'static str,
    pub params: &'static [ParamSpec],
    /// The definition the metric follows to the letter (and is tested against).
    pub reference: &'static str,
    pub summary: &'static str,
    /// Whether a higher value means a better explanation (for the README and \help).
    pub higher_is_better: bool,
}

const fn int(name: &'static str, default: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        kind: ParamKind::Int {
            min: 1,
            max: super::MAX_COUNT,
        },
        default: Some(default),
        setting: None,
    }
}

const fn float(name: &'static str, default: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        kind: ParamKind::Float { min: 0.0 },
        default: Some(default),
        setting: None,
    }
}

const SEED: ParamSpec = ParamSpec {
    name: "seed",
    kind: ParamKind::Int { min: 0, max: i64::MAX },
    default: Some("0"),
    setting: Some("seed"),
};

const CURVE: &[ParamSpec] = &[
    int("steps", "20"),
    ParamSpec {
        name: "fill",
        kind: ParamKind::Choice(&["baseline", "blur"]),
        default: Some("baseline"),
        setting: None,
    },
    float("sigma", "5.0"),
];

pub const METRICS: &[MetricInfo] = &[
    MetricInfo {
        name: "infidelity",
        params: &[
            int("samples", "10"),
            float("stdev", "0.003"),
            SEED,
            ParamSpec {
                name: "normalize",
                kind: ParamKind::Bool,
                default: Some("false"),
                setting: None,
            },
        ],
        reference: "Captum captum.metrics.infidelity (perturbations I ~ N(0, stdev²), input x − I)",
        summary: "mean of (Σ I·φ − (f(x) − f(x − I)))² over noise I, f the target's logit",
        higher_is_better: false,
    },
    MetricInfo {
        name: "sensitivity_max",
        params: &[int("samples", "10"), float("radius", "0.02"), SEED],
        reference: "Captum captum.metrics.sensitivity_max (uniform noise in [−radius, radius], Frobenius norm)",
        summary: "the largest relative change ‖φ(x + U) − φ(x)‖ / ‖φ(x)‖ of the explanation under small noise U",
        higher_is_better: false,
    },
    MetricInfo {
        name: "deletion",
        params: CURVE,
        reference: "RISE (Petsiuk et al. 2018) deletion: trapezoid AUC of the target's probability",
        summary: "features set to the baseline most-attributed first: the area under the target's probability",
        higher_is_better: false,
    },
    MetricInfo {
        name: "insertion",
        params: CURVE,
        reference: "RISE (Petsiuk et al. 2018) insertion: trapezoid AUC of the target's probability",
        summary: "features put back into the baseline (or a blur) most-attributed first: the area under the target's probability",
        higher_is_better: true,
    },
    MetricInfo {
        name: "pixel_flipping",
        params: &[int("features_in_step", "1")],
        reference: "Quantus PixelFlipping (Bach et al. 2015) with return_auc_per_sample: np.trapz of the softmax probability",
        summary: "units set to the baseline most-attributed first, features_in_step at a time: the area under the target's probability",
        higher_is_better: false,
    },
    MetricInfo {
        name: "faithfulness_correlation",
        params: &[
            int("samples", "100"),
            ParamSpec {
                name: "subset",
                kind: ParamKind::Int {
                    min: 0,
                    max: super::MAX_COUNT,
                },
                default: Some("0"),
                setting: None,
            },
            SEED,
        ],
        reference: "Quantus FaithfulnessCorrelation (Bhatt et al. 2020): Pearson r, logits (softmax = False)",
        summary: "Pearson correlation between the attribution of random subsets and the logit's drop when they are removed (subset 0: a quarter of the units)",
        higher_is_better: true,
    },
    MetricInfo {
        name: "randomization",
        params: &[
            ParamSpec {
                name: "layers",
                kind: ParamKind::Choice(&["top_down", "independent"]),
                default: Some("top_down"),
                setting: None,
            },
            SEED,
        ],
        reference: "Quantus ModelParameterRandomisation (Adebayo et al. 2018), return_average_correlation: Spearman of |φ|, torch's default re-initialisation U(±1/√fan_in)",
        summary: "how much the map survives re-initialising the model's weighted layers from the top (Spearman, averaged over the cascade): near 0 is good",
        higher_is_better: false,
    },
    MetricInfo {
        name: "road",
        params: &[
            ParamSpec {
                name: "mode",
                kind: ParamKind::Choice(&["morf", "lerf"]),
                default: Some("morf"),
                setting: None,
            },
            ParamSpec {
                name: "percentile",
                kind: ParamKind::Int { min: 0, max: 99 },
                default: Some("0"),
                setting: None,
            },
            SEED,
        ],
        reference: "pytorch-grad-cam ROADMostRelevantFirstAverage / ROADLeastRelevantFirstAverage (ClassifierOutputTarget; percentile 0: 10, 20, …, 90)",
        summary: "pixels above (morf) / below (lerf) a percentile of the map imputed from their neighbours: the change of the target's logit (morf: more negative is better)",
        higher_is_better: false,
    },
    MetricInfo {
        name: "sparseness",
        params: &[],
        reference: "Quantus Sparseness (Chalasani et al. 2020): Gini index of |φ| / max|φ| + 1e-7",
        summary: "how concentrated the map is: 0 spread evenly, near 1 on one feature",
        higher_is_better: true,
    },
    MetricInfo {
        name: "complexity",
        params: &[],
        reference: "Quantus Complexity (Bhatt et al. 2020): entropy (nats) of |φ| / Σ|φ|",
        summary: "how spread the map is: ln(features) when even, 0 on one feature",
        higher_is_better: false,
    },
];

pub fn metric_info(name: &str) -> Option<&'static MetricInfo> {
    METRICS.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

pub fn metric_names() -> Vec<String> {
    METRICS.iter().map(|m| m.name.to_string()).collect()
}

/// A metric from its call's parameters (checked; `SET seed` fills in a seed).
pub fn resolve_metric(
    info: &MetricInfo,
    given: &[GivenParam],
    setting: &dyn Fn(&str) -> Option<ParamValue>,
) -> Result<Metric> {
    let params = Params::resolve(info.name, info.params, given, setting)?;
    let num = |n: &str| params.num(n);
    Ok(match info.name {
        "infidelity" => Metric::Infidelity {
            samples: num("samples") as usize,
            stdev: num("stdev"),
            seed: num("seed") as u64,
            normalize: params.flag("normalize"),
        },
        "sensitivity_max" => Metric::SensitivityMax {
            samples: num("samples") as usize,
            radius: num("radius"),
            seed: num("seed") as u64,
        },
        "deletion" | "insertion" => {
            let blur = params.text("fill").eq_ignore_ascii_case("blur");
            if !blur && params.given("sigma").is_some() {
                let span = given.iter().find(|g| g.name.eq_ignore_ascii_case("sigma"));
                let err = Error::value("sigma is the blur's width: it applies with fill = 'blur'");
                return Err(match span {
                    Some(g) => err.at(g.name_span),
                    None => err,
                });
            }
            Metric::Curve {
                insert: info.name == "insertion",
                steps: num("steps") as usize,
                fill: if blur { Fill::Blur(num("sigma")) } else { Fill::Baseline },
            }
        }
        "pixel_flipping" => Metric::PixelFlipping {
            features_in_step: num("features_in_step") as usize,
        },
        "faithfulness_correlation" => Metric::FaithfulnessCorrelation {
            samples: num("samples") as usize,
            subset: match num("subset") as usize {
                0 => None,
                k => Some(k),
            },
            seed: num("seed") as u64,
        },
        "randomization" => Metric::Randomization {
            cascade: params.text("layers").eq_ignore_ascii_case("top_down"),
            seed: num("seed") as u64,
        },
        "road" => Metric::Road {
            morf: params.text("mode").eq_ignore_ascii_case("morf"),
            percentiles: match num("percentile") as u32 {
                0 => (1..=9).map(|k| k * 10).collect(),
                p => vec![p],
            },
            seed: num("seed") as u64,
        },
        "sparseness" => Metric::Sparseness,
        "complexity" => Metric::Complexity,
        other => return Err(Error::value(format!("internal: no metric {other}"))),
    })
}

/// The units a curve removes or inserts and the complexity measures read: the features
/// of each GRANULARITY group (one feature each without one), and whether a group's
/// attribution is the sum of its features' (gradient methods) or the value each holds
/// (perturbation methods give every member the group's value).
pub struct Units {
    pub members: Vec<Vec<usize>>,
    pub sum: bool,
}

impl Units {
    fn scores(&self, attr: &[f32]) -> Vec<f64> {
        self.members
            .iter()
            .map(|m| {
                if self.sum {
                    m.iter().map(|&f| attr[f] as f64).sum()
                } else {
                    m.first().map_or(0.0, |&f| attr[f] as f64)
                }
            })
            .collect()
    }
}

/// The method's map of copies of the inputs (see `Evaluation::explain`).
pub type Explain<'a> = dyn Fn(Option<&crate::model::Model>, &[f32], &[usize]) -> Result<Vec<f32>> + Sync + 'a;

/// What a metric reads besides the request: the explanation (n × d), the units, the
/// substrate of the curves (n × d: the baseline, or the blurred input, equal to the
/// input outside the window), and the method itself for the metrics that recompute it.
pub struct Evaluation<'a> {
    pub attr: &'a [f32],
    pub units: &'a Units,
    pub substrate: &'a [f32],
    /// The explanation of copies of the inputs (n' × d), copy c made from the input at
    /// position `owners[c]` (whose target, id and baseline it keeps), by the model or by
    /// another (a re-initialised copy).
    pub explain: &'a Explain<'a>,
}

/// One value per input.
pub fn evaluate(metric: &Metric, req: &Request, ev: &Evaluation) -> Result<Vec<f64>> {
    match metric {
        Metric::Infidelity {
            samples,
            stdev,
            seed,
            normalize,
        } => infidelity(req, ev, *samples, *stdev, *seed, *normalize),
        Metric::SensitivityMax { samples, radius, seed } => sensitivity_max(req, ev, *samples, *radius, *seed),
        Metric::Curve { insert, steps, .. } => {
            let g = ev.units.members.len();
            let counts: Vec<usize> = (0..=*steps).map(|k| k * g / steps).collect();
            let curves = removal_curves(req, ev, *insert, &counts)?;
            Ok(curves.iter().map(|s| trapezoid(s) / *steps as f64).collect())
        }
        Metric::PixelFlipping { features_in_step } => {
            let g = ev.units.members.len();
            let counts: Vec<usize> = (1..=g.div_ceil(*features_in_step))
                .map(|j| (j * features_in_step).min(g))
                .collect();
            let curves = removal_curves(req, ev, false, &counts)?;
            Ok(curves.iter().map(|s| trapezoid(s)).collect())
        }
        Metric::FaithfulnessCorrelation { samples, subset, seed } => {
            faithfulness_correlation(req, ev, *samples, *subset, *seed)
        }
        Metric::Randomization { cascade, seed } => randomization(req, ev, *cascade, *seed),
        Metric::Road {
            morf,
            percentiles,
            seed,
        } => road(req, ev, *morf, percentiles, *seed),
        Metric::Sparseness => Ok((0..req.n())
            .map(|i| sparseness(&ev.units.scores(row(ev.attr, i, req.d()))))
            .collect()),
        Metric::Complexity => Ok((0..req.n())
            .map(|i| complexity(&ev.units.scores(row(ev.attr, i, req.d()))))
            .collect()),
    }
}

fn row(values: &[f32], i: usize, d: usize) -> &[f32] {
    &values[i * d..(i + 1) * d]
}

/// Noise for input `i`'s copies: sample s, feature f (in the window only), drawn in that
/// order from the input's stream — `tools/metric_cases.py` draws the same numbers.
fn noise(req: &Request, i: usize, samples: usize, seed: u64, draw: impl Fn(&mut Rng) -> f64) -> Vec<f32> {
    let d = req.d();
    let mut rng = Rng::new(seed, req.ids[i] as u64);
    let mut out = vec![0.0f32; samples * d];
    for s in 0..samples {
        for f in 0..d {
            if req.features.in_window(f) {
                out[s * d + f] = draw(&mut rng) as f32;
            }
        }
    }
    out
}

fn infidelity(
    req: &Request,
    ev: &Evaluation,
    samples: usize,
    stdev: f64,
    seed: u64,
    normalize: bool,
) -> Result<Vec<f64>> {
    let (n, d) = (req.n(), req.d());
    let noises: Vec<Vec<f32>> = (0..n)
        .map(|i| noise(req, i, samples, seed, |r| r.normal() * stdev))
        .collect();
    // Copy 0 of each input is the input itself, copies 1..=samples are x − I_s.
    let per = samples + 1;
    let make = |k: usize, out: &mut [f32]| {
        let (i, s) = (k / per, k % per);
        out.copy_from_slice(req.input(i));
        if s > 0 {
            for (v, e) in out.iter_mut().zip(row(&noises[i], s - 1, d)) {
                *v -= e;
            }
        }
        Ok(())
    };
    let outputs = target_outputs(req, n * per, per, &make, false)?;
    Ok((0..n)
        .map(|i| {
            let fx = outputs[i * per] as f64;
            let phi = row(ev.attr, i, d);
            let pairs: Vec<(f64, f64)> = (1..per)
                .map(|s| {
                    let explained: f64 = row(&noises[i], s - 1, d)
                        .iter()
                        .zip(phi)
                        .map(|(e, a)| *e as f64 * *a as f64)
                        .sum();
                    (explained, fx - outputs[i * per + s] as f64)
                })
                .collect();
            let beta = if normalize {
                let num: f64 = pairs.iter().map(|(a, b)| a * b).sum();
                let den: f64 = pairs.iter().map(|(a, _)| a * a).sum();
                // Captum's safe_div: a zero denominator divides by 1.
                num / if den == 0.0 { 1.0 } else { den }
            } else {
                1.0
            };
            pairs.iter().map(|(a, b)| (beta * a - b).powi(2)).sum::<f64>() / samples as f64
        })
        .collect())
}

/// The target output of `count` copies (copy k belongs to input k / per), or its softmax
/// probability, batched across inputs.
fn target_outputs(
    req: &Request,
    count: usize,
    per: usize,
    make: &(dyn Fn(usize, &mut [f32]) -> Result<()> + Sync),
    probability: bool,
) -> Result<Vec<f32>> {
    let run = |batch: crate::model::Batch| req.model.output_of(batch, req.out_layer);
    let pick = |k: usize, out: &[f32]| -> Result<f32> {
        let t = req.targets[k / per];
        let Some(&v) = out.get(t) else {
            return Err(Error::value(format!(
                "target {t} is out of range: the model has {} outputs",
                out.len()
            )));
        };
        if !probability {
            return Ok(v);
        }
        let max = out.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let total: f64 = out.iter().map(|&x| (x as f64 - max).exp()).sum();
        Ok(((v as f64 - max).exp() / total) as f32)
    };
    evaluate_with(req, &req.model.input_shape, count, req.batch_rows, make, &run, &pick)
}

fn sensitivity_max(req: &Request, ev: &Evaluation, samples: usize, radius: f64, seed: u64) -> Result<Vec<f64>> {
    let (n, d) = (req.n(), req.d());
    // Inputs a few at a time, so that the perturbed copies of big images stay bounded.
    let per_chunk = (16_000_000 / (samples * d).max(1)).clamp(1, n.max(1));
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(per_chunk) {
        let end = (start + per_chunk).min(n);
        let mut copies = Vec::with_capacity((end - start) * samples * d);
        let mut owners = Vec::with_capacity((end - start) * samples);
        for i in start..end {
            let u = noise(req, i, samples, seed, |r| radius * (2.0 * r.uniform() - 1.0));
            for s in 0..samples {
                copies.extend(req.input(i).iter().zip(row(&u, s, d)).map(|(x, e)| x + e));
                owners.push(i);
            }
        }
        req.control.check()?;
        let perturbed = (ev.explain)(None, &copies, &owners)?;
        for i in start..end {
            let phi = row(ev.attr, i, d);
            let norm = phi.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            let norm = if norm == 0.0 { 1.0 } else { norm };
            let worst = (0..samples)
                .map(|s| {
                    let other = row(&perturbed, (i - start) * samples + s, d);
                    phi.iter()
                        .zip(other)
                        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                        .sum::<f64>()
                        .sqrt()
                        / norm
                })
                .fold(f64::NEG_INFINITY, f64::max);
            out.push(worst);
        }
    }
    Ok(out)
}

/// The units of one input, most attributed first (ties: the lower index first).
fn order(units: &Units, attr: &[f32]) -> Vec<usize> {
    let scores = units.scores(attr);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // A stable sort keeps ties in index order; NaN sorts last.
    order.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or_else(|| scores[a].is_nan().cmp(&scores[b].is_nan()))
    });
    order
}

/// The target's softmax probability at each point of a removal (or insertion) curve:
/// point k has the first `counts[k]` units of the input's order set to the substrate
/// (deletion) or taken from the input into the substrate (insertion). All inputs'
/// points run in full batches.
fn removal_curves(req: &Request, ev: &Evaluation, insert: bool, counts: &[usize]) -> Result<Vec<Vec<f64>>> {
    let (n, d) = (req.n(), req.d());
    let orders: Vec<Vec<usize>> = (0..n).map(|i| order(ev.units, row(ev.attr, i, d))).collect();
    let per = counts.len().max(1);
    let make = |c: usize, out: &mut [f32]| {
        let (i, k) = (c / per, c % per);
        let (from, into) = if insert {
            (req.input(i), row(ev.substrate, i, d))
        } else {
            (row(ev.substrate, i, d), req.input(i))
        };
        out.copy_from_slice(into);
        for &g in &orders[i][..counts[k]] {
            for &f in &ev.units.members[g] {
                out[f] = from[f];
            }
        }
        Ok(())
    };
    let probs = target_outputs(req, n * per, per, &make, true)?;
    Ok(probs
        .chunks(per)
        .map(|s| s.iter().map(|&p| p as f64).collect())
        .collect())
}

/// The trapezoid rule with unit spacing (np.trapz): Σs − s₀/2 − s_last/2.
fn trapezoid(s: &[f64]) -> f64 {
    match s {
        [] | [_] => 0.0,
        [first, .., last] => s.iter().sum::<f64>() - (first + last) / 2.0,
    }
}

fn faithfulness_correlation(
    req: &Request,
    ev: &Evaluation,
    samples: usize,
    subset: Option<usize>,
    seed: u64,
) -> Result<Vec<f64>> {
    let (n, d) = (req.n(), req.d());
    let g = ev.units.members.len();
    let k = subset.unwrap_or((g / 4).max(1));
    if k > g {
        return Err(Error::value(format!(
            "faithfulness_correlation's subset = {k} is more than the {g} units it draws from"
        ))
        .hint(format!("give subset = 1 … {g}")));
    }
    // Each input's subsets: the first k of a random permutation of the units, drawn from
    // the input's stream (`tools/metric_cases.py` draws the same).
    let subsets: Vec<Vec<Vec<usize>>> = (0..n)
        .map(|i| {
            let mut rng = Rng::new(seed, req.ids[i] as u64);
            (0..samples).map(|_| rng.permutation(g)[..k].to_vec()).collect()
        })
        .collect();
    let per = samples + 1;
    let make = |c: usize, out: &mut [f32]| {
        let (i, s) = (c / per, c % per);
        out.copy_from_slice(req.input(i));
        if s > 0 {
            let substrate = row(ev.substrate, i, d);
            for &u in &subsets[i][s - 1] {
                for &f in &ev.units.members[u] {
                    out[f] = substrate[f];
                }
            }
        }
        Ok(())
    };
    let outputs = target_outputs(req, n * per, per, &make, false)?;
    Ok((0..n)
        .map(|i| {
            let scores = ev.units.scores(row(ev.attr, i, d));
            let fx = outputs[i * per] as f64;
            let sums: Vec<f64> = subsets[i].iter().map(|s| s.iter().map(|&u| scores[u]).sum()).collect();
            let drops: Vec<f64> = (1..per).map(|s| fx - outputs[i * per + s] as f64).collect();
            pearson(&sums, &drops)
        })
        .collect())
}

/// Pearson's r (NaN when either side is constant, as scipy's).
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        return f64::NAN;
    }
    cov / (va.sqrt() * vb.sqrt())
}

fn randomization(req: &Request, ev: &Evaluation, cascade: bool, seed: u64) -> Result<Vec<f64>> {
    let (n, d) = (req.n(), req.d());
    let weighted: Vec<usize> = (0..req.model.layers.len())
        .filter(|&l| req.model.layers[l].op.is_linear_or_conv())
        .collect();
    if weighted.is_empty() {
        return Err(Error::value(
            "randomization re-initialises weighted layers, and the model has none",
        ));
    }
    let owners: Vec<usize> = (0..n).collect();
    let original: Vec<Vec<f64>> = (0..n)
        .map(|i| row(ev.attr, i, d).iter().map(|v| v.abs() as f64).collect())
        .collect();
    let mut sums = vec![0.0f64; n];
    // Top down: the last weighted layer, then it and the one before, …; independent: each
    // alone, in the same order.
    for step in 0..weighted.len() {
        req.control.check()?;
        let chosen: Vec<usize> = if cascade {
            weighted[weighted.len() - 1 - step..].to_vec()
        } else {
            vec![weighted[weighted.len() - 1 - step]]
        };
        let random = req.model.reinitialised(&chosen, seed)?;
        let maps = (ev.explain)(Some(&random), req.inputs, &owners)?;
        for (i, sum) in sums.iter_mut().enumerate() {
            let other: Vec<f64> = row(&maps, i, d).iter().map(|v| v.abs() as f64).collect();
            *sum += spearman(&original[i], &other);
        }
    }
    Ok(sums.into_iter().map(|s| s / weighted.len() as f64).collect())
}

/// The image layout (channels, height, width) of the request's inputs.
fn image_of(req: &Request) -> Result<(usize, usize, usize)> {
    match req.features.image {
        Some(((c, h, w), _)) => Ok((c, h, w)),
        None => Err(Error::value(
            "road imputes pixels from their neighbours: it needs images",
        )),
    }
}

fn road(req: &Request, ev: &Evaluation, morf: bool, percentiles: &[u32], seed: u64) -> Result<Vec<f64>> {
    let (n, d) = (req.n(), req.d());
    let (channels, h, w) = image_of(req)?;
    let plane = h * w;
    // The map per pixel (summed over channels), negated for LeRF as pytorch-grad-cam
    // thresholds 1 − map.
    let maps: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let a = row(ev.attr, i, d);
            (0..plane)
                .map(|p| {
                    let v: f64 = (0..channels).map(|c| a[c * plane + p] as f64).sum();
                    if morf { v } else { 1.0 - v }
                })
                .collect()
        })
        .collect();
    let per = percentiles.len() + 1;
    let make = |c: usize, out: &mut [f32]| {
        let (i, k) = (c / per, c % per);
        out.copy_from_slice(req.input(i));
        if k == 0 {
            return Ok(());
        }
        let map = &maps[i];
        let threshold = percentile(map, percentiles[k - 1] as f64);
        let keep: Vec<bool> = map.iter().map(|&v| v < threshold).collect();
        let mut rng = Rng::new(seed, req.ids[i] as u64 * 16 + (k - 1) as u64);
        impute(out, channels, h, w, &keep, &mut rng);
        Ok(())
    };
    let outputs = target_outputs(req, n * per, per, &make, false)?;
    Ok((0..n)
        .map(|i| {
            let before = outputs[i * per];
            // pytorch-grad-cam keeps the differences as float32 and averages them so.
            let diffs: f32 = (1..per).map(|k| outputs[i * per + k] - before).sum();
            (diffs / percentiles.len() as f32) as f64
        })
        .collect())
}

/// numpy's percentile (linear interpolation between the closest ranks).
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// pytorch-grad-cam's noisy linear imputation: each removed pixel (`keep` false) equal
/// to the weighted mean of its 8 neighbours (1/6 beside, 1/12 across a corner; the
/// weights of neighbours off the image dropped), solved per channel by conjugate
/// gradients (the system is symmetric and, with any pixel kept, definite), then noise
/// 0.01·N(0, 1) drawn channel by channel over the removed pixels in index order.
fn impute(image: &mut [f32], channels: usize, h: usize, w: usize, keep: &[bool], rng: &mut Rng) {
    const NEIGHBOURS: [((i64, i64), f64); 8] = [
        ((1, 1), 1.0 / 12.0),
        ((0, 1), 1.0 / 6.0),
        ((-1, 1), 1.0 / 12.0),
        ((1, -1), 1.0 / 12.0),
        ((0, -1), 1.0 / 6.0),
        ((-1, -1), 1.0 / 12.0),
        ((1, 0), 1.0 / 6.0),
        ((-1, 0), 1.0 / 6.0),
    ];
    let unknown: Vec<usize> = (0..h * w).filter(|&p| !keep[p]).collect();
    if unknown.is_empty() {
        return;
    }
    let mut index = vec![usize::MAX; h * w];
    for (k, &p) in unknown.iter().enumerate() {
        index[p] = k;
    }
    // −A as sparse rows: the diagonal (the valid neighbours' weight) and the unknown
    // neighbours' −weights.
    let mut diagonal = vec![0.0f64; unknown.len()];
    let mut links: Vec<Vec<(usize, f64)>> = vec![Vec::new(); unknown.len()];
    let mut known: Vec<Vec<(usize, f64)>> = vec![Vec::new(); unknown.len()];
    for (k, &p) in unknown.iter().enumerate() {
        let (r, c) = ((p / w) as i64, (p % w) as i64);
        for ((dr, dc), weight) in NEIGHBOURS {
            let (nr, nc) = (r + dr, c + dc);
            if nr < 0 || nc < 0 || nr >= h as i64 || nc >= w as i64 {
                continue;
            }
            diagonal[k] += weight;
            let q = nr as usize * w + nc as usize;
            if keep[q] {
                known[k].push((q, weight));
            } else {
                links[k].push((index[q], weight));
            }
        }
    }
    let apply = |x: &[f64]| -> Vec<f64> {
        (0..x.len())
            .map(|k| diagonal[k] * x[k] - links[k].iter().map(|&(j, wt)| wt * x[j]).sum::<f64>())
            .collect()
    };
    let plane = h * w;
    let mut solved: Vec<Vec<f64>> = Vec::with_capacity(channels);
    for ch in 0..channels {
        let values = &image[ch * plane..(ch + 1) * plane];
        let b: Vec<f64> = (0..unknown.len())
            .map(|k| known[k].iter().map(|&(q, wt)| wt * values[q] as f64).sum())
            .collect();
        solved.push(conjugate_gradient(&apply, &b));
    }
    for (ch, x) in solved.iter().enumerate() {
        for (k, &p) in unknown.iter().enumerate() {
            image[ch * plane + p] = x[k] as f32 + 0.01f32 * rng.normal() as f32;
        }
    }
}

/// Solves M x = b for a symmetric positive definite M given as a product.
fn conjugate_gradient(m: &dyn Fn(&[f64]) -> Vec<f64>, b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut x = vec![0.0f64; n];
    let mut r = b.to_vec();
    let mut p = r.clone();
    let mut rr: f64 = r.iter().map(|v| v * v).sum();
    let target = 1e-26 * b.iter().map(|v| v * v).sum::<f64>().max(1e-300);
    for _ in 0..(10 * n).max(100) {
        if rr <= target {
            break;
        }
        let mp = m(&p);
        let pmp: f64 = p.iter().zip(&mp).map(|(a, c)| a * c).sum();
        if pmp <= 0.0 {
            break;
        }
        let alpha = rr / pmp;
        for k in 0..n {
            x[k] += alpha * p[k];
            r[k] -= alpha * mp[k];
        }
        let next: f64 = r.iter().map(|v| v * v).sum();
        let beta = next / rr;
        rr = next;
        for k in 0..n {
            p[k] = r[k] + beta * p[k];
        }
    }
    x
}

/// Ranks from 1, ties given their average rank (scipy.stats.rankdata).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0f64; v.len()];
    let mut k = 0;
    while k < order.len() {
        let mut end = k;
        while end + 1 < order.len() && v[order[end + 1]] == v[order[k]] {
            end += 1;
        }
        let rank = (k + end) as f64 / 2.0 + 1.0;
        for &i in &order[k..=end] {
            out[i] = rank;
        }
        k = end + 1;
    }
    out
}

/// Spearman's ρ: Pearson's r of the ranks (NaN when either side is constant).
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Quantus' Sparseness: the Gini index of |a| normalised by its maximum, plus 1e-7.
fn sparseness(scores: &[f64]) -> f64 {
    let max = scores.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max } else { 1.0 };
    let mut a: Vec<f64> = scores.iter().map(|v| v.abs() / scale + 1e-7).collect();
    a.sort_by(f64::total_cmp);
    let n = a.len() as f64;
    let weighted: f64 = a
        .iter()
        .enumerate()
        .map(|(k, v)| (2.0 * (k as f64 + 1.0) - n - 1.0) * v)
        .sum();
    weighted / (n * a.iter().sum::<f64>())
}

/// Quantus' Complexity: the entropy (natural log) of |a| / Σ|a|.
fn complexity(scores: &[f64]) -> f64 {
    let total: f64 = scores.iter().map(|v| v.abs()).sum();
    if total == 0.0 {
        return 0.0;
    }
    -scores
        .iter()
        .map(|v| v.abs() / total)
        .filter(|&p| p > 0.0)
        .map(|p| p * p.ln())
        .sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gini_and_entropy_of_known_vectors() {
        // Even: Gini 0 and entropy ln 4; all on one feature: Gini (n−1)/n, entropy 0.
        assert!(sparseness(&[1.0, 1.0, 1.0, 1.0]).abs() < 1e-9);
        assert!((complexity(&[1.0, -1.0, 1.0, 1.0]) - 4f64.ln()).abs() < 1e-12);
        assert!((sparseness(&[0.0, 0.0, 0.0, 5.0]) - 0.75).abs() < 1e-6);
        assert_eq!(complexity(&[0.0, 0.0, 0.0, -5.0]), 0.0);
    }

    #[test]
    fn ties_keep_index_order() {
        let units = Units {
            members: (0..4).map(|f| vec![f]).collect(),
            sum: true,
        };
        assert_eq!(order(&units, &[0.5, 2.0, 0.5, 2.0]), vec![1, 3, 0, 2]);
    }
}
