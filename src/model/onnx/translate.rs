//! Operator translation: each ONNX node onto the engine's layers (`Op`s) or, when it does
//! not depend on the input, folded into a constant; with the helpers only translation
//! uses (module names of a node, window spans, reshape targets, constant products).

use super::*;

impl Importer {
    pub(super) fn node(&mut self, node: &NodeProto) {
        let name = node.output.first().cloned().unwrap_or_default();
        if self.failed.is_none()
            && let Err(e) = self.translate(&Node { proto: node })
        {
            let label = if node.name.is_empty() {
                name.clone()
            } else {
                node.name.clone()
            };
            self.failed = Some(format!(
                "operator {} (node `{label}`) is not supported: {}",
                node.op_type, e.message
            ));
        }
        if let Some(reason) = &self.failed {
            // This node and every later one are listed, not run.
            if !self.syms.contains_key(&name) {
                let reason = reason.clone();
                self.push(node, name, Op::Unsupported { reason }, vec![], &[], vec![]);
            }
        }
    }

    fn sym(&self, name: &str) -> Result<&Sym> {
        self.syms
            .get(name)
            .ok_or_else(|| unsupported(format!("its input `{name}` is computed by no earlier node")))
    }

    fn konst(&self, name: &str) -> Result<&Konst> {
        match self.sym(name)? {
            Sym::Const(k) => Ok(k),
            Sym::Value { .. } => Err(unsupported(format!(
                "its input `{name}` must be a constant (it depends on the model input)"
            ))),
        }
    }

    /// The operands named, with their full shapes (a value's batch axis counted as 1).
    fn operands(&self, names: &[&str]) -> Result<(Vec<Sym>, Vec<Vec<usize>>)> {
        let syms: Vec<Sym> = names.iter().map(|n| self.sym(n).cloned()).collect::<Result<_>>()?;
        let shapes = syms
            .iter()
            .map(|s| match s {
                Sym::Value { full, .. } => full.clone(),
                Sym::Const(k) => k.shape.clone(),
            })
            .collect();
        Ok((syms, shapes))
    }

    fn opt_konst(&self, node: &Node, i: usize) -> Result<Option<&Konst>> {
        node.input(i).map(|n| self.konst(n)).transpose()
    }

    /// Adds a layer computing node `node`'s output `name`, of ONNX shape `out_full`
    /// (batch of one); `in_full` is its first input's.
    pub(super) fn push(
        &mut self,
        node: &NodeProto,
        name: String,
        op: Op,
        inputs: Vec<usize>,
        in_full: &[usize],
        out_full: Vec<usize>,
    ) {
        let index = self.layers.len();
        // The node's name and the modules it belongs to name this hook point too; the
        // last node of a module is the module's output.
        if !node.name.is_empty() && node.name != name {
            self.aliases.insert(node.name.clone(), index);
        }
        for module in module_names(node) {
            self.aliases.insert(module, index);
        }
        self.layers.push(Layer {
            name: name.clone(),
            kind: node.op_type.clone(),
            op,
            inputs,
            in_shape: sample(in_full),
            out_shape: sample(&out_full),
        });
        self.syms.insert(
            name,
            Sym::Value {
                slot: index + 1,
                full: out_full,
            },
        );
    }

    fn out_name(node: &Node) -> String {
        node.proto.output.first().cloned().unwrap_or_default()
    }

    /// A layer of one value input (its slot and ONNX shape), of ONNX shape `out_full`.
    fn unary_layer(&mut self, node: &Node, op: Op, input: (usize, Vec<usize>), out_full: Vec<usize>) {
        let name = Self::out_name(node);
        self.push(node.proto, name, op, vec![input.0], &input.1, out_full);
    }

    fn set_const(&mut self, node: &Node, k: Konst) {
        self.syms.insert(Self::out_name(node), Sym::Const(k));
    }

    /// A value input: its slot and ONNX shape (batch of one).
    fn value_input(&self, node: &Node, i: usize) -> Result<(usize, Vec<usize>)> {
        let name = node
            .input(i)
            .ok_or_else(|| unsupported(format!("input {i} is missing")))?;
        match self.sym(name)? {
            Sym::Value { slot, full } => Ok((*slot, full.clone())),
            Sym::Const(_) => Err(unsupported(format!(
                "its input `{name}` is a constant where a value of the batch is expected"
            ))),
        }
    }

