//! Stage 3: plans run against the session — loaded models and datasets, settings,
//! script variables and the activation cache. `Session::execute` is the one entry point
//! that the REPL, the script runner, `-c` and the Rust API all share.

mod cache;
pub(crate) mod complete;
mod derive;
mod detect;
mod edit;
mod evaluate;
mod forward;
mod influence;
mod interpret;
mod models;
mod relation;
mod relational;
mod report;
mod show;
mod tcav;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use polars::prelude::DataFrame;

pub use cache::ActivationCache;

use crate::data::{self, Dataset, Selection};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Model, Patch, PatchAction};
use crate::ops::ParamValue;
use crate::plan::{
    self, ActivationAction, ActivationEdit, Catalog, DatasetInfo, DatasetRef, Literal, ModelInfo, Node, NodeKind, Pick,
    Plan, Setting, TableInfo, TableSource, TargetSpec,
};
use crate::syntax::{self, ast::Statement};

/// Receives each statement of a script as it finishes: its result and its warnings.
pub type StatementSink<'a> = dyn FnMut(&Statement, Result<Output>, &[String]) + 'a;

/// What a statement produced.
#[derive(Debug, Clone)]
pub enum Output {
    /// A relation: the answer to a query or a SHOW.
    Table(DataFrame),
    /// A one-line confirmation (LOAD, SET, EXPORT…).
    Message(String),
    /// The text of a plan (PLAN).
    Plan(String),
}

impl Output {
    /// The DataFrame of a table output.
    pub fn frame(&self) -> Option<&DataFrame> {
        match self {
            Output::Table(df) => Some(df),
            _ => None,
        }
    }
}

/// A model as loaded into the session.
#[derive(Clone)]
pub struct LoadedModel {
    /// The model.
    pub model: Arc<Model>,
    /// Distinguishes reloads of one name in the activation cache.
    pub id: u64,
    /// Its architecture file.
    pub arch: PathBuf,
    /// The loaded model it was derived from by activation edits (itself if none).
    pub base: Arc<Model>,
    /// The names of its outputs (CLASSES).
    pub classes: Option<Arc<Vec<String>>>,
    /// CHECKPOINTS: earlier weights and their learning rates, for TracInCP.
    pub checkpoints: Vec<(Arc<Model>, f64)>,
}

/// The session's settings (`SET name = value`; SHOW SETTINGS lists them).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The method of a query without USING.
    pub method: Option<String>,
    /// Default steps of integrated gradients and its relatives.
    pub steps: Option<usize>,
    /// Default seed of stochastic methods.
    pub seed: Option<u64>,
    /// Rows in one forward pass; None sizes batches to `memory_mb`.
    pub batch_size: Option<usize>,
    /// Memory budget (MB) for batches and streamed chunks.
    pub memory_mb: usize,
    /// Budget (MB) of the activation cache and the memo; 0 turns them off.
    pub cache_mb: usize,
    /// Whether data with NaN or infinity may be loaded.
    pub allow_nonfinite: bool,
    /// Tokens per input of text models loaded from now on.
    pub max_tokens: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            method: None,
            steps: None,
            seed: None,
            batch_size: None,
            memory_mb: 512,
            cache_mb: 256,
            allow_nonfinite: false,
            max_tokens: 64,
        }
    }
}

pub(crate) struct State {
    models: BTreeMap<String, LoadedModel>,
    datasets: BTreeMap<String, Arc<Dataset>>,
    pub(crate) settings: Settings,
    variables: BTreeMap<String, Literal>,
    /// Variables set from outside a script (`--var`), which its VAR defaults do not replace.
    external_variables: std::collections::BTreeSet<String>,
    cache: ActivationCache,
    cancel: Arc<AtomicBool>,
    next_model_id: u64,
    /// Models with activation edits (`m(d WITH LAYER …)`), by base name and edits; each
    /// is a model instance of its own in the caches.
    edited: BTreeMap<String, LoadedModel>,
    /// Fitted probe heads of THROUGH LAYER, by (model id, layer, dataset content).
    probes: std::collections::HashMap<(u64, usize, u64), Arc<interpret::Probed>>,
    /// Work counters, for tests and benchmarks.
    stats: Stats,
    /// Tables kept by `LET t = (SELECT …)`.
    tables: BTreeMap<String, KeptTable>,
    /// The tables of the WITHs running now, innermost last.
    with_frames: Vec<(String, DataFrame)>,
    /// Warnings of the statement running now (the CLI prints them after its result).
    warnings: Vec<String>,
    /// (model id, dataset) pairs whose labels outside the model's outputs were reported.
    label_warned: std::collections::HashSet<(u64, usize)>,
    /// Who else hears of a long statement's progress (`ialg serve`).
    progress_observer: Option<crate::output::progress::ProgressObserver>,
    /// Whether long statements draw their progress on stderr when it is a terminal.
    terminal_progress: bool,
}

/// A table kept in the session, and the query that made it (SHOW DATA's source).
pub(super) struct KeptTable {
    frame: DataFrame,
    query: String,
}

