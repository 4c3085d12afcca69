//! The interactive shell: rustyline, a statement read line by line until its `;` with a
//! continuation prompt (`iql-> `, as psql's), a statement that does not parse reported
//! before it runs and kept to be fixed (the error stays under it until the line changes),
//! tab completion asked of the engine (`Session::complete`: names, keywords, file paths
//! inside quotes), syntax highlighting, a hint, history in the user's data directory, and
//! backslash meta-commands.

use std::borrow::Cow;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::{Hint, Hinter};
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};

use super::Runner;
use crate::exec::Session;
use crate::output::Format;

/// The editor's helper. It holds the session while a line is read (so completion sees
/// the loaded models, data and layers) and hands it back before the line runs.
struct IqlHelper {
    session: Option<Session>,
    /// A terminal keeps a statement that does not parse in the editor, to be fixed;
    /// piped input runs it (and reports its error), or every later line would join it.
    interactive: bool,
    /// The lines of the statement read so far (the line being edited continues them):
    /// completion and the parse check see the whole statement.
    pending: String,
    /// The last line refused for a syntax error, and the error: shown under it until the
    /// line changes.
    refused: std::cell::RefCell<Option<(String, String)>>,
}

impl IqlHelper {
    /// The statement so far with `line` as its last line, and where `line` starts in it.
    fn whole(&self, line: &str) -> (String, usize) {
        if self.pending.is_empty() {
            (line.to_string(), 0)
        } else {
            (format!("{}\n{line}", self.pending), self.pending.len() + 1)
        }
    }
}

/// A hint: the rest of the only completion (→ accepts it), or the error of a refused
/// line (shown, never inserted).
enum IqlHint {
    Completion(String),
    Error(String),
}

impl Hint for IqlHint {
    fn display(&self) -> &str {
        match self {
            IqlHint::Completion(s) | IqlHint::Error(s) => s,
        }
    }
    fn completion(&self) -> Option<&str> {
        match self {
            IqlHint::Completion(s) => Some(s),
            IqlHint::Error(_) => None,
        }
    }
}

impl Helper for IqlHelper {}

impl Completer for IqlHelper {
    type Candidate = Pair;
    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        if line.trim_start().starts_with('\\') {
            return Ok((pos, Vec::new()));
        }
        let Some(session) = &self.session else {
            return Ok((pos, Vec::new()));
        };
        // Completed in the whole statement (a model named lines ago decides the layers).
        let (whole, offset) = self.whole(line);
        let (start, words) = session.complete(&whole, offset + pos);
        let start = start.saturating_sub(offset);
        let pairs = words
            .into_iter()
            .map(|w| Pair {
                display: w.clone(),
                replacement: w,
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for IqlHelper {
    type Hint = IqlHint;
    /// The error of a refused line while it is unchanged; else the rest of the only
    /// completion, when there is exactly one and the cursor is at the end of a word.
    fn hint(&self, line: &str, pos: usize, _: &Context<'_>) -> Option<IqlHint> {
        if let Some((refused, error)) = self.refused.borrow().as_ref()
            && refused == line
        {
            return Some(IqlHint::Error(format!("\n{error}")));
        }
        let session = self.session.as_ref()?;
        if pos < line.len() || line.ends_with(char::is_whitespace) || line.trim_start().starts_with('\\') {
            return None;
        }
        let (whole, offset) = self.whole(line);
        let (start, words) = session.complete(&whole, offset + pos);
        let start = start.saturating_sub(offset);
        match words.as_slice() {
            [only] if pos > start => only.get(pos - start..).map(|s| IqlHint::Completion(s.to_string())),
            _ => None,
        }
    }
}

impl Highlighter for IqlHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        Cow::Owned(highlight(line))
    }
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        // A refused line's error (it starts on a line of its own) in red, a completion dim.
        if hint.starts_with('\n') {
            Cow::Owned(format!("\x1b[31m{hint}\x1b[0m"))
        } else {
            Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
        }
    }
    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        true
    }
}

