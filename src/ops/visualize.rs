//! Feature visualization (`LET v = VISUALIZE m AT LAYER l CHANNEL k (…)`): gradient ascent
//! on an objective — a channel's mean activation, one unit, a class logit — with Adam,
//! through the one gradient engine, over an image parameterised as Lucid/Lucent does:
//! for images of 32×32 and up a Fourier spectrum scaled by 1/f (Lucent's `fft_image`,
//! divided by its magic 4), decorrelated colour (its `color_correlation_svd_sqrt`) and a
//! sigmoid into [lower, upper]; for smaller inputs the pixels themselves through the
//! sigmoid. Each step can jitter, scale and rotate the image (transformation robustness,
//! one bilinear warp with the exact adjoint), and n images can be pushed apart by Lucid's
//! Gram-matrix diversity term.

use super::rng::Rng;
use super::{Control, MAX_COUNT, ParamKind, ParamSpec};
use crate::error::{Error, Result};
use crate::model::{Batch, Forward, Gradient, Model};

const fn param(name: &'static str, kind: ParamKind, default: Option<&'static str>) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        default,
        setting: None,
    }
}

/// VISUALIZE's parameters (Lucent's defaults: 512 steps of Adam at 0.05, a Fourier
/// parameterisation with decorrelated colour, its standard transforms).
pub const PARAMS: &[ParamSpec] = &[
    param("steps", ParamKind::Int { min: 1, max: MAX_COUNT }, Some("512")),
    param("lr", ParamKind::Float { min: 0.0 }, Some("0.05")),
    ParamSpec {
        name: "seed",
        kind: ParamKind::Int { min: 0, max: i64::MAX },
        default: Some("0"),
        setting: Some("seed"),
    },
    param("lower", ParamKind::Float { min: f64::MIN }, Some("0")),
    param("upper", ParamKind::Float { min: f64::MIN }, Some("1")),
    param("param", ParamKind::Choice(&["auto", "fourier", "pixel"]), Some("auto")),
    param("normalize", ParamKind::Choice(&["none", "imagenet"]), Some("none")),
    param("decorrelate", ParamKind::Bool, Some("true")),
    // true for images of 32×32 and up, false below (the planner decides when not given).
    param("transforms", ParamKind::Bool, Some("auto")),
    param("jitter", ParamKind::Int { min: 0, max: 1024 }, Some("8")),
    param("scale", ParamKind::Float { min: 0.0 }, Some("0.1")),
    param("rotate", ParamKind::Int { min: 0, max: 180 }, Some("10")),
    param("diversity", ParamKind::Int { min: 1, max: 64 }, Some("1")),
    param("diversity_weight", ParamKind::Float { min: 0.0 }, Some("10")),
    param("init", ParamKind::Path, None),
];

