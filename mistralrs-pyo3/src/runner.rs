//! `Runner`: loads a model, starts its engine, and answers requests. Every
//! wait on the engine releases the GIL, so many Python threads can send at
//! once and the engine batches them.

use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use mistralrs_core::adapters::AdapterSpec;
use mistralrs_core::hub::TokenSource;
use mistralrs_core::weights::isq::parse_isq;
use mistralrs_core::response::Event;
use mistralrs_core::loader::FileFormat;
use mistralrs_core::{LoadOptions, ModelSpec, ResponseStream, RunnerConfig};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::{not_implemented, to_py};
use crate::requests::{ChatCompletionRequest, CompletionRequest};
use crate::which::Which;


#[pyclass(frozen, module = "mistralrs")]
pub struct Runner {
    inner: Arc<mistralrs_core::Runner>,
}

fn lora(adapters_model_id: &str, order: &str) -> Option<AdapterSpec> {
    Some(AdapterSpec::Lora { adapters_model_id: adapters_model_id.to_string(), order: order.to_string() })
}

fn xlora(xlora_model_id: &str, order: &str, tgt_non_granular_index: &Option<usize>) -> Option<AdapterSpec> {
    Some(AdapterSpec::XLora {
        xlora_model_id: xlora_model_id.to_string(),
        order: order.to_string(),
        tgt_non_granular_index: *tgt_non_granular_index,
    })
}

fn file(format: FileFormat, tok_model_id: &Option<String>, quantized_model_id: &str, quantized_filename: &str, tokenizer_json: &Option<String>, adapters: Option<AdapterSpec>) -> ModelSpec {
    ModelSpec::File {
        format,
        tok_model_id: tok_model_id.clone(),
        quantized_model_id: quantized_model_id.to_string(),
        quantized_filename: quantized_filename.to_string(),
        tokenizer_json: tokenizer_json.clone(),
        adapters,
    }
}

fn format_of(which: &Which) -> FileFormat {
    match which {
        Which::GGML { .. } | Which::LoraGGML { .. } | Which::XLoraGGML { .. } => FileFormat::Ggml,
        _ => FileFormat::Gguf,
    }
}

fn spec_of(which: &Which) -> PyResult<ModelSpec> {
    Ok(match which {
        Which::Plain { model_id, arch, tokenizer_json, .. } => {
            ModelSpec::Plain { model_id: Some(model_id.clone()), arch: *arch, tokenizer_json: tokenizer_json.clone(), adapters: None }
        }
        Which::Lora { arch, adapters_model_id, order, model_id, tokenizer_json, .. } => ModelSpec::Plain {
            model_id: model_id.clone(),
            arch: *arch,
            tokenizer_json: tokenizer_json.clone(),
            adapters: lora(adapters_model_id, order),
        },
        Which::XLora { arch, xlora_model_id, order, tgt_non_granular_index, model_id, tokenizer_json, .. } => ModelSpec::Plain {
            model_id: model_id.clone(),
            arch: *arch,
            tokenizer_json: tokenizer_json.clone(),
            adapters: xlora(xlora_model_id, order, tgt_non_granular_index),
        },
        Which::GGUF { tok_model_id, quantized_model_id, quantized_filename, tokenizer_json, .. }
        | Which::GGML { tok_model_id, quantized_model_id, quantized_filename, tokenizer_json, .. } => {
            file(format_of(which), tok_model_id, quantized_model_id, quantized_filename, tokenizer_json, None)
        }
        Which::LoraGGUF { tok_model_id, quantized_model_id, quantized_filename, adapters_model_id, order, tokenizer_json, .. }
        | Which::LoraGGML { tok_model_id, quantized_model_id, quantized_filename, adapters_model_id, order, tokenizer_json, .. } => {
            let adapters = lora(adapters_model_id, order);
            file(format_of(which), tok_model_id, quantized_model_id, quantized_filename, tokenizer_json, adapters)
        }
        Which::XLoraGGUF { tok_model_id, quantized_model_id, quantized_filename, xlora_model_id, order, tgt_non_granular_index, tokenizer_json, .. }
        | Which::XLoraGGML { tok_model_id, quantized_model_id, quantized_filename, xlora_model_id, order, tgt_non_granular_index, tokenizer_json, .. } => {
            let adapters = xlora(xlora_model_id, order, tgt_non_granular_index);
            file(format_of(which), tok_model_id, quantized_model_id, quantized_filename, tokenizer_json, adapters)
        }
    })
}

