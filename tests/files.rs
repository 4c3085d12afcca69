//! Files in and out: exports are atomic and never clobber without OVERWRITE; model and
//! data files that are corrupt, truncated, of the wrong shape or holding NaN give clear
//! errors and leave the session working.

use std::path::{Path, PathBuf};

use ialgebra::data::npy::write_npy_f32;
use ialgebra::exec::Session;

use crate::common::*;

const SETUP: &str = "
    LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
    LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';";

/// A fresh directory under target/ for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target/test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn err(s: &mut Session, text: &str) -> String {
    match s.execute(text) {
        Ok(_) => panic!("expected an error from {text}"),
        Err(e) => e.render(text, "q"),
    }
}

/// Runs `text`, which must fail with a message containing `want`.
fn expect_err(s: &mut Session, text: &str, want: &str) {
    let msg = err(s, text);
    assert!(msg.contains(want), "expected `{want}` in\n{msg}");
}

fn still_works(s: &mut Session) {
    let df = query(s, "SELECT count(*) AS n FROM PREDICT cnn(digits[0:2])");
    assert_eq!(column_f64(&df, "n"), vec![2.0]);
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn export_is_atomic_and_does_not_clobber() {
    let dir = scratch("export");
    let mut s = session(SETUP);
    let q = "SELECT row, col, attribution FROM cnn(digits[17]) USING saliency ORDER BY attribution DESC LIMIT 5";
    let expected = query(&mut s, q);
    for ext in ["csv", "parquet", "json"] {
        let path = dir.join(format!("top.{ext}"));
        s.execute(&format!("EXPORT {q} TO '{}'", path.display())).unwrap();
        // read it back through the engine's own loader where it can, else by polars
        let back = match ext {
            "json" => {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.starts_with('[') && text.contains("\"attribution\""), "{text}");
                continue;
            }
            _ => {
                use polars::prelude::*;
                if ext == "csv" {
                    CsvReadOptions::default()
                        .with_has_header(true)
                        .try_into_reader_with_file_path(Some(path.clone()))
                        .unwrap()
                        .finish()
                        .unwrap()
                } else {
                    ParquetReader::new(std::fs::File::open(&path).unwrap())
                        .finish()
                        .unwrap()
                }
            }
        };
        // float32 values survive the trip exactly (CSV prints the shortest text that reads back)
        let as_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        assert_eq!(
            as_f32(column_f64(&back, "attribution")),
            as_f32(column_f64(&expected, "attribution")),
            "{ext}"
        );
        assert_eq!(column_f64(&back, "row"), column_f64(&expected, "row"), "{ext}");
    }
    // no OVERWRITE: an error, and the file is untouched
    let csv = dir.join("top.csv");
    let before = std::fs::read(&csv).unwrap();
    let msg = err(&mut s, &format!("EXPORT PREDICT cnn(digits[0]) TO '{}'", csv.display()));
    assert!(msg.contains("already exists") && msg.contains("OVERWRITE"), "{msg}");
    assert_eq!(std::fs::read(&csv).unwrap(), before);
    // OVERWRITE replaces it
    s.execute(&format!(
        "EXPORT PREDICT cnn(digits[0]) TO '{}' OVERWRITE",
        csv.display()
    ))
    .unwrap();
    assert!(
        String::from_utf8(std::fs::read(&csv).unwrap())
            .unwrap()
            .starts_with("input,label,prediction,confidence,correct,logit_0")
    );
    // a failing query writes nothing
    let _ = err(
        &mut s,
        &format!(
            "EXPORT SELECT nope FROM PREDICT cnn(digits) TO '{}'",
            dir.join("never.csv").display()
        ),
    );
    assert!(!dir.join("never.csv").exists());
    // directories are made as needed
    s.execute(&format!(
        "EXPORT PREDICT cnn(digits[0:2]) TO '{}'",
        dir.join("a/b/p.parquet").display()
    ))
    .unwrap();
    assert!(dir.join("a/b/p.parquet").exists());
    assert!(
        leftovers(&dir).is_empty(),
        "temporary files left: {:?}",
        leftovers(&dir)
    );
    still_works(&mut s);
}

