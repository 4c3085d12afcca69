//! LRP with Zennit's rules and composites against Zennit 0.5.1 on the same weights and
//! inputs (`tools/zennit_cases.py`, fixtures in tests/fixtures/zennit/): relevance from
//! the one-hot target, at 1e-4 (times the largest |relevance| of the case, which is ~1e-3
//! on the ResNet, where a plain 1e-4 would let everything pass) + 1e-3 relative (float32
//! sums in a different order); and conservation where the rules conserve.

use crate::common::*;

const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-3;

/// `got` against Zennit's `want` at ATOL at the scale of `want`, RTOL.
fn assert_relevance(what: &str, got: &[f64], want: &[f64]) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert_close(what, got, want, ATOL * scale, RTOL);
}

const SHIPPED: &str = "
    LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
    LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
    LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
    LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;";

fn zennit(case: &str, key: &str) -> Vec<f64> {
    npy(&fixture(&format!("zennit/{case}/{key}.npy"))).1
}

/// `lrp(args)` on `from` (explained for its predicted class, as the fixtures are), checked
/// against the case's relevance and targets.
fn check(s: &mut ialgebra::exec::Session, case: &str, from: &str, args: &str) {
    let df = query(
        s,
        &format!("SELECT target, value, attribution FROM {from} USING lrp({args}) ORDER BY input, feature"),
    );
    let got = column_f64(&df, "attribution");
    assert_relevance(&format!("{case}: relevance"), &got, &zennit(case, "attributions"));
    let targets = zennit(case, "targets");
    let per = got.len() / targets.len();
    let got_t: Vec<f64> = column_f64(&df, "target").iter().step_by(per).copied().collect();
    assert_eq!(got_t, targets, "{case}: targets");
    assert_close(
        &format!("{case}: inputs"),
        &column_f64(&df, "value"),
        &zennit(case, "inputs"),
        0.0,
        0.0,
    );
}

const COMPOSITES: &[&str] = &["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"];

#[test]
fn composites_and_rules_match_zennit_on_the_shipped_models() {
    let mut s = session(SHIPPED);
    for (model, from, box_args) in [
        ("digits_cnn", "cnn(digits[0:10])", "low = 0, high = 1"),
        ("cancer_mlp", "mlp(cancer[0:10])", "low = -4, high = 4"),
    ] {
        for composite in COMPOSITES {
            let args = if *composite == "epsilon_gamma_box" {
                format!("composite = '{composite}', {box_args}")
            } else {
                format!("composite = '{composite}'")
            };
            check(&mut s, &format!("{model}__{composite}"), from, &args);
        }
        for (case, args) in [
            ("alpha_beta", "rule = alpha_beta".to_string()),
            ("alpha_beta_3_2", "rule = alpha_beta, alpha = 3, beta = 2".to_string()),
            ("alpha_beta_3_2", "rule = alpha_beta, alpha = 3".to_string()),
            ("flat", "rule = flat".to_string()),
            ("w_square", "rule = w_square".to_string()),
            ("z_box", format!("rule = z_box, {box_args}")),
        ] {
            check(&mut s, &format!("{model}__{case}"), from, &args);
        }
    }
}

/// The zoo ResNet (batch norms folded by the export; Zennit's ResNetCanonizer merges
/// them and makes each residual sum a `Sum` taking the Norm rule) with both exporters.
#[test]
fn composites_match_zennit_on_a_resnet() {
    for exporter in ["ts", "dynamo"] {
        let mut s = session(&zoo_setup("resnet_basic", exporter));
        for composite in COMPOSITES {
            let extra = if *composite == "epsilon_gamma_box" {
                ", low = -4, high = 4"
            } else {
                ""
            };
            // The fixture's targets (3, 1) are not the predictions: they are the labels.
            let df = query(
                &mut s,
                &format!(
                    "SELECT attribution FROM z(x) USING lrp(composite = '{composite}'{extra}) TARGET LABEL ORDER BY input, feature"
                ),
            );
            assert_relevance(
                &format!("resnet_basic ({exporter}) {composite}"),
                &column_f64(&df, "attribution"),
                &zennit(&format!("resnet_basic__{composite}"), "attributions"),
            );
        }
    }
}

/// A CNN whose export keeps its batch norms: the engine merges each into the convolution
/// before it, as Zennit's SequentialMergeBatchNorm does (without the merge, the rules see
/// other weights and the relevance differs).
#[test]
fn batch_norms_are_merged_into_their_convolutions() {
    let mut s = session(&format!(
        "LOAD MODEL b FROM '{}'; LOAD DATA x FROM '{}';",
        fixture("zennit/bn_cnn__epsilon_plus_flat/model.onnx").display(),
        fixture("zennit/bn_cnn__epsilon_plus_flat/inputs.npy").display(),
    ));
    let layers = query(&mut s, "SHOW LAYERS OF b");
    let types = column_str(&layers, "type");
    assert_eq!(
        types.iter().filter(|t| t.as_str() == "BatchNormalization").count(),
        2,
        "the export keeps its batch norms: {types:?}"
    );
    for composite in COMPOSITES {
        let extra = if *composite == "epsilon_gamma_box" {
            ", low = -3, high = 3"
        } else {
            ""
        };
        check(
            &mut s,
            &format!("bn_cnn__{composite}"),
            "b(x)",
            &format!("composite = '{composite}'{extra}"),
        );
    }
}

