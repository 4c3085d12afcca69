//! Layer-wise relevance propagation in two frameworks. Captum's `LRP` (rules `epsilon`,
//! `gamma`, `z_plus`): relevance starts as the target's output value, every linear,
//! convolution, pooling and batch-norm layer takes the ε-form of its rule. Zennit's
//! (the rules Captum lacks — `alpha_beta`, `flat`, `w_square`, `z_box` — and the
//! composites): relevance starts as the one-hot target, each rule is a sum of branches
//! (a modified input through a copy of the layer with modified parameters) as Zennit's
//! `BasicHook` computes it, activations pass relevance, average pools and residual sums
//! take the stabilised ε-rule (Zennit's `Norm`), max-pools their gradient, and a batch
//! norm right after a linear or convolution layer is merged into it (Zennit's
//! `SequentialMergeBatchNorm` / `ResNetCanonizer`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::model::graph_ops::{NaryKind, Operand, ReduceKind};
use crate::model::{BackwardRule, Batch, Layer, Op, Step};

/// How linear and convolution layers pass relevance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrpRule {
    /// The layer as it is (Captum's EpsilonRule; Zennit's Epsilon).
    Epsilon,
    /// Captum's GammaRule(γ): weights w + γ·max(w, 0) on the input as it is.
    Gamma(f32),
    /// Captum's Alpha1_Beta0_Rule: the positive weights alone, on the input as it is.
    ZPlus,
    /// Zennit's AlphaBeta(α, β): positive and negative contributions apart, α − β = 1.
    AlphaBeta { alpha: f32, beta: f32 },
    /// Zennit's Flat: every weight 1, no bias, on an input of ones.
    Flat,
    /// Zennit's WSquare: squared weights and bias, on an input of ones.
    WSquare,
    /// Zennit's ZBox(low, high): for inputs bounded by [low, high] (the first layer).
    ZBox { low: f32, high: f32 },
    /// Zennit's Gamma(γ), which also handles negative inputs (the composites' rule).
    ZennitGamma(f32),
}

impl LrpRule {
    /// The rule's name in `lrp(rule = …)`.
    pub fn name(self) -> &'static str {
        match self {
            LrpRule::Epsilon => "epsilon",
            LrpRule::Gamma(_) | LrpRule::ZennitGamma(_) => "gamma",
            LrpRule::ZPlus => "z_plus",
            LrpRule::AlphaBeta { .. } => "alpha_beta",
            LrpRule::Flat => "flat",
            LrpRule::WSquare => "w_square",
            LrpRule::ZBox { .. } => "z_box",
        }
    }

    /// Captum has the rule (`LRP` computes it): otherwise it is Zennit's.
    fn captum(self) -> bool {
        matches!(self, LrpRule::Epsilon | LrpRule::Gamma(_) | LrpRule::ZPlus)
    }
}

/// Zennit's composites: a rule per kind of layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Composite {
    /// Flat on the first linear or convolution layer, ZPlus on convolutions, ε on linear.
    EpsilonPlusFlat,
    /// ZBox(low, high) on the first convolution, Gamma(γ) on the others, ε on linear.
    EpsilonGammaBox { gamma: f32, low: f32, high: f32 },
    /// AlphaBeta(2, 1) on convolutions, ε on linear layers.
    EpsilonAlpha2Beta1,
}

impl Composite {
    pub const NAMES: &'static [&'static str] = &["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"];

    pub fn name(self) -> &'static str {
        match self {
            Composite::EpsilonPlusFlat => "epsilon_plus_flat",
            Composite::EpsilonGammaBox { .. } => "epsilon_gamma_box",
            Composite::EpsilonAlpha2Beta1 => "epsilon_alpha2_beta1",
        }
    }
}

/// Zennit's stabiliser for every rule but Epsilon (its `stabilizer` default).
pub const ZENNIT_STABILIZER: f32 = 1e-6;

/// Everything `lrp(…)` and `layer_lrp(…)` were given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrpSpec {
    /// The ε of the Epsilon rule (and, in Captum's framework, of every rule).
    pub epsilon: f32,
    /// The rule of every linear and convolution layer, when no composite is given.
    pub rule: LrpRule,
    pub composite: Option<Composite>,
}

