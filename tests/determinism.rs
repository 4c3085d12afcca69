//! The same query with the same seed gives a bit-identical table on every run and with
//! every batch size (SET batch_size), with the caches off so that each run computes.

use ialgebra::exec::Session;
use polars::prelude::DataFrame;

use crate::common::*;

fn loaded() -> Session {
    session(
        "SET cache_mb = 0;
         LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
         LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
         LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;",
    )
}

/// The table with every float column as its bit patterns, so that equality is exact
/// (NaN included) and a difference names its column.
fn bits(df: &DataFrame) -> Vec<(String, Vec<u64>)> {
    df.get_column_names()
        .iter()
        .map(|name| {
            let v = column_f64(df, name.as_str());
            (name.to_string(), v.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

const QUERIES: &[&str] = &[
    "SELECT input, feature, attribution FROM cnn(digits[0:9]) USING smoothgrad(samples = 7, stdev = 0.2, seed = 5)",
    "SELECT input, feature, attribution FROM mlp(cancer[0:9]) USING shapley_sampling(samples = 20, seed = 3)",
    "SELECT input, feature, attribution FROM cnn(digits[0:9]) USING integrated_gradients(steps = 20)",
    // One input: its steps run in batches on every thread at once, summed in step order.
    "SELECT input, feature, attribution FROM cnn(digits[4]) USING integrated_gradients(steps = 25)",
    "SELECT input, unit, attribution FROM cnn(digits[4]) AT LAYER conv2 USING layer_integrated_gradients(steps = 15)",
    "SELECT input, feature, attribution FROM cnn(digits[0:9]) USING occlusion(window = 2, stride = 1)",
    "SELECT input, unit, attribution FROM cnn(digits[0:9]) AT LAYER fc1 USING layer_conductance(steps = 10)",
    "SELECT * FROM PREDICT cnn(digits[0:9] WITH NOISE(0.3, 11))",
];

#[test]
fn same_seed_same_table_across_runs_and_batch_sizes() {
    let mut s = loaded();
    for q in QUERIES {
        let reference = bits(&query(&mut s, q));
        assert_eq!(reference, bits(&query(&mut s, q)), "a second run of {q} differs");
        for batch in ["3", "64", "auto", "1"] {
            s.execute(&format!("SET batch_size = {batch}")).unwrap();
            let got = bits(&query(&mut s, q));
            for ((name, want), (_, have)) in reference.iter().zip(&got) {
                assert!(want == have, "{q}: column {name} differs with batch_size = {batch}");
            }
        }
        s.execute("SET batch_size = auto").unwrap();
    }
}

#[test]
fn seeded_attacks_are_reproducible_across_batch_sizes() {
    let mut s = loaded();
    let run = |s: &mut Session| {
        s.execute("LET r = ATTACK pgd(eps = 0.1, steps = 4, random_start = true, seed = 9) ON cnn(digits[0:9])")
            .unwrap();
        bits(&query(
            s,
            "SELECT input, feature, value FROM cnn(r) USING saliency ORDER BY input, feature",
        ))
    };
    let reference = run(&mut s);
    for batch in ["1", "4", "auto"] {
        s.execute(&format!("SET batch_size = {batch}")).unwrap();
        assert!(
            run(&mut s) == reference,
            "PGD with random start differs at batch_size = {batch}"
        );
    }
}
