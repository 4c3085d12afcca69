//! `ialg serve`: a local web page over one session — a query editor with the engine's
//! completion and highlighting, results as sortable tables with their maps drawn inline,
//! PLAN on request, history, progress with a cancel button, and errors with their caret.
//! A query in the address (`/?q=…`) runs on load, so an analysis can be shared as a link.
//!
//! The page is one HTML file compiled into the binary (no asset is fetched from the
//! network). The server binds 127.0.0.1 unless `--host` is given; then every request must
//! carry the token printed at start-up (`?token=…` on the page's address, which the page
//! passes on as the `x-ialg-token` header).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use polars::prelude::{AnyValue, DataFrame};
use serde::{Deserialize, Serialize};

use crate::exec::{Output, Session};
use crate::output::progress::ProgressReport;

/// The page: HTML, CSS and JavaScript in one file, no external reference.
const PAGE: &str = include_str!("serve.html");

/// The most rows of a result the page receives (the rest are counted).
const MAX_ROWS: usize = 5000;

/// The one session and what the page asks of it.
pub struct App {
    session: Mutex<Session>,
    cancel: Arc<AtomicBool>,
    running: AtomicBool,
    progress: Arc<Mutex<Option<ProgressReport>>>,
    history: Mutex<Vec<String>>,
    token: Option<String>,
}

impl App {
    /// The app over `session`, requiring `token` on every request when given.
    pub fn new(mut session: Session, token: Option<String>) -> Arc<App> {
        let progress: Arc<Mutex<Option<ProgressReport>>> = Arc::default();
        let seen = progress.clone();
        session.set_progress_observer(Arc::new(move |r: &ProgressReport| {
            if let Ok(mut p) = seen.lock() {
                *p = Some(r.clone());
            }
        }));
        Arc::new(App {
            cancel: session.cancel_flag(),
            session: Mutex::new(session),
            running: AtomicBool::new(false),
            progress,
            history: Mutex::new(Vec::new()),
            token,
        })
    }

    /// Whether a request may be answered: always on this machine; beyond it, with the
    /// token as the `x-ialg-token` header or the `token` parameter of the address.
    fn authorized(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        let Some(token) = &self.token else { return true };
        let in_address = query.and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
        let given = headers.get("x-ialg-token").and_then(|v| v.to_str().ok()).or(in_address);
        given == Some(token.as_str())
    }
}

/// The routes of the page and its API.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/run", post(run))
        .route("/api/complete", post(complete))
        .route("/api/cancel", post(cancel))
        .route("/api/progress", get(progress))
        .route("/api/history", get(history))
        .route("/api/keywords", get(keywords))
        .layer(axum::middleware::from_fn_with_state(app.clone(), require_token))
        .with_state(app)
}

/// Runs `ialg serve`: `script` (e.g. the LOADs) first, then the page on `host:port` (port
/// 0: any free one) until the process is stopped. Returns false if it cannot start.
pub fn serve(mut session: Session, host: &str, port: u16, script: Option<(String, String)>) -> bool {
    if let Some((text, origin)) = script {
        match session.execute(&text) {
            Ok(outputs) => {
                for out in &outputs {
                    if let Output::Message(m) = out {
                        println!("{m}");
                    }
                }
            }
            Err(e) => {
                eprintln!("{}", e.render(&text, &origin));
                return false;
            }
        }
    }
    let local = matches!(host, "127.0.0.1" | "localhost" | "::1");
    let token = (!local).then(random_token);
    let app = App::new(session, token.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the server: {e}");
            return false;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind((host, port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error[io]: cannot listen on {host}:{port}: {e}");
                return false;
            }
        };
        let address = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error[io]: {e}");
                return false;
            }
        };
        let shown = match &token {
            Some(t) => format!("http://{address}/?token={t}"),
            None => format!("http://{address}/"),
        };
        println!("ialg serve: open {shown}  (Ctrl-C stops the server)");
        if token.is_some() {
            println!("listening beyond this machine: every request needs the token above");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        match axum::serve(listener, router(app)).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!("error: the server stopped: {e}");
                false
            }
        }
    })
}

/// 128 random bits as hex, from the operating system.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    if bytes.iter().all(|b| *b == 0) {
        // No /dev/urandom: the clock and the process id, hashed.
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::time::SystemTime::now().hash(&mut h);
        std::process::id().hash(&mut h);
        bytes[..8].copy_from_slice(&h.finish().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every route asks for the token first (when there is one).
async fn require_token(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if app.authorized(request.headers(), request.uri().query()) {
        next.run(request).await
    } else {
        (
            StatusCode::FORBIDDEN,
            "this server needs its token: open the address it printed at start-up",
        )
            .into_response()
    }
}

async fn page() -> Response {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self' 'unsafe-inline' data:",
        )],
        Html(PAGE),
    )
        .into_response()
}

#[derive(Deserialize)]
struct RunRequest {
    q: String,
}

/// What one statement gave, as the page draws it.
#[derive(Serialize, Default)]
struct StatementResult {
    /// The statement's text.
    statement: String,
    /// "table", "message", "plan" or "error".
    kind: &'static str,
    columns: Vec<String>,
    rows: Vec<Vec<serde_json::Value>>,
    /// Rows of the result the page was not sent.
    more_rows: usize,
    /// The message, the plan, or the error with its caret.
    text: String,
    /// The result's maps as a PNG data URI, when it draws.
    picture: Option<String>,
    warnings: Vec<String>,
}

