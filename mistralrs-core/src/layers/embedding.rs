//! Token embeddings. A quantized table stays quantized: rows are dequantized
//! as they are looked up, so a 150k-token vocabulary costs its file size, not
//! four bytes per weight.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Result, Tensor};

#[derive(Debug, Clone)]
pub struct Embedding {
    table: QMatMul,
}

impl Embedding {
    pub fn new(table: QMatMul) -> Self {
        Self { table }
    }

    /// `ids`: (tokens,) u32 -> (tokens, hidden).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.table.embedding(ids)
    }

    /// The table quantized to `dtype` (in-situ quantization).
    pub fn quantized(self, dtype: GgmlDType) -> Result<Self> {
        Ok(match super::linear::quantize_matrix(&self.table, dtype)? {
            Some(table) => Self { table },
            None => self,
        })
    }

    /// The same matrix, for models whose output head is tied to the embeddings.
    pub fn table(&self) -> &QMatMul {
        &self.table
    }
}
