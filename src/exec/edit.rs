//! Input edits of dataset expressions (`d WITH SET … = v`, `WITH MASK …`,
//! `WITH NOISE(stdev, seed)`, `WITH BLUR(sigma)`): the selected inputs are copied, edited in
//! order, and keep their input ids and labels, so results line up with the originals.

use std::sync::Arc;

use super::interpret::features;
use crate::data::{Modality, Selection};
use crate::error::{Error, Result};
use crate::ops::rng::Rng;
use crate::plan::{EditSpec, GranularitySpec};

/// The selection with `edits` applied (itself when there are none).
pub(super) fn apply(sel: Selection, edits: &[EditSpec], source: &str) -> Result<Selection> {
    // Activation edits belong to the model's run (exec::bind_edited_models).
    let edits: Vec<&EditSpec> = edits.iter().filter(|e| !matches!(e, EditSpec::Layer(_))).collect();
    if edits.is_empty() {
        return Ok(sel);
    }
    let mut ds = sel.dataset.subset(&sel.dataset.name, source, &sel.rows)?;
    let d = ds.sample_len();
    for edit in edits {
        match edit {
            EditSpec::Layer(_) => {}
            EditSpec::Set { window, .. } | EditSpec::Mask { window } => {
                let value = match edit {
                    EditSpec::Set { value, .. } => *value,
                    _ => 0.0,
                };
                let f = features(window, &GranularitySpec::Feature, &ds.modality, d)?;
                let inside: Vec<usize> = (0..d).filter(|&k| f.in_window(k)).collect();
                ds.edit_rows(|_, row| inside.iter().for_each(|&k| row[k] = value))?;
            }
            EditSpec::Noise { stdev, seed } => ds.edit_rows(|id, row| {
                let mut rng = Rng::new(*seed, id as u64);
                for v in row {
                    *v += (rng.normal() * *stdev as f64) as f32;
                }
            })?,
            EditSpec::Blur { sigma } => {
                let Modality::Image {
                    channels,
                    height,
                    width,
                } = ds.modality
                else {
                    return Err(Error::value("BLUR applies to images"));
                };
                ds.edit_rows(|_, row| blur_image(row, channels, height, width, *sigma))?;
            }
        }
    }
    Ok(Selection::all(Arc::new(ds)))
}

/// One image row (channels × height × width) blurred in place, as `WITH BLUR(σ)` does.
pub(super) fn blur_image(row: &mut [f32], channels: usize, height: usize, width: usize, sigma: f32) {
    let kernel = gaussian(sigma);
    for c in 0..channels {
        blur_plane(
            &mut row[c * height * width..(c + 1) * height * width],
            height,
            width,
            &kernel,
        );
    }
}

/// A normalised Gaussian kernel of radius ⌈3σ⌉.
fn gaussian(sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as i64;
    let w: Vec<f32> = (-radius..=radius)
        .map(|x| (-(x * x) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = w.iter().sum();
    w.into_iter().map(|v| v / total).collect()
}

/// Index `i` reflected into 0..n (mirror without repeating the edge, as torchvision's
/// gaussian_blur pads).
fn reflect(mut i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    i = i.rem_euclid(period);
    (if i >= n { period - i } else { i }) as usize
}

/// Separable blur of one plane: rows, then columns.
fn blur_plane(plane: &mut [f32], h: usize, w: usize, kernel: &[f32]) {
    let r = (kernel.len() / 2) as i64;
    let mut tmp = vec![0.0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, wk)| wk * plane[y * w + reflect(x as i64 + k as i64 - r, w as i64)])
                .sum();
        }
    }
    for y in 0..h {
        for x in 0..w {
            plane[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, wk)| wk * tmp[reflect(y as i64 + k as i64 - r, h as i64) * w + x])
                .sum();
        }
    }
}
