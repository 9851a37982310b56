//! A linear layer, whatever its storage: dense in the compute dtype (`QMatMul::Tensor`), a
//! ggml block-quantized matrix on candle's kernels (whose CPU code quantizes
//! the activations to the weight's dot-product type as llama.cpp does), or
//! the legacy block types, Q4_K and Q6_K on our own SIMD kernels (behind one
//! trait, `kernels::BlockMatrix`); optionally with unmerged LoRA adapters
//! applied per token row (see `lora.rs`).

use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

use super::lora::LoraStack;
use super::step::StepContext;
use crate::kernels::{dispatch, BlockMatrix, StoredRows};

#[derive(Debug, Clone)]
enum Weight {
    Candle(QMatMul),
    /// In one of our kernels' layouts (see `kernels/dispatch.rs`).
    Ours(Arc<dyn BlockMatrix>),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    lora: Option<Arc<LoraStack>>,
}

impl Linear {
    /// Picks the kernel for the weight's type on the running CPU; on other
    /// devices candle's (its CUDA/Metal quantized kernels).
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Self {
        let ours = match &weight {
            QMatMul::QTensor(t) if t.device().is_cpu() && crate::kernels::own_kernels() => dispatch::from_qtensor(t).map(Weight::Ours),
            _ => None,
        };
        let weight = ours.unwrap_or(Weight::Candle(weight));
        Self { weight, bias, lora: None }
    }

    /// A layer over (rows, cols) weights of ggml type `dtype` as a file
    /// stores them: repacked straight from the stored bytes where our
    /// kernels take the type, else copied into a candle tensor on `device`.
    pub fn from_stored(
        dtype: GgmlDType,
        src: &StoredRows,
        rows: usize,
        cols: usize,
        bias: Option<Tensor>,
        device: &Device,
    ) -> Result<Self> {
        if device.is_cpu() && crate::kernels::own_kernels() {
            if let Some(m) = dispatch::from_stored(dtype, src, rows, cols) {
                return Ok(Self { weight: Weight::Ours(m), bias, lora: None });
            }
        }
        let q = qtensor_from_ggml(dtype, &src.in_order(), vec![rows, cols], device)?;
        Ok(Self::new(QMatMul::from_arc(Arc::new(q))?, bias))
    }

    /// The layer with `delta` (out, in) added to its weight. A quantized
    /// weight is dequantized, summed and quantized again to its own type
    /// (as merging an adapter into a GGUF model must).
    pub fn merged(self, delta: &Tensor) -> Result<Self> {
        let quantized = |q: &QTensor| -> Result<QMatMul> {
            let w = (q.dequantize(&q.device())? + delta)?;
            QMatMul::from_qtensor(quantize_dense(&w, q.dtype())?)
        };
        let weight = match &self.weight {
            Weight::Candle(QMatMul::Tensor(w)) => QMatMul::Tensor((w + delta.to_dtype(w.dtype())?)?),
            Weight::Candle(QMatMul::TensorF16(w)) => QMatMul::TensorF16((w + delta.to_dtype(DType::F16)?)?),
            Weight::Candle(QMatMul::QTensor(q)) => quantized(q)?,
            Weight::Ours(m) => quantized(&m.to_qtensor()?)?,
        };
        Ok(Self { lora: self.lora, ..Self::new(weight, self.bias) })
    }

    /// The layer with its weight quantized to `dtype` (a quantized weight is
    /// dequantized first; one already of that type is kept as it is).
    pub fn quantized(self, dtype: GgmlDType) -> Result<Self> {
        let weight = match &self.weight {
            Weight::Candle(w) => quantize_matrix(w, dtype)?,
            Weight::Ours(m) => quantize_matrix(&QMatMul::QTensor(Arc::new(m.to_qtensor()?)), dtype)?,
        };
        Ok(match weight {
            Some(w) => Self { lora: self.lora, ..Self::new(w, self.bias) },
            None => self,
        })
    }

    /// The layer with a dense weight (and its bias) converted to `dtype`;
    /// quantized weights keep their type.
    pub fn with_dense_dtype(self, dtype: DType) -> Result<Self> {
        let weight = match self.weight {
            Weight::Candle(QMatMul::Tensor(w)) if w.dtype() != dtype => Weight::Candle(QMatMul::Tensor(w.to_dtype(dtype)?)),
            other => other,
        };
        let bias = self.bias.map(|b| b.to_dtype(dtype)).transpose()?;
        Ok(Self { weight, bias, lora: self.lora })
    }

    /// The layer with unmerged adapters, applied by `forward_rows`.
    pub fn with_lora(self, stack: Arc<LoraStack>) -> Self {
        Self { lora: Some(stack), ..self }
    }

    /// Rows `ids` ((n,) u32) of the weight matrix, (n, in_features): an
    /// embedding lookup, for a table that is also a tied output head.
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.weight {
            Weight::Candle(w) => w.embedding(ids),
            Weight::Ours(w) => w.rows(ids),
        }
    }

    /// `x`: (tokens, in_features) -> (tokens, out_features), without adapters.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Quantized kernels take f32 activations: in another compute dtype
        // (bf16/f16 on an accelerator) the rows pass through f32 for them.
        let dense = matches!(self.weight, Weight::Candle(QMatMul::Tensor(_) | QMatMul::TensorF16(_)));
        let y = if dense || x.dtype() == DType::F32 {
            self.product(x)?
        } else {
            self.product(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn product(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            Weight::Candle(w) => w.forward(x),
            Weight::Ours(w) => w.matmul(x),
        }
    }

    /// `x`: the step's token rows (tokens, in_features) -> (tokens,
    /// out_features), with each row's adapters from the step context.
    pub fn forward_rows(&self, x: &Tensor, ctx: &StepContext) -> Result<Tensor> {
        let y = self.forward(x)?;
        match (&self.lora, &ctx.batch.adapters) {
            (Some(stack), Some(rows)) => stack.add_to(y, x, rows),
            _ => Ok(y),
        }
    }
}

/// `w` quantized to `dtype`; None when it already is of that type.
pub(crate) fn quantize_matrix(w: &QMatMul, dtype: GgmlDType) -> Result<Option<QMatMul>> {
    let dense = match w {
        QMatMul::QTensor(q) if q.dtype() == dtype => return Ok(None),
        QMatMul::QTensor(q) => q.dequantize(&q.device())?,
        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(DType::F32)?,
    };
    Ok(Some(QMatMul::from_qtensor(quantize_dense(&dense, dtype)?)?))
}

/// A dense (rows, cols) matrix quantized to `dtype` as ggml's reference
/// quantizers write it (what llama.cpp's quantizer does without an
/// importance matrix): our ports for Q2_K, Q4_K, Q5_K and Q6_K (candle's are
/// an older ggml's), candle's for the types where it writes ggml's bytes
/// (Q3_K and the legacy types; Q8_K, which llama.cpp does not write).
pub fn quantize_dense(w: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    match dtype {
        GgmlDType::Q6K => crate::kernels::quantize_q6k::quantize_q6k(w),
        GgmlDType::Q2K | GgmlDType::Q4K | GgmlDType::Q5K => crate::kernels::quantize_kmin::quantize_kmin(w, dtype),
        _ => QTensor::quantize(w, dtype),
    }
}
