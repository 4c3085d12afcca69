//! Numbers against Captum (../shared/oracle, copied into tests/fixtures/oracle): the same
//! weights, inputs and targets must give the same attributions. Tolerance: float32
//! results within atol 1e-5 + rtol 1e-4 unless a case says otherwise.

use std::sync::atomic::AtomicBool;

use ialgebra::model::{Batch, Model};
use ialgebra::ops::{self, Control, Features, Method, Request, Rule};

use crate::common::*;

const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-4;

fn model(name: &str) -> Model {
    let dir = root().join("models");
    Model::load(&dir.join(format!("{name}.safetensors")), &dir.join(format!("{name}.json"))).unwrap()
}

#[test]
fn forward_logits_match_pytorch() {
    for (name, data) in [("digits_cnn", root().join("data/digits_test_x.npy")), ("cancer_mlp", fixture("data/cancer_test_x.npy"))] {
        let m = model(name);
        let (shape, x) = npy(&data);
        let x: Vec<f32> = x.iter().map(|v| *v as f32).collect();
        let logits = m.logits(Batch::new(shape, x).unwrap()).unwrap();
        let got: Vec<f64> = logits.data().iter().map(|v| *v as f64).collect();
        let (_, want) = oracle_output(name, "logits");
        assert_close(&format!("{name} logits"), &got, &want, ATOL, RTOL);
    }
}

/// Runs a method on an oracle case's inputs, targets and baselines (whole input window).
fn run_case(model_name: &str, case: &str, method: Method, baseline_key: Option<&str>) -> Vec<f64> {
    let m = model(model_name);
    let case = format!("{model_name}__{case}");
    let (_, x) = oracle(&case, "inputs");
    let (_, t) = oracle(&case, "targets");
    let inputs: Vec<f32> = x.iter().map(|v| *v as f32).collect();
    let targets: Vec<usize> = t.iter().map(|v| *v as usize).collect();
    let n = targets.len();
    let d = m.input_len();
    let baselines: Vec<f32> = match baseline_key {
        Some(k) => {
            let (_, b) = oracle(&case, k);
            let b: Vec<f32> = b.iter().map(|v| *v as f32).collect();
            if b.len() == d { b.repeat(n) } else { b }
        }
        None => vec![0.0; n * d],
    };
    let features = whole_input(&m);
    let cancel = AtomicBool::new(false);
    let control = Control::new(&cancel);
    let ids: Vec<i64> = (0..n as i64).collect();
    let req = Request { model: &m, inputs: &inputs, baselines: &baselines, targets: &targets, ids: &ids, features: &features, batch_rows: 64, control: &control };
    ops::attribute(&method, &req).unwrap().iter().map(|v| *v as f64).collect()
}

fn whole_input(m: &Model) -> Features {
    let d = m.input_len();
    let image = match m.input_shape.as_slice() {
        [c, h, w] => Some(((*c, *h, *w), ops::Rect { channels: (0, *c), rows: (0, *h), cols: (0, *w) })),
        _ => None,
    };
    Features { group_of: (0..d as u32).collect(), groups: d, image, order: (0..d).collect() }
}

fn check(model_name: &str, case: &str, method: Method, baseline_key: Option<&str>) {
    let got = run_case(model_name, case, method, baseline_key);
    let (_, want) = oracle(&format!("{model_name}__{case}"), "attributions");
    assert_close(&format!("{model_name} {case}"), &got, &want, ATOL, RTOL);
}

#[test]
fn saliency_and_input_x_gradient() {
    for m in ["digits_cnn", "cancer_mlp"] {
        check(m, "saliency_abs", Method::Saliency { abs: true }, None);
        check(m, "saliency_noabs", Method::Saliency { abs: false }, None);
        check(m, "input_x_gradient", Method::InputXGradient, None);
    }
    check("digits_cnn_b", "saliency_abs", Method::Saliency { abs: true }, None);
}

#[test]
fn integrated_gradients_rules() {
    for m in ["digits_cnn", "cancer_mlp"] {
        check(m, "ig_gausslegendre", Method::IntegratedGradients { steps: 50, rule: Rule::GaussLegendre }, Some("baselines"));
        check(m, "ig_riemann_trapezoid", Method::IntegratedGradients { steps: 50, rule: Rule::RiemannTrapezoid }, Some("baselines"));
        check(m, "ig_meanbaseline_riemann_trapezoid", Method::IntegratedGradients { steps: 32, rule: Rule::RiemannTrapezoid }, Some("baselines"));
    }
}

#[test]
fn guided_backprop() {
    for m in ["digits_cnn", "cancer_mlp"] {
        check(m, "guided_backprop", Method::GuidedBackprop, None);
    }
}
