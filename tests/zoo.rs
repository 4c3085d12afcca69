//! The model zoo (tests/fixtures/zoo, written by tools/make_zoo.py): small, randomly
//! initialised torchvision architectures, each exported by both torch exporters
//! (TorchScript `ts`, torch.export `dynamo`), loaded through the query language.
//!
//! Tolerances: logits |ours − onnxruntime| ≤ 1e-4 + 1e-4·|ort|, and at their scale as
//! below; attributions against Captum on the PyTorch module |ours − Captum| ≤ 1e-5·s +
//! 1e-4·|Captum|, where s is the largest |Captum| value of the map: randomly initialised
//! deep nets give maps of very different scales (MobileNetV3's saliency peaks at 5e-10),
//! and an absolute 1e-5 would accept anything there. Every model passes that strictly.
//! A float32 near-tie flipped in a max-pool would show as a local failure: SqueezeNet's
//! fixture has zero convolution biases for that reason (with them, the small inputs
//! integrated gradients starts from all look alike and 2 % of its values differed).

use crate::common::*;

const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-4;

fn zoo(rel: &str) -> String {
    format!("tests/fixtures/zoo/{rel}")
}

/// A session with `z` (the export) and `x` (its inputs, labelled by their targets), whose
/// logits have been checked against onnxruntime's (1e-4, and at the scale of the
/// logits); and the name of the case for messages.
fn loaded_with_logits_checked(name: &str, exporter: &str) -> (ialgebra::exec::Session, String) {
    let mut s = session(&zoo_setup(name, exporter));
    let what = format!("{name}.{exporter}");
    let (shape, want) = npy(&root().join(zoo(&format!("{name}.{exporter}.logits.npy"))));
    let df = query(&mut s, "SELECT * FROM PREDICT z(x)");
    let got = logits(&df, shape[1]);
    assert_close(&format!("{what}: logits"), &got, &want, 1e-4, 1e-4);
    assert_attr(&format!("{what}: logits at their scale"), &got, &want);
    (s, what)
}

/// Closeness at the scale of the reference map (see the module doc); a map of zeros would
/// test nothing and is refused.
fn assert_attr(what: &str, got: &[f64], want: &[f64]) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: the reference map is all zeros");
    assert_close(what, got, want, ATOL * scale, RTOL);
}

/// Loads one export with its inputs (labelled by the targets) and checks logits, saliency,
/// integrated gradients and, where given, Grad-CAM at `cam_layer`.
fn check(name: &str, exporter: &str, cam_layer: Option<&str>) {
    let (mut s, what) = loaded_with_logits_checked(name, exporter);
    let mut cases = vec![
        ("saliency".to_string(), "saliency", "feature"),
        ("integrated_gradients(steps = 50)".to_string(), "ig", "feature"),
    ];
    if let Some(layer) = cam_layer {
        cases.push((format!("gradcam(relu = false) AT LAYER {layer}"), "gradcam", "unit"));
    }
    for (method, file, key) in cases {
        let df = query(
            &mut s,
            &format!("SELECT attribution FROM z(x) USING {method} TARGET LABEL ORDER BY input, {key}"),
        );
        let (_, want) = npy(&root().join(zoo(&format!("{name}.{file}.npy"))));
        assert_attr(&format!("{what}: {method}"), &column_f64(&df, "attribution"), &want);
    }
}

macro_rules! zoo_tests {
    ($($test:ident: $name:literal, $cam:expr;)*) => {$(
        #[test]
        fn $test() {
            for exporter in ["ts", "dynamo"] {
                check($name, exporter, $cam);
            }
        }
    )*};
}

