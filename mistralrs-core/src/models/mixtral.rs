//! Mixtral: the llama layout with a sparse mixture of SwiGLU experts in place
//! of the MLP. Each token goes to its top-k experts by router softmax, their
//! outputs weighted by those probabilities renormalized over the chosen k
//! (transformers' `MixtralSparseMoeBlock`).

use candle_core::{DType, Device, Result, Tensor};

use super::llama::{load_attention, load_head, load_norm};
use super::{CausalLm, ModelConfig};
use crate::error::Result as LoadResult;
use crate::kv_cache::KvStore;
use crate::layers::{Embedding, ForwardBatch, GateUp, GatedMlp, Linear, RmsNorm, Rotary, SelfAttention, StepContext};
use crate::weights::WeightSource;

struct SparseMoe {
    router: Linear,
    experts: Vec<GatedMlp>,
    top_k: usize,
}

impl SparseMoe {
    fn load(cfg: &ModelConfig, w: &dyn WeightSource, p: &str) -> LoadResult<Self> {
        let (hidden, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let experts = (0..cfg.num_experts)
            .map(|e| {
                let q = format!("{p}.experts.{e}");
                let gate_up = GateUp::Separate {
                    gate: w.linear(&format!("{q}.w1"), inter, hidden, false)?,
                    up: w.linear(&format!("{q}.w3"), inter, hidden, false)?,
                };
                Ok(GatedMlp::new(gate_up, w.linear(&format!("{q}.w2"), hidden, inter, false)?, cfg.hidden_act))
            })
            .collect::<LoadResult<Vec<_>>>()?;
        Ok(Self {
            router: w.linear(&format!("{p}.gate"), cfg.num_experts, hidden, false)?,
            experts,
            top_k: cfg.experts_per_token.min(cfg.num_experts),
        })
    }

    /// `x`: (tokens, hidden) -> (tokens, hidden).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let router = self.router.forward(x)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        // Per expert: the tokens routed to it and their weights.
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); self.experts.len()];
        for (t, logits) in router.iter().enumerate() {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let probs: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let chosen = &order[..self.top_k];
            let total: f32 = chosen.iter().map(|&e| probs[e]).sum();
            for &e in chosen {
                routed[e].0.push(t as u32);
                routed[e].1.push(probs[e] / total);
            }
        }
        let mut out = x.zeros_like()?;
        for (expert, (tokens, weights)) in self.experts.iter().zip(routed) {
            if tokens.is_empty() {
                continue;
            }
            let n = tokens.len();
            let ids = Tensor::from_vec(tokens, n, x.device())?;
            let weights = Tensor::from_vec(weights, (n, 1), x.device())?.to_dtype(x.dtype())?;
            let y = expert.forward(&x.index_select(&ids, 0)?)?.broadcast_mul(&weights)?;
            out = out.index_add(&ids, &y, 0)?;
        }
        Ok(out)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    moe: SparseMoe,
}

pub struct Mixtral {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    cfg: ModelConfig,
    device: Device,
}

impl Mixtral {
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> LoadResult<Self> {
        let embed_tokens = w.embedding("model.embed_tokens", cfg.vocab_size, cfg.hidden_size)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(DecoderLayer {
                input_layernorm: load_norm(cfg, w, &format!("{p}.input_layernorm.weight"))?,
                self_attn: load_attention(cfg, w, &format!("{p}.self_attn"))?,
                post_attention_layernorm: load_norm(cfg, w, &format!("{p}.post_attention_layernorm.weight"))?,
                moe: SparseMoe::load(cfg, w, &format!("{p}.block_sparse_moe"))?,
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

impl CausalLm for Mixtral {
    fn forward(&self, batch: &ForwardBatch, caches: &mut [&mut dyn KvStore]) -> Result<Tensor> {
        let ctx = StepContext::new(batch, &self.rotary, self.cfg.sliding_window, &self.device)?;
        let mut x = self.embed_tokens.forward(&batch.input_ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.self_attn.forward(&layer.input_layernorm.forward(&x)?, &ctx, caches, i)?;
            x = (x + h)?;
            let h = layer.moe.forward(&layer.post_attention_layernorm.forward(&x)?)?;
            x = (x + h)?;
        }
        let last = x.index_select(&batch.last_rows, 0)?;
        self.lm_head.forward(&self.norm.forward(&last)?)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}
