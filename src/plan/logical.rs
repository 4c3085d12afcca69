//! The logical plan: what a statement will do, with every name resolved and every
//! parameter checked. `Display` prints it for `PLAN`.

use std::fmt;
use std::path::PathBuf;

use crate::data::Modality;
use crate::ops::{Method, Rect};
pub use crate::output::export::ExportFormat;
use crate::syntax::ast::{Expr, JoinKind, SetOp};

#[derive(Clone, Debug)]
pub enum Plan {
    LoadModel {
        name: String,
        weights: PathBuf,
        arch: Option<PathBuf>,
        head: Option<PathBuf>,
        classes: Option<PathBuf>,
        /// Earlier weights of the same architecture and their learning rates (TracInCP).
        checkpoints: Vec<(PathBuf, f64)>,
    },
    LoadData {
        name: String,
        path: PathBuf,
        labels: Option<PathBuf>,
        label_column: Option<String>,
        /// Texts for a text model: Some(column) (None: one per line).
        text: Option<Option<String>>,
        /// Photos (the path a folder, a file or a glob) and their preprocessing.
        images: Option<crate::syntax::ast::Images>,
        classes: Option<PathBuf>,
        /// SHAPE: each input's shape, in place of the file's.
        shape: Option<Vec<usize>>,
    },
    ShowModels,
    ShowData,
    ShowMethods,
    ShowLayers {
        model: String,
    },
    ShowCache,
    ShowSettings,
    Set {
        name: String,
        value: Setting,
    },
    Var {
        name: String,
        value: Literal,
    },
    Let {
        name: String,
        dataset: DatasetRef,
    },
    /// A dataset derived by an adversarial attack; it keeps the input ids and labels of
    /// the inputs it came from.
    LetAttack {
        name: String,
        attack: AttackSpec,
        /// The statement as written (the derived dataset's source).
        text: String,
    },
    /// Images made by feature visualization (`VISUALIZE …`), ids 0.., no labels.
    LetVisualize {
        name: String,
        visualize: VisualizeSpec,
        text: String,
    },
    Query(Node),
    /// `LET name = (SELECT …)`: the result kept in the session as a table.
    LetTable {
        name: String,
        query: Node,
        /// The query as canonical IQL (SHOW DATA's source).
        text: String,
    },
    /// A dataset's inputs as a picture (`png`: true) or an .npy array.
    ExportData {
        dataset: DatasetRef,
        path: PathBuf,
        png: bool,
        overwrite: bool,
    },
    Export {
        query: Node,
        /// The query as canonical IQL (for a report).
        text: String,
        path: PathBuf,
        format: ExportFormat,
        overwrite: bool,
    },
    Explain(Node),
}

/// A checked `VISUALIZE m …`: the optimisation, and a file of starting parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct VisualizeSpec {
    pub model: String,
    pub visualization: crate::ops::visualize::Visualization,
    pub init: Option<PathBuf>,
}

/// A checked `ATTACK … ON m(d) [TARGET k]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttackSpec {
    pub attack: crate::ops::attack::Attack,
    pub model: String,
    pub data: DatasetRef,
    /// The class to reach (targeted), or None: away from each input's label.
    pub target: Option<usize>,
    /// Clamp bounds given (`lower`, `upper`); the data's range where not.
    pub bounds: (Option<f32>, Option<f32>),
}

/// A resolved literal (no script variables left): the same values a method parameter
/// takes, so one type serves both.
pub type Literal = crate::ops::ParamValue;

/// A checked session setting.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Method(String),
    Steps(usize),
    BatchSize(Option<usize>),
    Seed(u64),
    CacheMb(usize),
    MaxTokens(usize),
    MemoryMb(usize),
    AllowNonfinite(bool),
}

/// Rows of a loaded dataset picked by input id, with input edits applied in order.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetRef {
    pub name: String,
    pub pick: Pick,
    pub edits: Vec<EditSpec>,
}

