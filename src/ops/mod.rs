//! The interpretation operators. One gradient engine (`gradient`) serves saliency,
//! input × gradient, SmoothGrad, the backward-rule methods and integrated gradients; one
//! perturbation engine (`perturbation`) serves occlusion, feature ablation and Shapley
//! sampling. Each method follows Captum's definition and defaults to the letter.

pub mod attack;
pub mod cam;
pub mod concepts;
pub mod detect;
pub mod gradient;
pub mod influence;
pub mod integrated;
pub mod layer;
pub mod linalg;
pub mod lrp;
pub mod metrics;
pub mod perturbation;
pub mod probe;
pub mod quadrature;
pub mod rng;
pub mod rules;
pub mod shap;
pub mod visualize;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::{Error, Result, Span};
use crate::model::Model;
pub use quadrature::Rule;

/// How a method's per-feature results combine over a group of features (GRANULARITY).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Gradient methods: a group's attribution is the sum over its features.
    Gradient,
    /// Perturbation methods: a group is perturbed together; every feature of it carries
    /// the group's value (Captum's feature_mask convention), which is the group's row.
    Perturbation,
}

/// A method with all its parameters resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    Saliency {
        abs: bool,
    },
    InputXGradient,
    IntegratedGradients {
        steps: usize,
        rule: Rule,
    },
    SmoothGrad {
        samples: usize,
        stdev: f64,
        seed: u64,
        abs: bool,
        variant: NoiseVariant,
    },
    GuidedBackprop,
    Deconvolution,
    /// `window` / `stride`: the sliding window's edge (spatial for images, along the
    /// features for tabular data); None takes the GRANULARITY patch.
    Occlusion {
        window: Option<usize>,
        stride: Option<usize>,
    },
    FeatureAblation,
    ShapleySampling {
        samples: usize,
        seed: u64,
    },
    /// Captum's KernelShap: a weighted linear regression on random coalitions of the
    /// features (or GRANULARITY groups), sized by the Shapley kernel.
    KernelShap {
        samples: usize,
        seed: u64,
    },
    /// Captum's Lime: a Lasso fitted to random coalitions weighted by their similarity
    /// to the input (an exponential kernel of the cosine or Euclidean distance).
    Lime {
        samples: usize,
        seed: u64,
        kernel_width: f64,
        alpha: f64,
        euclidean: bool,
    },
    /// Captum's FeaturePermutation: the output's drop when a feature (group) takes the
    /// values of other inputs of the query (a random permutation of them).
    FeaturePermutation {
        seed: u64,
    },
    DeepLift,
    /// Captum's GradientShap: input × gradient at random points between the (noisy)
    /// input and baselines drawn from the BASELINE distribution.
    GradientShap {
        samples: usize,
        stdev: f64,
        seed: u64,
    },
    /// Captum's DeepLiftShap: DeepLift against every baseline of the distribution, averaged.
    DeepLiftShap,
    /// Layer-wise relevance propagation: Captum's LRP (its rules) or Zennit's (its rules
    /// and composites).
    Lrp {
        spec: lrp::LrpSpec,
    },
    /// Guided backprop times the Grad-CAM map of the AT LAYER layer, upsampled to the input.
    GuidedGradCam,
    GradCam {
        relu: bool,
        upsample: bool,
        per_channel: bool,
        bilinear: bool,
    },
    /// A member of the CAM family at the AT LAYER layer, as pytorch-grad-cam computes it;
    /// `normalize`: its ReLU and per-input min-max scaling.
    Cam {
        kind: cam::CamKind,
        normalize: bool,
        upsample: bool,
        bilinear: bool,
    },
    /// pytorch-grad-cam's FullGrad: input-gradient and bias-gradient maps of every layer.
    FullGrad {
        normalize: bool,
    },
    LayerActivation,
    LayerGradientXActivation,
    /// DeepLift at the AT LAYER layer: (h(x) − h(baseline)) × the rescale rule's
    /// multipliers there (Captum's LayerDeepLift).
    LayerDeepLift,
    /// GradientShap at the AT LAYER layer (Captum's LayerGradientShap).
    LayerGradientShap {
        samples: usize,
        stdev: f64,
        seed: u64,
    },
    /// LRP's relevance at the AT LAYER layer's output (Captum's LayerLRP).
    LayerLrp {
        spec: lrp::LrpSpec,
    },
    LayerConductance {
        steps: usize,
    },
    LayerIntegratedGradients {
        steps: usize,
        rule: Rule,
    },
    NeuronGradient,
    NeuronGuidedBackprop,
    NeuronDeconvolution,
    NeuronDeepLift,
    NeuronGradientShap {
        samples: usize,
        stdev: f64,
        seed: u64,
    },
    NeuronIntegratedGradients {
        steps: usize,
        rule: Rule,
    },
    NeuronConductance {
        steps: usize,
        rule: Rule,
    },
}

/// How SmoothGrad combines the saliency maps of its noisy copies (Captum's NoiseTunnel
/// `nt_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseVariant {
    /// The mean of the maps.
    Mean,
    /// The mean of their squares.
    Squared,
    /// Their variance: the mean of the squares less the square of the mean.
    Variance,
}

impl NoiseVariant {
    pub const NAMES: &'static [&'static str] = &["smoothgrad", "smoothgrad_sq", "vargrad"];

    pub fn name(self) -> &'static str {
        match self {
            NoiseVariant::Mean => "smoothgrad",
            NoiseVariant::Squared => "smoothgrad_sq",
            NoiseVariant::Variance => "vargrad",
        }
    }

    fn parse(name: &str) -> NoiseVariant {
        match name.to_ascii_lowercase().as_str() {
            "smoothgrad_sq" => NoiseVariant::Squared,
            "vargrad" => NoiseVariant::Variance,
            _ => NoiseVariant::Mean,
        }
    }
}

