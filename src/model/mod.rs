//! Models with hook points. A model is a sequence of named layers over `Batch`es; every
//! layer's output is a hook point that a forward pass can read (record into the
//! activation cache) or overwrite (patching, layer integrated gradients). The backward
//! pass is layer-wise and computes input gradients only; a `BackwardRule` may replace
//! any layer's backward (guided backprop, deconvolution, DeepLift).

pub mod arch;
pub mod bert;
pub mod graph_ops;
pub mod kernels;
pub mod layer;
pub mod loader;
pub mod local;
pub mod onnx;
pub mod tensor;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use layer::{Layer, Memo, Op};
pub use tensor::Batch;

use crate::data::fmt_shape;
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Model {
    /// The name given in the architecture file.
    pub arch_name: String,
    /// Where the weights came from.
    pub source: String,
    pub input_shape: Vec<usize>,
    /// Shared: a copy with activation edits (`with_patches`) shares the weights.
    pub layers: std::sync::Arc<Vec<Layer>>,
    /// Forward passes run so far (a pass over a batch counts once), for tests and PLAN.
    pub passes: AtomicUsize,
    /// Activation edits applied in every forward pass (and undone in the backward).
    pub patches: Vec<Patch>,
    /// Other names of hook points (an ONNX node's name, the module it belongs to).
    pub aliases: std::collections::BTreeMap<String, usize>,
    /// A text model's tokenizer (its inputs are token ids).
    pub text: Option<std::sync::Arc<crate::data::text::TextCodec>>,
    /// An ONNX graph with symbolic input axes: this model only lists its nodes, and the
    /// graph is bound to the shape of the data it meets (`DynamicGraph::bind`).
    pub dynamic: Option<std::sync::Arc<onnx::DynamicGraph>>,
    /// A text model that can be built again for another sequence length: the data it
    /// meets, padded only to their longest text, run the model built for that length.
    pub lengths: Option<std::sync::Arc<Lengths>>,
}

/// A text model's builds for the sequence lengths it has met (the few most recent kept:
/// each holds its own weights).
pub struct Lengths {
    build: Box<dyn Fn(usize) -> Result<Model> + Send + Sync>,
    built: std::sync::Mutex<Vec<(usize, std::sync::Arc<Model>)>>,
}

/// Builds a text model keeps besides the one it was loaded as.
const LENGTHS_KEPT: usize = 4;

impl std::fmt::Debug for Lengths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built: Vec<usize> = self
            .built
            .lock()
            .map(|b| b.iter().map(|(l, _)| *l).collect())
            .unwrap_or_default();
        write!(f, "Lengths(built for {built:?})")
    }
}

