//! Running the interpretation operators of a plan: predictions and hook-point values
//! (served by the activation cache when it can), pushed-down input predicates and limits,
//! targets, baselines, the window and groups, THROUGH LAYER probes, the memo of results,
//! the method, and the attribution, layer or prediction relation as a DataFrame.

use polars::prelude::*;
use rayon::prelude::*;

use super::State;
use std::sync::Arc;

use super::cache::{Key, MEMO, input_hash};
use super::forward::{drill_layer, hook_values, logits, tapes_key};
use super::relation::{layer_relation, relation, with_class_names};
use crate::data::{Modality, Selection};
use crate::error::{Error, Result};
use crate::model::{Batch, Model, Op};
use crate::ops::Method;
use crate::ops::gradient::batch_shape;
use crate::ops::{self, Control, Features, OUTSIDE, Rect, Request};
use crate::plan::{
    Attribution, BaselineSpec, GranularitySpec, InputLimit, LayerRef, Prediction, TargetSpec, ThroughSpec, WindowSpec,
};

pub(super) use crate::ops::gradient::argmax;

/// The prediction relation: input, label, prediction, confidence, correct, logits.
pub(super) fn run_prediction(state: &mut State, p: &Prediction) -> Result<DataFrame> {
    state.check_labels(&p.model, &p.data);
    let sel = state.select(&p.data)?;
    let edits: Vec<crate::plan::ActivationEdit> = p.data.activation_edits().into_iter().cloned().collect();
    let logits = if edits.is_empty() {
        logits(state, &p.model, &sel, &[])?
    } else {
        // Still carrying its edits: some FROM names several donors, paired with the inputs.
        let per_input = state.patches_per_input(&p.model, &edits.iter().collect::<Vec<_>>())?;
        if per_input.len() != sel.len() {
            return Err(Error::value(format!(
                "FROM names {} donors for {} input{}: they pair up input by input",
                per_input.len(),
                sel.len(),
                if sel.len() == 1 { "" } else { "s" }
            )));
        }
        let base = state.model(&p.model)?.model.clone();
        let shape = batch_shape(1, &base.input_shape);
        per_input
            .into_par_iter()
            .enumerate()
            .map(|(i, patches)| {
                let row = Batch::new(shape.clone(), sel.dataset.row(sel.rows[i])?.into_owned())?;
                Ok(base.with_patches(patches).logits(row)?.into_data())
            })
            .collect::<Result<Vec<_>>>()?
    };
    let model = state.model(&p.model)?.model.clone();
    let ends_in_softmax = matches!(model.layers.last().map(|l| &l.op), Some(Op::Softmax { .. }));
    let outputs = model.output_len();
    let labels = sel.labels();
    let mut prediction = Vec::with_capacity(sel.len());
    let mut confidence = Vec::with_capacity(sel.len());
    // The k most probable classes of each input, with their probabilities.
    let mut top: Vec<(Vec<i64>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); p.top];
    for l in &logits {
        let k = argmax(l);
        prediction.push(k as i64);
        // The model's probabilities: softmax of the logits, unless the model already
        // ends in a softmax.
        let probs: Vec<f32> = if ends_in_softmax {
            l.clone()
        } else {
            let max = l[k];
            let z: f32 = l.iter().map(|v| (v - max).exp()).sum();
            l.iter().map(|v| (v - max).exp() / z).collect()
        };
        confidence.push(probs[k]);
        if p.top > 0 {
            // Stable: ties keep the lower class first, as torch.topk on CPU does.
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            for (slot, &c) in top.iter_mut().zip(&order) {
                slot.0.push(c as i64);
                slot.1.push(probs[c]);
            }
        }
    }
    let correct: Vec<Option<bool>> = labels
        .iter()
        .zip(&prediction)
        .map(|(l, p)| l.map(|l| l == *p))
        .collect();
    let mut columns = vec![
        Column::new("input".into(), sel.ids()),
        Column::new("label".into(), labels),
        Column::new("prediction".into(), prediction),
        Column::new("confidence".into(), confidence),
        Column::new("correct".into(), correct),
    ];
    for k in 0..outputs {
        columns.push(Column::new(
            format!("logit_{k}").into(),
            logits.iter().map(|l| l[k]).collect::<Vec<f32>>(),
        ));
    }
    for (k, (classes, probs)) in top.into_iter().enumerate() {
        columns.push(Column::new(format!("top{}", k + 1).into(), classes));
        columns.push(Column::new(format!("top{}_confidence", k + 1).into(), probs));
    }
    let df = DataFrame::new(sel.len(), columns)?;
    match &p.classes {
        Some(names) => with_class_names(df, "prediction", names),
        None => Ok(df),
    }
}

