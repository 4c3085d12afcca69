//! SHOW statements: relations describing the session.

use polars::prelude::*;

use super::{Output, Settings, State};
use crate::data::Modality;
use crate::data::fmt_shape;
use crate::error::Result;
use crate::ops::{METHODS, ParamKind};
use crate::plan::SETTINGS;

pub(super) fn models(state: &State) -> Result<Output> {
    let names: Vec<&str> = state.models.keys().map(|s| s.as_str()).collect();
    let ms: Vec<_> = state.models.values().collect();
    let df = df!(
        "model" => names,
        "layers" => ms.iter().map(|m| m.model.layers.len() as i64).collect::<Vec<_>>(),
        // A model with symbolic input axes knows its parameters and outputs once bound.
        "parameters" => ms.iter().map(|m| m.model.dynamic.is_none().then(|| m.model.param_count() as i64)).collect::<Vec<_>>(),
        "input" => ms.iter().map(|m| m.model.input_text()).collect::<Vec<_>>(),
        "outputs" => ms.iter().map(|m| m.model.dynamic.is_none().then(|| m.model.output_len() as i64)).collect::<Vec<_>>(),
        "weights" => ms.iter().map(|m| m.model.source.clone()).collect::<Vec<_>>(),
        "arch" => ms.iter().map(|m| m.arch.display().to_string()).collect::<Vec<_>>(),
    )?;
    Ok(Output::Table(df))
}

/// The datasets, then the tables kept by LET (kind `table`: rows, and its columns for a
/// shape).
pub(super) fn datasets(state: &State) -> Result<Output> {
    let names: Vec<&str> = state.datasets.keys().map(|s| s.as_str()).collect();
    let ds: Vec<_> = state.datasets.values().collect();
    let kind = |m: &Modality| match m {
        Modality::Image { .. } => "image",
        Modality::Tabular { .. } => "tabular",
        Modality::Sequence { .. } => "sequence",
        Modality::Volume { .. } => "volume",
        Modality::Tensor => "tensor",
        Modality::Text { .. } => "text",
    };
    let df = df!(
        "dataset" => names,
        "inputs" => ds.iter().map(|d| d.len() as i64).collect::<Vec<_>>(),
        "shape" => ds.iter().map(|d| fmt_shape(&d.sample_shape)).collect::<Vec<_>>(),
        "kind" => ds.iter().map(|d| kind(&d.modality)).collect::<Vec<_>>(),
        "labels" => ds.iter().map(|d| d.has_labels()).collect::<Vec<_>>(),
        "classes" => ds.iter().map(|d| d.classes.as_ref().map(|c| crate::error::list_names(c, 8))).collect::<Vec<_>>(),
        "ids" => ds.iter().map(|d| d.id_range().map(|(a, b)| format!("{a}..{b}")).unwrap_or_default()).collect::<Vec<_>>(),
        "source" => ds.iter().map(|d| d.source.clone()).collect::<Vec<_>>(),
    )?;
    let tables = &state.tables;
    let columns = |t: &super::KeptTable| {
        let names: Vec<String> = t.frame.get_column_names().iter().map(|c| c.to_string()).collect();
        format!("columns {}", crate::error::list_names(&names, 8))
    };
    let kept = df!(
        "dataset" => tables.keys().map(|s| s.as_str()).collect::<Vec<_>>(),
        "inputs" => tables.values().map(|t| t.frame.height() as i64).collect::<Vec<_>>(),
        "shape" => tables.values().map(columns).collect::<Vec<_>>(),
        "kind" => vec!["table"; tables.len()],
        "labels" => vec![false; tables.len()],
        "classes" => vec![None::<String>; tables.len()],
        "ids" => vec![String::new(); tables.len()],
        "source" => tables.values().map(|t| t.query.clone()).collect::<Vec<_>>(),
    )?;
    Ok(Output::Table(df.vstack(&kept)?))
}

