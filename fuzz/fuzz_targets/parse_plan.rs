//! Fuzzes parse + plan against a catalog holding the example models and data: any text
//! must give statements or an error, never a panic, and a parsed script must print to
//! text that parses to the same statements (the round trip the tests check by hand).
//! Run: `cargo +nightly fuzz run parse_plan -s none` from the repository root.

#![no_main]

use std::cell::RefCell;

use ialgebra::exec::Session;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static SESSION: RefCell<Session> = RefCell::new(loaded());
}

fn loaded() -> Session {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut s = Session::new();
    let setup = format!(
        "LOAD MODEL cnn FROM '{root}/models/digits_cnn.safetensors' ARCH '{root}/models/digits_cnn.json';
         LOAD MODEL mlp FROM '{root}/models/cancer_mlp.safetensors' ARCH '{root}/models/cancer_mlp.json';
         LOAD DATA digits FROM '{root}/data/digits_test_x.npy' LABELS '{root}/data/digits_test_y.npy';
         LOAD DATA cancer FROM '{root}/data/cancer_test.csv' LABEL COLUMN diagnosis;
         VAR i = 3;"
    );
    if let Err(e) = s.execute(&setup) {
        panic!("fuzz setup failed: {}", e.message);
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    SESSION.with(|s| {
        let _ = s.borrow().check(text);
    });
    if let Ok(script) = ialgebra::syntax::parse(text) {
        let printed: Vec<String> = script.statements.iter().map(|s| s.to_string()).collect();
        let again = ialgebra::syntax::parse(&printed.join(";\n"))
            .unwrap_or_else(|e| panic!("printed script does not parse: {}\n{}", e.message, printed.join(";\n")));
        let reprinted: Vec<String> = again.statements.iter().map(|s| s.to_string()).collect();
        assert_eq!(printed, reprinted, "printing is not stable");
    }
});
