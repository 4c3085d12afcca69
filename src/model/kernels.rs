//! Numeric kernels on plain slices: matrix products through the `gemm` crate (the one
//! candle uses), convolution as im2col + one product per group, pooling with the
//! bookkeeping its backward needs. Every backward here returns the input gradient only.
//! Work on small images is single-threaded inside a kernel (the engine runs batches in
//! parallel); a large image's convolution splits into tiles that run in parallel, so
//! that one input keeps every core busy.

use rayon::prelude::*;

/// Multiply-adds done by the matrix products since the process started (the bench's
/// achieved GFLOP/s: the work of the layers actually run, padding rows included).
static MULTIPLY_ADDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The multiply-adds the matrix products have done so far.
pub fn multiply_adds() -> u64 {
    MULTIPLY_ADDS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts `m·n·k` multiply-adds (one relaxed add per product: far below its cost).
pub fn count_multiply_adds(m: usize, n: usize, k: usize) {
    MULTIPLY_ADDS.fetch_add((m * n * k) as u64, std::sync::atomic::Ordering::Relaxed);
}

/// `c[m×n] = a[m×k] · b[k×n]` (or `+=` when `accumulate`), each operand given by its
/// slice, row stride and column stride.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    c_rs: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * c_rs..i * c_rs + n].fill(0.0);
            }
        }
        return;
    }
    count_multiply_adds(m, n, k);
    // The bounds the raw-pointer call below relies on.
    assert!((m - 1) * c_rs + n <= c.len(), "matmul: destination too small");
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "matmul: left operand too small"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "matmul: right operand too small"
    );
    // SAFETY: the asserts above keep every index gemm touches inside the slices; the
    // destination does not alias the operands (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Geometry of a 2-d convolution or pooling window over one image plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl Window2d {
    /// Output size along one axis, or None if the window does not fit.
    pub fn out_len(input: usize, kernel: usize, stride: usize, padding: usize, dilation: usize) -> Option<usize> {
        let span = dilation * (kernel - 1) + 1;
        let padded = input + 2 * padding;
        if padded < span {
            None
        } else {
            Some((padded - span) / stride + 1)
        }
    }
    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        Some((
            Self::out_len(h, self.kernel.0, self.stride.0, self.padding.0, self.dilation.0)?,
            Self::out_len(w, self.kernel.1, self.stride.1, self.padding.1, self.dilation.1)?,
        ))
    }
}

/// Shapes of a 2-d convolution: input (c, h, w), `out` channels, `groups`.
#[derive(Clone, Copy, Debug)]
pub struct ConvGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub out: usize,
    pub groups: usize,
    pub win: Window2d,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    fn k(&self) -> usize {
        (self.c / self.groups) * self.win.kernel.0 * self.win.kernel.1
    }
    fn p(&self) -> usize {
        self.oh * self.ow
    }
}

/// Images per im2col chunk, so that the column buffer stays near 256 KB (in L2; measured
/// no slower than 1 and 4 MB chunks for the example CNN, and it bounds the scratch).
fn chunk_images(g: &ConvGeom) -> usize {
    let per_image = g.k() * g.p();
    ((1 << 16) / per_image.max(1)).max(1)
}

/// The output columns `ox` whose input column `ox·stride + off` lies inside 0..w.
fn valid_cols(ow: usize, w: usize, stride: usize, off: isize) -> (usize, usize) {
    let lo = if off >= 0 {
        0
    } else {
        ((-off) as usize).div_ceil(stride)
    };
    let last = w as isize - 1 - off;
    let hi = if last < 0 {
        0
    } else {
        (last as usize / stride + 1).min(ow)
    };
    (lo.min(hi), hi)
}

/// The shift that maps output position (oy, ox) to input position (oy + di, ox + dj) for
/// kernel tap (i, j), when the convolution keeps its width (stride 1, no dilation, the
/// padding making `ow == w`): then one tap of one plane is a single contiguous run of
/// the plane (rows `oy0..oy1`), moved by `di·w + dj`, whose `|dj|` columns at one edge
/// wrapped into the neighbouring row and must be left out.
struct Shift {
    oy0: usize,
    oy1: usize,
    dj: isize,
    /// Flat offset from an output index to its input index.
    by: isize,
}

impl ConvGeom {
    fn keeps_width(&self) -> bool {
        self.win.stride == (1, 1) && self.win.dilation == (1, 1) && self.ow == self.w
    }

    fn shift(&self, i: usize, j: usize) -> Shift {
        let di = i as isize - self.win.padding.0 as isize;
        let dj = j as isize - self.win.padding.1 as isize;
        let oy0 = (-di).clamp(0, self.oh as isize) as usize;
        let oy1 = (self.h as isize - di).clamp(oy0 as isize, self.oh as isize) as usize;
        Shift {
            oy0,
            oy1,
            dj,
            by: di * self.w as isize + dj,
        }
    }
}

impl Shift {
    /// The output indices of the run inside the plane (the run's ends may fall outside it
    /// by the wrapped columns: those are edge columns, handled by the caller).
    fn span(&self, ow: usize, plane: usize) -> (usize, usize) {
        let (first, end) = ((self.oy0 * ow) as isize, (self.oy1 * ow) as isize);
        let lo = first.max(-self.by).min(end);
        let hi = end.min(plane as isize - self.by).max(lo);
        (lo as usize, hi as usize)
    }

    /// The output columns whose input column wrapped into the neighbouring row.
    fn wrapped(&self, ow: usize) -> std::ops::Range<usize> {
        if self.dj < 0 {
            0..(-self.dj as usize).min(ow)
        } else {
            ow - (self.dj as usize).min(ow)..ow
        }
    }
}

/// im2col for channels `c0..c0+cg` of `n` images starting at `x`: col[K, n*P].
fn im2col(x: &[f32], n: usize, c0: usize, g: &ConvGeom, col: &mut [f32]) {
    if g.keeps_width() {
        im2col_keeping_width(x, n, c0, g, col)
    } else {
        im2col_any(x, n, c0, g, col)
    }
}

/// im2col for any geometry: each image's whole plane as one range, its columns at
/// `b·P` of rows `n·P` long.
fn im2col_any(x: &[f32], n: usize, c0: usize, g: &ConvGeom, col: &mut [f32]) {
    let (p, img) = (g.p(), g.c * g.h * g.w);
    for b in 0..n {
        im2col_range(&x[b * img..], c0, g, 0..p, &mut col[b * p..], n * p);
    }
}

/// One kernel tap of one input channel (of a group) when the convolution keeps its width:
/// its im2col row, its shift, the output indices of its run inside the plane and the
/// columns that wrapped.
struct TapRun {
    krow: usize,
    channel: usize,
    shift: Shift,
    lo: usize,
    hi: usize,
    wrapped: std::ops::Range<usize>,
}

fn tap_runs(g: &ConvGeom) -> Vec<TapRun> {
    let (kh, kw) = g.win.kernel;
    let mut runs = Vec::with_capacity(g.k());
    for channel in 0..g.c / g.groups {
        for i in 0..kh {
            for j in 0..kw {
                let shift = g.shift(i, j);
                let (lo, hi) = shift.span(g.ow, g.h * g.w);
                let wrapped = shift.wrapped(g.ow);
                runs.push(TapRun {
                    krow: (channel * kh + i) * kw + j,
                    channel,
                    shift,
                    lo,
                    hi,
                    wrapped,
                });
            }
        }
    }
    runs
}

