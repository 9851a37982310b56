//! The engine thread: receives requests, and every step runs one forward
//! pass over all running sequences (new prompts and decoding tokens of
//! different requests together), samples each, and answers on each request's
//! own channel. It knows nothing of any architecture.
//!
//! This file is the loop that ties the parts together: `scheduler` plans each
//! step, `speculative` drafts and verifies, `emission` judges sampled tokens
//! and streams what they add (`detokenize` keeps their text), `group`
//! answers a request, `sequence` holds one sequence's state and `pace` how
//! many tokens its draft proposes next.

mod detokenize;
mod emission;
mod group;
mod pace;
mod scheduler;
mod sequence;
mod speculative;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use rayon::prelude::*;

use crate::error::{panic_message, Error, Result};
use crate::kv_cache::{BlockAllocator, BlockTable, KvDtype, KvPool, SideState, StepKv, BLOCK_SIZE};
use crate::layers::AdapterRows;
use crate::models::{CausalLm, ForwardBatch};
use crate::request::GenerationRequest;
use crate::sampler::Sampler;
use crate::tokenizer::TextTokenizer;
use emission::{advance, emit, fail_group, flat_logits};
pub use group::{Notify, Responder};
use group::Group;
use scheduler::Scheduler;
use sequence::{Sequence, Speculation};
use speculative::{propose, verify_and_accept, Draft};

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
    /// Cached blocks nobody holds, and blocks whose memory the pool has touched.
    pub kv_blocks_cached: AtomicU64,
    pub kv_blocks_resident: AtomicU64,
    /// Blocks whose sliding-window layers' memory was given back (out of every window).
    pub kv_blocks_thinned: AtomicU64,
    /// The KV budget in bytes: held by sequences, kept by the prefix cache
    /// (nobody holds it), and left. A thinned block counts only the layers it keeps.
    pub kv_bytes_used: AtomicU64,
    pub kv_bytes_cached: AtomicU64,
    pub kv_bytes_free: AtomicU64,
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

/// Set to 1: sliding-window layers keep every block (for comparisons).
pub const KEEP_WINDOWS_ENV: &str = "MISTRALRS_KV_KEEP_WINDOWS";

pub struct EngineConfig {
    pub max_seqs: usize,
    /// Released prefixes whose blocks the prefix cache keeps (0: none).
    pub prefix_cache_n: usize,
    /// Below this much touched KV memory the prefix cache grows into
    /// untouched blocks rather than evicting; beyond it, memory follows use
    /// (`BlockAllocator::growing_below`).
    pub prefix_cache_bytes: usize,
    /// Tokens one step runs at most: decoding sequences take one each, and
    /// prompts share the rest in chunks (so a long prompt does not stall
    /// running decodes for its whole length).
    pub max_step_tokens: usize,
    /// Cache blocks in the pool (see `kv_budget`).
    pub kv_blocks: usize,
    /// How the pool stores keys and values.
    pub kv_dtype: KvDtype,
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
    /// How to find tool calls in the output, when the request allows them.
    pub tools: Option<crate::tools::ToolOutput>,
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
    sched: Scheduler,
    next_group: u64,
    kv: KvPool,
    /// The step runs inside the compute pool, so the parallel loops of every
    /// op split work among its threads directly instead of each waking the
    /// pool from outside and waiting on it.
    pool: Arc<rayon::ThreadPool>,
    stats: Arc<EngineStats>,
    /// Speculative decoding's draft model, when the runner has one.
    draft: Option<Draft>,
    /// The sliding window and the cache layers that use it, whose blocks are
    /// thinned once out of every future query's window (`thin_windows`).
    windowed: Option<(usize, Vec<usize>)>,
    /// One layer's keys and values of one block (the budget's unit).
    layer_block_bytes: u64,
    /// Tokens one sequence can hold running alone (`lone_blocks`).
    lone_tokens: usize,
}

