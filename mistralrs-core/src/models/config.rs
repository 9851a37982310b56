//! The shape of a model, read from a transformers `config.json` or from GGUF
//! metadata, in one form every architecture file consumes.

use std::path::Path;

use serde::Deserialize;

use crate::architecture::Architecture;
use super::gemma_config;
use crate::error::{Error, Result};
use crate::layers::rotary::{default_inv_freq, RopeFreqs};
use crate::layers::Activation;

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers' "linear").
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position: f64 },
    /// Per-pair divisors of the inverse frequencies (llama.cpp's `rope_freqs.weight`).
    Factors(Vec<f32>),
    /// Phi-3's LongRoPE: per-pair divisors for short sequences and for
    /// sequences longer than `original_max_position`, and a factor on cos/sin.
    LongRope { short: Vec<f32>, long: Vec<f32>, original_max_position: usize, attention_factor: f64 },
}

/// What Gemma 2 and 3 add to the llama layout; the default is none of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extras {
    /// Attention scores are scaled by 1/sqrt(this) rather than 1/sqrt(head_dim).
    pub query_pre_attn_scalar: Option<f64>,
    /// Attention scores become `cap · tanh(score / cap)` before the mask and softmax.
    pub attn_logit_softcap: Option<f64>,
    /// Logits become `cap · tanh(logit / cap)`.
    pub final_logit_softcap: Option<f64>,
    /// Per layer: whether it attends through `sliding_window` (a local
    /// layer) or to the whole context. None: every layer uses the window, if any.
    pub sliding_layers: Option<Vec<bool>>,
    /// The rope base of the local layers, which rotate without `rope_scaling`
    /// (Gemma 3); None: they rotate as the global layers do.
    pub local_rope_theta: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// The context length: prompts plus generated tokens never exceed it.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub sliding_window: Option<usize>,
    /// Biases on the Q, K and V projections (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Leading dims of each head that are rotated (all of them except in phi2).
    pub rotary_dim: usize,
    pub hidden_act: Activation,
    /// Mixture-of-experts: experts per layer (0 for a dense MLP) and experts per token.
    pub num_experts: usize,
    pub experts_per_token: usize,
    pub extras: Extras,
}

impl ModelConfig {
    /// The rotary frequencies with the configured scaling applied.
    pub fn rope_freqs(&self) -> RopeFreqs {
        let base = default_inv_freq(self.rotary_dim, self.rope_theta);
        let divided = |div: &[f32]| base.iter().zip(div).map(|(f, d)| f / d).collect::<Vec<f32>>();
        match &self.rope_scaling {
            RopeScaling::LongRope { short, long, original_max_position, attention_factor } => RopeFreqs {
                inv_freq: divided(short),
                long: Some((divided(long), *original_max_position)),
                scale: *attention_factor as f32,
            },
            _ => RopeFreqs::plain(self.inv_freq()),
        }
    }

    /// The local layers' rotary frequencies where they differ from `rope_freqs`.
    pub fn local_rope_freqs(&self) -> Option<RopeFreqs> {
        let theta = self.extras.local_rope_theta?;
        Some(RopeFreqs::plain(default_inv_freq(self.rotary_dim, theta)))
    }

    /// Whether layer `i` attends through the sliding window.
    pub fn is_local(&self, i: usize) -> bool {
        self.sliding_window.is_some() && self.extras.sliding_layers.as_ref().is_none_or(|l| l.get(i).copied().unwrap_or(false))
    }

    /// The factor on attention scores.
    pub fn attn_scale(&self) -> f64 {
        1.0 / self.extras.query_pre_attn_scalar.unwrap_or(self.head_dim as f64).sqrt()
    }