    fn translate(&mut self, node: &Node) -> Result<()> {
        if node.proto.output.len() > 1
            && !matches!(node.proto.op_type.as_str(), "Dropout" | "BatchNormalization" | "Split")
        {
            return Err(unsupported("nodes of several outputs are not supported"));
        }
        if !node.proto.domain.is_empty() && node.proto.domain != "ai.onnx" {
            return Err(unsupported(format!(
                "operators of domain `{}` are not supported",
                node.proto.domain
            )));
        }
        let op = node.proto.op_type.as_str();
        match op {
            "Constant" => {
                let k = if let Some(t) = node.attr("value").and_then(|a| a.t.as_ref()) {
                    tensor(t, &self.shown)?
                } else if let Some(a) = node.attr("value_float") {
                    Konst::scalar(a.f as f64, false)
                } else if let Some(a) = node.attr("value_int") {
                    Konst::scalar(a.i as f64, true)
                } else if let Some(a) = node.attr("value_floats") {
                    Konst {
                        shape: vec![a.floats.len()],
                        data: a.floats.iter().map(|v| *v as f64).collect(),
                        int: false,
                    }
                } else if let Some(a) = node.attr("value_ints") {
                    Konst {
                        shape: vec![a.ints.len()],
                        data: a.ints.iter().map(|v| *v as f64).collect(),
                        int: true,
                    }
                } else {
                    return Err(unsupported("a Constant without a value"));
                };
                self.set_const(node, k);
                Ok(())
            }
            "Identity" | "Dropout" => self.select_like(node, |shape| {
                let map = (0..shape.iter().product::<usize>() as u32).collect();
                Ok((shape.to_vec(), map))
            }),
            "Shape" => {
                let name = node.input(0).unwrap_or_default();
                let shape: Vec<f64> = match self.sym(name)? {
                    Sym::Value { full, .. } => full.iter().map(|d| *d as f64).collect(),
                    Sym::Const(k) => k.shape.iter().map(|d| *d as f64).collect(),
                };
                let r = shape.len() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clampi(node.int("start", 0)), clampi(node.int("end", r)));
                let data = shape[s..e.max(s)].to_vec();
                self.set_const(
                    node,
                    Konst {
                        shape: vec![data.len()],
                        data,
                        int: true,
                    },
                );
                Ok(())
            }
            "ConstantOfShape" => {
                let dims = self.konst(node.input(0).unwrap_or_default())?.ints();
                let value = node
                    .attr("value")
                    .and_then(|a| a.t.as_ref())
                    .map(|t| tensor(t, &self.shown))
                    .transpose()?;
                // The default value is a float zero.
                let int = value.as_ref().is_some_and(|k| k.int);
                let value = value.and_then(|k| k.data.first().copied()).unwrap_or(0.0);
                let shape: Vec<usize> = dims.iter().map(|d| (*d).max(0) as usize).collect();
                let count = shape.iter().product();
                self.set_const(
                    node,
                    Konst {
                        shape,
                        data: vec![value; count],
                        int,
                    },
                );
                Ok(())
            }
            "Range" => {
                let scalar = |i: usize| -> Result<(f64, bool)> {
                    let k = self.konst(node.input(i).unwrap_or_default())?;
                    let v = k
                        .data
                        .first()
                        .copied()
                        .ok_or_else(|| unsupported("an empty Range bound"))?;
                    Ok((v, k.int))
                };
                let ((start, a), (limit, b), (delta, c)) = (scalar(0)?, scalar(1)?, scalar(2)?);
                let int = a && b && c;
                if delta == 0.0 {
                    return Err(unsupported("a Range with step 0"));
                }
                let count = ((limit - start) / delta).ceil().max(0.0) as usize;
                let data: Vec<f64> = (0..count).map(|i| start + i as f64 * delta).collect();
                self.set_const(
                    node,
                    Konst {
                        shape: vec![count],
                        data,
                        int,
                    },
                );
                Ok(())
            }
            "Cast" => {
                let to = node.int("to", data_type::FLOAT as i64) as i32;
                let f = match to {
                    data_type::FLOAT | data_type::DOUBLE | 10 | 16 => None,
                    data_type::BOOL => Some(MapFn::NonZero),
                    _ => Some(MapFn::Trunc),
                };
                match f {
                    Some(f) => self.map(node, f),
                    // A constant cast to a float type divides as floats from here on.
                    None if let Sym::Const(k) = self.sym(node.input(0).unwrap_or_default())? => {
                        let k = Konst {
                            int: false,
                            ..k.clone()
                        };
                        self.set_const(node, k);
                        Ok(())
                    }
                    None => self.select_like(node, |shape| {
                        Ok((shape.to_vec(), (0..shape.iter().product::<usize>() as u32).collect()))
                    }),
                }
            }
            "Relu" => self.elementwise(node, Op::Relu),
            "LeakyRelu" => self.elementwise(
                node,
                Op::LeakyRelu {
                    slope: node.float("alpha", 0.01),
                },
            ),
            "Sigmoid" => self.elementwise(node, Op::Sigmoid),
            "Tanh" => self.elementwise(node, Op::Tanh),
            "Gelu" => {
                let tanh_approx = node.string("approximate", "none") == "tanh";
                self.elementwise(node, Op::Gelu { tanh_approx })
            }
            "HardSigmoid" => self.map(
                node,
                MapFn::HardSigmoid {
                    alpha: node.float("alpha", 0.2),
                    beta: node.float("beta", 0.5),
                },
            ),
            "HardSwish" => self.map(node, MapFn::HardSwish),
            "Elu" => self.map(
                node,
                MapFn::Elu {
                    alpha: node.float("alpha", 1.0),
                },
            ),
            "Selu" => self.map(
                node,
                MapFn::Selu {
                    alpha: node.float("alpha", 1.673_263_2),
                    gamma: node.float("gamma", 1.050_701),
                },
            ),
            "Softplus" => self.map(node, MapFn::Softplus),
            "PRelu" => self.nary(node, NaryKind::PRelu),
            "Split" => self.split(node),
            "Tile" => {
                let repeats = self.konst(node.input(1).unwrap_or_default())?.ints();
                self.select_like(node, move |shape| {
                    if repeats.len() != shape.len() || repeats.iter().any(|r| *r < 0) {
                        return Err(unsupported(format!(
                            "Tile repeats {repeats:?} for rank {}",
                            shape.len()
                        )));
                    }
                    let out: Vec<usize> = shape.iter().zip(&repeats).map(|(d, r)| d * *r as usize).collect();
                    let st = graph_ops::strides(shape);
                    let mut map = Vec::with_capacity(out.iter().product());
                    graph_ops::for_each_index(&out, |_, idx| {
                        let j: usize = idx.iter().zip(shape).zip(&st).map(|((i, d), s)| (i % d) * s).sum();
                        map.push(j as u32);
                    });
                    Ok((out, map))
                })
            }
            "Resize" | "Upsample" => self.resize(node),
            "InstanceNormalization" => self.instance_norm(node, None),
            "GroupNormalization" => {
                let groups = node.int("num_groups", 0);
                if groups < 1 {
                    return Err(unsupported("a GroupNormalization without num_groups"));
                }
                self.instance_norm(node, Some(groups as usize))
            }
            "Erf" => self.map(node, MapFn::Erf),
            "Exp" => self.map(node, MapFn::Exp),
            "Log" => self.map(node, MapFn::Log),
            "Sqrt" => self.map(node, MapFn::Sqrt),
            "Reciprocal" => self.map(node, MapFn::Reciprocal),
            "Neg" => self.map(node, MapFn::Neg),
            "Abs" => self.map(node, MapFn::Abs),
            "Not" => self.map(node, MapFn::Not),
            "Clip" => {
                let bound = |i: usize, attr: &str, default: f32| -> Result<f32> {
                    Ok(match self.opt_konst(node, i)? {
                        Some(k) => k.data.first().map_or(default, |v| *v as f32),
                        None => node.float(attr, default),
                    })
                };
                let (min, max) = (bound(1, "min", f32::MIN)?, bound(2, "max", f32::MAX)?);
                self.map(node, MapFn::Clip { min, max })
            }
            "Add" => self.nary(node, NaryKind::Add),
            "Sub" => self.nary(node, NaryKind::Sub),
            "Mul" => self.nary(node, NaryKind::Mul),
            "Div" => self.nary(node, NaryKind::Div),
            "Pow" => self.nary(node, NaryKind::Pow),
            "Max" => self.nary(node, NaryKind::Max),
            "Min" => self.nary(node, NaryKind::Min),
            "Equal" => self.nary(node, NaryKind::Equal),
            "Less" => self.nary(node, NaryKind::Less),
            "Greater" => self.nary(node, NaryKind::Greater),
            "LessOrEqual" => self.nary(node, NaryKind::LessOrEqual),
            "GreaterOrEqual" => self.nary(node, NaryKind::GreaterOrEqual),
            "Where" => self.nary(node, NaryKind::Where),
            "Mod" if node.int("fmod", 0) != 0 => self.nary(node, NaryKind::Fmod),
            "Mod" => self.nary(node, NaryKind::Mod),
            "And" => self.nary(node, NaryKind::And),
            "Or" => self.nary(node, NaryKind::Or),
            "Softmax" => {
                let (slot, full) = self.value_input(node, 0)?;
                let default = if self.opset >= 13 { -1 } else { 1 };
                let a = axis(node.int("axis", default), full.len())?;
                if a < lead(&full) {
                    return Err(unsupported("a softmax over the batch axis"));
                }
                if self.opset < 13 && a + 1 != full.len() {
                    return Err(unsupported("a softmax (opset < 13) over more than the last axis"));
                }
                let op = Op::Softmax { axis: a - lead(&full) };
                self.unary_layer(node, op, (slot, full.clone()), full);
                Ok(())
            }
            "Gemm" => self.gemm(node),
            "MatMul" => self.matmul(node),
            "Conv" => self.conv(node, false),
            "ConvTranspose" => self.conv(node, true),
            "MaxPool" | "AveragePool" | "LpPool" => self.pool(node),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                if let Some((slot, shape)) = self.volume_input(node)? {
                    // Over depth, rows and columns of each channel: a reduction.
                    let kind = if op == "GlobalAveragePool" {
                        ReduceKind::Mean
                    } else {
                        ReduceKind::Max
                    };
                    let per: usize = shape[1..].iter().product();
                    let map = (0..shape.iter().product::<usize>()).map(|i| (i / per) as u32).collect();
                    let out = vec![1, shape[0], 1, 1, 1];
                    let op = Op::Reduce(Reduce { kind, map, count: per });
                    self.unary_layer(node, op, (slot, full(&shape)), out);
                    return Ok(());
                }
                let (slot, shape) = self.planar_input(node)?;
                let [c, h, w] = planar(&shape);
                let out = unplanar(&shape, [c, 1, 1]);
                let op = if op == "GlobalAveragePool" {
                    Op::AdaptiveAvgPool2d { out: (1, 1) }
                } else {
                    Op::MaxPool2d {
                        win: Window2d {
                            kernel: (h, w),
                            stride: (1, 1),
                            padding: (0, 0),
                            dilation: (1, 1),
                        },
                    }
                };
                self.unary_layer(node, op, (slot, full(&shape)), full(&out));
                Ok(())
            }
            "BatchNormalization" => {
                let (slot, full_in) = self.value_input(node, 0)?;
                if lead(&full_in) != 1 {
                    return Err(unsupported(format!("a batch norm of a value of shape {full_in:?}")));
                }
                let shape = sample(&full_in);
                let get =
                    |i: usize| -> Result<Vec<f64>> { Ok(self.konst(node.input(i).unwrap_or_default())?.data.clone()) };
                let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
                let eps = node.float("epsilon", 1e-5) as f64;
                let c = shape.first().copied().unwrap_or(0);
                if [gamma.len(), beta.len(), mean.len(), var.len()].iter().any(|l| *l != c) {
                    return Err(unsupported(format!("batch-norm statistics do not have {c} channels")));
                }
                let scale: Vec<f64> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
                let shift = beta
                    .iter()
                    .zip(&mean)
                    .zip(&scale)
                    .map(|((b, m), s)| (b - m * s) as f32)
                    .collect();
                let op = Op::BatchNorm {
                    scale: scale.iter().map(|v| *v as f32).collect(),
                    shift,
                };
                self.unary_layer(node, op, (slot, full_in.clone()), full_in);
                Ok(())
            }
            "LayerNormalization" => {
                let (slot, full) = self.value_input(node, 0)?;
                let a = axis(node.int("axis", -1), full.len())?;
                if a < lead(&full) {
                    return Err(unsupported("a layer norm over the batch axis"));
                }
                let len: usize = full[a..].iter().product();
                let per = |k: Option<&Konst>| -> Result<Option<Vec<f32>>> {
                    let Some(k) = k else { return Ok(None) };
                    let v = k.f32s();
                    match v.len() {
                        l if l == len => Ok(Some(v)),
                        1 => Ok(Some(vec![v[0]; len])),
                        l => Err(unsupported(format!("a layer-norm parameter of {l} values over {len}"))),
                    }
                };
                let ln = LayerNorm {
                    len,
                    eps: node.float("epsilon", 1e-5),
                    scale: per(self.opt_konst(node, 1)?)?,
                    bias: per(self.opt_konst(node, 2)?)?,
                };
                self.unary_layer(node, Op::LayerNorm(ln), (slot, full.clone()), full);
                Ok(())
            }
            "Flatten" => {
                let a = node.int("axis", 1);
                self.reshape_with(node, move |full_in| {
                    let r = full_in.len() as i64;
                    let a = if a < 0 { a + r } else { a };
                    if !(0..=r).contains(&a) {
                        return Err(unsupported(format!("Flatten axis {a} for rank {r}")));
                    }
                    let a = a as usize;
                    let outer: usize = full_in[..a].iter().product();
                    let inner: usize = full_in[a..].iter().product();
                    Ok(vec![outer, inner])
                })
            }
            "Reshape" => {
                let target = self.konst(node.input(1).unwrap_or_default())?.ints();
                let allow_zero = node.int("allowzero", 0) != 0;
                self.reshape_with(node, move |full_in| reshape_target(full_in, &target, allow_zero))
            }
            "Squeeze" | "Unsqueeze" => {
                let axes = match node.ints("axes") {
                    Some(a) => a,
                    None => self.opt_konst(node, 1)?.map(Konst::ints).unwrap_or_default(),
                };
                let squeeze = op == "Squeeze";
                self.reshape_with(node, move |full_in| {
                    if squeeze {
                        let r = full_in.len();
                        let drop: Vec<usize> = if axes.is_empty() {
                            (0..r).filter(|&d| full_in[d] == 1).collect()
                        } else {
                            axes.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?
                        };
                        if drop.iter().any(|&d| full_in[d] != 1) {
                            return Err(unsupported("Squeeze of an axis whose length is not 1"));
                        }
                        Ok((0..r).filter(|d| !drop.contains(d)).map(|d| full_in[d]).collect())
                    } else {
                        let r = full_in.len() + axes.len();
                        let mut add: Vec<usize> = axes.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?;
                        add.sort_unstable();
                        let mut out = full_in.to_vec();
                        for a in add {
                            out.insert(a, 1);
                        }
                        Ok(out)
                    }
                })
            }
            "Transpose" => {
                let perm = node.ints("perm");
                self.select_like(node, move |shape| {
                    let perm: Vec<usize> = match &perm {
                        Some(p) => p.iter().map(|&a| axis(a, shape.len())).collect::<Result<_>>()?,
                        None => (0..shape.len()).rev().collect(),
                    };
                    Ok(graph_ops::transpose_map(shape, &perm))
                })
            }
            "Slice" => self.slice(node),
            "Gather" => self.gather(node),
            "CumSum" => self.cumsum(node),
            "Einsum" => self.einsum(node),
            "ScatterND" => {
                // Only of constants (a shifted window's attention mask built by slices).
                let (data, indices, updates) = (
                    self.konst(node.input(0).unwrap_or_default())?.clone(),
                    self.konst(node.input(1).unwrap_or_default())?.clone(),
                    self.konst(node.input(2).unwrap_or_default())?,
                );
                if node.string("reduction", "none") != "none" {
                    return Err(unsupported("ScatterND with a reduction"));
                }
                let k = indices.shape.last().copied().unwrap_or(0);
                if k == 0 || k > data.shape.len() {
                    return Err(unsupported(format!("ScatterND indices of shape {:?}", indices.shape)));
                }
                let st = graph_ops::strides(&data.shape);
                let block: usize = data.shape[k..].iter().product();
                let mut out = data.data.clone();
                for (n, index) in indices.data.chunks(k).enumerate() {
                    let mut at = 0usize;
                    for (d, &i) in index.iter().enumerate() {
                        let len = data.shape[d] as i64;
                        let i = if i < 0.0 { i as i64 + len } else { i as i64 };
                        if !(0..len).contains(&i) {
                            return Err(unsupported(format!("a ScatterND index {i} past an axis of {len}")));
                        }
                        at += i as usize * st[d];
                    }
                    let from = updates.data.get(n * block..(n + 1) * block).ok_or_else(|| {
                        unsupported(format!(
                            "ScatterND updates of shape {:?} for these indices",
                            updates.shape
                        ))
                    })?;
                    out[at..at + block].copy_from_slice(from);
                }
                self.set_const(node, data.with(data.shape.clone(), out));
                Ok(())
            }
            "GatherElements" => {
                let (data, index) = (node.input(0).unwrap_or_default(), node.input(1).unwrap_or_default());
                if let (Sym::Const(table), Sym::Value { full, .. }) = (self.sym(data)?, self.sym(index)?)
                    && let Some(&v) = table.data.first()
                    && table.data.iter().all(|x| *x == v)
                {
                    // Gathering from a constant that is the same everywhere (RoBERTa's buffer
                    // of token type ids, all zeros) gives that constant, whatever the indices.
                    let k = table.with(full.clone(), vec![v; full.iter().product()]);
                    self.set_const(node, k);
                    return Ok(());
                }
                let indices = self.konst(index)?.clone();
                let a = node.int("axis", 0);
                self.select_like(node, move |shape| {
                    let ax = axis(a, shape.len())?;
                    if indices.shape.len() != shape.len() {
                        return Err(unsupported(format!(
                            "GatherElements indices of shape {:?} for data of shape {shape:?}",
                            indices.shape
                        )));
                    }
                    let st = graph_ops::strides(shape);
                    let len = shape[ax] as i64;
                    let mut map = Vec::with_capacity(indices.data.len());
                    let mut bad = None;
                    graph_ops::for_each_index(&indices.shape, |flat, idx| {
                        let i = indices.data[flat] as i64;
                        let i = if i < 0 { i + len } else { i };
                        if !(0..len).contains(&i) || idx.iter().zip(shape).any(|(k, d)| k >= d) {
                            bad = Some(i);
                        }
                        let j: usize = idx
                            .iter()
                            .enumerate()
                            .map(|(d, &k)| if d == ax { i.max(0) as usize } else { k } * st[d])
                            .sum();
                        map.push(j as u32);
                    });
                    if let Some(i) = bad {
                        return Err(unsupported(format!(
                            "GatherElements index {i} out of range for shape {shape:?}"
                        )));
                    }
                    Ok((indices.shape.clone(), map))
                })
            }
            "Expand" => {
                let target = self.konst(node.input(1).unwrap_or_default())?.ints();
                self.select_like(node, move |shape| {
                    let t: Vec<usize> = target.iter().map(|&d| d.max(0) as usize).collect();
                    let out = graph_ops::broadcast_shape(shape, &t)
                        .ok_or_else(|| unsupported(format!("shape {shape:?} does not expand to {target:?}")))?;
                    Ok((out.clone(), graph_ops::broadcast_map(shape, &out)))
                })
            }
            "Pad" => self.pad(node),
            "Concat" => self.concat(node),
            "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceSumSquare" | "ReduceL2" => {
                self.reduce(node)
            }
            other => Err(unsupported(format!("no translation of {other} exists"))),
        }
    }

    /// An element-wise layer type of the architecture format (its rules apply); of a
    /// constant, folded by running the layer on it.
    fn elementwise(&mut self, node: &Node, op: Op) -> Result<()> {
        if let Sym::Const(k) = self.sym(node.input(0).unwrap_or_default())? {
            let layer = Layer {
                name: Self::out_name(node),
                kind: node.proto.op_type.clone(),
                op,
                inputs: vec![0],
                in_shape: k.shape.clone(),
                out_shape: k.shape.clone(),
            };
            let mut batch_shape = vec![1];
            batch_shape.extend_from_slice(&k.shape);
            let (y, _) = layer.forward(&crate::model::Batch::new(batch_shape, k.f32s())?, false)?;
            let k = Konst {
                shape: k.shape.clone(),
                data: y.data().iter().map(|v| *v as f64).collect(),
                int: false,
            };
            self.set_const(node, k);
            return Ok(());
        }
        let (slot, shape) = self.value_input(node, 0)?;
        self.unary_layer(node, op, (slot, shape.clone()), shape);
        Ok(())
    }

    fn map(&mut self, node: &Node, f: MapFn) -> Result<()> {
        let name = node.input(0).unwrap_or_default();
        if let Sym::Const(k) = self.sym(name)? {
            let data = k.data.iter().map(|v| f.apply(*v as f32) as f64).collect();
            let k = Konst {
                shape: k.shape.clone(),
                data,
                // A cast to an integer type makes integers; other maps keep the type.
                int: k.int || matches!(f, MapFn::Trunc | MapFn::NonZero | MapFn::Not),
            };
            self.set_const(node, k);
            return Ok(());
        }
        self.elementwise(node, Op::Map(f))
    }

    /// An element-wise function of several operands; constants are folded.
    fn nary(&mut self, node: &Node, kind: NaryKind) -> Result<()> {
        let names: Vec<&str> = (0..node.proto.input.len()).filter_map(|i| node.input(i)).collect();
        if names.len() != kind.arity() {
            return Err(unsupported(format!(
                "{} operands (this translation takes {})",
                names.len(),
                kind.arity()
            )));
        }
        let (syms, shapes) = self.operands(&names)?;
        let mut out = shapes[0].clone();
        for s in &shapes[1..] {
            out = graph_ops::broadcast_shape(&out, s)
                .ok_or_else(|| unsupported(format!("shapes {:?} do not broadcast", shapes)))?;
        }
        let values: Vec<(usize, usize)> = syms
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Sym::Value { slot, .. } => Some((i, *slot)),
                Sym::Const(_) => None,
            })
            .collect();
        let int = syms.iter().all(|s| matches!(s, Sym::Const(k) if k.int));
        if values.is_empty() {
            let maps: Vec<Vec<u32>> = shapes.iter().map(|s| graph_ops::broadcast_map(s, &out)).collect();
            let data = (0..out.iter().product::<usize>())
                .map(|i| {
                    let a: Vec<f64> = syms
                        .iter()
                        .zip(&maps)
                        .map(|(s, m)| match s {
                            Sym::Const(k) => k.data[m[i] as usize],
                            Sym::Value { .. } => 0.0,
                        })
                        .collect();
                    // Integers divide as integers (shape arithmetic: torch.chunk's sizes).
                    let y = kind.apply(&a);
                    if int && kind == NaryKind::Div { y.trunc() } else { y }
                })
                .collect();
            let int = int && !matches!(kind, NaryKind::Pow);
            self.set_const(node, Konst { shape: out, data, int });
            return Ok(());
        }
        let mut inputs = Vec::new();
        let args = syms
            .iter()
            .zip(&shapes)
            .map(|(s, shape)| {
                let map = (shape != &out).then(|| graph_ops::broadcast_map(shape, &out));
                match s {
                    Sym::Value { slot, .. } => {
                        let k = inputs.iter().position(|v| v == slot).unwrap_or_else(|| {
                            inputs.push(*slot);
                            inputs.len() - 1
                        });
                        Arg::input(k, map)
                    }
                    Sym::Const(k) => Arg::constant(
                        k.f32s(),
                        Some(map.unwrap_or_else(|| (0..k.data.len() as u32).collect())),
                    ),
                }
            })
            .collect();
        let in_full = shapes[values[0].0].clone();
        let name = Self::out_name(node);
        self.push(node.proto, name, Op::Nary(Nary { kind, args }), inputs, &in_full, out);
        Ok(())
    }

    /// An operator that copies values by an index map over ONNX shapes (batch of one):
    /// `f(shape) → (output shape, map)`. Folded for a constant.
    fn select_like(&mut self, node: &Node, f: impl Fn(&[usize]) -> Result<(Vec<usize>, Vec<u32>)>) -> Result<()> {
        let name = node.input(0).ok_or_else(|| unsupported("input 0 is missing"))?;
        match self.sym(name)?.clone() {
            Sym::Const(k) => {
                let (shape, map) = f(&k.shape)?;
                let data = map.iter().map(|&j| k.data[j as usize]).collect();
                self.set_const(node, k.with(shape, data));
            }
            Sym::Value { slot, full } => {
                let (out, map) = f(&full)?;
                let op = Op::Select(Select::copying(map));
                self.unary_layer(node, op, (slot, full), out);
            }
        }
        Ok(())
    }

    /// A reshape: `f(input shape)` gives the output shape (ONNX shapes, batch of one).
    fn reshape_with(&mut self, node: &Node, f: impl Fn(&[usize]) -> Result<Vec<usize>>) -> Result<()> {
        let name = node.input(0).ok_or_else(|| unsupported("input 0 is missing"))?;
        match self.sym(name)?.clone() {
            Sym::Const(k) => {
                let shape = f(&k.shape)?;
                if shape.iter().product::<usize>() != k.data.len() {
                    return Err(unsupported(format!("{:?} cannot be reshaped to {shape:?}", k.shape)));
                }
                self.set_const(node, Konst { shape, ..k });
            }
            Sym::Value { slot, full } => {
                let out = f(&full)?;
                if out.iter().product::<usize>() != full.iter().product::<usize>() {
                    return Err(unsupported(format!("a reshape of {full:?} to {out:?}")));
                }
                self.unary_layer(node, Op::Flatten, (slot, full), out);
            }
        }
        Ok(())
    }

    fn gemm(&mut self, node: &Node) -> Result<()> {
        let (slot, shape) = self.value_input(node, 0)?;
        // ONNX's Gemm is 2-D (rank-1 samples); the engine's own graphs apply it to the last
        // axis of longer samples too (a linear layer on every token).
        if node.int("transA", 0) != 0 || shape.is_empty() {
            return Err(unsupported("Gemm with a transposed input"));
        }
        let b = self.konst(node.input(1).unwrap_or_default())?.clone();
        let (alpha, beta) = (node.float("alpha", 1.0) as f64, node.float("beta", 1.0) as f64);
        let trans_b = node.int("transB", 0) != 0;
        let [r, c] = b.shape[..] else {
            return Err(unsupported("a Gemm weight that is not a matrix"));
        };
        let (inp, out) = if trans_b { (c, r) } else { (r, c) };
        let last = shape[shape.len() - 1];
        if inp != last {
            return Err(unsupported(format!("a Gemm weight {:?} for {last} inputs", b.shape)));
        }
        // The engine's linear weights are (out, in), as PyTorch's.
        let weight = (0..out * inp)
            .map(|i| {
                let (o, k) = (i / inp, i % inp);
                (alpha
                    * if trans_b {
                        b.data[o * inp + k]
                    } else {
                        b.data[k * out + o]
                    }) as f32
            })
            .collect();
        let bias = match self.opt_konst(node, 2)? {
            None => None,
            Some(k) if k.data.len() == out || k.data.len() == 1 => {
                Some((0..out).map(|o| (beta * k.data[o % k.data.len()]) as f32).collect())
            }
            Some(k) => return Err(unsupported(format!("a Gemm bias of shape {:?}", k.shape))),
        };
        let op = Op::Linear {
            inp,
            out,
            weight,
            bias,
            transposed: Default::default(),
        };
        let mut out_shape = shape.clone();
        *out_shape.last_mut().expect("rank ≥ 1") = out;
        self.unary_layer(node, op, (slot, shape), out_shape);
        Ok(())
    }

    fn matmul(&mut self, node: &Node) -> Result<()> {
        let (a, b) = (node.input(0).unwrap_or_default(), node.input(1).unwrap_or_default());
        match (self.sym(a)?.clone(), self.sym(b)?.clone()) {
            (Sym::Value { slot, full: shape }, Sym::Const(w)) => {
                let [k, n] = w.shape[..] else {
                    return Err(unsupported(format!("a MatMul by a constant of shape {:?}", w.shape)));
                };
                if shape.last() != Some(&k) {
                    return Err(unsupported(format!("a MatMul of {shape:?} by {:?}", w.shape)));
                }
                let weight = (0..n * k).map(|i| w.data[(i % k) * n + i / k] as f32).collect();
                let mut out = shape.clone();
                *out.last_mut().expect("rank ≥ 1") = n;
                let op = Op::Linear {
                    inp: k,
                    out: n,
                    weight,
                    bias: None,
                    transposed: Default::default(),
                };
                self.unary_layer(node, op, (slot, shape), out);
                Ok(())
            }
            (Sym::Value { slot: sa, full: a }, Sym::Value { slot: sb, full: b }) => {
                if a.len() < 2 || b.len() < 2 {
                    return Err(unsupported("a MatMul of vectors"));
                }
                let (ra, rb) = (a.len(), b.len());
                let (m, k, k2, n) = (a[ra - 2], a[ra - 1], b[rb - 2], b[rb - 1]);
                let (lead_a, lead_b) = (&a[..ra - 2], &b[..rb - 2]);
                if k != k2 || lead_a != lead_b {
                    return Err(unsupported(format!("a MatMul of {a:?} by {b:?}")));
                }
                let lead: usize = lead_a.iter().product();
                let mm = MatMul {
                    lead,
                    b_lead: lead,
                    m,
                    k,
                    n,
                };
                let mut out = lead_a.to_vec();
                out.extend([m, n]);
                let name = Self::out_name(node);
                self.push(node.proto, name, Op::MatMul(mm), vec![sa, sb], &a, out);
                Ok(())
            }
            (Sym::Const(a), Sym::Const(b)) => {
                // Folded: a product of weights (Swin v2's position-bias MLP on its table).
                let k = matmul_consts(&a, &b)?;
                self.set_const(node, k);
                Ok(())
            }
            _ => Err(unsupported("a MatMul whose left operand is a constant")),
        }
    }

    /// Spatial pads from `pads`/`auto_pad`: (top, left, bottom, right).
    fn pads(
        node: &Node,
        hw: (usize, usize),
        kernel: (usize, usize),
        stride: (usize, usize),
        dil: (usize, usize),
    ) -> Result<[usize; 4]> {
        match node.string("auto_pad", "NOTSET").as_str() {
            "NOTSET" => {
                let p = node.ints("pads").unwrap_or_else(|| vec![0; 4]);
                if p.iter().any(|v| *v < 0) {
                    return Err(unsupported(format!("pads {p:?}")));
                }
                match p[..] {
                    // A sequence: its one axis is the width of a one-row image.
                    [begin, end] => Ok([0, begin as usize, 0, end as usize]),
                    [top, left, bottom, right] => Ok([top as usize, left as usize, bottom as usize, right as usize]),
                    _ => Err(unsupported(format!("pads {p:?}"))),
                }
            }
            "VALID" => Ok([0; 4]),
            mode @ ("SAME_UPPER" | "SAME_LOWER") => {
                let total = |len: usize, k: usize, s: usize, d: usize| {
                    let out = len.div_ceil(s);
                    ((out - 1) * s + (k - 1) * d + 1).saturating_sub(len)
                };
                let (th, tw) = (
                    total(hw.0, kernel.0, stride.0, dil.0),
                    total(hw.1, kernel.1, stride.1, dil.1),
                );
                let (small_h, small_w) = (th / 2, tw / 2);
                Ok(if mode == "SAME_UPPER" {
                    [small_h, small_w, th - small_h, tw - small_w]
                } else {
                    [th - small_h, tw - small_w, small_h, small_w]
                })
            }
            other => Err(unsupported(format!("auto_pad {other}"))),
        }
    }

    /// Pads a value with a layer of its own (for asymmetric pads); returns the new value.
    fn pad_layer(
        &mut self,
        node: &Node,
        value: (usize, Vec<usize>),
        pads: [usize; 4],
        fill: f32,
    ) -> (usize, Vec<usize>) {
        let shape = &value.1;
        let (before, after) = if shape.len() == 2 {
            (vec![0, pads[1]], vec![0, pads[3]])
        } else {
            (vec![0, pads[0], pads[1]], vec![0, pads[2], pads[3]])
        };
        let (out, map) = graph_ops::pad_map(shape, &before, &after, PadMode::Constant);
        let picks = map.into_iter().map(|j| j.map_or((FILL, 0), |j| (0, j))).collect();
        let op = Op::Select(Select {
            picks,
            consts: vec![fill],
        });
        let slot = self.hidden_layer(node, "Pad", op, vec![value.0], &full(&value.1), full(&out));
        (slot, out)
    }

    fn window(node: &Node, kernel: (usize, usize)) -> Result<(Window2d, (usize, usize))> {
        let two = |name: &str, default: usize| -> Result<(usize, usize)> {
            match node.ints(name) {
                None => Ok((default, default)),
                Some(v) if v.len() == 2 && v.iter().all(|x| *x > 0) => Ok((v[0] as usize, v[1] as usize)),
                Some(v) if v.len() == 1 && v[0] > 0 => Ok((1, v[0] as usize)),
                Some(v) => Err(unsupported(format!("{name} {v:?} (1-D and 2-D windows are supported)"))),
            }
        };
        let stride = two("strides", 1)?;
        let dilation = two("dilations", 1)?;
        Ok((
            Window2d {
                kernel,
                stride,
                padding: (0, 0),
                dilation,
            },
            stride,
        ))
    }

    /// The input of a 3-D convolution or pool, a volume `[channels, depth, height, width]`.
    fn volume_input(&self, node: &Node) -> Result<Option<(usize, Vec<usize>)>> {
        let (slot, full) = self.value_input(node, 0)?;
        Ok((lead(&full) == 1 && full.len() == 5).then(|| (slot, sample(&full))))
    }

    /// The depth geometry of a 3-D window: kernel, stride, dilation, pads before and after,
    /// and the 2-D window over rows and columns (symmetric pads only).
    fn volume_window(node: &Node, kernel: [usize; 3]) -> Result<(usize, usize, usize, usize, Window2d)> {
        let three = |name: &str, default: usize| -> Result<[usize; 3]> {
            match node.ints(name) {
                None => Ok([default; 3]),
                Some(v) if v.len() == 3 && v.iter().all(|x| *x > 0) => {
                    Ok([v[0] as usize, v[1] as usize, v[2] as usize])
                }
                Some(v) => Err(unsupported(format!("{name} {v:?} for a 3-D window"))),
            }
        };
        let (stride, dilation) = (three("strides", 1)?, three("dilations", 1)?);
        let pads = match node.string("auto_pad", "NOTSET").as_str() {
            "NOTSET" | "VALID" => node.ints("pads").unwrap_or_else(|| vec![0; 6]),
            other => return Err(unsupported(format!("auto_pad {other} for a 3-D window"))),
        };
        if pads.len() != 6 || pads.iter().any(|p| *p < 0) || pads[1] != pads[4] || pads[2] != pads[5] {
            return Err(unsupported(format!(
                "pads {pads:?} for a 3-D window (rows and columns symmetric)"
            )));
        }
        let win = Window2d {
            kernel: (kernel[1], kernel[2]),
            stride: (stride[1], stride[2]),
            padding: (pads[1] as usize, pads[2] as usize),
            dilation: (dilation[1], dilation[2]),
        };
        Ok((stride[0], dilation[0], pads[0] as usize, pads[3] as usize, win))
    }

    /// The depth slices a 3-D window reads at kernel offset `t`, side by side as planes:
    /// `[out_depth × channels, height, width]`, each output depth's channels together (a
    /// depth before or past the volume is `fill`).
    fn depth_slices(
        shape: &[usize],
        out_depth: usize,
        (stride, dilation, before): (usize, usize, usize),
        t: usize,
        fill: f32,
    ) -> Select {
        let [c, d, h, w] = [shape[0], shape[1], shape[2], shape[3]];
        let mut picks = Vec::with_capacity(out_depth * c * h * w);
        for od in 0..out_depth {
            let z = (od * stride + t * dilation) as i64 - before as i64;
            for ch in 0..c {
                for p in 0..h * w {
                    picks.push(if (0..d as i64).contains(&z) {
                        (0, ((ch * d + z as usize) * h * w + p) as u32)
                    } else {
                        (FILL, 0)
                    });
                }
            }
        }
        Select {
            picks,
            consts: vec![fill],
        }
    }

    /// A 3-D convolution as 2-D ones: for each kernel depth t, the input's depth slices
    /// that t reads (every output depth's, side by side) go through one grouped 2-D
    /// convolution with that depth's kernels; the kd results add up, and the sum is laid
    /// out `[out, depth, rows, cols]`. Exact, with the 2-D kernels' gradients.
    fn volume_conv(&mut self, node: &Node, (slot, shape): (usize, Vec<usize>)) -> Result<()> {
        let w = self.konst(node.input(1).unwrap_or_default())?.clone();
        let [o, cg, kd, kh, kw] = w.shape[..] else {
            return Err(unsupported(format!("a 3-D convolution weight of shape {:?}", w.shape)));
        };
        let groups = node.int("group", 1).max(1) as usize;
        let [c, d, h, wd] = [shape[0], shape[1], shape[2], shape[3]];
        if c != cg * groups || o % groups != 0 {
            return Err(unsupported(format!(
                "a weight {:?} (groups {groups}) for {c} channels",
                w.shape
            )));
        }
        let (sd, dd, before, after, win) = Self::volume_window(node, [kd, kh, kw])?;
        let span = dd * (kd - 1) + 1;
        let od = (d + before + after)
            .checked_sub(span)
            .map(|v| v / sd + 1)
            .ok_or_else(|| {
                unsupported(format!(
                    "a kernel of depth {kd} deeper than the padded volume {shape:?}"
                ))
            })?;
        let (oh, ow) = win.out_hw(h, wd).ok_or_else(|| {
            unsupported(format!(
                "a kernel {:?} larger than the padded planes {shape:?}",
                win.kernel
            ))
        })?;
        let bias = self.opt_konst(node, 2)?.map(Konst::f32s);
        let planes_in = vec![1, od * c, h, wd];
        let planes_out = vec![1, od * o, oh, ow];
        let mut sum: Option<usize> = None;
        for t in 0..kd {
            let slices = Self::depth_slices(&shape, od, (sd, dd, before), t, 0.0);
            let s = self.hidden_layer(
                node,
                &format!("Conv3dSlices{t}"),
                Op::Select(slices),
                vec![slot],
                &full(&shape),
                planes_in.clone(),
            );
            // Kernel depth t of every output channel, once per output depth.
            let per = cg * kh * kw;
            let weight: Vec<f32> = (0..od)
                .flat_map(|_| {
                    let w = &w;
                    (0..o).flat_map(move |oc| {
                        (0..per).map(move |i| {
                            let (ci, r) = (i / (kh * kw), i % (kh * kw));
                            w.data[(((oc * cg + ci) * kd + t) * kh * kw) + r] as f32
                        })
                    })
                })
                .collect();
            let op = Op::Conv2d {
                out: od * o,
                groups: od * groups,
                win,
                weight,
                bias: bias
                    .as_ref()
                    .filter(|_| t == 0)
                    .map(|b| (0..od).flat_map(|_| b.iter().copied()).collect()),
                adjoint: Default::default(),
            };
            let conv = self.hidden_layer(
                node,
                &format!("Conv3dPlanes{t}"),
                op,
                vec![s],
                &planes_in,
                planes_out.clone(),
            );
            sum = Some(match sum {
                None => conv,
                Some(prev) => self.sum_layer(node, &format!("Conv3dSum{t}"), NaryKind::Add, prev, conv, &planes_out),
            });
        }
        let sum = sum.ok_or_else(|| unsupported("a 3-D kernel of depth 0"))?;
        self.depth_major(node, sum, [od, o, oh, ow])
    }

    /// A 3-D max or average pool as 2-D pools of depth slices, combined over the window's
    /// depth (the maximum, or the mean: average pools without depth padding, or counting it).
    fn volume_pool(&mut self, node: &Node, (slot, shape): (usize, Vec<usize>)) -> Result<()> {
        let k = node.ints("kernel_shape").unwrap_or_default();
        let [kd, kh, kw] = k[..] else {
            return Err(unsupported(format!("kernel_shape {k:?} for a volume")));
        };
        let (kd, kh, kw) = (kd.max(1) as usize, kh.max(1) as usize, kw.max(1) as usize);
        let max = node.proto.op_type == "MaxPool";
        let count_include_pad = node.int("count_include_pad", 0) != 0;
        if node.int("ceil_mode", 0) != 0 {
            return Err(unsupported("a 3-D pool with ceil_mode"));
        }
        let (sd, dd, before, after, win) = Self::volume_window(node, [kd, kh, kw])?;
        if !max && (before > 0 || after > 0) && !count_include_pad {
            return Err(unsupported("a 3-D average pool with depth pads that are not counted"));
        }
        let [c, d, h, wd] = [shape[0], shape[1], shape[2], shape[3]];
        let od = (d + before + after)
            .checked_sub(dd * (kd - 1) + 1)
            .map(|v| v / sd + 1)
            .ok_or_else(|| unsupported(format!("a window of depth {kd} deeper than the volume {shape:?}")))?;
        let (oh, ow) = win
            .out_hw(h, wd)
            .ok_or_else(|| unsupported(format!("a window {:?} larger than the planes", win.kernel)))?;
        let planes_in = vec![1, od * c, h, wd];
        let planes_out = vec![1, od * c, oh, ow];
        let fill = if max { f32::NEG_INFINITY } else { 0.0 };
        let mut acc: Option<usize> = None;
        for t in 0..kd {
            let slices = Self::depth_slices(&shape, od, (sd, dd, before), t, fill);
            let s = self.hidden_layer(
                node,
                &format!("Pool3dSlices{t}"),
                Op::Select(slices),
                vec![slot],
                &full(&shape),
                planes_in.clone(),
            );
            let op = if max {
                Op::MaxPool2d { win }
            } else {
                Op::AvgPool2d { win, count_include_pad }
            };
            let pooled = self.hidden_layer(
                node,
                &format!("Pool3dPlanes{t}"),
                op,
                vec![s],
                &planes_in,
                planes_out.clone(),
            );
            let kind = if max { NaryKind::Max } else { NaryKind::Add };
            acc = Some(match acc {
                None => pooled,
                Some(prev) => self.sum_layer(node, &format!("Pool3dCombine{t}"), kind, prev, pooled, &planes_out),
            });
        }
        let mut acc = acc.ok_or_else(|| unsupported("a 3-D window of depth 0"))?;
        if !max && kd > 1 {
            let mean = with_constant(NaryKind::Mul, 1.0 / kd as f32, planes_out.iter().product());
            acc = self.hidden_layer(node, "Pool3dMean", mean, vec![acc], &planes_out, planes_out.clone());
        }
        self.depth_major(node, acc, [od, c, oh, ow])
    }

    /// `a op b` of two values of one shape, as a hidden layer.
    fn sum_layer(&mut self, node: &Node, kind: &str, op: NaryKind, a: usize, b: usize, shape: &[usize]) -> usize {
        let args = vec![Arg::input(0, None), Arg::input(1, None)];
        self.hidden_layer(
            node,
            kind,
            Op::Nary(Nary { kind: op, args }),
            vec![a, b],
            shape,
            shape.to_vec(),
        )
    }

    /// Planes `[depth × channels, rows, cols]` laid out as the node's output, a volume
    /// `[channels, depth, rows, cols]`.
    fn depth_major(&mut self, node: &Node, slot: usize, [od, c, oh, ow]: [usize; 4]) -> Result<()> {
        let planes = vec![1, od, c, oh, ow];
        let (out, map) = graph_ops::transpose_map(&planes, &[0, 2, 1, 3, 4]);
        let op = Op::Select(Select::copying(map));
        self.unary_layer(node, op, (slot, vec![1, od * c, oh, ow]), out);
        Ok(())
    }

    /// The input of a convolution or pool: its slot and the sample shape, a sequence
    /// `[channels, length]` or an image `[channels, height, width]`.
    fn planar_input(&self, node: &Node) -> Result<(usize, Vec<usize>)> {
        let (slot, full) = self.value_input(node, 0)?;
        let shape = sample(&full);
        if lead(&full) != 1 || !(2..=3).contains(&shape.len()) {
            return Err(unsupported(format!(
                "{} over a value of shape {full:?} (batches of 1-D sequences and 2-D images are supported)",
                node.proto.op_type
            )));
        }
        Ok((slot, shape))
    }

    fn conv(&mut self, node: &Node, transposed: bool) -> Result<()> {
        if !transposed && let Some(volume) = self.volume_input(node)? {
            return self.volume_conv(node, volume);
        }
        let (slot, shape) = self.planar_input(node)?;
        let w = self.konst(node.input(1).unwrap_or_default())?.clone();
        if !matches!((shape.len(), w.shape.len()), (3, 4) | (2, 3)) {
            return Err(unsupported(format!(
                "a convolution over samples of shape {shape:?} with a weight {:?} (1-D sequences and 2-D images are supported)",
                w.shape
            )));
        }
        let groups = node.int("group", 1).max(1) as usize;
        let [_, h, wd] = planar(&shape);
        let kernel = if w.shape.len() == 3 {
            (1, w.shape[2])
        } else {
            (w.shape[2], w.shape[3])
        };
        let (mut win, stride) = Self::window(node, kernel)?;
        let pads = Self::pads(node, (h, wd), kernel, stride, win.dilation)?;
        let out_channels = if transposed { w.shape[1] * groups } else { w.shape[0] };
        let in_per_group = if transposed { w.shape[0] / groups } else { w.shape[1] };
        if shape[0] != in_per_group * groups || (transposed && w.shape[0] != shape[0]) {
            return Err(unsupported(format!(
                "a weight {:?} (groups {groups}) for {} input channels",
                w.shape, shape[0]
            )));
        }
        let bias = match self.opt_konst(node, 2)? {
            Some(b) if b.data.len() == out_channels => Some(b.f32s()),
            Some(b) => {
                return Err(unsupported(format!(
                    "a bias of {} values for {out_channels} channels",
                    b.data.len()
                )));
            }
            None => None,
        };
        let weight = w.f32s();
        if transposed {
            if pads[0] != pads[2] || pads[1] != pads[3] || node.ints("output_shape").is_some() {
                return Err(unsupported("ConvTranspose with asymmetric pads or an output_shape"));
            }
            let mut op_pad = node.ints("output_padding").unwrap_or_else(|| vec![0, 0]);
            if shape.len() == 2 {
                op_pad.insert(0, 0);
            }
            win.padding = (pads[0], pads[1]);
            let span = |len: usize, k: usize, s: usize, p: usize, d: usize, extra: i64| {
                ((len as i64 - 1) * s as i64 - 2 * p as i64 + d as i64 * (k as i64 - 1) + 1 + extra).max(0) as usize
            };
            let oh = span(
                h,
                kernel.0,
                stride.0,
                pads[0],
                win.dilation.0,
                op_pad.first().copied().unwrap_or(0),
            );
            let ow = span(
                wd,
                kernel.1,
                stride.1,
                pads[1],
                win.dilation.1,
                op_pad.get(1).copied().unwrap_or(0),
            );
            let op = Op::ConvTranspose2d {
                out: out_channels,
                groups,
                win,
                weight,
                bias,
            };
            let out_shape = unplanar(&shape, [out_channels, oh, ow]);
            self.unary_layer(node, op, (slot, full(&shape)), full(&out_shape));
            return Ok(());
        }
        let (value, padded) = if pads[0] == pads[2] && pads[1] == pads[3] {
            win.padding = (pads[0], pads[1]);
            ((slot, shape.clone()), shape)
        } else {
            let v = self.pad_layer(node, (slot, shape), pads, 0.0);
            (v.clone(), v.1)
        };
        let [_, ph, pw] = planar(&padded);
        let (oh, ow) = win
            .out_hw(ph, pw)
            .ok_or_else(|| unsupported(format!("a kernel {kernel:?} larger than the padded input {padded:?}")))?;
        let out_shape = unplanar(&padded, [out_channels, oh, ow]);
        let op = Op::Conv2d {
            out: out_channels,
            groups,
            win,
            weight,
            bias,
            adjoint: Default::default(),
        };
        self.unary_layer(node, op, (value.0, full(&value.1)), full(&out_shape));
        Ok(())
    }

    fn pool(&mut self, node: &Node) -> Result<()> {
        if let Some(volume) = self.volume_input(node)? {
            return self.volume_pool(node, volume);
        }
        let (mut slot, shape) = self.planar_input(node)?;
        // LpPool: (Σ |x|^p)^(1/p) over each window, an average pool of |x|^p (pads
        // counted, as zeros) times the window's size, to the power 1/p.
        let lp = (node.proto.op_type == "LpPool").then(|| node.int("p", 2).max(1) as f32);
        if let Some(p) = lp {
            let f = full(&shape);
            let abs = self.hidden_layer(node, "LpAbs", Op::Map(MapFn::Abs), vec![slot], &f, f.clone());
            let power = with_constant(NaryKind::Pow, p, shape.iter().product());
            slot = self.hidden_layer(node, "LpPower", power, vec![abs], &f, f.clone());
        }
        let k = node.ints("kernel_shape").unwrap_or_default();
        let kernel = match (shape.len(), &k[..]) {
            (2, [kw]) => (1, (*kw).max(1) as usize),
            (3, [kh, kw]) => ((*kh).max(1) as usize, (*kw).max(1) as usize),
            _ => {
                return Err(unsupported(format!(
                    "kernel_shape {k:?} for samples of shape {shape:?}"
                )));
            }
        };
        let [_, h, w] = planar(&shape);
        let (mut win, stride) = Self::window(node, kernel)?;
        let mut pads = Self::pads(node, (h, w), kernel, stride, win.dilation)?;
        let max = node.proto.op_type == "MaxPool";
        if node.int("ceil_mode", 0) != 0 {
            if !max {
                return Err(unsupported("AveragePool with ceil_mode"));
            }
            // Ceil mode: pad the end so the last partial window fits.
            for (axis, len) in [(0, h), (1, w)] {
                let span = win_span(kernel, win.dilation, axis);
                let s = if axis == 0 { stride.0 } else { stride.1 };
                let padded = len + pads[axis] + pads[axis + 2];
                if padded >= span {
                    let rem = (padded - span) % s;
                    if rem != 0 {
                        pads[axis + 2] += s - rem;
                    }
                }
            }
        }
        let symmetric = pads[0] == pads[2] && pads[1] == pads[3];
        let count_include_pad = node.int("count_include_pad", 0) != 0 || lp.is_some();
        let (value, padded) = if symmetric {
            win.padding = (pads[0], pads[1]);
            ((slot, shape.clone()), shape.clone())
        } else if max {
            let v = self.pad_layer(node, (slot, shape), pads, f32::NEG_INFINITY);
            (v.clone(), v.1)
        } else if count_include_pad {
            let v = self.pad_layer(node, (slot, shape), pads, 0.0);
            (v.clone(), v.1)
        } else {
            return Err(unsupported("AveragePool with asymmetric pads that are not counted"));
        };
        let [c, ph, pw] = planar(&padded);
        let (oh, ow) = win
            .out_hw(ph, pw)
            .ok_or_else(|| unsupported(format!("a window {kernel:?} larger than the padded input")))?;
        let op = if max {
            Op::MaxPool2d { win }
        } else {
            Op::AvgPool2d { win, count_include_pad }
        };
        let out = full(&unplanar(&padded, [c, oh, ow]));
        let Some(p) = lp else {
            self.unary_layer(node, op, (value.0, full(&value.1)), out);
            return Ok(());
        };
        let len = out.iter().product();
        let mean = self.hidden_layer(node, "LpMean", op, vec![value.0], &full(&value.1), out.clone());
        let sum = with_constant(NaryKind::Mul, (kernel.0 * kernel.1) as f32, len);
        let sums = self.hidden_layer(node, "LpSum", sum, vec![mean], &out, out.clone());
        self.unary_layer(
            node,
            with_constant(NaryKind::Pow, 1.0 / p, len),
            (sums, out.clone()),
            out,
        );
        Ok(())
    }

    fn slice(&mut self, node: &Node) -> Result<()> {
        let (starts, ends, axes, steps) = if self.opset >= 10 {
            let get = |i: usize| -> Result<Option<Vec<i64>>> { Ok(self.opt_konst(node, i)?.map(Konst::ints)) };
            (
                get(1)?.unwrap_or_default(),
                get(2)?.unwrap_or_default(),
                get(3)?,
                get(4)?,
            )
        } else {
            (
                node.ints("starts").unwrap_or_default(),
                node.ints("ends").unwrap_or_default(),
                node.ints("axes"),
                None,
            )
        };
        self.select_like(node, move |shape| {
            let r = shape.len();
            let axes: Vec<usize> = match &axes {
                Some(a) => a.iter().map(|&x| axis(x, r)).collect::<Result<_>>()?,
                None => (0..starts.len()).collect(),
            };
            let mut ranges: Vec<(i64, i64, usize)> = shape.iter().map(|&d| (0, 1, d)).collect();
            for (i, &a) in axes.iter().enumerate() {
                let step = steps.as_ref().and_then(|s| s.get(i).copied()).unwrap_or(1);
                let (start, end) = (
                    starts.get(i).copied().unwrap_or(0),
                    ends.get(i).copied().unwrap_or(i64::MAX),
                );
                if step == 0 {
                    return Err(unsupported("a Slice with step 0"));
                }
                ranges[a] = graph_ops::slice_range(shape[a], start, end.clamp(i64::MIN / 2, i64::MAX / 2), step);
            }
            Ok(graph_ops::slice_map(shape, &ranges))
        })
    }

    fn gather(&mut self, node: &Node) -> Result<()> {
        let (data, idx) = (node.input(0).unwrap_or_default(), node.input(1).unwrap_or_default());
        let a = node.int("axis", 0);
        match (self.sym(data)?.clone(), self.sym(idx)?.clone()) {
            (Sym::Const(table), Sym::Value { slot, full: shape }) => {
                if a != 0 || table.shape.len() != 2 {
                    return Err(unsupported(
                        "a Gather of a constant by the input other than a row lookup",
                    ));
                }
                let dim = table.shape[1];
                let mut out = shape.clone();
                out.push(dim);
                let op = Op::Embedding {
                    table: table.f32s(),
                    dim,
                };
                self.unary_layer(node, op, (slot, shape), out);
                Ok(())
            }
            (_, Sym::Const(indices)) => {
                let ishape = indices.shape.clone();
                let raw = indices.ints();
                self.select_like(node, move |shape| {
                    let ax = axis(a, shape.len())?;
                    let len = shape[ax] as i64;
                    let idx: Vec<usize> = raw
                        .iter()
                        .map(|&i| {
                            let j = if i < 0 { i + len } else { i };
                            if (0..len).contains(&j) {
                                Ok(j as usize)
                            } else {
                                Err(unsupported(format!("index {i} out of range for an axis of {len}")))
                            }
                        })
                        .collect::<Result<_>>()?;
                    Ok(graph_ops::gather_map(shape, ax, &idx, &ishape))
                })
            }
            _ => Err(unsupported("a Gather whose indices depend on the input")),
        }
    }

    fn pad(&mut self, node: &Node) -> Result<()> {
        let pads = match self.opt_konst(node, 1)? {
            Some(k) => k.ints(),
            None => node.ints("pads").unwrap_or_default(),
        };
        let fill = match self.opt_konst(node, 2)? {
            Some(k) => k.data.first().copied().unwrap_or(0.0) as f32,
            None => node.float("value", 0.0),
        };
        let pad_axes = self.opt_konst(node, 3)?.map(Konst::ints);
        let mode = match node.string("mode", "constant").as_str() {
            "constant" => PadMode::Constant,
            "reflect" => PadMode::Reflect,
            "edge" => PadMode::Edge,
            other => return Err(unsupported(format!("Pad mode {other}"))),
        };
        let name = node.input(0).ok_or_else(|| unsupported("input 0 is missing"))?;
        let sym = self.sym(name)?.clone();
        let shape = match &sym {
            Sym::Value { full, .. } => full.clone(),
            Sym::Const(k) => k.shape.clone(),
        };
        let r = shape.len();
        // With an axes input (opset 18), the pads are those axes' only.
        let pads = match pad_axes {
            Some(axes) if pads.len() == 2 * axes.len() => {
                let mut all = vec![0; 2 * r];
                for (i, a) in axes.iter().enumerate() {
                    let a = axis(*a, r)?;
                    all[a] = pads[i];
                    all[r + a] = pads[axes.len() + i];
                }
                all
            }
            _ => pads,
        };
        if pads.len() != 2 * r || pads.iter().any(|p| *p < 0) {
            return Err(unsupported(format!(
                "pads {pads:?} for rank {r} (negative pads are not supported)"
            )));
        }
        let (before, after): (Vec<usize>, Vec<usize>) = (
            pads[..r].iter().map(|p| *p as usize).collect(),
            pads[r..].iter().map(|p| *p as usize).collect(),
        );
        if mode == PadMode::Reflect
            && (0..r).any(|d| (before[d] > 0 || after[d] > 0) && (before[d].max(after[d]) >= shape[d]))
        {
            return Err(unsupported("a reflect pad as wide as the axis"));
        }
        let (out, map) = graph_ops::pad_map(&shape, &before, &after, mode);
        match sym {
            Sym::Const(k) => {
                let data = map
                    .iter()
                    .map(|j| j.map_or(fill as f64, |j| k.data[j as usize]))
                    .collect();
                self.set_const(node, k.with(out, data));
            }
            Sym::Value { slot, full } => {
                let picks = map.into_iter().map(|j| j.map_or((FILL, 0), |j| (0, j))).collect();
                self.unary_layer(
                    node,
                    Op::Select(Select {
                        picks,
                        consts: vec![fill],
                    }),
                    (slot, full),
                    out,
                );
            }
        }
        Ok(())
    }

    fn concat(&mut self, node: &Node) -> Result<()> {
        let names: Vec<&str> = (0..node.proto.input.len()).filter_map(|i| node.input(i)).collect();
        let (syms, shapes) = self.operands(&names)?;
        let all_const = syms.iter().all(|s| matches!(s, Sym::Const(_)));
        let r = shapes.first().map_or(0, Vec::len);
        let ax = axis(node.int("axis", 0), r)?;
        for s in &shapes {
            if s.len() != r || (0..r).any(|d| d != ax && s[d] != shapes[0][d]) {
                return Err(unsupported(format!("a Concat of shapes {shapes:?}")));
            }
        }
        let mut out = shapes[0].clone();
        out[ax] = shapes.iter().map(|s| s[ax]).sum();
        let outer: usize = out[..ax].iter().product();
        let inner: usize = out[ax + 1..].iter().product();
        // Constants joined to values (a class token) are the same for every sample: their
        // values follow one another in `consts`, picked with FILL.
        let mut consts: Vec<f64> = Vec::new();
        let mut inputs: Vec<usize> = Vec::new();
        let sources: Vec<(u32, usize)> = syms
            .iter()
            .map(|s| match s {
                Sym::Value { slot, .. } => {
                    let k = inputs.iter().position(|v| v == slot).unwrap_or_else(|| {
                        inputs.push(*slot);
                        inputs.len() - 1
                    });
                    (k as u32, 0)
                }
                Sym::Const(c) => {
                    consts.extend(&c.data);
                    (FILL, consts.len() - c.data.len())
                }
            })
            .collect();
        let mut picks = Vec::with_capacity(out.iter().product());
        for o in 0..outer {
            for (s, &(k, offset)) in shapes.iter().zip(&sources) {
                let block = s[ax] * inner;
                let from = if k == FILL { offset + o * block } else { o * block };
                picks.extend((0..block).map(|j| (k, (from + j) as u32)));
            }
        }
        if all_const {
            let data = picks.iter().map(|&(_, j)| consts[j as usize]).collect();
            let int = syms.iter().all(|s| matches!(s, Sym::Const(k) if k.int));
            self.set_const(node, Konst { shape: out, data, int });
            return Ok(());
        }
        let mut consts: Vec<f32> = consts.into_iter().map(|v| v as f32).collect();
        if consts.is_empty() {
            consts.push(0.0);
        }
        let name = Self::out_name(node);
        let in_full = shapes
            .iter()
            .zip(&syms)
            .find(|(_, s)| matches!(s, Sym::Value { .. }))
            .map_or_else(Vec::new, |(s, _)| s.clone());
        let op = Op::Select(Select { picks, consts });
        self.push(node.proto, name, op, inputs, &in_full, out);
        Ok(())
    }

    fn reduce(&mut self, node: &Node) -> Result<()> {
        let kind = match node.proto.op_type.as_str() {
            "ReduceSum" => ReduceKind::Sum,
            "ReduceMean" => ReduceKind::Mean,
            "ReduceMax" => ReduceKind::Max,
            "ReduceMin" => ReduceKind::Min,
            _ => ReduceKind::SumSquare,
        };
        let axes = match node.ints("axes") {
            Some(a) => a,
            None => self.opt_konst(node, 1)?.map(Konst::ints).unwrap_or_default(),
        };
        let keep = node.int("keepdims", 1) != 0;
        let noop = node.int("noop_with_empty_axes", 0) != 0;
        let (slot, shape) = self.value_input(node, 0)?;
        let r = shape.len();
        let axes: Vec<usize> = if axes.is_empty() {
            if noop {
                return self.select_like(node, |s| {
                    Ok((s.to_vec(), (0..s.iter().product::<usize>() as u32).collect()))
                });
            }
            (0..r).collect()
        } else {
            axes.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?
        };
        let reduced: Vec<usize> = (0..r).map(|d| if axes.contains(&d) { 1 } else { shape[d] }).collect();
        let st = graph_ops::strides(&reduced);
        let mut map = Vec::with_capacity(shape.iter().product());
        graph_ops::for_each_index(&shape, |_, idx| {
            let j: usize = idx
                .iter()
                .zip(&reduced)
                .zip(&st)
                .map(|((i, len), s)| if *len == 1 { 0 } else { i * s })
                .sum();
            map.push(j as u32);
        });
        let count = shape.iter().product::<usize>() / reduced.iter().product::<usize>().max(1);
        let out: Vec<usize> = if keep {
            reduced
        } else {
            (0..r).filter(|d| !axes.contains(d)).map(|d| shape[d]).collect()
        };
        let op = Op::Reduce(Reduce { kind, map, count });
        if node.proto.op_type == "ReduceL2" {
            // √(Σx²): the sum of squares as a hook point of its own, then the root.
            let sums = self.hidden_layer(node, "ReduceSumSquare", op, vec![slot], &shape, out.clone());
            self.unary_layer(node, Op::Map(MapFn::Sqrt), (sums, out.clone()), out);
        } else {
            self.unary_layer(node, op, (slot, shape), out);
        }
        Ok(())
    }

    /// A layer a node needs before its own (a pad, a sum of squares), of type `kind`,
    /// named after the node's output with `:kind`; returns its slot.
    fn hidden_layer(
        &mut self,
        node: &Node,
        kind: &str,
        op: Op,
        inputs: Vec<usize>,
        in_full: &[usize],
        out_full: Vec<usize>,
    ) -> usize {
        let name = format!("{}:{}", Self::out_name(node), kind.to_lowercase());
        let proto = NodeProto {
            op_type: kind.into(),
            ..Default::default()
        };
        self.push(&proto, name, op, inputs, in_full, out_full);
        self.layers.len()
    }

    /// Einsum of two values that is a batched matrix product — one letter contracted, one
    /// letter of each operand kept, the others shared batch letters (attention's
    /// `bhid,bhjd->bhij`): the operands permuted to `[batch…, i, k]` and `[batch…, k, j]`,
    /// multiplied, and the product permuted to the output's order.
    fn einsum(&mut self, node: &Node) -> Result<()> {
        let equation: String = node
            .string("equation", "")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let refuse = || unsupported(format!("an Einsum `{equation}` that is not a batched matrix product"));
        let (lhs, out) = equation.split_once("->").ok_or_else(refuse)?;
        let (a, b) = lhs.split_once(',').ok_or_else(refuse)?;
        let (a, b, out): (Vec<char>, Vec<char>, Vec<char>) =
            (a.chars().collect(), b.chars().collect(), out.chars().collect());
        let (sa, fa) = self.value_input(node, 0)?;
        let (sb, fb) = self.value_input(node, 1)?;
        let distinct = |v: &[char]| {
            v.iter()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() && !v[..i].contains(c))
        };
        if !(distinct(&a) && distinct(&b) && distinct(&out)) || a.len() != fa.len() || b.len() != fb.len() {
            return Err(refuse());
        }
        let batch: Vec<char> = out.iter().copied().filter(|c| a.contains(c) && b.contains(c)).collect();
        let m: Vec<char> = out
            .iter()
            .copied()
            .filter(|c| a.contains(c) && !b.contains(c))
            .collect();
        let n: Vec<char> = out
            .iter()
            .copied()
            .filter(|c| b.contains(c) && !a.contains(c))
            .collect();
        let k: Vec<char> = a
            .iter()
            .copied()
            .filter(|c| b.contains(c) && !out.contains(c))
            .collect();
        if m.len() != 1
            || n.len() != 1
            || k.len() != 1
            || batch.len() + 2 != out.len()
            || a.len() != batch.len() + 2
            || b.len() != batch.len() + 2
        {
            return Err(refuse());
        }
        let size = |letters: &[char], full: &[usize], c: char| letters.iter().position(|x| *x == c).map(|i| full[i]);
        for &c in batch.iter().chain(&k) {
            if size(&a, &fa, c) != size(&b, &fb, c) {
                return Err(unsupported(format!(
                    "Einsum `{equation}`: axis {c} differs between its operands"
                )));
            }
        }
        let order = |letters: &[char], want: Vec<char>| -> Vec<usize> {
            want.iter()
                .filter_map(|c| letters.iter().position(|x| x == c))
                .collect()
        };
        let with = |tail: [char; 2]| batch.iter().copied().chain(tail).collect::<Vec<char>>();
        let (sa, fa) = self.permuted(node, "Transpose", (sa, fa), &order(&a, with([m[0], k[0]])));
        let (sb, fb) = self.permuted(node, "Transpose", (sb, fb), &order(&b, with([k[0], n[0]])));
        let r = fa.len();
        let lead: usize = fa[..r - 2].iter().product();
        let mm = MatMul {
            lead,
            b_lead: lead,
            m: fa[r - 2],
            k: fa[r - 1],
            n: fb[r - 1],
        };
        let mut product = fa[..r - 2].to_vec();
        product.extend([fa[r - 2], fb[r - 1]]);
        let final_order = order(&with([m[0], n[0]]), out.clone());
        if final_order.iter().enumerate().all(|(i, p)| i == *p) {
            let name = Self::out_name(node);
            self.push(node.proto, name, Op::MatMul(mm), vec![sa, sb], &fa, product);
            return Ok(());
        }
        let slot = self.hidden_layer(node, "MatMul", Op::MatMul(mm), vec![sa, sb], &fa, product.clone());
        let (out_shape, map) = graph_ops::transpose_map(&product, &final_order);
        let op = Op::Select(Select::copying(map));
        self.unary_layer(node, op, (slot, product), out_shape);
        Ok(())
    }

    /// A value with its axes in the order `perm` (a hidden Select layer), or itself.
    fn permuted(
        &mut self,
        node: &Node,
        kind: &str,
        (slot, full): (usize, Vec<usize>),
        perm: &[usize],
    ) -> (usize, Vec<usize>) {
        if perm.iter().enumerate().all(|(i, p)| i == *p) {
            return (slot, full);
        }
        let (out, map) = graph_ops::transpose_map(&full, perm);
        let op = Op::Select(Select::copying(map));
        // Each operand's permutation is a hook point of its own: `<output>:transpose`, then
        // `<output>:transpose` again would clash, so the second is named by its slot.
        let tag = format!("{kind}{}", self.layers.len());
        (self.hidden_layer(node, &tag, op, vec![slot], &full, out.clone()), out)
    }

    /// CumSum along the last axis: a linear map of that axis (a triangle of ones), so its
    /// gradient is exact; RoBERTa's position ids are the running count of real tokens.
    fn cumsum(&mut self, node: &Node) -> Result<()> {
        let name = node.input(0).ok_or_else(|| unsupported("input 0 is missing"))?;
        let sym = self.sym(name)?.clone();
        let shape = match &sym {
            Sym::Value { full, .. } => full.clone(),
            Sym::Const(k) => k.shape.clone(),
        };
        let a = self
            .konst(node.input(1).unwrap_or_default())?
            .data
            .first()
            .copied()
            .ok_or_else(|| unsupported("a CumSum without an axis"))? as i64;
        let ax = axis(a, shape.len())?;
        let (exclusive, reverse) = (node.int("exclusive", 0) != 0, node.int("reverse", 0) != 0);
        let len = shape[ax];
        // W[o][i]: whether input i adds into output o.
        let adds = |o: usize, i: usize| match (reverse, exclusive) {
            (false, false) => i <= o,
            (false, true) => i < o,
            (true, false) => i >= o,
            (true, true) => i > o,
        };
        match sym {
            Sym::Const(k) => {
                let st = graph_ops::strides(&shape);
                let mut data = vec![0.0; k.data.len()];
                graph_ops::for_each_index(&shape, |flat, idx| {
                    let base = flat - idx[ax] * st[ax];
                    data[flat] = (0..len)
                        .filter(|&i| adds(idx[ax], i))
                        .map(|i| k.data[base + i * st[ax]])
                        .sum();
                });
                self.set_const(node, k.with(shape, data));
            }
            Sym::Value { slot, full } => {
                if ax + 1 != full.len() {
                    return Err(unsupported("a CumSum of a value along an axis other than the last"));
                }
                let weight = (0..len * len)
                    .map(|w| f32::from(u8::from(adds(w / len, w % len))))
                    .collect();
                let op = Op::Linear {
                    inp: len,
                    out: len,
                    weight,
                    bias: None,
                    transposed: Default::default(),
                };
                self.unary_layer(node, op, (slot, full.clone()), full);
            }
        }
        Ok(())
    }

    /// Split: one layer per output, each a slice of the input along `axis`.
    fn split(&mut self, node: &Node) -> Result<()> {
        let name = node.input(0).ok_or_else(|| unsupported("input 0 is missing"))?;
        let sym = self.sym(name)?.clone();
        let shape = match &sym {
            Sym::Value { full, .. } => full.clone(),
            Sym::Const(k) => k.shape.clone(),
        };
        let ax = axis(node.int("axis", 0), shape.len())?;
        let outputs: Vec<String> = node.proto.output.clone();
        let len = shape[ax];
        let sizes: Vec<usize> = match self.opt_konst(node, 1)?.map(Konst::ints).or_else(|| node.ints("split")) {
            Some(s) => s.iter().map(|v| (*v).max(0) as usize).collect(),
            None => {
                // Equal parts (the last smaller), as many as outputs or num_outputs say.
                let parts = node.int("num_outputs", outputs.len() as i64).max(1) as usize;
                let each = len.div_ceil(parts);
                (0..parts).map(|i| each.min(len.saturating_sub(i * each))).collect()
            }
        };
        if sizes.len() != outputs.len() || sizes.iter().sum::<usize>() != len {
            return Err(unsupported(format!(
                "a Split of an axis of {len} into {sizes:?} for {} outputs",
                outputs.len()
            )));
        }
        let mut start = 0;
        for (out_name, size) in outputs.iter().zip(sizes) {
            let mut ranges: Vec<(i64, i64, usize)> = shape.iter().map(|&d| (0, 1, d)).collect();
            ranges[ax] = (start as i64, 1, size);
            start += size;
            let (out, map) = graph_ops::slice_map(&shape, &ranges);
            match &sym {
                Sym::Const(k) => {
                    let data = map.iter().map(|&j| k.data[j as usize]).collect();
                    self.syms.insert(out_name.clone(), Sym::Const(k.with(out, data)));
                }
                Sym::Value { slot, full } => {
                    let op = Op::Select(Select::copying(map));
                    self.push(node.proto, out_name.clone(), op, vec![*slot], full, out);
                }
            }
        }
        Ok(())
    }

    /// Resize / Upsample: each output position maps to a coordinate of the input (ONNX's
    /// coordinate transformations); nearest mode copies the input value there (its rounding
    /// modes), linear and cubic modes weigh its neighbours, axis by axis, as onnxruntime
    /// does (linear: the coordinate clamped to the axis; cubic: Keys' kernel with
    /// `cubic_coeff_a`, neighbours past the edge clamped to it).
    fn resize(&mut self, node: &Node) -> Result<()> {
        let mode = node.string("mode", "nearest");
        if !["nearest", "linear", "cubic"].contains(&mode.as_str()) {
            return Err(unsupported(format!("Resize in {mode} mode")));
        }
        if node.int("antialias", 0) != 0 || node.int("exclude_outside", 0) != 0 {
            return Err(unsupported("Resize with antialias or exclude_outside"));
        }
        let name = node.input(0).ok_or_else(|| unsupported("input 0 is missing"))?;
        let full_in = match self.sym(name)? {
            Sym::Value { full, .. } => full.clone(),
            Sym::Const(k) => k.shape.clone(),
        };
        let r = full_in.len();
        // Upsample: (x, scales); Resize: (x, roi, scales, sizes).
        let (scales, sizes) = if node.proto.op_type == "Upsample" {
            (self.opt_konst(node, 1)?.map(|k| k.data.clone()), None)
        } else {
            (
                self.opt_konst(node, 2)?
                    .map(|k| k.data.clone())
                    .filter(|s| !s.is_empty()),
                self.opt_konst(node, 3)?.map(Konst::ints).filter(|s| !s.is_empty()),
            )
        };
        let (out, scale): (Vec<usize>, Vec<f64>) = match (sizes, scales) {
            (Some(sz), _) if sz.len() == r => (
                sz.iter().map(|v| (*v).max(0) as usize).collect(),
                sz.iter().zip(&full_in).map(|(o, i)| *o as f64 / *i as f64).collect(),
            ),
            (_, Some(sc)) if sc.len() == r => (
                sc.iter()
                    .zip(&full_in)
                    .map(|(s, i)| (s * *i as f64).floor() as usize)
                    .collect(),
                sc,
            ),
            _ => return Err(unsupported("a Resize without scales or sizes for every axis")),
        };
        let transform = node.string("coordinate_transformation_mode", "half_pixel");
        let rounding = node.string("nearest_mode", "round_prefer_floor");
        let a = node.float("cubic_coeff_a", -0.75) as f64;
        let coordinate = |o: usize, d: usize| -> Result<f64> {
            let (len_in, len_out, s) = (full_in[d] as f64, out[d] as f64, scale[d]);
            Ok(match transform.as_str() {
                "asymmetric" => o as f64 / s,
                "align_corners" if len_out > 1.0 => o as f64 * (len_in - 1.0) / (len_out - 1.0),
                "align_corners" => 0.0,
                "half_pixel" | "pytorch_half_pixel" if !(transform == "pytorch_half_pixel" && len_out <= 1.0) => {
                    (o as f64 + 0.5) / s - 0.5
                }
                "pytorch_half_pixel" => 0.0,
                "tf_half_pixel_for_nn" => (o as f64 + 0.5) / s,
                other => return Err(unsupported(format!("coordinate_transformation_mode {other}"))),
            })
        };
        // For each axis and output position: the input positions it reads, with weights.
        let taps_of = |o: usize, d: usize| -> Result<Vec<(usize, f64)>> {
            let len = full_in[d];
            let last = len as f64 - 1.0;
            let x = coordinate(o, d)?;
            Ok(match mode.as_str() {
                "nearest" => {
                    let i = match rounding.as_str() {
                        "floor" => x.floor(),
                        "ceil" => x.ceil(),
                        "round_prefer_ceil" => (x + 0.5).floor(),
                        _ => (x - 0.5).ceil(),
                    };
                    vec![(i.clamp(0.0, last) as usize, 1.0)]
                }
                "linear" => {
                    let x = x.clamp(0.0, last);
                    let i0 = x.floor() as usize;
                    let i1 = (i0 + 1).min(len - 1);
                    let t = x - i0 as f64;
                    vec![(i0, 1.0 - t), (i1, t)]
                }
                _ => {
                    let i0 = x.floor();
                    let t = x - i0;
                    let keys = |s: f64| {
                        let s = s.abs();
                        if s <= 1.0 {
                            ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0
                        } else if s < 2.0 {
                            ((a * s - 5.0 * a) * s + 8.0 * a) * s - 4.0 * a
                        } else {
                            0.0
                        }
                    };
                    (-1..=2)
                        .map(|k| {
                            let at = (i0 + k as f64).clamp(0.0, last) as usize;
                            (at, keys(t - k as f64))
                        })
                        .collect()
                }
            })
        };
        let taps: Vec<Vec<Vec<(usize, f64)>>> = (0..r)
            .map(|d| (0..out[d]).map(|o| taps_of(o, d)).collect::<Result<_>>())
            .collect::<Result<_>>()?;
        let st = graph_ops::strides(&full_in);
        // Each output's taps: the products over axes of the axes' taps.
        let mut rows: Vec<Vec<(usize, f64)>> = Vec::with_capacity(out.iter().product());
        graph_ops::for_each_index(&out, |_, idx| {
            let mut row = vec![(0usize, 1.0f64)];
            for (d, &i) in idx.iter().enumerate() {
                let stride = st[d];
                row = row
                    .iter()
                    .flat_map(|&(j, w)| taps[d][i].iter().map(move |&(k, v)| (j + k * stride, w * v)))
                    .filter(|(_, w)| *w != 0.0)
                    .collect();
            }
            rows.push(row);
        });
        if mode == "nearest" {
            let map: Vec<u32> = rows.iter().map(|r| r.first().map_or(0, |t| t.0 as u32)).collect();
            return self.select_like(node, move |shape| {
                if shape != full_in.as_slice() {
                    return Err(unsupported("internal: a Resize input of another shape"));
                }
                Ok((out.clone(), map.clone()))
            });
        }
        match self.sym(name)?.clone() {
            Sym::Const(k) => {
                let data = rows
                    .iter()
                    .map(|r| r.iter().map(|&(j, w)| w * k.data[j]).sum())
                    .collect();
                self.set_const(
                    node,
                    Konst {
                        shape: out,
                        data,
                        int: false,
                    },
                );
            }
            Sym::Value { slot, full } => {
                let mix = graph_ops::Mix::from_rows(
                    rows.into_iter()
                        .map(|r| r.into_iter().map(|(j, w)| (j as u32, w as f32)).collect())
                        .collect(),
                );
                self.unary_layer(node, Op::Mix(mix), (slot, full), out);
            }
        }
        Ok(())
    }

    /// InstanceNormalization (and GroupNormalization, `groups` of channels together): each
    /// channel (group of channels) of each sample normalised over its positions — a layer
    /// norm of the contiguous block — then scaled and shifted per channel.
    fn instance_norm(&mut self, node: &Node, groups: Option<usize>) -> Result<()> {
        let (slot, full) = self.value_input(node, 0)?;
        if lead(&full) != 1 || full.len() < 3 {
            return Err(unsupported(format!("an instance norm of a value of shape {full:?}")));
        }
        let channels = full[1];
        let groups = groups.unwrap_or(channels);
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(unsupported(format!("{groups} groups of {channels} channels")));
        }
        // Per channel (opset 21), or per group (opset 18) spread over its channels.
        let per = |i: usize| -> Result<Vec<f32>> {
            let k = self.konst(node.input(i).unwrap_or_default())?;
            match k.data.len() {
                n if n == channels => Ok(k.f32s()),
                n if n == groups => Ok((0..channels).map(|c| k.data[c / (channels / groups)] as f32).collect()),
                n => Err(unsupported(format!("{n} values for {channels} channels"))),
            }
        };
        let (scale, shift) = (per(1)?, per(2)?);
        let ln = LayerNorm {
            len: full[2..].iter().product::<usize>() * (channels / groups),
            eps: node.float("epsilon", 1e-5),
            scale: None,
            bias: None,
        };
        let normed = self.hidden_layer(node, "Normalize", Op::LayerNorm(ln), vec![slot], &full, full.clone());
        self.unary_layer(node, Op::BatchNorm { scale, shift }, (normed, full.clone()), full);
        Ok(())
    }
}