impl LrpSpec {
    /// Zennit's framework: a composite or a rule only Zennit has.
    pub fn zennit(&self) -> bool {
        self.composite.is_some() || !self.rule.captum()
    }

    /// The relevance the backward pass starts from: the one-hot target (Zennit) or the
    /// target's output value (Captum scales its result by it; the rules are linear in
    /// the relevance).
    pub fn seed(&self, output: &Batch, targets: &[usize]) -> Result<Batch> {
        if self.zennit() {
            super::gradient::one_hot(output, targets)
        } else {
            super::gradient::output_seed(output, targets)
        }
    }

    /// The backward rule that propagates relevance through `layers` (the model's).
    pub fn backward_rule(&self, layers: &[Layer]) -> Box<dyn BackwardRule> {
        if self.zennit() {
            Box::new(Zennit::new(self, layers))
        } else {
            Box::new(Captum::new(self.epsilon, self.rule))
        }
    }
}

impl std::fmt::Display for LrpSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.composite, self.rule) {
            (Some(c @ Composite::EpsilonGammaBox { gamma, low, high }), _) => write!(
                f,
                "(composite = {}, gamma = {gamma}, low = {low}, high = {high}, epsilon = {})",
                c.name(),
                self.epsilon
            ),
            (Some(c), _) => write!(f, "(composite = {}, epsilon = {})", c.name(), self.epsilon),
            (None, LrpRule::Gamma(g) | LrpRule::ZennitGamma(g)) => {
                write!(f, "(rule = gamma, gamma = {g}, epsilon = {})", self.epsilon)
            }
            (None, LrpRule::AlphaBeta { alpha, beta }) => {
                write!(f, "(rule = alpha_beta, alpha = {alpha}, beta = {beta})")
            }
            (None, LrpRule::ZBox { low, high }) => write!(f, "(rule = z_box, low = {low}, high = {high})"),
            (None, r @ (LrpRule::Flat | LrpRule::WSquare)) => write!(f, "(rule = {})", r.name()),
            (None, r) => write!(f, "(rule = {}, epsilon = {})", r.name(), self.epsilon),
        }
    }
}

/// z + ε·sign(z), with sign(0) = +1 (both Captum's and Zennit's stabiliser).
fn stabilized(z: f32, epsilon: f32) -> f32 {
    if z < 0.0 { z - epsilon } else { z + epsilon }
}

/// The ε-rule through `layer`: R_in = x ⊙ backward(R_out / stab(z)), z = the layer's
/// output on x (Captum's rules for linear, convolution, pooling and batch-norm layers,
/// Zennit's Epsilon and Norm).
fn epsilon_rule(layer: &Layer, x: &Batch, z: &Batch, memo: &crate::model::Memo, gy: &Batch, eps: f32) -> Result<Batch> {
    let mut scaled = gy.clone();
    for (r, z) in scaled.data_mut().iter_mut().zip(z.data()) {
        *r /= stabilized(*z, eps);
    }
    let mut g = layer.backward(x, z, memo, &scaled)?;
    g.data_mut().iter_mut().zip(x.data()).for_each(|(g, x)| *g *= x);
    Ok(g)
}

/// A residual sum's rule (Captum's Addition_Module, Zennit's Norm on its `Sum`): each
/// input takes R_i = x_i ⊙ R / stab(Σ x), its share of the sum. None if `layer` is not a
/// plain sum of same-shaped inputs.
fn share_of_sum(layer: &Layer, args: &[&Batch], y: &Batch, gy: &Batch, eps: f32) -> Option<Vec<Option<Batch>>> {
    let sum = match &layer.op {
        Op::Nary(n) => {
            n.kind == NaryKind::Add
                && n.args
                    .iter()
                    .all(|a| matches!(a.operand, Operand::Input(_)) && a.map.is_none())
        }
        _ => false,
    };
    if !sum {
        return None;
    }
    let mut scaled = gy.clone();
    for (r, z) in scaled.data_mut().iter_mut().zip(y.data()) {
        *r /= stabilized(*z, eps);
    }
    Some(
        args.iter()
            .map(|x| {
                let mut share = scaled.clone();
                share.data_mut().iter_mut().zip(x.data()).for_each(|(r, x)| *r *= x);
                Some(share)
            })
            .collect(),
    )
}