/// The attribution relation of an interpretation: one map, or with THROUGH LAYER * one
/// per layer, stacked.
pub(super) fn run_attribution(state: &mut State, a: &Attribution) -> Result<DataFrame> {
    state.check_labels(&a.model, &a.data);
    if !a.all_layers.is_empty() {
        // AT LAYER *: each layer's relation, padded to the stacked columns (a coordinate
        // a layer lacks is NULL there).
        let columns = crate::plan::relation_columns(a);
        let mut out: Option<DataFrame> = None;
        for l in &a.all_layers {
            let mut one = a.clone();
            one.layer = Some(l.clone());
            one.all_layers = Vec::new();
            let df = run_one(state, &one, None)?;
            let exprs: Vec<Expr> = columns
                .iter()
                .map(|c| {
                    if df.column(c).is_ok() {
                        col(c.as_str())
                    } else {
                        lit(NULL).cast(DataType::Int64).alias(c.as_str())
                    }
                })
                .collect();
            let df = df.lazy().select(exprs).collect()?;
            match &mut out {
                None => out = Some(df),
                Some(o) => {
                    o.vstack_mut(&df)?;
                }
            }
        }
        return Ok(out.unwrap_or_default());
    }
    match &a.through {
        Some(ThroughSpec::All(layers)) => {
            let mut out: Option<DataFrame> = None;
            for l in layers {
                let df = run_one(state, a, Some(l))?;
                match &mut out {
                    None => out = Some(df),
                    Some(o) => {
                        o.vstack_mut(&df)?;
                    }
                }
            }
            Ok(out.unwrap_or_default())
        }
        Some(ThroughSpec::Layer(l)) => run_one(state, a, Some(l)),
        None => run_one(state, a, None),
    }
}

/// A model cut at a layer with its fitted probe head (THROUGH LAYER).
pub(crate) struct Probed {
    pub model: Arc<Model>,
    /// How often the probe's argmax agrees with the full model's prediction on the
    /// dataset it was fitted on.
    pub accuracy: f32,
}

/// The inputs an interpretation runs on, with what is known of them before the method.
pub(super) struct Inputs {
    pub(super) sel: Selection,
    pub(super) labels: Vec<Option<i64>>,
    pub(super) ids: Vec<i64>,
    /// Placeholders when `deferred`: the method finds them (ops::predicts_own_targets).
    pub(super) predictions: Vec<usize>,
    pub(super) targets: Vec<usize>,
    pub(super) deferred: bool,
}

impl Inputs {
    /// Keeps the inputs at `keep` (positions).
    fn retain(&mut self, keep: &[usize]) {
        let pick = |v: &[usize]| keep.iter().map(|&i| v[i]).collect::<Vec<_>>();
        self.sel.rows = pick(&self.sel.rows);
        self.predictions = pick(&self.predictions);
        self.targets = pick(&self.targets);
        self.labels = keep.iter().map(|&i| self.labels[i]).collect();
        self.ids = keep.iter().map(|&i| self.ids[i]).collect();
    }
}

