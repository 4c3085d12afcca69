//! Datasets: inputs (N first) with optional labels and the input ids that follow every
//! row through selections and derived datasets. Loaders for .npy, .csv and .parquet.

pub mod npy;
pub mod photos;
pub mod text;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;

use crate::error::{Error, Result};

/// A shape as messages print it: `[1, 8, 8]`.
pub fn fmt_shape(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// How the features of one sample are laid out, which decides the coordinate columns
/// of an attribution relation.
#[derive(Clone, Debug, PartialEq)]
pub enum Modality {
    /// (channels, height, width); coordinates `channel`, `row`, `col`.
    Image {
        channels: usize,
        height: usize,
        width: usize,
    },
    /// Named columns; coordinate `column`.
    Tabular { columns: Vec<String> },
    /// (channels, length) of a sequence model's input (1-D convolutions); coordinates
    /// `channel`, `position`. Such data loads as a one-channel image and becomes a
    /// sequence when a sequence model reads it.
    Sequence { channels: usize, length: usize },
    /// (channels, depth, height, width) of a volume model's input (3-D convolutions);
    /// coordinates `channel`, `depth`, `row`, `col`. Such data loads as a tensor and
    /// becomes a volume when a volume model reads it.
    Volume {
        channels: usize,
        depth: usize,
        height: usize,
        width: usize,
    },
    /// Any other shape; only the flat `feature` index.
    Tensor,
    /// Token ids of a text model, padded; coordinates `token` (position) and `text`.
    /// `tokens[id]` are the tokens of the input with that id (its length: the rest is
    /// padding), `words[id]` the word each belongs to.
    Text {
        tokens: Arc<Vec<Vec<String>>>,
        words: Arc<Vec<Vec<Option<u32>>>>,
    },
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    /// Where it came from: a file, or the expression that derived it.
    pub source: String,
    pub sample_shape: Vec<usize>,
    pub modality: Modality,
    values: Values,
    labels: Option<Vec<i64>>,
    /// The input id of each row: its index in the dataset it was loaded as.
    ids: Vec<i64>,
    /// Photos: their files, classes and preprocessing (to show them as photos again).
    pub photos: Option<Arc<photos::Photos>>,
    /// The names of the label classes (CLASSES, or a photo folder's class folders).
    pub classes: Option<Arc<Vec<String>>>,
}

/// Where a dataset's values are.
#[derive(Clone, Debug)]
enum Values {
    Memory(Vec<f32>),
    /// A float32 or float64 .npy file, read a block of rows at a time as they are needed, so that a
    /// pass over a dataset larger than memory holds only the rows in flight.
    File(Arc<NpyRows>),
}

/// The data of a float32 or float64 (little-endian, C-order) .npy file, kept open.
#[derive(Debug)]
struct NpyRows {
    file: std::fs::File,
    path: PathBuf,
    data_start: u64,
    /// Bytes per element: 4 or 8.
    size: usize,
    /// The file's length and modification time when it was loaded: rows are only read
    /// from the file as it was then.
    stamp: (u64, Option<std::time::SystemTime>),
}

/// Values read from a file in one go, at most (4 MB).
const READ_BLOCK_VALUES: usize = 1 << 20;

impl NpyRows {
    fn stamp(meta: &std::fs::Metadata) -> (u64, Option<std::time::SystemTime>) {
        (meta.len(), meta.modified().ok())
    }

    /// Appends `count` values from value `start` on to `out`.
    fn read(&self, start: usize, count: usize, out: &mut Vec<f32>) -> Result<()> {
        let shown = self.path.display();
        let io = |e: std::io::Error| Error::io(format!("cannot read {shown}: {e}"));
        let now = self.file.metadata().map_err(io)?;
        if Self::stamp(&now) != self.stamp {
            return Err(Error::data(format!("{shown} changed on disk after it was loaded"))
                .hint("LOAD DATA it again to use the new contents"));
        }
        let size = self.size;
        let mut bytes = vec![0u8; size * count];
        read_exact_at(&self.file, &mut bytes, self.data_start + (size * start) as u64).map_err(io)?;
        let element = |b: &[u8]| match *b {
            [a, b, c, d] => f32::from_le_bytes([a, b, c, d]),
            [a, b, c, d, e, f, g, h] => f64::from_le_bytes([a, b, c, d, e, f, g, h]) as f32,
            _ => f32::NAN,
        };
        out.extend(bytes.chunks_exact(size).map(element));
        Ok(())
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Rows of a dataset picked by a dataset expression (positions into the dataset).
#[derive(Clone, Debug)]
pub struct Selection {
    pub dataset: Arc<Dataset>,
    pub rows: Vec<usize>,
}

impl Selection {
    pub fn all(dataset: Arc<Dataset>) -> Selection {
        let rows = (0..dataset.len()).collect();
        Selection { dataset, rows }
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// The selected samples, in order, as one contiguous buffer.
    pub fn values(&self) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.rows.len() * self.dataset.sample_len());
        self.dataset.read_rows(&self.rows, &mut out)?;
        Ok(out)
    }
    /// `f` of each selected sample, in order, reading a block of rows at a time.
    pub fn map_rows<T>(&self, f: impl FnMut(&[f32]) -> T) -> Result<Vec<T>> {
        self.dataset.map_rows(&self.rows, f)
    }
    pub fn ids(&self) -> Vec<i64> {
        self.rows.iter().map(|&r| self.dataset.id(r)).collect()
    }
    pub fn labels(&self) -> Vec<Option<i64>> {
        self.rows.iter().map(|&r| self.dataset.label(r)).collect()
    }
}

impl Modality {
    /// The (channels, height, width) grid of an image, or of a sequence seen as an image
    /// of one row: windows and patches work on it.
    pub fn grid(&self) -> Option<(usize, usize, usize)> {
        match *self {
            Modality::Image {
                channels,
                height,
                width,
            } => Some((channels, height, width)),
            Modality::Sequence { channels, length } => Some((channels, 1, length)),
            _ => None,
        }
    }
}

impl Dataset {
    pub fn new(
        name: &str,
        source: &str,
        sample_shape: Vec<usize>,
        modality: Modality,
        values: Vec<f32>,
        labels: Option<Vec<i64>>,
    ) -> Result<Dataset> {
        let len: usize = sample_shape.iter().product();
        if len == 0 || !values.len().is_multiple_of(len) {
            return Err(Error::shape(format!(
                "{source}: {} values do not divide into samples of shape {}",
                values.len(),
                fmt_shape(&sample_shape)
            )));
        }
        let n = values.len() / len;
        if let Some(l) = &labels
            && l.len() != n
        {
            return Err(Error::shape(format!("{source}: {n} inputs but {} labels", l.len())));
        }
        Ok(Dataset {
            name: name.to_string(),
            source: source.to_string(),
            sample_shape,
            modality,
            values: Values::Memory(values),
            labels,
            ids: (0..n as i64).collect(),
            photos: None,
            classes: None,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }
    /// The values of row `i` (read from the file when the dataset is kept there).
    pub fn row(&self, i: usize) -> Result<Cow<'_, [f32]>> {
        let len = self.sample_len();
        Ok(match &self.values {
            Values::Memory(v) => Cow::Borrowed(&v[i * len..(i + 1) * len]),
            Values::File(f) => {
                let mut out = Vec::with_capacity(len);
                f.read(i * len, len, &mut out)?;
                Cow::Owned(out)
            }
        })
    }
    /// Appends the values of `rows` to `out`; from a file, runs of consecutive rows are
    /// read in one go.
    pub fn read_rows(&self, rows: &[usize], out: &mut Vec<f32>) -> Result<()> {
        let len = self.sample_len();
        match &self.values {
            Values::Memory(v) => {
                for &r in rows {
                    out.extend_from_slice(&v[r * len..(r + 1) * len]);
                }
            }
            Values::File(f) => {
                let mut at = 0;
                while at < rows.len() {
                    let mut end = at + 1;
                    while end < rows.len() && rows[end] == rows[end - 1] + 1 {
                        end += 1;
                    }
                    f.read(rows[at] * len, (end - at) * len, out)?;
                    at = end;
                }
            }
        }
        Ok(())
    }
    /// `f` of each of `rows`, in order, reading at most a block of values at a time.
    pub fn map_rows<T>(&self, rows: &[usize], mut f: impl FnMut(&[f32]) -> T) -> Result<Vec<T>> {
        let len = self.sample_len().max(1);
        let mut out = Vec::with_capacity(rows.len());
        let mut block = Vec::new();
        for part in rows.chunks((READ_BLOCK_VALUES / len).max(1)) {
            block.clear();
            self.read_rows(part, &mut block)?;
            out.extend(block.chunks(len).map(&mut f));
        }
        Ok(out)
    }
    pub fn label(&self, i: usize) -> Option<i64> {
        self.labels.as_ref().map(|l| l[i])
    }
    pub fn has_labels(&self) -> bool {
        self.labels.is_some()
    }
    pub fn id(&self, i: usize) -> i64 {
        self.ids[i]
    }
    /// The position of the row with input id `id`.
    pub fn position_of(&self, id: i64) -> Option<usize> {
        // ids are increasing in every dataset the engine builds
        self.ids.binary_search(&id).ok()
    }
    pub fn id_range(&self) -> Option<(i64, i64)> {
        Some((*self.ids.first()?, *self.ids.last()?))
    }

    /// A derived dataset of some rows, keeping their input ids and labels (in memory).
    pub fn subset(&self, name: &str, source: &str, rows: &[usize]) -> Result<Dataset> {
        let mut values = Vec::with_capacity(rows.len() * self.sample_len());
        self.read_rows(rows, &mut values)?;
        Ok(Dataset {
            name: name.to_string(),
            source: source.to_string(),
            sample_shape: self.sample_shape.clone(),
            modality: self.modality.clone(),
            values: Values::Memory(values),
            labels: self.labels.as_ref().map(|l| rows.iter().map(|&r| l[r]).collect()),
            ids: rows.iter().map(|&r| self.ids[r]).collect(),
            photos: self.photos.clone(),
            classes: self.classes.clone(),
        })
    }

    /// Changes every row in place; `edit` gets each row's input id. A dataset kept in its
    /// file is read into memory first.
    pub fn edit_rows(&mut self, mut edit: impl FnMut(i64, &mut [f32])) -> Result<()> {
        let len = self.sample_len();
        if let Values::File(_) = self.values {
            let mut all = Vec::with_capacity(self.len() * len);
            self.read_rows(&(0..self.len()).collect::<Vec<_>>(), &mut all)?;
            self.values = Values::Memory(all);
        }
        if let Values::Memory(values) = &mut self.values {
            for (id, row) in self.ids.iter().zip(values.chunks_mut(len)) {
                edit(*id, row);
            }
        }
        Ok(())
    }

    /// The mean sample.
    pub fn mean(&self) -> Result<Vec<f32>> {
        let len = self.sample_len();
        let mut sum = vec![0.0f64; len];
        self.map_rows(&(0..self.len()).collect::<Vec<_>>(), |row| {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += *v as f64;
            }
        })?;
        let n = self.len().max(1) as f64;
        Ok(sum.into_iter().map(|s| (s / n) as f32).collect())
    }

    /// Names of the features, for column coordinates and WINDOW lists.
    pub fn column_names(&self) -> Option<&[String]> {
        match &self.modality {
            Modality::Tabular { columns } => Some(columns),
            _ => None,
        }
    }

    /// The first non-finite value, as (row, feature index, value).
    fn first_nonfinite(&self) -> Result<Option<(usize, usize, f32)>> {
        let rows = self.map_rows(&(0..self.len()).collect::<Vec<_>>(), |row| {
            row.iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite())
                .map(|(f, v)| (f, *v))
        })?;
        Ok(rows
            .into_iter()
            .enumerate()
            .find_map(|(r, bad)| bad.map(|(f, v)| (r, f, v))))
    }

    pub fn describe_feature(&self, f: usize) -> String {
        match &self.modality {
            Modality::Image { height, width, .. } => {
                let (c, r, col) = (f / (height * width), f / width % height, f % width);
                format!("channel {c}, row {r}, col {col}")
            }
            Modality::Tabular { columns } => format!("column `{}`", columns[f]),
            Modality::Sequence { length, .. } => format!("channel {}, position {}", f / length, f % length),
            Modality::Volume {
                depth, height, width, ..
            } => format!(
                "channel {}, depth {}, row {}, col {}",
                f / (depth * height * width),
                f / (height * width) % depth,
                f / width % height,
                f % width
            ),
            Modality::Tensor => format!("feature {f}"),
            Modality::Text { .. } => format!("token {f}"),
        }
    }
}

/// Class names, one a line (`CLASSES 'names.txt'`, as ImageNet's `classes.txt`).
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("cannot read {shown}: {e}")))?;
    let names: Vec<String> = text.trim_end().lines().map(|l| l.trim().to_string()).collect();
    if let Some(blank) = names.iter().position(String::is_empty) {
        return Err(Error::data(format!(
            "{shown}: line {} is empty; give one class name a line",
            blank + 1
        )));
    }
    if names.is_empty() {
        return Err(Error::data(format!("{shown} names no classes")));
    }
    Ok(names)
}

