//! transformers' `config.json` as the engine reads it, before it becomes a
//! `ModelConfig` (`from_hf.rs`).

use serde::Deserialize;

/// The subset of transformers' config.json fields the engine reads. Both the
/// older layout (`rope_theta`, `rope_scaling` at top level) and transformers
/// 5's `rope_parameters` are accepted.
#[derive(Debug, Deserialize)]
pub(super) struct HfConfig {
    pub(super) vocab_size: usize,
    pub(super) hidden_size: usize,
    pub(super) intermediate_size: usize,
    pub(super) num_hidden_layers: usize,
    pub(super) num_attention_heads: usize,
    pub(super) num_key_value_heads: Option<usize>,
    pub(super) head_dim: Option<usize>,
    pub(super) rms_norm_eps: Option<f64>,
    pub(super) layer_norm_eps: Option<f64>,
    pub(super) partial_rotary_factor: Option<f64>,
    pub(super) hidden_act: Option<String>,
    pub(super) hidden_activation: Option<String>,
    pub(super) num_local_experts: Option<usize>,
    pub(super) num_experts_per_tok: Option<usize>,
    pub(super) rope_theta: Option<f64>,
    pub(super) rope_scaling: Option<serde_json::Value>,
    pub(super) rope_parameters: Option<serde_json::Value>,
    pub(super) max_position_embeddings: usize,
    pub(super) original_max_position_embeddings: Option<usize>,
    pub(super) tie_word_embeddings: Option<bool>,
    pub(super) sliding_window: Option<usize>,
    pub(super) use_sliding_window: Option<bool>,
    pub(super) attention_bias: Option<bool>,
    pub(super) mlp_bias: Option<bool>,
    // Gemma 2 and 3 (see gemma.rs).
    pub(super) query_pre_attn_scalar: Option<f64>,
    pub(super) attn_logit_softcapping: Option<f64>,
    pub(super) final_logit_softcapping: Option<f64>,
    pub(super) layer_types: Option<Vec<String>>,
    #[serde(alias = "_sliding_window_pattern")]
    pub(super) sliding_window_pattern: Option<usize>,
    pub(super) rope_local_base_freq: Option<f64>,
}