/// What a method needs besides the model and inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: it attributes input features to a class (or to a unit with `TARGET l[i]`).
    Nothing,
    /// A layer (AT LAYER l).
    Layer,
    /// A unit of a layer (`TARGET l[i]`).
    Unit,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Saliency { .. } => "saliency",
            Method::InputXGradient => "input_x_gradient",
            Method::IntegratedGradients { .. } => "integrated_gradients",
            Method::SmoothGrad { .. } => "smoothgrad",
            Method::GuidedBackprop => "guided_backprop",
            Method::Deconvolution => "deconvolution",
            Method::Occlusion { .. } => "occlusion",
            Method::FeatureAblation => "feature_ablation",
            Method::ShapleySampling { .. } => "shapley_sampling",
            Method::KernelShap { .. } => "kernel_shap",
            Method::Lime { .. } => "lime",
            Method::FeaturePermutation { .. } => "feature_permutation",
            Method::DeepLift => "deeplift",
            Method::GradientShap { .. } => "gradient_shap",
            Method::DeepLiftShap => "deeplift_shap",
            Method::LayerGradientShap { .. } => "layer_gradient_shap",
            Method::NeuronGradientShap { .. } => "neuron_gradient_shap",
            Method::Lrp { .. } => "lrp",
            Method::GuidedGradCam => "guided_gradcam",
            Method::GradCam { .. } => "gradcam",
            Method::Cam { kind, .. } => kind.name(),
            Method::FullGrad { .. } => "fullgrad",
            Method::LayerActivation => "layer_activation",
            Method::LayerGradientXActivation => "layer_gradient_x_activation",
            Method::LayerLrp { .. } => "layer_lrp",
            Method::LayerDeepLift => "layer_deeplift",
            Method::LayerConductance { .. } => "layer_conductance",
            Method::LayerIntegratedGradients { .. } => "layer_integrated_gradients",
            Method::NeuronGradient => "neuron_gradient",
            Method::NeuronGuidedBackprop => "neuron_guided_backprop",
            Method::NeuronDeconvolution => "neuron_deconvolution",
            Method::NeuronDeepLift => "neuron_deeplift",
            Method::NeuronIntegratedGradients { .. } => "neuron_integrated_gradients",
            Method::NeuronConductance { .. } => "neuron_conductance",
        }
    }

    pub fn needs(&self) -> Needs {
        method_info(self.name()).map_or(Needs::Nothing, |m| m.needs)
    }

    /// Whether the result is a layer relation (one row per unit of the AT LAYER layer).
    pub fn attributes_layer(&self) -> bool {
        self.needs() == Needs::Layer && *self != Method::GuidedGradCam
    }

    /// Gradient or perturbation, as the method table says.
    pub fn family(&self) -> Family {
        method_info(self.name()).map_or(Family::Gradient, |m| m.family)
    }

    /// Whether a GRANULARITY group's attribution is the sum over its features (gradient
    /// methods) rather than the value every feature of it carries (perturbation methods,
    /// and FullGrad, whose pixel value every channel carries: GRANULARITY pixel is its map).
    pub fn sums_groups(&self) -> bool {
        self.family() == Family::Gradient && !matches!(self, Method::FullGrad { .. })
    }

    /// Whether an input's result depends on that input alone (not on which others share
    /// the query): only then may a WHERE or LIMIT choose the inputs before it runs.
    pub fn each_input_alone(&self) -> bool {
        !matches!(self, Method::FeaturePermutation { .. })
    }

    /// Whether BASELINE d[a:b] is a distribution the method draws from (every input of it
    /// one draw, whatever the number of explained inputs) rather than one baseline per
    /// explained input.
    pub fn draws_baselines(&self) -> bool {
        matches!(
            self,
            Method::GradientShap { .. }
                | Method::DeepLiftShap
                | Method::LayerGradientShap { .. }
                | Method::NeuronGradientShap { .. }
        )
    }

    /// The points of the path integral a method evaluates per input, for the methods
    /// whose engines count progress in path steps (one input's million steps must show
    /// progress and stop on Ctrl-C); None: progress counts inputs.
    pub fn path_points(&self) -> Option<usize> {
        match self {
            Method::IntegratedGradients { steps, .. }
            | Method::LayerIntegratedGradients { steps, .. }
            | Method::NeuronIntegratedGradients { steps, .. }
            | Method::NeuronConductance { steps, .. } => Some(*steps),
            // Captum's LayerConductance evaluates steps + 1 points.
            Method::LayerConductance { steps } => Some(steps + 1),
            _ => None,
        }
    }

    /// Whether the map of a difference of two models' outputs is the difference of the
    /// two maps (the method is linear in the explained output, up to saliency's absolute
    /// value, which the difference drops): what a two-model ANTIJOIN needs.
    pub fn maps_differences(&self) -> bool {
        !matches!(
            self,
            Method::SmoothGrad { abs: true, .. }
                | Method::SmoothGrad {
                    variant: NoiseVariant::Squared | NoiseVariant::Variance,
                    ..
                }
                | Method::GuidedGradCam
                | Method::Lime { .. }
        )
    }

    /// Whether the method compares against a baseline (BASELINE applies), as the method
    /// table says.
    pub fn uses_baseline(&self) -> bool {
        method_info(self.name()).is_some_and(|m| m.baseline)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        match self {
            Method::Saliency { abs } => write!(f, "(abs = {abs})"),
            Method::IntegratedGradients { steps, rule }
            | Method::LayerIntegratedGradients { steps, rule }
            | Method::NeuronIntegratedGradients { steps, rule }
            | Method::NeuronConductance { steps, rule } => {
                write!(f, "(steps = {steps}, rule = {})", rule.name())
            }
            Method::LayerConductance { steps } => write!(f, "(steps = {steps})"),
            Method::FullGrad { normalize } => write!(f, "(normalize = {normalize})"),
            Method::Lrp { spec } | Method::LayerLrp { spec } => write!(f, "{spec}"),
            Method::Cam {
                normalize,
                upsample,
                bilinear,
                ..
            } => {
                let mode = if *bilinear { "bilinear" } else { "nearest" };
                write!(
                    f,
                    "(normalize = {normalize}, upsample = {upsample}, interpolate = {mode})"
                )
            }
            Method::GradCam {
                relu,
                upsample,
                per_channel,
                bilinear,
            } => {
                let mode = if *bilinear { "bilinear" } else { "nearest" };
                write!(
                    f,
                    "(relu = {relu}, upsample = {upsample}, per_channel = {per_channel}, interpolate = {mode})"
                )
            }
            Method::SmoothGrad {
                samples,
                stdev,
                seed,
                abs,
                variant,
            } => write!(
                f,
                "(samples = {samples}, stdev = {stdev}, seed = {seed}, abs = {abs}, variant = {})",
                variant.name()
            ),
            Method::Occlusion { window, stride } => match (window, stride) {
                (Some(w), Some(s)) => write!(f, "(window = {w}, stride = {s})"),
                (Some(w), None) => write!(f, "(window = {w})"),
                _ => Ok(()),
            },
            Method::ShapleySampling { samples, seed } | Method::KernelShap { samples, seed } => {
                write!(f, "(samples = {samples}, seed = {seed})")
            }
            Method::Lime {
                samples,
                seed,
                kernel_width,
                alpha,
                euclidean,
            } => {
                let distance = if *euclidean { "euclidean" } else { "cosine" };
                write!(
                    f,
                    "(samples = {samples}, seed = {seed}, kernel_width = {kernel_width}, alpha = {alpha}, distance = {distance})"
                )
            }
            Method::FeaturePermutation { seed } => write!(f, "(seed = {seed})"),
            Method::GradientShap { samples, stdev, seed }
            | Method::LayerGradientShap { samples, stdev, seed }
            | Method::NeuronGradientShap { samples, stdev, seed } => {
                write!(f, "(samples = {samples}, stdev = {stdev}, seed = {seed})")
            }
            _ => Ok(()),
        }
    }
}