#[test]
fn pytorch_checkpoints_load_like_safetensors() {
    let mut s = session(
        "LOAD MODEL st FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
         LOAD MODEL pth FROM 'tests/fixtures/models/cancer_mlp.pth' ARCH 'models/cancer_mlp.json';
         LOAD MODEL ckpt FROM 'tests/fixtures/models/cancer_mlp_checkpoint.pth' ARCH 'models/cancer_mlp.json';
         LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;",
    );
    let a = query(
        &mut s,
        "SELECT attribution FROM st(cancer[0:5]) USING integrated_gradients",
    );
    for m in ["pth", "ckpt"] {
        let b = query(
            &mut s,
            &format!("SELECT attribution FROM {m}(cancer[0:5]) USING integrated_gradients"),
        );
        assert_eq!(column_f64(&a, "attribution"), column_f64(&b, "attribution"), "{m}");
    }
}

#[test]
fn corrupt_model_files_are_errors() {
    let dir = scratch("models");
    let good = std::fs::read(root().join("models/digits_cnn.safetensors")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.safetensors",
            good[..good.len() / 2].to_vec(),
            "not a readable safetensors file",
        ),
        (
            "header_only.safetensors",
            good[..12].to_vec(),
            "not a readable safetensors file",
        ),
        (
            "garbage.safetensors",
            b"this is not a model at all".to_vec(),
            "not a readable safetensors file",
        ),
        ("empty.safetensors", Vec::new(), "not a readable safetensors file"),
        (
            "garbage.pth",
            b"PK\x03\x04 but not really a zip".to_vec(),
            "cannot read PyTorch checkpoint",
        ),
        (
            "legacy.pth",
            b"\x80\x02\x8a\x0alegacy".to_vec(),
            "legacy (pre-1.6, non-zip) PyTorch file",
        ),
        ("model.h5", b"HDF".to_vec(), "cannot tell the format"),
    ];
    let mut s = session(SETUP);
    for (name, bytes, want) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let msg = err(
            &mut s,
            &format!("LOAD MODEL bad FROM '{}' ARCH 'models/digits_cnn.json'", path.display()),
        );
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(!msg.contains("panicked"));
    }
    // every truncation of a real file is an error, never a crash
    let path = dir.join("cut.safetensors");
    for cut in (0..good.len()).step_by(997) {
        std::fs::write(&path, &good[..cut]).unwrap();
        assert!(
            s.execute(&format!(
                "LOAD MODEL bad FROM '{}' ARCH 'models/digits_cnn.json'",
                path.display()
            ))
            .is_err(),
            "cut at {cut}"
        );
    }
    // architecture files: broken JSON, unknown layer types, shapes that do not fit
    let arch_cases = [
        ("{ not json", "is not valid JSON"),
        (r#"{"input_shape": [1, 8, 8]}"#, "has no `layers` list"),
        (
            r#"{"input_shape": [1, 8, 8], "layers": [{"name": "x", "type": "lstm"}]}"#,
            "unsupported type `lstm`",
        ),
        (
            r#"{"input_shape": [1, 8, 8], "layers": [{"name": "conv1", "type": "conv2d", "in": 3, "out": 8, "kernel": 3}]}"#,
            "expects 3 input channels",
        ),
        (
            r#"{"input_shape": [1, 8, 8], "layers": [{"name": "conv1", "type": "conv2d", "in": 1, "out": 8, "kernel": 3, "padding": 1}]}"#,
            "tensors the architecture does not use",
        ),
        (
            r#"{"input_shape": [1, 8, 8], "layers": [{"name": "conv1", "type": "conv2d", "in": 1, "out": 8, "kernel": 30}]}"#,
            "does not fit",
        ),
    ];
    for (i, (text, want)) in arch_cases.iter().enumerate() {
        let path = dir.join(format!("arch{i}.json"));
        std::fs::write(&path, text).unwrap();
        let msg = err(
            &mut s,
            &format!(
                "LOAD MODEL bad FROM 'models/digits_cnn.safetensors' ARCH '{}'",
                path.display()
            ),
        );
        assert!(msg.contains(want), "arch {i}: {msg}");
    }
    still_works(&mut s);
    assert!(s.model("bad").is_none(), "a failed LOAD leaves no model behind");
}

