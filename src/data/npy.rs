//! NumPy `.npy` files (format versions 1–3): the header is parsed by hand, the data
//! converted to f32 (inputs) or i64 (labels). Nothing in the file is trusted.

use crate::error::{Error, Result};

/// An array read from a .npy file, in C order.
#[derive(Debug, Clone)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

#[derive(Debug, Clone)]
pub enum NpyData {
    Float(Vec<f64>),
    Int(Vec<i64>),
}

impl NpyArray {
    pub fn len(&self) -> usize {
        match &self.data {
            NpyData::Float(v) => v.len(),
            NpyData::Int(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            NpyData::Float(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::Int(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// Integer values (floats must be whole numbers); `what` names the array in errors.
    pub fn to_i64(&self, what: &str) -> Result<Vec<i64>> {
        match &self.data {
            NpyData::Int(v) => Ok(v.clone()),
            NpyData::Float(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    if x.fract() == 0.0 && x.is_finite() {
                        Ok(x as i64)
                    } else {
                        Err(Error::data(format!(
                            "{what} must hold whole numbers, but element {i} is {x}"
                        )))
                    }
                })
                .collect(),
        }
    }
}

/// What a .npy header says: the array's shape and element type, and where its data start.
#[derive(Debug, Clone)]
pub struct Header {
    pub shape: Vec<usize>,
    pub fortran: bool,
    descr: String,
    order: char,
    kind: char,
    size: usize,
    /// Bytes before the data.
    pub data_start: usize,
    /// Elements (the product of the shape).
    pub count: usize,
}

impl Header {
    /// Bytes of data the shape needs.
    pub fn data_len(&self) -> usize {
        self.count * self.size
    }
    /// Little-endian float32 or float64 in C order: rows can be read from the file as
    /// they are needed. The element size when they can.
    pub fn row_readable(&self) -> Option<usize> {
        let c_order = !(self.fortran && self.shape.len() > 1);
        (self.kind == 'f' && matches!(self.size, 4 | 8) && self.order != '>' && c_order).then_some(self.size)
    }
}

/// Bytes from the start of a .npy file to its data, from its first 12 bytes (fewer
/// when the file is shorter).
pub fn header_end(prefix: &[u8], origin: &str) -> Result<usize> {
    let bad = |why: &str| Error::data(format!("{origin} is not a readable .npy file: {why}"));
    if prefix.len() < 10 || &prefix[..6] != b"\x93NUMPY" {
        return Err(bad("it does not start with the NumPy magic bytes"));
    }
    let (header_len, header_start): (usize, usize) = match prefix[6] {
        1 => (u16::from_le_bytes([prefix[8], prefix[9]]) as usize, 10),
        2 | 3 => {
            if prefix.len() < 12 {
                return Err(bad("truncated header"));
            }
            (
                u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(&format!("unknown format version {v}"))),
    };
    header_start
        .checked_add(header_len)
        .ok_or_else(|| bad("truncated header"))
}

/// The header of a .npy file, from its first bytes (at least `header_end` of them).
pub fn parse_header(bytes: &[u8], origin: &str) -> Result<Header> {
    let bad = |why: &str| Error::data(format!("{origin} is not a readable .npy file: {why}"));
    let data_start = header_end(bytes, origin)?;
    if data_start > bytes.len() {
        return Err(bad("truncated header"));
    }
    let header_start = if bytes[6] == 1 { 10 } else { 12 };
    let header = std::str::from_utf8(&bytes[header_start..data_start]).map_err(|_| bad("header is not text"))?;
    let descr = dict_str(header, "descr").ok_or_else(|| bad("header has no 'descr'"))?;
    let fortran = dict_raw(header, "fortran_order")
        .map(|v| v.starts_with("True"))
        .unwrap_or(false);
    let shape = parse_shape(header).ok_or_else(|| bad("header has no readable 'shape'"))?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("shape too large"))?;
    let (order, kind, size) = parse_descr(&descr).ok_or_else(|| {
        Error::data(format!("{origin}: unsupported dtype '{descr}'"))
            .hint("use float32/float64 inputs and integer labels")
    })?;
    count.checked_mul(size).ok_or_else(|| bad("shape too large"))?;
    Ok(Header {
        shape,
        fortran,
        descr,
        order,
        kind,
        size,
        data_start,
        count,
    })
}

/// The error for a file whose data are shorter than its shape needs.
pub fn check_data_len(header: &Header, available: usize, origin: &str) -> Result<()> {
    if available < header.data_len() {
        return Err(Error::data(format!(
            "{origin} is not a readable .npy file: it holds {available} bytes of data but its shape {:?} needs {}",
            header.shape,
            header.data_len()
        )));
    }
    Ok(())
}

pub fn read_npy(bytes: &[u8], origin: &str) -> Result<NpyArray> {
    let header = parse_header(bytes, origin)?;
    let body = &bytes[header.data_start..];
    check_data_len(&header, body.len(), origin)?;
    let Header {
        shape,
        fortran,
        descr,
        order,
        kind,
        size,
        count,
        ..
    } = header;
    let little = order != '>';
    let word = |i: usize| -> [u8; 8] {
        let mut w = [0u8; 8];
        let src = &body[i * size..(i + 1) * size];
        if little {
            w[..size].copy_from_slice(src);
        } else {
            for (k, b) in src.iter().rev().enumerate() {
                w[k] = *b;
            }
        }
        w
    };
    let data = match (kind, size) {
        ('f', 4) => NpyData::Float(
            (0..count)
                .map(|i| f32::from_le_bytes(word(i)[..4].try_into().unwrap_or_default()) as f64)
                .collect(),
        ),
        ('f', 8) => NpyData::Float((0..count).map(|i| f64::from_le_bytes(word(i))).collect()),
        ('f', 2) => NpyData::Float(
            (0..count)
                .map(|i| half_to_f64(u16::from_le_bytes([word(i)[0], word(i)[1]])))
                .collect(),
        ),
        ('i', s) => NpyData::Int(
            (0..count)
                .map(|i| {
                    let w = word(i);
                    let shift = 64 - 8 * s as u32;
                    (i64::from_le_bytes(w) << shift) >> shift
                })
                .collect(),
        ),
        ('u', s) if s < 8 => NpyData::Int((0..count).map(|i| i64::from_le_bytes(word(i))).collect()),
        ('b', 1) => NpyData::Int((0..count).map(|i| i64::from(body[i] != 0)).collect()),
        _ => {
            return Err(Error::data(format!("{origin}: unsupported dtype '{descr}'")));
        }
    };
    let mut array = NpyArray { shape, data };
    if fortran && array.shape.len() > 1 {
        array = to_c_order(array);
    }
    Ok(array)
}

fn half_to_f64(bits: u16) -> f64 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = ((bits >> 10) & 0x1f) as i32;
    let frac = (bits & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Reorders a Fortran-order array (first index fastest) into C order.
fn to_c_order(array: NpyArray) -> NpyArray {
    let shape = array.shape.clone();
    let n: usize = shape.iter().product();
    let mut f_strides = vec![1usize; shape.len()];
    for d in 1..shape.len() {
        f_strides[d] = f_strides[d - 1] * shape[d - 1];
    }
    let perm: Vec<usize> = (0..n)
        .map(|c| {
            let mut rem = c;
            let mut f = 0;
            for d in (0..shape.len()).rev() {
                f += (rem % shape[d]) * f_strides[d];
                rem /= shape[d];
            }
            f
        })
        .collect();
    let data = match array.data {
        NpyData::Float(v) => NpyData::Float(perm.iter().map(|&i| v[i]).collect()),
        NpyData::Int(v) => NpyData::Int(perm.iter().map(|&i| v[i]).collect()),
    };
    NpyArray { shape, data }
}

fn parse_descr(descr: &str) -> Option<(char, char, usize)> {
    let mut chars = descr.chars();
    let first = chars.next()?;
    let (order, rest) = if "<>|=".contains(first) {
        (first, &descr[1..])
    } else {
        ('<', descr)
    };
    let mut rest_chars = rest.chars();
    let kind = rest_chars.next()?;
    let size: usize = rest_chars.as_str().parse().ok()?;
    if !matches!(size, 1 | 2 | 4 | 8) || !"fiub".contains(kind) || (kind == 'f' && size == 1) {
        return None;
    }
    Some((order, kind, size))
}

/// The text after `'key':` in a Python dict literal.
fn dict_raw<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}'");
    let at = header.find(&pat)? + pat.len();
    let rest = header[at..].trim_start().strip_prefix(':')?;
    Some(rest.trim_start())
}

fn dict_str(header: &str, key: &str) -> Option<String> {
    let raw = dict_raw(header, key)?;
    let quote = raw.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = raw[1..].find(quote)?;
    Some(raw[1..1 + end].to_string())
}

fn parse_shape(header: &str) -> Option<Vec<usize>> {
    let raw = dict_raw(header, "shape")?.strip_prefix('(')?;
    let end = raw.find(')')?;
    raw[..end]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse().ok())
        .collect()
}

/// A C-order float32 .npy file.
pub fn write_npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = npy_header(shape, "<f4");
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// A C-order int64 .npy file (labels, indices).
pub fn write_npy_i64(shape: &[usize], data: &[i64]) -> Vec<u8> {
    let mut out = npy_header(shape, "<i8");
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn npy_header(shape: &[usize], descr: &str) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_f32() {
        let bytes = write_npy_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        let a = read_npy(&bytes, "t").unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(read_npy(b"hello world", "t").is_err());
        let bytes = write_npy_f32(&[4, 4], &[0.0; 16]);
        let err = read_npy(&bytes[..bytes.len() - 3], "t").unwrap_err();
        assert!(err.message.contains("needs 64"), "{}", err.message);
        for cut in 0..bytes.len() {
            let _ = read_npy(&bytes[..cut], "t");
        }
    }

    #[test]
    fn fortran_order_is_transposed() {
        let mut bytes = write_npy_f32(&[2, 3], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let from = b"'fortran_order': False";
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
        // same length, so the header length and data stay put
        bytes[at..at + from.len()].copy_from_slice(b"'fortran_order': True ");
        let a = read_npy(&bytes, "t").unwrap();
        assert_eq!(a.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }
}
