//! The model config a GGUF file's metadata implies, and how llama.cpp
//! stores each architecture it names.

use candle_core::quantized::gguf_file::Value;
use candle_core::Device;

use super::file::{value_as_u64, GgufFile};
use crate::architecture::Architecture;
use crate::config::{Extras, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::layers::Activation;

/// How llama.cpp stores an architecture.
pub(super) struct GgufArch {
    pub(super) arch: Architecture,
    /// The converter interleaved the rotary pairs of Q and K (the `llama` family only).
    pub(super) interleaved_rope: bool,
    /// Norm weights are stored with transformers' `1 +` already added (gemma).
    pub(super) norm_plus_one: bool,
}

const SUPPORTED_GGUF: &str = "llama (also Mistral and Mixtral files), qwen2, gemma, gemma2, gemma3, phi2, phi3";

pub(super) fn arch_of_gguf(file: &GgufFile) -> Result<GgufArch> {
    let name = file.architecture()?;
    let plain = |arch| GgufArch { arch, interleaved_rope: false, norm_plus_one: false };
    Ok(match name {
        "llama" | "mistral" => {
            let moe = file.get_usize(&format!("{name}.expert_count")).unwrap_or(0) > 0;
            let arch = if moe { Architecture::Mixtral } else { Architecture::Llama };
            GgufArch { arch, interleaved_rope: true, norm_plus_one: false }
        }
        "qwen2" => plain(Architecture::Qwen2),
        "phi2" => plain(Architecture::Phi2),
        "phi3" => plain(Architecture::Phi3),
        "gemma" => GgufArch { arch: Architecture::Gemma, interleaved_rope: false, norm_plus_one: true },
        "gemma2" => GgufArch { arch: Architecture::Gemma2, interleaved_rope: false, norm_plus_one: true },
        "gemma3" => GgufArch { arch: Architecture::Gemma3, interleaved_rope: false, norm_plus_one: true },
        other => {
            return Err(Error::bad_file(
                &file.path,
                format!("GGUF architecture `{other}` is not supported; supported: {SUPPORTED_GGUF}"),
            ))
        }
    })
}

pub fn model_config(file: &GgufFile) -> Result<ModelConfig> {
    let name = file.architecture()?.to_string();
    let kind = arch_of_gguf(file)?;
    let key = |k: &str| format!("{name}.{k}");
    let hidden = file.require_usize(&key("embedding_length"))?;
    let heads = file.require_usize(&key("attention.head_count"))?;
    let kv_heads = file.get_usize(&key("attention.head_count_kv")).unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::bad_file(
            &file.path,
            format!(
                "`{}` is {heads} and `{}` is {kv_heads}: both must be positive, the first a multiple of the second",
                key("attention.head_count"),
                key("attention.head_count_kv")
            ),
        ));
    }
    let head_dim = file.get_usize(&key("attention.key_length")).unwrap_or(hidden / heads);
    let vocab = match file.tensor_dims("token_embd.weight") {
        Some(&[rows, _]) => rows,
        _ => return Err(Error::bad_file(&file.path, "tensor `token_embd.weight` is missing or not 2-D")),
    };
    let vector = |name: &str| -> Result<Vec<f32>> {
        Ok(file.qtensor(name, &Device::Cpu)?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
    };
    let context = file.require_usize(&key("context_length"))?;
    let rope_scaling = if file.has_tensor("rope_freqs.weight") {
        RopeScaling::Factors(vector("rope_freqs.weight")?)
    } else if file.has_tensor("rope_factors_long.weight") {
        // Phi-3 LongRoPE; the switch to the long factors follows transformers
        // (per sequence length), not llama.cpp's choice by context size.
        let original = file.get_usize(&key("rope.scaling.original_context_length")).unwrap_or(context);
        let factor = context as f64 / original as f64;
        let computed = if factor <= 1.0 { 1.0 } else { (1.0 + factor.ln() / (original as f64).ln()).sqrt() };
        RopeScaling::LongRope {
            short: vector("rope_factors_short.weight")?,
            long: vector("rope_factors_long.weight")?,
            original_max_position: original,
            attention_factor: file.get_f64(&key("rope.scaling.attn_factor")).unwrap_or(computed),
        }
    } else {
        match (file.get_str(&key("rope.scaling.type")), file.get_f64(&key("rope.scaling.factor"))) {
            (Some("linear"), Some(factor)) => RopeScaling::Linear { factor },
            (None | Some("none"), _) => RopeScaling::None,
            (Some(other), _) => {
                return Err(Error::bad_file(&file.path, format!("rope scaling `{other}` is not supported")))
            }
        }
    };
    let eps = file
        .get_f64(&key("attention.layer_norm_rms_epsilon"))
        .or_else(|| file.get_f64(&key("attention.layer_norm_epsilon")))
        .unwrap_or(1e-5);
    let hidden_act = match kind.arch {
        Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3 | Architecture::Phi2 => Activation::GeluTanh,
        _ => Activation::Silu,
    };
    let layers = file.require_usize(&key("block_count"))?;
    let extras = gemma_extras(file, &name, kind.arch, layers, hidden / heads, head_dim);
    Ok(ModelConfig {
        arch: kind.arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: file.require_usize(&key("feed_forward_length"))?,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        norm_eps: eps,
        rope_theta: file.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: context,
        tie_word_embeddings: !file.has_tensor("output.weight"),
        sliding_window: file.get_usize(&key("attention.sliding_window")).filter(|&w| w > 0),
        qkv_bias: file.has_tensor("blk.0.attn_q.bias"),
        o_bias: file.has_tensor("blk.0.attn_output.bias"),
        mlp_bias: false,
        rotary_dim: file.get_usize(&key("rope.dimension_count")).unwrap_or(head_dim),
        hidden_act,
        num_experts: file.get_usize(&key("expert_count")).unwrap_or(0),
        experts_per_token: file.get_usize(&key("expert_used_count")).unwrap_or(2),
        extras,
    })
}

