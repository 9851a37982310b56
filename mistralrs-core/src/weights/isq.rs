//! In-situ quantization: a weight source that quantizes each linear layer
//! and the embedding table to a ggml type as the architecture asks for them,
//! so only one layer's dense weights exist at a time during a load.
//!
//! Which tensor gets which type follows llama.cpp's quantizer
//! (`llama_tensor_get_type`) for the types it shares with us:
//! - every linear layer and the token embeddings: the requested type;
//! - the output head (`lm_head`): Q6_K, except for Q8_0 and Q8_K requests,
//!   which keep their own type (llama.cpp keeps Q8_0's output at Q8_0);
//! - a matrix whose rows are not whole blocks of the type: the legacy type
//!   llama.cpp falls back to (Q2_K, Q3_K -> Q4_0 (llama.cpp: IQ4_NL, which we
//!   do not run), Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K, Q8_K -> Q8_0), and if rows
//!   are not whole 32-blocks either, left unquantized;
//! - norms and biases stay f32.

use candle_core::quantized::GgmlDType;
use candle_core::Tensor;

use super::WeightSource;
use crate::error::{Error, Result};
use crate::layers::{Embedding, Linear};

/// The names `Runner(in_situ_quant=...)` and `send_re_isq` accept (SPEC §1),
/// and llama.cpp's spelling of the K-quants.
pub fn parse_isq(name: &str) -> Result<GgmlDType> {
    Ok(match name {
        "Q4_0" => GgmlDType::Q4_0,
        "Q4_1" => GgmlDType::Q4_1,
        "Q5_0" => GgmlDType::Q5_0,
        "Q5_1" => GgmlDType::Q5_1,
        "Q8_0" => GgmlDType::Q8_0,
        "Q2K" | "Q2_K" => GgmlDType::Q2K,
        "Q3K" | "Q3_K" => GgmlDType::Q3K,
        "Q4K" | "Q4_K" => GgmlDType::Q4K,
        "Q5K" | "Q5_K" => GgmlDType::Q5K,
        "Q6K" | "Q6_K" => GgmlDType::Q6K,
        "Q8K" | "Q8_K" => GgmlDType::Q8K,
        _ => {
            return Err(Error::invalid(format!(
                "in-situ quantization type `{name}` is not one of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K"
            )))
        }
    })
}

fn is_k_quant(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K | GgmlDType::Q8K)
}

/// The type tensor `module` with rows of `cols` values gets for a request of
/// `want`; None: left as it is.
pub fn isq_type(want: GgmlDType, module: &str, cols: usize) -> Option<GgmlDType> {
    let t = if module == "lm_head" && !matches!(want, GgmlDType::Q8_0 | GgmlDType::Q8K) { GgmlDType::Q6K } else { want };
    if cols.is_multiple_of(t.block_size()) {
        return Some(t);
    }
    let fallback = match t {
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K | GgmlDType::Q8K => GgmlDType::Q8_0,
        _ => return None,
    };
    (is_k_quant(t) && cols.is_multiple_of(fallback.block_size())).then_some(fallback)
}

pub struct QuantizingSource<'a> {
    inner: &'a dyn WeightSource,
    dtype: GgmlDType,
}

impl<'a> QuantizingSource<'a> {
    pub fn new(inner: &'a dyn WeightSource, dtype: GgmlDType) -> Self {
        Self { inner, dtype }
    }
}

impl WeightSource for QuantizingSource<'_> {
    fn linear(&self, module: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear> {
        let l = self.inner.linear(module, out_dim, in_dim, bias)?;
        Ok(match isq_type(self.dtype, module, in_dim) {
            Some(t) => l.quantized(t)?,
            None => l,
        })
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        self.inner.vector(name, len)
    }

    fn embedding(&self, module: &str, vocab: usize, hidden: usize, head: bool) -> Result<Embedding> {
        let e = self.inner.embedding(module, vocab, hidden, head)?;
        Ok(match isq_type(self.dtype, module, hidden) {
            Some(t) => e.quantized(t)?,
            None => e,
        })
    }

    fn has_module(&self, module: &str) -> bool {
        self.inner.has_module(module)
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.inner.has_tensor(name)
    }

    fn dtype(&self) -> candle_core::DType {
        self.inner.dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_llama_cpp() {
        assert_eq!(isq_type(GgmlDType::Q4K, "model.layers.0.mlp.up_proj", 4096), Some(GgmlDType::Q4K));
        assert_eq!(isq_type(GgmlDType::Q4K, "lm_head", 4096), Some(GgmlDType::Q6K));
        assert_eq!(isq_type(GgmlDType::Q8_0, "lm_head", 64), Some(GgmlDType::Q8_0));
        // 576-wide rows (SmolLM2) are not whole 256-blocks.
        assert_eq!(isq_type(GgmlDType::Q4K, "model.layers.0.mlp.up_proj", 576), Some(GgmlDType::Q5_0));
        assert_eq!(isq_type(GgmlDType::Q4_0, "model.layers.0.mlp.up_proj", 100), None);
        assert!(parse_isq("Q4K").is_ok() && parse_isq("Q4_K").is_ok() && parse_isq("IQ4_XS").is_err());
    }
}
