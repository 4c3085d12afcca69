//! Copies of one input that differ from it only inside a box of its image (occlusion
//! windows, ablated patches), run without recomputing what they share with it. In a
//! CNN's first layers each output position reads a window of input positions
//! (convolutions, pools) or the same position (element-wise layers, residual sums), so
//! a change confined to a box reaches only a somewhat larger box of the next value: only
//! that box is recomputed, from the base input's values around it. Where the boxes have
//! grown over most of the map, each copy's value is completed from the base's and the
//! copies run through the rest of the model densely, in batches. Exact: a recomputed
//! value reads the same inputs (padding included) as the dense layer reads for it.

use super::graph_ops::Operand;
use super::kernels::{self, ConvGeom, Planes, Window2d};
use super::{Batch, Forward, Layer, Model, Op};
use crate::error::{Error, Result};
use std::borrow::Cow;

/// Rows `rows.0..rows.1` and columns `cols.0..cols.1` of a plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub rows: (usize, usize),
    pub cols: (usize, usize),
}

impl Span {
    pub fn height(&self) -> usize {
        self.rows.1 - self.rows.0
    }
    pub fn width(&self) -> usize {
        self.cols.1 - self.cols.0
    }
    pub fn area(&self) -> usize {
        self.height() * self.width()
    }
    fn union(self, other: Span) -> Span {
        Span {
            rows: (self.rows.0.min(other.rows.0), self.rows.1.max(other.rows.1)),
            cols: (self.cols.0.min(other.cols.0), self.cols.1.max(other.cols.1)),
        }
    }

    /// The smallest span holding the given features (flat indices of a sample of `h × w`
    /// planes), or None for no features.
    pub fn of_features(features: &[usize], h: usize, w: usize) -> Option<Span> {
        features
            .iter()
            .map(|&f| {
                let (r, c) = ((f / w) % h, f % w);
                Span {
                    rows: (r, r + 1),
                    cols: (c, c + 1),
                }
            })
            .reduce(Span::union)
    }
}

/// A value's changed part: its values inside `span`, every channel (`[c, rows, cols]`).
#[derive(Clone, Debug)]
pub struct Region {
    pub span: Span,
    pub data: Vec<f32>,
}

/// How a layer's output positions depend on its input positions, for the layers a box
/// can be carried through.
#[derive(Clone, Copy, Debug)]
enum Reach {
    /// A window of input positions; positions in the padding read `fill`.
    Window { win: Window2d, fill: f32 },
    /// The same position of each input.
    Same,
}

/// The shape of value slot `v` (0: the model input; v: layer v − 1's output).
fn slot_shape(model: &Model, v: usize) -> &[usize] {
    match v.checked_sub(1) {
        Some(l) => &model.layers[l].out_shape,
        None => &model.input_shape,
    }
}

fn reach(model: &Model, layer: &Layer) -> Option<Reach> {
    if layer.in_shape.len() != 3 || layer.out_shape.len() != 3 {
        return None;
    }
    match &layer.op {
        Op::Conv2d { win, .. } => Some(Reach::Window { win: *win, fill: 0.0 }),
        Op::MaxPool2d { win } => Some(Reach::Window {
            win: *win,
            fill: f32::NEG_INFINITY,
        }),
        // Excluded padding changes the divisor at the edges, which a crop does not see.
        Op::AvgPool2d { win, count_include_pad } if *count_include_pad || win.padding == (0, 0) => {
            Some(Reach::Window { win: *win, fill: 0.0 })
        }
        Op::Nary(nary)
            if nary
                .args
                .iter()
                .all(|a| matches!(a.operand, Operand::Input(_)) && a.map.is_none())
                && layer
                    .inputs
                    .iter()
                    .all(|&v| slot_shape(model, v) == layer.out_shape.as_slice()) =>
        {
            Some(Reach::Same)
        }
        op if layer.in_shape == layer.out_shape && layer.inputs.len() == 1 && op.pointwise(&[], 1).is_some() => {
            Some(Reach::Same)
        }
        _ => None,
    }
}

