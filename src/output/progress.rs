//! A progress line on stderr for long statements (whole datasets, many steps): done and
//! total, rate and ETA, redrawn at most ten times a second, and only when stderr is a
//! terminal — scripts, pipes and tests see nothing.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: usize,
    /// What is counted ("inputs", "steps").
    unit: &'static str,
    start: Instant,
    last_draw: Mutex<Option<Instant>>,
}

/// Statements shorter than this draw nothing.
const QUIET_FOR: Duration = Duration::from_millis(300);

impl Progress {
    /// A progress line over inputs if stderr is a terminal, else None.
    pub fn on_terminal(label: impl Into<String>, total: usize) -> Option<Progress> {
        Self::counting(label, total, "inputs")
    }

    /// A progress line over `total` of `unit` if stderr is a terminal, else None.
    pub fn counting(label: impl Into<String>, total: usize, unit: &'static str) -> Option<Progress> {
        std::io::stderr().is_terminal().then(|| Progress {
            label: label.into(),
            total,
            unit,
            start: Instant::now(),
            last_draw: Mutex::new(None),
        })
    }

    pub fn update(&self, done: usize) {
        let now = Instant::now();
        let elapsed = now - self.start;
        let Ok(mut last) = self.last_draw.lock() else { return };
        if elapsed < QUIET_FOR || last.is_some_and(|t| now - t < Duration::from_millis(100)) {
            return;
        }
        *last = Some(now);
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
        let eta = if rate > 0.0 {
            format!("{:.0}s", (self.total.saturating_sub(done)) as f64 / rate)
        } else {
            "?".into()
        };
        let width = 24;
        let filled = (done * width).checked_div(self.total).unwrap_or(0).min(width);
        let bar: String = "█".repeat(filled) + &"·".repeat(width - filled);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} {bar} {done}/{} {}  {rate:.1}/s  ETA {eta}  ",
            self.label, self.total, self.unit
        );
        let _ = err.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.last_draw.lock().is_ok_and(|l| l.is_some()) {
            // Clear the line so the table starts clean.
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