impl Validator for IqlHelper {
    /// Enter hands the line to the loop — which reads the next line of an unfinished
    /// statement under the continuation prompt — unless it completes a statement that
    /// does not parse with the error in this line: then the line stays to be fixed, its
    /// error under it. (An error in an earlier line is reported by the loop, which offers
    /// the whole statement again.)
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        let (whole, offset) = self.whole(ctx.input());
        if !self.interactive || !statement_complete(&whole) {
            return Ok(ValidationResult::Valid(None));
        }
        Ok(match crate::syntax::parse(&whole) {
            Err(e) if !whole.trim_start().starts_with('\\') && e.span.is_none_or(|s| s.start >= offset) => {
                let shown = e.render(&whole, "<input>").trim_end().to_string();
                *self.refused.borrow_mut() = Some((ctx.input().to_string(), shown.clone()));
                ValidationResult::Invalid(Some(format!("\n{shown}")))
            }
            _ => ValidationResult::Valid(None),
        })
    }
}

/// A complete input that does not parse gives the error, caret and all, so it can be
/// fixed before it runs. Meta-commands are not parsed.
pub fn check_input(input: &str) -> Result<(), String> {
    if input.trim_start().starts_with('\\') {
        return Ok(());
    }
    crate::syntax::parse(input)
        .map(|_| ())
        .map_err(|e| e.render(input, "<input>").trim_end().to_string())
}

use crate::syntax::KEYWORDS;

/// The line with ANSI colours: keywords bold blue, strings green, numbers cyan, comments
/// and variables dim/magenta. Only colours are added, so the text is unchanged.
pub fn highlight(line: &str) -> String {
    const KEYWORD: &str = "\x1b[1;34m";
    const STRING: &str = "\x1b[32m";
    const NUMBER: &str = "\x1b[36m";
    const COMMENT: &str = "\x1b[2m";
    const VARIABLE: &str = "\x1b[35m";
    const RESET: &str = "\x1b[0m";
    let mut out = String::with_capacity(line.len() + 16);
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut i = 0;
    let end_of = |k: usize| chars.get(k).map_or(line.len(), |(b, _)| *b);
    while i < chars.len() {
        let (at, c) = chars[i];
        let mut j = i + 1;
        let style = if c == '-' && chars.get(i + 1).is_some_and(|(_, n)| *n == '-') {
            while j < chars.len() && chars[j].1 != '\n' {
                j += 1;
            }
            Some(COMMENT)
        } else if c == '\'' {
            while j < chars.len() && chars[j].1 != '\'' {
                j += 1;
            }
            j = (j + 1).min(chars.len());
            Some(STRING)
        } else if c.is_ascii_digit() {
            while j < chars.len() && (chars[j].1.is_ascii_alphanumeric() || chars[j].1 == '.') {
                j += 1;
            }
            Some(NUMBER)
        } else if c.is_alphabetic()
            || c == '_'
            // `:name` is a variable; `0:2` a slice
            || (c == ':' && chars.get(j).is_some_and(|(_, n)| n.is_alphabetic() || *n == '_'))
        {
            while j < chars.len() && (chars[j].1.is_alphanumeric() || chars[j].1 == '_') {
                j += 1;
            }
            let word = &line[at..end_of(j)];
            if c == ':' {
                Some(VARIABLE)
            } else if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word)) {
                Some(KEYWORD)
            } else {
                None
            }
        } else {
            None
        };
        let text = &line[at..end_of(j)];
        match style {
            Some(s) => {
                out.push_str(s);
                out.push_str(text);
                out.push_str(RESET);
            }
            None => out.push_str(text),
        }
        i = j;
    }
    out
}

/// Input is complete when it is a meta-command or ends with `;` outside strings and comments.
pub fn statement_complete(input: &str) -> bool {
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed.starts_with('\\') {
        return true;
    }
    let mut last_significant = None;
    let mut chars = input.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            if c == '\'' {
                in_string = false;
            }
            last_significant = Some(c);
            continue;
        }
        match c {
            '\'' => {
                in_string = true;
                last_significant = Some(c);
            }
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            c if c.is_whitespace() => {}
            c => last_significant = Some(c),
        }
    }
    !in_string && last_significant == Some(';')
}