async fn run(State(app): State<Arc<App>>, Json(req): Json<RunRequest>) -> Response {
    if app.running.swap(true, Ordering::SeqCst) {
        return (
            StatusCode::CONFLICT,
            "a statement is running: wait for it, or cancel it",
        )
            .into_response();
    }
    let worker = app.clone();
    let results = tokio::task::spawn_blocking(move || {
        let out = run_text(&worker, &req.q);
        worker.running.store(false, Ordering::SeqCst);
        if let Ok(mut p) = worker.progress.lock() {
            *p = None;
        }
        out
    })
    .await;
    match results {
        Ok(results) => Json(results).into_response(),
        Err(e) => {
            app.running.store(false, Ordering::SeqCst);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the statement's worker failed: {e}"),
            )
                .into_response()
        }
    }
}

/// Runs each statement of `text` in order, stopping at the first that fails.
fn run_text(app: &App, text: &str) -> Vec<StatementResult> {
    let Ok(mut session) = app.session.lock() else {
        return vec![StatementResult {
            kind: "error",
            text: "the session is unavailable (a statement failed inside the server); restart ialg serve".into(),
            ..Default::default()
        }];
    };
    let script = match crate::syntax::parse(text) {
        Ok(s) => s,
        Err(e) => {
            return vec![StatementResult {
                statement: text.trim().to_string(),
                kind: "error",
                text: e.render(text, "query").trim_end().to_string(),
                ..Default::default()
            }];
        }
    };
    let mut results = Vec::new();
    for stmt in &script.statements {
        let statement = text[stmt.span.start..stmt.span.end].trim().to_string();
        if let Ok(mut h) = app.history.lock()
            && h.last() != Some(&statement)
        {
            h.push(statement.clone());
        }
        let outcome = session.execute_statement(stmt);
        let warnings = session.take_warnings();
        let mut result = StatementResult {
            statement,
            warnings,
            ..Default::default()
        };
        match outcome {
            Ok(Output::Table(df)) => {
                result.kind = "table";
                result.picture = session.picture_of(stmt, &df).map(|png| {
                    format!(
                        "data:image/png;base64,{}",
                        base64::engine::general_purpose::STANDARD.encode(png)
                    )
                });
                fill_table(&mut result, &df);
            }
            Ok(Output::Message(m)) => {
                result.kind = "message";
                result.text = m;
            }
            Ok(Output::Plan(p)) => {
                result.kind = "plan";
                result.text = p;
            }
            Err(e) => {
                result.kind = "error";
                result.text = e.render(text, "query").trim_end().to_string();
                results.push(result);
                break;
            }
        }
        results.push(result);
    }
    results
}

fn fill_table(result: &mut StatementResult, df: &DataFrame) {
    result.columns = df.get_column_names().iter().map(|c| c.to_string()).collect();
    let shown = df.height().min(MAX_ROWS);
    result.more_rows = df.height() - shown;
    result.rows = (0..shown)
        .map(|r| df.columns().iter().map(|c| json_cell(c.get(r).ok())).collect())
        .collect();
}

fn json_cell(v: Option<AnyValue>) -> serde_json::Value {
    use serde_json::Value;
    match v {
        None | Some(AnyValue::Null) => Value::Null,
        Some(AnyValue::Boolean(b)) => Value::Bool(b),
        Some(AnyValue::String(s)) => Value::String(s.to_string()),
        Some(AnyValue::StringOwned(s)) => Value::String(s.to_string()),
        Some(AnyValue::Int8(i)) => i.into(),
        Some(AnyValue::Int16(i)) => i.into(),
        Some(AnyValue::Int32(i)) => i.into(),
        Some(AnyValue::Int64(i)) => i.into(),
        Some(AnyValue::UInt8(i)) => i.into(),
        Some(AnyValue::UInt16(i)) => i.into(),
        Some(AnyValue::UInt32(i)) => i.into(),
        Some(AnyValue::UInt64(i)) => i.into(),
        // JSON has no NaN: a non-finite number travels as its name.
        Some(AnyValue::Float32(f)) => {
            serde_json::Number::from_f64(f as f64).map_or(Value::String(f.to_string()), Value::Number)
        }
        Some(AnyValue::Float64(f)) => {
            serde_json::Number::from_f64(f).map_or(Value::String(f.to_string()), Value::Number)
        }
        Some(other) => Value::String(other.to_string()),
    }
}

#[derive(Deserialize)]
struct CompleteRequest {
    line: String,
    /// The cursor, in characters (as the page counts them).
    pos: usize,
}

#[derive(Serialize)]
struct Completions {
    /// Where the word being completed starts, in characters.
    start: usize,
    candidates: Vec<String>,
}

async fn complete(State(app): State<Arc<App>>, Json(req): Json<CompleteRequest>) -> Response {
    // While a statement runs the session is busy: no completion rather than a wait.
    let Ok(session) = app.session.try_lock() else {
        return Json(Completions {
            start: req.pos,
            candidates: Vec::new(),
        })
        .into_response();
    };
    // The page counts characters, the engine bytes.
    let byte = req.line.char_indices().nth(req.pos).map_or(req.line.len(), |(i, _)| i);
    let (start, candidates) = session.complete(&req.line, byte);
    Json(Completions {
        start: req.line[..start.min(req.line.len())].chars().count(),
        candidates,
    })
    .into_response()
}

async fn cancel(State(app): State<Arc<App>>) -> Response {
    app.cancel.store(true, Ordering::Relaxed);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Serialize)]
struct ProgressState {
    running: bool,
    progress: Option<ProgressReport>,
}

async fn progress(State(app): State<Arc<App>>) -> Response {
    Json(ProgressState {
        running: app.running.load(Ordering::SeqCst),
        progress: app.progress.lock().ok().and_then(|p| p.clone()),
    })
    .into_response()
}

async fn history(State(app): State<Arc<App>>) -> Response {
    Json(app.history.lock().map(|h| h.clone()).unwrap_or_default()).into_response()
}

async fn keywords() -> Response {
    Json(crate::syntax::KEYWORDS.clone()).into_response()
}
