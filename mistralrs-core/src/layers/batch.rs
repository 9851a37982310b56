//! The input of one batched step: every running sequence's new tokens, laid
//! end to end (what the layers of the step share is in `step.rs`).

use candle_core::{Device, Result, Tensor};

use super::lora::AdapterRows;

/// One sequence's share of a batched forward pass.
#[derive(Debug, Clone, Copy)]
pub struct SeqSlot {
    /// First row of this sequence in the batch's token rows.
    pub start: usize,
    /// New tokens this step (the whole prompt chunk, or 1 when decoding).
    pub len: usize,
    /// Tokens already in this sequence's KV cache.
    pub past: usize,
}

/// The new tokens of every running sequence, laid end to end.
#[derive(Debug)]
pub struct ForwardBatch {
    /// (tokens,) u32
    pub input_ids: Tensor,
    pub slots: Vec<SeqSlot>,
    /// The rows whose logits are wanted: each sequence's last token, or its
    /// last few (speculative decoding scores every proposed token).
    pub last_rows: Tensor,
    /// Each token row's adapter weights, where unmerged adapters are in use.
    pub adapters: Option<AdapterRows>,
}

impl ForwardBatch {
    /// `seqs`: for each sequence, (new tokens, tokens already cached); the
    /// logits of each one's last token are wanted.
    pub fn new(seqs: &[(&[u32], usize)], device: &Device) -> Result<Self> {
        Self::wanting(seqs, |_| 1, device)
    }

    /// `new`, with the logits of the last `rows(i)` tokens of sequence `i`
    /// wanted (at least 1, at most its new tokens), in order.
    pub fn wanting(seqs: &[(&[u32], usize)], rows: impl Fn(usize) -> usize, device: &Device) -> Result<Self> {
        let total: usize = seqs.iter().map(|(t, _)| t.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut slots = Vec::with_capacity(seqs.len());
        let mut last = Vec::with_capacity(seqs.len());
        for (i, (tokens, past)) in seqs.iter().enumerate() {
            slots.push(SeqSlot { start: ids.len(), len: tokens.len(), past: *past });
            ids.extend_from_slice(tokens);
            let n = rows(i).clamp(1, tokens.len());
            last.extend((ids.len() - n..ids.len()).map(|r| r as u32));
        }
        let n = last.len();
        Ok(Self {
            input_ids: Tensor::from_vec(ids, total, device)?,
            slots,
            last_rows: Tensor::from_vec(last, n, device)?,
            adapters: None,
        })
    }

    /// The same tokens with other adapter weights per row.
    pub fn with_adapters(&self, adapters: Option<AdapterRows>) -> Self {
        Self { input_ids: self.input_ids.clone(), slots: self.slots.clone(), last_rows: self.last_rows.clone(), adapters }
    }

    /// Total token rows.
    pub fn tokens(&self) -> usize {
        self.slots.last().map_or(0, |s| s.start + s.len)
    }
}
