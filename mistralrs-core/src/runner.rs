//! The front of the engine that the bindings hold: loads the model, starts
//! the engine thread, and turns requests into token ids (so bad requests fail
//! in the caller, before any work).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crate::adapters::{AdapterInfo, AdapterMode};
use crate::chat_template::ChatTemplate;
use crate::engine::{Admission, Engine, EngineConfig, EngineStats, Message, Notify, Responder};
use crate::error::{panic_message, Error, Result};
use crate::grammar::GrammarCompiler;
use crate::loader::{self, LoadOptions, ModelSpec};
use crate::request::{GenerationRequest, PromptInput};
use crate::response::Event;
use crate::kv_cache::{KvDtype, KvPool, BLOCK_SIZE};
use crate::tokenizer::TextTokenizer;
use crate::tools::{ToolCallFormat, ToolOutput};

/// Tokens one engine step runs at most (prompts beyond it run in chunks):
/// big enough that prompt throughput is what one long product gives, small
/// enough that decoding sequences wait at most about a second behind a prompt.
const MAX_STEP_TOKENS: usize = 512;

/// The prefix cache's own memory by default: enough for a few dozen
/// prompts of a small model, little enough that a process serving one
/// request at a time stays at weights + that request's cache. Servers with
/// many concurrent conversations want more (`prefix_cache_mb`).
pub const DEFAULT_PREFIX_CACHE_MB: usize = 64;

pub struct RunnerConfig {
    pub max_seqs: usize,
    pub no_kv_cache: bool,
    /// Megabytes of KV cache; None: a quarter of the memory available at load.
    pub kv_cache_mb: Option<usize>,
    /// How cached keys and values are stored; None ("auto"): see `kv_dtype_for`.
    pub kv_cache_dtype: Option<KvDtype>,
    /// Released prefixes the prefix cache keeps (0 disables it).
    pub prefix_cache_n: usize,
    /// Megabytes the prefix cache may keep beyond what running sequences
    /// hold; None: `DEFAULT_PREFIX_CACHE_MB`.
    pub prefix_cache_mb: Option<usize>,
    pub repeat_last_n: usize,
    pub seed: Option<u64>,
    /// Speculative decoding: a draft model with the target's vocabulary, and
    /// the tokens it proposes per step (speculative_gamma).
    pub draft: Option<(ModelSpec, usize)>,
    /// How the model writes tool calls; None: as its chat template implies.
    pub tool_call_format: Option<ToolCallFormat>,
}

pub struct Runner {
    tx: Mutex<Option<Sender<Message>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    tokenizer: Arc<TextTokenizer>,
    chat_template: Option<ChatTemplate>,
    context_len: usize,
    /// Tokens the KV cache holds in all, every block whole.
    kv_tokens: usize,
    /// Tokens one sequence running alone can hold: more than `kv_tokens`
    /// where sliding-window layers give its old blocks back (`Engine::lone_tokens`).
    lone_tokens: usize,
    /// How keys and values are stored, and the bytes of one block over all layers.
    kv_dtype: KvDtype,
    kv_block_bytes: usize,
    fingerprint: String,
    /// The compute dtype of the loaded model.
    dtype: candle_core::DType,
    checkpoint_dtype: Option<candle_core::DType>,
    adapters: Option<AdapterInfo>,
    /// X-LoRA's pass counter of the model now in the engine (replaced by `send_re_isq`).
    scaling_passes: Mutex<Option<Arc<AtomicU64>>>,
    /// What was loaded, to load it again quantized (`send_re_isq`).
    spec: ModelSpec,
    opts: LoadOptions,
    /// Unmerged LoRA: the adapter set of requests that name none.
    active_adapters: RwLock<Vec<usize>>,
    stats: Arc<EngineStats>,
    /// The first of the tokens that end a sequence (a complete grammar ends with it).
    eos_ids: Vec<u32>,
    grammars: std::sync::OnceLock<Arc<GrammarCompiler>>,
    tool_format: ToolCallFormat,
    /// The chat template renders tools itself (else they are described in a system message).
    template_knows_tools: bool,
}

