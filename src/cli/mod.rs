//! The `ialg` command: `ialg run FILE`, `ialg -c TEXT`, a script on stdin, or the REPL.
//! All of them end in `Runner::run_text`, which executes through the one `Session`.

mod repl;
pub mod serve;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exec::{Output, Session};
use crate::output::{Format, render};

#[derive(Parser, Debug)]
#[command(
    name = "ialg",
    version,
    about = "Ask a neural network why: an interactive query engine for interpretation (IQL)"
)]
pub struct Cli {
    /// Run TEXT (one or more statements) and exit.
    #[arg(short = 'c', long = "command", value_name = "TEXT")]
    command: Option<String>,
    /// How results are printed.
    #[arg(short = 'f', long, value_name = "table|csv|json", default_value = "table", value_parser = parse_format, global = true)]
    format: Format,
    /// Set a script variable (used as :name), overriding the script's VAR default.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var, global = true)]
    vars: Vec<(String, String)>,
    /// Carry on after a failed statement (the exit code still reports the failure).
    #[arg(long, global = true)]
    keep_going: bool,
    /// Print each statement (with the comments before it) ahead of its result.
    #[arg(short = 'e', long, global = true)]
    echo: bool,
    #[command(subcommand)]
    sub: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run a script of IQL statements.
    Run {
        /// The script (.iql); `-` reads standard input.
        file: PathBuf,
    },
    /// Start the interactive shell.
    Repl,
    /// Serve a web page over one session (query editor, tables, maps, plans).
    Serve {
        /// A script to run first (e.g. the LOADs).
        file: Option<PathBuf>,
        /// The port (0: any free one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The address to listen on; anything but this machine requires the token printed
        /// at start-up.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("unknown format `{s}`: use table, csv or json"))
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` should be NAME=VALUE"))?;
    let k = k.trim().trim_start_matches(':');
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`{k}` is not a variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut runner = Runner::new(cli.format, cli.keep_going, cli.echo);
    for (k, v) in &cli.vars {
        runner.session.set_variable(k, v);
    }
    // Ctrl-C cancels a running statement; it stops the server itself.
    if !matches!(cli.sub, Some(Sub::Serve { .. })) {
        runner.install_interrupt_handler();
    }
    let ok = match (&cli.command, &cli.sub) {
        (Some(text), _) => check_vars(text, &cli.vars) && runner.run_text(text, "<command>"),
        (None, Some(Sub::Run { file })) => {
            if file.as_os_str() == "-" {
                runner.run_stdin(&cli.vars)
            } else {
                match std::fs::read_to_string(file) {
                    Ok(text) => check_vars(&text, &cli.vars) && runner.run_text(&text, &file.display().to_string()),
                    Err(e) => {
                        eprintln!("error[io]: cannot read {}: {e}", file.display());
                        false
                    }
                }
            }
        }
        (None, Some(Sub::Repl)) => repl::run(&mut runner),
        (None, Some(Sub::Serve { file, port, host })) => {
            let script = match file {
                Some(f) => match std::fs::read_to_string(f) {
                    Ok(text) => Some((text, f.display().to_string())),
                    Err(e) => {
                        eprintln!("error[io]: cannot read {}: {e}", f.display());
                        return ExitCode::FAILURE;
                    }
                },
                None => None,
            };
            if let Some((text, _)) = &script
                && !check_vars(text, &cli.vars)
            {
                return ExitCode::FAILURE;
            }
            serve::serve(std::mem::take(&mut runner.session), host, *port, script)
        }
        (None, None) => {
            if std::io::stdin().is_terminal() {
                repl::run(&mut runner)
            } else {
                runner.run_stdin(&cli.vars)
            }
        }
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Whether every `--var` names a variable of the script (a VAR it declares or a `:name`
/// it reads); a misspelt one would otherwise be ignored silently. Says which are not.
fn check_vars(text: &str, vars: &[(String, String)]) -> bool {
    let Ok(script) = crate::syntax::parse(text) else {
        // The run reports the syntax error.
        return true;
    };
    if script.statements.is_empty() {
        // An empty script (or only `;` and comments) is worth a word, not silence.
        eprintln!("no statements to run");
    }
    let mut known: Vec<String> = script
        .statements
        .iter()
        .filter_map(|s| match &s.kind {
            crate::syntax::ast::StatementKind::Var { name, .. } => Some(name.name.clone()),
            _ => None,
        })
        .collect();
    // `:name` wherever a literal may stand (a text scan: a name inside a string only
    // makes a typo pass, never a right name fail).
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices(':') {
        let name: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let starts_like_a_name = bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
        if starts_like_a_name && !known.contains(&name) {
            known.push(name);
        }
    }
    let unknown: Vec<&str> = vars
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !known.iter().any(|n| n == k))
        .collect();
    if unknown.is_empty() {
        return true;
    }
    let listed = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    eprintln!(
        "error[name]: --var {}: the script has no such variable (its variables: {listed})",
        unknown.join(", ")
    );
    false
}

/// Executes text through the session and prints what comes back.
pub struct Runner {
    pub session: Session,
    pub format: Format,
    pub keep_going: bool,
    pub echo: bool,
    pub timing: bool,
}

impl Runner {
    pub fn new(format: Format, keep_going: bool, echo: bool) -> Runner {
        Runner {
            session: Session::new(),
            format,
            keep_going,
            echo,
            timing: false,
        }
    }

    /// Ctrl-C while a statement runs cancels it (between batches); the session survives.
    fn install_interrupt_handler(&self) {
        let flag = self.session.cancel_flag();
        let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed));
    }

    fn run_stdin(&mut self, vars: &[(String, String)]) -> bool {
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("error[io]: cannot read standard input: {e}");
            return false;
        }
        check_vars(&text, vars) && self.run_text(&text, "<stdin>")
    }

    /// Runs a script, printing each result as it arrives and each error with its caret.
    /// Returns whether everything succeeded.
    pub fn run_text(&mut self, text: &str, origin: &str) -> bool {
        let format = self.format;
        let echo = self.echo;
        let timing = self.timing;
        let mut prev_end = 0usize;
        let started = std::cell::Cell::new(std::time::Instant::now());
        let mut sink =
            |stmt: &crate::syntax::ast::Statement, result: crate::error::Result<Output>, warnings: &[String]| {
                if echo {
                    let from = leading_comments_start(text, prev_end, stmt.span.start);
                    println!("{};", text[from..stmt.span.end].trim());
                }
                prev_end = stmt.span.end;
                match result {
                    Ok(out) => print_output(&out, format),
                    Err(e) => eprintln!("{}", e.render(text, origin)),
                }
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                if timing {
                    println!("Time: {:.3} ms", started.get().elapsed().as_secs_f64() * 1e3);
                }
                let _ = std::io::stdout().flush();
                started.set(std::time::Instant::now());
            };
        match self.session.run_script(text, self.keep_going, &mut sink) {
            Ok(ok) => ok,
            Err(e) => {
                eprintln!("{}", e.render(text, origin));
                false
            }
        }
    }
}

/// Where the comments directly before a statement begin (so --echo shows them too).
fn leading_comments_start(text: &str, prev_end: usize, start: usize) -> usize {
    let between = &text[prev_end..start];
    // Skip the `;` and blank space that closed the previous statement.
    let trimmed = between.trim_start_matches(|c: char| c == ';' || c.is_whitespace());
    start - trimmed.len()
}

fn terminal_width() -> usize {
    if std::io::stdout().is_terminal() {
        terminal_size::terminal_size().map(|(w, _)| w.0 as usize).unwrap_or(100)
    } else {
        160
    }
}

pub fn print_output(out: &Output, format: Format) {
    match out {
        Output::Table(df) => match render(df, format, terminal_width(), 40) {
            Ok(text) => {
                let text = text.trim_end();
                println!("{text}");
                if format == Format::Table {
                    println!();
                }
            }
            Err(e) => eprintln!("error[{}]: {}", e.kind.label(), e),
        },
        Output::Message(m) => {
            if format == Format::Table {
                println!("{m}");
            } else {
                eprintln!("{m}");
            }
        }
        Output::Plan(p) => println!("{}", p.trim_end()),
    }
}