/// The meta-commands; `\help` is generated from this table.
const META: &[(&str, &str)] = &[
    ("\\q", "quit (Ctrl-D does too)"),
    ("\\help [topic]", "this list, or help on a statement, clause or method"),
    ("\\models", "loaded models (SHOW MODELS)"),
    ("\\data", "loaded datasets (SHOW DATA)"),
    ("\\methods", "attribution methods (SHOW METHODS)"),
    ("\\layers m", "the layers of model m (SHOW LAYERS OF m)"),
    ("\\cache", "the activation cache (SHOW CACHE)"),
    ("\\timing on|off", "print each statement's wall time"),
    ("\\format table|csv|json", "how results print"),
    ("\\i file.iql", "run a script file"),
];

/// Statements and clauses `\\help topic` explains (methods come from the engine's table).
const TOPICS: &[(&str, &str)] = &[
    (
        "LOAD",
        "LOAD MODEL m FROM 'weights.safetensors' ARCH 'arch.json';  (or .pth)\nLOAD DATA d FROM 'x.npy' [LABELS 'y.npy'];  LOAD DATA t FROM 't.csv' LABEL COLUMN c;  (or .parquet)\nLOAD DATA d FROM 'x.npy' SHAPE (1, 8, 8) [LABELS …];  each input's values read as that shape (an (N, 64) array, 64 pixel columns)\nLOAD MODEL m FROM 'final.safetensors' ARCH 'm.json' CHECKPOINTS ('e1.safetensors' RATE 0.1, …);  earlier weights for TracInCP (INFLUENCE)",
    ),
    ("SHOW", "SHOW MODELS | DATA | METHODS | LAYERS OF m | CACHE | SETTINGS;"),
    (
        "CONCEPT",
        "CONCEPT name = d[…] [WITH …];  a set of examples of a concept (a dataset, as LET), for TCAV:\nSELECT * FROM TCAV m(d) AT LAYER l CONCEPTS (name, …) [RANDOM n] [TARGET k];  columns concept, layer, target, tcav_score, random_score, p_value\n(Captum's TCAV: a logistic-regression CAV per concept against each of n random sets of d (default 10), the score the fraction of d's inputs\nwhose target output grows along it, p from a t-test against random-vs-random CAVs; SET seed draws other random sets)",
    ),
    (
        "SET",
        "SET name = value;  settings: method, steps, seed, batch_size, memory_mb, cache_mb, allow_nonfinite (SHOW SETTINGS)",
    ),
    (
        "VAR",
        "VAR name = default;  then :name wherever a literal may stand; ialg run f.iql --var name=value overrides",
    ),
    (
        "LET",
        "LET name = d[a:b] [WITH …];  a derived dataset; it keeps the input ids of its origin\nLET adv = ATTACK pgd(eps = 0.1, steps = 20) ON m(d[0:100]) [TARGET k];  see \\help ATTACK\nLET v = VISUALIZE m AT LAYER l CHANNEL k (steps = 512);  see \\help VISUALIZE\nLET t = (SELECT …);  a table kept in the session: FROM t, JOIN t, IN (SELECT … FROM t), EXPORT t TO 't.csv'; SHOW DATA lists it",
    ),
    (
        "VISUALIZE",
        "LET v = VISUALIZE m AT LAYER l CHANNEL k | AT LAYER l UNIT (c, r, k) | TARGET k [(steps = 512, lr = 0.05, seed, lower = 0, upper = 1, param = auto|fourier|pixel, normalize = none|imagenet, decorrelate = true, transforms = true from 32×32, jitter = 8, scale = 0.1, rotate = 10, diversity = 1, diversity_weight = 10, init = 'spectrum.npy')];\nfeature visualization (Lucid/Lucent): Adam ascent on a channel's mean, a unit or a class logit; images of 32×32 and up as a 1/f Fourier spectrum with decorrelated colour, smaller inputs as pixels, through a sigmoid into [lower, upper]; random shifts, scales and rotations each step; diversity = n images pushed apart by Gram-matrix similarity. The images are a dataset: query m(v), EXPORT v TO 'v.png' or 'v.npy'; written in place of a dataset (m(VISUALIZE …)) they are made for that statement only",
    ),
    (
        "ATTACK",
        "LET adv = ATTACK fgsm(eps[, lower, upper]) | pgd(eps, steps = 10, step_size = 2.5·eps/steps, random_start = false, seed, lower, upper) ON m(d) [TARGET k];\nCaptum's L∞ attacks on the cross-entropy: away from each input's label, or towards class k; clamped to the data's range unless lower/upper",
    ),
    (
        "WITH",
        "WITH a AS (SELECT …), b AS (SELECT … FROM a) SELECT … FROM b  — named results for one query: each computed once, read by later ones, the query and its subqueries\nd WITH SET rows a:b, cols c:d = v | WITH SET column = v | WITH MASK <window> | WITH NOISE(stdev[, seed]) | WITH BLUR(sigma)  — input edits\nm(d WITH LAYER l[i, …] = v | WITH LAYER l SCALE s | WITH LAYER l FROM d[k])  — activation edits: indices fix the leading axes (conv2[3] = channel 3); FROM patches in one input's activations (in PREDICT, FROM d[a:b] pairs donor i with input i)",
    ),
    (
        "OVER",
        "row_number() | rank() | dense_rank() OVER ([PARTITION BY e, …] ORDER BY e [DESC])  and  sum | mean | min | max | count(…) OVER (PARTITION BY …)  — window functions; filter on them in an outer query",
    ),
    (
        "IN",
        "x IN (1, 2, 3)  |  x IN (SELECT input FROM …)  |  (SELECT max(x) FROM …) as a value  — subqueries run before the query that holds them",
    ),
    (
        "SELECT",
        "SELECT [DISTINCT] exprs FROM m(d) [clauses] [WHERE …] [GROUP BY …] [HAVING …] [ORDER BY … [DESC]] [LIMIT n [OFFSET k]];",
    ),
    (
        "PREDICT",
        "PREDICT m(d) [TOP k];  one row per input: input, label, prediction, confidence, correct, logit_0…, [top1, top1_confidence, …]\nPREDICT m(x) AS before JOIN PREDICT m(y) AS after  — side by side with prediction_changed, confidence_change, logit_k_change",
    ),
    (
        "EXPORT",
        "EXPORT query TO 'f.csv' | 'f.parquet' | 'f.json' | 'f.png' [OVERWRITE];  EXPORT REPORT query TO 'f.html';",
    ),
    (
        "PLAN",
        "PLAN query;  the optimized plan, the rules that rewrote it, and what the caches will serve",
    ),
    (
        "USING",
        "USING method(name = value, …);  \\methods lists the methods, \\help method its parameters",
    ),
    (
        "TARGET",
        "TARGET PREDICTED (default) | LABEL | k | layer[i] | layer[c, r, k]  — the output explained",
    ),
    (
        "BASELINE",
        "BASELINE zero (default) | mean | mean(d) | 0.5 | d[i] | d[a:b]",
    ),
    (
        "WINDOW",
        "WINDOW rows a:b, cols c:d[, channels e:f]  or  WINDOW columns name, 'other', 3:6  — only these features are attributed; the rest stay as they are",
    ),
    (
        "GRANULARITY",
        "GRANULARITY pixel | patch(k) | column  — features grouped; gradient methods sum a group, perturbation methods perturb it together",
    ),
    (
        "AT LAYER",
        "m(d) AT LAYER l USING gradcam | layer_activation | layer_gradient_x_activation | layer_conductance | layer_integrated_gradients — a row per unit of l\nm(d) AT LAYER * USING …  — every layer, stacked (column layer)",
    ),
    (
        "THROUGH LAYER",
        "m(d) THROUGH LAYER l | *  — the model cut after l with a fitted linear probe; columns layer, probe_accuracy",
    ),
    (
        "JOIN",
        "a JOIN b [clauses]  — two interpretations on the same features; a.attribution, b.attribution, attribution = their mean\nt1 [AS a] JOIN t2 [AS b] USING (input) | ON a.input = b.input [AND …]  — tables (WITH names, LET tables, subqueries; a PREDICT on the right) joined on equal columns: an inner join keeping the left's order",
    ),
    (
        "ANTIJOIN",
        "a ANTIJOIN b [clauses]  — each side explained against the other as baseline; two models: the difference of their outputs",
    ),
];

