//! The layer types of the architecture format: each has a forward that keeps what its
//! backward needs (the `Memo`) and a backward that returns the input gradient only.

use super::graph_ops::{self, LayerNorm, MapFn, MatMul, Nary, Reduce, Select};
use super::kernels::{self, ConvGeom, Planes, Window2d};
use super::tensor::Batch;
use crate::error::{Error, Result};

/// A convolution's adjoint weights, computed once when first needed.
pub type Adjoint = std::sync::Arc<std::sync::OnceLock<Vec<f32>>>;

/// A layer with its weights, ready to run.
#[derive(Clone, Debug)]
pub enum Op {
    Linear {
        inp: usize,
        out: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
        /// Wᵀ ([inp, out]), made on a wide layer's first forward: gemm reads it without
        /// the transposing pack it gave W on every call (a third of a MiniLM forward).
        transposed: Adjoint,
    },
    Conv2d {
        out: usize,
        groups: usize,
        win: Window2d,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
        /// The weights of the input gradient as a convolution (`kernels::adjoint_geom`),
        /// made at the first backward that uses them and shared by the model's copies.
        adjoint: Adjoint,
    },
    Relu,
    LeakyRelu {
        slope: f32,
    },
    Sigmoid,
    Tanh,
    Gelu {
        tanh_approx: bool,
    },
    /// Softmax along `axis` of the sample (the batch axis excluded).
    Softmax {
        axis: usize,
    },
    MaxPool2d {
        win: Window2d,
    },
    AvgPool2d {
        win: Window2d,
        count_include_pad: bool,
    },
    AdaptiveAvgPool2d {
        out: (usize, usize),
    },
    /// Reshape only: values keep their order (PyTorch's flatten is row-major).
    Flatten,
    Identity,
    /// Eval-mode batch norm folded to a per-channel affine map `x·scale + shift`.
    BatchNorm {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    /// The transpose of `Conv2d` (weight `[in, out / groups, kh, kw]`): its forward is a
    /// convolution's input gradient, its backward a convolution.
    ConvTranspose2d {
        out: usize,
        groups: usize,
        win: Window2d,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    Map(MapFn),
    /// An element-wise function of several inputs and constants (broadcasting).
    Nary(Nary),
    /// Values copied from the inputs: transpose, slice, gather, pad, expand, concat.
    Select(Select),
    /// Weighted sums of the input's values: linear and cubic resizing.
    Mix(graph_ops::Mix),
    Reduce(Reduce),
    /// The product of the layer's two inputs.
    MatMul(MatMul),
    LayerNorm(LayerNorm),
    /// Rows of a constant table looked up by the input's values (token ids).
    Embedding {
        table: Vec<f32>,
        dim: usize,
    },
    /// An operator the loader could not translate: running it is an error.
    Unsupported {
        reason: String,
    },
}

/// What a forward pass keeps for the backward besides the layer's input and output.
#[derive(Clone, Debug, Default)]
pub enum Memo {
    #[default]
    None,
    /// For each max-pool output, the index of its maximum in its plane.
    Argmax(Vec<u32>),
}

/// A layer of a model: its hook-point name, its architecture type and the op.
#[derive(Clone, Debug)]
pub struct Layer {
    pub name: String,
    pub kind: String,
    pub op: Op,
    /// The values the layer reads: 0 is the model's input, i + 1 the output of layer i.
    /// A layer of a sequential model reads its predecessor's output (`[index]`).
    pub inputs: Vec<usize>,
    /// Shape of one sample of the input / output (batch dimension excluded).
    pub in_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
}

/// A layer's weights, bias and (when laid out output channel first) output channels.
pub type WeightsMut<'a> = (&'a mut Vec<f32>, &'a mut Option<Vec<f32>>, Option<usize>);

impl Op {
    /// A linear or (non-transposed) convolution layer: the layers TracIn takes gradients
    /// of and randomization re-initialises.
    pub fn is_linear_or_conv(&self) -> bool {
        matches!(self, Op::Linear { .. } | Op::Conv2d { .. })
    }

    /// The weights and bias of a linear or convolution layer's own copy, for changing
    /// them: the caches made from the weights (a transposed or flipped copy) are reset,
    /// since a clone shares them. Also the layer's output channels when its weights are
    /// laid out output channel first (not a transposed convolution's).
    pub fn weights_mut(&mut self) -> Option<WeightsMut<'_>> {
        match self {
            Op::Linear {
                out,
                weight,
                bias,
                transposed,
                ..
            } => {
                *transposed = Default::default();
                Some((weight, bias, Some(*out)))
            }
            Op::Conv2d {
                out,
                weight,
                bias,
                adjoint,
                ..
            } => {
                *adjoint = Default::default();
                Some((weight, bias, Some(*out)))
            }
            Op::ConvTranspose2d { weight, bias, .. } => Some((weight, bias, None)),
            _ => None,
        }
    }

    pub fn param_count(&self) -> usize {
        match self {
            Op::Linear { weight, bias, .. }
            | Op::Conv2d { weight, bias, .. }
            | Op::ConvTranspose2d { weight, bias, .. } => weight.len() + bias.as_ref().map_or(0, Vec::len),
            Op::LayerNorm(ln) => ln.scale.as_ref().map_or(0, Vec::len) + ln.bias.as_ref().map_or(0, Vec::len),
            Op::Embedding { table, .. } => table.len(),
            // weight, bias (the running statistics are buffers, not parameters)
            Op::BatchNorm { scale, .. } => 2 * scale.len(),
            _ => 0,
        }
    }

    /// The output of an element-wise layer (each value a function of the value at the
    /// same position, and of its channel for batch norm: `inner` values per channel), or
    /// None for other layers. Shared by the forward and by the forward over a box
    /// (`model::local`), which sees the same functions on fewer values.
    pub fn pointwise(&self, xs: &[f32], inner: usize) -> Option<Vec<f32>> {
        Some(match self {
            Op::Relu => map(xs, |v| if v > 0.0 { v } else { 0.0 }),
            Op::LeakyRelu { slope } => map(xs, |v| if v > 0.0 { v } else { v * slope }),
            Op::Sigmoid => map(xs, |v| 1.0 / (1.0 + (-v).exp())),
            Op::Tanh => map(xs, f32::tanh),
            // A constant flag per loop, so that each loop vectorises.
            Op::Gelu { tanh_approx: false } => map(xs, |v| gelu_forward(v, false)),
            Op::Gelu { tanh_approx: true } => map(xs, |v| gelu_forward(v, true)),
            // Erf alone, so that its loop vectorises (ONNX exports spell GELU with it).
            Op::Map(MapFn::Erf) => map(xs, super::kernels::erf),
            Op::Map(f) => f.apply_all(xs),
            Op::Identity => xs.to_vec(),
            Op::BatchNorm { scale, shift } => {
                let channels = scale.len();
                let inner = inner.max(1);
                xs.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let c = (i / inner) % channels;
                        v * scale[c] + shift[c]
                    })
                    .collect()
            }
            _ => return None,
        })
    }

    /// True for element-wise nonlinearities, whose backward a rule may replace.
    pub fn is_nonlinearity(&self) -> bool {
        matches!(
            self,
            Op::Relu | Op::LeakyRelu { .. } | Op::Sigmoid | Op::Tanh | Op::Gelu { .. } | Op::Softmax { .. }
        )
    }
}

