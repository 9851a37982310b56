//! The scheduler: each step's plan, from the sequences waiting, those
//! running and the free cache blocks. Every step has a token budget:
//! decoding sequences take one token each (plus their draft proposals), and
//! prompts share the rest in chunks, so a long prompt does not stall running
//! decodes. Waiting sequences join while `max_seqs` and the blocks allow;
//! when the pool runs out, the newest running sequences give their blocks
//! back and wait to be recomputed (preemption), so the oldest always progress.
//!
//! A sequence's plan for the step is its `chunk` (tokens to run) and, with a
//! draft model, its proposals; its block table then has room for them.

use std::collections::VecDeque;

use super::sequence::Sequence;
use super::speculative::Draft;
use crate::kv_cache::{BlockAllocator, BlockTable, KvPool, BLOCK_SIZE};

pub struct Scheduler {
    pub waiting: VecDeque<Sequence>,
    /// In admission order: the newest are preempted first.
    pub running: Vec<Sequence>,
    pub alloc: BlockAllocator,
    max_seqs: usize,
    max_step_tokens: usize,
    no_kv_cache: bool,
    /// The model's sliding window where its cache blocks get thinned (see `Sequence::reuse_cached_prefix`).
    pub window: Option<usize>,
}

/// A sequence that joined the running ones this step.
pub struct Joined {
    pub group: u64,
    /// Prompt tokens whose blocks came from the prefix cache.
    pub cached: usize,
    /// Its request's first admission (not a resumption after preemption).
    pub first: bool,
}

/// What planning a step did besides setting the sequences' chunks.
#[derive(Default)]
pub struct Plan {
    pub joined: Vec<Joined>,
    pub preempted: usize,
}

impl Scheduler {
    pub fn new(alloc: BlockAllocator, max_seqs: usize, max_step_tokens: usize, no_kv_cache: bool) -> Self {
        Self { waiting: VecDeque::new(), running: Vec::new(), alloc, max_seqs, max_step_tokens, no_kv_cache, window: None }
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Plans the next step: sets every running sequence's chunk (and
    /// proposals), lets waiting ones join, and gives each the blocks its
    /// tokens need, preempting the newest when the pool runs out.
    pub fn plan(&mut self, kv: &KvPool, mut draft: Option<&mut Draft>) -> Plan {
        if self.no_kv_cache {
            // Every token is computed again for each new one (in chunks, over
            // as many steps as the budget needs, without dropping them between).
            for s in &mut self.running {
                if s.computed > 0 && s.uncomputed() == 1 {
                    s.drop_cache(&mut self.alloc, draft.as_mut().map(|d| &mut d.alloc));
                }
            }
        }
        // Token budget: running sequences first, decoding ones one token
        // each, then prompts in admission order, each what is left allows.
        let mut budget = self.max_step_tokens;
        for s in &mut self.running {
            s.chunk = 0;
            if s.uncomputed() == 1 {
                s.chunk = 1;
                budget = budget.saturating_sub(1);
            }
        }
        // Decoding sequences with a draft model verify its proposals too.
        if let Some(gamma) = draft.as_ref().filter(|_| !self.no_kv_cache).map(|d| d.gamma) {
            for s in &mut self.running {
                let generated = s.generated();
                let Some(sp) = s.spec.as_mut() else { continue };
                sp.proposals = 0;
                if s.chunk == 1 && generated > 0 {
                    // Never more tokens than max_tokens allows (a step emits up to proposals + 1).
                    sp.proposals = sp.pace.next(gamma).min(s.max_new.saturating_sub(generated + 1)).min(budget);
                    s.chunk += sp.proposals;
                    budget -= sp.proposals;
                }
            }
        }
        for s in &mut self.running {
            if s.chunk == 0 {
                s.chunk = s.uncomputed().min(budget);
                budget -= s.chunk;
            }
        }
        let mut plan = Plan::default();
        self.join_waiting(budget, &mut plan);
        let mut i = 0;
        while i < self.running.len() {
            if self.reserve(i, kv) {
                i += 1;
                continue;
            }
            let mut victim = self.running.pop().expect("i is in range");
            victim.drop_cache(&mut self.alloc, draft.as_mut().map(|d| &mut d.alloc));
            victim.chunk = 0;
            if let Some(sp) = victim.spec.as_mut() {
                sp.proposals = 0;
            }
            plan.preempted += 1;
            self.waiting.push_front(victim);
        }
        plan
    }

    /// Waiting sequences join while max_seqs, the budget and the blocks the
    /// running ones leave allow; each starts with its first chunk.
    fn join_waiting(&mut self, mut budget: usize, plan: &mut Plan) {
        let mut free = self.alloc.free_count().saturating_sub(self.running.iter().map(|s| self.blocks_needed(s)).sum());
        while self.running.len() < self.max_seqs && budget > 0 {
            let Some(seq) = self.waiting.front() else { break };
            // A request's other choices (forked after its prompt) count
            // against max_seqs too; a request wider than max_seqs runs alone.
            if !self.running.is_empty() && self.running.len() + 1 + seq.forks > self.max_seqs {
                break;
            }
            // Counted before any cached prefix is found: never more than it needs.
            let need = BlockTable::blocks_for(seq.tokens.len().min(budget));
            if need > free {
                break;
            }
            free -= need;
            let mut seq = self.waiting.pop_front().expect("peeked");
            let cached = if self.no_kv_cache { 0 } else { seq.reuse_cached_prefix(&mut self.alloc, self.window) };
            plan.joined.push(Joined { group: seq.group, cached, first: seq.generated() == 0 && seq.choice == 0 });
            seq.chunk = seq.uncomputed().min(budget);
            budget -= seq.chunk;
            self.running.push(seq);
        }
    }

    /// Blocks `seq` still needs for its tokens of this step (a shared partly
    /// filled block it writes into counts as one).
    fn blocks_needed(&self, seq: &Sequence) -> usize {
        let filled = seq.computed % BLOCK_SIZE;
        let copy = filled != 0 && seq.chunk > 0 && self.alloc.refs(seq.blocks.blocks[seq.computed / BLOCK_SIZE]) > 1;
        BlockTable::blocks_for(seq.computed + seq.chunk).saturating_sub(seq.blocks.blocks.len()) + copy as usize
    }

    /// Blocks for running sequence `i`'s tokens of this step; false when the pool
    /// is out of blocks. A partly filled block it shares with a sibling
    /// choice is copied before it writes there (copy-on-write).
    fn reserve(&mut self, i: usize, kv: &KvPool) -> bool {
        let seq = &mut self.running[i];
        let filled = seq.computed % BLOCK_SIZE;
        if filled != 0 {
            let at = seq.computed / BLOCK_SIZE;
            let shared = seq.blocks.blocks[at];
            if self.alloc.refs(shared) > 1 {
                let Some(own) = self.alloc.allocate() else { return false };
                if kv.copy_block(shared, own, filled).is_err() {
                    self.alloc.release(own);
                    return false;
                }
                self.alloc.release(shared);
                seq.blocks.blocks[at] = own;
            }
        }
        while seq.blocks.blocks.len() < BlockTable::blocks_for(seq.computed + seq.chunk) {
            match self.alloc.allocate() {
                Some(b) => seq.blocks.blocks.push(b),
                None => return false,
            }
        }
        true
    }

    /// Keeps the sequences `keep` says to keep, running and waiting; the
    /// running ones dropped give their blocks back (the draft's too).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut Sequence) -> bool, mut draft: Option<&mut BlockAllocator>) {
        let alloc = &mut self.alloc;
        self.running.retain_mut(|s| {
            let kept = keep(s);
            if !kept {
                s.release(alloc, draft.as_deref_mut());
            }
            kept
        });
        self.waiting.retain_mut(|s| keep(s));
    }
}