    /// Inverse rotary frequencies with the configured (length-independent) scaling applied.
    fn inv_freq(&self) -> Vec<f32> {
        let base = default_inv_freq(self.rotary_dim, self.rope_theta);
        match &self.rope_scaling {
            RopeScaling::None | RopeScaling::LongRope { .. } => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| (*f as f64 / factor) as f32).collect(),
            RopeScaling::Factors(div) => base.iter().zip(div).map(|(f, d)| f / d).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                let low_wavelen = original_max_position / low_freq_factor;
                let high_wavelen = original_max_position / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let f = f as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (original_max_position / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                        } else {
                            scaled as f32
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The subset of transformers' config.json fields the engine reads. Both the
/// older layout (`rope_theta`, `rope_scaling` at top level) and transformers
/// 5's `rope_parameters` are accepted.
#[derive(Debug, Deserialize)]
pub(super) struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    layer_norm_eps: Option<f64>,
    partial_rotary_factor: Option<f64>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: usize,
    original_max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    // Gemma 2 and 3 (see gemma_config.rs).
    pub(super) query_pre_attn_scalar: Option<f64>,
    pub(super) attn_logit_softcapping: Option<f64>,
    pub(super) final_logit_softcapping: Option<f64>,
    pub(super) layer_types: Option<Vec<String>>,
    #[serde(alias = "_sliding_window_pattern")]
    pub(super) sliding_window_pattern: Option<usize>,
    pub(super) rope_local_base_freq: Option<f64>,
}

fn arch_of_class(class: &str) -> Option<Architecture> {
    Some(match class {
        "MistralForCausalLM" => Architecture::Mistral,
        "GemmaForCausalLM" => Architecture::Gemma,
        "MixtralForCausalLM" => Architecture::Mixtral,
        "LlamaForCausalLM" => Architecture::Llama,
        "PhiForCausalLM" => Architecture::Phi2,
        "Phi3ForCausalLM" => Architecture::Phi3,
        "Qwen2ForCausalLM" => Architecture::Qwen2,
        _ => return None,
    })
}

/// transformers' LongRoPE defaults: the attention factor from the ratio of
/// the extended to the original context.
fn longrope(v: &serde_json::Value, path: &Path, max_position: usize, original: Option<usize>) -> Result<RopeScaling> {
    let factors = |k: &str| -> Result<Vec<f32>> {
        v.get(k)
            .and_then(|x| x.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect())
            .ok_or_else(|| Error::bad_file(path, format!("longrope scaling needs `{k}`")))
    };
    let original = original
        .or_else(|| v.get("original_max_position_embeddings").and_then(|x| x.as_u64()).map(|x| x as usize))
        .unwrap_or(max_position);
    let factor = max_position as f64 / original as f64;
    let attention_factor = v.get("attention_factor").and_then(|x| x.as_f64()).unwrap_or(if factor <= 1.0 {
        1.0
    } else {
        (1.0 + factor.ln() / (original as f64).ln()).sqrt()
    });
    Ok(RopeScaling::LongRope { short: factors("short_factor")?, long: factors("long_factor")?, original_max_position: original, attention_factor })
}

fn rope_scaling_of(v: &serde_json::Value, path: &Path) -> Result<RopeScaling> {
    let get = |k: &str| v.get(k).and_then(|x| x.as_f64());
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|x| x.as_str()).unwrap_or("default");
    let need = |k: &str| {
        get(k).ok_or_else(|| Error::bad_file(path, format!("rope scaling `{kind}` needs `{k}`")))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position: need("original_max_position_embeddings")?,
        },
        other => {
            return Err(Error::bad_file(
                path,
                format!("rope scaling type `{other}` is not supported (supported: default, linear, llama3, longrope)"),
            ))
        }
    })
}