zoo_tests! {
    zoo_resnet_basic: "resnet_basic", Some("layer4");
    zoo_resnet_bottleneck: "resnet_bottleneck", Some("layer4");
    zoo_mobilenet_v3: "mobilenet_v3", Some("features");
    zoo_efficientnet: "efficientnet", Some("features");
    zoo_convnext: "convnext", Some("features");
    zoo_densenet: "densenet", Some("features");
    zoo_squeezenet: "squeezenet", Some("features");
    zoo_shufflenet_v2: "shufflenet_v2", Some("conv5");
    zoo_regnet: "regnet", Some("trunk_output");
    zoo_vit: "vit", None;
    zoo_swin: "swin", None;
    zoo_seq_cnn: "seq_cnn", Some("features");
    zoo_volume_cnn: "volume_cnn", Some("features");
}

/// An export with symbolic height and width: one model serves datasets of two sizes (each
/// binding matches onnxruntime's logits and Captum's integrated gradients at that size),
/// lists its nodes before it is bound, and refuses data of another rank with the shapes.
#[test]
fn zoo_dynamic_shapes_bind_to_the_data() {
    let mut s = session(&format!(
        "LOAD MODEL r FROM '{}'; LOAD DATA small FROM '{}' LABELS '{}'; LOAD DATA large FROM '{}' LABELS '{}';",
        zoo("resnet_basic.dynamic.onnx"),
        zoo("resnet_basic.dynamic48.inputs.npy"),
        zoo("resnet_basic.targets.npy"),
        zoo("resnet_basic.dynamic80.inputs.npy"),
        zoo("resnet_basic.targets.npy"),
    ));
    let layers = query(&mut s, "SHOW LAYERS OF r");
    assert_eq!(layers.height(), 29);
    assert!(
        column_str(&layers, "output_shape")
            .iter()
            .all(|v| v == "from the input [3, height, width]")
    );
    let models = query(&mut s, "SHOW MODELS");
    assert_eq!(column_str(&models, "input"), ["[3, height, width]"]);
    for (data, side) in [("small", 48), ("large", 80), ("small", 48)] {
        let (_, want) = npy(&root().join(zoo(&format!("resnet_basic.dynamic{side}.logits.npy"))));
        let df = query(&mut s, &format!("SELECT * FROM PREDICT r({data})"));
        assert_close(&format!("{side}x{side}: logits"), &logits(&df, 10), &want, 1e-4, 1e-4);
        let df = query(
            &mut s,
            &format!(
                "SELECT attribution FROM r({data}) USING integrated_gradients(steps = 50) TARGET LABEL ORDER BY input, feature"
            ),
        );
        let (_, want) = npy(&root().join(zoo(&format!("resnet_basic.dynamic{side}.ig.npy"))));
        assert_attr(&format!("{side}x{side}: IG"), &column_f64(&df, "attribution"), &want);
    }
    // A binding by its name: its layers have the shapes of that size.
    let bound = query(&mut s, "SHOW LAYERS OF \"r[3×80×80]\"");
    assert_eq!(
        column_str(&bound, "output_shape").last().map(String::as_str),
        Some("[10]")
    );
    // Layers resolve on the bound model: Grad-CAM at layer4 of an 80×80 input is 3×3.
    let df = query(&mut s, "SELECT * FROM r(large[0]) AT LAYER layer4 USING gradcam");
    assert_eq!(df.height(), 9);
    s.execute(&format!("LOAD DATA seq FROM '{}'", zoo("seq_cnn.inputs.npy")))
        .unwrap();
    assert_errors(
        &mut s,
        &[(
            "SELECT * FROM PREDICT r(seq)",
            "takes inputs of shape [3, height, width], not [3, 64]",
        )],
    );
}

