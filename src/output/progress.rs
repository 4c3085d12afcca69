//! A progress line on stderr for long statements (whole datasets, many steps): done and
//! total, rate and ETA, redrawn at most ten times a second, and only when stderr is a
//! terminal — scripts, pipes and tests see nothing. A front end (`ialg serve`) may observe
//! the same reports instead.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a running statement is, for a front end other than the terminal (`ialg serve`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProgressReport {
    pub label: String,
    pub done: usize,
    pub total: usize,
    /// What is counted ("inputs", "steps").
    pub unit: &'static str,
}

/// Receives progress reports (at most ten a second).
pub type ProgressObserver = Arc<dyn Fn(&ProgressReport) + Send + Sync>;

pub struct Progress {
    label: String,
    total: usize,
    /// What is counted ("inputs", "steps").
    unit: &'static str,
    start: Instant,
    last_draw: Mutex<Option<Instant>>,
    /// Draw on stderr (a terminal).
    terminal: bool,
    observer: Option<ProgressObserver>,
}

/// Statements shorter than this draw nothing.
const QUIET_FOR: Duration = Duration::from_millis(300);

impl Progress {
    /// Progress over `total` of `unit`: drawn if stderr is a terminal (and `draw` allows),
    /// reported to the observer if there is one; None if neither.
    pub fn counting(
        label: impl Into<String>,
        total: usize,
        unit: &'static str,
        observer: Option<ProgressObserver>,
        draw: bool,
    ) -> Option<Progress> {
        let terminal = draw && std::io::stderr().is_terminal();
        (terminal || observer.is_some()).then(|| Progress {
            label: label.into(),
            total,
            unit,
            start: Instant::now(),
            last_draw: Mutex::new(None),
            terminal,
            observer,
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
        if let Some(observe) = &self.observer {
            observe(&ProgressReport {
                label: self.label.clone(),
                done,
                total: self.total,
                unit: self.unit,
            });
        }
        if !self.terminal {
            return;
        }
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

/// The callback a `Control` reports done work to: it updates the progress, if any.
pub fn reporter(progress: &Option<Progress>) -> impl Fn(usize) + Sync + '_ {
    move |done| {
        if let Some(p) = progress {
            p.update(done)
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.terminal && self.last_draw.lock().is_ok_and(|l| l.is_some()) {
            // Clear the line so the table starts clean.
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
