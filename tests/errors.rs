//! What users see when something is wrong: each case's rendered error (message, line and
//! column, the line with a caret under the span, hints) is compared with
//! tests/snapshots/errors.txt. `IALG_UPDATE=1 cargo test` rewrites the snapshot; review
//! the diff. Every case also checks that the session still works afterwards.

use crate::common::*;

const SETUP: &str = "
    LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
    LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
    LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
    LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;";

const CASES: &[(&str, &str)] = &[
    ("missing FROM", "SELECT row, col cnn(digits[0]);"),
    ("nothing to select", "SELECT FROM cnn(digits);"),
    ("unfinished WHERE", "SELECT * FROM cnn(digits[0]) USING saliency WHERE"),
    ("unclosed string", "LOAD DATA d FROM 'data/x.npy;"),
    ("a bare table name", "SELECT * FROM digits;"),
    (
        "second line of a script",
        "SHOW MODELS;\nSELECT * FROM cnn(digits[0]) USING saliency ORDER BY;",
    ),
    ("unknown model", "SELECT * FROM cnm(digits[0]);"),
    ("unknown dataset", "PREDICT cnn(digit[0]);"),
    (
        "unknown method",
        "SELECT * FROM cnn(digits[0]) USING integrated_gradient;",
    ),
    (
        "unknown parameter",
        "SELECT * FROM cnn(digits[0]) USING integrated_gradients(step = 20);",
    ),
    (
        "parameter range",
        "SELECT * FROM cnn(digits[0]) USING integrated_gradients(steps = 0);",
    ),
    (
        "unknown column",
        "SELECT row, colum FROM cnn(digits[0]) USING saliency;",
    ),
    (
        "unknown column of a table",
        "SELECT * FROM mlp(cancer) WINDOW columns mean_radius, worst_aera;",
    ),
    ("index out of range", "PREDICT cnn(digits[397]);"),
    ("shape mismatch", "PREDICT cnn(cancer[0:3]);"),
    ("window out of bounds", "SELECT * FROM cnn(digits[0]) WINDOW rows 2:12;"),
    (
        "label target without labels",
        "LOAD DATA raw FROM 'data/digits_test_x.npy'; SELECT * FROM cnn(raw[0]) TARGET LABEL;",
    ),
    (
        "not grouped",
        "SELECT input, row, sum(attribution) FROM cnn(digits[0]) USING saliency GROUP BY input;",
    ),
    ("unknown variable", "SELECT * FROM cnn(digits[:idx]);"),
    ("unknown setting", "SET step = 10;"),
    (
        "export without overwrite",
        "EXPORT PREDICT cnn(digits[0]) TO 'data/cancer_test.csv';",
    ),
    ("export type", "EXPORT PREDICT cnn(digits[0]) TO 'out/result.xlsx';"),
    (
        "missing weights file",
        "LOAD MODEL m FROM 'models/nope.safetensors' ARCH 'models/digits_cnn.json';",
    ),
    (
        "unknown layer",
        "SELECT * FROM cnn(digits[0]) AT LAYER conv3 USING gradcam;",
    ),
    (
        "layer method without a layer",
        "SELECT * FROM cnn(digits[0]) USING gradcam;",
    ),
    (
        "input method at a layer",
        "SELECT * FROM cnn(digits[0]) AT LAYER conv2 USING saliency;",
    ),
    (
        "neuron method without a unit",
        "SELECT * FROM cnn(digits[0]) USING neuron_gradient;",
    ),
    (
        "unit out of range",
        "SELECT * FROM cnn(digits[0]) TARGET fc1[32] USING neuron_gradient;",
    ),
    (
        "unit coordinates",
        "SELECT * FROM cnn(digits[0]) TARGET conv2[3, 9] USING neuron_gradient;",
    ),
    (
        "upsampling a dense layer",
        "SELECT * FROM cnn(digits[0]) AT LAYER fc1 USING gradcam(upsample = true);",
    ),
    (
        "anti-join without a baseline method",
        "SELECT * FROM cnn(digits[1]) ANTIJOIN cnn(digits[2]) USING saliency;",
    ),
    (
        "anti-join of different models and inputs",
        "LOAD MODEL cnn2 FROM 'models/digits_cnn_b.safetensors' ARCH 'models/digits_cnn_b.json';\nSELECT * FROM cnn(digits[1]) ANTIJOIN cnn2(digits[2]) USING integrated_gradients;",
    ),
    (
        "join of different features",
        "SELECT * FROM (cnn(digits[1]) AT LAYER conv2 USING gradcam) JOIN cnn(digits[2]) USING saliency;",
    ),
    (
        "join sides of different sizes",
        "SELECT * FROM cnn(digits[0:3]) JOIN cnn(digits[0:2]) USING saliency;",
    ),
    (
        "through a layer with AT LAYER",
        "SELECT * FROM cnn(digits[0]) AT LAYER conv2 THROUGH LAYER fc1 USING gradcam;",
    ),
    (
        "attack without eps",
        "LET adv = ATTACK pgd(steps = 20) ON cnn(digits[0:10]);",
    ),
    (
        "unknown attack parameter",
        "LET adv = ATTACK pgd(eps = 0.1, step = 20) ON cnn(digits[0:10]);",
    ),
    (
        "attack with a USING clause",
        "LET adv = ATTACK fgsm(eps = 0.1) ON cnn(digits[0:10]) USING saliency;",
    ),
    (
        "activation edit outside a model",
        "LET x = digits[0] WITH LAYER fc1[3] = 0;",
    ),
    (
        "activation edit of an unknown layer",
        "PREDICT cnn(digits[0] WITH LAYER fc3 SCALE 2);",
    ),
    (
        "activation edit index out of range",
        "PREDICT cnn(digits[0] WITH LAYER conv2[1, 8] = 0);",
    ),
    (
        "patching from several inputs",
        "SELECT * FROM cnn(digits[0] WITH LAYER fc1 FROM digits[1:4]) USING saliency;",
    ),
    ("TOP beyond the outputs", "PREDICT cnn(digits[0]) TOP 12;"),
    (
        "a window function in WHERE",
        "SELECT * FROM cnn(digits[0]) WHERE rank() OVER (ORDER BY attribution) < 3;",
    ),
    (
        "a subquery of two columns",
        "SELECT * FROM PREDICT cnn(digits) WHERE input IN (SELECT input, label FROM PREDICT cnn(digits));",
    ),
    (
        "AT LAYER * with gradcam",
        "SELECT * FROM cnn(digits[0]) AT LAYER * USING gradcam;",
    ),
    (
        "a two-model difference by a method that does not take differences",
        "LOAD MODEL cnn_b FROM 'models/digits_cnn_b.safetensors' ARCH 'models/digits_cnn_b.json';
SELECT * FROM cnn(digits[0]) ANTIJOIN cnn_b(digits[0]) USING lime;",
    ),
    (
        "an unknown metric",
        "SELECT * FROM cnn(digits[0]) USING saliency EVALUATE delection(steps = 5);",
    ),
    (
        "EVALUATE of a layer method",
        "SELECT * FROM cnn(digits[0]) AT LAYER conv2 USING gradcam EVALUATE deletion;",
    ),
    (
        "EVALUATE on both sides of a JOIN",
        "SELECT * FROM cnn(digits[0]) JOIN cnn(digits[1]) USING saliency EVALUATE sparseness;",
    ),
    (
        "a blur parameter without the blur",
        "SELECT * FROM cnn(digits[0]) USING saliency EVALUATE insertion(sigma = 2);",
    ),
    (
        "INFLUENCE of an unlabelled training set",
        "LOAD DATA bare FROM 'data/digits_train_x.npy';
SELECT * FROM INFLUENCE OF cnn(bare) ON cnn(digits[0]);",
    ),
    (
        "a TracIn layer without weights",
        "LOAD DATA train FROM 'data/digits_train_x.npy' LABELS 'data/digits_train_y.npy';
SELECT * FROM INFLUENCE OF cnn(train) ON cnn(digits[0]) USING tracin(layers = 'relu1');",
    ),
    (
        "a file name one letter off",
        "LOAD MODEL m FROM 'models/digits_cnn.safetenors' ARCH 'models/digits_cnn.json';",
    ),
    (
        "the model's values in another shape",
        "LOAD DATA flat FROM 'tests/fixtures/data/digits_test_x.csv'; PREDICT cnn(flat[0]);",
    ),
    (
        "a WITH name outside its query",
        "WITH top AS (SELECT input FROM PREDICT cnn(digits) LIMIT 3) SELECT * FROM top; SELECT * FROM top;",
    ),
    (
        "a table join on a column one side lacks",
        "WITH a AS (SELECT input FROM PREDICT cnn(digits[0:3])) SELECT * FROM a JOIN PREDICT cnn(digits) AS p USING (input, label);",
    ),
];

