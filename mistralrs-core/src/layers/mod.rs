//! Building blocks shared by every architecture. None of them knows where its
//! weights came from (safetensors, GGUF, GGML) or how the KV cache is stored.
//!
//! Bottom to top: `lora.rs`, `mask.rs`, `norm.rs`; `batch.rs` (a step's
//! tokens); `rotary.rs`; `step.rs` (what a step's layers share); `linear.rs`;
//! `attention.rs`, `mlp.rs`, `embedding.rs`. No file imports one above it
//! (`scripts/module_graph.py` checks).

pub mod attention;
pub mod batch;
pub mod embedding;
pub mod linear;
pub mod lora;
pub mod mask;
pub mod mlp;
pub mod norm;
pub mod rotary;
pub mod step;
mod type_tests;

pub use attention::{QkvProj, SelfAttention};
pub use batch::{ForwardBatch, SeqSlot};
pub use embedding::Embedding;
pub use linear::Linear;
pub use lora::{AdapterRows, LoraPair, LoraStack};
pub use mlp::{Activation, GateUp, GatedMlp, Mlp};
pub use norm::{LayerNorm, RmsNorm};
pub use rotary::{RopeFreqs, Rotary};
pub use step::{cpu_kernels, AttnView, StepContext};
