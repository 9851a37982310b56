//! What `Linear` asks of a weight matrix held in one of our kernels' own
//! layouts, whatever its block type: one trait, so the layer makes one
//! (dynamic) call per product instead of matching on every type.

use candle_core::quantized::QTensor;
use candle_core::{Result, Tensor};

pub trait BlockMatrix: std::fmt::Debug + Send + Sync {
    /// `x`: (tokens, cols) f32 -> (tokens, rows).
    fn matmul(&self, x: &Tensor) -> Result<Tensor>;
    /// Rows `ids` ((n,) u32) dequantized, (n, cols): an embedding lookup in
    /// the table that a tied output head multiplies with.
    fn rows(&self, ids: &Tensor) -> Result<Tensor>;
    /// The original blocks as a candle tensor (to dequantize, re-quantize or
    /// merge an adapter).
    fn to_qtensor(&self) -> Result<QTensor>;
}
