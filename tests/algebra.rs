//! The i-Algebra operators composed: the seven compositions of the prototype
//! (selection∘projection, selection∘join, selection∘anti-join, projection∘join,
//! projection∘anti-join, selection∘projection∘join, selection∘projection∘anti-join),
//! each checked against what it must equal; set operations on query results; the
//! optimizer's predicate pushdown, the memo and PLAN.
//!
//! Tolerances: an equality of two computations of the same numbers is checked to 1e-6;
//! completeness of integrated gradients with 200 Gauss–Legendre steps to 5e-3 relative
//! plus 5e-3 absolute (its convergence error on these ReLU models measured up to 2.4e-3
//! relative).

use ialgebra::exec::Session;
use polars::prelude::DataFrame;

use crate::common::*;

const SETUP: &str = "
    LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
    LOAD MODEL cnn_b FROM 'models/digits_cnn_b.safetensors' ARCH 'models/digits_cnn_b.json';
    LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';";

fn digits() -> Session {
    session(SETUP)
}

fn same(what: &str, got: &[f64], want: &[f64]) {
    assert_close(what, got, want, 1e-6, 1e-6);
}

fn total(df: &DataFrame, column: &str) -> f64 {
    column_f64(df, column).iter().sum()
}

/// F(x)[class] of one input, from PREDICT.
fn logit(s: &mut Session, model: &str, input: &str, class: usize) -> f64 {
    let df = query(s, &format!("SELECT logit_{class} FROM PREDICT {model}({input})"));
    column_f64(&df, &format!("logit_{class}"))[0]
}

fn prediction(s: &mut Session, model: &str, input: &str) -> usize {
    let df = query(s, &format!("SELECT prediction FROM PREDICT {model}({input})"));
    column_f64(&df, "prediction")[0] as usize
}

fn complete(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 5e-3 + 5e-3 * want.abs(),
        "{what}: attributions sum to {got}, expected {want}"
    );
}

/// selection∘projection: layer integrated gradients with the input outside a window held
/// as it is sums to F(x) − F(x with the window at the baseline), which feature ablation
/// of the window as one patch measures directly.
#[test]
fn selection_projection() {
    let mut s = digits();
    let window = "WINDOW rows 2:6, cols 2:6";
    let lig = query(
        &mut s,
        &format!("SELECT * FROM cnn(digits[3]) AT LAYER fc1 {window} USING layer_integrated_gradients(steps = 200)"),
    );
    let drop = query(
        &mut s,
        &format!("SELECT attribution FROM cnn(digits[3]) USING feature_ablation {window} GRANULARITY patch(4)"),
    );
    complete(
        "AT LAYER fc1 WINDOW",
        total(&lig, "attribution"),
        column_f64(&drop, "attribution")[0],
    );
    // through a layer, the window's features alone are attributed, with the probe's fit
    let through = query(
        &mut s,
        &format!("SELECT * FROM cnn(digits[3]) THROUGH LAYER pool {window} USING integrated_gradients"),
    );
    assert_eq!(through.height(), 16);
    for (r, c) in column_f64(&through, "row").iter().zip(column_f64(&through, "col")) {
        assert!((2.0..6.0).contains(r) && (2.0..6.0).contains(&c));
    }
    let acc = column_f64(&through, "probe_accuracy")[0];
    assert!(acc > 0.9 && acc <= 1.0, "probe accuracy {acc}");
}

/// selection∘join: two inputs at one layer; each side is that input's own layer
/// attribution, and `attribution` is their mean.
#[test]
fn selection_join() {
    let mut s = digits();
    let joined = query(
        &mut s,
        "SELECT * FROM cnn(digits[3]) JOIN cnn(digits[5]) AT LAYER fc1 USING layer_gradient_x_activation ORDER BY unit",
    );
    assert_eq!(joined.height(), 32);
    for (side, input) in [("a", 3), ("b", 5)] {
        let alone = query(
            &mut s,
            &format!(
                "SELECT attribution FROM cnn(digits[{input}]) AT LAYER fc1 USING layer_gradient_x_activation ORDER BY unit"
            ),
        );
        same(
            &format!("side {side}"),
            &column_f64(&joined, &format!("{side}.attribution")),
            &column_f64(&alone, "attribution"),
        );
    }
    let mean: Vec<f64> = column_f64(&joined, "a.attribution")
        .iter()
        .zip(column_f64(&joined, "b.attribution"))
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    same("mean", &column_f64(&joined, "attribution"), &mean);
}