/// im2col when the convolution keeps the width: one copy per tap and image instead of
/// one per output row (the small images of the example models made the per-row copies
/// cost more than the product itself).
fn im2col_keeping_width(x: &[f32], n: usize, c0: usize, g: &ConvGeom, col: &mut [f32]) {
    let (p, plane) = (g.p(), g.h * g.w);
    let img = g.c * plane;
    for t in tap_runs(g) {
        for b in 0..n {
            let src = &x[b * img + (c0 + t.channel) * plane..][..plane];
            let dst = &mut col[t.krow * n * p + b * p..][..p];
            dst[..t.lo].fill(0.0);
            dst[t.hi..].fill(0.0);
            if t.hi > t.lo {
                let a = (t.lo as isize + t.shift.by) as usize;
                dst[t.lo..t.hi].copy_from_slice(&src[a..a + (t.hi - t.lo)]);
            }
            zero_columns(dst, g.ow, t.shift.oy0..t.shift.oy1, t.wrapped.clone());
        }
    }
}

/// Zeroes columns `cols` of rows `rows` of a plane `width` wide — column by column: the
/// row-wise form compiles to a memset call per row, for one or two values each.
fn zero_columns(plane: &mut [f32], width: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
    for c in cols {
        for r in rows.clone() {
            plane[r * width + c] = 0.0;
        }
    }
}

/// The adjoint of `im2col`: accumulates col[K, n*P] into channels `c0..` of `gx`. The
/// keeping-width path zeroes the wrapped entries of `col` first (so that one contiguous
/// add per tap adds 0 there), which is why `col` is taken mutably.
fn col2im(col: &mut [f32], n: usize, c0: usize, g: &ConvGeom, gx: &mut [f32]) {
    if g.keeps_width() {
        col2im_keeping_width(col, n, c0, g, gx)
    } else {
        col2im_any(col, n, c0, g, gx)
    }
}

/// col2im for any geometry: the adjoint of `im2col_any`, image by image.
fn col2im_any(col: &[f32], n: usize, c0: usize, g: &ConvGeom, gx: &mut [f32]) {
    let (p, plane) = (g.p(), g.h * g.w);
    let img = g.c * plane;
    for b in 0..n {
        let planes = &mut gx[b * img + c0 * plane..];
        col2im_range(&col[b * p..], g.c / g.groups, g, 0..p, planes, n * p);
    }
}

fn col2im_keeping_width(col: &mut [f32], n: usize, c0: usize, g: &ConvGeom, gx: &mut [f32]) {
    let (p, plane) = (g.p(), g.h * g.w);
    let img = g.c * plane;
    for t in tap_runs(g) {
        for b in 0..n {
            let src = &mut col[t.krow * n * p + b * p..][..p];
            zero_columns(src, g.ow, t.shift.oy0..t.shift.oy1, t.wrapped.clone());
            if t.hi > t.lo {
                let dst = &mut gx[b * img + (c0 + t.channel) * plane..][..plane];
                let a = (t.lo as isize + t.shift.by) as usize;
                for (d, s) in dst[a..a + (t.hi - t.lo)].iter_mut().zip(&src[t.lo..t.hi]) {
                    *d += *s;
                }
            }
        }
    }
}

/// Convolution forward: x [n, c, h, w], weight [out, c/groups, kh, kw] → [n, out, oh, ow].
pub fn conv2d_forward(x: &[f32], n: usize, g: &ConvGeom, weight: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    if g.is_depthwise() {
        return depthwise_forward(x, n, g, weight, bias, y);
    }
    if g.is_large() {
        return conv2d_forward_tiled(x, n, g, weight, bias, y);
    }
    let k = g.k();
    let p = g.p();
    let og = g.out / g.groups;
    let chunk = chunk_images(g).min(n).max(1);
    let img_in = g.c * g.h * g.w;
    let img_out = g.out * p;
    with_scratch(k * chunk * p, og * chunk * p, |col, tmp| {
        for start in (0..n).step_by(chunk) {
            let m = chunk.min(n - start);
            let xs = &x[start * img_in..(start + m) * img_in];
            for gi in 0..g.groups {
                let col = &mut col[..k * m * p];
                im2col(xs, m, gi * (g.c / g.groups), g, col);
                let tmp = &mut tmp[..og * m * p];
                let w = &weight[gi * og * k..(gi + 1) * og * k];
                matmul(og, m * p, k, tmp, m * p, w, k, 1, col, m * p, 1, false);
                for o in 0..og {
                    let oc = gi * og + o;
                    let b = bias.map_or(0.0, |b| b[oc]);
                    for img in 0..m {
                        let dst = &mut y[(start + img) * img_out + oc * p..][..p];
                        let src = &tmp[o * m * p + img * p..][..p];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d = s + b;
                        }
                    }
                }
            }
        }
    })
}

/// Convolution input gradient: gy [n, out, oh, ow] → gx [n, c, h, w] (gx is overwritten).
pub fn conv2d_backward(gy: &[f32], n: usize, g: &ConvGeom, weight: &[f32], gx: &mut [f32]) {
    if g.is_depthwise() {
        return depthwise_backward(gy, n, g, weight, gx);
    }
    if g.is_large() {
        return conv2d_backward_tiled(gy, n, g, weight, gx);
    }
    gx.fill(0.0);
    let k = g.k();
    let p = g.p();
    let og = g.out / g.groups;
    let chunk = chunk_images(g).min(n).max(1);
    let img_in = g.c * g.h * g.w;
    let img_out = g.out * p;
    with_scratch(k * chunk * p, og * chunk * p, |col, gyt| {
        for start in (0..n).step_by(chunk) {
            let m = chunk.min(n - start);
            for gi in 0..g.groups {
                let gyt = &mut gyt[..og * m * p];
                for o in 0..og {
                    let oc = gi * og + o;
                    for img in 0..m {
                        gyt[o * m * p + img * p..][..p].copy_from_slice(&gy[(start + img) * img_out + oc * p..][..p]);
                    }
                }
                let col = &mut col[..k * m * p];
                let w = &weight[gi * og * k..(gi + 1) * og * k];
                // col[K, mP] = Wᵀ[K, og] · gyt[og, mP]
                matmul(k, m * p, og, col, m * p, w, 1, k, gyt, m * p, 1, false);
                col2im(
                    col,
                    m,
                    gi * (g.c / g.groups),
                    g,
                    &mut gx[start * img_in..(start + m) * img_in],
                );
            }
        }
    })
}

/// Values in one tile's im2col buffer on the large-image path: 512 KB, well inside a
/// core's L2 (the whole-image buffer of a ResNet's first stage, 7 MB, went to memory and
/// back between im2col and the product).
const TILE_VALUES: usize = 1 << 18;

impl ConvGeom {
    /// An image too large for the batched path's 256 KB chunk: tiled, in parallel.
    fn is_large(&self) -> bool {
        self.k() * self.p() > 1 << 16
    }

