//! A linear layer, whatever its storage: dense f32 (`QMatMul::Tensor`) or a
//! ggml block-quantized matrix (`QMatMul::QTensor`, whose CPU kernels quantize
//! the activations to the weight's dot-product type as llama.cpp does).

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};

#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// `x`: (tokens, in_features) -> (tokens, out_features).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    pub fn weight(&self) -> &QMatMul {
        &self.weight
    }
}