/// A mean or sum over axes (an export's spelling of a global pool) is linear: pooled.
fn is_pool(op: &Op) -> bool {
    match op {
        Op::AvgPool2d { .. } | Op::AdaptiveAvgPool2d { .. } => true,
        Op::Reduce(r) => matches!(r.kind, ReduceKind::Mean | ReduceKind::Sum),
        _ => false,
    }
}

/// `layer` with every weight and bias mapped. Bias `None` stays `None`.
fn with_params(layer: &Layer, weight_map: impl Fn(f32) -> f32, bias_map: impl Fn(f32) -> f32) -> Layer {
    let mut copy = layer.clone();
    if let Some((weight, bias, _)) = copy.op.weights_mut() {
        weight.iter_mut().for_each(|w| *w = weight_map(*w));
        bias.iter_mut().flatten().for_each(|b| *b = bias_map(*b));
    }
    copy
}

fn has_weights(op: &Op) -> bool {
    matches!(op, Op::Linear { .. } | Op::Conv2d { .. } | Op::ConvTranspose2d { .. })
}

fn is_convolution(op: &Op) -> bool {
    matches!(op, Op::Conv2d { .. } | Op::ConvTranspose2d { .. })
}

/// Captum's LRP: on linear, convolution, pooling and batch-norm layers R_in = x ⊙
/// backward'(R_out / (z' + ε·s)), where the primed layer has the rule's weights and z' is
/// its output on x; a residual sum splits R_out in proportion to its inputs; ReLU and
/// Tanh (and reshapes) pass relevance unchanged. Other layers have no rule: an error
/// names them.
pub struct Captum {
    epsilon: f32,
    rule: LrpRule,
    /// The layers with the rule's weights, made once per layer.
    modified: Mutex<HashMap<usize, Arc<Layer>>>,
}

impl Captum {
    pub fn new(epsilon: f32, rule: LrpRule) -> Captum {
        Captum {
            epsilon,
            rule,
            modified: Default::default(),
        }
    }

    /// The layer `index` with the rule's weights (None: the layer as it is).
    fn primed(&self, index: usize, layer: &Layer) -> Result<Option<Arc<Layer>>> {
        // Gamma: w + γ·max(w, 0); ZPlus: max(w, 0) (γ = 0 with the negative part dropped).
        let (gamma, keep_negative) = match self.rule {
            LrpRule::Gamma(g) => (g, 1.0),
            LrpRule::ZPlus => (0.0, 0.0),
            _ => return Ok(None),
        };
        let map = move |w: f32| w.max(0.0) * (1.0 + gamma) + keep_negative * w.min(0.0);
        if !matches!(layer.op, Op::Linear { .. } | Op::Conv2d { .. }) {
            return Ok(None);
        }
        let mut cache = self.modified.lock().map_err(|_| poisoned())?;
        // Captum's rules modify the weights only.
        let primed = cache
            .entry(index)
            .or_insert_with(|| Arc::new(with_params(layer, map, |b| b)));
        Ok(Some(primed.clone()))
    }

    fn propagate(&self, step: &Step) -> Result<Batch> {
        match self.primed(step.index, step.layer)? {
            Some(l) => {
                let (z, memo) = l.forward(step.x, true)?;
                epsilon_rule(&l, step.x, &z, &memo, step.gy, self.epsilon)
            }
            None => epsilon_rule(step.layer, step.x, step.y, step.memo, step.gy, self.epsilon),
        }
    }
}

fn poisoned() -> Error {
    Error::model("internal: a poisoned lock")
}

impl BackwardRule for Captum {
    fn backward(&self, step: &Step) -> Option<Result<Batch>> {
        match &step.layer.op {
            Op::Linear { .. } | Op::Conv2d { .. } | Op::MaxPool2d { .. } | Op::BatchNorm { .. } => {
                Some(self.propagate(step))
            }
            op if is_pool(op) => Some(self.propagate(step)),
            Op::Relu | Op::Tanh | Op::Flatten | Op::Identity => Some(Ok(step.gy.clone())),
            _ => Some(Err(no_lrp_rule(step.layer))),
        }
    }

