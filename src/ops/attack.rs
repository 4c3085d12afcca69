//! Adversarial attacks as derived datasets (`LET adv = ATTACK pgd(…) ON m(d)`), with
//! Captum's robustness semantics: L∞ FGSM and PGD on the cross-entropy of the logits,
//! untargeted (ascending the loss of the true label) unless a target class is given
//! (descending the loss of the target), clamped to the data's range. The gradients come
//! from the one gradient engine (`Model::backward`).

use rayon::prelude::*;

use super::gradient::batch_shape;
use super::rng::Rng;
use super::{Control, MAX_COUNT, ParamKind, ParamSpec};
use crate::error::Result;
use crate::model::{Batch, Gradient, Model};

/// An attack with its parameters resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Attack {
    /// One step of size `eps` along the sign of the loss gradient (Captum's FGSM).
    Fgsm { eps: f32 },
    /// `steps` FGSM steps of `step_size`, each projected back into the L∞ ball of radius
    /// `eps` around the input (Captum's PGD), optionally from a random start in the ball.
    Pgd {
        eps: f32,
        steps: usize,
        step_size: f32,
        random_start: bool,
        seed: u64,
    },
}

impl Attack {
    pub fn name(&self) -> &'static str {
        match self {
            Attack::Fgsm { .. } => "fgsm",
            Attack::Pgd { .. } => "pgd",
        }
    }
}

/// An attack's description for `\help` and the parameter checks.
pub struct AttackInfo {
    pub name: &'static str,
    pub params: &'static [ParamSpec],
    pub captum: &'static str,
    pub summary: &'static str,
}

const EPS: ParamSpec = ParamSpec {
    name: "eps",
    kind: ParamKind::Float { min: 0.0 },
    default: None,
    setting: None,
};
const LOWER: ParamSpec = ParamSpec {
    name: "lower",
    kind: ParamKind::Float { min: f64::MIN },
    default: None,
    setting: None,
};
const UPPER: ParamSpec = ParamSpec {
    name: "upper",
    kind: ParamKind::Float { min: f64::MIN },
    default: None,
    setting: None,
};

pub const ATTACKS: &[AttackInfo] = &[
    AttackInfo {
        name: "fgsm",
        params: &[EPS, LOWER, UPPER],
        captum: "FGSM",
        summary: "one step of eps along the sign of the loss gradient, clamped to [lower, upper] (the data's range by default)",
    },
    AttackInfo {
        name: "pgd",
        params: &[
            EPS,
            ParamSpec {
                name: "steps",
                kind: ParamKind::Int { min: 1, max: MAX_COUNT },
                default: Some("10"),
                setting: None,
            },
            ParamSpec {
                name: "step_size",
                kind: ParamKind::Float { min: 0.0 },
                default: Some("2.5 * eps / steps"),
                setting: None,
            },
            ParamSpec {
                name: "random_start",
                kind: ParamKind::Bool,
                default: Some("false"),
                setting: None,
            },
            ParamSpec {
                name: "seed",
                kind: ParamKind::Int { min: 0, max: i64::MAX },
                default: Some("0"),
                setting: Some("seed"),
            },
            LOWER,
            UPPER,
        ],
        captum: "PGD",
        summary: "steps of step_size along the loss gradient's sign, each projected into the L∞ ball of radius eps and clamped to [lower, upper]",
    },
];

pub fn attack_info(name: &str) -> Option<&'static AttackInfo> {
    ATTACKS.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

/// The gradient of each row's cross-entropy loss for its class, with respect to the row:
/// softmax(logits) − onehot(class) back-propagated through the model.
fn loss_gradient(model: &Model, x: &[f32], rows: usize, classes: &[usize]) -> Result<Vec<f32>> {
    let tape = model.run(
        Batch::new(batch_shape(rows, &model.input_shape), x.to_vec())?,
        &model.full(),
    )?;
    let out = tape.output();
    let mut seed = Batch::zeros(out.shape().to_vec());
    for (r, &class) in classes.iter().enumerate() {
        let logits = out.row(r);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = logits.iter().map(|v| (v - max).exp()).sum();
        let g = seed.row_mut(r);
        for (k, v) in logits.iter().enumerate() {
            g[k] = (v - max).exp() / total - if k == class { 1.0 } else { 0.0 };
        }
    }
    Ok(model.backward(&tape, seed, &Gradient, &mut |_, _| {})?.into_data())
}

/// Torch's sign: 0 stays 0.
fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The adversarial versions of `x` (rows of the model's input, ids for seeding the random
/// start): untargeted on `classes` (the true labels), or toward them when `targeted`.
#[allow(clippy::too_many_arguments)]
pub fn perturb(
    model: &Model,
    x: &[f32],
    ids: &[i64],
    classes: &[usize],
    attack: &Attack,
    targeted: bool,
    bounds: (f32, f32),
    batch_rows: usize,
    control: &Control,
) -> Result<Vec<f32>> {
    let d = model.input_len();
    let (lo, hi) = bounds;
    // Untargeted attacks climb the loss of the true class; targeted ones descend the loss
    // of the target.
    let direction = if targeted { -1.0 } else { 1.0 };
    let rows = batch_rows.max(1);
    let chunks: Vec<Vec<f32>> = x
        .par_chunks(rows * d)
        .enumerate()
        .map(|(c, x0)| {
            control.check()?;
            let n = x0.len() / d;
            let classes = &classes[c * rows..c * rows + n];
            let step = |x: &mut Vec<f32>, size: f32| -> Result<()> {
                let g = loss_gradient(model, x, n, classes)?;
                for (v, g) in x.iter_mut().zip(&g) {
                    *v = (*v + direction * size * sign(*g)).clamp(lo, hi);
                }
                Ok(())
            };
            let mut x = x0.to_vec();
            match *attack {
                Attack::Fgsm { eps } => {
                    step(&mut x, eps)?;
                    control.advance(n);
                }
                Attack::Pgd {
                    eps,
                    steps,
                    step_size,
                    random_start,
                    seed,
                } => {
                    if random_start {
                        for (r, row) in x.chunks_mut(d).enumerate() {
                            let mut rng = Rng::new(seed, ids[c * rows + r] as u64);
                            for v in row {
                                *v = (*v + (2.0 * rng.uniform() as f32 - 1.0) * eps).clamp(lo, hi);
                            }
                        }
                    }
                    for _ in 0..steps {
                        control.check()?;
                        step(&mut x, step_size)?;
                        // x0 + clamp(x − x0, ±eps), as Captum writes it (the same rounding).
                        for (v, v0) in x.iter_mut().zip(x0) {
                            *v = (v0 + (*v - v0).clamp(-eps, eps)).clamp(lo, hi);
                        }
                        // Progress counts input-steps: a long attack on few inputs moves.
                        control.advance(n);
                    }
                }
            }
            Ok(x)
        })
        .collect::<Result<_>>()?;
    Ok(chunks.concat())
}
