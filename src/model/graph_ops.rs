//! The operators graph models (ONNX) add to the layer types: element-wise functions with
//! NumPy broadcasting over several operands, index selections (transpose, slice, gather,
//! pad, expand, concat), reductions, products of two values, layer norm and embeddings.
//! Every one has an input-gradient backward. Index maps are computed once, when the
//! model is loaded, over one sample's shape (the batch axis never moves).

use super::kernels;
use super::tensor::Batch;

/// An element-wise function of one value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MapFn {
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    Erf,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Neg,
    Abs,
    Clip {
        min: f32,
        max: f32,
    },
    /// A cast to an integer type: truncation, no gradient.
    Trunc,
    /// A cast to bool: 1 where non-zero, no gradient.
    NonZero,
    /// Logical not of a 0/1 value, no gradient.
    Not,
    Elu {
        alpha: f32,
    },
    Selu {
        alpha: f32,
        gamma: f32,
    },
    /// ln(1 + eˣ), as PyTorch's threshold-free form (ONNX Softplus).
    Softplus,
}

impl MapFn {
    /// An activation function as a module (what Zennit's composites let relevance pass).
    pub fn is_activation(self) -> bool {
        matches!(
            self,
            MapFn::HardSigmoid { .. }
                | MapFn::HardSwish
                | MapFn::Elu { .. }
                | MapFn::Selu { .. }
                | MapFn::Softplus
                | MapFn::Clip { .. }
        )
    }

    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            MapFn::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            MapFn::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            MapFn::Erf => super::kernels::erf(x),
            MapFn::Exp => x.exp(),
            MapFn::Log => x.ln(),
            MapFn::Sqrt => x.sqrt(),
            MapFn::Reciprocal => 1.0 / x,
            MapFn::Neg => -x,
            MapFn::Abs => x.abs(),
            MapFn::Clip { min, max } => x.max(min).min(max),
            MapFn::Trunc => x.trunc(),
            MapFn::NonZero => f32::from(x != 0.0),
            MapFn::Not => f32::from(x == 0.0),
            MapFn::Elu { alpha } => {
                if x > 0.0 {
                    x
                } else {
                    alpha * x.exp_m1()
                }
            }
            MapFn::Selu { alpha, gamma } => {
                if x > 0.0 {
                    gamma * x
                } else {
                    gamma * alpha * x.exp_m1()
                }
            }
            MapFn::Softplus => {
                // ln(1 + eˣ) without overflow for large x.
                if x > 20.0 { x } else { x.exp().ln_1p() }
            }
        }
    }

    /// `apply` over a slice, dispatched once per call: in each arm the variant is known,
    /// so `apply`'s match folds away and the loop vectorises (a per-value dispatch made
    /// MobileNetV3's hard-swish a sixth of its forward).
    pub fn apply_all(self, xs: &[f32]) -> Vec<f32> {
        macro_rules! each {
            ($f:expr) => {
                xs.iter().map(|&x| $f.apply(x)).collect()
            };
        }
        match self {
            MapFn::HardSwish => each!(MapFn::HardSwish),
            MapFn::HardSigmoid { alpha, beta } => each!(MapFn::HardSigmoid { alpha, beta }),
            MapFn::Erf => each!(MapFn::Erf),
            MapFn::Clip { min, max } => each!(MapFn::Clip { min, max }),
            MapFn::Neg => each!(MapFn::Neg),
            MapFn::Abs => each!(MapFn::Abs),
            MapFn::Reciprocal => each!(MapFn::Reciprocal),
            MapFn::Sqrt => each!(MapFn::Sqrt),
            other => each!(other),
        }
    }

    /// `g · derivative(x, y)` over slices, dispatched once per call as `apply_all`.
    pub fn backward_all(self, xs: &[f32], ys: &[f32], gys: &[f32]) -> Vec<f32> {
        macro_rules! each {
            ($f:expr) => {
                xs.iter()
                    .zip(ys)
                    .zip(gys)
                    .map(|((x, y), g)| g * $f.derivative(*x, *y))
                    .collect()
            };
        }
        match self {
            MapFn::HardSwish => each!(MapFn::HardSwish),
            MapFn::HardSigmoid { alpha, beta } => each!(MapFn::HardSigmoid { alpha, beta }),
            MapFn::Erf => each!(MapFn::Erf),
            MapFn::Clip { min, max } => each!(MapFn::Clip { min, max }),
            other => each!(other),
        }
    }

    /// dy/dx at input x with output y (PyTorch's conventions at the kinks).
    #[inline]
    pub fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            MapFn::HardSigmoid { alpha, beta } => {
                let z = alpha * x + beta;
                if z > 0.0 && z < 1.0 { alpha } else { 0.0 }
            }
            MapFn::HardSwish => {
                if x < -3.0 {
                    0.0
                } else if x <= 3.0 {
                    x / 3.0 + 0.5
                } else {
                    1.0
                }
            }
            MapFn::Erf => 2.0 / std::f32::consts::PI.sqrt() * (-x * x).exp(),
            MapFn::Exp => y,
            MapFn::Log => 1.0 / x,
            MapFn::Sqrt => 0.5 / y,
            MapFn::Reciprocal => -y * y,
            MapFn::Neg => -1.0,
            MapFn::Abs => x.signum() * f32::from(x != 0.0),
            MapFn::Clip { min, max } => f32::from(x >= min && x <= max),
            MapFn::Trunc | MapFn::NonZero | MapFn::Not => 0.0,
            MapFn::Elu { alpha } => {
                if x > 0.0 {
                    1.0
                } else {
                    alpha * x.exp()
                }
            }
            MapFn::Selu { alpha, gamma } => {
                if x > 0.0 {
                    gamma
                } else {
                    gamma * alpha * x.exp()
                }
            }
            MapFn::Softplus => 1.0 / (1.0 + (-x).exp()),
        }
    }
}

