//! Running the interpretation operators of a plan: predictions and hook-point values
//! (served by the activation cache when it can), pushed-down input predicates and limits,
//! targets, baselines, the window and groups, THROUGH LAYER probes, the memo of results,
//! the method, and the attribution, layer or prediction relation as a DataFrame.

use polars::prelude::*;
use rayon::prelude::*;

use super::State;
use std::sync::Arc;

use super::cache::{Key, MEMO, TAPES, input_hash};
use crate::data::{Modality, Selection};
use crate::error::{Error, Result};
use crate::model::{Batch, Forward, Model, Op};
use crate::ops::Method;
use crate::ops::gradient::batch_shape;
use crate::ops::{self, Control, Features, OUTSIDE, Rect, Request};
use crate::plan::{
    Attribution, BaselineSpec, GranularitySpec, InputLimit, LayerRef, Prediction, TargetSpec, ThroughSpec, WindowSpec,
};

/// Logits of every selected input: from the cache where present, else from one batched
/// forward pass over the missing inputs, whose outputs (and any `record`ed hook points)
/// are stored in the cache.
pub(super) fn logits(state: &mut State, model_name: &str, sel: &Selection, record: &[usize]) -> Result<Vec<Vec<f32>>> {
    let last = state.model(model_name)?.model.layers.len() - 1;
    hook_values(state, model_name, sel, last, record, None)
}

/// The layer of a query a drill-down session can answer from kept forward passes: a
/// Grad-CAM or layer gradient × activation at a layer, for classes of the model's own
/// output, with the cache on. Such a query's forward pass keeps what a backward from an
/// earlier stage needs, so the next target or earlier layer runs only the backward part.
fn drill_layer(state: &State, a: &Attribution) -> Option<usize> {
    // (Not for a streamed audit's chunks: no later query asks for the same inputs.)
    let applies = state.settings.cache_mb > 0
        && a.chunk.is_none()
        && a.is_layer_relation()
        && a.through.is_none()
        && a.contrast.is_none()
        && matches!(
            a.method,
            Method::GradCam { .. } | Method::Cam { .. } | Method::LayerGradientXActivation
        )
        && matches!(
            a.target,
            TargetSpec::Predicted | TargetSpec::PredictedBy(_) | TargetSpec::Class(_) | TargetSpec::Label
        );
    applies.then(|| a.layer.as_ref().map(|l| l.index)).flatten()
}

/// One chunk's forward pass: per wanted hook point, each input's values; and what the
/// pass kept for a drill-down.
type ChunkForward = (Vec<Vec<Vec<f32>>>, Option<crate::model::Tape>);

/// The key of the forward passes kept over these inputs, in this order.
fn tapes_key(model: u64, hashes: &[u64]) -> Key {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    use std::hash::{Hash, Hasher};
    hashes.hash(&mut h);
    Key {
        model,
        input: h.finish(),
        hook: TAPES,
    }
}

/// Where a forward pass for a drill-down at `layer` starts keeping: after the earliest of
/// the model's named stages up to `layer` (or `layer` itself) that later layers read only
/// through, and whose kept values for `inputs` inputs fit `budget` bytes.
fn drill_start(model: &Model, layer: usize, inputs: usize, budget: usize) -> Option<usize> {
    let mut hooks: Vec<usize> = model
        .aliases
        .iter()
        .filter(|(name, _)| !name.contains(['.', '/']))
        .map(|(_, &stage)| stage)
        .filter(|&stage| stage < layer)
        .chain([layer])
        .collect();
    hooks.sort_unstable();
    hooks.into_iter().find_map(|hook| {
        let kept: usize = model.layers[hook..]
            .iter()
            .map(|l| l.out_shape.iter().product::<usize>())
            .sum();
        (4 * kept * inputs <= budget && model.can_start_at(hook + 1)).then_some(hook + 1)
    })
}