/// A parameter value as written in a query.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Number(f64),
    Bool(bool),
    Text(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Number(n) => write!(f, "{n}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Text(s) => write!(f, "'{s}'"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum ParamKind {
    Int {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
    },
    Bool,
    Choice(&'static [&'static str]),
    /// A file path (a quoted string).
    Path,
}

#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    /// The default as text (for SHOW METHODS), or None if the parameter has no default.
    pub default: Option<&'static str>,
    /// A session setting (SET name = …) that overrides the default when present.
    pub setting: Option<&'static str>,
}

pub struct MethodInfo {
    pub name: &'static str,
    pub family: Family,
    pub needs: Needs,
    /// Whether the method compares against a baseline (BASELINE applies).
    pub baseline: bool,
    pub params: &'static [ParamSpec],
    /// The implementation the method follows to the letter (and is tested against).
    pub reference: &'static str,
    pub summary: &'static str,
}

/// The most steps, samples or window size a query may ask for: far beyond any useful
/// value, and low enough that a typo cannot exhaust memory.
pub const MAX_COUNT: i64 = 1_000_000;

const fn int(name: &'static str, min: i64, default: Option<&'static str>, setting: Option<&'static str>) -> ParamSpec {
    ParamSpec {
        name,
        kind: ParamKind::Int { min, max: MAX_COUNT },
        default,
        setting,
    }
}

const fn float(name: &'static str, min: f64, default: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        kind: ParamKind::Float { min },
        default: Some(default),
        setting: None,
    }
}

const fn flag(name: &'static str, default: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        kind: ParamKind::Bool,
        default: Some(default),
        setting: None,
    }
}

const fn rule(default: &'static str) -> ParamSpec {
    ParamSpec {
        name: "rule",
        kind: ParamKind::Choice(Rule::NAMES),
        default: Some(default),
        setting: None,
    }
}

const STEPS: ParamSpec = int("steps", 1, Some("50"), Some("steps"));

const INTERPOLATE: ParamSpec = ParamSpec {
    name: "interpolate",
    kind: ParamKind::Choice(&["nearest", "bilinear"]),
    default: Some("nearest"),
    setting: None,
};

