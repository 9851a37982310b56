//! What a `GgufSource` reads: a file of ggml tensors under llama.cpp's GGUF
//! names (a GGUF file, or a legacy GGML file whose names are mapped).

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::Device;

use super::stored::StoredTensor;
use crate::error::{candle_message, Error, Result};
use crate::layers::embedding::SharedBytes;

/// A file of ggml tensors under llama.cpp's GGUF tensor names (a GGUF file,
/// or a legacy GGML file whose names are mapped).
pub trait TensorFile: Send + Sync {
    fn path(&self) -> &Path;
    fn has_tensor(&self, name: &str) -> bool;
    /// Tensor `name` as stored, with its transformers-order shape (rows, cols).
    fn stored(&self, name: &str) -> Result<StoredTensor<'_>>;

    /// Tensor `name`'s bytes as stored, held for as long as the caller keeps
    /// them, with its type and transformers-order shape: a copy, unless the
    /// file is mapped.
    fn shared(&self, name: &str) -> Result<(SharedBytes, GgmlDType, Vec<usize>)> {
        let t = self.stored(name)?;
        let (dtype, dims) = (t.dtype, t.dims.clone());
        Ok((Arc::new(t.bytes.into_owned()), dtype, dims))
    }

    /// Tensor `name` as a candle tensor on `device`.
    fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let t = self.stored(name)?;
        qtensor_from_ggml(t.dtype, &t.bytes, t.dims.clone(), device)
            .map_err(|e| Error::bad_file(self.path(), format!("tensor `{name}`: {}", candle_message(&e))))
    }
}
