//! EVALUATE's metrics against references on the digits CNN (first 10 test inputs,
//! predicted targets): Captum 0.9's `infidelity` and `sensitivity_max` given the very
//! perturbations the engine draws (so exact, not statistical), RISE's deletion and
//! insertion written out in torch, Quantus 0.6's PixelFlipping and FaithfulnessCorrelation
//! (its subsets the engine's), Quantus' ModelParameterRandomisation (scipy's Spearman of
//! the maps of copies re-initialised with the engine's draws), pytorch-grad-cam's ROAD
//! (its imputation noise the engine's), Quantus' sparseness and complexity formulas
//! (tools/metric_cases.py → tests/fixtures/metrics). Tolerance: |a − b| ≤ 1e-4 + 1e-4·|b|
//! (the maps themselves agree with Captum to ~1e-6; the curves read softmax
//! probabilities of the same copies). And the clause as a relation: GROUP BY, ORDER BY,
//! a JOIN with PREDICT, the memo, LIMIT pushed below, and its errors.

use ialgebra::exec::Session;

use crate::common::{assert_close, assert_errors, column_f64, column_str, fixture, npy, query, session};

const DIGITS: &str = "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
    LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';";

fn reference(case: &str) -> Vec<f64> {
    npy(&fixture(&format!("metrics/{case}.npy"))).1
}

/// The values of one metric (rows in input order) of `SELECT * FROM cnn(digits[0:10]) …`.
fn metric_values(s: &mut Session, clauses: &str, metric: &str) -> Vec<f64> {
    let df = query(
        s,
        &format!("SELECT input, value FROM cnn(digits[0:10]) {clauses} EVALUATE {metric} ORDER BY input"),
    );
    assert_eq!(df.height(), 10, "{metric}: one row per input");
    column_f64(&df, "value")
}

#[test]
fn metrics_match_captum_rise_and_quantus() {
    let mut s = session(DIGITS);
    for (method, using) in [
        ("ig", "USING integrated_gradients(steps = 50)"),
        ("saliency", "USING saliency"),
    ] {
        let cases: Vec<(String, String, String)> = vec![
            (
                format!("infidelity_{method}_0.003_False_0"),
                using.to_string(),
                "infidelity".into(),
            ),
            (
                format!("infidelity_{method}_0.1_True_7"),
                using.to_string(),
                "infidelity(stdev = 0.1, normalize = true, seed = 7)".into(),
            ),
            (
                format!("sensitivity_max_{method}_0.02_0"),
                using.to_string(),
                "sensitivity_max(samples = 5)".into(),
            ),
            (
                format!("sensitivity_max_{method}_0.2_3"),
                using.to_string(),
                "sensitivity_max(samples = 5, radius = 0.2, seed = 3)".into(),
            ),
            (
                format!("deletion_{method}_10"),
                using.to_string(),
                "deletion(steps = 10)".into(),
            ),
            (format!("insertion_{method}_20"), using.to_string(), "insertion".into()),
            (
                format!("deletion_{method}_7_patch2"),
                format!("{using} GRANULARITY patch(2)"),
                "deletion(steps = 7)".into(),
            ),
            (
                format!("insertion_{method}_12_blur1"),
                using.to_string(),
                "insertion(steps = 12, fill = 'blur', sigma = 1)".into(),
            ),
            (
                format!("pixel_flipping_{method}_1"),
                using.to_string(),
                "pixel_flipping".into(),
            ),
            (
                format!("pixel_flipping_{method}_4"),
                using.to_string(),
                "pixel_flipping(features_in_step = 4)".into(),
            ),
            (
                format!("faithfulness_correlation_{method}_50_16_0"),
                using.to_string(),
                "faithfulness_correlation(samples = 50, subset = 16)".into(),
            ),
            (
                format!("faithfulness_correlation_{method}_30_5_9"),
                using.to_string(),
                "faithfulness_correlation(samples = 30, subset = 5, seed = 9)".into(),
            ),
            (
                format!("randomization_{method}_top_down_0"),
                using.to_string(),
                "randomization".into(),
            ),
            (
                format!("randomization_{method}_independent_5"),
                using.to_string(),
                "randomization(layers = 'independent', seed = 5)".into(),
            ),
            (format!("road_{method}_morf"), using.to_string(), "road".into()),
            (
                format!("road_{method}_lerf_50_3"),
                using.to_string(),
                "road(mode = 'lerf', percentile = 50, seed = 3)".into(),
            ),
            (format!("sparseness_{method}"), using.to_string(), "sparseness".into()),
            (format!("complexity_{method}"), using.to_string(), "complexity".into()),
        ];
        for (case, clauses, metric) in cases {
            let got = metric_values(&mut s, &clauses, &metric);
            assert_close(&case, &got, &reference(&case), 1e-4, 1e-4);
        }
    }
    // Deletion to a constant BASELINE: saliency's map does not depend on it, the curve does.
    let got = metric_values(&mut s, "USING saliency BASELINE 0.5", "deletion(steps = 10)");
    assert_close(
        "deletion to 0.5",
        &got,
        &reference("deletion_saliency_10_base05"),
        1e-4,
        1e-4,
    );
}

