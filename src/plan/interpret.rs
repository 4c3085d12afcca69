//! Planning `m(x) USING … TARGET … BASELINE … WINDOW … GRANULARITY … AT LAYER … THROUGH
//! LAYER …` (and each side of a JOIN): the model, data,
//! method and clauses are resolved and checked against each other here, so that a query
//! that cannot run fails before any forward pass.

use super::*;
use crate::ops::metrics::{self, Asked, Metric};
use crate::ops::{self, GivenParam, Method, Needs, Rect};
use crate::syntax::ast::{
    Axis, BaselineKind, Clauses, ColumnItem, GranularityKind, Interpretation, TargetKind, WindowKind,
};

/// The parameters of a call as written, with script variables replaced.
pub(super) fn given_params<'a>(params: &'a [ast::Param], catalog: &dyn Catalog) -> Result<Vec<GivenParam<'a>>> {
    params
        .iter()
        .map(|p| {
            let value = resolve_literal(&p.value, catalog)?;
            Ok(GivenParam {
                name: &p.name.name,
                name_span: p.name.span,
                value,
                value_span: p.value.span,
            })
        })
        .collect()
}

/// The metrics of an EVALUATE clause, checked against what they judge: a map of the
/// input features (not a layer's units) of a class output.
#[allow(clippy::too_many_arguments)]
fn plan_metrics(
    evaluate: Option<&ast::Evaluate>,
    method: &Method,
    at_layer: &Option<LayerRef>,
    every_layer: bool,
    through: &Option<ThroughSpec>,
    target: &TargetSpec,
    info: &DatasetInfo,
    catalog: &dyn Catalog,
) -> Result<Vec<Asked>> {
    let Some(e) = evaluate else { return Ok(Vec::new()) };
    let refuse = |what: &str| Error::value(format!("EVALUATE judges a map of the input features; {what}")).at(e.span);
    if every_layer || (at_layer.is_some() && method.attributes_layer()) {
        return Err(
            refuse(&format!("{} AT LAYER attributes a layer's units", method.name()))
                .hint("evaluate an input-feature method (integrated_gradients, saliency, occlusion, guided_gradcam …)"),
        );
    }
    if through.is_some() {
        return Err(refuse(
            "THROUGH LAYER explains a probe, which the metrics cannot perturb",
        ));
    }
    if matches!(target, TargetSpec::Unit(..) | TargetSpec::Similarity(_)) {
        return Err(refuse(
            "the metrics score a class output (TARGET PREDICTED, LABEL or a class)",
        ));
    }
    let mut metrics = Vec::with_capacity(e.metrics.len());
    for call in &e.metrics {
        let minfo = metrics::metric_info(&call.name.name).ok_or_else(|| {
            Error::unknown("metric", &call.name.name, &metrics::metric_names(), "metrics").at(call.name.span)
        })?;
        let given = given_params(&call.params, catalog)?;
        let m =
            metrics::resolve_metric(minfo, &given, &|s| catalog.setting(s)).map_err(|err| err.at(call.name.span))?;
        if m.perturbs_values() && matches!(info.modality, Modality::Text { .. }) {
            return Err(Error::value(format!(
                "{} adds noise to the inputs, and token ids take none",
                m.name()
            ))
            .at(call.span)
            .hint("on text: deletion, insertion, sparseness, complexity"));
        }
        if matches!(m, Metric::Road { .. }) && !matches!(info.modality, Modality::Image { .. }) {
            return Err(Error::value(format!(
                "road imputes pixels from their neighbours, and this data is {}",
                modality_name(&info.modality)
            ))
            .at(call.span));
        }
        if matches!(
            m,
            Metric::Curve {
                fill: metrics::Fill::Blur(_),
                ..
            }
        ) && !matches!(info.modality, Modality::Image { .. })
        {
            return Err(Error::value(format!(
                "fill = 'blur' blurs images, and this data is {}",
                modality_name(&info.modality)
            ))
            .at(call.span));
        }
        if metrics.iter().any(|other: &Asked| other.metric == m) {
            return Err(Error::value(format!("{m} is asked twice")).at(call.span));
        }
        // The column names the metric as written, its name in lower case.
        let label = ast::MethodCall {
            name: ast::Ident {
                name: minfo.name.to_string(),
                ..call.name.clone()
            },
            ..call.clone()
        }
        .to_string();
        metrics.push(Asked { label, metric: m });
    }
    Ok(metrics)
}

/// `TARGET k`: a class among the model's outputs.
fn resolve_class(v: &Value, model: &ModelInfo, model_name: &str, catalog: &dyn Catalog) -> Result<usize> {
    let k = resolve_int(v, catalog, "a target class")?;
    if k < 0 || k as usize >= model.output_len {
        return Err(Error::value(format!(
            "target class {k} is out of range: `{model_name}` has outputs 0..{}",
            model.output_len - 1
        ))
        .at(v.span));
    }
    Ok(k as usize)
}