/// Help on one topic: a statement, a clause, or a method with its parameters.
pub fn help_topic(topic: &str) -> Result<String, crate::error::Error> {
    let mut normal = topic.split_whitespace().collect::<Vec<_>>().join(" ").to_uppercase();
    if normal == "TCAV" || normal == "CONCEPTS" {
        // TCAV's help lives with the statement that names its concepts.
        normal = "CONCEPT".to_string();
    }
    if let Some((name, text)) = TOPICS.iter().find(|(n, _)| *n == normal) {
        return Ok(format!("{name}\n  {}\n", text.replace('\n', "\n  ")));
    }
    if normal == "INFLUENCE" || normal == "TRACIN" {
        return Ok("INFLUENCE\n  SELECT … FROM INFLUENCE OF m(train) ON m(test) [USING tracin(layers = 'last' | 'all' | 'fc1,fc2', normalize = false)] [TARGET k | LABEL];\n  TracIn (Pruthi et al. 2020) on the loaded weights: for each training sample z (at its label) and test input z′\n  (at its prediction, or TARGET), ∇θ loss(z) · ∇θ loss(z′), θ the weights and biases of the layers (default: the\n  last linear layer; 'all': every linear and convolution layer); normalize = true: their cosine.\n  Columns: input (the training id), label, test_input, influence. ON m(train) with the training set itself:\n  each sample's self-influence (its gradient's squared norm; mislabelled and poisoned samples rank high).\n".to_string());
    }
    if normal == "EVALUATE" {
        let mut out = String::from(
            "EVALUATE\n  SELECT … FROM m(d) USING method EVALUATE metric[(p = v, …)][, …];  a row per input and metric:\n  input, label, prediction, target, method, metric, value (GROUP BY method to rank methods)\n",
        );
        for m in crate::ops::metrics::METRICS {
            let better = if m.higher_is_better {
                "higher is better"
            } else {
                "lower is better"
            };
            out.push_str(&format!("  {} — {} ({better})\n", m.name, m.summary));
        }
        out.push_str("  \\help <metric> for its parameters and definition\n");
        return Ok(out);
    }
    if let Some(d) = crate::ops::detect::detector_info(topic) {
        let mut out = format!(
            "{} — {} (as {})\n  SELECT input, label, class, score FROM m(train) USING {}(…) AT LAYER l;\n",
            d.name, d.summary, d.reference, d.name
        );
        for p in d.params {
            out.push_str(&format!("  {} = {}\n", p.name, p.default.unwrap_or("required")));
        }
        return Ok(out);
    }
    if let Some(m) = crate::ops::metrics::metric_info(topic) {
        let better = if m.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let mut out = format!("{} — {} ({better}; as {})\n", m.name, m.summary, m.reference);
        for p in m.params {
            out.push_str(&format!("  {} = {}\n", p.name, p.default.unwrap_or("required")));
        }
        if m.params.is_empty() {
            out.push_str("  (no parameters)\n");
        }
        return Ok(out);
    }
    if let Some(m) = crate::ops::method_info(topic) {
        let mut out = format!("{} — {} (as {})\n", m.name, m.summary, m.reference);
        for p in m.params {
            let default = p.default.unwrap_or("required");
            out.push_str(&format!("  {} = {default}\n", p.name));
        }
        if m.params.is_empty() {
            out.push_str("  (no parameters)\n");
        }
        return Ok(out);
    }
    let mut known: Vec<String> = TOPICS.iter().map(|(n, _)| n.to_string()).collect();
    known.extend(crate::ops::method_names());
    known.push("EVALUATE".into());
    known.push("INFLUENCE".into());
    known.extend(crate::ops::detect::DETECTORS.iter().map(|d| d.name.to_string()));
    known.extend(crate::ops::metrics::metric_names());
    Err(crate::error::Error::unknown("help topic", topic, &known, "topics"))
}

