//! What a `GgufSource` reads: a file of ggml tensors under llama.cpp's GGUF
//! names (a GGUF file, or a legacy GGML file whose names are mapped).

use std::path::Path;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QTensor};
use candle_core::Device;

use super::stored::StoredTensor;
use crate::error::{candle_message, Error, Result};

/// A file of ggml tensors under llama.cpp's GGUF tensor names (a GGUF file,
/// or a legacy GGML file whose names are mapped).
pub trait TensorFile: Send + Sync {
    fn path(&self) -> &Path;
    fn has_tensor(&self, name: &str) -> bool;
    /// Tensor `name` as stored, with its transformers-order shape (rows, cols).
    fn stored(&self, name: &str) -> Result<StoredTensor<'_>>;

    /// Tensor `name` as a candle tensor on `device`.
    fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let t = self.stored(name)?;
        qtensor_from_ggml(t.dtype, &t.bytes, t.dims.clone(), device)
            .map_err(|e| Error::bad_file(self.path(), format!("tensor `{name}`: {}", candle_message(&e))))
    }
}
