//! Llama (Llama 2/3, SmolLM, Mistral): pre-norm decoder blocks with RMSNorm,
//! rotary attention with grouped KV heads, and a SwiGLU MLP.

use candle_core::{Device, Result, Tensor};

use super::{CausalLm, ForwardBatch, ModelConfig};
use crate::error::Result as EngineResult;
use crate::kv_cache::KvStore;
use crate::layers::{causal_mask, grouped_attention, Embedding, Linear, RmsNorm, Rotary};
use crate::weights::WeightSource;

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(cfg: &ModelConfig, w: &dyn WeightSource, p: &str) -> EngineResult<Self> {
        let (h, kv, d, hidden) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size);
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: w.linear(&format!("{p}.q_proj"), h * d, hidden, bias)?,
            k_proj: w.linear(&format!("{p}.k_proj"), kv * d, hidden, bias)?,
            v_proj: w.linear(&format!("{p}.v_proj"), kv * d, hidden, bias)?,
            o_proj: w.linear(&format!("{p}.o_proj"), hidden, h * d, bias)?,
            heads: h,
            kv_heads: kv,
            head_dim: d,
        })
    }

    /// `x`: (tokens, hidden) -> (tokens, hidden).
    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        batch: &ForwardBatch,
        masks: &[Option<Tensor>],
        caches: &mut [&mut dyn KvStore],
        layer: usize,
    ) -> Result<Tensor> {
        let t = x.dims2()?.0;
        let q = self.q_proj.forward(x)?.reshape((t, self.heads, self.head_dim))?;
        let k = self.k_proj.forward(x)?.reshape((t, self.kv_heads, self.head_dim))?;
        let v = self.v_proj.forward(x)?.reshape((t, self.kv_heads, self.head_dim))?;
        let q = Rotary::apply(&q, &rope.0, &rope.1)?;
        let k = Rotary::apply(&k, &rope.0, &rope.1)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();

        // Projections ran over the whole batch at once; attention runs per
        // sequence, each against its own cache.
        let mut outs = Vec::with_capacity(batch.slots.len());
        for (i, slot) in batch.slots.iter().enumerate() {
            let qs = q.narrow(0, slot.start, slot.len)?.transpose(0, 1)?; // (heads, len, dim)
            let ks = k.narrow(0, slot.start, slot.len)?.transpose(0, 1)?; // (kv_heads, len, dim)
            let vs = v.narrow(0, slot.start, slot.len)?.transpose(0, 1)?;
            let (k_all, v_all) = caches[i].append(layer, &ks, &vs)?;
            outs.push(grouped_attention(&qs, &k_all, &v_all, masks[i].as_ref(), scale)?);
        }
        let y = if outs.len() == 1 { outs.pop().expect("one output") } else { Tensor::cat(&outs, 0)? };
        self.o_proj.forward(&y)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(cfg: &ModelConfig, w: &dyn WeightSource, p: &str) -> EngineResult<Self> {
        let (hidden, inter, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: w.linear(&format!("{p}.gate_proj"), inter, hidden, bias)?,
            up_proj: w.linear(&format!("{p}.up_proj"), inter, hidden, bias)?,
            down_proj: w.linear(&format!("{p}.down_proj"), hidden, inter, bias)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
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
    pub fn load(
        cfg: &ModelConfig,
        w: &dyn WeightSource,
        device: &Device,
        progress: &dyn Fn(usize),
    ) -> EngineResult<Self> {
        let embed_tokens = w.embedding("model.embed_tokens", cfg.vocab_size, cfg.hidden_size)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::new(w.vector(&format!("{p}.input_layernorm.weight"), cfg.hidden_size)?, cfg.norm_eps),
                self_attn: Attention::load(cfg, w, &format!("{p}.self_attn"))?,
                post_attention_layernorm: RmsNorm::new(
                    w.vector(&format!("{p}.post_attention_layernorm.weight"), cfg.hidden_size)?,
                    cfg.norm_eps,
                ),
                mlp: Mlp::load(cfg, w, &format!("{p}.mlp"))?,
            });
            progress(i + 1);
        }
        let norm = RmsNorm::new(w.vector("model.norm.weight", cfg.hidden_size)?, cfg.norm_eps);
        let lm_head = if cfg.tie_word_embeddings || !w.has_module("lm_head") {
            Linear::new(embed_tokens.table().clone(), None)
        } else {
            w.linear("lm_head", cfg.vocab_size, cfg.hidden_size, false)?
        };
        let rotary = Rotary::new(&cfg.inv_freq(), cfg.max_position_embeddings, device)?;
        Ok(Self { embed_tokens, layers, norm, lm_head, rotary, cfg: cfg.clone(), device: device.clone() })
    }
}

impl CausalLm for Llama {
    fn forward(&self, batch: &ForwardBatch, caches: &mut [&mut dyn KvStore]) -> Result<Tensor> {
        let mut x = self.embed_tokens.forward(&batch.input_ids)?; // (tokens, hidden)
        let rope = self.rotary.tables(&batch.positions)?;
        let masks = batch
            .slots
            .iter()
            .map(|s| causal_mask(s.len, s.past, self.cfg.sliding_window, &self.device))
            .collect::<Result<Vec<_>>>()?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(&x)?;
            let h = layer.self_attn.forward(&h, &rope, batch, &masks, caches, i)?;
            x = (x + h)?;
            let h = layer.post_attention_layernorm.forward(&x)?;
            x = (x + layer.mlp.forward(&h)?)?;
        }
        // Only each sequence's last token needs logits.
        let last = x.index_select(&batch.last_rows, 0)?; // (sequences, hidden)
        self.lm_head.forward(&self.norm.forward(&last)?)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}