/// Plans `VISUALIZE m AT LAYER l CHANNEL k | AT LAYER l UNIT (…) | TARGET k (params)`.
pub(super) fn plan_visualize(v: &ast::Visualize, catalog: &dyn Catalog) -> Result<crate::plan::logical::VisualizeSpec> {
    use crate::ops::visualize::{Objective, PARAMS, Visualization};
    let model = super::resolve_model(&v.model, catalog)?;
    let model_name = &v.model.name;
    if model.dynamic || model.text_length.is_some() {
        let why = if model.text_length.is_some() {
            "reads token ids, which gradient ascent cannot change"
        } else {
            "has symbolic input axes: its input size is not fixed"
        };
        return Err(Error::value(format!(
            "VISUALIZE needs a model of fixed numeric inputs; `{model_name}` {why}"
        ))
        .at(v.model.span));
    }
    let given = given_params(&v.params, catalog)?;
    let p = ops::Params::resolve("VISUALIZE", PARAMS, &given, &|s| catalog.setting(s)).map_err(|e| e.at(v.span))?;
    let (layer, objectives) = match &v.objective {
        ast::VisObjective::Channel { layer, channel: None } => {
            let l = resolve_layer(layer, &model, model_name)?;
            let channels = l.shape.first().copied().unwrap_or(1);
            if p.given("diversity").is_some() {
                return Err(
                    Error::value("CHANNEL * makes one image per channel; diversity needs one channel").at(v.span),
                );
            }
            (l.index, (0..channels).map(Objective::Channel).collect())
        }
        ast::VisObjective::Channel {
            layer,
            channel: Some(channel),
        } => {
            let l = resolve_layer(layer, &model, model_name)?;
            let k = resolve_int(channel, catalog, "a channel")?;
            let channels = l.shape.first().copied().unwrap_or(1);
            if k < 0 || k as usize >= channels {
                return Err(Error::value(format!(
                    "channel {k} is out of range: layer `{}` has channels 0..{} (its output is {:?})",
                    l.name,
                    channels.saturating_sub(1),
                    l.shape
                ))
                .at(channel.span));
            }
            (l.index, vec![Objective::Channel(k as usize)])
        }
        ast::VisObjective::Unit { layer, index } => {
            let l = resolve_layer(layer, &model, model_name)?;
            let units: usize = l.shape.iter().product();
            let ix: Vec<i64> = index
                .iter()
                .map(|v| resolve_int(v, catalog, "a unit index"))
                .collect::<Result<_>>()?;
            let flat = if ix.len() == 1 {
                ix[0]
            } else if ix.len() == l.shape.len() {
                let mut flat = 0i64;
                for ((&i, &n), v) in ix.iter().zip(&l.shape).zip(index) {
                    if i < 0 || i as usize >= n {
                        return Err(Error::value(format!(
                            "index {i} is out of range 0..{} of layer `{}`'s output {:?}",
                            n.saturating_sub(1),
                            l.name,
                            l.shape
                        ))
                        .at(v.span));
                    }
                    flat = flat * n as i64 + i;
                }
                flat
            } else {
                return Err(Error::value(format!(
                    "UNIT takes one flat index or {} coordinates for layer `{}` (output {:?}), got {}",
                    l.shape.len(),
                    l.name,
                    l.shape,
                    ix.len()
                ))
                .at(v.span));
            };
            if flat < 0 || flat as usize >= units {
                return Err(Error::value(format!(
                    "unit {flat} is out of range: layer `{}` has {units} units",
                    l.name
                ))
                .at(v.span));
            }
            (l.index, vec![Objective::Unit(flat as usize)])
        }
        ast::VisObjective::Target(t) => match &t.kind {
            TargetKind::Class(c) => (
                model.layers.len() - 1,
                vec![Objective::Class(resolve_class(c, &model, model_name, catalog)?)],
            ),
            _ => return Err(Error::value("VISUALIZE's TARGET is a class index").at(t.span)),
        },
    };
    let image = model.input_shape.len() == 3;
    let large = image && model.input_shape[1] >= 32 && model.input_shape[2] >= 32;
    let fourier = match p.text("param").to_ascii_lowercase().as_str() {
        "fourier" if !image => {
            return Err(Error::value(format!(
                "param = fourier needs image inputs (channels, height, width); `{model_name}` takes {:?}",
                model.input_shape
            ))
            .at(v.span));
        }
        "fourier" => true,
        "pixel" => false,
        _ => large,
    };
    let (lower, upper) = (p.num("lower") as f32, p.num("upper") as f32);
    if lower >= upper {
        return Err(Error::value(format!("lower ({lower}) must be below upper ({upper})")).at(v.span));
    }
    let normalize = match p.text("normalize").to_ascii_lowercase().as_str() {
        "imagenet" if !(image && model.input_shape[0] == 3) => {
            return Err(Error::value(format!(
                "normalize = imagenet needs three-channel images; `{model_name}` takes {:?}",
                model.input_shape
            ))
            .at(v.span));
        }
        "imagenet" => Some((crate::data::photos::IMAGENET_MEAN, crate::data::photos::IMAGENET_STD)),
        _ => None,
    };
    let images = if objectives.len() > 1 {
        objectives.len()
    } else {
        p.num("diversity") as usize
    };
    if images > 1 && matches!(objectives[0], Objective::Class(_)) {
        return Err(Error::value("diversity compares the images at a layer: use AT LAYER l CHANNEL k").at(v.span));
    }
    let init = match p.given("init") {
        Some(ParamValue::Text(path)) => Some(PathBuf::from(path)),
        _ => None,
    };
    Ok(crate::plan::logical::VisualizeSpec {
        model: model_name.clone(),
        visualization: Visualization {
            layer,
            objectives,
            images,
            diversity_weight: p.num("diversity_weight") as f32,
            steps: p.num("steps") as usize,
            lr: p.num("lr") as f32,
            seed: p.num("seed") as u64,
            lower,
            upper,
            normalize,
            fourier,
            decorrelate: p.flag("decorrelate"),
            // Lucent's transforms shift by up to 12 pixels: for images of 32×32 and up
            // unless asked for.
            transforms: (if p.given("transforms").is_some() {
                p.flag("transforms")
            } else {
                large
            })
            .then(|| crate::ops::visualize::Transforms {
                jitter: p.num("jitter") as usize,
                scale: p.num("scale") as f32,
                rotate: p.num("rotate") as usize,
            }),
            init: None,
        },
        init,
    })
}

