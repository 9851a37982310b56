//! The engine thread: receives requests, and every step runs one forward
//! pass over all running sequences (new prompts and decoding tokens of
//! different requests together), samples each, and answers on each request's
//! own channel. It knows nothing of any architecture.

mod group;
mod sequence;

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use crate::error::{panic_message, Error, Result};
use crate::kv_cache::{KvStore, SeqKvCache};
use crate::layers::AdapterRows;
use crate::models::{CausalLm, ForwardBatch};
use crate::request::GenerationRequest;
use crate::sampler::Sampler;
use crate::tokenizer::TextTokenizer;
pub use group::Responder;
use group::Group;
use sequence::{Sequence, StopRules};

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
}

pub struct EngineConfig {
    pub max_seqs: usize,
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
    pub responder: Responder,
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
    running: Vec<Sequence>,
    next_group: u64,
    /// The step runs inside the compute pool, so the parallel loops of every
    /// op split work among its threads directly instead of each waking the
    /// pool from outside and waiting on it.
    pool: Arc<rayon::ThreadPool>,
    stats: Arc<EngineStats>,
}

impl Engine {
    pub fn new(
        model: Box<dyn CausalLm>,
        tokenizer: Arc<TextTokenizer>,
        eos: Vec<u32>,
        device: Device,
        cfg: EngineConfig,
        stats: Arc<EngineStats>,
    ) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("mistralrs-compute-{i}"))
            .build()
            .map_err(|e| Error::runtime(format!("cannot start the compute threads: {e}")))?;
        Ok(Self {
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
        loop {
            // Block only when there is nothing to compute.
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(Message::Add(a)) => self.admit(*a),
                    Ok(Message::Swap(m, ack)) => self.swap(m, ack),
                    Ok(Message::Stop) | Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(Message::Add(a)) => self.admit(*a),
                    Ok(Message::Swap(m, ack)) => self.swap(m, ack),
                    Ok(Message::Stop) | Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => break,
                }
            }
            while self.running.len() < self.cfg.max_seqs {
                let Some(seq) = self.waiting.pop_front() else { break };
                if let Some((g, _)) = self.groups.get_mut(&seq.group) {
                    g.admitted.get_or_insert_with(Instant::now);
                }
                self.running.push(seq);
            }
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
        let mut seq = Sequence::new(id, 0, a.prompt.clone(), self.model.cache_layers(), sampler, a.max_new);
        seq.forks = req.best_of - 1;
        seq.adapters = a.adapters;
        let echo = match (&req.prompt, req.echo_prompt) {
            (crate::request::PromptInput::Completion(p), true) => Some(p.clone()),
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
            prompt_tokens: a.prompt.len(),
            responder: a.responder,
            finished: (0..req.best_of).map(|_| None).collect(),
            admitted: None,
            prompt_done: None,
            cancelled: false,
        };
        self.groups.insert(id, (group, req));
        self.waiting.push_back(seq);
    }

    fn step(&mut self) -> Result<()> {
        if self.running.is_empty() {
            return Ok(());
        }
        if self.cfg.no_kv_cache {
            let layers = self.model.cache_layers();
            for s in &mut self.running {
                s.cache = SeqKvCache::new(layers);
            }
        }
        let logits = {
            let inputs: Vec<(&[u32], usize)> = self.running.iter().map(Sequence::pending).collect();
            let batch = ForwardBatch::new(&inputs, &self.device)?;
            let batch = match self.adapter_rows(&inputs)? {
                Some(rows) => batch.with_adapters(Some(rows)),
                None => batch,
            };
            self.count_step();
            let mut caches: Vec<&mut dyn KvStore> =
                self.running.iter_mut().map(|s| &mut s.cache as &mut dyn KvStore).collect();
            self.model.forward(&batch, &mut caches)?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?
        };
        let now = Instant::now();
        let mut forked = Vec::new();
        for (seq, mut row) in self.running.iter_mut().zip(logits) {
            let Some((group, req)) = self.groups.get_mut(&seq.group) else { continue };
            if seq.generated() == 0 && seq.choice == 0 {
                group.prompt_done = Some(now);
                // Sibling choices share the prompt's cache and sample from the same logits.
                for c in 1..=seq.forks {
                    let seed = req.seed.or(self.cfg.default_seed).map_or_else(rand::random, |s| s.wrapping_add(c as u64));
                    let sampler = Sampler::new(req.sampling.clone(), seed, self.cfg.repeat_last_n, req.best_of > req.n_choices);
                    forked.push((seq.fork(c, sampler)?, row.clone()));
                }
                seq.forks = 0;
            }
            advance(seq, &mut row, group, req, &self.tokenizer, &self.eos)?;
        }
        for (mut seq, mut row) in forked {
            let Some((group, req)) = self.groups.get_mut(&seq.group) else { continue };
            advance(&mut seq, &mut row, group, req, &self.tokenizer, &self.eos)?;
            self.running.push(seq);
        }
        Ok(())
    }

    /// Each token row's adapter weights, when any running sequence has adapters.
    fn adapter_rows(&self, inputs: &[(&[u32], usize)]) -> Result<Option<AdapterRows>> {
        let Some(n) = self.running.iter().find_map(|s| s.adapters.as_ref().map(|a| a.len())) else { return Ok(None) };
        let tokens: usize = inputs.iter().map(|(t, _)| t.len()).sum();
        let mut w = Vec::with_capacity(tokens * n);
        let mut active = vec![false; n];
        for (seq, (t, _)) in self.running.iter().zip(inputs) {
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

    fn count_step(&self) {
        let n = self.running.len() as u64;
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats.sequence_steps.fetch_add(n, Ordering::Relaxed);
        self.stats.max_batch.fetch_max(n, Ordering::Relaxed);
        let first = self.running.first().map(|s| s.adapters.as_deref());
        if first.is_some_and(|f| self.running.iter().any(|s| s.adapters.as_deref() != f)) {
            self.stats.mixed_adapter_steps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes finished and abandoned sequences and answers finished requests.
    fn retire(&mut self) {
        let groups = &mut self.groups;
        self.running.retain(|s| {
            let Some((g, _)) = groups.get_mut(&s.group) else { return false };
            if g.cancelled {
                return false;
            }
            if s.finish.is_some() {
                g.record(s);
                return false;
            }
            true
        });
        self.waiting.retain(|s| groups.get(&s.group).is_some_and(|(g, _)| !g.cancelled));
        let done: Vec<u64> =
            groups.iter().filter(|(_, (g, _))| g.cancelled || g.is_done()).map(|(id, _)| *id).collect();
        for id in done {
            if let Some((mut g, _)) = groups.remove(&id) {
                if !g.cancelled && !g.stream {
                    g.complete();
                }
            }
        }
    }

    fn fail_running(&mut self, e: Error) {
        let msg = e.to_string();
        for s in self.running.drain(..) {
            if let Some((g, _)) = self.groups.get_mut(&s.group) {
                if !g.cancelled {
                    g.fail(Error::Runtime(msg.clone()));
                }
            }
        }
    }
}

/// Samples one token for `seq` from its logits row and streams what it adds.
fn advance(
    seq: &mut Sequence,
    row: &mut [f32],
    group: &mut Group,
    req: &GenerationRequest,
    tok: &TextTokenizer,
    eos: &[u32],
) -> Result<()> {
    let sampled = seq.sampler.sample(row, &seq.tokens);
    let rules = StopRules { eos, ignore_eos: req.ignore_eos, stop_seqs: &req.stop_seqs, logprobs: req.logprobs };
    let before = seq.logprobs.len();
    let piece = seq.accept(sampled, tok, &rules)?;
    if group.stream && (!piece.is_empty() || seq.finish.is_some()) {
        if seq.finish.is_some() {
            group.record(seq);
        }
        let lp = seq.logprobs[before..].to_vec();
        group.chunk(seq.choice, piece, seq.finish, Some(lp));
    }
    Ok(())
}
