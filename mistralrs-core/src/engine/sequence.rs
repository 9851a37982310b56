//! One sequence being generated: its tokens, cache, sampler, and the text it
//! has produced (with stop strings cut and held back while they may start).

use crate::error::Result;
use crate::kv_cache::{block_hash, BlockAllocator, BlockTable, SideState, BLOCK_SIZE};
use crate::response::{ResponseLogprob, TopLogprob};
use crate::sampler::{Sampled, Sampler};
use crate::tokenizer::TextTokenizer;

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
    /// What the model keeps for this sequence between steps (X-LoRA).
    pub side: SideState,
    pub sampler: Sampler,
    /// The decoding of all generated tokens (as transformers' `decode`), stop strings cut off.
    pub text: String,
    /// Bytes of `text` already streamed.
    emitted: usize,
    pub logprobs: Vec<ResponseLogprob>,
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
    /// Speculative decoding: the draft model's cache blocks and the tokens
    /// they hold; the tokens the draft proposes this step (set by the
    /// scheduler) and the draft's distribution for each proposal made.
    pub draft_blocks: BlockTable,
    pub draft_computed: usize,
    pub proposals: usize,
    pub drafted: Vec<Vec<(u32, f32)>>,
    /// The grammar as the draft's proposals advance it (a copy: the
    /// sequence's own matcher only ever takes accepted tokens).
    pub draft_grammar: Option<Box<llguidance::Matcher>>,
}

/// What the engine needs to judge each new token.
pub struct StopRules<'a> {
    pub eos: &'a [u32],
    pub ignore_eos: bool,
    pub stop_seqs: &'a [String],
    pub logprobs: bool,
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
            side: SideState::default(),
            sampler,
            text: String::new(),
            emitted: 0,
            logprobs: Vec::new(),
            logprob_sum: 0.0,
            finish: None,
            max_new,
            forks: 0,
            adapters: None,
            grammar: None,
            draft_blocks: BlockTable::default(),
            draft_computed: 0,
            proposals: 0,
            drafted: Vec::new(),
            draft_grammar: None,
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
        if let Some(d) = draft {
            self.draft_blocks.release_all(d);
        }
        self.draft_computed = 0;
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
    /// token to compute; returns the tokens they cover.
    pub fn reuse_cached_prefix(&mut self, alloc: &mut BlockAllocator) -> usize {
        debug_assert!(self.computed == 0 && self.blocks.blocks.is_empty());
        let salt = self.cache_salt();
        for i in 0..(self.tokens.len() - 1) / BLOCK_SIZE {
            let prev = self.block_hashes.last().copied().unwrap_or(0);
            let h = block_hash(prev, &self.tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE], salt);
            let Some(b) = alloc.lookup(h) else { break };
            self.blocks.blocks.push(b);
            self.block_hashes.push(h);
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

    /// Takes a sampled token; returns the text that may be streamed now.
    pub fn accept(&mut self, s: Sampled, tok: &TextTokenizer, rules: &StopRules) -> Result<String> {
        if !rules.ignore_eos && rules.eos.contains(&s.token) {
            self.finish = Some("stop");
            return Ok(self.take_emittable(rules.stop_seqs));
        }
        if let Some(m) = &mut self.grammar {
            // The mask let only tokens the grammar takes through.
            m.consume_token(s.token).map_err(|e| crate::error::Error::runtime(format!("grammar: {e}")))?;
        }
        self.tokens.push(s.token);
        if let Some(lp) = s.logprob {
            self.logprob_sum += lp as f64;
        }
        if rules.logprobs {
            self.logprobs.push(ResponseLogprob {
                token: token_text(tok, s.token),
                logprob: s.logprob.unwrap_or(0.0),
                bytes: byte_list(tok, s.token),
                top_logprobs: s
                    .top
                    .iter()
                    .map(|&(t, l)| TopLogprob { token: token_text(tok, t), logprob: l, bytes: byte_list(tok, t) })
                    .collect(),
            });
        }
        // Decoding the whole completion each step is what makes byte-fallback
        // and multi-byte tokens come out exactly as a one-shot decode does;
        // it costs microseconds against a forward pass of milliseconds.
        let searched_from = self.text.len();
        self.text = tok.decode(&self.tokens[self.prompt_len..], true)?;
        if let Some(cut) = find_stop(&self.text, searched_from, rules.stop_seqs) {
            self.text.truncate(cut);
            self.finish = Some("stop");
        } else if self.generated() >= self.max_new {
            self.finish = Some("length");
        } else if self.grammar.as_ref().is_some_and(|m| m.is_stopped()) {
            // The grammar admits nothing more (not even a longer match).
            self.finish = Some("stop");
        }
        Ok(self.take_emittable(rules.stop_seqs))
    }

    /// Ends the sequence where it stands (`reason` as its finish reason);
    /// returns the text not yet streamed.
    pub fn finish_now(&mut self, reason: &'static str, rules: &StopRules) -> String {
        self.finish = Some(reason);
        self.take_emittable(rules.stop_seqs)
    }

    /// Tokens the grammar allows as the only continuation, to be appended
    /// without sampling (computed with the next step's tokens).
    pub fn forced_tokens(&mut self) -> Vec<u32> {
        match &mut self.grammar {
            Some(m) if self.finish.is_none() => m.compute_ff_tokens(),
            _ => Vec::new(),
        }
    }

    /// Text not yet streamed, minus (while running) a tail that could be the
    /// start of a stop string.
    /// Text not yet streamed. While running, a tail that could start a stop
    /// string, or that ends in an incomplete character (U+FFFD), waits.
    fn take_emittable(&mut self, stops: &[String]) -> String {
        let text = &self.text;
        let mut end = text.len();
        if self.finish.is_none() {
            end -= partial_stop_len(text, stops);
            while text[..end].ends_with('\u{FFFD}') {
                end -= '\u{FFFD}'.len_utf8();
            }
        }
        // Text already streamed is never taken back.
        if end <= self.emitted || !text.is_char_boundary(self.emitted) {
            return String::new();
        }
        let out = text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

}

/// Byte offset of the earliest stop string in `text`, looking only where a
/// match could involve text added after `from`.
fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            let mut start = from.saturating_sub(s.len() - 1);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            text[start..].find(s.as_str()).map(|i| start + i)
        })
        .min()
}

/// Length of the longest tail of `text` that is a proper prefix of a stop string.
fn partial_stop_len(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| (1..s.len()).rev().filter(|&k| s.is_char_boundary(k)).find(|&k| text.ends_with(&s[..k])))
        .max()
        .unwrap_or(0)
}

fn byte_list(tok: &TextTokenizer, id: u32) -> Vec<u16> {
    tok.token_bytes(id).iter().map(|&b| b as u16).collect()
}

fn token_text(tok: &TextTokenizer, id: u32) -> String {
    String::from_utf8_lossy(tok.token_bytes(id)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_found_across_pieces() {
        let stops = vec!["END".to_string()];
        assert_eq!(find_stop("abcEN", 3, &stops), None);
        assert_eq!(find_stop("abcEND!", 5, &stops), Some(3));
        assert_eq!(partial_stop_len("abcEN", &stops), 2);
        assert_eq!(partial_stop_len("abc", &stops), 0);
    }
}
