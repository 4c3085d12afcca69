//! The interactive shell: rustyline with multi-line input until `;`, history in the
//! user's data directory, and backslash meta-commands.

use rustyline::error::ReadlineError;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Completer, Editor, Helper, Highlighter, Hinter};

use super::Runner;
use crate::output::Format;

#[derive(Helper, Completer, Hinter, Highlighter)]
struct IqlHelper;

impl Validator for IqlHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if statement_complete(ctx.input()) {
            ValidationResult::Valid(None)
        } else {
            ValidationResult::Incomplete
        })
    }
}

/// Input is complete when it is a meta-command or ends with `;` outside strings and comments.
pub fn statement_complete(input: &str) -> bool {
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed.starts_with('\\') {
        return true;
    }
    let mut last_significant = None;
    let mut chars = input.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            if c == '\'' {
                in_string = false;
            }
            last_significant = Some(c);
            continue;
        }
        match c {
            '\'' => {
                in_string = true;
                last_significant = Some(c);
            }
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            c if c.is_whitespace() => {}
            c => last_significant = Some(c),
        }
    }
    !in_string && last_significant == Some(';')
}

/// The meta-commands; `\help` is generated from this table.
const META: &[(&str, &str)] = &[
    ("\\q", "quit (Ctrl-D does too)"),
    ("\\help", "this list"),
    ("\\models", "loaded models (SHOW MODELS)"),
    ("\\data", "loaded datasets (SHOW DATA)"),
    ("\\methods", "attribution methods (SHOW METHODS)"),
    ("\\layers m", "the layers of model m (SHOW LAYERS OF m)"),
    ("\\cache", "the activation cache (SHOW CACHE)"),
    ("\\timing on|off", "print each statement's wall time"),
    ("\\format table|csv|json", "how results print"),
    ("\\i file.iql", "run a script file"),
];

fn help() -> String {
    let mut s = String::from(
        "Statements end with `;`. Examples:\n  LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';\n  LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';\n  SELECT row, col, attribution FROM cnn(digits[17]) USING integrated_gradients ORDER BY attribution DESC LIMIT 10;\n  PREDICT cnn(digits[0:5]);\nMeta-commands:\n",
    );
    for (cmd, what) in META {
        s.push_str(&format!("  {cmd:<24} {what}\n"));
    }
    s
}

/// Runs a meta-command; returns false to quit.
fn meta(runner: &mut Runner, line: &str) -> bool {
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or("");
    let arg = parts.next();
    let statement = |s: &str| s.to_string();
    let sql = match (cmd, arg) {
        ("\\q", _) | ("\\quit", _) => return false,
        ("\\help", _) | ("\\h", _) | ("\\?", _) => {
            print!("{}", help());
            return true;
        }
        ("\\models", _) => statement("SHOW MODELS;"),
        ("\\data", _) => statement("SHOW DATA;"),
        ("\\methods", _) => statement("SHOW METHODS;"),
        ("\\cache", _) => statement("SHOW CACHE;"),
        ("\\layers", Some(m)) => format!("SHOW LAYERS OF {m};"),
        ("\\timing", Some(v)) => {
            runner.timing = v.eq_ignore_ascii_case("on");
            println!("Timing is {}.", if runner.timing { "on" } else { "off" });
            return true;
        }
        ("\\format", Some(f)) => {
            match Format::parse(f) {
                Some(fmt) => {
                    runner.format = fmt;
                    println!("Output format is {f}.");
                }
                None => eprintln!("error: unknown format `{f}`: use table, csv or json"),
            }
            return true;
        }
        ("\\i", Some(path)) => {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    runner.run_text(&text, path);
                }
                Err(e) => eprintln!("error[io]: cannot read {path}: {e}"),
            }
            return true;
        }
        _ => {
            eprintln!("error: unknown or incomplete meta-command `{line}`; \\help lists them");
            return true;
        }
    };
    runner.run_text(&sql, "<meta>");
    true
}

fn history_path() -> Option<std::path::PathBuf> {
    let dir = dirs::data_dir()?.join("ialgebra");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("history.txt"))
}

/// The read-eval-print loop. Returns true (a REPL session always ends normally).
pub fn run(runner: &mut Runner) -> bool {
    let mut editor: Editor<IqlHelper, rustyline::history::FileHistory> = match Editor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the shell: {e}");
            return false;
        }
    };
    editor.set_helper(Some(IqlHelper));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "ialgebra {} — type \\help for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        match editor.readline("iql> ") {
            Ok(line) => {
                let text = line.trim();
                if text.is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(text);
                if text.starts_with('\\') {
                    if !meta(runner, text) {
                        break;
                    }
                } else {
                    runner.run_text(text, "<input>");
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        }
    }
    if let Some(h) = &history
        && let Err(e) = editor.save_history(h)
    {
        eprintln!("warning: could not save history to {}: {e}", h.display());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::statement_complete;

    #[test]
    fn multi_line_until_semicolon() {
        assert!(!statement_complete("SELECT *"));
        assert!(!statement_complete("SELECT * FROM m(d) -- ends here;"));
        assert!(!statement_complete("SELECT 'a;"));
        assert!(statement_complete("SELECT *\nFROM m(d);"));
        assert!(statement_complete("SELECT * FROM m(d); -- note"));
        assert!(statement_complete("\\q"));
    }
}