const LRP_PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "rule",
        kind: ParamKind::Choice(&["epsilon", "gamma", "z_plus", "alpha_beta", "flat", "w_square", "z_box"]),
        default: Some("epsilon"),
        setting: None,
    },
    ParamSpec {
        name: "composite",
        kind: ParamKind::Choice(&["none", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"]),
        default: Some("none"),
        setting: None,
    },
    // Captum's default; Zennit's rules and composites take 1e-6 unless it is given.
    float("epsilon", 0.0, "1e-9"),
    float("gamma", 0.0, "0.25"),
    float("alpha", 0.0, "2"),
    float("beta", 0.0, "1"),
    float("low", f64::NEG_INFINITY, "0"),
    float("high", f64::NEG_INFINITY, "1"),
];

const CAM_PARAMS: &[ParamSpec] = &[flag("normalize", "false"), flag("upsample", "false"), INTERPOLATE];

const fn cam_method(name: &'static str, reference: &'static str, summary: &'static str) -> MethodInfo {
    MethodInfo {
        name,
        family: Family::Gradient,
        needs: Needs::Layer,
        baseline: false,
        params: CAM_PARAMS,
        reference,
        summary,
    }
}

const SEED: ParamSpec = ParamSpec {
    name: "seed",
    kind: ParamKind::Int { min: 0, max: i64::MAX },
    default: Some("0"),
    setting: Some("seed"),
};

const SHAP_PARAMS: &[ParamSpec] = &[int("samples", 1, Some("5"), None), float("stdev", 0.0, "0.0"), SEED];

pub const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "saliency",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: false,
        params: &[ParamSpec {
            name: "abs",
            kind: ParamKind::Bool,
            default: Some("true"),
            setting: None,
        }],
        reference: "Captum Saliency",
        summary: "gradient of the target output (absolute value by default)",
    },
    MethodInfo {
        name: "input_x_gradient",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: false,
        params: &[],
        reference: "Captum InputXGradient",
        summary: "input times gradient",
    },
    MethodInfo {
        name: "integrated_gradients",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: true,
        params: &[STEPS, rule("gausslegendre")],
        reference: "Captum IntegratedGradients",
        summary: "path integral of gradients from the baseline to the input",
    },
    MethodInfo {
        name: "smoothgrad",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: false,
        params: &[
            int("samples", 1, Some("5"), None),
            float("stdev", 0.0, "1.0"),
            SEED,
            ParamSpec {
                name: "abs",
                kind: ParamKind::Bool,
                default: Some("true"),
                setting: None,
            },
            ParamSpec {
                name: "variant",
                kind: ParamKind::Choice(NoiseVariant::NAMES),
                default: Some("smoothgrad"),
                setting: None,
            },
        ],
        reference: "Captum NoiseTunnel(Saliency), nt_type = variant",
        summary: "saliency averaged over noisy copies of the input (or their mean square, or variance)",
    },
    MethodInfo {
        name: "guided_backprop",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: false,
        params: &[],
        reference: "Captum GuidedBackprop",
        summary: "gradient with ReLUs passing only positive gradients of positive inputs",
    },
    MethodInfo {
        name: "deconvolution",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: false,
        params: &[],
        reference: "Captum Deconvolution",
        summary: "gradient with ReLUs applied to the gradient instead of the input",
    },
    MethodInfo {
        name: "occlusion",
        family: Family::Perturbation,
        needs: Needs::Nothing,
        baseline: true,
        params: &[int("window", 1, None, None), int("stride", 1, Some("1"), None)],
        reference: "Captum Occlusion",
        summary: "output change when a sliding window is set to the baseline (mean over covering windows)",
    },
    MethodInfo {
        name: "feature_ablation",
        family: Family::Perturbation,
        needs: Needs::Nothing,
        baseline: true,
        params: &[],
        reference: "Captum FeatureAblation",
        summary: "output change when a feature (or GRANULARITY group) is set to the baseline",
    },
    MethodInfo {
        name: "shapley_sampling",
        family: Family::Perturbation,
        needs: Needs::Nothing,
        baseline: true,
        params: &[int("samples", 1, Some("25"), None), SEED],
        reference: "Captum ShapleyValueSampling",
        summary: "Shapley values estimated from random feature permutations",
    },
    MethodInfo {
        name: "kernel_shap",
        family: Family::Perturbation,
        needs: Needs::Nothing,
        baseline: true,
        params: &[int("samples", 1, Some("25"), None), SEED],
        reference: "Captum KernelShap",
        summary: "Shapley values as a weighted linear regression on random coalitions of features (Shapley kernel)",
    },
    MethodInfo {
        name: "lime",
        family: Family::Perturbation,
        needs: Needs::Nothing,
        baseline: true,
        params: &[
            int("samples", 1, Some("50"), None),
            SEED,
            float("kernel_width", f64::MIN_POSITIVE, "1.0"),
            float("alpha", 0.0, "0.01"),
            ParamSpec {
                name: "distance",
                kind: ParamKind::Choice(&["cosine", "euclidean"]),
                default: Some("cosine"),
                setting: None,
            },
        ],
        reference: "Captum Lime (SkLearnLasso(alpha), exponential kernel of the distance)",
        summary: "a Lasso fitted to random coalitions of features, weighted by their similarity to the input",
    },
    MethodInfo {
        name: "feature_permutation",
        family: Family::Perturbation,
        needs: Needs::Nothing,
        baseline: false,
        params: &[SEED],
        reference: "Captum FeaturePermutation",
        summary: "output drop when a feature (group) is shuffled among the query's inputs",
    },
    MethodInfo {
        name: "deeplift",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: true,
        params: &[],
        reference: "Captum DeepLift (rescale rule)",
        summary: "difference from the baseline times multipliers of the rescale rule (conservative)",
    },
    MethodInfo {
        name: "gradient_shap",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: true,
        params: SHAP_PARAMS,
        reference: "Captum GradientShap",
        summary: "expected input × gradient at random points between the noisy input and baselines drawn from BASELINE d[a:b]",
    },
    MethodInfo {
        name: "deeplift_shap",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: true,
        params: &[],
        reference: "Captum DeepLiftShap",
        summary: "DeepLift against every baseline of BASELINE d[a:b], averaged",
    },
    MethodInfo {
        name: "lrp",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: false,
        params: LRP_PARAMS,
        reference: "Captum LRP (rule epsilon, the default, gamma, z_plus); Zennit 0.5.1 (rule alpha_beta, flat, w_square, z_box; the composites)",
        summary: "relevance of the target propagated back layer by layer: from the target's output by Captum's rules, from 1 (one-hot) by Zennit's",
    },
    MethodInfo {
        name: "guided_gradcam",
        family: Family::Gradient,
        needs: Needs::Layer,
        baseline: false,
        params: &[],
        reference: "Captum GuidedGradCam",
        summary: "guided backprop times the AT LAYER Grad-CAM map upsampled to the input",
    },
    MethodInfo {
        name: "gradcam",
        family: Family::Gradient,
        needs: Needs::Layer,
        baseline: false,
        params: &[
            flag("relu", "false"),
            flag("upsample", "false"),
            flag("per_channel", "false"),
            INTERPOLATE,
        ],
        reference: "Captum LayerGradCam (+ LayerAttribution.interpolate)",
        summary: "channel weights (mean gradient) times activations, summed over channels",
    },
    cam_method(
        "gradcam_plus_plus",
        "pytorch-grad-cam GradCAMPlusPlus",
        "channel weights Σ ReLU(G)·G²/(2G² + ΣA·G³) (Grad-CAM++) times activations",
    ),
    cam_method(
        "xgradcam",
        "pytorch-grad-cam XGradCAM",
        "channel weights Σ G·A / ΣA (XGrad-CAM) times activations",
    ),
    cam_method(
        "hirescam",
        "pytorch-grad-cam HiResCAM",
        "gradient times activation at each position, summed over channels",
    ),
    cam_method(
        "layercam",
        "pytorch-grad-cam LayerCAM",
        "positive gradient times activation at each position, summed over channels",
    ),
    cam_method(
        "eigencam",
        "pytorch-grad-cam EigenCAM",
        "the activations' first principal component (no gradient; sign: largest value positive)",
    ),
    cam_method(
        "eigengradcam",
        "pytorch-grad-cam EigenGradCAM",
        "first principal component of gradient × activation",
    ),
    cam_method(
        "cam",
        "CAM (Zhou et al. 2016)",
        "Σ_k W[class, k]·A_k for a layer followed by global average pooling and a linear head",
    ),
    cam_method(
        "scorecam",
        "pytorch-grad-cam ScoreCAM",
        "channel weights: softmax of the target output on the input masked by each channel's map",
    ),
    cam_method(
        "ablationcam",
        "pytorch-grad-cam AblationCAM",
        "channel weights: the target output's relative drop when the channel is set to 0",
    ),
    MethodInfo {
        name: "fullgrad",
        family: Family::Gradient,
        needs: Needs::Nothing,
        baseline: false,
        params: &[flag("normalize", "false")],
        reference: "pytorch-grad-cam FullGrad",
        summary: "|input × gradient| plus |bias × gradient| of every convolution and batch norm, each plane scaled, at the input's resolution",
    },
    MethodInfo {
        name: "layer_activation",
        family: Family::Gradient,
        needs: Needs::Layer,
        baseline: false,
        params: &[],
        reference: "Captum LayerActivation",
        summary: "the layer's output",
    },
    MethodInfo {
        name: "layer_gradient_x_activation",
        family: Family::Gradient,
        needs: Needs::Layer,
        baseline: false,
        params: &[],
        reference: "Captum LayerGradientXActivation",
        summary: "the layer's output times the target's gradient there",
    },
    MethodInfo {
        name: "layer_deeplift",
        family: Family::Gradient,
        needs: Needs::Layer,
        baseline: true,
        params: &[],
        reference: "Captum LayerDeepLift",
        summary: "the layer's change from the baseline times DeepLift's multipliers there (rescale rule)",
    },
    MethodInfo {
        name: "layer_gradient_shap",
        family: Family::Gradient,
        needs: Needs::Layer,
        baseline: true,
        params: SHAP_PARAMS,
        reference: "Captum LayerGradientShap",
        summary: "gradient_shap at the layer: (h(x̃) − h(b)) × the gradient at random points between them",
    },
    MethodInfo {
        name: "layer_lrp",
        family: Family::Gradient,
        needs: Needs::Layer,
        baseline: false,
        params: LRP_PARAMS,
        reference: "Captum LayerLRP; Zennit's rules and composites as lrp",
        summary: "LRP's relevance at the layer's output (the rules and composites of lrp)",
    },
    MethodInfo {
        name: "layer_conductance",
        family: Family::Gradient,
        needs: Needs::Layer,
        baseline: true,
        params: &[STEPS],
        reference: "Captum LayerConductance",
        summary: "flow of the target's change through each unit along the input path",
    },
    MethodInfo {
        name: "layer_integrated_gradients",
        family: Family::Gradient,
        needs: Needs::Layer,
        baseline: true,
        params: &[STEPS, rule("gausslegendre")],
        reference: "Captum LayerIntegratedGradients",
        summary: "integrated gradients in the layer's output space (the hook point is overwritten)",
    },
    MethodInfo {
        name: "neuron_gradient",
        family: Family::Gradient,
        needs: Needs::Unit,
        baseline: false,
        params: &[],
        reference: "Captum NeuronGradient",
        summary: "gradient of a unit (TARGET l[i]) with respect to the input",
    },
    MethodInfo {
        name: "neuron_guided_backprop",
        family: Family::Gradient,
        needs: Needs::Unit,
        baseline: false,
        params: &[],
        reference: "Captum NeuronGuidedBackprop",
        summary: "guided backprop of a unit (TARGET l[i]): ReLUs pass only positive gradients of positive inputs",
    },
    MethodInfo {
        name: "neuron_deconvolution",
        family: Family::Gradient,
        needs: Needs::Unit,
        baseline: false,
        params: &[],
        reference: "Captum NeuronDeconvolution",
        summary: "deconvolution of a unit (TARGET l[i]): ReLUs applied to the gradient",
    },
    MethodInfo {
        name: "neuron_deeplift",
        family: Family::Gradient,
        needs: Needs::Unit,
        baseline: true,
        params: &[],
        reference: "Captum NeuronDeepLift",
        summary: "DeepLift (rescale rule) of a unit (TARGET l[i]) against the baseline",
    },
    MethodInfo {
        name: "neuron_gradient_shap",
        family: Family::Gradient,
        needs: Needs::Unit,
        baseline: true,
        params: SHAP_PARAMS,
        reference: "Captum NeuronGradientShap",
        summary: "gradient_shap of a unit (TARGET l[i])",
    },
    MethodInfo {
        name: "neuron_integrated_gradients",
        family: Family::Gradient,
        needs: Needs::Unit,
        baseline: true,
        params: &[STEPS, rule("gausslegendre")],
        reference: "Captum NeuronIntegratedGradients",
        summary: "integrated gradients of a unit (TARGET l[i])",
    },
    MethodInfo {
        name: "neuron_conductance",
        family: Family::Gradient,
        needs: Needs::Unit,
        baseline: true,
        params: &[STEPS, rule("riemann_trapezoid")],
        reference: "Captum NeuronConductance",
        summary: "how much of the class output flows through a unit (TARGET l[i]), per input feature",
    },
];

