//! Input edits of dataset expressions (what-if): `WITH SET <window> = v`, `WITH MASK`,
//! `WITH NOISE(stdev, seed)`, `WITH BLUR(sigma)`, tabular `WITH SET column = v`, chains of
//! them, in LET and inside m(…). Edited inputs keep their ids and labels.

use ialgebra::exec::Session;

use crate::common::*;

fn loaded() -> Session {
    session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
         LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
         LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;",
    )
}

/// Each input's 64 pixel values in (input, row, col) order.
fn pixels(s: &mut Session, data: &str) -> Vec<f64> {
    column_f64(
        &query(
            s,
            &format!("SELECT value FROM cnn({data}) USING saliency ORDER BY input, row, col"),
        ),
        "value",
    )
}

#[test]
fn set_and_mask_change_only_their_window() {
    let mut s = loaded();
    s.execute("LET patched = digits[10:13] WITH SET rows 6:8, cols 5:8 = 1.0")
        .unwrap();
    let before = pixels(&mut s, "digits[10:13]");
    let after = pixels(&mut s, "patched");
    for (k, (b, a)) in before.iter().zip(&after).enumerate() {
        let (r, c) = ((k % 64) / 8, k % 8);
        let want = if r >= 6 && c >= 5 { 1.0 } else { *b };
        assert_eq!(*a, want, "pixel {k}");
    }
    // ids and labels are those of the originals
    let p = query(&mut s, "SELECT input, label FROM PREDICT cnn(patched)");
    let o = query(&mut s, "SELECT input, label FROM PREDICT cnn(digits[10:13])");
    assert_eq!(p, o);
    // MASK sets to zero, and edits chain in order
    let masked = pixels(
        &mut s,
        "digits[10] WITH MASK rows 0:4 WITH SET rows 0:1, cols 0:1 = 0.25",
    );
    let original = pixels(&mut s, "digits[10]");
    for k in 0..64 {
        let want = if k == 0 {
            0.25
        } else if k < 32 {
            0.0
        } else {
            original[k]
        };
        assert_eq!(masked[k], want, "pixel {k}");
    }
}

#[test]
fn noise_is_seeded_and_blur_is_a_normalised_gaussian() {
    let mut s = loaded();
    let clean = pixels(&mut s, "digits[0:40]");
    let a = pixels(&mut s, "digits[0:40] WITH NOISE(0.1, 7)");
    let b = pixels(&mut s, "digits[0:40] WITH NOISE(0.1, 7)");
    let c = pixels(&mut s, "digits[0:40] WITH NOISE(0.1, 8)");
    assert_eq!(a, b, "the same seed gives the same noise");
    assert_ne!(a, c);
    let diffs: Vec<f64> = a.iter().zip(&clean).map(|(x, y)| x - y).collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let sd = (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / diffs.len() as f64).sqrt();
    // 2560 draws: the mean within 4 standard errors, the spread within 5 %
    assert!(mean.abs() < 4.0 * 0.1 / (2560f64).sqrt(), "mean {mean}");
    assert!((sd - 0.1).abs() < 0.005, "sd {sd}");
    // a constant image stays constant; an impulse spreads and keeps its mass (σ = 0.6:
    // radius 2, so no reflection at the borders folds it back in)
    let flat = pixels(&mut s, "digits[0] WITH SET rows 0:8, cols 0:8 = 0.5 WITH BLUR(1.5)");
    assert!(flat.iter().all(|v| (v - 0.5).abs() < 1e-6), "{flat:?}");
    let spot = pixels(
        &mut s,
        "digits[0] WITH MASK rows 0:8 WITH SET rows 4:5, cols 4:5 = 1 WITH BLUR(0.6)",
    );
    let total: f64 = spot.iter().sum();
    assert!((total - 1.0).abs() < 1e-5, "mass {total}");
    assert!(spot[4 * 8 + 4] < 0.5 && spot[4 * 8 + 4] == spot.iter().cloned().fold(0.0, f64::max));
    assert!(spot[4 * 8 + 3] > 0.05 && (spot[4 * 8 + 3] - spot[4 * 8 + 5]).abs() < 1e-6);
}

#[test]
fn tabular_edits_and_errors() {
    let mut s = loaded();
    let df = query(
        &mut s,
        "SELECT column, value FROM mlp(cancer[3] WITH SET mean_radius = 0 WITH SET columns 2:4 = 1.5) USING saliency WHERE feature < 5 ORDER BY feature",
    );
    assert_eq!(column_f64(&df, "value")[0], 0.0);
    assert_eq!(&column_f64(&df, "value")[2..4], &[1.5, 1.5]);
    for (q, want) in [
        ("PREDICT mlp(cancer WITH BLUR(1))", "BLUR applies to images"),
        ("PREDICT cnn(digits WITH SET rows 6:9 = 1)", "window rows 6:9"),
        ("PREDICT cnn(digits WITH NOISE(-1))", "must be ≥ 0"),
        ("PREDICT mlp(cancer WITH SET mean_radiuss = 0)", "did you mean"),
    ] {
        let e = s.execute(q).unwrap_err();
        let shown = e.render(q, "q");
        assert!(shown.contains(want), "{q}: {shown}");
    }
}