fn render_all() -> String {
    let mut out = String::new();
    for (name, text) in CASES {
        let mut s = session(SETUP);
        let shown = match s.execute(text) {
            Ok(_) => "(no error)".to_string(),
            // The checkout's place differs between machines.
            Err(e) => e
                .render(text, "query.iql")
                .replace(&root().display().to_string(), "<repo>"),
        };
        out.push_str(&format!("=== {name}\n{text}\n---\n{shown}\n\n"));
        // the session survived the failure
        let df = query(&mut s, "SELECT count(*) AS n FROM PREDICT cnn(digits[0:3])");
        assert_eq!(column_f64(&df, "n"), vec![3.0], "{name}: session after the error");
    }
    out
}

#[test]
fn error_messages_match_snapshot() {
    let got = render_all();
    let path = root().join("tests/snapshots/errors.txt");
    if std::env::var("IALG_UPDATE").is_ok() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        let diff: Vec<String> = got
            .lines()
            .zip(want.lines().chain(std::iter::repeat("")))
            .filter(|(g, w)| g != w)
            .take(6)
            .map(|(g, w)| format!("  got:  {g}\n  want: {w}"))
            .collect();
        panic!(
            "error messages differ from tests/snapshots/errors.txt (IALG_UPDATE=1 to accept):\n{}",
            diff.join("\n")
        );
    }
    assert!(!got.contains("(no error)"), "every case must fail");
    assert!(!got.contains("panicked"));
}