    fn backward_args(
        &self,
        layer: &Layer,
        args: &[&Batch],
        y: &Batch,
        gy: &Batch,
    ) -> Option<Result<Vec<Option<Batch>>>> {
        Some(share_of_sum(layer, args, y, gy, self.epsilon).ok_or_else(|| no_lrp_rule(layer)))
    }
}

/// Why Captum's LRP cannot pass a layer.
pub fn no_lrp_rule(layer: &Layer) -> Error {
    Error::value(format!(
        "lrp has no rule for layer `{}` ({}): Captum's default rules cover linear, convolution, pooling and batch-norm layers, ReLU and Tanh",
        layer.name, layer.kind
    ))
    .hint("use deeplift or integrated_gradients, which take every layer; or a Zennit composite (lrp(composite = 'epsilon_plus_flat')), which passes other layers by their gradient")
}

/// Why Zennit's framework refuses a layer.
fn no_composite_rule(layer: &Layer) -> Error {
    Error::value(format!(
        "lrp with Zennit's rules has no rule for layer `{}` ({}): its composites cover linear, convolution, pooling, batch-norm and activation layers and residual sums, not attention",
        layer.name, layer.kind
    ))
    .hint("for transformers use integrated_gradients or gradient_shap; LRP through attention needs rules (AttnLRP) that Zennit does not ship")
}

/// How a branch of a Zennit rule modifies the layer's input.
#[derive(Clone, Copy, Debug, PartialEq)]
enum InputMod {
    Same,
    Positive,
    Negative,
    Ones,
    Constant(f32),
}

/// How a branch modifies the layer's parameters (Zennit's ParamMod family). `bias`:
/// whether the bias is modified too, or zeroed (Zennit's `zero_bias`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ParamMod {
    Same,
    /// ClampMod: max(p, 0) or min(p, 0).
    Clamp {
        positive: bool,
        bias: bool,
    },
    /// GammaMod: p + γ·max(p, 0) or p + γ·min(p, 0).
    Gamma {
        positive: bool,
        bias: bool,
    },
    /// p², bias too.
    Square,
    /// Every weight 1, bias 0.
    Ones,
}

/// One input → layer-copy path of a rule; `sign` is its sign in the denominator and in
/// the relevance (ZBox subtracts its bound branches).
#[derive(Clone, Copy, Debug)]
struct Branch {
    input: InputMod,
    params: ParamMod,
    sign: f32,
}

/// Branches sharing one denominator: R += coefficient · Σ sign·in ⊙ backward(R_out·mask /
/// stab(Σ sign·z)); `mask` keeps the outputs where the unmodified layer's output is
/// positive (Some(true)) or negative (Some(false)) (Zennit's Gamma).
struct Term {
    coefficient: f32,
    mask: Option<bool>,
    branches: Vec<Branch>,
}

fn branch(input: InputMod, params: ParamMod) -> Branch {
    Branch {
        input,
        params,
        sign: 1.0,
    }
}

/// A Zennit rule as its terms (rules.py of Zennit 0.5.1).
fn terms(rule: LrpRule) -> Vec<Term> {
    use InputMod::*;
    let clamp = |positive, bias| ParamMod::Clamp { positive, bias };
    let gamma = |positive, bias| ParamMod::Gamma { positive, bias };
    let term = |coefficient, mask, branches| Term {
        coefficient,
        mask,
        branches,
    };
    match rule {
        LrpRule::Epsilon | LrpRule::Gamma(_) => vec![term(1.0, None, vec![branch(Same, ParamMod::Same)])],
        LrpRule::ZPlus => terms(LrpRule::AlphaBeta { alpha: 1.0, beta: 0.0 }),
        LrpRule::AlphaBeta { alpha, beta } => vec![
            term(
                alpha,
                None,
                vec![
                    branch(Positive, clamp(true, true)),
                    branch(Negative, clamp(false, false)),
                ],
            ),
            term(
                -beta,
                None,
                vec![
                    branch(Positive, clamp(false, true)),
                    branch(Negative, clamp(true, false)),
                ],
            ),
        ],
        LrpRule::ZennitGamma(_) => vec![
            term(
                1.0,
                Some(true),
                vec![
                    branch(Positive, gamma(true, true)),
                    branch(Negative, gamma(false, false)),
                ],
            ),
            term(
                1.0,
                Some(false),
                vec![
                    branch(Positive, gamma(false, true)),
                    branch(Negative, gamma(true, false)),
                ],
            ),
        ],
        LrpRule::Flat => vec![term(1.0, None, vec![branch(Ones, ParamMod::Ones)])],
        LrpRule::WSquare => vec![term(1.0, None, vec![branch(Ones, ParamMod::Square)])],
        LrpRule::ZBox { low, high } => vec![term(
            1.0,
            None,
            vec![
                branch(Same, ParamMod::Same),
                Branch {
                    sign: -1.0,
                    ..branch(Constant(low), clamp(true, true))
                },
                Branch {
                    sign: -1.0,
                    ..branch(Constant(high), clamp(false, true))
                },
            ],
        )],
    }
}

