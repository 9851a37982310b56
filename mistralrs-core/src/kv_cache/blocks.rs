//! Which cache blocks hold which sequence's tokens: a pool of fixed-size
//! blocks handed out from a free list, reference-counted so that several
//! sequences (the choices of one request) can share a prompt's blocks, and
//! a per-sequence table of its blocks in token order.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Tokens per block.
pub const BLOCK_SIZE: usize = 16;

/// Hands out block ids `0..total`, and keeps the prefix cache: a full
/// block is registered under the chained hash of its tokens (`block_hash`),
/// and when its last holder lets go it stays cached, evictable, until the
/// pool needs it or more than `prefix_cache_n` released prefixes are kept.
/// Free blocks are reused lowest id first, so the pool's memory is touched
/// from its start and a lightly used pool stays mostly unbacked.
///
/// Memory follows use: once the pool has touched `grow_below` blocks, a new
/// block is a free block already touched, else the cached block released
/// longest ago, and only then an untouched one. So the prefix cache lives in
/// memory the sequences needed anyway, and the resident part of the pool is
/// the most blocks held at once (or `grow_below`, whichever is more), not
/// everything that was ever cached.
#[derive(Debug)]
pub struct BlockAllocator {
    refs: Vec<u32>,
    /// Free ids, highest first (popped from the end).
    free: Vec<u32>,
    hash_of: Vec<Option<u64>>,
    by_hash: HashMap<u64, u32>,
    /// Cached blocks nobody holds, oldest release first (entries whose block
    /// was taken again since are skipped).
    evictable: VecDeque<u32>,
    /// The cached blocks of each released sequence, oldest first; `listed`
    /// counts the entries naming each block.
    prefixes: VecDeque<Vec<u32>>,
    listed: Vec<u32>,
    prefix_cache_n: usize,
    /// Blocks with a holder.
    held: usize,
    /// Blocks below this id have been handed out at least once (their memory is backed).
    touched: u32,
    /// Untouched blocks come before evicting cached ones only below this many touched.
    grow_below: usize,
    /// Cached blocks nobody holds.
    idle_cached: usize,
    /// Blocks whose sliding-window layers' memory was given back (`thin`):
    /// those layers' slots read as zeros until the block is handed out again.
    thinned: Vec<bool>,
    thinned_count: usize,
    /// What the budget counts, in layer-blocks (one layer's keys and values
    /// of one block): a whole block costs `full`, a thinned one `thin` (its
    /// layers without a window). Held and idle cached blocks together never
    /// cost more than `capacity`; ids can outnumber `capacity / full`, so the
    /// memory thinning gives back serves other blocks.
    full: u64,
    thin: u64,
    capacity: u64,
    /// Layer-blocks of the held blocks, and of the idle cached ones.
    held_cost: u64,
    cached_cost: u64,
    /// With more ids than whole blocks (`budgeted`), a free block's memory
    /// goes back to the OS, so what stays resident is what the budget
    /// counts: blocks freed since `take_unbacked`, unless handed out again.
    unback_free: bool,
    unbacked: Vec<u32>,
    to_unback: Vec<bool>,
}

impl BlockAllocator {
    pub fn new(total: usize, prefix_cache_n: usize) -> Self {
        Self {
            refs: vec![0; total],
            free: (0..total as u32).rev().collect(),
            hash_of: vec![None; total],
            by_hash: HashMap::new(),
            evictable: VecDeque::new(),
            prefixes: VecDeque::new(),
            listed: vec![0; total],
            prefix_cache_n,
            held: 0,
            touched: 0,
            grow_below: total,
            idle_cached: 0,
            thinned: vec![false; total],
            thinned_count: 0,
            full: 1,
            thin: 1,
            capacity: total as u64,
            held_cost: 0,
            cached_cost: 0,
            unback_free: false,
            unbacked: Vec::new(),
            to_unback: vec![false; total],
        }
    }

    /// The same ids with a budget of `blocks` whole blocks of `layers`
    /// layers each, of which a thinned block keeps `kept` (see `full`).
    pub fn budgeted(self, blocks: usize, layers: usize, kept: usize) -> Self {
        debug_assert!(kept <= layers && layers > 0);
        let unback_free = self.total() > blocks;
        Self { full: layers as u64, thin: kept as u64, capacity: (blocks * layers) as u64, unback_free, ..self }
    }

    fn cost(&self, b: u32) -> u64 {
        if self.thinned[b as usize] {
            self.thin
        } else {
            self.full
        }
    }

