//! Weight files: safetensors and zip-format PyTorch state dicts, read by candle (parse,
//! never execute) into named f32 tensors.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::arch::Weight;
use crate::error::{Error, Result};

/// Reads every tensor of a weight file, converted to f32.
pub fn read_weights(path: &Path) -> Result<BTreeMap<String, Weight>> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("cannot read model file {shown}: {e}")))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
    // The readers are third-party parsers of untrusted bytes: a panic inside them must
    // become an error, not end the session.
    let tensors = std::panic::catch_unwind(|| match ext.as_str() {
        "safetensors" => read_safetensors(&bytes, &shown),
        "pth" | "pt" | "bin" | "ckpt" => read_pth(path, &bytes, &shown),
        _ => Err(Error::model(format!("cannot tell the format of model file {shown}"))
            .hint("use .safetensors, or a PyTorch .pth / .pt state dict, with an ARCH file")),
    })
    .map_err(|_| Error::model(format!("model file {shown} is corrupt (its reader failed)")))??;
    let mut out = BTreeMap::new();
    for (name, tensor) in tensors {
        let shape = tensor.dims().to_vec();
        let data = tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| Error::model(format!("tensor `{name}` in {shown} cannot be read as f32: {e}")))?;
        if let Some(bad) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::model(format!(
                "tensor `{name}` in {shown} holds a non-finite value ({}) at flat index {bad}",
                data[bad]
            )));
        }
        out.insert(name, Weight { shape, data });
    }
    if out.is_empty() {
        return Err(Error::model(format!("model file {shown} holds no tensors")));
    }
    Ok(out)
}

fn read_safetensors(bytes: &[u8], shown: &str) -> Result<Vec<(String, Tensor)>> {
    let map = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| Error::model(format!("model file {shown} is not a readable safetensors file: {e}")))?;
    Ok(map.into_iter().collect())
}

fn read_pth(path: &Path, bytes: &[u8], shown: &str) -> Result<Vec<(String, Tensor)>> {
    if !bytes.starts_with(b"PK\x03\x04") {
        let legacy = bytes.first() == Some(&0x80);
        return Err(Error::model(if legacy {
            format!("{shown} is a legacy (pre-1.6, non-zip) PyTorch file")
        } else {
            format!("{shown} is not a zip-format PyTorch checkpoint")
        })
        .hint("re-save it with torch.save(model.state_dict(), path) from PyTorch ≥ 1.6, or export safetensors"));
    }
    let read = |key: Option<&str>| candle_core::pickle::read_all_with_key(path, key);
    let mut tensors = read(None).map_err(|e| Error::model(format!("cannot read PyTorch checkpoint {shown}: {e}")))?;
    if tensors.is_empty() {
        // A training checkpoint often nests the weights: {"state_dict": {...}, "epoch": ...}.
        for key in ["state_dict", "model_state_dict", "model"] {
            if let Ok(found) = read(Some(key))
                && !found.is_empty()
            {
                tensors = found;
                break;
            }
        }
    }
    if tensors.is_empty() {
        return Err(Error::model(format!("{shown} holds no state dict of tensors"))
            .hint("a pickled whole module cannot be loaded (that would run code); save model.state_dict() instead"));
    }
    Ok(tensors)
}
