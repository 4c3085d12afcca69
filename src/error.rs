//! Errors are data until the edge: a kind, a message, the span of query text they come
//! from (if any) and hints. `render` turns one into the text a user sees, with the line
//! and a caret under the span.
#![warn(missing_docs)]

use std::fmt;

/// A byte range in the text of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The bytes `start..end`.
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// What went wrong, broadly (shown as `error[kind]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text does not parse.
    Syntax,
    /// A name (model, dataset, layer, column, method, parameter, variable) is unknown or taken.
    Name,
    /// A parameter or literal is out of its accepted range or of the wrong type.
    Value,
    /// Shapes do not fit (data vs model, weights vs architecture, windows vs inputs).
    Shape,
    /// A model file or architecture is unreadable or inconsistent.
    Model,
    /// A data file is unreadable or holds values the engine refuses (NaN, wrong dtype).
    Data,
    /// Reading or writing a file failed.
    Io,
    /// The relational part of a query failed (types, expressions).
    Query,
    /// The statement was cancelled by the user.
    Cancelled,
}

impl ErrorKind {
    /// The word shown in `error[…]`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "syntax",
            ErrorKind::Name => "name",
            ErrorKind::Value => "value",
            ErrorKind::Shape => "shape",
            ErrorKind::Model => "model",
            ErrorKind::Data => "data",
            ErrorKind::Io => "io",
            ErrorKind::Query => "query",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

/// An error of any stage: what went wrong, where in the query text, and what would help.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// Its kind.
    pub kind: ErrorKind,
    /// What was wrong, in one sentence.
    pub message: String,
    /// Where in the statement's text, when it comes from the text.
    pub span: Option<Span>,
    /// What would be accepted, or a close name ("did you mean").
    pub hints: Vec<String>,
}

