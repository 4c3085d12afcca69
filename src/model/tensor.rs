//! `Batch`: the engine's dense f32 array, batch dimension first. The gradient engine
//! works on plain slices (see ../shared/CANDLE.md for why), so this is deliberately a
//! shape and a Vec rather than a candle Tensor.

use crate::data::fmt_shape;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Batch {
    /// A batch of `shape[0]` samples; `data.len()` must equal the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Batch> {
        let expected: usize = shape.iter().product();
        if shape.is_empty() || expected != data.len() {
            return Err(Error::shape(format!(
                "a batch of shape {} needs {expected} values, got {}",
                fmt_shape(&shape),
                data.len()
            )));
        }
        Ok(Batch { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Batch {
        let len = shape.iter().product();
        Batch {
            shape,
            data: vec![0.0; len],
        }
    }

    /// `rows` samples of the given sample shape, all zero.
    pub fn zeros_like_rows(rows: usize, sample_shape: &[usize]) -> Batch {
        let mut shape = Vec::with_capacity(sample_shape.len() + 1);
        shape.push(rows);
        shape.extend_from_slice(sample_shape);
        Batch::zeros(shape)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn rows(&self) -> usize {
        self.shape[0]
    }
    pub fn sample_shape(&self) -> &[usize] {
        &self.shape[1..]
    }
    pub fn sample_len(&self) -> usize {
        self.shape[1..].iter().product()
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
    pub fn row(&self, i: usize) -> &[f32] {
        let len = self.sample_len();
        &self.data[i * len..(i + 1) * len]
    }
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let len = self.sample_len();
        &mut self.data[i * len..(i + 1) * len]
    }

    /// The same values under another sample shape (same number of values per sample).
    pub fn reshaped(mut self, sample_shape: &[usize]) -> Batch {
        debug_assert_eq!(sample_shape.iter().product::<usize>(), self.sample_len());
        let rows = self.rows();
        self.shape.clear();
        self.shape.push(rows);
        self.shape.extend_from_slice(sample_shape);
        self
    }

    /// Rows gathered from samples (each `sample_shape`-sized) into one batch.
    pub fn from_rows<'a>(sample_shape: &[usize], rows: impl IntoIterator<Item = &'a [f32]>) -> Batch {
        let len: usize = sample_shape.iter().product();
        let mut data = Vec::new();
        let mut n = 0;
        for row in rows {
            debug_assert_eq!(row.len(), len);
            data.extend_from_slice(row);
            n += 1;
        }
        let mut shape = vec![n];
        shape.extend_from_slice(sample_shape);
        Batch { shape, data }
    }
}