    /// Blocks freed since the last call whose memory the caller is to give
    /// back to the OS (none unless ids outnumber the budget's whole blocks).
    pub fn take_unbacked(&mut self) -> Vec<u32> {
        let mut out = std::mem::take(&mut self.unbacked);
        out.retain(|&b| std::mem::take(&mut self.to_unback[b as usize]));
        out
    }

    /// Layer-blocks held by sequences, kept by the prefix cache, and left
    /// (see `budgeted`; one each per whole block when it was not called).
    pub fn costs(&self) -> (u64, u64, u64) {
        (self.held_cost, self.cached_cost, self.capacity - self.held_cost - self.cached_cost)
    }

    /// Marks block `b` as thinned (its sliding-window layers' keys and values
    /// are no longer kept) if its one holder is the only reader; returns
    /// whether it was newly marked, and the caller then gives that memory back.
    pub fn thin(&mut self, b: u32) -> bool {
        let i = b as usize;
        if self.refs[i] != 1 || self.thinned[i] {
            return false;
        }
        self.thinned[i] = true;
        self.thinned_count += 1;
        self.held_cost -= self.full - self.thin;
        true
    }

    pub fn is_thinned(&self, b: u32) -> bool {
        self.thinned[b as usize]
    }

    /// Blocks whose sliding-window layers' memory was given back.
    pub fn thinned(&self) -> usize {
        self.thinned_count
    }

    /// The same pool, growing into untouched blocks before evicting cached
    /// ones only until `blocks` have been touched (see the type's doc).
    pub fn growing_below(self, blocks: usize) -> Self {
        Self { grow_below: blocks, ..self }
    }

    /// Cached blocks nobody holds (kept for reuse, evictable).
    pub fn cached(&self) -> usize {
        self.idle_cached
    }

    /// Blocks whose memory the pool has touched (the lowest ids, up to the highest handed out).
    pub fn resident(&self) -> usize {
        self.touched as usize
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Whole blocks a sequence could get now, from free ones and cached
    /// ones nobody holds: as many as the ids and the budget both allow.
    pub fn free_count(&self) -> usize {
        let budget = (self.capacity - self.held_cost) / self.full;
        (self.total() - self.held).min(budget as usize)
    }

    /// Blocks held by sequences.
    pub fn used(&self) -> usize {
        self.held
    }

    /// A block with one reference, or None when the pool is exhausted: a
    /// free block, else the cached block released longest ago; past
    /// `grow_below` touched blocks, an untouched free block comes last.
    pub fn allocate(&mut self) -> Option<u32> {
        // Within the budget first: idle cached blocks give theirs back, oldest first.
        while self.held_cost + self.cached_cost + self.full > self.capacity {
            let b = self.evict()?;
            self.forget(b);
            self.push_free(b);
        }
        let warm_free = self.free.last().is_some_and(|&b| b < self.touched);
        let evict_first = !warm_free && self.touched as usize >= self.grow_below;
        let b = if evict_first {
            match self.evict() {
                Some(b) => b,
                None => self.free.pop()?,
            }
        } else {
            match self.free.pop() {
                Some(b) => b,
                None => self.evict()?,
            }
        };
        // An evicted block leaves the prefix cache (a free one is in none);
        // its new holder writes every layer afresh.
        self.forget(b);
        if std::mem::take(&mut self.thinned[b as usize]) {
            self.thinned_count -= 1;
        }
        // Handed out again before its memory was given back: it keeps it.
        self.to_unback[b as usize] = false;
        self.touched = self.touched.max(b + 1);
        self.refs[b as usize] = 1;
        self.held += 1;
        self.held_cost += self.full;
        Some(b)
    }

    /// The cached block nobody holds that was released longest ago, taken
    /// off the eviction queue (still registered), if any.
    fn evict(&mut self) -> Option<u32> {
        while let Some(b) = self.evictable.pop_front() {
            if self.refs[b as usize] == 0 && self.hash_of[b as usize].is_some() {
                return Some(b);
            }
        }
        None
    }

    /// Another holder of `b`.
    pub fn share(&mut self, b: u32) {
        self.refs[b as usize] += 1;
    }

    pub fn refs(&self, b: u32) -> u32 {
        self.refs[b as usize]
    }

    /// Drops one reference; after the last one a cached block waits to be
    /// evicted and any other block is free again.
    pub fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        debug_assert!(*r > 0, "block {b} released more often than held");
        if *r == 0 {
            return;
        }
        *r -= 1;
        if *r == 0 {
            self.held -= 1;
            let c = self.cost(b);
            self.held_cost -= c;
            if self.hash_of[b as usize].is_some() {
                self.cached_cost += c;
                self.idle_cached += 1;
                self.evictable.push_back(b);
            } else {
                self.push_free(b);
            }
        }
    }