/// A Hugging Face BERT exported with three graph inputs (input_ids, attention_mask,
/// token_type_ids) and a symbolic sequence axis, beside its tokenizer.json: the mask and
/// token types are derived from the ids, and it answers as the directory it came from
/// (tests/text.rs checks that one against transformers and Captum): embeddings within
/// 1e-5, integrated gradients on the embeddings within 1e-5 + 1e-4·|dir|.
#[test]
fn zoo_bert_onnx_with_three_inputs_equals_its_directory_twin() {
    let mut s = session(
        "SET max_tokens = 12;
         LOAD MODEL dir FROM 'tests/fixtures/tiny_bert';
         LOAD MODEL onnx FROM 'tests/fixtures/tiny_bert/model.onnx';
         LOAD DATA s FROM 'tests/fixtures/tiny_bert/sentences.txt' TEXT;",
    );
    let twin = query(&mut s, "SELECT * FROM PREDICT dir(s)");
    let ours = query(&mut s, "SELECT * FROM PREDICT onnx(s)");
    assert_close("embeddings", &logits(&ours, 16), &logits(&twin, 16), 1e-5, 0.0);
    for target in ["PREDICTED", "3"] {
        let df = query(
            &mut s,
            &format!(
                "SELECT a.attribution, b.attribution FROM (onnx(s) USING integrated_gradients TARGET {target}) AS a
                 JOIN (dir(s) USING integrated_gradients TARGET {target}) AS b ORDER BY input, feature"
            ),
        );
        let (a, b) = (column_f64(&df, "a.attribution"), column_f64(&df, "b.attribution"));
        assert!(
            b.iter().any(|v| v.abs() > 1e-3),
            "the twin's attributions are not trivial"
        );
        assert_close(&format!("IG, target {target}"), &a, &b, 1e-5, 1e-4);
    }
    // Layers by PyTorch module path through the wrapper (encoder.…) and attention.
    let df = query(
        &mut s,
        "SELECT * FROM onnx(s[0]) AT LAYER encoder.encoder.layer.1 USING layer_activation",
    );
    assert_eq!(df.height(), 9 * 16, "one row per real token and dimension");
}

/// An export whose extra input cannot be derived from the first is refused, naming it.
#[test]
fn zoo_underivable_extra_inputs_are_named() {
    let mut s = session("");
    assert_errors(
        &mut s,
        &[(
            "LOAD MODEL two FROM 'tests/fixtures/onnx_ops/two_inputs.onnx'",
            "the first, `x`, takes the data, and `other` cannot be derived from it",
        )],
    );
}

/// A sequence model's windows and segments: occlusion of 8 positions of every channel
/// equals Captum's Occlusion with sliding_window_shapes (3, 8), strides (3, 8); IG by
/// segments of 8 positions sums Captum's IG over each segment; a WINDOW of positions and
/// channels keeps the other features at their values, and image axes are refused.
#[test]
fn zoo_sequences_take_windows_of_positions_and_segments() {
    let mut s = session(&format!(
        "LOAD MODEL seq FROM '{}'; LOAD DATA s FROM '{}' LABELS '{}';",
        zoo("seq_cnn.ts.onnx"),
        zoo("seq_cnn.inputs.npy"),
        zoo("seq_cnn.targets.npy"),
    ));
    let df = query(
        &mut s,
        "SELECT attribution FROM seq(s) USING occlusion(window = 8, stride = 8) TARGET LABEL ORDER BY input, feature",
    );
    let (_, want) = npy(&root().join(zoo("seq_cnn.occlusion.npy")));
    assert_attr("occlusion", &column_f64(&df, "attribution"), &want);
    let df = query(
        &mut s,
        "SELECT input, position, size, attribution FROM seq(s) USING integrated_gradients TARGET LABEL
         GRANULARITY segment(8) ORDER BY input, group",
    );
    let (_, ig) = npy(&root().join(zoo("seq_cnn.ig.npy")));
    let sums: Vec<f64> = (0..2)
        .flat_map(|i| {
            let ig = &ig;
            (0..8).map(move |g| {
                (0..3)
                    .flat_map(|c| (0..8).map(move |p| ig[i * 192 + c * 64 + g * 8 + p]))
                    .sum::<f64>()
            })
        })
        .collect();
    assert_eq!(column_f64(&df, "size"), vec![24.0; 16]);
    assert_eq!(column_f64(&df, "position")[..3], [0.0, 8.0, 16.0]);
    assert_attr("IG by segments", &column_f64(&df, "attribution"), &sums);
    let df = query(
        &mut s,
        "SELECT channel, position FROM seq(s[0]) USING integrated_gradients WINDOW positions 8:16, channels 1:3",
    );
    assert_eq!(df.height(), 16);
    assert!(column_f64(&df, "channel").iter().all(|c| *c >= 1.0));
    assert_errors(
        &mut s,
        &[
            (
                "SELECT * FROM seq(s[0]) USING saliency WINDOW rows 0:1",
                "its windows are positions a:b and channels a:b",
            ),
            (
                "SELECT * FROM seq(s[0]) USING saliency GRANULARITY segment(65)",
                "a segment is 1 to 64 positions long",
            ),
            (
                "SELECT * FROM seq(s[0]) USING saliency GRANULARITY patch(2)",
                "pixel and patch granularity apply to images",
            ),
        ],
    );
}

