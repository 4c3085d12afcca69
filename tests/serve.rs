//! `ialg serve` as users run it: the real binary on a free port, its API asked over HTTP
//! (tables, pictures, plans, errors with their caret, completion, history, progress and
//! cancel, one statement at a time, the token beyond this machine), and the page itself
//! loaded in a headless Chromium from a `?q=` link, which must show the table's rows and
//! the maps.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::common::{announce_skip, root};

const SETUP: &str = "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
LOAD MODEL cnn_b FROM 'models/digits_cnn_b.safetensors' ARCH 'models/digits_cnn_b.json';
LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';";

/// A running `ialg serve`, stopped when dropped.
struct Server {
    child: Child,
    /// host:port
    address: String,
    /// The page's address as printed (with the token, if any).
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let dir = root().join("target/test-scratch/serve");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("setup.iql");
    std::fs::write(&script, SETUP).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ialg"))
        .arg("serve")
        .arg(&script)
        .args(["--port", "0"])
        .args(extra)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("the server says where it listens").unwrap();
        if let Some(rest) = line.strip_prefix("ialg serve: open ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let address = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    Server { child, address, url }
}

/// One HTTP/1.1 request; (status, body).
fn http(address: &str, method: &str, path: &str, body: Option<&Value>, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        payload.len()
    );
    if let Some(t) = token {
        request.push_str(&format!("x-ialg-token: {t}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&payload);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status: u16 = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies: the JSON is the part between the size lines.
    let body = if response.to_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body.as_str();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body
    };
    (status, body)
}

fn run(address: &str, q: &str) -> Vec<Value> {
    let (status, body) = http(address, "POST", "/api/run", Some(&json!({ "q": q })), None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<Value>>(&body).unwrap()
}

#[test]
fn the_api_runs_statements_of_the_one_session() {
    let server = start(&[]);
    // a table with its picture; the page's first row is the best pixel
    let out = run(
        &server.address,
        "SELECT row, col, attribution FROM cnn(digits[0]) USING integrated_gradients ORDER BY attribution DESC LIMIT 3",
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["kind"], "table");
    assert_eq!(out[0]["columns"], json!(["row", "col", "attribution"]));
    // digits_cnn__ig_gausslegendre, input 0: the largest attribution is 4.53699 at (7, 6)
    assert_eq!(out[0]["rows"][0][0], 7);
    assert_eq!(out[0]["rows"][0][1], 6);
    assert!((out[0]["rows"][0][2].as_f64().unwrap() - 4.53699).abs() < 1e-4);
    assert!(
        out[0]["picture"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    // statements run in order in the one session, and stop at the first error, which
    // comes with its caret
    let out = run(
        &server.address,
        "LET few = digits[0:3]; SELECT count(*) AS n FROM PREDICT cnn(few); SELECT nope FROM PREDICT cnn(few); SHOW DATA",
    );
    let kinds: Vec<&str> = out.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message", "table", "error"]);
    assert_eq!(out[1]["rows"][0][0], 3);
    let error = out[2]["text"].as_str().unwrap();
    assert!(
        error.contains("unknown column `nope`") && error.contains('^'),
        "{error}"
    );
    // a syntax error anywhere stops the text before anything runs
    let out = run(&server.address, "SHOW DATA; SELEC 1");
    assert_eq!(out.len(), 1);
    assert!(
        out[0]["text"].as_str().unwrap().contains("did you mean SELECT?"),
        "{}",
        out[0]["text"]
    );
    // PLAN on request
    let out = run(
        &server.address,
        "PLAN SELECT * FROM cnn(digits[3]) JOIN cnn_b(digits[3]) USING saliency",
    );
    assert_eq!(out[0]["kind"], "plan");
    assert!(
        out[0]["text"]
            .as_str()
            .unwrap()
            .contains("Join (attribution = mean of the sides)")
    );
    // a JOIN draws both sides; a table without attributions draws nothing
    let out = run(
        &server.address,
        "SELECT * FROM cnn(digits[3]) JOIN cnn_b(digits[3]) USING saliency",
    );
    assert!(out[0]["picture"].is_string());
    assert!(run(&server.address, "PREDICT cnn(digits[3])")[0]["picture"].is_null());
    // completion asks the engine (positions in characters)
    let (status, body) = http(
        &server.address,
        "POST",
        "/api/complete",
        Some(&json!({ "line": "SELECT * FROM cnn(digits[0]) AT LAYER co", "pos": 40 })),
        None,
    );
    assert_eq!(status, 200);
    let c: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(c, json!({ "start": 38, "candidates": ["conv1", "conv2"] }));
    // history: the statements run, in order
    let (_, body) = http(&server.address, "GET", "/api/history", None, None);
    let history: Vec<String> = serde_json::from_str(&body).unwrap();
    assert!(history.contains(&"LET few = digits[0:3]".to_string()), "{history:?}");
    assert_eq!(history.last().unwrap(), "PREDICT cnn(digits[3])");
    // the page loads nothing from the network
    let (status, page) = http(&server.address, "GET", "/", None, None);
    assert_eq!(status, 200);
    for external in ["http://", "https://", "src=\"//", "<link", "<script src", "@import"] {
        assert!(!page.contains(external), "the page refers to {external}");
    }
}

#[test]
fn a_long_statement_reports_progress_and_cancels() {
    let server = start(&[]);
    let address = server.address.clone();
    let long = std::thread::spawn(move || {
        run(
            &address,
            "SELECT sum(attribution) FROM cnn(digits[3]) USING integrated_gradients(steps = 1000000)",
        )
    });
    // progress counts steps while it runs
    let mut seen = Value::Null;
    for _ in 0..200 {
        let (_, body) = http(&server.address, "GET", "/api/progress", None, None);
        let p: Value = serde_json::from_str(&body).unwrap();
        if p["progress"]["unit"] == "steps" {
            seen = p;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(seen["running"], true, "{seen}");
    assert_eq!(seen["progress"]["total"], 1_000_000);
    // the one session runs one statement at a time
    let (status, body) = http(
        &server.address,
        "POST",
        "/api/run",
        Some(&json!({ "q": "SHOW DATA" })),
        None,
    );
    assert_eq!(status, 409, "{body}");
    let (status, _) = http(&server.address, "POST", "/api/cancel", Some(&json!({})), None);
    assert_eq!(status, 204);
    let out = long.join().unwrap();
    assert_eq!(out[0]["kind"], "error");
    assert!(
        out[0]["text"].as_str().unwrap().contains("cancelled"),
        "{}",
        out[0]["text"]
    );
    // the session is still there
    assert_eq!(
        run(&server.address, "SELECT count(*) AS n FROM PREDICT cnn(digits)")[0]["rows"][0][0],
        397
    );
}

#[test]
fn beyond_this_machine_every_request_needs_the_token() {
    let server = start(&["--host", "0.0.0.0"]);
    let token = server
        .url
        .split("token=")
        .nth(1)
        .expect("a token in the address")
        .to_string();
    assert_eq!(token.len(), 32);
    assert_eq!(http(&server.address, "GET", "/", None, None).0, 403);
    assert_eq!(
        http(
            &server.address,
            "POST",
            "/api/run",
            Some(&json!({ "q": "SHOW DATA" })),
            None
        )
        .0,
        403
    );
    assert_eq!(http(&server.address, "GET", "/api/history", None, Some("wrong")).0, 403);
    assert_eq!(
        http(&server.address, "GET", &format!("/?token={token}"), None, None).0,
        200
    );
    let (status, body) = http(
        &server.address,
        "POST",
        "/api/run",
        Some(&json!({ "q": "SHOW DATA" })),
        Some(&token),
    );
    assert_eq!(status, 200, "{body}");
}

/// The page in a real browser: a `?q=` link runs on load and shows the rows and the maps.
#[test]
fn a_shared_link_runs_in_a_headless_browser() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        announce_skip("the browser test: no chromium (`.ci/run` installs Debian's)");
        return;
    };
    let server = start(&[]);
    let query = "SELECT row, col, attribution FROM cnn(digits[3]) JOIN cnn_b(digits[3]) USING saliency ORDER BY attribution DESC LIMIT 5";
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let profile = root().join("target/test-scratch/serve/chromium-profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=20000",
            &format!("--user-data-dir={}", profile.display()),
            "--dump-dom",
            &format!("{}?q={encoded}", server.url),
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // the editor holds the query, the table its five rows, the maps a picture
    assert!(dom.contains("5 rows"), "{dom}");
    // (the page's script also holds `<tr>`: count in the results only)
    let results = &dom[dom.find("<div id=\"results\">").unwrap()..];
    let results = &results[..results.find("<script").unwrap_or(results.len())];
    let rows = results.matches("<tr>").count();
    assert_eq!(rows, 6, "a header and five rows: {dom}");
    assert!(dom.contains("src=\"data:image/png;base64,"), "{dom}");
    assert!(dom.contains("cnn_b(digits[3]) USING saliency"));
}
