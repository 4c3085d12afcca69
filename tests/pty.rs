//! The real `ialg repl` in a pseudo-terminal, as a user at a keyboard drives it: a
//! multi-line query and its table, tab completion, a parse error reported before the
//! statement runs, Ctrl-C on a long query and inside one input's million IG steps (the
//! prompt returns and the session, with its models and data, is intact), and Ctrl-D to
//! leave.

use std::process::Command;

use rexpect::session::{Options, spawn_with_options};

use crate::common::root;

#[test]
fn the_shell_in_a_terminal() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ialg"));
    cmd.arg("repl")
        .current_dir(root())
        .env("XDG_DATA_HOME", root().join("target/test-scratch/xdg-pty"))
        .env("TERM", "xterm");
    let mut p = spawn_with_options(cmd, Options::new().timeout_ms(Some(30_000))).expect("a pty");
    p.exp_string("iql> ").unwrap();
    // Two statements typed ahead in one burst (as a paste without bracketed paste, or a
    // loaded machine, delivers them): the keys after the first Enter belong to the next
    // prompt and must survive the line editor's read buffer.
    p.send(concat!(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';\r",
        "LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';\r"
    ))
    .unwrap();
    p.flush().unwrap();
    p.exp_string("loaded model cnn").unwrap();
    p.exp_string("loaded data digits").unwrap();

    // a query over two lines runs when the `;` arrives, and prints its table; the second
    // line has the continuation prompt
    p.send_line("SELECT input, label, prediction").unwrap();
    p.exp_string("iql-> ").unwrap();
    p.send_line("FROM PREDICT cnn(digits[0:2]);").unwrap();
    p.exp_string("2 rows").unwrap();

    // completion on a continuation line sees the model named on the first
    p.send_line("SELECT * FROM cnn(digits[0])").unwrap();
    p.exp_string("iql-> ").unwrap();
    p.send("AT LAYER co").unwrap();
    // the first Tab completes the common part (conv), the second lists the candidates
    p.send("\t").unwrap();
    p.send("\t").unwrap();
    // `send` is line-buffered: push the keys without an Enter
    p.flush().unwrap();
    p.exp_string("conv2").unwrap();
    interrupt_line(&mut p);

    // an error in an earlier line: reported, and the whole statement offered again
    p.send_line("SELECT * FRM cnn(digits[0])").unwrap();
    p.exp_string("iql-> ").unwrap();
    p.send_line(";").unwrap();
    p.exp_string("error[syntax]").unwrap();
    p.exp_regex(r"iql> \x1b\[[0-9;]*mSELECT\x1b\[0m \* FRM").unwrap();
    interrupt_line(&mut p);

    // tab completion: the layers of the model being interpreted
    p.send("SHOW LAYERS OF cn").unwrap();
    p.send("\t").unwrap();
    p.send_line(";").unwrap();
    p.exp_string("fc2").unwrap();

    // a statement that does not parse is reported before it runs and stays to be fixed;
    // its error is still shown after a key that does not change the line (←); Ctrl-C
    // clears the line
    p.send_line("SELECT * FRM cnn(digits[0]);").unwrap();
    p.exp_string("error[syntax]").unwrap();
    p.send("\x1b[D").unwrap();
    p.flush().unwrap();
    p.exp_string("expected").unwrap();

    interrupt_line(&mut p);

    // Ctrl-C cancels a long query; the prompt returns with the session alive
    p.send_line("SELECT count(*) AS n FROM cnn(digits) USING integrated_gradients(steps = 3000);")
        .unwrap();
    // Wait for the progress line: the query is running and the terminal has left the
    // line editor's raw mode, so Ctrl-C is a signal rather than a typed character.
    // (the statement's own text says "steps": wait for the count, 397 × 3000 of them)
    p.exp_string("/1191000 steps").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("cancelled").unwrap();
    p.exp_string("iql> ").unwrap();
    // One input with a million steps, either rule: progress counts steps, and Ctrl-C
    // stops it between batches of steps (a million Gauss–Legendre nodes take a fraction
    // of a second; they once took minutes and ignored Ctrl-C).
    for rule in ["gausslegendre", "riemann_trapezoid"] {
        p.send_line(&format!(
            "SELECT sum(attribution) FROM cnn(digits[3]) USING integrated_gradients(steps = 1000000, rule = {rule});"
        ))
        .unwrap();
        p.exp_string("/1000000 steps").unwrap();
        let asked = std::time::Instant::now();
        p.send_control('c').unwrap();
        p.exp_string("cancelled").unwrap();
        p.exp_string("iql> ").unwrap();
        eprintln!("{rule}: Ctrl-C answered in {:?}", asked.elapsed());
    }
    p.send_line("SELECT prediction FROM PREDICT cnn(digits[5]);").unwrap();
    p.exp_string("1 row").unwrap();

    // Ctrl-D leaves
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
}

/// Ctrl-C at the prompt, then wait for the fresh prompt it leads to. Keys sent before that
/// prompt is ready may arrive in the same read as the Ctrl-C, and the line editor drops
/// what follows an interrupt in its buffer (a test-timing artefact on a loaded machine:
/// a person cannot type that fast), so the test must not race it.
fn interrupt_line(p: &mut rexpect::session::PtySession) {
    p.send_control('c').unwrap();
    // the editor leaves bracketed-paste mode when the line ends and enters it again when
    // the next prompt starts: only a new prompt, never a redraw, writes both
    p.exp_regex(r"\x1b\[\?2004l\r\n\x1b\[\?2004h[^\n]*iql> ").unwrap();
}
