//! Query → table files (in the manner of sqllogictest): every tests/slt/*.slt runs in a
//! fresh session. Records are separated by blank lines:
//!
//! ```text
//! statement ok
//! LOAD MODEL cnn FROM '…' ARCH '…';
//!
//! statement error unknown column
//! SELECT nope FROM PREDICT cnn(digits);
//!
//! query
//! SELECT input, prediction FROM PREDICT cnn(digits[0:2]);
//! ----
//! input | prediction
//! 0 | 2
//! 1 | 8
//! ```
//!
//! Floats print with six significant digits. `IALG_UPDATE=1 cargo test` rewrites the
//! expected tables (review the diff).

use std::path::Path;

use ialgebra::exec::{Output, Session};
use ialgebra::output::table::format_float;
use polars::prelude::*;

use crate::common::root;

fn cell(c: &Column, row: usize) -> String {
    match c.get(row) {
        Ok(AnyValue::Null) => "NULL".into(),
        Ok(AnyValue::Float32(v)) => format_float(v as f64),
        Ok(AnyValue::Float64(v)) => format_float(v),
        Ok(AnyValue::String(s)) => s.to_string(),
        Ok(AnyValue::StringOwned(s)) => s.to_string(),
        Ok(v) => v.to_string(),
        Err(e) => format!("<{e}>"),
    }
}

/// A table as the lines of an .slt file: the header, then one line per row.
pub fn table_lines(df: &DataFrame) -> Vec<String> {
    let mut lines = vec![
        df.get_column_names()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
    ];
    for r in 0..df.height() {
        lines.push(df.columns().iter().map(|c| cell(c, r)).collect::<Vec<_>>().join(" | "));
    }
    lines
}

enum Record {
    Ok(String),
    Error(String, String),
    Query(String, Vec<String>),
}

fn parse(text: &str) -> Vec<(usize, Record)> {
    let mut records = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        if line.is_empty() || line.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i + 1;
        i += 1;
        let mut sql = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() && lines[i].trim() != "----" {
            sql.push(lines[i]);
            i += 1;
        }
        let sql = sql.join("\n");
        if let Some(msg) = line.strip_prefix("statement error") {
            records.push((start, Record::Error(sql, msg.trim().to_string())));
        } else if line == "statement ok" {
            records.push((start, Record::Ok(sql)));
        } else if line == "query" {
            let mut expected = Vec::new();
            if i < lines.len() && lines[i].trim() == "----" {
                i += 1;
                while i < lines.len() && !lines[i].trim().is_empty() {
                    expected.push(lines[i].trim_end().to_string());
                    i += 1;
                }
            }
            records.push((start, Record::Query(sql, expected)));
        } else {
            panic!("line {start}: unknown record `{line}`");
        }
    }
    records
}

/// Runs one .slt file; returns its failures and its text with the expected tables
/// replaced by the actual ones.
fn run_file(path: &Path) -> (Vec<String>, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut s = Session::new();
    let mut failures = Vec::new();
    let mut updated = String::new();
    // Copy the text through, rewriting each query's expected block where it stands.
    let mut cursor = 0usize;
    for (line, record) in parse(&text) {
        let at = format!("{}:{line}", path.display());
        match record {
            Record::Ok(sql) => {
                if let Err(e) = s.execute(&sql) {
                    failures.push(format!("{at}: expected ok\n{}", e.render(&sql, &at)));
                }
            }
            Record::Error(sql, want) => match s.execute(&sql) {
                Ok(_) => failures.push(format!("{at}: expected an error containing `{want}`, but it succeeded")),
                Err(e) => {
                    let shown = e.render(&sql, "q");
                    if !shown.contains(&want) {
                        failures.push(format!("{at}: expected an error containing `{want}`, got\n{shown}"));
                    }
                }
            },
            Record::Query(sql, expected) => {
                let old = if expected.is_empty() {
                    sql.clone()
                } else {
                    format!("{sql}\n----\n{}", expected.join("\n"))
                };
                let pos = cursor + text[cursor..].find(&old).expect("record text");
                updated.push_str(&text[cursor..pos]);
                cursor = pos + old.len();
                let got = match s.execute(&sql) {
                    Ok(mut outs) => match outs.pop() {
                        Some(Output::Table(df)) => Some(table_lines(&df)),
                        other => {
                            failures.push(format!("{at}: expected a table, got {other:?}"));
                            None
                        }
                    },
                    Err(e) => {
                        failures.push(format!("{at}: query failed\n{}", e.render(&sql, &at)));
                        None
                    }
                };
                match got {
                    Some(got) if got != expected => {
                        failures.push(format!(
                            "{at}: table differs\n--- expected\n{}\n--- got\n{}",
                            expected.join("\n"),
                            got.join("\n")
                        ));
                        updated.push_str(&format!("{sql}\n----\n{}", got.join("\n")));
                    }
                    _ => updated.push_str(&old),
                }
            }
        }
    }
    updated.push_str(&text[cursor..]);
    (failures, updated)
}

#[test]
fn query_table_files() {
    std::env::set_current_dir(root()).unwrap();
    let update = std::env::var("IALG_UPDATE").is_ok();
    let mut files: Vec<_> = std::fs::read_dir(root().join("tests/slt"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut all = Vec::new();
    for f in &files {
        let (failures, updated) = run_file(f);
        if update && !failures.is_empty() {
            std::fs::write(f, updated).unwrap();
        }
        all.extend(failures);
    }
    assert!(all.is_empty(), "{} failure(s):\n\n{}", all.len(), all.join("\n\n"));
}
