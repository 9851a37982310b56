//! Scaled dot-product attention for one sequence of a batch, with grouped
//! query heads served without copying the KV heads.

use candle_core::{Device, Result, Tensor};

/// `q`: (heads, q_len, head_dim); `k`, `v`: (kv_heads, kv_len, head_dim);
/// `mask`: additive (q_len, kv_len) or None when every key is visible.
/// Returns (q_len, heads * head_dim).
pub fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (heads, q_len, head_dim) = q.dims3()?;
    let (kv_heads, kv_len, _) = k.dims3()?;
    let group = heads / kv_heads;
    // Query head h uses KV head h / group (transformers' repeat_kv order), so
    // (heads, q_len) regroups as (kv_heads, group * q_len) rows against one KV head.
    let q = q.contiguous()?.reshape((kv_heads, group * q_len, head_dim))?;
    let k = k.contiguous()?;
    let v = v.contiguous()?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores
            .reshape((kv_heads, group, q_len, kv_len))?
            .broadcast_add(m)?
            .reshape((kv_heads, group * q_len, kv_len))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v)?; // (kv_heads, group * q_len, head_dim)
    out.reshape((heads, q_len, head_dim))?
        .transpose(0, 1)?
        .reshape((q_len, heads * head_dim))
}

/// Additive mask for `q_len` new tokens following `past` cached ones:
/// token i sees keys 0..=past+i, and with a sliding window only the last
/// `window` of those. None when nothing is masked (one new token, no window
/// reach).
pub fn causal_mask(
    q_len: usize,
    past: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let kv_len = past + q_len;
    let window_cuts = window.is_some_and(|w| kv_len > w);
    if q_len == 1 && !window_cuts {
        return Ok(None);
    }
    let mut m = vec![0f32; q_len * kv_len];
    for i in 0..q_len {
        let pos = past + i;
        for j in 0..kv_len {
            let too_new = j > pos;
            let too_old = window.is_some_and(|w| pos >= w && j <= pos - w);
            if too_new || too_old {
                m[i * kv_len + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (q_len, kv_len), device).map(Some)
}
