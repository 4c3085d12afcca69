//! Planning the questions about training data: `INFLUENCE OF m(train) ON m(test) [USING
//! tracin(…)] [TARGET k]` (one model, a labelled training set, the layers and the test
//! target checked) and the poisoned-data detectors (`m(d) USING spectral_signature AT
//! LAYER l`).

use super::interpret::{given_params, resolve_layer};
use super::*;
use crate::ops::{GivenParam, ParamKind, ParamSpec, ParamValue, Params};
use crate::syntax::ast::{self, TargetKind};

/// `tracin`'s parameters.
pub const TRACIN_PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "layers",
        kind: ParamKind::Path,
        default: Some("last"),
        setting: None,
    },
    ParamSpec {
        name: "normalize",
        kind: ParamKind::Bool,
        default: Some("false"),
        setting: None,
    },
];

pub(super) fn plan_influence(i: &ast::Influence, catalog: &dyn Catalog) -> Result<Node> {
    if !i.train.model.name.eq_ignore_ascii_case(&i.test.model.name) {
        return Err(Error::value(format!(
            "INFLUENCE compares gradients of one model, got `{}` and `{}`",
            i.train.model.name, i.test.model.name
        ))
        .at(i.test.model.span)
        .hint(format!(
            "INFLUENCE OF {}(train) ON {}(test)",
            i.train.model, i.train.model
        )));
    }
    let (bound, model) = resolve_call_model(&i.train, catalog)?;
    let (train, train_info) = resolve_model_input(&i.train.data, catalog, &model, &i.train.model.name, true)?;
    if !train_info.has_labels {
        return Err(Error::value(format!(
            "INFLUENCE takes each training sample's loss at its label, and `{}` has no labels",
            train.name
        ))
        .at(i.train.data.span)
        .hint("load the training set with LABELS 'y.npy' (or LABEL COLUMN c)"));
    }
    let (test, _) = resolve_model_input(&i.test.data, catalog, &model, &i.test.model.name, true)?;
    let self_influence = i.train.data.to_string() == i.test.data.to_string();
    for (d, expr) in [(&train, &i.train.data), (&test, &i.test.data)] {
        if !d.activation_edits().is_empty() {
            return Err(Error::value(
                "INFLUENCE takes the model's own weights: activation edits (WITH LAYER) do not apply",
            )
            .at(expr.span)
            .hint("input edits (WITH SET, MASK, NOISE, BLUR) do"));
        }
    }

    let method = i.method.as_ref();
    if let Some(m) = method
        && !m.name.name.eq_ignore_ascii_case("tracin")
    {
        return Err(Error::unknown(
            "influence method",
            &m.name.name,
            &["tracin".to_string()],
            "influence methods",
        )
        .at(m.name.span));
    }
    let given: Vec<GivenParam> = match method {
        Some(m) => given_params(&m.params, catalog)?,
        None => Vec::new(),
    };
    let params = Params::resolve("tracin", TRACIN_PARAMS, &given, &|_| None)?;
    let layers_span = given
        .iter()
        .find(|g| g.name.eq_ignore_ascii_case("layers"))
        .map(|g| g.value_span);
    let layers = match params.text("layers").trim().to_ascii_lowercase().as_str() {
        "last" => InfluenceLayers::Last,
        "all" => InfluenceLayers::All,
        _ => {
            let text = params.text("layers");
            let mut named = Vec::new();
            for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let ident = ast::Ident {
                    name: name.to_string(),
                    span: layers_span.unwrap_or(i.span),
                };
                named.push(resolve_layer(&ident, &model, &i.train.model.name)?);
            }
            if named.is_empty() {
                return Err(Error::value("layers names none: give 'last', 'all' or 'fc1,fc2'")
                    .at(layers_span.unwrap_or(i.span)));
            }
            InfluenceLayers::Named(named)
        }
    };
    let test_labelled = catalog.dataset(&test.name).is_some_and(|d| d.has_labels);
    let target = class_target(
        i.target.as_ref(),
        test_labelled,
        &test.name,
        &model,
        &i.train.model.name,
        "INFLUENCE",
        catalog,
    )?;
    let influence = Influence {
        model: bound,
        train,
        test,
        layers,
        normalize: params.flag("normalize"),
        target,
        self_influence,
    };
    Ok(Node::new(
        NodeKind::Influence(Box::new(influence)),
        INFLUENCE_COLUMNS.iter().map(|c| c.to_string()).collect(),
    ))
}

