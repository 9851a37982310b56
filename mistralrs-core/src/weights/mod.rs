//! Where a model's tensors come from. Architectures ask for weights by their
//! transformers module names (`model.layers.0.self_attn.q_proj`); each source
//! translates to its own file's names and layout.

pub mod finite;
pub mod ggml;
pub mod gguf;
pub mod gguf_types;
pub mod isq;
pub mod safetensors;
pub mod stored;
pub mod tensor_file;

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::layers::{Embedding, Linear};

pub trait WeightSource {
    /// A linear layer `module` mapping `in_dim` to `out_dim`, with its bias
    /// when `bias` is true.
    fn linear(&self, module: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear>;
    /// A dense 1-D tensor of the compute dtype (norm scales), `name` including `.weight`.
    fn vector(&self, name: &str, len: usize) -> Result<Tensor>;
    /// The token embedding table `module` (vocab, hidden); `head`: the model
    /// also multiplies by it as its output head (tied embeddings), else it is
    /// only looked up by row.
    fn embedding(&self, module: &str, vocab: usize, hidden: usize, head: bool) -> Result<Embedding>;
    /// Whether the module's weight is present (e.g. an untied `lm_head`).
    fn has_module(&self, module: &str) -> bool;
    /// Whether tensor `name` (e.g. `lm_head.bias`) is present.
    fn has_tensor(&self, name: &str) -> bool;
    /// The compute dtype: what dense weights, activations and the KV cache
    /// are in (quantized weights keep their block type).
    fn dtype(&self) -> DType;
}