/// A function of several operands, element by element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NaryKind {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    Equal,
    Less,
    Greater,
    LessOrEqual,
    GreaterOrEqual,
    /// where(condition, x, y)
    Where,
    /// The remainder with the sign of the divisor (ONNX Mod, fmod = 0; Python's %).
    Mod,
    /// The remainder with the sign of the dividend (ONNX Mod, fmod = 1; C's fmod).
    Fmod,
    And,
    Or,
    /// prelu(x, slope): x where x > 0, else slope·x (the slope broadcast, per channel).
    PRelu,
}

impl NaryKind {
    pub fn arity(self) -> usize {
        if self == NaryKind::Where { 3 } else { 2 }
    }

    pub fn apply(self, a: &[f64]) -> f64 {
        match self {
            NaryKind::Add => a[0] + a[1],
            NaryKind::Sub => a[0] - a[1],
            NaryKind::Mul => a[0] * a[1],
            NaryKind::Div => a[0] / a[1],
            NaryKind::Pow => a[0].powf(a[1]),
            NaryKind::Max => a[0].max(a[1]),
            NaryKind::Min => a[0].min(a[1]),
            NaryKind::Equal => f64::from(u8::from(a[0] == a[1])),
            NaryKind::Less => f64::from(u8::from(a[0] < a[1])),
            NaryKind::Greater => f64::from(u8::from(a[0] > a[1])),
            NaryKind::LessOrEqual => f64::from(u8::from(a[0] <= a[1])),
            NaryKind::GreaterOrEqual => f64::from(u8::from(a[0] >= a[1])),
            NaryKind::Mod => a[0] - a[1] * (a[0] / a[1]).floor(),
            NaryKind::Fmod => a[0] % a[1],
            NaryKind::And => f64::from(u8::from(a[0] != 0.0 && a[1] != 0.0)),
            NaryKind::Or => f64::from(u8::from(a[0] != 0.0 || a[1] != 0.0)),
            NaryKind::PRelu => {
                if a[0] > 0.0 {
                    a[0]
                } else {
                    a[1] * a[0]
                }
            }
            NaryKind::Where => {
                if a[0] != 0.0 {
                    a[1]
                } else {
                    a[2]
                }
            }
        }
    }

    /// `apply` on float32 operands: each function is one correctly rounded operation in
    /// f64, so rounding the result gives float32 arithmetic's answer.
    fn apply_f32(self, a: &[f32]) -> f32 {
        let mut wide = [0.0f64; 3];
        for (w, v) in wide.iter_mut().zip(a) {
            *w = *v as f64;
        }
        self.apply(&wide[..a.len()]) as f32
    }

    /// ∂y/∂a[k]. Ties of max/min split the gradient evenly, as PyTorch does.
    fn partial(self, k: usize, a: &[f32], y: f32) -> f32 {
        match (self, k) {
            (NaryKind::Add, _) => 1.0,
            (NaryKind::Sub, 0) => 1.0,
            (NaryKind::Sub, _) => -1.0,
            (NaryKind::Mul, 0) => a[1],
            (NaryKind::Mul, _) => a[0],
            (NaryKind::Div, 0) => 1.0 / a[1],
            (NaryKind::Div, _) => -a[0] / (a[1] * a[1]),
            (NaryKind::Pow, 0) => {
                if a[1] == 0.0 {
                    0.0
                } else {
                    a[1] * a[0].powf(a[1] - 1.0)
                }
            }
            (NaryKind::Pow, _) => {
                if a[0] > 0.0 {
                    y * a[0].ln()
                } else {
                    0.0
                }
            }
            (NaryKind::Max | NaryKind::Min, _) => {
                let other = a[1 - k];
                if a[k] == other { 0.5 } else { f32::from(a[k] == y) }
            }
            (
                NaryKind::Equal
                | NaryKind::Less
                | NaryKind::Greater
                | NaryKind::LessOrEqual
                | NaryKind::GreaterOrEqual
                | NaryKind::And
                | NaryKind::Or,
                _,
            ) => 0.0,
            (NaryKind::Mod | NaryKind::Fmod, 0) => 1.0,
            (NaryKind::Mod, _) => -(a[0] / a[1]).floor(),
            (NaryKind::PRelu, 0) => {
                if a[0] > 0.0 {
                    1.0
                } else {
                    a[1]
                }
            }
            (NaryKind::PRelu, _) => {
                if a[0] > 0.0 {
                    0.0
                } else {
                    a[0]
                }
            }
            (NaryKind::Fmod, _) => -(a[0] / a[1]).trunc(),
            (NaryKind::Where, 0) => 0.0,
            (NaryKind::Where, 1) => f32::from(a[0] != 0.0),
            (NaryKind::Where, _) => f32::from(a[0] == 0.0),
        }
    }
}

