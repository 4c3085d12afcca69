//! Stage 2: syntax tree → logical plan. The planner sees the session through the
//! `Catalog` trait (models, datasets, settings, variables), so it can be tested with a
//! small fake; every name is resolved and every parameter checked here, with spans.

pub mod distribute;
mod influence;
mod interpret;
pub mod logical;
mod optimize;
mod query;

use std::path::PathBuf;

pub use interpret::{
    attribution_columns, is_attention, layer_columns, prediction_columns, relation_columns, result_shape,
    unit_coordinates,
};
pub use logical::*;

use crate::data::Modality;
use crate::error::{Error, Result, Span};
use crate::ops::ParamValue;
use crate::syntax::ast::{self, Statement, StatementKind, Value, ValueKind};

/// What the planner needs to know of a model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub input_shape: Vec<usize>,
    pub output_len: usize,
    pub layers: Vec<String>,
    /// Each layer's output shape (one sample).
    pub layer_shapes: Vec<Vec<usize>>,
    /// Other names of layers (an ONNX node's name or module).
    pub aliases: Vec<(String, usize)>,
    /// The input is a sequence `[channels, length]` read by 1-D convolutions.
    pub sequence_input: bool,
    /// The input is a volume `[channels, depth, height, width]` read by 3-D convolutions.
    pub volume_input: bool,
    /// The input has symbolic axes: the model is bound to the shape of its data
    /// (`Catalog::bind_model`) before anything else is resolved.
    pub dynamic: bool,
    /// A text model that is built again for the length of its data: the length it is
    /// built for.
    pub text_length: Option<usize>,
    /// The names of its outputs (CLASSES).
    pub classes: Option<std::sync::Arc<Vec<String>>>,
}

/// What the planner needs to know of a dataset.
#[derive(Clone, Debug)]
pub struct DatasetInfo {
    pub len: usize,
    pub sample_shape: Vec<usize>,
    pub modality: Modality,
    pub has_labels: bool,
    /// The smallest and largest input id.
    pub id_range: (i64, i64),
    /// The names of its label classes (CLASSES, or a photo folder's class folders).
    pub classes: Option<std::sync::Arc<Vec<String>>>,
}

pub trait Catalog {
    fn model(&self, name: &str) -> Option<ModelInfo>;
    fn model_names(&self) -> Vec<String>;
    fn dataset(&self, name: &str) -> Option<DatasetInfo>;
    fn dataset_names(&self) -> Vec<String>;
    /// A session setting (SET) that may stand in for a method parameter's default.
    fn setting(&self, name: &str) -> Option<ParamValue>;
    fn variable(&self, name: &str) -> Option<Literal>;
    fn variable_names(&self) -> Vec<String>;
    /// A table read by name (`FROM t`): a WITH name in scope, or a table kept by
    /// `LET t = (SELECT …)`.
    fn table(&self, name: &str) -> Option<TableInfo> {
        let _ = name;
        None
    }
    /// The tables `table` knows, innermost WITH names first.
    fn table_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// The model `name` (whose input has symbolic axes) bound to inputs of `sample_shape`:
    /// the name of that binding and what it is.
    fn bind_model(&self, name: &str, sample_shape: &[usize]) -> Result<(String, ModelInfo)> {
        let _ = sample_shape;
        Err(Error::model(format!("`{name}` cannot be bound to a shape here")))
    }
}

/// What the planner needs to know of a table.
#[derive(Clone, Debug)]
pub struct TableInfo {
    pub columns: Vec<String>,
    /// Where it comes from: a WITH of the query, or the session (LET).
    pub source: TableSource,
}

/// Settings a user may SET, with what they accept.
pub const SETTINGS: &[(&str, &str)] = &[
    ("method", "the method used when a query has no USING (a method name)"),
    ("steps", "default steps of integrated gradients (an integer ≥ 1)"),
    ("seed", "default seed of stochastic methods (an integer ≥ 0)"),
    (
        "batch_size",
        "most inputs in one forward pass (an integer ≥ 1, or auto)",
    ),
    (
        "memory_mb",
        "memory budget that sizes batches (when batch_size is auto) and streamed chunks (MB ≥ 1)",
    ),
    ("cache_mb", "activation cache budget (MB ≥ 0; 0 turns the cache off)"),
    (
        "max_tokens",
        "length text models are built for, in tokens, when loaded (2 to 512)",
    ),
    ("allow_nonfinite", "load data holding NaN or infinity (true or false)"),
];

