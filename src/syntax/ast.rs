//! The typed syntax tree. Every node carries the span of text it came from; `Display`
//! prints canonical IQL that parses back to the same tree.

use std::fmt;

use crate::error::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A literal where the language takes a value: a number, a string, true/false, a bare
/// word (read as a string) or a script variable `:name`.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub kind: ValueKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    Number(f64),
    Str(String),
    Bool(bool),
    Word(String),
    Var(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Script {
    pub statements: Vec<Statement>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub kind: StatementKind,
    pub span: Span,
    /// The feature visualizations written inside the statement (`m(VISUALIZE …)`), in
    /// order: the session renders them before planning it and drops them after.
    pub inline: Vec<Visualize>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StatementKind {
    LoadModel {
        name: Ident,
        path: Value,
        arch: Option<Value>,
        /// `HEAD 'head.safetensors'`: a linear head on the model's output.
        head: Option<Value>,
        /// `CLASSES 'names.txt'`: the names of the outputs.
        classes: Option<Value>,
        /// `CHECKPOINTS ('e1.safetensors' RATE 0.1, …)`: earlier weights, for TracInCP.
        checkpoints: Vec<(Value, Option<Value>)>,
    },
    LoadData {
        name: Ident,
        path: Value,
        labels: Option<Value>,
        label_column: Option<Ident>,
        /// `TEXT [COLUMN c]`: texts for a text model (Some(None): one per line).
        text: Option<Option<Ident>>,
        /// `IMAGES [RESIZE n] [CROP n] [NORMALIZE …]`: photos.
        images: Option<Images>,
        /// `SHAPE (c, h, w)`: each input's shape, read from the file in its order.
        shape: Option<(Vec<usize>, Span)>,
        /// `CLASSES 'names.txt'`: the names of the label classes.
        classes: Option<Value>,
    },
    Show(Show),
    Set {
        name: Ident,
        value: Value,
    },
    Var {
        name: Ident,
        value: Value,
    },
    Let {
        name: Ident,
        dataset: DatasetExpr,
    },
    /// `LET name = ATTACK method(params) ON m(d) [TARGET k]`.
    LetAttack {
        name: Ident,
        attack: Box<Attack>,
    },
    /// `LET name = VISUALIZE m AT LAYER l CHANNEL k (params)`.
    LetVisualize {
        name: Ident,
        visualize: Box<Visualize>,
    },
    /// `LET name = (SELECT …)`: the query's result kept in the session as a table.
    LetTable {
        name: Ident,
        query: Query,
    },
    Query(Query),
    /// `EXPORT d TO 'f.png' | 'f.npy'`: a dataset's inputs as pictures or an array.
    ExportData {
        dataset: DatasetExpr,
        path: Value,
        overwrite: bool,
    },
    Export {
        query: Query,
        path: Value,
        overwrite: bool,
        /// EXPORT REPORT: a self-contained HTML report rather than the table itself.
        report: bool,
    },
    Plan(Query),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Show {
    Models,
    Data,
    Methods,
    Layers(Ident),
    Cache,
    Settings,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub kind: QueryKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum QueryKind {
    Select(Box<Select>),
    /// `PREDICT m(x)`: shorthand for `SELECT * FROM PREDICT m(x)`.
    Predict(Box<Predict>),
    SetOp {
        op: SetOp,
        left: Box<Query>,
        right: Box<Query>,
    },
    /// `WITH a AS (…), b AS (…) body`: named results the body (and each later one) reads.
    With {
        tables: Vec<Cte>,
        body: Box<Query>,
    },
}

/// One `name AS (query)` of a WITH.
#[derive(Clone, Debug, PartialEq)]
pub struct Cte {
    pub name: Ident,
    pub query: Query,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOp {
    Union,
    UnionAll,
    Intersect,
    Except,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Select {
    pub distinct: bool,
    pub items: Vec<SelectItem>,
    pub from: Source,
    pub filter: Option<Expr>,
    pub group_by: Vec<Expr>,
    pub having: Option<Expr>,
    pub order_by: Vec<OrderItem>,
    pub limit: Option<Limit>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SelectItem {
    Wildcard(Span),
    Expr { expr: Expr, alias: Option<Ident> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct OrderItem {
    pub expr: Expr,
    pub descending: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub count: Value,
    pub offset: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Interpretation(Box<Interpretation>),
    Predict(Box<Predict>),
    /// `PREDICT m(x) [AS a] JOIN PREDICT m(y) [AS b]`: before and after.
    PredictJoin(Box<PredictJoin>),
    Subquery {
        query: Box<Query>,
        alias: Option<Ident>,
    },
    Join(Box<Join>),
    /// A table by name: a WITH name or a table kept by LET.
    Table {
        name: Ident,
        alias: Option<Ident>,
    },
    /// Two tables joined on equal columns (each side a `Table` or a `Subquery`).
    TableJoin(Box<TableJoin>),
    /// `INFLUENCE OF m(train) ON m(test) [USING tracin(…)] [TARGET k]`.
    Influence(Box<Influence>),
    /// `TCAV m(d) AT LAYER l CONCEPTS (a, …) [RANDOM n] [TARGET k]`.
    Tcav(Box<Tcav>),
}

/// Testing with concept activation vectors: the concepts are datasets.
#[derive(Clone, Debug, PartialEq)]
pub struct Tcav {
    pub call: ModelCall,
    pub layer: Ident,
    pub concepts: Vec<Ident>,
    pub random: Option<Value>,
    pub target: Option<Target>,
    pub span: Span,
}

/// Training-data attribution: the training inputs and the test inputs they influence.
#[derive(Clone, Debug, PartialEq)]
pub struct Influence {
    pub train: ModelCall,
    pub test: ModelCall,
    pub method: Option<MethodCall>,
    pub target: Option<Target>,
    pub span: Span,
}

/// `left JOIN right USING (…) | ON …`.
#[derive(Clone, Debug, PartialEq)]
pub struct TableJoin {
    pub left: Source,
    pub right: Source,
    pub condition: JoinCondition,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum JoinCondition {
    /// Columns of the same name on both sides, kept once.
    Using(Vec<Ident>),
    /// Pairs of equal columns (`a.x = b.y AND …`), each a column reference.
    On(Vec<(Expr, Expr)>),
}

/// How photos are brought to the model: torchvision's Resize (shorter side), CenterCrop
/// and Normalize.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    pub resize: Option<u32>,
    pub crop: Option<u32>,
    pub normalize: Option<Normalize>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Normalize {
    Imagenet,
    MeanStd([f64; 3], [f64; 3]),
}

impl fmt::Display for Images {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IMAGES")?;
        if let Some(n) = self.resize {
            write!(f, " RESIZE {n}")?;
        }
        if let Some(n) = self.crop {
            write!(f, " CROP {n}")?;
        }
        match &self.normalize {
            Some(Normalize::Imagenet) => write!(f, " NORMALIZE imagenet"),
            Some(Normalize::MeanStd(m, s)) => write!(
                f,
                " NORMALIZE MEAN ({}, {}, {}) STD ({}, {}, {})",
                m[0], m[1], m[2], s[0], s[1], s[2]
            ),
            None => Ok(()),
        }
    }
}

/// `m(x)` with its interpretation clauses.
#[derive(Clone, Debug, PartialEq)]
pub struct Interpretation {
    pub call: ModelCall,
    pub clauses: Clauses,
    pub span: Span,
}

/// The clauses of an interpretation (each at most once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Clauses {
    pub using: Option<MethodCall>,
    pub target: Option<Target>,
    pub baseline: Option<Baseline>,
    pub window: Option<Window>,
    pub granularity: Option<Granularity>,
    /// `AT LAYER l`; `AT LAYER *` is the name `*`.
    pub at_layer: Option<Ident>,
    pub through: Option<Through>,
    /// `EVALUATE metric(…), …`: the explanation's quality, a row per input and metric.
    pub evaluate: Option<Evaluate>,
}

/// The metrics of an EVALUATE clause, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluate {
    pub metrics: Vec<MethodCall>,
    pub span: Span,
}

impl Clauses {
    /// These clauses, with `shared` filling in the ones not given here.
    pub fn or(&self, shared: &Clauses) -> Clauses {
        Clauses {
            using: self.using.clone().or_else(|| shared.using.clone()),
            target: self.target.clone().or_else(|| shared.target.clone()),
            baseline: self.baseline.clone().or_else(|| shared.baseline.clone()),
            window: self.window.clone().or_else(|| shared.window.clone()),
            granularity: self.granularity.clone().or_else(|| shared.granularity.clone()),
            at_layer: self.at_layer.clone().or_else(|| shared.at_layer.clone()),
            through: self.through.clone().or_else(|| shared.through.clone()),
            evaluate: self.evaluate.clone().or_else(|| shared.evaluate.clone()),
        }
    }
}

/// `THROUGH LAYER l` or `THROUGH LAYER *`.
#[derive(Clone, Debug, PartialEq)]
pub struct Through {
    /// None for `*` (every layer).
    pub layer: Option<Ident>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    Join,
    AntiJoin,
}

/// `left JOIN right <shared clauses>` (or ANTIJOIN).
#[derive(Clone, Debug, PartialEq)]
pub struct Join {
    pub kind: JoinKind,
    pub left: JoinSide,
    pub right: JoinSide,
    pub shared: Clauses,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JoinSide {
    /// A parenthesised side keeps its own clauses; a bare `m(x)` has none.
    pub interp: Interpretation,
    pub parenthesized: bool,
    pub alias: Option<Ident>,
}

/// `PREDICT m(x) [TOP k]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Predict {
    pub call: ModelCall,
    pub top: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PredictJoin {
    pub left: Predict,
    pub left_alias: Option<Ident>,
    pub right: Predict,
    pub right_alias: Option<Ident>,
    pub span: Span,
}

impl fmt::Display for Predict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PREDICT {}", self.call)?;
        if let Some(k) = &self.top {
            write!(f, " TOP {k}")?;
        }
        Ok(())
    }
}

/// Feature visualization: images made by gradient ascent on an objective of model `m`.
#[derive(Clone, Debug, PartialEq)]
pub struct Visualize {
    pub model: Ident,
    pub objective: VisObjective,
    pub params: Vec<Param>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum VisObjective {
    /// `AT LAYER l CHANNEL k`: the channel's mean activation (`CHANNEL *`, None: one
    /// image per channel).
    Channel { layer: Ident, channel: Option<Value> },
    /// `AT LAYER l UNIT (c, r, k)`: one value of the layer's output.
    Unit { layer: Ident, index: Vec<Value> },
    /// `TARGET k`: a class logit.
    Target(Target),
}

impl fmt::Display for Visualize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VISUALIZE {}", self.model)?;
        match &self.objective {
            VisObjective::Channel {
                layer,
                channel: Some(k),
            } => write!(f, " AT LAYER {layer} CHANNEL {k}")?,
            VisObjective::Channel { layer, channel: None } => write!(f, " AT LAYER {layer} CHANNEL *")?,
            VisObjective::Unit { layer, index } => {
                let ix: Vec<String> = index.iter().map(|v| v.to_string()).collect();
                write!(f, " AT LAYER {layer} UNIT ({})", ix.join(", "))?
            }
            VisObjective::Target(t) => write!(f, " TARGET {t}")?,
        }
        if !self.params.is_empty() {
            write!(f, " ({})", fmt_params(&self.params))?;
        }
        Ok(())
    }
}

/// An adversarial attack on a model's inputs; of its clauses only TARGET applies.
#[derive(Clone, Debug, PartialEq)]
pub struct Attack {
    pub method: MethodCall,
    pub call: ModelCall,
    pub clauses: Clauses,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelCall {
    pub model: Ident,
    pub data: DatasetExpr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DatasetExpr {
    /// The dataset's name; for `VISUALIZE …` written in place, that text.
    pub name: Ident,
    /// Images made on the spot by feature visualization (named by `name`).
    pub visualize: Option<Box<Visualize>>,
    pub index: Option<Index>,
    /// Input edits (`WITH SET …`, `WITH MASK …`, `WITH NOISE(…)`, `WITH BLUR(…)`), in order.
    pub edits: Vec<Edit>,
    pub span: Span,
}

/// One input edit of a dataset expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Edit {
    pub kind: EditKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EditKind {
    /// Features of a window (or columns) set to a value.
    Set { window: Window, value: Value },
    /// Features of a window set to zero (the default baseline).
    Mask { window: Window },
    /// Gaussian noise of standard deviation `stdev`, seeded.
    Noise { stdev: Value, seed: Option<Value> },
    /// Gaussian blur of each image plane.
    Blur { sigma: Value },
    /// An activation edit at a hook point: units of `layer` (the leading axes fixed by
    /// `index`) set, scaled or patched from another input.
    Layer {
        layer: Ident,
        index: Vec<Value>,
        action: LayerAction,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum LayerAction {
    Set(Value),
    Scale(Value),
    From(Box<DatasetExpr>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Index {
    One(Value),
    Range { start: Option<Value>, end: Option<Value> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct MethodCall {
    pub name: Ident,
    pub params: Vec<Param>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub kind: TargetKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TargetKind {
    Predicted,
    Label,
    Class(Value),
    /// A unit of a layer: `fc1[5]` (flat) or `conv2[3, 4, 4]` (by coordinates).
    Unit {
        layer: Ident,
        index: Vec<Value>,
    },
    /// `similarity(a[, b])`: the cosine similarity of the output with the other input's.
    Similarity(Vec<DatasetExpr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    pub kind: BaselineKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BaselineKind {
    Zero,
    /// The mean input of a dataset (of the interpreted dataset when None).
    Mean(Option<DatasetExpr>),
    Constant(Value),
    Data(DatasetExpr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub kind: WindowKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WindowKind {
    Image(Vec<WindowRange>),
    Columns(Vec<ColumnItem>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    Rows,
    Cols,
    Channels,
    /// Token positions of a text input.
    Tokens,
    /// Positions of a sequence.
    Positions,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WindowRange {
    pub axis: Axis,
    pub start: Value,
    pub end: Value,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ColumnItem {
    Name(Ident),
    Range { start: Value, end: Value, span: Span },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Granularity {
    pub kind: GranularityKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum GranularityKind {
    Pixel,
    Patch(Value),
    /// k positions of a sequence, all channels together.
    Segment(Value),
    Column,
    Token,
    /// The tokens of one word together (text).
    Word,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Column {
        qualifier: Option<Ident>,
        name: Ident,
    },
    Number(f64),
    Str(String),
    Bool(bool),
    Null,
    Var(String),
    Unary {
        op: UnaryOp,
        expr: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    /// A function call; `star` for `count(*)`.
    Call {
        name: Ident,
        args: Vec<Expr>,
        star: bool,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    /// `x IN (a, b, …)`; `x IN (SELECT …)` is a list of one `Subquery`.
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    /// `f(…) OVER (PARTITION BY … ORDER BY …)`: `call` is the function, computed per row
    /// over the rows of its partition.
    Window {
        call: Box<Expr>,
        partition: Vec<Expr>,
        order: Vec<(Expr, bool)>,
    },
    /// `(SELECT …)`: an uncorrelated subquery, run before the query that holds it — a
    /// scalar, or the set an `IN` tests.
    Subquery(Box<Query>),
}

impl Expr {
    /// A copy with each direct sub-expression replaced by `f` of it (the one traversal
    /// that rewrites share).
    pub fn map_children<E>(&self, f: &mut dyn FnMut(&Expr) -> Result<Expr, E>) -> Result<Expr, E> {
        let kind = match &self.kind {
            ExprKind::Call { name, args, star } => ExprKind::Call {
                name: name.clone(),
                args: args.iter().map(&mut *f).collect::<Result<_, E>>()?,
                star: *star,
            },
            ExprKind::Unary { op, expr } => ExprKind::Unary {
                op: *op,
                expr: Box::new(f(expr)?),
            },
            ExprKind::Binary { op, left, right } => ExprKind::Binary {
                op: *op,
                left: Box::new(f(left)?),
                right: Box::new(f(right)?),
            },
            ExprKind::IsNull { expr, negated } => ExprKind::IsNull {
                expr: Box::new(f(expr)?),
                negated: *negated,
            },
            ExprKind::InList { expr, list, negated } => ExprKind::InList {
                expr: Box::new(f(expr)?),
                list: list.iter().map(&mut *f).collect::<Result<_, E>>()?,
                negated: *negated,
            },
            ExprKind::Window { call, partition, order } => ExprKind::Window {
                call: Box::new(f(call)?),
                partition: partition.iter().map(&mut *f).collect::<Result<_, E>>()?,
                order: order.iter().map(|(e, d)| Ok((f(e)?, *d))).collect::<Result<_, E>>()?,
            },
            other => other.clone(),
        };
        Ok(Expr { kind, span: self.span })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "OR",
            BinaryOp::And => "AND",
            BinaryOp::Eq => "=",
            BinaryOp::NotEq => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::LtEq => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::GtEq => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
        }
    }
}

// ---------------------------------------------------------------- Display: canonical IQL

/// Words a bare identifier may not be (they are reserved by the grammar).
const RESERVED: &[&str] = &[
    "select",
    "from",
    "where",
    "having",
    "order",
    "limit",
    "offset",
    "as",
    "and",
    "or",
    "not",
    "is",
    "in",
    "null",
    "true",
    "false",
    "union",
    "intersect",
    "except",
    "distinct",
    "using",
];

/// Whether `name` is written as an identifier: a letter or `_`, then letters, digits, `_`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare = is_identifier(&self.name) && !RESERVED.contains(&self.name.to_lowercase().as_str());
        if bare {
            write!(f, "{}", self.name)
        } else {
            write!(f, "\"{}\"", self.name)
        }
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn number(n: f64) -> String {
    // Rust prints the shortest text that reads back as the same f64.
    format!("{n}")
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ValueKind::Number(n) => write!(f, "{}", number(*n)),
            ValueKind::Str(s) => write!(f, "{}", quote(s)),
            ValueKind::Bool(b) => write!(f, "{b}"),
            ValueKind::Word(w) => write!(f, "{w}"),
            ValueKind::Var(v) => write!(f, ":{v}"),
        }
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.statements {
            writeln!(f, "{s};")?;
        }
        Ok(())
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StatementKind::LoadModel {
                name,
                path,
                arch,
                head,
                classes,
                checkpoints,
            } => {
                write!(f, "LOAD MODEL {name} FROM {path}")?;
                if let Some(a) = arch {
                    write!(f, " ARCH {a}")?;
                }
                if let Some(h) = head {
                    write!(f, " HEAD {h}")?;
                }
                if let Some(c) = classes {
                    write!(f, " CLASSES {c}")?;
                }
                if !checkpoints.is_empty() {
                    let each: Vec<String> = checkpoints
                        .iter()
                        .map(|(p, r)| match r {
                            Some(r) => format!("{p} RATE {r}"),
                            None => p.to_string(),
                        })
                        .collect();
                    write!(f, " CHECKPOINTS ({})", each.join(", "))?;
                }
                Ok(())
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
            } => {
                write!(f, "LOAD DATA {name} FROM {path}")?;
                if let Some((dims, _)) = shape {
                    let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                    write!(f, " SHAPE ({})", d.join(", "))?;
                }
                match text {
                    Some(Some(c)) => write!(f, " TEXT COLUMN {c}")?,
                    Some(None) => write!(f, " TEXT")?,
                    None => {}
                }
                if let Some(i) = images {
                    write!(f, " {i}")?;
                }
                if let Some(l) = labels {
                    write!(f, " LABELS {l}")?;
                }
                if let Some(c) = label_column {
                    write!(f, " LABEL COLUMN {c}")?;
                }
                if let Some(c) = classes {
                    write!(f, " CLASSES {c}")?;
                }
                Ok(())
            }
            StatementKind::Show(show) => match show {
                Show::Models => write!(f, "SHOW MODELS"),
                Show::Data => write!(f, "SHOW DATA"),
                Show::Methods => write!(f, "SHOW METHODS"),
                Show::Layers(m) => write!(f, "SHOW LAYERS OF {m}"),
                Show::Cache => write!(f, "SHOW CACHE"),
                Show::Settings => write!(f, "SHOW SETTINGS"),
            },
            StatementKind::Set { name, value } => write!(f, "SET {name} = {value}"),
            StatementKind::Var { name, value } => write!(f, "VAR {name} = {value}"),
            StatementKind::Let { name, dataset } => write!(f, "LET {name} = {dataset}"),
            StatementKind::LetAttack { name, attack } => {
                write!(
                    f,
                    "LET {name} = ATTACK {} ON {}{}",
                    attack.method, attack.call, attack.clauses
                )
            }
            StatementKind::LetVisualize { name, visualize } => write!(f, "LET {name} = {visualize}"),
            StatementKind::LetTable { name, query } => write!(f, "LET {name} = ({query})"),
            StatementKind::ExportData {
                dataset,
                path,
                overwrite,
            } => {
                write!(f, "EXPORT {dataset} TO {path}")?;
                if *overwrite {
                    write!(f, " OVERWRITE")?;
                }
                Ok(())
            }
            StatementKind::Query(q) => write!(f, "{q}"),
            StatementKind::Export {
                query,
                path,
                overwrite,
                report,
            } => {
                let word = if *report { "EXPORT REPORT" } else { "EXPORT" };
                write!(f, "{word} {query} TO {path}")?;
                if *overwrite {
                    write!(f, " OVERWRITE")?;
                }
                Ok(())
            }
            StatementKind::Plan(q) => write!(f, "PLAN {q}"),
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            QueryKind::Select(s) => write!(f, "{s}"),
            QueryKind::Predict(p) => write!(f, "{p}"),
            QueryKind::SetOp { op, left, right } => {
                let word = match op {
                    SetOp::Union => "UNION",
                    SetOp::UnionAll => "UNION ALL",
                    SetOp::Intersect => "INTERSECT",
                    SetOp::Except => "EXCEPT",
                };
                // Parenthesise every operand: always valid, and keeps the tree's shape.
                write!(f, "({left}) {word} ({right})")
            }
            QueryKind::With { tables, body } => {
                write!(f, "WITH ")?;
                for (i, t) in tables.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{} AS ({})", t.name, t.query)?;
                }
                // A body that is itself a WITH keeps its own scope in parentheses.
                match body.kind {
                    QueryKind::With { .. } => write!(f, " ({body})"),
                    _ => write!(f, " {body}"),
                }
            }
        }
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SELECT ")?;
        if self.distinct {
            write!(f, "DISTINCT ")?;
        }
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            match item {
                SelectItem::Wildcard(_) => write!(f, "*")?,
                SelectItem::Expr { expr, alias } => {
                    write!(f, "{expr}")?;
                    if let Some(a) = alias {
                        write!(f, " AS {a}")?;
                    }
                }
            }
        }
        write!(f, " FROM {}", self.from)?;
        if let Some(w) = &self.filter {
            write!(f, " WHERE {w}")?;
        }
        if !self.group_by.is_empty() {
            let keys: Vec<String> = self.group_by.iter().map(|e| e.to_string()).collect();
            write!(f, " GROUP BY {}", keys.join(", "))?;
        }
        if let Some(h) = &self.having {
            write!(f, " HAVING {h}")?;
        }
        if !self.order_by.is_empty() {
            let keys: Vec<String> = self
                .order_by
                .iter()
                .map(|o| format!("{}{}", o.expr, if o.descending { " DESC" } else { "" }))
                .collect();
            write!(f, " ORDER BY {}", keys.join(", "))?;
        }
        if let Some(l) = &self.limit {
            write!(f, " LIMIT {}", l.count)?;
            if let Some(o) = &l.offset {
                write!(f, " OFFSET {o}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Interpretation(i) => write!(f, "{i}"),
            Source::Predict(p) => write!(f, "{p}"),
            Source::Tcav(t) => {
                let concepts: Vec<String> = t.concepts.iter().map(|c| c.to_string()).collect();
                write!(
                    f,
                    "TCAV {} AT LAYER {} CONCEPTS ({})",
                    t.call,
                    t.layer,
                    concepts.join(", ")
                )?;
                if let Some(r) = &t.random {
                    write!(f, " RANDOM {r}")?;
                }
                if let Some(k) = &t.target {
                    write!(f, " TARGET {k}")?;
                }
                Ok(())
            }
            Source::Influence(i) => {
                write!(f, "INFLUENCE OF {} ON {}", i.train, i.test)?;
                if let Some(m) = &i.method {
                    write!(f, " USING {m}")?;
                }
                if let Some(t) = &i.target {
                    write!(f, " TARGET {t}")?;
                }
                Ok(())
            }
            Source::PredictJoin(j) => {
                write!(f, "{}", j.left)?;
                if let Some(a) = &j.left_alias {
                    write!(f, " AS {a}")?;
                }
                write!(f, " JOIN {}", j.right)?;
                if let Some(a) = &j.right_alias {
                    write!(f, " AS {a}")?;
                }
                Ok(())
            }
            Source::Subquery { query, alias } => {
                write!(f, "({query})")?;
                if let Some(a) = alias {
                    write!(f, " AS {a}")?;
                }
                Ok(())
            }
            Source::Join(j) => write!(f, "{j}"),
            Source::Table { name, alias } => {
                write!(f, "{name}")?;
                if let Some(a) = alias {
                    write!(f, " AS {a}")?;
                }
                Ok(())
            }
            Source::TableJoin(j) => {
                write!(f, "{} JOIN {}", j.left, j.right)?;
                match &j.condition {
                    JoinCondition::Using(cols) => {
                        let c: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
                        write!(f, " USING ({})", c.join(", "))
                    }
                    JoinCondition::On(pairs) => {
                        let c: Vec<String> = pairs.iter().map(|(a, b)| format!("{a} = {b}")).collect();
                        write!(f, " ON {}", c.join(" AND "))
                    }
                }
            }
        }
    }
}

impl fmt::Display for Join {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.kind {
            JoinKind::Join => "JOIN",
            JoinKind::AntiJoin => "ANTIJOIN",
        };
        write!(f, "{} {word} {}{}", self.left, self.right, self.shared)
    }
}

impl fmt::Display for JoinSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parenthesized {
            write!(f, "({})", self.interp)?;
        } else {
            write!(f, "{}", self.interp.call)?;
        }
        if let Some(a) = &self.alias {
            write!(f, " AS {a}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Interpretation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.call, self.clauses)
    }
}

impl fmt::Display for Clauses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = &self.using {
            write!(f, " USING {m}")?;
        }
        if let Some(t) = &self.target {
            write!(f, " TARGET {t}")?;
        }
        if let Some(b) = &self.baseline {
            write!(f, " BASELINE {b}")?;
        }
        if let Some(w) = &self.window {
            write!(f, " WINDOW {w}")?;
        }
        if let Some(g) = &self.granularity {
            write!(f, " GRANULARITY {g}")?;
        }
        match &self.at_layer {
            Some(l) if l.name == "*" => write!(f, " AT LAYER *")?,
            Some(l) => write!(f, " AT LAYER {l}")?,
            None => {}
        }
        if let Some(t) = &self.through {
            match &t.layer {
                Some(l) => write!(f, " THROUGH LAYER {l}")?,
                None => write!(f, " THROUGH LAYER *")?,
            }
        }
        if let Some(e) = &self.evaluate {
            let metrics: Vec<String> = e.metrics.iter().map(|m| m.to_string()).collect();
            write!(f, " EVALUATE {}", metrics.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Display for ModelCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.model, self.data)
    }
}

impl fmt::Display for DatasetExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.visualize {
            Some(v) => write!(f, "{v}")?,
            None => write!(f, "{}", self.name)?,
        }
        match &self.index {
            None => Ok(()),
            Some(Index::One(v)) => write!(f, "[{v}]"),
            Some(Index::Range { start, end }) => {
                let s = start.as_ref().map(|v| v.to_string()).unwrap_or_default();
                let e = end.as_ref().map(|v| v.to_string()).unwrap_or_default();
                // `[:name]` would read as a variable index; a start keeps a slice a slice.
                let s = if s.is_empty() && end.as_ref().is_some_and(|v| matches!(v.kind, ValueKind::Var(_))) {
                    "0".to_string()
                } else {
                    s
                };
                write!(f, "[{s}:{e}]")
            }
        }?;
        for edit in &self.edits {
            match &edit.kind {
                EditKind::Set { window, value } => write!(f, " WITH SET {window} = {value}")?,
                EditKind::Mask { window } => write!(f, " WITH MASK {window}")?,
                EditKind::Noise { stdev, seed: Some(s) } => write!(f, " WITH NOISE({stdev}, {s})")?,
                EditKind::Noise { stdev, seed: None } => write!(f, " WITH NOISE({stdev})")?,
                EditKind::Blur { sigma } => write!(f, " WITH BLUR({sigma})")?,
                EditKind::Layer { layer, index, action } => {
                    write!(f, " WITH LAYER {layer}")?;
                    if !index.is_empty() {
                        let ix: Vec<String> = index.iter().map(|v| v.to_string()).collect();
                        write!(f, "[{}]", ix.join(", "))?;
                    }
                    match action {
                        LayerAction::Set(v) => write!(f, " = {v}")?,
                        LayerAction::Scale(v) => write!(f, " SCALE {v}")?,
                        LayerAction::From(d) => write!(f, " FROM {d}")?,
                    }
                }
            }
        }
        Ok(())
    }
}

/// `name = value, …` of a call's parameters.
fn fmt_params(params: &[Param]) -> String {
    params
        .iter()
        .map(|p| format!("{} = {}", p.name, p.value))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for MethodCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if !self.params.is_empty() {
            write!(f, "({})", fmt_params(&self.params))?;
        }
        Ok(())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TargetKind::Predicted => write!(f, "PREDICTED"),
            TargetKind::Label => write!(f, "LABEL"),
            TargetKind::Class(v) => write!(f, "{v}"),
            TargetKind::Unit { layer, index } => {
                let parts: Vec<String> = index.iter().map(|v| v.to_string()).collect();
                write!(f, "{layer}[{}]", parts.join(", "))
            }
            TargetKind::Similarity(args) => {
                let parts: Vec<String> = args.iter().map(|d| d.to_string()).collect();
                write!(f, "similarity({})", parts.join(", "))
            }
        }
    }
}

impl fmt::Display for Baseline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BaselineKind::Zero => write!(f, "zero"),
            BaselineKind::Mean(None) => write!(f, "mean"),
            BaselineKind::Mean(Some(d)) => write!(f, "mean({d})"),
            BaselineKind::Constant(v) => write!(f, "{v}"),
            BaselineKind::Data(d) => write!(f, "{d}"),
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            WindowKind::Image(ranges) => {
                let parts: Vec<String> = ranges
                    .iter()
                    .map(|r| {
                        let axis = match r.axis {
                            Axis::Rows => "rows",
                            Axis::Cols => "cols",
                            Axis::Channels => "channels",
                            Axis::Tokens => "tokens",
                            Axis::Positions => "positions",
                        };
                        format!("{axis} {}:{}", r.start, r.end)
                    })
                    .collect();
                write!(f, "{}", parts.join(", "))
            }
            WindowKind::Columns(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|c| match c {
                        // A name written as a string may hold `"`, which a quoted name
                        // cannot: print it as the string it was.
                        ColumnItem::Name(n) if n.name.contains('"') => format!("'{}'", n.name.replace('\'', "''")),
                        ColumnItem::Name(n) => n.to_string(),
                        ColumnItem::Range { start, end, .. } => format!("{start}:{end}"),
                    })
                    .collect();
                write!(f, "columns {}", parts.join(", "))
            }
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            GranularityKind::Pixel => write!(f, "pixel"),
            GranularityKind::Patch(k) => write!(f, "patch({k})"),
            GranularityKind::Segment(k) => write!(f, "segment({k})"),
            GranularityKind::Column => write!(f, "column"),
            GranularityKind::Token => write!(f, "token"),
            GranularityKind::Word => write!(f, "word"),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Column {
                qualifier: Some(q),
                name,
            } => write!(f, "{q}.{name}"),
            ExprKind::Column { qualifier: None, name } => write!(f, "{name}"),
            ExprKind::Number(n) => write!(f, "{}", number(*n)),
            ExprKind::Str(s) => write!(f, "{}", quote(s)),
            ExprKind::Bool(b) => write!(f, "{b}"),
            ExprKind::Null => write!(f, "NULL"),
            ExprKind::Var(v) => write!(f, ":{v}"),
            ExprKind::Unary { op: UnaryOp::Not, expr } => write!(f, "NOT {}", paren(expr)),
            ExprKind::Unary { op: UnaryOp::Neg, expr } => write!(f, "-{}", paren(expr)),
            ExprKind::Binary { op, left, right } => {
                write!(f, "{} {} {}", paren(left), op.symbol(), paren(right))
            }
            ExprKind::Call { name, args, star } => {
                if *star {
                    write!(f, "{name}(*)")
                } else {
                    let a: Vec<String> = args.iter().map(|e| e.to_string()).collect();
                    write!(f, "{name}({})", a.join(", "))
                }
            }
            ExprKind::IsNull { expr, negated } => {
                write!(f, "{} IS {}NULL", paren(expr), if *negated { "NOT " } else { "" })
            }
            ExprKind::Subquery(q) => write!(f, "({q})"),
            ExprKind::Window { call, partition, order } => {
                write!(f, "{call} OVER (")?;
                let mut parts = Vec::new();
                if !partition.is_empty() {
                    let p: Vec<String> = partition.iter().map(|e| e.to_string()).collect();
                    parts.push(format!("PARTITION BY {}", p.join(", ")));
                }
                if !order.is_empty() {
                    let o: Vec<String> = order
                        .iter()
                        .map(|(e, d)| format!("{e}{}", if *d { " DESC" } else { "" }))
                        .collect();
                    parts.push(format!("ORDER BY {}", o.join(", ")));
                }
                write!(f, "{})", parts.join(" "))
            }
            ExprKind::InList { expr, list, negated } if matches!(list.as_slice(), [q] if matches!(q.kind, ExprKind::Subquery(_))) =>
            {
                write!(
                    f,
                    "{} {}IN {}",
                    paren(expr),
                    if *negated { "NOT " } else { "" },
                    list[0]
                )
            }
            ExprKind::InList { expr, list, negated } => {
                let a: Vec<String> = list.iter().map(|e| e.to_string()).collect();
                write!(
                    f,
                    "{} {}IN ({})",
                    paren(expr),
                    if *negated { "NOT " } else { "" },
                    a.join(", ")
                )
            }
        }
    }
}

/// Compound operands are parenthesised so that the printed text keeps the tree's shape.
fn paren(e: &Expr) -> String {
    match e.kind {
        ExprKind::Binary { .. } | ExprKind::Unary { .. } | ExprKind::IsNull { .. } | ExprKind::InList { .. } => {
            format!("({e})")
        }
        ExprKind::Number(n) if n < 0.0 => format!("({e})"),
        _ => e.to_string(),
    }
}
