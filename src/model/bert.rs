//! BERT-family encoders from a Hugging Face directory (config.json, model.safetensors,
//! tokenizer.json), written as a graph of the engine's own operators so that every
//! intermediate value is a hook point with gradients: `embeddings`,
//! `encoder.layer.{i}.attention` (the attention probabilities, heads × query × key),
//! `encoder.layer.{i}` (each layer's output), and the mean-pooled `sentence_embedding`
//! (normalized when the directory's sentence-transformers modules say so), which is
//! the model's output: the targets are its dimensions.
//!
//! The input is one row of token ids of fixed length, padded with [PAD]; padding is
//! masked out of attention and pooling as in transformers and sentence-transformers.

use std::path::Path;
use std::sync::Arc;

use super::Model;
use super::arch::Weight;
use super::loader;
use super::onnx::{Attr, GraphBuilder};
use crate::data::text::TextCodec;
use crate::error::{Error, Result};

/// The hook point of the embedding layer's output (token + position + type, normalized).
pub const EMBEDDINGS: &str = "embeddings";

struct Config {
    hidden: usize,
    heads: usize,
    layers: usize,
    intermediate: usize,
    eps: f32,
    gelu_tanh: bool,
    max_positions: usize,
    pad_id: usize,
}

fn config(dir: &Path) -> Result<Config> {
    let path = dir.join("config.json");
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("cannot read {shown}: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::model(format!("{shown} is not valid JSON: {e}")))?;
    let kind = v["model_type"].as_str().unwrap_or("");
    if !["bert", "roberta", ""].contains(&kind) {
        return Err(Error::model(format!(
            "{shown}: model_type `{kind}` is not a BERT-family encoder"
        )));
    }
    let int = |key: &str, default: Option<usize>| -> Result<usize> {
        match v[key].as_u64() {
            Some(n) if n > 0 => Ok(n as usize),
            _ => default.ok_or_else(|| Error::model(format!("{shown} has no positive `{key}`"))),
        }
    };
    let act = v["hidden_act"].as_str().unwrap_or("gelu");
    let gelu_tanh = match act {
        "gelu" => false,
        "gelu_new" | "gelu_pytorch_tanh" => true,
        other => return Err(Error::model(format!("{shown}: hidden_act `{other}` is not supported"))),
    };
    let c = Config {
        hidden: int("hidden_size", None)?,
        heads: int("num_attention_heads", None)?,
        layers: int("num_hidden_layers", None)?,
        intermediate: int("intermediate_size", None)?,
        eps: v["layer_norm_eps"].as_f64().unwrap_or(1e-12) as f32,
        gelu_tanh,
        max_positions: int("max_position_embeddings", Some(512))?,
        pad_id: v["pad_token_id"].as_u64().unwrap_or(0) as usize,
    };
    if !c.hidden.is_multiple_of(c.heads) {
        return Err(Error::model(format!(
            "{shown}: hidden_size {} is not a multiple of num_attention_heads {}",
            c.hidden, c.heads
        )));
    }
    Ok(c)
}

/// Loads the encoder in `dir` for inputs of `max_tokens` tokens (at most the model's
/// positions).
pub fn load(dir: &Path, max_tokens: usize) -> Result<Model> {
    let shown = dir.display().to_string();
    let cfg = config(dir)?;
    let codec = TextCodec::load(&dir.join("tokenizer.json"))?;
    let weights_path = dir.join("model.safetensors");
    if !weights_path.exists() {
        return Err(Error::model(format!("{shown} has no model.safetensors")));
    }
    let mut weights = loader::read_weights(&weights_path)?;
    // Checkpoints of a model with a head prefix the encoder's names.
    let prefixed: Vec<String> = weights.keys().filter(|k| k.starts_with("bert.")).cloned().collect();
    for k in prefixed {
        if let Some(w) = weights.remove(&k) {
            weights.insert(k["bert.".len()..].to_string(), w);
        }
    }
    let s = max_tokens.clamp(2, cfg.max_positions);
    let d = cfg.hidden;
    let vocab = weights
        .get("embeddings.word_embeddings.weight")
        .map(|w| w.shape.first().copied().unwrap_or(0))
        .ok_or_else(|| {
            Error::model(format!(
                "{shown}: the weights have no embeddings.word_embeddings.weight"
            ))
        })?;
    let types = weights
        .get("embeddings.token_type_embeddings.weight")
        .map(|w| w.data[..d.min(w.data.len())].to_vec())
        .unwrap_or_else(|| vec![0.0; d]);
    let mut b = Builder {
        g: GraphBuilder::default(),
        weights,
        shown: shown.clone(),
        eps: cfg.eps,
    };
    let ids = "input_ids";
    let word = b.weight("embeddings.word_embeddings.weight", &[vocab, d])?;
    let positions = b.take("embeddings.position_embeddings.weight", &[cfg.max_positions, d])?;
    // Single sentences: positions 0..s and token type 0, one constant.
    let position_type: Vec<f32> = (0..s * d).map(|i| positions[i] + types[i % d]).collect();
    let pt = b.g.constant("embeddings.position_and_type", vec![s, d], position_type);
    let we = b.g.node("Gather", &[&word, ids], "embeddings.word_embeddings", vec![]);
    let sum = b.g.node("Add", &[&we, &pt], "embeddings.sum", vec![]);
    let mut h = b.layer_norm(&sum, "embeddings.LayerNorm", EMBEDDINGS, d)?;
    // [PAD] keys get transformers' additive mask (the most negative float).
    let g = &mut b.g;
    let pad_id = g.constant("pad_id", vec![], vec![cfg.pad_id as f32]);
    let pad = g.node("Equal", &[ids, &pad_id], "attention_mask.padding", vec![]);
    let most_negative = g.constant("most_negative", vec![], vec![f32::MIN]);
    let additive = g.node("Mul", &[&pad, &most_negative], "attention_mask.additive", vec![]);
    let axes12 = g.constant("axes_1_2", vec![2], vec![1.0, 2.0]);
    let mask = g.node("Unsqueeze", &[&additive, &axes12], "attention_mask", vec![]);
    let keep = g.node("Not", &[&pad], "attention_mask.tokens", vec![]);
    let heads = cfg.heads;
    let dh = d / heads;
    let split = g.constant("shape_heads", vec![4], vec![0.0, s as f32, heads as f32, dh as f32]);
    let merge = g.constant("shape_hidden", vec![3], vec![0.0, s as f32, d as f32]);
    let scale = g.constant("attention_scale", vec![], vec![1.0 / (dh as f32).sqrt()]);
    for i in 0..cfg.layers {
        let p = format!("encoder.layer.{i}");
        let sa = format!("{p}.attention.self");
        let q = b.linear(&h, &format!("{sa}.query"), d, d, &format!("{sa}.query"))?;
        let k = b.linear(&h, &format!("{sa}.key"), d, d, &format!("{sa}.key"))?;
        let v = b.linear(&h, &format!("{sa}.value"), d, d, &format!("{sa}.value"))?;
        let g = &mut b.g;
        let mut heads_of = |x: &str, perm: Vec<i64>, what: &str| {
            let r = g.node("Reshape", &[x, &split], &format!("{sa}.{what}_split"), vec![]);
            g.node(
                "Transpose",
                &[&r],
                &format!("{sa}.{what}_heads"),
                vec![Attr::Ints("perm", perm)],
            )
        };
        let qh = heads_of(&q, vec![0, 2, 1, 3], "query");
        let kh = heads_of(&k, vec![0, 2, 3, 1], "key");
        let vh = heads_of(&v, vec![0, 2, 1, 3], "value");
        let scores = g.node("MatMul", &[&qh, &kh], &format!("{sa}.scores"), vec![]);
        let scaled = g.node("Mul", &[&scores, &scale], &format!("{sa}.scaled_scores"), vec![]);
        let masked = g.node("Add", &[&scaled, &mask], &format!("{sa}.masked_scores"), vec![]);
        let probs = g.node(
            "Softmax",
            &[&masked],
            &format!("{p}.attention"),
            vec![Attr::Int("axis", -1)],
        );
        let context = g.node("MatMul", &[&probs, &vh], &format!("{sa}.context_heads"), vec![]);
        let perm = vec![Attr::Ints("perm", vec![0, 2, 1, 3])];
        let context = g.node("Transpose", &[&context], &format!("{sa}.context_tokens"), perm);
        let context = g.node("Reshape", &[&context, &merge], &format!("{sa}.context"), vec![]);
        let ao = format!("{p}.attention.output");
        let dense = b.linear(&context, &format!("{ao}.dense"), d, d, &format!("{ao}.dense"))?;
        let res = b.g.node("Add", &[&dense, &h], &format!("{ao}.residual"), vec![]);
        let attended = b.layer_norm(&res, &format!("{ao}.LayerNorm"), &ao, d)?;
        let dense = format!("{p}.intermediate.dense");
        let inter = b.linear(&attended, &dense, cfg.intermediate, d, &dense)?;
        let approximate = if cfg.gelu_tanh { "tanh" } else { "none" };
        let gelu = vec![Attr::Str("approximate", approximate)];
        let act = b.g.node("Gelu", &[&inter], &format!("{p}.intermediate"), gelu);
        let dense = format!("{p}.output.dense");
        let out = b.linear(&act, &dense, d, cfg.intermediate, &dense)?;
        let res =
            b.g.node("Add", &[&out, &attended], &format!("{p}.output.residual"), vec![]);
        h = b.layer_norm(&res, &format!("{p}.output.LayerNorm"), &p, d)?;
    }
    // sentence-transformers' mean pooling over the real tokens.
    let g = &mut b.g;
    let axis2 = g.constant("axis_2", vec![1], vec![2.0]);
    let axis1 = g.constant("axis_1", vec![1], vec![1.0]);
    let keep_col = g.node("Unsqueeze", &[&keep, &axis2], "pooling.tokens", vec![]);
    let kept = g.node("Mul", &[&h, &keep_col], "pooling.masked", vec![]);
    let total = g.node(
        "ReduceSum",
        &[&kept, &axis1],
        "pooling.sum",
        vec![Attr::Int("keepdims", 0)],
    );
    let count = g.node(
        "ReduceSum",
        &[&keep, &axis1],
        "pooling.count",
        vec![Attr::Int("keepdims", 1)],
    );
    let mut output = "sentence_embedding".to_string();
    let mean = g.node(
        "Div",
        &[&total, &count],
        if normalizes(dir) { "pooling.mean" } else { &output },
        vec![],
    );
    if normalizes(dir) {
        // sentence-transformers' Normalize: x / max(‖x‖, 1e-12).
        let square = g.node("Mul", &[&mean, &mean], "normalize.square", vec![]);
        let sq = g.node(
            "ReduceSum",
            &[&square, &axis1],
            "normalize.sum",
            vec![Attr::Int("keepdims", 1)],
        );
        let norm = g.node("Sqrt", &[&sq], "normalize.norm", vec![]);
        let tiny = g.constant("normalize.eps", vec![], vec![1e-12]);
        let norm = g.node("Max", &[&norm, &tiny], "normalize.clamped", vec![]);
        output = g.node("Div", &[&mean, &norm], &output, vec![]);
    }
    b.weights.retain(|k, _| {
        !k.starts_with("pooler.") && !k.ends_with("position_ids") && !k.starts_with("embeddings.token_type")
    });
    if !b.weights.is_empty() {
        let names: Vec<String> = b.weights.keys().cloned().collect();
        return Err(Error::model(format!(
            "{shown}: weights the encoder does not use: {}",
            crate::error::list_names(&names, 6)
        )));
    }
    let mut model = b.g.build(&shown, "bert", (ids, vec![s]), &output)?;
    model.text = Some(Arc::new(codec.with_max_tokens(s)));
    Ok(model)
}

/// The graph being written and the weights not yet used.
struct Builder {
    g: GraphBuilder,
    weights: std::collections::BTreeMap<String, Weight>,
    shown: String,
    eps: f32,
}

impl Builder {
    /// Takes a weight out of the file, checking its shape.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let w = self
            .weights
            .remove(name)
            .ok_or_else(|| Error::model(format!("{}: the weights have no `{name}`", self.shown)))?;
        if w.shape != shape {
            return Err(Error::model(format!(
                "{}: `{name}` has shape {:?}, the config implies {shape:?}",
                self.shown, w.shape
            )));
        }
        Ok(w.data)
    }

    /// A weight as a constant of the graph.
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<String> {
        let data = self.take(name, shape)?;
        Ok(self.g.constant(name, shape.to_vec(), data))
    }

    /// PyTorch's Linear `module` on the last axis of `x`.
    fn linear(&mut self, x: &str, module: &str, out_dim: usize, in_dim: usize, out: &str) -> Result<String> {
        let w = self.weight(&format!("{module}.weight"), &[out_dim, in_dim])?;
        let b = self.weight(&format!("{module}.bias"), &[out_dim])?;
        Ok(self.g.node("Gemm", &[x, &w, &b], out, vec![Attr::Int("transB", 1)]))
    }

    fn layer_norm(&mut self, x: &str, module: &str, out: &str, d: usize) -> Result<String> {
        let gamma = self.weight(&format!("{module}.weight"), &[d])?;
        let beta = self.weight(&format!("{module}.bias"), &[d])?;
        let attrs = vec![Attr::Int("axis", -1), Attr::Float("epsilon", self.eps)];
        Ok(self.g.node("LayerNormalization", &[x, &gamma, &beta], out, attrs))
    }
}

/// Whether the directory's sentence-transformers modules end in Normalize.
fn normalizes(dir: &Path) -> bool {
    let modules = dir.join("modules.json");
    std::fs::read_to_string(modules).is_ok_and(|t| t.contains("sentence_transformers.models.Normalize"))
}
