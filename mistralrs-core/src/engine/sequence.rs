//! One sequence being generated: its tokens, its cache blocks and their
//! prefix-cache keys, its sampler and grammar. What its tokens become for
//! the caller (text, stop strings, logprobs) is `emission`'s.

use super::detokenize::TextOut;
use crate::kv_cache::{block_hash, BlockAllocator, BlockTable, SideState, BLOCK_SIZE};
use crate::response::ResponseLogprob;
use crate::sampler::Sampler;

pub struct Sequence {
    /// The request this sequence answers, and which of its choices it is.
    pub group: u64,
    pub choice: usize,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// The cache blocks holding this sequence's keys and values.
    pub blocks: BlockTable,
    /// Tokens whose keys and values are in those blocks.
    pub computed: usize,
    /// Tokens this step runs (set by the scheduler; a long prompt runs in chunks).
    pub chunk: usize,
    /// Prefix-cache keys of the full blocks computed so far, in order.
    pub block_hashes: Vec<u64>,
    /// Leading blocks of its table past which its sliding-window layers
    /// never look again, already thinned (`Engine::thin_windows`).
    pub thinned: usize,
    /// What the model keeps for this sequence between steps (X-LoRA).
    pub side: SideState,
    pub sampler: Sampler,
    /// The generated tokens' text, as streamed and as answered.
    pub out: TextOut,
    pub logprobs: Vec<ResponseLogprob>,
    /// Logprobs already sent in stream chunks (a token whose text is held
    /// back, an incomplete UTF-8 character, goes with the next chunk).
    pub logprobs_streamed: usize,
    pub logprob_sum: f64,
    pub finish: Option<&'static str>,
    /// Generated tokens allowed (max_tokens, or what the context leaves).
    pub max_new: usize,
    /// Sibling choices still to be forked from this one once its prompt is in the cache.
    pub forks: usize,
    /// Weight per loaded adapter (1 for each in this request's set), or None
    /// for the base model alone.
    pub adapters: Option<std::sync::Arc<[f32]>>,
    /// The request's grammar, in the state after this sequence's generated tokens.
    pub grammar: Option<Box<llguidance::Matcher>>,
    /// Speculative decoding's state, when the engine has a draft model.
    pub spec: Option<Box<Speculation>>,
}

impl Sequence {
    pub fn new(group: u64, choice: usize, prompt: Vec<u32>, sampler: Sampler, max_new: usize) -> Self {
        Self {
            group,
            choice,
            prompt_len: prompt.len(),
            tokens: prompt,
            blocks: BlockTable::default(),
            computed: 0,
            chunk: 0,
            block_hashes: Vec::new(),
            thinned: 0,
            side: SideState::default(),
            sampler,
            out: TextOut::default(),
            logprobs: Vec::new(),
            logprobs_streamed: 0,
            logprob_sum: 0.0,
            finish: None,
            max_new,
            forks: 0,
            adapters: None,
            grammar: None,
            spec: None,
        }
    }

    /// A sibling choice sharing this sequence's prompt and its cache blocks
    /// (a shared block is copied only when one of them writes into it).
    pub fn fork(&self, choice: usize, sampler: Sampler, alloc: &mut BlockAllocator) -> Self {
        let mut s = Self::new(self.group, choice, self.tokens[..self.prompt_len].to_vec(), sampler, self.max_new);
        s.blocks = self.blocks.share(alloc);
        s.computed = self.computed;
        s.block_hashes = self.block_hashes.clone();
        s.side = self.side.clone();
        s.adapters = self.adapters.clone();
        s.grammar = self.grammar.as_ref().map(|m| Box::new(m.deep_clone()));
        s.out = self.out.empty_like();
        s.spec = self.spec.as_ref().map(|_| Box::default());
        s
    }

    /// Gives the cache blocks back; the whole sequence is computed again
    /// when it next runs (preemption, or running without a cache).
    pub fn drop_cache(&mut self, alloc: &mut BlockAllocator, draft: Option<&mut BlockAllocator>) {
        self.release(alloc, draft);
        self.block_hashes.clear();
        self.computed = 0;
        self.side = SideState::default();
    }

    /// Gives back the cache blocks of the target model and of the draft.
    pub fn release(&mut self, alloc: &mut BlockAllocator, draft: Option<&mut BlockAllocator>) {
        self.blocks.release_all(alloc);
        self.thinned = 0;
        if let (Some(spec), Some(d)) = (&mut self.spec, draft) {
            spec.release(d);
        }
    }

    /// Draft tokens the target verifies this step (0 without speculation).
    pub fn proposals(&self) -> usize {
        self.spec.as_ref().map_or(0, |s| s.proposals)
    }

    /// Proposes no more this step than the draft has drafted so far.
    pub fn stop_drafting(&mut self) {
        if let Some(sp) = self.spec.as_mut() {
            self.chunk -= sp.proposals - sp.drafted;
            sp.proposals = sp.drafted;
        }
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// What the keys and values depend on besides the tokens: the adapter set.
    pub fn cache_salt(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let Some(w) = &self.adapters else { return 0 };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for x in w.iter() {
            x.to_bits().hash(&mut h);
        }
        h.finish() | 1
    }

    /// Registers the blocks this sequence has filled since the last call in
    /// the prefix cache.
    pub fn register_full_blocks(&mut self, alloc: &mut BlockAllocator) {
        if self.block_hashes.len() >= self.computed / BLOCK_SIZE {
            return; // the common case: no block filled up this step
        }
        let salt = self.cache_salt();
        while self.block_hashes.len() < self.computed / BLOCK_SIZE {
            let i = self.block_hashes.len();
            let prev = self.block_hashes.last().copied().unwrap_or(0);
            let h = block_hash(prev, &self.tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE], salt);
            alloc.register(self.blocks.blocks[i], h);
            self.block_hashes.push(h);
        }
    }