fn device_of(device: Option<&str>) -> PyResult<Device> {
    mistralrs_core::device::open(device.unwrap_or(mistralrs_core::device::default_device_name())).map_err(to_py)
}

/// `Runner(dtype=...)`: None or "auto" lets the loader choose.
fn dtype_of(dtype: Option<&str>) -> PyResult<Option<DType>> {
    Ok(match dtype.map(|d| d.trim().to_ascii_lowercase()).as_deref() {
        None | Some("auto") => None,
        Some("f32" | "float32") => Some(DType::F32),
        Some("f16" | "float16" | "half") => Some(DType::F16),
        Some("bf16" | "bfloat16") => Some(DType::BF16),
        Some(_) => {
            return Err(PyValueError::new_err(format!(
                "dtype must be \"f32\", \"f16\", \"bf16\" or \"auto\", got {:?}",
                dtype.unwrap_or_default()
            )))
        }
    })
}

pub(crate) fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

/// `num_device_layers` (`["0:20", "1:12"]`: CUDA ordinal and layer count).
fn device_layers(spec: &[String]) -> PyResult<Vec<(usize, usize)>> {
    spec.iter()
        .map(|s| {
            let parse = |(o, n): (&str, &str)| Some((o.trim().parse().ok()?, n.trim().parse().ok()?));
            s.split_once(':').and_then(parse).ok_or_else(|| {
                PyValueError::new_err(format!("num_device_layers entries are \"ORDINAL:LAYERS\" (e.g. \"0:20\"), got {s:?}"))
            })
        })
        .collect()
}

impl Runner {
    fn send_and_wait(&self, py: Python<'_>, req: mistralrs_core::request::GenerationRequest) -> PyResult<Py<PyAny>> {
        let stream = req.stream;
        let inner = self.inner.clone();
        let rx = py.detach(|| inner.send(req)).map_err(to_py)?;
        if stream {
            let it = ResponseIterator { rx: Mutex::new(Some(rx)) };
            return Ok(Py::new(py, it)?.into_any());
        }
        match wait(py, &rx)? {
            Some(Ok(ev)) => event_to_py(py, ev),
            Some(Err(e)) => Err(to_py(e)),
            None => Err(PyRuntimeError::new_err("the engine stopped before answering")),
        }
    }
}

/// The stream's next event (None once answered), waiting without the GIL
/// in short slices so that Ctrl-C raises KeyboardInterrupt promptly; the
/// caller then drops the stream, which cancels the request.
fn wait(py: Python<'_>, rx: &ResponseStream) -> PyResult<Option<mistralrs_core::Result<Event>>> {
    loop {
        match py.detach(|| rx.recv_timeout(std::time::Duration::from_millis(50))) {
            Ok(ev) => return Ok(Some(ev)),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Err(RecvTimeoutError::Timeout) => py.check_signals()?,
        }
    }
}

fn event_to_py(py: Python<'_>, ev: Event) -> PyResult<Py<PyAny>> {
    Ok(match ev {
        Event::Chat(r) => Py::new(py, r)?.into_any(),
        Event::Completion(r) | Event::CompletionChunk(r) => Py::new(py, r)?.into_any(),
        Event::ChatChunk(r) => Py::new(py, r)?.into_any(),
    })
}

