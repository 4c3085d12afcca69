//! Planning `m(x) USING … TARGET … BASELINE … WINDOW … GRANULARITY …`: the model, data,
//! method and clauses are resolved and checked against each other here, so that a query
//! that cannot run fails before any forward pass.

use super::*;
use crate::ops::{self, GivenParam, Method, Rect};
use crate::syntax::ast::{Axis, BaselineKind, ColumnItem, GranularityKind, Interpretation, TargetKind, WindowKind};

pub(super) fn plan_interpretation(i: &Interpretation, catalog: &dyn Catalog) -> Result<Node> {
    let model = resolve_model(&i.call.model, catalog)?;
    let (data, info) = resolve_dataset(&i.call.data, catalog)?;
    check_fits(&model, &info, &i.call.model.name, &data.name, i.call.data.span)?;
    let d: usize = info.sample_shape.iter().product();

    // The method: USING, else the session's default, else integrated gradients.
    let (method_name, method_span, params) = match &i.using {
        Some(m) => (m.name.name.clone(), m.name.span, m.params.as_slice()),
        None => {
            let name = match catalog.setting("method") {
                Some(ParamValue::Text(t)) => t,
                _ => "integrated_gradients".to_string(),
            };
            (name, i.call.span, &[][..])
        }
    };
    let info_m = ops::method_info(&method_name)
        .ok_or_else(|| Error::unknown("method", &method_name, &ops::method_names(), "methods").at(method_span))?;
    let given = params
        .iter()
        .map(|p| {
            let value = match resolve_literal(&p.value, catalog)? {
                Literal::Number(n) => ParamValue::Number(n),
                Literal::Bool(b) => ParamValue::Bool(b),
                Literal::Text(t) => ParamValue::Text(t),
            };
            Ok(GivenParam {
                name: &p.name.name,
                name_span: p.name.span,
                value,
                value_span: p.value.span,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut method = ops::resolve_method(info_m, &given, &|s| catalog.setting(s)).map_err(|e| e.at(method_span))?;

    let target = match &i.target {
        None => TargetSpec::Predicted,
        Some(t) => match &t.kind {
            TargetKind::Predicted => TargetSpec::Predicted,
            TargetKind::Label => {
                if !info.has_labels {
                    return Err(Error::value(format!(
                        "TARGET LABEL needs labels, but `{}` was loaded without them",
                        data.name
                    ))
                    .at(t.span)
                    .hint("load it with LABELS 'labels.npy' (or LABEL COLUMN c), or use TARGET PREDICTED"));
                }
                TargetSpec::Label
            }
            TargetKind::Class(v) => {
                let c = resolve_int(v, catalog, "a target class")?;
                if c < 0 || c as usize >= model.output_len {
                    return Err(Error::value(format!(
                        "target class {c} is out of range: `{}` has outputs 0..{}",
                        i.call.model.name,
                        model.output_len - 1
                    ))
                    .at(v.span));
                }
                TargetSpec::Class(c as usize)
            }
        },
    };

    let baseline = match &i.baseline {
        None => BaselineSpec::Zero,
        Some(b) => {
            if !method.uses_baseline() {
                return Err(Error::value(format!("{} takes no BASELINE", method.name()))
                    .at(b.span)
                    .hint(
                        "baselines apply to integrated_gradients, occlusion, feature_ablation and shapley_sampling",
                    ));
            }
            match &b.kind {
                BaselineKind::Zero => BaselineSpec::Zero,
                BaselineKind::Mean(None) => BaselineSpec::Mean(data.name.clone()),
                BaselineKind::Mean(Some(expr)) => {
                    let (r, binfo) = resolve_dataset(expr, catalog)?;
                    same_features(&binfo, d, &r.name, expr.span)?;
                    if r.pick != Pick::All {
                        return Err(Error::value("BASELINE mean(d) takes a whole dataset")
                            .at(expr.span)
                            .hint("for one input as the baseline, write BASELINE d[i]"));
                    }
                    BaselineSpec::Mean(r.name)
                }
                BaselineKind::Constant(v) => match resolve_literal(v, catalog)? {
                    Literal::Number(n) if n.is_finite() => BaselineSpec::Constant(n as f32),
                    other => {
                        return Err(
                            Error::value(format!("a constant baseline must be a number, got {other}")).at(v.span),
                        );
                    }
                },
                BaselineKind::Data(expr) => {
                    let (r, binfo) = resolve_dataset(expr, catalog)?;
                    same_features(&binfo, d, &r.name, expr.span)?;
                    BaselineSpec::Data(r)
                }
            }
        }
    };

    let window = match &i.window {
        None => WindowSpec::All,
        Some(w) => match (&w.kind, &info.modality) {
            (
                WindowKind::Image(ranges),
                Modality::Image {
                    channels,
                    height,
                    width,
                },
            ) => {
                let mut rect = Rect {
                    channels: (0, *channels),
                    rows: (0, *height),
                    cols: (0, *width),
                };
                let mut seen = Vec::new();
                for r in ranges {
                    if seen.contains(&r.axis) {
                        return Err(Error::value("each axis may appear once in a WINDOW").at(r.span));
                    }
                    seen.push(r.axis);
                    let (name, limit, slot) = match r.axis {
                        Axis::Rows => ("rows", *height, &mut rect.rows),
                        Axis::Cols => ("cols", *width, &mut rect.cols),
                        Axis::Channels => ("channels", *channels, &mut rect.channels),
                    };
                    let a = resolve_int(&r.start, catalog, "a window bound")?;
                    let b = resolve_int(&r.end, catalog, "a window bound")?;
                    if a < 0 || b <= a || b as usize > limit {
                        return Err(Error::value(format!(
                            "window {name} {a}:{b} must satisfy 0 ≤ start < end ≤ {limit}"
                        ))
                        .at(r.span));
                    }
                    *slot = (a as usize, b as usize);
                }
                WindowSpec::Rect(rect)
            }
            (WindowKind::Columns(items), Modality::Tabular { columns }) => {
                let mut picked = Vec::new();
                for item in items {
                    match item {
                        ColumnItem::Name(n) => {
                            let pos = columns.iter().position(|c| *c == n.name).ok_or_else(|| {
                                Error::unknown("column", &n.name, columns, &format!("columns of {}", data.name))
                                    .at(n.span)
                            })?;
                            picked.push(pos);
                        }
                        ColumnItem::Range { start, end, span } => {
                            let a = resolve_int(start, catalog, "a column index")?;
                            let b = resolve_int(end, catalog, "a column index")?;
                            if a < 0 || b <= a || b as usize > columns.len() {
                                return Err(Error::value(format!(
                                    "column range {a}:{b} must satisfy 0 ≤ start < end ≤ {}",
                                    columns.len()
                                ))
                                .at(*span));
                            }
                            picked.extend(a as usize..b as usize);
                        }
                    }
                }
                let mut dedup = Vec::new();
                for p in picked {
                    if !dedup.contains(&p) {
                        dedup.push(p);
                    }
                }
                WindowSpec::Columns(dedup)
            }
            (WindowKind::Image(_), _) => {
                return Err(Error::value(format!(
                    "WINDOW rows/cols applies to images, but `{}` is {}",
                    data.name,
                    modality_name(&info.modality)
                ))
                .at(w.span)
                .hint("for tabular data write WINDOW columns a, b, …"));
            }
            (WindowKind::Columns(_), _) => {
                return Err(Error::value(format!(
                    "WINDOW columns applies to tabular data, but `{}` is {}",
                    data.name,
                    modality_name(&info.modality)
                ))
                .at(w.span)
                .hint("for images write WINDOW rows a:b, cols c:d"));
            }
        },
    };

    let granularity = match &i.granularity {
        None => GranularitySpec::Feature,
        Some(g) => match (&g.kind, &info.modality) {
            (GranularityKind::Pixel, Modality::Image { .. }) => GranularitySpec::Pixel,
            (GranularityKind::Patch(k), Modality::Image { height, width, .. }) => {
                let k = resolve_int(k, catalog, "a patch size")?;
                if k < 1 || k as usize > (*height).max(*width) {
                    return Err(Error::value(format!(
                        "patch size must be ≥ 1 and at most the image size {height}×{width}, got {k}"
                    ))
                    .at(g.span));
                }
                GranularitySpec::Patch(k as usize)
            }
            (GranularityKind::Column, Modality::Tabular { .. }) => GranularitySpec::Column,
            (kind, m) => {
                let what = match kind {
                    GranularityKind::Column => "column granularity applies to tabular data",
                    _ => "pixel and patch granularity apply to images",
                };
                return Err(Error::value(format!("{what}, but `{}` is {}", data.name, modality_name(m))).at(g.span));
            }
        },
    };

    // Occlusion's window comes from its parameters or from GRANULARITY patch(k).
    if let Method::Occlusion { window: w, stride } = &mut method {
        match (&w, &granularity) {
            (Some(_), GranularitySpec::Feature | GranularitySpec::Column) => {}
            (Some(_), _) => {
                return Err(Error::value(
                    "occlusion takes its window either from window = k or from GRANULARITY patch(k), not both",
                )
                .at(method_span));
            }
            (None, GranularitySpec::Patch(k)) => {
                if stride.is_some_and(|s| s != *k) {
                    return Err(Error::value(format!(
                        "with GRANULARITY patch({k}) occlusion moves patch by patch: leave out stride, or give stride = {k}"
                    ))
                    .at(method_span));
                }
                *w = Some(*k);
                *stride = Some(*k);
            }
            (None, _) => {
                return Err(Error::value("occlusion needs a window size").at(method_span).hint(
                    "write USING occlusion(window = 2, stride = 1), or GRANULARITY patch(2) to occlude whole patches",
                ));
            }
        }
        let (k, st) = (w.unwrap_or(1), stride.unwrap_or(1));
        *stride = Some(st);
        // The windows must fit what they slide over: the WINDOW's box, or the columns.
        let extents: Vec<(usize, &str)> = match (&window, &info.modality) {
            (WindowSpec::Rect(r), _) => vec![(r.rows.1 - r.rows.0, "rows"), (r.cols.1 - r.cols.0, "columns")],
            (_, Modality::Image { height, width, .. }) => {
                vec![(*height, "rows"), (*width, "columns")]
            }
            (WindowSpec::Columns(c), _) => vec![(c.len(), "features")],
            _ => vec![(d, "features")],
        };
        for (extent, what) in extents {
            crate::ops::perturbation::check_occlusion(extent, k, st, what).map_err(|e| e.at(method_span))?;
        }
    }

    let columns = attribution_columns(&info.modality, &granularity);
    Ok(Node::new(
        NodeKind::Attribute(Box::new(Attribution {
            model: i.call.model.name.clone(),
            data,
            method,
            target,
            baseline,
            window,
            granularity,
            modality: info.modality.clone(),
        })),
        columns,
    ))
}

pub(super) fn plan_prediction(call: &ast::ModelCall, catalog: &dyn Catalog) -> Result<Node> {
    let model = resolve_model(&call.model, catalog)?;
    let (data, info) = resolve_dataset(&call.data, catalog)?;
    check_fits(&model, &info, &call.model.name, &data.name, call.data.span)?;
    Ok(Node::new(
        NodeKind::Predict(Prediction {
            model: call.model.name.clone(),
            data,
        }),
        prediction_columns(model.output_len),
    ))
}

fn check_fits(model: &ModelInfo, data: &DatasetInfo, mname: &str, dname: &str, span: Span) -> Result<()> {
    let want: usize = model.input_shape.iter().product();
    let have: usize = data.sample_shape.iter().product();
    if want != have {
        return Err(Error::shape(format!(
            "`{dname}` holds inputs of shape {} but `{mname}` takes {}",
            crate::model::fmt_shape(&data.sample_shape),
            crate::model::fmt_shape(&model.input_shape)
        ))
        .at(span));
    }
    Ok(())
}

fn same_features(info: &DatasetInfo, d: usize, name: &str, span: Span) -> Result<()> {
    let have: usize = info.sample_shape.iter().product();
    if have != d {
        return Err(Error::shape(format!(
            "baseline `{name}` has {have} features per input, the explained inputs have {d}"
        ))
        .at(span));
    }
    Ok(())
}

fn modality_name(m: &Modality) -> &'static str {
    match m {
        Modality::Image { .. } => "an image dataset",
        Modality::Tabular { .. } => "a tabular dataset",
        Modality::Tensor => "a tensor dataset",
    }
}

/// The columns of an attribution relation (DESIGN.md, "The relations").
pub fn attribution_columns(modality: &Modality, granularity: &GranularitySpec) -> Vec<String> {
    let mut cols: Vec<&str> = vec!["input", "label", "prediction", "target"];
    let grouped = matches!(granularity, GranularitySpec::Pixel | GranularitySpec::Patch(_));
    if grouped {
        cols.push("group");
    }
    cols.push("feature");
    match modality {
        Modality::Image { .. } => cols.extend(["channel", "row", "col"]),
        Modality::Tabular { .. } => cols.push("column"),
        Modality::Tensor => {}
    }
    if grouped {
        cols.push("size");
    }
    cols.extend(["value", "attribution"]);
    cols.into_iter().map(String::from).collect()
}

/// The columns of a prediction relation: per input, then one logit column per output.
pub fn prediction_columns(outputs: usize) -> Vec<String> {
    let mut cols: Vec<String> = ["input", "label", "prediction", "confidence", "correct"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    cols.extend((0..outputs).map(|k| format!("logit_{k}")));
    cols
}