/// What the ascent maximises.
#[derive(Clone, Debug, PartialEq)]
pub enum Objective {
    /// The mean of a channel of the layer's output over its positions.
    Channel(usize),
    /// One value of the layer's output (its flat index in a sample).
    Unit(usize),
    /// A class logit (the layer is the model's output).
    Class(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Visualization {
    /// The layer whose output the objective reads.
    pub layer: usize,
    /// One objective for every image, or one per image (`CHANNEL *`).
    pub objectives: Vec<Objective>,
    /// How many images (more than one of one objective: pushed apart by the diversity
    /// term).
    pub images: usize,
    pub diversity_weight: f32,
    pub steps: usize,
    pub lr: f32,
    pub seed: u64,
    pub lower: f32,
    pub upper: f32,
    /// The model reads images normalised by (mean, std) per channel (Lucent's
    /// `preprocess` for torchvision models): the ascent is over the [lower, upper]
    /// image, the model sees (image − mean) / std.
    pub normalize: Option<([f32; 3], [f32; 3])>,
    pub fourier: bool,
    pub decorrelate: bool,
    /// The random warp of each step (None: transforms off).
    pub transforms: Option<Transforms>,
    /// Starting parameters (a spectrum or pixels, as the parameterisation has them)
    /// instead of Lucent's N(0, 0.01²) draw.
    pub init: Option<Vec<f32>>,
}

/// The images as the model reads them (n × the model's input: normalised when
/// `normalize`), and the objective of each at the start and the end.
pub struct Rendered {
    pub images: Vec<f32>,
    pub start: Vec<f32>,
    pub end: Vec<f32>,
}

/// Lucent's colour correlation (its `color_correlation_svd_sqrt`), normalised by its
/// largest column norm.
fn colour_matrix() -> [[f32; 3]; 3] {
    let m = [[0.26f32, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]];
    let norm = (0..3)
        .map(|j| (0..3).map(|i| m[i][j] * m[i][j]).sum::<f32>().sqrt())
        .fold(0.0f32, f32::max);
    m.map(|row| row.map(|v| v / norm))
}

/// A Fourier parameterisation of (channels, h, w) planes: a half spectrum (h × bins, real
/// and imaginary) per plane, scaled by 1 / max(f, 1 / max(h, w)), and its inverse real
/// DFT (orthonormal) divided by 4, exactly as Lucent's `fft_image`. The DFT is done as
/// four real matrix products (by the gemm kernels: at 224×224 a naive transform costs
/// more than the model's pass): Z = E_y·X along the rows, then the real part of Z·E_x
/// along the columns, E the cos/sin tables.
struct Spectrum {
    h: usize,
    w: usize,
    /// Lucent's bins per row: w/2 + 1, or w/2 + 2 for odd w (the last one unused).
    bins: usize,
    /// The bins the inverse transform reads (numpy/torch irfft): w/2 + 1.
    used: usize,
    scale: Vec<f32>,
    /// cos and sin of 2π·ky·y/h ([h × h], symmetric).
    cy: Vec<f32>,
    sy: Vec<f32>,
    /// c_kx·cos and c_kx·sin of 2π·kx·x/w ([used × w]), c = 2 for the bins that stand
    /// for their conjugates too, else 1; all times the orthonormal 1/√(hw) and Lucent's ÷ 4.
    cx: Vec<f32>,
    sx: Vec<f32>,
}

/// `c = a·b` (or `+=`), a [m×k], b [k×n], row-major; `a_t` / `b_t`: the operand is
/// stored transposed.
#[allow(clippy::too_many_arguments)]
fn product(m: usize, n: usize, k: usize, a: &[f32], a_t: bool, b: &[f32], b_t: bool, c: &mut [f32], add: bool) {
    let (a_rs, a_cs) = if a_t { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if b_t { (1, k) } else { (n, 1) };
    crate::model::kernels::matmul(m, n, k, c, n, a, a_rs, a_cs, b, b_rs, b_cs, add);
}

impl Spectrum {
    fn new(h: usize, w: usize) -> Spectrum {
        let bins = if w % 2 == 1 { w / 2 + 2 } else { w / 2 + 1 };
        let used = w / 2 + 1;
        let freq = |k: usize, n: usize| {
            // numpy's fftfreq: 0, 1, …, (n−1)/2, −n/2, …, −1 over n.
            let k = k as f64;
            let n = n as f64;
            if k < (n / 2.0).ceil() { k / n } else { (k - n) / n }
        };
        let floor = 1.0 / h.max(w) as f64;
        let mut scale = Vec::with_capacity(h * bins);
        for ky in 0..h {
            for kx in 0..bins {
                let f = (freq(ky, h).powi(2) + freq(kx, w).powi(2)).sqrt();
                scale.push((1.0 / f.max(floor)) as f32);
            }
        }
        let angle =
            |a: usize, b: usize, period: usize| 2.0 * std::f64::consts::PI * ((a * b) % period) as f64 / period as f64;
        let (mut cy, mut sy) = (Vec::with_capacity(h * h), Vec::with_capacity(h * h));
        for ky in 0..h {
            for y in 0..h {
                let a = angle(ky, y, h);
                cy.push(a.cos() as f32);
                sy.push(a.sin() as f32);
            }
        }
        let norm = 1.0 / ((h * w) as f64).sqrt() / 4.0;
        let (mut cx, mut sx) = (Vec::with_capacity(used * w), Vec::with_capacity(used * w));
        for kx in 0..used {
            let weight = if kx == 0 || 2 * kx == w { 1.0 } else { 2.0 };
            for x in 0..w {
                let a = angle(kx, x, w);
                cx.push((weight * norm * a.cos()) as f32);
                sx.push((weight * norm * a.sin()) as f32);
            }
        }
        Spectrum {
            h,
            w,
            bins,
            used,
            scale,
            cy,
            sy,
            cx,
            sx,
        }
    }

    fn params_per_plane(&self) -> usize {
        self.h * self.bins * 2
    }

    /// The plane of one spectrum: Re(E_y·X·E_x).
    fn image(&self, spec: &[f32], out: &mut [f32]) {
        let (h, w, bins, used) = (self.h, self.w, self.bins, self.used);
        let (mut xr, mut xi) = (vec![0.0f32; h * used], vec![0.0f32; h * used]);
        for ky in 0..h {
            for kx in 0..used {
                let i = ky * bins + kx;
                xr[ky * used + kx] = spec[2 * i] * self.scale[i];
                xi[ky * used + kx] = spec[2 * i + 1] * self.scale[i];
            }
        }
        // Z = (Cy + i·Sy)(Xr + i·Xi)
        let (zr, zi) = self.columns(&xr, &xi);
        // image = Zr·Cx − Zi·Sx
        let neg_zi: Vec<f32> = zi.iter().map(|v| -v).collect();
        product(h, w, used, &zr, false, &self.cx, false, out, false);
        product(h, w, used, &neg_zi, false, &self.sx, false, out, true);
    }

    /// (Cy + i·Sy)·(Xr + i·Xi) for planes of h × used: the column transform both ways
    /// share (the tables are symmetric). Returns (real, imaginary).
    fn columns(&self, xr: &[f32], xi: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (h, used) = (self.h, self.used);
        let (mut zr, mut zi) = (vec![0.0f32; h * used], vec![0.0f32; h * used]);
        let neg_xi: Vec<f32> = xi.iter().map(|v| -v).collect();
        product(h, used, h, &self.cy, false, xr, false, &mut zr, false);
        product(h, used, h, &self.sy, false, &neg_xi, false, &mut zr, true);
        product(h, used, h, &self.sy, false, xr, false, &mut zi, false);
        product(h, used, h, &self.cy, false, xi, false, &mut zi, true);
        (zr, zi)
    }

    /// The gradient of a plane's spectrum parameters given the gradient of its image
    /// (the transpose of `image`: image = Re(Σ X·E), so ∂/∂Re X = Re E, ∂/∂Im X = −Im E).
    fn adjoint(&self, g: &[f32], out: &mut [f32]) {
        let (h, w, bins, used) = (self.h, self.w, self.bins, self.used);
        // T = G·(Cx + i·Sx)ᵀ
        let (mut tr, mut ti) = (vec![0.0f32; h * used], vec![0.0f32; h * used]);
        product(h, used, w, g, false, &self.cx, true, &mut tr, false);
        product(h, used, w, g, false, &self.sx, true, &mut ti, false);
        // S = (Cy + i·Sy)·T (both tables symmetric)
        let (sr, si) = self.columns(&tr, &ti);
        out.iter_mut().for_each(|v| *v = 0.0);
        for ky in 0..h {
            for kx in 0..used {
                let i = ky * bins + kx;
                out[2 * i] = sr[ky * used + kx] * self.scale[i];
                out[2 * i + 1] = -si[ky * used + kx] * self.scale[i];
            }
        }
    }
}

/// The image's parameterisation: parameters → values in [lower, upper], and back.
struct Parameterization<'a> {
    v: &'a Visualization,
    /// (channels, h, w) of a sample, or (1, 1, d) for inputs that are not images.
    shape: (usize, usize, usize),
    spectrum: Option<Spectrum>,
    colour: Option<[[f32; 3]; 3]>,
}

impl Parameterization<'_> {
    fn params_per_image(&self) -> usize {
        let (c, h, w) = self.shape;
        match &self.spectrum {
            Some(s) => c * s.params_per_plane(),
            None => c * h * w,
        }
    }

    /// Unbounded values before the sigmoid (after the inverse DFT and the colour map).
    fn logits(&self, params: &[f32]) -> Vec<f32> {
        let (c, h, w) = self.shape;
        let plane = h * w;
        let mut raw = vec![0.0f32; c * plane];
        match &self.spectrum {
            Some(s) => {
                let per = s.params_per_plane();
                for ch in 0..c {
                    s.image(
                        &params[ch * per..(ch + 1) * per],
                        &mut raw[ch * plane..(ch + 1) * plane],
                    );
                }
            }
            None => raw.copy_from_slice(params),
        }
        if let Some(m) = &self.colour {
            for p in 0..plane {
                let v = [raw[p], raw[plane + p], raw[2 * plane + p]];
                for (i, row) in m.iter().enumerate() {
                    raw[i * plane + p] = row[0] * v[0] + row[1] * v[1] + row[2] * v[2];
                }
            }
        }
        raw
    }

    fn image(&self, logits: &[f32]) -> Vec<f32> {
        let span = self.v.upper - self.v.lower;
        logits.iter().map(|&u| self.v.lower + span * sigmoid(u)).collect()
    }

    /// The parameters' gradient from the image's.
    fn adjoint(&self, logits: &[f32], g_image: &[f32]) -> Vec<f32> {
        let (c, h, w) = self.shape;
        let plane = h * w;
        let span = self.v.upper - self.v.lower;
        let mut g: Vec<f32> = logits
            .iter()
            .zip(g_image)
            .map(|(&u, &g)| {
                let s = sigmoid(u);
                g * span * s * (1.0 - s)
            })
            .collect();
        if let Some(m) = &self.colour {
            for p in 0..plane {
                let v = [g[p], g[plane + p], g[2 * plane + p]];
                for j in 0..3 {
                    g[j * plane + p] = m[0][j] * v[0] + m[1][j] * v[1] + m[2][j] * v[2];
                }
            }
        }
        match &self.spectrum {
            Some(s) => {
                let per = s.params_per_plane();
                let mut out = vec![0.0f32; c * per];
                for ch in 0..c {
                    s.adjoint(&g[ch * plane..(ch + 1) * plane], &mut out[ch * per..(ch + 1) * per]);
                }
                out
            }
            None => g,
        }
    }
}

fn sigmoid(u: f32) -> f32 {
    1.0 / (1.0 + (-u).exp())
}

/// How far each step's random warp goes (Lucent's standard transforms: jitter 8 then 4
/// pixels, scales 0.9–1.1 in steps of 0.02, rotations of whole degrees to ±10 with 0
/// five times more likely).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transforms {
    /// Pixels of the first shift (a second of half as many follows).
    pub jitter: usize,
    /// The largest relative change of size (11 scales from 1 − s to 1 + s).
    pub scale: f32,
    /// The largest rotation in degrees.
    pub rotate: usize,
}