/// At most this many block ids per whole block of the budget (with one
/// layer in six global, as Gemma 3's, a thinned block costs a sixth).
const MAX_ID_STRETCH: usize = 8;

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
        if model.keys_depend_on_length() {
            // A block's keys then depend on more than the tokens before it:
            // such a model neither reuses cached prefixes nor splits a prompt into chunks.
            cfg.prefix_cache_n = 0;
            cfg.max_step_tokens = usize::MAX;
        }
        let mc = model.config();
        // Giving a block's pages back is a CPU pool's business (elsewhere the
        // pool is device memory); `MISTRALRS_KV_KEEP_WINDOWS=1` keeps every
        // block whole, to compare against.
        let keep = std::env::var_os(KEEP_WINDOWS_ENV).is_some_and(|v| v == "1");
        let windowed = if device.is_cpu() && !cfg.no_kv_cache && !keep { model.windowed_cache_layers() } else { None };
        let layers = model.cache_layers();
        let kept = layers - windowed.as_ref().map_or(0, |w| w.1.len());
        // A thinned block costs the budget only its layers without a window,
        // so the pool has more block ids than the budget has whole blocks:
        // the memory thinning gave back holds other blocks' global layers.
        // Ids are virtual memory, backed only as written. A draft model's
        // pool matches the target's tokens, so then ids stay one per block.
        let ids = match (&windowed, &draft) {
            (Some(_), None) => cfg.kv_blocks.saturating_mul(layers.div_ceil(kept.max(1)).min(MAX_ID_STRETCH)),
            _ => cfg.kv_blocks,
        };
        let new_pool = |ids: usize| KvPool::new(layers, ids, mc.num_kv_heads, mc.head_dim, &device, cfg.kv_dtype, windowed.is_some());
        // Where the address space is limited (an RLIMIT_AS), one id per block.
        let (kv, ids) = match new_pool(ids) {
            Err(_) if ids > cfg.kv_blocks => (new_pool(cfg.kv_blocks), cfg.kv_blocks),
            kv => (kv, ids),
        };
        let kv = kv.map_err(|e| Error::runtime(format!("cannot allocate the KV cache ({} blocks): {e}", cfg.kv_blocks)))?;
        stats.kv_blocks_total.store(cfg.kv_blocks as u64, Ordering::Relaxed);
        let draft = match draft {
            // As many tokens as the target's pool, and room for every sequence's proposals.
            Some((model, gamma)) => Some(Draft::new(
                model,
                gamma,
                cfg.kv_blocks + cfg.max_seqs * (gamma.div_ceil(crate::kv_cache::BLOCK_SIZE) + 1),
                &device,
                cfg.kv_dtype,
                if cfg.no_kv_cache { 0 } else { cfg.prefix_cache_n },
                cfg.prefix_cache_bytes,
            )?),
            None => None,
        };
        let block_bytes = KvPool::block_bytes(layers, mc.num_kv_heads, mc.head_dim, cfg.kv_dtype);
        let alloc = BlockAllocator::new(ids, if cfg.no_kv_cache { 0 } else { cfg.prefix_cache_n })
            .budgeted(cfg.kv_blocks, layers, kept)
            .growing_below((cfg.prefix_cache_bytes / block_bytes.max(1)).max(1));
        stats.kv_bytes_free.store((cfg.kv_blocks * block_bytes) as u64, Ordering::Relaxed);
        let thinning = windowed.as_ref().filter(|_| !cfg.no_kv_cache).map(|w| (w.0, kept, cfg.max_step_tokens));
        let lone_tokens = scheduler::lone_blocks(cfg.kv_blocks, layers, ids, thinning) * BLOCK_SIZE;
        let mut sched = Scheduler::new(alloc, cfg.max_seqs, cfg.max_step_tokens, cfg.no_kv_cache);
        sched.window = windowed.as_ref().map(|w| w.0);
        Ok(Self {
            draft,
            sched,
            windowed,
            kv,
            model,
            tokenizer,
            eos,
            device,
            cfg,
            groups: HashMap::new(),
            next_group: 0,
            pool: Arc::new(pool),
            layer_block_bytes: (block_bytes / layers.max(1)) as u64,
            lone_tokens,
            stats,
        })
    }

    /// Tokens one sequence can hold running alone (see `lone_blocks`).
    pub fn lone_tokens(&self) -> usize {
        self.lone_tokens
    }

    pub fn run(mut self, rx: Receiver<Message>) {
        // The model, the cache and every step's tensors live and die on this
        // thread (see `device::bind_thread`); a failure shows in the first step.
        let _ = crate::device::bind_thread(&self.device);
        loop {
            // Block only when there is nothing to compute.
            if self.sched.is_idle() {
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
            self.drop_cancelled();
            self.schedule();
            // A panic in a step fails the requests of that step, never the process.
            let pool = self.pool.clone();
            let outcome = catch_unwind(AssertUnwindSafe(|| crate::step_alloc::during_step(|| pool.install(|| self.step()))));
            let err = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(p) => Some(Error::runtime(format!("internal error in the engine: {}", panic_message(p.as_ref())))),
            };
            if let Some(e) = err {
                self.fail_running(e);
            }
            self.retire();
            self.thin_windows();
            self.unback_freed();
            self.record_budget();
        }
    }

    /// Gives the memory of blocks freed since the last step back to the OS
    /// where the pool has more ids than whole blocks (`Engine::new`): free
    /// blocks beyond the budget would otherwise stay resident. No step is
    /// running, and none of these blocks was handed out again.
    fn unback_freed(&mut self) {
        let freed = self.sched.alloc.take_unbacked();
        if freed.is_empty() {
            return;
        }
        let all: Vec<usize> = (0..self.model.cache_layers()).collect();
        for b in freed {
            // Failing to give memory back costs memory, not correctness.
            let _ = self.kv.release_pages(b, &all);
        }
    }

    /// Gives back the memory of sliding-window layers' keys and values that
    /// no future query of their sequence sees (every block wholly before
    /// the window of the next position, less one block of slack), so a long
    /// context costs those layers about one window. Two windows are kept
    /// whole for the prefix cache: the one before the prompt's end (a later
    /// request with the same prompt continues from there) and the current
    /// one (a chat's next turn continues from its end). Blocks shared with
    /// another holder wait until their sequence is the only one (a sibling
    /// or a prefix-cache user may still be inside them).
    fn thin_windows(&mut self) {
        let Some((window, layers)) = &self.windowed else { return };
        let (running, alloc) = (&mut self.sched.running, &mut self.sched.alloc);
        for s in running.iter_mut() {
            // Positions from `computed` on are still to run; the first sees keys from computed + 1 - window.
            let dead = ((s.computed + 1).saturating_sub(*window) / BLOCK_SIZE).saturating_sub(1);
            let upto = dead.min(s.blocks.blocks.len());
            let prompt_window = ((s.prompt_len + 1).saturating_sub(*window) / BLOCK_SIZE).saturating_sub(1)..s.prompt_len.div_ceil(BLOCK_SIZE);
            while s.thinned < upto {
                if prompt_window.contains(&s.thinned) {
                    s.thinned = prompt_window.end;
                    continue;
                }
                let b = s.blocks.blocks[s.thinned];
                if !alloc.is_thinned(b) {
                    if !alloc.thin(b) {
                        break;
                    }
                    // Failing to give memory back costs memory, not correctness.
                    let _ = self.kv.release_pages(b, layers);
                }
                s.thinned += 1;
            }
        }
        self.stats.kv_blocks_thinned.store(alloc.thinned() as u64, Ordering::Relaxed);
    }

    /// The budget's bytes in the stats, once per step (after retiring and thinning).
    fn record_budget(&self) {
        let (used, cached, free) = self.sched.alloc.costs();
        let b = self.layer_block_bytes;
        self.stats.kv_bytes_used.store(used * b, Ordering::Relaxed);
        self.stats.kv_bytes_cached.store(cached * b, Ordering::Relaxed);
        self.stats.kv_bytes_free.store(free * b, Ordering::Relaxed);
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
        self.sched.running.clear();
        self.sched.waiting.clear();
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
        let groups = &self.groups;
        let live = |s: &mut Sequence| groups.get(&s.group).is_some_and(|(g, _)| !g.cancelled);
        self.sched.retain(live, self.draft.as_mut().map(|d| &mut d.alloc));
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
        let mut seq = Sequence::new(id, 0, a.prompt.clone(), sampler_for(&req, seed, self.cfg.repeat_last_n), a.max_new);
        seq.forks = req.best_of - 1;
        seq.adapters = a.adapters;
        seq.grammar = a.grammar.map(Box::new);
        if a.tools.is_some_and(|t| t.keep_special) {
            seq.out = detokenize::TextOut::keeping_special_tokens();
        }
        seq.spec = self.draft.as_ref().map(|_| Box::<Speculation>::default());
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
            tools: a.tools.map(|t| t.format),
            tool_streams: match a.tools {
                Some(t) if req.stream => (0..req.best_of).map(|_| crate::tools::stream::ToolStream::new(t.format)).collect(),
                _ => Vec::new(),
            },
        };
        self.groups.insert(id, (group, req));
        self.sched.waiting.push_back(seq);
        self.stats.seqs_waiting.store(self.sched.waiting.len() as u64, Ordering::Relaxed);
    }

    /// Plans the step (see `scheduler`) and keeps the requests' books on
    /// what it did.
    fn schedule(&mut self) {
        let plan = self.sched.plan(&self.kv, self.draft.as_mut());
        self.stats.preemptions.fetch_add(plan.preempted as u64, Ordering::Relaxed);
        for j in plan.joined {
            self.stats.prefix_cache_hit_tokens.fetch_add(j.cached as u64, Ordering::Relaxed);
            if let Some((g, _)) = self.groups.get_mut(&j.group) {
                g.admitted.get_or_insert_with(Instant::now);
                // What the caller saved: counted at the first admission only, not on resumption.
                if j.first {
                    g.cached_tokens.get_or_insert(j.cached);
                }
            }
        }
    }

    fn step(&mut self) -> Result<()> {
        let running = &mut self.sched.running;
        // Sequences with tokens this step, in running order.
        let active: Vec<usize> = (0..running.len()).filter(|&i| running[i].chunk > 0).collect();
        if active.is_empty() {
            return Ok(());
        }
        if let Some(draft) = self.draft.as_mut() {
            propose(draft, running, &self.tokenizer, &self.device)?;
        }
        // With a draft, a step of decoding sequences only (no prompt rows)
        // times what a plain step and a verified proposal row cost (its pace);
        // None: not such a step, or no draft.
        let timed = self.draft.is_some().then(|| {
            let decoding = active.iter().all(|&i| {
                let n = 1 + running[i].proposals();
                running[i].chunk == n && running[i].uncomputed() == n
            });
            decoding.then(|| active.iter().map(|&i| running[i].proposals()).sum::<usize>())
        }).flatten();
        let started = Instant::now();
        let (mut logits, vocab) = {
            let running = &self.sched.running;
            let inputs: Vec<(&[u32], usize)> = active.iter().map(|&i| running[i].step_input()).collect();
            let wanted = |k: usize| 1 + running[active[k]].proposals();
            let batch = ForwardBatch::wanting(&inputs, wanted, &self.device)?;
            let batch = match self.adapter_rows(&active, &inputs)? {
                Some(rows) => batch.with_adapters(Some(rows)),
                None => batch,
            };
            drop(inputs);
            self.count_step(&active);
            let (tables, sides): (Vec<&BlockTable>, Vec<&mut SideState>) = self
                .sched
                .running
                .iter_mut()
                .filter(|s| s.chunk > 0)
                .map(|s| (&s.blocks, &mut s.side))
                .unzip();
            let mut kv = StepKv::new(&self.kv, tables, sides);
            flat_logits(self.model.forward(&batch, &mut kv)?)?
        };
        let now = Instant::now();
        if let (Some(draft), Some(proposals)) = (self.draft.as_mut(), timed) {
            draft.costs.observe((now - started).as_secs_f64(), proposals);
        }
        let costs = self.draft.as_ref().map(|d| d.costs).unwrap_or_default();
        let (running, alloc) = (&mut self.sched.running, &mut self.sched.alloc);
        // The rows of the sequences that sample now: a prompt chunk that does
        // not reach the prompt's end samples nothing. Speculating sequences
        // have a row per proposal and one more.
        let mut rows: Vec<(usize, &mut [f32])> = Vec::with_capacity(active.len());
        let mut verify: Vec<(usize, &mut [f32])> = Vec::new();
        let mut rest = logits.as_mut_slice();
        for &i in &active {
            let seq = &mut running[i];
            seq.computed += seq.chunk;
            seq.chunk = 0;
            let n = 1 + seq.proposals();
            let (mine, after) = rest.split_at_mut(n * vocab);
            rest = after;
            if n > 1 {
                // Its blocks are registered once the accepted tokens are known.
                verify.push((i, mine));
                continue;
            }
            seq.register_full_blocks(alloc);
            if seq.uncomputed() == 0 {
                rows.push((i, mine));
            }
        }
        for (i, seq_rows) in verify {
            let seq = &mut running[i];
            let Some((group, req)) = self.groups.get_mut(&seq.group) else { continue };
            if !group.cancelled {
                let tok = &self.tokenizer;
                emit(seq, group, |seq, group| verify_and_accept(seq, seq_rows, vocab, group, req, tok, &self.eos, &costs));
            }
            seq.register_full_blocks(alloc);
        }
        mask_by_grammars(running, &mut rows, &mut self.groups);
        let mut forked = Vec::new();
        for (i, row) in rows {
            let seq = &mut running[i];
            let Some((group, req)) = self.groups.get_mut(&seq.group) else { continue };
            if group.cancelled {
                continue;
            }
            if seq.generated() == 0 && seq.choice == 0 {
                group.prompt_done = Some(now);
                // Sibling choices share the prompt's cache blocks and sample from the same logits.
                for c in 1..=seq.forks {
                    let seed = req.seed.or(self.cfg.default_seed).map_or_else(rand::random, |s| s.wrapping_add(c as u64));
                    forked.push((seq.fork(c, sampler_for(req, seed, self.cfg.repeat_last_n), alloc), row.to_vec()));
                    self.stats.shared_prompts.fetch_add(1, Ordering::Relaxed);
                }
                seq.forks = 0;
            }
            advance(seq, row, group, req, &self.tokenizer, &self.eos);
        }
        for (mut seq, mut row) in forked {
            let Some((group, req)) = self.groups.get_mut(&seq.group) else { continue };
            advance(&mut seq, &mut row, group, req, &self.tokenizer, &self.eos);
            running.push(seq);
        }
        Ok(())
    }

    /// Each token row's adapter weights, when any running sequence has adapters.
    fn adapter_rows(&self, active: &[usize], inputs: &[(&[u32], usize)]) -> Result<Option<AdapterRows>> {
        let seqs = || active.iter().map(|&i| &self.sched.running[i]);
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
        let mut sets = active.iter().map(|&i| self.sched.running[i].adapters.as_deref());
        let first = sets.next();
        if first.is_some_and(|f| sets.any(|s| s != f)) {
            self.stats.mixed_adapter_steps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes finished and abandoned sequences and answers finished requests.
    fn retire(&mut self) {
        let groups = &mut self.groups;
        let keep = |s: &mut Sequence| match groups.get_mut(&s.group) {
            None => false,
            Some((g, _)) if g.cancelled => false,
            Some((g, _)) if s.finish.is_some() => {
                g.record(s);
                false
            }
            Some(_) => true,
        };
        self.sched.retain(keep, self.draft.as_mut().map(|d| &mut d.alloc));
        self.stats.kv_blocks_used.store(self.sched.alloc.used() as u64, Ordering::Relaxed);
        self.stats.kv_blocks_cached.store(self.sched.alloc.cached() as u64, Ordering::Relaxed);
        self.stats.kv_blocks_resident.store(self.sched.alloc.resident() as u64, Ordering::Relaxed);
        self.stats.seqs_running.store(self.sched.running.len() as u64, Ordering::Relaxed);
        self.stats.seqs_waiting.store(self.sched.waiting.len() as u64, Ordering::Relaxed);
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
        for mut s in self.sched.running.drain(..) {
            s.release(&mut self.sched.alloc, self.draft.as_mut().map(|d| &mut d.alloc));
            if let Some((g, _)) = self.groups.get_mut(&s.group) {
                if !g.cancelled {
                    g.fail(Error::Runtime(msg.clone()));
                }
            }
        }
    }
}

/// A sampler for one of `req`'s choices; best_of ranks the choices by their logprobs.
fn sampler_for(req: &GenerationRequest, seed: u64, repeat_last_n: usize) -> Sampler {
    Sampler::new(req.sampling.clone(), seed, repeat_last_n, req.best_of > req.n_choices)
}

/// Applies each constrained sequence's grammar to its row of logits, the
/// sequences in parallel: a mask over a 150k-token vocabulary can take a
/// millisecond, and a step may hold many constrained sequences.
fn mask_by_grammars(running: &mut [Sequence], rows: &mut [(usize, &mut [f32])], groups: &mut HashMap<u64, (Group, GenerationRequest)>) {
    if !rows.iter().any(|(i, _)| running[*i].grammar.is_some()) {
        return;
    }
    let mut seqs: Vec<Option<&mut Sequence>> = running.iter_mut().map(Some).collect();
    let mut work: Vec<(&mut Sequence, &mut [f32])> = rows
        .iter_mut()
        .filter_map(|(i, row)| seqs[*i].take().filter(|s| s.grammar.is_some()).map(|s| (s, &mut **row)))
        .collect();
    let failed: Vec<(u64, Error)> = work
        .par_iter_mut()
        .filter_map(|(s, row)| {
            let m = s.grammar.as_mut().expect("filtered on it");
            crate::grammar::mask_logits(m, row).err().map(|e| (s.group, e))
        })
        .collect();
    for (group, e) in failed {
        if let Some((g, _)) = groups.get_mut(&group) {
            fail_group(g, e);
        }
    }
}