/// A new dataset's (or kept table's: `what`) name must not be a model's.
fn check_dataset_name(name: &ast::Ident, catalog: &dyn Catalog, what: &str) -> Result<()> {
    if catalog.model(&name.name).is_some() {
        return Err(Error::name(format!(
            "`{}` is a model; choose another name for the {what}",
            name.name
        ))
        .at(name.span));
    }
    Ok(())
}

/// Plans and optimizes a subquery of an expression (run by the executor before the query
/// that holds it).
pub fn plan_subquery(q: &ast::Query, catalog: &dyn Catalog) -> Result<Node> {
    Ok(optimize::optimize(query::plan_query(q, catalog)?))
}

/// Plans one statement against the catalog.
pub fn plan(stmt: &Statement, catalog: &dyn Catalog) -> Result<Plan> {
    Ok(match &stmt.kind {
        StatementKind::LoadModel {
            name,
            path,
            arch,
            head,
            classes,
            checkpoints,
        } => {
            // A Hugging Face model is a directory.
            let weights = match resolve_path(path, catalog)? {
                dir if dir.is_dir() => {
                    if !dir.join("config.json").is_file() {
                        return Err(Error::io(format!(
                            "{} is a directory without config.json (a Hugging Face model directory has config.json, model.safetensors and tokenizer.json)",
                            dir.display()
                        ))
                        .at(path.span));
                    }
                    dir
                }
                _ => existing_path(path, catalog)?,
            };
            let ext = weights
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_lowercase();
            let arch = arch.as_ref().map(|a| existing_path(a, catalog)).transpose()?;
            if weights.is_dir() || ext == "onnx" {
                if let Some(a) = &arch {
                    let what = if weights.is_dir() {
                        "a model directory"
                    } else {
                        "an ONNX file"
                    };
                    return Err(Error::model(format!("{what} carries its own architecture"))
                        .hint(format!("drop ARCH '{}'", a.display()))
                        .at(path.span));
                }
            } else if arch.is_none() {
                return Err(Error::model(format!(
                    "model `{}` needs an architecture file: add ARCH 'architecture.json'",
                    name.name
                ))
                .hint("or load an ONNX export: LOAD MODEL m FROM 'm.onnx'")
                .at(path.span));
            }
            let checkpoints = checkpoints
                .iter()
                .map(|(p, rate)| {
                    let rate = match rate {
                        None => 1.0,
                        Some(v) => match resolve_literal(v, catalog)? {
                            Literal::Number(r) if r.is_finite() && r > 0.0 => r,
                            other => {
                                return Err(
                                    Error::value(format!("a learning rate is a positive number, got {other}"))
                                        .at(v.span),
                                );
                            }
                        },
                    };
                    Ok((existing_path(p, catalog)?, rate))
                })
                .collect::<Result<Vec<_>>>()?;
            Plan::LoadModel {
                name: name.name.clone(),
                weights,
                arch,
                head: head.as_ref().map(|h| existing_path(h, catalog)).transpose()?,
                classes: classes.as_ref().map(|c| existing_path(c, catalog)).transpose()?,
                checkpoints,
            }
        }
        StatementKind::LoadData {
            name,
            path,
            labels,
            label_column,
            text,
            images,
            classes,
            shape,
        } => Plan::LoadData {
            shape: match shape {
                Some((dims, sp)) => {
                    if dims.contains(&0) {
                        return Err(Error::shape("SHAPE takes axes of 1 or more").at(*sp));
                    }
                    if text.is_some() || images.is_some() {
                        return Err(Error::data("SHAPE applies to arrays and tables, not to texts or photos").at(*sp));
                    }
                    Some(dims.clone())
                }
                None => None,
            },
            classes: classes.as_ref().map(|c| existing_path(c, catalog)).transpose()?,
            text: text.as_ref().map(|c| c.as_ref().map(|c| c.name.clone())),
            name: name.name.clone(),
            // A photo folder is a directory, or a glob the loader expands.
            path: match images {
                Some(_) => resolve_path(path, catalog)?,
                None => existing_path(path, catalog)?,
            },
            images: images.clone(),
            labels: labels.as_ref().map(|l| existing_path(l, catalog)).transpose()?,
            label_column: label_column.as_ref().map(|c| c.name.clone()),
        },
        StatementKind::Show(show) => match show {
            ast::Show::Models => Plan::ShowModels,
            ast::Show::Data => Plan::ShowData,
            ast::Show::Methods => Plan::ShowMethods,
            ast::Show::Cache => Plan::ShowCache,
            ast::Show::Settings => Plan::ShowSettings,
            ast::Show::Layers(m) => {
                resolve_model(m, catalog)?;
                Plan::ShowLayers { model: m.name.clone() }
            }
        },
        StatementKind::Set { name, value } => Plan::Set {
            name: name.name.to_lowercase(),
            value: plan_setting(name, value, catalog)?,
        },
        StatementKind::Var { name, value } => Plan::Var {
            name: name.name.clone(),
            value: resolve_literal(value, catalog)?,
        },
        StatementKind::Let { name, dataset } => {
            check_dataset_name(name, catalog, "dataset")?;
            Plan::Let {
                name: name.name.clone(),
                dataset: resolve_dataset(dataset, catalog)?.0,
            }
        }
        StatementKind::LetAttack { name, attack } => {
            check_dataset_name(name, catalog, "dataset")?;
            Plan::LetAttack {
                name: name.name.clone(),
                attack: interpret::plan_attack(attack, catalog)?,
                text: format!("ATTACK {} ON {}{}", attack.method, attack.call, attack.clauses),
            }
        }
        StatementKind::LetVisualize { name, visualize } => {
            check_dataset_name(name, catalog, "dataset")?;
            Plan::LetVisualize {
                name: name.name.clone(),
                visualize: interpret::plan_visualize(visualize, catalog)?,
                text: visualize.to_string(),
            }
        }
        StatementKind::LetTable { name, query: q } => {
            check_dataset_name(name, catalog, "table")?;
            Plan::LetTable {
                name: name.name.clone(),
                query: optimize::optimize(query::plan_query(q, catalog)?),
                text: q.to_string(),
            }
        }
        StatementKind::Query(q) => Plan::Query(optimize::optimize(query::plan_query(q, catalog)?)),
        // `EXPORT t TO 'f.csv'` for a kept table: the table's rows.
        StatementKind::ExportData {
            dataset,
            path,
            overwrite,
        } if dataset.visualize.is_none()
            && dataset.index.is_none()
            && dataset.edits.is_empty()
            && catalog.table(&dataset.name.name).is_some() =>
        {
            let table = ast::Query {
                kind: ast::QueryKind::Select(Box::new(ast::Select {
                    distinct: false,
                    items: vec![ast::SelectItem::Wildcard(dataset.span)],
                    from: ast::Source::Table {
                        name: dataset.name.clone(),
                        alias: None,
                    },
                    filter: None,
                    group_by: Vec::new(),
                    having: None,
                    order_by: Vec::new(),
                    limit: None,
                    span: dataset.span,
                })),
                span: dataset.span,
            };
            plan_export(&table, path, *overwrite, false, catalog)?
        }
        StatementKind::ExportData {
            dataset,
            path,
            overwrite,
        } => {
            let file = resolve_path(path, catalog)?;
            let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
            let png = match ext.as_str() {
                "png" => true,
                "npy" => false,
                _ => {
                    return Err(Error::value(format!(
                        "a dataset exports as a picture (.png) or an array (.npy), not `{}`",
                        file.display()
                    ))
                    .at(path.span)
                    .hint("to export a relation, write EXPORT SELECT … TO 'f.csv'"));
                }
            };
            let (dataset, info) = resolve_dataset(dataset, catalog)?;
            if png && !matches!(info.modality, crate::data::Modality::Image { .. }) {
                return Err(
                    Error::value(format!("`{}` is not images: export it as an .npy array", dataset.name)).at(path.span),
                );
            }
            Plan::ExportData {
                dataset,
                path: file,
                png,
                overwrite: *overwrite,
            }
        }
        StatementKind::Plan(q) => Plan::Explain(optimize::optimize(query::plan_query(q, catalog)?)),
        StatementKind::Export {
            query: q,
            path,
            overwrite,
            report,
        } => plan_export(q, path, *overwrite, *report, catalog)?,
    })
}

