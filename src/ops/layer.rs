//! Methods that look inside the model at a hook point: the layer methods of AT LAYER l
//! (Captum's LayerGradCam, LayerActivation, LayerGradientXActivation, LayerConductance,
//! LayerIntegratedGradients), NeuronConductance for `TARGET l[i]`, and GuidedGradCam. All
//! of them split the model at the hook point: the head (layers 0..=l) gives the layer's
//! activation, the tail (layers l+1..) run from an activation gives the target's gradient
//! there. Running the tail from a given activation is overwriting the hook point, so
//! layer integrated gradients interpolates the layer's output itself, as Captum does.

use super::cam::{self, CamKind};
use super::gradient::{argmax, batch_shape, gradients_from, one_hot, par_items, tile_rows, zero_outside_window};
use super::integrated::{Chunks, integrate, path};
use super::rules::DeepLift;
use super::{KeptTapes, Method, Request, Rule};
use crate::error::{Error, Result};
use crate::model::{Batch, Forward, Gradient, Model};

/// A layer method's result for n inputs.
#[derive(Debug)]
pub struct LayerAttribution {
    /// Per input, one value per unit of `shape` (n × product(shape)).
    pub values: Vec<f32>,
    /// The layer's activation at each unit, when a unit is one of the layer's own
    /// (not for a channel-summed or upsampled Grad-CAM map).
    pub activations: Option<Vec<f32>>,
    /// One input's result: the layer's output shape, or (1, h, w) for a Grad-CAM map,
    /// (1, H, W) when upsampled to the input.
    pub shape: Vec<usize>,
}

/// The activation of `layer` on model inputs.
fn head(model: &Model, rows: Batch, layer: usize) -> Result<Batch> {
    model.output_of(rows, layer)
}

/// The gradient of each row's target with respect to the activation `h` of `layer`;
/// `context`: the model inputs the rows stand for (see `Model::run_in`).
fn tail_gradient(req: &Request, h: Batch, layer: usize, targets: &[usize], context: &Batch) -> Result<Batch> {
    gradients_from(
        req.model,
        h,
        (layer + 1, Some(context)),
        req.out_layer,
        targets,
        &Gradient,
    )
}

fn rows_of(req: &Request, data: &[f32], count: usize) -> Result<Batch> {
    Batch::new(batch_shape(count, &req.model.input_shape), data.to_vec())
}