/// `m(d) USING <detector>(…) AT LAYER l`: the detector's parameters and its layer; the
/// clauses of an attribution do not apply.
pub(super) fn plan_detection(
    call: &ast::ModelCall,
    clauses: &ast::Clauses,
    using: &ast::MethodCall,
    info: &'static crate::ops::detect::DetectorInfo,
    catalog: &dyn Catalog,
) -> Result<Node> {
    let (bound, model) = resolve_call_model(call, catalog)?;
    let (data, data_info) = resolve_model_input(&call.data, catalog, &model, &call.model.name, true)?;
    let refuse = |what: &str, span: Span| {
        Err(Error::value(format!(
            "{} scores inputs from a layer's activations; {what} does not apply",
            info.name
        ))
        .at(span))
    };
    if let Some(t) = &clauses.target {
        return refuse("TARGET", t.span);
    }
    if let Some(b) = &clauses.baseline {
        return refuse("BASELINE", b.span);
    }
    if let Some(w) = &clauses.window {
        return refuse("WINDOW", w.span);
    }
    if let Some(g) = &clauses.granularity {
        return refuse("GRANULARITY", g.span);
    }
    if let Some(t) = &clauses.through {
        return refuse("THROUGH LAYER", t.span);
    }
    if let Some(e) = &clauses.evaluate {
        return refuse("EVALUATE", e.span);
    }
    let layer = match &clauses.at_layer {
        Some(l) if l.name != "*" => resolve_layer(l, &model, &call.model.name)?,
        Some(l) => return refuse("AT LAYER *", l.span),
        None => {
            return Err(Error::value(format!("{} needs a layer: AT LAYER l", info.name))
                .at(using.span)
                .hint(format!(
                    "e.g. AT LAYER {}",
                    model.layers.iter().rev().nth(1).map_or("fc1", String::as_str)
                )));
        }
    };
    let given = given_params(&using.params, catalog)?;
    let detector = crate::ops::detect::resolve_detector(info, &given, &|s| catalog.setting(s))
        .map_err(|e| e.at(using.name.span))?;
    if detector.by_label() && !data_info.has_labels {
        return Err(Error::value(format!("by = 'label' needs labels, and `{}` has none", data.name)).at(using.span));
    }
    if !data.activation_edits().is_empty() {
        return Err(Error::value(format!(
            "{} reads the model's own activations: activation edits do not apply",
            info.name
        ))
        .at(call.data.span));
    }
    let columns = detection_columns(&detector);
    Ok(Node::new(
        NodeKind::Detect(Box::new(Detection {
            model: bound,
            data,
            layer,
            detector,
        })),
        columns,
    ))
}

/// `TCAV m(d) AT LAYER l CONCEPTS (a, …) [RANDOM n] [TARGET k]`.
pub(super) fn plan_tcav(t: &ast::Tcav, catalog: &dyn Catalog) -> Result<Node> {
    let (bound, model) = resolve_call_model(&t.call, catalog)?;
    let (data, info) = resolve_model_input(&t.call.data, catalog, &model, &t.call.model.name, true)?;
    let layer = resolve_layer(&t.layer, &model, &t.call.model.name)?;
    let width: usize = info.sample_shape.iter().product();
    let mut concepts = Vec::new();
    for c in &t.concepts {
        let Some(ci) = catalog.dataset(&c.name) else {
            return Err(Error::unknown("concept", &c.name, &catalog.dataset_names(), "datasets")
                .at(c.span)
                .hint(format!("define it first: CONCEPT {} = dataset[…];", c.name)));
        };
        if ci.sample_shape.iter().product::<usize>() != width {
            return Err(Error::shape(format!(
                "concept `{}` holds inputs of shape {:?}, and `{}` reads {:?}",
                c.name, ci.sample_shape, t.call.model.name, model.input_shape
            ))
            .at(c.span));
        }
        if ci.len < 2 {
            return Err(Error::value(format!(
                "concept `{}` holds {} input; a CAV needs at least 2",
                c.name, ci.len
            ))
            .at(c.span));
        }
        if concepts.contains(&c.name) {
            return Err(Error::value(format!("concept `{}` is named twice", c.name)).at(c.span));
        }
        concepts.push(c.name.clone());
    }
    let random = match &t.random {
        None => 10,
        Some(v) => {
            let n = resolve_int(v, catalog, "RANDOM's count")?;
            if !(2..=500).contains(&n) {
                return Err(Error::value(format!(
                    "RANDOM takes 2 to 500 random sets (a t-test needs two), got {n}"
                ))
                .at(v.span));
            }
            n as usize
        }
    };
    if info.len < 4 {
        return Err(Error::value(format!(
            "`{}` holds {} inputs: too few to draw random sets from",
            data.name, info.len
        ))
        .at(t.call.data.span));
    }
    let target = class_target(
        t.target.as_ref(),
        info.has_labels,
        &data.name,
        &model,
        &t.call.model.name,
        "TCAV",
        catalog,
    )?;
    let seed = match catalog.setting("seed") {
        Some(ParamValue::Number(n)) if n >= 0.0 => n as u64,
        _ => 0,
    };
    Ok(Node::new(
        NodeKind::Tcav(Box::new(TcavSpec {
            model: bound,
            data,
            layer,
            concepts,
            random,
            target,
            seed,
        })),
        TCAV_COLUMNS.iter().map(|c| c.to_string()).collect(),
    ))
}

/// The class a loss or a directional derivative is taken at: the prediction (default),
/// the label, or a class of the model's outputs; `what` names the statement in errors.
fn class_target(
    target: Option<&ast::Target>,
    labelled: bool,
    data_name: &str,
    model: &ModelInfo,
    model_name: &str,
    what: &str,
    catalog: &dyn Catalog,
) -> Result<TargetSpec> {
    Ok(match target.map(|t| (&t.kind, t.span)) {
        None | Some((TargetKind::Predicted, _)) => TargetSpec::Predicted,
        Some((TargetKind::Label, span)) => {
            if !labelled {
                return Err(Error::value(format!("TARGET LABEL needs labels, and `{data_name}` has none")).at(span));
            }
            TargetSpec::Label
        }
        Some((TargetKind::Class(v), span)) => {
            let k = resolve_int(v, catalog, "a class")?;
            if k < 0 || k as usize >= model.output_len {
                return Err(Error::value(format!(
                    "class {k} is out of range: `{model_name}` has {} outputs",
                    model.output_len
                ))
                .at(span));
            }
            TargetSpec::Class(k as usize)
        }
        Some((_, span)) => {
            return Err(Error::value(format!(
                "{what} takes a class target: TARGET PREDICTED, LABEL or a class"
            ))
            .at(span));
        }
    })
}