/// What the session has computed so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Inputs an attribution method ran on (memo hits and pushed-down filters save these).
    pub attributed_inputs: usize,
    /// Interpretation results served from the memo.
    pub memo_hits: usize,
    /// Probe heads fitted for THROUGH LAYER.
    pub probes_fitted: usize,
    /// Chunks of inputs attributed and aggregated one at a time (streamed GROUP BY input).
    pub streamed_chunks: usize,
}

/// An interactive session: what has been loaded and set, and the caches.
pub struct Session {
    state: State,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// An empty session: no models, no data, default settings, empty caches.
    pub fn new() -> Session {
        let settings = Settings::default();
        Session {
            state: State {
                models: BTreeMap::new(),
                datasets: BTreeMap::new(),
                cache: ActivationCache::new(settings.cache_mb << 20),
                settings,
                variables: BTreeMap::new(),
                external_variables: Default::default(),
                cancel: Arc::new(AtomicBool::new(false)),
                next_model_id: 1,
                edited: BTreeMap::new(),
                probes: Default::default(),
                stats: Stats::default(),
                tables: BTreeMap::new(),
                with_frames: Vec::new(),
                warnings: Vec::new(),
                label_warned: Default::default(),
                progress_observer: None,
                terminal_progress: true,
            },
        }
    }

    /// Parses and runs a script, stopping at the first error.
    pub fn execute(&mut self, text: &str) -> Result<Vec<Output>> {
        let mut outputs = Vec::new();
        let mut failure = None;
        let mut warnings = Vec::new();
        self.run_script(text, false, &mut |_, result, w| {
            warnings.extend_from_slice(w);
            match result {
                Ok(out) => outputs.push(out),
                Err(e) => failure = Some(e),
            }
        })?;
        // Kept for `take_warnings`.
        self.state.warnings = warnings;
        match failure {
            Some(e) => Err(e),
            None => Ok(outputs),
        }
    }

    /// Parses a script (a syntax error anywhere stops it before anything runs), then runs
    /// its statements in order, handing each result and its warnings to `sink`. Stops at
    /// the first failed statement unless `keep_going`. Returns whether every statement
    /// succeeded.
    pub fn run_script(&mut self, text: &str, keep_going: bool, sink: &mut StatementSink) -> Result<bool> {
        let script = syntax::parse(text)?;
        let mut ok = true;
        for stmt in &script.statements {
            let result = self.execute_statement(stmt);
            let failed = result.is_err();
            let warnings = std::mem::take(&mut self.state.warnings);
            sink(stmt, result, &warnings);
            if failed {
                ok = false;
                if !keep_going {
                    break;
                }
            }
        }
        Ok(ok)
    }

    /// Parses `text` and plans each statement against what the session holds now, without
    /// running anything (a dry run: what a linter, or the fuzz target, needs). Returns the
    /// number of statements. Statements that depend on an earlier one (a LOAD, a LET)
    /// are planned against the catalog as it is, so they may fail here and not in a run.
    pub fn check(&self, text: &str) -> Result<usize> {
        let script = syntax::parse(text)?;
        for stmt in &script.statements {
            plan::plan(stmt, &self.state)?;
        }
        Ok(script.statements.len())
    }

    /// Runs one parsed statement.
    pub fn execute_statement(&mut self, stmt: &Statement) -> Result<Output> {
        self.state.cancel.store(false, std::sync::atomic::Ordering::Relaxed);
        // `m(VISUALIZE …)`: the images are rendered first, kept for this statement only.
        let mut made = Vec::new();
        let result = self
            .render_inline(stmt, &mut made)
            .and_then(|_| self.run_statement(stmt));
        for name in made {
            self.state.datasets.remove(&name);
        }
        result
    }

    fn render_inline(&mut self, stmt: &Statement, made: &mut Vec<String>) -> Result<()> {
        for v in &stmt.inline {
            let name = v.to_string();
            if made.contains(&name) {
                continue;
            }
            let spec = plan::plan_visualization(v, &self.state)?;
            self.state.visualize(&name, &spec, &name).map_err(|e| match e.span {
                None => e.at(v.span),
                Some(_) => e,
            })?;
            made.push(name);
        }
        Ok(())
    }

