//! Attacks as derived datasets: `LET adv = ATTACK fgsm(…) | pgd(…) ON m(d) [TARGET k]`,
//! with Captum's semantics (L∞, clamped to the data's range, untargeted on the label).
//! The PGD run recorded by the oracle (../shared/oracle/data/digits_pgd_adv.json) is
//! reproduced: the same adversarial images and the same 50 flipped predictions.

use ialgebra::exec::Session;

use crate::common::*;

fn loaded() -> Session {
    session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';",
    )
}

/// Each input's 64 pixel values in (input, row, col) order.
fn pixels(s: &mut Session, data: &str) -> Vec<f64> {
    column_f64(
        &query(
            s,
            &format!("SELECT value FROM cnn({data}) USING saliency ORDER BY input, row, col"),
        ),
        "value",
    )
}

fn predictions(s: &mut Session, data: &str) -> Vec<i64> {
    column_f64(
        &query(s, &format!("SELECT prediction FROM PREDICT cnn({data}) ORDER BY input")),
        "prediction",
    )
    .into_iter()
    .map(|v| v as i64)
    .collect()
}

#[test]
fn pgd_reproduces_the_oracle_run() {
    let mut s = loaded();
    let out = s
        .execute(
            "LET adv = ATTACK pgd(eps = 0.1, steps = 20, step_size = 0.02, random_start = false) ON cnn(digits[0:100])",
        )
        .unwrap();
    let msg = format!("{out:?}");
    assert!(msg.contains("50 predictions changed (accuracy 0.97 → 0.47)"), "{msg}");

    // The images: the oracle's float32 values. Tolerance 1e-6: the sign of each gradient
    // element decides a step, and all 6400 agree (measured difference 0).
    let (shape, want) = npy(&root().join("data/digits_pgd_adv_x.npy"));
    assert_eq!(shape, vec![100, 1, 8, 8]);
    assert_close("pgd images", &pixels(&mut s, "adv"), &want, 1e-6, 0.0);

    // The flipped inputs: exactly the record's.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("data/digits_pgd_adv.json")).unwrap()).unwrap();
    let flipped_record: Vec<i64> = record["flipped_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let clean = predictions(&mut s, "digits[0:100]");
    let attacked = predictions(&mut s, "adv");
    let flipped: Vec<i64> = (0..100)
        .filter(|&i| clean[i as usize] != attacked[i as usize])
        .collect();
    assert_eq!(flipped, flipped_record);
    assert_eq!(record["n_flipped_vs_clean_pred"], 50);
}

#[test]
fn fgsm_moves_every_feature_by_eps_within_the_data_range() {
    let mut s = loaded();
    s.execute("LET f = ATTACK fgsm(eps = 0.05) ON cnn(digits[0:20])")
        .unwrap();
    let before = pixels(&mut s, "digits[0:20]");
    let after = pixels(&mut s, "f");
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        assert!((0.0..=1.0).contains(a), "{a} outside the data's range [0, 1]");
        let step = (a - b).abs();
        // Each feature moves by eps unless clamped at a bound or its gradient is 0.
        assert!(step <= 0.05 + 1e-6, "moved by {step}");
        if (step - 0.05).abs() < 1e-6 {
            moved += 1;
        }
    }
    assert!(moved > 600, "only {moved} of 1280 features moved by eps");
    // Explicit bounds win over the data's range.
    s.execute("LET g = ATTACK fgsm(eps = 0.05, lower = 0.02, upper = 0.9) ON cnn(digits[0:20])")
        .unwrap();
    assert!(
        pixels(&mut s, "g")
            .iter()
            .all(|v| (0.02 - 1e-7..=0.9 + 1e-7).contains(v))
    );
}

#[test]
fn targeted_pgd_reaches_its_class_and_keeps_ids_and_labels() {
    let mut s = loaded();
    s.execute("LET t = ATTACK pgd(eps = 0.3, steps = 30) ON cnn(digits[40:60]) TARGET 3")
        .unwrap();
    let df = query(
        &mut s,
        "SELECT input, label, prediction FROM PREDICT cnn(t) ORDER BY input",
    );
    assert_eq!(column_f64(&df, "input"), (40..60).map(f64::from).collect::<Vec<_>>());
    let clean = query(&mut s, "SELECT label FROM PREDICT cnn(digits[40:60]) ORDER BY input");
    assert_eq!(column_f64(&df, "label"), column_f64(&clean, "label"));
    let hits = column_f64(&df, "prediction").iter().filter(|&&p| p == 3.0).count();
    assert!(hits >= 18, "only {hits} of 20 reached class 3");
}

#[test]
fn random_start_is_seeded() {
    let mut s = loaded();
    let run = |s: &mut Session, seed: u64| {
        s.execute(&format!(
            "LET r = ATTACK pgd(eps = 0.1, steps = 3, random_start = true, seed = {seed}) ON cnn(digits[0:10])"
        ))
        .unwrap();
        pixels(s, "r")
    };
    let a = run(&mut s, 1);
    assert_eq!(a, run(&mut s, 1));
    assert_ne!(a, run(&mut s, 2));
}

#[test]
fn attack_errors_say_what_and_where() {
    let mut s = loaded();
    s.execute("LOAD DATA unlabelled FROM 'data/digits_test_x.npy'").unwrap();
    let cases = [
        ("LET a = ATTACK pgd(steps = 3) ON cnn(digits[0:5])", "pgd needs eps"),
        (
            "LET a = ATTACK pdg(eps = 0.1) ON cnn(digits[0:5])",
            "attacks: fgsm, pgd",
        ),
        (
            "LET a = ATTACK pgd(eps = 0.1, stpes = 3) ON cnn(digits[0:5])",
            "did you mean `steps`",
        ),
        (
            "LET a = ATTACK fgsm(eps = -1) ON cnn(digits[0:5])",
            "eps must be a number ≥ 0",
        ),
        (
            "LET a = ATTACK fgsm(eps = 0.1) ON cnn(unlabelled[0:5])",
            "has no labels",
        ),
        (
            "LET a = ATTACK fgsm(eps = 0.1) ON cnn(digits[0:5]) TARGET 12",
            "out of range",
        ),
        (
            "LET a = ATTACK fgsm(eps = 0.1) ON cnn(digits[0:5]) USING saliency",
            "TARGET clause only",
        ),
        (
            "LET a = ATTACK fgsm(eps = 0.1, lower = 1, upper = 0) ON cnn(digits[0:5])",
            "lower (1) is above upper (0)",
        ),
        ("LET cnn = ATTACK fgsm(eps = 0.1) ON cnn(digits[0:5])", "is a model"),
        (
            "LET a = ATTACK fgsm(eps = 0.1) ON cnn(digits[5:5])",
            "picks no inputs to attack",
        ),
    ];
    assert_errors(&mut s, &cases);
    // The session still works.
    assert_eq!(predictions(&mut s, "digits[0:3]").len(), 3);
}
