//! What the architectures share: the trunk around the decoder layers
//! (token embeddings, rotary tables, output head) and the pre-norm decoder
//! (`x + attn(norm(x))`, then `x + ffn(norm(x))`) that all but phi2 use;
//! Gemma 2 and 3 add a norm on each block's output (`x + norm(attn(norm(x)))`).
//! An architecture file says how its layers are built from the weights.

use candle_core::{DType, Device, Result, Tensor};

use super::causal_lm::CausalLm;
use crate::config::ModelConfig;
use crate::error::Result as LoadResult;
use crate::kv_cache::StepKv;
use crate::layers::step::AttnView;
use crate::layers::{Embedding, ForwardBatch, GatedMlp, Linear, RmsNorm, Rotary, SelfAttention, StepContext};
use crate::weights::WeightSource;

/// The block after attention: a dense MLP or a mixture of experts.
pub trait FeedForward: Send + Sync {
    /// (tokens, hidden) -> (tokens, hidden)
    /// (tokens, hidden) -> (tokens, hidden); `x`'s rows are the step's tokens.
    fn forward(&self, x: &Tensor, ctx: &StepContext) -> Result<Tensor>;
}

impl FeedForward for GatedMlp {
    fn forward(&self, x: &Tensor, ctx: &StepContext) -> Result<Tensor> {
        GatedMlp::forward(self, x, Some(ctx))
    }
}

pub struct Trunk {
    embed_tokens: Embedding,
    /// Gemma multiplies embeddings by sqrt(hidden_size).
    embed_scale: Option<f64>,
    lm_head: Linear,
    rotary: Rotary,
    /// The window of the global layers (Mistral's, which all its layers use).
    window: Option<usize>,
    /// Models with local layers: their window, and their rotary where it
    /// differs from the global layers' (Gemma 3's).
    local: Option<(usize, Option<Rotary>)>,
    /// Logits become `cap · tanh(logit / cap)` (Gemma 2).
    final_softcap: Option<f64>,
    device: Device,
    /// The compute dtype (activations, rotary tables).
    dtype: DType,
}

impl Trunk {
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, embed_scale: Option<f64>, device: &Device) -> LoadResult<Self> {
        let tied = cfg.tie_word_embeddings || !w.has_module("lm_head");
        let embed_tokens = w.embedding("model.embed_tokens", cfg.vocab_size, cfg.hidden_size, tied)?;
        let lm_head = if tied {
            embed_tokens.as_output_head()?
        } else {
            w.linear("lm_head", cfg.vocab_size, cfg.hidden_size, w.has_tensor("lm_head.bias"))?
        };
        let interleaved = cfg.extras.sliding_layers.is_some();
        let local = match (interleaved, cfg.sliding_window) {
            (true, Some(w)) => Some((w, cfg.local_rope_freqs().map(|f| Rotary::new(&f)).transpose()?)),
            _ => None,
        };
        Ok(Self {
            embed_tokens,
            embed_scale,
            lm_head,
            rotary: Rotary::new(&cfg.rope_freqs())?,
            window: if interleaved { None } else { cfg.sliding_window },
            local,
            final_softcap: cfg.extras.final_logit_softcap,
            device: device.clone(),
            dtype: w.dtype(),
        })
    }

    /// The embeddings of the batch's tokens, (tokens, hidden), and what its layers share.
    pub fn embed<'a>(&self, batch: &'a ForwardBatch) -> Result<(Tensor, StepContext<'a>)> {
        let (device, dtype) = (&self.device, self.dtype);
        let mut ctx = StepContext::new(batch, &self.rotary, self.window, device, dtype)?;
        if let Some((window, rotary)) = &self.local {
            ctx.local = Some(match rotary {
                Some(r) => AttnView::new(batch, r, Some(*window), device, dtype)?,
                None => AttnView::with_rows(batch, &ctx.global, Some(*window), device, dtype)?,
            });
        }
        // A quantized table's rows come out in f32.
        let x = self.embed_tokens.forward(&batch.input_ids)?.to_dtype(dtype)?;
        let x = match self.embed_scale {
            Some(s) => (x * s)?,
            None => x,
        };
        Ok((x, ctx))
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Logits of each sequence's last token; only those rows are normalized and projected.
    pub fn logits(&self, x: &Tensor, batch: &ForwardBatch, final_norm: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let last = x.index_select(&batch.last_rows, 0)?; // (sequences, hidden)
        let logits = self.lm_head.forward(&final_norm(&last)?)?;
        match self.final_softcap {
            Some(c) => (logits / c)?.tanh()? * c,
            None => Ok(logits),
        }
    }
}

pub struct PreNormLayer<F> {
    pub input_layernorm: RmsNorm,
    pub self_attn: SelfAttention,
    /// The norm before the feed-forward block (transformers' llama name).
    pub post_attention_layernorm: RmsNorm,
    pub mlp: F,
    /// Norms of the attention and feed-forward outputs (Gemma 2 and 3).
    pub out_norms: Option<(RmsNorm, RmsNorm)>,
}

/// A pre-norm decoder: llama, mistral, qwen2, gemma, gemma2, gemma3, phi3, mixtral.
pub struct PreNormDecoder<F> {
    trunk: Trunk,
    layers: Vec<PreNormLayer<F>>,
    norm: RmsNorm,
    cfg: ModelConfig,
}

impl<F: FeedForward> PreNormDecoder<F> {
    /// `layer(i)` builds layer i; `norm` is the final norm.
    pub fn load(
        cfg: &ModelConfig,
        trunk: Trunk,
        norm: RmsNorm,
        progress: &dyn Fn(usize),
        mut layer: impl FnMut(usize) -> LoadResult<PreNormLayer<F>>,
    ) -> LoadResult<Self> {
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            layers.push(layer(i)?);
            progress(i + 1);
        }
        Ok(Self { trunk, layers, norm, cfg: cfg.clone() })
    }
}

impl<F: FeedForward> PreNormDecoder<F> {
    /// Every row's residual stream after the last layer (before the final norm).
    fn layers_forward(&self, batch: &ForwardBatch, kv: &mut StepKv) -> Result<Tensor> {
        let (mut x, ctx) = self.trunk.embed(batch)?;
        for (i, l) in self.layers.iter().enumerate() {
            let h = l.self_attn.forward(&l.input_layernorm.forward(&x)?, &ctx, kv, i)?;
            let h = match &l.out_norms {
                Some((attn_out, _)) => attn_out.forward(&h)?,
                None => h,
            };
            x = (x + h)?;
            let h = l.mlp.forward(&l.post_attention_layernorm.forward(&x)?, &ctx)?;
            let h = match &l.out_norms {
                Some((_, ffn_out)) => ffn_out.forward(&h)?,
                None => h,
            };
            x = (x + h)?;
        }
        Ok(x)
    }
}

impl<F: FeedForward> CausalLm for PreNormDecoder<F> {
    fn forward(&self, batch: &ForwardBatch, kv: &mut StepKv) -> Result<Tensor> {
        let x = self.layers_forward(batch, kv)?;
        self.trunk.logits(&x, batch, |h| self.norm.forward(h))
    }

    fn hidden_states(&self, batch: &ForwardBatch, kv: &mut StepKv) -> Result<Tensor> {
        self.norm.forward(&self.layers_forward(batch, kv)?)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn dtype(&self) -> DType {
        self.trunk.dtype()
    }
}