impl Default for Transforms {
    fn default() -> Transforms {
        Transforms {
            jitter: 8,
            scale: 0.1,
            rotate: 10,
        }
    }
}

/// One random warp of an image (Lucent's standard transforms as a same-size warp): a
/// shift, a scale and a rotation about the centre, sampled bilinearly, outside the image
/// the middle of [lower, upper] (Lucent pads with 0.5).
#[derive(Clone, Copy, Debug)]
struct Warp {
    dy: f32,
    dx: f32,
    scale: f32,
    angle: f32,
}

impl Warp {
    fn draw(rng: &mut Rng, t: &Transforms) -> Warp {
        let jitter = |rng: &mut Rng, n: usize| (rng.below(2 * n + 1) as i64 - n as i64) as f32;
        let dy = jitter(rng, t.jitter) + jitter(rng, t.jitter / 2);
        let dx = jitter(rng, t.jitter) + jitter(rng, t.jitter / 2);
        let scale = 1.0 + (rng.below(11) as f32 - 5.0) / 5.0 * t.scale;
        let angles = 2 * t.rotate + 1;
        let a = rng.below(angles + 5);
        let degrees = if a < angles { a as f32 - t.rotate as f32 } else { 0.0 };
        Warp {
            dy,
            dx,
            scale,
            angle: degrees.to_radians(),
        }
    }