/// Loads a dataset from .npy (with optional labels), .csv or .parquet (with a label column
/// or a labels file). Non-finite inputs are refused unless `allow_nonfinite`.
/// What an array's sample shape reads as: [c, h, w] or [h, w] images, [d] columns
/// (named x0, x1, …), anything else a tensor.
fn modality_of_shape(shape: &[usize]) -> Modality {
    match *shape {
        [c, h, w] => Modality::Image {
            channels: c,
            height: h,
            width: w,
        },
        [h, w] => Modality::Image {
            channels: 1,
            height: h,
            width: w,
        },
        [d] => Modality::Tabular {
            columns: (0..d).map(|i| format!("x{i}")).collect(),
        },
        _ => Modality::Tensor,
    }
}

impl Dataset {
    /// The same values read as inputs of another shape (`LOAD DATA … SHAPE (…)`), in
    /// their order in the file; the shape must hold as many values.
    pub fn reshape(&mut self, shape: Vec<usize>) -> Result<()> {
        let want: usize = shape.iter().product();
        if want != self.sample_len() {
            return Err(Error::shape(format!(
                "SHAPE ({}) holds {want} values per input, but {} has {} per input (shape {})",
                shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                self.source,
                self.sample_len(),
                fmt_shape(&self.sample_shape)
            )));
        }
        self.modality = match (&self.modality, shape.as_slice()) {
            // A table keeps its column names when it stays flat.
            (Modality::Tabular { columns }, [_]) => Modality::Tabular {
                columns: columns.clone(),
            },
            _ => modality_of_shape(&shape),
        };
        self.sample_shape = shape;
        Ok(())
    }
}

