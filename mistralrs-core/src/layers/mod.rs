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

pub use attention::{QkvProj, SelfAttention};
pub use batch::{ForwardBatch, SeqSlot, StepContext};
pub use embedding::Embedding;
pub use linear::Linear;
pub use lora::{AdapterRows, LoraPair, LoraStack};
pub use mlp::{Activation, GateUp, GatedMlp, Mlp};
pub use norm::{LayerNorm, RmsNorm};
pub use rotary::{RopeFreqs, Rotary};