#[test]
fn bad_data_files_are_errors() {
    let dir = scratch("data");
    let mut s = session(SETUP);
    let write = |name: &str, shape: &[usize], values: &[f32]| {
        let p = dir.join(name);
        std::fs::write(&p, write_npy_f32(shape, values)).unwrap();
        p
    };
    let mut values = vec![0.5f32; 3 * 64];
    values[64 + 9] = f32::NAN;
    let nan = write("nan.npy", &[3, 1, 8, 8], &values);
    let msg = err(&mut s, &format!("LOAD DATA bad FROM '{}'", nan.display()));
    assert!(
        msg.contains("input 1 holds NaN at channel 0, row 1, col 1") && msg.contains("allow_nonfinite"),
        "{msg}"
    );
    s.execute(&format!(
        "SET allow_nonfinite = true; LOAD DATA nanok FROM '{}'",
        nan.display()
    ))
    .unwrap();
    let empty = write("empty.npy", &[0, 1, 8, 8], &[]);
    expect_err(
        &mut s,
        &format!("LOAD DATA e FROM '{}'", empty.display()),
        "holds no inputs",
    );
    let flat = write("flat.npy", &[5], &[1.0; 5]);
    expect_err(
        &mut s,
        &format!("LOAD DATA e FROM '{}'", flat.display()),
        "batch dimension first",
    );
    let labels = write("labels.npy", &[2], &[1.0, 2.0]);
    let x3 = write("x3.npy", &[3, 4], &[0.0; 12]);
    expect_err(
        &mut s,
        &format!("LOAD DATA e FROM '{}' LABELS '{}'", x3.display(), labels.display()),
        "has 3 inputs but",
    );
    let frac = write("frac.npy", &[3], &[1.0, 2.5, 0.0]);
    expect_err(
        &mut s,
        &format!("LOAD DATA e FROM '{}' LABELS '{}'", x3.display(), frac.display()),
        "whole numbers",
    );
    let truncated = dir.join("trunc.npy");
    let bytes = std::fs::read(&nan).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    expect_err(
        &mut s,
        &format!("LOAD DATA e FROM '{}'", truncated.display()),
        "not a readable .npy file",
    );
    let csv = dir.join("text.csv");
    std::fs::write(&csv, "a,b,label\n1,x,0\n2,y,1\n").unwrap();
    expect_err(
        &mut s,
        &format!("LOAD DATA e FROM '{}' LABEL COLUMN label", csv.display()),
        "column `b` holds",
    );
    let holes = dir.join("holes.csv");
    std::fs::write(&holes, "a,b,label\n1,,0\n2,3,1\n").unwrap();
    expect_err(
        &mut s,
        &format!("LOAD DATA e FROM '{}' LABEL COLUMN label", holes.display()),
        "row 0, column `b` is empty",
    );
    // data of the wrong shape for a model is caught before any forward
    expect_err(
        &mut s,
        &format!("LOAD DATA small FROM '{}'; PREDICT cnn(small)", x3.display()),
        "holds inputs of shape [4] but `cnn` takes [1, 8, 8]",
    );
    still_works(&mut s);
}

