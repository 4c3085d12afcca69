//! Per-input times of the standard workloads, through the query language as users run
//! them: `cargo bench` (release build). Each workload runs several times; the table shows
//! the median and the spread (min–max) per input. The activation cache is off so that
//! every run computes. Set BENCH_RUNS to change the number of runs.
//!
//! With the full-size exports of `tools/make_zoo.py --full` in `models/zoo` (git-ignored),
//! the bench also runs the real-scale workloads (ResNet-18/50, MobileNetV3, ViT-B/16,
//! ViT-S/16 at 224×224), prints this machine's peak f32 GFLOP/s (a large square product
//! through gemm on every thread) and, per workload, the multiply-adds the engine ran as
//! GFLOP/s and as a fraction of that peak. BENCH_ONLY=real skips the digits workloads,
//! BENCH_ONLY=digits the real ones; BENCH_REAL_RUNS (default 3) sets their runs and
//! BENCH_MODELS (e.g. `resnet18,vit_s_16`) picks models; BENCH_SKIP (e.g. `occlusion,
//! integrated`) leaves out workloads whose names contain those words.

use std::process::Command;
use std::time::Instant;

use ialgebra::exec::Session;

/// The allocator the `ialg` binary uses (src/main.rs says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SETUP: &str = "
    SET cache_mb = 0;
    LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
    LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
    LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
    LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;
    LOAD MODEL bd FROM 'models/digits_cnn_backdoor.safetensors' ARCH 'models/digits_cnn_backdoor.json';
    LOAD DATA train FROM 'data/digits_backdoor_train_x.npy';";

struct Row {
    name: String,
    inputs: usize,
    per_input_ms: Vec<f64>,
}

/// This machine's peak sustained f32 rate: the best of five 2048³ products through gemm
/// with every rayon thread (the kernel every engine layer uses, at its most efficient size).
fn peak_gflops() -> f64 {
    let n = 2048;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; n * n];
    let threads = rayon::current_num_threads();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        // SAFETY: three distinct n×n row-major buffers, strides in bounds.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
        best = best.max(2.0 * (n * n * n) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// A real-scale workload's result: per-input ms of each run and GFLOP/s of the products.
struct Measured {
    per_input_ms: Vec<f64>,
    gflops: f64,
}

/// Times `text` (a warm-up, then `runs` runs) and counts the multiply-adds it ran.
fn measure(s: &mut Session, text: &str, inputs: usize, runs: usize) -> Measured {
    s.execute(text)
        .unwrap_or_else(|e| panic!("{}", e.render(text, "bench")));
    let before = ialgebra::model::kernels::multiply_adds();
    let t = Instant::now();
    let per_input_ms = (0..runs)
        .map(|_| {
            let t = Instant::now();
            s.execute(text).unwrap();
            t.elapsed().as_secs_f64() * 1e3 / inputs as f64
        })
        .collect();
    let macs = (ialgebra::model::kernels::multiply_adds() - before) as f64;
    Measured {
        per_input_ms,
        gflops: 2.0 * macs / t.elapsed().as_secs_f64() / 1e9,
    }
}

/// A real-scale model: its name, its last stage, an earlier stage (Grad-CAM and the
/// drill-down, none for ViTs) and the data sets (with their sizes) it runs on.
type RealModel = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, usize)],
);

