//! Tab completion, asked of the engine so the shell (and tests) need no terminal: what
//! may come at the cursor, from the words before it — keywords and statement forms, the
//! loaded models, datasets and layers, methods and their parameters, column names.

use super::Session;
use crate::ops::METHODS;

/// Statement forms offered at the start of a statement.
pub(crate) const STATEMENTS: &[&str] = &[
    "SELECT",
    "WITH",
    "PREDICT",
    "LOAD MODEL",
    "LOAD DATA",
    "SHOW",
    "SET",
    "VAR",
    "LET",
    "CONCEPT",
    "EXPORT",
    "PLAN",
];

/// Clauses and keywords offered inside a query.
const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "HAVING",
    "ORDER BY",
    "LIMIT",
    "OFFSET",
    "DISTINCT",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS NULL",
    "ASC",
    "DESC",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "JOIN",
    "ANTIJOIN",
    "USING",
    "TARGET",
    "BASELINE",
    "WINDOW",
    "GRANULARITY",
    "AT LAYER",
    "THROUGH LAYER",
    "EVALUATE",
    "PREDICT",
    "TOP",
    "OVER",
    "PARTITION BY",
    "WITH",
    "TO",
    "OVERWRITE",
    // LOAD's clauses
    "ARCH",
    "HEAD",
    "CLASSES",
    "LABELS",
    "TEXT",
    "IMAGES",
    "RESIZE",
    "CROP",
    "NORMALIZE imagenet",
];

/// What SHOW takes, read from the grammar's `show_x = { kw_… }` rules (their keywords, in
/// order: `LAYERS OF`), so that a new SHOW needs no second list.
static SHOW_WHAT: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    include_str!("../../grammar/iql.pest")
        .lines()
        .filter(|l| l.starts_with("show_"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|t| t.strip_prefix("kw_"))
                .map(str::to_uppercase)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
});

/// Columns of the relations (DESIGN.md), offered where an expression may stand.
const COLUMNS: &[&str] = &[
    "input",
    "label",
    "prediction",
    "target",
    "class",
    "feature",
    "group",
    "channel",
    "row",
    "col",
    "position",
    "column",
    "size",
    "value",
    "attribution",
    "layer",
    "unit",
    "neuron",
    "activation",
    "probe_accuracy",
    "confidence",
    "correct",
];

const FUNCTIONS: &[&str] = &[
    "sum(",
    "mean(",
    "min(",
    "max(",
    "count(",
    "median(",
    "std(",
    "abs(",
    "round(",
    "sqrt(",
    "row_number()",
    "rank()",
    "dense_rank()",
];

