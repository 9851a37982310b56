//! Architectures. Each file is one architecture, written once for every way
//! its weights can be stored; `load` is the registry.

pub mod causal_lm;
pub mod decoder;
pub mod gemma;
pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod mixtral;
pub mod phi2;
pub mod phi3;

use candle_core::Device;

use crate::architecture::Architecture;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::WeightSource;
pub use crate::layers::{ForwardBatch, SeqSlot};
pub use causal_lm::CausalLm;

/// Builds the model for `cfg.arch` from `weights`.
pub fn load(cfg: &ModelConfig, weights: &dyn WeightSource, device: &Device, progress: &dyn Fn(usize)) -> Result<Box<dyn CausalLm>> {
    if cfg.num_experts > 0 && cfg.arch != Architecture::Mixtral {
        return Err(Error::invalid(format!("a mixture of experts is only supported for mixtral, not {}", cfg.arch)));
    }
    Ok(match cfg.arch {
        // Mistral and Qwen2 are Llama with a sliding window / Q, K, V biases (see llama.rs).
        Architecture::Llama | Architecture::Mistral | Architecture::Qwen2 => Box::new(llama::load(cfg, weights, device, progress)?),
        Architecture::Gemma => Box::new(gemma::load(cfg, weights, device, progress)?),
        Architecture::Gemma2 => Box::new(gemma2::load(cfg, weights, device, progress)?),
        Architecture::Gemma3 => Box::new(gemma3::load(cfg, weights, device, progress)?),
        Architecture::Mixtral => Box::new(mixtral::load(cfg, weights, device, progress)?),
        Architecture::Phi2 => Box::new(phi2::Phi2::load(cfg, weights, device, progress)?),
        Architecture::Phi3 => Box::new(phi3::load(cfg, weights, device, progress)?),
    })
}