impl Lengths {
    pub fn new(build: impl Fn(usize) -> Result<Model> + Send + Sync + 'static) -> Lengths {
        Lengths {
            build: Box::new(build),
            built: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The model for texts of `length` tokens, built on first use.
    pub fn bind(&self, length: usize) -> Result<std::sync::Arc<Model>> {
        let poisoned = || Error::model("internal: a poisoned lock");
        if let Some(m) = self
            .built
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .find(|(l, _)| *l == length)
        {
            return Ok(m.1.clone());
        }
        // Built outside the lock: a build reads the weights again.
        let model = std::sync::Arc::new((self.build)(length)?);
        if model.input_len() != length {
            return Err(Error::shape(format!(
                "`{}` takes at most {} tokens; these texts hold {length}",
                model.source,
                model.input_len()
            )));
        }
        let mut built = self.built.lock().map_err(|_| poisoned())?;
        if built.len() >= LENGTHS_KEPT {
            built.remove(0);
        }
        built.push((length, model.clone()));
        Ok(model)
    }
}

/// An activation edit at a hook point: a block of units of a layer's output set, scaled
/// or replaced by given values, in every row of every forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Patch {
    pub layer: usize,
    pub units: std::ops::Range<usize>,
    pub action: PatchAction,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PatchAction {
    Set(f32),
    Scale(f32),
    /// The block's values (a donor input's activations).
    Values(Vec<f32>),
}

impl Patch {
    fn apply(&self, y: &mut Batch) {
        for r in 0..y.rows() {
            let block = &mut y.row_mut(r)[self.units.clone()];
            match &self.action {
                PatchAction::Set(v) => block.fill(*v),
                PatchAction::Scale(s) => block.iter_mut().for_each(|x| *x *= s),
                PatchAction::Values(v) => block.copy_from_slice(v),
            }
        }
    }

    /// The gradient at the edited output → the gradient at the layer's own output: a
    /// set or patched unit no longer depends on it, a scaled one by the factor.
    fn backward(&self, g: &mut Batch) {
        for r in 0..g.rows() {
            let block = &mut g.row_mut(r)[self.units.clone()];
            match &self.action {
                PatchAction::Scale(s) => block.iter_mut().for_each(|x| *x *= s),
                PatchAction::Set(_) | PatchAction::Values(_) => block.fill(0.0),
            }
        }
    }
}

/// The values of one forward pass: `values[0]` is the input of layer `start`, and
/// `values[i + 1]` the output of layer `start + i` (its hook point). A pass that keeps
/// nothing leaves only the values still to be read (the others are empty).
#[derive(Debug)]
pub struct Tape {
    pub start: usize,
    pub values: Vec<Batch>,
    memos: Vec<Memo>,
    /// A patched layer's own output before its patches (its backward needs that one).
    unpatched: Vec<Option<Batch>>,
    /// For each layer run, the positions in `values` of its inputs (from `CARRIED` on:
    /// positions in `carried`).
    reads: Vec<Vec<usize>>,
    /// Values from before the pass's first layer that its layers read (see `run_in`).
    carried: Vec<Batch>,
}

/// Reads at or past this position are of a carried value.
const CARRIED: usize = usize::MAX / 2;

impl Tape {
    /// The last value computed (the logits for a full forward).
    pub fn output(&self) -> &Batch {
        self.values.last().expect("a tape holds at least its input")
    }
    pub fn into_output(mut self) -> Batch {
        self.values.pop().expect("a tape holds at least its input")
    }
    /// The output of `layer`, if this pass computed and kept it.
    pub fn hook(&self, layer: usize) -> Option<&Batch> {
        layer.checked_sub(self.start).and_then(|i| self.values.get(i + 1))
    }
    /// The value at hook point `layer` if this pass holds it: a layer it ran and kept, or
    /// the one just before its first (its input).
    pub fn at_hook(&self, layer: usize) -> Option<&Batch> {
        if layer + 1 == self.start {
            self.values.first()
        } else {
            self.hook(layer)
        }
    }
    /// One past the last layer the pass ran.
    pub fn end(&self) -> usize {
        self.start + self.values.len() - 1
    }
    /// Rows in the pass.
    pub fn rows(&self) -> usize {
        self.values.first().map_or(0, Batch::rows)
    }
    /// The bytes the kept values and memos hold.
    pub fn bytes(&self) -> usize {
        let values: usize = self
            .values
            .iter()
            .chain(self.unpatched.iter().flatten())
            .map(|v| v.data().len())
            .sum();
        let memos: usize = self
            .memos
            .iter()
            .map(|m| match m {
                Memo::None => 0,
                Memo::Argmax(a) => a.len(),
            })
            .sum();
        4 * (values + memos)
    }
    /// The (first) input of `layer`, if this pass computed and kept it.
    pub fn input_of(&self, layer: usize) -> Option<&Batch> {
        let reads = self.reads.get(layer.checked_sub(self.start)?)?;
        self.value(*reads.first()?)
    }
    fn value(&self, position: usize) -> Option<&Batch> {
        match position.checked_sub(CARRIED) {
            Some(k) => self.carried.get(k),
            None => self.values.get(position),
        }
    }
    /// What `layer`'s forward kept for its backward.
    pub fn memo(&self, layer: usize) -> Option<&Memo> {
        layer.checked_sub(self.start).and_then(|i| self.memos.get(i))
    }
}

/// Called with each layer's index and output during a forward pass; it may read the
/// output (record it) or overwrite it (patch it).
pub type Hook<'a> = &'a (dyn Fn(usize, &mut Batch) -> Result<()> + Sync);

/// Which part of the model to run and what to keep.
#[derive(Clone, Copy)]
pub struct Forward<'a> {
    /// First layer to run; the input is what that layer consumes.
    pub from: usize,
    /// One past the last layer to run.
    pub to: usize,
    /// Keep every value and memo for a backward pass.
    pub keep: bool,
    pub hook: Option<Hook<'a>>,
}

/// One layer's backward: its input `x`, output `y`, what its forward kept, and the
/// gradient `gy` arriving at its output.
pub struct Step<'a> {
    pub index: usize,
    pub layer: &'a Layer,
    pub x: &'a Batch,
    pub y: &'a Batch,
    pub memo: &'a Memo,
    pub gy: &'a Batch,
}

