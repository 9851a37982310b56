//! Gemma: the llama layout with GeGLU (tanh-approximated GELU), RMSNorm
//! scaling by `1 + weight`, embeddings multiplied by sqrt(hidden_size), a
//! head_dim of its own, and the output head tied to the embeddings.

use candle_core::Device;

use super::decoder::{PreNormDecoder, PreNormLayer, Trunk};
use super::llama::{load_attention, load_mlp};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::layers::{GatedMlp, RmsNorm};
use crate::weights::WeightSource;

/// transformers' `GemmaRMSNorm` multiplies by `1 + weight`.
pub(crate) fn load_norm(cfg: &ModelConfig, w: &dyn WeightSource, name: &str) -> Result<RmsNorm> {
    Ok(RmsNorm::new((w.vector(name, cfg.hidden_size)? + 1.0)?, cfg.norm_eps))
}

pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> Result<PreNormDecoder<GatedMlp>> {
    // sqrt(hidden_size) rounded to the compute dtype, as transformers does.
    let embed_scale = (cfg.hidden_size as f32).sqrt() as f64;
    let trunk = Trunk::load(cfg, w, Some(embed_scale), device)?;
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
