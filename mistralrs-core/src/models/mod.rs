//! Architectures. Each file is one architecture, written once for every way
//! its weights can be stored; `load` is the registry.

pub mod config;
pub mod llama;

use candle_core::{Device, Tensor};

use crate::architecture::Architecture;
use crate::error::{Error, Result};
use crate::kv_cache::KvStore;
use crate::weights::WeightSource;
pub use config::ModelConfig;

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

/// The input of one step: the new tokens of every running sequence, laid
/// end to end.
#[derive(Debug)]
pub struct ForwardBatch {
    /// (tokens,) u32
    pub input_ids: Tensor,
    /// (tokens,) u32, each token's position in its own sequence.
    pub positions: Tensor,
    pub slots: Vec<SeqSlot>,
    /// (sequences,) u32, the row of each sequence's last token (whose logits are wanted).
    pub last_rows: Tensor,
}

impl ForwardBatch {
    /// `seqs`: for each sequence, (new tokens, tokens already cached).
    pub fn new(seqs: &[(&[u32], usize)], device: &Device) -> candle_core::Result<Self> {
        let total: usize = seqs.iter().map(|(t, _)| t.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut slots = Vec::with_capacity(seqs.len());
        let mut last = Vec::with_capacity(seqs.len());
        for (tokens, past) in seqs {
            slots.push(SeqSlot { start: ids.len(), len: tokens.len(), past: *past });
            ids.extend_from_slice(tokens);
            positions.extend((*past..*past + tokens.len()).map(|p| p as u32));
            last.push((ids.len() - 1) as u32);
        }
        let n = last.len();
        Ok(Self {
            input_ids: Tensor::from_vec(ids, total, device)?,
            positions: Tensor::from_vec(positions, total, device)?,
            slots,
            last_rows: Tensor::from_vec(last, n, device)?,
        })
    }
}

pub trait CausalLm: Send + Sync {
    /// Runs every sequence's new tokens, appending to its cache
    /// (`caches[i]` belongs to `batch.slots[i]`), and returns the logits of each
    /// sequence's last token: (sequences, vocab) f32.
    fn forward(&self, batch: &ForwardBatch, caches: &mut [&mut dyn KvStore]) -> candle_core::Result<Tensor>;
    fn config(&self) -> &ModelConfig;
}

/// Builds the model for `cfg.arch` from `weights`.
pub fn load(
    cfg: &ModelConfig,
    weights: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize),
) -> Result<Box<dyn CausalLm>> {
    match cfg.arch {
        // Mistral is Llama with a sliding attention window, which the shared
        // attention mask already handles.
        Architecture::Llama | Architecture::Mistral => {
            Ok(Box::new(llama::Llama::load(cfg, weights, device, progress)?))
        }
        other => Err(Error::NotImplemented(format!(
            "architecture `{other}` is not implemented in this build yet (implemented: llama, mistral)"
        ))),
    }
}