/// The real-scale workloads on the full-size exports in models/zoo, when they exist.
fn real_scale(peak: f64) {
    let zoo = std::path::Path::new("models/zoo");
    let runs: usize = std::env::var("BENCH_REAL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    if !zoo.join("resnet18.onnx").is_file() || !zoo.join("images224_4.npy").is_file() {
        println!("real scale: run tools/make_zoo.py --full first (writes models/zoo)");
        return;
    }
    println!();
    println!("real scale, 224×224 — {runs} runs each; peak {peak:.1} GFLOP/s (2048³ gemm, all threads)");
    println!(
        "{:<52} {:>6} {:>14} {:>22} {:>8} {:>6}",
        "workload", "inputs", "ms/input (med)", "spread (min–max)", "GFLOP/s", "peak"
    );
    let mut s = Session::new();
    let setup = |s: &mut Session, q: &str, what: &str| {
        let t = Instant::now();
        s.execute(q).unwrap_or_else(|e| panic!("{}", e.render(q, "bench")));
        println!(
            "{:<52} {:>6} {:>11.1} ms (one-off)",
            what,
            "",
            t.elapsed().as_secs_f64() * 1e3
        );
    };
    setup(
        &mut s,
        "SET cache_mb = 0;
         LOAD DATA img4 FROM 'models/zoo/images224_4.npy';
         LOAD DATA img32 FROM 'models/zoo/images224_32.npy';",
        "setup: load the 224×224 inputs",
    );
    let row = |name: &str, n: usize, m: &Measured| {
        let (med, lo, hi) = stats(&m.per_input_ms);
        println!(
            "{:<52} {:>6} {:>14.2} {:>10.2} – {:<10.2} {:>8.1} {:>5.0}%",
            name,
            n,
            med,
            lo,
            hi,
            m.gflops,
            100.0 * m.gflops / peak
        );
    };
    let models: &[RealModel] = &[
        ("resnet18", "layer4", "layer3", &[("img4", 4), ("img32", 32)]),
        ("resnet50", "layer4", "layer3", &[("img4", 4), ("img32", 32)]),
        ("mobilenet_v3_large", "features", "", &[("img4", 4)]),
        ("vit_b_16", "", "", &[("img4", 4)]),
        ("vit_s_16", "", "", &[("img4", 4)]),
    ];
    let picked = std::env::var("BENCH_MODELS").unwrap_or_default();
    let skip = std::env::var("BENCH_SKIP").unwrap_or_default();
    let skipped = |name: &str| skip.split(',').any(|w| !w.is_empty() && name.contains(w));
    for (model, last, earlier, sets) in models {
        if !picked.is_empty() && !picked.split(',').any(|m| m == *model) {
            continue;
        }
        let path = zoo.join(format!("{model}.onnx"));
        if !path.is_file() {
            println!("{model}: not in models/zoo");
            continue;
        }
        setup(
            &mut s,
            &format!("LOAD MODEL {model} FROM '{}'", path.display()),
            &format!("setup: LOAD MODEL {model}"),
        );
        for &(data, n) in *sets {
            let mut work: Vec<(String, String, usize)> = vec![
                (
                    format!("{model} forward (PREDICT), {data}"),
                    format!("SELECT count(*) FROM PREDICT {model}({data})"),
                    n,
                ),
                (
                    format!("{model} saliency, {data}"),
                    format!("SELECT count(*) FROM {model}({data}) USING saliency"),
                    n,
                ),
            ];
            if !last.is_empty() {
                work.push((
                    format!("{model} gradcam at {last}, {data}"),
                    format!("SELECT count(*) FROM {model}({data}) AT LAYER {last} USING gradcam"),
                    n,
                ));
            }
            // IG-50 on the small batch only (the large one is the forward's roofline case).
            if n <= 4 {
                work.push((
                    format!("{model} integrated_gradients 50, one input"),
                    format!("SELECT count(*) FROM {model}(img4[0]) USING integrated_gradients(steps = 50)"),
                    1,
                ));
            }
            if *model == "resnet18" && n <= 4 {
                work.push((
                    format!("{model} occlusion 16×16 stride 8, one input"),
                    format!("SELECT count(*) FROM {model}(img4[0]) USING occlusion(window = 16, stride = 8)"),
                    1,
                ));
            }
            for (name, q, inputs) in work {
                if skipped(&name) {
                    continue;
                }
                let m = measure(&mut s, &q, inputs, runs);
                row(&name, inputs, &m);
            }
        }
        // The drill-down session: four Grad-CAM queries on the same inputs (two layers ×
        // two classes) in a session with the caches on, as an analyst runs them.
        if !earlier.is_empty() && !skipped("drill-down") {
            let queries: Vec<String> = [(last, 1), (last, 2), (earlier, 1), (earlier, 2)]
                .iter()
                .map(|(layer, class)| {
                    format!("SELECT count(*) FROM {model}(img4) TARGET {class} AT LAYER {layer} USING gradcam")
                })
                .collect();
            // One session with the model loaded once, its caches emptied before each
            // drill-down: the first after LOAD also derives the convolutions' adjoint
            // weights for their backward (kept with the model), which is reported apart.
            let mut d = Session::new();
            d.execute(&format!(
                "LOAD DATA img4 FROM 'models/zoo/images224_4.npy'; LOAD MODEL {model} FROM '{}'",
                path.display()
            ))
            .unwrap();
            let drill = |d: &mut Session| {
                d.execute("SET cache_mb = 0; SET cache_mb = 256").unwrap();
                let t = Instant::now();
                for q in &queries {
                    d.execute(q).unwrap_or_else(|e| panic!("{}", e.render(q, "bench")));
                }
                t.elapsed().as_secs_f64() * 1e3 / 4.0
            };
            let first = drill(&mut d);
            println!(
                "{:<52} {:>6} {:>11.1} ms (one-off)",
                format!("setup: {model} first drill-down after LOAD, per input"),
                "",
                first
            );
            let mut times = Vec::new();
            let before = ialgebra::model::kernels::multiply_adds();
            let start = Instant::now();
            for _ in 0..runs {
                times.push(drill(&mut d));
            }
            let macs = (ialgebra::model::kernels::multiply_adds() - before) as f64;
            let m = Measured {
                per_input_ms: times,
                gflops: 2.0 * macs / start.elapsed().as_secs_f64() / 1e9,
            };
            row(&format!("{model} drill-down: 4 gradcam (2 layers × 2 classes)"), 4, &m);
        }
    }
}

