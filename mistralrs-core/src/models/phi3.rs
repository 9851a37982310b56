//! Phi-3: the llama layout with Q, K and V in one `qkv_proj` matrix, the
//! gate and up projections in one `gate_up_proj`, and LongRoPE scaling.

use candle_core::Device;

use super::decoder::{PreNormDecoder, PreNormLayer, Trunk};
use super::llama::load_norm;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::layers::{GateUp, GatedMlp, QkvProj, SelfAttention};
use crate::weights::WeightSource;

pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> Result<PreNormDecoder<GatedMlp>> {
    let (h, kv, d, hidden, inter) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, cfg.intermediate_size);
    let trunk = Trunk::load(cfg, w, None, device)?;
    PreNormDecoder::load(cfg, trunk, load_norm(cfg, w, "model.norm.weight")?, progress, |i| {
        let p = format!("model.layers.{i}");
        let qkv = QkvProj::Fused(w.linear(&format!("{p}.self_attn.qkv_proj"), (h + 2 * kv) * d, hidden, false)?);
        let o = w.linear(&format!("{p}.self_attn.o_proj"), hidden, h * d, false)?;
        let gate_up = GateUp::Fused(w.linear(&format!("{p}.mlp.gate_up_proj"), 2 * inter, hidden, false)?);
        Ok(PreNormLayer {
            input_layernorm: load_norm(cfg, w, &format!("{p}.input_layernorm.weight"))?,
            self_attn: SelfAttention::new(qkv, o, h, kv, d, cfg.rotary_dim),
            post_attention_layernorm: load_norm(cfg, w, &format!("{p}.post_attention_layernorm.weight"))?,
            mlp: GatedMlp::new(gate_up, w.linear(&format!("{p}.mlp.down_proj"), hidden, inter, false)?, cfg.hidden_act),
            out_norms: None,
        })
    })
}