/// selection∘anti-join: each input explained against the other at a layer; with layer
/// integrated gradients each side sums to the difference of the two outputs.
#[test]
fn selection_antijoin() {
    let mut s = digits();
    let df = query(
        &mut s,
        "SELECT * FROM cnn(digits[3]) ANTIJOIN cnn(digits[5]) AT LAYER fc1 USING layer_integrated_gradients(steps = 200)",
    );
    let (t3, t5) = (
        prediction(&mut s, "cnn", "digits[3]"),
        prediction(&mut s, "cnn", "digits[5]"),
    );
    let want_a = logit(&mut s, "cnn", "digits[3]", t3) - logit(&mut s, "cnn", "digits[5]", t3);
    let want_b = logit(&mut s, "cnn", "digits[5]", t5) - logit(&mut s, "cnn", "digits[3]", t5);
    complete("a against b", total(&df, "a.attribution"), want_a);
    complete("b against a", total(&df, "b.attribution"), want_b);
    same(
        "attribution is the left side",
        &column_f64(&df, "attribution"),
        &column_f64(&df, "a.attribution"),
    );
}

/// projection∘join: two models on one input, in a window.
#[test]
fn projection_join() {
    let mut s = digits();
    let window = "WINDOW rows 2:6, cols 2:6";
    let df = query(
        &mut s,
        &format!("SELECT * FROM cnn(digits[3]) JOIN cnn_b(digits[3]) {window} USING saliency ORDER BY feature"),
    );
    assert_eq!(df.height(), 16);
    for (side, model) in [("a", "cnn"), ("b", "cnn_b")] {
        let alone = query(
            &mut s,
            &format!("SELECT attribution FROM {model}(digits[3]) {window} USING saliency ORDER BY feature"),
        );
        same(
            side,
            &column_f64(&df, &format!("{side}.attribution")),
            &column_f64(&alone, "attribution"),
        );
    }
}

/// projection∘anti-join: inside the window each input is explained against the other;
/// outside it the input stays as it is. The left side is integrated gradients with the
/// other input as the baseline, and it sums to F(x) − F(x with the window from x′).
#[test]
fn projection_antijoin() {
    let mut s = digits();
    let window = "WINDOW rows 0:4";
    let df = query(
        &mut s,
        &format!(
            "SELECT * FROM cnn(digits[3]) ANTIJOIN cnn(digits[5]) {window} USING integrated_gradients(steps = 200) ORDER BY feature"
        ),
    );
    assert_eq!(df.height(), 32);
    let against = query(
        &mut s,
        &format!(
            "SELECT attribution FROM cnn(digits[3]) {window} USING integrated_gradients(steps = 200) BASELINE digits[5] ORDER BY feature"
        ),
    );
    same(
        "a",
        &column_f64(&df, "a.attribution"),
        &column_f64(&against, "attribution"),
    );
    // occlusion with one window-sized patch and digits[5] as the baseline measures the drop
    let drop = query(
        &mut s,
        &format!(
            "SELECT attribution FROM cnn(digits[3]) USING feature_ablation {window} GRANULARITY patch(8) BASELINE digits[5]"
        ),
    );
    complete(
        "a against b in the window",
        total(&df, "a.attribution"),
        column_f64(&drop, "attribution")[0],
    );
}

