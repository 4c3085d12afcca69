//! ONNX models (as `torch.onnx.export` writes them) translated into the engine's layers:
//! every node whose value depends on the input becomes a layer whose output is a hook
//! point named by the node's output; everything computable without the input (weights,
//! shape arithmetic) is folded into constants when the model is loaded.
//!
//! The graph is translated for a batch of one: every row of the engine's batches runs the
//! model on one sample, as onnxruntime would with a batch size of 1. So the batch axis may
//! move, merge with the heads of an attention layer or with the windows of a Swin block,
//! and shape arithmetic that reads the batch size folds with it as 1. A value's hook-point
//! shape is its ONNX shape without the leading batch axis (when that axis leads).
//!
//! A node the translation does not cover does not stop the load: it and every node after
//! it are listed (SHOW LAYERS) as not translated, and running them is an error that names
//! the operator and the node.

mod builder;
pub mod proto;
mod translate;

pub use builder::{Attr, GraphBuilder};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicUsize;

use prost::Message;

use super::Model;
use super::graph_ops::{
    self, Arg, FILL, LayerNorm, MapFn, MatMul, Nary, NaryKind, PadMode, Reduce, ReduceKind, Select,
};
use super::kernels::Window2d;
use super::layer::{Layer, Op, planar};
use crate::error::{Error, Result};
use proto::{AttributeProto, NodeProto, TensorProto, data_type};

/// A constant: a tensor known when the model is loaded.
#[derive(Clone, Debug)]
struct Konst {
    shape: Vec<usize>,
    data: Vec<f64>,
    /// Of an integer type: shape arithmetic, where Div truncates.
    int: bool,
}

impl Konst {
    fn f32s(&self) -> Vec<f32> {
        self.data.iter().map(|v| *v as f32).collect()
    }
    fn ints(&self) -> Vec<i64> {
        self.data.iter().map(|v| *v as i64).collect()
    }
    /// A constant of this one's type (integer or not) with other values.
    fn with(&self, shape: Vec<usize>, data: Vec<f64>) -> Konst {
        Konst {
            shape,
            data,
            int: self.int,
        }
    }
    fn scalar(v: f64, int: bool) -> Konst {
        Konst {
            int,
            shape: vec![],
            data: vec![v],
        }
    }
}

/// What a name in the graph stands for.
#[derive(Clone, Debug)]
enum Sym {
    /// A value of the batch: its slot (0 the input, i + 1 layer i's output) and its ONNX
    /// shape for a batch of one.
    Value {
        slot: usize,
        full: Vec<usize>,
    },
    Const(Konst),
}