/// What Zennit's framework does at a layer.
#[derive(Clone, Copy, Debug)]
enum Treatment {
    /// A linear or convolution layer's rule.
    Rule(LrpRule),
    /// Activations and merged batch norms: relevance passes unchanged.
    Pass,
    /// Average pools and residual sums: the ε-rule with Zennit's stabiliser.
    Norm,
    /// Everything else (max-pools, reshapes, products such as squeeze-excitation's): the
    /// gradient, as Zennit leaves modules without a rule.
    Gradient,
    /// Attention (products of two activations, softmax): Zennit's composites have no
    /// rule for it (on torchvision's ViT Zennit itself fails), and its gradient does not
    /// carry relevance (the sums ran to 10⁵ on the zoo ViT): refused. (Layer norms, as in
    /// ConvNeXt, pass their gradient, as Zennit leaves them.)
    Refused,
}

/// Zennit's framework over one model's layers.
pub struct Zennit {
    epsilon: f32,
    treatments: Vec<Treatment>,
    /// Linear / convolution layers with the batch norm that follows them merged in.
    merged: HashMap<usize, Arc<Layer>>,
    /// Branch copies of each layer, made once per (layer, parameter modifier).
    copies: Mutex<HashMap<(usize, ParamMod), Arc<Layer>>>,
}

impl Zennit {
    fn new(spec: &LrpSpec, layers: &[Layer]) -> Zennit {
        // The layer maps of Zennit's composites (composites.py), the first matching
        // linear or convolution layer (in layer order) taking the first-layer rule.
        let eps = LrpRule::Epsilon;
        let (conv, linear, first): (LrpRule, LrpRule, Option<(bool, LrpRule)>) = match spec.composite {
            Some(Composite::EpsilonPlusFlat) => (
                LrpRule::AlphaBeta { alpha: 1.0, beta: 0.0 },
                eps,
                Some((false, LrpRule::Flat)),
            ),
            Some(Composite::EpsilonGammaBox { gamma, low, high }) => (
                LrpRule::ZennitGamma(gamma),
                eps,
                Some((true, LrpRule::ZBox { low, high })),
            ),
            Some(Composite::EpsilonAlpha2Beta1) => (LrpRule::AlphaBeta { alpha: 2.0, beta: 1.0 }, eps, None),
            None => (spec.rule, spec.rule, None),
        };
        let mut first_done = first.is_none();
        let mut treatments = Vec::with_capacity(layers.len());
        for layer in layers {
            let t = match &layer.op {
                op if has_weights(op) => {
                    let mut rule = if is_convolution(op) { conv } else { linear };
                    if let (false, Some((conv_only, first_rule))) = (first_done, first)
                        && (!conv_only || is_convolution(op))
                    {
                        rule = first_rule;
                        first_done = true;
                    }
                    Treatment::Rule(rule)
                }
                Op::Relu | Op::LeakyRelu { .. } | Op::Sigmoid | Op::Tanh | Op::Gelu { .. } | Op::BatchNorm { .. } => {
                    Treatment::Pass
                }
                Op::Map(f) if f.is_activation() => Treatment::Pass,
                op if is_pool(op) => Treatment::Norm,
                Op::Softmax { .. } | Op::MatMul(_) => Treatment::Refused,
                _ => Treatment::Gradient,
            };
            treatments.push(t);
        }
        Zennit {
            epsilon: spec.epsilon,
            treatments,
            merged: merge_batch_norms(layers),
            copies: Default::default(),
        }
    }

