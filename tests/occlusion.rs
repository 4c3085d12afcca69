//! Occlusion that recomputes only what a window changes (`model::local`): copies of an
//! input carried on boxes through a CNN's first layers must give the outputs the dense
//! forward gives the same copies — on every zoo CNN, at every layer where the pass may
//! continue densely, for windows in the corners, the middle, on the edges and over the
//! whole image. Tolerance |local − dense| ≤ 1e-5·s + 1e-5·|dense| (s the largest |logit|):
//! a box runs the same kernels on a crop, whose products may group their sums
//! differently from the whole map's.

use ialgebra::model::local::{self, LocalPass, Region, Span};
use ialgebra::model::{Batch, onnx};

use crate::common::*;

fn spans(h: usize, w: usize) -> Vec<Span> {
    let span = |r: (usize, usize), c: (usize, usize)| Span { rows: r, cols: c };
    vec![
        span((0, 8), (0, 8)),
        span((h - 8, h), (w - 8, w)),
        span((h / 2 - 3, h / 2 + 5), (w / 2 - 4, w / 2 + 4)),
        span((0, 1), (w / 2, w / 2 + 1)),
        span((5, 21), (w - 16, w)),
        span((0, h), (0, w)),
    ]
}

/// The copy of `x` (one sample [c, h, w]) with the values in `span` replaced by −x + 0.5.
fn changed(x: &[f32], h: usize, w: usize, span: Span) -> (Vec<f32>, Region) {
    let c = x.len() / (h * w);
    let mut copy = x.to_vec();
    let mut data = Vec::new();
    for ch in 0..c {
        for r in span.rows.0..span.rows.1 {
            for col in span.cols.0..span.cols.1 {
                let at = ch * h * w + r * w + col;
                copy[at] = 0.5 - x[at];
                data.push(copy[at]);
            }
        }
    }
    (copy, Region { span, data })
}

#[test]
fn boxes_give_the_dense_outputs_at_every_cut() {
    let mut checked = 0;
    for name in [
        "resnet_basic",
        "resnet_bottleneck",
        "mobilenet_v3",
        "efficientnet",
        "regnet",
        "densenet",
    ] {
        let model = onnx::load(&fixture(&format!("zoo/{name}.ts.onnx")), 64).unwrap();
        let (shape, inputs) = npy(&fixture(&format!("zoo/{name}.inputs.npy")));
        let (h, w) = (shape[2], shape[3]);
        let len: usize = shape[1..].iter().product();
        let x: Vec<f32> = inputs[..len].iter().map(|v| *v as f32).collect();
        let to = model.layers.len();
        let cuts = local::cuts(&model, to);
        assert!(cuts.len() >= 2, "{name}: boxes go through {cuts:?} only");
        for span in spans(h, w) {
            let (copy, region) = changed(&x, h, w, span);
            let dense = model.logits(Batch::new(vec![1, 3, h, w], copy).unwrap()).unwrap();
            let want: Vec<f64> = dense.data().iter().map(|v| *v as f64).collect();
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for &cut in &cuts {
                let pass = LocalPass::with_cut(&model, &x, cut, to).unwrap();
                let mut row = vec![0.0f32; pass.cut_shape().iter().product()];
                pass.copy_at_cut(region.clone(), &mut row).unwrap();
                let got: Vec<f64> = pass.finish(row).unwrap().data().iter().map(|v| *v as f64).collect();
                let what = format!(
                    "{name}: window {span:?}, dense from layer {cut} ({})",
                    model.layers[cut - 1].name
                );
                assert_close(&what, &got, &want, 1e-5 * scale, 1e-5);
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} cases");
}

/// The occlusion windows of the query below, as spans: 12×12 moved 4 at a time over 64×64.
fn windows_12_by_4() -> Vec<Span> {
    let starts: Vec<usize> = (0..=52).step_by(4).collect();
    let mut spans = Vec::new();
    for &r in &starts {
        for &c in &starts {
            spans.push(Span {
                rows: (r, r + 12),
                cols: (c, c + 12),
            });
        }
    }
    spans
}

/// Through the query language, on a ResNet and a MobileNetV3 (both exporters), where the
/// engine does carry its windows on boxes: Captum's Occlusion with sliding_window_shapes
/// (3, 12, 12) and strides (3, 4, 4). Tolerance 1e-5·s + 1e-4·|Captum|, s the larger of
/// the map's and the logits' largest magnitude: an occlusion value is a difference of two
/// outputs, as exact as they are (the random MobileNetV3's logits are ~1e-3, its map
/// ~1e-9: float32 rounding of the logits alone is 1e-10).
#[test]
fn occlusion_on_boxes_matches_captum() {
    for name in ["resnet_basic", "mobilenet_v3"] {
        for exporter in ["ts", "dynamo"] {
            let path = fixture(&format!("zoo/{name}.{exporter}.onnx"));
            let model = onnx::load(&path, 64).unwrap();
            let (cut, _) = local::work_share(&model, &windows_12_by_4(), model.layers.len());
            assert!(cut > 3, "{name}.{exporter}: windows run densely from layer {cut}");
            let mut s = session(&format!(
                "LOAD MODEL z FROM '{}'; LOAD DATA x FROM '{}' LABELS '{}';",
                path.display(),
                fixture(&format!("zoo/{name}.inputs.npy")).display(),
                fixture(&format!("zoo/{name}.targets.npy")).display(),
            ));
            let df = query(
                &mut s,
                "SELECT attribution FROM z(x) USING occlusion(window = 12, stride = 4) TARGET LABEL ORDER BY input, feature",
            );
            let (_, want) = npy(&fixture(&format!("zoo/{name}.occlusion.npy")));
            let (_, logits) = npy(&fixture(&format!("zoo/{name}.{exporter}.logits.npy")));
            let largest = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let scale = largest(&want).max(largest(&logits));
            let what = format!("{name}.{exporter}: occlusion");
            assert_close(&what, &column_f64(&df, "attribution"), &want, 1e-5 * scale, 1e-4);
        }
    }
}

/// PLAN says how the copies run: on boxes through the first layers of the zoo ResNet,
/// densely on the 8×8 digits (where boxes would not pay).
#[test]
fn plan_says_where_copies_run_on_boxes() {
    let mut s = session(&format!(
        "LOAD MODEL z FROM '{}'; LOAD DATA x FROM '{}';
         LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy';",
        fixture("zoo/resnet_basic.ts.onnx").display(),
        fixture("zoo/resnet_basic.inputs.npy").display(),
    ));
    let plan = |s: &mut ialgebra::exec::Session, q: &str| match s.execute(q).unwrap().pop() {
        Some(ialgebra::exec::Output::Plan(text)) => text,
        other => panic!("{q}: {other:?}"),
    };
    let text = plan(
        &mut s,
        "PLAN SELECT * FROM z(x[0]) USING occlusion(window = 12, stride = 4)",
    );
    assert!(
        text.contains("197 copies per input, recomputed only where they differ through `"),
        "{text}"
    );
    let text = plan(&mut s, "PLAN SELECT * FROM cnn(digits[0]) USING occlusion(window = 2)");
    assert!(
        text.contains("50 copies per input, each a dense forward pass"),
        "{text}"
    );
}