fn resolve_inputs(state: &mut State, a: &Attribution) -> Result<Inputs> {
    let mut sel = state.select(&a.data)?;
    if let Some(ids) = &a.chunk {
        // A streamed chunk: its inputs were chosen once for the whole dataset.
        sel.rows = ids.iter().filter_map(|&id| sel.dataset.position_of(id)).collect();
    }
    let model = state.model(&a.model)?.model.clone();
    let n = sel.len();
    // The predicted classes a gradient method explains come from its own forward pass
    // rather than one of their own first — unless a predicate on them runs before it.
    let deferred = a.target == TargetSpec::Predicted
        && ops::predicts_own_targets(&a.method)
        && a.input_filter.is_none()
        && a.contrast.is_none()
        && a.through.is_none();
    let predictions: Vec<usize> = if deferred {
        vec![0; n]
    } else {
        let last = model.layers.len() - 1;
        let drill = drill_layer(state, a);
        hook_values(state, &a.model, &sel, last, &[], drill)?
            .iter()
            .map(|l| argmax(l))
            .collect()
    };
    let labels = sel.labels();
    let ids = sel.ids();
    let targets: Vec<usize> = match &a.target {
        TargetSpec::Predicted => predictions.clone(),
        TargetSpec::PredictedBy(other) => logits(state, other, &sel, &[])?.iter().map(|l| argmax(l)).collect(),
        TargetSpec::Class(c) => vec![*c; n],
        // neuron_conductance explains the predicted class through the unit.
        TargetSpec::Unit(..) if matches!(a.method, Method::NeuronConductance { .. }) => predictions.clone(),
        TargetSpec::Unit(_, u) => vec![*u; n],
        // The similarity head has one output.
        TargetSpec::Similarity(_) => vec![0; n],
        TargetSpec::Label => labels
            .iter()
            .zip(&ids)
            .map(|(l, id)| match l {
                Some(l) if *l >= 0 && (*l as usize) < model.output_len() => Ok(*l as usize),
                Some(l) => Err(Error::value(format!(
                    "input {id} has label {l}, which is not an output of `{}` (0..{})",
                    a.model,
                    model.output_len() - 1
                ))),
                None => Err(Error::value(format!("input {id} has no label"))),
            })
            .collect::<Result<_>>()?,
    };
    let mut inputs = Inputs {
        sel,
        labels,
        ids,
        predictions,
        targets,
        deferred,
    };
    if let (Some(predicate), None) = (&a.input_filter, &a.chunk) {
        // The pushed-down predicate runs on one row per input, before the method.
        let df = DataFrame::new(
            n,
            vec![
                Column::new("input".into(), &inputs.ids),
                Column::new("label".into(), &inputs.labels),
                Column::new(
                    "prediction".into(),
                    inputs.predictions.iter().map(|&p| p as i64).collect::<Vec<_>>(),
                ),
                Column::new(
                    "target".into(),
                    inputs.targets.iter().map(|&t| t as i64).collect::<Vec<_>>(),
                ),
            ],
        )?;
        let kept = df
            .lazy()
            .with_row_index("__position", None)
            .filter(super::relational::expr(predicate)?)
            .select([col("__position")])
            .collect()?;
        let keep: Vec<usize> = kept
            .column("__position")?
            .idx()?
            .iter()
            .flatten()
            .map(|p| p as usize)
            .collect();
        inputs.retain(&keep);
    }
    if let (Some(limit), None) = (a.input_limit, &a.chunk) {
        let wanted = match limit {
            InputLimit::Inputs(k) => k,
            InputLimit::Rows(r) => r.div_ceil(rows_per_input(a, model.input_len())?.max(1)),
        };
        if wanted < inputs.sel.len() {
            inputs.retain(&(0..wanted).collect::<Vec<_>>());
        }
    }
    Ok(inputs)
}

/// The input ids an interpretation will attribute, and the rows of its relation per
/// input (for the executor's streaming decision).
pub(super) fn extent(state: &mut State, a: &Attribution) -> Result<(Vec<i64>, usize)> {
    let inputs = resolve_inputs(state, a)?;
    let d = state.model(&a.model)?.model.input_len();
    Ok((inputs.ids, rows_per_input(a, d)?))
}

/// Rows of the relation per input.
fn rows_per_input(a: &Attribution, d: usize) -> Result<usize> {
    if !a.metrics.is_empty() {
        return Ok(a.metrics.len());
    }
    if a.is_layer_relation() {
        return Ok(crate::plan::result_shape(a).iter().product());
    }
    let f = features(&a.window, &a.granularity, &a.modality, d)?;
    Ok(match a.granularity {
        GranularitySpec::Pixel | GranularitySpec::Patch(_) => f.groups,
        _ => (0..d).filter(|&k| f.in_window(k)).count(),
    })
}

