//! GGUF files (v2, v3), one job a file: reading the file (`header.rs`,
//! `file.rs`), the model config its metadata implies (`config.rs`), llama.cpp's
//! tensor names for transformers' (`names.rs`), and the weight source that
//! builds a model from it (`source.rs`, also used for legacy GGML files).

pub mod config;
pub mod file;
pub mod header;
pub mod names;
pub mod source;

pub use config::model_config;
pub use file::{value_as_u64, GgufFile};
pub use source::GgufSource;
