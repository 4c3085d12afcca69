//! Activation edits (`m(d WITH LAYER l[i] = v | SCALE s | FROM d2)`): each query's
//! numbers against a manual forward pass with the same edit, and the gradients through
//! an edited model against finite differences.

use ialgebra::exec::Session;
use ialgebra::model::{Batch, Forward, Model};

use crate::common::*;

fn loaded() -> Session {
    session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';",
    )
}

fn model() -> Model {
    Model::load(
        &root().join("models/digits_cnn.safetensors"),
        &root().join("models/digits_cnn.json"),
    )
    .unwrap()
}

fn logits(s: &mut Session, data: &str) -> Vec<f64> {
    let cols: Vec<String> = (0..10).map(|k| format!("logit_{k}")).collect();
    let df = query(
        s,
        &format!("SELECT {} FROM PREDICT cnn({data}) ORDER BY input", cols.join(", ")),
    );
    let per_class: Vec<Vec<f64>> = cols.iter().map(|c| column_f64(&df, c)).collect();
    (0..df.height())
        .flat_map(|r| per_class.iter().map(move |c| c[r]).collect::<Vec<_>>())
        .collect()
}

/// The test inputs `ids` as a batch.
fn inputs(ids: std::ops::Range<usize>) -> Batch {
    let (_, x) = npy(&root().join("data/digits_test_x.npy"));
    let rows: Vec<f32> = x[ids.start * 64..ids.end * 64].iter().map(|&v| v as f32).collect();
    Batch::new(vec![ids.len(), 1, 8, 8], rows).unwrap()
}

/// Runs the model to the output of `layer`, edits it, and runs the rest.
fn manual(model: &Model, x: Batch, layer: usize, edit: &dyn Fn(&mut Batch)) -> Vec<f64> {
    let mut h = model.output_of(x, layer).unwrap();
    edit(&mut h);
    let rest = Forward {
        from: layer + 1,
        to: model.layers.len(),
        keep: false,
        hook: None,
    };
    let out = model.run(h, &rest).unwrap().into_output();
    out.data().iter().map(|&v| v as f64).collect()
}

#[test]
fn ablating_a_channel_changes_the_logits_exactly_as_a_manual_forward() {
    let mut s = loaded();
    let m = model();
    let conv2 = m.layer_index("conv2").unwrap();
    let got = logits(&mut s, "digits[10:15] WITH LAYER conv2[3] = 0");
    let want = manual(&m, inputs(10..15), conv2, &|h| {
        for r in 0..h.rows() {
            h.row_mut(r)[3 * 64..4 * 64].fill(0.0);
        }
    });
    // The same float32 operations in the same order: exact up to 1e-6.
    assert_close("conv2[3] = 0", &got, &want, 1e-6, 0.0);
    let plain = logits(&mut s, "digits[10:15]");
    assert!(
        got.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-3),
        "the ablation changed nothing"
    );
}

#[test]
fn scaling_clamping_and_one_unit() {
    let mut s = loaded();
    let m = model();
    let fc1 = m.layer_index("fc1").unwrap();
    let got = logits(&mut s, "digits[0:4] WITH LAYER fc1 SCALE 0.5");
    let want = manual(&m, inputs(0..4), fc1, &|h| {
        h.data_mut().iter_mut().for_each(|v| *v *= 0.5)
    });
    assert_close("fc1 SCALE 0.5", &got, &want, 1e-6, 0.0);
    assert_close(
        "SCALE 1",
        &logits(&mut s, "digits[0:4] WITH LAYER fc1 SCALE 1"),
        &logits(&mut s, "digits[0:4]"),
        0.0,
        0.0,
    );

    let conv2 = m.layer_index("conv2").unwrap();
    let got = logits(
        &mut s,
        "digits[0:4] WITH LAYER conv2[5, 2, 3] = 4.5 WITH LAYER fc1[7] = -1",
    );
    let mut h = m.output_of(inputs(0..4), conv2).unwrap();
    for r in 0..4 {
        h.row_mut(r)[5 * 64 + 2 * 8 + 3] = 4.5;
    }
    let mid = Forward {
        from: conv2 + 1,
        to: fc1 + 1,
        keep: false,
        hook: None,
    };
    let mut h = m.run(h, &mid).unwrap().into_output();
    for r in 0..4 {
        h.row_mut(r)[7] = -1.0;
    }
    let tail = Forward {
        from: fc1 + 1,
        to: m.layers.len(),
        keep: false,
        hook: None,
    };
    let want: Vec<f64> = m
        .run(h, &tail)
        .unwrap()
        .output()
        .data()
        .iter()
        .map(|&v| v as f64)
        .collect();
    assert_close("two edits", &got, &want, 1e-6, 0.0);
}

