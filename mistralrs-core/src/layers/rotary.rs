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

#[derive(Debug, Clone)]
pub struct Rotary {
    /// (positions, rotary_dim / 2): the short table, then the long one if any.
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
    /// Sequences longer than this use the long table.
    long_after: Option<usize>,
}

fn table(inv_freq: &[f32], max_positions: usize, scale: f32, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
    for pos in 0..max_positions {
        for f in inv_freq {
            // f32 product, as torch computes `position_ids.float() @ inv_freq`.
            let angle = pos as f32 * f;
            cos.push(angle.cos() * scale);
            sin.push(angle.sin() * scale);
        }
    }
}

impl Rotary {
    pub fn new(freqs: &RopeFreqs, max_positions: usize, device: &Device) -> Result<Self> {
        let half = freqs.inv_freq.len();
        let tables = if freqs.long.is_some() { 2 } else { 1 };
        let mut cos = Vec::with_capacity(tables * max_positions * half);
        let mut sin = Vec::with_capacity(tables * max_positions * half);
        table(&freqs.inv_freq, max_positions, freqs.scale, &mut cos, &mut sin);
        if let Some((long, _)) = &freqs.long {
            if long.len() != half {
                candle_core::bail!("long rope factors have {} entries, expected {half}", long.len());
            }
            table(long, max_positions, freqs.scale, &mut cos, &mut sin);
        }
        let rows = tables * max_positions;
        Ok(Self {
            cos: Tensor::from_vec(cos, (rows, half), device)?,
            sin: Tensor::from_vec(sin, (rows, half), device)?,
            max_positions,
            long_after: freqs.long.as_ref().map(|(_, n)| *n),
        })
    }

    /// The (cos, sin) rows of every token of a batch, each (tokens, rotary_dim / 2);
    /// computed once per forward and shared by all layers.
    pub fn tables(&self, slots: &[SeqSlot], device: &Device) -> Result<(Tensor, Tensor)> {
        let total: usize = slots.iter().map(|s| s.len).sum();
        let mut rows = Vec::with_capacity(total);
        for s in slots {
            let long = self.long_after.is_some_and(|n| s.past + s.len > n);
            let base = if long { self.max_positions } else { 0 };
            rows.extend((s.past..s.past + s.len).map(|p| (base + p) as u32));
        }
        let rows = Tensor::from_vec(rows, total, device)?;
        Ok((self.cos.index_select(&rows, 0)?, self.sin.index_select(&rows, 0)?))
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