/// Loads an ONNX model file. An input with symbolic axes besides the batch gives a model
/// that is not bound yet: its layers are listed, and `DynamicGraph::bind` translates the
/// graph for the shape of the data it meets. A `tokenizer.json` beside the file makes it a
/// text model (its token inputs tokenized to `max_tokens` when their length is symbolic).
pub fn load(path: &Path, max_tokens: usize) -> Result<Model> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("cannot read model file {shown}: {e}")))?;
    let model = proto::ModelProto::decode(bytes.as_slice())
        .map_err(|e| Error::model(format!("{shown} is not a readable ONNX file: {e}")))?;
    let graph = model
        .graph
        .ok_or_else(|| Error::model(format!("{shown} holds no graph (is it an ONNX model?)")))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version);
    let mut consts = HashMap::new();
    for t in &graph.initializer {
        let k = tensor(t, &shown)?;
        if let Some(bad) = k.data.iter().position(|v| v.is_nan()) {
            return Err(Error::model(format!(
                "initializer `{}` in {shown} holds NaN at flat index {bad}",
                t.name
            )));
        }
        consts.insert(t.name.clone(), Sym::Const(k));
    }
    let inputs: Vec<&proto::ValueInfoProto> = graph.input.iter().filter(|i| !consts.contains_key(&i.name)).collect();
    let Some((input, others)) = inputs.split_first() else {
        return Err(Error::model(format!("{shown} has no graph input")));
    };
    // The first input takes the data; the others must follow from it.
    let derived = others
        .iter()
        .map(|i| {
            Derived::of(&i.name).map(|d| (i.name.clone(), d)).ok_or_else(|| {
                let names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
                Error::model(format!(
                    "{shown} has {} inputs ({}): the first, `{}`, takes the data, and `{}` cannot be derived from it",
                    inputs.len(),
                    crate::error::list_names(&names, 6),
                    input.name,
                    i.name
                ))
                .hint("inputs named like attention_mask, token_type_ids or position_ids are derived from the first")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let dims = input_dims(input, &shown)?;
    // A Hugging Face export sits beside its tokenizer: token ids in, text data.
    let tokenizer = path.with_file_name("tokenizer.json");
    let text = if tokenizer.is_file() {
        Some(crate::data::text::TextCodec::load(&tokenizer)?)
    } else {
        None
    };
    let pad_id = text.as_ref().map_or(0.0, |c| c.pad_id as f32);
    let output = graph
        .output
        .first()
        .ok_or_else(|| Error::model(format!("{shown} declares no graph output")))?;
    let source = Source {
        arch_name: if graph.name.is_empty() {
            "onnx".into()
        } else {
            graph.name.clone()
        },
        shown,
        opset,
        consts,
        input: input.name.clone(),
        output: output.name.clone(),
        nodes: graph.node,
        derived,
        pad_id,
        text: text.map(|c| {
            // Inputs of a fixed length are tokenized to it; a symbolic length to max_tokens.
            let length = match dims.as_slice() {
                [Dim { size: Some(n), .. }] => *n,
                _ => max_tokens,
            };
            std::sync::Arc::new(c.with_max_tokens(length))
        }),
    };
    let fixed: Option<Vec<usize>> = dims.iter().map(|d| d.size).collect();
    match fixed {
        Some(shape) => source.translate(shape, None),
        None => {
            let symbolic: Vec<String> = dims.iter().map(Dim::to_string).collect();
            let reason = format!(
                "the input of {} has symbolic axes ([{}]): the model takes the shape of the data it runs on",
                source.shown,
                symbolic.join(", ")
            );
            // Every node listed, none translated: SHOW LAYERS shows the graph unbound.
            let shape = dims.iter().map(|d| d.size.unwrap_or(0)).collect();
            let mut model = source.translate(shape, Some(reason))?;
            model.dynamic = Some(std::sync::Arc::new(DynamicGraph {
                source,
                dims,
                bound: std::sync::Mutex::new(HashMap::new()),
            }));
            Ok(model)
        }
    }
}

/// A graph input besides the first, computed from the first (token ids).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Derived {
    /// 1 for a real token, 0 for padding.
    Mask,
    /// Zeros (one segment).
    Zeros,
    /// 0, 1, … along the sequence.
    Positions,
}

impl Derived {
    fn of(name: &str) -> Option<Derived> {
        let n = name.to_lowercase();
        if n.contains("mask") {
            Some(Derived::Mask)
        } else if n.contains("token_type") || n.contains("segment") {
            Some(Derived::Zeros)
        } else if n.contains("position") {
            Some(Derived::Positions)
        } else {
            None
        }
    }
}

/// What a loaded ONNX file holds, ready to be translated for an input shape.
struct Source {
    shown: String,
    arch_name: String,
    opset: i64,
    /// The initializers.
    consts: HashMap<String, Sym>,
    input: String,
    output: String,
    nodes: Vec<NodeProto>,
    /// The other graph inputs, derived from the first.
    derived: Vec<(String, Derived)>,
    /// The padding token's id (a derived mask is 0 there).
    pad_id: f32,
    text: Option<std::sync::Arc<crate::data::text::TextCodec>>,
}

impl Source {
    /// The model for samples of shape `input_shape`; `failed`: list the nodes without
    /// translating them, for that reason.
    fn translate(&self, input_shape: Vec<usize>, failed: Option<String>) -> Result<Model> {
        let mut imp = Importer {
            shown: self.shown.clone(),
            opset: self.opset,
            syms: self.consts.clone(),
            layers: Vec::new(),
            aliases: BTreeMap::new(),
            failed,
        };
        imp.derive_inputs(&self.derived, &input_shape, self.pad_id);
        let mut model = imp.translate_graph((&self.input, input_shape), &self.nodes, &self.output, &self.arch_name)?;
        model.text = self.text.clone();
        Ok(model)
    }
}

/// One axis of a graph input's sample: a size, or a symbol (`height`) bound by the data.
#[derive(Clone, Debug)]
pub struct Dim {
    pub size: Option<usize>,
    pub name: String,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.size {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "{}", self.name),
        }
    }
}