/// selection∘projection∘join and selection∘projection∘anti-join, through a layer.
#[test]
fn selection_projection_join_and_antijoin() {
    let mut s = digits();
    let clauses = "THROUGH LAYER pool WINDOW rows 2:6, cols 2:6 USING integrated_gradients";
    let joined = query(
        &mut s,
        &format!("SELECT * FROM cnn(digits[3]) JOIN cnn(digits[5]) {clauses} ORDER BY feature"),
    );
    assert_eq!(joined.height(), 16);
    for (side, input) in [("a", 3), ("b", 5)] {
        let alone = query(
            &mut s,
            &format!("SELECT attribution FROM cnn(digits[{input}]) {clauses} ORDER BY feature"),
        );
        same(
            side,
            &column_f64(&joined, &format!("{side}.attribution")),
            &column_f64(&alone, "attribution"),
        );
    }
    let anti = query(
        &mut s,
        &format!("SELECT * FROM cnn(digits[3]) ANTIJOIN cnn(digits[5]) {clauses} ORDER BY feature"),
    );
    for (side, x, other) in [("a", 3, 5), ("b", 5, 3)] {
        let against = query(
            &mut s,
            &format!("SELECT attribution FROM cnn(digits[{x}]) {clauses} BASELINE digits[{other}] ORDER BY feature"),
        );
        same(
            side,
            &column_f64(&anti, &format!("{side}.attribution")),
            &column_f64(&against, "attribution"),
        );
    }
}

/// Two models on one input: the anti-join explains f1 − f2, so with integrated
/// gradients it sums to (f1 − f2)(x) − (f1 − f2)(baseline), for the left model's class.
#[test]
fn two_model_antijoin_explains_the_difference() {
    let mut s = digits();
    s.execute("LOAD DATA zero FROM 'tests/fixtures/data/digits_zero.npy'")
        .unwrap();
    let df = query(
        &mut s,
        "SELECT * FROM cnn(digits[57]) ANTIJOIN cnn_b(digits[57]) USING integrated_gradients(steps = 200)",
    );
    let t = prediction(&mut s, "cnn", "digits[57]");
    let diff = |s: &mut Session, input: &str| logit(s, "cnn", input, t) - logit(s, "cnn_b", input, t);
    let want = diff(&mut s, "digits[57]") - diff(&mut s, "zero");
    complete("cnn − cnn_b", total(&df, "a.attribution"), want);
    let b: Vec<f64> = column_f64(&df, "b.attribution").iter().map(|v| -v).collect();
    same(
        "the right side is the opposite difference",
        &column_f64(&df, "a.attribution"),
        &b,
    );
    assert!(column_f64(&df, "b.target").iter().all(|&bt| bt as usize == t));
}

/// "Important to one model and not the other": EXCEPT and INTERSECT of top-k queries.
#[test]
fn set_operations_on_top_features() {
    let mut s = digits();
    let top = |model: &str| {
        format!("SELECT row, col FROM {model}(digits[57]) USING saliency ORDER BY attribution DESC LIMIT 10")
    };
    let only_a = query(&mut s, &format!("({}) EXCEPT ({})", top("cnn"), top("cnn_b")));
    let both = query(&mut s, &format!("({}) INTERSECT ({})", top("cnn"), top("cnn_b")));
    let either = query(&mut s, &format!("({}) UNION ({})", top("cnn"), top("cnn_b")));
    assert_eq!(only_a.height() + both.height(), 10);
    assert!(either.height() >= 10 && either.height() == 20 - both.height());
}