pub fn attribute(method: &Method, req: &Request) -> Result<LayerAttribution> {
    let layer = req
        .layer
        .ok_or_else(|| Error::value(format!("{} needs AT LAYER l", method.name())))?;
    let model = req.model;
    let out_shape = model.layers[layer].out_shape.clone();
    let units: usize = out_shape.iter().product();
    let (n, d) = (req.n(), req.d());
    match method {
        Method::LayerActivation | Method::LayerGradientXActivation | Method::GradCam { .. } | Method::Cam { .. } => {
            // A vision transformer's tokens, laid out on their patch grid for the CAM
            // family (pytorch-grad-cam's reshape_transform).
            let grid = match method {
                Method::Cam { .. } if req.features.image.is_some() => TokenGrid::of(&out_shape),
                _ => None,
            };
            let map_shape = grid.map_or_else(|| out_shape.clone(), |g| vec![g.dim, g.side, g.side]);
            if let (Some(_), Method::Cam { kind, .. }) = (grid, method)
                && (kind.perturbs() || *kind == CamKind::Cam)
            {
                return Err(Error::value(format!(
                    "{} on a transformer's tokens (`{}`) is not supported: it masks or ablates channels of a convolutional map",
                    kind.name(),
                    model.layers[layer].name
                ))
                .hint("use gradcam_plus_plus, xgradcam, hirescam, layercam, eigencam or eigengradcam, which lay the tokens out on their grid"));
            }
            if let Method::Cam { kind, .. } = method {
                let planes = out_shape.len() == 3 || (out_shape.len() == 2 && model.is_sequence()) || grid.is_some();
                if !planes {
                    return Err(Error::value(format!(
                        "{} weighs the channels of a layer's map: `{}` has shape {}, not channels × rows × columns",
                        kind.name(),
                        model.layers[layer].name,
                        crate::data::fmt_shape(&out_shape)
                    ))
                    .hint("pick a convolutional layer; a transformer's tokens would first have to be laid out on their grid"));
                }
            }
            // CAM reads the head's weights for each target (and refuses other models).
            let class_weights = match method {
                Method::Cam { kind: CamKind::Cam, .. } => Some(cam::head_weights(model, layer, req.out_layer)?),
                _ => None,
            };
            // Passes an earlier query kept give the tiles; else tiles of the batch budget.
            let kept = req
                .kept
                .filter(|k| *method != Method::LayerActivation && k.covers(layer, n) && k.end() == req.out_layer + 1);
            let bounds: Vec<(usize, usize)> = match kept {
                Some(k) => k
                    .tapes
                    .iter()
                    .scan(0, |a, t| {
                        *a += t.rows();
                        Some((*a - t.rows(), *a))
                    })
                    .collect(),
                None => {
                    let tile = tile_rows(req.batch_rows, n);
                    (0..n.div_ceil(tile))
                        .map(|t| (t * tile, ((t + 1) * tile).min(n)))
                        .collect()
                }
            };
            let per_tile = par_items(
                bounds.len(),
                req.control,
                |t| bounds[t].1 - bounds[t].0,
                |t| {
                    let (a, b) = bounds[t];
                    let inputs = rows_of(req, &req.inputs[a * d..b * d], b - a)?;
                    let mut fresh = None;
                    let tape: &crate::model::Tape = match kept {
                        Some(k) => &k.tapes[t],
                        None => {
                            let h = match req.layer_values {
                                Some(v) => {
                                    Batch::new(batch_shape(b - a, &out_shape), v[a * units..b * units].to_vec())?
                                }
                                None => head(model, inputs.clone(), layer)?,
                            };
                            if *method == Method::LayerActivation {
                                return Ok((h.data().to_vec(), h.into_data(), Vec::new(), None));
                            }
                            // The tail from the layer, kept for the backward (and for the
                            // next query on these inputs, when the caller keeps it).
                            let fwd = Forward {
                                from: layer + 1,
                                to: req.out_layer + 1,
                                keep: true,
                                hook: None,
                            };
                            fresh.insert(model.run_in(h, &fwd, Some(&inputs))?)
                        }
                    };
                    let h = tape
                        .at_hook(layer)
                        .ok_or_else(|| Error::model("internal: a kept pass without its layer's value"))?;
                    let output = tape.output();
                    let (targets, outputs) = match req.predicted {
                        Some(_) => (
                            (0..output.rows()).map(|r| argmax(output.row(r))).collect(),
                            output.data().to_vec(),
                        ),
                        None => (req.targets[a..b].to_vec(), Vec::new()),
                    };
                    let values = match method {
                        Method::Cam { kind, .. } if kind.perturbs() => {
                            let (channels, _, _) = spatial(&out_shape);
                            let mut maps = Vec::with_capacity((b - a) * units / channels.max(1));
                            for (r, &target) in targets.iter().enumerate() {
                                let act = &h.data()[r * units..(r + 1) * units];
                                let score = output.row(r).get(target).copied().ok_or_else(|| {
                                    Error::value(format!("target {target} is out of range of the model's outputs"))
                                })?;
                                let w = cam::perturbed_weights(*kind, req, inputs.row(r), act, layer, target, score)?;
                                maps.extend(cam::map(*kind, act, &[], channels, Some(&w)));
                            }
                            maps
                        }
                        Method::Cam { kind, .. } if !kind.uses_gradient() => {
                            let h = TokenGrid::lay_out(grid, h.data(), units);
                            cam_maps(*kind, &h, &[], &targets, &map_shape, class_weights.as_deref())?
                        }
                        _ => {
                            let g = model.gradient_at(tape, one_hot(output, &targets)?, &Gradient, layer)?;
                            match method {
                                Method::GradCam { per_channel, relu, .. } => {
                                    gradcam(h.data(), g.data(), b - a, &out_shape, *per_channel, *relu)
                                }
                                Method::Cam { kind, .. } => {
                                    let (h, g) = (
                                        TokenGrid::lay_out(grid, h.data(), units),
                                        TokenGrid::lay_out(grid, g.data(), units),
                                    );
                                    cam_maps(*kind, &h, &g, &targets, &map_shape, None)?
                                }
                                _ => h.data().iter().zip(g.data()).map(|(h, g)| h * g).collect(),
                            }
                        }
                    };
                    let acts = h.data().to_vec();
                    Ok((values, acts, outputs, fresh.take()))
                },
            )?;
            let (mut values, mut acts, mut outputs, mut tapes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (v, a, o, tape) in per_tile {
                values.extend(v);
                acts.extend(a);
                outputs.extend(o);
                tapes.extend(tape);
            }
            if let Some(sink) = req.keep
                && tapes.len() == bounds.len()
            {
                sink.put(KeptTapes { tapes });
            }
            if let Some(sink) = req.predicted {
                sink.put(outputs);
            }
            let map_options = match method {
                Method::GradCam {
                    per_channel,
                    upsample,
                    bilinear,
                    ..
                } => Some((*per_channel, *upsample, *bilinear)),
                Method::Cam {
                    normalize,
                    upsample,
                    bilinear,
                    ..
                } => {
                    if *normalize {
                        let per = values.len() / n.max(1);
                        values.chunks_mut(per.max(1)).for_each(cam::normalize);
                    }
                    Some((false, *upsample, *bilinear))
                }
                _ => None,
            };
            match map_options {
                Some((per_channel, upsample, bilinear)) => {
                    let (channels, h, w) = spatial(&map_shape);
                    let shown = if per_channel { channels } else { 1 };
                    if upsample {
                        let (_, hh, ww) = input_image(req)?;
                        if map_shape.len() != 3 {
                            return Err(Error::value(format!(
                                "upsample needs a layer with rows and columns; `{}` has shape {}",
                                model.layers[layer].name,
                                crate::data::fmt_shape(&out_shape)
                            )));
                        }
                        let per = shown * h * w;
                        let values = (0..n)
                            .flat_map(|i| {
                                interpolate(&values[i * per..(i + 1) * per], shown, (h, w), (hh, ww), bilinear)
                            })
                            .collect();
                        return Ok(LayerAttribution {
                            values,
                            activations: None,
                            shape: vec![shown, hh, ww],
                        });
                    }
                    let shape = gradcam_shape(&map_shape, per_channel);
                    Ok(LayerAttribution {
                        values,
                        activations: per_channel.then_some(acts),
                        shape,
                    })
                }
                None => Ok(LayerAttribution {
                    values,
                    activations: Some(acts),
                    shape: out_shape,
                }),
            }
        }
        Method::LayerConductance { steps } => {
            // Captum: steps + 1 Gauss–Legendre points, and Σ_k ∂F/∂h(α_k) · (h(α_{k+1}) − h(α_k)).
            let (alphas, _) = Rule::GaussLegendre.points(steps + 1);
            let chunk = req.batch_rows.max(1);
            let per_input = par_items(
                n,
                req.control,
                |_| 0,
                |i| {
                    let (x, b) = (req.input(i), req.baseline(i));
                    let mut total = vec![0.0f32; units];
                    let mut previous: Option<(Vec<f32>, Vec<f32>)> = None;
                    let mut start = 0;
                    while start < alphas.len() {
                        let end = (start + chunk).min(alphas.len());
                        let rows = rows_of(req, &path(b, x, &alphas[start..end]), end - start)?;
                        let h = head(model, rows.clone(), layer)?;
                        let g = tail_gradient(req, h.clone(), layer, &vec![req.targets[i]; end - start], &rows)?;
                        for k in 0..end - start {
                            let (hk, gk) = (h.row(k), g.row(k));
                            if let Some((hp, gp)) = &previous {
                                for u in 0..units {
                                    total[u] += gp[u] * (hk[u] - hp[u]);
                                }
                            }
                            previous = Some((hk.to_vec(), gk.to_vec()));
                        }
                        req.control.advance(end - start);
                        req.control.check()?;
                        start = end;
                    }
                    Ok(total)
                },
            )?;
            let activations = match req.layer_values {
                Some(v) => v.to_vec(),
                None => head(model, rows_of(req, req.inputs, n)?, layer)?.into_data(),
            };
            Ok(LayerAttribution {
                values: per_input.concat(),
                activations: Some(activations),
                shape: out_shape,
            })
        }
        Method::LayerIntegratedGradients { steps, rule } => {
            let (alphas, weights) = rule.points(*steps);
            let chunks = Chunks::new(req.batch_rows, n);
            let hx = match req.layer_values {
                Some(v) => Batch::new(batch_shape(n, &out_shape), v.to_vec())?,
                None => head(model, rows_of(req, req.inputs, n)?, layer)?,
            };
            let hb = head(model, rows_of(req, req.baselines, n)?, layer)?;
            let per_input = par_items(
                n,
                req.control,
                |_| 0,
                |i| {
                    let target = req.targets[i];
                    let input = rows_of(req, req.input(i), 1)?;
                    // The hook point is overwritten with the interpolated activations.
                    integrate(
                        hx.row(i),
                        hb.row(i),
                        &alphas,
                        &weights,
                        chunks,
                        req.control,
                        &|points, count| {
                            let h = Batch::new(batch_shape(count, &out_shape), points)?;
                            tail_gradient(req, h, layer, &vec![target; count], &input)
                        },
                    )
                },
            )?;
            Ok(LayerAttribution {
                values: per_input.concat(),
                activations: Some(hx.into_data()),
                shape: out_shape,
            })
        }
        Method::LayerDeepLift => rule_at_layer(req, layer, out_shape, |a, b, tape, fwd| {
            let reference = model.run(rows_of(req, &req.baselines[a * d..b * d], b - a)?, fwd)?;
            let rule = DeepLift { reference: &reference };
            let seed = one_hot(tape.output(), &req.targets[a..b])?;
            let multipliers = model.gradient_at(tape, seed, &rule, layer)?;
            let hx = at_layer(tape, layer)?;
            let hb = at_layer(&reference, layer)?;
            Ok(multipliers
                .data()
                .iter()
                .zip(hx.iter().zip(hb))
                .map(|(m, (x, b))| m * (x - b))
                .collect())
        }),
        Method::LayerLrp { spec } => {
            let lrp = spec.backward_rule(&model.layers);
            rule_at_layer(req, layer, out_shape, |a, b, tape, _| {
                let seed = spec.seed(tape.output(), &req.targets[a..b])?;
                Ok(model.gradient_at(tape, seed, lrp.as_ref(), layer)?.into_data())
            })
        }
        Method::LayerGradientShap { samples, stdev, seed } => {
            let values = super::shap::layer_gradient_shap(req, layer, units, (*samples, *stdev, *seed))?;
            let activations = match req.layer_values {
                Some(v) => v.to_vec(),
                None => head(model, rows_of(req, req.inputs, n)?, layer)?.into_data(),
            };
            Ok(LayerAttribution {
                values,
                activations: Some(activations),
                shape: out_shape,
            })
        }
        other => Err(Error::value(format!(
            "{} does not attribute the units of a layer",
            other.name()
        ))),
    }
}

/// A layer method computed from a kept forward pass of each tile of inputs: `work(a, b,
/// pass, forward)` gives the values of inputs a..b at the layer; the activations come
/// from the pass.
fn rule_at_layer(
    req: &Request,
    layer: usize,
    out_shape: Vec<usize>,
    work: impl Fn(usize, usize, &crate::model::Tape, &Forward) -> Result<Vec<f32>> + Sync,
) -> Result<LayerAttribution> {
    let (n, d) = (req.n(), req.d());
    let tile = tile_rows(req.batch_rows, n);
    let fwd = Forward {
        from: 0,
        to: req.out_layer + 1,
        keep: true,
        hook: None,
    };
    let per_tile = par_items(
        n.div_ceil(tile),
        req.control,
        |t| tile.min(n - t * tile),
        |t| {
            let (a, b) = (t * tile, ((t + 1) * tile).min(n));
            let tape = req.model.run(rows_of(req, &req.inputs[a * d..b * d], b - a)?, &fwd)?;
            Ok((work(a, b, &tape, &fwd)?, at_layer(&tape, layer)?.to_vec()))
        },
    )?;
    let (values, acts): (Vec<Vec<f32>>, Vec<Vec<f32>>) = per_tile.into_iter().unzip();
    Ok(LayerAttribution {
        values: values.concat(),
        activations: Some(acts.concat()),
        shape: out_shape,
    })
}

/// A kept pass's value at hook point `layer`.
fn at_layer(tape: &crate::model::Tape, layer: usize) -> Result<&[f32]> {
    tape.at_hook(layer)
        .map(|b| b.data())
        .ok_or_else(|| Error::model("internal: a kept pass without its layer's value"))
}

/// A layer's output shape as (channels, rows, cols); a dense layer is (units, 1, 1).
/// A transformer layer's tokens [tokens, dim] that are a square grid of patches after
/// `skip` leading tokens (0: none, as Swin; 1: a class token, as ViT; 2: class and
/// distillation tokens, as DeiT).
#[derive(Clone, Copy, Debug)]
struct TokenGrid {
    skip: usize,
    side: usize,
    dim: usize,
}

impl TokenGrid {
    fn of(shape: &[usize]) -> Option<TokenGrid> {
        let [tokens, dim] = *shape else { return None };
        (0..=2usize.min(tokens.saturating_sub(1))).find_map(|skip| {
            let n = tokens - skip;
            let side = (n as f64).sqrt().round() as usize;
            (side >= 2 && side * side == n).then_some(TokenGrid { skip, side, dim })
        })
    }

    /// Rows of `per` values ([tokens, dim]) as [dim, side, side] without the skipped
    /// tokens (pytorch-grad-cam's ViT reshape_transform); rows as they are without a grid.
    fn lay_out(grid: Option<TokenGrid>, values: &[f32], per: usize) -> std::borrow::Cow<'_, [f32]> {
        let Some(g) = grid else {
            return std::borrow::Cow::Borrowed(values);
        };
        let cells = g.side * g.side;
        let mut out = Vec::with_capacity(values.len() / per * g.dim * cells);
        for row in values.chunks(per) {
            for d in 0..g.dim {
                out.extend((0..cells).map(|t| row[(g.skip + t) * g.dim + d]));
            }
        }
        std::borrow::Cow::Owned(out)
    }
}

