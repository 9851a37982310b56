//! What every architecture is to the engine: a causal language model over
//! a batched step and its slice of the KV cache.

use candle_core::Tensor;

use crate::config::{ModelConfig, RopeScaling};
use crate::kv_cache::StepKv;
use crate::layers::ForwardBatch;

pub trait CausalLm: Send + Sync {
    /// Runs every sequence's new tokens, appending to its cache
    /// (the KV of `batch.slots[i]` is `kv`'s sequence i), and returns the logits of each
    /// sequence's last token: (sequences, vocab) f32.
    fn forward(&self, batch: &ForwardBatch, kv: &mut StepKv) -> candle_core::Result<Tensor>;
    /// Like `forward`, but returns every row's hidden state after the final
    /// norm (the output head's input): (tokens, hidden).
    fn hidden_states(&self, batch: &ForwardBatch, kv: &mut StepKv) -> candle_core::Result<Tensor>;
    fn config(&self) -> &ModelConfig;
    /// The compute dtype: activations and the KV cache.
    fn dtype(&self) -> candle_core::DType;
    /// Layers of KV cache each sequence needs (X-LoRA keeps two sets).
    fn cache_layers(&self) -> usize {
        self.config().num_layers
    }
    /// The sliding window and the cache layers that attend through it
    /// (Mistral's: all; Gemma 2/3's local layers), or None. Keys older than
    /// the window are never read again by those layers.
    fn windowed_cache_layers(&self) -> Option<(usize, Vec<usize>)> {
        let cfg = self.config();
        let window = cfg.sliding_window?;
        let layers: Vec<usize> = (0..self.cache_layers()).filter(|&i| cfg.is_local(i % cfg.num_layers.max(1))).collect();
        (!layers.is_empty()).then_some((window, layers))
    }
    /// Whether a position's keys depend on the sequence's whole length, not
    /// just the tokens before it: LongRoPE picks its rotation by the length
    /// when the keys are computed (as transformers does). The engine then
    /// neither reuses cached prefixes nor splits a prompt into chunks.
    fn keys_depend_on_length(&self) -> bool {
        matches!(self.config().rope_scaling, RopeScaling::LongRope { .. })
    }
}
