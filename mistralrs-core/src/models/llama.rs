//! Llama (Llama 2/3, SmolLM): pre-norm decoder blocks with RMSNorm, rotary
//! attention with grouped KV heads, and a SwiGLU MLP. Mistral (a sliding
//! attention window) and Qwen2 (biases on Q, K and V) are this architecture
//! with those two settings of `ModelConfig`, so they run this file too.

use candle_core::{Device, Result, Tensor};

use super::{CausalLm, ModelConfig};
use crate::error::Result as LoadResult;
use crate::kv_cache::KvStore;
use crate::layers::{Embedding, ForwardBatch, GateUp, GatedMlp, Linear, QkvProj, RmsNorm, Rotary, SelfAttention, StepContext};
use crate::weights::WeightSource;

/// The attention block of the llama family (`{p}.q_proj` ... `{p}.o_proj`).
pub(crate) fn load_attention(cfg: &ModelConfig, w: &dyn WeightSource, p: &str) -> LoadResult<SelfAttention> {
    let (h, kv, d, hidden) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size);
    let qkv = QkvProj::Separate {
        q: w.linear(&format!("{p}.q_proj"), h * d, hidden, cfg.qkv_bias)?,
        k: w.linear(&format!("{p}.k_proj"), kv * d, hidden, cfg.qkv_bias)?,
        v: w.linear(&format!("{p}.v_proj"), kv * d, hidden, cfg.qkv_bias)?,
    };
    let o = w.linear(&format!("{p}.o_proj"), hidden, h * d, cfg.o_bias)?;
    Ok(SelfAttention::new(qkv, o, h, kv, d, cfg.rotary_dim))
}

/// The output head: its own matrix, or the embeddings when tied.
pub(crate) fn load_head(cfg: &ModelConfig, w: &dyn WeightSource, embed: &Embedding) -> LoadResult<Linear> {
    if cfg.tie_word_embeddings || !w.has_module("lm_head") {
        Ok(Linear::new(embed.table().clone(), None))
    } else {
        w.linear("lm_head", cfg.vocab_size, cfg.hidden_size, false)
    }
}

pub(crate) fn load_norm(cfg: &ModelConfig, w: &dyn WeightSource, name: &str) -> LoadResult<RmsNorm> {
    Ok(RmsNorm::new(w.vector(name, cfg.hidden_size)?, cfg.norm_eps))
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    cfg: ModelConfig,
    device: Device,
}

impl Llama {
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> LoadResult<Self> {
        let (hidden, inter, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        let embed_tokens = w.embedding("model.embed_tokens", cfg.vocab_size, hidden)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let gate_up = GateUp::Separate {
                gate: w.linear(&format!("{p}.mlp.gate_proj"), inter, hidden, bias)?,
                up: w.linear(&format!("{p}.mlp.up_proj"), inter, hidden, bias)?,
            };
            layers.push(DecoderLayer {
                input_layernorm: load_norm(cfg, w, &format!("{p}.input_layernorm.weight"))?,
                self_attn: load_attention(cfg, w, &format!("{p}.self_attn"))?,
                post_attention_layernorm: load_norm(cfg, w, &format!("{p}.post_attention_layernorm.weight"))?,
                mlp: GatedMlp::new(gate_up, w.linear(&format!("{p}.mlp.down_proj"), hidden, inter, bias)?, cfg.hidden_act),
            });
            progress(i + 1);
        }
        Ok(Self {
            lm_head: load_head(cfg, w, &embed_tokens)?,
            embed_tokens,
            layers,
            norm: load_norm(cfg, w, "model.norm.weight")?,
            rotary: Rotary::new(&cfg.rope_freqs(), cfg.max_position_embeddings, device)?,
            cfg: cfg.clone(),
            device: device.clone(),
        })
    }
}

impl CausalLm for Llama {
    fn forward(&self, batch: &ForwardBatch, caches: &mut [&mut dyn KvStore]) -> Result<Tensor> {
        let ctx = StepContext::new(batch, &self.rotary, self.cfg.sliding_window, &self.device)?;
        let mut x = self.embed_tokens.forward(&batch.input_ids)?; // (tokens, hidden)
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.self_attn.forward(&layer.input_layernorm.forward(&x)?, &ctx, caches, i)?;
            x = (x + h)?;
            let h = layer.mlp.forward(&layer.post_attention_layernorm.forward(&x)?)?;
            x = (x + h)?;
        }
        // Only each sequence's last token needs logits.
        let last = x.index_select(&batch.last_rows, 0)?; // (sequences, hidden)
        self.lm_head.forward(&self.norm.forward(&last)?)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}
