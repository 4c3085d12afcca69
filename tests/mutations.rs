//! A deterministic mutation smoke test: statements from queries/ and tests/slt, edited at
//! random (deleted, duplicated, swapped and inserted tokens), go through the parser and
//! the planner (as PLAN, so nothing expensive runs). Any panic fails the test; errors are
//! what we expect. The fuzz target of a later issue goes further; this keeps the basics.
//! IALG_MUTATION_SEED / IALG_MUTATION_ROUNDS change the draw and its length, and
//! IALG_MUTATION_RUN=1 executes the mutants instead of planning them.

use ialgebra::ops::rng::Rng;

use crate::common::*;

const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "LIMIT",
    "HAVING",
    "USING",
    "TARGET",
    "BASELINE",
    "WINDOW",
    "GRANULARITY",
    "PREDICT",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "NULL",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    ";",
    "*",
    "-",
    "/",
    "%",
    "=",
    "!=",
    "<",
    "'",
    "\"",
    "--",
    "/*",
    "0",
    "-1",
    "1e309",
    "99999999999999999999",
    "0.5",
    "digits",
    "cnn",
    "mlp",
    "cancer",
    "row",
    "col",
    "attribution",
    "rows 0:3",
    "patch(0)",
    "patch(99)",
    ":v",
    "integrated_gradients(steps = 0)",
    "occlusion(window = 100)",
    "sum(",
    "count(*)",
    "\u{e9}",
    "\u{1F600}",
    "\0",
];

fn statements() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["queries", "tests/slt"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for stmt in text.split(';') {
                // the statement starts at its first line that opens a query
                let lines: Vec<&str> = stmt.lines().collect();
                let Some(first) = lines.iter().position(|l| {
                    let u = l.trim_start().to_uppercase();
                    u.starts_with("SELECT") || u.starts_with("PREDICT") || u.starts_with("(SELECT")
                }) else {
                    continue;
                };
                out.push(lines[first..].join("\n").trim().to_string());
            }
        }
    }
    out
}

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(2) {
        let n = chars.len().max(1);
        let at = rng.below(n);
        let len = 1 + rng.below(8).min(n - at);
        match rng.below(6) {
            // swap a number or a name for another of its kind: the text still parses,
            // so the planner sees odd values and unknown names
            4 | 5 => {
                let text: String = chars.iter().collect();
                let words: Vec<(usize, &str)> = text
                    .match_indices(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                    .collect::<Vec<_>>()
                    .chunk_by(|a, b| b.0 == a.0 + a.1.len())
                    .map(|run| {
                        (
                            run[0].0,
                            &text[run[0].0..run[run.len() - 1].0 + run[run.len() - 1].1.len()],
                        )
                    })
                    .collect();
                if words.is_empty() {
                    continue;
                }
                let (pos, word) = words[rng.below(words.len())];
                let numeric = word.chars().next().is_some_and(|c| c.is_ascii_digit());
                let pool: &[&str] = if numeric {
                    &[
                        "0",
                        "1",
                        "7",
                        "8",
                        "65",
                        "396",
                        "397",
                        "1e309",
                        "0.5",
                        "99999999999999999999",
                    ]
                } else {
                    &[
                        "digits",
                        "cnn",
                        "mlp",
                        "cancer",
                        "row",
                        "col",
                        "input",
                        "label",
                        "attribution",
                        "feature",
                        "x",
                        "group",
                        "target",
                    ]
                };
                let replacement = pool[rng.below(pool.len())];
                let new_text = format!("{}{}{}", &text[..pos], replacement, &text[pos + word.len()..]);
                chars = new_text.chars().collect();
            }
            0 if at + len <= chars.len() => {
                chars.drain(at..at + len);
            }
            1 if at + len <= chars.len() => {
                let piece: Vec<char> = chars[at..at + len].to_vec();
                chars.splice(at..at, piece);
            }
            2 if at + 1 < chars.len() => chars.swap(at, at + 1),
            _ => {
                let token: Vec<char> = format!(" {} ", TOKENS[rng.below(TOKENS.len())]).chars().collect();
                let at = at.min(chars.len());
                chars.splice(at..at, token);
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_statements_never_panic() {
    let mut s = session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD MODEL cnn_b FROM 'models/digits_cnn_b.safetensors' ARCH 'models/digits_cnn_b.json';
         LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
         LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;
         LOAD DATA train_mean FROM 'data/digits_train_mean.npy';
         VAR v = 3; VAR input = 17; VAR patient = 2; VAR first = 1; VAR n = 2;",
    );
    let corpus = statements();
    assert!(corpus.len() > 50);
    let seed: u64 = std::env::var("IALG_MUTATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2026);
    let rounds: usize = std::env::var("IALG_MUTATION_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let mut rng = Rng::new(seed, 0);
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..rounds {
        let base = &corpus[rng.below(corpus.len())];
        let text = if std::env::var("IALG_MUTATION_RUN").is_ok() {
            mutate(base, &mut rng)
        } else {
            format!("PLAN {}", mutate(base, &mut rng))
        };
        match s.execute(&text) {
            Ok(_) => ok += 1,
            Err(e) => {
                // a panic caught inside the engine comes back as an internal error
                assert!(!e.message.contains("internal"), "{}", e.render(&text, "mutated"));
                // rendering must not panic either, whatever the span
                let _ = e.render(&text, "mutated");
                failed += 1;
            }
        }
    }
    eprintln!("{ok} planned, {failed} refused");
    assert!(ok > 50 && failed > 100, "{ok} planned, {failed} refused");
}
