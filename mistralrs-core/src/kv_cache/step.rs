//! The KV cache as the model sees it during one step: the pool and, for
//! each sequence of the batch, its block table. Blocks for the step's new
//! tokens are allocated by the engine before the step, so the model only
//! writes and reads; it never decides what is cached.

use candle_core::{Result, Tensor};

use super::blocks::BlockTable;
use super::pool::KvPool;
use super::side_state::SideState;

pub struct StepKv<'a> {
    pool: &'a KvPool,
    /// `tables[i]` belongs to the batch's slot i.
    tables: Vec<&'a BlockTable>,
    side: Vec<&'a mut SideState>,
    /// Added to every layer index (X-LoRA's scaling pass uses the layers
    /// after the real pass's).
    layer_offset: usize,
}

impl<'a> StepKv<'a> {
    pub fn new(pool: &'a KvPool, tables: Vec<&'a BlockTable>, side: Vec<&'a mut SideState>) -> Self {
        assert_eq!(tables.len(), side.len());
        Self {
            pool,
            tables,
            side,
            layer_offset: 0,
        }
    }

    /// What the model keeps for sequence `i` between steps.
    pub fn side_state(&mut self, i: usize) -> &mut SideState {
        self.side[i]
    }

    /// Sequences `seqs` (ascending) only, seen as a step of their own, with
    /// layer indices shifted by `layer_offset`.
    pub fn subset(&mut self, seqs: &[usize], layer_offset: usize) -> StepKv<'_> {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "subset indices must ascend");
        let tables = seqs.iter().map(|&i| self.tables[i]).collect();
        let side = self
            .side
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| seqs.contains(i))
            .map(|(_, s)| &mut **s)
            .collect();
        StepKv {
            pool: self.pool,
            tables,
            side,
            layer_offset: self.layer_offset + layer_offset,
        }
    }

    /// Stores sequence `i`'s new keys and values ((t, kv_heads, head_dim)),
    /// which follow its `past` cached tokens, in layer `layer`.
    pub fn write(&self, layer: usize, i: usize, past: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        self.pool.write(layer + self.layer_offset, self.tables[i], past, k, v)
    }

    /// Layer `layer`'s keys and values, (slots, kv_heads, head_dim).
    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        self.pool.layer(layer + self.layer_offset)
    }

    /// Sequence `i`'s block ids.
    pub fn blocks(&self, i: usize) -> &[u32] {
        &self.tables[i].blocks
    }

    /// Sequence `i`'s first `n` tokens of layer `layer`, (kv_heads, n, head_dim).
    pub fn gather(&self, layer: usize, i: usize, n: usize) -> Result<(Tensor, Tensor)> {
        self.pool.gather(layer + self.layer_offset, self.tables[i], n)
    }
}