/// An interpretation ready to run: its inputs, baselines and features, and the key
/// of its result in the memo.
struct Prepared {
    inputs: Inputs,
    values: Vec<f32>,
    baselines: Vec<f32>,
    features: Features,
    memo_key: Key,
}

/// The model `name` (or the model it was bound from) bound to inputs of `shape`.
fn model_for_shape(state: &mut State, name: &str, shape: &[usize]) -> Result<Arc<Model>> {
    let base = name
        .strip_suffix(']')
        .and_then(|n| n.rsplit_once('['))
        .map_or(name, |(base, _)| base);
    let loaded = state.model(base)?.model;
    if loaded.input_shape == shape {
        return Ok(loaded);
    }
    let (bound, _) = crate::plan::Catalog::bind_model(&*state, base, shape)?;
    Ok(state.model(&bound)?.model)
}

/// One hash of every selected input's contents (read a block at a time).
fn contents_hash(sel: &Selection) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sel.map_rows(input_hash)?.hash(&mut h);
    Ok(h.finish())
}

fn prepare(state: &mut State, a: &Attribution, through: Option<&LayerRef>) -> Result<Prepared> {
    let inputs = resolve_inputs(state, a)?;
    let loaded = state.model(&a.model)?;
    let (model, model_id) = (loaded.model.clone(), loaded.id);
    let d = model.input_len();
    let n = inputs.sel.len();
    let values = inputs.sel.values()?;
    let features = features(&a.window, &a.granularity, &a.modality, d)?;
    let mut baselines = baselines(state, a, n, d)?;
    // On text the zero baseline is [PAD] everywhere but [CLS] and [SEP] (as Captum's
    // BERT tutorials do), and a constant c is token id c in the same places.
    if let Some(codec) = &model.text {
        let fill = match a.baseline {
            BaselineSpec::Zero => Some(false),
            BaselineSpec::Tokens { mask } => Some(mask),
            _ => None,
        };
        if let Some(with_mask) = fill {
            baselines = values
                .chunks(d.max(1))
                .flat_map(|row| codec.baseline(row, with_mask))
                .collect();
        }
    }
    // Projection: outside the window the input is part of the baseline (a distribution's
    // draws are projected as they are drawn).
    if !a.method.draws_baselines() {
        for (row, input) in baselines.chunks_mut(d.max(1)).zip(values.chunks(d.max(1))) {
            features.hold_outside(row, input);
        }
    }
    // The memo key: everything that determines the result.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    use std::hash::{Hash, Hasher};
    model_id.hash(&mut h);
    if let Some(other) = &a.contrast {
        state.model(other)?.id.hash(&mut h);
    }
    format!(
        "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        a.method, a.window, a.granularity, a.layer, through, a.target, a.modality, a.metrics
    )
    .hash(&mut h);
    if let TargetSpec::Similarity(reference) = &a.target {
        // The reference's content, not only its name (a name can be loaded again).
        input_hash(&state.select(reference)?.values()?).hash(&mut h);
    }
    if through.is_some() {
        // The probe is fitted on the whole dataset.
        contents_hash(&Selection::all(state.dataset(&a.data.name)?))?.hash(&mut h);
    }
    inputs.ids.hash(&mut h);
    inputs.targets.hash(&mut h);
    inputs.labels.hash(&mut h);
    input_hash(&values).hash(&mut h);
    input_hash(&baselines).hash(&mut h);
    let memo_key = Key {
        model: model_id,
        input: h.finish(),
        hook: MEMO,
    };
    Ok(Prepared {
        inputs,
        values,
        baselines,
        features,
        memo_key,
    })
}

