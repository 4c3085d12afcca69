//! The architecture file: `{"name", "input_shape", "layers": [{"name", "type", ...}]}` with
//! PyTorch module names, read and checked against the weights before the first forward.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::kernels::Window2d;
use super::layer::{Layer, Op};
use crate::data::fmt_shape;
use crate::error::{Error, Result};

/// A named tensor read from a weight file.
#[derive(Clone, Debug)]
pub struct Weight {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The architecture as written in the file.
#[derive(Clone, Debug)]
pub struct Arch {
    pub name: String,
    pub input_shape: Vec<usize>,
    pub layers: Vec<LayerSpec>,
}

#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub name: String,
    pub kind: String,
    fields: serde_json::Map<String, Json>,
}

pub const LAYER_TYPES: &[&str] = &[
    "linear",
    "conv2d",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "gelu",
    "softmax",
    "maxpool2d",
    "avgpool2d",
    "adaptive_avgpool2d",
    "flatten",
    "dropout",
    "identity",
    "batchnorm1d",
    "batchnorm2d",
];

impl Arch {
    pub fn parse(text: &str, origin: &str) -> Result<Arch> {
        let json: Json = serde_json::from_str(text)
            .map_err(|e| Error::model(format!("architecture {origin} is not valid JSON: {e}")))?;
        let obj = json
            .as_object()
            .ok_or_else(|| Error::model(format!("architecture {origin} must be a JSON object with `layers`")))?;
        let name = obj.get("name").and_then(Json::as_str).unwrap_or("model").to_string();
        let input_shape = obj
            .get("input_shape")
            .ok_or_else(|| Error::model(format!("architecture {origin} has no `input_shape` (e.g. [1, 8, 8])")))
            .and_then(|v| {
                dims(v).filter(|d| !d.is_empty()).ok_or_else(|| {
                    Error::model(format!(
                        "architecture {origin}: `input_shape` must be a non-empty list of positive integers"
                    ))
                })
            })?;
        let layers_json = obj
            .get("layers")
            .and_then(Json::as_array)
            .ok_or_else(|| Error::model(format!("architecture {origin} has no `layers` list")))?;
        let mut layers = Vec::with_capacity(layers_json.len());
        let mut seen = std::collections::HashSet::new();
        for (i, layer) in layers_json.iter().enumerate() {
            let fields = layer
                .as_object()
                .ok_or_else(|| Error::model(format!("architecture {origin}: layer {i} must be an object")))?
                .clone();
            let name = fields
                .get("name")
                .and_then(Json::as_str)
                .ok_or_else(|| Error::model(format!("architecture {origin}: layer {i} has no `name`")))?
                .to_string();
            let kind = fields
                .get("type")
                .and_then(Json::as_str)
                .ok_or_else(|| Error::model(format!("architecture {origin}: layer `{name}` has no `type`")))?
                .to_lowercase();
            if !LAYER_TYPES.contains(&kind.as_str()) {
                return Err(Error::model(format!(
                    "architecture {origin}: layer `{name}` has unsupported type `{kind}`"
                ))
                .hint(format!("supported types: {}", LAYER_TYPES.join(", "))));
            }
            if !seen.insert(name.clone()) || name == "input" {
                return Err(Error::model(format!(
                    "architecture {origin}: layer name `{name}` is used twice or reserved"
                )));
            }
            layers.push(LayerSpec { name, kind, fields });
        }
        if layers.is_empty() {
            return Err(Error::model(format!("architecture {origin} has no layers")));
        }
        Ok(Arch {
            name,
            input_shape,
            layers,
        })
    }

    /// Builds the layers, inferring every shape from `input_shape` and taking each layer's
    /// weights out of `weights`. Every tensor is checked; leftovers are an error.
    pub fn build(&self, mut weights: BTreeMap<String, Weight>, origin: &str) -> Result<Vec<Layer>> {
        let mut shape = self.input_shape.clone();
        let mut layers = Vec::with_capacity(self.layers.len());
        for spec in &self.layers {
            let mut layer = spec.build(&shape, &mut weights).map_err(|e| Error {
                message: format!("layer `{}` ({}): {}", spec.name, spec.kind, e.message),
                ..e
            })?;
            layer.inputs = vec![layers.len()];
            shape = layer.out_shape.clone();
            layers.push(layer);
        }
        weights.retain(|k, _| !k.ends_with("num_batches_tracked"));
        if !weights.is_empty() {
            let names: Vec<String> = weights.keys().cloned().collect();
            return Err(Error::model(format!(
                "{origin} holds tensors the architecture does not use: {}",
                crate::error::list_names(&names, 8)
            ))
            .hint("check that the architecture's layer names match the state-dict prefixes"));
        }
        Ok(layers)
    }
}

