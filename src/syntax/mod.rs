//! Stage 1: text → syntax tree. `parse` is the entry point.

pub mod ast;
mod parser;

pub use parser::parse_script as parse;