/// What PLAN says the caches will serve for an interpretation: whether its result is
/// memoised, and how many of its inputs' outputs the activation cache holds.
pub(super) fn cache_status(state: &mut State, a: &Attribution) -> Result<String> {
    let sel = state.select(&a.data)?;
    let id = state.model(&a.model)?.id;
    let out_hook = state.model(&a.model)?.model.layers.len() - 1;
    let cached = sel
        .map_rows(input_hash)?
        .into_iter()
        .filter(|&input| {
            state.cache.contains(&Key {
                model: id,
                input,
                hook: out_hook,
            })
        })
        .count();
    let layers: Vec<Option<&LayerRef>> = match &a.through {
        Some(ThroughSpec::All(ls)) => ls.iter().map(Some).collect(),
        Some(ThroughSpec::Layer(l)) => vec![Some(l)],
        None => vec![None],
    };
    let outputs = format!("outputs of {cached}/{} inputs in the activation cache", sel.len());
    if a.input_filter
        .as_ref()
        .is_some_and(super::relational::expr_has_subquery)
    {
        // PLAN does not run the subquery that decides which inputs are attributed.
        return Ok(format!(
            "the inputs depend on a subquery, run with the query ({outputs})"
        ));
    }
    let mut memoised = 0;
    for l in &layers {
        let p = prepare(state, a, *l)?;
        if state.cache.contains(&p.memo_key) {
            memoised += 1;
        }
    }
    Ok(if memoised == layers.len() {
        format!("memo hit: the result is served from the memo, no method runs ({outputs})")
    } else if memoised > 0 {
        format!(
            "memo: {memoised} of {} maps served from the memo ({outputs})",
            layers.len()
        )
    } else {
        format!("memo miss: the method runs ({outputs})")
    })
}

/// What PLAN says of how an occlusion or ablation runs on an image model: whether its
/// copies are recomputed on boxes through the first layers (`model::local`), and the
/// share of the dense work that leaves.
pub(super) fn perturbation_strategy(state: &State, a: &Attribution) -> Result<Option<String>> {
    let model = &state.model(&a.model)?.model;
    if model.dynamic.is_some()
        || !matches!(
            a.target,
            TargetSpec::Predicted | TargetSpec::Class(_) | TargetSpec::Label
        )
    {
        return Ok(None);
    }
    let features = features(&a.window, &a.granularity, &a.modality, model.input_len())?;
    let Some(copies) = ops::perturbation::Copies::new(&a.method, &features, model, model.layers.len())? else {
        return Ok(None);
    };
    let count = copies.sets.len() + 1;
    Ok(Some(match copies.boxes {
        None => format!("{count} copies per input, each a dense forward pass"),
        Some(b) => format!(
            "{count} copies per input, recomputed only where they differ through `{}`, then dense: an estimated {:.0}% of the dense work (of the layers boxes can take)",
            model.layers[b.cut - 1].name,
            100.0 * b.share
        ),
    }))
}

/// One relation of an interpretation, with the target's class name beside it when the
/// classes have names.
fn run_one(state: &mut State, a: &Attribution, through: Option<&LayerRef>) -> Result<DataFrame> {
    let df = run_unnamed(state, a, through)?;
    match &a.classes {
        Some(names) => with_class_names(df, "target", names),
        None => Ok(df),
    }
}