/// `EXPORT [REPORT] query TO path [OVERWRITE]`: the format from the file's extension.
fn plan_export(q: &ast::Query, path: &Value, overwrite: bool, report: bool, catalog: &dyn Catalog) -> Result<Plan> {
    {
        {
            let file = resolve_path(path, catalog)?;
            let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
            let format = match ext.as_str() {
                "html" | "htm" if report => ExportFormat::Report,
                _ if report => {
                    return Err(
                        Error::value(format!("a report is an HTML file, not `{}`", file.display()))
                            .at(path.span)
                            .hint("write EXPORT REPORT … TO 'report.html'"),
                    );
                }
                "html" | "htm" => {
                    return Err(
                        Error::value("an .html file is a report: write EXPORT REPORT … TO 'f.html'").at(path.span),
                    );
                }
                "csv" => ExportFormat::Csv,
                "parquet" => ExportFormat::Parquet,
                "json" => ExportFormat::Json,
                "png" => ExportFormat::Png,
                _ => {
                    return Err(
                        Error::value(format!("cannot export to `{}`: unknown file type", file.display()))
                            .at(path.span)
                            .hint("use a .csv, .parquet, .json or .png file name"),
                    );
                }
            };
            if !overwrite && file.exists() {
                return Err(Error::io(format!("{} already exists", file.display()))
                    .at(path.span)
                    .hint("add OVERWRITE to replace it"));
            }
            Ok(Plan::Export {
                query: optimize::optimize(query::plan_query(q, catalog)?),
                text: q.to_string(),
                path: file,
                format,
                overwrite,
            })
        }
    }
}

