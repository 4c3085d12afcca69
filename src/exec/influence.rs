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
    let model = state.model(&i.model)?.model.clone();
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
    let total = train.len() + test.as_ref().map_or(0, |t| t.len());
    let progress = state.progress(format!("tracin {}", i.train), total, "inputs");
    let report = crate::output::progress::reporter(&progress);
    control.on_progress = Some(&report);

    let train_grads = loss_gradients(&model, &train.values()?, &classes, &layers, batch_rows, &control)?;
    let train_ids = train.ids();
    let (mut c_input, mut c_label, mut c_test, mut c_influence) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    match &test {
        None => {
            for (k, g) in train_grads.iter().enumerate() {
                let value = influence(g, g);
                c_input.push(train_ids[k]);
                c_label.push(labels[k]);
                c_test.push(train_ids[k]);
                c_influence.push(if i.normalize {
                    cosine(value, norm(g), norm(g))
                } else {
                    value
                });
            }
        }
        Some(test) => {
            let values = test.values()?;
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
            let test_grads = loss_gradients(&model, &values, &targets, &layers, batch_rows, &control)?;
            let train_norms: Vec<f64> = train_grads.iter().map(|g| norm(g)).collect();
            for (t, tg) in test_grads.iter().enumerate() {
                let tnorm = norm(tg);
                for (k, g) in train_grads.iter().enumerate() {
                    let value = influence(g, tg);
                    c_input.push(train_ids[k]);
                    c_label.push(labels[k]);
                    c_test.push(test.ids()[t]);
                    c_influence.push(if i.normalize {
                        cosine(value, train_norms[k], tnorm)
                    } else {
                        value
                    });
                }
            }
        }
    }
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