impl Step<'_> {
    /// The layer's own backward (the plain gradient).
    pub fn gradient(&self) -> Result<Batch> {
        self.layer.backward(self.x, self.y, self.memo, self.gy)
    }
}

/// Replaces the backward of chosen layers. Returning `None` keeps the layer's gradient.
pub trait BackwardRule: Sync {
    fn backward(&self, step: &Step) -> Option<Result<Batch>>;

    /// The gradient for each input of a layer of several inputs (`None`: the layer's own).
    fn backward_args(
        &self,
        _layer: &Layer,
        _args: &[&Batch],
        _y: &Batch,
        _gy: &Batch,
    ) -> Option<Result<Vec<Option<Batch>>>> {
        None
    }
}

/// The plain gradient: no layer's backward is replaced.
pub struct Gradient;

impl BackwardRule for Gradient {
    fn backward(&self, _: &Step) -> Option<Result<Batch>> {
        None
    }
}

impl Model {
    /// Loads weights (safetensors or .pth) with an architecture file, checking every
    /// tensor's shape against the architecture.
    pub fn load(weights: &Path, arch: &Path) -> Result<Model> {
        let arch_shown = arch.display().to_string();
        let text = std::fs::read_to_string(arch)
            .map_err(|e| Error::io(format!("cannot read architecture {arch_shown}: {e}")))?;
        let spec = arch::Arch::parse(&text, &arch_shown)?;
        let tensors = loader::read_weights(weights)?;
        let layers = spec.build(tensors, &weights.display().to_string())?;
        Ok(Model {
            arch_name: spec.name,
            source: weights.display().to_string(),
            input_shape: spec.input_shape,
            layers: std::sync::Arc::new(layers),
            passes: AtomicUsize::new(0),
            patches: Vec::new(),
            aliases: Default::default(),
            text: None,
            dynamic: None,
            lengths: None,
        })
    }

    /// A copy of the model whose forward passes apply `patches` (activation edits).
    pub fn with_patches(&self, patches: Vec<Patch>) -> Model {
        Model {
            arch_name: self.arch_name.clone(),
            source: self.source.clone(),
            input_shape: self.input_shape.clone(),
            layers: self.layers.clone(),
            passes: AtomicUsize::new(0),
            patches,
            aliases: self.aliases.clone(),
            text: self.text.clone(),
            dynamic: self.dynamic.clone(),
            lengths: self.lengths.clone(),
        }
    }

    /// A copy with the weights and biases of `layers` (linear or convolution) drawn again
    /// as torch initialises them — uniform in ±1/√fan_in — from the engine's generator
    /// (seed, layer index), the weights first, then the bias; no activation edits.
    pub fn reinitialised(&self, layers: &[usize], seed: u64) -> Result<Model> {
        let mut copy: Vec<Layer> = self.layers.as_ref().clone();
        for &l in layers {
            let layer = copy
                .get_mut(l)
                .ok_or_else(|| Error::model(format!("internal: no layer {l} to re-initialise")))?;
            let mut rng = crate::ops::rng::Rng::new(seed, l as u64);
            let name = layer.name.clone();
            // Linear and convolution layers (a transposed convolution lays its weights out
            // otherwise: refused); torch's fan-in is the weights per output (channel).
            let Some((weight, bias, Some(out))) = layer.op.weights_mut() else {
                return Err(Error::model(format!("layer {name} has no weights to re-initialise")));
            };
            let bound = 1.0 / ((weight.len() / out.max(1)).max(1) as f64).sqrt();
            for v in weight.iter_mut().chain(bias.iter_mut().flatten()) {
                *v = (bound * (2.0 * rng.uniform() - 1.0)) as f32;
            }
        }
        Ok(Model {
            layers: std::sync::Arc::new(copy),
            ..self.with_patches(Vec::new())
        })
    }