fn run_unnamed(state: &mut State, a: &Attribution, through: Option<&LayerRef>) -> Result<DataFrame> {
    let Prepared {
        mut inputs,
        values,
        baselines,
        features,
        memo_key,
    } = prepare(state, a, through)?;
    if state.settings.cache_mb > 0
        && let Some(df) = state.cache.get_relation(&memo_key)
    {
        state.stats.memo_hits += 1;
        return Ok(df);
    }
    let n = inputs.sel.len();
    let (model, probe_accuracy) = match through {
        Some(l) => {
            let p = probe(state, &a.model, &a.data.name, l)?;
            (p.model.clone(), Some(p.accuracy))
        }
        None => (state.model(&a.model)?.model.clone(), None),
    };
    let model = match &a.target {
        TargetSpec::Similarity(reference) => {
            let sel = state.select(reference)?;
            if sel.len() != 1 {
                return Err(Error::value(format!(
                    "the similarity's reference {reference} holds {} inputs; give one",
                    sel.len()
                )));
            }
            // A text reference of another length runs the encoder built for its length.
            let embed = if sel.dataset.sample_shape == model.input_shape {
                model.clone()
            } else {
                model_for_shape(state, &a.model, &sel.dataset.sample_shape)?
            };
            let out = embed.logits(Batch::new(batch_shape(1, &embed.input_shape), sel.values()?)?)?;
            std::sync::Arc::new(model.with_cosine_head(out.data())?)
        }
        _ => model,
    };
    let contrast = match &a.contrast {
        Some(other) => Some(state.model(other)?.model.clone()),
        None => None,
    };

    let cancel = state.cancel.clone();
    let mut control = Control::new(&cancel);
    let label = format!("{} {}", a.method.name(), a.data);
    let progress = match a.method.path_points() {
        // Path methods count steps: one input of many steps shows its progress.
        Some(points) => state.progress(label, n * points, "steps"),
        None => state.progress(label, n, "inputs"),
    };
    let report = crate::output::progress::reporter(&progress);
    control.on_progress = Some(&report);
    let out_layer = match &a.target {
        TargetSpec::Unit(l, _) if !matches!(a.method, Method::NeuronConductance { .. }) => l.index,
        _ => model.layers.len() - 1,
    };
    let neuron = match &a.target {
        TargetSpec::Unit(l, u) => Some((l.index, *u)),
        _ => None,
    };
    let batch_rows = state.batch_rows(&model);
    // The layer's activations come from the activation cache (recorded there by this or
    // an earlier forward pass), so the layer methods run the model's head only once.
    let layer_values: Option<Vec<f32>> = match (&a.layer, through) {
        (Some(l), None) if a.is_layer_relation() && state.settings.cache_mb > 0 => {
            let drill = drill_layer(state, a);
            Some(hook_values(state, &a.model, &inputs.sel, l.index, &[], drill)?.concat())
        }
        _ => None,
    };
    // A drill-down: the passes an earlier query on these inputs kept, if they reach back
    // to this layer; else this query keeps the passes it runs from its layer.
    let tapes_key = match drill_layer(state, a) {
        Some(_) => {
            let d = model.input_len().max(1);
            let hashes: Vec<u64> = values.chunks(d).map(input_hash).collect();
            Some(tapes_key(state.model(&a.model)?.id, &hashes))
        }
        None => None,
    };
    let kept = match (&tapes_key, &a.layer) {
        (Some(key), Some(l)) => state.cache.get_tapes(key).filter(|k| k.covers(l.index, n)),
        _ => None,
    };
    let sink = ops::TapeSink::default();
    let predicted = ops::PredictedOutputs::default();
    let req = Request {
        model: &model,
        inputs: &values,
        baselines: &baselines,
        targets: &inputs.targets,
        ids: &inputs.ids,
        features: &features,
        batch_rows,
        control: &control,
        out_layer,
        layer: a.layer.as_ref().map(|l| l.index),
        neuron,
        layer_values: layer_values.as_deref(),
        predicted: inputs.deferred.then_some(&predicted),
        kept: kept.as_deref(),
        keep: (tapes_key.is_some() && kept.is_none()).then_some(&sink),
    };
    state.stats.attributed_inputs += n;
    let df = if a.is_layer_relation() {
        let result = ops::layer::attribute(&a.method, &req)?;
        if let (Some(key), Some(tapes)) = (tapes_key, sink.take()) {
            state.cache.put_tapes(key, tapes);
        }
        take_predictions(state, &a.model, &mut inputs, &predicted)?;
        layer_relation(&inputs, &result, a)?
    } else {
        let attr = match &contrast {
            None => {
                let attr = ops::attribute(&a.method, &req)?;
                take_predictions(state, &a.model, &mut inputs, &predicted)?;
                attr
            }
            Some(other) => {
                // Two models on one input: φ of f − f_other, which every supported method
                // computes as φ(f) − φ(f_other) (they are linear in the explained output).
                // (The planner refused the methods for which it is not: maps_differences.)
                let signed = match &a.method {
                    Method::Saliency { .. } => Method::Saliency { abs: false },
                    m => m.clone(),
                };
                let mut mine = ops::attribute(&signed, &req)?;
                let theirs = ops::attribute(&signed, &Request { model: other, ..req })?;
                for (x, y) in mine.iter_mut().zip(theirs) {
                    *x -= y;
                }
                if matches!(a.method, Method::Saliency { abs: true }) {
                    mine.iter_mut().for_each(|v| *v = v.abs());
                }
                mine
            }
        };
        if !a.metrics.is_empty() {
            let df = super::evaluate::evaluation_relation(&super::evaluate::Judged {
                a,
                model: &model,
                inputs: &inputs,
                values: &values,
                baselines: &baselines,
                features: &features,
                attr: &attr,
                out_layer,
                batch_rows,
                cancel: &cancel,
            })?;
            if state.settings.cache_mb > 0 {
                state.cache.put_relation(memo_key, df.clone());
            }
            return Ok(df);
        }
        let mut df = relation(
            &inputs.sel,
            &inputs.labels,
            &inputs.predictions,
            &inputs.targets,
            &values,
            &attr,
            &features,
            a,
        )?;
        if let (Some(l), Some(acc)) = (through, probe_accuracy) {
            let rows = df.height();
            df.insert_column(4, Column::new("layer".into(), vec![l.name.as_str(); rows]))?;
            df.insert_column(5, Column::new("probe_accuracy".into(), vec![acc; rows]))?;
        }
        df
    };
    if state.settings.cache_mb > 0 {
        state.cache.put_relation(memo_key, df.clone());
    }
    Ok(df)
}