/// The events of one request, in order; the last is the full response (or
/// the last chunk when streaming). Dropping it cancels the request: its
/// sequences stop before the engine's next step and free their cache blocks.
pub struct ResponseStream {
    /// In a mutex so that a waiting thread can hold it by reference.
    rx: Mutex<Receiver<Result<Event>>>,
    cancel: Arc<AtomicBool>,
}

impl ResponseStream {
    /// The next event if one is ready: Ok(None) when none is yet,
    /// Err(()) once the request is answered and every event taken.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&self) -> std::result::Result<Option<Result<Event>>, ()> {
        let rx = self.rx.lock().map_err(|_| ())?;
        match rx.try_recv() {
            Ok(ev) => Ok(Some(ev)),
            Err(std::sync::mpsc::TryRecvError::Empty) => Ok(None),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(()),
        }
    }

    /// The next event, waiting at most `timeout` (so a caller can look
    /// for interrupts in between); Err(Disconnected) once answered.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> std::result::Result<Result<Event>, RecvTimeoutError> {
        match self.rx.lock() {
            Ok(rx) => rx.recv_timeout(timeout),
            Err(_) => Err(RecvTimeoutError::Disconnected),
        }
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Runner {
    pub fn new(spec: &ModelSpec, opts: &LoadOptions, cfg: RunnerConfig) -> Result<Self> {
        if cfg.max_seqs == 0 {
            return Err(Error::invalid("max_seqs must be at least 1"));
        }
        pin_thread_count();
        crate::kernels::select::check_env().map_err(Error::invalid)?;
        // A malformed file must surface as an error, never as a panic in the caller.
        let loaded = guard(|| loader::load(spec, opts))?;
        let draft = match &cfg.draft {
            Some((draft_spec, gamma)) => {
                let d = guard(|| loader::load(draft_spec, opts))?;
                same_vocabulary(&loaded.tokenizer, &d.tokenizer)?;
                Some((d.model, *gamma))
            }
            None => None,
        };
        let tokenizer = Arc::new(loaded.tokenizer);
        let stats = Arc::new(EngineStats::default());
        let mc = loaded.model.config();
        let kv_dtype = kv_dtype_for(cfg.kv_cache_dtype, loaded.dtype);
        check_kv_dtype(kv_dtype, &opts.device, mc.head_dim, "")?;
        if let Some((d, _)) = &draft {
            check_kv_dtype(kv_dtype, &opts.device, d.config().head_dim, "the draft model: ")?;
        }
        let block_bytes = KvPool::block_bytes(loaded.model.cache_layers(), mc.num_kv_heads, mc.head_dim, kv_dtype);
        let kv_blocks = kv_budget(cfg.kv_cache_mb, block_bytes, cfg.max_seqs, loaded.context_len)?;
        let device_name = crate::device::name(&opts.device);
        let device_kind = device_name.split(':').next().unwrap_or("cpu");
        let engine = Engine::new(
            loaded.model,
            tokenizer.clone(),
            loaded.eos_ids.clone(),
            opts.device.clone(),
            EngineConfig {
                max_seqs: cfg.max_seqs,
                prefix_cache_n: cfg.prefix_cache_n,
                prefix_cache_bytes: cfg.prefix_cache_mb.unwrap_or(DEFAULT_PREFIX_CACHE_MB) << 20,
                kv_blocks,
                kv_dtype,
                max_step_tokens: MAX_STEP_TOKENS,
                no_kv_cache: cfg.no_kv_cache,
                repeat_last_n: cfg.repeat_last_n,
                default_seed: cfg.seed,
            },
            stats.clone(),
            draft,
        )?;
        let lone_tokens = engine.lone_tokens();
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("mistralrs-engine".into())
            .spawn(move || engine.run(rx))
            .map_err(|e| Error::runtime(format!("cannot start the engine thread: {e}")))?;
        let template_format = loaded.chat_template.as_ref().map_or(ToolCallFormat::Generic, |t| ToolCallFormat::detect(&t.source));
        let tool_format = cfg.tool_call_format.unwrap_or(template_format);
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            tokenizer,
            chat_template: loaded.chat_template,
            context_len: loaded.context_len,
            kv_tokens: kv_blocks * BLOCK_SIZE,
            lone_tokens,
            kv_dtype,
            kv_block_bytes: block_bytes,
            fingerprint: format!("mistralrs-{}-{device_kind}", env!("CARGO_PKG_VERSION")),
            dtype: loaded.dtype,
            checkpoint_dtype: loaded.checkpoint_dtype,
            scaling_passes: Mutex::new(loaded.adapters.as_ref().and_then(|a| a.scaling_passes.clone())),
            spec: spec.clone(),
            opts: opts.clone(),
            active_adapters: RwLock::new(loaded.adapters.as_ref().map(|a| a.default_active.clone()).unwrap_or_default()),
            adapters: loaded.adapters,
            stats,
            eos_ids: loaded.eos_ids,
            grammars: std::sync::OnceLock::new(),
            tool_format,
            template_knows_tools: template_format != ToolCallFormat::Generic,
        })
    }

    /// Names of the loaded adapters (merged, unmerged or X-LoRA), in load order.
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.as_ref().map(|a| a.names.clone()).unwrap_or_default()
    }

    fn unmerged(&self, what: &str) -> Result<&AdapterInfo> {
        match &self.adapters {
            Some(a) if a.mode == AdapterMode::Unmerged => Ok(a),
            Some(a) if a.mode == AdapterMode::Merged => Err(Error::invalid(format!(
                "{what}: the adapters ({}) were merged into the weights at load; list them in the ordering file's \
                 `preload_adapters` to switch adapters",
                a.names.join(", ")
            ))),
            Some(_) => Err(Error::invalid(format!("{what}: X-LoRA chooses its adapters per token; sets cannot be picked"))),
            None => Err(Error::invalid(format!("{what}: this model has no LoRA adapters"))),
        }
    }

    /// Indices of `names` among the loaded adapters, or a ValueError listing them.
    fn adapter_indices(&self, names: &[String], what: &str) -> Result<Vec<usize>> {
        let info = self.unmerged(what)?;
        names
            .iter()
            .map(|n| {
                info.names.iter().position(|x| x == n).ok_or_else(|| {
                    Error::invalid(format!("{what}: no adapter `{n}` is loaded (loaded: {})", info.names.join(", ")))
                })
            })
            .collect()
    }

    /// Sets the adapters of requests that name none (unmerged LoRA only).
    pub fn activate_adapters(&self, names: &[String]) -> Result<()> {
        let idx = self.adapter_indices(names, "activate_adapters")?;
        *self.active_adapters.write().map_err(|_| Error::runtime("adapter state poisoned"))? = idx;
        Ok(())
    }

    /// The weight per loaded adapter a request runs with; None for the base alone.
    fn request_adapters(&self, req: &GenerationRequest) -> Result<Option<Arc<[f32]>>> {
        let idx = match &req.adapters {
            Some(names) => self.adapter_indices(names, "adapters").map_err(|e| e.with_param("adapters"))?,
            None => match &self.adapters {
                Some(a) if a.mode == AdapterMode::Unmerged => {
                    self.active_adapters.read().map_err(|_| Error::runtime("adapter state poisoned"))?.clone()
                }
                _ => return Ok(None),
            },
        };
        let Some(info) = &self.adapters else { return Ok(None) };
        if idx.is_empty() {
            return Ok(None);
        }
        let mut w = vec![0f32; info.names.len()];
        for i in idx {
            w[i] = 1.0;
        }
        Ok(Some(w.into()))
    }

    /// The engine's counters and gauges (see `EngineStats`), and X-LoRA's
    /// xlora_scaling_passes.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        let mut v = vec![
            ("steps", s.steps.load(Ordering::Relaxed)),
            ("sequence_steps", s.sequence_steps.load(Ordering::Relaxed)),
            ("max_batch", s.max_batch.load(Ordering::Relaxed)),
            ("mixed_adapter_steps", s.mixed_adapter_steps.load(Ordering::Relaxed)),
            ("preemptions", s.preemptions.load(Ordering::Relaxed)),
            ("kv_blocks_total", s.kv_blocks_total.load(Ordering::Relaxed)),
            ("kv_blocks_used", s.kv_blocks_used.load(Ordering::Relaxed)),
            ("kv_blocks_cached", s.kv_blocks_cached.load(Ordering::Relaxed)),
            ("kv_blocks_resident", s.kv_blocks_resident.load(Ordering::Relaxed)),
            ("kv_blocks_thinned", s.kv_blocks_thinned.load(Ordering::Relaxed)),
            ("kv_block_tokens", BLOCK_SIZE as u64),
            ("kv_block_bytes", self.kv_block_bytes as u64),
            ("kv_bytes_used", s.kv_bytes_used.load(Ordering::Relaxed)),
            ("kv_bytes_cached", s.kv_bytes_cached.load(Ordering::Relaxed)),
            ("kv_bytes_free", s.kv_bytes_free.load(Ordering::Relaxed)),
            ("shared_prompts", s.shared_prompts.load(Ordering::Relaxed)),
            ("prefix_cache_hit_tokens", s.prefix_cache_hit_tokens.load(Ordering::Relaxed)),
            ("requests_cancelled", s.requests_cancelled.load(Ordering::Relaxed)),
            ("seqs_running", s.seqs_running.load(Ordering::Relaxed)),
            ("seqs_waiting", s.seqs_waiting.load(Ordering::Relaxed)),
        ];
        if let Some(p) = self.scaling_passes.lock().ok().and_then(|p| p.clone()) {
            v.push(("xlora_scaling_passes", p.load(Ordering::Relaxed)));
        }
        v
    }

    /// Loads the model again with its weights quantized to `dtype` and swaps
    /// it into the engine between two steps. Requests keep being served
    /// while it loads (by the current weights); running sequences continue
    /// on the new weights. Returns once the new model is in place.
    pub fn re_isq(&self, dtype: candle_core::quantized::GgmlDType) -> Result<()> {
        let opts = LoadOptions { in_situ_quant: Some(dtype), ..self.opts.clone() };
        let loaded = guard(|| loader::load(&self.spec, &opts))?;
        let (ack, done) = channel();
        {
            let tx = self.tx.lock().map_err(|_| Error::EngineClosed("the runner is unusable".into()))?;
            let tx = tx.as_ref().ok_or_else(|| Error::EngineClosed("the runner is closed".into()))?;
            tx.send(Message::Swap(loaded.model, ack))
                .map_err(|_| Error::EngineClosed("the engine thread has stopped".into()))?;
        }
        done.recv().map_err(|_| Error::EngineClosed("the engine thread has stopped".into()))??;
        if let (Ok(mut slot), Some(new)) = (self.scaling_passes.lock(), loaded.adapters.and_then(|a| a.scaling_passes)) {
            if let Some(old) = slot.as_ref() {
                new.fetch_add(old.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            *slot = Some(new);
        }
        Ok(())
    }

    pub fn context_len(&self) -> usize {
        self.context_len
    }

    /// The compute dtype: dense weights, activations and the KV cache.
    /// How the KV cache stores keys and values ("auto" resolved).
    pub fn kv_cache_dtype(&self) -> &'static str {
        self.kv_dtype.name()
    }

    pub fn dtype(&self) -> candle_core::DType {
        self.dtype
    }

    /// The dtype the checkpoint's config.json names, if any.
    pub fn checkpoint_dtype(&self) -> Option<candle_core::DType> {
        self.checkpoint_dtype
    }

    /// The device the model runs on: "cpu", "cuda:N" or "metal".
    pub fn device_name(&self) -> String {
        crate::device::name(&self.opts.device)
    }

    /// Validates and tokenizes `req`, then hands it to the engine.
    pub fn send(&self, req: GenerationRequest) -> Result<ResponseStream> {
        self.send_notifying(req, None)
    }

    /// `send`, with `notify` called whenever the stream has something new
    /// (an event, or its end) for a caller that does not block on it.
    pub fn send_notifying(&self, req: GenerationRequest, notify: Option<Notify>) -> Result<ResponseStream> {
        req.validate()?;
        if req.stream && req.best_of > req.n_choices {
            return Err(Error::invalid_field("best_of", "best_of cannot be combined with stream=True"));
        }
        let vocab = self.tokenizer.vocab_size();
        if let Some(bad) = req.sampling.logit_bias.keys().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid_field(
                "logit_bias",
                format!("logit_bias names token {bad}, outside the vocabulary (size {vocab})"),
            ));
        }
        let adapters = self.request_adapters(&req)?;
        let grammar = match &req.grammar {
            Some(g) => Some(guard(|| self.grammars()?.compile(g))?),
            None => match self.tool_grammar(&req) {
                Some(g) => Some(guard(|| self.grammars()?.compile(&g)).map_err(|e| e.with_param("tools"))?),
                None => None,
            },
        };
        let tools = req.tools.as_ref().filter(|t| t.calls_allowed()).map(|_| ToolOutput {
            format: self.tool_format,
            keep_special: self
                .tool_format
                .markers()
                .iter()
                .any(|m| self.tokenizer.token_id(m).is_some_and(|id| self.tokenizer.is_skipped_in_text(id))),
        });
        let prompt = guard(|| self.prompt_ids(&req))?;
        if prompt.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        // The KV cache bounds a sequence as the context length does: one that
        // could not fit even alone is refused now rather than never finishing.
        // A request of several choices is bounded by whole blocks (its
        // sequences share blocks, which stay whole); one sequence alone by
        // what thinning its windowed layers leaves it.
        let kv_tokens = if req.best_of.max(req.n_choices) <= 1 { self.lone_tokens } else { self.kv_tokens };
        let room = self.context_len.min(kv_tokens).saturating_sub(prompt.len());
        let max_new = match req.max_tokens {
            Some(0) => return Err(Error::invalid_field("max_tokens", "max_tokens must be at least 1")),
            Some(m) if prompt.len() + m as usize > self.context_len => {
                return Err(Error::context_length_exceeded(format!(
                    "the prompt ({} tokens) plus max_tokens ({m}) exceeds the model's context length ({})",
                    prompt.len(),
                    self.context_len
                )))
            }
            Some(m) if prompt.len() + m as usize > kv_tokens => {
                return Err(Error::invalid(format!(
                    "the prompt ({} tokens) plus max_tokens ({m}) does not fit in the KV cache, which holds {kv_tokens} tokens \
                     (raise Runner(kv_cache_mb=...))",
                    prompt.len(),
                )))
            }
            Some(m) => m as usize,
            None if room == 0 => {
                return Err(Error::context_length_exceeded(format!(
                    "the prompt ({} tokens) fills the model's context length ({}) or the KV cache ({kv_tokens} tokens)",
                    prompt.len(),
                    self.context_len,
                )))
            }
            None => room,
        };
        let prefix = match req.kind() {
            crate::request::RequestKind::Chat => "chatcmpl",
            crate::request::RequestKind::Completion => "cmpl",
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (tx, rx) = channel();
        let responder = Responder::new(tx, notify);
        let cancel = Arc::new(AtomicBool::new(false));
        let admission = Admission {
            cancel: cancel.clone(),
            // Unique across runners and processes (a server behind a balancer
            // answers from several), as OpenAI's ids are.
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created,
            fingerprint: self.fingerprint.clone(),
            request: req,
            prompt,
            adapters,
            max_new,
            grammar,
            tools,
            responder,
        };
        let tx = self.tx.lock().map_err(|_| Error::EngineClosed("the runner is unusable".into()))?;
        let tx = tx.as_ref().ok_or_else(|| Error::EngineClosed("the runner is closed".into()))?;
        tx.send(Message::Add(Box::new(admission)))
            .map_err(|_| Error::EngineClosed("the engine thread has stopped".into()))?;
        Ok(ResponseStream { rx: Mutex::new(rx), cancel })
    }

    /// The grammar compiler, built on first use (a trie of the vocabulary).
    fn grammars(&self) -> Result<Arc<GrammarCompiler>> {
        if let Some(g) = self.grammars.get() {
            return Ok(g.clone());
        }
        let eos = *self.eos_ids.first().ok_or_else(|| Error::invalid("grammars need a model with an end-of-sequence token"))?;
        let g = Arc::new(GrammarCompiler::new(self.tokenizer.clone(), eos)?);
        Ok(self.grammars.get_or_init(|| g).clone())
    }

    /// The prompt `messages` (with `tools`) render to, as transformers'
    /// `apply_chat_template(messages, tools=..., tokenize=False)` gives it.
    pub fn apply_chat_template(
        &self,
        messages: &[crate::chat_template::ChatMessage],
        tools: Option<&crate::tools::ToolRequest>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self.chat_template.as_ref().ok_or_else(|| {
            Error::invalid("this model has no chat template; pass Runner(chat_template=...) or send a string prompt")
        })?;
        let (msgs, tools) = crate::tools::prompt::prepare(self.tool_format, self.template_knows_tools, tools, messages);
        tmpl.render(&msgs, add_generation_prompt, tools.as_ref())
    }

    /// The tool format of this runner's model (its template's, or the one it was given).
    pub fn tool_call_format(&self) -> ToolCallFormat {
        self.tool_format
    }

    /// The id of the special token spelled `text`, if the vocabulary has one
    /// (no text a grammar allows can spell it).
    fn special_token(&self, text: &str) -> Option<u32> {
        self.tokenizer.token_id(text).filter(|&id| self.tokenizer.is_special(id))
    }

    /// The grammar of a request's tool calls, when it may make some.
    fn tool_grammar(&self, req: &GenerationRequest) -> Option<crate::grammar::Grammar> {
        let tools = req.tools.as_ref()?;
        crate::tools::grammar::tool_grammar(tools, self.tool_format, &|s| self.special_token(s))
    }

    /// The prompt's token ids, rendered with the chat template where it is a message list.
    fn prompt_ids(&self, req: &GenerationRequest) -> Result<Vec<u32>> {
        Ok(match &req.prompt {
            PromptInput::Messages(msgs) => {
                self.tokenizer.encode_plain(&self.apply_chat_template(msgs, req.tools.as_ref(), true)?)?
            }
            PromptInput::Templated(text) => self.tokenizer.encode_plain(text)?,
            PromptInput::Completion(text) => self.tokenizer.encode_with_specials(text)?,
            PromptInput::Tokens(ids) => {
                let vocab = self.tokenizer.vocab_size();
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(Error::invalid_field(
                        "prompt",
                        format!("prompt token id {bad} is outside the vocabulary (size {vocab})"),
                    ));
                }
                ids.clone()
            }
        })
    }

    pub fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        if add_special_tokens {
            self.tokenizer.encode_with_specials(text)
        } else {
            self.tokenizer.encode_plain(text)
        }
    }

    pub fn detokenize(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special_tokens)
    }

    /// Stops the engine thread and frees the model; later requests fail.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            if let Some(tx) = tx.take() {
                let _ = tx.send(Message::Stop);
            }
        }
        if let Ok(mut t) = self.thread.lock() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.lock().map_or(true, |t| t.is_none())
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs `f`, turning a panic into an error so it never unwinds into the caller.
fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(Error::runtime(format!("internal error: {}", panic_message(p.as_ref())))))
}