/// An ONNX graph whose input has symbolic axes: translated once per input shape it meets
/// (the translations kept), each a model of fixed shapes.
pub struct DynamicGraph {
    source: Source,
    pub dims: Vec<Dim>,
    bound: std::sync::Mutex<HashMap<Vec<usize>, std::sync::Arc<Model>>>,
}

impl std::fmt::Debug for DynamicGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DynamicGraph({}, {:?})", self.source.shown, self.dims)
    }
}

impl DynamicGraph {
    /// The input shape as written: `[3, height, width]`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self.dims.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(", "))
    }

    /// The model for samples of shape `shape`, translated on first use. A shape the graph
    /// cannot take is an error naming the node where it fails.
    pub fn bind(&self, shape: &[usize]) -> Result<std::sync::Arc<Model>> {
        let fits = shape.len() == self.dims.len()
            && shape
                .iter()
                .zip(&self.dims)
                .all(|(s, d)| d.size.is_none_or(|n| n == *s) && *s > 0);
        if !fits {
            return Err(Error::shape(format!(
                "{} takes inputs of shape {}, not {}",
                self.source.shown,
                self.shape_text(),
                crate::data::fmt_shape(shape)
            )));
        }
        let mut bound = self
            .bound
            .lock()
            .map_err(|_| Error::model("internal: a poisoned lock"))?;
        if let Some(m) = bound.get(shape) {
            return Ok(m.clone());
        }
        let model = self.source.translate(shape.to_vec(), None)?;
        if let Some(reason) = model.layers.iter().find_map(|l| match &l.op {
            Op::Unsupported { reason } => Some(reason.clone()),
            _ => None,
        }) {
            return Err(Error::shape(format!(
                "{} cannot run on inputs of shape {}: {reason}",
                self.source.shown,
                crate::data::fmt_shape(shape)
            )));
        }
        let model = std::sync::Arc::new(model);
        bound.insert(shape.to_vec(), model.clone());
        Ok(model)
    }
}

impl Importer {
    /// The graph inputs besides the first, from the first (slot 0, of sample shape
    /// `shape`): a mask by two hook points (`name:padding`, then `name`), zeros and
    /// positions as constants.
    fn derive_inputs(&mut self, derived: &[(String, Derived)], shape: &[usize], pad_id: f32) {
        let full_shape = full(shape);
        let count: usize = shape.iter().product();
        for (name, kind) in derived {
            match kind {
                Derived::Mask => {
                    let args = vec![Arg::input(0, None), Arg::constant(vec![pad_id], Some(vec![0; count]))];
                    let equal = Op::Nary(Nary {
                        kind: NaryKind::Equal,
                        args,
                    });
                    let proto = NodeProto {
                        op_type: "Equal".into(),
                        ..Default::default()
                    };
                    self.push(
                        &proto,
                        format!("{name}:padding"),
                        equal,
                        vec![0],
                        &full_shape,
                        full_shape.clone(),
                    );
                    let slot = self.layers.len();
                    let proto = NodeProto {
                        op_type: "Not".into(),
                        ..Default::default()
                    };
                    self.push(
                        &proto,
                        name.clone(),
                        Op::Map(MapFn::Not),
                        vec![slot],
                        &full_shape,
                        full_shape.clone(),
                    );
                }
                Derived::Zeros | Derived::Positions => {
                    let last = shape.last().copied().unwrap_or(1).max(1);
                    let data = (0..count)
                        .map(|i| {
                            if *kind == Derived::Zeros {
                                0.0
                            } else {
                                (i % last) as f64
                            }
                        })
                        .collect();
                    self.syms.insert(
                        name.clone(),
                        Sym::Const(Konst {
                            shape: full_shape.clone(),
                            data,
                            int: true,
                        }),
                    );
                }
            }
        }
    }

