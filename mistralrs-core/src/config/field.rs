//! The config's fields by the names each kind of file gives them.

/// A field of the model config, for messages that name it the way the file
/// it came from does (`num_hidden_layers` in config.json, `llama.block_count`
/// in a GGUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Vocab,
    Hidden,
    Intermediate,
    Layers,
    Heads,
    KvHeads,
    HeadDim,
    NormEps,
    RopeTheta,
    RopeScaling,
    Context,
    SlidingWindow,
    RotaryDim,
    Experts,
    ExpertsPerToken,
    QueryPreAttnScalar,
    AttnSoftcap,
    FinalSoftcap,
    LocalRopeTheta,
}

impl Field {
    /// The key in transformers' config.json.
    pub fn hf_key(self) -> &'static str {
        match self {
            Field::Vocab => "vocab_size",
            Field::Hidden => "hidden_size",
            Field::Intermediate => "intermediate_size",
            Field::Layers => "num_hidden_layers",
            Field::Heads => "num_attention_heads",
            Field::KvHeads => "num_key_value_heads",
            Field::HeadDim => "head_dim",
            Field::NormEps => "rms_norm_eps",
            Field::RopeTheta => "rope_theta",
            Field::RopeScaling => "rope_scaling",
            Field::Context => "max_position_embeddings",
            Field::SlidingWindow => "sliding_window",
            Field::RotaryDim => "partial_rotary_factor",
            Field::Experts => "num_local_experts",
            Field::ExpertsPerToken => "num_experts_per_tok",
            Field::QueryPreAttnScalar => "query_pre_attn_scalar",
            Field::AttnSoftcap => "attn_logit_softcapping",
            Field::FinalSoftcap => "final_logit_softcapping",
            Field::LocalRopeTheta => "rope_local_base_freq",
        }
    }

    /// The key in GGUF metadata, after `{arch}.`.
    pub fn gguf_key(self) -> &'static str {
        match self {
            Field::Vocab => "vocab_size",
            Field::Hidden => "embedding_length",
            Field::Intermediate => "feed_forward_length",
            Field::Layers => "block_count",
            Field::Heads => "attention.head_count",
            Field::KvHeads => "attention.head_count_kv",
            Field::HeadDim => "attention.key_length",
            Field::NormEps => "attention.layer_norm_rms_epsilon",
            Field::RopeTheta => "rope.freq_base",
            Field::RopeScaling => "rope.scaling.factor",
            Field::Context => "context_length",
            Field::SlidingWindow => "attention.sliding_window",
            Field::RotaryDim => "rope.dimension_count",
            Field::Experts => "expert_count",
            Field::ExpertsPerToken => "expert_used_count",
            // llama.cpp's files have no query_pre_attn_scalar: the head dim stands in.
            Field::QueryPreAttnScalar => "attention.key_length",
            Field::AttnSoftcap => "attn_logit_softcapping",
            Field::FinalSoftcap => "final_logit_softcapping",
            Field::LocalRopeTheta => "rope.freq_base_swa",
        }
    }
}