impl ModelConfig {
    /// Reads `config.json` and checks that it describes `arch`.
    pub fn from_hf_json(path: &Path, arch: Architecture) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::not_found(path, format!("cannot read config.json: {e}")))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))?;
        let class_of = |k: &str| raw.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let model_type = class_of("model_type");
        let classes: Vec<String> = raw
            .get("architectures")
            .and_then(|x| x.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).map(str::to_string).collect())
            .unwrap_or_default();
        let found = model_type
            .as_deref()
            .and_then(Architecture::from_model_type)
            .or_else(|| classes.iter().find_map(|a| arch_of_class(a)));
        let named = model_type.clone().unwrap_or_else(|| classes.join(","));
        match found {
            Some(a) if a == arch => {}
            _ => {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "the Runner was asked for arch `{arch}` but config.json describes `{named}` \
                         (model_type/architectures); supported: {}",
                        Architecture::names()
                    ),
                ))
            }
        }

        let raw = gemma_config::text_config(raw, arch);
        let c: HfConfig = serde_json::from_value(raw)
            .map_err(|e| Error::bad_file(path, format!("not a supported model config: {e}")))?;
        let extras = gemma_config::extras(&c, arch, c.num_hidden_layers);

        // transformers 5 moves rope settings into `rope_parameters`.
        let params = c.rope_parameters.as_ref();
        let rope_theta = c
            .rope_theta
            .or_else(|| params.and_then(|p| p.get("rope_theta")).and_then(|x| x.as_f64()))
            .unwrap_or(10_000.0);
        let scaling_src = c.rope_scaling.as_ref().filter(|v| !v.is_null()).or(params);
        let kind = scaling_src.and_then(|v| v.get("rope_type").or_else(|| v.get("type"))).and_then(|x| x.as_str());
        let rope_scaling = match (scaling_src, kind) {
            (Some(v), Some("longrope" | "su")) => {
                longrope(v, path, c.max_position_embeddings, c.original_max_position_embeddings)?
            }
            (Some(v), _) => rope_scaling_of(v, path)?,
            (None, _) => RopeScaling::None,
        };
        if c.num_attention_heads == 0 || (!c.hidden_size.is_multiple_of(c.num_attention_heads) && c.head_dim.is_none()) {
            return Err(Error::bad_file(path, "hidden_size must be a multiple of num_attention_heads"));
        }
        let num_kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        if num_kv_heads == 0 || !c.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(Error::bad_file(path, "num_attention_heads must be a multiple of num_key_value_heads"));
        }
        // Qwen2 configs carry a window that is off unless `use_sliding_window` says otherwise.
        let window_on = match arch {
            Architecture::Qwen2 => c.use_sliding_window == Some(true),
            _ => c.use_sliding_window != Some(false),
        };
        let sliding_window = c.sliding_window.filter(|_| window_on);
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads);
        let rotary_dim = match c.partial_rotary_factor {
            Some(f) => (head_dim as f64 * f) as usize,
            None => head_dim,
        };
        // Gemma names its activation `hidden_activation` (and keeps a stale `hidden_act`).
        let act_name = c.hidden_activation.as_deref().or(c.hidden_act.as_deref()).unwrap_or("silu");
        let hidden_act = Activation::from_hf(act_name)
            .ok_or_else(|| Error::bad_file(path, format!("activation `{act_name}` is not supported")))?;
        Ok(ModelConfig {
            arch,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads,
            head_dim,
            norm_eps: c.rms_norm_eps.or(c.layer_norm_eps).unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(matches!(arch, Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3)),
            sliding_window,
            qkv_bias: arch == Architecture::Qwen2 || c.attention_bias.unwrap_or(false),
            o_bias: arch != Architecture::Qwen2 && c.attention_bias.unwrap_or(false),
            mlp_bias: c.mlp_bias.unwrap_or(false),
            rotary_dim,
            hidden_act,
            num_experts: c.num_local_experts.unwrap_or(0),
            experts_per_token: c.num_experts_per_tok.unwrap_or(2),
            extras,
        })
    }
}

/// A field of the model config, for messages that name it the way the file
/// it came from does (`num_hidden_layers` in config.json, `llama.block_count`
/// in a GGUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Vocab,
    Hidden,
    Intermediate,
    Layers,
    Heads,
    KvHeads,
    HeadDim,
    NormEps,
    RopeTheta,
    RopeScaling,
    Context,
    SlidingWindow,
    RotaryDim,
    Experts,
    ExpertsPerToken,
    QueryPreAttnScalar,
    AttnSoftcap,
    FinalSoftcap,
    LocalRopeTheta,
}