    /// Translates the nodes (constants already known) into a model with input `input`
    /// (its name and sample shape) and output `output`.
    fn translate_graph(
        mut self,
        (input, input_shape): (&str, Vec<usize>),
        nodes: &[NodeProto],
        output: &str,
        arch_name: &str,
    ) -> Result<Model> {
        let shown = self.shown.clone();
        self.syms.insert(
            input.to_string(),
            Sym::Value {
                slot: 0,
                full: full(&input_shape),
            },
        );
        for node in nodes {
            self.node(node);
        }
        let out_slot = match self.syms.get(output) {
            Some(Sym::Value { slot, .. }) if *slot > 0 => *slot,
            Some(_) => {
                return Err(Error::model(format!(
                    "the output `{output}` of {shown} does not depend on its input"
                )));
            }
            None if self.failed.is_some() => self.layers.len(),
            None => {
                return Err(Error::model(format!(
                    "no node of {shown} computes its output `{output}`"
                )));
            }
        };
        let (layers, aliases) = prune(self.layers, self.aliases, out_slot);
        Ok(Model {
            arch_name: arch_name.to_string(),
            source: shown,
            input_shape,
            layers: std::sync::Arc::new(layers),
            passes: AtomicUsize::new(0),
            patches: Vec::new(),
            aliases,
            text: None,
            dynamic: None,
            lengths: None,
        })
    }
}

/// The sample axes of the graph input (its first axis is the batch): sizes, or symbols.
fn input_dims(input: &proto::ValueInfoProto, shown: &str) -> Result<Vec<Dim>> {
    let tt = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| Error::model(format!("the input `{}` of {shown} is not a tensor", input.name)))?;
    if ![data_type::FLOAT, data_type::DOUBLE, data_type::INT32, data_type::INT64].contains(&tt.elem_type) {
        return Err(Error::model(format!(
            "the input `{}` of {shown} has element type {}; float, int32 and int64 inputs are supported",
            input.name, tt.elem_type
        )));
    }
    let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or_default();
    if dims.is_empty() {
        return Err(Error::model(format!(
            "the input `{}` of {shown} has no batch axis",
            input.name
        )));
    }
    Ok(dims[1..]
        .iter()
        .enumerate()
        .map(|(i, d)| Dim {
            size: d.dim_value.filter(|v| *v > 0).map(|v| v as usize),
            name: d
                .dim_param
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| format!("axis{}", i + 1)),
        })
        .collect())
}

/// Keeps the layers the output depends on, renumbered, the output last.
fn prune(
    layers: Vec<Layer>,
    aliases: BTreeMap<String, usize>,
    out_slot: usize,
) -> (Vec<Layer>, BTreeMap<String, usize>) {
    if layers.iter().any(|l| matches!(l.op, Op::Unsupported { .. })) {
        // Nothing is pruned: SHOW LAYERS lists the whole graph as far as it was translated.
        return (layers, aliases);
    }
    let mut needed = vec![false; layers.len() + 1];
    needed[out_slot] = true;
    for slot in (1..=out_slot.min(layers.len())).rev() {
        if needed[slot] {
            for &v in &layers[slot - 1].inputs {
                needed[v] = true;
            }
        }
    }
    let keep: Vec<bool> = (1..=layers.len()).map(|s| s <= out_slot && needed[s]).collect();
    let mut new_slot = vec![0usize; layers.len() + 1];
    let mut next = 1;
    for s in 1..=layers.len() {
        if keep[s - 1] {
            new_slot[s] = next;
            next += 1;
        }
    }
    let kept: Vec<Layer> = layers
        .into_iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(mut l, _)| {
            l.inputs.iter_mut().for_each(|v| *v = new_slot[*v]);
            l
        })
        .collect();
    let aliases = aliases
        .into_iter()
        .filter(|(_, i)| keep[*i])
        .map(|(a, i)| (a, new_slot[i + 1] - 1))
        .collect();
    (kept, aliases)
}

