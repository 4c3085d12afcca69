//! Tab completion asked of the engine, as the shell asks it: keywords and statement
//! forms, models after OF / FROM, datasets inside `m(`, layers after AT LAYER / TARGET,
//! methods after USING and their parameters inside `USING method(`, columns in
//! expressions.

use ialgebra::exec::Session;

use crate::common::*;

fn loaded() -> Session {
    session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
         LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;",
    )
}

/// Completions at the end of `line`.
fn at_end(s: &Session, line: &str) -> (usize, Vec<String>) {
    s.complete(line, line.len())
}

fn words(s: &Session, line: &str) -> Vec<String> {
    at_end(s, line).1
}

#[test]
fn statement_forms_and_keywords() {
    let s = loaded();
    assert!(words(&s, "").contains(&"SELECT".to_string()));
    assert_eq!(words(&s, "sel"), vec!["SELECT"]);
    assert_eq!(words(&s, "LOAD "), vec!["MODEL", "DATA"]);
    assert!(words(&s, "SHOW ").contains(&"LAYERS OF".to_string()));
    // after a complete interpretation, the clauses that may follow
    let after = words(&s, "SELECT * FROM cnn(digits[0]) ");
    for k in ["USING", "AT LAYER", "THROUGH LAYER", "WHERE", "JOIN"] {
        assert!(after.contains(&k.to_string()), "{k} in {after:?}");
    }
    assert_eq!(words(&s, "SELECT * FROM cnn(digits[0]) gran"), vec!["GRANULARITY"]);
    // a second statement on the line starts afresh
    assert!(words(&s, "SHOW MODELS; ").contains(&"PREDICT".to_string()));
}

#[test]
fn names_of_what_is_loaded() {
    let s = loaded();
    assert_eq!(words(&s, "SHOW LAYERS OF "), vec!["cnn", "mlp"]);
    assert_eq!(words(&s, "SHOW LAYERS OF c"), vec!["cnn"]);
    assert!(words(&s, "SELECT * FROM ").contains(&"cnn".to_string()));
    assert_eq!(words(&s, "SELECT * FROM cnn(d"), vec!["digits"]);
    assert_eq!(words(&s, "PREDICT m"), vec!["mlp"]);
    // the layers of the model being interpreted
    assert_eq!(
        words(&s, "SELECT * FROM cnn(digits[0]) AT LAYER con"),
        vec!["conv1", "conv2"]
    );
    assert_eq!(
        words(&s, "SELECT * FROM mlp(cancer[0]) AT LAYER "),
        vec!["fc1", "relu1", "fc2", "relu2", "fc3", "*"]
    );
    // edits, attacks
    assert_eq!(
        words(&s, "PREDICT cnn(digits[0] WITH "),
        vec!["SET", "MASK", "NOISE(", "BLUR(", "LAYER"]
    );
    assert_eq!(
        words(&s, "PREDICT cnn(digits[0] WITH LAYER conv"),
        vec!["conv1", "conv2"]
    );
    assert!(words(&s, "LET adv = ").contains(&"ATTACK".to_string()));
    assert_eq!(words(&s, "LET adv = ATTACK "), vec!["fgsm(", "pgd("]);
    assert_eq!(words(&s, "LET adv = ATTACK pgd(eps = 0.1) ON c"), vec!["cnn"]);
    assert!(words(&s, "SELECT * FROM cnn(digits[0]) THROUGH LAYER ").contains(&"*".to_string()));
    let target = words(&s, "SELECT * FROM cnn(digits[0]) TARGET ");
    assert!(target.contains(&"PREDICTED".to_string()) && target.contains(&"fc1".to_string()));
    // tables: WITH names written so far and tables kept by LET, after FROM and JOIN
    let mut s = loaded();
    s.execute("LET ranking = (SELECT input FROM PREDICT cnn(digits[0:3]));")
        .unwrap();
    assert_eq!(
        words(&s, "WITH scores AS (PREDICT cnn(digits)), top AS (SELECT * FROM s"),
        vec!["scores"]
    );
    let from = words(&s, "WITH scores AS (PREDICT cnn(digits)) SELECT * FROM scores JOIN ");
    for t in ["scores", "ranking", "PREDICT", "cnn"] {
        assert!(from.contains(&t.to_string()), "{t} in {from:?}");
    }
    assert_eq!(words(&s, "EXPORT ra"), vec!["ranking"]);
    assert!(words(&s, "LET t = ").contains(&"(SELECT".to_string()));
    assert!(words(&s, "w").contains(&"WITH".to_string()));
    assert!(words(&s, "WITH ").is_empty());
    // where the word starts, for the shell to replace it
    assert_eq!(at_end(&s, "SHOW LAYERS OF cn").0, "SHOW LAYERS OF ".len());
}