#[pymethods]
impl Runner {
    #[new]
    #[pyo3(signature = (which, max_seqs=16, no_kv_cache=false, prefix_cache_n=16, token_source="cache",
        speculative_gamma=32, which_draft=None, chat_template=None, num_device_layers=None, in_situ_quant=None,
        seed=None, device=None, kv_cache_mb=None, dtype=None, tool_call_format=None, kv_cache_dtype=None,
        prefix_cache_mb=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        which: Which,
        max_seqs: i64,
        no_kv_cache: bool,
        prefix_cache_n: i64,
        token_source: &str,
        speculative_gamma: i64,
        which_draft: Option<Which>,
        chat_template: Option<String>,
        num_device_layers: Option<Vec<String>>,
        in_situ_quant: Option<String>,
        seed: Option<i128>,
        device: Option<String>,
        kv_cache_mb: Option<i64>,
        dtype: Option<String>,
        tool_call_format: Option<String>,
        kv_cache_dtype: Option<String>,
        prefix_cache_mb: Option<i64>,
    ) -> PyResult<Self> {
        let kv_cache_mb = match kv_cache_mb {
            Some(mb) if mb < 1 => return Err(PyValueError::new_err(format!("kv_cache_mb must be at least 1, got {mb}"))),
            Some(mb) => Some(usize::try_from(mb).map_err(|_| PyValueError::new_err("kv_cache_mb is too large"))?),
            None => None,
        };
        if max_seqs < 1 {
            return Err(PyValueError::new_err(format!("max_seqs must be at least 1, got {max_seqs}")));
        }
        let prefix_cache_mb = match prefix_cache_mb {
            Some(mb) => Some(usize::try_from(mb).map_err(|_| {
                PyValueError::new_err(format!("prefix_cache_mb must be >= 0 (and fit in memory), got {mb}"))
            })?),
            None => None,
        };
        if prefix_cache_n < 0 {
            return Err(PyValueError::new_err(format!("prefix_cache_n must be >= 0, got {prefix_cache_n}")));
        }
        if speculative_gamma < 1 {
            return Err(PyValueError::new_err(format!("speculative_gamma must be at least 1, got {speculative_gamma}")));
        }
        if let Some(spec) = &num_device_layers {
            let layers = device_layers(spec)?;
            if !cfg!(feature = "cuda") {
                return Err(PyValueError::new_err(format!(
                    "num_device_layers {spec:?} splits layers across CUDA devices, which needs the CUDA build \
                     (pip install mistralrs-cuda); this build has {}",
                    mistralrs_core::device::compiled_devices().join(", ")
                )));
            }
            let count = mistralrs_core::device::cuda_device_count();
            if let Some((o, _)) = layers.iter().find(|(o, _)| *o >= count) {
                return Err(PyValueError::new_err(format!("num_device_layers names cuda:{o}, but the driver reports {count} CUDA devices")));
            }
            return Err(not_implemented("splitting layers across devices (num_device_layers); use device=\"cuda:N\""));
        }
        let spec = spec_of(&which)?;
        let opts = LoadOptions {
            token_source: TokenSource::parse(token_source).map_err(to_py)?,
            chat_template,
            device: device_of(device.as_deref())?,
            in_situ_quant: in_situ_quant.as_deref().map(parse_isq).transpose().map_err(to_py)?,
            dtype: dtype_of(dtype.as_deref())?,
        };
        let kv_cache_dtype = match kv_cache_dtype.as_deref() {
            None | Some("auto") => None,
            Some(s) => Some(mistralrs_core::kv_cache::KvDtype::parse(s).ok_or_else(|| {
                PyValueError::new_err(format!("kv_cache_dtype={s:?}: expected \"auto\", \"f32\", \"f16\", \"bf16\" or \"q8_0\""))
            })?),
        };
        let cfg = RunnerConfig {
            max_seqs: max_seqs as usize,
            no_kv_cache,
            kv_cache_mb,
            kv_cache_dtype,
            prefix_cache_n: prefix_cache_n as usize,
            prefix_cache_mb,
            repeat_last_n: which.repeat_last_n(),
            seed: crate::requests::seed_of(seed)?,
            draft: match &which_draft {
                Some(d) => Some((spec_of(d)?, speculative_gamma as usize)),
                None => None,
            },
            tool_call_format: tool_call_format
                .as_deref()
                .map(mistralrs_core::tools::ToolCallFormat::from_name)
                .transpose()
                .map_err(to_py)?,
        };
        let inner = py.detach(|| mistralrs_core::Runner::new(&spec, &opts, cfg)).map_err(to_py)?;
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Sends a chat request; returns a ChatCompletionResponse, or with
    /// stream=True an iterator of ChatCompletionChunkResponse.
    fn send_chat_completion_request(&self, py: Python<'_>, request: PyRef<'_, ChatCompletionRequest>) -> PyResult<Py<PyAny>> {
        let req = request.to_core(py)?;
        drop(request);
        self.send_and_wait(py, req)
    }

    /// Sends a completion request; returns a CompletionResponse, or with
    /// stream=True an iterator of CompletionResponse chunks.
    fn send_completion_request(&self, py: Python<'_>, request: PyRef<'_, CompletionRequest>) -> PyResult<Py<PyAny>> {
        let req = request.to_core(py)?;
        drop(request);
        self.send_and_wait(py, req)
    }

    /// A coroutine: the ChatCompletionResponse, or with stream=True an async
    /// iterator of chunks. Awaiting it holds no thread (see `mistralrs._aio`).
    fn send_chat_completion_request_async<'py>(slf: Py<Self>, py: Python<'py>, request: Bound<'py, ChatCompletionRequest>) -> PyResult<Bound<'py, PyAny>> {
        py.import("mistralrs._aio")?.call_method1("send", (slf, request))
    }

    /// A coroutine: the CompletionResponse, or with stream=True an async
    /// iterator of partial ones.
    fn send_completion_request_async<'py>(slf: Py<Self>, py: Python<'py>, request: Bound<'py, CompletionRequest>) -> PyResult<Bound<'py, PyAny>> {
        py.import("mistralrs._aio")?.call_method1("send", (slf, request))
    }

    /// Sends `request` (either kind) without waiting: each time its response
    /// has news, one byte is written to `wake` (the pipe an event loop
    /// watches), and `PendingResponse.next_ready` takes it.
    #[cfg(unix)]
    fn _send_async(&self, py: Python<'_>, request: &Bound<'_, PyAny>, wake: PyRef<'_, crate::wake::WakePipe>) -> PyResult<PendingResponse> {
        let req = if let Ok(r) = request.cast::<ChatCompletionRequest>() {
            r.borrow().to_core(py)?
        } else {
            request.cast::<CompletionRequest>()?.borrow().to_core(py)?
        };
        let notify = wake.notifier();
        drop(wake);
        let inner = self.inner.clone();
        let rx = py.detach(|| inner.send_notifying(req, Some(notify))).map_err(to_py)?;
        Ok(PendingResponse { rx: Mutex::new(Some(rx)) })
    }

    /// The prompt text a chat request's `messages` (and `tools`) render to
    /// with the model's chat template, as transformers'
    /// `apply_chat_template(messages, tools=..., tokenize=False)` gives it.
    #[pyo3(signature = (messages, tools=None, add_generation_prompt=true, tool_choice=None))]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        tools: Option<Py<PyAny>>,
        add_generation_prompt: bool,
        tool_choice: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let mistralrs_core::request::PromptInput::Messages(msgs) = crate::requests::messages_of(messages)? else {
            return Err(crate::errors::invalid_field("messages", "messages must be a list of message dicts"));
        };
        let tools = crate::requests::tools_of(&tools, &tool_choice, None, py)?;
        let inner = self.inner.clone();
        py.detach(|| inner.apply_chat_template(&msgs, tools.as_ref(), add_generation_prompt)).map_err(to_py)
    }

    /// Token ids of `text` as a completion prompt is tokenized (BOS added where the tokenizer adds it).
    #[pyo3(signature = (text, add_special_tokens=true))]
    fn tokenize(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let inner = self.inner.clone();
        py.detach(|| inner.tokenize(text, add_special_tokens)).map_err(to_py)
    }

    /// The text of `ids`, special tokens left out unless asked for.
    #[pyo3(signature = (ids, skip_special_tokens=true))]
    fn detokenize(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        let inner = self.inner.clone();
        py.detach(|| inner.detokenize(&ids, skip_special_tokens)).map_err(to_py)
    }

    /// Re-quantizes the loaded model to `dtype` (one of the `in_situ_quant`
    /// names): the model is loaded again quantized while requests keep being
    /// served, then swapped in between two engine steps. Returns once later
    /// requests run on the new weights.
    fn send_re_isq(&self, py: Python<'_>, dtype: &str) -> PyResult<()> {
        let t = parse_isq(dtype).map_err(to_py)?;
        let inner = self.inner.clone();
        py.detach(|| inner.re_isq(t)).map_err(to_py)
    }

    /// Sets the LoRA adapters that requests without `adapters` run with
    /// (unmerged LoRA: the ordering file has `preload_adapters`); `[]` is the
    /// base model alone. An adapter that is not loaded raises ValueError.
    fn activate_adapters(&self, names: Vec<String>) -> PyResult<()> {
        self.inner.activate_adapters(&names).map_err(to_py)
    }

    /// Names of the loaded adapters, in the order they were loaded.
    #[getter]
    fn adapters(&self) -> Vec<String> {
        self.inner.adapter_names()
    }

    /// The device the model runs on: "cpu", "cuda:N" or "metal".
    #[getter]
    fn device(&self) -> String {
        self.inner.device_name()
    }

    /// The format the model writes tool calls in ("hermes", "llama3_json",
    /// "mistral" or "generic"): its chat template's, or `Runner(tool_call_format=...)`.
    #[getter]
    fn tool_call_format(&self) -> &'static str {
        self.inner.tool_call_format().name()
    }

    /// The compute dtype of dense weights and activations: "f32", "f16" or
    /// "bf16" (quantized weights keep their own types).
    #[getter]
    fn dtype(&self) -> &'static str {
        dtype_name(self.inner.dtype())
    }

    /// How the KV cache stores keys and values: "f32", "f16", "bf16" or
    /// "q8_0" (`Runner(kv_cache_dtype=...)`, "auto" resolved).
    #[getter]
    fn kv_cache_dtype(&self) -> &'static str {
        self.inner.kv_cache_dtype()
    }

    /// The dtype the checkpoint's config.json names (`torch_dtype`), or None
    /// (llama.cpp files name none); the default `dtype` on accelerators.
    #[getter]
    fn checkpoint_dtype(&self) -> Option<&'static str> {
        self.inner.checkpoint_dtype().map(dtype_name)
    }

    fn __repr__(&self) -> String {
        let checkpoint = self.inner.checkpoint_dtype().map_or("none", dtype_name);
        format!(
            "Runner(device='{}', dtype='{}', checkpoint_dtype='{checkpoint}', context_len={}, kv_cache_dtype='{}')",
            self.inner.device_name(),
            dtype_name(self.inner.dtype()),
            self.inner.context_len(),
            self.inner.kv_cache_dtype()
        )
    }

    /// The engine's counters as a dict: steps, sequence_steps, max_batch,
    /// mixed_adapter_steps (steps whose sequences used different adapter
    /// sets), preemptions, kv_blocks_total/used/cached/resident/thinned, kv_block_tokens, kv_block_bytes,
    /// shared_prompts, prefix_cache_hit_tokens, requests_cancelled, the gauges
    /// seqs_running and seqs_waiting (after the last step), and for X-LoRA
    /// xlora_scaling_passes (one per sequence per step that ran the scaling pass).
    fn stats(&self) -> std::collections::HashMap<&'static str, u64> {
        self.inner.stats().into_iter().collect()
    }

    /// Stops the engine and frees the model; later requests raise RuntimeError.
    fn close(&self, py: Python<'_>) {
        let inner = self.inner.clone();
        py.detach(|| inner.close());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }
}