    fn push_free(&mut self, b: u32) {
        if self.unback_free && !self.to_unback[b as usize] {
            self.to_unback[b as usize] = true;
            self.unbacked.push(b);
        }
        // Keep the list sorted descending so the lowest id is reused first.
        let at = self.free.partition_point(|&f| f > b);
        self.free.insert(at, b);
    }

    /// Drops `b` from the prefix cache.
    fn forget(&mut self, b: u32) {
        if let Some(h) = self.hash_of[b as usize].take() {
            if self.refs[b as usize] == 0 {
                self.idle_cached -= 1;
                self.cached_cost -= self.cost(b);
            }
            if self.by_hash.get(&h) == Some(&b) {
                self.by_hash.remove(&h);
            }
        }
    }

    /// Registers full block `b` under `hash`, unless the cache already has
    /// a block for that hash (or prefix caching is off).
    pub fn register(&mut self, b: u32, hash: u64) {
        if self.prefix_cache_n == 0 || self.hash_of[b as usize].is_some() || self.by_hash.contains_key(&hash) {
            return;
        }
        self.hash_of[b as usize] = Some(hash);
        self.by_hash.insert(hash, b);
    }

    /// The cached block with `hash`, now held once more by the caller.
    pub fn lookup(&mut self, hash: u64) -> Option<u32> {
        let b = *self.by_hash.get(&hash)?;
        if self.refs[b as usize] == 0 {
            self.held += 1;
            self.idle_cached -= 1;
            let c = self.cost(b);
            self.cached_cost -= c;
            self.held_cost += c;
        }
        self.refs[b as usize] += 1;
        Some(b)
    }

    /// Releases a finished (or preempted) sequence's blocks; its cached
    /// blocks count as one kept prefix, and the oldest prefixes beyond
    /// `prefix_cache_n` give their blocks back to the free list.
    pub fn release_table(&mut self, table: &mut BlockTable) {
        let cached: Vec<u32> = table.blocks.iter().copied().filter(|&b| self.hash_of[b as usize].is_some()).collect();
        for b in table.blocks.drain(..) {
            self.release(b);
        }
        if cached.is_empty() {
            return;
        }
        for &b in &cached {
            self.listed[b as usize] += 1;
        }
        self.prefixes.push_back(cached);
        while self.prefixes.len() > self.prefix_cache_n {
            for b in self.prefixes.pop_front().expect("longer than n") {
                let i = b as usize;
                self.listed[i] -= 1;
                if self.listed[i] == 0 && self.refs[i] == 0 && self.hash_of[i].is_some() {
                    self.forget(b);
                    self.push_free(b);
                }
            }
        }
    }
}

