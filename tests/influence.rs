//! INFLUENCE (TracIn on the loaded weights) against a float64 torch reference on both
//! backdoored digits CNNs and their poisoned training sets (tools/influence_cases.py:
//! per-sample gradients by autograd): for each test input, over the 1,400 training
//! samples, Pearson ≥ 0.999 and the least-squares slope within 1 ± 0.01 (the scale
//! matters, not only the ranking); in fact the engine agrees to ~1e-6 relative, and the
//! test also bounds the largest error by 1e-3 of the largest influence. The test inputs
//! are the first five test digits and the sixth with the model's trigger pasted on.

use ialgebra::exec::Session;

use crate::common::{assert_errors, column_f64, fixture, npy, query, session};

fn setup(model: &str, data: &str) -> Session {
    session(&format!(
        "LOAD MODEL m FROM 'models/{model}.safetensors' ARCH 'models/{model}.json';
         LOAD DATA train FROM 'data/{data}_train_x.npy' LABELS 'data/{data}_train_y.npy';
         LOAD DATA test FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';"
    ))
}

/// Pearson's r and the least-squares slope of `got` on `want`.
fn agreement(got: &[f64], want: &[f64]) -> (f64, f64) {
    let n = got.len() as f64;
    let (mg, mw) = (got.iter().sum::<f64>() / n, want.iter().sum::<f64>() / n);
    let cov: f64 = got.iter().zip(want).map(|(g, w)| (g - mg) * (w - mw)).sum();
    let vg: f64 = got.iter().map(|g| (g - mg).powi(2)).sum();
    let vw: f64 = want.iter().map(|w| (w - mw).powi(2)).sum();
    (cov / (vg.sqrt() * vw.sqrt()), cov / vw)
}

fn check(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let (r, slope) = agreement(got, want);
    assert!(r >= 0.999, "{what}: Pearson {r}");
    assert!((slope - 1.0).abs() <= 0.01, "{what}: slope {slope}");
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-3 * scale, "{what}: largest error {worst} of {scale}");
}

/// The engine's influence of every training sample on `test` (rows: test input, then
/// training sample, as the reference's matrix).
fn matrix(s: &mut Session, test: &str, clauses: &str) -> Vec<f64> {
    let df = query(
        s,
        &format!("SELECT influence FROM INFLUENCE OF m(train) ON m({test}) {clauses} ORDER BY test_input, input"),
    );
    column_f64(&df, "influence")
}

#[test]
fn tracin_matches_torch_on_both_backdoors() {
    for (model, data, trigger) in [
        ("digits_cnn_backdoor", "digits_backdoor", "rows 6:8, cols 6:8"),
        ("digits_cnn_backdoor2", "digits_backdoor2", "rows 1:4, cols 0:1"),
    ] {
        let mut s = setup(model, data);
        // The five clean digits, then the triggered sixth (its own query: an edit applies
        // to a whole selection).
        for (layers, clauses) in [("last", ""), ("all", "USING tracin(layers = 'all')")] {
            let want = npy(&fixture(&format!("influence/{model}__{layers}.npy"))).1;
            let mut got = matrix(&mut s, "test[0:5]", clauses);
            got.extend(matrix(&mut s, &format!("test[5] WITH SET {trigger} = 1.0"), clauses));
            check(&format!("{model} {layers}"), &got, &want);
        }
        let want = npy(&fixture(&format!("influence/{model}__last_self.npy"))).1;
        let df = query(
            &mut s,
            "SELECT influence FROM INFLUENCE OF m(train) ON m(train) ORDER BY input",
        );
        check(&format!("{model} self-influence"), &column_f64(&df, "influence"), &want);
    }
    let mut s = setup("digits_cnn_backdoor", "digits_backdoor");
    let want = npy(&fixture("influence/digits_cnn_backdoor__all_cosine.npy")).1;
    let mut got = matrix(
        &mut s,
        "test[0:5]",
        "USING tracin(layers = 'conv1, conv2, fc1, fc2', normalize = true)",
    );
    got.extend(matrix(
        &mut s,
        "test[5] WITH SET rows 6:8, cols 6:8 = 1.0",
        "USING tracin(layers = 'all', normalize = true)",
    ));
    check("cosine over all layers", &got, &want);
    let want = npy(&fixture("influence/digits_cnn_backdoor__all_self.npy")).1;
    let df = query(
        &mut s,
        "SELECT influence FROM INFLUENCE OF m(train) ON m(train) USING tracin(layers = 'all') ORDER BY input",
    );
    check("self-influence over all layers", &column_f64(&df, "influence"), &want);
    // TARGET k: the test inputs' loss at class 3 instead of their predictions.
    let want = npy(&fixture("influence/digits_cnn_backdoor__last_target3.npy")).1;
    let mut got = matrix(&mut s, "test[0:5]", "TARGET 3");
    got.extend(matrix(&mut s, "test[5] WITH SET rows 6:8, cols 6:8 = 1.0", "TARGET 3"));
    check("TARGET 3", &got, &want);
}