/// The result of every fallible operation of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            span: None,
            hints: Vec::new(),
        }
    }
    /// The text does not parse.
    pub fn syntax(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Syntax, message)
    }
    /// A name is unknown or taken.
    pub fn name(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Name, message)
    }
    /// A value is out of range or of the wrong type.
    pub fn value(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Value, message)
    }
    /// Shapes do not fit.
    pub fn shape(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Shape, message)
    }
    /// A model file or architecture is unusable.
    pub fn model(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Model, message)
    }
    /// A data file is unusable.
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Data, message)
    }
    /// Reading or writing a file failed.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }
    /// The relational part of a query failed.
    pub fn query(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Query, message)
    }
    /// The statement was stopped by the user (Ctrl-C).
    pub fn cancelled() -> Self {
        Self::new(
            ErrorKind::Cancelled,
            "statement cancelled (Ctrl-C); the session is as it was",
        )
    }

    /// Attaches a span unless the error already has a more precise one.
    pub fn at(mut self, span: Span) -> Self {
        if self.span.is_none() {
            self.span = Some(span);
        }
        self
    }
    /// Adds a hint (what would be accepted).
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }

    /// An "unknown X" error with a "did you mean" hint and the list of known names.
    pub fn unknown(what: &str, name: &str, known: &[String], known_label: &str) -> Self {
        let mut err = Error::name(format!("unknown {what} `{name}`"));
        if let Some(close) = closest(name, known) {
            err = err.hint(format!("did you mean `{close}`?"));
        }
        if known.is_empty() {
            err.hint(format!("there are no {known_label} yet"))
        } else {
            err.hint(format!("{known_label}: {}", list_names(known, 12)))
        }
    }

    /// Renders the error for a human: message, location, the source line with a caret,
    /// and hints. `origin` names the text (a file name, or `<command>`).
    pub fn render(&self, source: &str, origin: &str) -> String {
        let mut out = format!("error[{}]: {}", self.kind.label(), self.message);
        if let Some(span) = self.span.filter(|s| s.start <= source.len()) {
            // Spans are byte offsets; snap them to character boundaries before slicing.
            let start = snap(source, span.start, false);
            let end = snap(source, span.end.max(span.start), true);
            let (line_no, col, line_text) = locate(source, start);
            let gutter = line_no.to_string().len();
            let line_text = line_text.trim_end_matches('\r');
            let col = col.min(line_text.len());
            let caret_start = line_text[..col].chars().count();
            let caret_end = (col + (end - start)).min(line_text.len());
            let caret_len = line_text[col..snap(line_text, caret_end, true)].chars().count().max(1);
            let (shown, caret_at, caret_len) = clip_line(line_text, caret_start, caret_len);
            out.push_str(&format!(
                "\n{pad}--> {origin}:{line_no}:{}\n{pad} |\n{line_no} | {shown}\n{pad} | {}{}",
                caret_start + 1,
                " ".repeat(caret_at),
                "^".repeat(caret_len),
                pad = " ".repeat(gutter),
            ));
        }
        for hint in &self.hints {
            out.push_str(&format!("\n  = help: {hint}"));
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        for hint in &self.hints {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<polars::prelude::PolarsError> for Error {
    fn from(err: polars::prelude::PolarsError) -> Self {
        Error::query(polars_message(&err))
    }
}

impl From<candle_core::Error> for Error {
    fn from(err: candle_core::Error) -> Self {
        Error::model(err.to_string())
    }
}

/// Polars prefixes its messages with a kind and sometimes appends a long
/// "this error occurred with the following context" trailer; keep the first line.
fn polars_message(err: &polars::prelude::PolarsError) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    first.to_string()
}

/// Characters of a source line shown around the caret: a statement of a few lines shows
/// whole, a megabyte-long generated line does not flood the terminal.
const SHOWN_CHARS: usize = 160;

/// The part of `line` shown with the caret (at char `caret`, `len` chars long): the whole
/// line when short, else a window from up to 60 chars before the caret, cut ends marked
/// with `…`; returns the text, the caret's column in it and its (capped) length.
fn clip_line(line: &str, caret: usize, len: usize) -> (String, usize, usize) {
    let count = line.chars().count();
    if count <= SHOWN_CHARS {
        return (line.to_string(), caret, len);
    }
    let from = caret.saturating_sub(60).min(count.saturating_sub(SHOWN_CHARS));
    let to = (from + SHOWN_CHARS).min(count);
    let mut shown: String = if from > 0 { "…".into() } else { String::new() };
    let lead = usize::from(from > 0);
    shown.extend(line.chars().skip(from).take(to - from));
    if to < count {
        shown.push('…');
    }
    let at = caret - from + lead;
    (shown, at, len.min(to.saturating_sub(caret)).max(1))
}

/// The nearest character boundary at or before (or, with `up`, at or after) `offset`.
fn snap(text: &str, offset: usize, up: bool) -> usize {
    let mut i = offset.min(text.len());
    while !text.is_char_boundary(i) {
        if up { i += 1 } else { i -= 1 }
    }
    i
}

/// 1-based line number, 0-based byte column, and the text of the line holding `offset`.
pub fn locate(source: &str, offset: usize) -> (usize, usize, &str) {
    let offset = snap(source, offset, false);
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[offset..].find('\n').map_or(source.len(), |i| offset + i);
    let line_no = source[..line_start].matches('\n').count() + 1;
    (line_no, offset - line_start, &source[line_start..line_end])
}

/// "no such file: p": a relative path says what it was relative to (the current
/// directory, which is not always the one the user thinks), and a file of a close name
/// in the same folder is suggested.
pub fn missing_file(path: &std::path::Path, what: &str) -> Error {
    let shown = if path.is_relative() {
        match std::env::current_dir() {
            Ok(cwd) => format!("{what}: {} (relative to {})", path.display(), cwd.display()),
            Err(_) => format!("{what}: {}", path.display()),
        }
    } else {
        format!("{what}: {}", path.display())
    };
    let mut err = Error::io(shown);
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    let listing = std::fs::read_dir(folder.unwrap_or(std::path::Path::new(".")));
    if let (Some(name), Ok(entries)) = (path.file_name().and_then(|n| n.to_str()), listing) {
        let names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        if let Some(guess) = closest(name, &names) {
            let guess = folder.map_or(std::path::PathBuf::from(guess), |f| f.join(guess));
            err = err.hint(format!("did you mean {}?", guess.display()));
        }
    }
    err
}

/// The known name closest to `name` by edit distance, if close enough to be a likely typo.
pub fn closest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let lower = name.to_lowercase();
    // the same name in other letter case is the best guess of all
    if let Some(k) = known.iter().find(|k| k.to_lowercase() == lower && k.as_str() != name) {
        return Some(k.as_str());
    }
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_lowercase()), k))
        .filter(|(d, k)| {
            let k = k.to_lowercase();
            // a typo of about one letter in three, or a name cut short or run on
            *d > 0
                && (*d <= k.chars().count().max(lower.chars().count()).div_ceil(3)
                    || k.starts_with(&lower)
                    || lower.starts_with(&k))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// A comma-separated list, shortened to `max` names with a count of the rest.
pub fn list_names(names: &[String], max: usize) -> String {
    if names.len() <= max {
        names.join(", ")
    } else {
        format!("{}, … ({} more)", names[..max].join(", "), names.len() - max)
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_caret_under_span() {
        let src = "LOAD DATA d FROM 'x.npy';\nSELECT foo FROM m(d);";
        let start = src.find("foo").unwrap();
        let err = Error::name("unknown column `foo`")
            .at(Span::new(start, start + 3))
            .hint("did you mean `row`?");
        let text = err.render(src, "q.iql");
        assert_eq!(
            text,
            "error[name]: unknown column `foo`\n --> q.iql:2:8\n  |\n2 | SELECT foo FROM m(d);\n  |        ^^^\n  = help: did you mean `row`?"
        );
    }

    #[test]
    fn carets_survive_any_span() {
        let src = "SELECT é, 😀 FROM\nm(d);";
        for start in 0..src.len() + 3 {
            for end in start..src.len() + 3 {
                let _ = Error::syntax("x").at(Span::new(start, end)).render(src, "t");
            }
        }
        let at = src.find('😀').unwrap();
        let text = Error::syntax("x").at(Span::new(at, at + 1)).render(src, "t");
        assert!(text.contains(" --> t:1:11\n"), "{text}");
        assert!(text.ends_with("|           ^"), "{text}");
    }

    #[test]
    fn closest_names() {
        let known: Vec<String> = ["conv1", "conv2", "relu1", "fc1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(closest("conv3", &known), Some("conv1"));
        assert_eq!(closest("fc", &known), Some("fc1"));
        assert_eq!(closest("zzzzzz", &known), None);
        assert_eq!(closest("CONV1", &known), Some("conv1"));
    }

    /// A megabyte-long line is shown as a window around the caret, its cut ends marked;
    /// the column in the `-->` line stays the true one; short lines show whole.
    #[test]
    fn long_lines_are_clipped_around_the_caret() {
        let source = format!("SELECT {} FROM nowhere", "x, ".repeat(500_000));
        let at = source.find("nowhere").unwrap();
        let err = Error::name("unknown dataset `nowhere`").at(Span {
            start: at,
            end: at + "nowhere".len(),
        });
        let text = err.render(&source, "q");
        assert!(text.len() < 1000, "{} bytes of error", text.len());
        assert!(text.contains(&format!("q:1:{}", at + 1)), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let (shown, caret) = (lines[3], lines[4]);
        assert!(shown.contains("…x, x, ") && shown.ends_with("nowhere"), "{shown}");
        // The caret sits under the name (both lines share the gutter).
        let col = caret.find('^').unwrap();
        assert_eq!(shown.chars().skip(col).take(7).collect::<String>(), "nowhere");
        let short = Error::name("x")
            .at(Span { start: 7, end: 8 })
            .render("SELECT y FROM z", "q");
        assert!(short.contains("1 | SELECT y FROM z\n  |        ^"), "{short}");
    }
}
