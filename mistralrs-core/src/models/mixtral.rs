//! Mixtral: the llama layout with a sparse mixture of SwiGLU experts in place
//! of the MLP. Each token goes to its top-k experts by router softmax, their
//! outputs weighted by those probabilities renormalized over the chosen k
//! (transformers' `MixtralSparseMoeBlock`).

use candle_core::{DType, Device, Result, Tensor};

use super::decoder::{FeedForward, PreNormDecoder, PreNormLayer, Trunk};
use super::llama::{load_attention, load_norm};
use crate::config::ModelConfig;
use crate::error::Result as LoadResult;
use crate::layers::{GateUp, GatedMlp, Linear, StepContext};
use crate::weights::WeightSource;

pub struct SparseMoe {
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
            let y = expert.forward(&x.index_select(&ids, 0)?, None)?.broadcast_mul(&weights)?;
            out = out.index_add(&ids, &y, 0)?;
        }
        Ok(out)
    }
}

impl FeedForward for SparseMoe {
    // Experts see only the rows routed to them, so they take no adapters
    // (PEFT cannot target transformers' fused expert tensors either).
    fn forward(&self, x: &Tensor, _ctx: &StepContext) -> Result<Tensor> {
        SparseMoe::forward(self, x)
    }
}

pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> LoadResult<PreNormDecoder<SparseMoe>> {
    let trunk = Trunk::load(cfg, w, None, device)?;
    PreNormDecoder::load(cfg, trunk, load_norm(cfg, w, "model.norm.weight")?, progress, |i| {
        let p = format!("model.layers.{i}");
        Ok(PreNormLayer {
            input_layernorm: load_norm(cfg, w, &format!("{p}.input_layernorm.weight"))?,
            self_attn: load_attention(cfg, w, &format!("{p}.self_attn"))?,
            post_attention_layernorm: load_norm(cfg, w, &format!("{p}.post_attention_layernorm.weight"))?,
            mlp: SparseMoe::load(cfg, w, &format!("{p}.block_sparse_moe"))?,
            out_norms: None,
        })
    })
}