    /// The copy of `layer` (or of its merged form) with `params` applied.
    fn copy(&self, index: usize, layer: &Layer, params: ParamMod, gamma: f32) -> Result<Arc<Layer>> {
        let mut cache = self.copies.lock().map_err(|_| poisoned())?;
        let made = cache.entry((index, params)).or_insert_with(|| {
            let keep = |keep: bool, f: fn(f32, f32) -> f32| move |p: f32| if keep { f(p, gamma) } else { 0.0 };
            Arc::new(match params {
                ParamMod::Same => layer.clone(),
                ParamMod::Clamp { positive: true, bias } => {
                    with_params(layer, |w| w.max(0.0), keep(bias, |p, _| p.max(0.0)))
                }
                ParamMod::Clamp { positive: false, bias } => {
                    with_params(layer, |w| w.min(0.0), keep(bias, |p, _| p.min(0.0)))
                }
                ParamMod::Gamma { positive: true, bias } => {
                    with_params(layer, |w| w + gamma * w.max(0.0), keep(bias, |p, g| p + g * p.max(0.0)))
                }
                ParamMod::Gamma { positive: false, bias } => {
                    with_params(layer, |w| w + gamma * w.min(0.0), keep(bias, |p, g| p + g * p.min(0.0)))
                }
                ParamMod::Square => with_params(layer, |w| w * w, |b| b * b),
                ParamMod::Ones => with_params(layer, |_| 1.0, |_| 0.0),
            })
        });
        Ok(made.clone())
    }

    /// A rule's relevance at the input of linear / convolution layer `index`.
    fn rule(&self, rule: LrpRule, step: &Step) -> Result<Batch> {
        let layer: &Layer = self.merged.get(&step.index).map_or(step.layer, |l| l.as_ref());
        let x = step.x;
        if rule == LrpRule::Epsilon {
            let (z, memo) = match self.merged.get(&step.index) {
                Some(l) => l.forward(x, true)?,
                None => (step.y.clone(), step.memo.clone()),
            };
            return epsilon_rule(layer, x, &z, &memo, step.gy, self.epsilon);
        }
        let gamma = match rule {
            LrpRule::ZennitGamma(g) => g,
            _ => 0.0,
        };
        // The unmodified layer's output, for Gamma's masks.
        let plain = match (&rule, self.merged.get(&step.index)) {
            (LrpRule::ZennitGamma(_), Some(l)) => Some(l.forward(x, false)?.0),
            (LrpRule::ZennitGamma(_), None) => Some(step.y.clone()),
            _ => None,
        };
        let mut relevance = Batch::zeros(x.shape().to_vec());
        for term in terms(rule) {
            let mut outputs = Vec::with_capacity(term.branches.len());
            for b in &term.branches {
                let input = modified_input(x, b.input);
                let copy = self.copy(step.index, layer, b.params, gamma)?;
                let (z, memo) = copy.forward(&input, true)?;
                outputs.push((input, copy, z, memo));
            }
            let mut scaled = step.gy.clone();
            for (k, r) in scaled.data_mut().iter_mut().enumerate() {
                let d: f32 = term
                    .branches
                    .iter()
                    .zip(&outputs)
                    .map(|(b, o)| b.sign * o.2.data()[k])
                    .sum();
                let kept = match (term.mask, &plain) {
                    (Some(true), Some(z)) => z.data()[k] > 0.0,
                    (Some(false), Some(z)) => z.data()[k] < 0.0,
                    _ => true,
                };
                *r = if kept {
                    *r / stabilized(d, ZENNIT_STABILIZER)
                } else {
                    0.0
                };
            }
            for (b, (input, copy, z, memo)) in term.branches.iter().zip(&outputs) {
                let g = copy.backward(input, z, memo, &scaled)?;
                let factor = term.coefficient * b.sign;
                for ((r, g), v) in relevance.data_mut().iter_mut().zip(g.data()).zip(input.data()) {
                    *r += factor * v * g;
                }
            }
        }
        Ok(relevance)
    }
}