/// `WHERE prediction != label` over the whole test set runs the method on the 23
/// misclassified inputs only; a second identical query is served from the memo with no
/// forward pass; PLAN says both.
#[test]
fn pushdown_memo_and_plan() {
    let mut s = digits();
    let q = "SELECT input, sum(attribution) AS total FROM cnn(digits) USING integrated_gradients(steps = 8) WHERE prediction != label GROUP BY input ORDER BY input";
    let plan = plan_text(&mut s, q);
    assert!(
        plan.contains("only inputs where prediction != label  [rule push_input_predicates]"),
        "{plan}"
    );
    assert!(plan.contains("memo miss"), "{plan}");
    let before = s.stats();
    let first = query(&mut s, q);
    assert_eq!(first.height(), 23);
    assert_eq!(s.stats().attributed_inputs - before.attributed_inputs, 23);
    let model = s.model("cnn").unwrap();
    let passes = model.passes.load(std::sync::atomic::Ordering::Relaxed);
    let plan = plan_text(&mut s, q);
    let snapshot = r#"Sort input
  └─ Project input, "sum(attribution)" AS total
    └─ Aggregate by input: sum(attribution)
      └─ Attribute cnn(digits) USING integrated_gradients(steps = 8, rule = gausslegendre)
         only inputs where prediction != label  [rule push_input_predicates]
         target predicted, baseline zero, window all features, granularity feature
cache:
  cnn(digits) USING integrated_gradients: memo hit: the result is served from the memo, no method runs (outputs of 397/397 inputs in the activation cache)
"#;
    assert_eq!(plan, snapshot);
    let second = query(&mut s, q);
    assert_eq!(first, second);
    assert_eq!(
        model.passes.load(std::sync::atomic::Ordering::Relaxed),
        passes,
        "no forward pass"
    );
    assert_eq!(s.stats().memo_hits, before.memo_hits + 1);
    assert_eq!(s.stats().attributed_inputs - before.attributed_inputs, 23);
    // a predicate on features stays above the method; one on inputs goes below
    let plan = plan_text(
        &mut s,
        "PLAN SELECT * FROM cnn(digits[0:50]) USING saliency WHERE row >= 6 AND label = 3 AND input < 40",
    );
    let snapshot = "\
Project input, label, prediction, target, feature, channel, row, col, value, attribution
  └─ Filter row >= 6
    └─ Attribute cnn(digits[0:50]) USING saliency(abs = true)
       only inputs where (label = 3) AND (input < 40)  [rule push_input_predicates]
       target predicted, window all features, granularity feature
cache:
  cnn(digits[0:50]) USING saliency: memo miss: the method runs (outputs of 50/50 inputs in the activation cache)
";
    assert_eq!(plan, snapshot);
}

fn plan_text(s: &mut Session, q: &str) -> String {
    let text = if q.starts_with("PLAN") {
        q.to_string()
    } else {
        format!("PLAN {q}")
    };
    match s.execute(&text) {
        Ok(mut outs) => match outs.pop() {
            Some(ialgebra::exec::Output::Plan(p)) => p,
            other => panic!("expected a plan, got {other:?}"),
        },
        Err(e) => panic!("{}", e.render(&text, "plan")),
    }
}

/// The saved comparison finds exactly the 16 inputs on which the two CNNs disagree, as
/// the oracle's training summary lists them.
#[test]
fn the_two_cnns_disagree_on_the_oracle_inputs() {
    let mut s = digits();
    let df = query(
        &mut s,
        "SELECT input FROM cnn(digits) JOIN cnn_b(digits) USING saliency WHERE feature = 0 AND a.prediction != b.prediction ORDER BY input",
    );
    let want = [
        23, 57, 122, 129, 171, 181, 191, 195, 211, 215, 228, 246, 260, 326, 327, 330,
    ];
    assert_eq!(column_f64(&df, "input"), want.map(f64::from).to_vec());
}