/// Hostile shapes of text get an error, not a stack overflow — also on a test thread's
/// small stack — and the limits leave room for any real query.
#[test]
fn deep_and_long_queries_are_refused_cleanly() {
    let mut s = session(SETUP);
    let nest = |n: usize| {
        format!(
            "SELECT * FROM {}PREDICT cnn(digits[0]){};",
            "(SELECT * FROM ".repeat(n),
            ")".repeat(n)
        )
    };
    // 97 nested subqueries (with the call and the index: 99 brackets deep) run…
    let df = query(&mut s, &nest(97));
    assert_eq!(df.height(), 1);
    // …deeper ones, and other runaway shapes, are syntax errors
    let cases = [
        nest(5000),
        format!(
            "SELECT {}1{} FROM PREDICT cnn(digits);",
            "(".repeat(100_000),
            ")".repeat(100_000)
        ),
        format!("SELECT {} FROM PREDICT cnn(digits);", vec!["1"; 200_000].join(" + ")),
        format!(
            "SELECT input FROM PREDICT cnn(digits) WHERE {}input = 1;",
            "NOT ".repeat(50_000)
        ),
        vec!["SELECT input FROM PREDICT cnn(digits)"; 5_000].join(" UNION "),
    ];
    for text in &cases {
        let err = s.execute(text).expect_err("must be refused");
        assert_eq!(err.kind, ialgebra::error::ErrorKind::Syntax, "{}", err.message);
    }
    // a megabyte-long statement is just long
    let long = format!(
        "SELECT count(*) AS n FROM PREDICT cnn(digits) WHERE '{}' != 'x';",
        "y".repeat(1 << 20)
    );
    assert_eq!(column_f64(&query(&mut s, &long), "n"), vec![397.0]);
    let many = "SELECT count(*) AS n FROM PREDICT cnn(digits[0:2]);\n".repeat(2_000);
    assert_eq!(s.execute(&many).unwrap().len(), 2_000);
    // long IN lists stay flat
    let list: Vec<String> = (0..1_500).map(|i| i.to_string()).collect();
    let df = query(
        &mut s,
        &format!(
            "SELECT count(*) AS n FROM PREDICT cnn(digits) WHERE input IN ({})",
            list.join(", ")
        ),
    );
    assert_eq!(column_f64(&df, "n"), vec![397.0]);
    let list: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
    let err = s
        .execute(&format!(
            "SELECT input FROM PREDICT cnn(digits) WHERE input IN ({})",
            list.join(", ")
        ))
        .unwrap_err();
    assert_eq!(err.kind, ialgebra::error::ErrorKind::Syntax);
}

/// A misspelt first word names the statements and the likely one (`SELEC` → SELECT,
/// `PREDIKT` → PREDICT), underlining the word, instead of "expected script" at 1:1.
#[test]
fn misspelt_statements_are_named() {
    let mut s = ialgebra::exec::Session::new();
    for (text, guess) in [
        ("SELEC * FROM d", "SELECT"),
        ("PREDIKT cnn(d)", "PREDICT"),
        ("LAOD DATA d FROM 'x'", "LOAD"),
    ] {
        let err = s.execute(text).err().unwrap_or_else(|| panic!("{text} should fail"));
        let shown = err.render(text, "q");
        assert!(
            shown.contains("expected a statement: CONCEPT, EXPORT, LET, LOAD, PLAN, PREDICT, SELECT"),
            "{shown}"
        );
        assert!(shown.contains(&format!("did you mean {guess}?")), "{shown}");
        let word = text.split(' ').next().unwrap_or_default();
        assert!(shown.contains(&format!("  | {}", "^".repeat(word.len()))), "{shown}");
    }
}