/// The shape the CAM family maps at a layer of output `shape`: a transformer's tokens on
/// their patch grid [dim, side, side] when the model reads images, else the layer's.
pub fn cam_map_shape(shape: &[usize], image_input: bool) -> Vec<usize> {
    match TokenGrid::of(shape) {
        Some(g) if image_input => vec![g.dim, g.side, g.side],
        _ => shape.to_vec(),
    }
}

fn spatial(shape: &[usize]) -> (usize, usize, usize) {
    match shape {
        [c, h, w] => (*c, *h, *w),
        [c] => (*c, 1, 1),
        [c, rest @ ..] => (*c, rest.iter().product(), 1),
        [] => (1, 1, 1),
    }
}

/// The shape of one input's Grad-CAM map at a layer of output shape `out_shape`: the
/// channel axis (the first) summed away, or kept with `per_channel`. As Captum, a layer
/// without positions (a dense layer) gives one value.
pub fn gradcam_shape(out_shape: &[usize], per_channel: bool) -> Vec<usize> {
    match out_shape {
        [c, rest @ ..] if !rest.is_empty() => {
            let mut shape = vec![if per_channel { *c } else { 1 }];
            shape.extend_from_slice(rest);
            shape
        }
        _ if per_channel => out_shape.to_vec(),
        _ => vec![1],
    }
}

