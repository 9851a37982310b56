//! Key/value storage, paged: a pool of fixed-size blocks (`pool.rs`)
//! handed out to sequences through block tables (`blocks.rs`). The models
//! see one step's view of it (`step.rs`): they write the step's new keys and
//! values and read each sequence's history; what is allocated, shared,
//! cached or evicted is the engine's business.

mod blocks;
mod dtype;
mod pool;
mod side_state;
mod step;

pub use blocks::{block_hash, BlockAllocator, BlockTable, BLOCK_SIZE};
pub use dtype::{dequantize_q8_0, quantize_q8_0, KvDtype, Q8_0_BYTES, Q8_0_VALUES};
pub use pool::KvPool;
pub use side_state::SideState;
pub use step::StepKv;