impl Field {
    /// The key in transformers' config.json.
    pub fn hf_key(self) -> &'static str {
        match self {
            Field::Vocab => "vocab_size",
            Field::Hidden => "hidden_size",
            Field::Intermediate => "intermediate_size",
            Field::Layers => "num_hidden_layers",
            Field::Heads => "num_attention_heads",
            Field::KvHeads => "num_key_value_heads",
            Field::HeadDim => "head_dim",
            Field::NormEps => "rms_norm_eps",
            Field::RopeTheta => "rope_theta",
            Field::RopeScaling => "rope_scaling",
            Field::Context => "max_position_embeddings",
            Field::SlidingWindow => "sliding_window",
            Field::RotaryDim => "partial_rotary_factor",
            Field::Experts => "num_local_experts",
            Field::ExpertsPerToken => "num_experts_per_tok",
            Field::QueryPreAttnScalar => "query_pre_attn_scalar",
            Field::AttnSoftcap => "attn_logit_softcapping",
            Field::FinalSoftcap => "final_logit_softcapping",
            Field::LocalRopeTheta => "rope_local_base_freq",
        }
    }

    /// The key in GGUF metadata, after `{arch}.`.
    pub fn gguf_key(self) -> &'static str {
        match self {
            Field::Vocab => "vocab_size",
            Field::Hidden => "embedding_length",
            Field::Intermediate => "feed_forward_length",
            Field::Layers => "block_count",
            Field::Heads => "attention.head_count",
            Field::KvHeads => "attention.head_count_kv",
            Field::HeadDim => "attention.key_length",
            Field::NormEps => "attention.layer_norm_rms_epsilon",
            Field::RopeTheta => "rope.freq_base",
            Field::RopeScaling => "rope.scaling.factor",
            Field::Context => "context_length",
            Field::SlidingWindow => "attention.sliding_window",
            Field::RotaryDim => "rope.dimension_count",
            Field::Experts => "expert_count",
            Field::ExpertsPerToken => "expert_used_count",
            // llama.cpp's files have no query_pre_attn_scalar: the head dim stands in.
            Field::QueryPreAttnScalar => "attention.key_length",
            Field::AttnSoftcap => "attn_logit_softcapping",
            Field::FinalSoftcap => "final_logit_softcapping",
            Field::LocalRopeTheta => "rope.freq_base_swa",
        }
    }
}

/// No real model comes near this in any one dimension (the largest vocabularies
/// are ~256k, hidden sizes ~32k); a file that claims more is corrupt, and the
/// bound keeps products of dims far from overflow.
const MAX_DIM: usize = 1 << 24;
/// Experts per layer.
const MAX_EXPERTS: usize = 1 << 12;