/// The predicted classes a method found in its own forward pass become the inputs'
/// predictions and targets; its outputs go to the activation cache as a forward pass's
/// would.
fn take_predictions(
    state: &mut State,
    model_name: &str,
    inputs: &mut Inputs,
    predicted: &ops::PredictedOutputs,
) -> Result<()> {
    if !inputs.deferred {
        return Ok(());
    }
    let outputs = predicted
        .take()
        .ok_or_else(|| Error::model("internal: the method left no predictions"))?;
    let loaded = state.model(model_name)?;
    let (units, model_id, out_hook) = (loaded.model.output_len(), loaded.id, loaded.model.layers.len() - 1);
    if outputs.len() != units * inputs.sel.len() {
        return Err(Error::model("internal: the method left predictions of the wrong size"));
    }
    inputs.predictions = outputs.chunks(units).map(argmax).collect();
    inputs.targets = inputs.predictions.clone();
    inputs.deferred = false;
    if state.settings.cache_mb > 0 {
        let hashes = inputs.sel.map_rows(input_hash)?;
        for (row, input) in outputs.chunks(units).zip(hashes) {
            let key = Key {
                model: model_id,
                input,
                hook: out_hook,
            };
            state.cache.put(key, row.to_vec());
        }
    }
    Ok(())
}

/// The probe head of THROUGH LAYER `layer`, fitted on the whole dataset `data` to the
/// model's outputs, or from the session's probes.
fn probe(state: &mut State, model_name: &str, data: &str, layer: &LayerRef) -> Result<Arc<Probed>> {
    let loaded = state.model(model_name)?;
    let (model, id) = (loaded.model.clone(), loaded.id);
    let sel = Selection::all(state.dataset(data)?);
    let key = (id, layer.index, contents_hash(&sel)?);
    if let Some(p) = state.probes.get(&key) {
        return Ok(p.clone());
    }
    let probed = if layer.index + 1 == model.layers.len() {
        // The last layer is the model's output: the model is its own probe.
        Probed {
            model: model.clone(),
            accuracy: 1.0,
        }
    } else {
        let n = sel.len();
        let outputs = logits(state, model_name, &sel, &[])?;
        let rows = state.batch_rows(&model).max(1);
        let p: usize = layer.shape.iter().product();
        let mut h = Vec::with_capacity(n * p);
        let values = sel.values()?;
        let d = model.input_len();
        for chunk in values.chunks(rows * d) {
            let m = chunk.len() / d;
            let out = model.output_of(
                Batch::new(batch_shape(m, &model.input_shape), chunk.to_vec())?,
                layer.index,
            )?;
            h.extend_from_slice(out.data());
            state.cancel_check()?;
        }
        let k = model.output_len();
        let z: Vec<f32> = outputs.concat();
        let fitted = ops::probe::fit(&h, n, p, &z, k)?;
        let cut = model.cut_with_head(layer.index, fitted.weight.clone(), fitted.bias.clone());
        let agree = (0..n)
            .filter(|&i| {
                let row = &h[i * p..(i + 1) * p];
                let scores: Vec<f32> = (0..k)
                    .map(|c| {
                        fitted.bias[c]
                            + row
                                .iter()
                                .zip(&fitted.weight[c * p..(c + 1) * p])
                                .map(|(a, w)| a * w)
                                .sum::<f32>()
                    })
                    .collect();
                argmax(&scores) == argmax(&outputs[i])
            })
            .count();
        state.stats.probes_fitted += 1;
        Probed {
            model: Arc::new(cut),
            accuracy: agree as f32 / n.max(1) as f32,
        }
    };
    let probed = Arc::new(probed);
    state.probes.insert(key, probed.clone());
    Ok(probed)
}