    fn run_statement(&mut self, stmt: &Statement) -> Result<Output> {
        let plan = plan::plan(stmt, &self.state)?;
        // A failure inside a third-party library must not end the session.
        let state = &mut self.state;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.run(plan)));
        match result {
            // A cancelled statement needs no caret: the user knows which one they stopped.
            Ok(r) => r.map_err(|e| {
                if e.span.is_none() && !matches!(e.kind, ErrorKind::Syntax | ErrorKind::Cancelled) {
                    e.at(stmt.span)
                } else {
                    e
                }
            }),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown failure".into());
                Err(Error::query(format!("internal error: {what}"))
                    .at(stmt.span)
                    .hint("the session is intact; please report this query"))
            }
        }
    }

    /// Sets a script variable from outside the script (`--var name=value`); it overrides
    /// the default a script's VAR gives.
    pub fn set_variable(&mut self, name: &str, value: &str) {
        let lit = if let Ok(n) = value.parse::<f64>() {
            Literal::Number(n)
        } else if value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false") {
            Literal::Bool(value.eq_ignore_ascii_case("true"))
        } else {
            Literal::Text(value.to_string())
        };
        self.state.variables.insert(name.to_string(), lit);
        self.state.external_variables.insert(name.to_string());
    }

    /// The picture of a query's result — its maps, drawn over the photos when the query
    /// reads photos — or None when the relation is not one that draws (no attribution, or
    /// a statement that is not a query). What EXPORT … TO 'f.png' would write.
    pub fn picture_of(&self, stmt: &Statement, df: &DataFrame) -> Option<Vec<u8>> {
        let has = |c: &str| df.column(c).is_ok();
        if !matches!(stmt.kind, syntax::ast::StatementKind::Query(_)) || !(has("attribution") || has("activation")) {
            return None;
        }
        let Ok(Plan::Query(node)) = plan::plan(stmt, &self.state) else {
            return None;
        };
        match self.state.photo_lookup(&node) {
            Some(photo_of) => crate::output::picture::render_png_over(df, &photo_of).ok(),
            None => crate::output::picture::render_png(df).ok(),
        }
    }

    /// Loads an array held in memory as dataset `name` — what `LOAD DATA` does with a
    /// .npy file, for a front end that has the array already (Python's numpy). `shape` is
    /// the array's, N first; `values` its elements in C order. `ids` (increasing) keep the
    /// input ids of rows taken from a larger dataset (a block of a distributed job), so
    /// results name inputs as the whole dataset does.
    pub fn load_array(
        &mut self,
        name: &str,
        shape: &[usize],
        values: Vec<f32>,
        labels: Option<Vec<i64>>,
        ids: Option<Vec<i64>>,
    ) -> Result<Output> {
        check_new_name(name, "dataset")?;
        if self.state.models.contains_key(name) {
            return Err(Error::name(format!(
                "`{name}` is already a model; choose another name for the dataset"
            )));
        }
        let source = format!("array {name}");
        let ds = data::from_array(
            name,
            &source,
            shape,
            values,
            labels,
            ids,
            self.state.settings.allow_nonfinite,
        )?;
        let mut msg = loaded_message(name, &ds);
        if self.state.tables.remove(name).is_some() {
            msg.push_str(&format!(" (replaced table {name})"));
        }
        self.state.datasets.insert(name.to_string(), Arc::new(ds));
        Ok(Output::Message(msg))
    }

    /// Keeps `frame` as table `name`, as `LET name = (SELECT …)` would: queries read it
    /// with `FROM name`. `source` is what SHOW DATA shows as where it came from.
    pub fn keep_table(&mut self, name: &str, frame: DataFrame, source: &str) -> Result<Output> {
        check_new_name(name, "table")?;
        if self.state.models.contains_key(name) {
            return Err(Error::name(format!(
                "`{name}` is a model; choose another name for the table"
            )));
        }
        let msg = self.state.keep_table(name.to_string(), frame, source.to_string());
        Ok(Output::Message(msg))
    }

    /// Reports of long statements' progress go to `observer` too (a front end that is not
    /// the terminal).
    pub fn set_progress_observer(&mut self, observer: crate::output::progress::ProgressObserver) {
        self.state.progress_observer = Some(observer);
    }

    /// Whether long statements draw their own progress line on stderr (when it is a
    /// terminal); a front end that draws progress itself turns it off.
    pub fn set_terminal_progress(&mut self, on: bool) {
        self.state.terminal_progress = on;
    }

    /// The HTML report of a query's result: what EXPORT REPORT … writes.
    pub fn report_of(&mut self, stmt: &Statement, df: &DataFrame) -> Result<String> {
        let syntax::ast::StatementKind::Query(query) = &stmt.kind else {
            return Err(Error::query("a report is of a query (SELECT …)").at(stmt.span));
        };
        let Plan::Query(node) = plan::plan(stmt, &self.state)? else {
            return Err(Error::query("a report is of a query (SELECT …)").at(stmt.span));
        };
        self.state.report(&node, &query.to_string(), df)
    }

    /// The warnings of the last `execute` (labels outside a model's classes, …), taken.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.state.warnings)
    }

    /// The flag a Ctrl-C handler sets to cancel the running statement.
    /// The flag that cancels the running statement (set it from a Ctrl-C handler or
    /// another thread; the statement stops between batches with a `Cancelled` error).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.state.cancel.clone()
    }

    /// A loaded model by name.
    pub fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.state.models.get(name).map(|m| m.model.clone())
    }

    /// The names of the loaded models.
    pub fn model_names(&self) -> Vec<String> {
        self.state.model_names()
    }

    /// The names of the loaded datasets.
    pub fn dataset_names(&self) -> Vec<String> {
        self.state.dataset_names()
    }

    /// The current settings.
    pub fn settings(&self) -> &Settings {
        &self.state.settings
    }

    /// Work done so far (attributed inputs, memo hits, probes fitted).
    pub fn stats(&self) -> Stats {
        self.state.stats
    }

    /// (entries, bytes, hits, misses) of the activation cache.
    pub fn cache_stats(&self) -> (usize, usize, u64, u64) {
        let c = &self.state.cache;
        (c.len(), c.bytes(), c.hits, c.misses)
    }
}