    /// One input channel per output channel, each its own group (MobileNet's depthwise
    /// layers): a 1-row product per channel, which the direct kernels replace.
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.c && self.out == self.c && self.c > 1
    }

    /// A 1×1 convolution with stride 1 and no padding: its im2col is its input.
    fn is_pointwise(&self) -> bool {
        self.win.kernel == (1, 1) && self.win.stride == (1, 1) && self.win.padding == (0, 0)
    }

    /// Output positions per tile: a multiple of 64, gemm's widest microkernel (on a 224-
    /// column tile, 32 columns went through its half-width kernel at a third of the
    /// speed); fixed by the geometry, so results never depend on the batch or threads.
    fn tile_len(&self) -> usize {
        (TILE_VALUES / self.k().max(1) / 64 * 64).max(64).min(self.p())
    }

    /// Input channels per task of the tiled backward: a divisor of the group's channels,
    /// about a quarter of them, so that even one image gives every core work.
    fn channel_block(&self) -> usize {
        let cg = self.c / self.groups;
        let target = cg.div_ceil(4).max(1);
        (target..=cg).find(|b| cg.is_multiple_of(*b)).unwrap_or(cg)
    }
}

/// The input gradient of a large stride-1 convolution is itself a convolution: of the
/// output gradient, with the kernel flipped and its channel axes swapped, padded by
/// `kernel − 1 − padding`. Its product contracts over `out·kh·kw` (576 in a ResNet's
/// first stage) where im2col's adjoint contracts over `out` alone (64: gemm then spends
/// its time loading and storing the destination) and needs no col2im. Returns that
/// convolution's geometry, when it applies.
pub fn adjoint_geom(g: &ConvGeom) -> Option<ConvGeom> {
    let (kh, kw) = g.win.kernel;
    let (ph, pw) = g.win.padding;
    if !g.is_large() || g.win.stride != (1, 1) || g.win.dilation != (1, 1) || ph >= kh || pw >= kw {
        return None;
    }
    let win = Window2d {
        kernel: (kh, kw),
        stride: (1, 1),
        padding: (kh - 1 - ph, kw - 1 - pw),
        dilation: (1, 1),
    };
    let adjoint = ConvGeom {
        c: g.out,
        h: g.oh,
        w: g.ow,
        out: g.c,
        groups: g.groups,
        win,
        oh: g.h,
        ow: g.w,
    };
    (win.out_hw(g.oh, g.ow) == Some((g.h, g.w))).then_some(adjoint)
}

/// The weights of `adjoint_geom`: W'[gi·cg + c, o, i, j] = W[gi·og + o, c, kh−1−i, kw−1−j].
pub fn adjoint_weights(g: &ConvGeom, weight: &[f32]) -> Vec<f32> {
    let (kh, kw) = g.win.kernel;
    let (cg, og) = (g.c / g.groups, g.out / g.groups);
    let mut flipped = vec![0.0f32; weight.len()];
    for gi in 0..g.groups {
        for c in 0..cg {
            for o in 0..og {
                for i in 0..kh {
                    for j in 0..kw {
                        let to = (((gi * cg + c) * og + o) * kh + i) * kw + j;
                        let from = (((gi * og + o) * cg + c) * kh + (kh - 1 - i)) * kw + (kw - 1 - j);
                        flipped[to] = weight[from];
                    }
                }
            }
        }
    }
    flipped
}

/// For kernel column `j`: the output columns whose input column ox·stride + j·dilation −
/// padding lies inside the row, and that input column for the first of them (as i64).
fn tap_columns(g: &ConvGeom, j: usize) -> (usize, usize, i64) {
    let (sw, dw, pw) = (g.win.stride.1, g.win.dilation.1, g.win.padding.1 as i64);
    let shift = (j * dw) as i64 - pw;
    // first ox with ox·sw + shift ≥ 0; one past the last with ox·sw + shift ≤ w − 1
    let lo = if shift >= 0 {
        0
    } else {
        ((-shift) as usize).div_ceil(sw)
    };
    let reach = g.w as i64 - 1 - shift;
    let hi = if reach < 0 {
        0
    } else {
        (reach as usize / sw + 1).min(g.ow)
    };
    // (a tap past the row's end — big padding on a narrow input — reads nothing)
    if lo < hi {
        (lo, hi, lo as i64 * sw as i64 + shift)
    } else {
        (hi, hi, 0)
    }
}

/// A depthwise convolution's taps, worked out once: for each output row, which kernel
/// rows read inside the input, and for each kernel column which output columns do.
struct DepthwiseTaps {
    kernel: (usize, usize),
    plane_in: usize,
    plane_out: usize,
    columns: Vec<(usize, usize, i64)>,
}

impl DepthwiseTaps {
    fn new(g: &ConvGeom) -> DepthwiseTaps {
        DepthwiseTaps {
            kernel: g.win.kernel,
            plane_in: g.h * g.w,
            plane_out: g.oh * g.ow,
            columns: (0..g.win.kernel.1).map(|j| tap_columns(g, j)).collect(),
        }
    }

    /// The input row kernel row `i` reads for output row `oy`, if inside the input.
    fn input_row(&self, g: &ConvGeom, oy: usize, i: usize) -> Option<usize> {
        let iy = (oy * g.win.stride.0 + i * g.win.dilation.0) as i64 - g.win.padding.0 as i64;
        (iy >= 0 && iy < g.h as i64).then_some(iy as usize)
    }
}

/// Depthwise convolution, directly: each output row of a channel is the sum over the
/// kernel's taps of a weight times a run of an input row (unit stride runs vectorise),
/// plus the bias. Planes (image, channel) run in parallel.
fn depthwise_forward(x: &[f32], n: usize, g: &ConvGeom, weight: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let taps = DepthwiseTaps::new(g);
    let (k, sw) = (taps.kernel.0 * taps.kernel.1, g.win.stride.1);
    y[..n * g.c * taps.plane_out]
        .par_chunks_mut(taps.plane_out)
        .enumerate()
        .for_each(|(task, out)| {
            let c = task % g.c;
            let xp = &x[task * taps.plane_in..(task + 1) * taps.plane_in];
            let b = bias.map_or(0.0, |b| b[c]);
            let w = &weight[c * k..(c + 1) * k];
            for (oy, row) in out.chunks_exact_mut(g.ow).enumerate() {
                row.fill(0.0);
                for i in 0..taps.kernel.0 {
                    let Some(iy) = taps.input_row(g, oy, i) else { continue };
                    let src = &xp[iy * g.w..(iy + 1) * g.w];
                    for (&(lo, hi, first), &wv) in taps.columns.iter().zip(&w[i * taps.kernel.1..]) {
                        let (dst, first) = (&mut row[lo..hi], first as usize);
                        if sw == 1 {
                            let run = &src[first..first + dst.len()];
                            dst.iter_mut().zip(run).for_each(|(d, s)| *d += wv * s);
                        } else {
                            let run = src[first..].iter().step_by(sw);
                            dst.iter_mut().zip(run).for_each(|(d, s)| *d += wv * s);
                        }
                    }
                }
                row.iter_mut().for_each(|v| *v += b);
            }
        });
}

/// The input gradient of a depthwise convolution, directly: each output row's gradient,
/// times a tap's weight, added back onto the input row run it read.
fn depthwise_backward(gy: &[f32], n: usize, g: &ConvGeom, weight: &[f32], gx: &mut [f32]) {
    let taps = DepthwiseTaps::new(g);
    let (k, sw) = (taps.kernel.0 * taps.kernel.1, g.win.stride.1);
    gx[..n * g.c * taps.plane_in]
        .par_chunks_mut(taps.plane_in)
        .enumerate()
        .for_each(|(task, gxp)| {
            let c = task % g.c;
            let gyp = &gy[task * taps.plane_out..(task + 1) * taps.plane_out];
            gxp.fill(0.0);
            let w = &weight[c * k..(c + 1) * k];
            for (oy, grow) in gyp.chunks_exact(g.ow).enumerate() {
                for i in 0..taps.kernel.0 {
                    let Some(iy) = taps.input_row(g, oy, i) else { continue };
                    let dst = &mut gxp[iy * g.w..(iy + 1) * g.w];
                    for (&(lo, hi, first), &wv) in taps.columns.iter().zip(&w[i * taps.kernel.1..]) {
                        let (src, first) = (&grow[lo..hi], first as usize);
                        if sw == 1 {
                            let run = &mut dst[first..first + src.len()];
                            run.iter_mut().zip(src).for_each(|(d, s)| *d += wv * s);
                        } else {
                            let run = dst[first..].iter_mut().step_by(sw);
                            run.zip(src).for_each(|(d, s)| *d += wv * s);
                        }
                    }
                }
            }
        });
}