    /// For each output position, the four source positions and weights (None: outside).
    fn taps(&self, h: usize, w: usize) -> Taps {
        let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
        let (sin, cos) = self.angle.sin_cos();
        let mut taps = Vec::with_capacity(h * w);
        for y in 0..h {
            for x in 0..w {
                // The source of (y, x): undo the shift, the rotation and the scale.
                let (py, px) = (y as f32 - cy - self.dy, x as f32 - cx - self.dx);
                let (ry, rx) = ((cos * py + sin * px) / self.scale, (-sin * py + cos * px) / self.scale);
                let (sy, sx) = (ry + cy, rx + cx);
                let (y0, x0) = (sy.floor(), sx.floor());
                let (fy, fx) = (sy - y0, sx - x0);
                let at = |yy: f32, xx: f32| {
                    (yy >= 0.0 && xx >= 0.0 && yy < h as f32 && xx < w as f32).then(|| yy as usize * w + xx as usize)
                };
                taps.push([
                    (at(y0, x0), (1.0 - fy) * (1.0 - fx)),
                    (at(y0, x0 + 1.0), (1.0 - fy) * fx),
                    (at(y0 + 1.0, x0), fy * (1.0 - fx)),
                    (at(y0 + 1.0, x0 + 1.0), fy * fx),
                ]);
            }
        }
        taps
    }
}