impl State {
    /// Warns (once per model and dataset) when labels fall outside the model's outputs:
    /// `correct` is then false and TARGET LABEL fails for those inputs — usually labels
    /// counted from 1, or data meant for another model.
    pub(crate) fn check_labels(&mut self, model: &str, data: &DatasetRef) {
        let (Ok(m), Ok(ds)) = (self.model(model), self.dataset(&data.name)) else {
            return;
        };
        let key = (m.id, Arc::as_ptr(&ds) as usize);
        if !ds.has_labels() || self.label_warned.contains(&key) {
            return;
        }
        self.label_warned.insert(key);
        let outputs = m.model.output_len() as i64;
        let outside: Vec<i64> = (0..ds.len())
            .filter_map(|r| ds.label(r))
            .filter(|l| *l < 0 || *l >= outputs)
            .collect();
        let (Some(low), Some(high)) = (outside.iter().min(), outside.iter().max()) else {
            return;
        };
        let range = if low == high {
            format!("{low}")
        } else {
            format!("{low} to {high}")
        };
        self.warnings.push(format!(
            "{} of the labels of `{}` ({range}) are not outputs of `{model}` (0 to {}): `correct` is false and TARGET LABEL fails for those inputs",
            outside.len(),
            data.name,
            outputs - 1
        ));
    }

    /// Progress over `total` of `unit` for the statement running now: on the terminal,
    /// and to the observer (`ialg serve`).
    fn progress(&self, label: String, total: usize, unit: &'static str) -> Option<crate::output::progress::Progress> {
        crate::output::progress::Progress::counting(
            label,
            total,
            unit,
            self.progress_observer.clone(),
            self.terminal_progress,
        )
    }

    /// The rows of a table read by name.
    fn table_frame(&self, name: &str, source: TableSource) -> Result<DataFrame> {
        let found = match source {
            TableSource::With => self.with_frames.iter().rev().find(|(n, _)| n == name).map(|(_, f)| f),
            TableSource::Session => self.tables.get(name).map(|t| &t.frame),
        };
        found
            .cloned()
            .ok_or_else(|| Error::unknown("table", name, &self.table_names(), "tables"))
    }

    fn dataset(&self, name: &str) -> Result<Arc<Dataset>> {
        self.datasets
            .get(name)
            .cloned()
            .ok_or_else(|| Error::unknown("dataset", name, &self.dataset_names(), "loaded datasets"))
    }