/// A .npy dataset is read from its file as queries need its rows (so that a dataset
/// larger than memory streams): a file rewritten in place after LOAD is an error that
/// says so, never other data or a crash; a file replaced by a new one (as `np.save`
/// to a temporary name and a rename would) leaves the loaded data as they were.
#[test]
fn data_files_changed_after_load() {
    let dir = scratch("changed");
    let mut s = session(SETUP);
    let path = dir.join("x.npy");
    let original: Vec<f32> = (0..4 * 64).map(|i| (i % 17) as f32 / 17.0).collect();
    std::fs::write(&path, write_npy_f32(&[4, 1, 8, 8], &original)).unwrap();
    s.execute(&format!("LOAD DATA x FROM '{}'", path.display())).unwrap();
    let q = "SELECT input, prediction, confidence FROM PREDICT cnn(x)";
    let before = query(&mut s, q);
    // Replaced: the loaded file stays readable under its old contents.
    let next = dir.join("next.npy");
    std::fs::write(&next, write_npy_f32(&[4, 1, 8, 8], &vec![0.25; 4 * 64])).unwrap();
    std::fs::rename(&next, &path).unwrap();
    assert!(query(&mut s, q).equals(&before));
    s.execute(&format!("LOAD DATA x FROM '{}'", path.display())).unwrap();
    // Rewritten in place, shorter: an error naming the file, and the session goes on.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&path, write_npy_f32(&[2, 1, 8, 8], &original[..2 * 64])).unwrap();
    let msg = err(&mut s, q);
    assert!(
        msg.contains("x.npy changed on disk after it was loaded") && msg.contains("LOAD DATA"),
        "{msg}"
    );
    still_works(&mut s);
    s.execute(&format!("LOAD DATA x FROM '{}'", path.display())).unwrap();
    assert_eq!(query(&mut s, q).height(), 2);
}

/// float64 .npy inputs (what NumPy writes by default) are read as float32, like a
/// float32 file of the same values.
#[test]
fn float64_npy_loads_like_float32() {
    let dir = scratch("float64");
    let mut s = session(SETUP);
    let values: Vec<f32> = (0..3 * 64).map(|i| (i % 13) as f32 / 13.0).collect();
    let narrow = dir.join("x32.npy");
    std::fs::write(&narrow, write_npy_f32(&[3, 1, 8, 8], &values)).unwrap();
    let mut wide = write_npy_f32(&[3, 1, 8, 8], &[]);
    let at = wide.windows(3).position(|w| w == b"<f4").unwrap();
    wide[at..at + 3].copy_from_slice(b"<f8");
    wide.extend(values.iter().flat_map(|&v| (v as f64).to_le_bytes()));
    let wide_path = dir.join("x64.npy");
    std::fs::write(&wide_path, wide).unwrap();
    s.execute(&format!(
        "LOAD DATA a FROM '{}'; LOAD DATA b FROM '{}'",
        narrow.display(),
        wide_path.display()
    ))
    .unwrap();
    let q = |d: &str| {
        format!("SELECT input, row, col, value, attribution FROM cnn({d}) USING saliency ORDER BY input, row, col")
    };
    let (a, b) = (query(&mut s, &q("a")), query(&mut s, &q("b")));
    assert_eq!(a.height(), 3 * 64);
    assert!(a.equals(&b));
}