/// Plans `ATTACK method(params) ON m(d) [TARGET k]`.
pub(super) fn plan_attack(a: &ast::Attack, catalog: &dyn Catalog) -> Result<AttackSpec> {
    let (model_name, model) = resolve_call_model(&a.call, catalog)?;
    let (data, info) = resolve_model_input(&a.call.data, catalog, &model, &a.call.model.name, false)?;
    check_fits(&model, &info, &a.call.model.name, &data.name, a.call.data.span)?;
    let name = &a.method.name;
    let known: Vec<String> = ops::attack::ATTACKS.iter().map(|x| x.name.to_string()).collect();
    let spec = ops::attack::attack_info(&name.name)
        .ok_or_else(|| Error::unknown("attack", &name.name, &known, "attacks").at(name.span))?;
    let given = given_params(&a.method.params, catalog)?;
    let p = ops::Params::resolve(spec.name, spec.params, &given, &|s| catalog.setting(s))
        .map_err(|e| e.at(a.method.span))?;
    if p.given("eps").is_none() {
        return Err(
            Error::value(format!("{} needs eps, the largest change of a feature (L∞)", spec.name))
                .at(a.method.span)
                .hint(format!("for example ATTACK {}(eps = 0.1) ON …", spec.name)),
        );
    }
    let eps = p.num("eps") as f32;
    let attack = match spec.name {
        "fgsm" => ops::attack::Attack::Fgsm { eps },
        _ => {
            let steps = p.num("steps") as usize;
            let step_size = match p.given("step_size") {
                Some(_) => p.num("step_size") as f32,
                None => 2.5 * eps / steps as f32,
            };
            ops::attack::Attack::Pgd {
                eps,
                steps,
                step_size,
                random_start: p.flag("random_start"),
                seed: p.num("seed") as u64,
            }
        }
    };
    let c = &a.clauses;
    let other = [
        c.using.as_ref().map(|u| ("USING", u.span)),
        c.baseline.as_ref().map(|b| ("BASELINE", b.span)),
        c.window.as_ref().map(|w| ("WINDOW", w.span)),
        c.granularity.as_ref().map(|g| ("GRANULARITY", g.span)),
        c.at_layer.as_ref().map(|l| ("AT LAYER", l.span)),
        c.through.as_ref().map(|t| ("THROUGH LAYER", t.span)),
    ];
    if let Some((clause, span)) = other.into_iter().flatten().next() {
        return Err(Error::query(format!("ATTACK takes a TARGET clause only, not {clause}")).at(span));
    }
    let target = match &c.target {
        None
        | Some(ast::Target {
            kind: TargetKind::Label,
            ..
        }) => {
            if !info.has_labels {
                return Err(Error::value(format!(
                    "an untargeted attack climbs the loss of the true label, and `{}` has no labels",
                    data.name
                ))
                .at(a.call.data.span)
                .hint("load labels with LABELS 'labels.npy', or aim at a class with TARGET k"));
            }
            None
        }
        Some(t) => match &t.kind {
            TargetKind::Class(v) => Some(resolve_class(v, &model, &a.call.model.name, catalog)?),
            _ => {
                return Err(Error::value("an attack's TARGET is a class index (or LABEL: untargeted)").at(t.span));
            }
        },
    };
    let bound = |n: &str| p.given(n).map(|_| p.num(n) as f32);
    let bounds = (bound("lower"), bound("upper"));
    if let (Some(lo), Some(hi)) = bounds
        && lo > hi
    {
        return Err(Error::value(format!("lower ({lo}) is above upper ({hi})")).at(a.method.span));
    }
    Ok(AttackSpec {
        attack,
        model: model_name,
        data,
        target,
        bounds,
    })
}

pub(super) fn plan_interpretation(i: &Interpretation, catalog: &dyn Catalog) -> Result<Node> {
    plan_clauses(&i.call, &i.clauses, catalog)
}