/// Blocks one sequence can hold running alone in a budget of `budget` whole
/// blocks of `layers` layers and a pool of `ids` blocks, when `thinning`
/// (window, layers kept whole, tokens per step) applies.
///
/// `thin_windows` keeps whole at most the blocks of two windows (the
/// current one and the prompt's last, which the prefix cache reuses) plus
/// a step's new tokens: every other block costs only its `kept` layers.
/// So T blocks cost at most T·kept + min(T, whole)·(layers − kept), and the
/// largest T within the budget always fits as the sequence grows. A
/// sequence among others is not promised this: the scheduler preempts the
/// newest when they outgrow the pool.
pub fn lone_blocks(budget: usize, layers: usize, ids: usize, thinning: Option<(usize, usize, usize)>) -> usize {
    let Some((window, kept, step)) = thinning.filter(|&(_, kept, _)| kept > 0 && kept < layers) else {
        return budget.min(ids);
    };
    // Each window spans at most window/16 + 3 blocks as `thin_windows` counts.
    let whole = 2 * (window / BLOCK_SIZE + 3) + step.min(1 << 30) / BLOCK_SIZE + 1;
    if budget <= whole {
        return budget.min(ids);
    }
    (whole + (budget - whole) * layers / kept).min(ids)
}

#[cfg(test)]
mod tests {
    use super::lone_blocks;

    #[test]
    fn a_lone_sequence_holds_its_thinned_blocks_within_the_budget() {
        // Gemma 3 270M in 96 MB: 170 whole blocks of 18 layers, 3 without a window of 512.
        let whole = 2 * (512 / 16 + 3) + 512 / 16 + 1;
        let t = lone_blocks(170, 18, 1020, Some((512, 3, 512)));
        assert_eq!(t, whole + (170 - whole) * 6);
        // The worst case: `whole` blocks whole and the rest thinned, within the budget's layer-blocks.
        assert!(whole * 18 + (t - whole) * 3 <= 170 * 18);
        // The pool's ids, a budget smaller than the whole part, or no thinning: whole blocks.
        assert_eq!(lone_blocks(170, 18, 340, Some((512, 3, 512))), 340);
        assert_eq!(lone_blocks(60, 18, 360, Some((512, 3, 512))), 60);
        assert_eq!(lone_blocks(170, 18, 1020, None), 170);
        assert_eq!(lone_blocks(170, 18, 170, Some((512, 18, 512))), 170);
        // A model that never chunks its prompt keeps its steps' blocks whole, without overflowing.
        assert_eq!(lone_blocks(170, 18, 1020, Some((512, 3, usize::MAX))), 170);
    }
}