/// The window (projection) and groups (granularity) as the methods see them.
pub(super) fn features(window: &WindowSpec, gran: &GranularitySpec, modality: &Modality, d: usize) -> Result<Features> {
    let mut group_of = vec![OUTSIDE; d];
    let mut groups = 0usize;
    let mut order = Vec::new();
    let mut image = None;
    match modality.grid() {
        Some((c, h, w)) => {
            let rect = match window {
                WindowSpec::Rect(r) => *r,
                _ => Rect {
                    channels: (0, c),
                    rows: (0, h),
                    cols: (0, w),
                },
            };
            image = Some(((c, h, w), rect));
            let (r0, c0) = (rect.rows.0, rect.cols.0);
            let (rh, rw) = (rect.rows.1 - r0, rect.cols.1 - c0);
            let k = match gran {
                GranularitySpec::Patch(k) => *k,
                _ => 1,
            };
            let per_row = rw.div_ceil(k);
            for ch in rect.channels.0..rect.channels.1 {
                for r in rect.rows.0..rect.rows.1 {
                    for col in rect.cols.0..rect.cols.1 {
                        let f = ch * h * w + r * w + col;
                        order.push(f);
                        group_of[f] = match gran {
                            GranularitySpec::Pixel | GranularitySpec::Patch(_) => {
                                (((r - r0) / k) * per_row + (col - c0) / k) as u32
                            }
                            _ => {
                                groups += 1;
                                (groups - 1) as u32
                            }
                        };
                    }
                }
            }
            if matches!(gran, GranularitySpec::Pixel | GranularitySpec::Patch(_)) {
                groups = rh.div_ceil(k) * per_row;
            }
        }
        _ => {
            let picked: Vec<usize> = match window {
                WindowSpec::Columns(cols) => cols.clone(),
                _ => (0..d).collect(),
            };
            let mut sorted = picked.clone();
            sorted.sort_unstable();
            for (g, f) in sorted.iter().enumerate() {
                group_of[*f] = g as u32;
            }
            groups = sorted.len();
            order = picked;
        }
    }
    Ok(Features {
        group_of,
        groups,
        image,
        order,
    })
}

fn baselines(state: &State, a: &Attribution, n: usize, d: usize) -> Result<Vec<f32>> {
    // A distribution to draw from: one row for a single baseline, every row of a dataset.
    let n = if a.method.draws_baselines() { 1 } else { n };
    if let (true, BaselineSpec::Data(r)) = (a.method.draws_baselines(), &a.baseline) {
        let sel = state.select(r)?;
        if sel.is_empty() {
            return Err(Error::shape(format!(
                "BASELINE {r} holds no inputs: {} draws its baselines from it",
                a.method.name()
            )));
        }
        return sel.values();
    }
    Ok(match &a.baseline {
        // Text baselines are made from the inputs (in `prepare`).
        BaselineSpec::Zero | BaselineSpec::Tokens { .. } => vec![0.0; n * d],
        BaselineSpec::Constant(c) => vec![*c; n * d],
        BaselineSpec::Mean(name) => state.dataset(name)?.mean()?.repeat(n),
        BaselineSpec::Data(r) => {
            let sel = state.select(r)?;
            let values = sel.values()?;
            match sel.len() {
                1 => values.repeat(n),
                m if m == n => values,
                m if a.against_other_side => {
                    return Err(Error::shape(format!(
                        "the sides of the ANTIJOIN hold {n} and {m} inputs: each side is the other's baseline, so both need the same number of inputs"
                    )));
                }
                m => {
                    return Err(Error::shape(format!(
                        "BASELINE {r} holds {m} inputs; give one (used for every input) or one per explained input ({n})"
                    )));
                }
            }
        }
    })
}