/// Plans `call` with `clauses` (an interpretation, or one side of a JOIN).
pub(super) fn plan_clauses(call: &ast::ModelCall, clauses: &Clauses, catalog: &dyn Catalog) -> Result<Node> {
    if let Some(using) = &clauses.using
        && let Some(info) = ops::detect::detector_info(&using.name.name)
    {
        return super::influence::plan_detection(call, clauses, using, info, catalog);
    }
    let i = Interp { call, c: clauses };
    let (bound, model) = resolve_call_model(i.call, catalog)?;
    let (data, info) = resolve_model_input(&i.call.data, catalog, &model, &i.call.model.name, false)?;
    check_fits(&model, &info, &i.call.model.name, &data.name, i.call.data.span)?;
    let d: usize = info.sample_shape.iter().product();

    // The method: USING, else the session's default, else integrated gradients.
    let (method_name, method_span, params) = match &i.c.using {
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
    let given = given_params(params, catalog)?;
    let mut method = ops::resolve_method(info_m, &given, &|s| catalog.setting(s)).map_err(|e| e.at(method_span))?;

    // AT LAYER *: every layer in turn (checked as the first), the relations stacked.
    let every_layer = i.c.at_layer.as_ref().is_some_and(|l| l.name == "*");
    let all_layers: Vec<LayerRef> = if every_layer {
        (0..model.layers.len())
            .map(|index| LayerRef {
                name: model.layers[index].clone(),
                index,
                shape: model.layer_shapes[index].clone(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let at_layer = match &i.c.at_layer {
        Some(_) if every_layer => all_layers.first().cloned(),
        Some(l) => Some(resolve_layer(l, &model, &i.call.model.name)?),
        None => None,
    };
    let target = match &i.c.target {
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
            TargetKind::Class(v) => TargetSpec::Class(resolve_class(v, &model, &i.call.model.name, catalog)?),
            TargetKind::Unit { layer, index } => {
                let l = resolve_layer(layer, &model, &i.call.model.name)?;
                let unit = resolve_unit(&l, index, t.span, catalog)?;
                TargetSpec::Unit(l, unit)
            }
            TargetKind::Similarity(args) => {
                let explained = i.call.data.to_string();
                let others: Vec<&ast::DatasetExpr> = args.iter().filter(|d| d.to_string() != explained).collect();
                let reference = match others.as_slice() {
                    [r] if args.len() == 1 || others.len() < args.len() => *r,
                    _ => {
                        return Err(Error::value(format!(
                            "similarity(a, b) explains one side with the other held fixed: one of them must be the explained `{explained}`"
                        ))
                        .at(t.span)
                        .hint(format!("similarity({explained}, other), or similarity(other) alone")));
                    }
                };
                let (r, rinfo) = resolve_dataset(reference, catalog)?;
                // A text reference may be padded to another length: the encoder is
                // built for its length too.
                let text_pair =
                    matches!(rinfo.modality, Modality::Text { .. }) && matches!(info.modality, Modality::Text { .. });
                if !text_pair {
                    same_features(&rinfo, model.input_shape.iter().product(), &r.name, reference.span)?;
                }
                TargetSpec::Similarity(r)
            }
        },
    };
    check_selection(&method, method_span, &i, &at_layer, &target, &info)?;
    if every_layer {
        let span = i.c.at_layer.as_ref().map_or(method_span, |l| l.span);
        if !method.attributes_layer() || matches!(method, Method::GradCam { .. } | Method::Cam { .. }) {
            return Err(Error::value(format!(
                "AT LAYER * runs the method at every layer and stacks the results; {} does not apply to every layer",
                method.name()
            ))
            .at(span)
            .hint("layer_activation, layer_gradient_x_activation, layer_conductance, layer_integrated_gradients"));
        }
        if matches!(target, TargetSpec::Unit(..)) {
            return Err(Error::value("AT LAYER * does not combine with TARGET l[i]").at(span));
        }
    }
    let through = match &i.c.through {
        None => None,
        Some(t) => Some(match &t.layer {
            Some(l) => ThroughSpec::Layer(resolve_layer(l, &model, &i.call.model.name)?),
            None => ThroughSpec::All(
                (0..model.layers.len())
                    .map(|index| LayerRef {
                        name: model.layers[index].clone(),
                        index,
                        shape: model.layer_shapes[index].clone(),
                    })
                    .collect(),
            ),
        }),
    };

    let metrics = plan_metrics(
        i.c.evaluate.as_ref(),
        &method,
        &at_layer,
        every_layer,
        &through,
        &target,
        &info,
        catalog,
    )?;

    let baseline = match &i.c.baseline {
        None => BaselineSpec::Zero,
        Some(b) => {
            if !method.uses_baseline() && !metrics.iter().any(|m| m.metric.uses_baseline()) {
                return Err(Error::value(format!("{} takes no BASELINE", method.name()))
                    .at(b.span)
                    .hint(format!("baselines apply to {}", crate::ops::baseline_methods())));
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
                // On text, `BASELINE pad` / `BASELINE mask` (unless a dataset has that name):
                // every token but [CLS] and [SEP] replaced by [PAD] / [MASK].
                BaselineKind::Data(expr)
                    if matches!(info.modality, Modality::Text { .. })
                        && expr.index.is_none()
                        && expr.edits.is_empty()
                        && ["pad", "mask"].contains(&expr.name.name.to_lowercase().as_str())
                        && catalog.dataset(&expr.name.name).is_none() =>
                {
                    BaselineSpec::Tokens {
                        mask: expr.name.name.eq_ignore_ascii_case("mask"),
                    }
                }
                BaselineKind::Data(expr) => {
                    let (r, binfo) = resolve_dataset(expr, catalog).map_err(|e| {
                        if matches!(info.modality, Modality::Text { .. }) {
                            e.hint("text baselines: BASELINE pad (the default) or BASELINE mask")
                        } else {
                            e
                        }
                    })?;
                    same_features(&binfo, d, &r.name, expr.span)?;
                    BaselineSpec::Data(r)
                }
            }
        }
    };

    let window = match &i.c.window {
        None => WindowSpec::All,
        Some(w) => resolve_window(w, &info, &data.name, catalog)?,
    };

    let granularity = match &i.c.granularity {
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
            (GranularityKind::Segment(k), Modality::Sequence { length, .. }) => {
                let k = resolve_int(k, catalog, "a segment length")?;
                if k < 1 || k as usize > *length {
                    return Err(Error::value(format!(
                        "a segment is 1 to {length} positions long (the sequence's length), got {k}"
                    ))
                    .at(g.span));
                }
                // A one-row image's patches: k positions, every channel.
                GranularitySpec::Patch(k as usize)
            }
            (GranularityKind::Column, Modality::Tabular { .. }) => GranularitySpec::Column,
            (GranularityKind::Token, Modality::Text { .. }) => GranularitySpec::Feature,
            (GranularityKind::Word, Modality::Text { .. }) => {
                if method.family() != crate::ops::Family::Gradient {
                    return Err(Error::value(format!(
                        "{} perturbs token by token; GRANULARITY word sums the tokens of gradient methods' attributions",
                        method.name()
                    ))
                    .at(g.span)
                    .hint("use integrated_gradients, or GRANULARITY token"));
                }
                GranularitySpec::Word
            }
            (kind, m) => {
                let what = match kind {
                    GranularityKind::Column => "column granularity applies to tabular data",
                    GranularityKind::Token | GranularityKind::Word => "token and word granularity apply to text",
                    GranularityKind::Segment(_) => "segment granularity applies to sequences",
                    _ => "pixel and patch granularity apply to images",
                };
                return Err(Error::value(format!("{what}, but `{}` is {}", data.name, modality_name(m))).at(g.span));
            }
        },
    };

    // Occlusion's window comes from its parameters or from GRANULARITY patch(k), and
    // must fit what it slides over: the WINDOW's box, or the columns.
    if let Method::Occlusion { window: w, stride } = &mut method {
        let extents: Vec<(usize, &str)> = match (&window, &info.modality) {
            (WindowSpec::Rect(r), Modality::Sequence { .. }) => vec![(r.cols.1 - r.cols.0, "positions")],
            (_, Modality::Sequence { length, .. }) => vec![(*length, "positions")],
            (WindowSpec::Rect(r), _) => vec![(r.rows.1 - r.rows.0, "rows"), (r.cols.1 - r.cols.0, "columns")],
            (_, Modality::Image { height, width, .. }) => {
                vec![(*height, "rows"), (*width, "columns")]
            }
            (WindowSpec::Columns(c), _) => vec![(c.len(), "features")],
            _ => vec![(d, "features")],
        };
        let patch = match granularity {
            GranularitySpec::Patch(k) => Some(k),
            _ => None,
        };
        let per_feature = matches!(granularity, GranularitySpec::Feature | GranularitySpec::Column);
        crate::ops::perturbation::settle_occlusion(w, stride, patch, per_feature, &extents)
            .map_err(|e| e.at(method_span))?;
    }

    let attribution = Attribution {
        model: bound,
        data,
        method,
        target,
        baseline,
        window,
        granularity,
        modality: info.modality.clone(),
        layer: at_layer,
        all_layers,
        through,
        contrast: None,
        against_other_side: false,
        input_filter: None,
        input_limit: None,
        chunk: None,
        classes: class_names(&model, &info),
        metrics,
    };
    let columns = relation_columns(&attribution);
    Ok(Node::new(NodeKind::Attribute(Box::new(attribution)), columns))
}

/// A window range's bounds, checked against the axis's length.
fn window_bounds(r: &ast::WindowRange, name: &str, limit: usize, catalog: &dyn Catalog) -> Result<(usize, usize)> {
    let a = resolve_int(&r.start, catalog, "a window bound")?;
    let b = resolve_int(&r.end, catalog, "a window bound")?;
    if a < 0 || b <= a || b as usize > limit {
        return Err(Error::value(format!("window {name} {a}:{b} must satisfy 0 ≤ start < end ≤ {limit}")).at(r.span));
    }
    Ok((a as usize, b as usize))
}

/// A WINDOW (or the window of an input edit) as features of the dataset: a box of an
/// image, or tabular columns.
pub fn resolve_window(
    w: &ast::Window,
    info: &DatasetInfo,
    data_name: &str,
    catalog: &dyn Catalog,
) -> Result<WindowSpec> {
    Ok(match (&w.kind, &info.modality) {
        (WindowKind::Image(ranges), Modality::Text { .. }) => {
            let [r] = ranges.as_slice() else {
                return Err(Error::value("a text window is one range: WINDOW tokens a:b").at(w.span));
            };
            let limit: usize = info.sample_shape.iter().product();
            if r.axis != Axis::Tokens {
                return Err(Error::value("a text window is a range of tokens: WINDOW tokens a:b").at(r.span));
            }
            let a = resolve_int(&r.start, catalog, "a window bound")?;
            let b = resolve_int(&r.end, catalog, "a window bound")?;
            if a < 0 || b <= a || b as usize > limit {
                return Err(
                    Error::value(format!("window tokens {a}:{b} must satisfy 0 ≤ start < end ≤ {limit}")).at(r.span),
                );
            }
            WindowSpec::Columns((a as usize..b as usize).collect())
        }
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
                    Axis::Tokens | Axis::Positions => {
                        return Err(Error::value(format!(
                            "a window of tokens or positions applies to text or sequences, but `{data_name}` is an image dataset"
                        ))
                        .at(r.span));
                    }
                };
                *slot = window_bounds(r, name, limit, catalog)?;
            }
            WindowSpec::Rect(rect)
        }
        (WindowKind::Image(ranges), Modality::Sequence { channels, length }) => {
            let mut rect = Rect {
                channels: (0, *channels),
                rows: (0, 1),
                cols: (0, *length),
            };
            for r in ranges {
                let (name, limit, slot) = match r.axis {
                    Axis::Positions => ("positions", *length, &mut rect.cols),
                    Axis::Channels => ("channels", *channels, &mut rect.channels),
                    _ => {
                        return Err(Error::value(format!(
                            "`{data_name}` is a sequence: its windows are positions a:b and channels a:b"
                        ))
                        .at(r.span));
                    }
                };
                *slot = window_bounds(r, name, limit, catalog)?;
            }
            WindowSpec::Rect(rect)
        }
        (WindowKind::Columns(items), Modality::Tabular { columns }) => {
            let mut picked = Vec::new();
            for item in items {
                match item {
                    ColumnItem::Name(n) => {
                        let pos = columns.iter().position(|c| *c == n.name).ok_or_else(|| {
                            Error::unknown("column", &n.name, columns, &format!("columns of {}", data_name)).at(n.span)
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
                data_name,
                modality_name(&info.modality)
            ))
            .at(w.span)
            .hint("for tabular data write WINDOW columns a, b, …"));
        }
        (WindowKind::Columns(_), _) => {
            return Err(Error::value(format!(
                "WINDOW columns applies to tabular data, but `{}` is {}",
                data_name,
                modality_name(&info.modality)
            ))
            .at(w.span)
            .hint("for images write WINDOW rows a:b, cols c:d"));
        }
    })
}

/// The syntax of one interpretation: its call and its clauses.
struct Interp<'a> {
    call: &'a ast::ModelCall,
    c: &'a Clauses,
}

pub fn resolve_layer(name: &ast::Ident, model: &ModelInfo, model_name: &str) -> Result<LayerRef> {
    let alias = || model.aliases.iter().find(|(a, _)| *a == name.name).map(|(_, i)| *i);
    let index = model
        .layers
        .iter()
        .position(|l| *l == name.name)
        .or_else(alias)
        .ok_or_else(|| {
            Error::unknown("layer", &name.name, &model.layers, &format!("layers of {model_name}")).at(name.span)
        })?;
    Ok(LayerRef {
        name: name.name.clone(),
        index,
        shape: model.layer_shapes[index].clone(),
    })
}

/// A unit of a layer, flat (`fc1[5]`) or by coordinates (`conv2[3, 4, 4]`).
fn resolve_unit(layer: &LayerRef, index: &[Value], span: Span, catalog: &dyn Catalog) -> Result<usize> {
    let units: usize = layer.shape.iter().product();
    let coords = index
        .iter()
        .map(|v| resolve_int(v, catalog, "a unit index"))
        .collect::<Result<Vec<_>>>()?;
    let shape = crate::data::fmt_shape(&layer.shape);
    if coords.len() == 1 {
        let u = coords[0];
        if u < 0 || u as usize >= units {
            return Err(Error::value(format!(
                "unit {u} is out of range: layer `{}` has {units} units (shape {shape})",
                layer.name
            ))
            .at(span));
        }
        return Ok(u as usize);
    }
    if coords.len() != layer.shape.len() {
        return Err(Error::value(format!(
            "layer `{}` has shape {shape}: give one flat index or {} coordinates, not {}",
            layer.name,
            layer.shape.len(),
            coords.len()
        ))
        .at(span));
    }
    let mut flat = 0usize;
    for (k, (&c, &len)) in coords.iter().zip(&layer.shape).enumerate() {
        if c < 0 || c as usize >= len {
            return Err(Error::value(format!(
                "coordinate {k} of the unit is {c}, out of range 0..{} for layer `{}` of shape {shape}",
                len - 1,
                layer.name
            ))
            .at(span));
        }
        flat = flat * len + c as usize;
    }
    Ok(flat)
}

/// AT LAYER, TARGET l[i] and THROUGH LAYER against the method and each other.
fn check_selection(
    method: &Method,
    span: Span,
    i: &Interp,
    at_layer: &Option<LayerRef>,
    target: &TargetSpec,
    info: &DatasetInfo,
) -> Result<()> {
    let name = method.name();
    match (method.needs(), at_layer) {
        (Needs::Layer, None) => {
            return Err(Error::value(format!("{name} attributes to a layer: add AT LAYER l"))
                .at(span)
                .hint("SHOW LAYERS OF m lists the layers"));
        }
        (Needs::Nothing | Needs::Unit, Some(_)) => {
            let span = i.c.at_layer.as_ref().map_or(span, |l| l.span);
            return Err(Error::value(format!(
                "AT LAYER takes a layer method; {name} attributes input features"
            ))
            .at(span)
            .hint(layer_methods_hint(name)));
        }
        _ => {}
    }
    if method.needs() == Needs::Unit && !matches!(target, TargetSpec::Unit(..)) {
        return Err(
            Error::value(format!("{name} explains a unit of a layer: add TARGET l[i]"))
                .at(span)
                .hint("for example TARGET fc1[5]"),
        );
    }
    if let (TargetSpec::Unit(unit_layer, _), Some(l)) = (target, at_layer)
        && unit_layer.index <= l.index
    {
        return Err(Error::value(format!(
            "the target unit's layer `{}` must come after AT LAYER `{}`",
            unit_layer.name, l.name
        ))
        .at(i.c.target.as_ref().map_or(span, |t| t.span)));
    }
    if let Some(t) = &i.c.through {
        let conflict = if at_layer.is_some() {
            Some("AT LAYER")
        } else if matches!(target, TargetSpec::Unit(..)) {
            Some("TARGET l[i]")
        } else {
            None
        };
        if let Some(other) = conflict {
            return Err(Error::value(format!(
                "THROUGH LAYER explains the model cut at a layer; it does not combine with {other}"
            ))
            .at(t.span));
        }
    }
    if method.attributes_layer() {
        if let Some(g) = &i.c.granularity {
            return Err(
                Error::value("GRANULARITY groups input features; a layer method attributes to units").at(g.span),
            );
        }
        if let (Some(w), false) = (&i.c.window, method.uses_baseline()) {
            return Err(Error::value(format!(
                "WINDOW keeps the input outside it as the baseline; {name} takes no baseline"
            ))
            .at(w.span)
            .hint("with AT LAYER, WINDOW applies to layer_conductance and layer_integrated_gradients"));
        }
    }
    let spatial = at_layer.as_ref().is_some_and(|l| l.shape.len() == 3);
    let upsampled = matches!(method, Method::GradCam { upsample: true, .. }) || *method == Method::GuidedGradCam;
    if upsampled {
        if !matches!(info.modality, Modality::Image { .. }) {
            return Err(Error::value(format!(
                "{name} brings a map to the input's resolution: it needs images"
            ))
            .at(span));
        }
        if !spatial {
            return Err(Error::value(format!(
                "{name} brings the layer's map to the input's resolution: it needs a layer with channels, rows and columns"
            ))
            .at(span));
        }
    }
    Ok(())
}

pub(super) fn plan_prediction(p: &ast::Predict, catalog: &dyn Catalog) -> Result<Node> {
    let call = &p.call;
    let (bound, model) = resolve_call_model(call, catalog)?;
    let (data, info) = resolve_model_input(&call.data, catalog, &model, &call.model.name, true)?;
    check_fits(&model, &info, &call.model.name, &data.name, call.data.span)?;
    let classes = class_names(&model, &info);
    let top = match &p.top {
        None => 0,
        Some(v) => {
            let k = resolve_int(v, catalog, "TOP's count")?;
            if k < 1 || k as usize > model.output_len {
                return Err(Error::value(format!(
                    "TOP {k} is out of range: `{}` has {} outputs",
                    call.model.name, model.output_len
                ))
                .at(v.span));
            }
            k as usize
        }
    };
    Ok(Node::new(
        NodeKind::Predict(Prediction {
            model: bound,
            data,
            top,
            classes: classes.clone(),
        }),
        prediction_columns(model.output_len, top, classes.is_some()),
    ))
}

/// The names of the classes a model's outputs stand for: its own (CLASSES on LOAD MODEL),
/// else its data's when there are as many (CLASSES on LOAD DATA, a photo folder's).
fn class_names(model: &ModelInfo, data: &DatasetInfo) -> Option<std::sync::Arc<Vec<String>>> {
    model
        .classes
        .clone()
        .or_else(|| data.classes.clone().filter(|c| c.len() == model.output_len))
}

/// The data's inputs must have the model's shape — up to axes of size 1, which change
/// no layout ([8, 8] images for a [1, 8, 8] model). The same number of values in another
/// arrangement ([64] for [1, 8, 8]) is refused too: read as the model's shape it would
/// silently mean something else; `LOAD DATA … SHAPE (…)` says how to read it.
fn check_fits(model: &ModelInfo, data: &DatasetInfo, mname: &str, dname: &str, span: Span) -> Result<()> {
    let want: usize = model.input_shape.iter().product();
    let have: usize = data.sample_shape.iter().product();
    let squeezed = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    let (data_shape, model_shape) = (
        crate::data::fmt_shape(&data.sample_shape),
        crate::data::fmt_shape(&model.input_shape),
    );
    if want != have {
        return Err(Error::shape(format!(
            "`{dname}` holds inputs of shape {data_shape} but `{mname}` takes {model_shape}"
        ))
        .at(span));
    }
    // Text models read token ids, whatever the data's own shape.
    if model.text_length.is_none() && squeezed(&data.sample_shape) != squeezed(&model.input_shape) {
        let dims: Vec<String> = model.input_shape.iter().map(|d| d.to_string()).collect();
        return Err(Error::shape(format!(
            "`{dname}` holds inputs of shape {data_shape} but `{mname}` takes {model_shape}: the same number of values, arranged otherwise"
        ))
        .at(span)
        .hint(format!(
            "if each input's values are in the model's order, load them so: LOAD DATA {dname} FROM '…' SHAPE ({})",
            dims.join(", ")
        )));
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
        Modality::Sequence { .. } => "a sequence dataset",
        Modality::Volume { .. } => "a volume dataset",
        Modality::Tensor => "a tensor dataset",
        Modality::Text { .. } => "a text dataset",
    }
}

/// The columns of the relation an interpretation gives.
pub fn relation_columns(a: &Attribution) -> Vec<String> {
    let mut cols = if a.metrics.is_empty() {
        unnamed_relation_columns(a)
    } else {
        EVALUATION_COLUMNS.iter().map(|c| c.to_string()).collect()
    };
    if a.classes.is_some() {
        // The target's name, beside it.
        let at = cols.iter().position(|c| c == "target").map_or(cols.len(), |i| i + 1);
        cols.insert(at, "class".to_string());
    }
    cols
}

/// The relation of an interpretation with EVALUATE: a row per input and metric.
pub const EVALUATION_COLUMNS: &[&str] = &["input", "label", "prediction", "target", "method", "metric", "value"];

fn unnamed_relation_columns(a: &Attribution) -> Vec<String> {
    if !a.all_layers.is_empty() {
        // The stacked relations: every coordinate column any layer has.
        let mut coords: Vec<&str> = Vec::new();
        for l in &a.all_layers {
            for c in unit_coordinates(&l.shape, &a.modality) {
                if !coords.contains(c) {
                    coords.push(c);
                }
            }
        }
        let order = [
            "channel", "row", "col", "head", "query", "key", "token", "dim", "neuron",
        ];
        coords.sort_by_key(|c| order.iter().position(|o| o == c));
        let mut cols: Vec<&str> = vec!["input", "label", "prediction", "target", "layer", "unit"];
        cols.extend(coords);
        cols.extend(["activation", "attribution"]);
        return cols.into_iter().map(String::from).collect();
    }
    if a.is_layer_relation() {
        return layer_columns(&result_shape(a), &a.modality);
    }
    let mut cols = attribution_columns(&a.modality, &a.granularity);
    if a.through.is_some() {
        cols.splice(4..4, ["layer".to_string(), "probe_accuracy".to_string()]);
    }
    cols
}

/// One input's result shape for a layer method.
pub fn result_shape(a: &Attribution) -> Vec<usize> {
    let Some(l) = &a.layer else { return Vec::new() };
    match &a.method {
        Method::GradCam {
            upsample, per_channel, ..
        } => {
            let channels = if *per_channel { l.shape[0] } else { 1 };
            match &a.modality {
                Modality::Image { height, width, .. } if *upsample => vec![channels, *height, *width],
                _ => crate::ops::layer::gradcam_shape(&l.shape, *per_channel),
            }
        }
        Method::Cam { upsample, .. } => match &a.modality {
            Modality::Image { height, width, .. } if *upsample => vec![1, *height, *width],
            Modality::Image { .. } => {
                crate::ops::layer::gradcam_shape(&crate::ops::layer::cam_map_shape(&l.shape, true), false)
            }
            _ => crate::ops::layer::gradcam_shape(&l.shape, false),
        },
        _ => l.shape.clone(),
    }
}

/// The layer methods (from the method table), the layer form of `name` first if it has
/// one (`lrp` → `layer_lrp`).
fn layer_methods_hint(name: &str) -> String {
    let mut names: Vec<&str> = ops::METHODS
        .iter()
        .filter(|m| m.needs == Needs::Layer)
        .map(|m| m.name)
        .collect();
    let own = format!("layer_{name}");
    if let Some(i) = names.iter().position(|n| *n == own) {
        let m = names.remove(i);
        names.insert(0, m);
        return format!("{own} is {name} at a layer; layer methods: {}", names.join(", "));
    }
    format!("layer methods: {}", names.join(", "))
}

/// The coordinate columns of a layer's units, by the rank of its output.
pub fn unit_coordinates(shape: &[usize], modality: &Modality) -> &'static [&'static str] {
    let text = matches!(modality, Modality::Text { .. });
    let sequence = matches!(modality, Modality::Sequence { .. });
    match shape.len() {
        // A text model's attention probabilities: heads × query tokens × key tokens.
        3 if text => &["head", "query", "key"],
        3 => &["channel", "row", "col"],
        4 => &["channel", "depth", "row", "col"],
        2 if sequence => &["channel", "position"],
        2 => &["token", "dim"],
        1 => &["neuron"],
        _ => &[],
    }
}