fn dims(v: &Json) -> Option<Vec<usize>> {
    let arr = v.as_array()?;
    arr.iter()
        .map(|d| d.as_u64().filter(|&d| d > 0).map(|d| d as usize))
        .collect()
}

impl LayerSpec {
    fn get(&self, keys: &[&str]) -> Option<&Json> {
        keys.iter().find_map(|k| self.fields.get(*k)).filter(|v| !v.is_null())
    }

    fn usize_field(&self, keys: &[&str], default: Option<usize>, min: usize) -> Result<usize> {
        match self.get(keys) {
            None => default.ok_or_else(|| Error::model(format!("missing field `{}`", keys[0]))),
            Some(v) => match v.as_u64() {
                Some(n) if n as usize >= min => Ok(n as usize),
                _ => Err(Error::model(format!(
                    "field `{}` must be an integer ≥ {min}, got {v}",
                    keys[0]
                ))),
            },
        }
    }

    fn pair_field(&self, keys: &[&str], default: Option<(usize, usize)>, min: usize) -> Result<(usize, usize)> {
        let Some(v) = self.get(keys) else {
            return default.ok_or_else(|| Error::model(format!("missing field `{}`", keys[0])));
        };
        let bad = || {
            Error::model(format!(
                "field `{}` must be an integer ≥ {min} or a pair [h, w], got {v}",
                keys[0]
            ))
        };
        if let Some(n) = v.as_u64() {
            return if n as usize >= min {
                Ok((n as usize, n as usize))
            } else {
                Err(bad())
            };
        }
        match v
            .as_array()
            .map(|a| a.iter().map(Json::as_u64).collect::<Option<Vec<_>>>())
        {
            Some(Some(a)) if a.len() == 2 && a.iter().all(|&d| d as usize >= min) => Ok((a[0] as usize, a[1] as usize)),
            _ => Err(bad()),
        }
    }

