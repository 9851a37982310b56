//! The input of one batched step, and what all layers of that step share.

use candle_core::{DType, Device, Result, Tensor};

use super::attention::causal_mask;
use super::lora::AdapterRows;
use super::rotary::Rotary;

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

/// What the layers of one kind (all of them, or Gemma's local or global
/// ones) share in a step: the rotary rows of each token, how far back they
/// see, and, where attention runs as tensor ops (not on the CPU), each
/// sequence's attention mask.
pub struct AttnView {
    /// (tokens, rotary_dim / 2)
    pub cos: Tensor,
    pub sin: Tensor,
    /// Keys older than this many positions are hidden (sliding window).
    pub window: Option<usize>,
    /// Per sequence: additive f32 (len, past + len) mask, None when nothing
    /// is masked. Empty where the CPU attention kernel runs (it masks by index).
    pub masks: Vec<Option<Tensor>>,
}

impl AttnView {
    /// `dtype`: the compute dtype, which the rotary tables are in.
    pub fn new(batch: &ForwardBatch, rotary: &Rotary, window: Option<usize>, device: &Device, dtype: DType) -> Result<Self> {
        let (cos, sin) = rotary.tables(&batch.slots, device)?;
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        Ok(Self { cos, sin, window, masks: masks(batch, window, device, dtype)? })
    }

    /// A view with `other`'s rotary rows and a window of its own.
    pub fn with_rows(batch: &ForwardBatch, other: &AttnView, window: Option<usize>, device: &Device, dtype: DType) -> Result<Self> {
        Ok(Self { cos: other.cos.clone(), sin: other.sin.clone(), window, masks: masks(batch, window, device, dtype)? })
    }
}

fn masks(batch: &ForwardBatch, window: Option<usize>, device: &Device, dtype: DType) -> Result<Vec<Option<Tensor>>> {
    if super::cpu_kernels(device, dtype) {
        return Ok(Vec::new());
    }
    batch.slots.iter().map(|s| causal_mask(s.len, s.past, window, device)).collect()
}

/// Computed once per forward pass and shared by every layer.
pub struct StepContext<'a> {
    pub batch: &'a ForwardBatch,
    /// The global layers' view of the step.
    pub global: AttnView,
    /// The local layers' (models that interleave sliding-window layers with global ones).
    pub local: Option<AttnView>,
}

impl<'a> StepContext<'a> {
    /// A step whose layers all see it one way.
    pub fn new(batch: &'a ForwardBatch, rotary: &Rotary, window: Option<usize>, device: &Device, dtype: DType) -> Result<Self> {
        Ok(Self { batch, global: AttnView::new(batch, rotary, window, device, dtype)?, local: None })
    }

    /// The view of a local layer (`local`) or a global one.
    pub fn view(&self, local: bool) -> &AttnView {
        match (&self.local, local) {
            (Some(v), true) => v,
            _ => &self.global,
        }
    }
}