pub fn method_info(name: &str) -> Option<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

/// The methods BASELINE applies to, for hints.
pub fn baseline_methods() -> String {
    METHODS
        .iter()
        .filter(|m| m.baseline)
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn method_names() -> Vec<String> {
    METHODS.iter().map(|m| m.name.to_string()).collect()
}

/// A parameter as given in a query, with where it was written.
pub struct GivenParam<'a> {
    pub name: &'a str,
    pub name_span: Span,
    pub value: ParamValue,
    pub value_span: Span,
}

/// The parameters of a call (a method's or an attack's), checked, with session settings
/// and defaults filling in those not given.
pub struct Params {
    specs: &'static [ParamSpec],
    values: Vec<Option<ParamValue>>,
}

impl Params {
    /// Checks every given parameter's name and range against `specs`; settings (SET)
    /// fill in the ones not given.
    pub fn resolve(
        owner: &str,
        specs: &'static [ParamSpec],
        given: &[GivenParam],
        setting: &dyn Fn(&str) -> Option<ParamValue>,
    ) -> Result<Params> {
        let mut values: Vec<Option<ParamValue>> = vec![None; specs.len()];
        for g in given {
            let Some(pos) = specs.iter().position(|p| p.name.eq_ignore_ascii_case(g.name)) else {
                let known: Vec<String> = specs.iter().map(|p| p.name.to_string()).collect();
                let label = format!("parameters of {owner}");
                let err = if known.is_empty() {
                    Error::name(format!("{owner} takes no parameters"))
                } else {
                    Error::unknown(&format!("parameter of {owner}"), g.name, &known, &label)
                };
                return Err(err.at(g.name_span));
            };
            if values[pos].is_some() {
                return Err(Error::name(format!("parameter `{}` is given twice", g.name)).at(g.name_span));
            }
            check_param(owner, &specs[pos], &g.value).map_err(|e| e.at(g.value_span))?;
            values[pos] = Some(g.value.clone());
        }
        for (spec, v) in specs.iter().zip(values.iter_mut()) {
            if v.is_none()
                && let Some(s) = spec.setting.and_then(setting)
            {
                check_param(owner, spec, &s).map_err(|e| Error {
                    message: format!("{} (from SET {})", e.message, spec.setting.unwrap_or("")),
                    ..e
                })?;
                *v = Some(s);
            }
        }
        Ok(Params { specs, values })
    }

    /// The value given (or set), if any.
    pub fn given(&self, name: &str) -> Option<&ParamValue> {
        self.specs
            .iter()
            .position(|p| p.name == name)
            .and_then(|i| self.values[i].as_ref())
    }

    fn value(&self, name: &str) -> ParamValue {
        if let Some(v) = self.given(name) {
            return v.clone();
        }
        let spec = self.specs.iter().find(|p| p.name == name);
        match spec.and_then(|s| s.default.map(|d| (s.kind, d))) {
            Some((ParamKind::Bool, d)) => ParamValue::Bool(d == "true"),
            Some((ParamKind::Choice(_) | ParamKind::Path, d)) => ParamValue::Text(d.to_string()),
            Some((_, d)) => ParamValue::Number(d.parse().unwrap_or(0.0)),
            None => ParamValue::Number(0.0),
        }
    }

    pub fn num(&self, name: &str) -> f64 {
        match self.value(name) {
            ParamValue::Number(n) => n,
            _ => 0.0,
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.value(name), ParamValue::Bool(true))
    }

    pub fn text(&self, name: &str) -> String {
        match self.value(name) {
            ParamValue::Text(t) => t,
            other => other.to_string(),
        }
    }
}