/// Thread settings read from the environment, fixed once per process where
/// the user has not set them:
/// - candle asks for its thread count on every f32 matmul and, without
///   `RAYON_NUM_THREADS`, reads /proc/cpuinfo to answer (dozens of times per
///   token); its own answer is pinned so the lookups stay in memory.
/// - candle's quantized kernels run on a pool whose idle workers spin 25,000
///   times before parking, taking the cores from the engine's own compute
///   threads between products; a short spin keeps both fed (Qwen2.5-0.5B
///   decode 33 -> 47 tok/s on 2 cores, SmolLM2 unchanged).
fn pin_thread_count() {
    static PINNED: std::sync::Once = std::sync::Once::new();
    PINNED.call_once(|| {
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let n = candle_core::utils::get_num_threads();
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
        }
    });
}

/// The KV cache's storage type when the caller leaves it to us ("auto"):
/// the compute dtype. Rounding cached keys and values to f16 (llama.cpp's
/// default) moves outputs off the f32 references (first-step logprobs of
/// the tiny references by more than 1e-3, a knife-edge SmolLM2 answer to
/// another word, as llama.cpp's own F16 cache does), so narrower caches are
/// the caller's choice; README, "Long contexts", gives what each costs and buys.
fn kv_dtype_for(choice: Option<KvDtype>, dtype: candle_core::DType) -> KvDtype {
    choice.unwrap_or(KvDtype::of(dtype))
}

