//! Phi-3: the llama layout with Q, K and V in one `qkv_proj` matrix and the
//! gate and up projections in one `gate_up_proj`.

use candle_core::{Device, Result, Tensor};

use super::llama::{load_head, load_norm};
use super::{CausalLm, ModelConfig};
use crate::error::Result as LoadResult;
use crate::kv_cache::KvStore;
use crate::layers::{Embedding, ForwardBatch, GateUp, GatedMlp, Linear, QkvProj, RmsNorm, Rotary, SelfAttention, StepContext};
use crate::weights::WeightSource;

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

pub struct Phi3 {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    cfg: ModelConfig,
    device: Device,
}

impl Phi3 {
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> LoadResult<Self> {
        let (h, kv, d, hidden, inter) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, cfg.intermediate_size);
        let embed_tokens = w.embedding("model.embed_tokens", cfg.vocab_size, hidden)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let qkv = QkvProj::Fused(w.linear(&format!("{p}.self_attn.qkv_proj"), (h + 2 * kv) * d, hidden, false)?);
            let o = w.linear(&format!("{p}.self_attn.o_proj"), hidden, h * d, false)?;
            let gate_up = GateUp::Fused(w.linear(&format!("{p}.mlp.gate_up_proj"), 2 * inter, hidden, false)?);
            layers.push(DecoderLayer {
                input_layernorm: load_norm(cfg, w, &format!("{p}.input_layernorm.weight"))?,
                self_attn: SelfAttention::new(qkv, o, h, kv, d, cfg.rotary_dim),
                post_attention_layernorm: load_norm(cfg, w, &format!("{p}.post_attention_layernorm.weight"))?,
                mlp: GatedMlp::new(gate_up, w.linear(&format!("{p}.mlp.down_proj"), hidden, inter, false)?, cfg.hidden_act),
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

impl CausalLm for Phi3 {
    fn forward(&self, batch: &ForwardBatch, caches: &mut [&mut dyn KvStore]) -> Result<Tensor> {
        let ctx = StepContext::new(batch, &self.rotary, self.cfg.sliding_window, &self.device)?;
        let mut x = self.embed_tokens.forward(&batch.input_ids)?;
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
