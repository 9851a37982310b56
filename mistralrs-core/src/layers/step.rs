//! What all layers of one batched step share, computed once per forward
//! pass: each token's rotary rows, the attention window and masks, and
//! whether the step runs on our own CPU kernels.

use candle_core::{DType, Device, Result, Tensor};

use super::batch::ForwardBatch;
use super::mask::causal_mask;
use super::rotary::Rotary;

/// Whether a step runs on the engine's own CPU kernels (attention over the
/// paged cache in place, masks by index): f32 on the CPU. Other devices and
/// dtypes, or `MISTRALRS_CPU_KERNELS=candle`, take candle's tensor ops.
pub fn cpu_kernels(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32 && crate::kernels::own_kernels()
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
    if cpu_kernels(device, dtype) {
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