/// `lrp(…)`'s parameters: a rule or a composite, with the parameters that one uses (a
/// parameter it would ignore is an error, not silently dropped).
fn lrp_spec(params: &Params, given: &[GivenParam]) -> Result<lrp::LrpSpec> {
    use lrp::{Composite, LrpRule};
    let num = |n: &str| params.num(n) as f32;
    let span_of = |n: &str| given.iter().find(|g| g.name == n).map(|g| (g.name_span, g.value_span));
    let rule_name = params.text("rule").to_ascii_lowercase();
    let composite = match params.text("composite").to_ascii_lowercase().as_str() {
        "epsilon_plus_flat" => Some(Composite::EpsilonPlusFlat),
        "epsilon_gamma_box" => Some(Composite::EpsilonGammaBox {
            gamma: num("gamma"),
            low: num("low"),
            high: num("high"),
        }),
        "epsilon_alpha2_beta1" => Some(Composite::EpsilonAlpha2Beta1),
        _ => None,
    };
    if let (Some(c), Some((name, _))) = (composite, span_of("rule")) {
        return Err(Error::value(format!(
            "lrp takes a rule or a composite, not both: composite {} chooses the rule of each layer",
            c.name()
        ))
        .at(name));
    }
    // One of alpha and beta given: the other follows from α − β = 1.
    let (alpha, beta) = match (span_of("alpha"), span_of("beta")) {
        (Some(_), None) => (params.num("alpha"), params.num("alpha") - 1.0),
        (None, Some(_)) => (params.num("beta") + 1.0, params.num("beta")),
        _ => (params.num("alpha"), params.num("beta")),
    };
    let rule = match rule_name.as_str() {
        "gamma" => LrpRule::Gamma(num("gamma")),
        "z_plus" => LrpRule::ZPlus,
        "alpha_beta" => LrpRule::AlphaBeta {
            alpha: alpha as f32,
            beta: beta as f32,
        },
        "flat" => LrpRule::Flat,
        "w_square" => LrpRule::WSquare,
        "z_box" => LrpRule::ZBox {
            low: num("low"),
            high: num("high"),
        },
        _ => LrpRule::Epsilon,
    };
    if matches!(rule, LrpRule::AlphaBeta { .. })
        && composite.is_none()
        && ((alpha - beta - 1.0).abs() > 1e-9 || beta < 0.0)
    {
        let err = Error::value(format!(
            "alpha − beta must be 1 with both ≥ 0 (Zennit's AlphaBeta rule; it conserves relevance only then), got alpha = {alpha}, beta = {beta}"
        ));
        return Err(match span_of("alpha").or(span_of("beta")) {
            Some((_, value)) => err.at(value),
            None => err,
        });
    }
    let box_composite = matches!(composite, Some(Composite::EpsilonGammaBox { .. }));
    let used = |p: &str| match p {
        "gamma" => (composite.is_none() && rule_name == "gamma") || box_composite,
        "alpha" | "beta" => composite.is_none() && rule_name == "alpha_beta",
        "low" | "high" => (composite.is_none() && rule_name == "z_box") || box_composite,
        _ => true,
    };
    if let Some(unused) = given.iter().find(|g| !used(g.name)) {
        let chosen = match composite {
            Some(c) => format!("composite {}", c.name()),
            None => format!("rule {rule_name}"),
        };
        return Err(Error::value(format!("`{}` has no effect with {chosen}", unused.name))
            .at(unused.name_span)
            .hint("gamma goes with rule = gamma or composite = 'epsilon_gamma_box'; alpha and beta with rule = alpha_beta; low and high with rule = z_box or composite = 'epsilon_gamma_box'"));
    }
    let mut spec = lrp::LrpSpec {
        epsilon: num("epsilon"),
        rule,
        composite,
    };
    if spec.zennit() && span_of("epsilon").is_none() {
        spec.epsilon = lrp::ZENNIT_STABILIZER;
    }
    Ok(spec)
}

/// Resolves a method call: checks every parameter's name and range, fills defaults
/// (session settings first), and builds the `Method`.
pub fn resolve_method(
    info: &MethodInfo,
    given: &[GivenParam],
    setting: &dyn Fn(&str) -> Option<ParamValue>,
) -> Result<Method> {
    let params = Params::resolve(info.name, info.params, given, setting)?;
    let (num, flag, text) = (
        |n: &str| params.num(n),
        |n: &str| params.flag(n),
        |n: &str| params.text(n),
    );
    let get = |n: &str| params.given(n);
    let steps_and_rule = || -> Result<(usize, Rule)> {
        let rule = Rule::parse(&text("rule")).unwrap_or(Rule::GaussLegendre);
        let steps = num("steps") as usize;
        if steps < rule.min_steps() {
            let span = given.iter().find(|g| g.name == "steps").map(|g| g.value_span);
            let err = Error::value(format!("steps must be ≥ {} for rule {}", rule.min_steps(), rule.name()));
            return Err(match span {
                Some(s) => err.at(s),
                None => err,
            });
        }
        Ok((steps, rule))
    };
    if let Some(kind) = cam::CamKind::parse(info.name) {
        return Ok(Method::Cam {
            kind,
            normalize: flag("normalize"),
            upsample: flag("upsample"),
            bilinear: text("interpolate").eq_ignore_ascii_case("bilinear"),
        });
    }
    let method = match info.name {
        "saliency" => Method::Saliency { abs: flag("abs") },
        "input_x_gradient" => Method::InputXGradient,
        "integrated_gradients" => {
            let (steps, rule) = steps_and_rule()?;
            Method::IntegratedGradients { steps, rule }
        }
        "deeplift" => Method::DeepLift,
        "deeplift_shap" => Method::DeepLiftShap,
        "gradient_shap" | "layer_gradient_shap" | "neuron_gradient_shap" => {
            let (samples, stdev, seed) = (num("samples") as usize, num("stdev"), num("seed") as u64);
            match info.name {
                "gradient_shap" => Method::GradientShap { samples, stdev, seed },
                "layer_gradient_shap" => Method::LayerGradientShap { samples, stdev, seed },
                _ => Method::NeuronGradientShap { samples, stdev, seed },
            }
        }
        "lrp" | "layer_lrp" => {
            let spec = lrp_spec(&params, given)?;
            if info.name == "lrp" {
                Method::Lrp { spec }
            } else {
                Method::LayerLrp { spec }
            }
        }
        "fullgrad" => Method::FullGrad {
            normalize: flag("normalize"),
        },
        "guided_gradcam" => Method::GuidedGradCam,
        "gradcam" => Method::GradCam {
            relu: flag("relu"),
            upsample: flag("upsample"),
            per_channel: flag("per_channel"),
            bilinear: text("interpolate").eq_ignore_ascii_case("bilinear"),
        },
        "layer_activation" => Method::LayerActivation,
        "layer_gradient_x_activation" => Method::LayerGradientXActivation,
        "layer_deeplift" => Method::LayerDeepLift,
        "layer_conductance" => Method::LayerConductance {
            steps: num("steps") as usize,
        },
        "layer_integrated_gradients" => {
            let (steps, rule) = steps_and_rule()?;
            Method::LayerIntegratedGradients { steps, rule }
        }
        "neuron_gradient" => Method::NeuronGradient,
        "neuron_guided_backprop" => Method::NeuronGuidedBackprop,
        "neuron_deconvolution" => Method::NeuronDeconvolution,
        "neuron_deeplift" => Method::NeuronDeepLift,
        "neuron_integrated_gradients" => {
            let (steps, rule) = steps_and_rule()?;
            Method::NeuronIntegratedGradients { steps, rule }
        }
        "neuron_conductance" => {
            let (steps, rule) = steps_and_rule()?;
            Method::NeuronConductance { steps, rule }
        }
        "smoothgrad" => Method::SmoothGrad {
            samples: num("samples") as usize,
            stdev: num("stdev"),
            seed: num("seed") as u64,
            abs: flag("abs"),
            variant: NoiseVariant::parse(&text("variant")),
        },
        "guided_backprop" => Method::GuidedBackprop,
        "deconvolution" => Method::Deconvolution,
        "occlusion" => Method::Occlusion {
            window: get("window").map(|_| num("window") as usize),
            stride: get("stride").map(|_| num("stride") as usize),
        },
        "feature_ablation" => Method::FeatureAblation,
        "shapley_sampling" => Method::ShapleySampling {
            samples: num("samples") as usize,
            seed: num("seed") as u64,
        },
        "kernel_shap" => Method::KernelShap {
            samples: num("samples") as usize,
            seed: num("seed") as u64,
        },
        "lime" => Method::Lime {
            samples: num("samples") as usize,
            seed: num("seed") as u64,
            kernel_width: num("kernel_width"),
            alpha: num("alpha"),
            euclidean: text("distance").eq_ignore_ascii_case("euclidean"),
        },
        "feature_permutation" => Method::FeaturePermutation {
            seed: num("seed") as u64,
        },
        other => {
            return Err(Error::name(format!("method `{other}` has no implementation")));
        }
    };
    Ok(method)
}