/// A KV cache type this model and device can have, or a ValueError saying why not.
fn check_kv_dtype(kv: KvDtype, device: &candle_core::Device, head_dim: usize, whose: &str) -> Result<()> {
    kv.check(head_dim).map_err(|e| Error::invalid(format!("{whose}{e}")))?;
    if kv == KvDtype::Q8_0 && !device.is_cpu() {
        return Err(Error::invalid(
            "kv_cache_dtype=\"q8_0\" is read by the CPU attention kernel only; on an accelerator use \"f16\", \"bf16\" or \"f32\"",
        ));
    }
    Ok(())
}

/// Blocks of the KV cache pool: `mb` megabytes, or by default a quarter of
/// the memory available at load (no more than `max_seqs` full contexts
/// need). On the CPU the pool's pages are only backed as blocks are used.
fn kv_budget(mb: Option<usize>, block_bytes: usize, max_seqs: usize, context: usize) -> Result<usize> {
    let most = max_seqs.saturating_mul(crate::kv_cache::BlockTable::blocks_for(context));
    match mb {
        Some(mb) => {
            let blocks = mb.saturating_mul(1 << 20) / block_bytes;
            if blocks == 0 {
                return Err(Error::invalid(format!(
                    "kv_cache_mb={mb} holds no KV cache block ({BLOCK_SIZE} tokens take {:.2} MB for this model)",
                    block_bytes as f64 / (1 << 20) as f64
                )));
            }
            Ok(blocks)
        }
        None => {
            let available = available_memory().unwrap_or(4 << 30);
            let blocks = (available / 4 / block_bytes).clamp(1, most.max(1));
            eprintln!(
                "mistralrs: KV cache of {} MB ({} tokens) = a quarter of the {} MB available, at most {max_seqs} full \
                 contexts; set Runner(kv_cache_mb=...) to choose",
                blocks * block_bytes >> 20,
                blocks * BLOCK_SIZE,
                available >> 20
            );
            Ok(blocks)
        }
    }
}