/// A destination that parallel tasks write disjoint parts of through raw pointers (no
/// two `&mut` slices alias, even where the parts interleave).
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the tasks that share it write disjoint ranges (each caller says why).
unsafe impl Sync for SharedOut {}
unsafe impl Send for SharedOut {}

impl SharedOut {
    /// Writes `src + bias` at `offset`.
    ///
    /// # Safety
    /// No other task may read or write `offset..offset + src.len()` meanwhile.
    unsafe fn write(&self, offset: usize, src: &[f32], bias: f32) {
        assert!(offset + src.len() <= self.len, "tiled convolution: write out of bounds");
        for (i, v) in src.iter().enumerate() {
            // SAFETY: in bounds (asserted); exclusive by the caller's contract.
            unsafe { *self.ptr.add(offset + i) = v + bias };
        }
    }
}

/// For output positions `range` (flat, row-major) of a plane `ow` wide: each output row
/// touched, its first and last column in the range, and the offset of that first column
/// from the range's start.
fn row_spans(range: &std::ops::Range<usize>, ow: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
    let (first, last) = (range.start / ow, (range.end - 1) / ow);
    (first..=last).map(move |oy| {
        let c0 = range.start.max(oy * ow) - oy * ow;
        let c1 = range.end.min((oy + 1) * ow) - oy * ow;
        (oy, c0, c1, oy * ow + c0 - range.start)
    })
}

