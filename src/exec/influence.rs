//! INFLUENCE: the TracIn relation — a row per training sample and test input (or per
//! training sample, on itself) — from `ops::influence`.

use polars::prelude::*;

use super::State;
use crate::error::{Error, Result};
use crate::ops::Control;
use crate::ops::gradient::argmax;
use crate::ops::influence::{influence, loss_gradients, norm, parameter_layers};
use crate::plan::{Influence, InfluenceLayers, TargetSpec};

pub(super) fn run_influence(state: &mut State, i: &Influence) -> Result<DataFrame> {
    let loaded = state.model(&i.model)?;
    let model = loaded.model.clone();
    // TracInCP: the sum over the checkpoints, each term scaled by its learning rate; else
    // TracIn on the loaded weights.
    let weights: Vec<(std::sync::Arc<crate::model::Model>, f64)> = if loaded.checkpoints.is_empty() {
        vec![(model.clone(), 1.0)]
    } else {
        loaded.checkpoints.clone()
    };
    let layers = match &i.layers {
        InfluenceLayers::Last => parameter_layers(&model, None, false)?,
        InfluenceLayers::All => parameter_layers(&model, None, true)?,
        InfluenceLayers::Named(ls) => {
            parameter_layers(&model, Some(&ls.iter().map(|l| l.index).collect::<Vec<_>>()), false)?
        }
    };
    let train = state.select(&i.train)?;
    let labels = train.labels();
    let classes: Vec<usize> = labels
        .iter()
        .zip(train.ids())
        .map(|(l, id)| match l {
            Some(k) if *k >= 0 => Ok(*k as usize),
            _ => Err(Error::value(format!(
                "training input {id} of {} has no label: its loss needs one",
                i.train
            ))),
        })
        .collect::<Result<_>>()?;
    let batch_rows = state.batch_rows(&model);
    let cancel = state.cancel.clone();
    let mut control = Control::new(&cancel);
    let test = if i.self_influence {
        None
    } else {
        Some(state.select(&i.test)?)
    };
    let total = (train.len() + test.as_ref().map_or(0, |t| t.len())) * weights.len();
    let progress = state.progress(format!("tracin {}", i.train), total, "inputs");
    let report = crate::output::progress::reporter(&progress);
    control.on_progress = Some(&report);

    let train_values = train.values()?;
    let train_ids = train.ids();
    // The test inputs and their targets (at the loaded weights' predictions).
    let test_part = match &test {
        None => None,
        Some(test) => {
            let targets: Vec<usize> = match &i.target {
                TargetSpec::Class(c) => vec![*c; test.len()],
                TargetSpec::Label => test
                    .labels()
                    .iter()
                    .zip(test.ids())
                    .map(|(l, id)| match l {
                        Some(k) if *k >= 0 => Ok(*k as usize),
                        _ => Err(Error::value(format!("test input {id} of {} has no label", i.test))),
                    })
                    .collect::<Result<_>>()?,
                _ => {
                    let out = model.output_len();
                    let logits = super::forward::logits(state, &i.model, test, &[])?;
                    logits.iter().map(|row| argmax(&row[..out.min(row.len())])).collect()
                }
            };
            Some((test.values()?, targets, test.ids()))
        }
    };
    let (n_train, n_test) = (train.len(), test_part.as_ref().map_or(1, |t| t.2.len()));
    let mut sums = vec![0.0f64; n_train * n_test];
    for (weights_k, rate) in &weights {
        let layers_k = match &i.layers {
            InfluenceLayers::Last => parameter_layers(weights_k, None, false)?,
            InfluenceLayers::All => parameter_layers(weights_k, None, true)?,
            InfluenceLayers::Named(_) => layers.clone(),
        };
        let train_grads = loss_gradients(weights_k, &train_values, &classes, &layers_k, batch_rows, &control)?;
        match &test_part {
            None => {
                for (k, g) in train_grads.iter().enumerate() {
                    let value = influence(g, g);
                    sums[k] += rate
                        * if i.normalize {
                            cosine(value, norm(g), norm(g))
                        } else {
                            value
                        };
                }
            }
            Some((values, targets, _)) => {
                let test_grads = loss_gradients(weights_k, values, targets, &layers_k, batch_rows, &control)?;
                let train_norms: Vec<f64> = train_grads.iter().map(|g| norm(g)).collect();
                for (t, tg) in test_grads.iter().enumerate() {
                    let tnorm = norm(tg);
                    for (k, g) in train_grads.iter().enumerate() {
                        let value = influence(g, tg);
                        sums[t * n_train + k] += rate
                            * if i.normalize {
                                cosine(value, train_norms[k], tnorm)
                            } else {
                                value
                            };
                    }
                }
            }
        }
    }
    let (mut c_input, mut c_label, mut c_test) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..n_test {
        for k in 0..n_train {
            c_input.push(train_ids[k]);
            c_label.push(labels[k]);
            c_test.push(match &test_part {
                None => train_ids[k],
                Some((_, _, ids)) => ids[t],
            });
        }
    }
    let c_influence = sums;
    let rows = c_input.len();
    Ok(DataFrame::new(
        rows,
        vec![
            Column::new("input".into(), c_input),
            Column::new("label".into(), c_label),
            Column::new("test_input".into(), c_test),
            Column::new("influence".into(), c_influence),
        ],
    )?)
}

/// The cosine form; a zero gradient (a perfectly classified sample) has none: 0.
fn cosine(dot: f64, a: f64, b: f64) -> f64 {
    if a == 0.0 || b == 0.0 { 0.0 } else { dot / (a * b) }
}
