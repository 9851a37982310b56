//! Gemma 2: Gemma (GeGLU, `1 + w` RMSNorms, embeddings scaled by
//! sqrt(hidden_size), tied head) with a norm on the output of attention and
//! of the MLP as well as before them, local sliding-window layers alternating
//! with global ones, attention scaled by `query_pre_attn_scalar`, and
//! soft-capped attention scores and logits. Gemma 3 is this decoder with
//! per-head Q/K norms and a rope of its own on the local layers (gemma3.rs).

use candle_core::Device;

use super::decoder::{PreNormDecoder, PreNormLayer, Trunk};
use super::gemma::load_norm;
use super::llama::{load_attention, load_mlp};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::layers::{GatedMlp, RmsNorm};
use crate::weights::WeightSource;

pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> Result<PreNormDecoder<GatedMlp>> {
    load_decoder(cfg, w, device, progress, false)
}

/// The Gemma 2 / Gemma 3 decoder; `qk_norm`: Gemma 3's per-head norms.
pub(crate) fn load_decoder(
    cfg: &ModelConfig,
    w: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize),
    qk_norm: bool,
) -> Result<PreNormDecoder<GatedMlp>> {
    // sqrt(hidden_size) rounded to the compute dtype, as transformers does.
    let embed_scale = (cfg.hidden_size as f32).sqrt() as f64;
    let trunk = Trunk::load(cfg, w, Some(embed_scale), device)?;
    let norm = |name: &str| load_norm(cfg, w, name);
    PreNormDecoder::load(cfg, trunk, norm("model.norm.weight")?, progress, |i| {
        let p = format!("model.layers.{i}");
        let attn = load_attention(cfg, w, &format!("{p}.self_attn"))?
            .with_scale(cfg.attn_scale())
            .with_softcap(cfg.extras.attn_logit_softcap)
            .local(cfg.is_local(i));
        let attn = if qk_norm {
            let head_norm = |n: &str| -> Result<RmsNorm> {
                Ok(RmsNorm::new((w.vector(&format!("{p}.self_attn.{n}.weight"), cfg.head_dim)? + 1.0)?, cfg.norm_eps))
            };
            attn.with_qk_norm(head_norm("q_norm")?, head_norm("k_norm")?)
        } else {
            attn
        };
        Ok(PreNormLayer {
            input_layernorm: norm(&format!("{p}.input_layernorm.weight"))?,
            self_attn: attn,
            post_attention_layernorm: norm(&format!("{p}.pre_feedforward_layernorm.weight"))?,
            mlp: load_mlp(cfg, w, &format!("{p}.mlp"))?,
            out_norms: Some((
                norm(&format!("{p}.post_attention_layernorm.weight"))?,
                norm(&format!("{p}.post_feedforward_layernorm.weight"))?,
            )),
        })
    })
}