// GELU in float32, as PyTorch computes it (a float32 erf and exp: a transformer's
// GELUs are a tenth of its integrated gradients in f64); the erf without branches, so
// that the layer's loop vectorises.
fn gelu_forward(x: f32, tanh_approx: bool) -> f32 {
    if tanh_approx {
        let k = (2.0 / std::f32::consts::PI).sqrt();
        0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
    } else {
        0.5 * x * (1.0 + super::kernels::erf(x / std::f32::consts::SQRT_2))
    }
}

fn gelu_grad(x: f32, tanh_approx: bool) -> f32 {
    if tanh_approx {
        let k = (2.0 / std::f32::consts::PI).sqrt();
        let t = (k * (x + 0.044715 * x * x * x)).tanh();
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
    } else {
        let cdf = 0.5 * (1.0 + super::kernels::erf(x / std::f32::consts::SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt();
        cdf + x * pdf
    }
}

/// (outer, axis length, inner) strides for an axis of a sample shape.
fn axis_split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

impl Layer {
    /// Runs a layer of one input on a batch. With `keep`, also returns what its backward needs.
    pub fn forward(&self, x: &Batch, keep: bool) -> Result<(Batch, Memo)> {
        self.forward_args(&[x], keep)
    }

    /// Runs the layer on its inputs (one batch per entry of `inputs`).
    pub fn forward_args(&self, args: &[&Batch], keep: bool) -> Result<(Batch, Memo)> {
        let x = self.first_input(args)?;
        let n = x.rows();
        let xs = x.data();
        let mut shape = Vec::with_capacity(self.out_shape.len() + 1);
        shape.push(n);
        shape.extend_from_slice(&self.out_shape);
        let zeros = || vec![0.0f32; shape.iter().product()];
        let mut memo = Memo::None;
        // Element-wise layers collect their output; the others write into zeros.
        let data = match &self.op {
            Op::Linear {
                inp,
                out,
                weight,
                bias,
                transposed,
            } => {
                let mut ys = zeros();
                let rows = xs.len() / inp;
                let weights = if kernels::is_wide(*inp, *out) {
                    kernels::Weights::Transposed(transposed.get_or_init(|| kernels::transpose(weight, *out, *inp)))
                } else {
                    kernels::Weights::Rows(weight)
                };
                kernels::linear_forward(xs, rows, *inp, *out, weights, bias.as_deref(), &mut ys);
                ys
            }
            Op::Conv2d {
                out,
                groups,
                win,
                weight,
                bias,
                ..
            } => {
                let mut ys = zeros();
                let g = self.conv_geom(*out, *groups, win);
                kernels::conv2d_forward(xs, n, &g, weight, bias.as_deref(), &mut ys);
                ys
            }
            Op::Relu
            | Op::LeakyRelu { .. }
            | Op::Sigmoid
            | Op::Tanh
            | Op::Gelu { .. }
            | Op::Map(_)
            | Op::Identity
            | Op::BatchNorm { .. } => {
                let inner = self.in_shape.get(1..).map_or(1, |s| s.iter().product());
                self.op
                    .pointwise(xs, inner)
                    .ok_or_else(|| Error::model(format!("internal: `{}` is not an element-wise layer", self.name)))?
            }
            Op::Softmax { axis } => {
                let mut ys = zeros();
                let (outer, len, inner) = axis_split(&self.in_shape, *axis);
                if inner == 1 {
                    // The softmax axis is the last: each slice in place, loops that vectorise.
                    for (x, y) in xs.chunks_exact(len.max(1)).zip(ys.chunks_exact_mut(len.max(1))) {
                        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        y.iter_mut().zip(x).for_each(|(y, x)| *y = kernels::exp(x - max));
                        let sum: f32 = y.iter().sum();
                        y.iter_mut().for_each(|y| *y /= sum);
                    }
                } else {
                    for block in 0..n * outer {
                        for i in 0..inner {
                            let at = |k: usize| block * len * inner + k * inner + i;
                            let max = (0..len).map(|k| xs[at(k)]).fold(f32::NEG_INFINITY, f32::max);
                            let mut sum = 0.0f32;
                            for k in 0..len {
                                let e = kernels::exp(xs[at(k)] - max);
                                ys[at(k)] = e;
                                sum += e;
                            }
                            for k in 0..len {
                                ys[at(k)] /= sum;
                            }
                        }
                    }
                }
                ys
            }
            Op::MaxPool2d { win } => {
                let mut ys = zeros();
                let arg = kernels::maxpool2d_forward(xs, self.planes(n), win, &mut ys, keep);
                if keep {
                    memo = Memo::Argmax(arg);
                }
                ys
            }
            Op::AvgPool2d { win, count_include_pad } => {
                let mut ys = zeros();
                kernels::avgpool2d(xs, self.planes(n), win, *count_include_pad, &mut ys, false);
                ys
            }
            Op::AdaptiveAvgPool2d { .. } => {
                let mut ys = zeros();
                kernels::adaptive_avgpool2d(xs, self.planes(n), &mut ys, false);
                ys
            }
            Op::Flatten => xs.to_vec(),
            Op::ConvTranspose2d {
                out,
                groups,
                win,
                weight,
                bias,
            } => {
                let mut ys = zeros();
                kernels::conv2d_backward(xs, n, &self.transposed_geom(*out, *groups, win), weight, &mut ys);
                if let Some(bias) = bias {
                    let plane: usize = self.out_shape[1..].iter().product();
                    for (i, y) in ys.iter_mut().enumerate() {
                        *y += bias[(i / plane) % out];
                    }
                }
                ys
            }
            Op::Nary(nary) => nary.forward(args, shape[1..].iter().product()),
            Op::Select(select) => select.forward(args),
            Op::Mix(mix) => mix.forward(x),
            Op::Reduce(reduce) => {
                let (ys, arg) = reduce.forward(x, shape[1..].iter().product());
                if keep {
                    memo = Memo::Argmax(arg);
                }
                ys
            }
            Op::MatMul(mm) => mm.forward(x, self.second_input(args)?),
            Op::LayerNorm(ln) => ln.forward(xs),
            Op::Embedding { table, dim } => graph_ops::embedding_forward(table, *dim, xs)
                .map_err(|e| Error::value(format!("layer `{}`: {e}", self.name)))?,
            Op::Unsupported { .. } => Vec::new(),
        };
        Ok((Batch::new(shape, data)?, memo))
    }

    /// The layer's first input, or why it cannot run.
    fn first_input<'a>(&self, args: &[&'a Batch]) -> Result<&'a Batch> {
        if let Op::Unsupported { reason } = &self.op {
            return Err(Error::model(reason.clone()));
        }
        args.first()
            .copied()
            .ok_or_else(|| Error::model(format!("internal: layer `{}` was given no input", self.name)))
    }

    /// The second input of a layer of two (a product).
    fn second_input<'a>(&self, args: &[&'a Batch]) -> Result<&'a Batch> {
        args.get(1)
            .copied()
            .ok_or_else(|| Error::model(format!("internal: `{}` needs two inputs", self.name)))
    }

    /// The input gradient of a layer of one input, given its input `x`, output `y`, memo
    /// and output gradient.
    pub fn backward(&self, x: &Batch, y: &Batch, memo: &Memo, gy: &Batch) -> Result<Batch> {
        let mut grads = self.backward_args(&[x], y, memo, gy)?;
        Ok(grads.swap_remove(0).unwrap_or_else(|| Batch::zeros(x.shape().to_vec())))
    }

    /// The gradient for each of the layer's inputs (`None`: the input gets none, as the
    /// indices of a lookup).
    pub fn backward_args(&self, args: &[&Batch], y: &Batch, memo: &Memo, gy: &Batch) -> Result<Vec<Option<Batch>>> {
        let x = self.first_input(args)?;
        let n = x.rows();
        let xs = x.data();
        let ys = y.data();
        let gys = gy.data();
        let zeros = || vec![0.0f32; xs.len()];
        // Element-wise layers collect their gradient; the others write into zeros.
        let data = match &self.op {
            Op::Linear { inp, out, weight, .. } => {
                let mut gxs = zeros();
                kernels::linear_backward(gys, xs.len() / inp, *inp, *out, weight, &mut gxs);
                gxs
            }
            Op::Conv2d {
                out,
                groups,
                win,
                weight,
                adjoint,
                ..
            } => {
                let mut gxs = zeros();
                let g = self.conv_geom(*out, *groups, win);
                match kernels::adjoint_geom(&g) {
                    Some(ag) => {
                        let w = adjoint.get_or_init(|| kernels::adjoint_weights(&g, weight));
                        kernels::conv2d_forward(gys, n, &ag, w, None, &mut gxs);
                    }
                    None => kernels::conv2d_backward(gys, n, &g, weight, &mut gxs),
                }
                gxs
            }
            // PyTorch's relu backward passes the gradient where the output is > 0.
            Op::Relu => zip(xs, gys, |x, g| if x > 0.0 { g } else { 0.0 }),
            Op::LeakyRelu { slope } => zip(xs, gys, |x, g| if x > 0.0 { g } else { g * slope }),
            Op::Sigmoid => zip(ys, gys, |y, g| g * y * (1.0 - y)),
            Op::Tanh => zip(ys, gys, |y, g| g * (1.0 - y * y)),
            Op::Gelu { tanh_approx } => zip(xs, gys, |x, g| g * gelu_grad(x, *tanh_approx)),
            Op::Softmax { axis } => {
                let mut gxs = zeros();
                let (outer, len, inner) = axis_split(&self.in_shape, *axis);
                for block in 0..n * outer {
                    for i in 0..inner {
                        let at = |k: usize| block * len * inner + k * inner + i;
                        let dot: f32 = (0..len).map(|k| gys[at(k)] * ys[at(k)]).sum();
                        for k in 0..len {
                            gxs[at(k)] = ys[at(k)] * (gys[at(k)] - dot);
                        }
                    }
                }
                gxs
            }
            Op::MaxPool2d { .. } => {
                let Memo::Argmax(arg) = memo else {
                    return Err(Error::model(format!(
                        "internal: max-pool `{}` has no recorded maxima",
                        self.name
                    )));
                };
                let mut gxs = zeros();
                kernels::maxpool2d_backward(gys, arg, self.planes(n), &mut gxs);
                gxs
            }
            Op::AvgPool2d { win, count_include_pad } => {
                let mut gxs = zeros();
                kernels::avgpool2d(gys, self.planes(n), win, *count_include_pad, &mut gxs, true);
                gxs
            }
            Op::AdaptiveAvgPool2d { .. } => {
                let mut gxs = zeros();
                kernels::adaptive_avgpool2d(gys, self.planes(n), &mut gxs, true);
                gxs
            }
            Op::Flatten | Op::Identity => gys.to_vec(),
            Op::BatchNorm { scale, .. } => {
                let channels = scale.len();
                let inner: usize = self.in_shape[1..].iter().product();
                gys.iter()
                    .enumerate()
                    .map(|(i, g)| g * scale[(i / inner) % channels])
                    .collect()
            }
            Op::ConvTranspose2d {
                out,
                groups,
                win,
                weight,
                ..
            } => {
                let mut gxs = zeros();
                kernels::conv2d_forward(
                    gys,
                    n,
                    &self.transposed_geom(*out, *groups, win),
                    weight,
                    None,
                    &mut gxs,
                );
                gxs
            }
            Op::Map(f) => f.backward_all(xs, ys, gys),
            Op::Reduce(reduce) => {
                let arg = match memo {
                    Memo::Argmax(arg) => arg.as_slice(),
                    Memo::None => &[],
                };
                if arg.is_empty() && matches!(reduce.kind, graph_ops::ReduceKind::Max | graph_ops::ReduceKind::Min) {
                    return Err(Error::model(format!(
                        "internal: `{}` has no recorded extrema",
                        self.name
                    )));
                }
                reduce.backward(x, arg, gy).into_data()
            }
            Op::LayerNorm(ln) => ln.backward(xs, gys),
            Op::Mix(mix) => mix.backward(x, gy),
            // Layers of several inputs return a gradient for each.
            Op::Nary(nary) => return Ok(nary.backward(args, y, gy)),
            Op::Select(select) => return Ok(select.backward(args, gy)),
            Op::MatMul(mm) => {
                let (ga, gb) = mm.backward(x, self.second_input(args)?, gy);
                return Ok(vec![Some(ga), Some(gb)]);
            }
            Op::Embedding { .. } | Op::Unsupported { .. } => return Ok(vec![None]),
        };
        Ok(vec![Some(Batch::new(x.shape().to_vec(), data)?)])
    }

    /// The convolution whose input gradient a transposed convolution computes: its input
    /// is this layer's output and its output this layer's input.
    fn transposed_geom(&self, out: usize, groups: usize, win: &Window2d) -> ConvGeom {
        let ([_, h, w], [_, oh, ow]) = (planar(&self.out_shape), planar(&self.in_shape));
        ConvGeom {
            c: out,
            h,
            w,
            out: self.in_shape[0],
            groups,
            win: *win,
            oh,
            ow,
        }
    }

    fn conv_geom(&self, out: usize, groups: usize, win: &Window2d) -> ConvGeom {
        let ([c, h, w], [_, oh, ow]) = (planar(&self.in_shape), planar(&self.out_shape));
        ConvGeom {
            c,
            h,
            w,
            out,
            groups,
            win: *win,
            oh,
            ow,
        }
    }

    /// The planes of a pooling layer over a batch of n.
    fn planes(&self, n: usize) -> Planes {
        let ([c, h, w], [_, oh, ow]) = (planar(&self.in_shape), planar(&self.out_shape));
        Planes {
            planes: n * c,
            h,
            w,
            oh,
            ow,
        }
    }
}

/// A convolution's or pool's sample shape as (channels, height, width): a sequence
/// `[channels, length]` is an image of one row (its kernels are 1 × k).
pub(crate) fn planar(shape: &[usize]) -> [usize; 3] {
    match *shape {
        [c, l] => [c, 1, l],
        [c, h, w] => [c, h, w],
        // Pools over more leading axes fold them into the planes.
        _ => {
            let r = shape.len();
            [
                shape[..r.saturating_sub(2)].iter().product(),
                shape.get(r.wrapping_sub(2)).copied().unwrap_or(1),
                shape.last().copied().unwrap_or(1),
            ]
        }
    }
}

fn map(xs: &[f32], f: impl Fn(f32) -> f32) -> Vec<f32> {
    xs.iter().map(|x| f(*x)).collect()
}

fn zip(a: &[f32], g: &[f32], f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    a.iter().zip(g).map(|(a, g)| f(*a, *g)).collect()
}
