//! Building blocks shared by every architecture. None of them knows where its
//! weights came from (safetensors, GGUF, GGML) or how the KV cache is stored.

pub mod attention;
pub mod embedding;
pub mod linear;
pub mod norm;
pub mod rotary;

pub use attention::{causal_mask, grouped_attention};
pub use embedding::Embedding;
pub use linear::Linear;
pub use norm::RmsNorm;
pub use rotary::Rotary;