fn tensor(t: &TensorProto, shown: &str) -> Result<Konst> {
    let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let count: usize = shape.iter().product();
    if !t.external_data.is_empty() || t.data_location == 1 {
        return Err(Error::model(format!(
            "tensor `{}` of {shown} is stored in an external file; save the model with its weights inside",
            t.name
        )));
    }
    let raw = &t.raw_data;
    let data: Vec<f64> = if !raw.is_empty() {
        let width = match t.data_type {
            data_type::FLOAT | data_type::INT32 => 4,
            data_type::DOUBLE | data_type::INT64 => 8,
            data_type::UINT8 | data_type::INT8 | data_type::BOOL => 1,
            other => {
                return Err(Error::model(format!(
                    "tensor `{}` of {shown} has element type {other}, which is not supported",
                    t.name
                )));
            }
        };
        if raw.len() != count * width {
            return Err(Error::model(format!(
                "tensor `{}` of {shown} holds {} bytes; its shape {:?} needs {}",
                t.name,
                raw.len(),
                shape,
                count * width
            )));
        }
        raw.chunks_exact(width)
            .map(|b| match t.data_type {
                data_type::FLOAT => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                data_type::INT32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                data_type::DOUBLE => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                data_type::INT64 => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64,
                data_type::INT8 => b[0] as i8 as f64,
                _ => b[0] as f64,
            })
            .collect()
    } else if !t.float_data.is_empty() {
        t.float_data.iter().map(|v| *v as f64).collect()
    } else if !t.int64_data.is_empty() {
        t.int64_data.iter().map(|v| *v as f64).collect()
    } else if !t.int32_data.is_empty() {
        t.int32_data.iter().map(|v| *v as f64).collect()
    } else if !t.double_data.is_empty() {
        t.double_data.clone()
    } else if !t.uint64_data.is_empty() {
        t.uint64_data.iter().map(|v| *v as f64).collect()
    } else {
        Vec::new()
    };
    if data.len() != count {
        return Err(Error::model(format!(
            "tensor `{}` of {shown} holds {} values; its shape {:?} needs {count}",
            t.name,
            data.len(),
            shape
        )));
    }
    let int = !matches!(t.data_type, data_type::FLOAT | data_type::DOUBLE | 10 | 16);
    Ok(Konst { shape, data, int })
}

struct Importer {
    shown: String,
    opset: i64,
    syms: HashMap<String, Sym>,
    layers: Vec<Layer>,
    aliases: BTreeMap<String, usize>,
    /// Why the first node that could not be translated was not.
    failed: Option<String>,
}

/// One node's attributes and inputs, as the translation reads them.
struct Node<'a> {
    proto: &'a NodeProto,
}

impl Node<'_> {
    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name == name)
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }
    fn string(&self, name: &str, default: &str) -> String {
        self.attr(name)
            .map_or(default.to_string(), |a| String::from_utf8_lossy(&a.s).into_owned())
    }
    /// The name of input `i`, if given (optional inputs may be empty names).
    fn input(&self, i: usize) -> Option<&str> {
        self.proto.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::model(what.into())
}

/// An axis given possibly negative, normalised to `0..rank`.
fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r).contains(&v) {
        Ok(v as usize)
    } else {
        Err(unsupported(format!("axis {a} is out of range for rank {rank}")))
    }
}

/// The ONNX shape (batch of one) of a sample of shape `shape`.
fn full(shape: &[usize]) -> Vec<usize> {
    let mut f = vec![1];
    f.extend_from_slice(shape);
    f
}

/// How many leading axes of an ONNX shape (batch of one) the sample shape drops: the
/// batch axis when it leads, else none (it has moved or merged).
fn lead(full: &[usize]) -> usize {
    usize::from(full.len() > 1 && full[0] == 1)
}

/// The hook-point shape of a value of ONNX shape `full` (batch of one).
fn sample(full: &[usize]) -> Vec<usize> {
    full[lead(full)..].to_vec()
}