/// im2col of output positions `range` of one image, for channels `c0..c0 + cg` (a
/// group): col[K, range.len()], its rows `stride` apart.
fn im2col_range(x: &[f32], c0: usize, g: &ConvGeom, range: std::ops::Range<usize>, col: &mut [f32], stride: usize) {
    let (kh, kw) = g.win.kernel;
    let (sh, sw) = g.win.stride;
    let (ph, pw) = g.win.padding;
    let (dh, dw) = g.win.dilation;
    let cols = range.len();
    for c in 0..g.c / g.groups {
        let plane = &x[(c0 + c) * g.h * g.w..][..g.h * g.w];
        for i in 0..kh {
            for j in 0..kw {
                let krow = (c * kh + i) * kw + j;
                let dst = &mut col[krow * stride..krow * stride + cols];
                let off = (j * dw) as isize - pw as isize;
                let (lo, hi) = valid_cols(g.ow, g.w, sw, off);
                for (oy, x0, x1, at) in row_spans(&range, g.ow) {
                    let drow = &mut dst[at..at + (x1 - x0)];
                    let iy = (oy * sh + i * dh) as isize - ph as isize;
                    let (lo, hi) = (lo.clamp(x0, x1), hi.clamp(x0, x1));
                    if iy < 0 || iy >= g.h as isize || hi <= lo {
                        drow.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    drow[..lo - x0].fill(0.0);
                    drow[hi - x0..].fill(0.0);
                    let a = ((lo * sw) as isize + off) as usize;
                    let d = &mut drow[lo - x0..hi - x0];
                    if sw == 1 {
                        d.copy_from_slice(&src[a..a + (hi - lo)]);
                    } else {
                        for (d, s) in d.iter_mut().zip(src[a..].iter().step_by(sw)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col_range` for `cb` channels: adds col[cb·kh·kw, range.len()] (rows
/// `stride` apart) into their planes `gx` (cb planes of h×w).
fn col2im_range(col: &[f32], cb: usize, g: &ConvGeom, range: std::ops::Range<usize>, gx: &mut [f32], stride: usize) {
    let (kh, kw) = g.win.kernel;
    let (sh, sw) = g.win.stride;
    let (ph, pw) = g.win.padding;
    let (dh, dw) = g.win.dilation;
    let cols = range.len();
    for c in 0..cb {
        let plane = &mut gx[c * g.h * g.w..][..g.h * g.w];
        for i in 0..kh {
            for j in 0..kw {
                let krow = (c * kh + i) * kw + j;
                let src = &col[krow * stride..krow * stride + cols];
                let off = (j * dw) as isize - pw as isize;
                let (lo, hi) = valid_cols(g.ow, g.w, sw, off);
                for (oy, x0, x1, at) in row_spans(&range, g.ow) {
                    let iy = (oy * sh + i * dh) as isize - ph as isize;
                    let (lo, hi) = (lo.clamp(x0, x1), hi.clamp(x0, x1));
                    if iy < 0 || iy >= g.h as isize || hi <= lo {
                        continue;
                    }
                    let drow = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let srow = &src[at + lo - x0..at + hi - x0];
                    let a = ((lo * sw) as isize + off) as usize;
                    if sw == 1 {
                        for (d, s) in drow[a..a + (hi - lo)].iter_mut().zip(srow) {
                            *d += *s;
                        }
                    } else {
                        for (d, s) in drow[a..].iter_mut().step_by(sw).zip(srow) {
                            *d += *s;
                        }
                    }
                }
            }
        }
    }
}

/// Convolution forward of large images: tasks of (image, group, tile of output positions) in
/// parallel, each an im2col of its tile (none for a pointwise convolution, whose input
/// is its own im2col) and one product.
fn conv2d_forward_tiled(x: &[f32], n: usize, g: &ConvGeom, weight: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (k, p, plane) = (g.k(), g.p(), g.h * g.w);
    let og = g.out / g.groups;
    let cg = g.c / g.groups;
    let tile = g.tile_len();
    let tiles = p.div_ceil(tile);
    let (img_in, img_out) = (g.c * plane, g.out * p);
    let out = SharedOut {
        ptr: y.as_mut_ptr(),
        len: y.len().min(n * img_out),
    };
    (0..n * g.groups * tiles).into_par_iter().for_each(|task| {
        let (img, gi, t) = (task / (g.groups * tiles), task / tiles % g.groups, task % tiles);
        let range = t * tile..((t + 1) * tile).min(p);
        let cols = range.len();
        let xi = &x[img * img_in..(img + 1) * img_in];
        let w = &weight[gi * og * k..(gi + 1) * og * k];
        let col_len = if g.is_pointwise() { 0 } else { k * cols };
        with_scratch(col_len, og * cols, |col, tmp| {
            if g.is_pointwise() {
                // The input planes of the group are the product's right operand.
                let b = &xi[gi * cg * plane + range.start..];
                matmul(og, cols, k, tmp, cols, w, k, 1, b, plane, 1, false);
            } else {
                im2col_range(xi, gi * cg, g, range.clone(), col, cols);
                matmul(og, cols, k, tmp, cols, w, k, 1, col, cols, 1, false);
            }
            for o in 0..og {
                let oc = gi * og + o;
                let b = bias.map_or(0.0, |b| b[oc]);
                // SAFETY: (image, output channel, this range) belongs to this task alone.
                unsafe { out.write(img * img_out + oc * p + range.start, &tmp[o * cols..(o + 1) * cols], b) };
            }
        })
    });
}

/// Convolution input gradient of large images: tasks of (image, block of input
/// channels) in parallel, each owning its planes of `gx`; a task's product reads the
/// output gradient in place (one tile of positions at a time) and col2im adds it back.
fn conv2d_backward_tiled(gy: &[f32], n: usize, g: &ConvGeom, weight: &[f32], gx: &mut [f32]) {
    let (k, p, plane) = (g.k(), g.p(), g.h * g.w);
    let (kh, kw) = g.win.kernel;
    let og = g.out / g.groups;
    let cg = g.c / g.groups;
    let cb = g.channel_block();
    let blocks = g.c / cb;
    let tile = g.tile_len();
    let img_out = g.out * p;
    gx[..n * g.c * plane]
        .par_chunks_mut(cb * plane)
        .enumerate()
        .for_each(|(task, gxb)| {
            let (img, c_start) = (task / blocks, task % blocks * cb);
            let gi = c_start / cg;
            // Wᵀ rows of these channels: W[o, c, i, j] at o·k + krow.
            let krow0 = (c_start % cg) * kh * kw;
            let w = &weight[gi * og * k + krow0..(gi + 1) * og * k];
            let gyi = &gy[img * img_out + gi * og * p..img * img_out + (gi + 1) * og * p];
            if g.is_pointwise() {
                matmul(cb, p, og, gxb, p, w, 1, k, gyi, p, 1, false);
                return;
            }
            gxb.fill(0.0);
            let m = cb * kh * kw;
            with_scratch(m * tile, 0, |col, _| {
                for start in (0..p).step_by(tile) {
                    let range = start..(start + tile).min(p);
                    let col = &mut col[..m * range.len()];
                    matmul(
                        m,
                        range.len(),
                        og,
                        col,
                        range.len(),
                        w,
                        1,
                        k,
                        &gyi[start..],
                        p,
                        1,
                        false,
                    );
                    let cols = range.len();
                    col2im_range(col, cb, g, range, gxb, cols);
                }
            })
        });
}

thread_local! {
    /// Each thread's two work buffers for the convolution kernels, kept between calls:
    /// allocating them per call cost a zeroing memset each time (the allocator reuses
    /// freed memory, which calloc must clear), and every kernel overwrites what it uses.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's scratch buffers of `a` and `b` values (contents arbitrary).
fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (x, y) = &mut *bufs;
            if x.len() < a {
                x.resize(a, 0.0);
            }
            if y.len() < b {
                y.resize(b, 0.0);
            }
            f(&mut x[..a], &mut y[..b])
        }
        // Only a kernel called from inside a kernel would get here; give it its own.
        Err(_) => f(&mut vec![0.0; a], &mut vec![0.0; b]),
    })
}

/// Rows per matrix product of a linear layer. gemm picks its algorithm (and so the order
/// in which it sums, and the last bits of the result) from the matrix sizes, rows
/// included; multiplying a fixed number of rows at a time (the last block padded with
/// zero rows) makes a row's result independent of how many rows share its batch, so that
/// a query gives the same bits whatever SET batch_size is.
const LINEAR_BLOCK: usize = 16;
/// Wide layers (a transformer's, ≥ 2¹⁶ weights) need no blocks: gemm sums each row of
/// such a product in the same order whatever the number of rows, from 2 on (1 takes its
/// vector path) — `wide_products_do_not_depend_on_their_row_count` holds it to that — so
/// all rows go in one call (a lone row beside a zero row): no padded rows, the weights
/// packed once, and the same bits as any batching.
const WIDE_MIN_ROWS: usize = 2;
/// Rows from which gemm runs a wide product near its best (forward chunks hold at least
/// this many when they can).
pub const WIDE_EFFICIENT_ROWS: usize = 64;

/// Whether a linear layer of these sizes multiplies all its rows in one product.
pub fn is_wide(inp: usize, out: usize) -> bool {
    inp * out >= 1 << 16
}

/// `y[rows, out] = x[rows, inp] · w` for a linear layer's operand `w` given by its strides,
/// LINEAR_BLOCK rows at a time (`accumulate`: add to `y`).
#[allow(clippy::too_many_arguments)]
fn blocked_rows(
    x: &[f32],
    rows: usize,
    inp: usize,
    out: usize,
    w: &[f32],
    w_rs: usize,
    w_cs: usize,
    y: &mut [f32],
    accumulate: bool,
) {
    let block = if is_wide(inp, out) {
        rows.max(WIDE_MIN_ROWS)
    } else {
        LINEAR_BLOCK
    };
    let full = rows / block * block;
    for start in (0..full).step_by(block) {
        matmul(
            block,
            out,
            inp,
            &mut y[start * out..(start + block) * out],
            out,
            &x[start * inp..(start + block) * inp],
            inp,
            1,
            w,
            w_rs,
            w_cs,
            accumulate,
        );
    }
    let tail = rows - full;
    if tail > 0 {
        let mut xs = vec![0.0f32; block * inp];
        xs[..tail * inp].copy_from_slice(&x[full * inp..rows * inp]);
        let mut ys = vec![0.0f32; block * out];
        ys[..tail * out].copy_from_slice(&y[full * out..rows * out]);
        matmul(block, out, inp, &mut ys, out, &xs, inp, 1, w, w_rs, w_cs, accumulate);
        y[full * out..rows * out].copy_from_slice(&ys[..tail * out]);
    }
}

/// A linear layer's weights as a product reads them.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    /// W, [out, in], as PyTorch stores it.
    Rows(&'a [f32]),
    /// Wᵀ, [in, out]: gemm reads it without a transposing pack.
    Transposed(&'a [f32]),
}

/// Linear forward over `rows` rows: y[rows, out] = x[rows, in] · Wᵀ + b.
pub fn linear_forward(
    x: &[f32],
    rows: usize,
    inp: usize,
    out: usize,
    weights: Weights,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    if let Some(b) = bias {
        for r in 0..rows {
            y[r * out..(r + 1) * out].copy_from_slice(b);
        }
    }
    let (w, w_rs, w_cs) = match weights {
        Weights::Rows(w) => (w, 1, inp),
        Weights::Transposed(w) => (w, out, 1),
    };
    blocked_rows(x, rows, inp, out, w, w_rs, w_cs, y, bias.is_some());
}

/// The [cols, rows] transpose of a row-major [rows, cols] matrix.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for (r, row) in m.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// Linear input gradient: gx[rows, in] = gy[rows, out] · W.
pub fn linear_backward(gy: &[f32], rows: usize, inp: usize, out: usize, weight: &[f32], gx: &mut [f32]) {
    blocked_rows(gy, rows, out, inp, weight, inp, 1, gx, false);
}

/// The geometry of a pooling layer over a batch: `planes` = n·c planes of h×w, each
/// pooled to oh×ow.
#[derive(Clone, Copy, Debug)]
pub struct Planes {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Max pooling over planes (n·c of them, each h×w). Returns, per output, the flat index in
/// its plane of its maximum as PyTorch picks it (the first maximum; a NaN wins), or
/// u32::MAX when the window lies entirely in the padding.
pub fn maxpool2d_forward(x: &[f32], g: Planes, win: &Window2d, y: &mut [f32], keep: bool) -> Vec<u32> {
    let Planes { planes, h, w, oh, ow } = g;
    let inside = win.padding == (0, 0);
    let two_by_two = inside && win.kernel == (2, 2) && win.stride == (2, 2) && win.dilation == (1, 1);
    if two_by_two && !keep {
        // No backward will follow: the maxima alone, NaN winning as in PyTorch.
        let pick = |a: f32, b: f32| if b > a || b.is_nan() { b } else { a };
        for pl in 0..planes {
            let src = &x[pl * h * w..(pl + 1) * h * w];
            let dst = &mut y[pl * oh * ow..(pl + 1) * oh * ow];
            for (oy, out) in dst.chunks_exact_mut(ow).enumerate() {
                let top = &src[2 * oy * w..(2 * oy + 1) * w];
                let bottom = &src[(2 * oy + 1) * w..(2 * oy + 2) * w];
                // Iterators, not indices: no bounds checks, so the loop vectorizes.
                for (o, (t, b)) in out.iter_mut().zip(top.chunks_exact(2).zip(bottom.chunks_exact(2))) {
                    *o = pick(pick(pick(t[0], t[1]), b[0]), b[1]);
                }
            }
        }
        return Vec::new();
    }
    let mut arg = vec![u32::MAX; planes * oh * ow];
    if two_by_two {
        // The common 2×2 pool: candidates in PyTorch's scan order, first maximum wins.
        for pl in 0..planes {
            let src = &x[pl * h * w..(pl + 1) * h * w];
            for oy in 0..oh {
                let top = &src[2 * oy * w..(2 * oy + 1) * w];
                let bottom = &src[(2 * oy + 1) * w..(2 * oy + 2) * w];
                let o = pl * oh * ow + oy * ow;
                let (out, at) = (&mut y[o..o + ow], &mut arg[o..o + ow]);
                // Selects rather than branches (which candidate wins is data-dependent and
                // mispredicted branches cost more than the comparisons); candidates in
                // PyTorch's scan order, the first maximum wins, a NaN wins.
                for (ox, ((out, at), (t, b))) in out
                    .iter_mut()
                    .zip(at.iter_mut())
                    .zip(top.chunks_exact(2).zip(bottom.chunks_exact(2)))
                    .enumerate()
                {
                    let (mut best, mut k) = (t[0], 0u32);
                    for (v, q) in [(t[1], 1u32), (b[0], 2), (b[1], 3)] {
                        let wins = v > best || v.is_nan();
                        best = if wins { v } else { best };
                        k = if wins { q } else { k };
                    }
                    *out = best;
                    *at = ((2 * oy + (k as usize >> 1)) * w + 2 * ox + (k as usize & 1)) as u32;
                }
            }
        }
        return arg;
    }
    // Any other window: a row of outputs at a time, tap by tap in PyTorch's scan order.
    // Each input row is first split into its `stride` phases, so that a tap reads its
    // candidates at unit stride and the loop (selection by masks, no branch) vectorizes:
    // per-element branches made a ResNet's 3×3 stride-2 pool cost as much as a conv.
    let sw = win.stride.1;
    let taps: Vec<(usize, usize, (usize, usize))> = (0..win.kernel.1)
        .map(|j| {
            let off = (j * win.dilation.1) as isize - win.padding.1 as isize;
            let (lo, hi) = valid_cols(ow, w, sw, off);
            // Input column ox·sw + off = (ox + q)·sw + phase, q = floor(off / sw).
            let phase = off.rem_euclid(sw as isize) as usize;
            let start = (lo as isize + off.div_euclid(sw as isize)).max(0) as usize;
            (phase, start, (lo, hi))
        })
        .collect();
    let phase_len = w.div_ceil(sw);
    let mut phases = vec![0.0f32; sw * phase_len];
    for pl in 0..planes {
        let src = &x[pl * h * w..(pl + 1) * h * w];
        let yp = &mut y[pl * oh * ow..(pl + 1) * oh * ow];
        let ap = &mut arg[pl * oh * ow..(pl + 1) * oh * ow];
        for oy in 0..oh {
            let best = &mut yp[oy * ow..(oy + 1) * ow];
            let at = &mut ap[oy * ow..(oy + 1) * ow];
            best.fill(f32::NEG_INFINITY);
            for i in 0..win.kernel.0 {
                let iy = (oy * win.stride.0 + i * win.dilation.0) as isize - win.padding.0 as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = &src[iy as usize * w..(iy as usize + 1) * w];
                for (k, chunk) in row.chunks(sw).enumerate() {
                    for (phase, v) in chunk.iter().enumerate() {
                        phases[phase * phase_len + k] = *v;
                    }
                }
                let row_start = (iy as usize * w) as u32;
                for &(phase, start, (lo, hi)) in &taps {
                    if hi <= lo {
                        continue;
                    }
                    let count = hi - lo;
                    let candidates = &phases[phase * phase_len + start..][..count];
                    // Column of candidate t: (start + t)·sw + phase.
                    let first = row_start + (start * sw + phase) as u32;
                    let (b, a) = (&mut best[lo..hi], &mut at[lo..hi]);
                    for (t, ((v, b), a)) in candidates.iter().zip(b.iter_mut()).zip(a.iter_mut()).enumerate() {
                        let wins = (*v > *b) | v.is_nan() | (*a == u32::MAX);
                        // Masks, not `if`: the compiler turns those back into branches.
                        let keep = (wins as u32).wrapping_sub(1);
                        *b = f32::from_bits((b.to_bits() & keep) | (v.to_bits() & !keep));
                        *a = (*a & keep) | ((first + (t * sw) as u32) & !keep);
                    }
                }
            }
        }
    }
    arg
}

/// Max pooling input gradient: each output's gradient goes to its recorded maximum.
pub fn maxpool2d_backward(gy: &[f32], arg: &[u32], g: Planes, gx: &mut [f32]) {
    let Planes { planes, h, w, oh, ow } = g;
    gx.fill(0.0);
    for pl in 0..planes {
        let dst = &mut gx[pl * h * w..(pl + 1) * h * w];
        for o in 0..oh * ow {
            let idx = arg[pl * oh * ow + o];
            if idx != u32::MAX {
                dst[idx as usize] += gy[pl * oh * ow + o];
            }
        }
    }
}

/// Average pooling windows: for each output position, the input rectangle and divisor
/// (PyTorch: with count_include_pad the divisor counts padding, never beyond it).
fn avg_window(o: usize, kernel: usize, stride: usize, pad: usize, len: usize) -> (usize, usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let end_padded = (start + kernel as isize).min((len + pad) as isize);
    let padded_count = (end_padded - start) as usize;
    let lo = start.max(0) as usize;
    let hi = end_padded.min(len as isize).max(0) as usize;
    (lo, hi.max(lo), padded_count)
}

/// Average pooling over planes; `count_include_pad` as in PyTorch.
pub fn avgpool2d(x: &[f32], g: Planes, win: &Window2d, count_include_pad: bool, y: &mut [f32], backward: bool) {
    let Planes { planes, h, w, oh, ow } = g;
    // Forward: y = mean(x window); backward (x = gy, y = gx): gx[window] += gy / divisor.
    if backward {
        y.fill(0.0);
    }
    for pl in 0..planes {
        for oy in 0..oh {
            let (y0, y1, ph) = avg_window(oy, win.kernel.0, win.stride.0, win.padding.0, h);
            for ox in 0..ow {
                let (x0, x1, pw) = avg_window(ox, win.kernel.1, win.stride.1, win.padding.1, w);
                let divisor = if count_include_pad {
                    ph * pw
                } else {
                    (y1 - y0) * (x1 - x0)
                }
                .max(1) as f32;
                let o = pl * oh * ow + oy * ow + ox;
                if backward {
                    let g = x[o] / divisor;
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            y[pl * h * w + iy * w + ix] += g;
                        }
                    }
                } else {
                    let mut sum = 0.0f32;
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            sum += x[pl * h * w + iy * w + ix];
                        }
                    }
                    y[o] = sum / divisor;
                }
            }
        }
    }
}

/// PyTorch's adaptive pooling bins: [floor(i·len/out), ceil((i+1)·len/out)).
pub fn adaptive_bin(i: usize, len: usize, out: usize) -> (usize, usize) {
    (i * len / out, ((i + 1) * len).div_ceil(out))
}

/// Adaptive average pooling forward (or, with `backward`, its input gradient).
pub fn adaptive_avgpool2d(x: &[f32], g: Planes, y: &mut [f32], backward: bool) {
    let Planes { planes, h, w, oh, ow } = g;
    if backward {
        y.fill(0.0);
    }
    for pl in 0..planes {
        for oy in 0..oh {
            let (y0, y1) = adaptive_bin(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1) = adaptive_bin(ox, w, ow);
                let divisor = ((y1 - y0) * (x1 - x0)) as f32;
                let o = pl * oh * ow + oy * ow + ox;
                if backward {
                    let g = x[o] / divisor;
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            y[pl * h * w + iy * w + ix] += g;
                        }
                    }
                } else {
                    let mut sum = 0.0f32;
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            sum += x[pl * h * w + iy * w + ix];
                        }
                    }
                    y[o] = sum / divisor;
                }
            }
        }
    }
}

/// The error function in float32 without branches, so that a loop over a buffer
/// vectorises: x·P(x²)/Q(x²) on [−4, 4] (beyond, erf is ±1 in float32), the rational
/// approximation of Eigen and XLA. Within 4.2e-7 of libm's `erff` everywhere (tested;
/// 3.5 float32 steps near ±1),
/// where libm's scalar, branchy version was an eighth of a MiniLM forward.
#[inline]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_600_1e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_4e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

/// e^x in float32, branch-free so that loops over it vectorise: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by Cephes' degree-6 polynomial, 2ⁿ put into the exponent. Within 1
/// float32 step of libm's `expf` (tested); 0 below −87.3 (where e^x leaves the normal
/// range: a softmax's masked positions give exactly 0, as with libm), ∞ above 88.7, NaN
/// kept. libm's scalar call was a tenth of a ViT's forward, in its softmax.
#[inline]
pub fn exp(x: f32) -> f32 {
    const HI: f32 = 88.72;
    const LO: f32 = -87.33;
    // Selects (clamp's would keep a NaN too, but its loop measured slower).
    #[allow(clippy::manual_clamp)]
    let xc = if x > HI {
        HI
    } else if x < LO {
        LO
    } else {
        x
    };
    // Round to nearest by adding and taking away 1.5·2²³ (`round` is a libm call
    // on the baseline x86-64 target, which keeps the loop scalar).
    const ROUND: f32 = 12_582_912.0;
    let n = (xc * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ in two halves: n reaches 128 at the top of the range, past a float's exponent.
    let n = n as i32;
    let half = n >> 1;
    let scale = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let v = y * scale(half) * scale(n - half);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    /// What the unpadded wide products rely on (see WIDE_MIN_ROWS): a row's bits do not
    /// depend on how many rows share its product, in the forward's and the backward's
    /// operand layouts, at the wide shapes of MiniLM, BERT-base and ViTs.
    #[test]
    fn wide_products_do_not_depend_on_their_row_count() {
        for (k, n) in [
            (256, 256),
            (384, 384),
            (384, 1536),
            (1536, 384),
            (768, 3072),
            (3072, 768),
        ] {
            let most = 700;
            let a: Vec<f32> = (0..most * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 104_729) % 997) as f32 * 1e-3 - 0.5).collect();
            // forward: y = x·Wᵀ with W [n, k]; backward: g·W with W [k, n]
            for (rs, cs) in [(1, k), (n, 1)] {
                let product = |m: usize| {
                    let mut c = vec![0.0f32; m * n];
                    super::matmul(m, n, k, &mut c, n, &a, k, 1, &w, rs, cs, false);
                    c
                };
                let reference = product(most);
                for m in [2, 3, 17, 40, 128, 129, 333] {
                    assert!(
                        product(m) == reference[..m * n],
                        "{m} rows of a {k}×{n} product differ from the same rows among {most}"
                    );
                }
            }
        }
    }

    #[test]
    fn exp_is_within_a_float_step_of_libm() {
        let mut worst = 0.0f64;
        for i in -873_000..=887_000 {
            let x = i as f32 * 1e-4;
            let (ours, libm) = (super::exp(x), libm::expf(x));
            // in units of the last place of libm's result
            let ulp = (libm.abs() * f32::EPSILON) as f64;
            if libm > f32::MIN_POSITIVE {
                worst = worst.max(((ours - libm).abs() as f64) / ulp);
            }
        }
        assert!(worst <= 1.0, "exp differs from libm's by {worst} float steps");
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(-1e9), 0.0);
        assert_eq!(super::exp(100.0), f32::INFINITY);
        assert!(super::exp(f32::NAN).is_nan());
    }

    /// The direct depthwise kernels against the definition, at MobileNet's geometries and
    /// odd ones (stride 2 on odd widths, dilation, asymmetric kernels), forward and input
    /// gradient (⟨conv(x), g⟩ = ⟨x, conv_backward(g)⟩ is checked against naive loops too).
    #[test]
    fn depthwise_kernels_match_the_definition() {
        use super::{ConvGeom, Window2d};
        for (h, w, k, s, p, d) in [
            (12, 12, (3, 3), (1, 1), (1, 1), (1, 1)),
            (13, 11, (3, 3), (2, 2), (1, 1), (1, 1)),
            (14, 14, (5, 5), (2, 2), (2, 2), (1, 1)),
            (9, 10, (5, 5), (1, 1), (2, 2), (1, 1)),
            (10, 9, (3, 5), (1, 2), (0, 2), (2, 1)),
            (7, 7, (3, 3), (1, 1), (0, 0), (1, 1)),
            (1, 1, (5, 5), (1, 1), (2, 2), (1, 1)),
            (3, 2, (5, 5), (2, 2), (2, 2), (1, 1)),
        ] {
            let (c, n) = (3, 2);
            let win = Window2d {
                kernel: k,
                stride: s,
                padding: p,
                dilation: d,
            };
            let (oh, ow) = win.out_hw(h, w).unwrap();
            let g = ConvGeom {
                c,
                h,
                w,
                out: c,
                groups: c,
                win,
                oh,
                ow,
            };
            assert!(g.is_depthwise());
            let x: Vec<f32> = (0..n * c * h * w)
                .map(|i| ((i * 7919) % 211) as f32 / 100.0 - 1.0)
                .collect();
            let wt: Vec<f32> = (0..c * k.0 * k.1)
                .map(|i| ((i * 104_729) % 97) as f32 / 50.0 - 1.0)
                .collect();
            let bias = [0.5f32, -0.25, 1.0];
            let gy: Vec<f32> = (0..n * c * oh * ow)
                .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let (mut y, mut gx) = (vec![0.0f32; gy.len()], vec![1.0f32; x.len()]);
            super::conv2d_forward(&x, n, &g, &wt, Some(&bias), &mut y);
            super::conv2d_backward(&gy, n, &g, &wt, &mut gx);
            let (mut want_y, mut want_gx) = (vec![0.0f32; y.len()], vec![0.0f32; x.len()]);
            for img in 0..n {
                for ch in 0..c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let o = ((img * c + ch) * oh + oy) * ow + ox;
                            want_y[o] = bias[ch];
                            for i in 0..k.0 {
                                for j in 0..k.1 {
                                    let iy = (oy * s.0 + i * d.0) as i64 - p.0 as i64;
                                    let ix = (ox * s.1 + j * d.1) as i64 - p.1 as i64;
                                    if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                        continue;
                                    }
                                    let xi = ((img * c + ch) * h + iy as usize) * w + ix as usize;
                                    let wv = wt[(ch * k.0 + i) * k.1 + j];
                                    want_y[o] += wv * x[xi];
                                    want_gx[xi] += wv * gy[o];
                                }
                            }
                        }
                    }
                }
            }
            for (got, want) in [(&y, &want_y), (&gx, &want_gx)] {
                let worst = got
                    .iter()
                    .zip(want.iter())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 1e-5, "{h}×{w} kernel {k:?} stride {s:?}: off by {worst}");
            }
        }
    }

    #[test]
    fn erf_is_within_float_noise_of_libm() {
        let mut worst = 0.0f32;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((super::erf(x) - libm::erff(x)).abs());
        }
        for x in [0.0f32, 1e-30, -1e-8, 10.0, -50.0, f32::MAX, f32::MIN] {
            worst = worst.max((super::erf(x) - libm::erff(x)).abs());
        }
        assert!(worst <= 4.5e-7, "erf differs from libm's by {worst}");
        assert!(super::erf(f32::NAN).is_nan());
    }

    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        // small integers: sums are exact in any order
        (0..len as u64)
            .map(|i| ((i * 7919 + seed as u64 * 104_729) % 17) as f32 - 8.0)
            .collect()
    }

    /// The keeping-width im2col / col2im give exactly what the general ones give, for
    /// kernels narrower and wider than the image and asymmetric paddings.
    #[test]
    fn keeping_width_paths_match_the_general_ones() {
        let cases = [
            // (c, h, w, kernel, padding)
            (2, 8, 8, (3, 3), (1, 1)),
            (1, 5, 6, (3, 3), (1, 1)),
            (3, 4, 7, (1, 5), (0, 2)),
            (2, 6, 3, (5, 3), (2, 1)),
            (1, 2, 2, (5, 5), (2, 2)),
            (2, 3, 1, (3, 7), (1, 3)),
            (1, 4, 4, (1, 1), (0, 0)),
            (1, 5, 4, (2, 3), (0, 1)),
        ];
        for (case, &(c, h, w, kernel, padding)) in cases.iter().enumerate() {
            let win = Window2d {
                kernel,
                stride: (1, 1),
                padding,
                dilation: (1, 1),
            };
            let (oh, ow) = win.out_hw(h, w).unwrap();
            let g = ConvGeom {
                c,
                h,
                w,
                out: 1,
                groups: 1,
                win,
                oh,
                ow,
            };
            assert!(g.keeps_width(), "case {case}");
            let n = 3;
            let x = values(n * c * h * w, case as u32);
            let len = g.k() * n * g.p();
            let (mut fast, mut slow) = (vec![f32::NAN; len], vec![f32::NAN; len]);
            im2col_keeping_width(&x, n, 0, &g, &mut fast);
            im2col_any(&x, n, 0, &g, &mut slow);
            assert_eq!(fast, slow, "im2col, case {case}");
            let col = values(len, case as u32 + 50);
            let (mut fast, mut slow) = (vec![1.0; x.len()], vec![1.0; x.len()]);
            col2im_keeping_width(&mut col.clone(), n, 0, &g, &mut fast);
            col2im_any(&col, n, 0, &g, &mut slow);
            assert_eq!(fast, slow, "col2im, case {case}");
        }
    }

    /// The tiled, parallel paths of large images equal a direct convolution and its
    /// adjoint exactly (small integers), over several tiles, strides, paddings,
    /// dilations, groups and the pointwise shortcut.
    #[test]
    fn tiled_convolution_matches_the_direct_sums() {
        let cases = [
            // (c, h, w, out, groups, kernel, stride, padding, dilation)
            (64, 24, 24, 5, 1, 3, 1, 1, 1),
            (64, 50, 49, 4, 2, 3, 2, 1, 1),
            (3, 96, 90, 4, 1, 7, 2, 3, 1),
            (32, 70, 70, 6, 1, 1, 1, 0, 1),
            (32, 100, 99, 4, 1, 1, 2, 0, 1),
            (6, 60, 60, 6, 6, 5, 1, 2, 1),
            (4, 48, 48, 5, 1, 3, 1, 2, 2),
            (16, 40, 36, 6, 2, 3, 1, 0, 1),
            (5, 64, 64, 3, 1, 5, 1, 1, 1),
        ];
        for (case, &(c, h, w, out, groups, kernel, stride, padding, dilation)) in cases.iter().enumerate() {
            let win = Window2d {
                kernel: (kernel, kernel),
                stride: (stride, stride),
                padding: (padding, padding),
                dilation: (dilation, dilation),
            };
            let (oh, ow) = win.out_hw(h, w).unwrap();
            let g = ConvGeom {
                c,
                h,
                w,
                out,
                groups,
                win,
                oh,
                ow,
            };
            assert!(g.is_large(), "case {case}");
            let n = 2;
            let (cg, og) = (c / groups, out / groups);
            let x = values(n * c * h * w, case as u32);
            let weight = values(out * g.k(), case as u32 + 9);
            let bias: Vec<f32> = (0..out).map(|o| o as f32 - 2.0).collect();
            let gy = values(n * out * oh * ow, case as u32 + 20);
            let (mut want_y, mut want_gx) = (vec![0.0f32; gy.len()], vec![0.0f32; x.len()]);
            for b in 0..n {
                for o in 0..out {
                    let gi = o / og;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let yi = ((b * out + o) * oh + oy) * ow + ox;
                            let mut sum = bias[o];
                            for ci in 0..cg {
                                for i in 0..kernel {
                                    for j in 0..kernel {
                                        let iy = (oy * stride + i * dilation) as isize - padding as isize;
                                        let ix = (ox * stride + j * dilation) as isize - padding as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                            continue;
                                        }
                                        let xi = ((b * c + gi * cg + ci) * h + iy as usize) * w + ix as usize;
                                        let wv = weight[((o * cg + ci) * kernel + i) * kernel + j];
                                        sum += wv * x[xi];
                                        want_gx[xi] += wv * gy[yi];
                                    }
                                }
                            }
                            want_y[yi] = sum;
                        }
                    }
                }
            }
            let mut y = vec![f32::NAN; want_y.len()];
            conv2d_forward(&x, n, &g, &weight, Some(&bias), &mut y);
            assert_eq!(y, want_y, "forward, case {case}");
            let mut gx = vec![f32::NAN; x.len()];
            conv2d_backward(&gy, n, &g, &weight, &mut gx);
            assert_eq!(gx, want_gx, "backward, case {case}");
            if let Some(adjoint) = adjoint_geom(&g) {
                let mut gx = vec![f32::NAN; x.len()];
                conv2d_forward(&gy, n, &adjoint, &adjoint_weights(&g, &weight), None, &mut gx);
                assert_eq!(gx, want_gx, "backward as a convolution, case {case}");
            }
        }
    }
}
