//! The CAM family against pytorch-grad-cam 1.5.5 (`tests/fixtures/cam`, written by
//! `tools/cam_references.py`). Raw maps (before the library's ReLU and scaling) at the
//! layer's resolution: |ours − ref| ≤ 1e-5·s + 1e-4·|ref|, s the reference map's largest
//! magnitude (the zoo's rule: random deep nets give maps of very different scales).
//! Normalised maps (`normalize = true`: ReLU, per-input min-max) on the digits CNN's
//! `relu2`, whose 8×8 resolution is the input's, so the library's output involves no
//! resize: atol 1e-4. Eigen-CAM's principal direction has no sign: raw maps are compared
//! up to a sign per input.

use crate::common::*;

const DIGITS: &str = "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
    LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';";

const METHODS: [&str; 8] = [
    "gradcam_plus_plus",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
];

fn reference(name: &str) -> Vec<f64> {
    npy(&fixture(&format!("cam/{name}.npy"))).1
}

/// Checks maps of `per` values per input against `want`, flipping each input's map to
/// the reference's sign first when `any_sign`.
fn assert_maps(what: &str, got: &[f64], want: &[f64], per: usize, any_sign: bool) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} values, reference {}",
        got.len(),
        want.len()
    );
    let mut aligned = got.to_vec();
    if any_sign {
        for (g, w) in aligned.chunks_mut(per).zip(want.chunks(per)) {
            let dot: f64 = g.iter().zip(w).map(|(a, b)| a * b).sum();
            if dot < 0.0 {
                g.iter_mut().for_each(|v| *v = -*v);
            }
        }
    }
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: the reference map is all zeros");
    assert_close(what, &aligned, want, 1e-5 * scale, 1e-4);
}

#[test]
fn cam_family_matches_pytorch_grad_cam_on_the_digits() {
    let mut s = session(DIGITS);
    for method in METHODS {
        let eigen = method.starts_with("eigen");
        let from = |normalize: bool| {
            format!(
                "SELECT attribution FROM cnn(digits[0:10]) AT LAYER relu2 USING {method}(normalize = {normalize}) ORDER BY input, unit"
            )
        };
        let raw = column_f64(&query(&mut s, &from(false)), "attribution");
        let what = format!("digits {method}, raw");
        assert_maps(&what, &raw, &reference(&format!("digits_cnn__{method}.raw")), 64, eigen);
        if !eigen {
            let scaled = column_f64(&query(&mut s, &from(true)), "attribution");
            let want = reference(&format!("digits_cnn__{method}"));
            assert_close(&format!("digits {method}, normalised"), &scaled, &want, 1e-4, 0.0);
        }
    }
    // The library's own targets are the predicted classes, as the engine's default.
    let df = query(
        &mut s,
        "SELECT DISTINCT input, target FROM cnn(digits[0:10]) AT LAYER relu2 USING layercam ORDER BY input",
    );
    let (_, targets) = npy(&fixture("cam/digits_cnn__targets.npy"));
    assert_eq!(column_f64(&df, "target"), targets);
}

#[test]
fn cam_family_matches_pytorch_grad_cam_on_a_resnet() {
    for exporter in ["ts", "dynamo"] {
        let mut s = session(&zoo_setup("resnet_basic", exporter));
        for (layer, per) in [("layer2", 64), ("layer4", 4)] {
            let mut methods = METHODS.to_vec();
            if layer == "layer4" {
                methods.push("cam");
            }
            for method in methods {
                let df = query(
                    &mut s,
                    &format!(
                        "SELECT attribution FROM z(x) AT LAYER {layer} USING {method} TARGET LABEL ORDER BY input, unit"
                    ),
                );
                let want = reference(&format!("resnet_basic.{layer}__{method}.raw"));
                let what = format!("resnet_basic.{exporter} {layer} {method}");
                assert_maps(
                    &what,
                    &column_f64(&df, "attribution"),
                    &want,
                    per,
                    method.starts_with("eigen"),
                );
            }
        }
    }
}