pub fn load(
    name: &str,
    path: &Path,
    labels: Option<&Path>,
    label_column: Option<&str>,
    allow_nonfinite: bool,
) -> Result<Dataset> {
    let shown = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
    let mut ds = match ext.as_str() {
        "npy" => {
            if let Some(col) = label_column {
                return Err(Error::data(format!(
                    "LABEL COLUMN {col} applies to .csv and .parquet files; give LABELS 'labels.npy' for {shown}"
                )));
            }
            let (header, file) = npy_header_of(path)?;
            if header.shape.len() < 2 {
                return Err(Error::shape(format!(
                    "{shown} has shape {} but inputs need a batch dimension first and features after it",
                    fmt_shape(&header.shape)
                ))
                .hint("for a single feature per input, save an array of shape (N, 1)"));
            }
            let sample_shape = header.shape[1..].to_vec();
            let modality = modality_of_shape(&sample_shape);
            if let Some(size) = header.row_readable() {
                let io = |e: std::io::Error| Error::io(format!("cannot read {shown}: {e}"));
                let meta = file.metadata().map_err(io)?;
                let available = (meta.len() as usize).saturating_sub(header.data_start);
                npy::check_data_len(&header, available, &shown)?;
                let mut ds = Dataset::new(name, &shown, sample_shape, modality, Vec::new(), None)?;
                let n = header.shape[0];
                ds.ids = (0..n as i64).collect();
                ds.values = Values::File(Arc::new(NpyRows {
                    file,
                    path: path.to_path_buf(),
                    data_start: header.data_start as u64,
                    size,
                    stamp: NpyRows::stamp(&meta),
                }));
                ds
            } else {
                drop(file);
                let array = npy::read_npy(&read_file(path)?, &shown)?;
                Dataset::new(name, &shown, sample_shape, modality, array.to_f32(), None)?
            }
        }
        "csv" | "parquet" => {
            let df = if ext == "csv" {
                CsvReadOptions::default()
                    .with_infer_schema_length(None)
                    .with_has_header(true)
                    .try_into_reader_with_file_path(Some(path.to_path_buf()))
                    .and_then(|r| r.finish())
            } else {
                std::fs::File::open(path)
                    .map_err(PolarsError::from)
                    .and_then(|f| ParquetReader::new(f).finish())
            }
            .map_err(|e| Error::data(format!("cannot read {shown}: {}", first_line(&e.to_string()))))?;
            tabular_from_frame(name, &shown, df, label_column)?
        }
        _ => {
            return Err(Error::data(format!("cannot tell the format of {shown}"))
                .hint("use .npy (tensors, N first), .csv or .parquet (tabular)"));
        }
    };
    if let Some(lpath) = labels {
        if ds.labels.is_some() {
            return Err(Error::data("give either LABELS or LABEL COLUMN, not both"));
        }
        let l = load_labels(lpath)?;
        if l.len() != ds.len() {
            return Err(Error::shape(format!(
                "{shown} has {} inputs but {} has {} labels",
                ds.len(),
                lpath.display(),
                l.len()
            )));
        }
        ds.labels = Some(l);
    }
    check_loaded(ds, &shown, allow_nonfinite)
}

