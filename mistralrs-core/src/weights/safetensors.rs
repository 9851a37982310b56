//! Dense weights from `model.safetensors` or a sharded index, memory-mapped
//! and converted to f32 (the CPU compute type).

use std::path::{Path, PathBuf};

use candle_core::quantized::QMatMul;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::WeightSource;
use crate::error::{Error, FileContext, Result};
use crate::layers::{Embedding, Linear};

pub struct SafetensorsSource {
    tensors: MmapedSafetensors,
    /// Where the weights came from, for error messages.
    origin: PathBuf,
    device: Device,
}

impl SafetensorsSource {
    pub fn open(files: &[PathBuf], device: &Device) -> Result<Self> {
        let origin = files.first().cloned().unwrap_or_default();
        for f in files {
            check_header(f)?;
        }
        // SAFETY: the files are opened read-only; like every mmap-based loader
        // we rely on them not being modified while the model is loaded.
        let tensors = unsafe { MmapedSafetensors::multi(files) }.in_file(&origin)?;
        Ok(Self { tensors, origin, device: device.clone() })
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .load(name, &self.device)
            .map_err(|_| Error::bad_file(&self.origin, format!("tensor `{name}` is missing")))?;
        if t.dims() != shape {
            return Err(Error::bad_file(
                &self.origin,
                format!("tensor `{name}` has shape {:?}, the config implies {shape:?}", t.dims()),
            ));
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// The header is read by hand first so that a corrupt file gets a message
/// about the file rather than a parser's internals.
pub(crate) fn check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::not_found(path, e.to_string()))?;
    let size = f.metadata().map_err(|e| Error::not_found(path, e.to_string()))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| Error::bad_file(path, "not a safetensors file (shorter than its 8-byte header length)"))?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > size - 8 || n > 100 << 20 {
        return Err(Error::bad_file(path, format!("corrupt safetensors header: declared header length {n} for a {size}-byte file")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::bad_file(path, e))?;
    serde_json::from_slice::<serde_json::Value>(&header)
        .map_err(|e| Error::bad_file(path, format!("corrupt safetensors header: {e}")))?;
    Ok(())
}

impl WeightSource for SafetensorsSource {
    fn linear(&self, module: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear> {
        let w = self.load(&format!("{module}.weight"), &[out_dim, in_dim])?;
        let b = if bias { Some(self.load(&format!("{module}.bias"), &[out_dim])?) } else { None };
        Ok(Linear::new(QMatMul::Tensor(w), b))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        self.load(name, &[len])
    }

    fn embedding(&self, module: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        let w = self.load(&format!("{module}.weight"), &[vocab, hidden])?;
        Ok(Embedding::new(QMatMul::Tensor(w)))
    }

    fn has_module(&self, module: &str) -> bool {
        self.has_tensor(&format!("{module}.weight"))
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.tensors.get(name).is_ok()
    }
}