fn check_param(owner: &str, spec: &ParamSpec, value: &ParamValue) -> Result<()> {
    let name = spec.name;
    match (spec.kind, value) {
        (ParamKind::Int { min, max }, ParamValue::Number(n)) => {
            if n.fract() != 0.0 {
                Err(Error::value(format!("{name} must be a whole number, got {n}")))
            } else if *n < min as f64 {
                Err(Error::value(format!("{name} must be ≥ {min}, got {n}")))
            } else if *n > max as f64 {
                Err(Error::value(format!("{name} must be ≤ {max}, got {n}")))
            } else {
                Ok(())
            }
        }
        (ParamKind::Float { min }, ParamValue::Number(n)) => {
            if !n.is_finite() || *n < min {
                Err(Error::value(format!("{name} must be a number ≥ {min}, got {n}")))
            } else {
                Ok(())
            }
        }
        (ParamKind::Bool, ParamValue::Bool(_)) => Ok(()),
        (ParamKind::Path, ParamValue::Text(_)) => Ok(()),
        (ParamKind::Choice(choices), ParamValue::Text(t)) => {
            if choices.iter().any(|c| c.eq_ignore_ascii_case(t)) || (name == "rule" && Rule::parse(t).is_some()) {
                Ok(())
            } else {
                let known: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
                Err(Error::unknown(&format!("{name} for {owner}"), t, &known, "accepted"))
            }
        }
        (kind, v) => {
            let want = match kind {
                ParamKind::Int { .. } => "a whole number",
                ParamKind::Float { .. } => "a number",
                ParamKind::Bool => "true or false",
                ParamKind::Path => "a quoted file path",
                ParamKind::Choice(c) => {
                    return Err(Error::value(format!("{name} must be one of {}, got {v}", c.join(", "))));
                }
            };
            Err(Error::value(format!("{name} must be {want}, got {v}")))
        }
    }
}

/// Cooperative cancellation and progress, checked between tiles.
pub struct Control<'a> {
    pub cancel: &'a AtomicBool,
    pub done: AtomicUsize,
    pub on_progress: Option<&'a (dyn Fn(usize) + Sync)>,
}

impl<'a> Control<'a> {
    pub fn new(cancel: &'a AtomicBool) -> Self {
        Control {
            cancel,
            done: AtomicUsize::new(0),
            on_progress: None,
        }
    }
    pub fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Error::cancelled())
        } else {
            Ok(())
        }
    }
    pub fn advance(&self, units: usize) {
        let done = self.done.fetch_add(units, Ordering::Relaxed) + units;
        if let Some(f) = self.on_progress {
            f(done);
        }
    }
}

/// An axis-aligned box of an image: channels, rows and columns (half-open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub channels: (usize, usize),
    pub rows: (usize, usize),
    pub cols: (usize, usize),
}

/// The features a query attributes (its window) and how they are grouped.
#[derive(Clone, Debug)]
pub struct Features {
    /// For each feature, its group, or `OUTSIDE` if it lies outside the window.
    pub group_of: Vec<u32>,
    pub groups: usize,
    /// The image layout (channels, height, width) and the window's box, for occlusion.
    pub image: Option<((usize, usize, usize), Rect)>,
    /// For tabular data, the window's features in order (occlusion slides along them).
    pub order: Vec<usize>,
}

pub const OUTSIDE: u32 = u32::MAX;

impl Features {
    pub fn len(&self) -> usize {
        self.group_of.len()
    }
    pub fn is_empty(&self) -> bool {
        self.group_of.is_empty()
    }
    pub fn in_window(&self, f: usize) -> bool {
        self.group_of[f] != OUTSIDE
    }
    /// Projection of a baseline (or noisy copy) onto the window: outside it, the
    /// features take the input's values.
    pub fn hold_outside(&self, row: &mut [f32], input: &[f32]) {
        for (f, v) in row.iter_mut().enumerate() {
            if !self.in_window(f) {
                *v = input[f];
            }
        }
    }

    /// The features of each group, in feature order.
    pub fn members(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.groups];
        for (f, &g) in self.group_of.iter().enumerate() {
            if g != OUTSIDE {
                out[g as usize].push(f);
            }
        }
        out
    }
}

/// Everything a method needs for one batch of inputs.
pub struct Request<'a> {
    pub model: &'a Model,
    /// n inputs of `model.input_len()` features each.
    pub inputs: &'a [f32],
    /// n baselines, already equal to the input outside the window; for the methods that
    /// draw baselines from a distribution (`Method::draws_baselines`), the
    /// distribution's rows (any number, as given: the method projects each draw).
    pub baselines: &'a [f32],
    pub targets: &'a [usize],
    /// Input ids, which seed the random streams of stochastic methods.
    pub ids: &'a [i64],
    pub features: &'a Features,
    /// The most rows one forward pass may hold.
    pub batch_rows: usize,
    pub control: &'a Control<'a>,
    /// The layer whose output holds the `targets`: the model's last layer for classes,
    /// the unit's layer with `TARGET l[i]`.
    pub out_layer: usize,
    /// AT LAYER: the hook point layer methods (and guided Grad-CAM) attribute to.
    pub layer: Option<usize>,
    /// For neuron_conductance: the unit (layer, flat index) the target output flows through.
    pub neuron: Option<(usize, usize)>,
    /// The AT LAYER layer's activations on the inputs (n × its units), when the
    /// activation cache has them: the layer methods then skip the head's forward pass.
    pub layer_values: Option<&'a [f32]>,
    /// Set when the targets are the predicted classes and not yet known (`targets` then
    /// holds placeholders): the method finds each input's prediction in its own forward
    /// pass, saving the pass that would find it first, and leaves the outputs here.
    pub predicted: Option<&'a PredictedOutputs>,
    /// Forward passes kept from an earlier query on the same inputs (a drill-down): a
    /// layer method whose layer they cover runs only the backward part.
    pub kept: Option<&'a KeptTapes>,
    /// Where a layer method leaves the passes it ran from its layer, for the next query.
    pub keep: Option<&'a TapeSink>,
}

