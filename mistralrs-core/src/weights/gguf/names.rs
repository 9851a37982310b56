//! transformers' module names (what architectures ask for) as llama.cpp's
//! GGUF tensor names.

/// llama.cpp's tensor name for a transformers module name; `post_norms`:
/// Gemma 2/3, whose `post_attention_layernorm` is a norm of the attention
/// output (`post_attention_norm`), not the llama family's pre-MLP norm.
pub(super) fn gguf_name(module: &str, post_norms: bool) -> Option<String> {
    let direct = match module {
        "model.embed_tokens" => Some("token_embd"),
        "model.norm" | "model.final_layernorm" => Some("output_norm"),
        "lm_head" => Some("output"),
        _ => None,
    };
    if let Some(n) = direct {
        return Some(n.to_string());
    }
    let rest = module.strip_prefix("model.layers.")?;
    let (idx, sub) = rest.split_once('.')?;
    let part = match sub {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" | "self_attn.dense" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" | "mlp.fc1" => "ffn_up",
        "mlp.down_proj" | "mlp.fc2" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if post_norms => "post_attention_norm",
        "post_attention_layernorm" | "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "block_sparse_moe.gate" => "ffn_gate_inp",
        _ => return expert_name(idx, sub),
    };
    Some(format!("blk.{idx}.{part}"))
}

/// `block_sparse_moe.experts.E.w1` -> expert E of the stacked `ffn_gate_exps`
/// (written `blk.N.ffn_gate_exps#E`; older files have `blk.N.ffn_gate.E`).
fn expert_name(idx: &str, sub: &str) -> Option<String> {
    let rest = sub.strip_prefix("block_sparse_moe.experts.")?;
    let (e, w) = rest.split_once('.')?;
    let part = match w {
        "w1" => "ffn_gate",
        "w2" => "ffn_down",
        "w3" => "ffn_up",
        _ => return None,
    };
    Some(format!("blk.{idx}.{part}_exps#{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers_names_map_to_llama_cpp_names() {
        assert_eq!(gguf_name("model.embed_tokens", false).as_deref(), Some("token_embd"));
        assert_eq!(gguf_name("model.layers.3.self_attn.q_proj", false).as_deref(), Some("blk.3.attn_q"));
        assert_eq!(gguf_name("model.layers.0.mlp.gate_up_proj", false).as_deref(), Some("blk.0.ffn_up"));
        assert_eq!(gguf_name("model.layers.1.self_attn.dense", false).as_deref(), Some("blk.1.attn_output"));
        assert_eq!(gguf_name("model.final_layernorm", false).as_deref(), Some("output_norm"));
        assert_eq!(
            gguf_name("model.layers.2.block_sparse_moe.experts.5.w2", false).as_deref(),
            Some("blk.2.ffn_down_exps#5")
        );
        assert_eq!(gguf_name("model.layers.2.mystery", false), None);
        // Gemma 2/3: the same transformers name is another tensor.
        assert_eq!(gguf_name("model.layers.0.post_attention_layernorm", false).as_deref(), Some("blk.0.ffn_norm"));
        assert_eq!(gguf_name("model.layers.0.post_attention_layernorm", true).as_deref(), Some("blk.0.post_attention_norm"));
        assert_eq!(gguf_name("model.layers.0.pre_feedforward_layernorm", true).as_deref(), Some("blk.0.ffn_norm"));
        assert_eq!(gguf_name("model.layers.0.self_attn.k_norm", true).as_deref(), Some("blk.0.attn_k_norm"));
    }
}