/// A vision transformer's tokens: at the last block's ln_1 (17 tokens of 32), the class
/// token dropped and the 16 patch tokens laid out on their 4×4 grid, channels first —
/// pytorch-grad-cam's reshape_transform recipe for ViTs — with both exporters; the map
/// is a 4×4 picture (rows and columns), upsampled to the 32×32 input on request. The
/// methods that mask or ablate channels of a convolutional map, and CAM (the head reads
/// the class token), are refused on tokens.
#[test]
fn cam_family_lays_a_vits_tokens_on_their_grid() {
    for (exporter, layer) in [
        (
            "ts",
            "\"/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0\"",
        ),
        ("dynamo", "layer_norm_2"),
    ] {
        let mut s = session(&zoo_setup("vit", exporter));
        for method in METHODS.iter().filter(|m| !matches!(**m, "scorecam" | "ablationcam")) {
            let df = query(
                &mut s,
                &format!(
                    "SELECT row, col, attribution FROM z(x) AT LAYER {layer} USING {method} TARGET LABEL ORDER BY input, row, col"
                ),
            );
            assert_eq!(column_f64(&df, "row").iter().copied().fold(0.0, f64::max), 3.0);
            let got = column_f64(&df, "attribution");
            let want = reference(&format!("vit.ln_1__{method}.raw"));
            if *method == "xgradcam" {
                // XGrad-CAM divides by each channel's sum over the tokens, and a layer
                // norm's outputs nearly cancel: one channel sums to 1.4e-3 from values
                // near 1, so float32 sums in another order differ by ~1e-3 relative.
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert_close(&format!("vit.{exporter} xgradcam"), &got, &want, 1e-5 * scale, 5e-3);
                continue;
            }
            assert_maps(
                &format!("vit.{exporter} {method}"),
                &got,
                &want,
                16,
                method.starts_with("eigen"),
            );
        }
        let up = query(
            &mut s,
            &format!("SELECT attribution FROM z(x) AT LAYER {layer} USING layercam(upsample = true) TARGET LABEL"),
        );
        assert_eq!(up.height(), 2 * 32 * 32);
        for refused in ["scorecam", "ablationcam", "cam"] {
            assert_errors(
                &mut s,
                &[(
                    &format!("SELECT * FROM z(x) AT LAYER {layer} USING {refused} TARGET LABEL"),
                    "on a transformer's tokens",
                )],
            );
        }
    }
}

#[test]
fn cam_needs_a_pooled_linear_head_and_says_so() {
    let mut s = session(DIGITS);
    assert_errors(
        &mut s,
        &[(
            "SELECT * FROM cnn(digits[0:2]) AT LAYER relu2 USING cam",
            "cam needs the layer to be followed by a global average pool and a linear head: `pool` (maxpool2d) comes where a global average pool should",
        )],
    );
}

/// FullGrad (no AT LAYER: every convolution's bias and every batch norm's, with the
/// input's gradient × input), the library's normalised output, on the digits CNN and on
/// the zoo ResNet, whose ONNX exports fold each batch norm's bias into its convolution
/// (the same bias FullGrad reads from BatchNorm2d). Every channel of a pixel carries the
/// pixel's value, so the first channel is compared: atol 1e-4 (the ResNet's stage maps
/// are resized from 32×32 … 2×2, bilinearly, as cv2.resize).
#[test]
fn fullgrad_matches_pytorch_grad_cam() {
    let zoo = |exporter: &str| zoo_setup("resnet_basic", exporter);
    let on_zoo = "z(x) USING fullgrad(normalize = true) TARGET LABEL";
    let cases = [
        (DIGITS.to_string(), "cnn(digits[0:10])", "digits_cnn", 64, 1),
        (zoo("ts"), on_zoo, "resnet_basic", 64 * 64, 3),
        (zoo("dynamo"), on_zoo, "resnet_basic", 64 * 64, 3),
    ];
    for (setup, from, name, plane, channels) in cases {
        let mut s = session(&setup);
        let from = if from.contains("USING") {
            from.to_string()
        } else {
            format!("{from} USING fullgrad(normalize = true)")
        };
        let df = query(
            &mut s,
            &format!("SELECT attribution FROM {from} ORDER BY input, feature"),
        );
        let got = column_f64(&df, "attribution");
        let per = plane * channels;
        let first: Vec<f64> = got.chunks(per).flat_map(|c| c[..plane].to_vec()).collect();
        for c in got.chunks(per) {
            assert_eq!(&c[..plane], &c[plane * (channels - 1)..], "{name}: channels differ");
        }
        assert_close(
            &format!("{name} fullgrad"),
            &first,
            &reference(&format!("{name}__fullgrad")),
            1e-4,
            0.0,
        );
    }
}