    /// Takes the cached blocks of the longest prefix of this (not yet
    /// computed) sequence that the prefix cache holds, leaving at least one
    /// token to compute; returns the tokens they cover. With a sliding
    /// `window`, the prefix ends where the window before its end is whole:
    /// thinned blocks there (whose windowed layers were given back) would
    /// be read by the first tokens computed after it.
    pub fn reuse_cached_prefix(&mut self, alloc: &mut BlockAllocator, window: Option<usize>) -> usize {
        debug_assert!(self.computed == 0 && self.blocks.blocks.is_empty());
        let salt = self.cache_salt();
        for i in 0..(self.tokens.len() - 1) / BLOCK_SIZE {
            let prev = self.block_hashes.last().copied().unwrap_or(0);
            let h = block_hash(prev, &self.tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE], salt);
            let Some(b) = alloc.lookup(h) else { break };
            self.blocks.blocks.push(b);
            self.block_hashes.push(h);
        }
        if let Some(w) = window {
            loop {
                let n = self.blocks.blocks.len();
                let first_read = (n * BLOCK_SIZE + 1).saturating_sub(w) / BLOCK_SIZE;
                if !self.blocks.blocks[first_read.min(n)..].iter().any(|&b| alloc.is_thinned(b)) {
                    break;
                }
                if let Some(b) = self.blocks.blocks.pop() {
                    alloc.release(b);
                    self.block_hashes.pop();
                }
            }
        }
        self.computed = self.blocks.blocks.len() * BLOCK_SIZE;
        self.computed
    }

    /// Tokens not yet in the cache: the prompt (or what of it is left), then
    /// the last sampled token.
    pub fn uncomputed(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// The tokens this step runs and how many precede them in the cache.
    pub fn step_input(&self) -> (&[u32], usize) {
        (&self.tokens[self.computed..self.computed + self.chunk], self.computed)
    }

    /// Tokens the grammar allows as the only continuation, to be appended
    /// without sampling (computed with the next step's tokens).
    pub fn forced_tokens(&mut self) -> Vec<u32> {
        match &mut self.grammar {
            Some(m) if self.finish.is_none() => m.compute_ff_tokens(),
            _ => Vec::new(),
        }
    }
}

/// A sequence's speculative state.
#[derive(Default)]
pub struct Speculation {
    /// The draft model's cache blocks for this sequence, and the tokens they hold.
    pub blocks: BlockTable,
    pub computed: usize,
    /// Prefix-cache keys of the draft's full blocks registered so far (its
    /// cache is keyed by tokens alone: the draft has no adapters).
    pub hashes: Vec<u64>,
    /// Tokens the draft proposes this step (set by the scheduler).
    pub proposals: usize,
    /// The draft's distribution for each proposal made this step (the first
    /// `drafted` entries; the buffers are kept for the next step).
    pub dists: Vec<Vec<(u32, f32)>>,
    pub drafted: usize,
    /// The target's distribution at the proposal being verified (a buffer kept between steps).
    pub target: Vec<(u32, f32)>,
    /// The grammar as the draft's proposals advance it (a copy: the
    /// sequence's own matcher only ever takes accepted tokens).
    pub grammar: Option<Box<llguidance::Matcher>>,
    /// How many tokens to propose next, from what the last proposals were worth.
    pub pace: super::pace::Pace,
    /// This step's share of the draft model's time (seconds).
    pub draft_secs: f64,
}

impl Speculation {
    pub fn release(&mut self, alloc: &mut BlockAllocator) {
        self.blocks.release_all(alloc);
        self.computed = 0;
        self.hashes.clear();
    }

    /// Before the draft first reads `tokens`: takes the draft's cached
    /// blocks of their longest cached prefix (whole blocks, leaving at least
    /// one token to compute, as the target does).
    pub fn reuse_cached_prefix(&mut self, tokens: &[u32], alloc: &mut BlockAllocator) {
        if self.computed > 0 || !self.blocks.blocks.is_empty() {
            return;
        }
        for i in 0..tokens.len().saturating_sub(1) / BLOCK_SIZE {
            let prev = self.hashes.last().copied().unwrap_or(0);
            let h = block_hash(prev, &tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE], 0);
            let Some(b) = alloc.lookup(h) else { break };
            self.blocks.blocks.push(b);
            self.hashes.push(h);
        }
        self.computed = self.blocks.blocks.len() * BLOCK_SIZE;
    }

    /// Registers the draft's blocks filled with `tokens` (the sequence's,
    /// whose first `computed` the draft holds: prompt and accepted tokens
    /// only, since verification rolls rejected proposals back).
    pub fn register_full_blocks(&mut self, tokens: &[u32], alloc: &mut BlockAllocator) {
        while self.hashes.len() < self.computed.min(tokens.len()) / BLOCK_SIZE {
            let i = self.hashes.len();
            let prev = self.hashes.last().copied().unwrap_or(0);
            let h = block_hash(prev, &tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE], 0);
            alloc.register(self.blocks.blocks[i], h);
            self.hashes.push(h);
        }
    }
}