/// A checked input edit (`WITH …`).
#[derive(Clone, Debug, PartialEq)]
pub enum EditSpec {
    /// The window's features set to a value.
    Set { window: WindowSpec, value: f32 },
    /// The window's features set to zero.
    Mask { window: WindowSpec },
    /// Gaussian noise added to every feature, seeded by (seed, input id).
    Noise { stdev: f32, seed: u64 },
    /// Gaussian blur of each image plane (σ in pixels).
    Blur { sigma: f32 },
    /// An activation edit: applied in the model's run, not to the inputs.
    Layer(ActivationEdit),
}

/// `WITH LAYER l[i, …] = v | SCALE s | FROM d`, checked against the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationEdit {
    pub layer: LayerRef,
    /// How many leading axes the index fixed (for display).
    pub index: usize,
    /// The flat units of one sample's output that change (the fixed axes make them
    /// one contiguous block).
    pub units: std::ops::Range<usize>,
    pub action: ActivationAction,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ActivationAction {
    Set(f32),
    Scale(f32),
    /// The donor input's activations at the layer (one input).
    From(DatasetRef),
}

impl fmt::Display for ActivationEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layer {}", self.layer.name)?;
        if self.index > 0 {
            // The fixed leading coordinates, recovered from the block's start.
            let block: usize = self.layer.shape[self.index..].iter().product();
            let mut flat = self.units.start / block.max(1);
            let mut coords = vec![0; self.index];
            for k in (0..self.index).rev() {
                coords[k] = flat % self.layer.shape[k];
                flat /= self.layer.shape[k];
            }
            let c: Vec<String> = coords.iter().map(|c| c.to_string()).collect();
            write!(f, "[{}]", c.join(", "))?;
        }
        match &self.action {
            ActivationAction::Set(v) => write!(f, " = {v}"),
            ActivationAction::Scale(s) => write!(f, " × {s}"),
            ActivationAction::From(d) => write!(f, " from {d}"),
        }
    }
}