/// The PyTorch module names of a node. The dynamo exporter lists them in the node's
/// metadata (`pkg.torch.onnx.name_scopes`: `['', 'layer4', 'layer4.0', 'layer4.0.relu',
/// 'relu_8']`, qualified names between the root and the operator itself); the TorchScript
/// exporter writes them into the node name: "/features/features.0/Conv" → features,
/// features.0; "/bert/encoder/layer.0/attention/Add" → bert, bert.encoder,
/// bert.encoder.layer.0, bert.encoder.layer.0.attention (a container's items are written
/// with their container's name, "layer.0").
fn module_names(node: &NodeProto) -> Vec<String> {
    if let Some(scopes) = node
        .metadata_props
        .iter()
        .find(|p| p.key == "pkg.torch.onnx.name_scopes")
    {
        let items: Vec<String> = scopes
            .value
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
            .collect();
        return items
            .get(1..items.len().saturating_sub(1))
            .unwrap_or_default()
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
    }
    let parts: Vec<&str> = node.name.trim_start_matches('/').split('/').collect();
    let mut out: Vec<String> = Vec::new();
    let mut last_part = "";
    for part in &parts[..parts.len().saturating_sub(1)] {
        let name = match out.last() {
            None => part.to_string(),
            Some(parent) => match part.strip_prefix(last_part).filter(|rest| rest.starts_with('.')) {
                Some(rest) if !last_part.is_empty() => format!("{parent}{rest}"),
                _ => format!("{parent}.{part}"),
            },
        };
        last_part = part;
        out.push(name);
    }
    out
}

