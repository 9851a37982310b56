//! Rotary position embeddings in the "rotate half" layout of transformers
//! (GGUF files of the `llama` architecture, whose converter interleaves the
//! pairs, are un-permuted at load so one layout serves every source).

use candle_core::{Device, Result, Tensor};

#[derive(Debug, Clone)]
pub struct Rotary {
    /// (max_positions, rotary_dim / 2)
    cos: Tensor,
    /// (max_positions, rotary_dim / 2)
    sin: Tensor,
}

impl Rotary {
    /// `inv_freq`: one inverse frequency per rotated pair (rotary_dim / 2 of them),
    /// already adjusted for any rope scaling.
    pub fn new(inv_freq: &[f32], max_positions: usize, device: &Device) -> Result<Self> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in inv_freq {
                // f32 product, as torch computes `position_ids.float() @ inv_freq`.
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The (cos, sin) rows for each token's position; computed once per
    /// forward and shared by all layers. `positions`: (tokens,) u32.
    pub fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.index_select(positions, 0)?, self.sin.index_select(positions, 0)?))
    }

    /// `x`: (tokens, heads, head_dim) -> same shape, rotated.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (t, h, d) = x.dims3()?;
        let x = x.contiguous()?.reshape((1, t, h, d))?;
        let y = candle_nn::rotary_emb::rope_thd(&x, cos, sin)?;
        y.reshape((t, h, d))
    }
}

/// Inverse frequencies `1 / base^(2i/d)`, computed in f64 then rounded, as
/// transformers does (`base ** (arange(0, d, 2).float() / d)` in f32 is close
/// to this within an ulp).
pub fn default_inv_freq(rotary_dim: usize, base: f64) -> Vec<f32> {
    (0..rotary_dim / 2)
        .map(|i| (1.0 / base.powf(2.0 * i as f64 / rotary_dim as f64)) as f32)
        .collect()
}