/// TracInCP: three epochs' checkpoints of a CNN trained on the poisoned set
/// (tools/tracin_checkpoints.py), each term scaled by its learning rate, against float64
/// torch; the test inputs' targets are the final weights' predictions.
#[test]
fn tracincp_sums_the_checkpoints() {
    let mut s = session(
        "LOAD MODEL m FROM 'tests/fixtures/checkpoints/e3.safetensors' ARCH 'models/digits_cnn_backdoor.json'
             CHECKPOINTS ('tests/fixtures/checkpoints/e1.safetensors' RATE 0.1, 'tests/fixtures/checkpoints/e2.safetensors' RATE 0.1,
                          'tests/fixtures/checkpoints/e3.safetensors' RATE 0.1);
         LOAD DATA train FROM 'data/digits_backdoor_train_x.npy' LABELS 'data/digits_backdoor_train_y.npy';
         LOAD DATA test FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';",
    );
    let want = npy(&fixture("checkpoints/tracincp_last.npy")).1;
    let mut got = matrix(&mut s, "test[0:3]", "");
    got.extend(matrix(&mut s, "test[5] WITH SET rows 6:8, cols 6:8 = 1.0", ""));
    check("TracInCP", &got, &want);
    let want = npy(&fixture("checkpoints/tracincp_last_self.npy")).1;
    let df = query(
        &mut s,
        "SELECT influence FROM INFLUENCE OF m(train) ON m(train) ORDER BY input",
    );
    check("TracInCP self-influence", &column_f64(&df, "influence"), &want);
    // A checkpoint of another architecture is refused when it loads.
    assert_errors(
        &mut s,
        &[(
            "LOAD MODEL bad FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json' CHECKPOINTS ('models/cancer_mlp.safetensors')",
            "cancer_mlp",
        )],
    );
}

#[test]
fn influence_errors() {
    let mut s = setup("digits_cnn_backdoor", "digits_backdoor");
    s.execute("LOAD DATA bare FROM 'data/digits_backdoor_train_x.npy'; LOAD MODEL other FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';")
        .unwrap();
    assert_errors(
        &mut s,
        &[
            ("SELECT * FROM INFLUENCE OF m(bare) ON m(test[0])", "has no labels"),
            ("SELECT * FROM INFLUENCE OF m(train) ON other(test[0])", "one model"),
            (
                "SELECT * FROM INFLUENCE OF m(train) ON m(test[0]) USING tracin(layers = 'relu1')",
                "no weights",
            ),
            (
                "SELECT * FROM INFLUENCE OF m(train) ON m(test[0]) USING tracin(layers = 'fc9')",
                "unknown layer",
            ),
            (
                "SELECT * FROM INFLUENCE OF m(train) ON m(test[0]) USING tracing",
                "did you mean `tracin`?",
            ),
            (
                "SELECT * FROM INFLUENCE OF m(train) ON m(test[0]) TARGET 12",
                "out of range",
            ),
            (
                "SELECT * FROM INFLUENCE OF m(train) ON m(test[0] WITH LAYER fc1 = 0)",
                "activation edits",
            ),
        ],
    );
}