#[test]
fn patching_a_whole_layer_from_a_donor_gives_the_donors_output() {
    let mut s = loaded();
    let patched = logits(&mut s, "digits[17] WITH LAYER fc1 FROM digits[4]");
    let donor = logits(&mut s, "digits[4]");
    assert_close("fc1 from digits[4]", &patched, &donor, 0.0, 0.0);
    // Patching part of a layer: channel 0 of conv1 from the donor, as a manual forward.
    let m = model();
    let conv1 = m.layer_index("conv1").unwrap();
    let donor_act = m.output_of(inputs(4..5), conv1).unwrap();
    let got = logits(&mut s, "digits[17:19] WITH LAYER conv1[0] FROM digits[4]");
    let want = manual(&m, inputs(17..19), conv1, &|h| {
        for r in 0..h.rows() {
            h.row_mut(r)[..64].copy_from_slice(&donor_act.row(0)[..64]);
        }
    });
    assert_close("conv1[0] from digits[4]", &got, &want, 1e-6, 0.0);
}

/// The gradient through an edited model (saliency without abs) against central
/// differences of the edited model's logit, pixel by pixel.
fn check_gradient(edit: &str) {
    let mut s = loaded();
    let data = format!("digits[21] {edit}");
    let target = query(&mut s, &format!("SELECT prediction FROM PREDICT cnn({data})"));
    let t = column_f64(&target, "prediction")[0] as usize;
    let grad = column_f64(
        &query(
            &mut s,
            &format!("SELECT attribution FROM cnn({data}) USING saliency(abs = false) TARGET {t} ORDER BY row, col"),
        ),
        "attribution",
    );
    let values = column_f64(
        &query(
            &mut s,
            &format!("SELECT value FROM cnn({data}) USING saliency ORDER BY row, col"),
        ),
        "value",
    );
    let mut worst: f64 = 0.0;
    for p in [3usize, 12, 19, 27, 36, 44, 50, 61] {
        let (r, c) = (p / 8, p % 8);
        let at = |v: f64, s: &mut Session| {
            logits(
                s,
                &format!(
                    "digits[21] WITH SET rows {r}:{}, cols {c}:{} = {v} {edit}",
                    r + 1,
                    c + 1
                ),
            )[t]
        };
        // A ReLU kink near the point makes a central difference inexact; the best of three
        // step sizes must agree to 5e-3 (float32 logits of O(10)).
        let best = [1e-2, 2e-3, 5e-4]
            .iter()
            .map(|&h| ((at(values[p] + h, &mut s) - at(values[p] - h, &mut s)) / (2.0 * h) - grad[p]).abs())
            .fold(f64::INFINITY, f64::min);
        worst = worst.max(best);
        assert!(
            best < 5e-3,
            "{edit}: pixel {p}: gradient {} off finite differences by {best}",
            grad[p]
        );
    }
    eprintln!("{edit}: worst |gradient − finite difference| = {worst:.2e}");
}

#[test]
fn gradients_flow_through_edited_models() {
    check_gradient("WITH LAYER conv2[3] = 0");
    // A negative scale before a ReLU: the ReLU's backward must see its own output, not
    // the scaled one.
    check_gradient("WITH LAYER conv1 SCALE -0.5");
    check_gradient("WITH LAYER relu1 SCALE -0.5");
    check_gradient("WITH LAYER fc1 FROM digits[4] WITH LAYER conv2[1] SCALE 2");
}

