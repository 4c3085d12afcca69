//! Numeric kernels on plain slices: matrix products through the `gemm` crate (the one
//! candle uses), convolution as im2col + one product per group, pooling with the
//! bookkeeping its backward needs. Every backward here returns the input gradient only.
//! Work is single-threaded inside a kernel; the engine runs tiles in parallel instead.

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

/// Images per im2col chunk, so that the column buffer stays near 4 MB.
fn chunk_images(g: &ConvGeom) -> usize {
    let per_image = g.k() * g.p();
    ((1 << 20) / per_image.max(1)).max(1)
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

/// im2col for channels `c0..c0+cg` of `n` images starting at `x`: col[K, n*P].
fn im2col(x: &[f32], n: usize, c0: usize, g: &ConvGeom, col: &mut [f32]) {
    let (kh, kw) = g.win.kernel;
    let (sh, sw) = g.win.stride;
    let (ph, pw) = g.win.padding;
    let (dh, dw) = g.win.dilation;
    let cg = g.c / g.groups;
    let np = n * g.p();
    let img = g.c * g.h * g.w;
    for c in 0..cg {
        for i in 0..kh {
            for j in 0..kw {
                let krow = (c * kh + i) * kw + j;
                let dst = &mut col[krow * np..(krow + 1) * np];
                let off = (j * dw) as isize - pw as isize;
                let (lo, hi) = valid_cols(g.ow, g.w, sw, off);
                for b in 0..n {
                    let plane = &x[b * img + (c0 + c) * g.h * g.w..][..g.h * g.w];
                    let dst = &mut dst[b * g.p()..(b + 1) * g.p()];
                    for oy in 0..g.oh {
                        let iy = (oy * sh + i * dh) as isize - ph as isize;
                        let drow = &mut dst[oy * g.ow..(oy + 1) * g.ow];
                        if iy < 0 || iy >= g.h as isize {
                            drow.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        drow[..lo].fill(0.0);
                        drow[hi..].fill(0.0);
                        if sw == 1 {
                            let a = (lo as isize + off) as usize;
                            drow[lo..hi].copy_from_slice(&src[a..a + (hi - lo)]);
                        } else {
                            for (ox, d) in drow[lo..hi].iter_mut().enumerate() {
                                *d = src[(((lo + ox) * sw) as isize + off) as usize];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: accumulates col[K, n*P] into channels `c0..` of `gx`.
fn col2im(col: &[f32], n: usize, c0: usize, g: &ConvGeom, gx: &mut [f32]) {
    let (kh, kw) = g.win.kernel;
    let (sh, sw) = g.win.stride;
    let (ph, pw) = g.win.padding;
    let (dh, dw) = g.win.dilation;
    let cg = g.c / g.groups;
    let np = n * g.p();
    let img = g.c * g.h * g.w;
    for c in 0..cg {
        for i in 0..kh {
            for j in 0..kw {
                let krow = (c * kh + i) * kw + j;
                let src = &col[krow * np..(krow + 1) * np];
                let off = (j * dw) as isize - pw as isize;
                let (lo, hi) = valid_cols(g.ow, g.w, sw, off);
                for b in 0..n {
                    let plane = &mut gx[b * img + (c0 + c) * g.h * g.w..][..g.h * g.w];
                    let src = &src[b * g.p()..(b + 1) * g.p()];
                    for oy in 0..g.oh {
                        let iy = (oy * sh + i * dh) as isize - ph as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let drow = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let srow = &src[oy * g.ow + lo..oy * g.ow + hi];
                        if sw == 1 {
                            let a = (lo as isize + off) as usize;
                            for (d, s) in drow[a..a + (hi - lo)].iter_mut().zip(srow) {
                                *d += *s;
                            }
                        } else {
                            for (ox, s) in srow.iter().enumerate() {
                                drow[(((lo + ox) * sw) as isize + off) as usize] += *s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Convolution forward: x [n, c, h, w], weight [out, c/groups, kh, kw] → [n, out, oh, ow].
pub fn conv2d_forward(x: &[f32], n: usize, g: &ConvGeom, weight: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let k = g.k();
    let p = g.p();
    let og = g.out / g.groups;
    let chunk = chunk_images(g);
    let mut col = vec![0.0f32; k * chunk.min(n) * p];
    let mut tmp = vec![0.0f32; og * chunk.min(n) * p];
    let img_in = g.c * g.h * g.w;
    let img_out = g.out * p;
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
}

/// Convolution input gradient: gy [n, out, oh, ow] → gx [n, c, h, w] (gx is overwritten).
pub fn conv2d_backward(gy: &[f32], n: usize, g: &ConvGeom, weight: &[f32], gx: &mut [f32]) {
    gx.fill(0.0);
    let k = g.k();
    let p = g.p();
    let og = g.out / g.groups;
    let chunk = chunk_images(g);
    let mut col = vec![0.0f32; k * chunk.min(n) * p];
    let mut gyt = vec![0.0f32; og * chunk.min(n) * p];
    let img_in = g.c * g.h * g.w;
    let img_out = g.out * p;
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
}

/// Rows per matrix product of a linear layer. gemm picks its algorithm (and so the order
/// in which it sums, and the last bits of the result) from the matrix sizes, rows
/// included; multiplying a fixed number of rows at a time (the last block padded with
/// zero rows) makes a row's result independent of how many rows share its batch, so that
/// a query gives the same bits whatever SET batch_size is.
const LINEAR_BLOCK: usize = 16;

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
    let full = rows / LINEAR_BLOCK * LINEAR_BLOCK;
    for start in (0..full).step_by(LINEAR_BLOCK) {
        matmul(
            LINEAR_BLOCK,
            out,
            inp,
            &mut y[start * out..(start + LINEAR_BLOCK) * out],
            out,
            &x[start * inp..(start + LINEAR_BLOCK) * inp],
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
        let mut xs = vec![0.0f32; LINEAR_BLOCK * inp];
        xs[..tail * inp].copy_from_slice(&x[full * inp..rows * inp]);
        let mut ys = vec![0.0f32; LINEAR_BLOCK * out];
        ys[..tail * out].copy_from_slice(&y[full * out..rows * out]);
        matmul(
            LINEAR_BLOCK,
            out,
            inp,
            &mut ys,
            out,
            &xs,
            inp,
            1,
            w,
            w_rs,
            w_cs,
            accumulate,
        );
        y[full * out..rows * out].copy_from_slice(&ys[..tail * out]);
    }
}

/// Linear forward over `rows` rows: y[rows, out] = x[rows, in] · Wᵀ + b, W is [out, in].
pub fn linear_forward(
    x: &[f32],
    rows: usize,
    inp: usize,
    out: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    if let Some(b) = bias {
        for r in 0..rows {
            y[r * out..(r + 1) * out].copy_from_slice(b);
        }
    }
    blocked_rows(x, rows, inp, out, weight, 1, inp, y, bias.is_some());
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
                for (ox, o) in out.iter_mut().enumerate() {
                    let (a, b) = (top[2 * ox], top[2 * ox + 1]);
                    let (c, d) = (bottom[2 * ox], bottom[2 * ox + 1]);
                    *o = pick(pick(pick(a, b), c), d);
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
                for ox in 0..ow {
                    let c = [top[2 * ox], top[2 * ox + 1], bottom[2 * ox], bottom[2 * ox + 1]];
                    let mut k = 0;
                    for (q, v) in c.iter().enumerate().skip(1) {
                        if *v > c[k] || v.is_nan() {
                            k = q;
                        }
                    }
                    y[o + ox] = c[k];
                    arg[o + ox] = ((2 * oy + k / 2) * w + 2 * ox + k % 2) as u32;
                }
            }
        }
        return arg;
    }
    for pl in 0..planes {
        let src = &x[pl * h * w..(pl + 1) * h * w];
        let yp = &mut y[pl * oh * ow..(pl + 1) * oh * ow];
        let ap = &mut arg[pl * oh * ow..(pl + 1) * oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = f32::NEG_INFINITY;
                let mut best_idx = u32::MAX;
                if inside {
                    // every window lies inside the plane: no bounds to check
                    let base = oy * win.stride.0 * w + ox * win.stride.1;
                    for i in 0..win.kernel.0 {
                        let row = base + i * win.dilation.0 * w;
                        for j in 0..win.kernel.1 {
                            let idx = row + j * win.dilation.1;
                            let v = src[idx];
                            if v > best || v.is_nan() || best_idx == u32::MAX {
                                best = v;
                                best_idx = idx as u32;
                            }
                        }
                    }
                } else {
                    for i in 0..win.kernel.0 {
                        let iy = (oy * win.stride.0 + i * win.dilation.0) as isize - win.padding.0 as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for j in 0..win.kernel.1 {
                            let ix = (ox * win.stride.1 + j * win.dilation.1) as isize - win.padding.1 as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let idx = iy as usize * w + ix as usize;
                            let v = src[idx];
                            if v > best || v.is_nan() || best_idx == u32::MAX {
                                best = v;
                                best_idx = idx as u32;
                            }
                        }
                    }
                }
                yp[oy * ow + ox] = best;
                ap[oy * ow + ox] = best_idx;
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
