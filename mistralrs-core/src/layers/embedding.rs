//! Token embeddings. A quantized table stays quantized: rows are dequantized
//! as they are looked up, so a 150k-token vocabulary costs its file size, not
//! four bytes per weight. The table is held as a linear layer so that a tied
//! output head multiplies with the very same storage instead of a copy.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Result, Tensor};

use super::linear::Linear;

#[derive(Debug, Clone)]
pub struct Embedding {
    /// (vocab, hidden)
    table: Linear,
}

impl Embedding {
    pub fn new(table: QMatMul) -> Self {
        Self { table: Linear::new(table, None) }
    }

    /// A table already built as a layer (vocab, hidden).
    pub fn from_table(table: Linear) -> Self {
        Self { table }
    }

    /// `ids`: (tokens,) u32 -> (tokens, hidden).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.table.rows(ids)
    }

    /// The table quantized to `dtype` (in-situ quantization).
    pub fn quantized(self, dtype: GgmlDType) -> Result<Self> {
        Ok(Self { table: self.table.quantized(dtype)? })
    }

    /// The table as an output head (vocab, hidden), sharing its storage.
    pub fn as_output_head(&self) -> Linear {
        self.table.clone()
    }
}
