//! The prediction relation: confidence, correct, TOP k, and before/after JOINs of two
//! predictions (what-if tables).

use ialgebra::exec::Session;

use crate::common::*;

fn loaded() -> Session {
    session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD MODEL cnn_b FROM 'models/digits_cnn_b.safetensors' ARCH 'models/digits_cnn_b.json';
         LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';",
    )
}

#[test]
fn top_k_lists_the_most_probable_classes() {
    let mut s = loaded();
    let df = query(&mut s, "SELECT * FROM PREDICT cnn(digits[0:50]) TOP 10");
    let prediction = column_f64(&df, "prediction");
    let confidence = column_f64(&df, "confidence");
    for r in 0..df.height() {
        let classes: Vec<f64> = (1..=10).map(|k| column_f64(&df, &format!("top{k}"))[r]).collect();
        let probs: Vec<f64> = (1..=10)
            .map(|k| column_f64(&df, &format!("top{k}_confidence"))[r])
            .collect();
        assert_eq!(classes[0], prediction[r]);
        assert_eq!(probs[0], confidence[r]);
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "row {r}: {probs:?}");
        let mut sorted = classes.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(sorted, (0..10).map(f64::from).collect::<Vec<_>>(), "each class once");
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        // The probabilities are the softmax of the logits.
        let logits: Vec<f64> = (0..10).map(|k| column_f64(&df, &format!("logit_{k}"))[r]).collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        let second = classes[1] as usize;
        assert!(((logits[second] - max).exp() / z - probs[1]).abs() < 1e-6);
    }
    let err = s.execute("PREDICT cnn(digits[0]) TOP 11").err().unwrap();
    assert!(err.message.contains("TOP 11 is out of range"), "{}", err.message);
}

#[test]
fn before_after_join_shows_the_changes() {
    let mut s = loaded();
    let df = query(
        &mut s,
        "SELECT * FROM PREDICT cnn(digits[0:40]) AS before JOIN PREDICT cnn(digits[0:40] WITH MASK rows 0:8, cols 3:5) AS after",
    );
    assert_eq!(df.height(), 40);
    assert_eq!(column_f64(&df, "input"), (0..40).map(f64::from).collect::<Vec<_>>());
    let changed: Vec<bool> = df
        .column("prediction_changed")
        .unwrap()
        .bool()
        .unwrap()
        .iter()
        .map(|v| v.unwrap())
        .collect();
    let (pa, pb) = (
        column_f64(&df, "before.prediction"),
        column_f64(&df, "after.prediction"),
    );
    for r in 0..40 {
        assert_eq!(changed[r], pa[r] != pb[r]);
    }
    assert!(changed.iter().any(|&c| c), "masking two columns changed no prediction");
    let diff = |col: &str| -> Vec<f64> {
        let (a, b) = (
            column_f64(&df, &format!("before.{col}")),
            column_f64(&df, &format!("after.{col}")),
        );
        a.iter().zip(&b).map(|(a, b)| b - a).collect()
    };
    assert_close(
        "confidence_change",
        &column_f64(&df, "confidence_change"),
        &diff("confidence"),
        1e-6,
        0.0,
    );
    for k in 0..10 {
        let c = format!("logit_{k}");
        assert_close(&c, &column_f64(&df, &format!("{c}_change")), &diff(&c), 1e-5, 0.0);
    }
    // Two models on the same inputs: the 16 disagreements of the oracle.
    let df = query(
        &mut s,
        "SELECT input FROM PREDICT cnn(digits) JOIN PREDICT cnn_b(digits) WHERE prediction_changed ORDER BY input",
    );
    let want = [
        23, 57, 122, 129, 171, 181, 191, 195, 211, 215, 228, 246, 260, 326, 327, 330,
    ];
    assert_eq!(
        column_f64(&df, "input"),
        want.iter().map(|&v| v as f64).collect::<Vec<_>>()
    );
    // One input on a side pairs with each input of the other.
    let df = query(
        &mut s,
        "SELECT input, b.input FROM PREDICT cnn(digits[5]) JOIN PREDICT cnn(digits[0:3])",
    );
    assert_eq!(column_f64(&df, "b.input"), vec![0.0, 1.0, 2.0]);
}

#[test]
fn before_after_join_errors() {
    let mut s = loaded();
    s.execute("LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis")
        .unwrap();
    let cases = [
        (
            "SELECT * FROM PREDICT cnn(digits[0:3]) JOIN PREDICT cnn(digits[0:4])",
            "the sides hold 3 and 4 inputs",
        ),
        (
            "SELECT * FROM PREDICT cnn(digits[0:3]) JOIN PREDICT mlp(cancer[0:3])",
            "have 10 and 2 outputs",
        ),
        (
            "SELECT * FROM PREDICT cnn(digits[0]) AS x JOIN PREDICT cnn(digits[1]) AS x",
            "both sides of JOIN are named `x`",
        ),
    ];
    assert_errors(&mut s, &cases);
}
