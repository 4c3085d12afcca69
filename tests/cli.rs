//! The `ialg` binary as users run it: -c, run FILE, scripts on stdin, --var, --format,
//! --keep-going, the REPL fed through a pipe, and what a malformed query prints.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::common::root;

fn ialg(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ialg"));
    cmd.args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // history must not land in the user's real data directory during tests
    cmd.env("XDG_DATA_HOME", root().join("target/test-scratch/xdg"));
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

const LOAD: &str = "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json'; LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';";

#[test]
fn command_prints_a_table_of_captum_numbers() {
    let out = ialg(
        &[
            "-c",
            &format!(
                "{LOAD} SELECT row, col, attribution FROM cnn(digits[0]) USING integrated_gradients ORDER BY attribution DESC LIMIT 3;"
            ),
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // digits_cnn__ig_gausslegendre, input 0: the largest attribution is 4.53699 at (7, 6)
    assert!(stdout.contains("│   7 │   6 │     4.53699 │"), "{stdout}");
    assert!(stdout.contains("3 rows"));
}

#[test]
fn malformed_query_shows_a_caret_and_exits_1() {
    let out = ialg(&["-c", "SELECT row col FROM cnn(digits[0]);"], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error[syntax]: expected") && stderr.contains("--> <command>:1:12") && stderr.contains("^"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    let out = ialg(&["-c", &format!("{LOAD} SHOW LAYERS OF cnn3;")], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unknown model `cnn3`") && stderr.contains("did you mean `cnn`?"),
        "{stderr}"
    );
}

#[test]
fn run_file_with_variables_and_formats() {
    let out = ialg(&["run", "queries/quickstart.iql", "--var", "input=42"], None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("│    42 │"), "the --var value is used: {stdout}");
    // An empty script says so (and is no failure).
    for empty in ["", ";;;", "/* nothing */ ;"] {
        let out = ialg(&["-c", empty], None);
        assert!(out.status.success());
        assert!(text(&out.stderr).contains("no statements to run"), "{empty:?}");
    }
    // A misspelt variable is an error naming the script's variables, before anything runs.
    let out = ialg(&["run", "queries/quickstart.iql", "--var", "inptu=42"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).is_empty(), "nothing ran: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--var inptu: the script has no such variable (its variables: input)"),
        "{stderr}"
    );
    let out = ialg(
        &[
            "--format",
            "csv",
            "-c",
            &format!("{LOAD} SELECT input, prediction FROM PREDICT cnn(digits[0:3]);"),
        ],
        None,
    );
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "input,prediction\n0,2\n1,8\n2,2\n");
    assert!(
        text(&out.stderr).contains("loaded model cnn"),
        "messages go to stderr with csv"
    );
    let out = ialg(
        &[
            "-f",
            "json",
            "-c",
            &format!("{LOAD} SELECT input FROM PREDICT cnn(digits[0:2]);"),
        ],
        None,
    );
    assert_eq!(text(&out.stdout).trim(), r#"[{"input":0},{"input":1}]"#);
}

#[test]
fn scripts_from_stdin_stop_at_the_first_error_unless_keep_going() {
    let script =
        format!("{LOAD}\nSELECT nope FROM PREDICT cnn(digits);\nSELECT count(*) AS n FROM PREDICT cnn(digits);\n");
    let out = ialg(&[], Some(&script));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--> <stdin>:2:8"), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("│ 397 │"));
    let out = ialg(&["--keep-going", "run", "-"], Some(&script));
    assert_eq!(out.status.code(), Some(1), "a failure is still reported");
    assert!(text(&out.stdout).contains("│ 397 │"), "{}", text(&out.stdout));
}

#[test]
fn repl_reads_multi_line_statements_and_survives_errors() {
    let input = format!(
        "{LOAD}\nSELECT count(*) AS n\n  FROM PREDICT cnn(digits);\nSELECT nope FROM PREDICT cnn(digits);\nSELEC 1;\n\\help\nPREDICT cnn(digits[5]);\n\\q\n"
    );
    let out = ialg(&["repl"], Some(&input));
    let stdout = text(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("397"), "{stdout}");
    assert!(stdout.contains("\\layers m"), "help lists the meta-commands");
    assert!(stdout.contains("│     5 │"), "the session survived the error: {stdout}");
    assert!(text(&out.stderr).contains("unknown column `nope`"));
    // Piped input: a statement that does not parse is reported once, and the lines after
    // it are statements of their own.
    assert_eq!(text(&out.stderr).matches("SELEC 1").count(), 1, "{}", text(&out.stderr));
    assert!(root().join("target/test-scratch/xdg/ialgebra/history.txt").exists());
}

/// A long whole-dataset statement draws no progress line when stderr is not a terminal
/// (scripts and pipes see only the messages).
#[test]
fn no_progress_line_when_stderr_is_a_pipe() {
    let out = ialg(
        &[
            "-c",
            &format!("{LOAD} SELECT count(*) AS n FROM cnn(digits) USING integrated_gradients(steps = 100);"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.lines().filter(|l| !l.starts_with("loaded ")).count(),
        0,
        "{stderr:?}"
    );
    assert!(!stderr.contains('\r'));
}

/// Labels outside the model's outputs (here counted from 1) load, and the first query
/// of that model on them warns once, on stderr, saying which labels and why it matters.
#[test]
fn labels_outside_the_classes_warn_once() {
    let out = ialg(
        &[
            "-c",
            "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
             LOAD DATA d FROM 'tests/fixtures/labels/digits20_x.npy' LABELS 'tests/fixtures/labels/digits20_y_from1.npy';
             SELECT count(*) AS n FROM PREDICT cnn(d) WHERE correct;
             SELECT count(*) AS n FROM cnn(d) USING saliency;",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(
        warnings,
        vec![
            "warning: 2 of the labels of `d` (10) are not outputs of `cnn` (0 to 9): `correct` is false and TARGET LABEL fails for those inputs"
        ],
        "{stderr}"
    );
    // The labels inside the classes are off by one too: few predictions are "correct".
    let mut s = crate::common::session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA d FROM 'tests/fixtures/labels/digits20_x.npy' LABELS 'tests/fixtures/labels/digits20_y_from1.npy';",
    );
    s.execute("PREDICT cnn(d);").unwrap();
    assert_eq!(s.take_warnings().len(), 1);
    s.execute("PREDICT cnn(d[0:3]);").unwrap();
    assert!(s.take_warnings().is_empty(), "once per model and dataset");
}
