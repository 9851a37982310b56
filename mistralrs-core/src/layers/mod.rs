//! Building blocks shared by every architecture. None of them knows where its
//! weights came from (safetensors, GGUF, GGML) or how the KV cache is stored.

pub mod attention;
pub mod batch;
pub mod embedding;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod rotary;
mod type_tests;

pub use attention::{QkvProj, SelfAttention};
pub use batch::{ForwardBatch, SeqSlot, StepContext};
pub use embedding::Embedding;
pub use linear::Linear;
pub use lora::{AdapterRows, LoraPair, LoraStack};
pub use mlp::{Activation, GateUp, GatedMlp, Mlp};
pub use norm::{LayerNorm, RmsNorm};
pub use rotary::{RopeFreqs, Rotary};

use candle_core::{DType, Device};

/// Whether a step runs on the engine's own CPU kernels (attention over the
/// paged cache in place, masks by index): f32 on the CPU. Other devices and
/// dtypes, or `MISTRALRS_CPU_KERNELS=candle`, take candle's tensor ops.
pub fn cpu_kernels(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32 && crate::kernels::own_kernels()
}
