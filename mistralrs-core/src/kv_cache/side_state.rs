//! What a sequence carries for the model besides its KV blocks.

use candle_core::Tensor;

/// Per-sequence model state beyond the KV cache: X-LoRA counts the scaling
/// passes a sequence has had and, once its scalings freeze, keeps them.
#[derive(Debug, Clone, Default)]
pub struct SideState {
    pub scaling_passes: usize,
    /// (adapted layers, adapters) scalings applied to every later token.
    pub frozen_scalings: Option<Tensor>,
}
