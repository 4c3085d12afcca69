//! ONNX operators, one small model per case (tests/fixtures/onnx_ops, written by
//! tools/onnx_op_cases.py): the engine's forward against onnxruntime 1.32's output on the
//! same input (|ours − ort| ≤ 1e-5 + 1e-5·|ort|), and every differentiable case's input
//! gradient against central finite differences (h = 1e-2, or 1e-3 next to a kink;
//! accumulated in f64; tolerance 2e-3·(1 + |numeric|); elements whose one-sided
//! differences disagree sit on a kink and are skipped). Then the loader's behaviour on a whole graph: SHOW LAYERS, aliases,
//! patching and errors.

use std::collections::BTreeMap;

use ialgebra::model::{Batch, Gradient, onnx};
use serde::Deserialize;

use crate::common::*;

#[derive(Deserialize)]
struct Case {
    input_shape: Vec<usize>,
    input: Vec<f64>,
    output_shape: Vec<usize>,
    output: Vec<f64>,
    grad: bool,
}

fn cases() -> BTreeMap<String, Case> {
    let text = std::fs::read_to_string(fixture("onnx_ops/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str) -> ialgebra::model::Model {
    onnx::load(&fixture(&format!("onnx_ops/{name}.onnx")), 64).unwrap_or_else(|e| panic!("{name}: {}", e.message))
}

#[test]
fn every_operator_matches_onnxruntime() {
    let cases = cases();
    assert!(cases.len() >= 60, "the case file lost cases");
    for (name, case) in &cases {
        let model = load(name);
        let x = Batch::new(case.input_shape.clone(), case.input.iter().map(|v| *v as f32).collect()).unwrap();
        let y = model.logits(x).unwrap_or_else(|e| panic!("{name}: {}", e.message));
        assert_eq!(y.shape(), case.output_shape.as_slice(), "{name}: output shape");
        let got: Vec<f64> = y.data().iter().map(|v| *v as f64).collect();
        assert_close(name, &got, &case.output, 1e-5, 1e-5);
    }
}

#[test]
fn every_differentiable_operator_has_the_gradient_of_its_forward() {
    for (name, case) in cases().iter().filter(|(_, c)| c.grad) {
        let model = load(name);
        let xs: Vec<f32> = case.input.iter().map(|v| *v as f32).collect();
        let shape = case.input_shape.clone();
        let tape = model
            .run(Batch::new(shape.clone(), xs.clone()).unwrap(), &model.full())
            .unwrap();
        let out = tape.output().clone();
        // A fixed, irregular output gradient.
        let gy: Vec<f32> = (0..out.data().len())
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let seed = Batch::new(out.shape().to_vec(), gy.clone()).unwrap();
        let gx = model.backward(&tape, seed, &Gradient, &mut |_, _| {}).unwrap();
        let loss = |data: &[f32]| -> f64 {
            let y = model.logits(Batch::new(shape.clone(), data.to_vec()).unwrap()).unwrap();
            y.data().iter().zip(&gy).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let base = loss(&xs);
        // (numeric derivative, whether the one-sided differences agree) at step h.
        let numeric = |i: usize, h: f32| {
            let mut plus = xs.clone();
            plus[i] += h;
            let mut minus = xs.clone();
            minus[i] -= h;
            let (lp, lm) = (loss(&plus), loss(&minus));
            let (right, left) = ((lp - base) / h as f64, (base - lm) / h as f64);
            let smooth = (right - left).abs() <= 0.1 * (1.0 + right.abs().max(left.abs()));
            ((lp - lm) / (2.0 * h as f64), smooth)
        };
        for i in 0..xs.len() {
            let analytic = gx.data()[i] as f64;
            let close = |n: f64| (n - analytic).abs() < 2e-3 * (1.0 + n.abs());
            let (n, smooth) = numeric(i, 1e-2);
            if !smooth || close(n) {
                continue; // a kink within h, or agreement
            }
            // A kink just beyond the one-sided test: a smaller step must agree.
            let (n_small, _) = numeric(i, 1e-3);
            assert!(
                close(n_small),
                "{name}: d/dx[{i}] numeric {n} (h = 1e-2), {n_small} (h = 1e-3) vs backward {analytic}"
            );
        }
    }
}

#[test]
fn show_layers_lists_every_node_with_its_type_shape_and_inputs() {
    let mut s = session("LOAD MODEL m FROM 'tests/fixtures/onnx_ops/where_equal.onnx';");
    let df = query(&mut s, "SHOW LAYERS OF m");
    let text = format!("{df}");
    for want in [
        "r",
        "e",
        "sq",
        "Relu",
        "Equal",
        "Mul",
        "Where",
        "inputs",
        "input, r",
        "e, sq, input",
    ] {
        assert!(text.contains(want), "SHOW LAYERS lacks {want:?}:\n{text}");
    }
    assert_eq!(df.height(), 4);
}

#[test]
fn onnx_models_answer_the_same_queries_as_their_twins() {
    let mut s = session(
        "LOAD MODEL a FROM 'models/digits_cnn.onnx';
         LOAD MODEL b FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA d FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';",
    );
    for q in [
        "SELECT input, prediction, confidence FROM PREDICT {m}(d[:20]) ORDER BY input",
        "SELECT input, row, col, attribution FROM {m}(d[:5]) USING occlusion(window = 2) ORDER BY input, row, col",
        "SELECT input, attribution FROM {m}(d[:5]) AT LAYER fc1 USING layer_conductance ORDER BY input, neuron",
        "SELECT prediction FROM PREDICT {m}(d[:10] WITH LAYER conv2[3] = 0) ORDER BY input",
        "SELECT input, attribution FROM {m}(d[:4]) AT LAYER pool USING gradcam(upsample = true) ORDER BY input, row, col",
    ] {
        let a = query(&mut s, &q.replace("{m}", "a"));
        let b = query(&mut s, &q.replace("{m}", "b"));
        assert_eq!(a.shape(), b.shape(), "{q}");
        for col in b.get_column_names() {
            assert_close(q, &column_f64(&a, col), &column_f64(&b, col), 1e-5, 1e-5);
        }
    }
}

#[test]
fn bad_onnx_files_are_errors_that_say_what_and_where() {
    let dir = std::env::temp_dir().join(format!("ialg-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, b"\x08\x07not a protobuf at all\xff\xff\xff").unwrap();
    let bytes = std::fs::read(root().join("models/digits_cnn.onnx")).unwrap();
    let cut = dir.join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let mut s = session("");
    for (path, want) in [
        (&garbage, "not a readable ONNX file"),
        (&cut, "not a readable ONNX file"),
    ] {
        let err = s
            .execute(&format!("LOAD MODEL m FROM '{}'", path.display()))
            .err()
            .unwrap_or_else(|| panic!("{} loaded", path.display()));
        assert!(err.message.contains(want), "{}: {}", path.display(), err.message);
    }
    let err = s
        .execute("LOAD MODEL m FROM 'models/digits_cnn.onnx' ARCH 'models/digits_cnn.json'")
        .err()
        .unwrap();
    assert!(err.message.contains("carries its own architecture"), "{}", err.message);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_unsupported_operator_is_listed_and_named_when_run() {
    let mut s = session(
        "LOAD MODEL m FROM 'tests/fixtures/onnx_ops/unsupported_hardmax.onnx';
         LOAD DATA t FROM 'tests/fixtures/onnx_ops/four_columns.csv';",
    );
    let text = format!("{}", query(&mut s, "SHOW LAYERS OF m"));
    assert!(text.contains("Hardmax (not supported)"), "{text}");
    let err = s.execute("SELECT * FROM PREDICT m(t)").err().unwrap();
    assert!(
        err.message
            .contains("operator Hardmax (node `/hardmax/Hardmax_h`) is not supported"),
        "{}",
        err.message
    );
}