/// Transformers from token ids (no tokenizer beside them), both exporters: logits against
/// onnxruntime at their scale, and integrated gradients through the lookup of the ids in
/// the word embeddings against Captum's LayerIntegratedGradients on `word_embeddings`
/// (zero ids as the baseline, summed over the embedding). Saliency has no gradient to give.
fn check_token_model(name: &str) {
    for exporter in ["ts", "dynamo"] {
        let (mut s, what) = loaded_with_logits_checked(name, exporter);
        let df = query(
            &mut s,
            "SELECT attribution FROM z(x) USING integrated_gradients TARGET LABEL ORDER BY input, feature",
        );
        let (_, want) = npy(&root().join(zoo(&format!("{name}.lig.npy"))));
        assert_attr(&format!("{what}: IG"), &column_f64(&df, "attribution"), &want);
        assert_errors(
            &mut s,
            &[("SELECT * FROM z(x[0]) USING saliency", "token ids have none")],
        );
    }
}

#[test]
fn zoo_bert_from_token_ids() {
    check_token_model("bert");
}

#[test]
fn zoo_distilbert_from_token_ids() {
    check_token_model("distilbert");
}

#[test]
fn zoo_roberta_from_token_ids() {
    check_token_model("roberta");
}

#[test]
fn zoo_gpt2_last_position_from_token_ids() {
    check_token_model("gpt2");
}

/// An export with symbolic height and width whose architecture cannot follow them (ViT's
/// position embedding is for 4×4 patches of 8): at 32 pixels it gives the fixed export's
/// logits; at 48 the call is refused, naming the node and the shapes that do not fit.
#[test]
fn zoo_a_size_the_graph_cannot_take_names_the_node() {
    let mut s = session(&format!(
        "LOAD MODEL v FROM '{}'; LOAD DATA x FROM '{}';",
        zoo("vit.dynamic.onnx"),
        zoo("vit.inputs.npy"),
    ));
    let (_, want) = npy(&root().join(zoo("vit.ts.logits.npy")));
    let df = query(&mut s, "SELECT * FROM PREDICT v(x)");
    assert_close("vit at 32 pixels", &logits(&df, 10), &want, 1e-5, 1e-4);
    s.execute(&format!(
        "LOAD DATA big FROM '{}'",
        zoo("resnet_basic.dynamic48.inputs.npy")
    ))
    .unwrap();
    assert_errors(
        &mut s,
        &[(
            "SELECT * FROM PREDICT v(big)",
            "cannot run on inputs of shape [3, 48, 48]: operator Add (node `/encoder/Add`)",
        )],
    );
    let err = s
        .execute("SELECT * FROM PREDICT v(big)")
        .err()
        .map(|e| e.message)
        .unwrap_or_default();
    assert!(err.contains("[1, 37, 32], [1, 17, 32]"), "{err}");
}