/// Whether a layer relation's coordinates are those of attention probabilities.
pub fn is_attention(coords: &[&str]) -> bool {
    coords == ["head", "query", "key"]
}

/// The columns of a layer relation (DESIGN.md, "The relations").
pub fn layer_columns(shape: &[usize], modality: &Modality) -> Vec<String> {
    let mut cols: Vec<&str> = vec!["input", "label", "prediction", "target", "layer", "unit"];
    let coords = unit_coordinates(shape, modality);
    cols.extend(coords);
    if is_attention(coords) {
        // Attention probabilities: the activation is the weight of key for query.
        cols.push("weight");
    }
    cols.extend(["activation", "attribution"]);
    cols.into_iter().map(String::from).collect()
}

/// The columns of an attribution relation (DESIGN.md, "The relations").
pub fn attribution_columns(modality: &Modality, granularity: &GranularitySpec) -> Vec<String> {
    let mut cols: Vec<&str> = vec!["input", "label", "prediction", "target"];
    let grouped = matches!(
        granularity,
        GranularitySpec::Pixel | GranularitySpec::Patch(_) | GranularitySpec::Word
    );
    if grouped {
        cols.push("group");
    }
    cols.push("feature");
    match modality {
        Modality::Image { .. } => cols.extend(["channel", "row", "col"]),
        Modality::Tabular { .. } => cols.push("column"),
        Modality::Sequence { .. } => cols.extend(["channel", "position"]),
        Modality::Volume { .. } => cols.extend(["channel", "depth", "row", "col"]),
        Modality::Tensor => {}
        Modality::Text { .. } => cols.extend(["token", "text"]),
    }
    if grouped {
        cols.push("size");
    }
    cols.extend(["value", "attribution"]);
    cols.into_iter().map(String::from).collect()
}

/// The columns of a prediction relation: per input, then one logit column per output.
pub fn prediction_columns(outputs: usize, top: usize, named: bool) -> Vec<String> {
    let mut cols: Vec<String> = ["input", "label", "prediction", "confidence", "correct"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if named {
        cols.insert(3, "class".to_string());
    }
    cols.extend((0..outputs).map(|k| format!("logit_{k}")));
    for k in 1..=top {
        cols.push(format!("top{k}"));
        cols.push(format!("top{k}_confidence"));
    }
    cols
}
