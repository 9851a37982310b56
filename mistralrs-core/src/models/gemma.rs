//! Gemma: the llama layout with GeGLU (tanh-approximated GELU), RMSNorm
//! scaling by `1 + weight`, embeddings multiplied by sqrt(hidden_size), a
//! head_dim of its own, and the output head tied to the embeddings.

use candle_core::{Device, Result, Tensor};

use super::llama::{load_attention, load_head};
use super::{CausalLm, ModelConfig};
use crate::error::Result as LoadResult;
use crate::kv_cache::KvStore;
use crate::layers::{Embedding, ForwardBatch, GateUp, GatedMlp, Linear, RmsNorm, Rotary, SelfAttention, StepContext};
use crate::weights::WeightSource;

/// transformers' `GemmaRMSNorm` multiplies by `1 + weight`.
fn load_norm(cfg: &ModelConfig, w: &dyn WeightSource, name: &str) -> LoadResult<RmsNorm> {
    Ok(RmsNorm::new((w.vector(name, cfg.hidden_size)? + 1.0)?, cfg.norm_eps))
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

pub struct Gemma {
    embed_tokens: Embedding,
    /// sqrt(hidden_size), rounded to the compute dtype as transformers does.
    embed_scale: f64,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    cfg: ModelConfig,
    device: Device,
}

impl Gemma {
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> LoadResult<Self> {
        let (hidden, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let embed_tokens = w.embedding("model.embed_tokens", cfg.vocab_size, hidden)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let gate_up = GateUp::Separate {
                gate: w.linear(&format!("{p}.mlp.gate_proj"), inter, hidden, false)?,
                up: w.linear(&format!("{p}.mlp.up_proj"), inter, hidden, false)?,
            };
            layers.push(DecoderLayer {
                input_layernorm: load_norm(cfg, w, &format!("{p}.input_layernorm.weight"))?,
                self_attn: load_attention(cfg, w, &format!("{p}.self_attn"))?,
                post_attention_layernorm: load_norm(cfg, w, &format!("{p}.post_attention_layernorm.weight"))?,
                mlp: GatedMlp::new(gate_up, w.linear(&format!("{p}.mlp.down_proj"), hidden, inter, false)?, cfg.hidden_act),
            });
            progress(i + 1);
        }
        Ok(Self {
            lm_head: load_head(cfg, w, &embed_tokens)?,
            embed_tokens,
            embed_scale: (hidden as f32).sqrt() as f64,
            layers,
            norm: load_norm(cfg, w, "model.norm.weight")?,
            rotary: Rotary::new(&cfg.rope_freqs(), cfg.max_position_embeddings, device)?,
            cfg: cfg.clone(),
            device: device.clone(),
        })
    }
}

impl CausalLm for Gemma {
    fn forward(&self, batch: &ForwardBatch, caches: &mut [&mut dyn KvStore]) -> Result<Tensor> {
        let ctx = StepContext::new(batch, &self.rotary, self.cfg.sliding_window, &self.device)?;
        let mut x = (self.embed_tokens.forward(&batch.input_ids)? * self.embed_scale)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.self_attn.forward(&layer.input_layernorm.forward(&x)?, &ctx, caches, i)?;
            x = (x + h)?;
            let h = layer.mlp.forward(&layer.post_attention_layernorm.forward(&x)?)?;
            x = (x + h)?;
        }
        let last = x.index_select(&batch.last_rows, 0)?;
        self.lm_head.forward(&self.norm.forward(&last)?)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}