/// The chunks of a streamed response, in order.
#[pyclass(module = "mistralrs")]
pub struct ResponseIterator {
    rx: Mutex<Option<ResponseStream>>,
}

#[pymethods]
impl ResponseIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let guard = self.rx.lock().map_err(|_| PyRuntimeError::new_err("the stream is unusable"))?;
        let Some(rx) = guard.as_ref() else { return Ok(None) };
        let next = wait(py, rx);
        drop(guard);
        match next {
            Ok(Some(Ok(ev))) => event_to_py(py, ev).map(Some),
            Ok(Some(Err(e))) => {
                self.close();
                Err(to_py(e))
            }
            Ok(None) => {
                self.close();
                Ok(None)
            }
            // Interrupted (Ctrl-C): the request is cancelled.
            Err(e) => {
                self.close();
                Err(e)
            }
        }
    }

    /// Stops the stream: its request is cancelled and frees its cache blocks
    /// before the engine's next step. Dropping the iterator does the same.
    fn close(&self) {
        if let Ok(mut g) = self.rx.lock() {
            *g = None;
        }
    }
}

/// A request sent by the asyncio API, polled when its wake-up byte arrives.
#[pyclass(module = "mistralrs")]
pub struct PendingResponse {
    rx: Mutex<Option<ResponseStream>>,
}

#[pymethods]
impl PendingResponse {
    /// ("event", response or chunk), ("pending", None) when nothing is ready
    /// yet, or ("done", None) once answered; raises the request's error.
    fn next_ready(&self, py: Python<'_>) -> PyResult<(&'static str, Option<Py<PyAny>>)> {
        let next = {
            let guard = self.rx.lock().map_err(|_| PyRuntimeError::new_err("the response is unusable"))?;
            match guard.as_ref() {
                Some(rx) => rx.try_recv(),
                None => Err(()),
            }
        };
        match next {
            Ok(Some(Ok(ev))) => Ok(("event", Some(event_to_py(py, ev)?))),
            Ok(Some(Err(e))) => {
                self.close();
                Err(to_py(e))
            }
            Ok(None) => Ok(("pending", None)),
            Err(()) => {
                self.close();
                Ok(("done", None))
            }
        }
    }

    /// Stops listening: an unfinished request is cancelled.
    fn close(&self) {
        if let Ok(mut g) = self.rx.lock() {
            *g = None;
        }
    }
}