    /// The flat length of one output (the number of classes of a classifier).
    pub fn output_len(&self) -> usize {
        self.layers.last().map_or(0, |l| l.out_shape.iter().product())
    }

    /// The fewest inputs that give a wide linear layer's product (a transformer's layers
    /// see one row per token) the rows gemm runs efficiently, so that a forward in chunks
    /// does not starve it.
    pub fn inputs_for_wide_products(&self) -> usize {
        self.layers
            .iter()
            .filter_map(|l| match &l.op {
                Op::Linear { inp, out, .. } if kernels::is_wide(*inp, *out) => {
                    let per_input = l.in_shape.iter().product::<usize>() / inp.max(&1);
                    Some(kernels::WIDE_EFFICIENT_ROWS.div_ceil(per_input.max(1)))
                }
                _ => None,
            })
            .max()
            .unwrap_or(1)
    }

    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// A text model's embedding layer, where integrated gradients on text runs: the hook
    /// point `embeddings`, or a module of that name inside the model (`bert.embeddings`).
    pub fn embeddings_layer(&self) -> Option<usize> {
        self.layer_index(bert::EMBEDDINGS).or_else(|| {
            let suffix = format!(".{}", bert::EMBEDDINGS);
            self.aliases
                .iter()
                .filter(|(name, _)| name.ends_with(&suffix))
                .min_by_key(|(name, _)| name.len())
                .map(|(_, i)| *i)
        })
    }

    /// Whether the input is a volume `[channels, depth, height, width]` that 3-D
    /// convolutions or pools read (translated into depth slices of 2-D ones).
    pub fn is_volume(&self) -> bool {
        self.input_shape.len() == 4
            && self
                .layers
                .iter()
                .any(|l| l.kind.starts_with("Conv3d") || l.kind.starts_with("Pool3d"))
    }

    /// The layer that looks the model's input up in a table (token or byte ids into an
    /// embedding), reached from the input through casts and reshapes only.
    pub fn token_embedding(&self) -> Option<usize> {
        let mut passes = vec![true];
        for (i, l) in self.layers.iter().enumerate() {
            let from_input = l.inputs.first().is_some_and(|&v| passes[v]);
            if from_input && matches!(l.op, Op::Embedding { .. }) {
                return Some(i);
            }
            passes.push(from_input && matches!(l.op, Op::Map(_) | Op::Select(_) | Op::Flatten | Op::Identity));
        }
        None
    }

    /// The input's sample shape as shown: symbolic axes by name (`[3, height, width]`).
    pub fn input_text(&self) -> String {
        match &self.dynamic {
            Some(g) => g.shape_text(),
            None => fmt_shape(&self.input_shape),
        }
    }

    /// Whether the input is a sequence `[channels, length]` that 1-D convolutions or pools
    /// read (a layer reading a rank-2 value as a one-row image).
    pub fn is_sequence(&self) -> bool {
        self.input_shape.len() == 2
            && self.layers.iter().any(|l| {
                l.in_shape.len() == 2
                    && matches!(
                        l.op,
                        Op::Conv2d { .. } | Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::AdaptiveAvgPool2d { .. }
                    )
            })
    }