/// Forward passes over a request's inputs, in order, tile by tile, each from one hook
/// point to the model's output, keeping what a backward needs.
pub struct KeptTapes {
    pub tapes: Vec<crate::model::Tape>,
}

impl KeptTapes {
    /// The first layer the passes ran.
    pub fn start(&self) -> usize {
        self.tapes.first().map_or(usize::MAX, |t| t.start)
    }
    /// One past the last layer the passes ran.
    pub fn end(&self) -> usize {
        self.tapes.first().map_or(0, |t| t.end())
    }
    /// Whether they hold `layer`'s value and every layer after it, for `n` inputs.
    pub fn covers(&self, layer: usize, n: usize) -> bool {
        self.start() <= layer + 1 && self.tapes.iter().map(|t| t.rows()).sum::<usize>() == n
    }
    pub fn bytes(&self) -> usize {
        self.tapes.iter().map(|t| t.bytes()).sum()
    }
}

/// The passes a method ran, left for the caller to keep.
#[derive(Default)]
pub struct TapeSink(std::sync::Mutex<Option<KeptTapes>>);

impl TapeSink {
    pub fn put(&self, tapes: KeptTapes) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(tapes);
        }
    }
    pub fn take(&self) -> Option<KeptTapes> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The model outputs a method that predicts its own targets leaves (n × outputs).
#[derive(Default)]
pub struct PredictedOutputs(std::sync::Mutex<Option<Vec<f32>>>);

impl PredictedOutputs {
    pub fn put(&self, outputs: Vec<f32>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(outputs);
        }
    }
    pub fn take(&self) -> Option<Vec<f32>> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// Whether `method` can find the predicted classes it explains in its own forward pass
/// (one forward and one backward from the output, for all its inputs).
pub fn predicts_own_targets(method: &Method) -> bool {
    matches!(
        method,
        Method::Saliency { .. }
            | Method::InputXGradient
            | Method::GuidedBackprop
            | Method::Deconvolution
            | Method::DeepLift
            | Method::Lrp { .. }
            | Method::GradCam { .. }
            | Method::Cam { .. }
            | Method::LayerGradientXActivation
    )
}

impl Request<'_> {
    pub fn n(&self) -> usize {
        self.targets.len()
    }
    pub fn d(&self) -> usize {
        self.model.input_len()
    }
    pub fn input(&self, i: usize) -> &[f32] {
        &self.inputs[i * self.d()..(i + 1) * self.d()]
    }
    pub fn baseline(&self, i: usize) -> &[f32] {
        &self.baselines[i * self.d()..(i + 1) * self.d()]
    }
}

/// Per-feature attributions (n × d, Captum's layout; zero outside the window) of the
/// methods that attribute input features.
pub fn attribute(method: &Method, req: &Request) -> Result<Vec<f32>> {
    if req.model.text.is_some() || req.model.token_embedding().is_some() {
        return text_attribute(method, req);
    }
    match method {
        Method::Saliency { .. }
        | Method::InputXGradient
        | Method::SmoothGrad { .. }
        | Method::GuidedBackprop
        | Method::Deconvolution
        | Method::DeepLift
        | Method::Lrp { .. } => gradient::attribute(method, req),
        // Captum's NeuronGradient is the signed gradient of the unit.
        Method::NeuronGradient => gradient::attribute(&Method::Saliency { abs: false }, req),
        // The unit is the target (`req.out_layer`, `req.targets`): the rules as for a class.
        Method::NeuronGuidedBackprop => gradient::attribute(&Method::GuidedBackprop, req),
        Method::NeuronDeconvolution => gradient::attribute(&Method::Deconvolution, req),
        Method::NeuronDeepLift => gradient::attribute(&Method::DeepLift, req),
        Method::GradientShap { samples, stdev, seed } | Method::NeuronGradientShap { samples, stdev, seed } => {
            shap::gradient_shap(req, *samples, *stdev, *seed)
        }
        Method::DeepLiftShap => shap::deeplift_shap(req),
        Method::IntegratedGradients { steps, rule } | Method::NeuronIntegratedGradients { steps, rule } => {
            integrated::attribute(*steps, *rule, req)
        }
        Method::Occlusion { .. }
        | Method::FeatureAblation
        | Method::ShapleySampling { .. }
        | Method::KernelShap { .. }
        | Method::Lime { .. }
        | Method::FeaturePermutation { .. } => perturbation::attribute(method, req),
        Method::NeuronConductance { steps, rule } => layer::neuron_conductance(*steps, *rule, req),
        Method::GuidedGradCam => layer::guided_gradcam(req),
        Method::FullGrad { normalize } => cam::fullgrad(req, *normalize),
        Method::GradCam { .. }
        | Method::Cam { .. }
        | Method::LayerLrp { .. }
        | Method::LayerDeepLift
        | Method::LayerGradientShap { .. }
        | Method::LayerActivation
        | Method::LayerGradientXActivation
        | Method::LayerConductance { .. }
        | Method::LayerIntegratedGradients { .. } => Err(Error::value(format!(
            "{} attributes the units of a layer, not input features",
            method.name()
        ))),
    }
}

/// A text model's inputs are token ids, which have no gradient: integrated gradients
/// runs on the embedding layer (Captum's LayerIntegratedGradients on the embeddings)
/// and each token's attribution is the sum over its embedding; the perturbation methods
/// replace tokens by the baseline's ([PAD] by default). A model of token or byte ids
/// without a tokenizer (an ONNX export) is attributed through the lookup of its ids in
/// the embedding table (LayerIntegratedGradients on the word embeddings), against the
/// baseline's ids (0 by default).
fn text_attribute(method: &Method, req: &Request) -> Result<Vec<f32>> {
    match method {
        Method::IntegratedGradients { steps, rule } => {
            let layer = if req.model.text.is_some() {
                req.model.embeddings_layer()
            } else {
                req.model.token_embedding()
            }
            .ok_or_else(|| {
                Error::model("this text model has no `embeddings` hook point for integrated gradients to start at")
            })?;
            let at_embeddings = Request {
                layer: Some(layer),
                layer_values: None,
                predicted: None,
                kept: None,
                keep: None,
                ..*req
            };
            let lig = Method::LayerIntegratedGradients {
                steps: *steps,
                rule: *rule,
            };
            let result = layer::attribute(&lig, &at_embeddings)?;
            let tokens = req.d();
            let dim = result.values.len() / (req.n() * tokens).max(1);
            let mut out: Vec<f32> = result.values.chunks(dim.max(1)).map(|e| e.iter().sum()).collect();
            gradient::zero_outside_window(&mut out, req);
            Ok(out)
        }
        m if m.family() == Family::Perturbation => perturbation::attribute(method, req),
        other => Err(Error::value(format!(
            "{} needs the gradient with respect to the input, and token ids have none",
            other.name()
        ))
        .hint("on text use integrated_gradients (through the embeddings), occlusion, feature_ablation or shapley_sampling, or AT LAYER embeddings with a layer method")),
    }
}