    fn bool_field(&self, keys: &[&str], default: bool) -> Result<bool> {
        match self.get(keys) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Error::model(format!("field `{}` must be true or false, got {v}", keys[0]))),
        }
    }

    fn f64_field(&self, keys: &[&str], default: f64) -> Result<f64> {
        match self.get(keys) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Error::model(format!("field `{}` must be a number, got {v}", keys[0]))),
        }
    }

    fn int_field(&self, keys: &[&str], default: i64) -> Result<i64> {
        match self.get(keys) {
            None => Ok(default),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| Error::model(format!("field `{}` must be an integer, got {v}", keys[0]))),
        }
    }

    fn take(&self, weights: &mut BTreeMap<String, Weight>, suffix: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = format!("{}.{suffix}", self.name);
        let w = weights.remove(&key).ok_or_else(|| {
            Error::model(format!(
                "weight `{key}` of shape {} is missing from the weight file",
                fmt_shape(shape)
            ))
        })?;
        if w.shape != shape {
            return Err(Error::shape(format!(
                "weight `{key}` has shape {} in the file but the architecture needs {}",
                fmt_shape(&w.shape),
                fmt_shape(shape)
            )));
        }
        Ok(w.data)
    }

    fn window(&self, in_shape: &[usize], default_stride_is_kernel: bool) -> Result<(Window2d, (usize, usize))> {
        let kernel = self.pair_field(&["kernel", "kernel_size"], None, 1)?;
        let stride = self.pair_field(
            &["stride"],
            Some(if default_stride_is_kernel { kernel } else { (1, 1) }),
            1,
        )?;
        let padding = self.pair_field(&["padding"], Some((0, 0)), 0)?;
        let dilation = self.pair_field(&["dilation"], Some((1, 1)), 1)?;
        if self.bool_field(&["ceil_mode"], false)? {
            return Err(Error::model("ceil_mode = true is not supported"));
        }
        let win = Window2d {
            kernel,
            stride,
            padding,
            dilation,
        };
        let r = in_shape.len();
        let (oh, ow) = win.out_hw(in_shape[r - 2], in_shape[r - 1]).ok_or_else(|| {
            Error::shape(format!(
                "a {}×{} window does not fit an input of shape {}",
                kernel.0,
                kernel.1,
                fmt_shape(in_shape)
            ))
        })?;
        Ok((win, (oh, ow)))
    }

    fn need_rank(&self, in_shape: &[usize], ranks: &[usize], what: &str) -> Result<()> {
        if ranks.contains(&in_shape.len()) {
            Ok(())
        } else {
            Err(Error::shape(format!(
                "expects {what}, but its input has shape {}",
                fmt_shape(in_shape)
            )))
        }
    }

    fn build(&self, in_shape: &[usize], weights: &mut BTreeMap<String, Weight>) -> Result<Layer> {
        let (op, out_shape) = match self.kind.as_str() {
            "linear" => {
                let inp = self.usize_field(&["in", "in_features"], in_shape.last().copied(), 1)?;
                let out = self.usize_field(&["out", "out_features"], None, 1)?;
                if in_shape.last() != Some(&inp) {
                    return Err(Error::shape(format!(
                        "expects {inp} input features, but its input has shape {}",
                        fmt_shape(in_shape)
                    )));
                }
                let weight = self.take(weights, "weight", &[out, inp])?;
                let bias = if self.bool_field(&["bias"], true)? {
                    Some(self.take(weights, "bias", &[out])?)
                } else {
                    None
                };
                let mut shape = in_shape.to_vec();
                *shape.last_mut().expect("rank ≥ 1") = out;
                (
                    Op::Linear {
                        inp,
                        out,
                        weight,
                        bias,
                        transposed: Default::default(),
                    },
                    shape,
                )
            }
            "conv2d" => {
                self.need_rank(in_shape, &[3], "a [channels, height, width] input")?;
                let c = self.usize_field(&["in", "in_channels"], Some(in_shape[0]), 1)?;
                let out = self.usize_field(&["out", "out_channels"], None, 1)?;
                let groups = self.usize_field(&["groups"], Some(1), 1)?;
                if c != in_shape[0] {
                    return Err(Error::shape(format!(
                        "expects {c} input channels, but its input has shape {}",
                        fmt_shape(in_shape)
                    )));
                }
                if c % groups != 0 || out % groups != 0 {
                    return Err(Error::model(format!(
                        "groups = {groups} must divide both {c} input and {out} output channels"
                    )));
                }
                if let Some(mode) = self
                    .get(&["padding_mode"])
                    .and_then(Json::as_str)
                    .filter(|m| *m != "zeros")
                {
                    return Err(Error::model(format!(
                        "padding_mode `{mode}` is not supported (only zeros)"
                    )));
                }
                let (win, (oh, ow)) = self.window(in_shape, false)?;
                let weight = self.take(weights, "weight", &[out, c / groups, win.kernel.0, win.kernel.1])?;
                let bias = if self.bool_field(&["bias"], true)? {
                    Some(self.take(weights, "bias", &[out])?)
                } else {
                    None
                };
                (
                    Op::Conv2d {
                        out,
                        groups,
                        win,
                        weight,
                        bias,
                        adjoint: Default::default(),
                    },
                    vec![out, oh, ow],
                )
            }
            "relu" => (Op::Relu, in_shape.to_vec()),
            "leaky_relu" => (
                Op::LeakyRelu {
                    slope: self.f64_field(&["negative_slope", "slope"], 0.01)? as f32,
                },
                in_shape.to_vec(),
            ),
            "sigmoid" => (Op::Sigmoid, in_shape.to_vec()),
            "tanh" => (Op::Tanh, in_shape.to_vec()),
            "gelu" => {
                let approx = self.get(&["approximate"]).and_then(Json::as_str).unwrap_or("none");
                let tanh_approx = match approx {
                    "none" => false,
                    "tanh" => true,
                    other => {
                        return Err(Error::model(format!(
                            "gelu approximate must be \"none\" or \"tanh\", got \"{other}\""
                        )));
                    }
                };
                (Op::Gelu { tanh_approx }, in_shape.to_vec())
            }
            "softmax" => {
                let dim = self.int_field(&["dim"], -1)?;
                let rank = in_shape.len() as i64;
                // PyTorch dims count the batch axis; ours do not.
                let axis = if dim < 0 { rank + dim } else { dim - 1 };
                if axis < 0 || axis >= rank {
                    return Err(Error::model(format!(
                        "softmax dim = {dim} is out of range for samples of shape {}",
                        fmt_shape(in_shape)
                    )));
                }
                (Op::Softmax { axis: axis as usize }, in_shape.to_vec())
            }
            "maxpool2d" => {
                self.need_rank(in_shape, &[3], "a [channels, height, width] input")?;
                let (win, (oh, ow)) = self.window(in_shape, true)?;
                if win.padding.0 * 2 > win.kernel.0 || win.padding.1 * 2 > win.kernel.1 {
                    return Err(Error::model(
                        "padding must be at most half the kernel size (as in PyTorch)",
                    ));
                }
                (Op::MaxPool2d { win }, vec![in_shape[0], oh, ow])
            }
            "avgpool2d" => {
                self.need_rank(in_shape, &[3], "a [channels, height, width] input")?;
                if self.get(&["divisor_override"]).is_some() {
                    return Err(Error::model("divisor_override is not supported"));
                }
                let (win, (oh, ow)) = self.window(in_shape, true)?;
                if win.dilation != (1, 1) {
                    return Err(Error::model("avgpool2d has no dilation"));
                }
                let count_include_pad = self.bool_field(&["count_include_pad"], true)?;
                (Op::AvgPool2d { win, count_include_pad }, vec![in_shape[0], oh, ow])
            }
            "adaptive_avgpool2d" => {
                self.need_rank(in_shape, &[3], "a [channels, height, width] input")?;
                let out = self.pair_field(&["output_size", "out"], None, 1)?;
                (Op::AdaptiveAvgPool2d { out }, vec![in_shape[0], out.0, out.1])
            }
            "flatten" => {
                let rank = in_shape.len() as i64 + 1;
                let start = self.int_field(&["start_dim"], 1)?;
                let end = self.int_field(&["end_dim"], -1)?;
                let norm = |d: i64| if d < 0 { d + rank } else { d };
                let (s, e) = (norm(start), norm(end));
                if s < 1 || e < s || e >= rank {
                    return Err(Error::model(format!(
                        "flatten start_dim = {start}, end_dim = {end} must stay within the sample dims 1..{} (the batch dim is 0)",
                        rank - 1
                    )));
                }
                let (s, e) = (s as usize - 1, e as usize - 1);
                let mut shape = in_shape[..s].to_vec();
                shape.push(in_shape[s..=e].iter().product());
                shape.extend_from_slice(&in_shape[e + 1..]);
                (Op::Flatten, shape)
            }
            "dropout" | "identity" => (Op::Identity, in_shape.to_vec()),
            "batchnorm1d" | "batchnorm2d" => {
                let (ranks, what): (&[usize], _) = if self.kind == "batchnorm2d" {
                    (&[3], "a [channels, height, width] input")
                } else {
                    (&[1, 2], "a [features] or [channels, length] input")
                };
                self.need_rank(in_shape, ranks, what)?;
                let c = in_shape[0];
                let features = self.usize_field(&["num_features", "features"], Some(c), 1)?;
                if features != c {
                    return Err(Error::shape(format!(
                        "expects {features} features, but its input has shape {}",
                        fmt_shape(in_shape)
                    )));
                }
                if !self.bool_field(&["track_running_stats"], true)? {
                    return Err(Error::model(
                        "batch norm without running statistics cannot run in eval mode",
                    ));
                }
                let eps = self.f64_field(&["eps"], 1e-5)?;
                let (gamma, beta) = if self.bool_field(&["affine"], true)? {
                    (self.take(weights, "weight", &[c])?, self.take(weights, "bias", &[c])?)
                } else {
                    (vec![1.0; c], vec![0.0; c])
                };
                let mean = self.take(weights, "running_mean", &[c])?;
                let var = self.take(weights, "running_var", &[c])?;
                let mut scale = vec![0.0; c];
                let mut shift = vec![0.0; c];
                for i in 0..c {
                    let s = gamma[i] as f64 / (var[i] as f64 + eps).sqrt();
                    scale[i] = s as f32;
                    shift[i] = (beta[i] as f64 - mean[i] as f64 * s) as f32;
                }
                (Op::BatchNorm { scale, shift }, in_shape.to_vec())
            }
            other => return Err(Error::model(format!("unsupported layer type `{other}`"))),
        };
        Ok(Layer {
            name: self.name.clone(),
            kind: self.kind.clone(),
            op,
            inputs: Vec::new(),
            in_shape: in_shape.to_vec(),
            out_shape,
        })
    }
}
