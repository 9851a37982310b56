//! Which of our kernels takes a weight matrix, by its ggml type: the legacy
//! types (`legacy_quant.rs`), else Q4_K and Q6_K (`kquant_panels.rs`); None
//! leaves the matrix to candle's kernels.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};

use super::block_matrix::BlockMatrix;
use super::kquant_panels::KQuantMatrix;
use super::legacy_quant::LegacyQuantMatrix;
use super::stored_rows::StoredRows;

/// A 2-D tensor on the CPU in our layout; None for a type we have no kernel
/// for here, or a tensor whose data cannot be read (candle's kernels then
/// take it as it is).
pub fn from_qtensor(t: &QTensor) -> Option<Arc<dyn BlockMatrix>> {
    match LegacyQuantMatrix::from_qtensor(t).ok().flatten() {
        Some(m) => Some(Arc::new(m)),
        None => KQuantMatrix::from_qtensor(t).ok().flatten().map(|m| Arc::new(m) as Arc<dyn BlockMatrix>),
    }
}

/// (rows, cols) stored blocks of `dtype`, repacked straight from `src`; None
/// for a type we have no kernel for here.
pub fn from_stored(dtype: GgmlDType, src: &StoredRows, rows: usize, cols: usize) -> Option<Arc<dyn BlockMatrix>> {
    match LegacyQuantMatrix::from_stored(dtype, src, rows, cols) {
        Some(m) => Some(Arc::new(m)),
        None => KQuantMatrix::from_stored(dtype, src, rows, cols).map(|m| Arc::new(m) as Arc<dyn BlockMatrix>),
    }
}