/// The values of hook point `hook` for every selected input, as `logits` gets the
/// outputs: from the cache where present, else from one batched forward pass that stores
/// `hook`, the outputs and any `record`ed hook points.
pub(super) fn hook_values(
    state: &mut State,
    model_name: &str,
    sel: &Selection,
    hook: usize,
    record: &[usize],
    drill: Option<usize>,
) -> Result<Vec<Vec<f32>>> {
    let loaded = state.model(model_name)?;
    let (model, model_id) = (loaded.model.clone(), loaded.id);
    let out_hook = model.layers.len() - 1;
    let d = model.input_len();
    // Content hashes key the cache; with the cache off there is nothing to key.
    let caching = state.settings.cache_mb > 0;
    let hashes: Vec<u64> = if caching {
        sel.map_rows(input_hash)?
    } else {
        vec![0; sel.len()]
    };
    let mut out: Vec<Option<Vec<f32>>> = Vec::with_capacity(sel.len());
    let mut missing = Vec::new();
    for (i, h) in hashes.iter().enumerate() {
        let key = Key {
            model: model_id,
            input: *h,
            hook,
        };
        let cached = if state.settings.cache_mb > 0 {
            state.cache.get(&key)
        } else {
            None
        };
        if cached.is_none() {
            missing.push(i);
        }
        out.push(cached.map(|v| v.as_ref().clone()));
    }
    if !missing.is_empty() {
        // Chunks no larger than the batch budget, and enough of them to keep every core busy
        // (eight per thread: measured faster than two for PREDICT over the 397 digits —
        // smaller chunks stay in cache, and a slower core holds up less), but no fewer
        // than one per thread: filling a wide layer's block of rows must not leave a core
        // idle (ResNet-18's head made 4 inputs one chunk on one core).
        let threads = rayon::current_num_threads();
        let rows = state
            .batch_rows(&model)
            .min(
                missing
                    .len()
                    .div_ceil(threads * 8)
                    .max(model.inputs_for_wide_products())
                    .min(missing.len().div_ceil(threads)),
            )
            .max(1);
        let mut wanted: Vec<usize> = record.to_vec();
        wanted.push(out_hook);
        wanted.push(hook);
        if caching {
            // The model's named stages (ResNet's layer1..layer4) are recorded too, while
            // they take at most a quarter of the cache: a drill-down to another stage
            // then runs only the head from there, not the whole forward again.
            let budget = (state.settings.cache_mb << 20) / 4;
            let mut bytes = 0usize;
            // Top-level modules only (no node names, no submodules such as layer3.0).
            let stages = model.aliases.iter().filter(|(name, _)| !name.contains(['.', '/']));
            for (_, &stage) in stages {
                let Some(layer) = model.layers.get(stage) else { continue };
                bytes += 4 * missing.len() * layer.out_shape.iter().product::<usize>();
                if bytes > budget {
                    break;
                }
                wanted.push(stage);
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        // A drill-down's first forward keeps its passes from a stage on (when it runs
        // for all the inputs, in their order: what a later query looks them up by).
        let keep_from = match drill {
            Some(layer) if caching && missing.len() == sel.len() => {
                drill_start(&model, layer, sel.len(), (state.settings.cache_mb << 20) / 4)
            }
            _ => None,
        };
        let cancel = state.cancel.clone();
        // Forward the missing inputs chunk by chunk, in parallel; keep the wanted hook points.
        let chunks: Vec<ChunkForward> = missing
            .par_chunks(rows)
            .map(|chunk| {
                if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(Error::cancelled());
                }
                let mut data = Vec::with_capacity(chunk.len() * d);
                for &i in chunk {
                    data.extend_from_slice(&sel.dataset.row(sel.rows[i])?);
                }
                // The wanted values are copied as the pass makes them: a pass that kept
                // every value and memo for this cost more than the forward itself.
                let seen: std::sync::Mutex<Vec<Option<Vec<Vec<f32>>>>> =
                    std::sync::Mutex::new(vec![None; wanted.len()]);
                let copy = |layer: usize, y: &mut Batch| -> Result<()> {
                    if let Ok(w) = wanted.binary_search(&layer) {
                        let rows = (0..y.rows()).map(|r| y.row(r).to_vec()).collect();
                        if let Ok(mut seen) = seen.lock() {
                            seen[w] = Some(rows);
                        }
                    }
                    Ok(())
                };
                let input = Batch::new(batch_shape(chunk.len(), &model.input_shape), data)?;
                let split = keep_from.unwrap_or(model.layers.len());
                let head = Forward {
                    from: 0,
                    to: split,
                    keep: false,
                    hook: Some(&copy),
                };
                let mut tape = None;
                let mid = model.run(input, &head)?.into_output();
                if split < model.layers.len() {
                    let tail = Forward {
                        from: split,
                        to: model.layers.len(),
                        keep: true,
                        hook: Some(&copy),
                    };
                    tape = Some(model.run(mid, &tail)?);
                }
                let seen = seen
                    .into_inner()
                    .map_err(|_| Error::model("internal: a forward pass's hook panicked"))?;
                let seen = seen
                    .into_iter()
                    .map(|v| v.ok_or_else(|| Error::model("internal: a hook point the forward pass did not reach")))
                    .collect::<Result<Vec<_>>>()?;
                Ok((seen, tape))
            })
            .collect::<Result<_>>()?;
        let (chunks, tapes): (Vec<_>, Vec<_>) = chunks.into_iter().unzip();
        if keep_from.is_some() {
            let tapes = ops::KeptTapes {
                tapes: tapes.into_iter().flatten().collect(),
            };
            state.cache.put_tapes(tapes_key(model_id, &hashes), tapes);
        }
        for (chunk, per_hook) in missing.chunks(rows).zip(chunks) {
            for (j, &i) in chunk.iter().enumerate() {
                for (h, values) in wanted.iter().zip(&per_hook) {
                    if *h == hook {
                        out[i] = Some(values[j].clone());
                    }
                    if state.settings.cache_mb > 0 {
                        state.cache.put(
                            Key {
                                model: model_id,
                                input: hashes[i],
                                hook: *h,
                            },
                            values[j].clone(),
                        );
                    }
                }
            }
        }
    }
    Ok(out.into_iter().map(|o| o.unwrap_or_default()).collect())
}

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
struct Inputs {
    sel: Selection,
    labels: Vec<Option<i64>>,
    ids: Vec<i64>,
    /// Placeholders when `deferred`: the method finds them (ops::predicts_own_targets).
    predictions: Vec<usize>,
    targets: Vec<usize>,
    deferred: bool,
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
        "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        a.method, a.window, a.granularity, a.layer, through, a.target, a.modality
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

/// A `class` column right after the class-index column `key`: the name of each row's
/// class (null past the names).
pub(super) fn with_class_names(mut df: DataFrame, key: &str, names: &[String]) -> Result<DataFrame> {
    let index = df.column(key)?.cast(&DataType::Int64)?;
    let class: Vec<Option<&str>> = index
        .i64()?
        .iter()
        .map(|k| {
            k.and_then(|k| usize::try_from(k).ok())
                .and_then(|k| names.get(k))
                .map(String::as_str)
        })
        .collect();
    let at = df.get_column_index(key).map_or(df.width(), |i| i + 1);
    df.insert_column(at, Column::new("class".into(), class))?;
    Ok(df)
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
        Some(points) => {
            crate::output::progress::Progress::counting(label, n * points, "steps", state.progress_observer.clone())
        }
        None => crate::output::progress::Progress::on_terminal(label, n, state.progress_observer.clone()),
    };
    let report = |done: usize| {
        if let Some(p) = &progress {
            p.update(done)
        }
    };
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
                let signed = match &a.method {
                    Method::Saliency { .. } => Method::Saliency { abs: false },
                    Method::SmoothGrad { abs: true, .. }
                    | Method::SmoothGrad {
                        variant: ops::NoiseVariant::Squared | ops::NoiseVariant::Variance,
                        ..
                    }
                    | Method::GuidedGradCam
                    | Method::Lime { .. } => {
                        return Err(Error::value(format!(
                            "{} of a difference of two models is not the difference of their maps",
                            a.method
                        ))
                        .hint("use integrated_gradients, deeplift, occlusion, feature_ablation or shapley_sampling"));
                    }
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

/// The layer relation: one row per (input, unit of the result).
fn layer_relation(inputs: &Inputs, result: &ops::layer::LayerAttribution, a: &Attribution) -> Result<DataFrame> {
    let n = inputs.sel.len();
    let per: usize = result.shape.iter().product();
    let rows = n * per;
    let layer_name = a.layer.as_ref().map_or("", |l| l.name.as_str());
    let repeat_i64 = |v: Vec<i64>| -> Vec<i64> { v.iter().flat_map(|x| std::iter::repeat_n(*x, per)).collect() };
    let mut columns = vec![
        Column::new("input".into(), repeat_i64(inputs.ids.clone())),
        Column::new(
            "label".into(),
            inputs
                .labels
                .iter()
                .flat_map(|x| std::iter::repeat_n(*x, per))
                .collect::<Vec<Option<i64>>>(),
        ),
        Column::new(
            "prediction".into(),
            repeat_i64(inputs.predictions.iter().map(|&p| p as i64).collect()),
        ),
        Column::new(
            "target".into(),
            repeat_i64(inputs.targets.iter().map(|&p| p as i64).collect()),
        ),
        // One value for every row: a scalar column, not 25,000 strings built one by one.
        Column::new_scalar(
            "layer".into(),
            Scalar::new(DataType::String, AnyValue::StringOwned(layer_name.into())),
            rows,
        ),
        Column::new("unit".into(), (0..rows).map(|r| (r % per) as i64).collect::<Vec<i64>>()),
    ];
    let names = crate::plan::unit_coordinates(&result.shape, &a.modality);
    let mut strides = vec![1usize; result.shape.len()];
    for k in (0..result.shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * result.shape[k + 1];
    }
    for (k, name) in names.iter().enumerate() {
        let (stride, len) = (strides[k], result.shape[k]);
        columns.push(Column::new(
            (*name).into(),
            (0..rows)
                .map(|r| ((r % per) / stride % len) as i64)
                .collect::<Vec<i64>>(),
        ));
    }
    let activation = match &result.activations {
        Some(acts) if acts.len() == rows => Column::new("activation".into(), acts),
        _ => Column::full_null("activation".into(), rows, &DataType::Float32),
    };
    if crate::plan::is_attention(names) {
        columns.push(activation.clone().with_name("weight".into()));
    }
    columns.push(activation);
    columns.push(Column::new("attribution".into(), result.values.clone()));
    let df = DataFrame::new(rows, columns)?;
    // A text input's rows stop at its last token: padding positions are not shown.
    if let Modality::Text { tokens, .. } = &a.modality {
        let token_axes: Vec<usize> = (0..names.len())
            .filter(|&k| matches!(names[k], "token" | "query" | "key"))
            .collect();
        if !token_axes.is_empty() {
            let keep: Vec<bool> = (0..rows)
                .map(|r| {
                    let length = tokens.get(inputs.ids[r / per] as usize).map_or(usize::MAX, Vec::len);
                    token_axes
                        .iter()
                        .all(|&k| (r % per) / strides[k] % result.shape[k] < length)
                })
                .collect();
            return Ok(df.filter(&BooleanChunked::from_slice("keep".into(), &keep))?);
        }
    }
    Ok(df)
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

/// Builds the attribution relation: one row per (input, feature), or per (input, group).
#[allow(clippy::too_many_arguments)]
fn relation(
    sel: &Selection,
    labels: &[Option<i64>],
    predictions: &[usize],
    targets: &[usize],
    inputs: &[f32],
    attr: &[f32],
    features: &Features,
    a: &Attribution,
) -> Result<DataFrame> {
    let d = features.len();
    let grouped = matches!(
        a.granularity,
        GranularitySpec::Pixel | GranularitySpec::Patch(_) | GranularitySpec::Word
    );
    let members: Vec<Vec<usize>> = if grouped && a.granularity != GranularitySpec::Word {
        features.members()
    } else {
        let mut fs: Vec<usize> = (0..d).filter(|&f| features.in_window(f)).collect();
        fs.sort_unstable();
        fs.into_iter().map(|f| vec![f]).collect()
    };
    let sum_groups = a.method.sums_groups();
    let rows = sel.len() * members.len();
    let ids = sel.ids();
    let mut c_input = Vec::with_capacity(rows);
    let mut c_label = Vec::with_capacity(rows);
    let mut c_pred = Vec::with_capacity(rows);
    let mut c_target = Vec::with_capacity(rows);
    // Group and size columns only when there are groups: a streamed chunk's memory is
    // mostly these columns.
    let mut c_group = Vec::with_capacity(if grouped { rows } else { 0 });
    let mut c_feature = Vec::with_capacity(rows);
    let mut c_size = Vec::with_capacity(if grouped { rows } else { 0 });
    let mut c_value = Vec::with_capacity(rows);
    let mut c_attr = Vec::with_capacity(rows);
    let mut c_text: Vec<String> = Vec::new();
    for i in 0..sel.len() {
        let x = &inputs[i * d..(i + 1) * d];
        let at = &attr[i * d..(i + 1) * d];
        let words;
        let members: &[Vec<usize>] = match &a.modality {
            Modality::Text { words: w, .. } if a.granularity == GranularitySpec::Word => {
                words = word_groups(&members, w.get(ids[i] as usize).map_or(&[][..], Vec::as_slice));
                &words
            }
            _ => &members,
        };
        // A text input's rows stop at its last token (the rest is padding).
        let length = match &a.modality {
            Modality::Text { tokens, .. } => tokens.get(ids[i] as usize).map_or(d, Vec::len),
            _ => d,
        };
        for (g, m) in members.iter().enumerate() {
            if m[0] >= length {
                continue;
            }
            c_input.push(ids[i]);
            c_label.push(labels[i]);
            c_pred.push(predictions[i] as i64);
            c_target.push(targets[i] as i64);
            if grouped {
                c_group.push(g as i64);
                c_size.push(m.len() as i64);
            }
            c_feature.push(m[0] as i64);
            c_value.push(m.iter().map(|&f| x[f]).sum::<f32>() / m.len() as f32);
            c_attr.push(if sum_groups {
                m.iter().map(|&f| at[f]).sum::<f32>()
            } else {
                at[m[0]]
            });
            if let Modality::Text { tokens, .. } = &a.modality {
                let t = tokens.get(ids[i] as usize).map_or(&[][..], Vec::as_slice);
                c_text.push(word_text(m.iter().filter_map(|&f| t.get(f).map(String::as_str))));
            }
        }
    }
    let c_feature_len = c_feature.len();
    let mut columns = vec![
        Column::new("input".into(), c_input),
        Column::new("label".into(), c_label),
        Column::new("prediction".into(), c_pred),
        Column::new("target".into(), c_target),
    ];
    if grouped {
        columns.push(Column::new("group".into(), c_group));
    }
    match &a.modality {
        Modality::Image { height, width, .. } => {
            let (h, w) = (*height as i64, *width as i64);
            columns.push(Column::new(
                "channel".into(),
                c_feature.iter().map(|f| f / (h * w)).collect::<Vec<i64>>(),
            ));
            columns.push(Column::new(
                "row".into(),
                c_feature.iter().map(|f| f / w % h).collect::<Vec<i64>>(),
            ));
            columns.push(Column::new(
                "col".into(),
                c_feature.iter().map(|f| f % w).collect::<Vec<i64>>(),
            ));
        }
        Modality::Tabular { columns: names } => {
            columns.push(Column::new(
                "column".into(),
                c_feature
                    .iter()
                    .map(|&f| names[f as usize].as_str())
                    .collect::<Vec<&str>>(),
            ));
        }
        Modality::Volume {
            depth, height, width, ..
        } => {
            let (d, h, w) = (*depth as i64, *height as i64, *width as i64);
            for (name, f) in [
                (
                    "channel",
                    Box::new(move |x: i64| x / (d * h * w)) as Box<dyn Fn(i64) -> i64>,
                ),
                ("depth", Box::new(move |x: i64| x / (h * w) % d)),
                ("row", Box::new(move |x: i64| x / w % h)),
                ("col", Box::new(move |x: i64| x % w)),
            ] {
                columns.push(Column::new(
                    name.into(),
                    c_feature.iter().map(|x| f(*x)).collect::<Vec<i64>>(),
                ));
            }
        }
        Modality::Sequence { length, .. } => {
            let l = *length as i64;
            columns.push(Column::new(
                "channel".into(),
                c_feature.iter().map(|f| f / l).collect::<Vec<i64>>(),
            ));
            columns.push(Column::new(
                "position".into(),
                c_feature.iter().map(|f| f % l).collect::<Vec<i64>>(),
            ));
        }
        Modality::Tensor => {}
        Modality::Text { .. } => {
            columns.push(Column::new("token".into(), c_feature.clone()));
            columns.push(Column::new("text".into(), c_text));
        }
    }
    columns.insert(if grouped { 5 } else { 4 }, Column::new("feature".into(), c_feature));
    if grouped {
        columns.push(Column::new("size".into(), c_size));
    }
    columns.push(Column::new("value".into(), c_value));
    columns.push(Column::new("attribution".into(), c_attr));
    Ok(DataFrame::new(c_feature_len, columns)?)
}

/// The windowed token positions (one per member) grouped into words: the tokens of one
/// word together, each special token ([CLS], [SEP]: no word) alone.
fn word_groups(members: &[Vec<usize>], words: &[Option<u32>]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for m in members {
        let f = m[0];
        let word = words.get(f).copied().flatten();
        match out.last_mut() {
            Some(last) if word.is_some() && words.get(last[0]).copied().flatten() == word => last.push(f),
            _ => out.push(vec![f]),
        }
    }
    out
}

/// A word's text from its WordPiece tokens ("play", "##ing" → "playing").
fn word_text<'a>(tokens: impl Iterator<Item = &'a str>) -> String {
    let mut text = String::new();
    for (k, t) in tokens.enumerate() {
        match t.strip_prefix("##") {
            Some(rest) if k > 0 => text.push_str(rest),
            _ => {
                if k > 0 {
                    text.push(' ');
                }
                text.push_str(t);
            }
        }
    }
    text
}

/// Rows a forward pass may hold: the batch_size setting, or what the memory budget allows
/// for the model's activations and their gradients.
pub(super) fn auto_batch_rows(model: &Model, memory_mb: usize) -> usize {
    let floats: usize = model.input_len()
        + model
            .layers
            .iter()
            .map(|l| l.out_shape.iter().product::<usize>())
            .sum::<usize>();
    // A convolution's im2col matrix (and, in the backward, its gradient) is the largest
    // scratch buffer a row needs at one time.
    let scratch = model
        .layers
        .iter()
        .map(|l| match &l.op {
            Op::Conv2d { groups, win, .. } => {
                let positions: usize = l.out_shape.iter().skip(1).product();
                l.in_shape.first().copied().unwrap_or(1) / (*groups).max(1) * win.kernel.0 * win.kernel.1 * positions
            }
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    // Values and gradients of every hook point, plus the scratch, for each row.
    let per_row = (floats + scratch) * 4 * 2;
    // Every thread works on a batch of its own at once: the budget is shared among them.
    let budget = (memory_mb << 20) / rayon::current_num_threads().max(1);
    (budget / per_row.max(1)).clamp(1, 4096)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::exec::Session;
    use crate::plan::{DatasetRef, Pick};

    #[test]
    fn forwards_record_hook_points_and_the_cache_serves_them() {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut s = Session::new();
        s.execute(&format!(
            "LOAD MODEL cnn FROM '{root}/models/digits_cnn.safetensors' ARCH '{root}/models/digits_cnn.json';
             LOAD DATA digits FROM '{root}/data/digits_test_x.npy';"
        ))
        .unwrap();
        let state = &mut s.state;
        let sel = state
            .select(&DatasetRef {
                name: "digits".into(),
                pick: Pick::Range(Some(0), Some(3)),
                edits: Vec::new(),
            })
            .unwrap();
        let model = state.model("cnn").unwrap().model.clone();
        let (id, conv2) = (state.model("cnn").unwrap().id, model.layer_index("conv2").unwrap());
        let first = logits(state, "cnn", &sel, &[conv2]).unwrap();
        assert_eq!(state.cache.len(), 6, "the output and conv2 of three inputs");
        // what was recorded is what a forward pass computes
        let tape = model
            .run(
                Batch::new(vec![3, 1, 8, 8], sel.values().unwrap()).unwrap(),
                &model.full(),
            )
            .unwrap();
        for (i, &r) in sel.rows.iter().enumerate() {
            let key = Key {
                model: id,
                input: input_hash(&sel.dataset.row(r).unwrap()),
                hook: conv2,
            };
            assert_eq!(
                state.cache.get(&key).unwrap().as_slice(),
                tape.hook(conv2).unwrap().row(i)
            );
            assert_eq!(first[i], tape.output().row(i));
        }
        // asked again, the cache answers without a forward pass
        let passes = model.passes.load(Ordering::Relaxed);
        let again = logits(state, "cnn", &sel, &[]).unwrap();
        assert_eq!(again, first);
        assert_eq!(model.passes.load(Ordering::Relaxed), passes);
        // the same content under another id is the same cache entry
        s.execute(&format!(
            "LOAD DATA copy FROM '{root}/data/digits_test_x.npy'; PREDICT cnn(copy[0:3]);"
        ))
        .unwrap();
        assert_eq!(model.passes.load(Ordering::Relaxed), passes);
    }
}
