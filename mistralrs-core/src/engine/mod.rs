//! The engine thread: receives requests, and every step runs one forward
//! pass over all running sequences (new prompts and decoding tokens of
//! different requests together), samples each, and answers on each request's
//! own channel. It knows nothing of any architecture.

mod group;
mod sequence;
mod speculative;

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use rayon::prelude::*;

use crate::error::{panic_message, Error, Result};
use crate::kv_cache::{BlockAllocator, BlockTable, KvPool, SideState, StepKv};
use crate::layers::AdapterRows;
use crate::models::{CausalLm, ForwardBatch};
use crate::request::GenerationRequest;
use crate::sampler::{Sampled, Sampler};
use crate::tokenizer::TextTokenizer;
pub use group::{Notify, Responder};
use group::Group;
use sequence::{Sequence, StopRules};
use speculative::{Draft, Verdict};

/// Counters of the engine's work, read by the runner (`Runner.stats()`).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Forward steps run.
    pub steps: AtomicU64,
    /// Sequence-steps: the sum over steps of the sequences in each.
    pub sequence_steps: AtomicU64,
    /// The most sequences one step has run.
    pub max_batch: AtomicU64,
    /// Steps whose sequences used more than one adapter set (the base counts as one).
    pub mixed_adapter_steps: AtomicU64,
    /// Sequences whose cache blocks were taken back for older sequences (to be recomputed).
    pub preemptions: AtomicU64,
    /// Cache blocks in the pool, and those held by sequences after the last step.
    pub kv_blocks_total: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    /// Sibling choices that started from another choice's prompt blocks instead of their own.
    pub shared_prompts: AtomicU64,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub prefix_cache_hit_tokens: AtomicU64,
    /// Requests dropped by their callers (stream closed, task cancelled) before they finished.
    pub requests_cancelled: AtomicU64,
    /// Sequences running and waiting to start (or resume), after the last step.
    pub seqs_running: AtomicU64,
    pub seqs_waiting: AtomicU64,
}

pub struct EngineConfig {
    pub max_seqs: usize,
    /// Released prefixes whose blocks the prefix cache keeps (0: none).
    pub prefix_cache_n: usize,
    /// Tokens one step runs at most: decoding sequences take one each, and
    /// prompts share the rest in chunks (so a long prompt does not stall
    /// running decodes for its whole length).
    pub max_step_tokens: usize,
    /// Cache blocks in the pool (see `kv_budget`).
    pub kv_blocks: usize,
    pub no_kv_cache: bool,
    pub repeat_last_n: usize,
    pub default_seed: Option<u64>,
}

/// A validated, tokenized request on its way to the engine.
pub struct Admission {
    pub id: String,
    pub created: u64,
    pub fingerprint: String,
    pub request: GenerationRequest,
    pub prompt: Vec<u32>,
    /// Weight per loaded adapter for this request, None for the base alone.
    pub adapters: Option<Arc<[f32]>>,
    pub max_new: usize,
    /// The request's grammar, compiled, at the start of the output.
    pub grammar: Option<llguidance::Matcher>,
    pub responder: Responder,
    /// Set when the caller stops listening (its stream is dropped).
    pub cancel: Arc<AtomicBool>,
}

pub enum Message {
    Add(Box<Admission>),
    /// Replace the model (the same architecture and shapes, other weights:
    /// `send_re_isq`) between two steps; acknowledged once in place.
    Swap(Box<dyn CausalLm>, std::sync::mpsc::Sender<Result<()>>),
    Stop,
}

pub struct Engine {
    model: Box<dyn CausalLm>,
    tokenizer: Arc<TextTokenizer>,
    eos: Vec<u32>,
    device: Device,
    cfg: EngineConfig,
    groups: HashMap<u64, (Group, GenerationRequest)>,
    waiting: VecDeque<Sequence>,
    /// In admission order: the newest are preempted first.
    running: Vec<Sequence>,
    next_group: u64,
    kv: KvPool,
    alloc: BlockAllocator,
    /// The step runs inside the compute pool, so the parallel loops of every
    /// op split work among its threads directly instead of each waking the
    /// pool from outside and waiting on it.
    pool: Arc<rayon::ThreadPool>,
    stats: Arc<EngineStats>,
    /// Speculative decoding's draft model, when the runner has one.
    draft: Option<Draft>,
}

