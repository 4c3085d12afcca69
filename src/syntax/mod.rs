//! Stage 1: text → syntax tree. `parse` is the entry point.

pub mod ast;
mod parser;

pub use parser::STATEMENT_WORDS;
pub use parser::parse_script as parse;

/// Every keyword of the grammar (highlighted by the shell and the web page), read from the
/// grammar itself (its `kw_x = @{ ^"x" … }` rules), so that a new keyword needs no second
/// list.
pub static KEYWORDS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    include_str!("../../grammar/iql.pest")
        .lines()
        .filter(|l| l.starts_with("kw_"))
        .filter_map(|l| l.split('"').nth(1))
        .collect()
});
