//! A linear layer, whatever its storage: dense f32 (`QMatMul::Tensor`), a
//! ggml block-quantized matrix on candle's kernels (whose CPU code quantizes
//! the activations to the weight's dot-product type as llama.cpp does), or
//! one of the legacy block types on our own SIMD kernels.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};

use crate::kernels::LegacyQuantMatrix;

#[derive(Debug, Clone)]
enum Weight {
    Candle(QMatMul),
    Legacy(Arc<LegacyQuantMatrix>),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// Picks the kernel for the weight's type on the running CPU.
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Self {
        let legacy = match &weight {
            QMatMul::QTensor(t) => LegacyQuantMatrix::from_qtensor(t).ok().flatten(),
            _ => None,
        };
        let weight = match legacy {
            Some(m) => Weight::Legacy(Arc::new(m)),
            None => Weight::Candle(weight),
        };
        Self { weight, bias }
    }

    /// `x`: (tokens, in_features) -> (tokens, out_features).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Legacy(w) => w.matmul(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