/// Without biases the composites conserve relevance: it sums to 1 (the one-hot target) at
/// the input and at every layer (up to the stabiliser and the positions whose
/// denominators vanish: Zennit's own sums are 0.9995–0.99999 here).
#[test]
fn relevance_is_conserved_without_biases() {
    let mut s = session(&format!(
        "LOAD MODEL p FROM '{}'; LOAD DATA x FROM '{}';",
        fixture("zennit/plain_cnn__epsilon_plus_flat/model.onnx").display(),
        fixture("zennit/plain_cnn__epsilon_plus_flat/inputs.npy").display(),
    ));
    for composite in COMPOSITES {
        let extra = if *composite == "epsilon_gamma_box" {
            ", low = 0, high = 1"
        } else {
            ""
        };
        check(
            &mut s,
            &format!("plain_cnn__{composite}"),
            "p(x)",
            &format!("composite = '{composite}'{extra}"),
        );
        let totals = column_f64(
            &query(
                &mut s,
                &format!(
                    "SELECT input, sum(attribution) AS total FROM p(x) USING lrp(composite = '{composite}'{extra}) GROUP BY input ORDER BY input"
                ),
            ),
            "total",
        );
        assert_close(&format!("{composite}: Σ relevance"), &totals, &[1.0; 4], 1e-3, 0.0);
        let layers = column_str(&query(&mut s, "SHOW LAYERS OF p"), "layer");
        for layer in &layers {
            let at_layer = column_f64(
                &query(
                    &mut s,
                    &format!(
                        "SELECT input, sum(attribution) AS total FROM p(x) AT LAYER \"{layer}\" USING layer_lrp(composite = '{composite}'{extra}) GROUP BY input ORDER BY input"
                    ),
                ),
                "total",
            );
            assert_close(
                &format!("{composite}: Σ relevance at {layer}"),
                &at_layer,
                &[1.0; 4],
                1e-3,
                0.0,
            );
        }
    }
    // Flat passes every unit's relevance on whole (no bias, ε on a positive sum).
    let mut d = session(SHIPPED);
    let flat_total = |d: &mut ialgebra::exec::Session, q: &str| column_f64(&query(d, q), "total");
    let input = flat_total(
        &mut d,
        "SELECT input, sum(attribution) AS total FROM cnn(digits[0:5]) USING lrp(composite = 'epsilon_plus_flat') GROUP BY input ORDER BY input",
    );
    let conv1 = flat_total(
        &mut d,
        "SELECT input, sum(attribution) AS total FROM cnn(digits[0:5]) AT LAYER conv1 USING layer_lrp(composite = 'epsilon_plus_flat') GROUP BY input ORDER BY input",
    );
    assert_close("flat first layer conserves", &input, &conv1, 1e-5, 1e-5);
}

/// Transformers: Zennit has no rule for attention (on torchvision's ViT it fails), so
/// the composites refuse them naming the layer, as Captum's rules do.
#[test]
fn composites_refuse_attention() {
    let mut v = session(&format!(
        "LOAD MODEL v FROM '{}'; LOAD DATA x FROM '{}';",
        fixture("zoo/vit.ts.onnx").display(),
        fixture("zoo/vit.inputs.npy").display(),
    ));
    assert_errors(
        &mut v,
        &[(
            "SELECT * FROM v(x) USING lrp(composite = 'epsilon_plus_flat')",
            "lrp with Zennit's rules has no rule for layer",
        )],
    );
}

#[test]
fn bad_lrp_parameters_are_refused_with_a_reason() {
    let mut s = session(SHIPPED);
    assert_errors(
        &mut s,
        &[
            (
                "SELECT * FROM cnn(digits[0:1]) USING lrp(rule = alpha_beta, alpha = 2, beta = 2)",
                "alpha − beta must be 1",
            ),
            (
                "SELECT * FROM cnn(digits[0:1]) USING lrp(rule = alpha_beta, alpha = 0.5)",
                "alpha − beta must be 1 with both ≥ 0",
            ),
            (
                "SELECT * FROM cnn(digits[0:1]) USING lrp(rule = epsilon, composite = 'epsilon_plus_flat')",
                "a rule or a composite, not both",
            ),
            (
                "SELECT * FROM cnn(digits[0:1]) USING lrp(alpha = 3)",
                "`alpha` has no effect with rule epsilon",
            ),
            (
                "SELECT * FROM cnn(digits[0:1]) USING lrp(composite = 'epsilon_plus_flat', low = 0)",
                "`low` has no effect with composite epsilon_plus_flat",
            ),
            (
                "SELECT * FROM cnn(digits[0:1]) USING lrp(composite = 'sandwich')",
                "composite",
            ),
        ],
    );
}