/// A draft model must write with the target's tokens: every id the same bytes.
fn same_vocabulary(target: &TextTokenizer, draft: &TextTokenizer) -> Result<()> {
    if target.vocab_size() != draft.vocab_size() {
        return Err(Error::invalid(format!(
            "the draft model's vocabulary ({} tokens) is not the target's ({} tokens): speculative decoding needs the same tokenizer",
            draft.vocab_size(),
            target.vocab_size()
        )));
    }
    if let Some(id) = (0..target.vocab_size() as u32).find(|&i| target.token_bytes(i) != draft.token_bytes(i)) {
        return Err(Error::invalid(format!(
            "the draft model's token {id} is {:?}, the target's {:?}: speculative decoding needs the same tokenizer",
            String::from_utf8_lossy(draft.token_bytes(id)),
            String::from_utf8_lossy(target.token_bytes(id))
        )));
    }
    Ok(())
}

/// Memory the system can still give (`MemAvailable`), where it says.
/// The memory this process can still take: the system's available memory,
/// lowered to what is left of an address-space limit (`RLIMIT_AS`) or of
/// its cgroup's `memory.max`, where either is set.
fn available_memory() -> Option<usize> {
    let kb = |text: &str, key: &str| -> Option<usize> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<usize>().ok().map(|k| k * 1024)
    };
    let mut avail = kb(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemAvailable:")?;
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0 && lim.rlim_cur != libc::RLIM_INFINITY {
            let used = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| kb(&s, "VmSize:")).unwrap_or(0);
            avail = avail.min((lim.rlim_cur as usize).saturating_sub(used));
        }
    }
    let cgroup = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok()?.trim().parse::<usize>().ok();
    if let (Some(max), Some(cur)) = (cgroup("memory.max"), cgroup("memory.current")) {
        avail = avail.min(max.saturating_sub(cur));
    }
    Some(avail)
}