/// An image of three channels as a model that normalises by (mean, std) reads it.
fn normalized(image: &[f32], normalize: Option<([f32; 3], [f32; 3])>) -> Vec<f32> {
    let Some((mean, std)) = normalize else {
        return image.to_vec();
    };
    let plane = image.len() / 3;
    image
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let c = (k / plane.max(1)).min(2);
            (v - mean[c]) / std[c]
        })
        .collect()
}

/// Each output position's four bilinear taps (source position or outside, weight).
type Taps = Vec<[(Option<usize>, f32); 4]>;

/// An image (channels × positions) warped: outside the source, `fill`.
fn warp_apply(taps: &Taps, image: &[f32], fill: f32) -> Vec<f32> {
    let plane = taps.len();
    let mut out = vec![0.0; image.len()];
    for (src, dst) in image.chunks(plane).zip(out.chunks_mut(plane)) {
        for (o, t) in dst.iter_mut().zip(taps) {
            *o = t.iter().map(|(at, wt)| wt * at.map_or(fill, |i| src[i])).sum();
        }
    }
    out
}

/// The warp's adjoint: each output's gradient scattered back to its taps.
fn warp_adjoint(taps: &Taps, g_out: &[f32]) -> Vec<f32> {
    let plane = taps.len();
    let mut g = vec![0.0f32; g_out.len()];
    for (gi, go) in g.chunks_mut(plane).zip(g_out.chunks(plane)) {
        for (gv, tap) in go.iter().zip(taps) {
            for (at, wt) in tap {
                if let Some(k) = at {
                    gi[*k] += wt * gv;
                }
            }
        }
    }
    g
}

