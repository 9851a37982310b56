//! A `ModelConfig` from transformers' `config.json`.

use std::path::Path;

use super::gemma;
use super::hf_config::HfConfig;
use super::model::{ModelConfig, RopeScaling};
use crate::architecture::Architecture;
use crate::error::{Error, Result};
use crate::layers::Activation;

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

        let raw = gemma::text_config(raw, arch);
        let c: HfConfig = serde_json::from_value(raw)
            .map_err(|e| Error::bad_file(path, format!("not a supported model config: {e}")))?;
        let extras = gemma::extras(&c, arch, c.num_hidden_layers);

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
