//! TCAV: the explained inputs' gradients at the layer (one forward keeping the pass, one
//! backward from each input's target), the concepts' and random sets' activations there,
//! and `ops::concepts` for the CAVs, scores and t-tests.

use polars::prelude::*;

use super::State;
use crate::data::Selection;
use crate::error::{Error, Result};
use crate::model::{Batch, Gradient, Model};
use crate::ops::concepts::{cav, score, t_test};
use crate::ops::gradient::{argmax, batch_shape, one_hot};
use crate::ops::rng::Rng;
use crate::plan::{TargetSpec, TcavSpec};

pub(super) fn run_tcav(state: &mut State, t: &TcavSpec) -> Result<DataFrame> {
    let model = state.model(&t.model)?.model.clone();
    let sel = state.select(&t.data)?;
    let batch_rows = state.batch_rows(&model);
    let values = sel.values()?;
    let d = model.input_len().max(1);
    let n = sel.len();
    let dim: usize = t.layer.shape.iter().product();
    // The inputs' gradients at the layer, each at its target, and their activations there
    // (the random sets are drawn from them), from one kept pass per tile.
    let mut gradients = Vec::with_capacity(n * dim);
    let mut all = Vec::with_capacity(n * dim);
    for start in (0..n).step_by(batch_rows.max(1)) {
        state.cancel_check()?;
        let end = (start + batch_rows.max(1)).min(n);
        let tape = crate::ops::gradient::full_pass(&model, &values[start * d..end * d], end - start)?;
        let out = tape.output();
        let chunk: Vec<usize> = match &t.target {
            TargetSpec::Class(c) => vec![*c; end - start],
            TargetSpec::Label => sel.labels()[start..end]
                .iter()
                .map(|l| {
                    l.filter(|k| *k >= 0)
                        .map(|k| k as usize)
                        .ok_or_else(|| Error::value("an input has no label"))
                })
                .collect::<Result<_>>()?,
            _ => (0..end - start).map(|r| argmax(out.row(r))).collect(),
        };
        let seed = one_hot(out, &chunk)?;
        let acts = tape
            .hook(t.layer.index)
            .ok_or_else(|| Error::model("internal: the pass kept no activations at the layer"))?;
        all.extend(acts.data().iter().map(|&v| v as f64));
        let g = model.gradient_at(&tape, seed, &Gradient, t.layer.index)?;
        gradients.extend(g.data().iter().map(|&v| v as f64));
    }
    // Random sets drawn from the explained data, as large as the largest concept (at
    // most the data), one more than asked: set 0 is the random-vs-random reference.
    let mut concept_acts = Vec::new();
    for name in &t.concepts {
        let csel = Selection::all(state.dataset(name)?);
        concept_acts.push(activations(&model, &csel.values()?, t.layer.index, batch_rows)?);
    }
    let size = concept_acts
        .iter()
        .map(|a| a.len() / dim.max(1))
        .max()
        .unwrap_or(2)
        .min(n)
        .max(2);
    let mut random_acts = Vec::with_capacity(t.random + 1);
    for r in 0..=t.random {
        let mut rng = Rng::new(t.seed, 0x7CA7_0000 + r as u64);
        let pick = rng.permutation(n);
        random_acts.push(
            pick[..size]
                .iter()
                .flat_map(|&i| all[i * dim..(i + 1) * dim].iter().copied())
                .collect::<Vec<f64>>(),
        );
    }
    let random_scores: Vec<f64> = (1..=t.random)
        .map(|r| score(&gradients, &cav(&random_acts[0], &random_acts[r], dim), dim))
        .collect();
    let random_mean = random_scores.iter().sum::<f64>() / random_scores.len() as f64;
    let target_text = match &t.target {
        TargetSpec::Class(c) => c.to_string(),
        TargetSpec::Label => "label".to_string(),
        _ => "predicted".to_string(),
    };
    let (mut c_concept, mut c_score, mut c_p) = (Vec::new(), Vec::new(), Vec::new());
    for (name, acts) in t.concepts.iter().zip(&concept_acts) {
        state.cancel_check()?;
        let scores: Vec<f64> = (1..=t.random)
            .map(|r| score(&gradients, &cav(acts, &random_acts[r], dim), dim))
            .collect();
        c_concept.push(name.as_str());
        c_score.push(scores.iter().sum::<f64>() / scores.len() as f64);
        c_p.push(t_test(&scores, &random_scores));
    }
    let rows = c_concept.len();
    Ok(DataFrame::new(
        rows,
        vec![
            Column::new("concept".into(), c_concept),
            Column::new("layer".into(), vec![t.layer.name.as_str(); rows]),
            Column::new("target".into(), vec![target_text.as_str(); rows]),
            Column::new("tcav_score".into(), c_score),
            Column::new("random_score".into(), vec![random_mean; rows]),
            Column::new("p_value".into(), c_p),
        ],
    )?)
}

/// The layer's output on rows of model inputs, in f64.
fn activations(model: &Model, values: &[f32], layer: usize, batch_rows: usize) -> Result<Vec<f64>> {
    let d = model.input_len().max(1);
    let n = values.len() / d;
    let mut out = Vec::new();
    for start in (0..n).step_by(batch_rows.max(1)) {
        let end = (start + batch_rows.max(1)).min(n);
        let rows = Batch::new(
            batch_shape(end - start, &model.input_shape),
            values[start * d..end * d].to_vec(),
        )?;
        out.extend(model.output_of(rows, layer)?.data().iter().map(|&v| v as f64));
    }
    Ok(out)
}