/// A LIMIT that sees only the first inputs attributes only those (rule
/// `push_input_limit`), with the same answer as without the rule.
#[test]
fn limits_over_inputs_are_pushed_down() {
    let mut s = digits();
    let attributed = |s: &mut Session, q: &str| -> (DataFrame, usize) {
        let before = s.stats().attributed_inputs;
        let df = query(s, q);
        (df, s.stats().attributed_inputs - before)
    };
    // 64 rows per input: 100 rows need 2 inputs
    let (rows, n) = attributed(&mut s, "SELECT * FROM cnn(digits) USING saliency LIMIT 100");
    assert_eq!((rows.height(), n), (100, 2));
    let (all, _) = attributed(&mut s, "SELECT * FROM cnn(digits[0:2]) USING saliency");
    assert_eq!(rows, all.slice(0, 100));
    // groups by input: LIMIT 5 OFFSET 2 needs the first 7
    let (groups, n) = attributed(
        &mut s,
        "SELECT input, sum(attribution) AS total FROM cnn(digits) USING saliency GROUP BY input LIMIT 5 OFFSET 2",
    );
    assert_eq!(n, 7);
    assert_eq!(column_f64(&groups, "input"), vec![2.0, 3.0, 4.0, 5.0, 6.0]);
    // after a pushed-down predicate: the first three misclassified inputs
    let q = "SELECT input, sum(attribution) AS total FROM cnn(digits) USING saliency WHERE prediction != label GROUP BY input LIMIT 3";
    let (wrong, n) = attributed(&mut s, q);
    assert_eq!(n, 3);
    assert_eq!(column_f64(&wrong, "input"), vec![57.0, 91.0, 95.0]);
    assert!(plan_text(&mut s, q).contains("only the first 3 inputs  [rule push_input_limit]"));
    // an ORDER BY between the LIMIT and the method needs every input
    let (_, n) = attributed(
        &mut s,
        "SELECT input, sum(attribution) AS total FROM cnn(digits[0:20]) USING saliency GROUP BY input ORDER BY total DESC LIMIT 3",
    );
    assert_eq!(n, 20);
}

/// Operators share forward passes through the activation cache: once a layer's values
/// are recorded, another layer method on the same inputs runs no forward pass to get
/// them (layer_activation then runs none at all), and still gives the same numbers.
#[test]
fn layer_methods_share_cached_activations() {
    let mut s = digits();
    query(&mut s, "SELECT * FROM cnn(digits[0:10]) AT LAYER conv2 USING gradcam");
    let model = s.model("cnn").unwrap();
    let passes = || model.passes.load(std::sync::atomic::Ordering::Relaxed);
    let before = passes();
    let cached = query(
        &mut s,
        "SELECT activation FROM cnn(digits[0:10]) AT LAYER conv2 USING layer_activation ORDER BY input, unit",
    );
    assert_eq!(passes(), before, "the activations came from the cache");
    let mut fresh = digits();
    fresh.execute("SET cache_mb = 0").unwrap();
    let computed = query(
        &mut fresh,
        "SELECT activation FROM cnn(digits[0:10]) AT LAYER conv2 USING layer_activation ORDER BY input, unit",
    );
    assert_eq!(cached, computed);
}

/// A drill-down session (Grad-CAM at the last stage for two classes, then an earlier
/// stage, then layer gradient × activation at a still earlier one for the predicted
/// class): the first query's forward keeps its passes from an early stage, and every
/// later query runs only the backward part — no forward pass at all — with the same
/// tables as a session without caches.
#[test]
fn drill_down_runs_only_the_backward_part() {
    let session = |cache_mb: usize| {
        let mut s = Session::new();
        s.execute(&format!(
            "SET cache_mb = {cache_mb};
             LOAD DATA x FROM 'tests/fixtures/zoo/resnet_basic.inputs.npy';
             LOAD MODEL m FROM 'tests/fixtures/zoo/resnet_basic.ts.onnx'"
        ))
        .unwrap();
        s
    };
    let queries = [
        "SELECT * FROM m(x) TARGET 1 AT LAYER layer4 USING gradcam ORDER BY input, unit",
        "SELECT * FROM m(x) TARGET 2 AT LAYER layer4 USING gradcam ORDER BY input, unit",
        "SELECT * FROM m(x) TARGET 1 AT LAYER layer3 USING gradcam ORDER BY input, unit",
        "SELECT * FROM m(x) AT LAYER layer2 USING layer_gradient_x_activation ORDER BY input, unit",
    ];
    let mut cached = session(256);
    let mut fresh = session(0);
    let model = cached.model("m").unwrap();
    let passes = || model.passes.load(std::sync::atomic::Ordering::Relaxed);
    let mut after_first = 0;
    for (i, q) in queries.iter().enumerate() {
        let got = query(&mut cached, q);
        if i == 0 {
            after_first = passes();
        }
        assert!(got.height() > 0, "a test that cannot fail");
        assert_eq!(got, query(&mut fresh, q), "{q}");
    }
    assert_eq!(passes(), after_first, "the later queries ran no forward pass");
    let cache = query(&mut cached, "SHOW CACHE");
    assert_eq!(column_f64(&cache, "passes"), [1.0]);
}