/// The outputs along one axis whose window (kernel k, stride s, padding p, dilation d)
/// meets inputs a..b, clipped to the `out` outputs.
fn reached(a: usize, b: usize, k: usize, s: usize, p: usize, d: usize, out: usize) -> (usize, usize) {
    let lo = (a + p).saturating_sub((k - 1) * d).div_ceil(s);
    let hi = ((b - 1 + p) / s + 1).min(out);
    (lo.min(hi), hi)
}

/// The span of a layer's output that its changed inputs reach, or None if none changed
/// (or the change falls between a strided window's taps).
fn out_span(layer: &Layer, reach: Reach, spans: &[Option<Span>]) -> Option<Span> {
    let changed = layer.inputs.iter().filter_map(|&v| spans[v]).reduce(Span::union)?;
    let span = match reach {
        Reach::Same => changed,
        Reach::Window { win, .. } => {
            let (oh, ow) = (layer.out_shape[1], layer.out_shape[2]);
            let axis = |(a, b): (usize, usize), i: usize| {
                let pick = |t: (usize, usize)| if i == 0 { t.0 } else { t.1 };
                reached(
                    a,
                    b,
                    pick(win.kernel),
                    pick(win.stride),
                    pick(win.padding),
                    pick(win.dilation),
                    if i == 0 { oh } else { ow },
                )
            };
            Span {
                rows: axis(changed.rows, 0),
                cols: axis(changed.cols, 1),
            }
        }
    };
    (span.area() > 0).then_some(span)
}

/// Multiply-adds (or values touched) per output position of a layer.
fn work_per_position(layer: &Layer, reach: Reach) -> usize {
    let out = layer.out_shape[0];
    match (&layer.op, reach) {
        (Op::Conv2d { groups, win, .. }, _) => out * (layer.in_shape[0] / groups.max(&1)) * win.kernel.0 * win.kernel.1,
        (_, Reach::Window { win, .. }) => out * win.kernel.0 * win.kernel.1,
        (_, Reach::Same) => out * layer.inputs.len(),
    }
}

/// What a box costs beyond its multiply-adds: small products run below the large ones'
/// speed and crops are copied (a factor), and each box of each layer is a few
/// allocations and kernel calls (a fixed cost, in multiply-adds). Set from ResNet-18 at
/// 224×224, where boxes through layer3 save 60 % of the work, and the 8×8 digits CNN,
/// whose layers are too small for boxes to pay (they doubled its occlusion's time);
/// the zoo's 64×64 ResNet and MobileNetV3 gain 20–30 % from boxes, which a cost of 4e4
/// already denies them.
const BOX_OVERHEAD: f64 = 1.5;
const BOX_FIXED_COST: f64 = 2e4;

/// The layer where copies changed inside `spans` should continue densely so that the
/// least work is done (0: run them densely from the start), with the work estimated for
/// that choice and for the dense pass through the layers boxes could take.
fn best_cut(model: &Model, spans: &[Span], to: usize) -> (usize, f64, f64) {
    let layers = &model.layers[..to.min(model.layers.len())];
    if !model.patches.is_empty() || model.input_shape.len() != 3 || spans.is_empty() {
        return (0, 0.0, 0.0);
    }
    let reaches: Vec<Reach> = layers.iter().map_while(|l| reach(model, l)).collect();
    let local = reaches.len();
    let mut boxed = vec![0.0f64; local];
    for span in spans {
        let mut at: Vec<Option<Span>> = vec![None; local + 1];
        at[0] = Some(*span);
        for (i, (layer, &r)) in layers.iter().zip(&reaches).enumerate() {
            at[i + 1] = out_span(layer, r, &at);
            if let Some(s) = at[i + 1] {
                boxed[i] += BOX_OVERHEAD * (s.area() * work_per_position(layer, r)) as f64 + BOX_FIXED_COST;
            }
        }
    }
    let copies = spans.len() as f64;
    let dense: Vec<f64> = layers
        .iter()
        .zip(&reaches)
        .map(|(l, &r)| copies * (l.out_shape[1] * l.out_shape[2] * work_per_position(l, r)) as f64)
        .collect();
    let all_dense = dense.iter().sum::<f64>();
    let mut best = (all_dense, 0);
    for cut in 1..=local {
        if model.reads(cut, to, false).is_err() {
            continue;
        }
        let completing = copies * slot_shape(model, cut).iter().product::<usize>() as f64;
        let work = boxed[..cut].iter().sum::<f64>() + dense[cut..].iter().sum::<f64>() + completing;
        if work < best.0 {
            best = (work, cut);
        }
    }
    (best.1, best.0, all_dense)
}