#[test]
fn methods_and_their_parameters() {
    let s = loaded();
    assert_eq!(
        words(&s, "SELECT * FROM cnn(digits[0]) USING integ"),
        vec!["integrated_gradients"]
    );
    assert!(words(&s, "SELECT * FROM cnn(digits[0]) USING layer_").len() >= 4);
    assert_eq!(
        words(&s, "SELECT * FROM cnn(digits[0]) USING integrated_gradients("),
        vec!["steps = ", "rule = "]
    );
    // a parameter already given is not offered again; after `=` comes a value
    assert_eq!(
        words(
            &s,
            "SELECT * FROM cnn(digits[0]) USING integrated_gradients(steps = 20, "
        ),
        vec!["rule = "]
    );
    assert!(words(&s, "SELECT * FROM cnn(digits[0]) USING smoothgrad(seed =").is_empty());
    // INFLUENCE: the words, the models, tracin
    assert!(words(&s, "SELECT * FROM ").contains(&"INFLUENCE OF".to_string()));
    assert!(words(&s, "SELECT * FROM INFLUENCE OF ").contains(&"cnn".to_string()));
    assert!(words(&s, "SELECT * FROM INFLUENCE OF cnn(digits) ON ").contains(&"cnn".to_string()));
    assert_eq!(
        words(&s, "SELECT * FROM INFLUENCE OF cnn(digits) ON cnn(digits[0]) USING "),
        vec!["tracin"]
    );
    // TCAV: the models, then the concepts (datasets) inside CONCEPTS (…)
    assert!(words(&s, "SELECT * FROM ").contains(&"TCAV".to_string()));
    assert!(words(&s, "SELECT * FROM TCAV ").contains(&"cnn".to_string()));
    assert!(words(&s, "SELECT * FROM TCAV cnn(digits) AT LAYER fc1 CONCEPTS (dig").contains(&"digits".to_string()));
    // EVALUATE's metrics, and each metric's parameters (after a comma too)
    let metrics = words(&s, "SELECT * FROM cnn(digits[0]) USING saliency EVALUATE ");
    assert!(metrics.contains(&"deletion".to_string()), "{metrics:?}");
    assert_eq!(
        words(
            &s,
            "SELECT * FROM cnn(digits[0]) USING saliency EVALUATE sparseness, deletion(steps = 5, "
        ),
        vec!["fill = ", "sigma = "]
    );
}

#[test]
fn columns_in_expressions() {
    let s = loaded();
    let select = words(&s, "SELECT ");
    for c in ["attribution", "row", "input", "sum(", "DISTINCT"] {
        assert!(select.contains(&c.to_string()), "{c} in {select:?}");
    }
    assert_eq!(words(&s, "SELECT row, attr"), vec!["attribution"]);
    assert!(words(&s, "SELECT * FROM cnn(digits) WHERE pred").contains(&"prediction".to_string()));
    assert!(words(&s, "SELECT * FROM cnn(digits) ORDER BY att").contains(&"attribution".to_string()));
    // a tabular dataset's own columns
    assert!(words(&s, "SELECT mean_ra").contains(&"mean_radius".to_string()));
}

#[test]
fn completion_survives_any_cursor_position() {
    let s = loaded();
    let line = "SELECT 'é…' FROM cnn(digits[0]) USING saliency WHERE row > 3;";
    for pos in 0..=line.len() + 2 {
        let (start, _) = s.complete(line, pos);
        assert!(start <= pos.min(line.len()));
    }
}

#[test]
fn dotted_and_onnx_layer_names() {
    let s = session(
        "SET max_tokens = 12;
         LOAD MODEL tiny FROM 'tests/fixtures/tiny_bert';
         LOAD DATA s FROM 'tests/fixtures/tiny_bert/sentences.txt' TEXT;
         LOAD MODEL onnx FROM 'models/digits_cnn.onnx';",
    );
    // the word runs across the dots of a module path
    let line = "SELECT * FROM tiny(s) AT LAYER encoder.layer.1.att";
    let (start, got) = at_end(&s, line);
    assert_eq!(&line[start..], "encoder.layer.1.att");
    assert!(got.contains(&"encoder.layer.1.attention".to_string()), "{got:?}");
    // an ONNX graph offers its modules, and its node outputs quoted
    let got = words(&s, "SELECT * FROM onnx(s) AT LAYER ");
    for want in ["conv2", "fc1", "\"/conv2/Conv_output_0\""] {
        assert!(got.contains(&want.to_string()), "{want} in {got:?}");
    }
    // a qualified column is still completed after its dot
    assert!(words(&s, "SELECT a.attr").iter().all(|w| !w.contains('.')));
}

/// Inside quotes, Tab completes file paths (relative to the current directory, as the
/// statement's paths are): folders end in `/`, the word replaced is the last component.
#[test]
fn file_paths_inside_quotes() {
    let s = loaded();
    assert_eq!(
        at_end(&s, "LOAD MODEL m FROM 'models/digits_cnn.saf"),
        (
            "LOAD MODEL m FROM 'models/".len(),
            vec!["digits_cnn.safetensors".to_string()]
        )
    );
    assert!(words(&s, "LOAD DATA d FROM 'da").contains(&"data/".to_string()));
    let in_data = words(&s, "LOAD DATA d FROM 'data/digits_test_");
    assert_eq!(in_data, vec!["digits_test_x.npy", "digits_test_y.npy"]);
    // after the string closes, the statement's words again
    assert!(words(&s, "LOAD DATA d FROM 'data/digits_test_x.npy' ").contains(&"LABELS".to_string()));
    assert!(words(&s, "LOAD DATA d FROM 'no/such/dir/x").is_empty());
}

#[test]
fn across_lines_of_one_statement() {
    let s = loaded();
    assert_eq!(
        words(&s, "SELECT * FROM cnn(digits[0])\nAT LAYER co"),
        vec!["conv1", "conv2"]
    );
}

/// SHOW's completions come from the grammar's SHOW rules.
#[test]
fn show_offers_what_the_grammar_shows() {
    let s = loaded();
    assert_eq!(
        words(&s, "SHOW "),
        vec!["MODELS", "DATA", "METHODS", "LAYERS OF", "CACHE", "SETTINGS"]
    );
}
