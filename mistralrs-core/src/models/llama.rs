//! Llama (Llama 2/3, SmolLM): pre-norm decoder blocks with RMSNorm, rotary
//! attention with grouped KV heads, and a SwiGLU MLP. Mistral (a sliding
//! attention window) and Qwen2 (biases on Q, K and V) are this architecture
//! with those two settings of `ModelConfig`, so they run this file too.

use candle_core::Device;

use super::decoder::{PreNormDecoder, PreNormLayer, Trunk};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::layers::{GateUp, GatedMlp, QkvProj, RmsNorm, SelfAttention};
use crate::weights::WeightSource;

/// The attention block of the llama family (`{p}.q_proj` ... `{p}.o_proj`).
pub(crate) fn load_attention(cfg: &ModelConfig, w: &dyn WeightSource, p: &str) -> Result<SelfAttention> {
    let (h, kv, d, hidden) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size);
    let qkv = QkvProj::Separate {
        q: w.linear(&format!("{p}.q_proj"), h * d, hidden, cfg.qkv_bias)?,
        k: w.linear(&format!("{p}.k_proj"), kv * d, hidden, cfg.qkv_bias)?,
        v: w.linear(&format!("{p}.v_proj"), kv * d, hidden, cfg.qkv_bias)?,
    };
    let o = w.linear(&format!("{p}.o_proj"), hidden, h * d, cfg.o_bias)?;
    Ok(SelfAttention::new(qkv, o, h, kv, d, cfg.rotary_dim))
}

/// The SwiGLU MLP `{p}.gate_proj`, `{p}.up_proj`, `{p}.down_proj`.
pub(crate) fn load_mlp(cfg: &ModelConfig, w: &dyn WeightSource, p: &str) -> Result<GatedMlp> {
    let (hidden, inter, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
    let gate_up = GateUp::Separate {
        gate: w.linear(&format!("{p}.gate_proj"), inter, hidden, bias)?,
        up: w.linear(&format!("{p}.up_proj"), inter, hidden, bias)?,
    };
    Ok(GatedMlp::new(gate_up, w.linear(&format!("{p}.down_proj"), hidden, inter, bias)?, cfg.hidden_act))
}

pub(crate) fn load_norm(cfg: &ModelConfig, w: &dyn WeightSource, name: &str) -> Result<RmsNorm> {
    Ok(RmsNorm::new(w.vector(name, cfg.hidden_size)?, cfg.norm_eps))
}

pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> Result<PreNormDecoder<GatedMlp>> {
    let trunk = Trunk::load(cfg, w, None, device)?;
    PreNormDecoder::load(cfg, trunk, load_norm(cfg, w, "model.norm.weight")?, progress, |i| {
        let p = format!("model.layers.{i}");
        Ok(PreNormLayer {
            input_layernorm: load_norm(cfg, w, &format!("{p}.input_layernorm.weight"))?,
            self_attn: load_attention(cfg, w, &format!("{p}.self_attn"))?,
            post_attention_layernorm: load_norm(cfg, w, &format!("{p}.post_attention_layernorm.weight"))?,
            mlp: load_mlp(cfg, w, &format!("{p}.mlp"))?,
            out_norms: None,
        })
    })
}