/// The prefix-cache key of a full block: its tokens, chained with the key of
/// the block before it (so equal blocks after different prefixes differ),
/// and `salt` (the adapter set the keys and values were computed with).
pub fn block_hash(previous: u64, tokens: &[u32], salt: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (previous, tokens, salt).hash(&mut h);
    h.finish()
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
        alloc.release_table(self);
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
        let mut a = BlockAllocator::new(4, 0);
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

    #[test]
    fn released_full_blocks_stay_cached_until_needed_or_beyond_the_prefix_limit() {
        let mut a = BlockAllocator::new(3, 1);
        let h = block_hash(0, &[1; BLOCK_SIZE], 0);
        let mut t = BlockTable { blocks: vec![a.allocate().unwrap(), a.allocate().unwrap()] };
        a.register(t.blocks[0], h);
        t.release_all(&mut a);
        assert_eq!(a.free_count(), 3);
        // The cached block comes back by its hash, held again.
        let mut u = BlockTable { blocks: vec![a.lookup(h).unwrap()] };
        assert_eq!(u.blocks[0], 0);
        assert_eq!(a.refs(0), 1);
        u.release_all(&mut a);
        // Free blocks are used before cached ones are evicted.
        let (x, y) = (a.allocate().unwrap(), a.allocate().unwrap());
        assert!(x != 0 && y != 0);
        assert_eq!(a.lookup(h), Some(0));
        a.release(0);
        assert_eq!(a.allocate(), Some(0)); // evicted: nothing else was left
        assert_eq!(a.lookup(h), None);
        // A second released prefix pushes the first out (prefix_cache_n = 1).
        let mut a = BlockAllocator::new(4, 1);
        let (h1, h2) = (block_hash(0, &[1; BLOCK_SIZE], 0), block_hash(0, &[2; BLOCK_SIZE], 0));
        let mut t1 = BlockTable { blocks: vec![a.allocate().unwrap()] };
        let mut t2 = BlockTable { blocks: vec![a.allocate().unwrap()] };
        a.register(t1.blocks[0], h1);
        a.register(t2.blocks[0], h2);
        t1.release_all(&mut a);
        t2.release_all(&mut a);
        assert_eq!(a.lookup(h1), None);
        assert!(a.lookup(h2).is_some());
        assert_ne!(block_hash(0, &[1; BLOCK_SIZE], 0), block_hash(0, &[1; BLOCK_SIZE], 1));
    }

    #[test]
    fn past_the_growth_limit_cached_blocks_are_reused_before_untouched_memory() {
        let mut a = BlockAllocator::new(8, 4).growing_below(2);
        let (h0, h1) = (block_hash(0, &[1; BLOCK_SIZE], 0), block_hash(0, &[2; BLOCK_SIZE], 0));
        let mut t = BlockTable { blocks: vec![a.allocate().unwrap(), a.allocate().unwrap(), a.allocate().unwrap()] };
        a.register(t.blocks[0], h0);
        a.register(t.blocks[1], h1);
        t.release_all(&mut a);
        assert_eq!((a.resident(), a.cached()), (3, 2));
        // The touched free block first, then the oldest cached one: nothing new is touched.
        assert_eq!(a.allocate(), Some(2));
        assert_eq!(a.allocate(), Some(0));
        assert_eq!((a.lookup(h0), a.cached(), a.resident()), (None, 1, 3));
        assert_eq!(a.allocate(), Some(1));
        // Nothing cached is left: untouched memory.
        assert_eq!(a.allocate(), Some(3));
        assert_eq!(a.resident(), 4);
    }

    #[test]
    fn thinned_blocks_give_the_budget_back_their_window_layers() {
        // 4 whole blocks of 6 layers, one without a window: 24 ids, budget 24 layer-blocks.
        let mut a = BlockAllocator::new(24, 1).budgeted(4, 6, 1);
        let mut t = BlockTable { blocks: (0..4).map(|_| a.allocate().unwrap()).collect() };
        assert_eq!((a.free_count(), a.allocate()), (0, None));
        // Thinning two blocks returns 2 × 5 layer-blocks: one more whole block fits.
        assert!(a.thin(t.blocks[0]) && a.thin(t.blocks[1]));
        assert_eq!(a.costs(), (14, 0, 10));
        assert_eq!(a.free_count(), 1);
        t.blocks.push(a.allocate().unwrap());
        assert_eq!((a.used(), a.allocate()), (5, None));
        // A cached thinned block keeps costing its one layer until evicted for room.
        let h = block_hash(0, &[1; BLOCK_SIZE], 0);
        a.register(t.blocks[0], h);
        t.release_all(&mut a);
        assert_eq!(a.costs(), (0, 1, 23));
        let mut u = BlockTable { blocks: (0..3).map(|_| a.allocate().unwrap()).collect() };
        assert_eq!((a.costs(), a.lookup(h)), ((18, 1, 5), Some(0)));
        a.release(0);
        // The fourth whole block needs the cached one's layer: it is evicted.
        u.blocks.push(a.allocate().unwrap());
        assert_eq!((a.costs(), a.lookup(h)), ((24, 0, 0), None));
        u.release_all(&mut a);
        assert_eq!(a.costs(), (0, 0, 24));
        // Every block freed and not handed out again is to give its memory back, once.
        let mut freed = a.take_unbacked();
        freed.sort();
        assert_eq!(freed, [0, 1, 2, 3, 4]);
        let b = a.allocate().unwrap();
        a.release(b);
        let c = a.allocate().unwrap();
        assert_eq!((b, c, a.take_unbacked()), (0, 0, vec![]));
        // One id per whole block: free blocks keep their memory, as before.
        let mut a = BlockAllocator::new(4, 0).budgeted(4, 6, 1);
        let b = a.allocate().unwrap();
        a.release(b);
        assert!(a.take_unbacked().is_empty());
    }
}
