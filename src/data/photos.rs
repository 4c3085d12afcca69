//! Photos as a dataset, the way torchvision's `ImageFolder` and transforms give them: a
//! folder of class folders (classes sorted by name, files sorted within a class, labels =
//! class indices), a folder of photos, one file, or a glob; each photo decoded and made
//! RGB as PIL's `convert('RGB')` does, then `Resize(n)` (shorter side to n, bilinear with
//! antialiasing, as Pillow), `CenterCrop(n)`, `ToTensor` and `Normalize`.

use std::path::{Path, PathBuf};

use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer, images::Image};

use super::{Dataset, Modality};
use crate::error::{Error, Result};
use crate::syntax::ast::{Images, Normalize};

/// torchvision's IMG_EXTENSIONS that the decoders here read.
const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp"];

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The normalisation a photo dataset was made with, to show a row as the photo it came
/// from (its files, classes and transforms are in the dataset's source and classes).
#[derive(Debug)]
pub struct Photos {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Photos {
    /// A row's values back in [0, 1] (the photo after Resize and CenterCrop), CHW.
    pub fn denormalize(&self, row: &[f32]) -> Vec<f32> {
        let plane = row.len() / 3;
        row.iter()
            .enumerate()
            .map(|(i, v)| {
                let c = (i / plane.max(1)).min(2);
                (v * self.std[c] + self.mean[c]).clamp(0.0, 1.0)
            })
            .collect()
    }
}

/// Loads the photos at `path` (a folder of class folders, a folder, a file or a glob).
pub fn load(name: &str, path: &Path, spec: &Images) -> Result<Dataset> {
    let shown = path.display().to_string();
    let (files, labels, classes) = list(path)?;
    if files.is_empty() {
        return Err(Error::data(format!(
            "{shown} holds no photos ({})",
            EXTENSIONS.join(", ")
        )));
    }
    let (mean, std) = match &spec.normalize {
        None => ([0.0; 3], [1.0; 3]),
        Some(Normalize::Imagenet) => (IMAGENET_MEAN, IMAGENET_STD),
        Some(Normalize::MeanStd(m, s)) => (m.map(|v| v as f32), s.map(|v| v as f32)),
    };
    let mut values = Vec::new();
    let mut size: Option<(usize, usize, PathBuf)> = None;
    for file in &files {
        let (w, h, rgb) = prepare(file, spec)?;
        match &size {
            None => size = Some((w, h, file.clone())),
            Some((w0, h0, first)) if (*w0, *h0) != (w, h) => {
                return Err(Error::shape(format!(
                    "{} is {w}×{h} after preprocessing but {} is {w0}×{h0}: photos of one dataset must end the same size",
                    file.display(),
                    first.display()
                ))
                .hint("give RESIZE n CROP n to bring every photo to n×n"));
            }
            Some(_) => {}
        }
        // ToTensor (CHW in [0, 1]) and Normalize.
        let plane = w * h;
        let start = values.len();
        values.resize(start + 3 * plane, 0.0);
        for (p, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                values[start + c * plane + p] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
            }
        }
    }
    let (w, h, _) = size.ok_or_else(|| Error::data(format!("{shown} holds no photos")))?;
    let mut transforms = Vec::new();
    if let Some(n) = spec.resize {
        transforms.push(format!("Resize({n})"));
    }
    if let Some(n) = spec.crop {
        transforms.push(format!("CenterCrop({n})"));
    }
    transforms.push("ToTensor()".into());
    if spec.normalize.is_some() {
        let f = |v: [f32; 3]| format!("({}, {}, {})", v[0], v[1], v[2]);
        transforms.push(format!("Normalize({}, {})", f(mean), f(std)));
    }
    let transforms = transforms.join(", ");
    let source = if classes.is_empty() {
        format!("{shown} ({} photos; {transforms})", files.len())
    } else {
        format!(
            "{shown} ({} photos of {} classes: {}; {transforms})",
            files.len(),
            classes.len(),
            crate::error::list_names(&classes, 8)
        )
    };
    let modality = Modality::Image {
        channels: 3,
        height: h,
        width: w,
    };
    let labels = (!classes.is_empty()).then_some(labels);
    let mut ds = Dataset::new(name, &source, vec![3, h, w], modality, values, labels)?;
    if !classes.is_empty() {
        ds.classes = Some(std::sync::Arc::new(classes));
    }
    ds.photos = Some(std::sync::Arc::new(Photos { mean, std }));
    Ok(ds)
}

/// The photo files in row order, their labels and the class names (none unless the
/// path is a folder of class folders).
fn list(path: &Path) -> Result<(Vec<PathBuf>, Vec<i64>, Vec<String>)> {
    let text = path.to_string_lossy();
    if text.contains('*') || text.contains('?') {
        return Ok((glob(path)?, Vec::new(), Vec::new()));
    }
    if path.is_file() {
        return Ok((vec![path.to_path_buf()], Vec::new(), Vec::new()));
    }
    if !path.is_dir() {
        return Err(crate::error::missing_file(path, "no such file or folder"));
    }
    let entries = read_dir(path)?;
    let class_dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    if class_dirs.is_empty() {
        let files = entries.into_iter().filter(|p| is_photo(p)).collect();
        return Ok((files, Vec::new(), Vec::new()));
    }
    let (mut files, mut labels, mut classes) = (Vec::new(), Vec::new(), Vec::new());
    for dir in class_dirs {
        let class = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // As ImageFolder: files anywhere below the class folder, sorted by path.
        let mut found = Vec::new();
        walk(dir, &mut found)?;
        found.sort();
        if found.is_empty() {
            return Err(Error::data(format!(
                "the class folder {} holds no photos ({})",
                dir.display(),
                EXTENSIONS.join(", ")
            )));
        }
        labels.extend(std::iter::repeat_n(classes.len() as i64, found.len()));
        files.extend(found);
        classes.push(class);
    }
    Ok((files, labels, classes))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot read the folder {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for p in read_dir(dir)? {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_photo(&p) {
            out.push(p);
        }
    }
    Ok(())
}

fn is_photo(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_lowercase().as_str()))
}