#[test]
fn tabular_files_load_from_csv_and_parquet() {
    use polars::prelude::*;
    let dir = scratch("tabular");
    // the same table as Parquet
    let mut df = CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(root().join("data/cancer_test.csv")))
        .unwrap()
        .finish()
        .unwrap();
    let parquet = dir.join("cancer.parquet");
    ParquetWriter::new(std::fs::File::create(&parquet).unwrap())
        .finish(&mut df)
        .unwrap();
    let mut s = session(&format!(
        "LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
         LOAD DATA from_csv FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;
         LOAD DATA from_parquet FROM '{}' LABEL COLUMN diagnosis;
         LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
         LOAD DATA digits_csv FROM 'tests/fixtures/data/digits_test_x.csv' LABELS 'tests/fixtures/data/digits_test_y.csv';",
        parquet.display()
    ));
    let a = query(&mut s, "SELECT * FROM mlp(from_csv[0:4]) USING integrated_gradients");
    let b = query(
        &mut s,
        "SELECT * FROM mlp(from_parquet[0:4]) USING integrated_gradients",
    );
    assert!(a.equals_missing(&b));
    assert_eq!(a.column("column").unwrap().str().unwrap().get(0), Some("mean_radius"));
    // 64 pixel columns are not a 1×8×8 image until the load says so (SHAPE): without it
    // the CNN refuses them, naming both shapes and the clause
    let refused = s
        .execute("SELECT input, prediction FROM PREDICT cnn(digits_csv)")
        .unwrap_err()
        .render("", "q");
    assert!(
        refused.contains("holds inputs of shape [64] but `cnn` takes [1, 8, 8]") && refused.contains("SHAPE (1, 8, 8)"),
        "{refused}"
    );
    s.execute(
        "LOAD DATA digits_csv FROM 'tests/fixtures/data/digits_test_x.csv' SHAPE (1, 8, 8) LABELS 'tests/fixtures/data/digits_test_y.csv';",
    )
    .unwrap();
    let npy = query(
        &mut s,
        "SELECT input, label, prediction, confidence FROM PREDICT cnn(digits)",
    );
    let csv = query(
        &mut s,
        "SELECT input, label, prediction, confidence FROM PREDICT cnn(digits_csv)",
    );
    assert!(npy.equals_missing(&csv));
    let mut top = |d: &str| {
        query(
            &mut s,
            &format!("SELECT row, col FROM cnn({d}[17]) USING saliency ORDER BY attribution DESC LIMIT 1"),
        )
    };
    let (from_npy, from_csv) = (top("digits"), top("digits_csv"));
    assert!(from_npy.equals_missing(&from_csv));
    // [8, 8] images (no channel axis) are the model's [1, 8, 8]: axes of 1 change nothing
    s.execute("LOAD DATA flat FROM 'data/digits_test_x.npy' SHAPE (8, 8); PREDICT cnn(flat[0]);")
        .unwrap();
    // a SHAPE must hold the file's values
    let wrong = s
        .execute("LOAD DATA bad FROM 'data/digits_test_x.npy' SHAPE (3, 8, 8);")
        .unwrap_err()
        .render("", "q");
    assert!(wrong.contains("SHAPE (3, 8, 8) holds 192 values per input"), "{wrong}");
    assert!(!s.dataset_names().contains(&"bad".to_string()));
}

/// An export killed at any moment (SIGKILL: no chance to clean up) leaves either no file
/// or the complete one at the destination, never a partial file: the table is written to
/// a temporary file in the same directory and renamed into place. (Measured: the kills
/// land while loading, computing and in the middle of writing.)
#[test]
fn killed_export_never_leaves_a_partial_file() {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let dir = scratch("killed");
    let target = dir.join("layers.csv");
    let q = format!(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy';
         EXPORT SELECT * FROM cnn(digits[0:40]) AT LAYER * USING layer_activation TO '{}' OVERWRITE;",
        target.display()
    );
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_ialg"))
            .args(["-c", &q])
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // A complete run: how long it takes and what the whole file holds.
    let t = Instant::now();
    assert!(run().wait().unwrap().success());
    let full = t.elapsed();
    let complete = std::fs::read(&target).unwrap();
    let lines = complete.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(lines, 40 * 3658 + 1, "header + a row per input and unit of every layer");
    std::fs::remove_file(&target).unwrap();
    // Kill runs at points spread over that time (loading, computing, writing).
    for k in 1..=6 {
        let mut child = run();
        std::thread::sleep(full.mul_f64(k as f64 / 7.0));
        let _ = child.kill();
        let _ = child.wait();
        if target.exists() {
            assert_eq!(std::fs::read(&target).unwrap(), complete, "kill {k}: a partial export");
            std::fs::remove_file(&target).unwrap();
        }
    }
    // The killed runs' temporary files are removed by the next export to that file.
    assert!(run().wait().unwrap().success());
    assert_eq!(std::fs::read(&target).unwrap(), complete);
    assert!(
        leftovers(&dir).is_empty(),
        "temporary files left: {:?}",
        leftovers(&dir)
    );
}

