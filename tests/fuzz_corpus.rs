//! The fuzz target's corpus (fuzz/corpus/parse_plan, minimized after fuzzing) and the
//! inputs it crashed or hung on (fuzz/regressions/parse_plan) as a regression test: every input parses and plans
//! to statements or an error, never a panic, and what parses prints back to text that
//! parses to the same statements. `cargo +nightly fuzz run parse_plan -s none` fuzzes.

use ialgebra::exec::Session;

use crate::common::*;

#[test]
fn the_fuzz_corpus_parses_plans_and_round_trips() {
    let s: Session = session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
         LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;
         VAR i = 3;",
    );
    let mut files: Vec<_> = ["fuzz/corpus/parse_plan", "fuzz/regressions/parse_plan"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root().join(d)).unwrap().map(|e| e.unwrap().path()))
        .collect();
    files.sort();
    // (A regression of the exponential-backtracking fix would hang here on
    // regressions/parse_plan/timeout-…, which once took over 10 s to parse.)
    assert!(files.len() > 100, "the corpus is missing ({} files)", files.len());
    let mut planned = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.check(text)));
        let result = outcome.unwrap_or_else(|_| panic!("{} panicked in parse + plan", f.display()));
        if result.is_ok() {
            planned += 1;
        }
        if let Ok(script) = ialgebra::syntax::parse(text) {
            let printed: Vec<String> = script.statements.iter().map(|s| s.to_string()).collect();
            let again = ialgebra::syntax::parse(&printed.join(";\n"))
                .unwrap_or_else(|e| panic!("{}: printed text does not parse: {}", f.display(), e.message));
            let reprinted: Vec<String> = again.statements.iter().map(|s| s.to_string()).collect();
            assert_eq!(printed, reprinted, "{}", f.display());
        }
    }
    // The seeds (the saved queries and the slt records) mostly plan.
    assert!(planned > 50, "only {planned} corpus inputs planned");
}
