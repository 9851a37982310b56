//! Phi-2 (transformers' `PhiForCausalLM`): LayerNorm, attention and MLP in
//! parallel from the same normalized input, rotary on the leading part of
//! each head only, biases everywhere, and a biased output head.

use candle_core::{Device, Result, Tensor};

use super::decoder::Trunk;
use super::causal_lm::CausalLm;
use crate::config::ModelConfig;
use crate::error::Result as LoadResult;
use crate::kv_cache::StepKv;
use crate::layers::{ForwardBatch, LayerNorm, Mlp, QkvProj, SelfAttention};
use crate::weights::WeightSource;

fn load_layer_norm(cfg: &ModelConfig, w: &dyn WeightSource, module: &str) -> LoadResult<LayerNorm> {
    let n = cfg.hidden_size;
    Ok(LayerNorm::new(w.vector(&format!("{module}.weight"), n)?, w.vector(&format!("{module}.bias"), n)?, cfg.norm_eps))
}

struct DecoderLayer {
    input_layernorm: LayerNorm,
    self_attn: SelfAttention,
    mlp: Mlp,
}

pub struct Phi2 {
    trunk: Trunk,
    layers: Vec<DecoderLayer>,
    final_layernorm: LayerNorm,
    cfg: ModelConfig,
}

impl Phi2 {
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> LoadResult<Self> {
        let (h, kv, d, hidden, inter) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, cfg.intermediate_size);
        let trunk = Trunk::load(cfg, w, None, device)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let qkv = QkvProj::Separate {
                q: w.linear(&format!("{p}.self_attn.q_proj"), h * d, hidden, true)?,
                k: w.linear(&format!("{p}.self_attn.k_proj"), kv * d, hidden, true)?,
                v: w.linear(&format!("{p}.self_attn.v_proj"), kv * d, hidden, true)?,
            };
            let dense = w.linear(&format!("{p}.self_attn.dense"), hidden, h * d, true)?;
            layers.push(DecoderLayer {
                input_layernorm: load_layer_norm(cfg, w, &format!("{p}.input_layernorm"))?,
                self_attn: SelfAttention::new(qkv, dense, h, kv, d, cfg.rotary_dim),
                mlp: Mlp::new(
                    w.linear(&format!("{p}.mlp.fc1"), inter, hidden, true)?,
                    w.linear(&format!("{p}.mlp.fc2"), hidden, inter, true)?,
                    cfg.hidden_act,
                ),
            });
            progress(i + 1);
        }
        Ok(Self { trunk, layers, final_layernorm: load_layer_norm(cfg, w, "model.final_layernorm")?, cfg: cfg.clone() })
    }
}

impl Phi2 {
    /// Every row's residual stream after the last layer (before the final norm).
    fn layers_forward(&self, batch: &ForwardBatch, kv: &mut StepKv) -> Result<Tensor> {
        let (mut x, ctx) = self.trunk.embed(batch)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(&x)?;
            let attn = layer.self_attn.forward(&h, &ctx, kv, i)?;
            x = ((x + attn)? + layer.mlp.forward(&h, &ctx)?)?;
        }
        Ok(x)
    }
}

impl CausalLm for Phi2 {
    fn forward(&self, batch: &ForwardBatch, kv: &mut StepKv) -> Result<Tensor> {
        let x = self.layers_forward(batch, kv)?;
        self.trunk.logits(&x, batch, |h| self.final_layernorm.forward(h))
    }

    fn hidden_states(&self, batch: &ForwardBatch, kv: &mut StepKv) -> Result<Tensor> {
        self.final_layernorm.forward(&self.layers_forward(batch, kv)?)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn dtype(&self) -> candle_core::DType {
        self.trunk.dtype()
    }
}