/// Gemma 2 and 3 as llama.cpp runs them. Its files record neither
/// `query_pre_attn_scalar` nor which layers are local: llama.cpp scales
/// attention by 1/sqrt(head_dim), except for the 27B models (46 layers of
/// Gemma 2, 62 of Gemma 3), scaled by hidden/heads as their configs say;
/// and every 2nd (Gemma 2) or 6th (Gemma 3) layer is global unless the
/// file gives `attention.sliding_window_pattern`. Soft-capping defaults to
/// llama.cpp's (and transformers') 50 and 30 for Gemma 2; Gemma 3 has none.
fn gemma_extras(file: &GgufFile, name: &str, arch: Architecture, layers: usize, hidden_per_head: usize, head_dim: usize) -> Extras {
    let key = |k: &str| format!("{name}.{k}");
    let (pattern, is_27b, caps) = match arch {
        Architecture::Gemma2 => (2, layers == 46, (Some(50.0), Some(30.0))),
        Architecture::Gemma3 => (6, layers == 62, (None, None)),
        _ => return Extras::default(),
    };
    let sliding_layers = match file.get(&key("attention.sliding_window_pattern")) {
        Some(Value::Array(flags)) => (0..layers).map(|i| flags.get(i).and_then(|f| f.to_bool().ok()).unwrap_or(false)).collect(),
        other => {
            let n = other.and_then(value_as_u64).map_or(pattern, |n| n.max(1) as usize);
            (0..layers).map(|i| (i + 1) % n != 0).collect()
        }
    };
    Extras {
        query_pre_attn_scalar: Some(if is_27b { hidden_per_head } else { head_dim } as f64),
        attn_logit_softcap: file.get_f64(&key("attn_logit_softcapping")).or(caps.0),
        final_logit_softcap: file.get_f64(&key("final_logit_softcapping")).or(caps.1),
        sliding_layers: Some(sliding_layers),
        local_rope_theta: (arch == Architecture::Gemma3).then(|| file.get_f64(&key("rope.freq_base_swa")).unwrap_or(10_000.0)),
    }
}