    fn cancel_check(&self) -> Result<()> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            Err(Error::cancelled())
        } else {
            Ok(())
        }
    }

    /// The rows a dataset reference picks.
    fn select(&self, r: &DatasetRef) -> Result<Selection> {
        let ds = self.dataset(&r.name)?;
        let rows: Vec<usize> = match r.pick {
            Pick::All => (0..ds.len()).collect(),
            Pick::One(id) => vec![
                ds.position_of(id)
                    .ok_or_else(|| Error::value(format!("`{}` has no input {id}", r.name)))?,
            ],
            Pick::Range(a, b) => (0..ds.len())
                .filter(|&i| a.is_none_or(|a| ds.id(i) >= a) && b.is_none_or(|b| ds.id(i) < b))
                .collect(),
        };
        edit::apply(Selection { dataset: ds, rows }, &r.edits, &r.to_string())
    }

    /// LOAD DATA … TEXT: tokenized by the most recently loaded text model's tokenizer.
    fn load_text(
        &mut self,
        name: &str,
        path: &std::path::Path,
        column: Option<&str>,
        label_column: Option<&str>,
    ) -> Result<Output> {
        let (model_name, codec) = self
            .models
            .iter()
            .filter_map(|(n, m)| m.model.text.clone().map(|c| (n.clone(), m.id, c)))
            .max_by_key(|(_, id, _)| *id)
            .map(|(n, _, c)| (n, c))
            .ok_or_else(|| {
                Error::data("text needs a text model's tokenizer: load one first")
                    .hint("LOAD MODEL m FROM 'a Hugging Face model directory/'")
            })?;
        let (ds, cut) = data::text::load(name, path, column, label_column, &codec)?;
        let mut msg = format!(
            "loaded data {name}: {} texts, tokenized by {model_name}, padded to the longest: {} tokens{}",
            ds.len(),
            ds.sample_len(),
            if ds.has_labels() { ", with labels" } else { "" }
        );
        if cut > 0 {
            msg.push_str(&format!(
                "; {cut} texts were cut to {} tokens (SET max_tokens before LOAD MODEL for more)",
                codec.max_tokens
            ));
        }
        self.datasets.insert(name.to_string(), Arc::new(ds));
        Ok(Output::Message(msg))
    }

    fn batch_rows(&self, model: &Model) -> usize {
        self.settings
            .batch_size
            .unwrap_or_else(|| forward::auto_batch_rows(model, self.settings.memory_mb))
    }

    /// LOAD DATA: a file of arrays or a table, texts, or photos.
    fn load_data(
        &mut self,
        name: String,
        path: std::path::PathBuf,
        labels: Option<std::path::PathBuf>,
        label_column: Option<String>,
        text: Option<Option<String>>,
        images: Option<crate::syntax::ast::Images>,
    ) -> Result<Output> {
        if self.models.contains_key(&name) {
            return Err(Error::name(format!(
                "`{name}` is already a model; choose another name for the dataset"
            )));
        }
        if let Some(column) = text {
            return self.load_text(&name, &path, column.as_deref(), label_column.as_deref());
        }
        if let Some(spec) = &images {
            if labels.is_some() || label_column.is_some() {
                return Err(Error::data(
                    "photos take their labels from their class folders (ImageFolder), not LABELS",
                ));
            }
            let ds = data::photos::load(&name, &path, spec)?;
            let msg = format!(
                "loaded data {name}: {} photos of shape {}{}",
                ds.len(),
                crate::data::fmt_shape(&ds.sample_shape),
                match ds.classes.as_ref().map_or(0, |c| c.len()) {
                    0 => String::new(),
                    k => format!(", {k} classes (labels from the class folders)"),
                }
            );
            self.datasets.insert(name, Arc::new(ds));
            return Ok(Output::Message(msg));
        }
        let ds = data::load(
            &name,
            &path,
            labels.as_deref(),
            label_column.as_deref(),
            self.settings.allow_nonfinite,
        )?;
        let msg = loaded_message(name.as_ref(), &ds);
        self.datasets.insert(name, Arc::new(ds));
        Ok(Output::Message(msg))
    }

    /// Keeps `frame` as table `name` (LET, or a front end's table); says what it did.
    fn keep_table(&mut self, name: String, frame: DataFrame, query: String) -> String {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let mut msg = format!(
            "kept table {name}: {} × {}",
            plural(frame.height(), "row"),
            plural(frame.width(), "column")
        );
        if self.tables.contains_key(&name) {
            msg = msg.replacen("kept table", "replaced table", 1);
        } else if self.datasets.remove(&name).is_some() {
            // One namespace: a table takes the name from a dataset.
            msg.push_str(&format!(" (replaced data {name})"));
        }
        self.tables.insert(name, KeptTable { frame, query });
        msg
    }

    fn run(&mut self, plan: Plan) -> Result<Output> {
        // Datasets and kept tables share one namespace: a new dataset takes the name.
        let dataset = match &plan {
            Plan::LoadData { name, .. }
            | Plan::Let { name, .. }
            | Plan::LetAttack { name, .. }
            | Plan::LetVisualize { name, .. } => Some(name.clone()),
            _ => None,
        };
        let mut out = self.run_plan(plan)?;
        if let Some(name) = dataset
            && self.datasets.contains_key(&name)
            && self.tables.remove(&name).is_some()
            && let Output::Message(m) = &mut out
        {
            m.push_str(&format!(" (replaced table {name})"));
        }
        Ok(out)
    }

    fn run_plan(&mut self, plan: Plan) -> Result<Output> {
        match plan {
            Plan::LoadModel {
                name,
                weights,
                arch,
                head,
                classes,
                checkpoints,
            } => {
                let mut model = match &arch {
                    Some(arch) => Model::load(&weights, arch)?,
                    None if weights.is_dir() => crate::model::bert::load(&weights, self.settings.max_tokens)?,
                    None => crate::model::onnx::load(&weights, self.settings.max_tokens)?,
                };
                if let Some(head) = &head {
                    model = model.with_head_file(head)?;
                }
                if arch.is_none() && weights.is_dir() {
                    // The encoder is built again (with its head) for the length of the
                    // texts it meets: data are padded only to their longest text.
                    let (dir, head) = (weights.clone(), head.clone());
                    model.lengths = Some(Arc::new(crate::model::Lengths::new(move |length| {
                        let m = crate::model::bert::load(&dir, length)?;
                        match &head {
                            Some(h) => m.with_head_file(h),
                            None => Ok(m),
                        }
                    })));
                }
                // An ONNX file is its own architecture.
                let arch = arch.unwrap_or_else(|| weights.clone());
                if self.datasets.contains_key(&name) {
                    return Err(Error::name(format!(
                        "`{name}` is already a dataset; choose another name for the model"
                    )));
                }
                let untranslated: Vec<&crate::model::Layer> = model
                    .layers
                    .iter()
                    .filter(|l| matches!(l.op, crate::model::Op::Unsupported { .. }))
                    .collect();
                let mut msg = format!(
                    "loaded model {name}: {} layers, {} parameters, input {}, {} outputs",
                    model.layers.len(),
                    model.param_count(),
                    crate::data::fmt_shape(&model.input_shape),
                    model.output_len()
                );
                if let Some(graph) = &model.dynamic {
                    // An example binding: every symbolic axis at 224.
                    let example: Vec<String> = graph.dims.iter().map(|d| d.size.unwrap_or(224).to_string()).collect();
                    msg = format!(
                        "loaded model {name}: {} nodes, input {} (symbolic axes: shapes are bound by the data it runs on; SHOW LAYERS OF \"{name}[{}]\" shows a binding)",
                        model.layers.len(),
                        model.input_text(),
                        example.join("×")
                    );
                } else if let Some(crate::model::Op::Unsupported { reason }) = untranslated.first().map(|l| &l.op) {
                    // Loaded so that SHOW LAYERS can show it, but nothing can run.
                    msg = format!(
                        "loaded model {name} ({} layers), but {} of them cannot run: {reason}; SHOW LAYERS OF {name} lists them",
                        model.layers.len(),
                        untranslated.len()
                    );
                }
                let classes = match &classes {
                    Some(path) => {
                        let names = data::read_class_names(path)?;
                        // A model bound to its data's shape is checked when it is bound.
                        if model.dynamic.is_none() && names.len() != model.output_len() {
                            return Err(Error::shape(format!(
                                "{} names {} classes but `{name}` has {} outputs",
                                path.display(),
                                names.len(),
                                model.output_len()
                            )));
                        }
                        msg.push_str(&format!(", classes from {}", path.display()));
                        Some(Arc::new(names))
                    }
                    None => None,
                };
                // Checkpoints load as the model does (the same ARCH) and must match it.
                let mut kept = Vec::with_capacity(checkpoints.len());
                for (path, rate) in &checkpoints {
                    let mut cp = if arch == weights {
                        crate::model::onnx::load(path, self.settings.max_tokens)?
                    } else {
                        Model::load(path, &arch)?
                    };
                    if let Some(h) = &head {
                        cp = cp.with_head_file(h)?;
                    }
                    if cp.layers.len() != model.layers.len() || cp.param_count() != model.param_count() {
                        return Err(Error::shape(format!(
                            "checkpoint {} has {} layers and {} parameters; `{name}` has {} and {}",
                            path.display(),
                            cp.layers.len(),
                            cp.param_count(),
                            model.layers.len(),
                            model.param_count()
                        )));
                    }
                    kept.push((Arc::new(cp), *rate));
                }
                if !kept.is_empty() {
                    msg.push_str(&format!(", {} checkpoints for TracInCP", kept.len()));
                }
                let id = self.next_model_id;
                self.next_model_id += 1;
                let model = Arc::new(model);
                if let Some(old) = self.models.insert(
                    name,
                    LoadedModel {
                        base: model.clone(),
                        model,
                        id,
                        arch,
                        checkpoints: kept,
                        classes,
                    },
                ) {
                    self.cache.forget_model(old.id);
                    self.probes.retain(|k, _| k.0 != old.id);
                    // Say so: the earlier model under this name is gone.
                    msg = msg.replacen("loaded model", "replaced model", 1);
                }
                Ok(Output::Message(msg))
            }
            Plan::LoadData {
                name,
                path,
                labels,
                label_column,
                text,
                images,
                classes,
                shape,
            } => {
                // Read before loading: a bad names file loads nothing.
                let names = classes.as_deref().map(data::read_class_names).transpose()?;
                let previous = self.datasets.get(&name).cloned();
                let mut out = self.load_data(name.clone(), path, labels, label_column, text, images)?;
                if let Some(shape) = shape {
                    let loaded = self.datasets.get_mut(&name).and_then(Arc::get_mut);
                    let reshaped = match loaded {
                        Some(ds) => {
                            let file = crate::data::fmt_shape(&ds.sample_shape);
                            ds.reshape(shape)
                                .map(|_| (file, crate::data::fmt_shape(&ds.sample_shape)))
                        }
                        None => Err(Error::data("internal: the loaded dataset is shared")),
                    };
                    match reshaped {
                        Ok((file, now)) => {
                            if let Output::Message(m) = &mut out {
                                *m = m.replacen(
                                    &format!("of shape {file}"),
                                    &format!("of shape {now} (SHAPE; the file's {file})"),
                                    1,
                                );
                            }
                        }
                        Err(e) => {
                            // Nothing half-loaded: the dataset of that name is what it was.
                            match previous {
                                Some(p) => self.datasets.insert(name.clone(), p),
                                None => self.datasets.remove(&name),
                            };
                            return Err(e);
                        }
                    }
                }
                if let (Some(_), Output::Message(m)) = (&previous, &mut out) {
                    // Say so: the earlier data under this name are gone.
                    *m = m.replacen("loaded data", "replaced data", 1);
                }
                let (Some(names), Some(ds)) = (names, self.datasets.get_mut(&name)) else {
                    return Ok(out);
                };
                if let Some(top) = (0..ds.len()).filter_map(|r| ds.label(r)).max()
                    && top as usize >= names.len()
                {
                    // Nothing half-loaded: the dataset of that name is what it was.
                    match previous {
                        Some(p) => self.datasets.insert(name.clone(), p),
                        None => self.datasets.remove(&name),
                    };
                    return Err(Error::data(format!(
                        "`{name}` has label {top} but its CLASSES name only {} classes",
                        names.len()
                    )));
                }
                Arc::make_mut(ds).classes = Some(Arc::new(names));
                Ok(out)
            }
            Plan::Let { name, dataset } => {
                let sel = self.select(&dataset)?;
                let derived = Arc::new(sel.dataset.subset(&name, &dataset.to_string(), &sel.rows)?);
                let msg = format!("{name} = {dataset}: {} inputs", derived.len());
                self.datasets.insert(name, derived);
                Ok(Output::Message(msg))
            }
            Plan::LetTable { name, query, text } => {
                let frame = relational::run(&query, self)?;
                Ok(Output::Message(self.keep_table(name, frame, text)))
            }
            Plan::LetAttack { name, attack, text } => {
                let msg = self.attack(&name, &attack, &text)?;
                Ok(Output::Message(msg))
            }
            Plan::ExportData {
                dataset,
                path,
                png,
                overwrite,
            } => {
                let sel = self.select(&dataset)?;
                let shape = sel.dataset.sample_shape.clone();
                let values = sel.values()?;
                let bytes = if png {
                    let (c, h, w) = match shape.as_slice() {
                        [c, h, w] => (*c, *h, *w),
                        _ => return Err(Error::value(format!("`{}` is not images", dataset.name))),
                    };
                    let d = c * h * w;
                    // Normalised photos are drawn as the photos they stand for.
                    let values: Vec<f32> = match &sel.dataset.photos {
                        Some(p) => values.chunks(d).flat_map(|row| p.denormalize(row)).collect(),
                        None => values,
                    };
                    let panels: Vec<(String, &[f32])> = sel
                        .ids()
                        .iter()
                        .enumerate()
                        .map(|(i, id)| (format!("{} · input {id}", dataset.name), &values[i * d..(i + 1) * d]))
                        .collect();
                    crate::output::picture::inputs_png(&panels, (c, h, w))?
                } else {
                    let mut full = vec![sel.len()];
                    full.extend_from_slice(&shape);
                    data::npy::write_npy_f32(&full, &values)
                };
                crate::output::write_atomically(&path, overwrite, &mut |out| {
                    out.write_all(&bytes)
                        .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))
                })?;
                let what = if png { "drew" } else { "wrote" };
                Ok(Output::Message(format!(
                    "{what} {} inputs of {} in {}",
                    sel.len(),
                    dataset.name,
                    path.display()
                )))
            }
            Plan::LetVisualize { name, visualize, text } => {
                let msg = self.visualize(&name, &visualize, &text)?;
                Ok(Output::Message(msg))
            }
            Plan::Set { name, value } => {
                let s = &mut self.settings;
                match value {
                    Setting::Method(m) => s.method = Some(m),
                    Setting::Steps(v) => s.steps = Some(v),
                    Setting::Seed(v) => s.seed = Some(v),
                    Setting::BatchSize(v) => s.batch_size = v,
                    Setting::MemoryMb(v) => s.memory_mb = v,
                    Setting::CacheMb(v) => {
                        s.cache_mb = v;
                        self.cache.set_budget(v << 20);
                    }
                    Setting::AllowNonfinite(v) => s.allow_nonfinite = v,
                    Setting::MaxTokens(v) => s.max_tokens = v,
                }
                Ok(Output::Message(format!(
                    "{name} = {}",
                    show::setting_value(&self.settings, &name)
                )))
            }
            Plan::Var { name, value } => {
                // A value given from outside the script (--var) wins over its default.
                if self.external_variables.contains(&name)
                    && let Some(given) = self.variables.get(&name)
                {
                    return Ok(Output::Message(format!(":{name} = {given} (given with --var)")));
                }
                let msg = format!(":{name} = {value}");
                self.variables.insert(name, value);
                Ok(Output::Message(msg))
            }
            Plan::ShowModels => show::models(self),
            Plan::ShowData => show::datasets(self),
            Plan::ShowMethods => show::methods(),
            Plan::ShowLayers { model } => show::layers(self, &model),
            Plan::ShowCache => show::cache(self),
            Plan::ShowSettings => show::settings(self),
            Plan::Query(node) => Ok(Output::Table(relational::run(&node, self)?)),
            Plan::Explain(node) => {
                // The tree, then what the caches will serve for each interpretation.
                let mut text = node.to_string();
                let mut bound = node.clone();
                self.bind_edited_models(&mut bound, true)?;
                let attributions = bound.attributions();
                if !attributions.is_empty() {
                    text.push_str("cache:\n");
                    for a in attributions {
                        let status = interpret::cache_status(self, a)?;
                        text.push_str(&format!(
                            "  {}({}) USING {}: {status}\n",
                            a.model,
                            a.data,
                            a.method.name()
                        ));
                        if let Some(how) = interpret::perturbation_strategy(self, a)? {
                            text.push_str(&format!("    copies: {how}\n"));
                        }
                    }
                }
                Ok(Output::Plan(text))
            }
            Plan::Export {
                query,
                text,
                path,
                format,
                overwrite,
            } => {
                let mut df = relational::run(&query, self)?;
                // A report, and pictures drawn over photos, are rendered here (they need
                // the session); the tables and plain pictures by the output stage.
                let rendered = match format {
                    crate::output::export::ExportFormat::Report => Some((
                        self.report(&query, &text, &df)?.into_bytes(),
                        format!("wrote a report of {} rows to {}", df.height(), path.display()),
                    )),
                    crate::output::export::ExportFormat::Png => match self.photo_lookup(&query) {
                        Some(photo_of) => Some((
                            crate::output::picture::render_png_over(&df, &photo_of)?,
                            format!("drew {} rows over their photos in {}", df.height(), path.display()),
                        )),
                        None => None,
                    },
                    _ => None,
                };
                if let Some((bytes, message)) = rendered {
                    crate::output::write_atomically(&path, overwrite, &mut |out| {
                        out.write_all(&bytes)
                            .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))
                    })?;
                    return Ok(Output::Message(message));
                }
                crate::output::write_frame(&mut df, &path, format, overwrite)?;
                Ok(Output::Message(format!(
                    "exported {} rows × {} columns to {}",
                    df.height(),
                    df.width(),
                    path.display()
                )))
            }
        }
    }
}

