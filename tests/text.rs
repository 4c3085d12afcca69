//! Text models. A small BERT made and initialised (seeded) by tools/make_tiny_bert.py
//! against transformers and Captum on the same weights — sentence embeddings, attention
//! probabilities, LayerIntegratedGradients on the embeddings for an embedding dimension
//! and for a cosine similarity — needs no download; tolerance |ours − reference| ≤
//! 1e-5 + 1e-4·|reference| (float32 through 2 layers), as tests/parity.rs.
//! The real all-MiniLM-L6-v2 (sh tools/fetch_minilm.sh; .ci/run fetches it) gives the
//! sentence similarities sentence-transformers 6.2 computed for three pairs, to 1e-4.

use serde_json::Value;

use crate::common::*;

const TINY: &str = "SET max_tokens = 12;
     LOAD MODEL tiny FROM 'tests/fixtures/tiny_bert';
     LOAD DATA s FROM 'tests/fixtures/tiny_bert/sentences.txt' TEXT;";

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("tiny_bert/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        other => vec![other.as_f64().unwrap()],
    }
}

#[test]
fn a_small_bert_matches_transformers_and_captum() {
    let want = expected();
    let mut s = session(TINY);
    // the tokens, as the Python tokenizer made them
    let df = query(
        &mut s,
        "SELECT input, token, text FROM tiny(s) USING occlusion(window = 1) TARGET 0 ORDER BY input, token",
    );
    let got = column_str(&df, "text");
    let tokens: Vec<String> = want["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, tokens);
    // mean-pooled sentence embeddings: the model's outputs
    let df = query(&mut s, "SELECT * FROM PREDICT tiny(s) ORDER BY input");
    let emb = logits(&df, 16);
    assert_close("sentence embeddings", &emb, &floats(&want["embeddings"]), 1e-5, 1e-4);
    // attention probabilities of layer 1 (heads × query × key), the real tokens only
    let df = query(
        &mut s,
        "SELECT input, head, query, key, weight FROM tiny(s) AT LAYER encoder.layer.1.attention USING layer_activation ORDER BY input, head, query, key",
    );
    let all = floats(&want["attention_layer1"]);
    let (heads, len, real) = (2, 12, 9);
    let mut reference = Vec::new();
    for i in 0..3 {
        for h in 0..heads {
            for q in 0..real {
                for k in 0..real {
                    reference.push(all[((i * heads + h) * len + q) * len + k]);
                }
            }
        }
    }
    assert_close("attention", &column_f64(&df, "weight"), &reference, 1e-5, 1e-4);
    // LayerIntegratedGradients on the embeddings, summed per token; and the same through
    // AT LAYER embeddings, per token and dimension
    for (what, from, key) in [
        (
            "LIG, dimension 3",
            "USING integrated_gradients TARGET 3",
            "lig_dim3_sentence0",
        ),
        (
            "LIG, similarity",
            "USING integrated_gradients TARGET similarity(s[0], s[1])",
            "lig_similarity_0_1",
        ),
        (
            "AT LAYER embeddings",
            "AT LAYER embeddings USING layer_integrated_gradients TARGET 3",
            "lig_dim3_sentence0",
        ),
    ] {
        let df = query(
            &mut s,
            &format!("SELECT token, sum(attribution) AS a FROM tiny(s[0]) {from} GROUP BY token ORDER BY token"),
        );
        assert_close(what, &column_f64(&df, "a"), &floats(&want[key])[..real], 1e-5, 1e-4);
    }
}

/// The MiniLM directory, or None (with a message) when tools/fetch_minilm.sh has not run.
fn minilm() -> Option<String> {
    let dir = std::env::var("IALG_MINILM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root().join("models/downloaded/all-MiniLM-L6-v2"));
    if dir.join("model.safetensors").is_file() {
        Some(dir.display().to_string())
    } else {
        announce_skip(&format!(
            "(the test reports ok): all-MiniLM-L6-v2 is not in {} — run `sh tools/fetch_minilm.sh` (CI does)",
            dir.display()
        ));
        None
    }
}

#[test]
fn minilm_sentence_similarities_match_sentence_transformers() {
    let Some(dir) = minilm() else { return };
    let pairs = [
        (
            "A man is playing a guitar.",
            "Someone plays an instrument on stage.",
            0.5430660247802734,
        ),
        ("The cat sits on the mat.", "A dog lies on the rug.", 0.3833731412887573),
        (
            "The stock market fell sharply today.",
            "I love eating fresh strawberries.",
            -0.021311113610863686,
        ),
    ];
    let path = std::env::temp_dir().join(format!("ialg-pairs-{}.txt", std::process::id()));
    let lines: Vec<&str> = pairs.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let mut s = session(&format!(
        "SET max_tokens = 16; LOAD MODEL m FROM '{dir}'; LOAD DATA p FROM '{}' TEXT;",
        path.display()
    ));
    let df = query(&mut s, "SELECT * FROM PREDICT m(p) ORDER BY input");
    let emb: Vec<Vec<f64>> = logits(&df, 384).chunks(384).map(<[f64]>::to_vec).collect();
    for (i, (a, b, want)) in pairs.iter().enumerate() {
        let (x, y) = (&emb[2 * i], &emb[2 * i + 1]);
        let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        let norm = |v: &Vec<f64>| v.iter().map(|p| p * p).sum::<f64>().sqrt();
        let cos = dot / (norm(x) * norm(y));
        assert!(
            (cos - want).abs() < 1e-4,
            "{a:?} ~ {b:?}: {cos} vs sentence-transformers {want}"
        );
    }
    // which tokens make the first two similar: attributions sum to the similarity's change
    let df = query(
        &mut s,
        "SELECT text, attribution FROM m(p[0]) USING integrated_gradients TARGET similarity(p[0], p[1]) ORDER BY attribution DESC",
    );
    let texts = column_str(&df, "text");
    assert_eq!(texts[0], "guitar", "{df}");
    std::fs::remove_file(&path).ok();
}

/// Texts are padded to the longest of their dataset, and the encoder runs built for
/// that length: the same sentences beside a longer one (so padded further) give the same
/// embeddings, attributions and similarities, to float32 noise (atol 1e-5, rtol 1e-4),
/// and a similarity's reference may come from data of another length.
#[test]
fn padding_never_changes_a_result() {
    let short = std::fs::read_to_string(fixture("tiny_bert/sentences.txt")).unwrap();
    let path = std::env::temp_dir().join(format!("ialg-padding-{}.txt", std::process::id()));
    let long = "The orchestra played a long symphony in the old hall tonight.";
    std::fs::write(&path, format!("{}\n{long}\n", short.trim_end())).unwrap();
    let mut s = session(&format!("{TINY} LOAD DATA l FROM '{}' TEXT;", path.display()));
    std::fs::remove_file(&path).ok();
    let shapes = query(&mut s, "SHOW DATA");
    let (short_len, long_len) = (9, 12);
    assert!(format!("{shapes}").contains(&format!("[{short_len}]")), "{shapes}");
    assert!(format!("{shapes}").contains(&format!("[{long_len}]")), "{shapes}");
    let same = |s: &mut ialgebra::exec::Session, q: &str, column: &str| {
        let a = query(s, &q.replace("DATA", "s"));
        let b = query(s, &q.replace("DATA", "l[0:3]"));
        assert!(a.height() > 0);
        assert_close(q, &column_f64(&a, column), &column_f64(&b, column), 1e-5, 1e-4);
    };
    for c in 0..16 {
        same(
            &mut s,
            "SELECT * FROM PREDICT tiny(DATA) ORDER BY input",
            &format!("logit_{c}"),
        );
    }
    same(
        &mut s,
        "SELECT input, token, attribution FROM tiny(DATA) USING integrated_gradients TARGET 3 ORDER BY input, token",
        "attribution",
    );
    same(
        &mut s,
        "SELECT input, token, attribution FROM tiny(DATA) USING occlusion(window = 1) TARGET 5 ORDER BY input, token",
        "attribution",
    );
    // A reference from the longer data, for an input of the shorter, and the other way.
    let a = query(
        &mut s,
        "SELECT token, attribution FROM tiny(s[0]) USING integrated_gradients TARGET similarity(s[0], l[1]) ORDER BY token",
    );
    let b = query(
        &mut s,
        "SELECT token, attribution FROM tiny(l[0]) USING integrated_gradients TARGET similarity(l[0], s[1]) ORDER BY token",
    );
    assert_eq!(a.height(), 9);
    assert_close(
        "similarity",
        &column_f64(&a, "attribution"),
        &column_f64(&b, "attribution"),
        1e-5,
        1e-4,
    );
}

/// A transformer's wide linear layers multiply all the rows of a batch in one product
/// (no padded blocks): the bits of a result must not depend on how many sentences share
/// a batch. PREDICT and IG on MiniLM, bit for bit, at batch sizes 1, 3 and auto.
#[test]
fn minilm_results_do_not_depend_on_the_batch_size() {
    let Some(dir) = minilm() else { return };
    let mut s = session(&format!(
        "SET cache_mb = 0; LOAD MODEL m FROM '{dir}'; LOAD DATA p FROM 'data/sentences.csv' TEXT COLUMN sentence;"
    ));
    let queries = [
        "SELECT * FROM PREDICT m(p) ORDER BY input",
        "SELECT input, token, attribution FROM m(p[0:4]) USING integrated_gradients(steps = 8) TARGET similarity(p[5]) ORDER BY input, token",
    ];
    for q in queries {
        let reference = query(&mut s, q);
        for batch in ["1", "3", "auto"] {
            s.execute(&format!("SET batch_size = {batch}")).unwrap();
            assert!(
                query(&mut s, q).equals_missing(&reference),
                "{q} differs at batch_size = {batch}"
            );
        }
        s.execute("SET batch_size = auto").unwrap();
    }
}

#[test]
fn text_errors_say_what_to_do() {
    let mut s = session("");
    let err = s
        .execute("LOAD DATA t FROM 'tests/fixtures/tiny_bert/sentences.txt' TEXT")
        .err()
        .unwrap();
    assert!(
        err.message.contains("needs a text model's tokenizer"),
        "{}",
        err.message
    );
    let mut s = session(TINY);
    for (q, want) in [
        ("SELECT * FROM tiny(s) USING saliency", "token ids have none"),
        (
            "SELECT * FROM tiny(s) USING occlusion(window = 1) GRANULARITY word",
            "perturbs token by token",
        ),
        (
            "SELECT * FROM tiny(s) USING integrated_gradients WINDOW rows 0:2",
            "a range of tokens",
        ),
        (
            // The texts are padded to their longest (9 tokens), not to max_tokens (12).
            "SELECT * FROM tiny(s) USING integrated_gradients WINDOW tokens 3:40",
            "0 ≤ start < end ≤ 9",
        ),
        (
            "SELECT * FROM tiny(s[0]) USING integrated_gradients TARGET similarity(s)",
            "holds 3 inputs",
        ),
        (
            "SELECT * FROM tiny(s[0]) USING integrated_gradients TARGET similarity(s[1], s[2])",
            "must be the explained",
        ),
    ] {
        let err = s.execute(q).err().unwrap_or_else(|| panic!("{q} ran"));
        assert!(err.message.contains(want), "{q}: {}", err.message);
    }
}

/// A linear head from safetensors on the encoder's output: PREDICT gives its classes,
/// and integrated gradients explains one, as transformers + Captum do.
#[test]
fn a_linear_head_makes_the_encoder_a_classifier() {
    let want = expected();
    let mut s = session(
        "SET max_tokens = 12;
         LOAD MODEL clf FROM 'tests/fixtures/tiny_bert' HEAD 'tests/fixtures/tiny_bert/head.safetensors';
         LOAD DATA s FROM 'tests/fixtures/tiny_bert/sentences.txt' TEXT;",
    );
    let df = query(&mut s, "SELECT * FROM PREDICT clf(s) ORDER BY input");
    let head_logits = logits(&df, 3);
    assert_close("head logits", &head_logits, &floats(&want["head_logits"]), 1e-5, 1e-4);
    let df = query(
        &mut s,
        "SELECT attribution FROM clf(s[0]) USING integrated_gradients TARGET 1 ORDER BY token",
    );
    let lig = floats(&want["lig_head_class1_sentence0"]);
    assert_close(
        "LIG through the head",
        &column_f64(&df, "attribution"),
        &lig[..9],
        1e-5,
        1e-4,
    );
    let text = format!("{}", query(&mut s, "SHOW LAYERS OF clf"));
    assert!(text.contains("head"), "{text}");
    let err = s
        .execute("LOAD MODEL bad FROM 'tests/fixtures/tiny_bert' HEAD 'models/cancer_mlp.safetensors'")
        .err()
        .unwrap();
    assert!(
        err.message.contains("neither a weight [k, 16] nor a bias"),
        "{}",
        err.message
    );
}