/// Files PyTorch itself wrote (tools/make_torch_checkpoints.py): a state dict with nested
/// module names and batch-norm running statistics gives PyTorch's logits (|Δ| ≤ 1e-5 +
/// 1e-5·|torch|), as does its ONNX export; a pickled whole module and the legacy format
/// are refused with errors that say what to do.
#[test]
fn real_pytorch_checkpoints_with_nested_names_and_batch_norm() {
    let mut s = session(
        "LOAD MODEL pth FROM 'tests/fixtures/models/bn_cnn.pth' ARCH 'tests/fixtures/models/bn_cnn.json';
         LOAD MODEL onnx FROM 'tests/fixtures/models/bn_cnn.onnx';
         LOAD DATA digits FROM 'data/digits_test_x.npy';",
    );
    let text = std::fs::read_to_string(fixture("models/bn_cnn_expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want: Vec<f64> = expected["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    for m in ["pth", "onnx"] {
        let df = query(
            &mut s,
            &format!("SELECT * FROM PREDICT {m}(digits[0:8]) ORDER BY input"),
        );
        let got = logits(&df, 10);
        assert_close(&format!("{m} logits"), &got, &want, 1e-5, 1e-5);
    }
    // the nested names are the hook points; the ONNX export's modules are aliases (the
    // exporter folds features.1 into the convolution, so compare a batch norm it keeps)
    let a = query(
        &mut s,
        "SELECT attribution FROM pth(digits[0:3]) AT LAYER \"classifier.2\" USING layer_activation ORDER BY input, unit",
    );
    let b = query(
        &mut s,
        "SELECT attribution FROM onnx(digits[0:3]) AT LAYER \"classifier.2\" USING layer_activation ORDER BY input, unit",
    );
    assert_close(
        "classifier.2",
        &column_f64(&b, "attribution"),
        &column_f64(&a, "attribution"),
        1e-5,
        1e-5,
    );
    for (file, want) in [
        ("bn_cnn_module.pth", "pickled"),
        ("bn_cnn_legacy.pth", "legacy (pre-1.6, non-zip) PyTorch file"),
    ] {
        let msg = err(
            &mut s,
            &format!("LOAD MODEL bad FROM 'tests/fixtures/models/{file}' ARCH 'tests/fixtures/models/bn_cnn.json'"),
        );
        assert!(msg.contains(want), "{file}: {msg}");
    }
}

/// Loading under a name already taken says so ("replaced model cnn", "replaced data d"),
/// rather than replacing it silently.
#[test]
fn loading_under_a_taken_name_says_it_replaced() {
    let mut s = Session::new();
    let load_model = "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json'";
    let load_data = "LOAD DATA d FROM 'data/digits_test_x.npy'";
    let message = |s: &mut Session, text: &str| match s.execute(text).unwrap().pop() {
        Some(ialgebra::exec::Output::Message(m)) => m,
        other => panic!("{text}: {other:?}"),
    };
    std::env::set_current_dir(crate::common::root()).unwrap();
    assert!(message(&mut s, load_model).starts_with("loaded model cnn:"));
    assert!(message(&mut s, load_model).starts_with("replaced model cnn:"));
    assert!(message(&mut s, load_data).starts_with("loaded data d:"));
    assert!(message(&mut s, load_data).starts_with("replaced data d:"));
}