fn time_query(s: &mut Session, text: &str, inputs: usize, runs: usize) -> Vec<f64> {
    // one warm-up run, then the timed ones
    s.execute(text)
        .unwrap_or_else(|e| panic!("{}", e.render(text, "bench")));
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            s.execute(text).unwrap();
            t.elapsed().as_secs_f64() * 1e3 / inputs as f64
        })
        .collect()
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn main() {
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only != "digits" {
        real_scale(peak_gflops());
    }
    if only == "real" {
        return;
    }
    let mut s = Session::new();
    s.execute(SETUP).unwrap();
    let workloads: &[(&str, &str, usize)] = &[
        (
            "forward (PREDICT), digits CNN",
            "SELECT count(*) FROM PREDICT cnn(digits)",
            397,
        ),
        (
            "saliency, digits CNN",
            "SELECT count(*) FROM cnn(digits) USING saliency",
            397,
        ),
        (
            "integrated_gradients 50 gausslegendre",
            "SELECT count(*) FROM cnn(digits) USING integrated_gradients(steps = 50)",
            397,
        ),
        (
            "integrated_gradients 50 riemann_trapezoid",
            "SELECT count(*) FROM cnn(digits) USING integrated_gradients(steps = 50, rule = riemann_trapezoid)",
            397,
        ),
        (
            "occlusion 2x2 stride 1",
            "SELECT count(*) FROM cnn(digits) USING occlusion(window = 2, stride = 1)",
            397,
        ),
        (
            "feature_ablation 2x2 patches",
            "SELECT count(*) FROM cnn(digits) USING feature_ablation GRANULARITY patch(2)",
            397,
        ),
        (
            "gradcam at conv2",
            "SELECT count(*) FROM cnn(digits) AT LAYER conv2 USING gradcam",
            397,
        ),
        ("deeplift", "SELECT count(*) FROM cnn(digits) USING deeplift", 397),
        (
            "layer_conductance 50 at fc1",
            "SELECT count(*) FROM cnn(digits) AT LAYER fc1 USING layer_conductance(steps = 50)",
            397,
        ),
        (
            "shapley_sampling 200, cancer MLP",
            "SELECT count(*) FROM mlp(cancer) USING shapley_sampling(samples = 200)",
            119,
        ),
        (
            "ATTACK fgsm, digits CNN",
            "LET adv = ATTACK fgsm(eps = 0.1) ON cnn(digits)",
            397,
        ),
        (
            "ATTACK pgd 20 steps, digits CNN",
            "LET adv = ATTACK pgd(eps = 0.1, steps = 20, step_size = 0.02) ON cnn(digits)",
            397,
        ),
        (
            "PREDICT with a channel ablated (WITH LAYER)",
            "SELECT count(*) FROM PREDICT cnn(digits WITH LAYER conv2[3] = 0)",
            397,
        ),
        (
            "EVALUATE infidelity(10) of IG-50 maps",
            "SELECT count(*) FROM cnn(digits) USING integrated_gradients EVALUATE infidelity",
            397,
        ),
        (
            "EVALUATE deletion(20) of saliency maps",
            "SELECT count(*) FROM cnn(digits) USING saliency EVALUATE deletion",
            397,
        ),
        (
            "EVALUATE deletion(20), 5 methods (per map)",
            "SELECT count(*) FROM (
                SELECT * FROM cnn(digits) USING saliency EVALUATE deletion UNION ALL
                SELECT * FROM cnn(digits) USING input_x_gradient EVALUATE deletion UNION ALL
                SELECT * FROM cnn(digits) USING integrated_gradients EVALUATE deletion UNION ALL
                SELECT * FROM cnn(digits) USING guided_backprop EVALUATE deletion UNION ALL
                SELECT * FROM cnn(digits) USING occlusion(window = 2, stride = 1) EVALUATE deletion)",
            5 * 397,
        ),
        (
            "EVALUATE sensitivity_max(10) of saliency",
            "SELECT count(*) FROM cnn(digits) USING saliency EVALUATE sensitivity_max",
            397,
        ),
        (
            "contamination score: max IG-50 per sample",
            "SELECT input, max(attribution) AS score FROM bd(train) USING integrated_gradients GROUP BY input",
            1400,
        ),
    ];
    let mut rows = Vec::new();
    for (name, q, n) in workloads {
        rows.push(Row {
            name: name.to_string(),
            inputs: *n,
            per_input_ms: time_query(&mut s, q, *n, runs),
        });
    }
    // Text: all-MiniLM-L6-v2 (when tools/fetch_minilm.sh has fetched it) at the defaults a
    // user gets (max_tokens 64; data padded to their longest text), on the eight sentences
    // of data/sentences.csv and on 64 (those eight, eight times over). The first query of
    // a length builds the encoder for it: one-off setup, timed apart.
    let minilm = std::path::Path::new("models/downloaded/all-MiniLM-L6-v2/model.safetensors").is_file();
    if minilm {
        let csv = std::fs::read_to_string("data/sentences.csv").unwrap();
        let mut lines = csv.lines();
        let header = lines.next().unwrap_or_default();
        let body: Vec<&str> = lines.collect();
        let many = std::env::temp_dir().join(format!("ialg-bench-sentences-{}.csv", std::process::id()));
        let mut text = format!("{header}\n");
        for _ in 0..8 {
            for l in &body {
                text.push_str(l);
                text.push('\n');
            }
        }
        std::fs::write(&many, text).unwrap();
        let mut t = Session::new();
        t.execute(&format!(
            "SET cache_mb = 0;
             LOAD MODEL minilm FROM 'models/downloaded/all-MiniLM-L6-v2';
             LOAD DATA sentences FROM 'data/sentences.csv' TEXT COLUMN sentence;
             LOAD DATA sentences64 FROM '{}' TEXT COLUMN sentence;",
            many.display()
        ))
        .unwrap();
        let _ = std::fs::remove_file(&many);
        let setup = Instant::now();
        t.execute("SELECT count(*) FROM PREDICT minilm(sentences[0])").unwrap();
        println!(
            "setup: MiniLM built for the sentences' length: {:.2} s",
            setup.elapsed().as_secs_f64()
        );
        for (name, data, n) in [("8", "sentences", 8), ("64", "sentences64", 64)] {
            let q = format!("SELECT count(*) FROM PREDICT minilm({data})");
            rows.push(Row {
                name: format!("MiniLM forward (PREDICT), {name} sentences"),
                inputs: n,
                per_input_ms: time_query(&mut t, &q, n, runs),
            });
            let q = format!(
                "SELECT count(*) FROM minilm({data}) USING integrated_gradients TARGET similarity(sentences[1])"
            );
            rows.push(Row {
                name: format!("MiniLM layer IG 50 on embeddings, similarity, {name} sentences"),
                inputs: n,
                per_input_ms: time_query(&mut t, &q, n, runs),
            });
        }
    }
    // Interactive sequences, with the caches on as users have them.
    let drill_down: &[&str] = &[
        "SELECT row, col, attribution FROM cnn(digits[17]) USING deeplift ORDER BY attribution DESC LIMIT 8",
        "SELECT sum(attribution) FROM cnn(digits[17]) USING deeplift WINDOW rows 4:8, cols 0:4",
        "SELECT group, attribution FROM cnn(digits[17]) USING occlusion WINDOW rows 4:8, cols 0:8 GRANULARITY patch(2)",
        "SELECT channel, sum(attribution) FROM cnn(digits[17]) AT LAYER conv2 USING gradcam(per_channel = true) GROUP BY channel",
        "SELECT neuron, attribution FROM cnn(digits[17]) AT LAYER fc1 USING layer_conductance ORDER BY attribution DESC LIMIT 3",
        "SELECT row, col, attribution FROM cnn(digits[17]) TARGET fc1[3] USING neuron_integrated_gradients",
    ];
    let sequence = |s: &mut Session| -> f64 {
        let t = Instant::now();
        for q in drill_down {
            s.execute(q).unwrap_or_else(|e| panic!("{}", e.render(q, "bench")));
        }
        t.elapsed().as_secs_f64() * 1e3 / drill_down.len() as f64
    };
    let (mut cold_seq, mut warm_seq) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut fresh = Session::new();
        fresh.execute(&SETUP.replace("SET cache_mb = 0;", "")).unwrap();
        cold_seq.push(sequence(&mut fresh));
        warm_seq.push(sequence(&mut fresh));
    }
    // A whole-dataset audit: IG over the misclassified test inputs. The predicate is
    // pushed below the method; the second form ORs in a test of `attribution`, so it cannot be,
    // and every input is attributed (same answer: no attribution is that large).
    let audit = "SELECT input, sum(attribution) AS total FROM cnn(digits) USING integrated_gradients WHERE prediction != label GROUP BY input";
    let unpushed = "SELECT input, sum(attribution) AS total FROM cnn(digits) USING integrated_gradients WHERE prediction != label OR attribution > 1e30 GROUP BY input";
    let audit_ms: Vec<f64> = time_query(&mut s, audit, 1, runs);
    let unpushed_ms: Vec<f64> = time_query(&mut s, unpushed, 1, runs);

    // Cold start: a new process loads the model and data and answers one IG query.
    let exe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/ialg");
    let mut cold = Vec::new();
    if exe.exists() {
        let q = "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json'; LOAD DATA digits FROM 'data/digits_test_x.npy'; SELECT row, col, attribution FROM cnn(digits[17]) USING integrated_gradients ORDER BY attribution DESC LIMIT 5;";
        for _ in 0..runs {
            let t = Instant::now();
            let out = Command::new(&exe).args(["-c", q]).output().unwrap();
            assert!(out.status.success());
            cold.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "ialgebra {} — {} runs each, {} threads",
        env!("CARGO_PKG_VERSION"),
        runs,
        rayon::current_num_threads()
    );
    println!(
        "{:<44} {:>7} {:>14} {:>22}",
        "workload", "inputs", "ms/input (med)", "spread (min–max)"
    );
    for r in &rows {
        let (med, lo, hi) = stats(&r.per_input_ms);
        println!(
            "{:<44} {:>7} {:>14.4} {:>10.4} – {:<10.4}",
            r.name, r.inputs, med, lo, hi
        );
    }
    println!();
    println!(
        "{:<44} {:>14} {:>22}",
        "interactive (caches on)", "ms (med)", "spread (min–max)"
    );
    for (name, v) in [
        ("drill-down, 6 queries, first time (per query)", &cold_seq),
        ("drill-down, same 6 again (per query, memo)", &warm_seq),
        ("audit: IG on misclassified inputs (pushdown)", &audit_ms),
        ("audit without pushdown (all 397 attributed)", &unpushed_ms),
    ] {
        let (med, lo, hi) = stats(v);
        println!("{name:<44} {med:>14.3} {lo:>10.3} – {hi:<10.3}");
    }
    if cold.is_empty() {
        println!("cold start: build target/release/ialg first (cargo build --release)");
    } else {
        let (med, lo, hi) = stats(&cold);
        println!(
            "{:<44} {:>7} {:>11.1} ms {:>8.1} – {:<8.1} (whole process)",
            "cold start: ialg -c LOAD + one IG query", 1, med, lo, hi
        );
    }
}