impl Session {
    /// Completions of the word that ends at byte `pos` of `line`: the byte where that word
    /// starts and the candidates that would replace it (matching its prefix, ignoring case).
    pub fn complete(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let pos = floor_char_boundary(line, pos.min(line.len()));
        let before = &line[..pos];
        // Inside a quoted string (an odd number of quotes before the cursor; '' inside a
        // string pairs up): a file path.
        if before.matches('\'').count() % 2 == 1
            && let Some(quote) = before.rfind('\'')
        {
            return complete_path(&before[quote + 1..], quote + 1);
        }
        let word_start = |dots: bool| {
            before
                .char_indices()
                .rev()
                .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || (dots && *c == '.')))
                .map_or(0, |(i, c)| i + c.len_utf8())
        };
        // Layer names are dotted module paths (encoder.layer.3): after LAYER and TARGET the
        // word runs across dots.
        let dotted = word_start(true);
        let after_layer_keyword = tokens(&before[..dotted])
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case("LAYER") || t.eq_ignore_ascii_case("TARGET"));
        let start = if after_layer_keyword { dotted } else { word_start(false) };
        let word = &before[start..];
        let context = &before[..start];
        let candidates = self.candidates(context);
        let lower = word.to_lowercase();
        let out: Vec<String> = candidates
            .into_iter()
            .filter(|c| c.to_lowercase().starts_with(&lower) && c != word)
            .collect();
        (start, out)
    }

    /// What may stand after `context` (the text before the word being completed).
    fn candidates(&self, context: &str) -> Vec<String> {
        // The statement being typed: after the last `;`.
        let statement = context.rsplit(';').next().unwrap_or("");
        let tokens = tokens(statement);
        let last = tokens.last().map(|t| t.to_uppercase());
        let prev = tokens.len().checked_sub(2).map(|i| tokens[i].to_uppercase());
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let models = self.model_names();
        let datasets = self.dataset_names();
        match (prev.as_deref(), last.as_deref()) {
            (_, None) => owned(STATEMENTS),
            (_, Some("SHOW")) => SHOW_WHAT.clone(),
            (_, Some("LOAD")) => owned(&["MODEL", "DATA"]),
            (Some("LAYERS"), Some("OF")) | (Some("EXPORT" | "PLAN"), Some("FROM")) => models,
            (Some("INFLUENCE"), Some("OF")) | (_, Some("ON"))
                if tokens.iter().any(|t| t.eq_ignore_ascii_case("INFLUENCE")) =>
            {
                models
            }
            (_, Some("INFLUENCE")) => owned(&["OF"]),
            (_, Some("TCAV")) => models,
            (_, Some("CONCEPTS")) => owned(&["("]),
            (Some("CONCEPTS"), Some("(")) | (_, Some(","))
                if tokens.iter().any(|t| t.eq_ignore_ascii_case("CONCEPTS")) =>
            {
                datasets
            }
            (_, Some("FROM" | "JOIN")) => {
                let mut c = models;
                c.push("PREDICT".into());
                if last.as_deref() == Some("FROM") {
                    c.push("INFLUENCE OF".into());
                    c.push("TCAV".into());
                }
                c.extend(self.tables_in(&tokens));
                c
            }
            (_, Some("EXPORT")) => {
                let mut c = owned(&["SELECT", "WITH", "REPORT"]);
                c.extend(self.tables_in(&tokens));
                c.extend(datasets);
                c
            }
            (_, Some("PREDICT")) => models,
            (Some(_), Some("(")) if self.model(&tokens[tokens.len() - 2]).is_some() => datasets,
            (Some("AT" | "THROUGH" | "WITH"), Some("LAYER")) => {
                let mut c = self.layers_of(&tokens);
                if prev.as_deref() != Some("WITH") {
                    c.push("*".into());
                }
                c
            }
            // A WITH that opens a query names a table next: nothing to offer.
            (None | Some("("), Some("WITH")) => Vec::new(),
            (_, Some("WITH")) => owned(&["SET", "MASK", "NOISE(", "BLUR(", "LAYER"]),
            (Some(_), Some("="))
                if tokens.first().is_some_and(|t| t.eq_ignore_ascii_case("LET")) && tokens.len() == 3 =>
            {
                let mut c = datasets;
                c.push("ATTACK".into());
                c.push("VISUALIZE".into());
                c.push("(SELECT".into());
                c
            }
            (_, Some("ATTACK")) => crate::ops::attack::ATTACKS
                .iter()
                .map(|a| format!("{}(", a.name))
                .collect(),
            (_, Some("ON")) | (_, Some("VISUALIZE")) => models,
            (_, Some("TARGET")) => {
                let mut c = owned(&["PREDICTED", "LABEL"]);
                c.extend(self.layers_of(&tokens));
                c
            }
            (_, Some("USING")) if tokens.iter().any(|t| t.eq_ignore_ascii_case("INFLUENCE")) => owned(&["tracin"]),
            (_, Some("USING")) => METHODS
                .iter()
                .map(|m| m.name.to_string())
                .chain(crate::ops::detect::DETECTORS.iter().map(|d| d.name.to_string()))
                .collect(),
            (_, Some("EVALUATE")) => crate::ops::metrics::metric_names(),
            (_, Some("BASELINE")) => {
                let mut c = owned(&["zero", "mean"]);
                c.extend(datasets);
                c
            }
            (_, Some("GRANULARITY")) => owned(&["pixel", "patch(", "column"]),
            (_, Some("WINDOW")) => owned(&["rows", "cols", "channels", "columns"]),
            (_, Some("SELECT" | "WHERE" | "BY" | "HAVING" | "AND" | "OR" | "NOT" | "," | "(")) => {
                if let Some(method) = self.open_method(&tokens) {
                    return method;
                }
                let mut c = owned(COLUMNS);
                c.extend(self.tabular_columns());
                for t in self.state.tables.values() {
                    for name in t.frame.get_column_names() {
                        if !c.iter().any(|k| k == name.as_str()) {
                            c.push(name.to_string());
                        }
                    }
                }
                if matches!(last.as_deref(), Some("SELECT" | "," | "HAVING")) {
                    c.extend(owned(FUNCTIONS));
                }
                if last.as_deref() == Some("SELECT") {
                    c.push("DISTINCT".into());
                }
                c
            }
            _ => {
                if let Some(method) = self.open_method(&tokens) {
                    return method;
                }
                owned(KEYWORDS)
            }
        }
    }

    /// The tables a FROM may read here: the WITH names written so far in the statement
    /// (`WITH name AS (`, `, name AS (`), then the session's kept tables.
    fn tables_in(&self, tokens: &[String]) -> Vec<String> {
        let mut out: Vec<String> = tokens
            .windows(4)
            .filter(|w| {
                (w[0].eq_ignore_ascii_case("WITH") || w[0] == ",") && w[2].eq_ignore_ascii_case("AS") && w[3] == "("
            })
            .map(|w| w[1].clone())
            .collect();
        for t in self.state.tables.keys() {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    /// Inside `USING method(` or `EVALUATE metric(`: the parameters not given yet, as
    /// `name = `.
    fn open_method(&self, tokens: &[String]) -> Option<Vec<String>> {
        let open = tokens.iter().rposition(|t| t == "(")?;
        if tokens[open..].iter().any(|t| t == ")") || open < 2 {
            return None;
        }
        // A method after USING, or a metric of an EVALUATE list (after EVALUATE or a comma
        // that follows one).
        let params = if tokens[open - 2].eq_ignore_ascii_case("USING") {
            crate::ops::method_info(&tokens[open - 1])?.params
        } else if (tokens[open - 2].eq_ignore_ascii_case("EVALUATE") || tokens[open - 2] == ",")
            && tokens[..open].iter().any(|t| t.eq_ignore_ascii_case("EVALUATE"))
        {
            crate::ops::metrics::metric_info(&tokens[open - 1])?.params
        } else {
            return None;
        };
        // After `name =` a value comes, not a parameter.
        if tokens.last().is_some_and(|t| t == "=") {
            return Some(Vec::new());
        }
        let given: Vec<&String> = tokens[open..].iter().collect();
        Some(
            params
                .iter()
                .filter(|p| !given.iter().any(|g| g.eq_ignore_ascii_case(p.name)))
                .map(|p| format!("{} = ", p.name))
                .collect(),
        )
    }

    /// The layers of the model called in the statement (the last `m(` before the cursor),
    /// or of every loaded model.
    fn layers_of(&self, tokens: &[String]) -> Vec<String> {
        let called = tokens
            .windows(2)
            .rev()
            .find(|w| w[1] == "(" && self.model(&w[0]).is_some())
            .map(|w| w[0].clone());
        let names: Vec<String> = match called {
            Some(m) => vec![m],
            None => self.model_names(),
        };
        let mut out = Vec::new();
        for n in names {
            if let Some(m) = self.model(&n) {
                // Module names (aliases of ONNX nodes) too; a name that is not a bare or
                // dotted identifier is offered in quotes.
                for l in m.layer_names().into_iter().chain(m.aliases.keys().cloned()) {
                    let plain = l.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
                    let shown = if plain { l } else { format!("\"{l}\"") };
                    if !out.contains(&shown) {
                        out.push(shown);
                    }
                }
            }
        }
        out
    }

    /// The column names of the loaded tabular datasets.
    fn tabular_columns(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in self.dataset_names() {
            if let Some(crate::data::Modality::Tabular { columns }) =
                self.state.dataset(&d).ok().map(|d| d.modality.clone())
            {
                for c in columns {
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
            }
        }
        out
    }
}

/// The files and folders whose path starts with `partial` (relative to the current
/// directory, as the statement's paths are), as (where the last path component starts,
/// candidates); a folder ends in `/` so that the next Tab goes into it. Hidden entries
/// only when the component starts with a dot.
fn complete_path(partial: &str, offset: usize) -> (usize, Vec<String>) {
    let (dir, prefix) = match partial.rfind('/') {
        Some(slash) => (&partial[..slash + 1], &partial[slash + 1..]),
        None => ("", partial),
    };
    let listing = match std::fs::read_dir(if dir.is_empty() { "." } else { dir }) {
        Ok(entries) => entries,
        Err(_) => return (offset + dir.len(), Vec::new()),
    };
    let mut out: Vec<String> = listing
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with(prefix) || (name.starts_with('.') && !prefix.starts_with('.')) {
                return None;
            }
            Some(if e.path().is_dir() { format!("{name}/") } else { name })
        })
        .collect();
    out.sort();
    (offset + dir.len(), out)
}

/// Words and punctuation of a statement, skipping strings and comments (enough to see
/// what comes before the cursor).
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut w = String::from(c);
            while let Some(&n) = chars.peek() {
                if n.is_alphanumeric() || n == '_' {
                    w.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(w);
        } else if c == '\'' {
            for n in chars.by_ref() {
                if n == '\'' {
                    break;
                }
            }
            out.push("'…'".into());
        } else if c == '-' && chars.peek() == Some(&'-') {
            for n in chars.by_ref() {
                if n == '\n' {
                    break;
                }
            }
        } else if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    out
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