/// For PLAN: where copies changed inside `spans` continue densely (0: from the start),
/// and the share of the dense work (in multiply-adds, through the layers boxes could
/// take) that the boxes leave.
pub fn work_share(model: &Model, spans: &[Span], to: usize) -> (usize, f64) {
    let (cut, work, dense) = best_cut(model, spans, to);
    (cut, if dense > 0.0 { work / dense } else { 1.0 })
}

/// The layers where copies carried on boxes through the layers before may continue
/// densely, for a pass through layers `..to`.
pub fn cuts(model: &Model, to: usize) -> Vec<usize> {
    let to = to.min(model.layers.len());
    let local = model.layers[..to].iter().map_while(|l| reach(model, l)).count();
    (1..=local).filter(|&cut| model.reads(cut, to, false).is_ok()).collect()
}

/// Copies of one base input, each differing from it inside a box, through layers
/// `..to`: layers before `cut` on boxes, the rest densely.
pub struct LocalPass<'m> {
    model: &'m Model,
    pub cut: usize,
    to: usize,
    reaches: Vec<Reach>,
    /// The base input's value at each slot up to the cut (one row each).
    base: Vec<Batch>,
    /// For each slot, the last layer before the cut that reads it.
    last_read: Vec<usize>,
}

impl<'m> LocalPass<'m> {
    /// A pass for copies of `base` (each changed inside a box) through layers `..to`: the
    /// layers before `cut` on boxes (`work_share` finds the best), the rest densely.
    pub fn with_cut(model: &'m Model, base: &[f32], cut: usize, to: usize) -> Result<LocalPass<'m>> {
        let to = to.min(model.layers.len());
        let reaches: Vec<Reach> = model.layers[..to].iter().map_while(|l| reach(model, l)).collect();
        if cut == 0 || cut > reaches.len() {
            return Err(Error::model(format!(
                "internal: boxes cannot be carried through the first {cut} layers of `{}`",
                model.arch_name
            )));
        }
        model.reads(cut, to, false)?;
        let input = Batch::new(batch_shape(1, &model.input_shape), base.to_vec())?;
        let fwd = Forward {
            from: 0,
            to: cut,
            keep: true,
            hook: None,
        };
        let base = model.run(input, &fwd)?.values;
        let mut last_read = vec![0; cut + 1];
        for (i, layer) in model.layers[..cut].iter().enumerate() {
            for &v in &layer.inputs {
                last_read[v] = i;
            }
        }
        Ok(LocalPass {
            model,
            cut,
            to,
            reaches: reaches[..cut].to_vec(),
            base,
            last_read,
        })
    }

    /// The sample shape of the values at the cut.
    pub fn cut_shape(&self) -> &[usize] {
        slot_shape(self.model, self.cut)
    }

    /// The base input's value at the cut.
    pub fn base_at_cut(&self) -> &[f32] {
        self.base[self.cut].row(0)
    }

    /// The base input's values inside `span` (every channel), to be changed into a copy.
    pub fn input_box(&self, span: Span) -> Vec<f32> {
        self.read(
            0,
            &[],
            span.rows.0 as isize,
            span.height(),
            span.cols.0 as isize,
            span.width(),
            0.0,
        )
    }

    /// Writes the value at the cut of the copy whose input is `change` inside its span
    /// (and the base input elsewhere) into `out`.
    pub fn copy_at_cut(&self, change: Region, out: &mut [f32]) -> Result<()> {
        // Each value's span (kept after its box is dropped: no later layer reads it).
        let mut spans: Vec<Option<Span>> = vec![None; self.cut + 1];
        spans[0] = Some(change.span);
        let mut boxes: Vec<Option<Region>> = (0..=self.cut).map(|_| None).collect();
        boxes[0] = Some(change);
        for (i, layer) in self.model.layers[..self.cut].iter().enumerate() {
            if let Some(span) = out_span(layer, self.reaches[i], &spans) {
                let data = self.forward_box(layer, self.reaches[i], span, &boxes)?;
                spans[i + 1] = Some(span);
                boxes[i + 1] = Some(Region { span, data });
            }
            // A box no later layer reads is dropped.
            for &v in &layer.inputs {
                if self.last_read[v] == i {
                    boxes[v] = None;
                }
            }
        }
        out.copy_from_slice(self.base_at_cut());
        if let Some(region) = &boxes[self.cut] {
            let shape = self.cut_shape();
            write_box(out, shape[1], shape[2], region);
        }
        Ok(())
    }

    /// Runs copies' values at the cut (`rows` of them, one after another) through the
    /// rest of the layers: their outputs of layer `to − 1`.
    pub fn finish(&self, rows: Vec<f32>) -> Result<Batch> {
        let len: usize = self.cut_shape().iter().product();
        let count = rows.len() / len.max(1);
        let input = Batch::new(batch_shape(count, self.cut_shape()), rows)?;
        let fwd = Forward {
            from: self.cut,
            to: self.to,
            keep: false,
            hook: None,
        };
        Ok(self.model.run(input, &fwd)?.into_output())
    }

    /// A layer's output inside `span`, from its inputs around it.
    fn forward_box(&self, layer: &Layer, reach: Reach, span: Span, boxes: &[Option<Region>]) -> Result<Vec<f32>> {
        let (rh, rw) = (span.height(), span.width());
        let not_local = || Error::model(format!("internal: `{}` cannot run on a box", layer.name));
        match reach {
            Reach::Same => {
                let len = layer.out_shape[0] * rh * rw;
                let operands: Vec<Cow<[f32]>> = layer
                    .inputs
                    .iter()
                    .map(|&v| match &boxes[v] {
                        // A changed input whose box is the output's span is read as it is.
                        Some(b) if b.span == span => Cow::Borrowed(b.data.as_slice()),
                        _ => Cow::Owned(self.read(v, boxes, span.rows.0 as isize, rh, span.cols.0 as isize, rw, 0.0)),
                    })
                    .collect();
                if let Op::Nary(nary) = &layer.op {
                    let batches = operands
                        .into_iter()
                        .map(|data| Batch::new(vec![1, len], data.into_owned()))
                        .collect::<Result<Vec<_>>>()?;
                    let refs: Vec<&Batch> = batches.iter().collect();
                    return Ok(nary.forward(&refs, len));
                }
                let x = operands.first().ok_or_else(not_local)?;
                layer.op.pointwise(x, rh * rw).ok_or_else(not_local)
            }
            Reach::Window { win, fill } => {
                let (s, p, d, k) = (win.stride, win.padding, win.dilation, win.kernel);
                // The crop every output of the span reads, padding included.
                let gh = (rh - 1) * s.0 + (k.0 - 1) * d.0 + 1;
                let gw = (rw - 1) * s.1 + (k.1 - 1) * d.1 + 1;
                let r0 = (span.rows.0 * s.0) as isize - p.0 as isize;
                let c0 = (span.cols.0 * s.1) as isize - p.1 as isize;
                let v = *layer.inputs.first().ok_or_else(not_local)?;
                let crop = self.read(v, boxes, r0, gh, c0, gw, fill);
                let inside = Window2d { padding: (0, 0), ..win };
                let c = layer.in_shape[0];
                let mut y = vec![0.0f32; layer.out_shape[0] * rh * rw];
                let planes = Planes {
                    planes: c,
                    h: gh,
                    w: gw,
                    oh: rh,
                    ow: rw,
                };
                match &layer.op {
                    Op::Conv2d {
                        out,
                        groups,
                        weight,
                        bias,
                        ..
                    } => {
                        let g = ConvGeom {
                            c,
                            h: gh,
                            w: gw,
                            out: *out,
                            groups: *groups,
                            win: inside,
                            oh: rh,
                            ow: rw,
                        };
                        kernels::conv2d_forward(&crop, 1, &g, weight, bias.as_deref(), &mut y);
                    }
                    Op::MaxPool2d { .. } => {
                        kernels::maxpool2d_forward(&crop, planes, &inside, &mut y, false);
                    }
                    Op::AvgPool2d { .. } => kernels::avgpool2d(&crop, planes, &inside, true, &mut y, false),
                    _ => return Err(not_local()),
                }
                Ok(y)
            }
        }
    }

    /// Slot `v`'s values of the copy over rows r0.. (gh of them) and columns c0.. (gw),
    /// every channel: its box where it has one, the base's elsewhere, `fill` outside the
    /// plane.
    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        v: usize,
        boxes: &[Option<Region>],
        r0: isize,
        gh: usize,
        c0: isize,
        gw: usize,
        fill: f32,
    ) -> Vec<f32> {
        let shape = slot_shape(self.model, v);
        let (c, h, w) = (shape[0], shape[1], shape[2]);
        let mut out = vec![fill; c * gh * gw];
        let rows = (r0.max(0) as usize, (r0 + gh as isize).clamp(0, h as isize) as usize);
        let cols = (c0.max(0) as usize, (c0 + gw as isize).clamp(0, w as isize) as usize);
        if rows.0 >= rows.1 || cols.0 >= cols.1 {
            return out;
        }
        let base = self.base[v].row(0);
        let place = |ch: usize, r: usize, col: usize| {
            ch * gh * gw + (r as isize - r0) as usize * gw + (col as isize - c0) as usize
        };
        for ch in 0..c {
            for r in rows.0..rows.1 {
                let src = &base[ch * h * w + r * w..][cols.0..cols.1];
                out[place(ch, r, cols.0)..][..src.len()].copy_from_slice(src);
            }
        }
        if let Some(b) = boxes.get(v).and_then(Option::as_ref) {
            let (bh, bw) = (b.span.height(), b.span.width());
            let rows = (rows.0.max(b.span.rows.0), rows.1.min(b.span.rows.1));
            let cols = (cols.0.max(b.span.cols.0), cols.1.min(b.span.cols.1));
            if rows.0 < rows.1 && cols.0 < cols.1 {
                for ch in 0..c {
                    for r in rows.0..rows.1 {
                        let at = ch * bh * bw + (r - b.span.rows.0) * bw;
                        let src = &b.data[at + cols.0 - b.span.cols.0..at + cols.1 - b.span.cols.0];
                        out[place(ch, r, cols.0)..][..src.len()].copy_from_slice(src);
                    }
                }
            }
        }
        out
    }
}

/// Writes a region into a whole value of `h × w` planes.
fn write_box(value: &mut [f32], h: usize, w: usize, region: &Region) {
    let span = region.span;
    let (bh, bw) = (span.height(), span.width());
    for (ch, block) in region.data.chunks_exact((bh * bw).max(1)).enumerate() {
        for (r, row) in block.chunks_exact(bw.max(1)).enumerate() {
            let at = ch * h * w + (span.rows.0 + r) * w + span.cols.0;
            value[at..at + bw].copy_from_slice(row);
        }
    }
}

/// The shape of a batch of `rows` samples of `sample` shape.
fn batch_shape(rows: usize, sample: &[usize]) -> Vec<usize> {
    std::iter::once(rows).chain(sample.iter().copied()).collect()
}