impl ModelConfig {
    /// Checks every size and hyper-parameter for range and consistency
    /// before anything is allocated by it. `tensors` is how many tensors the
    /// weights hold (each layer has several, so it bounds the layer count);
    /// `name` says how the file names a field.
    pub fn validate(&self, tensors: usize, name: &dyn Fn(Field) -> String) -> std::result::Result<(), String> {
        let dim = |f: Field, v: usize| -> std::result::Result<(), String> {
            if v == 0 || v > MAX_DIM {
                return Err(format!("`{}` is {v}; it must be between 1 and {MAX_DIM}", name(f)));
            }
            Ok(())
        };
        dim(Field::Vocab, self.vocab_size)?;
        dim(Field::Hidden, self.hidden_size)?;
        dim(Field::Intermediate, self.intermediate_size)?;
        dim(Field::Heads, self.num_heads)?;
        dim(Field::KvHeads, self.num_kv_heads)?;
        dim(Field::HeadDim, self.head_dim)?;
        if self.num_layers == 0 || self.num_layers > tensors {
            return Err(format!(
                "`{}` is {}, but the weights hold {tensors} tensors (each layer has several)",
                name(Field::Layers),
                self.num_layers
            ));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "`{}` ({}) is not a multiple of `{}` ({})",
                name(Field::Heads),
                self.num_heads,
                name(Field::KvHeads),
                self.num_kv_heads
            ));
        }
        if self.num_heads.saturating_mul(self.head_dim) > MAX_DIM {
            return Err(format!("`{}` × head dim is beyond {MAX_DIM}", name(Field::Heads)));
        }
        if self.rotary_dim == 0 || self.rotary_dim % 2 != 0 || self.rotary_dim > self.head_dim {
            return Err(format!(
                "`{}` gives a rotary dimension of {}; it must be even, positive and at most the head dim {}",
                name(Field::RotaryDim),
                self.rotary_dim,
                self.head_dim
            ));
        }
        if self.max_position_embeddings == 0 {
            return Err(format!("`{}` is 0", name(Field::Context)));
        }
        if self.sliding_window == Some(0) {
            return Err(format!("`{}` is 0", name(Field::SlidingWindow)));
        }
        if !self.norm_eps.is_finite() || self.norm_eps < 0.0 {
            return Err(format!("`{}` is {}; it must be finite and not negative", name(Field::NormEps), self.norm_eps));
        }
        if !self.rope_theta.is_finite() || self.rope_theta <= 0.0 {
            return Err(format!("`{}` is {}; it must be finite and positive", name(Field::RopeTheta), self.rope_theta));
        }
        if self.num_experts > MAX_EXPERTS
            || (self.num_experts > 0 && !(1..=self.num_experts).contains(&self.experts_per_token))
        {
            return Err(format!(
                "`{}` is {} with `{}` {}; experts per token must be between 1 and the experts (at most {MAX_EXPERTS})",
                name(Field::Experts),
                self.num_experts,
                name(Field::ExpertsPerToken),
                self.experts_per_token
            ));
        }
        self.validate_extras(name)?;
        self.validate_rope_scaling(name)
    }

    fn validate_extras(&self, name: &dyn Fn(Field) -> String) -> std::result::Result<(), String> {
        let e = &self.extras;
        for (field, v) in [
            (Field::QueryPreAttnScalar, e.query_pre_attn_scalar),
            (Field::AttnSoftcap, e.attn_logit_softcap),
            (Field::FinalSoftcap, e.final_logit_softcap),
            (Field::LocalRopeTheta, e.local_rope_theta),
        ] {
            if let Some(x) = v.filter(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(format!("`{}` is {x}; it must be finite and positive", name(field)));
            }
        }
        if let Some(layers) = &e.sliding_layers {
            if layers.len() != self.num_layers {
                return Err(format!("{} layer kinds for `{}` = {} layers", layers.len(), name(Field::Layers), self.num_layers));
            }
        }
        Ok(())
    }

    fn validate_rope_scaling(&self, name: &dyn Fn(Field) -> String) -> std::result::Result<(), String> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let pairs = self.rotary_dim / 2;
        let factors = |v: &[f32]| v.len() == pairs && v.iter().all(|&x| positive(x as f64));
        let ok = match &self.rope_scaling {
            RopeScaling::None => true,
            RopeScaling::Linear { factor } => positive(*factor),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                [*factor, *low_freq_factor, *high_freq_factor, *original_max_position].into_iter().all(positive)
                    && high_freq_factor != low_freq_factor
            }
            RopeScaling::Factors(v) => factors(v),
            RopeScaling::LongRope { short, long, original_max_position, attention_factor } => {
                factors(short) && factors(long) && *original_max_position > 0 && positive(*attention_factor)
            }
        };
        if ok {
            return Ok(());
        }
        Err(format!(
            "`{}`: the rope scaling {:?} needs finite, positive factors ({pairs} per-pair factors where it has a list)",
            name(Field::RopeScaling),
            self.rope_scaling
        ))
    }
}