    /// The hook point called `name`, or one of its aliases.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        self.layers
            .iter()
            .position(|l| l.name == name)
            .or_else(|| self.aliases.get(name).copied())
    }

    pub fn layer_names(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.name.clone()).collect()
    }

    pub fn param_count(&self) -> usize {
        self.layers.iter().map(|l| l.op.param_count()).sum()
    }

    /// The full model, keeping values for a backward pass.
    pub fn full(&self) -> Forward<'static> {
        Forward {
            from: 0,
            to: self.layers.len(),
            keep: true,
            hook: None,
        }
    }

    /// The model cut after `layer`, with a linear head (`weight`: outputs × the layer's
    /// units) in place of the rest: the truncated model f_l of selection through a layer.
    pub fn cut_with_head(&self, layer: usize, weight: Vec<f32>, bias: Vec<f32>) -> Model {
        let name = format!("{} cut at {} + probe", self.arch_name, self.layers[layer].name);
        self.linear_head(layer, weight, bias, "probe", name)
    }

    /// The model up to `layer`, then a linear layer called `head` (flattening first when
    /// the layer's output is not a vector).
    fn linear_head(&self, layer: usize, weight: Vec<f32>, bias: Vec<f32>, head: &str, arch_name: String) -> Model {
        let mut layers: Vec<Layer> = self.layers[..=layer].to_vec();
        let shape = self.layers[layer].out_shape.clone();
        let units: usize = shape.iter().product();
        if shape.len() != 1 {
            layers.push(Layer {
                name: format!("{head}_flatten"),
                kind: "Flatten".into(),
                op: Op::Flatten,
                inputs: vec![layers.len()],
                in_shape: shape,
                out_shape: vec![units],
            });
        }
        let out = bias.len();
        layers.push(Layer {
            name: head.into(),
            kind: "Linear".into(),
            inputs: vec![layers.len()],
            op: Op::Linear {
                inp: units,
                out,
                weight,
                bias: Some(bias),
                transposed: Default::default(),
            },
            in_shape: vec![units],
            out_shape: vec![out],
        });
        Model {
            arch_name,
            source: self.source.clone(),
            input_shape: self.input_shape.clone(),
            layers: std::sync::Arc::new(layers),
            passes: AtomicUsize::new(0),
            patches: self.patches.iter().filter(|p| p.layer <= layer).cloned().collect(),
            aliases: self.aliases.clone(),
            text: self.text.clone(),
            dynamic: self.dynamic.clone(),
            lengths: self.lengths.clone(),
        }
    }

    /// The model with a linear head read from a safetensors file on its output: one 2-D
    /// tensor (the weight, outputs × the model's outputs, as PyTorch's Linear) and an
    /// optional 1-D bias. Its hook point is `head`.
    pub fn with_head_file(&self, path: &Path) -> Result<Model> {
        let shown = path.display().to_string();
        let tensors = loader::read_weights(path)?;
        let units = self.output_len();
        let mut weight = None;
        let mut bias = None;
        for (name, w) in tensors {
            match w.shape.as_slice() {
                [_, i] if *i == units && weight.is_none() => weight = Some(w),
                [_] if bias.is_none() => bias = Some((name, w)),
                other => {
                    return Err(Error::model(format!(
                        "head {shown}: tensor `{name}` of shape {other:?} is neither a weight [k, {units}] nor a bias [k]"
                    )));
                }
            }
        }
        let weight = weight.ok_or_else(|| {
            Error::model(format!(
                "head {shown} has no weight of shape [k, {units}] (the model has {units} outputs)"
            ))
        })?;
        let k = weight.shape[0];
        let bias = match bias {
            Some((_, b)) if b.shape == [k] => b.data,
            Some((name, b)) => {
                return Err(Error::model(format!(
                    "head {shown}: bias `{name}` has {} values for {k} outputs",
                    b.data.len()
                )));
            }
            None => vec![0.0; k],
        };
        let name = format!("{} + head", self.arch_name);
        Ok(self.linear_head(self.layers.len() - 1, weight.data, bias, "head", name))
    }

    /// The model with a head computing the cosine similarity of its output with
    /// `reference` (one output of the model): one output unit, the similarity.
    pub fn with_cosine_head(&self, reference: &[f32]) -> Result<Model> {
        use graph_ops::{Arg, MapFn, Nary, NaryKind, Reduce, ReduceKind};
        let shape = self.layers.last().map(|l| l.out_shape.clone()).unwrap_or_default();
        let units: usize = shape.iter().product();
        if reference.len() != units {
            return Err(Error::shape(format!(
                "the reference has {} values, the model's output {units}",
                reference.len()
            )));
        }
        let norm = reference.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(Error::value(
                "the reference's output is zero: its similarity is undefined",
            ));
        }
        let mut layers: Vec<Layer> = self.layers.to_vec();
        let value = |k: usize| Arg::input(k, None);
        let sum = || {
            Op::Reduce(Reduce {
                kind: ReduceKind::Sum,
                map: vec![0; units],
                count: units,
            })
        };
        let out = layers.len();
        let mut push = |name: &str, op: Op, inputs: Vec<usize>, in_shape: Vec<usize>, out_shape: Vec<usize>| {
            let kind = name.to_string();
            layers.push(Layer {
                name: format!("similarity.{name}"),
                kind,
                op,
                inputs,
                in_shape,
                out_shape,
            });
            layers.len()
        };
        let scaled: Vec<f32> = reference.iter().map(|v| (*v as f64 / norm) as f32).collect();
        let product = Op::Nary(Nary {
            kind: NaryKind::Mul,
            args: vec![value(0), Arg::constant(scaled, None)],
        });
        let weighted = push("product", product, vec![out], shape.clone(), shape.clone());
        let dot = push("dot", sum(), vec![weighted], shape.clone(), vec![1]);
        let square = Op::Nary(Nary {
            kind: NaryKind::Mul,
            args: vec![value(0), value(0)],
        });
        let squares = push("square", square, vec![out], shape.clone(), shape.clone());
        let sq = push("square_sum", sum(), vec![squares], shape.clone(), vec![1]);
        let length = push("norm", Op::Map(MapFn::Sqrt), vec![sq], vec![1], vec![1]);
        let cosine = Op::Nary(Nary {
            kind: NaryKind::Div,
            args: vec![value(0), value(1)],
        });
        push("cosine", cosine, vec![dot, length], vec![1], vec![1]);
        Ok(Model {
            arch_name: format!("{} with a similarity head", self.arch_name),
            source: self.source.clone(),
            input_shape: self.input_shape.clone(),
            layers: std::sync::Arc::new(layers),
            passes: AtomicUsize::new(0),
            patches: self.patches.clone(),
            aliases: self.aliases.clone(),
            text: self.text.clone(),
            dynamic: self.dynamic.clone(),
            lengths: self.lengths.clone(),
        })
    }

    /// Runs layers `fwd.from..fwd.to` on `input` (samples of that first layer's input shape).
    pub fn run(&self, input: Batch, fwd: &Forward) -> Result<Tape> {
        self.run_in(input, fwd, None)
    }

    /// As `run`; a pass that starts past a value a later layer still reads (a graph's
    /// attention mask, computed from the token ids) takes it from `context`: the model
    /// inputs the rows stand for (one row for all, or one per row). Carried values are
    /// constants of the pass: they get no gradient.
    pub fn run_in(&self, input: Batch, fwd: &Forward, context: Option<&Batch>) -> Result<Tape> {
        let to = fwd.to.min(self.layers.len());
        let in_shape: &[usize] = if fwd.from == 0 {
            &self.input_shape
        } else {
            &self.layers[fwd.from - 1].out_shape
        };
        if input.sample_len() != in_shape.iter().product::<usize>() {
            return Err(Error::shape(format!(
                "samples of shape {} do not fit the input {} of `{}`",
                fmt_shape(input.sample_shape()),
                fmt_shape(in_shape),
                self.layers.get(fwd.from).map_or("the model", |l| l.name.as_str())
            )));
        }
        let input = input.reshaped(in_shape);
        self.passes.fetch_add(1, Ordering::Relaxed);
        let (reads, carried_slots) = self.reads(fwd.from, to, context.is_some())?;
        let carried = match context {
            Some(context) if !carried_slots.is_empty() => {
                // Only as far as the last value carried (slot v is layer v − 1's output).
                let head = Forward {
                    from: 0,
                    to: carried_slots.iter().copied().max().unwrap_or(0),
                    keep: true,
                    hook: None,
                };
                let pre = self.run(context.clone(), &head)?;
                let rows = input.rows();
                carried_slots
                    .iter()
                    .map(|&v| repeat_rows(&pre.values[v], rows))
                    .collect::<Result<Vec<_>>>()?
            }
            _ => Vec::new(),
        };
        // Without `keep`, a value is dropped after the last layer that reads it.
        let mut last_read = vec![0usize; to - fwd.from + 1];
        for (i, r) in reads.iter().enumerate() {
            for &p in r.iter().filter(|p| **p < CARRIED) {
                last_read[p] = i;
            }
        }
        let mut values = vec![input];
        let mut memos = Vec::new();
        let mut unpatched = Vec::new();
        for index in fwd.from..to {
            let layer = &self.layers[index];
            let i = index - fwd.from;
            let args: Vec<&Batch> = reads[i]
                .iter()
                .map(|&p| {
                    if p >= CARRIED {
                        &carried[p - CARRIED]
                    } else {
                        &values[p]
                    }
                })
                .collect();
            let (mut y, memo) = layer.forward_args(&args, fwd.keep)?;
            let mut raw = None;
            if self.patches.iter().any(|p| p.layer == index) {
                if fwd.keep {
                    raw = Some(y.clone());
                }
                for p in self.patches.iter().filter(|p| p.layer == index) {
                    p.apply(&mut y);
                }
            }
            if let Some(hook) = fwd.hook {
                hook(index, &mut y)?;
            }
            if fwd.keep {
                memos.push(memo);
                unpatched.push(raw);
            } else {
                for &p in reads[i].iter().filter(|p| **p < CARRIED) {
                    if last_read[p] <= i {
                        values[p] = Batch::zeros(vec![0]);
                    }
                }
            }
            values.push(y);
        }
        Ok(Tape {
            start: fwd.from,
            values,
            memos,
            unpatched,
            reads,
            carried,
        })
    }

    /// For each layer in `from..to`, the tape positions of its inputs, and the slots from
    /// before `from` they read (positions `CARRIED + k` stand for the k-th): an error if
    /// there are such slots and no context to compute them from.
    fn reads(&self, from: usize, to: usize, has_context: bool) -> Result<(Vec<Vec<usize>>, Vec<usize>)> {
        let mut carried: Vec<usize> = Vec::new();
        let mut reads = Vec::with_capacity(to - from);
        for layer in &self.layers[from..to] {
            let mut r = Vec::with_capacity(layer.inputs.len());
            for &v in &layer.inputs {
                if let Some(p) = v.checked_sub(from) {
                    r.push(p);
                    continue;
                }
                if !has_context {
                    let start = if from == 0 {
                        "the input".to_string()
                    } else {
                        format!("`{}`", self.layers[from - 1].name)
                    };
                    let read = if v == 0 {
                        "the model input".to_string()
                    } else {
                        format!("`{}`", self.layers[v - 1].name)
                    };
                    return Err(Error::model(format!(
                        "a pass cannot start at {start}: layer `{}` also reads {read}, computed before it",
                        layer.name
                    ))
                    .hint("choose a layer every later layer depends on only through it"));
                }
                let k = carried.iter().position(|c| *c == v).unwrap_or_else(|| {
                    carried.push(v);
                    carried.len() - 1
                });
                r.push(CARRIED + k);
            }
            reads.push(r);
        }
        Ok((reads, carried))
    }

    /// The model's outputs on a batch (no values kept).
    pub fn logits(&self, input: Batch) -> Result<Batch> {
        self.output_of(input, self.layers.len() - 1)
    }

    /// The output of `layer` (a hook point) on a batch of model inputs (no values kept).
    pub fn output_of(&self, input: Batch, layer: usize) -> Result<Batch> {
        let fwd = Forward {
            from: 0,
            to: layer + 1,
            keep: false,
            hook: None,
        };
        Ok(self.run(input, &fwd)?.into_output())
    }

    /// Back-propagates `grad` (the gradient of the tape's output) to the tape's input,
    /// layer by layer, through `rule`. `observe` sees the gradient at each hook point
    /// (the output of each layer) on the way down.
    pub fn backward(
        &self,
        tape: &Tape,
        grad: Batch,
        rule: &dyn BackwardRule,
        observe: &mut dyn FnMut(usize, &Batch),
    ) -> Result<Batch> {
        self.backward_down_to(tape, grad, rule, observe, 0)
    }

    /// The gradient at hook point `layer` (the output of `layer`, or the tape's input when
    /// `layer` is the one before its first): the backward runs only through the layers
    /// after it. A kept tape thus answers a new target or an earlier layer with the
    /// backward part alone.
    pub fn gradient_at(&self, tape: &Tape, grad: Batch, rule: &dyn BackwardRule, layer: usize) -> Result<Batch> {
        let position = (layer + 1)
            .checked_sub(tape.start)
            .filter(|p| *p < tape.values.len())
            .ok_or_else(|| {
                Error::model(format!(
                    "internal: hook point {layer} is outside a kept pass from layer {}",
                    tape.start
                ))
            })?;
        self.backward_down_to(tape, grad, rule, &mut |_, _| {}, position)
    }

    /// Back-propagates to the value at `position` of the tape (0: its input). Every layer
    /// that reads a value comes after it, so once the layers from `position` on are done
    /// that value's gradient is complete.
    fn backward_down_to(
        &self,
        tape: &Tape,
        grad: Batch,
        rule: &dyn BackwardRule,
        observe: &mut dyn FnMut(usize, &Batch),
        position: usize,
    ) -> Result<Batch> {
        if tape.memos.len() + 1 != tape.values.len() {
            return Err(Error::model(
                "internal: backward over a forward pass that kept no values",
            ));
        }
        let missing = || Error::model("internal: a backward read a value its forward did not keep");
        let count = tape.values.len();
        let mut grads: Vec<Option<Batch>> = (0..count).map(|_| None).collect();
        grads[count - 1] = Some(grad);
        for i in (position..tape.memos.len()).rev() {
            let index = tape.start + i;
            let layer = &self.layers[index];
            let y = &tape.values[i + 1];
            // A value no later layer read back from the output has a zero gradient.
            let mut grad = grads[i + 1].take().unwrap_or_else(|| Batch::zeros(y.shape().to_vec()));
            observe(index, &grad);
            for p in self.patches.iter().rev().filter(|p| p.layer == index) {
                p.backward(&mut grad);
            }
            let reads = &tape.reads[i];
            let y = tape.unpatched[i].as_ref().unwrap_or(y);
            let input_grads = if let [only] = reads.as_slice() {
                let step = Step {
                    index,
                    layer,
                    x: tape.value(*only).ok_or_else(missing)?,
                    y,
                    memo: &tape.memos[i],
                    gy: &grad,
                };
                vec![Some(match rule.backward(&step) {
                    Some(result) => result?,
                    None => step.gradient()?,
                })]
            } else {
                let args: Vec<&Batch> = reads
                    .iter()
                    .map(|&p| tape.value(p).ok_or_else(missing))
                    .collect::<Result<_>>()?;
                match rule.backward_args(layer, &args, y, &grad) {
                    Some(result) => result?,
                    None => layer.backward_args(&args, y, &tape.memos[i], &grad)?,
                }
            };
            for (&p, g) in reads.iter().zip(input_grads) {
                // A carried value is a constant of the pass.
                let (Some(g), true) = (g, p < CARRIED) else { continue };
                match &mut grads[p] {
                    Some(sum) => sum.data_mut().iter_mut().zip(g.data()).for_each(|(s, v)| *s += v),
                    slot => *slot = Some(g),
                }
            }
        }
        Ok(grads[position]
            .take()
            .unwrap_or_else(|| Batch::zeros(tape.values[position].shape().to_vec())))
    }

    /// Whether a pass may start at layer `from` with only the value before it: no later
    /// layer reads anything computed earlier.
    pub fn can_start_at(&self, from: usize) -> bool {
        from <= self.layers.len() && self.reads(from, self.layers.len(), false).is_ok()
    }
}

/// `batch` with `rows` rows: as it is, or its one row repeated.
fn repeat_rows(batch: &Batch, rows: usize) -> Result<Batch> {
    if batch.rows() == rows {
        return Ok(batch.clone());
    }
    if batch.rows() != 1 {
        return Err(Error::model(format!(
            "internal: a context of {} rows for a pass over {rows}",
            batch.rows()
        )));
    }
    Ok(Batch::from_rows(
        batch.sample_shape(),
        std::iter::repeat_n(batch.row(0), rows),
    ))
}