#[test]
fn evaluate_is_a_relation() {
    let mut s = session(DIGITS);
    // One row per input × metric, in the order asked, with the method's parameters.
    let df = query(
        &mut s,
        "SELECT * FROM cnn(digits[0:3]) USING saliency EVALUATE deletion(steps = 10), Sparseness",
    );
    let cols: Vec<String> = df.get_column_names().iter().map(|c| c.to_string()).collect();
    assert_eq!(
        cols,
        ["input", "label", "prediction", "target", "method", "metric", "value"]
    );
    assert_eq!(
        column_str(&df, "metric"),
        [
            "deletion(steps = 10)",
            "sparseness",
            "deletion(steps = 10)",
            "sparseness",
            "deletion(steps = 10)",
            "sparseness"
        ]
    );
    assert!(column_str(&df, "method").iter().all(|m| m == "saliency(abs = true)"));

    // Rank methods by deletion AUC (lower is better): UNION ALL of two EVALUATEs, GROUP BY.
    let df = query(
        &mut s,
        "SELECT method, avg(value) AS auc, count(*) AS n FROM (
            SELECT * FROM cnn(digits[0:20]) USING saliency EVALUATE deletion
            UNION ALL
            SELECT * FROM cnn(digits[0:20]) USING integrated_gradients EVALUATE deletion)
         GROUP BY method ORDER BY auc",
    );
    assert_eq!(df.height(), 2);
    assert_eq!(column_f64(&df, "n"), [20.0, 20.0]);
    let methods = column_str(&df, "method");
    assert!(methods[0].starts_with("integrated_gradients"), "{methods:?}");

    // JOIN with PREDICT, ORDER BY value; a predicate on the input is pushed below.
    let df = query(
        &mut s,
        "SELECT e.input, p.confidence, e.value FROM
            (SELECT * FROM cnn(digits) USING saliency EVALUATE insertion WHERE input < 6) AS e
         JOIN PREDICT cnn(digits) AS p ON e.input = p.input ORDER BY e.value DESC",
    );
    assert_eq!(df.height(), 6);
    let v = column_f64(&df, "value");
    assert!(v.windows(2).all(|w| w[0] >= w[1]), "{v:?}");

    // The same EVALUATE twice is served from the memo, bit for bit.
    let q = "SELECT value FROM cnn(digits[0:5]) USING saliency EVALUATE infidelity(samples = 4)";
    let first = column_f64(&query(&mut s, q), "value");
    let second = column_f64(&query(&mut s, q), "value");
    assert_eq!(first, second);

    // LIMIT counts rows: two metrics, so three rows need two inputs.
    let plan = match s.execute("PLAN SELECT * FROM cnn(digits) USING saliency EVALUATE sparseness, complexity LIMIT 3")
    {
        Ok(mut outs) => format!("{:?}", outs.pop()),
        Err(e) => panic!("{}", e.message),
    };
    assert!(plan.contains("first 3 rows"), "{plan}");
    let df = query(
        &mut s,
        "SELECT * FROM cnn(digits) USING saliency EVALUATE sparseness, complexity LIMIT 3",
    );
    assert_eq!(df.height(), 3);
}

#[test]
fn evaluate_errors() {
    let mut s = session(DIGITS);
    assert_errors(
        &mut s,
        &[
            (
                "SELECT * FROM cnn(digits[0]) USING saliency EVALUATE delection",
                "did you mean `deletion`?",
            ),
            (
                "SELECT * FROM cnn(digits[0]) USING saliency EVALUATE deletion(step = 3)",
                "steps",
            ),
            (
                "SELECT * FROM cnn(digits[0]) USING saliency EVALUATE deletion(sigma = 3)",
                "fill = 'blur'",
            ),
            (
                "SELECT * FROM cnn(digits[0]) USING layer_activation AT LAYER conv1 EVALUATE sparseness",
                "attributes a layer's units",
            ),
            (
                "SELECT * FROM cnn(digits[0]) JOIN cnn(digits[1]) USING saliency EVALUATE sparseness",
                "not a JOIN",
            ),
            (
                "SELECT * FROM cnn(digits[0]) USING saliency EVALUATE sparseness, sparseness",
                "asked twice",
            ),
            (
                "SELECT * FROM cnn(digits[0]) USING saliency TARGET fc1[3] EVALUATE deletion",
                "class output",
            ),
        ],
    );
}
