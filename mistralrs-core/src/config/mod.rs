//! The shape of a model (`ModelConfig`), read from a transformers
//! `config.json` (`from_hf.rs`) or from GGUF/GGML metadata (in `weights`,
//! which owns those files), in one form every architecture file consumes.
//! It sits below both `weights` and `models` so that neither needs the other
//! to name it.

mod field;
mod from_hf;
mod gemma;
mod hf_config;
mod model;
mod validate;

pub use field::Field;
pub use model::{Extras, ModelConfig, RopeScaling};
