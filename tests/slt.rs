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
//! A `query` whose statement is a PLAN expects the plan's lines. Floats print with six
//! significant digits. `IALG_UPDATE=1 cargo test` rewrites the
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
                let mut old = if expected.is_empty() {
                    sql.clone()
                } else {
                    format!("{sql}\n----\n{}", expected.join("\n"))
                };
                let pos = cursor + text[cursor..].find(&old).expect("record text");
                // A new record's empty expected block: its `----` is replaced too.
                if expected.is_empty() && text[pos + old.len()..].starts_with("\n----") {
                    old.push_str("\n----");
                }
                updated.push_str(&text[cursor..pos]);
                cursor = pos + old.len();
                let got = match s.execute(&sql) {
                    Ok(mut outs) => match outs.pop() {
                        Some(Output::Table(df)) => Some(table_lines(&df)),
                        // PLAN: the plan's lines are the expected block.
                        Some(Output::Plan(text)) => Some(text.lines().map(|l| l.trim_end().to_string()).collect()),
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
                    Some(got) if !same_table(&got, &expected) => {
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

/// Tables match when every cell does; a number with decimals may differ by one unit in
/// its last printed digit: the float32 summation order of gemm differs between CPUs (AVX2 and
/// AVX-512 kernels), which moves values that sit on a rounding boundary.
fn same_table(got: &[String], expected: &[String]) -> bool {
    got.len() == expected.len()
        && got.iter().zip(expected).all(|(g, e)| {
            let (gs, es): (Vec<&str>, Vec<&str>) = (g.split(" | ").collect(), e.split(" | ").collect());
            gs.len() == es.len() && gs.iter().zip(&es).all(|(g, e)| g == e || last_digit_apart(g, e))
        })
}

fn last_digit_apart(got: &str, expected: &str) -> bool {
    let (Ok(g), Ok(e)) = (got.parse::<f64>(), expected.parse::<f64>()) else {
        return false;
    };
    let mantissa = expected.split(['e', 'E']).next().unwrap_or(expected);
    if !mantissa.contains('.') {
        // integers (counts, indices, classes) match exactly
        return false;
    }
    let decimals = mantissa.split('.').nth(1).map_or(0, str::len) as i32;
    let exponent: i32 = expected
        .split(['e', 'E'])
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (g - e).abs() <= 1.01 * 10f64.powi(exponent - decimals)
}

#[test]
fn slt_numbers_may_differ_in_their_last_digit_only() {
    assert!(last_digit_apart("1.219", "1.2191"));
    assert!(last_digit_apart("-0.1486", "-0.1485"));
    assert!(last_digit_apart("1.2346e-5", "1.2345e-5"));
    assert!(!last_digit_apart("1.2193", "1.2191"));
    assert!(!last_digit_apart("3", "4"));
    assert!(!last_digit_apart("x", "1"));
    assert!(same_table(&["a | 1.219".into()], &["a | 1.2191".into()]));
    assert!(!same_table(&["b | 1.2191".into()], &["a | 1.2191".into()]));
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
