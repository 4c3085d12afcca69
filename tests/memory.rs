//! Memory at scale: a streamed audit (`GROUP BY input` over a whole dataset) holds one
//! chunk of the relation and reads the dataset's file a block at a time, so its peak
//! does not grow with the number of inputs beyond the result's own rows.
//!
//! The measure is the peak of live heap bytes, counted by this binary's allocator, in a
//! process of its own per dataset size: resident set size would also count what an
//! allocator keeps cached after a free, which varies from run to run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::common;

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; only counters move.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The child's environment variable: the directory of its dataset.
const CHILD_DATA: &str = "IALG_MEMORY_TEST_DATA";

/// Writes `n` digits (the test set repeated) and their labels to `dir`.
fn write_digits(dir: &Path, n: usize) {
    let (shape, x) = common::npy(&common::root().join("data/digits_test_x.npy"));
    let (_, y) = common::npy(&common::root().join("data/digits_test_y.npy"));
    let d: usize = shape[1..].iter().product();
    let x: Vec<f32> = (0..n * d).map(|i| x[i % x.len()] as f32).collect();
    let y: Vec<i64> = (0..n).map(|i| y[i % y.len()] as i64).collect();
    std::fs::create_dir_all(dir).unwrap();
    let mut dims = vec![n];
    dims.extend(&shape[1..]);
    std::fs::write(dir.join("x.npy"), ialgebra::data::npy::write_npy_f32(&dims, &x)).unwrap();
    std::fs::write(dir.join("y.npy"), ialgebra::data::npy::write_npy_i64(&[n], &y)).unwrap();
}

/// Runs the audit in a process of its own; returns its peak live heap bytes.
fn audit_peak(n: usize) -> usize {
    let dir = std::env::temp_dir().join(format!("ialg-memory-{}-{n}", std::process::id()));
    write_digits(&dir, n);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memory::streamed_audit_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DATA, &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child for {n} inputs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The test harness prints the test's name on the same line.
    stdout
        .split("peak_bytes=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak in the child's output:\n{stdout}"))
}

#[test]
#[ignore = "the child process of streamed_audit_memory_is_flat"]
fn streamed_audit_child() {
    let Some(dir) = std::env::var_os(CHILD_DATA) else {
        return;
    };
    let dir = Path::new(&dir);
    let mut s = common::session(&format!(
        "SET memory_mb = 64; SET cache_mb = 0;
         LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA d FROM '{}' LABELS '{}';",
        dir.join("x.npy").display(),
        dir.join("y.npy").display()
    ));
    let df = common::query(
        &mut s,
        "SELECT input, max(attribution) AS m FROM cnn(d) USING saliency GROUP BY input",
    );
    let n = common::npy(&dir.join("y.npy")).0[0];
    assert_eq!(df.height(), n, "one row per input");
    assert!(s.stats().streamed_chunks > 1, "the audit streams at {n} inputs");
    println!("peak_bytes={}", PEAK.load(Relaxed));
}

/// The measure: the peak at 40 000 inputs within 10 % of that at 4 000. Live
/// heap peaks measured 24.8 MB and 26.2 MB (+5.7 %; the difference is the result's
/// 36 000 more rows and their sort); before streamed reads they were 1 KB per input apart.
#[test]
fn streamed_audit_memory_is_flat() {
    let small = audit_peak(4_000);
    let large = audit_peak(40_000);
    eprintln!("peak live heap: {small} bytes at 4000 inputs, {large} at 40000");
    assert!(
        (large as f64) <= 1.10 * small as f64,
        "peak live heap {large} bytes at 40000 inputs against {small} at 4000: more than 10 % apart"
    );
}
