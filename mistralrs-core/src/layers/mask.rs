//! Causal (and sliding-window) attention masks, for attention run as tensor
//! ops (the CPU kernel masks by index instead).

use candle_core::{Device, Result, Tensor};

/// Additive mask for `q_len` new tokens following `past` cached ones:
/// token i sees keys 0..=past+i, and with a sliding window only the last
/// `window` of those. None when nothing is masked (one new token, no window
/// reach).
pub fn causal_mask(q_len: usize, past: usize, window: Option<usize>, device: &Device) -> Result<Option<Tensor>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(m: &Option<Tensor>, q_len: usize, kv_len: usize) -> Vec<Vec<bool>> {
        match m {
            None => vec![vec![true; kv_len]; q_len],
            Some(m) => m.to_vec2::<f32>().unwrap().iter().map(|r| r.iter().map(|x| x.is_finite()).collect()).collect(),
        }
    }

    #[test]
    fn causal_and_sliding_window_masks() {
        let m = causal_mask(3, 0, None, &Device::Cpu).unwrap();
        assert_eq!(visible(&m, 3, 3), vec![vec![true, false, false], vec![true, true, false], vec![true, true, true]]);
        // One decoded token with nothing hidden needs no mask.
        assert!(causal_mask(1, 7, None, &Device::Cpu).unwrap().is_none());
        // Window 2 (transformers' Mistral): position p sees p-1 and p.
        let m = causal_mask(1, 3, Some(2), &Device::Cpu).unwrap();
        assert_eq!(visible(&m, 1, 4), vec![vec![false, false, true, true]]);
    }
}