fn win_span(kernel: (usize, usize), dilation: (usize, usize), axis: usize) -> usize {
    if axis == 0 {
        dilation.0 * (kernel.0 - 1) + 1
    } else {
        dilation.1 * (kernel.1 - 1) + 1
    }
}

/// `x op c` for a value x of `len` elements and a constant c (a power, a scale).
fn with_constant(kind: NaryKind, c: f32, len: usize) -> Op {
    Op::Nary(Nary {
        kind,
        args: vec![Arg::input(0, None), Arg::constant(vec![c], Some(vec![0; len]))],
    })
}

/// The output shape of a planar operator in the rank of its input.
fn unplanar(like: &[usize], [c, h, w]: [usize; 3]) -> Vec<usize> {
    if like.len() == 2 { vec![c, w] } else { vec![c, h, w] }
}

/// The product of two constant matrices (or stacks of them, leading axes broadcast).
fn matmul_consts(a: &Konst, b: &Konst) -> Result<Konst> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra < 2 || rb < 2 {
        return Err(unsupported("a MatMul of constant vectors"));
    }
    let (m, k, k2, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 2], b.shape[rb - 1]);
    let lead = graph_ops::broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2])
        .filter(|_| k == k2)
        .ok_or_else(|| unsupported(format!("a MatMul of {:?} by {:?}", a.shape, b.shape)))?;
    let (la, lb) = (
        graph_ops::broadcast_map(&a.shape[..ra - 2], &lead),
        graph_ops::broadcast_map(&b.shape[..rb - 2], &lead),
    );
    let mut data = Vec::with_capacity(la.len() * m * n);
    for (&ia, &ib) in la.iter().zip(&lb) {
        let (pa, pb) = (ia as usize * m * k, ib as usize * k * n);
        for i in 0..m {
            for j in 0..n {
                data.push((0..k).map(|t| a.data[pa + i * k + t] * b.data[pb + t * n + j]).sum());
            }
        }
    }
    let mut shape = lead;
    shape.extend([m, n]);
    Ok(Konst {
        shape,
        data,
        int: false,
    })
}

/// ONNX Reshape: 0 copies the input's dimension (unless `allow_zero`), -1 is inferred.
fn reshape_target(full_in: &[usize], target: &[i64], allow_zero: bool) -> Result<Vec<usize>> {
    let mut out: Vec<Option<usize>> = target
        .iter()
        .enumerate()
        .map(|(i, &t)| match t {
            0 if !allow_zero => full_in
                .get(i)
                .copied()
                .map(Some)
                .ok_or_else(|| unsupported("a 0 in a reshape past the input's rank")),
            -1 => Ok(None),
            t if t >= 0 => Ok(Some(t as usize)),
            t => Err(unsupported(format!("a reshape dimension {t}"))),
        })
        .collect::<Result<_>>()?;
    let total: usize = full_in.iter().product();
    let known: usize = out.iter().flatten().product();
    match out.iter().filter(|d| d.is_none()).count() {
        0 => {}
        1 => {
            let fill = total.checked_div(known).unwrap_or(0);
            if let Some(slot) = out.iter_mut().find(|d| d.is_none()) {
                *slot = Some(fill);
            }
        }
        _ => return Err(unsupported("a reshape with two -1 dimensions")),
    }
    Ok(out.into_iter().map(|d| d.unwrap_or(0)).collect())
}