#[test]
fn activation_edit_errors_say_what_and_where() {
    let mut s = loaded();
    let cases = [
        (
            "SELECT * FROM PREDICT cnn(digits[0] WITH LAYER conv9[0] = 0)",
            "unknown layer `conv9`",
        ),
        (
            "SELECT * FROM PREDICT cnn(digits[0] WITH LAYER conv2[16] = 0)",
            "index 16 is out of range 0..15",
        ),
        (
            "SELECT * FROM PREDICT cnn(digits[0] WITH LAYER fc1[1, 2] = 0)",
            "at most 1 indices",
        ),
        (
            "SELECT * FROM PREDICT cnn(digits[0] WITH LAYER fc1 FROM digits[0:3])",
            "FROM names 3 donors for 1 input:",
        ),
        (
            "SELECT * FROM cnn(digits[0] WITH LAYER fc1 FROM digits[0:3]) USING saliency",
            "FROM patches in the activations of one input here",
        ),
        ("LET x = digits[3] WITH LAYER fc1[2] = 0", "write it inside model(…)"),
        (
            "SELECT * FROM PREDICT cnn(digits[0] WITH LAYER fc1 SCALE x)",
            "expected a number",
        ),
    ];
    assert_errors(&mut s, &cases);
    assert_eq!(logits(&mut s, "digits[0]").len(), 10);
}

#[test]
fn predict_pairs_several_donors_with_the_inputs() {
    let mut s = loaded();
    // Input i patched at fc1 from donor i gives donor i's logits.
    let patched = logits(&mut s, "digits[10:16] WITH LAYER fc1 FROM digits[100:106]");
    let donors = logits(&mut s, "digits[100:106]");
    assert_close("paired fc1", &patched, &donors, 0.0, 0.0);
    // Part of a layer, paired, with another edit after it: a manual forward per input.
    let m = model();
    let conv1 = m.layer_index("conv1").unwrap();
    let fc1 = m.layer_index("fc1").unwrap();
    let donor_act = m.output_of(inputs(100..103), conv1).unwrap();
    let got = logits(
        &mut s,
        "digits[10:13] WITH LAYER conv1[2] FROM digits[100:103] WITH LAYER fc1 SCALE 0.5",
    );
    let mut want = Vec::new();
    for i in 0..3 {
        let mut h = m.output_of(inputs(10 + i..11 + i), conv1).unwrap();
        h.row_mut(0)[2 * 64..3 * 64].copy_from_slice(&donor_act.row(i)[2 * 64..3 * 64]);
        let mid = Forward {
            from: conv1 + 1,
            to: fc1 + 1,
            keep: false,
            hook: None,
        };
        let mut h = m.run(h, &mid).unwrap().into_output();
        h.data_mut().iter_mut().for_each(|v| *v *= 0.5);
        want.extend(manual_tail(&m, h, fc1));
    }
    assert_close("paired conv1[2] + fc1 × 0.5", &got, &want, 1e-6, 0.0);
    assert_errors(
        &mut s,
        &[
            (
                "PREDICT cnn(digits[0:4] WITH LAYER fc1 FROM digits[0:3])",
                "FROM names 3 donors for 4 inputs",
            ),
            (
                "SELECT * FROM cnn(digits[0:3] WITH LAYER fc1 FROM digits[4:7]) USING saliency",
                "PREDICT pairs several donors",
            ),
        ],
    );
}

/// The rest of the model after `layer`, from its output `h`.
fn manual_tail(m: &Model, h: Batch, layer: usize) -> Vec<f64> {
    let tail = Forward {
        from: layer + 1,
        to: m.layers.len(),
        keep: false,
        hook: None,
    };
    m.run(h, &tail)
        .unwrap()
        .output()
        .data()
        .iter()
        .map(|&v| v as f64)
        .collect()
}