/// Renders the visualization: `steps` Adam steps (PyTorch's defaults: β = (0.9, 0.999),
/// ε = 1e-8) descending the negated objective.
pub fn render(model: &Model, v: &Visualization, control: &Control) -> Result<Rendered> {
    let input = model.input_shape.clone();
    let d: usize = input.iter().product();
    let shape = match input.as_slice() {
        [c, h, w] => (*c, *h, *w),
        _ => (1, 1, d),
    };
    let image_like = input.len() == 3;
    let fourier = v.fourier && image_like;
    let par = Parameterization {
        v,
        shape,
        spectrum: fourier.then(|| Spectrum::new(shape.1, shape.2)),
        colour: (v.decorrelate && image_like && shape.0 == 3).then(colour_matrix),
    };
    let n = v.images;
    let per = par.params_per_image();
    let mut rng = Rng::new(v.seed, 0);
    let mut params: Vec<f32> = match &v.init {
        Some(init) if init.len() == n * per => init.clone(),
        Some(init) => {
            return Err(Error::shape(format!(
                "the initial parameters have {} values; this visualization has {n} × {per} ({})",
                init.len(),
                if fourier { "half spectra" } else { "pixels" }
            )));
        }
        None => (0..n * per).map(|_| (rng.normal() * 0.01) as f32).collect(),
    };
    let (mut m, mut s) = (vec![0.0f32; params.len()], vec![0.0f32; params.len()]);
    let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let layer_shape = model.layers[v.layer].out_shape.clone();
    let (mut start, mut end) = (Vec::new(), Vec::new());
    let fill = (v.lower + v.upper) / 2.0;
    for step in 0..=v.steps {
        control.check()?;
        control.advance(usize::from(step > 0));
        let logits: Vec<Vec<f32>> = (0..n).map(|i| par.logits(&params[i * per..(i + 1) * per])).collect();
        let images: Vec<Vec<f32>> = logits.iter().map(|l| par.image(l)).collect();
        if step == v.steps {
            // The last pass only measures the objective of the final images.
            let inputs: Vec<Vec<f32>> = images.iter().map(|img| normalized(img, v.normalize)).collect();
            let (values, _) = objective(model, v, &inputs, &layer_shape, d, false)?;
            end = values;
            params = inputs.concat();
            break;
        }
        let warps: Vec<Option<Taps>> = (0..n)
            .map(|_| {
                v.transforms
                    .filter(|_| image_like)
                    .map(|t| Warp::draw(&mut rng, &t).taps(shape.1, shape.2))
            })
            .collect();
        let warped: Vec<Vec<f32>> = images
            .iter()
            .zip(&warps)
            .map(|(img, warp)| match warp {
                None => img.clone(),
                Some(taps) => warp_apply(taps, img, fill),
            })
            .map(|img| normalized(&img, v.normalize))
            .collect();
        let (values, mut g_input) = objective(model, v, &warped, &layer_shape, d, true)?;
        if let Some((_, std)) = v.normalize {
            // Through (x − mean) / std.
            let plane = d / 3;
            for (k, g) in g_input.iter_mut().enumerate() {
                *g /= std[(k % d) / plane.max(1)];
            }
        }
        if step == 0 {
            start = values;
        }
        // Back through the warp (its adjoint scatters) and the parameterisation; Adam on
        // the negated objective.
        let t = (step + 1) as i32;
        let (bc1, bc2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for i in 0..n {
            let g_warped = &g_input[i * d..(i + 1) * d];
            let g_image = match &warps[i] {
                None => g_warped.to_vec(),
                Some(taps) => warp_adjoint(taps, g_warped),
            };
            let g = par.adjoint(&logits[i], &g_image);
            let range = i * per..(i + 1) * per;
            for (((p, m), s), g) in params[range.clone()]
                .iter_mut()
                .zip(&mut m[range.clone()])
                .zip(&mut s[range])
                .zip(&g)
            {
                let g = -g;
                *m = beta1 * *m + (1.0 - beta1) * g;
                *s = beta2 * *s + (1.0 - beta2) * g * g;
                let denom = (*s).sqrt() / bc2.sqrt() + eps;
                *p -= v.lr / bc1 * *m / denom;
            }
        }
    }
    Ok(Rendered {
        images: params,
        start,
        end,
    })
}

/// Each image's objective, and (with `gradient`; the final measurement needs none) the
/// gradient of Σ objectives − the diversity penalty with respect to the (warped) inputs,
/// through the one gradient engine.
fn objective(
    model: &Model,
    v: &Visualization,
    images: &[Vec<f32>],
    layer_shape: &[usize],
    d: usize,
    gradient: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = images.len();
    let mut shape = vec![n];
    shape.extend_from_slice(&model.input_shape);
    let rows = Batch::new(shape, images.concat())?;
    let tape = model.run(
        rows,
        &Forward {
            from: 0,
            to: v.layer + 1,
            keep: gradient,
            hook: None,
        },
    )?;
    let out = tape.output();
    let units = out.sample_len();
    let channels = layer_shape.first().copied().unwrap_or(1);
    let positions = (units / channels.max(1)).max(1);
    let mut seed = Batch::zeros(out.shape().to_vec());
    let mut values = Vec::with_capacity(n);
    // Lucent's objectives average over the batch (which weighs them against diversity).
    let share = 1.0 / n as f32;
    for i in 0..n {
        let row = out.row(i);
        let g = seed.row_mut(i);
        let which = &v.objectives[if v.objectives.len() == n { i } else { 0 }];
        match *which {
            Objective::Channel(k) => {
                let plane = &row[k * positions..(k + 1) * positions];
                values.push(plane.iter().sum::<f32>() / positions as f32);
                g[k * positions..(k + 1) * positions]
                    .iter_mut()
                    .for_each(|x| *x = share / positions as f32);
            }
            Objective::Unit(k) | Objective::Class(k) => {
                values.push(row[k]);
                g[k] = share;
            }
        }
    }
    if !gradient {
        return Ok((values, Vec::new()));
    }
    if n > 1 && v.objectives.len() == 1 && v.diversity_weight > 0.0 {
        diversity_gradient(out, channels, positions, v.diversity_weight, &mut seed);
    }
    let g = model.backward(&tape, seed, &Gradient, &mut |_, _| {})?;
    debug_assert_eq!(g.data().len(), n * d);
    Ok((values, g.into_data()))
}

/// Adds the ascent direction of −w·(1/n)·Σ_{i≠j} ⟨G_i, G_j⟩ / (‖G_i‖‖G_j‖) (Lucid's
/// diversity: the Gram matrices G_i = F_i F_iᵀ of each image's channels × positions at
/// the layer, normalised) to `seed`.
fn diversity_gradient(out: &Batch, channels: usize, positions: usize, w: f32, seed: &mut Batch) {
    let n = out.rows();
    let c = channels;
    let grams: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let f = out.row(i);
            let mut g = vec![0.0f64; c * c];
            for a in 0..c {
                for b in a..c {
                    let s: f64 = (0..positions)
                        .map(|p| f[a * positions + p] as f64 * f[b * positions + p] as f64)
                        .sum();
                    g[a * c + b] = s;
                    g[b * c + a] = s;
                }
            }
            g
        })
        .collect();
    let norms: Vec<f64> = grams
        .iter()
        .map(|g| g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12))
        .collect();
    let normed: Vec<Vec<f64>> = grams
        .iter()
        .zip(&norms)
        .map(|(g, s)| g.iter().map(|v| v / s).collect())
        .collect();
    for i in 0..n {
        // ∂/∂N_i of the penalty (each pair counted from both sides), then through the
        // normalisation and G = F Fᵀ; the ascent direction is its negative.
        let a: Vec<f64> = (0..c * c)
            .map(|k| (0..n).filter(|&j| j != i).map(|j| normed[j][k]).sum::<f64>() * 2.0 * w as f64 / n as f64)
            .collect();
        let along: f64 = a.iter().zip(&normed[i]).map(|(x, y)| x * y).sum();
        let dg: Vec<f64> = a
            .iter()
            .zip(&normed[i])
            .map(|(x, y)| (x - y * along) / norms[i])
            .collect();
        let f = out.row(i).to_vec();
        let g = seed.row_mut(i);
        for a_ in 0..c {
            for p in 0..positions {
                let s: f64 = (0..c).map(|b| dg[a_ * c + b] * f[b * positions + p] as f64).sum();
                g[a_ * positions + p] -= (2.0 * s) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The adjoint of the Fourier parameterisation is its transpose: ⟨A p, g⟩ = ⟨p, Aᵀ g⟩.
    #[test]
    fn the_spectrum_adjoint_is_the_transpose() {
        for (h, w) in [(6, 6), (5, 7), (8, 4)] {
            let s = Spectrum::new(h, w);
            let mut rng = Rng::new(3, 0);
            let p: Vec<f32> = (0..s.params_per_plane()).map(|_| rng.normal() as f32).collect();
            let g: Vec<f32> = (0..h * w).map(|_| rng.normal() as f32).collect();
            let mut img = vec![0.0; h * w];
            s.image(&p, &mut img);
            let mut back = vec![0.0; p.len()];
            s.adjoint(&g, &mut back);
            let lhs: f64 = img.iter().zip(&g).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            let rhs: f64 = p.iter().zip(&back).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            assert!((lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0), "{h}×{w}: {lhs} vs {rhs}");
        }
    }

    /// The warp's adjoint is its transpose (fill 0: the warp is then linear), and a
    /// warp of no shift, scale 1 and angle 0 is the identity.
    #[test]
    fn the_warp_adjoint_is_the_transpose() {
        let mut rng = Rng::new(5, 0);
        let (c, h, w) = (3, 9, 11);
        for _ in 0..5 {
            let taps = Warp::draw(&mut rng, &Transforms::default()).taps(h, w);
            let x: Vec<f32> = (0..c * h * w).map(|_| rng.normal() as f32).collect();
            let g: Vec<f32> = (0..c * h * w).map(|_| rng.normal() as f32).collect();
            let lhs: f64 = warp_apply(&taps, &x, 0.0)
                .iter()
                .zip(&g)
                .map(|(a, b)| (*a * *b) as f64)
                .sum();
            let rhs: f64 = x
                .iter()
                .zip(warp_adjoint(&taps, &g))
                .map(|(a, b)| (*a * b) as f64)
                .sum();
            assert!((lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
        }
        let still = Warp {
            dy: 0.0,
            dx: 0.0,
            scale: 1.0,
            angle: 0.0,
        };
        let x: Vec<f32> = (0..h * w).map(|i| i as f32).collect();
        let y = warp_apply(&still.taps(h, w), &x, 0.5);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5), "{y:?}");
    }

    /// The diversity direction is minus the gradient of (w/n)·Σ_{i≠j} ⟨N_i, N_j⟩
    /// (central differences in f64 on the penalty).
    #[test]
    fn the_diversity_direction_is_the_penalty_gradient() {
        let (n, c, p, w) = (3, 4, 5, 2.0f32);
        let mut rng = Rng::new(9, 0);
        let acts: Vec<f32> = (0..n * c * p).map(|_| rng.normal() as f32).collect();
        let penalty = |a: &[f64]| {
            let grams: Vec<Vec<f64>> = a
                .chunks(c * p)
                .map(|f| {
                    let mut g = vec![0.0; c * c];
                    for x in 0..c {
                        for y in 0..c {
                            g[x * c + y] = (0..p).map(|k| f[x * p + k] * f[y * p + k]).sum();
                        }
                    }
                    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
                    g.iter().map(|v| v / norm).collect()
                })
                .collect();
            let mut total = 0.0;
            for i in 0..n {
                for j in 0..n {
                    if i != j {
                        total += grams[i].iter().zip(&grams[j]).map(|(a, b)| a * b).sum::<f64>();
                    }
                }
            }
            total * w as f64 / n as f64
        };
        let out = Batch::new(vec![n, c, p], acts.clone()).unwrap();
        let mut seed = Batch::zeros(vec![n, c, p]);
        diversity_gradient(&out, c, p, w, &mut seed);
        let base: Vec<f64> = acts.iter().map(|&v| v as f64).collect();
        for k in [0, 7, 23, 41, 59] {
            let h = 1e-5;
            let (mut up, mut down) = (base.clone(), base.clone());
            up[k] += h;
            down[k] -= h;
            let numeric = (penalty(&up) - penalty(&down)) / (2.0 * h);
            let analytic = -seed.data()[k] as f64;
            assert!(
                (numeric - analytic).abs() < 1e-4 * numeric.abs().max(1.0),
                "{k}: {numeric} vs {analytic}"
            );
        }
    }

    /// A DC-only spectrum is a flat image of value X·scale/√(hw)/4.
    #[test]
    fn a_dc_spectrum_is_flat() {
        let s = Spectrum::new(4, 4);
        let mut p = vec![0.0; s.params_per_plane()];
        p[0] = 1.0;
        let mut img = vec![0.0; 16];
        s.image(&p, &mut img);
        // scale at f = 0 is 1 / (1/4) = 4: 4 / 4 / 4 = 0.25.
        assert!(img.iter().all(|v| (v - 0.25).abs() < 1e-6), "{img:?}");
    }
}
