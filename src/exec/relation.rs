//! Building the relations of interpretations: one row per (input, feature) or group, or
//! per (input, unit) of a layer, with the columns DESIGN.md gives (coordinates, values,
//! words of a text), and class names beside class indices.

use polars::prelude::*;

use crate::data::{Modality, Selection};
use crate::error::Result;
use crate::ops::{self, Features};
use crate::plan::{Attribution, GranularitySpec};

use super::interpret::Inputs;

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

/// The layer relation: one row per (input, unit of the result).
pub(super) fn layer_relation(
    inputs: &Inputs,
    result: &ops::layer::LayerAttribution,
    a: &Attribution,
) -> Result<DataFrame> {
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

/// Builds the attribution relation: one row per (input, feature), or per (input, group).
#[allow(clippy::too_many_arguments)]
pub(super) fn relation(
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
