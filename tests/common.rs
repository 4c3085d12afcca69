//! Helpers shared by the test modules: paths and fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ialgebra::data::npy::{NpyData, read_npy};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// A .npy array as (shape, f64 values).
pub fn npy(path: &Path) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let a = read_npy(&bytes, &path.display().to_string()).unwrap();
    let values = match a.data {
        NpyData::Float(v) => v,
        NpyData::Int(v) => v.into_iter().map(|x| x as f64).collect(),
    };
    (a.shape, values)
}

/// An array of a Captum oracle case: `tests/fixtures/oracle/attributions/<case>/<key>.npy`.
pub fn oracle(case: &str, key: &str) -> (Vec<usize>, Vec<f64>) {
    npy(&fixture(&format!("oracle/attributions/{case}/{key}.npy")))
}

pub fn oracle_output(model: &str, key: &str) -> (Vec<usize>, Vec<f64>) {
    npy(&fixture(&format!("oracle/outputs/{model}_outputs/{key}.npy")))
}

/// Asserts |a − b| ≤ atol + rtol·|b| elementwise, reporting the worst element.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} values, expected {}",
        got.len(),
        want.len()
    );
    let mut worst = (0.0f64, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.0 || g.is_nan() != w.is_nan() {
            worst = (excess.max(f64::MIN_POSITIVE), i);
        }
    }
    if worst.0 > 0.0 {
        let i = worst.1;
        panic!(
            "{what}: element {i} is {} but the reference has {} (atol {atol}, rtol {rtol})",
            got[i], want[i]
        );
    }
}

/// Says that a test skipped its work, on the terminal itself: the harness shows what a
/// passing test prints only with --nocapture, and it captures only the print macros, so
/// this writes to stderr's handle directly. A skip must not pass unseen as `ok`.
pub fn announce_skip(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n    SKIPPED {what}");
}

/// A session with the setup statements run (paths relative to the crate root).
pub fn session(setup: &str) -> ialgebra::exec::Session {
    std::env::set_current_dir(root()).unwrap();
    let mut s = ialgebra::exec::Session::new();
    if let Err(e) = s.execute(setup) {
        panic!("{}", e.render(setup, "setup"));
    }
    s
}

/// The statements that load zoo export `name.exporter.onnx` as model `z` and its inputs,
/// labelled by the classes they are explained for, as `x`.
pub fn zoo_setup(name: &str, exporter: &str) -> String {
    format!(
        "LOAD MODEL z FROM '{}'; LOAD DATA x FROM '{}' LABELS '{}';",
        fixture(&format!("zoo/{name}.{exporter}.onnx")).display(),
        fixture(&format!("zoo/{name}.inputs.npy")).display(),
        fixture(&format!("zoo/{name}.targets.npy")).display(),
    )
}

/// Runs a query that must return a table.
pub fn query(s: &mut ialgebra::exec::Session, text: &str) -> polars::prelude::DataFrame {
    match s.execute(text) {
        Ok(mut outs) => match outs.pop() {
            Some(ialgebra::exec::Output::Table(df)) => df,
            other => panic!("{text}: expected a table, got {other:?}"),
        },
        Err(e) => panic!("{}", e.render(text, "query")),
    }
}

/// A numeric column as f64 (nulls as NaN).
pub fn column_f64(df: &polars::prelude::DataFrame, name: &str) -> Vec<f64> {
    use polars::prelude::*;
    let c = df
        .column(name)
        .unwrap_or_else(|_| panic!("no column {name} in {:?}", df.get_column_names()));
    let c = c.cast(&DataType::Float64).unwrap();
    c.f64().unwrap().iter().map(|v| v.unwrap_or(f64::NAN)).collect()
}

/// A text column's values.
pub fn column_str(df: &polars::prelude::DataFrame, name: &str) -> Vec<String> {
    let c = df
        .column(name)
        .unwrap_or_else(|_| panic!("no column {name} in {:?}", df.get_column_names()));
    c.str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or("NULL").to_string())
        .collect()
}

/// The logits of a prediction relation (`logit_0` … `logit_{classes-1}`), row by row.
pub fn logits(df: &polars::prelude::DataFrame, classes: usize) -> Vec<f64> {
    let cols: Vec<Vec<f64>> = (0..classes).map(|k| column_f64(df, &format!("logit_{k}"))).collect();
    (0..df.height()).flat_map(|r| cols.iter().map(move |c| c[r])).collect()
}

/// Each statement must fail with an error whose rendering contains the expected text;
/// the session must still answer a query afterwards.
pub fn assert_errors(s: &mut ialgebra::exec::Session, cases: &[(&str, &str)]) {
    for (q, want) in cases {
        let err = s.execute(q).err().unwrap_or_else(|| panic!("{q} should fail"));
        let text = err.render(q, "q");
        assert!(text.contains(want), "{q}: expected `{want}` in\n{text}");
    }
}

/// For a random method: how far ours is from the mean of a reference's runs with two
/// seeds, relative to how far those two runs are from each other — (largest difference
/// ratio, mean difference ratio). IID draws put both near √(3/4).
pub fn distance_ratios(ours: &[f64], a0: &[f64], a1: &[f64]) -> (f64, f64) {
    let largest = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let mean = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64;
    assert_eq!(ours.len(), a0.len(), "ours and the reference differ in length");
    assert!(largest(a0, a1) > 0.0, "the reference's two seeds agree exactly");
    let reference: Vec<f64> = a0.iter().zip(a1).map(|(x, y)| (x + y) / 2.0).collect();
    (
        largest(ours, &reference) / largest(a0, a1),
        mean(ours, &reference) / mean(a0, a1),
    )
}
