//! Key/value storage, paged: a pool of fixed-size blocks (`pool.rs`)
//! handed out to sequences through block tables (`blocks.rs`). The models
//! see one step's view of it (`step.rs`): they write the step's new keys and
//! values and read each sequence's history; what is allocated, shared,
//! cached or evicted is the engine's business.

mod blocks;
mod pool;
mod step;

use candle_core::Tensor;

pub use blocks::{block_hash, BlockAllocator, BlockTable, BLOCK_SIZE};
pub use pool::KvPool;
pub use step::StepKv;

/// Per-sequence model state beyond the KV cache: X-LoRA counts the scaling
/// passes a sequence has had and, once its scalings freeze, keeps them.
#[derive(Debug, Clone, Default)]
pub struct SideState {
    pub scaling_passes: usize,
    /// (adapted layers, adapters) scalings applied to every later token.
    pub frozen_scalings: Option<Tensor>,
}
