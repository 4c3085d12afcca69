//! Forward passes and hook-point values: served by the activation cache where it holds
//! them, else one batched pass over the missing inputs (recording what later queries will
//! ask for), drilled from the latest kept stage when a query goes deeper; and the batch
//! size a memory budget allows.

use rayon::prelude::*;

use super::State;

use super::cache::{Key, TAPES, input_hash};
use crate::data::Selection;
use crate::error::{Error, Result};
use crate::model::{Batch, Forward, Model, Op};
use crate::ops;
use crate::ops::Method;
use crate::ops::gradient::batch_shape;
use crate::plan::{Attribution, TargetSpec};

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
pub(super) fn drill_layer(state: &State, a: &Attribution) -> Option<usize> {
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
pub(super) fn tapes_key(model: u64, hashes: &[u64]) -> Key {
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