/// A whole-dataset audit grouped by input streams: with a small memory budget the
/// inputs are attributed and aggregated a chunk at a time, with the same answer.
#[test]
fn whole_dataset_aggregates_stream_in_chunks() {
    let q = "SELECT input, label, sum(attribution) AS total, max(abs(attribution)) AS peak FROM cnn(digits) USING saliency WHERE row >= 4 GROUP BY input, label HAVING sum(attribution) > 1 ORDER BY input";
    let mut whole = digits();
    whole.execute("SET cache_mb = 0").unwrap();
    let expected = query(&mut whole, q);
    assert_eq!(whole.stats().streamed_chunks, 0);
    let mut streamed = digits();
    // Half of 1 MB at 160 bytes a row and 64 rows an input: 51 inputs a chunk, 8 chunks
    streamed.execute("SET cache_mb = 0; SET memory_mb = 1").unwrap();
    let got = query(&mut streamed, q);
    assert_eq!(streamed.stats().streamed_chunks, 8);
    assert_eq!(streamed.stats().attributed_inputs, 397);
    assert!(expected.height() > 100, "a test that cannot fail");
    // Batches that end at other inputs may sum in another order: equal to float noise.
    assert_eq!(column_f64(&got, "input"), column_f64(&expected, "input"));
    assert_eq!(column_f64(&got, "label"), column_f64(&expected, "label"));
    for c in ["total", "peak"] {
        assert_close(c, &column_f64(&got, c), &column_f64(&expected, c), 1e-5, 1e-5);
    }
}

/// A gradient method explaining the predicted class finds it in its own forward pass
/// instead of a pass of its own first: the table equals the one computed with the
/// predictions known first (a pushed-down predicate on `prediction` needs them before
/// the method), in fewer passes, and the outputs still reach the activation cache.
#[test]
fn gradient_methods_find_their_predicted_targets_in_their_own_pass() {
    for using in ["saliency", "deeplift", "input_x_gradient", "guided_backprop"] {
        let mut s = digits();
        s.execute("SET cache_mb = 0").unwrap();
        let model = s.model("cnn").unwrap();
        let passes = || model.passes.load(std::sync::atomic::Ordering::Relaxed);
        let columns = "input, row, col, prediction, target, attribution";
        let before = passes();
        let own = query(
            &mut s,
            &format!("SELECT {columns} FROM cnn(digits[0:40]) USING {using} ORDER BY input, row, col"),
        );
        let own_passes = passes() - before;
        let before = passes();
        let first = query(
            &mut s,
            &format!(
                "SELECT {columns} FROM cnn(digits[0:40]) USING {using} WHERE prediction >= 0 ORDER BY input, row, col"
            ),
        );
        let first_passes = passes() - before;
        assert_eq!(own, first, "{using}");
        assert!(
            own_passes < first_passes,
            "{using}: {own_passes} vs {first_passes} passes"
        );
    }
    let mut s = digits();
    let own = query(
        &mut s,
        "SELECT input, unit, prediction, attribution FROM cnn(digits[0:40]) AT LAYER conv2 USING gradcam ORDER BY input, unit",
    );
    let mut fresh = digits();
    let first = query(
        &mut fresh,
        "SELECT input, unit, prediction, attribution FROM cnn(digits[0:40]) AT LAYER conv2 USING gradcam WHERE prediction >= 0 ORDER BY input, unit",
    );
    assert_eq!(own, first, "gradcam");
    query(&mut s, "SELECT * FROM cnn(digits[40:50]) USING saliency");
    let plan = plan_text(&mut s, "SELECT * FROM cnn(digits[40:50]) USING integrated_gradients");
    assert!(
        plan.contains("outputs of 10/10 inputs in the activation cache"),
        "{plan}"
    );
}
