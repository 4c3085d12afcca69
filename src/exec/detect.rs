//! The poisoned-data detectors: each input's representation at the layer (from the
//! activation cache or one batched forward pass that also records the outputs), its
//! class (prediction or label), and `ops::detect`'s verdicts as a relation.

use polars::prelude::*;

use super::State;
use super::forward::{hook_values, logits};
use crate::error::{Error, Result};
use crate::ops::detect::{Detector, detect};
use crate::ops::gradient::argmax;
use crate::plan::Detection;

pub(super) fn run_detection(state: &mut State, d: &Detection) -> Result<DataFrame> {
    let sel = state.select(&d.data)?;
    let out_hook = state.model(&d.model)?.model.layers.len() - 1;
    let reps = hook_values(state, &d.model, &sel, d.layer.index, &[out_hook], None)?;
    let predictions: Vec<usize> = logits(state, &d.model, &sel, &[])?.iter().map(|l| argmax(l)).collect();
    let labels = sel.labels();
    let ids = sel.ids();
    let classes: Vec<usize> = if d.detector.by_label() {
        labels
            .iter()
            .zip(&ids)
            .map(|(l, id)| match l {
                Some(k) if *k >= 0 => Ok(*k as usize),
                _ => Err(Error::value(format!(
                    "input {id} of {} has no label (by = 'label')",
                    d.data
                ))),
            })
            .collect::<Result<_>>()?
    } else {
        predictions.clone()
    };
    let dim = reps.first().map_or(0, Vec::len);
    let verdicts = detect(&d.detector, &reps.concat(), dim, &classes)?;
    let n = ids.len();
    let mut columns = vec![
        Column::new("input".into(), ids),
        Column::new("label".into(), labels),
        Column::new(
            "prediction".into(),
            predictions.iter().map(|&p| p as i64).collect::<Vec<i64>>(),
        ),
        Column::new("class".into(), classes.iter().map(|&c| c as i64).collect::<Vec<i64>>()),
        Column::new("layer".into(), vec![d.layer.name.as_str(); n]),
        Column::new("score".into(), verdicts.iter().map(|v| v.score).collect::<Vec<f64>>()),
    ];
    if matches!(d.detector, Detector::ActivationClustering { .. }) {
        columns.push(Column::new(
            "cluster".into(),
            verdicts
                .iter()
                .map(|v| v.cluster.map(|c| c as i64))
                .collect::<Vec<Option<i64>>>(),
        ));
        columns.push(Column::new(
            "cluster_share".into(),
            verdicts.iter().map(|v| v.share).collect::<Vec<Option<f64>>>(),
        ));
        columns.push(Column::new(
            "suspicious".into(),
            verdicts.iter().map(|v| v.suspicious).collect::<Vec<Option<bool>>>(),
        ));
    }
    Ok(DataFrame::new(n, columns)?)
}
