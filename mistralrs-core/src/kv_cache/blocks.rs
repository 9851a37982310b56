//! Which cache blocks hold which sequence's tokens: a pool of fixed-size
//! blocks handed out from a free list, reference-counted so that several
//! sequences (the choices of one request) can share a prompt's blocks, and
//! a per-sequence table of its blocks in token order.

/// Tokens per block.
pub const BLOCK_SIZE: usize = 16;

/// Hands out block ids `0..total`. Free blocks are reused lowest id first,
/// so the pool's memory is touched from its start and a lightly used pool
/// stays mostly unbacked.
#[derive(Debug)]
pub struct BlockAllocator {
    refs: Vec<u32>,
    /// Free ids, highest first (popped from the end).
    free: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(total: usize) -> Self {
        Self {
            refs: vec![0; total],
            free: (0..total as u32).rev().collect(),
        }
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// A block with one reference, or None when the pool is exhausted.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = self.free.pop()?;
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Another holder of `b`.
    pub fn share(&mut self, b: u32) {
        self.refs[b as usize] += 1;
    }

    pub fn refs(&self, b: u32) -> u32 {
        self.refs[b as usize]
    }

    /// Drops one reference; the last one returns the block to the free list.
    pub fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        debug_assert!(*r > 0, "block {b} released more often than held");
        *r = r.saturating_sub(1);
        if *r == 0 {
            // Keep the list sorted descending so the lowest id is reused first.
            let at = self.free.partition_point(|&f| f > b);
            self.free.insert(at, b);
        }
    }
}

/// One sequence's blocks in token order: token `i` lives in slot
/// `i % BLOCK_SIZE` of block `blocks[i / BLOCK_SIZE]`.
#[derive(Debug, Clone, Default)]
pub struct BlockTable {
    pub blocks: Vec<u32>,
}

impl BlockTable {
    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(BLOCK_SIZE)
    }

    /// Pool slot of token `i`.
    pub fn slot(&self, i: usize) -> usize {
        self.blocks[i / BLOCK_SIZE] as usize * BLOCK_SIZE + i % BLOCK_SIZE
    }

    /// Gives every block back.
    pub fn release_all(&mut self, alloc: &mut BlockAllocator) {
        for b in self.blocks.drain(..) {
            alloc.release(b);
        }
    }

    /// The same blocks, each with one more holder.
    pub fn share(&self, alloc: &mut BlockAllocator) -> Self {
        for &b in &self.blocks {
            alloc.share(b);
        }
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reused_lowest_first_and_shared_until_the_last_release() {
        let mut a = BlockAllocator::new(4);
        let (b0, b1, b2) = (a.allocate().unwrap(), a.allocate().unwrap(), a.allocate().unwrap());
        assert_eq!((b0, b1, b2), (0, 1, 2));
        a.release(b1);
        a.release(b0);
        assert_eq!(a.allocate(), Some(0));
        let t = BlockTable { blocks: vec![0, 2] };
        let u = t.share(&mut a);
        assert_eq!(a.refs(2), 2);
        let mut t = t;
        t.release_all(&mut a);
        assert_eq!(a.refs(2), 1);
        assert_eq!(a.free_count(), 2);
        assert_eq!(u.slot(17), 2 * BLOCK_SIZE + 1);
    }
}