/// A glob in the last component of the path (`photos/*.jpg`, `img_??.png`).
fn glob(path: &Path) -> Result<Vec<PathBuf>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let pattern = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(Error::io(format!(
            "{}: a glob may only be in the file name",
            path.display()
        )));
    }
    let files: Vec<PathBuf> = read_dir(dir)?
        .into_iter()
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| matches(&pattern, &n.to_string_lossy())))
        .collect();
    if files.is_empty() {
        return Err(Error::io(format!("no file matches {}", path.display())));
    }
    Ok(files)
}

/// Shell-style matching of `*` (any run) and `?` (one character).
fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// One photo decoded to RGB, resized and cropped: (width, height, RGB bytes).
fn prepare(file: &Path, spec: &Images) -> Result<(usize, usize, Vec<u8>)> {
    let shown = file.display().to_string();
    let img = image::ImageReader::open(file)
        .map_err(|e| Error::io(format!("cannot read the photo {shown}: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::io(format!("cannot read the photo {shown}: {e}")))?
        .decode()
        .map_err(|e| Error::data(format!("{shown} is not a readable image: {e}")))?;
    // PIL's convert('RGB'): grey replicated, alpha dropped, 16 bits brought to 8.
    let rgb = img.to_rgb8();
    let (mut w, mut h) = (rgb.width() as usize, rgb.height() as usize);
    let mut bytes = rgb.into_raw();
    if let Some(n) = spec.resize {
        // torchvision's Resize(n): the shorter side to n, the longer in proportion
        // (truncated), bilinear with antialiasing as Pillow resamples.
        let n = n as usize;
        let (nw, nh) = if w <= h {
            (n, (n as f64 * h as f64 / w as f64) as usize)
        } else {
            ((n as f64 * w as f64 / h as f64) as usize, n)
        };
        if (nw, nh) != (w, h) {
            let src = Image::from_vec_u8(w as u32, h as u32, bytes, PixelType::U8x3)
                .map_err(|e| Error::data(format!("{shown}: {e}")))?;
            let mut dst = Image::new(nw as u32, nh as u32, PixelType::U8x3);
            Resizer::new()
                .resize(
                    &src,
                    &mut dst,
                    &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
                )
                .map_err(|e| Error::data(format!("{shown}: cannot resize: {e}")))?;
            bytes = dst.into_vec();
            (w, h) = (nw, nh);
        }
    }
    if let Some(n) = spec.crop {
        let n = n as usize;
        bytes = center_crop(&bytes, w, h, n);
        (w, h) = (n, n);
    }
    Ok((w, h, bytes))
}

/// torchvision's CenterCrop(n): the n×n window at round((h − n) / 2), round((w − n) / 2)
/// (Python's round, half to even); a photo smaller than n is padded with zeros first.
fn center_crop(bytes: &[u8], w: usize, h: usize, n: usize) -> Vec<u8> {
    let offset = |len: usize| -> i64 {
        if len >= n {
            let d = len - n;
            let half = d / 2;
            // (d / 2) rounded half to even.
            (if d % 2 == 1 && half % 2 == 1 { half + 1 } else { half }) as i64
        } else {
            // Padded by (n − len) / 2 before: the crop starts that far before the photo.
            -(((n - len) / 2) as i64)
        }
    };
    let (top, left) = (offset(h), offset(w));
    let mut out = vec![0u8; n * n * 3];
    for y in 0..n {
        let sy = top + y as i64;
        if sy < 0 || sy >= h as i64 {
            continue;
        }
        for x in 0..n {
            let sx = left + x as i64;
            if sx < 0 || sx >= w as i64 {
                continue;
            }
            let (s, d) = (((sy as usize) * w + sx as usize) * 3, (y * n + x) * 3);
            out[d..d + 3].copy_from_slice(&bytes[s..s + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(matches("*.png", "cat.png"));
        assert!(!matches("*.png", "cat.jpg"));
        assert!(matches("img_??.jpg", "img_07.jpg"));
        assert!(!matches("img_??.jpg", "img_7.jpg"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn center_crop_rounds_half_to_even_and_pads() {
        // 5 wide to 2: (5 − 2) / 2 = 1.5 → 2; 4 wide to 1: 1.5 → 2; 3 to 2: 0.5 → 0.
        let row = |w: usize| (0..w as u8).flat_map(|v| [v, v, v]).collect::<Vec<u8>>();
        assert_eq!(center_crop(&row(5), 5, 1, 1)[0], 2);
        assert_eq!(center_crop(&row(4), 4, 1, 1)[0], 2);
        let one_row_to_two = center_crop(&row(3), 3, 1, 2);
        // Rows: one padded row above (offset −0), the photo's row cropped from column 0.
        assert_eq!(one_row_to_two.len(), 12);
    }
}