pub(super) fn methods() -> Result<Output> {
    let params: Vec<String> = METHODS
        .iter()
        .map(|m| {
            m.params
                .iter()
                .map(|p| {
                    let range = match p.kind {
                        ParamKind::Int { min, .. } => format!(" ≥ {min}"),
                        ParamKind::Float { min } if min > f64::MIN => format!(" ≥ {min}"),
                        ParamKind::Float { .. } => String::new(),
                        ParamKind::Bool | ParamKind::Path => String::new(),
                        ParamKind::Choice(c) => format!(" in {}", c.join("|")),
                    };
                    match p.default {
                        Some(d) => format!("{} = {d}{range}", p.name),
                        None => format!("{} (required){range}", p.name),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    let df = df!(
        "method" => METHODS.iter().map(|m| m.name).collect::<Vec<_>>(),
        "kind" => METHODS.iter().map(|m| match m.family { crate::ops::Family::Gradient => "gradient", crate::ops::Family::Perturbation => "perturbation" }).collect::<Vec<_>>(),
        "parameters" => params,
        "reference" => METHODS.iter().map(|m| m.reference).collect::<Vec<_>>(),
        "description" => METHODS.iter().map(|m| m.summary).collect::<Vec<_>>(),
    )?;
    Ok(Output::Table(df))
}

pub(super) fn layers(state: &State, name: &str) -> Result<Output> {
    let m = &state.model(name)?.model;
    let translated = |l: &crate::model::Layer| !matches!(l.op, crate::model::Op::Unsupported { .. });
    // Before a model with symbolic input axes meets data, its shapes are not known.
    let unbound = m.dynamic.is_some();
    let mut df = df!(
        "layer" => m.layers.iter().map(|l| l.name.clone()).collect::<Vec<_>>(),
        "type" => m.layers.iter().map(|l| if translated(l) || unbound { l.kind.clone() } else { format!("{} (not supported)", l.kind) }).collect::<Vec<_>>(),
        "output_shape" => m.layers.iter().map(|l| if translated(l) { fmt_shape(&l.out_shape) } else if unbound { format!("from the input {}", m.input_text()) } else { "?".into() }).collect::<Vec<_>>(),
        "parameters" => m.layers.iter().map(|l| l.op.param_count() as i64).collect::<Vec<_>>(),
    )?;
    // A graph (not a chain of layers) shows what each layer reads.
    let chain = m.layers.iter().enumerate().all(|(i, l)| l.inputs == [i]);
    if !chain {
        let reads: Vec<String> = m
            .layers
            .iter()
            .map(|l| {
                let names: Vec<&str> = l
                    .inputs
                    .iter()
                    .map(|&v| if v == 0 { "input" } else { m.layers[v - 1].name.as_str() })
                    .collect();
                names.join(", ")
            })
            .collect();
        df.with_column(polars::prelude::Column::new("inputs".into(), reads))?;
    }
    Ok(Output::Table(df))
}

pub(super) fn cache(state: &State) -> Result<Output> {
    let c = &state.cache;
    let (activations, memo, passes) = c.counts();
    let df = df!(
        "entries" => [c.len() as i64],
        "activations" => [activations as i64],
        "results" => [memo as i64],
        "passes" => [passes as i64],
        "bytes" => [c.bytes() as i64],
        "budget_bytes" => [c.budget() as i64],
        "hits" => [c.hits as i64],
        "misses" => [c.misses as i64],
        "evictions" => [c.evictions as i64],
    )?;
    Ok(Output::Table(df))
}

pub(super) fn setting_value(s: &Settings, name: &str) -> String {
    match name {
        "method" => s
            .method
            .clone()
            .unwrap_or_else(|| "integrated_gradients (default)".into()),
        "steps" => s.steps.map(|v| v.to_string()).unwrap_or_else(|| "50 (default)".into()),
        "seed" => s.seed.map(|v| v.to_string()).unwrap_or_else(|| "0 (default)".into()),
        "batch_size" => s.batch_size.map(|v| v.to_string()).unwrap_or_else(|| "auto".into()),
        "memory_mb" => s.memory_mb.to_string(),
        "cache_mb" => s.cache_mb.to_string(),
        "max_tokens" => s.max_tokens.to_string(),
        "allow_nonfinite" => s.allow_nonfinite.to_string(),
        _ => String::new(),
    }
}

pub(super) fn settings(state: &State) -> Result<Output> {
    let mut names: Vec<String> = SETTINGS.iter().map(|(n, _)| n.to_string()).collect();
    let mut values: Vec<String> = SETTINGS
        .iter()
        .map(|(n, _)| setting_value(&state.settings, n))
        .collect();
    let mut about: Vec<String> = SETTINGS.iter().map(|(_, d)| d.to_string()).collect();
    for (k, v) in &state.variables {
        names.push(format!(":{k}"));
        values.push(v.to_string());
        about.push("script variable".into());
    }
    Ok(Output::Table(
        df!("name" => names, "value" => values, "description" => about)?,
    ))
}
