//! Rotary position embeddings in the "rotate half" layout of transformers
//! (GGUF files of the `llama` architecture, whose converter interleaves the
//! pairs, are un-permuted at load so one layout serves every source).

use candle_core::{Device, Result, Tensor};

use super::batch::SeqSlot;

/// The inverse frequencies a model rotates with.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFreqs {
    /// One inverse frequency per rotated pair, scaling already applied.
    pub inv_freq: Vec<f32>,
    /// LongRoPE (phi3): the frequencies used once a sequence is longer than
    /// the given length, as transformers switches per forward pass.
    pub long: Option<(Vec<f32>, usize)>,
    /// Multiplies cos and sin (LongRoPE's attention factor; 1 otherwise).
    pub scale: f32,
}

impl RopeFreqs {
    pub fn plain(inv_freq: Vec<f32>) -> Self {
        Self { inv_freq, long: None, scale: 1.0 }
    }
}

/// The rotation of each position is computed when a batch needs it rather
/// than tabled for the whole context at load: a table would be sized by the
/// file's context length (2^31 in a hostile file), and the few thousand
/// sin/cos pairs of a batch cost microseconds next to its matmuls.
#[derive(Debug, Clone)]
pub struct Rotary {
    freqs: RopeFreqs,
}

impl Rotary {
    pub fn new(freqs: &RopeFreqs) -> Result<Self> {
        if let Some((long, _)) = &freqs.long {
            if long.len() != freqs.inv_freq.len() {
                candle_core::bail!("long rope factors have {} entries, expected {}", long.len(), freqs.inv_freq.len());
            }
        }
        Ok(Self { freqs: freqs.clone() })
    }

    /// The (cos, sin) rows of every token of a batch, each (tokens, rotary_dim / 2);
    /// computed once per forward and shared by all layers.
    pub fn tables(&self, slots: &[SeqSlot], device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.freqs.inv_freq.len();
        let total: usize = slots.iter().map(|s| s.len).sum();
        let mut cos = Vec::with_capacity(total * half);
        let mut sin = Vec::with_capacity(total * half);
        let scale = self.freqs.scale;
        for s in slots {
            // LongRoPE switches tables per sequence, as transformers does per forward.
            let inv_freq = match &self.freqs.long {
                Some((long, after)) if s.past + s.len > *after => long,
                _ => &self.freqs.inv_freq,
            };
            for pos in s.past..s.past + s.len {
                for f in inv_freq {
                    // f32 product, as torch computes `position_ids.float() @ inv_freq`.
                    let angle = pos as f32 * f;
                    cos.push(angle.cos() * scale);
                    sin.push(angle.sin() * scale);
                }
            }
        }
        Ok((Tensor::from_vec(cos, (total, half), device)?, Tensor::from_vec(sin, (total, half), device)?))
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