/// A dataset from an array in memory (a front end's numpy array): `shape` is the array's,
/// N first, `values` its elements in C order. `ids` (increasing) keep the input ids of
/// rows taken from a larger dataset, so that a block of it answers with the whole's ids.
pub fn from_array(
    name: &str,
    source: &str,
    shape: &[usize],
    values: Vec<f32>,
    labels: Option<Vec<i64>>,
    ids: Option<Vec<i64>>,
    allow_nonfinite: bool,
) -> Result<Dataset> {
    if shape.len() < 2 {
        return Err(Error::shape(format!(
            "{source} has shape {} but inputs need a batch dimension first and features after it",
            fmt_shape(shape)
        ))
        .hint("for a single feature per input, pass an array of shape (N, 1)"));
    }
    let want: usize = shape.iter().product();
    if values.len() != want {
        return Err(Error::shape(format!(
            "{source}: shape {} holds {want} values, not {}",
            fmt_shape(shape),
            values.len()
        )));
    }
    let sample_shape = shape[1..].to_vec();
    let modality = modality_of_shape(&sample_shape);
    let mut ds = Dataset::new(name, source, sample_shape, modality, values, labels)?;
    if let Some(ids) = ids {
        if ids.len() != ds.len() {
            return Err(Error::shape(format!(
                "{source}: {} inputs but {} ids",
                ds.len(),
                ids.len()
            )));
        }
        if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::data(format!(
                "{source}: input ids must increase, but {} comes after {}",
                w[1], w[0]
            )));
        }
        ds.ids = ids;
    }
    check_loaded(ds, source, allow_nonfinite)
}

