//! TCAV against Captum 0.9's `TCAV` itself (tools/tcav_cases.py), given the engine's
//! classifier (its logistic regression re-implemented) and random sets (its generator):
//! on the digits CNN at fc1, over all 397 test digits, the mean sign count of each
//! concept over 10 random sets, the random-vs-random mean and scipy's t-test p-value —
//! the same sign counts, so to the float32 rounding of Captum's (it keeps the counts as
//! float32 fractions: 1e-6 relative). The concepts are ones a reader can check: a bar pasted on the top rows makes
//! a 7 more of a 7 (score 1, significant) and a 1 less of a 1 (score 0); a blanked top
//! the reverse.

use crate::common::{assert_errors, column_f64, column_str, fixture, npy, query, session};

const SETUP: &str = "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
    LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
    CONCEPT top_bar = digits[0:40] WITH SET rows 0:2, cols 1:7 = 1.0;
    CONCEPT blank_top = digits[40:80] WITH SET rows 0:3, cols 0:8 = 0.0;
    CONCEPT left_bar = digits[80:120] WITH SET rows 1:7, cols 0:2 = 1.0;";

#[test]
fn tcav_matches_captum() {
    let mut s = session(SETUP);
    for target in [7, 1] {
        let df = query(
            &mut s,
            &format!(
                "SELECT * FROM TCAV cnn(digits) AT LAYER fc1 CONCEPTS (top_bar, blank_top, left_bar) TARGET {target}"
            ),
        );
        assert_eq!(column_str(&df, "concept"), ["top_bar", "blank_top", "left_bar"]);
        let (scores, random, p) = (
            column_f64(&df, "tcav_score"),
            column_f64(&df, "random_score"),
            column_f64(&df, "p_value"),
        );
        let reference = |name: &str| npy(&fixture(&format!("tcav/{name}_{target}.npy"))).1;
        let r = reference("random");
        let random_mean = r[..10].iter().sum::<f64>() / 10.0;
        for (k, name) in ["top_bar", "blank_top", "left_bar"].iter().enumerate() {
            let want = reference(name);
            let mean = want[..10].iter().sum::<f64>() / 10.0;
            assert!(
                (scores[k] - mean).abs() < 1e-6,
                "{name} → {target}: {} against {mean}",
                scores[k]
            );
            assert!(
                (random[k] - random_mean).abs() < 1e-6,
                "random → {target}: {}",
                random[k]
            );
            assert!(
                (p[k] - want[10]).abs() <= 1e-6 * want[10],
                "{name} → {target}: p {} against {}",
                p[k],
                want[10]
            );
        }
    }
}

#[test]
fn tcav_errors() {
    let mut s = session(SETUP);
    assert_errors(
        &mut s,
        &[
            (
                "SELECT * FROM TCAV cnn(digits) AT LAYER fc1 CONCEPTS (stripes)",
                "define it first",
            ),
            (
                "SELECT * FROM TCAV cnn(digits) AT LAYER fc9 CONCEPTS (top_bar)",
                "unknown layer",
            ),
            (
                "SELECT * FROM TCAV cnn(digits) AT LAYER fc1 CONCEPTS (top_bar) RANDOM 1",
                "two",
            ),
            (
                "SELECT * FROM TCAV cnn(digits) AT LAYER fc1 CONCEPTS (top_bar, top_bar)",
                "named twice",
            ),
            (
                "SELECT * FROM TCAV cnn(digits) AT LAYER fc1 CONCEPTS (top_bar) TARGET 10",
                "out of range",
            ),
        ],
    );
    // A script's concept is a dataset: SHOW DATA lists it.
    let df = query(&mut s, "SHOW DATA");
    assert!(column_str(&df, "dataset").contains(&"top_bar".to_string()));
}