fn plan_setting(name: &ast::Ident, value: &Value, catalog: &dyn Catalog) -> Result<Setting> {
    let lit = resolve_literal(value, catalog)?;
    let int = |min: f64| -> Result<usize> {
        match &lit {
            Literal::Number(n) if n.fract() == 0.0 && *n >= min => Ok(*n as usize),
            other => {
                Err(Error::value(format!("{} must be a whole number ≥ {min}, got {other}", name.name)).at(value.span))
            }
        }
    };
    Ok(match name.name.to_lowercase().as_str() {
        "method" => {
            let text = match &lit {
                Literal::Text(t) => t.clone(),
                other => other.to_string(),
            };
            match crate::ops::method_info(&text) {
                Some(info) => Setting::Method(info.name.to_string()),
                None => {
                    return Err(Error::unknown("method", &text, &crate::ops::method_names(), "methods").at(value.span));
                }
            }
        }
        "steps" => Setting::Steps(int(1.0)?),
        "seed" => Setting::Seed(int(0.0)? as u64),
        "batch_size" => {
            if matches!(&lit, Literal::Text(t) if t.eq_ignore_ascii_case("auto")) {
                Setting::BatchSize(None)
            } else {
                Setting::BatchSize(Some(int(1.0)?))
            }
        }
        "memory_mb" => Setting::MemoryMb(int(1.0)?),
        "cache_mb" => Setting::CacheMb(int(0.0)?),
        "max_tokens" => Setting::MaxTokens(int(2.0)?.min(512)),
        "allow_nonfinite" => match lit {
            Literal::Bool(b) => Setting::AllowNonfinite(b),
            other => {
                return Err(Error::value(format!("allow_nonfinite must be true or false, got {other}")).at(value.span));
            }
        },
        other => {
            let known: Vec<String> = SETTINGS.iter().map(|(n, _)| n.to_string()).collect();
            return Err(Error::unknown("setting", other, &known, "settings").at(name.span));
        }
    })
}

/// A literal with script variables replaced by their values.
pub fn resolve_literal(value: &Value, catalog: &dyn Catalog) -> Result<Literal> {
    Ok(match &value.kind {
        ValueKind::Number(n) => Literal::Number(*n),
        ValueKind::Str(s) | ValueKind::Word(s) => Literal::Text(s.clone()),
        ValueKind::Bool(b) => Literal::Bool(*b),
        ValueKind::Var(v) => return variable(v, value.span, catalog),
    })
}

pub fn variable(name: &str, span: Span, catalog: &dyn Catalog) -> Result<Literal> {
    catalog.variable(name).ok_or_else(|| {
        let mut err = Error::unknown(
            "variable",
            &format!(":{name}"),
            &catalog
                .variable_names()
                .iter()
                .map(|v| format!(":{v}"))
                .collect::<Vec<_>>(),
            "variables",
        );
        err.hints.push(format!(
            "declare it with VAR {name} = value; or pass --var {name}=value"
        ));
        err.at(span)
    })
}

