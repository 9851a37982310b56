//! The shape of a model in the one form every architecture file consumes,
//! wherever it was read from, and the rotary frequencies it implies.

use crate::architecture::Architecture;
use crate::layers::rotary::{default_inv_freq, RopeFreqs};
use crate::layers::Activation;

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers' "linear").
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position: f64 },
    /// Per-pair divisors of the inverse frequencies (llama.cpp's `rope_freqs.weight`).
    Factors(Vec<f32>),
    /// Phi-3's LongRoPE: per-pair divisors for short sequences and for
    /// sequences longer than `original_max_position`, and a factor on cos/sin.
    LongRope { short: Vec<f32>, long: Vec<f32>, original_max_position: usize, attention_factor: f64 },
}

/// What Gemma 2 and 3 add to the llama layout; the default is none of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extras {
    /// Attention scores are scaled by 1/sqrt(this) rather than 1/sqrt(head_dim).
    pub query_pre_attn_scalar: Option<f64>,
    /// Attention scores become `cap · tanh(score / cap)` before the mask and softmax.
    pub attn_logit_softcap: Option<f64>,
    /// Logits become `cap · tanh(logit / cap)`.
    pub final_logit_softcap: Option<f64>,
    /// Per layer: whether it attends through `sliding_window` (a local
    /// layer) or to the whole context. None: every layer uses the window, if any.
    pub sliding_layers: Option<Vec<bool>>,
    /// The rope base of the local layers, which rotate without `rope_scaling`
    /// (Gemma 3); None: they rotate as the global layers do.
    pub local_rope_theta: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// The context length: prompts plus generated tokens never exceed it.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub sliding_window: Option<usize>,
    /// Biases on the Q, K and V projections (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Leading dims of each head that are rotated (all of them except in phi2).
    pub rotary_dim: usize,
    pub hidden_act: Activation,
    /// Mixture-of-experts: experts per layer (0 for a dense MLP) and experts per token.
    pub num_experts: usize,
    pub experts_per_token: usize,
    pub extras: Extras,
}

impl ModelConfig {
    /// The rotary frequencies with the configured scaling applied.
    pub fn rope_freqs(&self) -> RopeFreqs {
        let base = default_inv_freq(self.rotary_dim, self.rope_theta);
        let divided = |div: &[f32]| base.iter().zip(div).map(|(f, d)| f / d).collect::<Vec<f32>>();
        match &self.rope_scaling {
            RopeScaling::LongRope { short, long, original_max_position, attention_factor } => RopeFreqs {
                inv_freq: divided(short),
                long: Some((divided(long), *original_max_position)),
                scale: *attention_factor as f32,
            },
            _ => RopeFreqs::plain(self.inv_freq()),
        }
    }

    /// The local layers' rotary frequencies where they differ from `rope_freqs`.
    pub fn local_rope_freqs(&self) -> Option<RopeFreqs> {
        let theta = self.extras.local_rope_theta?;
        Some(RopeFreqs::plain(default_inv_freq(self.rotary_dim, theta)))
    }

    /// Whether layer `i` attends through the sliding window.
    pub fn is_local(&self, i: usize) -> bool {
        self.sliding_window.is_some() && self.extras.sliding_layers.as_ref().is_none_or(|l| l.get(i).copied().unwrap_or(false))
    }

    /// The factor on attention scores.
    pub fn attn_scale(&self) -> f64 {
        1.0 / self.extras.query_pre_attn_scalar.unwrap_or(self.head_dim as f64).sqrt()
    }

    /// Inverse rotary frequencies with the configured (length-independent) scaling applied.
    fn inv_freq(&self) -> Vec<f32> {
        let base = default_inv_freq(self.rotary_dim, self.rope_theta);
        match &self.rope_scaling {
            RopeScaling::None | RopeScaling::LongRope { .. } => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| (*f as f64 / factor) as f32).collect(),
            RopeScaling::Factors(div) => base.iter().zip(div).map(|(f, d)| f / d).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                let low_wavelen = original_max_position / low_freq_factor;
                let high_wavelen = original_max_position / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let f = f as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (original_max_position / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                        } else {
                            scaled as f32
                        }
                    })
                    .collect()
            }
        }
    }
}