/// One operand of an element-wise function: one of the layer's inputs, or a constant.
#[derive(Clone, Debug)]
pub enum Operand {
    Input(usize),
    Const(Vec<f32>),
}

/// An operand with the map from each output position (within a sample) to the operand's
/// position; `None` when the operand has the output's shape.
#[derive(Clone, Debug)]
pub struct Arg {
    pub operand: Operand,
    pub map: Option<Vec<u32>>,
    /// A constant read over and over along the output (map i ↦ i mod its length: a bias
    /// over the last axes), found once here so that the forward reads it in place.
    cycles: bool,
}

impl Arg {
    pub fn input(k: usize, map: Option<Vec<u32>>) -> Arg {
        Arg {
            operand: Operand::Input(k),
            map,
            cycles: false,
        }
    }

    pub fn constant(values: Vec<f32>, map: Option<Vec<u32>>) -> Arg {
        let cycles = map.as_deref().is_some_and(|m| is_cycle(m, values.len()));
        Arg {
            operand: Operand::Const(values),
            map,
            cycles,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Nary {
    pub kind: NaryKind,
    pub args: Vec<Arg>,
}

/// The two operands of a binary element-wise layer, one output row at a time: an
/// operand of the output's shape read in place, a scalar or a bias along the last axes
/// read as it is, another constant gathered once, a broadcast input gathered per row.
struct BinaryRows<'a> {
    rows: Vec<RowSource<'a>>,
    /// Row buffers, allocated for the operands that need one.
    gathered: [Vec<f32>; 2],
    out_len: usize,
}

enum RowSource<'a> {
    Each(&'a [f32]),
    Same(std::borrow::Cow<'a, [f32]>),
    /// One value everywhere.
    Scalar(f32),
    /// The constant repeated along the row (a bias over the last axes).
    Cycle(&'a [f32]),
    Gather(&'a Batch, &'a [u32]),
}

/// One operand of one output row, as the forward reads it.
#[derive(Clone, Copy)]
enum RowOperand<'a> {
    Slice(&'a [f32]),
    Scalar(f32),
    Cycle(&'a [f32]),
}

impl<'a> BinaryRows<'a> {
    fn new(args: &'a [Arg], xs: &[&'a Batch], out_len: usize) -> BinaryRows<'a> {
        let rows: Vec<RowSource> = args
            .iter()
            .map(|arg| match (&arg.operand, &arg.map) {
                (Operand::Input(k), None) => RowSource::Each(xs[*k].data()),
                (Operand::Input(k), Some(m)) => RowSource::Gather(xs[*k], m),
                (Operand::Const(c), None) => RowSource::Same(std::borrow::Cow::Borrowed(c)),
                (Operand::Const(c), Some(_)) if c.len() == 1 => RowSource::Scalar(c[0]),
                (Operand::Const(c), Some(_)) if arg.cycles => RowSource::Cycle(c),
                (Operand::Const(c), Some(m)) => RowSource::Same(m.iter().map(|&j| c[j as usize]).collect()),
            })
            .collect();
        let buffer = |i: usize| match rows.get(i) {
            Some(RowSource::Gather(..)) => vec![0.0; out_len],
            _ => Vec::new(),
        };
        let gathered = [buffer(0), buffer(1)];
        BinaryRows {
            rows,
            gathered,
            out_len,
        }
    }

    /// A forward's operands of row `r`, without laying out scalars and biases.
    fn operands(&mut self, r: usize) -> (RowOperand<'_>, RowOperand<'_>) {
        self.gather(r);
        let len = self.out_len;
        let operand = |i: usize| match &self.rows[i] {
            RowSource::Each(d) => RowOperand::Slice(&d[r * len..(r + 1) * len]),
            RowSource::Same(c) => RowOperand::Slice(c),
            RowSource::Scalar(v) => RowOperand::Scalar(*v),
            RowSource::Cycle(c) => RowOperand::Cycle(c),
            RowSource::Gather(..) => RowOperand::Slice(&self.gathered[i]),
        };
        (operand(0), operand(1))
    }

    fn gather(&mut self, r: usize) {
        for (source, buf) in self.rows.iter().zip(self.gathered.iter_mut()) {
            if let RowSource::Gather(x, m) = source {
                let src = x.row(r);
                for (g, &j) in buf.iter_mut().zip(m.iter()) {
                    *g = src[j as usize];
                }
            }
        }
    }

    /// Both operands of output row `r`, as slices: a scalar or cycled constant is laid out
    /// once, on the first call (only the backward's products read them so).
    fn row(&mut self, r: usize) -> (&[f32], &[f32]) {
        let len = self.out_len;
        for (source, buf) in self.rows.iter().zip(self.gathered.iter_mut()) {
            match source {
                RowSource::Scalar(v) if buf.is_empty() => buf.resize(len, *v),
                RowSource::Cycle(c) if buf.is_empty() => buf.extend(c.iter().cycle().take(len)),
                _ => {}
            }
        }
        self.gather(r);
        let len = self.out_len;
        let operand = |i: usize| -> &[f32] {
            match &self.rows[i] {
                RowSource::Each(d) => &d[r * len..(r + 1) * len],
                RowSource::Same(c) => c,
                _ => &self.gathered[i],
            }
        };
        (operand(0), operand(1))
    }
}

/// Whether `map` reads a `period`-long constant over and over (i ↦ i mod period).
fn is_cycle(map: &[u32], period: usize) -> bool {
    period > 0
        && map.len().is_multiple_of(period)
        && map
            .chunks_exact(period)
            .all(|c| c.iter().enumerate().all(|(i, &j)| j as usize == i))
}

/// `f` over one output row; the operand kinds matched so each loop vectorises.
fn apply_row(dst: &mut Vec<f32>, len: usize, a: RowOperand, b: RowOperand, f: impl Fn(f32, f32) -> f32 + Copy) {
    use RowOperand::{Cycle, Scalar, Slice};
    match (a, b) {
        (Slice(a), Slice(b)) => dst.extend(a.iter().zip(b).map(|(a, b)| f(*a, *b))),
        (Slice(a), Scalar(b)) => dst.extend(a.iter().map(|a| f(*a, b))),
        (Scalar(a), Slice(b)) => dst.extend(b.iter().map(|b| f(a, *b))),
        (Slice(a), Cycle(c)) => {
            for a in a.chunks_exact(c.len()) {
                dst.extend(a.iter().zip(c).map(|(a, b)| f(*a, *b)));
            }
        }
        (Cycle(c), Slice(b)) => {
            for b in b.chunks_exact(c.len()) {
                dst.extend(c.iter().zip(b).map(|(a, b)| f(*a, *b)));
            }
        }
        // Two constants: folded by the loader, but kept correct here.
        (a, b) => {
            let at = |o: RowOperand, i: usize| match o {
                Slice(s) => s[i],
                Scalar(v) => v,
                Cycle(c) => c[i % c.len()],
            };
            dst.extend((0..len).map(|i| f(at(a, i), at(b, i))));
        }
    }
}

impl Nary {
    /// Each operand laid out like the output (n rows of `out_len`): an input of the
    /// output's shape is borrowed, the others are gathered through their maps once.
    fn operands<'a>(&'a self, xs: &[&'a Batch], n: usize) -> Vec<std::borrow::Cow<'a, [f32]>> {
        use std::borrow::Cow;
        self.args
            .iter()
            .map(|arg| match (&arg.operand, &arg.map) {
                (Operand::Input(k), None) => Cow::Borrowed(xs[*k].data()),
                (Operand::Input(k), Some(m)) => {
                    let x = xs[*k];
                    Cow::Owned(
                        (0..n)
                            .flat_map(|r| m.iter().map(move |&j| x.row(r)[j as usize]))
                            .collect(),
                    )
                }
                (Operand::Const(c), map) => {
                    let one: Vec<f32> = match map {
                        Some(m) => m.iter().map(|&j| c[j as usize]).collect(),
                        None => c.clone(),
                    };
                    Cow::Owned(one.repeat(n))
                }
            })
            .collect()
    }

    pub fn forward(&self, xs: &[&Batch], out_len: usize) -> Vec<f32> {
        let n = xs.first().map_or(1, |x| x.rows());
        // The four arithmetic operations in float32 directly: rounding their f64 result
        // to float32 gives the same bits (one correctly rounded operation either way).
        match self.kind {
            NaryKind::Add => return self.arithmetic(xs, n, out_len, |a, b| a + b),
            NaryKind::Sub => return self.arithmetic(xs, n, out_len, |a, b| a - b),
            NaryKind::Mul => return self.arithmetic(xs, n, out_len, |a, b| a * b),
            NaryKind::Div => return self.arithmetic(xs, n, out_len, |a, b| a / b),
            _ => {}
        }
        let ops = self.operands(xs, n);
        let mut a = [0.0f32; 3];
        (0..n * out_len)
            .map(|idx| {
                for (slot, op) in a.iter_mut().zip(&ops) {
                    *slot = op[idx];
                }
                self.kind.apply_f32(&a[..ops.len()])
            })
            .collect()
    }

    /// A binary arithmetic operation a row at a time, without laying the operands out
    /// like the output first (the general path's per-element dispatch and its n-fold
    /// copies of each bias were a third of a ViT's forward).
    fn arithmetic(&self, xs: &[&Batch], n: usize, out_len: usize, f: impl Fn(f32, f32) -> f32 + Copy) -> Vec<f32> {
        let mut ops = BinaryRows::new(&self.args, xs, out_len);
        let mut out = Vec::with_capacity(n * out_len);
        for r in 0..n {
            let (a, b) = ops.operands(r);
            apply_row(&mut out, out_len, a, b, f);
        }
        out
    }

    /// Add, Sub, Mul and Div backward a row at a time, with `partial`'s formulas (the same
    /// bits); Add and Sub read no operand (the general path's copies of every bias were
    /// most of a ViT's backward).
    fn arithmetic_backward(&self, xs: &[&Batch], gy: &Batch, grads: &mut [Option<Batch>]) {
        let (n, out_len) = (gy.rows(), gy.sample_len());
        let products = matches!(self.kind, NaryKind::Mul | NaryKind::Div);
        let mut ops = BinaryRows::new(&self.args, xs, out_len);
        let mut partial = vec![0.0f32; out_len];
        for r in 0..n {
            let (a, b) = if products { ops.row(r) } else { (&[][..], &[][..]) };
            for (k, arg) in self.args.iter().enumerate() {
                let Operand::Input(input) = arg.operand else { continue };
                let Some(gx) = grads[input].as_mut() else { continue };
                match (self.kind, k) {
                    (NaryKind::Mul, 0) => partial.copy_from_slice(b),
                    (NaryKind::Mul, _) => partial.copy_from_slice(a),
                    (NaryKind::Div, 0) => partial.iter_mut().zip(b).for_each(|(p, b)| *p = 1.0 / b),
                    (NaryKind::Div, _) => {
                        for ((p, a), b) in partial.iter_mut().zip(a).zip(b) {
                            *p = -a / (b * b);
                        }
                    }
                    (NaryKind::Sub, 1) => partial.fill(-1.0),
                    _ => partial.fill(1.0),
                }
                let (dst, g) = (gx.row_mut(r), gy.row(r));
                match &arg.map {
                    None => {
                        for ((d, g), p) in dst.iter_mut().zip(g).zip(&partial) {
                            *d += g * p;
                        }
                    }
                    Some(m) => {
                        for ((&j, g), p) in m.iter().zip(g).zip(&partial) {
                            dst[j as usize] += g * p;
                        }
                    }
                }
            }
        }
    }

    /// The gradient for each of the layer's inputs (summed over broadcast positions).
    pub fn backward(&self, xs: &[&Batch], y: &Batch, gy: &Batch) -> Vec<Option<Batch>> {
        let n = y.rows();
        let out_len = y.sample_len();
        let mut grads: Vec<Option<Batch>> = xs.iter().map(|x| Some(Batch::zeros(x.shape().to_vec()))).collect();
        if matches!(self.kind, NaryKind::Add | NaryKind::Sub | NaryKind::Mul | NaryKind::Div) {
            self.arithmetic_backward(xs, gy, &mut grads);
            return grads;
        }
        let ops = self.operands(xs, n);
        let mut a = [0.0f32; 3];
        for (k, arg) in self.args.iter().enumerate() {
            let Operand::Input(input) = arg.operand else { continue };
            let Some(gx) = grads[input].as_mut() else { continue };
            let (ys, gys) = (y.data(), gy.data());
            match &arg.map {
                // Same shape: element by element, in place.
                None => {
                    for (idx, g) in gx.data_mut().iter_mut().enumerate() {
                        for (slot, op) in a.iter_mut().zip(&ops) {
                            *slot = op[idx];
                        }
                        *g += gys[idx] * self.kind.partial(k, &a[..ops.len()], ys[idx]);
                    }
                }
                // Broadcast: summed into the position each output came from.
                Some(m) => {
                    for r in 0..n {
                        for (i, &j) in m.iter().enumerate() {
                            let idx = r * out_len + i;
                            for (slot, op) in a.iter_mut().zip(&ops) {
                                *slot = op[idx];
                            }
                            gx.row_mut(r)[j as usize] += gys[idx] * self.kind.partial(k, &a[..ops.len()], ys[idx]);
                        }
                    }
                }
            }
        }
        grads
    }
}

/// Where an output value comes from: (input, position in that input's sample), or the
/// fill value when `input` is `FILL`.
pub const FILL: u32 = u32::MAX;

/// Each output value copies one input value, or one of `consts` when its input is `FILL`
/// (a pad's fill value, a class token concatenated to every sample).
#[derive(Clone, Debug)]
pub struct Select {
    pub picks: Vec<(u32, u32)>,
    pub consts: Vec<f32>,
}

impl Select {
    /// Output i copies value `map[i]` of the (one) input.
    pub fn copying(map: Vec<u32>) -> Select {
        Select {
            picks: map.into_iter().map(|j| (0, j)).collect(),
            consts: vec![0.0],
        }
    }

    pub fn forward(&self, xs: &[&Batch]) -> Vec<f32> {
        let n = xs.first().map_or(1, |x| x.rows());
        let mut ys = Vec::with_capacity(n * self.picks.len());
        // Copies from the first input alone (transposes, slices, reshapes: the common
        // case) index one row slice, with no per-value test of the source.
        let one_source = self.picks.iter().all(|&(k, _)| k == 0);
        for r in 0..n {
            if one_source {
                let src = xs[0].row(r);
                ys.extend(self.picks.iter().map(|&(_, j)| src[j as usize]));
                continue;
            }
            let rows: Vec<&[f32]> = xs.iter().map(|x| x.row(r)).collect();
            ys.extend(self.picks.iter().map(|&(k, j)| {
                if k == FILL {
                    self.consts[j as usize]
                } else {
                    rows[k as usize][j as usize]
                }
            }));
        }
        ys
    }

    pub fn backward(&self, xs: &[&Batch], gy: &Batch) -> Vec<Option<Batch>> {
        let mut grads: Vec<Batch> = xs.iter().map(|x| Batch::zeros(x.shape().to_vec())).collect();
        let one_source = grads.len() == 1 && self.picks.iter().all(|&(k, _)| k == 0);
        for r in 0..gy.rows() {
            if one_source {
                let dst = grads[0].row_mut(r);
                for (&(_, j), g) in self.picks.iter().zip(gy.row(r)) {
                    dst[j as usize] += g;
                }
                continue;
            }
            for (&(k, j), g) in self.picks.iter().zip(gy.row(r)) {
                if k != FILL {
                    grads[k as usize].row_mut(r)[j as usize] += g;
                }
            }
        }
        grads.into_iter().map(Some).collect()
    }
}

/// Each output value a weighted sum of input values (linear and cubic resizing): output
/// `o` takes `taps[starts[o]..starts[o + 1]]`, (input position, weight) pairs.
#[derive(Clone, Debug)]
pub struct Mix {
    pub starts: Vec<u32>,
    pub taps: Vec<(u32, f32)>,
}

impl Mix {
    pub fn from_rows(rows: Vec<Vec<(u32, f32)>>) -> Mix {
        let mut starts = vec![0u32];
        let mut taps = Vec::new();
        for r in rows {
            taps.extend(r);
            starts.push(taps.len() as u32);
        }
        Mix { starts, taps }
    }

    fn outputs(&self) -> usize {
        self.starts.len() - 1
    }

    fn row(&self, o: usize) -> &[(u32, f32)] {
        &self.taps[self.starts[o] as usize..self.starts[o + 1] as usize]
    }

    pub fn forward(&self, x: &Batch) -> Vec<f32> {
        let mut ys = Vec::with_capacity(x.rows() * self.outputs());
        for r in 0..x.rows() {
            let xs = x.row(r);
            ys.extend((0..self.outputs()).map(|o| self.row(o).iter().map(|&(j, w)| w * xs[j as usize]).sum::<f32>()));
        }
        ys
    }

    pub fn backward(&self, x: &Batch, gy: &Batch) -> Vec<f32> {
        let width = x.sample_len();
        let mut gx = vec![0.0f32; x.rows() * width];
        for r in 0..gy.rows() {
            let g = gy.row(r);
            let out = &mut gx[r * width..(r + 1) * width];
            for (o, go) in g.iter().enumerate() {
                for &(j, w) in self.row(o) {
                    out[j as usize] += w * go;
                }
            }
        }
        gx
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    SumSquare,
}

/// A reduction over some axes of a sample: `map[i]` is the output position input
/// position i falls into; every output gathers `count` inputs.
#[derive(Clone, Debug)]
pub struct Reduce {
    pub kind: ReduceKind,
    pub map: Vec<u32>,
    pub count: usize,
}

impl Reduce {
    /// The outputs and, for max/min, the input position each output took.
    pub fn forward(&self, x: &Batch, out_len: usize) -> (Vec<f32>, Vec<u32>) {
        let n = x.rows();
        let mut ys = Vec::with_capacity(n * out_len);
        let mut arg = Vec::new();
        for r in 0..n {
            let row = x.row(r);
            let mut acc = vec![
                match self.kind {
                    ReduceKind::Max => f32::NEG_INFINITY,
                    ReduceKind::Min => f32::INFINITY,
                    _ => 0.0,
                };
                out_len
            ];
            let mut at = vec![0u32; out_len];
            for (i, (&v, &o)) in row.iter().zip(&self.map).enumerate() {
                let o = o as usize;
                match self.kind {
                    ReduceKind::Sum | ReduceKind::Mean => acc[o] += v,
                    ReduceKind::SumSquare => acc[o] += v * v,
                    ReduceKind::Max if v > acc[o] || v.is_nan() => (acc[o], at[o]) = (v, i as u32),
                    ReduceKind::Min if v < acc[o] || v.is_nan() => (acc[o], at[o]) = (v, i as u32),
                    _ => {}
                }
            }
            if self.kind == ReduceKind::Mean {
                acc.iter_mut().for_each(|a| *a /= self.count as f32);
            }
            ys.extend(acc);
            arg.extend(at);
        }
        (ys, arg)
    }

    pub fn backward(&self, x: &Batch, arg: &[u32], gy: &Batch) -> Batch {
        let mut gx = Batch::zeros(x.shape().to_vec());
        let out_len = gy.sample_len();
        for r in 0..x.rows() {
            let g = gy.row(r);
            match self.kind {
                ReduceKind::Max | ReduceKind::Min => {
                    for (o, &i) in arg[r * out_len..(r + 1) * out_len].iter().enumerate() {
                        gx.row_mut(r)[i as usize] += g[o];
                    }
                }
                _ => {
                    let scale = if self.kind == ReduceKind::Mean {
                        1.0 / self.count as f32
                    } else {
                        1.0
                    };
                    let xr = x.row(r).to_vec();
                    for (i, (gi, &o)) in gx.row_mut(r).iter_mut().zip(&self.map).enumerate() {
                        *gi = g[o as usize] * scale;
                        if self.kind == ReduceKind::SumSquare {
                            *gi *= 2.0 * xr[i];
                        }
                    }
                }
            }
        }
        gx
    }
}

/// The product of two values `[.., m, k] · [.., k, n]` (leading axes equal), or of one
/// value with the same right operand for every leading index (`b_lead == 1`).
#[derive(Clone, Copy, Debug)]
pub struct MatMul {
    pub lead: usize,
    pub b_lead: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// `kernels::matmul`, with products too small for gemm's packing to pay (one attention
/// head's) done by plain loops. The choice depends on the product's shape only, never on
/// the batch, so results do not depend on how inputs are batched.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    c_rs: usize,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    accumulate: bool,
) {
    if m * n * k > 1 << 16 {
        return kernels::matmul(m, n, k, c, c_rs, a, a_rs, a_cs, b, b_rs, b_cs, accumulate);
    }
    kernels::count_multiply_adds(m, n, k);
    for i in 0..m {
        let row = &mut c[i * c_rs..i * c_rs + n];
        if !accumulate {
            row.fill(0.0);
        }
        for p in 0..k {
            let av = a[i * a_rs + p * a_cs];
            for (j, out) in row.iter_mut().enumerate() {
                *out += av * b[p * b_rs + j * b_cs];
            }
        }
    }
}

impl MatMul {
    pub fn forward(&self, a: &Batch, b: &Batch) -> Vec<f32> {
        let (m, k, n) = (self.m, self.k, self.n);
        let rows = a.rows();
        let mut ys = vec![0.0f32; rows * self.lead * m * n];
        for r in 0..rows {
            for l in 0..self.lead {
                let lb = if self.b_lead == 1 { 0 } else { l };
                let a_off = r * self.lead * m * k + l * m * k;
                let b_off = r * self.b_lead * k * n + lb * k * n;
                let y_off = r * self.lead * m * n + l * m * n;
                product(
                    (m, n, k),
                    &mut ys[y_off..y_off + m * n],
                    n,
                    (&a.data()[a_off..a_off + m * k], k, 1),
                    (&b.data()[b_off..b_off + k * n], n, 1),
                    false,
                );
            }
        }
        ys
    }

    /// (∂/∂a, ∂/∂b): gy·bᵀ and aᵀ·gy.
    pub fn backward(&self, a: &Batch, b: &Batch, gy: &Batch) -> (Batch, Batch) {
        let (m, k, n) = (self.m, self.k, self.n);
        let mut ga = Batch::zeros(a.shape().to_vec());
        let mut gb = Batch::zeros(b.shape().to_vec());
        for r in 0..a.rows() {
            for l in 0..self.lead {
                let lb = if self.b_lead == 1 { 0 } else { l };
                let a_off = r * self.lead * m * k + l * m * k;
                let b_off = r * self.b_lead * k * n + lb * k * n;
                let y_off = r * self.lead * m * n + l * m * n;
                let g = &gy.data()[y_off..y_off + m * n];
                let bs = &b.data()[b_off..b_off + k * n];
                product(
                    (m, k, n),
                    &mut ga.data_mut()[a_off..a_off + m * k],
                    k,
                    (g, n, 1),
                    (bs, 1, n),
                    false,
                );
                let as_ = &a.data()[a_off..a_off + m * k];
                product(
                    (k, n, m),
                    &mut gb.data_mut()[b_off..b_off + k * n],
                    n,
                    (as_, 1, k),
                    (g, n, 1),
                    true,
                );
            }
        }
        (ga, gb)
    }
}

/// Layer normalization over the last `len` values of a sample.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub len: usize,
    pub eps: f32,
    pub scale: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

impl LayerNorm {
    fn stats(&self, v: &[f32]) -> (f32, f32) {
        let len = v.len() as f32;
        let mean = v.iter().sum::<f32>() / len;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / len;
        (mean, 1.0 / (var + self.eps).sqrt())
    }

    pub fn forward(&self, xs: &[f32]) -> Vec<f32> {
        let mut ys = Vec::with_capacity(xs.len());
        for v in xs.chunks(self.len) {
            let (mean, inv) = self.stats(v);
            ys.extend(v.iter().enumerate().map(|(i, x)| {
                let z = (x - mean) * inv;
                z * self.scale.as_ref().map_or(1.0, |s| s[i]) + self.bias.as_ref().map_or(0.0, |b| b[i])
            }));
        }
        ys
    }

    pub fn backward(&self, xs: &[f32], gys: &[f32]) -> Vec<f32> {
        let mut gxs = Vec::with_capacity(xs.len());
        for (v, g) in xs.chunks(self.len).zip(gys.chunks(self.len)) {
            let (mean, inv) = self.stats(v);
            let len = self.len as f32;
            let gz: Vec<f32> = g
                .iter()
                .enumerate()
                .map(|(i, g)| g * self.scale.as_ref().map_or(1.0, |s| s[i]))
                .collect();
            let z: Vec<f32> = v.iter().map(|x| (x - mean) * inv).collect();
            let mean_g = gz.iter().sum::<f32>() / len;
            let mean_gz = gz.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() / len;
            gxs.extend(gz.iter().zip(&z).map(|(g, z)| inv * (g - mean_g - z * mean_gz)));
        }
        gxs
    }
}

/// Rows of a table looked up by index (ONNX Gather from a constant): indices carry no gradient.
pub fn embedding_forward(table: &[f32], dim: usize, ids: &[f32]) -> std::result::Result<Vec<f32>, String> {
    let rows = table.len() / dim.max(1);
    let mut ys = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let i = if id < 0.0 { id + rows as f32 } else { id };
        if !(i >= 0.0 && (i as usize) < rows) || i.fract() != 0.0 {
            return Err(format!("index {id} is out of range for a table of {rows} rows"));
        }
        let i = i as usize;
        ys.extend_from_slice(&table[i * dim..(i + 1) * dim]);
    }
    Ok(ys)
}

// ---- index maps over shapes (row-major), shared by the loader and constant folding ----

pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Calls `f(flat, index)` for every multi-index of `shape` in row-major order.
pub fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let total: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for flat in 0..total {
        f(flat, &idx);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// NumPy broadcasting of shapes, or None if they do not broadcast.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| {
            let (x, y) = (at(a, i), at(b, i));
            if x == y || y == 1 {
                Some(x)
            } else if x == 1 {
                Some(y)
            } else {
                None
            }
        })
        .collect()
}

/// For each position of `out`, the position of the operand of shape `shape` that
/// broadcasts to it.
pub fn broadcast_map(shape: &[usize], out: &[usize]) -> Vec<u32> {
    let st = strides(shape);
    let lead = out.len() - shape.len();
    let mut map = Vec::with_capacity(out.iter().product());
    for_each_index(out, |_, idx| {
        let mut j = 0;
        for (d, &s) in st.iter().enumerate() {
            if shape[d] != 1 {
                j += idx[lead + d] * s;
            }
        }
        map.push(j as u32);
    });
    map
}

/// Transpose: output axis i is input axis perm[i].
pub fn transpose_map(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<u32>) {
    let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let st = strides(shape);
    let mut map = Vec::with_capacity(out.iter().product());
    for_each_index(&out, |_, idx| {
        map.push(idx.iter().zip(perm).map(|(i, &p)| i * st[p]).sum::<usize>() as u32);
    });
    (out, map)
}

/// One slice per axis: (start, step, count), already clamped.
pub fn slice_map(shape: &[usize], ranges: &[(i64, i64, usize)]) -> (Vec<usize>, Vec<u32>) {
    let out: Vec<usize> = ranges.iter().map(|r| r.2).collect();
    let st = strides(shape);
    let mut map = Vec::with_capacity(out.iter().product());
    for_each_index(&out, |_, idx| {
        let j: i64 = idx
            .iter()
            .zip(ranges)
            .zip(&st)
            .map(|((&i, &(start, step, _)), &s)| (start + i as i64 * step) * s as i64)
            .sum();
        map.push(j as u32);
    });
    (out, map)
}

/// ONNX Slice semantics on one axis of length `len`: (start, step, count).
pub fn slice_range(len: usize, start: i64, end: i64, step: i64) -> (i64, i64, usize) {
    let len = len as i64;
    // Exports write ±i64::MAX for "to the end"; keep the arithmetic below from overflowing.
    let (start, end) = (start.clamp(-(1 << 40), 1 << 40), end.clamp(-(1 << 40), 1 << 40));
    let norm = |v: i64| if v < 0 { v + len } else { v };
    let (start, end) = (norm(start), norm(end));
    if step > 0 {
        let (s, e) = (start.clamp(0, len), end.clamp(0, len));
        let count = if e > s { (e - s + step - 1) / step } else { 0 };
        (s, step, count as usize)
    } else {
        let (s, e) = (start.clamp(0, len - 1), end.clamp(-1, len - 1));
        let count = if s > e { (s - e + (-step) - 1) / (-step) } else { 0 };
        (s, step, count as usize)
    }
}

/// Gather along `axis` with `indices` (already non-negative) of shape `ishape`.
pub fn gather_map(shape: &[usize], axis: usize, indices: &[usize], ishape: &[usize]) -> (Vec<usize>, Vec<u32>) {
    let mut out = shape[..axis].to_vec();
    out.extend_from_slice(ishape);
    out.extend_from_slice(&shape[axis + 1..]);
    let st = strides(shape);
    let ir = ishape.len();
    let ist = strides(ishape);
    let mut map = Vec::with_capacity(out.iter().product());
    for_each_index(&out, |_, idx| {
        let mut j = 0;
        for d in 0..axis {
            j += idx[d] * st[d];
        }
        let flat: usize = (0..ir).map(|d| idx[axis + d] * ist[d]).sum();
        j += indices[flat] * st[axis];
        for d in axis + 1..shape.len() {
            j += idx[d - 1 + ir] * st[d];
        }
        map.push(j as u32);
    });
    (out, map)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
}

/// Pads `before[d]` / `after[d]` values on each axis; `None` marks a fill value.
pub fn pad_map(shape: &[usize], before: &[usize], after: &[usize], mode: PadMode) -> (Vec<usize>, Vec<Option<u32>>) {
    let out: Vec<usize> = (0..shape.len()).map(|d| shape[d] + before[d] + after[d]).collect();
    let st = strides(shape);
    let mut map = Vec::with_capacity(out.iter().product());
    for_each_index(&out, |_, idx| {
        let mut j = Some(0usize);
        for d in 0..shape.len() {
            let i = idx[d] as i64 - before[d] as i64;
            let len = shape[d] as i64;
            let src = if (0..len).contains(&i) {
                Some(i)
            } else {
                match mode {
                    PadMode::Constant => None,
                    PadMode::Edge => Some(i.clamp(0, len - 1)),
                    PadMode::Reflect => {
                        let period = 2 * (len - 1).max(1);
                        let m = i.rem_euclid(period);
                        Some(if m < len { m } else { period - m })
                    }
                }
            };
            j = match (j, src) {
                (Some(j), Some(s)) => Some(j + s as usize * st[d]),
                _ => None,
            };
        }
        map.push(j.map(|j| j as u32));
    });
    (out, map)
}