fn help() -> String {
    let mut s = String::from(
        "Statements end with `;`. Examples:\n  LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';\n  LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';\n  SELECT row, col, attribution FROM cnn(digits[17]) USING integrated_gradients ORDER BY attribution DESC LIMIT 10;\n  PREDICT cnn(digits[0:5]);\nMeta-commands:\n",
    );
    for (cmd, what) in META {
        s.push_str(&format!("  {cmd:<24} {what}\n"));
    }
    let topics: Vec<&str> = TOPICS.iter().map(|(n, _)| *n).collect();
    s.push_str(&format!(
        "Help topics: {}, EVALUATE, INFLUENCE, every method (\\help integrated_gradients) and metric (\\help deletion).\n",
        topics.join(", ")
    ));
    s
}

/// Runs a meta-command; returns false to quit.
fn meta(runner: &mut Runner, line: &str) -> bool {
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or("");
    let arg = parts.next();
    let statement = |s: &str| s.to_string();
    let sql = match (cmd, arg) {
        ("\\q", _) | ("\\quit", _) => return false,
        ("\\help", Some(_)) | ("\\h", Some(_)) | ("\\?", Some(_)) => {
            let topic = line.split_once(char::is_whitespace).map_or("", |(_, t)| t.trim());
            match help_topic(topic) {
                Ok(text) => print!("{text}"),
                Err(e) => eprintln!("{}", e.render(topic, "<help>")),
            }
            return true;
        }
        ("\\help", None) | ("\\h", None) | ("\\?", None) => {
            print!("{}", help());
            return true;
        }
        ("\\models", _) => statement("SHOW MODELS;"),
        ("\\data", _) => statement("SHOW DATA;"),
        ("\\methods", _) => statement("SHOW METHODS;"),
        ("\\cache", _) => statement("SHOW CACHE;"),
        ("\\layers", Some(m)) => format!("SHOW LAYERS OF {m};"),
        ("\\timing", Some(v)) => {
            runner.timing = v.eq_ignore_ascii_case("on");
            println!("Timing is {}.", if runner.timing { "on" } else { "off" });
            return true;
        }
        ("\\format", Some(f)) => {
            match Format::parse(f) {
                Some(fmt) => {
                    runner.format = fmt;
                    println!("Output format is {f}.");
                }
                None => eprintln!("error: unknown format `{f}`: use table, csv or json"),
            }
            return true;
        }
        ("\\i", Some(path)) => {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    runner.run_text(&text, path);
                }
                Err(e) => eprintln!("error[io]: cannot read {path}: {e}"),
            }
            return true;
        }
        _ => {
            eprintln!("error: unknown or incomplete meta-command `{line}`; \\help lists them");
            return true;
        }
    };
    runner.run_text(&sql, "<meta>");
    true
}