fn resolve_path(value: &Value, catalog: &dyn Catalog) -> Result<PathBuf> {
    match resolve_literal(value, catalog)? {
        Literal::Text(t) => Ok(PathBuf::from(t)),
        other => Err(Error::value(format!("expected a file path in quotes, got {other}")).at(value.span)),
    }
}

/// A path to read from: it must exist (checked here so the caret points at it).
fn existing_path(value: &Value, catalog: &dyn Catalog) -> Result<PathBuf> {
    let path = resolve_path(value, catalog)?;
    if !path.exists() {
        return Err(crate::error::missing_file(&path, "no such file").at(value.span));
    }
    if path.is_dir() {
        return Err(Error::io(format!("{} is a directory, not a file", path.display())).at(value.span));
    }
    Ok(path)
}

/// A whole number (an index, a range bound, a count).
pub fn resolve_int(value: &Value, catalog: &dyn Catalog, what: &str) -> Result<i64> {
    match resolve_literal(value, catalog)? {
        Literal::Number(n) if n.fract() == 0.0 && n.abs() < 9e15 => Ok(n as i64),
        Literal::Number(n) if n.fract() == 0.0 => {
            Err(Error::value(format!("{what} is too large: {n} (whole numbers here go up to 9·10¹⁵)")).at(value.span))
        }
        other => Err(Error::value(format!("{what} must be a whole number, got {other}")).at(value.span)),
    }
}

/// A feature visualization written in place of a dataset, checked.
pub fn plan_visualization(v: &ast::Visualize, catalog: &dyn Catalog) -> Result<logical::VisualizeSpec> {
    interpret::plan_visualize(v, catalog)
}

/// The model a call `m(d)` runs, and the name the plan knows it by: a model whose input
/// has symbolic axes is bound to the shape of `d` (named `m[3×48×48]`).
pub fn resolve_call_model(call: &ast::ModelCall, catalog: &dyn Catalog) -> Result<(String, ModelInfo)> {
    let model = resolve_model(&call.model, catalog)?;
    if let (Some(length), Some(info)) = (model.text_length, catalog.dataset(&call.data.name.name))
        && matches!(info.modality, crate::data::Modality::Text { .. })
        && info.sample_shape.len() == 1
        && info.sample_shape[0] != length
    {
        // Texts padded to their longest run the encoder built for that length.
        return catalog
            .bind_model(&call.model.name, &info.sample_shape)
            .map_err(|e| e.at(call.span));
    }
    if !model.dynamic {
        return Ok((call.model.name.clone(), model));
    }
    match catalog.dataset(&call.data.name.name) {
        Some(info) => catalog
            .bind_model(&call.model.name, &info.sample_shape)
            .map_err(|e| e.at(call.span)),
        // The dataset's own error comes when it is resolved.
        None => Ok((call.model.name.clone(), model)),
    }
}

pub fn resolve_model(name: &ast::Ident, catalog: &dyn Catalog) -> Result<ModelInfo> {
    catalog.model(&name.name).ok_or_else(|| {
        let mut err = Error::unknown("model", &name.name, &catalog.model_names(), "loaded models");
        if catalog.dataset(&name.name).is_some() {
            err.hints.insert(
                0,
                format!(
                    "`{}` is a dataset; interpretations are written model(dataset)",
                    name.name
                ),
            );
        }
        err.at(name.span)
    })
}

/// A dataset expression → the dataset's info and the rows it picks. Activation edits
/// (`WITH LAYER …`) are refused here: they need the model (`resolve_model_input`).
pub fn resolve_dataset(expr: &ast::DatasetExpr, catalog: &dyn Catalog) -> Result<(DatasetRef, DatasetInfo)> {
    resolve_dataset_of(expr, catalog, None)
}

/// The dataset expression inside `model(…)`: its activation edits are checked against
/// the model's layers.
/// `paired`: `FROM` may name as many donors as there are inputs, input i patched from
/// donor i (PREDICT); elsewhere one donor serves every input.
pub fn resolve_model_input(
    expr: &ast::DatasetExpr,
    catalog: &dyn Catalog,
    model: &ModelInfo,
    model_name: &str,
    paired: bool,
) -> Result<(DatasetRef, DatasetInfo)> {
    resolve_dataset_of(expr, catalog, Some((model, model_name, paired)))
}

