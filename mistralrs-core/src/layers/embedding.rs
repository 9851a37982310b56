//! Token embeddings. A quantized table stays quantized: rows are dequantized
//! as they are looked up, so a 150k-token vocabulary costs its file size, not
//! four bytes per weight. A table tied to the output head is held as a
//! linear layer, so that the head multiplies with the very same storage
//! instead of a copy; a table that is only looked up stays as its file
//! stores it, in the file's map (no repacking at load, and only the rows
//! prompts use become resident), as llama.cpp reads it.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Device, Result, Tensor};

use super::linear::Linear;
use crate::kernels::row_dequant::dequantize_row;
use crate::kernels::StoredRows;

/// Bytes that stay valid as long as their holder: a range of a mapped file.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

#[derive(Clone)]
enum Table {
    Layer(Linear),
    /// (vocab, hidden) blocks of `dtype`, row after row, as stored.
    Stored { bytes: SharedBytes, dtype: GgmlDType, rows: usize, cols: usize },
}

#[derive(Clone)]
pub struct Embedding {
    table: Table,
}

impl std::fmt::Debug for Embedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.table {
            Table::Layer(l) => f.debug_tuple("Embedding").field(l).finish(),
            Table::Stored { dtype, rows, cols, .. } => write!(f, "Embedding({dtype:?}, {rows}x{cols}, stored)"),
        }
    }
}

impl Embedding {
    pub fn new(table: QMatMul) -> Self {
        Self { table: Table::Layer(Linear::new(table, None)) }
    }

    /// A table already built as a layer (vocab, hidden).
    pub fn from_table(table: Linear) -> Self {
        Self { table: Table::Layer(table) }
    }

    /// A table looked up in place (CPU): `bytes` holds `rows` rows of `cols`
    /// values in `dtype` blocks. Not for a table that is also the output head.
    pub fn stored(bytes: SharedBytes, dtype: GgmlDType, rows: usize, cols: usize) -> Result<Self> {
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        if !cols.is_multiple_of(dtype.block_size()) || (*bytes).as_ref().len() != rows * row_bytes {
            candle_core::bail!("a {rows}x{cols} {dtype:?} table does not take {} bytes", (*bytes).as_ref().len());
        }
        Ok(Self { table: Table::Stored { bytes, dtype, rows, cols } })
    }

    /// `ids`: (tokens,) u32 -> (tokens, hidden).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.table {
            Table::Layer(l) => l.rows(ids),
            Table::Stored { bytes, dtype, rows, cols } => {
                let ids = ids.to_vec1::<u32>()?;
                let table = (**bytes).as_ref();
                let row_bytes = table.len() / (*rows).max(1);
                let mut out = vec![0f32; ids.len() * cols];
                for (&id, o) in ids.iter().zip(out.chunks_exact_mut(*cols)) {
                    let r = id as usize;
                    if r >= *rows {
                        candle_core::bail!("token id {r} is outside the embedding table ({rows} rows)");
                    }
                    dequantize_row(*dtype, &table[r * row_bytes..(r + 1) * row_bytes], o).map_err(candle_core::Error::msg)?;
                }
                Tensor::from_vec(out, (ids.len(), *cols), &Device::Cpu)
            }
        }
    }

    /// The table quantized to `dtype` (in-situ quantization).
    pub fn quantized(self, dtype: GgmlDType) -> Result<Self> {
        let layer = match self.table {
            Table::Layer(l) => l,
            Table::Stored { bytes, dtype: stored, rows, cols } => {
                let row_bytes = (*bytes).as_ref().len() / rows.max(1);
                let src = StoredRows::new((*bytes).as_ref(), row_bytes, None)
                    .ok_or_else(|| candle_core::Error::msg("the embedding table is not whole rows"))?;
                Linear::from_stored(stored, &src, rows, cols, None, &Device::Cpu)?
            }
        };
        Ok(Self { table: Table::Layer(layer.quantized(dtype)?) })
    }

    /// The table as an output head (vocab, hidden), sharing its storage.
    /// Only a table built as a layer is one (`WeightSource::embedding` is
    /// told whether the model ties its head).
    pub fn as_output_head(&self) -> Result<Linear> {
        match &self.table {
            Table::Layer(l) => Ok(l.clone()),
            Table::Stored { .. } => candle_core::bail!("internal error: a lookup-only embedding table used as the output head"),
        }
    }
}