fn history_path() -> Option<std::path::PathBuf> {
    let dir = dirs::data_dir()?.join("ialgebra");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("history.txt"))
}

/// The read-eval-print loop. Returns true (a REPL session always ends normally).
pub fn run(runner: &mut Runner) -> bool {
    // Tab completes the common part, a second Tab lists the candidates (as bash and psql do).
    let config = rustyline::Config::builder()
        .completion_type(rustyline::CompletionType::List)
        .build();
    let mut editor: Editor<IqlHelper, rustyline::history::FileHistory> = match Editor::with_config(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the shell: {e}");
            return false;
        }
    };
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    editor.set_helper(Some(IqlHelper {
        session: None,
        interactive,
        pending: String::new(),
        refused: Default::default(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "ialgebra {} — type \\help for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    );
    // The lines of an unfinished statement, and a statement offered again to be fixed.
    let mut pending = String::new();
    let mut offer: Option<String> = None;
    loop {
        // The helper holds the session while the line is read (for completion), and
        // gives it back before anything runs.
        if let Some(h) = editor.helper_mut() {
            h.session = Some(std::mem::take(&mut runner.session));
            h.pending = pending.clone();
        }
        let prompt = if pending.is_empty() { "iql> " } else { "iql-> " };
        let read = match offer.take() {
            Some(text) => editor.readline_with_initial(prompt, (&text, "")),
            None => editor.readline(prompt),
        };
        if let Some(h) = editor.helper_mut() {
            if let Some(session) = h.session.take() {
                runner.session = session;
            }
            *h.refused.borrow_mut() = None;
        }
        match read {
            Ok(line) => {
                if pending.is_empty() && line.trim().is_empty() {
                    continue;
                }
                if pending.is_empty() && line.trim_start().starts_with('\\') {
                    let text = line.trim();
                    let _ = editor.add_history_entry(text);
                    if !meta(runner, text) {
                        break;
                    }
                    continue;
                }
                let text = if pending.is_empty() {
                    line
                } else {
                    format!("{pending}\n{line}")
                };
                if !statement_complete(&text) {
                    pending = text;
                    continue;
                }
                pending.clear();
                let text = text.trim().to_string();
                let _ = editor.add_history_entry(&text);
                // At a terminal, a statement that does not parse (its error in an earlier
                // line) is reported and offered again whole, to be fixed.
                if interactive && let Err(shown) = check_input(&text) {
                    eprintln!("{shown}");
                    offer = Some(text);
                    continue;
                }
                runner.run_text(&text, "<input>");
            }
            // Ctrl-C drops the statement being typed.
            Err(ReadlineError::Interrupted) => pending.clear(),
            Err(ReadlineError::Eof) => {
                // Piped input may end without the last `;`.
                if !pending.trim().is_empty() {
                    runner.run_text(pending.trim(), "<input>");
                }
                break;
            }
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        }
    }
    if let Some(h) = &history
        && let Err(e) = editor.save_history(h)
    {
        eprintln!("warning: could not save history to {}: {e}", h.display());
    }
    true
}

#[cfg(test)]
mod tests {

    /// The hand-kept lists follow the grammar: every statement's first word has a
    /// completion and a `\help` topic.
    #[test]
    fn every_statement_has_completion_and_help() {
        for word in crate::syntax::STATEMENT_WORDS {
            assert!(
                crate::exec::complete::STATEMENTS.iter().any(|s| s.starts_with(word)),
                "{word} is not offered at the start of a statement"
            );
            assert!(help_topic(word).is_ok(), "\\help {word} says nothing");
        }
    }

    #[test]
    fn keywords_are_highlighted() {
        for word in ["select", "with", "shape", "antijoin", "visualize"] {
            assert!(KEYWORDS.contains(&word), "keyword `{word}` is not highlighted");
        }
        assert!(highlight("SELECT x FROM t").contains("\x1b["));
    }

    use super::{KEYWORDS, check_input, help_topic, highlight, statement_complete};

    #[test]
    fn help_on_topics_and_methods() {
        assert!(help_topic("at  layer").unwrap().contains("gradcam"));
        assert!(help_topic("export").unwrap().contains("EXPORT REPORT"));
        let ig = help_topic("integrated_gradients").unwrap();
        assert!(ig.contains("steps = 50") && ig.contains("rule = gausslegendre"), "{ig}");
        let e = help_topic("granularty").unwrap_err();
        assert!(e.hints.iter().any(|h| h.contains("GRANULARITY")), "{:?}", e.hints);
    }

    #[test]
    fn highlighting_only_adds_colours() {
        let line = "SELECT row, 'a b' FROM cnn(digits[:i]) WHERE x > 2.5 -- note";
        let shown = highlight(line);
        let plain = {
            let mut out = String::new();
            let mut chars = shown.chars();
            while let Some(c) = chars.next() {
                if c == '\x1b' {
                    for n in chars.by_ref() {
                        if n == 'm' {
                            break;
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            out
        };
        assert_eq!(plain, line);
        assert!(shown.contains("\x1b[1;34mSELECT\x1b[0m"));
        assert!(shown.contains("\x1b[32m'a b'\x1b[0m"));
        assert!(shown.contains("\x1b[36m2.5\x1b[0m"));
        assert!(shown.contains("\x1b[2m-- note\x1b[0m"));
        assert!(shown.contains("\x1b[35m:i\x1b[0m"));
        assert!(!highlight("d[0:2]").contains("\x1b[35m"), "a slice is not a variable");
        assert!(
            !shown.contains("\x1b[1;34mrow"),
            "`row` is a column here, not a keyword"
        );
    }

    #[test]
    fn the_validator_reports_parse_errors_before_running() {
        assert!(check_input("SELECT * FROM m(d);").is_ok());
        assert!(check_input("\\layers cnn").is_ok());
        let e = check_input("SELECT * FRM m(d);").unwrap_err();
        assert!(e.contains("error[syntax]") && e.contains('^'), "{e}");
    }

    #[test]
    fn multi_line_until_semicolon() {
        assert!(!statement_complete("SELECT *"));
        assert!(!statement_complete("SELECT * FROM m(d) -- ends here;"));
        assert!(!statement_complete("SELECT 'a;"));
        assert!(statement_complete("SELECT *\nFROM m(d);"));
        assert!(statement_complete("SELECT * FROM m(d); -- note"));
        assert!(statement_complete("\\q"));
    }
}