impl Engine {
    pub fn new(
        model: Box<dyn CausalLm>,
        tokenizer: Arc<TextTokenizer>,
        eos: Vec<u32>,
        device: Device,
        cfg: EngineConfig,
        stats: Arc<EngineStats>,
        draft: Option<(Box<dyn CausalLm>, usize)>,
    ) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("mistralrs-compute-{i}"))
            .build()
            .map_err(|e| Error::runtime(format!("cannot start the compute threads: {e}")))?;
        let mut cfg = cfg;
        let mc = model.config();
        // LongRoPE picks its rotation by the sequence's length when the keys
        // are computed (as transformers does), so a block's keys depend on more
        // than the tokens before it: such a model neither reuses cached
        // prefixes nor splits a prompt into chunks.
        if matches!(mc.rope_scaling, crate::config::RopeScaling::LongRope { .. }) {
            cfg.prefix_cache_n = 0;
            cfg.max_step_tokens = usize::MAX;
        }
        let kv = KvPool::new(model.cache_layers(), cfg.kv_blocks, mc.num_kv_heads, mc.head_dim, &device, model.dtype())
            .map_err(|e| Error::runtime(format!("cannot allocate the KV cache ({} blocks): {e}", cfg.kv_blocks)))?;
        stats.kv_blocks_total.store(cfg.kv_blocks as u64, Ordering::Relaxed);
        let draft = match draft {
            Some((model, gamma)) => {
                // As many tokens as the target's pool, and room for every sequence's proposals.
                let blocks = cfg.kv_blocks + cfg.max_seqs * (gamma.div_ceil(crate::kv_cache::BLOCK_SIZE) + 1);
                let dc = model.config();
                let kv = KvPool::new(model.cache_layers(), blocks, dc.num_kv_heads, dc.head_dim, &device, model.dtype())
                    .map_err(|e| Error::runtime(format!("cannot allocate the draft model's KV cache: {e}")))?;
                Some(Draft { model, kv, alloc: BlockAllocator::new(blocks, 0), gamma })
            }
            None => None,
        };
        Ok(Self {
            draft,
            alloc: BlockAllocator::new(cfg.kv_blocks, if cfg.no_kv_cache { 0 } else { cfg.prefix_cache_n }),
            kv,
            model,
            tokenizer,
            eos,
            device,
            cfg,
            groups: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_group: 0,
            pool: Arc::new(pool),
            stats,
        })
    }

    pub fn run(mut self, rx: Receiver<Message>) {
        // The model, the cache and every step's tensors live and die on this
        // thread (see `device::bind_thread`); a failure shows in the first step.
        let _ = crate::device::bind_thread(&self.device);
        loop {
            // Block only when there is nothing to compute.
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(Message::Add(a)) => self.admit(*a),
                    Ok(Message::Swap(m, ack)) => self.swap(m, ack),
                    Ok(Message::Stop) | Err(_) => return self.close(),
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(Message::Add(a)) => self.admit(*a),
                    Ok(Message::Swap(m, ack)) => self.swap(m, ack),
                    Ok(Message::Stop) | Err(TryRecvError::Disconnected) => return self.close(),
                    Err(TryRecvError::Empty) => break,
                }
            }
            self.schedule();
            // A panic in a step fails the requests of that step, never the process.
            let pool = self.pool.clone();
            let outcome = catch_unwind(AssertUnwindSafe(|| pool.install(|| self.step())));
            let err = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(p) => Some(Error::runtime(format!("internal error in the engine: {}", panic_message(p.as_ref())))),
            };
            if let Some(e) = err {
                self.fail_running(e);
            }
            self.retire();
        }
    }

    /// Fails every request not yet answered: a closed runner never lets a
    /// caller wait forever or mistake a cut-off stream for a finished one.
    fn close(&mut self) {
        for (_, (g, _)) in self.groups.iter_mut() {
            if !g.cancelled {
                g.fail(Error::EngineClosed("the runner was closed before this request finished".into()));
            }
        }
        self.groups.clear();
        self.running.clear();
        self.waiting.clear();
    }

    /// Drops the sequences of requests whose callers stopped listening,
    /// freeing their blocks before the step rather than after it.
    fn drop_cancelled(&mut self) {
        let mut any = false;
        for (g, _) in self.groups.values_mut() {
            if !g.cancelled && g.cancel.load(Ordering::Relaxed) {
                g.cancelled = true;
            }
            any |= g.cancelled;
        }
        if !any {
            return;
        }
        let (groups, alloc) = (&self.groups, &mut self.alloc);
        let mut draft = self.draft.as_mut().map(|d| &mut d.alloc);
        let live = |s: &Sequence| groups.get(&s.group).is_some_and(|(g, _)| !g.cancelled);
        self.running.retain_mut(|s| {
            let keep = live(s);
            if !keep {
                s.release(alloc, draft.as_deref_mut());
            }
            keep
        });
        self.waiting.retain(|s| live(s));
    }

    /// Running sequences keep their caches: the new model has the same
    /// layers and shapes, so their later tokens come from the new weights.
    fn swap(&mut self, model: Box<dyn CausalLm>, ack: std::sync::mpsc::Sender<Result<()>>) {
        let result = if model.cache_layers() != self.model.cache_layers() || model.config().hidden_size != self.model.config().hidden_size {
            Err(Error::runtime("the replacement model does not have the loaded model's shapes"))
        } else {
            self.model = model;
            Ok(())
        };
        let _ = ack.send(result);
    }

    fn admit(&mut self, a: Admission) {
        let id = self.next_group;
        self.next_group += 1;
        let req = a.request;
        let seed = req.seed.or(self.cfg.default_seed).unwrap_or_else(rand::random);
        let sampler = Sampler::new(req.sampling.clone(), seed, self.cfg.repeat_last_n, req.best_of > req.n_choices);
        let mut seq = Sequence::new(id, 0, a.prompt.clone(), sampler, a.max_new);
        seq.forks = req.best_of - 1;
        seq.adapters = a.adapters;
        seq.grammar = a.grammar.map(Box::new);
        let echo = match (&req.prompt, req.echo_prompt) {
            (crate::request::PromptInput::Completion(p), true) => Some(p.clone()),
            (crate::request::PromptInput::Tokens(ids), true) => Some(self.tokenizer.decode(ids, false).unwrap_or_default()),
            _ => None,
        };
        let group = Group {
            id: a.id,
            kind: req.kind(),
            model: req.model.clone(),
            fingerprint: a.fingerprint,
            created: a.created,
            stream: req.stream,
            logprobs: req.logprobs,
            n_choices: req.n_choices,
            echo,
            started: vec![false; req.best_of],
            spec_proposed: 0,
            spec_accepted: 0,
            prompt_tokens: a.prompt.len(),
            cached_tokens: None,
            responder: a.responder,
            cancel: a.cancel,
            finished: (0..req.best_of).map(|_| None).collect(),
            admitted: None,
            prompt_done: None,
            cancelled: false,
        };
        self.groups.insert(id, (group, req));
        self.waiting.push_back(seq);
        self.stats.seqs_waiting.store(self.waiting.len() as u64, Ordering::Relaxed);
    }

    /// Picks this step's sequences and gives each the cache blocks its new
    /// tokens need. Waiting sequences join while `max_seqs` and the free
    /// blocks allow; when the pool runs out, the newest running sequences
    /// give their blocks back and wait to be recomputed (preemption), so the
    /// oldest always progress.
    fn schedule(&mut self) {
        self.drop_cancelled();
        if self.cfg.no_kv_cache {
            // Every token is computed again for each new one (in chunks, over
            // as many steps as the budget needs, without dropping them between).
            for s in &mut self.running {
                if s.computed > 0 && s.uncomputed() == 1 {
                    s.drop_cache(&mut self.alloc, self.draft.as_mut().map(|d| &mut d.alloc));
                }
            }
        }
        // Token budget: running sequences first, decoding ones one token
        // each, then prompts in admission order, each what is left allows.
        let mut budget = self.cfg.max_step_tokens;
        for s in &mut self.running {
            s.chunk = 0;
            if s.uncomputed() == 1 {
                s.chunk = 1;
                budget = budget.saturating_sub(1);
            }
        }
        // Decoding sequences with a draft model verify its proposals too.
        if let Some(d) = self.draft.as_ref().filter(|_| !self.cfg.no_kv_cache) {
            for s in &mut self.running {
                s.proposals = 0;
                if s.chunk == 1 && s.generated() > 0 {
                    // Never more tokens than max_tokens allows (a step emits up to proposals + 1).
                    s.proposals = d.gamma.min(s.max_new.saturating_sub(s.generated() + 1)).min(budget);
                    s.chunk += s.proposals;
                    budget -= s.proposals;
                }
            }
        }
        for s in &mut self.running {
            if s.chunk == 0 {
                s.chunk = s.uncomputed().min(budget);
                budget -= s.chunk;
            }
        }
        // Waiting sequences join while max_seqs, the budget and the blocks
        // the running ones leave allow; each starts with its first chunk.
        let mut free = self.alloc.free_count().saturating_sub(self.running.iter().map(|s| self.blocks_needed(s)).sum());
        while self.running.len() < self.cfg.max_seqs && budget > 0 {
            let Some(seq) = self.waiting.front() else { break };
            // A request's other choices (forked after its prompt) count
            // against max_seqs too; a request wider than max_seqs runs alone.
            if !self.running.is_empty() && self.running.len() + 1 + seq.forks > self.cfg.max_seqs {
                break;
            }
            // Counted before any cached prefix is found: never more than it needs.
            let need = BlockTable::blocks_for(seq.tokens.len().min(budget));
            if need > free {
                break;
            }
            free -= need;
            let mut seq = self.waiting.pop_front().expect("peeked");
            let cached = if self.cfg.no_kv_cache { 0 } else { seq.reuse_cached_prefix(&mut self.alloc) };
            self.stats.prefix_cache_hit_tokens.fetch_add(cached as u64, Ordering::Relaxed);
            if let Some((g, _)) = self.groups.get_mut(&seq.group) {
                g.admitted.get_or_insert_with(Instant::now);
                // What the caller saved: counted at the first admission only, not on resumption.
                if seq.generated() == 0 && seq.choice == 0 {
                    g.cached_tokens.get_or_insert(cached);
                }
            }
            seq.chunk = seq.uncomputed().min(budget);
            budget -= seq.chunk;
            self.running.push(seq);
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.reserve(i) {
                i += 1;
                continue;
            }
            let mut victim = self.running.pop().expect("i is in range");
            victim.drop_cache(&mut self.alloc, self.draft.as_mut().map(|d| &mut d.alloc));
            victim.chunk = 0;
            victim.proposals = 0;
            self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
            self.waiting.push_front(victim);
        }
    }

    /// Blocks `seq` still needs for its tokens of this step (a shared partly
    /// filled block it writes into counts as one).
    fn blocks_needed(&self, seq: &Sequence) -> usize {
        let filled = seq.computed % crate::kv_cache::BLOCK_SIZE;
        let copy = filled != 0
            && seq.chunk > 0
            && self.alloc.refs(seq.blocks.blocks[seq.computed / crate::kv_cache::BLOCK_SIZE]) > 1;
        BlockTable::blocks_for(seq.computed + seq.chunk).saturating_sub(seq.blocks.blocks.len()) + copy as usize
    }

    /// Blocks for running sequence `i`'s tokens of this step; false when the pool
    /// is out of blocks. A partly filled block it shares with a sibling
    /// choice is copied before it writes there (copy-on-write).
    fn reserve(&mut self, i: usize) -> bool {
        let seq = &mut self.running[i];
        let filled = seq.computed % crate::kv_cache::BLOCK_SIZE;
        if filled != 0 {
            let at = seq.computed / crate::kv_cache::BLOCK_SIZE;
            let shared = seq.blocks.blocks[at];
            if self.alloc.refs(shared) > 1 {
                let Some(own) = self.alloc.allocate() else { return false };
                if self.kv.copy_block(shared, own, filled).is_err() {
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

    fn step(&mut self) -> Result<()> {
        // Sequences with tokens this step, in running order.
        let active: Vec<usize> = (0..self.running.len()).filter(|&i| self.running[i].chunk > 0).collect();
        if active.is_empty() {
            return Ok(());
        }
        self.propose()?;
        let logits = {
            let inputs: Vec<(&[u32], usize)> = active.iter().map(|&i| self.running[i].step_input()).collect();
            let wanted = |k: usize| 1 + self.running[active[k]].proposals;
            let batch = ForwardBatch::wanting(&inputs, wanted, &self.device)?;
            let batch = match self.adapter_rows(&active, &inputs)? {
                Some(rows) => batch.with_adapters(Some(rows)),
                None => batch,
            };
            drop(inputs);
            self.count_step(&active);
            let (tables, sides): (Vec<&BlockTable>, Vec<&mut SideState>) = self
                .running
                .iter_mut()
                .filter(|s| s.chunk > 0)
                .map(|s| (&s.blocks, &mut s.side))
                .unzip();
            let mut kv = StepKv::new(&self.kv, tables, sides);
            self.model.forward(&batch, &mut kv)?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?
        };
        let now = Instant::now();
        // The rows of the sequences that sample now: a prompt chunk that does
        // not reach the prompt's end samples nothing.
        let mut rows = Vec::with_capacity(active.len());
        // Speculating sequences: a row per proposal and one more.
        let mut verify = Vec::new();
        let mut logits = logits.into_iter();
        for &i in &active {
            let seq = &mut self.running[i];
            seq.computed += seq.chunk;
            seq.chunk = 0;
            if seq.proposals > 0 {
                // Its blocks are registered once the accepted tokens are known.
                verify.push((i, logits.by_ref().take(seq.proposals + 1).collect::<Vec<_>>()));
                continue;
            }
            let row = logits.next().expect("a row per sequence");
            seq.register_full_blocks(&mut self.alloc);
            if seq.uncomputed() == 0 {
                rows.push((i, row));
            }
        }
        for (i, seq_rows) in verify {
            let seq = &mut self.running[i];
            let Some((group, req)) = self.groups.get_mut(&seq.group) else { continue };
            if !group.cancelled {
                advance_speculative(seq, seq_rows, group, req, &self.tokenizer, &self.eos);
            }
            seq.register_full_blocks(&mut self.alloc);
        }
        self.mask_by_grammars(&mut rows);
        let mut forked = Vec::new();
        for (i, mut row) in rows {
            let seq = &mut self.running[i];
            let Some((group, req)) = self.groups.get_mut(&seq.group) else { continue };
            if group.cancelled {
                continue;
            }
            if seq.generated() == 0 && seq.choice == 0 {
                group.prompt_done = Some(now);
                // Sibling choices share the prompt's cache blocks and sample from the same logits.
                for c in 1..=seq.forks {
                    let seed = req.seed.or(self.cfg.default_seed).map_or_else(rand::random, |s| s.wrapping_add(c as u64));
                    let sampler = Sampler::new(req.sampling.clone(), seed, self.cfg.repeat_last_n, req.best_of > req.n_choices);
                    forked.push((seq.fork(c, sampler, &mut self.alloc), row.clone()));
                    self.stats.shared_prompts.fetch_add(1, Ordering::Relaxed);
                }
                seq.forks = 0;
            }
            advance(seq, &mut row, group, req, &self.tokenizer, &self.eos);
        }
        for (mut seq, mut row) in forked {
            let Some((group, req)) = self.groups.get_mut(&seq.group) else { continue };
            advance(&mut seq, &mut row, group, req, &self.tokenizer, &self.eos);
            self.running.push(seq);
        }
        Ok(())
    }

    /// The draft model's proposals for this step's speculating sequences. The
    /// draft first reads what it has not seen of each (the prompt, the
    /// target's last tokens), then proposes one token per pass, all the
    /// sequences in each pass; proposals are appended to the sequences'
    /// tokens, to be verified by the target in this step's forward pass.
    fn propose(&mut self) -> Result<()> {
        let Some(draft) = self.draft.as_mut() else { return Ok(()) };
        let spec: Vec<usize> = (0..self.running.len()).filter(|&i| self.running[i].proposals > 0).collect();
        for &i in &spec {
            let s = &mut self.running[i];
            let need = BlockTable::blocks_for(s.tokens.len() + s.proposals - 1);
            while s.draft_blocks.blocks.len() < need {
                let Some(b) = draft.alloc.allocate() else { break };
                s.draft_blocks.blocks.push(b);
            }
            if s.draft_blocks.blocks.len() < need {
                // No room in the draft's pool: this sequence decodes plainly.
                s.chunk -= s.proposals;
                s.proposals = 0;
            }
        }
        let most = spec.iter().map(|&i| self.running[i].proposals).max().unwrap_or(0);
        for round in 0..most {
            let members: Vec<usize> = spec.iter().copied().filter(|&i| self.running[i].proposals > round).collect();
            if members.is_empty() {
                break;
            }
            let logits = {
                let inputs: Vec<(&[u32], usize)> = members
                    .iter()
                    .map(|&i| (&self.running[i].tokens[self.running[i].draft_computed..], self.running[i].draft_computed))
                    .collect();
                let batch = ForwardBatch::new(&inputs, &self.device)?;
                drop(inputs);
                let mut sides = vec![SideState::default(); members.len()];
                let tables: Vec<&BlockTable> = members.iter().map(|&i| &self.running[i].draft_blocks).collect();
                let mut kv = StepKv::new(&draft.kv, tables, sides.iter_mut().collect());
                draft.model.forward(&batch, &mut kv)?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?
            };
            for (&i, mut row) in members.iter().zip(logits) {
                let s = &mut self.running[i];
                s.draft_computed = s.tokens.len();
                self.tokenizer.mask_unsampleable(&mut row);
                if round == 0 {
                    s.draft_grammar = s.grammar.as_ref().map(|m| Box::new(m.deep_clone()));
                }
                // A grammar completed by the last proposal allows nothing more to propose.
                let masked = match &mut s.draft_grammar {
                    Some(m) => !m.is_stopped() && crate::grammar::mask_logits(m, &mut row).is_ok() && !dead_end(&row),
                    None => true,
                };
                let q = s.sampler.distribution(&mut row, &s.tokens);
                let d = s.sampler.draw_from(&q);
                let taken = masked && s.draft_grammar.as_mut().is_none_or(|m| m.consume_token(d).is_ok());
                if !taken {
                    // The grammar failed on the draft's side: verify what was proposed so far.
                    s.chunk -= s.proposals - s.drafted.len();
                    s.proposals = s.drafted.len();
                    continue;
                }
                s.tokens.push(d);
                s.drafted.push(q);
            }
        }
        Ok(())
    }

    /// Applies each constrained sequence's grammar to its row of logits, the
    /// sequences in parallel: a mask over a 150k-token vocabulary can take a
    /// millisecond, and a step may hold many constrained sequences.
    fn mask_by_grammars(&mut self, rows: &mut [(usize, Vec<f32>)]) {
        if !rows.iter().any(|(i, _)| self.running[*i].grammar.is_some()) {
            return;
        }
        let mut seqs: Vec<Option<&mut Sequence>> = self.running.iter_mut().map(Some).collect();
        let mut work: Vec<(&mut Sequence, &mut Vec<f32>)> = rows
            .iter_mut()
            .filter_map(|(i, row)| seqs[*i].take().filter(|s| s.grammar.is_some()).map(|s| (s, row)))
            .collect();
        let failed: Vec<(u64, Error)> = work
            .par_iter_mut()
            .filter_map(|(s, row)| {
                let m = s.grammar.as_mut().expect("filtered on it");
                crate::grammar::mask_logits(m, row).err().map(|e| (s.group, e))
            })
            .collect();
        for (group, e) in failed {
            if let Some((g, _)) = self.groups.get_mut(&group) {
                fail_group(g, e);
            }
        }
    }

    /// Each token row's adapter weights, when any running sequence has adapters.
    fn adapter_rows(&self, active: &[usize], inputs: &[(&[u32], usize)]) -> Result<Option<AdapterRows>> {
        let seqs = || active.iter().map(|&i| &self.running[i]);
        let Some(n) = seqs().find_map(|s| s.adapters.as_ref().map(|a| a.len())) else { return Ok(None) };
        let tokens: usize = inputs.iter().map(|(t, _)| t.len()).sum();
        let mut w = Vec::with_capacity(tokens * n);
        let mut active = vec![false; n];
        for (seq, (t, _)) in seqs().zip(inputs) {
            match &seq.adapters {
                Some(a) => {
                    for (on, x) in active.iter_mut().zip(a.iter()) {
                        *on |= *x != 0.0;
                    }
                    for _ in 0..t.len() {
                        w.extend_from_slice(a);
                    }
                }
                None => w.resize(w.len() + t.len() * n, 0.0),
            }
        }
        Ok(Some(AdapterRows::shared(candle_core::Tensor::from_vec(w, (tokens, n), &self.device)?, active)))
    }

    fn count_step(&self, active: &[usize]) {
        let n = active.len() as u64;
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats.sequence_steps.fetch_add(n, Ordering::Relaxed);
        self.stats.max_batch.fetch_max(n, Ordering::Relaxed);
        let mut sets = active.iter().map(|&i| self.running[i].adapters.as_deref());
        let first = sets.next();
        if first.is_some_and(|f| sets.any(|s| s != f)) {
            self.stats.mixed_adapter_steps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes finished and abandoned sequences and answers finished requests.
    fn retire(&mut self) {
        let groups = &mut self.groups;
        let alloc = &mut self.alloc;
        let mut draft = self.draft.as_mut().map(|d| &mut d.alloc);
        self.running.retain_mut(|s| {
            let keep = match groups.get_mut(&s.group) {
                None => false,
                Some((g, _)) if g.cancelled => false,
                Some((g, _)) if s.finish.is_some() => {
                    g.record(s);
                    false
                }
                Some(_) => true,
            };
            if !keep {
                s.release(alloc, draft.as_deref_mut());
            }
            keep
        });
        self.stats.kv_blocks_used.store(alloc.used() as u64, Ordering::Relaxed);
        self.waiting.retain(|s| groups.get(&s.group).is_some_and(|(g, _)| !g.cancelled));
        self.stats.seqs_running.store(self.running.len() as u64, Ordering::Relaxed);
        self.stats.seqs_waiting.store(self.waiting.len() as u64, Ordering::Relaxed);
        let done: Vec<u64> =
            groups.iter().filter(|(_, (g, _))| g.cancelled || g.is_done()).map(|(id, _)| *id).collect();
        for id in done {
            if let Some((mut g, _)) = groups.remove(&id) {
                if !g.cancelled && !g.stream {
                    g.complete();
                }
                // Dropped by its caller before the end: noticed before a step
                // (`drop_cancelled`) or when a send found no receiver.
                if g.cancelled && !g.is_done() && g.cancel.load(Ordering::Relaxed) {
                    self.stats.requests_cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn fail_running(&mut self, e: Error) {
        let msg = e.to_string();
        for mut s in self.running.drain(..) {
            s.release(&mut self.alloc, self.draft.as_mut().map(|d| &mut d.alloc));
            if let Some((g, _)) = self.groups.get_mut(&s.group) {
                if !g.cancelled {
                    g.fail(Error::Runtime(msg.clone()));
                }
            }
        }
    }
}

/// Fails one request (its sequences are dropped after the step), leaving
/// the others of the step running.
fn fail_group(group: &mut Group, e: Error) {
    if !group.cancelled {
        group.fail(e);
    }
}

/// Samples one token for `seq` from its logits row, appends the tokens its
/// grammar then forces, and streams what they add. An error fails only this
/// request.
fn advance(seq: &mut Sequence, row: &mut [f32], group: &mut Group, req: &GenerationRequest, tok: &TextTokenizer, eos: &[u32]) {
    let before = seq.logprobs.len();
    match sample_and_force(seq, row, req, tok, eos) {
        Ok(piece) => stream(seq, group, piece, before),
        Err(e) => fail_group(group, e),
    }
}

fn sample_and_force(seq: &mut Sequence, row: &mut [f32], req: &GenerationRequest, tok: &TextTokenizer, eos: &[u32]) -> Result<String> {
    tok.mask_unsampleable(row);
    let rules = StopRules { eos, ignore_eos: req.ignore_eos, stop_seqs: &req.stop_seqs, logprobs: req.logprobs };
    if seq.grammar.is_some() && dead_end(row) {
        return Ok(seq.finish_now(GRAMMAR_DEAD_END, &rules));
    }
    let sampled = seq.sampler.sample(row, &seq.tokens);
    let piece = seq.accept(sampled, tok, &rules)?;
    Ok(piece + &force(seq, tok, &rules)?)
}

/// Appends the tokens the grammar forces next; returns the text they add.
/// Forced tokens have probability 1 under the grammar: logprob 0, no alternatives.
fn force(seq: &mut Sequence, tok: &TextTokenizer, rules: &StopRules) -> Result<String> {
    let mut piece = String::new();
    for token in seq.forced_tokens() {
        if seq.finish.is_some() {
            break;
        }
        piece += &seq.accept(Sampled { token, logprob: Some(0.0), top: Vec::new() }, tok, rules)?;
    }
    Ok(piece)
}

/// The finish reason of a sequence whose grammar allows no next token (not
/// even the end): the vocabulary cannot spell what the grammar needs next.
const GRAMMAR_DEAD_END: &str = "grammar_dead_end";

/// No token can be sampled from this row.
fn dead_end(row: &[f32]) -> bool {
    row.iter().all(|&x| x == f32::NEG_INFINITY)
}

fn grammar_err(e: impl std::fmt::Display) -> Error {
    Error::runtime(format!("grammar: {e}"))
}

/// Verifies a sequence's proposals against the target's rows (one per
/// proposal, then one after them) and streams what it emits. An error
/// fails only this request.
fn advance_speculative(
    seq: &mut Sequence,
    mut rows: Vec<Vec<f32>>,
    group: &mut Group,
    req: &GenerationRequest,
    tok: &TextTokenizer,
    eos: &[u32],
) {
    let before = seq.logprobs.len();
    match verify_and_accept(seq, &mut rows, group, req, tok, eos) {
        Ok(piece) => stream(seq, group, piece, before),
        Err(e) => fail_group(group, e),
    }
}

/// The acceptance rule along the proposals: each kept one is emitted, and
/// the first rejected one is replaced by a draw from the rule's residual
/// (or, all kept, one more token is drawn from the last row). Both caches
/// then hold only what was accepted.
fn verify_and_accept(
    seq: &mut Sequence,
    rows: &mut [Vec<f32>],
    group: &mut Group,
    req: &GenerationRequest,
    tok: &TextTokenizer,
    eos: &[u32],
) -> Result<String> {
    let n = std::mem::take(&mut seq.proposals);
    let drafted = std::mem::take(&mut seq.drafted);
    seq.draft_grammar = None;
    let base = seq.tokens.len() - n;
    // The grammar walked along the proposals (a copy: `accept` advances the sequence's own).
    let mut grammar = seq.grammar.as_ref().map(|m| m.deep_clone());
    let mut emitted = Vec::with_capacity(n + 1);
    let mut accepted = 0;
    let mut stuck = false;
    for (i, row) in rows.iter_mut().enumerate().take(n + 1) {
        tok.mask_unsampleable(row);
        if let Some(m) = &mut grammar {
            crate::grammar::mask_logits(m, row)?;
            if dead_end(row) {
                stuck = true;
                break;
            }
        }
        let p = seq.sampler.distribution(row, &seq.tokens[..base + i]);
        let (token, kept) = if i < n {
            let d = seq.tokens[base + i];
            let u = seq.sampler.uniform();
            match speculative::verify(&p, &drafted[i], d, u) {
                Verdict::Accept => (d, true),
                Verdict::Resample(r) => (seq.sampler.draw_from(&r), false),
            }
        } else {
            (seq.sampler.draw_from(&p), false)
        };
        emitted.push(seq.sampler.report(row, token));
        if !kept {
            break;
        }
        accepted += 1;
        if let Some(m) = &mut grammar {
            m.consume_token(token).map_err(grammar_err)?;
            if m.is_stopped() {
                break; // the grammar is complete: the sequence ends with this token
            }
        }
    }
    seq.tokens.truncate(base);
    seq.computed = base + accepted;
    seq.draft_computed = seq.draft_computed.min(base + accepted);
    group.spec_proposed += n;
    group.spec_accepted += accepted;
    let rules = StopRules { eos, ignore_eos: req.ignore_eos, stop_seqs: &req.stop_seqs, logprobs: req.logprobs };
    let mut piece = String::new();
    for s in emitted {
        if seq.finish.is_some() {
            break;
        }
        piece += &seq.accept(s, tok, &rules)?;
    }
    // An end-of-sequence token is not appended: nothing past the tokens is computed.
    seq.computed = seq.computed.min(seq.tokens.len());
    if stuck && seq.finish.is_none() {
        return Ok(piece + &seq.finish_now(GRAMMAR_DEAD_END, &rules));
    }
    Ok(piece + &force(seq, tok, &rules)?)
}

fn stream(seq: &Sequence, group: &mut Group, piece: String, before: usize) {
    if group.stream && (!piece.is_empty() || seq.finish.is_some()) {
        if seq.finish.is_some() {
            group.record(seq);
        }
        let lp = seq.logprobs[before..].to_vec();
        group.chunk(seq.choice, piece, seq.finish, Some(lp));
    }
}