/// The CAM family's map of each row (one map of the layer's positions per row):
/// activations `h`, gradients `g` (empty when the kind reads none), the rows' targets,
/// and the head's weights for CAM.
fn cam_maps(
    kind: CamKind,
    h: &[f32],
    g: &[f32],
    targets: &[usize],
    shape: &[usize],
    head: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let (channels, _, _) = spatial(shape);
    let per: usize = shape.iter().product();
    let mut out = Vec::with_capacity(h.len() / channels.max(1));
    for (i, &target) in targets.iter().enumerate() {
        let a = &h[i * per..(i + 1) * per];
        let gi = g.get(i * per..(i + 1) * per).unwrap_or(&[]);
        let weights = match head {
            Some(w) => Some(
                w.get(target * channels..(target + 1) * channels)
                    .ok_or_else(|| Error::value(format!("target {target} is out of range of the linear head")))?,
            ),
            None => None,
        };
        out.extend(cam::map(kind, a, gi, channels, weights));
    }
    Ok(out)
}

/// Captum's LayerGradCam for `n` rows: channel weights α_c = the mean over positions of
/// ∂F/∂A_c, map = Σ_c α_c A_c (or each α_c A_c with `per_channel`), then ReLU if asked.
/// A dense layer has no positions: α is the gradient itself.
fn gradcam(h: &[f32], g: &[f32], n: usize, shape: &[usize], per_channel: bool, relu: bool) -> Vec<f32> {
    let (channels, rows, cols) = spatial(shape);
    let positions = rows * cols;
    let per = channels * positions;
    let mut out = Vec::with_capacity(n * if per_channel { per } else { positions });
    for i in 0..n {
        let (hi, gi) = (&h[i * per..(i + 1) * per], &g[i * per..(i + 1) * per]);
        let alpha: Vec<f32> = (0..channels)
            .map(|c| gi[c * positions..(c + 1) * positions].iter().sum::<f32>() / positions as f32)
            .collect();
        if per_channel {
            for c in 0..channels {
                out.extend(hi[c * positions..(c + 1) * positions].iter().map(|a| alpha[c] * a));
            }
        } else {
            // Channel by channel over all positions (contiguous, so it vectorizes); each
            // position still sums its channels in order.
            let map = out.len();
            out.resize(map + positions, 0.0);
            for (c, a) in alpha.iter().enumerate() {
                for (o, h) in out[map..].iter_mut().zip(&hi[c * positions..(c + 1) * positions]) {
                    *o += a * h;
                }
            }
        }
    }
    if relu {
        out.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    out
}

/// The input's image layout, for maps brought to input resolution.
fn input_image(req: &Request) -> Result<(usize, usize, usize)> {
    match req.features.image {
        Some((chw, _)) => Ok(chw),
        None => Err(Error::value("upsampling to the input needs image inputs")),
    }
}

/// PyTorch's F.interpolate of `maps` (planes of `from` = (h, w)) to `to` = (H, W):
/// mode 'nearest' (LayerAttribution.interpolate's default), or 'bilinear' with
/// align_corners = False.
pub fn interpolate(maps: &[f32], planes: usize, from: (usize, usize), to: (usize, usize), bilinear: bool) -> Vec<f32> {
    let ((h, w), (hh, ww)) = (from, to);
    let (sy, sx) = (h as f32 / hh as f32, w as f32 / ww as f32);
    // The source position and its two neighbours with weights, per output index.
    let axis = |out: usize, len: usize, scale: f32| -> (usize, usize, f32) {
        if bilinear {
            let src = ((out as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(len - 1);
            let i1 = if i0 < len - 1 { i0 + 1 } else { i0 };
            (i0, i1, src - i0 as f32)
        } else {
            (((out as f32 * scale).floor() as usize).min(len - 1), 0, 0.0)
        }
    };
    let mut out = Vec::with_capacity(planes * hh * ww);
    for p in 0..planes {
        let plane = &maps[p * h * w..(p + 1) * h * w];
        for r in 0..hh {
            let (r0, r1, lr) = axis(r, h, sy);
            for c in 0..ww {
                let (c0, c1, lc) = axis(c, w, sx);
                out.push(if bilinear {
                    (1.0 - lr) * ((1.0 - lc) * plane[r0 * w + c0] + lc * plane[r0 * w + c1])
                        + lr * ((1.0 - lc) * plane[r1 * w + c0] + lc * plane[r1 * w + c1])
                } else {
                    plane[r0 * w + c0]
                });
            }
        }
    }
    out
}

/// Captum's NeuronConductance: (x − b) · Σ_k w_k · ∂F_t/∂h_u(α_k) · ∂h_u/∂x(α_k), for the
/// unit u of layer l in `req.neuron` and the class targets of `req`.
pub fn neuron_conductance(steps: usize, rule: Rule, req: &Request) -> Result<Vec<f32>> {
    let (layer, unit) = req
        .neuron
        .ok_or_else(|| Error::value("neuron_conductance needs TARGET l[i]"))?;
    let model = req.model;
    let (alphas, weights) = rule.points(steps);
    let chunks = Chunks::new(req.batch_rows, req.n());
    let per_input = par_items(
        req.n(),
        req.control,
        |_| 0,
        |i| {
            let target = req.targets[i];
            let (x, b) = (req.input(i), req.baseline(i));
            integrate(x, b, &alphas, &weights, chunks, req.control, &|points, count| {
                let fwd = Forward {
                    from: 0,
                    to: layer + 1,
                    keep: true,
                    hook: None,
                };
                let rows = rows_of(req, &points, count)?;
                let tape = model.run(rows.clone(), &fwd)?;
                let g = tail_gradient(req, tape.output().clone(), layer, &vec![target; count], &rows)?;
                // Seed the head's backward with ∂F/∂h_u at unit u alone.
                let mut seed = Batch::zeros(g.shape().to_vec());
                for k in 0..count {
                    seed.row_mut(k)[unit] = g.row(k)[unit];
                }
                model.backward(&tape, seed, &Gradient, &mut |_, _| {})
            })
        },
    )?;
    let mut out = per_input.concat();
    zero_outside_window(&mut out, req);
    Ok(out)
}

/// Captum's GuidedGradCam: guided backprop times the layer's Grad-CAM map (with ReLU),
/// upsampled to the input by 'nearest' and shared by every input channel.
pub fn guided_gradcam(req: &Request) -> Result<Vec<f32>> {
    let guided = super::gradient::attribute(&Method::GuidedBackprop, req)?;
    let cam = attribute(
        &Method::GradCam {
            relu: true,
            upsample: true,
            per_channel: false,
            bilinear: false,
        },
        req,
    )?;
    let (channels, h, w) = input_image(req)?;
    let plane = h * w;
    let d = req.d();
    Ok(guided
        .iter()
        .enumerate()
        .map(|(k, g)| {
            let (i, f) = (k / d, k % d);
            debug_assert!(f / plane < channels);
            g * cam.values[i * plane + f % plane]
        })
        .collect())
}