fn modified_input(x: &Batch, m: InputMod) -> Batch {
    let mut out = x.clone();
    let f = |v: f32| match m {
        InputMod::Same => v,
        InputMod::Positive => v.max(0.0),
        InputMod::Negative => v.min(0.0),
        InputMod::Ones => 1.0,
        InputMod::Constant(c) => c,
    };
    out.data_mut().iter_mut().for_each(|v| *v = f(*v));
    out
}

/// Each linear or convolution layer whose output only a batch norm reads, with that
/// batch norm's scale and shift folded into its weights and bias (Zennit's
/// MergeBatchNorm: W·s, b·s + t per output channel).
fn merge_batch_norms(layers: &[Layer]) -> HashMap<usize, Arc<Layer>> {
    let mut merged = HashMap::new();
    for norm in layers.iter() {
        let (Op::BatchNorm { scale, shift }, [source]) = (&norm.op, norm.inputs.as_slice()) else {
            continue;
        };
        let Some(i) = source.checked_sub(1) else { continue };
        let readers = layers.iter().filter(|l| l.inputs.contains(source)).count();
        if readers != 1 {
            continue;
        }
        let mut copy = layers[i].clone();
        let folded = match copy.op.weights_mut() {
            Some((weight, bias, Some(out))) if out == scale.len() => fold(weight, bias, scale, shift),
            _ => false,
        };
        if folded {
            merged.insert(i, Arc::new(copy));
        }
    }
    merged
}

/// Folds a per-output-channel affine map into weights laid out output channel first.
fn fold(weight: &mut [f32], bias: &mut Option<Vec<f32>>, scale: &[f32], shift: &[f32]) -> bool {
    let per = weight.len() / scale.len().max(1);
    if per * scale.len() != weight.len() || shift.len() != scale.len() {
        return false;
    }
    for (c, w) in weight.chunks_mut(per).enumerate() {
        w.iter_mut().for_each(|w| *w *= scale[c]);
    }
    let b = bias.get_or_insert_with(|| vec![0.0; scale.len()]);
    for (c, b) in b.iter_mut().enumerate() {
        *b = *b * scale[c] + shift[c];
    }
    true
}

impl BackwardRule for Zennit {
    fn backward(&self, step: &Step) -> Option<Result<Batch>> {
        match self.treatments.get(step.index)? {
            Treatment::Rule(rule) => Some(self.rule(*rule, step)),
            Treatment::Pass => Some(Ok(step.gy.clone())),
            Treatment::Norm => Some(epsilon_rule(
                step.layer,
                step.x,
                step.y,
                step.memo,
                step.gy,
                ZENNIT_STABILIZER,
            )),
            Treatment::Gradient => None,
            Treatment::Refused => Some(Err(no_composite_rule(step.layer))),
        }
    }

    fn backward_args(
        &self,
        layer: &Layer,
        args: &[&Batch],
        y: &Batch,
        gy: &Batch,
    ) -> Option<Result<Vec<Option<Batch>>>> {
        if matches!(layer.op, Op::MatMul(_)) {
            return Some(Err(no_composite_rule(layer)));
        }
        // A sum of same-shaped inputs is Zennit's `Sum` (ResNetCanonizer); any other layer
        // of several inputs passes its gradient, as Zennit leaves such operations alone.
        share_of_sum(layer, args, y, gy, ZENNIT_STABILIZER).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stabilizer_takes_plus_at_zero() {
        assert_eq!(stabilized(0.0, 1e-6), 1e-6);
        assert_eq!(stabilized(-2.0, 1.0), -3.0);
        assert_eq!(stabilized(2.0, 1.0), 3.0);
    }

    #[test]
    fn batch_norm_folds_per_output_channel() {
        let mut w = vec![1.0, 2.0, 3.0, 4.0];
        let mut b = None;
        assert!(fold(&mut w, &mut b, &[2.0, -1.0], &[0.5, 1.0]));
        assert_eq!(w, vec![2.0, 4.0, -3.0, -4.0]);
        assert_eq!(b, Some(vec![0.5, 1.0]));
    }
}
