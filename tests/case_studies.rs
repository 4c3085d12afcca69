//! The three i-Algebra case studies as saved analyses (queries/adversarial.iql,
//! inconsistency.iql, contamination.iql), run as auditors run them — `ialg run FILE
//! --var …` on the shipped real models — and their findings asserted.

use std::process::Command;

use crate::common::{fixture, npy, root};

/// Runs a saved analysis with variables; returns its stdout.
fn run_script(script: &str, vars: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ialg"));
    cmd.current_dir(root()).args(["run", script, "--format", "csv"]);
    for (k, v) in vars {
        cmd.args(["--var", &format!("{k}={v}")]);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The CSV table printed right after the line `header` (its rows: the lines with as
/// many fields as the header).
fn table_after<'a>(stdout: &'a str, header: &str) -> Vec<Vec<&'a str>> {
    let mut lines = stdout.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "no table with header {header} in:\n{stdout}");
    let fields = header.split(',').count();
    lines
        .take_while(|l| !l.trim().is_empty() && l.split(',').count() == fields)
        .map(|l| l.split(',').collect())
        .collect()
}

fn scratch(name: &str) -> String {
    let dir = root().join("target/test-scratch/case_studies");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name).display().to_string()
}

/// Runs contamination.iql on one backdoored model and its training set; checks the
/// precision of the top `poisoned.len()` of the ranking and the trigger window found.
fn audit_backdoor(model: &str, train: &str, poison_file: &str, trigger: (i64, i64, i64, i64)) {
    let out = scratch(&format!("{model}_ranking.csv"));
    let stdout = run_script(
        "queries/contamination.iql",
        &[
            ("model", &format!("models/{model}.safetensors")),
            ("arch", &format!("models/{model}.json")),
            ("train_x", &format!("data/{train}_x.npy")),
            ("train_y", &format!("data/{train}_y.npy")),
            ("out", &out),
        ],
    );
    let (_, poisoned) = npy(&fixture(&format!("data/{poison_file}")));
    let poisoned: Vec<i64> = poisoned.iter().map(|&v| v as i64).collect();
    assert_eq!(poisoned.len(), 140);

    // The ranking file: input, score; most suspicious first; every training sample once.
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("input,score"));
    let ranking: Vec<(i64, f64)> = lines
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(ranking.len(), 1400);
    assert!(ranking.windows(2).all(|w| w[0].1 >= w[1].1), "scores must fall");
    let hits = ranking[..140].iter().filter(|(i, _)| poisoned.contains(i)).count();
    let precision = hits as f64 / 140.0;
    eprintln!("{model}: precision of the top 140 = {precision:.3}");
    assert!(precision >= 0.9, "{model}: precision {precision} < 0.9");

    // The trigger window the script reports must cover the true trigger, and be tight
    // (no more than twice its area).
    let window = table_after(&stdout, "row_from,row_to,col_from,col_to,pixels");
    let w: Vec<i64> = window[0][..4].iter().map(|v| v.parse().unwrap()).collect();
    let (r0, r1, c0, c1) = trigger;
    assert!(
        w[0] <= r0 && w[1] >= r1 && w[2] <= c0 && w[3] >= c1,
        "{model}: window {w:?} does not cover the trigger rows {r0}:{r1}, cols {c0}:{c1}"
    );
    assert!(
        (w[1] - w[0]) * (w[3] - w[2]) <= 2 * (r1 - r0) * (c1 - c0),
        "{model}: window {w:?} is loose"
    );
}

#[test]
fn contamination_finds_the_oracle_backdoor() {
    // 2×2 square at rows 6–7, cols 6–7 → class 0 (../shared/oracle).
    audit_backdoor(
        "digits_cnn_backdoor",
        "digits_backdoor_train",
        "digits_backdoor_poison_indices.npy",
        (6, 8, 6, 8),
    );
}

#[test]
fn contamination_finds_another_trigger_shape_place_and_target() {
    // 3×1 bar at rows 1–3, col 0 → class 7 (examples/train_backdoor.rs).
    audit_backdoor(
        "digits_cnn_backdoor2",
        "digits_backdoor2_train",
        "digits_backdoor2_poison_indices.npy",
        (1, 4, 0, 1),
    );
}

fn csv_column(path: &str, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let k = header
        .iter()
        .position(|h| *h == name)
        .unwrap_or_else(|| panic!("no {name} in {header:?}"));
    lines.map(|l| l.split(',').nth(k).unwrap().to_string()).collect()
}

#[test]
fn adversarial_finds_the_recorded_flips() {
    let out = scratch("adversarial.csv");
    let stdout = run_script("queries/adversarial.iql", &[("out", &out)]);
    // The recorded attack regenerated: the same images.
    let diff = table_after(&stdout, "largest_difference");
    assert!(diff[0][0].parse::<f64>().unwrap() <= 1e-6, "{diff:?}");
    // The flipped inputs: exactly the PGD record's 50.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("data/digits_pgd_adv.json")).unwrap()).unwrap();
    let want: Vec<String> = record["flipped_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(csv_column(&out, "input"), want);
    assert_eq!(table_after(&stdout, "flipped,share")[0], vec!["50", "0.5"]);
    // The per-layer distances: every layer, flipped and not; the flipped inputs part
    // further from their originals at the logits than the unflipped ones.
    // (The next table follows in CSV without a break; its rows have no true/false.)
    let layers: Vec<Vec<&str>> = table_after(&stdout, "layer,flipped,relative_distance")
        .into_iter()
        .take_while(|r| r[1] == "true" || r[1] == "false")
        .collect();
    assert_eq!(layers.len(), 18);
    let at = |layer: &str, flipped: &str| -> f64 {
        layers.iter().find(|r| r[0] == layer && r[1] == flipped).unwrap()[2]
            .parse()
            .unwrap()
    };
    assert!(at("fc2", "true") > at("fc2", "false"));
    assert!(at("fc2", "true") > at("conv1", "true"));
}

#[test]
fn inconsistency_finds_the_sixteen_disagreements() {
    let out = scratch("inconsistency.csv");
    let stdout = run_script("queries/inconsistency.iql", &[("out", &out)]);
    let want = [
        23, 57, 122, 129, 171, 181, 191, 195, 211, 215, 228, 246, 260, 326, 327, 330,
    ];
    let want: Vec<String> = want.iter().map(|v| v.to_string()).collect();
    assert_eq!(csv_column(&out, "input"), want);
    let a = csv_column(&out, "prediction_a");
    let b = csv_column(&out, "prediction_b");
    assert!(a.iter().zip(&b).all(|(a, b)| a != b));
    // For every disagreement, features one model relies on and the other does not.
    let only_a = table_after(&stdout, "input,row,col");
    for input in &want {
        assert!(
            only_a.iter().any(|r| r[0] == input),
            "no a-only features for input {input}"
        );
    }
    let strongest = table_after(&stdout, "input,row,col,attribution,total");
    assert_eq!(strongest.iter().map(|r| r[0].to_string()).collect::<Vec<_>>(), want);
}
