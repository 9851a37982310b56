//! How Gemma 2 and Gemma 3 config.json files are read: the text model's
//! part of a multimodal Gemma 3 config, transformers' defaults for what the
//! released files leave out, and the interleaved local/global layers.

use serde_json::{json, Value};

use super::hf_config::HfConfig;
use super::model::Extras;
use crate::architecture::Architecture;

/// transformers' `Gemma2Config` defaults for the keys the engine reads.
fn gemma2_defaults() -> Value {
    json!({
        "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
    })
}

/// transformers' `Gemma3TextConfig` defaults. The text config inside a
/// released multimodal config.json (gemma-3-4b-it's) names only a few keys
/// and relies on these for the rest.
fn gemma3_defaults() -> Value {
    json!({
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "final_logit_softcapping": null, "attn_logit_softcapping": null,
    })
}

/// The JSON object that describes the text decoder, with the
/// architecture's defaults filled in where a key is absent (an explicit
/// `null` stays: Gemma 3 turns soft-capping off that way).
pub(super) fn text_config(raw: Value, arch: Architecture) -> Value {
    let defaults = match arch {
        Architecture::Gemma2 => gemma2_defaults(),
        Architecture::Gemma3 => gemma3_defaults(),
        _ => return raw,
    };
    // Gemma3ForConditionalGeneration keeps the decoder's settings in `text_config`.
    let mut text = match raw.get("text_config") {
        Some(t @ Value::Object(_)) => t.clone(),
        _ => raw.clone(),
    };
    if let (Value::Object(t), Value::Object(d)) = (&mut text, defaults) {
        if !t.contains_key("tie_word_embeddings") {
            if let Some(tie) = raw.get("tie_word_embeddings") {
                t.insert("tie_word_embeddings".into(), tie.clone());
            }
        }
        // transformers 5 writes Gemma 3's rope settings per kind of layer.
        let per_kind = t.get("rope_parameters").and_then(|p| p.get("full_attention")).is_some();
        if per_kind {
            let p = t.remove("rope_parameters").unwrap_or(Value::Null);
            if let Some(theta) = p.get("sliding_attention").and_then(|s| s.get("rope_theta")) {
                t.entry("rope_local_base_freq").or_insert(theta.clone());
            }
            t.insert("rope_parameters".into(), p["full_attention"].clone());
        }
        let has_rope_theta = t.contains_key("rope_theta")
            || t.get("rope_parameters").and_then(|p| p.get("rope_theta")).is_some();
        for (k, v) in d {
            if k == "rope_theta" && has_rope_theta {
                continue;
            }
            t.entry(k).or_insert(v);
        }
    }
    text
}

/// Which layers are local: `layer_types` where the file lists them, else
/// every `pattern`-th layer is global (transformers' default: 2 for Gemma 2,
/// `sliding_window_pattern` = 6 for Gemma 3).
fn sliding_layers(c: &HfConfig, arch: Architecture, layers: usize) -> Vec<bool> {
    if let Some(types) = &c.layer_types {
        return (0..layers).map(|i| types.get(i).is_some_and(|t| t == "sliding_attention")).collect();
    }
    let pattern = match arch {
        Architecture::Gemma2 => 2,
        _ => c.sliding_window_pattern.unwrap_or(6).max(1),
    };
    (0..layers).map(|i| (i + 1) % pattern != 0).collect()
}

pub(super) fn extras(c: &HfConfig, arch: Architecture, layers: usize) -> Extras {
    match arch {
        Architecture::Gemma2 | Architecture::Gemma3 => Extras {
            query_pre_attn_scalar: c.query_pre_attn_scalar,
            attn_logit_softcap: c.attn_logit_softcapping,
            final_logit_softcap: c.final_logit_softcapping,
            sliding_layers: Some(sliding_layers(c, arch, layers)),
            local_rope_theta: if arch == Architecture::Gemma3 { c.rope_local_base_freq } else { None },
        },
        _ => Extras::default(),
    }
}