fn resolve_dataset_of(
    expr: &ast::DatasetExpr,
    catalog: &dyn Catalog,
    model: Option<(&ModelInfo, &str, bool)>,
) -> Result<(DatasetRef, DatasetInfo)> {
    let mut info = catalog.dataset(&expr.name.name).ok_or_else(|| {
        let mut err = Error::unknown("dataset", &expr.name.name, &catalog.dataset_names(), "loaded datasets");
        if catalog.model(&expr.name.name).is_some() {
            err.hints
                .insert(0, format!("`{}` is a model, not a dataset", expr.name.name));
        }
        err.at(expr.name.span)
    })?;
    // Arrays of shape (N, C, L) load as one-channel images; a sequence model reads them
    // as C channels of length L.
    if let (
        Some((m, _, _)),
        Modality::Image {
            channels: 1,
            height,
            width,
        },
    ) = (model, &info.modality)
        && m.sequence_input
        && m.input_shape == [*height, *width]
    {
        info.modality = Modality::Sequence {
            channels: *height,
            length: *width,
        };
    }
    // Arrays of shape (N, C, D, H, W) load as tensors; a volume model reads volumes.
    if let (Some((m, _, _)), Modality::Tensor, [c, d, h, w]) = (model, &info.modality, info.sample_shape.as_slice())
        && m.volume_input
        && m.input_shape == info.sample_shape
    {
        info.modality = Modality::Volume {
            channels: *c,
            depth: *d,
            height: *h,
            width: *w,
        };
    }
    let (lo, hi) = info.id_range;
    let check = |v: &Value| -> Result<i64> {
        let i = resolve_int(v, catalog, "an input index")?;
        if i < lo || i > hi {
            return Err(Error::value(format!(
                "input {i} is out of range: `{}` holds inputs {lo}..{hi}",
                expr.name.name
            ))
            .at(v.span));
        }
        Ok(i)
    };
    let pick = match &expr.index {
        None => Pick::All,
        Some(ast::Index::One(v)) => Pick::One(check(v)?),
        Some(ast::Index::Range { start, end }) => {
            let a = start
                .as_ref()
                .map(|v| resolve_int(v, catalog, "a slice bound"))
                .transpose()?;
            let b = end
                .as_ref()
                .map(|v| resolve_int(v, catalog, "a slice bound"))
                .transpose()?;
            if let (Some(a), Some(b)) = (a, b)
                && b < a
            {
                return Err(Error::value(format!("the slice {a}:{b} ends before it starts")).at(expr.span));
            }
            if a.is_some_and(|a| a > hi)
                || b.is_some_and(|b| b <= lo)
                || a.is_some_and(|a| a < 0)
                || b.is_some_and(|b| b < 0)
            {
                return Err(Error::value(format!(
                    "the slice {}:{} picks no inputs: `{}` holds inputs {lo}..{hi}",
                    a.map(|v| v.to_string()).unwrap_or_default(),
                    b.map(|v| v.to_string()).unwrap_or_default(),
                    expr.name.name
                ))
                .at(expr.span));
            }
            Pick::Range(a, b)
        }
    };
    let edits = expr
        .edits
        .iter()
        .map(|e| match &e.kind {
            ast::EditKind::Layer { layer, index, action } => match model {
                Some((m, mname, paired)) => {
                    resolve_activation_edit(layer, index, action, m, mname, paired, catalog).map(EditSpec::Layer)
                }
                None => Err(Error::query(
                    "an activation edit (WITH LAYER) changes a model's run: write it inside model(…)",
                )
                .at(e.span)
                .hint("for example PREDICT cnn(digits[17] WITH LAYER conv2[3] = 0)")),
            },
            _ => resolve_edit(e, &info, &expr.name.name, catalog),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((
        DatasetRef {
            name: expr.name.name.clone(),
            pick,
            edits,
        },
        info,
    ))
}

/// Checks `WITH LAYER l[i, …] = v | SCALE s | FROM d` against the model.
fn resolve_activation_edit(
    layer: &ast::Ident,
    index: &[Value],
    action: &ast::LayerAction,
    model: &ModelInfo,
    model_name: &str,
    paired: bool,
    catalog: &dyn Catalog,
) -> Result<ActivationEdit> {
    let l = interpret::resolve_layer(layer, model, model_name)?;
    if index.len() > l.shape.len() {
        return Err(Error::value(format!(
            "layer `{}` has shape {}: at most {} indices, not {}",
            l.name,
            crate::data::fmt_shape(&l.shape),
            l.shape.len(),
            index.len()
        ))
        .at(layer.span));
    }
    let mut start = 0usize;
    for (k, v) in index.iter().enumerate() {
        let i = resolve_int(v, catalog, "a unit index")?;
        let len = l.shape[k];
        if i < 0 || i as usize >= len {
            return Err(Error::value(format!(
                "index {i} is out of range 0..{} for axis {k} of layer `{}` (shape {})",
                len - 1,
                l.name,
                crate::data::fmt_shape(&l.shape)
            ))
            .at(v.span));
        }
        start = start * len + i as usize;
    }
    let block: usize = l.shape[index.len()..].iter().product();
    let units = start * block..(start + 1) * block;
    let number = |v: &Value, what: &str| -> Result<f32> {
        match resolve_literal(v, catalog)? {
            Literal::Number(n) if n.is_finite() => Ok(n as f32),
            other => Err(Error::value(format!("{what} must be a number, got {other}")).at(v.span)),
        }
    };
    let action = match action {
        ast::LayerAction::Set(v) => ActivationAction::Set(number(v, "the value set")?),
        ast::LayerAction::Scale(v) => ActivationAction::Scale(number(v, "SCALE's factor")?),
        ast::LayerAction::From(d) => {
            let (donor, dinfo) = resolve_dataset(d, catalog)?;
            if dinfo.sample_shape != model.input_shape {
                return Err(Error::shape(format!(
                    "`{}` holds inputs of shape {}, but `{model_name}` takes {}",
                    donor.name,
                    crate::data::fmt_shape(&dinfo.sample_shape),
                    crate::data::fmt_shape(&model.input_shape)
                ))
                .at(d.span));
            }
            let one = matches!(donor.pick, Pick::One(_)) || (donor.pick == Pick::All && dinfo.len == 1);
            if !one && !paired {
                return Err(Error::value(format!(
                    "FROM patches in the activations of one input here; `{d}` may pick several"
                ))
                .at(d.span)
                .hint(format!(
                    "pick one, e.g. {}[0]; PREDICT pairs several donors with the inputs, input by input",
                    donor.name
                )));
            }
            ActivationAction::From(donor)
        }
    };
    Ok(ActivationEdit {
        layer: l,
        index: index.len(),
        units,
        action,
    })
}

/// Checks an input edit against the dataset it edits.
fn resolve_edit(e: &ast::Edit, info: &DatasetInfo, data: &str, catalog: &dyn Catalog) -> Result<EditSpec> {
    let number = |v: &Value, what: &str| -> Result<f32> {
        match resolve_literal(v, catalog)? {
            Literal::Number(n) if n.is_finite() => Ok(n as f32),
            other => Err(Error::value(format!("{what} must be a number, got {other}")).at(v.span)),
        }
    };
    Ok(match &e.kind {
        ast::EditKind::Layer { .. } => {
            return Err(Error::query("internal: an activation edit among input edits").at(e.span));
        }
        ast::EditKind::Set { window, value } => EditSpec::Set {
            window: interpret::resolve_window(window, info, data, catalog)?,
            value: number(value, "the value set")?,
        },
        ast::EditKind::Mask { window } => EditSpec::Mask {
            window: interpret::resolve_window(window, info, data, catalog)?,
        },
        ast::EditKind::Noise { stdev, seed } => {
            let sd = number(stdev, "the noise's standard deviation")?;
            if sd < 0.0 {
                return Err(
                    Error::value(format!("the noise's standard deviation must be ≥ 0, got {sd}")).at(stdev.span),
                );
            }
            let seed = match seed {
                Some(v) => {
                    let s = resolve_int(v, catalog, "a seed")?;
                    if s < 0 {
                        return Err(Error::value(format!("a seed must be ≥ 0, got {s}")).at(v.span));
                    }
                    s as u64
                }
                None => match catalog.setting("seed") {
                    Some(ParamValue::Number(n)) => n as u64,
                    _ => 0,
                },
            };
            EditSpec::Noise { stdev: sd, seed }
        }
        ast::EditKind::Blur { sigma } => {
            if !matches!(info.modality, Modality::Image { .. }) {
                return Err(Error::value(format!("BLUR applies to images; `{data}` is not one")).at(e.span));
            }
            let s = number(sigma, "BLUR's sigma")?;
            if !(s > 0.0 && s <= 100.0) {
                return Err(Error::value(format!("BLUR's sigma must be > 0 and ≤ 100 pixels, got {s}")).at(sigma.span));
            }
            EditSpec::Blur { sigma: s }
        }
    })
}