/// What the planner needs to know of a model.
fn model_info(loaded: &LoadedModel) -> ModelInfo {
    let m = &loaded.model;
    ModelInfo {
        classes: loaded.classes.clone(),
        input_shape: m.input_shape.clone(),
        output_len: m.output_len(),
        layers: m.layer_names(),
        layer_shapes: m.layers.iter().map(|l| l.out_shape.clone()).collect(),
        aliases: m.aliases.iter().map(|(a, i)| (a.clone(), *i)).collect(),
        sequence_input: m.is_sequence(),
        volume_input: m.is_volume(),
        dynamic: m.dynamic.is_some(),
        text_length: m.lengths.as_ref().map(|_| m.input_len()),
    }
}

impl Catalog for State {
    fn model(&self, name: &str) -> Option<ModelInfo> {
        // A binding's name (`m[3×64×64]`) names the bound model (SHOW LAYERS OF it).
        self.models
            .get(name)
            .map(model_info)
            .or_else(|| self.bound_model(name).ok().flatten().map(|m| model_info(&m)))
    }
    fn bind_model(&self, name: &str, sample_shape: &[usize]) -> Result<(String, ModelInfo)> {
        let dims: Vec<String> = sample_shape.iter().map(|d| d.to_string()).collect();
        let bound = format!("{name}[{}]", dims.join("×"));
        let m = self
            .bound_model(&bound)?
            .ok_or_else(|| Error::model(format!("internal: `{name}` has no symbolic input axes")))?;
        Ok((bound, model_info(&m)))
    }
    fn model_names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }
    fn dataset(&self, name: &str) -> Option<DatasetInfo> {
        self.datasets.get(name).map(|d| DatasetInfo {
            classes: d.classes.clone(),
            len: d.len(),
            sample_shape: d.sample_shape.clone(),
            modality: d.modality.clone(),
            has_labels: d.has_labels(),
            id_range: d.id_range().unwrap_or((0, -1)),
        })
    }
    fn dataset_names(&self) -> Vec<String> {
        self.datasets.keys().cloned().collect()
    }
    fn setting(&self, name: &str) -> Option<ParamValue> {
        let s = &self.settings;
        match name {
            "method" => s.method.clone().map(ParamValue::Text),
            "steps" => s.steps.map(|v| ParamValue::Number(v as f64)),
            "seed" => s.seed.map(|v| ParamValue::Number(v as f64)),
            _ => None,
        }
    }
    fn variable(&self, name: &str) -> Option<Literal> {
        self.variables.get(name).cloned()
    }
    fn table(&self, name: &str) -> Option<TableInfo> {
        let columns = |f: &DataFrame| f.get_column_names().iter().map(|c| c.to_string()).collect();
        match self.with_frames.iter().rev().find(|(n, _)| n == name) {
            Some((_, f)) => Some(TableInfo {
                columns: columns(f),
                source: TableSource::With,
            }),
            None => self.tables.get(name).map(|t| TableInfo {
                columns: columns(&t.frame),
                source: TableSource::Session,
            }),
        }
    }
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.with_frames.iter().rev().map(|(n, _)| n.clone()).collect();
        for n in self.tables.keys() {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }
    fn variable_names(&self) -> Vec<String> {
        self.variables.keys().cloned().collect()
    }
}

/// What LOAD DATA says of an array or a file it loaded.
fn loaded_message(name: &str, ds: &Dataset) -> String {
    format!(
        "loaded data {name}: {} inputs of shape {}{}",
        ds.len(),
        crate::data::fmt_shape(&ds.sample_shape),
        if ds.has_labels() { ", with labels" } else { "" }
    )
}

/// A name given from outside a script must be one a query can name: an identifier.
fn check_new_name(name: &str, what: &str) -> Result<()> {
    if syntax::ast::is_identifier(name) {
        Ok(())
    } else {
        Err(Error::name(format!("`{name}` cannot name a {what}"))
            .hint("use letters, digits and _, starting with a letter or _"))
    }
}