/// What every loader refuses: no inputs, or NaN/infinity unless allowed.
fn check_loaded(ds: Dataset, shown: &str, allow_nonfinite: bool) -> Result<Dataset> {
    if ds.is_empty() {
        return Err(Error::data(format!("{shown} holds no inputs")));
    }
    if !allow_nonfinite && let Some((row, f, v)) = ds.first_nonfinite()? {
        return Err(Error::data(format!(
            "{shown}: input {} holds {v} at {}",
            ds.id(row),
            ds.describe_feature(f)
        ))
        .hint("clean the data, or SET allow_nonfinite = true to load it anyway"));
    }
    Ok(ds)
}

/// The header of a .npy file and the file, opened, positioned anywhere.
fn npy_header_of(path: &Path) -> Result<(npy::Header, std::fs::File)> {
    use std::io::Read;
    let shown = path.display().to_string();
    let io = |e: std::io::Error| Error::io(format!("cannot read {shown}: {e}"));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut prefix = Vec::new();
    (&mut file).take(12).read_to_end(&mut prefix).map_err(io)?;
    let end = npy::header_end(&prefix, &shown)?;
    (&mut file)
        .take(end.saturating_sub(prefix.len()) as u64)
        .read_to_end(&mut prefix)
        .map_err(io)?;
    Ok((npy::parse_header(&prefix, &shown)?, file))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn load_labels(path: &Path) -> Result<Vec<i64>> {
    let shown = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
    match ext.as_str() {
        "npy" => {
            let array = npy::read_npy(&read_file(path)?, &shown)?;
            if array.shape.len() != 1 && !(array.shape.len() == 2 && array.shape[1] == 1) {
                return Err(Error::shape(format!(
                    "labels {shown} must have shape (N,), not {}",
                    fmt_shape(&array.shape)
                )));
            }
            array.to_i64(&format!("labels {shown}"))
        }
        "csv" => {
            let df = CsvReadOptions::default()
                .with_infer_schema_length(None)
                .with_has_header(true)
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .and_then(|r| r.finish())
                .map_err(|e| Error::data(format!("cannot read {shown}: {}", first_line(&e.to_string()))))?;
            if df.width() != 1 {
                return Err(Error::data(format!(
                    "labels {shown} must have exactly one column, it has {}",
                    df.width()
                )));
            }
            column_i64(&df.columns()[0], &shown)
        }
        _ => Err(Error::data(format!(
            "cannot tell the format of labels {shown}; use .npy or .csv"
        ))),
    }
}

pub(crate) fn column_i64(col: &Column, origin: &str) -> Result<Vec<i64>> {
    let name = col.name().to_string();
    let floats = col
        .cast(&DataType::Float64)
        .map_err(|_| Error::data(format!("{origin}: label column `{name}` is not numeric")))?;
    let ca = floats.f64().map_err(|e| Error::data(e.to_string()))?;
    ca.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Some(x) if x.fract() == 0.0 => Ok(x as i64),
            Some(x) => Err(Error::data(format!(
                "{origin}: label `{name}` of row {i} is {x}, not a whole number"
            ))),
            None => Err(Error::data(format!("{origin}: label `{name}` of row {i} is missing"))),
        })
        .collect()
}

