//! EVALUATE: the metrics of an interpretation's map, input by input, as a relation
//! (input, label, prediction, target, method, metric, value). The map comes from the
//! method as for any interpretation; the metrics run through `ops::metrics`.

use polars::prelude::*;

use super::interpret::Inputs;
use crate::data::Modality;
use crate::error::Result;
use crate::model::Model;
use crate::ops::metrics::{self, Asked, Evaluation, Fill, Metric, Units};
use crate::ops::{self, Control, Features, Request};
use crate::plan::{Attribution, GranularitySpec};

/// What the metrics need of an interpretation that has run.
pub(super) struct Judged<'a> {
    pub a: &'a Attribution,
    pub model: &'a Model,
    pub inputs: &'a Inputs,
    pub values: &'a [f32],
    pub baselines: &'a [f32],
    pub features: &'a Features,
    pub attr: &'a [f32],
    pub out_layer: usize,
    pub batch_rows: usize,
    pub cancel: &'a std::sync::atomic::AtomicBool,
}

pub(super) fn evaluation_relation(j: &Judged) -> Result<DataFrame> {
    let a = j.a;
    let d = j.model.input_len().max(1);
    let n = j.inputs.ids.len();
    // The metrics' forward passes are not the method's progress: their own control
    // shares only the cancel flag.
    let control = Control::new(j.cancel);
    let req = Request {
        model: j.model,
        inputs: j.values,
        baselines: j.baselines,
        targets: &j.inputs.targets,
        ids: &j.inputs.ids,
        features: j.features,
        batch_rows: j.batch_rows,
        control: &control,
        out_layer: j.out_layer,
        layer: a.layer.as_ref().map(|l| l.index),
        neuron: None,
        layer_values: None,
        predicted: None,
        kept: None,
        keep: None,
    };
    // The units the curves remove and the complexity measures read: GRANULARITY's
    // groups, else each feature of the window.
    let members = match a.granularity {
        GranularitySpec::Pixel | GranularitySpec::Patch(_) => j.features.members(),
        _ => (0..d).filter(|&f| j.features.in_window(f)).map(|f| vec![f]).collect(),
    };
    let units = Units {
        members,
        sum: a.method.sums_groups(),
    };
    // The map of copies of the inputs (copy c of the input at position owners[c]): its
    // target, its id (a stochastic method's stream) and its baseline (a distribution's
    // rows stay as they are).
    let explain = |model: Option<&crate::model::Model>, inputs: &[f32], owners: &[usize]| -> Result<Vec<f32>> {
        let targets: Vec<usize> = owners.iter().map(|&i| j.inputs.targets[i]).collect();
        let ids: Vec<i64> = owners.iter().map(|&i| j.inputs.ids[i]).collect();
        let baselines: Vec<f32> = if a.method.draws_baselines() {
            j.baselines.to_vec()
        } else {
            owners
                .iter()
                .flat_map(|&i| j.baselines[i * d..(i + 1) * d].iter().copied())
                .collect()
        };
        ops::attribute(
            &a.method,
            &Request {
                model: model.unwrap_or(req.model),
                inputs,
                baselines: &baselines,
                targets: &targets,
                ids: &ids,
                ..req
            },
        )
    };
    let mut substrates: Vec<(Fill, Vec<f32>)> = Vec::new();
    let mut rows: Vec<(usize, usize, f64)> = Vec::with_capacity(n * a.metrics.len());
    let mut per_metric = Vec::with_capacity(a.metrics.len());
    for Asked { metric, .. } in &a.metrics {
        // What the removal metrics set units to.
        let fill = match metric {
            Metric::Curve { fill, .. } => Some(*fill),
            Metric::PixelFlipping { .. } | Metric::FaithfulnessCorrelation { .. } => Some(Fill::Baseline),
            _ => None,
        };
        let substrate: &[f32] = match &fill {
            Some(fill) => {
                if !substrates.iter().any(|(f, _)| f == fill) {
                    substrates.push((*fill, substrate(j, *fill)?));
                }
                substrates
                    .iter()
                    .find(|(f, _)| f == fill)
                    .map_or(&[][..], |(_, s)| s.as_slice())
            }
            _ => &[],
        };
        let ev = Evaluation {
            attr: j.attr,
            units: &units,
            substrate,
            explain: &explain,
        };
        per_metric.push(metrics::evaluate(metric, &req, &ev)?);
    }
    for i in 0..n {
        for (m, values) in per_metric.iter().enumerate() {
            rows.push((i, m, values[i]));
        }
    }
    let method = a.method.to_string();
    let names: Vec<&str> = a.metrics.iter().map(|m| m.label.as_str()).collect();
    let columns = vec![
        Column::new(
            "input".into(),
            rows.iter().map(|r| j.inputs.ids[r.0]).collect::<Vec<i64>>(),
        ),
        Column::new(
            "label".into(),
            rows.iter().map(|r| j.inputs.labels[r.0]).collect::<Vec<Option<i64>>>(),
        ),
        Column::new(
            "prediction".into(),
            rows.iter()
                .map(|r| j.inputs.predictions[r.0] as i64)
                .collect::<Vec<i64>>(),
        ),
        Column::new(
            "target".into(),
            rows.iter().map(|r| j.inputs.targets[r.0] as i64).collect::<Vec<i64>>(),
        ),
        Column::new("method".into(), vec![method.as_str(); rows.len()]),
        Column::new("metric".into(), rows.iter().map(|r| names[r.1]).collect::<Vec<&str>>()),
        Column::new("value".into(), rows.iter().map(|r| r.2).collect::<Vec<f64>>()),
    ];
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// What deletion removes features to and insertion starts from, one row per input, equal
/// to the input outside the window: the baseline (the mean of a distribution's rows for
/// the methods that draw theirs), or the input blurred.
fn substrate(j: &Judged, fill: Fill) -> Result<Vec<f32>> {
    let d = j.model.input_len().max(1);
    let n = j.inputs.ids.len();
    let mut rows: Vec<f32> = match fill {
        Fill::Baseline if j.baselines.len() == n * d => j.baselines.to_vec(),
        Fill::Baseline => {
            let m = (j.baselines.len() / d).max(1);
            let mut mean = vec![0.0f32; d];
            for row in j.baselines.chunks(d) {
                for (acc, v) in mean.iter_mut().zip(row) {
                    *acc += v / m as f32;
                }
            }
            mean.repeat(n)
        }
        Fill::Blur(sigma) => {
            let mut rows = j.values.to_vec();
            if let Modality::Image {
                channels,
                height,
                width,
            } = j.a.modality
            {
                for row in rows.chunks_mut(d) {
                    super::edit::blur_image(row, channels, height, width, sigma as f32);
                }
            }
            rows
        }
    };
    for (row, input) in rows.chunks_mut(d).zip(j.values.chunks(d)) {
        j.features.hold_outside(row, input);
    }
    Ok(rows)
}