impl DatasetRef {
    /// The activation edits among the edits.
    pub fn activation_edits(&self) -> Vec<&ActivationEdit> {
        self.edits
            .iter()
            .filter_map(|e| match e {
                EditSpec::Layer(a) => Some(a),
                _ => None,
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pick {
    All,
    One(i64),
    /// Input ids in [start, end); None = open.
    Range(Option<i64>, Option<i64>),
}

impl fmt::Display for DatasetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pick {
            Pick::All => write!(f, "{}", self.name),
            Pick::One(i) => write!(f, "{}[{i}]", self.name),
            Pick::Range(a, b) => {
                let a = a.map(|v| v.to_string()).unwrap_or_default();
                let b = b.map(|v| v.to_string()).unwrap_or_default();
                write!(f, "{}[{a}:{b}]", self.name)
            }
        }?;
        for e in &self.edits {
            match e {
                EditSpec::Set { window, value } => write!(f, " with {} = {value}", window_text(window))?,
                EditSpec::Mask { window } => write!(f, " with {} masked", window_text(window))?,
                EditSpec::Noise { stdev, seed } => write!(f, " with noise({stdev}, seed {seed})")?,
                EditSpec::Blur { sigma } => write!(f, " with blur({sigma})")?,
                EditSpec::Layer(a) => write!(f, " with {a}")?,
            }
        }
        Ok(())
    }
}

/// A window as PLAN shows it.
pub fn window_text(w: &WindowSpec) -> String {
    match w {
        WindowSpec::All => "all features".to_string(),
        WindowSpec::Rect(r) => format!(
            "channels {}:{}, rows {}:{}, cols {}:{}",
            r.channels.0, r.channels.1, r.rows.0, r.rows.1, r.cols.0, r.cols.1
        ),
        WindowSpec::Columns(c) => format!("{} columns", c.len()),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum TargetSpec {
    Predicted,
    /// The prediction of another model (the right side of a two-model ANTIJOIN explains
    /// the left model's predicted class).
    PredictedBy(String),
    Label,
    Class(usize),
    /// A unit of a layer (`TARGET l[i]`): its flat index in the layer's output.
    Unit(LayerRef, usize),
    /// The cosine similarity of the output with that of one reference input.
    Similarity(DatasetRef),
}

/// A resolved hook point.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRef {
    pub name: String,
    pub index: usize,
    /// Its output shape (one sample).
    pub shape: Vec<usize>,
}

/// Selection through a layer (THROUGH LAYER): the model cut after each layer, with a
/// fitted linear probe head.
#[derive(Clone, Debug, PartialEq)]
pub enum ThroughSpec {
    Layer(LayerRef),
    All(Vec<LayerRef>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum BaselineSpec {
    Zero,
    /// The mean input of a whole loaded dataset.
    Mean(String),
    Constant(f32),
    /// One input (broadcast) or one per explained input.
    Data(DatasetRef),
    /// Text: every token but the special ones replaced by [MASK] (`mask`) or [PAD].
    Tokens {
        mask: bool,
    },
}

/// Which features are attributed (projection).
#[derive(Clone, Debug, PartialEq)]
pub enum WindowSpec {
    All,
    Rect(Rect),
    /// Tabular feature indices, in the order given.
    Columns(Vec<usize>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GranularitySpec {
    /// One row per feature.
    Feature,
    /// Spatial positions, all channels together.
    Pixel,
    /// k×k spatial patches (all channels), aligned to the window's corner.
    Patch(usize),
    /// One row per tabular column (the same as Feature for tabular data).
    Column,
    /// One row per word of a text input (its tokens summed).
    Word,
}

#[derive(Clone, Debug)]
pub struct Attribution {
    pub model: String,
    pub data: DatasetRef,
    pub method: Method,
    pub target: TargetSpec,
    pub baseline: BaselineSpec,
    pub window: WindowSpec,
    pub granularity: GranularitySpec,
    pub modality: Modality,
    /// AT LAYER: layer methods attribute to its units; guided_gradcam takes its map.
    pub layer: Option<LayerRef>,
    /// AT LAYER *: the layer method runs at each of these layers (`layer` is the first)
    /// and the relations are stacked.
    pub all_layers: Vec<LayerRef>,
    pub through: Option<ThroughSpec>,
    /// Two-model ANTIJOIN: explain this model's target output minus this one's.
    pub contrast: Option<String>,
    /// One-model ANTIJOIN: the baseline is the other side's inputs.
    pub against_other_side: bool,
    /// Per-input predicates pushed below the method (optimizer rule
    /// `push_input_predicates`): the method runs only on the inputs that pass.
    pub input_filter: Option<Expr>,
    /// A LIMIT above that needs only the first inputs (optimizer rule `push_input_limit`).
    pub input_limit: Option<InputLimit>,
    /// Set by the executor when it streams a dataset: only these input ids, already
    /// chosen by `input_filter` and `input_limit`.
    pub chunk: Option<Vec<i64>>,
    /// The class names (the model's, else the data's): a `class` column names the target.
    pub classes: Option<std::sync::Arc<Vec<String>>>,
    /// EVALUATE: instead of the map, a row per input and metric judging it.
    pub metrics: Vec<crate::ops::metrics::Asked>,
}

/// How many inputs (after `input_filter`) a LIMIT above an attribution can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputLimit {
    /// The LIMIT counts rows of the relation: the first ⌈rows / rows per input⌉ inputs.
    Rows(usize),
    /// The LIMIT counts groups of a GROUP BY input: the first `n` inputs.
    Inputs(usize),
}

impl Attribution {
    /// Whether the relation has a row per unit of a layer rather than per input feature.
    pub fn is_layer_relation(&self) -> bool {
        self.layer.is_some() && self.method.attributes_layer()
    }
}

/// The columns of an attribution relation that describe one input (the same on all of
/// its rows): a predicate on these alone can run before the method.
pub const INPUT_COLUMNS: &[&str] = &["input", "label", "prediction", "target"];

#[derive(Clone, Debug)]
pub struct Prediction {
    pub model: String,
    pub data: DatasetRef,
    /// TOP k: the k most probable classes and their probabilities (0: none).
    pub top: usize,
    /// The class names (the model's, else the data's): a `class` column names the
    /// prediction.
    pub classes: Option<std::sync::Arc<Vec<String>>>,
}

/// Training-data attribution (`INFLUENCE OF m(train) ON m(test)`): TracIn on the
/// loaded weights.
#[derive(Clone, Debug)]
pub struct Influence {
    pub model: String,
    pub train: DatasetRef,
    pub test: DatasetRef,
    pub layers: InfluenceLayers,
    /// The cosine of the two gradients instead of their dot product.
    pub normalize: bool,
    /// The class whose loss the test input's gradient is of: its prediction (default), a
    /// class, or its label.
    pub target: TargetSpec,
    /// `ON m(train)` with the training set itself: each sample's influence on itself.
    pub self_influence: bool,
}

/// The layers whose weights and biases TracIn's gradients are taken over.
#[derive(Clone, Debug, PartialEq)]
pub enum InfluenceLayers {
    /// The last linear layer.
    Last,
    /// Every linear and convolution layer.
    All,
    Named(Vec<LayerRef>),
}

/// A poisoned-data detector (`m(d) USING spectral_signature AT LAYER l`): a score per
/// input from its representation at the layer, class by class.
#[derive(Clone, Debug)]
pub struct Detection {
    pub model: String,
    pub data: DatasetRef,
    pub layer: LayerRef,
    pub detector: crate::ops::detect::Detector,
}

/// The columns of a detector's relation.
pub fn detection_columns(d: &crate::ops::detect::Detector) -> Vec<String> {
    let mut cols = vec!["input", "label", "prediction", "class", "layer", "score"];
    if matches!(d, crate::ops::detect::Detector::ActivationClustering { .. }) {
        cols.extend(["cluster", "cluster_share", "suspicious"]);
    }
    cols.into_iter().map(String::from).collect()
}

/// TCAV (Kim et al. 2018, as Captum's `TCAV`): concepts' activation vectors at a layer
/// against random sets of the explained data.
#[derive(Clone, Debug)]
pub struct TcavSpec {
    pub model: String,
    pub data: DatasetRef,
    pub layer: LayerRef,
    pub concepts: Vec<String>,
    /// How many random sets (and so CAVs per concept, and random-vs-random CAVs).
    pub random: usize,
    pub target: TargetSpec,
    pub seed: u64,
}

pub const TCAV_COLUMNS: &[&str] = &["concept", "layer", "target", "tcav_score", "random_score", "p_value"];

/// The influence relation: a row per training sample and test input.
pub const INFLUENCE_COLUMNS: &[&str] = &["input", "label", "test_input", "influence"];

/// Where a table read by name comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableSource {
    /// A `WITH name AS (…)` of the query around it.
    With,
    /// A table kept in the session by `LET name = (SELECT …)`.
    Session,
}

/// A relational operator and the columns it produces.
#[derive(Clone, Debug)]
pub struct Node {
    pub kind: NodeKind,
    pub columns: Vec<String>,
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    Attribute(Box<Attribution>),
    Predict(Prediction),
    Influence(Box<Influence>),
    Detect(Box<Detection>),
    Tcav(Box<TcavSpec>),
    Filter {
        input: Box<Node>,
        predicate: Expr,
    },
    /// Group by `keys` (each named), computing the named aggregate calls.
    Aggregate {
        input: Box<Node>,
        keys: Vec<(String, Expr)>,
        aggregates: Vec<(String, Expr)>,
    },
    /// Named output expressions.
    Project {
        input: Box<Node>,
        exprs: Vec<(String, Expr)>,
    },
    Sort {
        input: Box<Node>,
        keys: Vec<(Expr, bool)>,
    },
    Limit {
        input: Box<Node>,
        count: usize,
        offset: usize,
    },
    Distinct {
        input: Box<Node>,
    },
    SetOp {
        op: SetOp,
        left: Box<Node>,
        right: Box<Node>,
    },
    /// `WITH name AS (…), … body`: each named result computed once, in order, then the
    /// body, which reads them (and so may each later one) as `Table`s.
    With {
        tables: Vec<(String, Node)>,
        body: Box<Node>,
    },
    /// The rows of a named table.
    Table {
        name: String,
        source: TableSource,
    },
    /// Two tables joined on equal columns (an inner join): the left's rows in order, each
    /// followed by its matches on the right in their order. `left_out` / `right_out` name
    /// each kept column of a side in the result; `on` pairs the sides' key columns.
    TableJoin {
        left: Box<Node>,
        right: Box<Node>,
        on: Vec<(String, String)>,
        left_out: Vec<(String, String)>,
        right_out: Vec<(String, String)>,
        /// How the condition was written, for PLAN.
        condition: String,
    },
    /// JOIN / ANTIJOIN of two interpretations on their shared key columns; the sides'
    /// other columns are qualified by `names`.
    Join {
        kind: JoinKind,
        left: Box<Node>,
        right: Box<Node>,
        names: [String; 2],
        keys: Vec<String>,
    },
}

impl Node {
    pub fn new(kind: NodeKind, columns: Vec<String>) -> Node {
        Node { kind, columns }
    }

    /// Every expression of this operator and those below it (pushed-down input filters
    /// too) rewritten by `f` — down to a WITH, whose parts are rewritten when it runs
    /// (their subqueries may read its names).
    pub fn try_map_exprs<E>(
        &mut self,
        f: &mut dyn FnMut(&Expr) -> std::result::Result<Expr, E>,
    ) -> std::result::Result<(), E> {
        match &mut self.kind {
            NodeKind::Attribute(a) => {
                if let Some(filter) = &a.input_filter {
                    a.input_filter = Some(f(filter)?);
                }
            }
            NodeKind::With { .. } => return Ok(()),
            NodeKind::Filter { predicate, .. } => *predicate = f(predicate)?,
            NodeKind::Aggregate { keys, aggregates, .. } => {
                for (_, e) in keys.iter_mut().chain(aggregates.iter_mut()) {
                    *e = f(e)?;
                }
            }
            NodeKind::Project { exprs, .. } => {
                for (_, e) in exprs.iter_mut() {
                    *e = f(e)?;
                }
            }
            NodeKind::Sort { keys, .. } => {
                for (e, _) in keys.iter_mut() {
                    *e = f(e)?;
                }
            }
            NodeKind::Predict(_)
            | NodeKind::Influence(_)
            | NodeKind::Detect(_)
            | NodeKind::Tcav(_)
            | NodeKind::Table { .. }
            | NodeKind::Limit { .. }
            | NodeKind::Distinct { .. }
            | NodeKind::SetOp { .. }
            | NodeKind::Join { .. }
            | NodeKind::TableJoin { .. } => {}
        }
        for input in self.inputs_mut() {
            input.try_map_exprs(f)?;
        }
        Ok(())
    }

    /// The operators this one reads from, left to right (a WITH's tables, then its body).
    pub fn inputs(&self) -> Vec<&Node> {
        match &self.kind {
            NodeKind::Attribute(_)
            | NodeKind::Predict(_)
            | NodeKind::Influence(_)
            | NodeKind::Detect(_)
            | NodeKind::Tcav(_)
            | NodeKind::Table { .. } => Vec::new(),
            NodeKind::Filter { input, .. }
            | NodeKind::Aggregate { input, .. }
            | NodeKind::Project { input, .. }
            | NodeKind::Sort { input, .. }
            | NodeKind::Limit { input, .. }
            | NodeKind::Distinct { input } => vec![input],
            NodeKind::SetOp { left, right, .. }
            | NodeKind::Join { left, right, .. }
            | NodeKind::TableJoin { left, right, .. } => vec![left, right],
            NodeKind::With { tables, body } => tables.iter().map(|(_, n)| n).chain([&**body]).collect(),
        }
    }

    /// `inputs`, to change them in place: the one walk every rewrite shares.
    pub fn inputs_mut(&mut self) -> Vec<&mut Node> {
        match &mut self.kind {
            NodeKind::Attribute(_)
            | NodeKind::Predict(_)
            | NodeKind::Influence(_)
            | NodeKind::Detect(_)
            | NodeKind::Tcav(_)
            | NodeKind::Table { .. } => Vec::new(),
            NodeKind::Filter { input, .. }
            | NodeKind::Aggregate { input, .. }
            | NodeKind::Project { input, .. }
            | NodeKind::Sort { input, .. }
            | NodeKind::Limit { input, .. }
            | NodeKind::Distinct { input } => vec![input],
            NodeKind::SetOp { left, right, .. }
            | NodeKind::Join { left, right, .. }
            | NodeKind::TableJoin { left, right, .. } => vec![left, right],
            NodeKind::With { tables, body } => tables.iter_mut().map(|(_, n)| n).chain([&mut **body]).collect(),
        }
    }

    /// The interpretations of the plan, in the order PLAN prints them.
    pub fn attributions(&self) -> Vec<&Attribution> {
        match &self.kind {
            NodeKind::Attribute(a) => vec![a],
            _ => self.inputs().into_iter().flat_map(|n| n.attributions()).collect(),
        }
    }

    /// An operator over this one that keeps its columns (Filter, Sort, Limit, Distinct).
    pub fn then(self, make: impl FnOnce(Box<Node>) -> NodeKind) -> Node {
        let columns = self.columns.clone();
        Node {
            kind: make(Box::new(self)),
            columns,
        }
    }

    fn fmt_tree(&self, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
        let pad = "  ".repeat(depth);
        let arrow = if depth == 0 { "" } else { "└─ " };
        let list = |items: &[(String, Expr)]| -> String {
            items
                .iter()
                .map(|(name, e)| {
                    let text = e.to_string();
                    let same_column = matches!(&e.kind, crate::syntax::ast::ExprKind::Column { qualifier: None, name: n } if n.name == *name);
                    if same_column {
                        // A column kept as it is: its name (`a.input` reads as itself).
                        name.clone()
                    } else if text == *name {
                        text
                    } else {
                        format!("{text} AS {name}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.kind {
            NodeKind::Attribute(a) => {
                let what = match (&a.layer, &a.through) {
                    (Some(_), _) if !a.all_layers.is_empty() => " AT LAYER * (each layer, stacked)".to_string(),
                    (Some(l), _) if a.is_layer_relation() => format!(" AT LAYER {}", l.name),
                    (Some(l), _) => format!(" (map of {})", l.name),
                    (_, Some(ThroughSpec::Layer(l))) => format!(" THROUGH LAYER {} (probe)", l.name),
                    (_, Some(ThroughSpec::All(ls))) => format!(" THROUGH LAYER * ({} probes)", ls.len()),
                    _ => String::new(),
                };
                let model = match &a.contrast {
                    Some(other) => format!("{} − {}", a.model, other),
                    None => a.model.clone(),
                };
                writeln!(f, "{pad}{arrow}Attribute {model}({}) USING {}{what}", a.data, a.method)?;
                if let Some(p) = &a.input_filter {
                    writeln!(f, "{pad}   only inputs where {p}  [rule push_input_predicates]")?;
                }
                match a.input_limit {
                    Some(InputLimit::Rows(r)) => writeln!(
                        f,
                        "{pad}   only the inputs of the first {r} rows  [rule push_input_limit]"
                    )?,
                    Some(InputLimit::Inputs(n)) => {
                        writeln!(f, "{pad}   only the first {n} inputs  [rule push_input_limit]")?
                    }
                    None => {}
                }
                let target = match &a.target {
                    TargetSpec::Predicted => "predicted".to_string(),
                    TargetSpec::PredictedBy(m) => format!("predicted by {m}"),
                    TargetSpec::Label => "label".to_string(),
                    TargetSpec::Class(c) => format!("class {c}"),
                    TargetSpec::Unit(l, u) => format!("unit {u} of {}", l.name),
                    TargetSpec::Similarity(r) => format!("similarity with {r}"),
                };
                let baseline = match &a.baseline {
                    BaselineSpec::Zero if matches!(a.modality, crate::data::Modality::Text { .. }) => {
                        "[PAD] tokens".to_string()
                    }
                    BaselineSpec::Zero => "zero".to_string(),
                    BaselineSpec::Mean(d) => format!("mean({d})"),
                    BaselineSpec::Constant(c) => format!("{c}"),
                    BaselineSpec::Data(d) => d.to_string(),
                    BaselineSpec::Tokens { mask: true } => "[MASK] tokens".to_string(),
                    BaselineSpec::Tokens { mask: false } => "[PAD] tokens".to_string(),
                };
                let window = window_text(&a.window);
                let gran = match &a.granularity {
                    GranularitySpec::Feature => "feature".to_string(),
                    GranularitySpec::Pixel => "pixel".to_string(),
                    GranularitySpec::Patch(k) => format!("patch({k})"),
                    GranularitySpec::Column => "column".to_string(),
                    GranularitySpec::Word => "word".to_string(),
                };
                let base = if a.method.uses_baseline() || a.metrics.iter().any(|m| m.metric.uses_baseline()) {
                    format!(", baseline {baseline}")
                } else {
                    String::new()
                };
                writeln!(f, "{pad}   target {target}{base}, window {window}, granularity {gran}")?;
                if !a.metrics.is_empty() {
                    let metrics: Vec<String> = a.metrics.iter().map(|m| m.metric.to_string()).collect();
                    writeln!(
                        f,
                        "{pad}   evaluate {} (a row per input and metric)",
                        metrics.join(", ")
                    )?;
                }
                Ok(())
            }
            NodeKind::Tcav(t) => {
                writeln!(
                    f,
                    "{pad}{arrow}TCAV {}({}) AT LAYER {} CONCEPTS ({})",
                    t.model,
                    t.data,
                    t.layer.name,
                    t.concepts.join(", ")
                )?;
                let target = match &t.target {
                    TargetSpec::Class(c) => format!("class {c}"),
                    TargetSpec::Label => "label".to_string(),
                    _ => "predicted".to_string(),
                };
                writeln!(
                    f,
                    "{pad}   {} random sets of {} (seed {}), target {target}",
                    t.random, t.data.name, t.seed
                )
            }
            NodeKind::Detect(d) => {
                writeln!(
                    f,
                    "{pad}{arrow}Detect {}({}) USING {} AT LAYER {}",
                    d.model, d.data, d.detector, d.layer.name
                )?;
                writeln!(
                    f,
                    "{pad}   a score per input from its activations at {}, class by class ({})",
                    d.layer.name,
                    if d.detector.by_label() { "labels" } else { "predictions" }
                )
            }
            NodeKind::Influence(i) => {
                let layers = match &i.layers {
                    InfluenceLayers::Last => "the last linear layer".to_string(),
                    InfluenceLayers::All => "every linear and convolution layer".to_string(),
                    InfluenceLayers::Named(ls) => ls.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", "),
                };
                let on = if i.self_influence {
                    "itself (self-influence)".to_string()
                } else {
                    format!("{}({})", i.model, i.test)
                };
                let target = match &i.target {
                    TargetSpec::Class(c) => format!("class {c}"),
                    TargetSpec::Label => "label".to_string(),
                    _ => "predicted".to_string(),
                };
                writeln!(f, "{pad}{arrow}Influence of {}({}) on {on}", i.model, i.train)?;
                writeln!(
                    f,
                    "{pad}   TracIn over {layers}{}, test target {target}",
                    if i.normalize { ", cosine" } else { "" }
                )
            }
            NodeKind::Predict(p) => {
                let top = if p.top > 0 {
                    format!(" top {}", p.top)
                } else {
                    String::new()
                };
                writeln!(f, "{pad}{arrow}Predict {}({}){top}", p.model, p.data)
            }
            NodeKind::Filter { input, predicate } => {
                writeln!(f, "{pad}{arrow}Filter {predicate}")?;
                input.fmt_tree(f, depth + 1)
            }
            NodeKind::Aggregate {
                input,
                keys,
                aggregates,
            } => {
                let k = if keys.is_empty() { "()".to_string() } else { list(keys) };
                writeln!(f, "{pad}{arrow}Aggregate by {k}: {}", list(aggregates))?;
                input.fmt_tree(f, depth + 1)
            }
            NodeKind::Project { input, exprs } => {
                writeln!(f, "{pad}{arrow}Project {}", list(exprs))?;
                input.fmt_tree(f, depth + 1)
            }
            NodeKind::Sort { input, keys } => {
                let k: Vec<String> = keys
                    .iter()
                    .map(|(e, d)| format!("{e}{}", if *d { " DESC" } else { "" }))
                    .collect();
                writeln!(f, "{pad}{arrow}Sort {}", k.join(", "))?;
                input.fmt_tree(f, depth + 1)
            }
            NodeKind::Limit { input, count, offset } => {
                if *offset > 0 {
                    writeln!(f, "{pad}{arrow}Limit {count} offset {offset}")?;
                } else {
                    writeln!(f, "{pad}{arrow}Limit {count}")?;
                }
                input.fmt_tree(f, depth + 1)
            }
            NodeKind::Distinct { input } => {
                writeln!(f, "{pad}{arrow}Distinct")?;
                input.fmt_tree(f, depth + 1)
            }
            NodeKind::Join {
                kind,
                left,
                right,
                names,
                keys,
            } => {
                let word = match kind {
                    JoinKind::Join if matches!(left.kind, NodeKind::Predict(_)) => {
                        "Join (before / after, with the changes)"
                    }
                    JoinKind::Join => "Join (attribution = mean of the sides)",
                    JoinKind::AntiJoin => "Antijoin (each side against the other)",
                };
                writeln!(
                    f,
                    "{pad}{arrow}{word} as {}, {} on {}",
                    names[0],
                    names[1],
                    if keys.is_empty() {
                        "()".to_string()
                    } else {
                        keys.join(", ")
                    }
                )?;
                left.fmt_tree(f, depth + 1)?;
                right.fmt_tree(f, depth + 1)
            }
            NodeKind::With { tables, body } => {
                let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
                writeln!(f, "{pad}{arrow}With {} (each computed once)", names.join(", "))?;
                for (name, table) in tables {
                    writeln!(f, "{pad}   {name} =")?;
                    table.fmt_tree(f, depth + 1)?;
                }
                writeln!(f, "{pad}   then")?;
                body.fmt_tree(f, depth + 1)
            }
            NodeKind::Table { name, source } => {
                let from = match source {
                    TableSource::With => "the WITH above",
                    TableSource::Session => "kept in the session",
                };
                writeln!(f, "{pad}{arrow}Table {name} ({from})")
            }
            NodeKind::TableJoin {
                left, right, condition, ..
            } => {
                writeln!(f, "{pad}{arrow}Join {condition}")?;
                left.fmt_tree(f, depth + 1)?;
                right.fmt_tree(f, depth + 1)
            }
            NodeKind::SetOp { op, left, right } => {
                let word = match op {
                    SetOp::Union => "Union",
                    SetOp::UnionAll => "Union all",
                    SetOp::Intersect => "Intersect",
                    SetOp::Except => "Except",
                };
                writeln!(f, "{pad}{arrow}{word}")?;
                left.fmt_tree(f, depth + 1)?;
                right.fmt_tree(f, depth + 1)
            }
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_tree(f, 0)
    }
}