fn tabular_from_frame(name: &str, origin: &str, df: DataFrame, label_column: Option<&str>) -> Result<Dataset> {
    let mut labels = None;
    if let Some(lc) = label_column {
        let Some(col) = df.columns().iter().find(|c| c.name().as_str() == lc) else {
            let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
            return Err(Error::unknown(
                "label column",
                lc,
                &names,
                &format!("columns of {origin}"),
            ));
        };
        labels = Some(column_i64(col, origin)?);
    }
    let features: Vec<&Column> = df
        .columns()
        .iter()
        .filter(|c| Some(c.name().as_str()) != label_column)
        .collect();
    if features.is_empty() {
        return Err(Error::data(format!("{origin} has no feature columns")));
    }
    let n = df.height();
    let d = features.len();
    let mut values = vec![0.0f32; n * d];
    for (j, col) in features.iter().enumerate() {
        if !col.dtype().is_primitive_numeric() && !col.dtype().is_bool() {
            return Err(Error::data(format!(
                "{origin}: column `{}` holds {} values; features must be numbers",
                col.name(),
                col.dtype()
            )));
        }
        let floats = col.cast(&DataType::Float32).map_err(|e| Error::data(e.to_string()))?;
        let ca = floats.f32().map_err(|e| Error::data(e.to_string()))?;
        for (i, v) in ca.iter().enumerate() {
            values[i * d + j] =
                v.ok_or_else(|| Error::data(format!("{origin}: row {i}, column `{}` is empty", col.name())))?;
        }
    }
    let columns = features.iter().map(|c| c.name().to_string()).collect();
    Dataset::new(name, origin, vec![d], Modality::Tabular { columns }, values, labels)
}
