//! `ChatCompletionRequest` and `CompletionRequest`: plain attribute holders,
//! converted to the engine's request (and validated there) when sent.

use std::collections::HashMap;

use mistralrs_core::chat_template::{ChatMessage, MessageFunction, MessageToolCall};
use mistralrs_core::tools::ToolRequest;
use mistralrs_core::grammar::Grammar;
use mistralrs_core::request::{GenerationRequest, PromptInput};
use mistralrs_core::sampler::SamplingParams;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use crate::errors::{invalid, invalid_field, not_implemented};

fn non_negative(name: &'static str, v: Option<i64>) -> PyResult<Option<usize>> {
    match v {
        Some(x) if x < 0 => Err(invalid_field(name, format!("{name} must be >= 0, got {x}"))),
        other => Ok(other.map(|x| x as usize)),
    }
}

pub(crate) fn messages_of(obj: &Bound<'_, PyAny>) -> PyResult<PromptInput> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(PromptInput::Templated(s.extract::<String>()?));
    }
    let list = obj
        .cast::<PyList>()
        .map_err(|_| invalid_field("messages", "messages must be a list of {\"role\", \"content\"} dicts or a str"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let d = item.cast::<PyDict>().map_err(|_| invalid_field("messages", format!("messages[{i}] is not a dict")))?;
        // A str field, None where the key is missing or None.
        let field = |k: &str| -> PyResult<Option<String>> {
            match d.get_item(k)? {
                Some(v) if !v.is_none() => v
                    .extract::<String>()
                    .map(Some)
                    .map_err(|_| invalid_field("messages", format!("messages[{i}][`{k}`] must be a str"))),
                _ => Ok(None),
            }
        };
        let role = field("role")?.ok_or_else(|| invalid_field("messages", format!("messages[{i}] has no `role`")))?;
        let tool_calls = match d.get_item("tool_calls")? {
            Some(v) if !v.is_none() => Some(tool_calls_of(i, json_value(&format!("messages[{i}].tool_calls"), &v)?)?),
            _ => None,
        };
        let content = field("content")?;
        if content.is_none() && tool_calls.is_none() {
            return Err(invalid_field("messages", format!("messages[{i}] has no `content`")));
        }
        out.push(ChatMessage { role, content, tool_calls, tool_call_id: field("tool_call_id")?, name: field("name")? });
    }
    Ok(PromptInput::Messages(out))
}

/// An assistant turn's `tool_calls` (OpenAI's shape, arguments as JSON text
/// or as a dict), with the arguments as the JSON value templates print.
fn tool_calls_of(i: usize, v: serde_json::Value) -> PyResult<Vec<MessageToolCall>> {
    let bad = |msg: &str| invalid_field("messages", format!("messages[{i}].tool_calls: {msg}"));
    let items = v.as_array().ok_or_else(|| bad("must be a list"))?;
    items
        .iter()
        .map(|c| {
            let f = c.get("function").ok_or_else(|| bad("each call needs a `function`"))?;
            let name = f.get("name").and_then(|n| n.as_str()).ok_or_else(|| bad("each function needs a `name`"))?;
            let arguments = match f.get("arguments") {
                // JSON text, as OpenAI sends it; text that is not JSON is kept as it is.
                Some(serde_json::Value::String(text)) => {
                    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.clone()))
                }
                Some(other) => other.clone(),
                None => serde_json::json!({}),
            };
            Ok(MessageToolCall {
                id: c.get("id").and_then(|x| x.as_str()).unwrap_or_default().to_string(),
                kind: "function".into(),
                function: MessageFunction { name: name.to_string(), arguments },
            })
        })
        .collect()
}

/// `tools`, `tool_choice` and `parallel_tool_calls` to the engine's tool request.
pub(crate) fn tools_of(
    tools: &Option<Py<PyAny>>,
    tool_choice: &Option<Py<PyAny>>,
    parallel: Option<bool>,
    py: Python<'_>,
) -> PyResult<Option<ToolRequest>> {
    let tools = tools.as_ref().map(|t| json_value("tools", t.bind(py))).transpose()?;
    // A str is the choice itself ("auto", "required"), not JSON text.
    let choice = match tool_choice.as_ref().map(|c| c.bind(py)) {
        Some(c) => match c.cast::<PyString>() {
            Ok(s) => Some(serde_json::Value::String(s.extract()?)),
            Err(_) => Some(json_value("tool_choice", c)?),
        },
        None => None,
    };
    ToolRequest::new(tools, choice, parallel).map_err(crate::errors::to_py)
}

/// The fields both request kinds share, to the engine's sampling parameters.
#[allow(clippy::too_many_arguments)]
fn sampling(
    temperature: Option<f64>,
    top_k: Option<i64>,
    top_p: Option<f64>,
    min_p: Option<f64>,
    repetition_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logit_bias: &Option<HashMap<i128, f32>>,
    logprobs: bool,
    top_logprobs: Option<i64>,
) -> PyResult<SamplingParams> {
    let top_logprobs = non_negative("top_logprobs", top_logprobs)?;
    // Checked here too: the engine sees top_logprobs only when logprobs is on.
    if let Some(n) = top_logprobs.filter(|&n| n > 20) {
        return Err(invalid_field("top_logprobs", format!("top_logprobs must be at most 20, got {n}")));
    }
    let logit_bias = logit_bias
        .iter()
        .flatten()
        .map(|(&t, &b)| {
            u32::try_from(t)
                .map(|t| (t, b))
                .map_err(|_| invalid_field("logit_bias", format!("logit_bias names token {t}, which is not a vocabulary id")))
        })
        .collect::<PyResult<HashMap<u32, f32>>>()?;
    Ok(SamplingParams {
        temperature,
        top_k: non_negative("top_k", top_k)?,
        top_p,
        min_p,
        repetition_penalty,
        frequency_penalty,
        presence_penalty,
        logit_bias,
        top_logprobs: logprobs.then_some(top_logprobs.unwrap_or(0)),
    })
}

/// A JSON Schema given as a dict (or any JSON-able object) or as JSON text.
fn json_value(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let text = match obj.cast::<PyString>() {
        Ok(s) => s.extract::<String>()?,
        Err(_) => obj.py().import("json")?.call_method1("dumps", (obj,))?.extract::<String>()?,
    };
    serde_json::from_str(&text).map_err(|e| invalid(format!("{what} is not valid JSON: {e}")))
}

/// `grammar` + `grammar_type` to the engine's grammar.
fn grammar_of(grammar: &Option<Py<PyAny>>, grammar_type: &Option<String>, py: Python<'_>) -> PyResult<Option<Grammar>> {
    let Some(g) = grammar else {
        return match grammar_type {
            Some(_) => Err(invalid("grammar_type was given without a grammar")),
            None => Ok(None),
        };
    };
    let g = g.bind(py);
    let text = |kind: &str| {
        g.extract::<String>().map_err(|_| invalid(format!("a {kind} grammar must be a str")))
    };
    Ok(Some(match grammar_type.as_deref() {
        Some("regex") => Grammar::Regex(text("regex")?),
        Some("lark") => Grammar::Lark(text("lark")?),
        Some("json_schema") => Grammar::JsonSchema(json_value("the JSON Schema", g)?),
        Some(other) => {
            return Err(invalid(format!(
                "unknown grammar_type `{other}` (expected \"regex\", \"json_schema\" or \"lark\")"
            )))
        }
        None => return Err(invalid("grammar needs grammar_type: \"regex\", \"json_schema\" or \"lark\"")),
    }))
}

/// OpenAI's `response_format`: `{"type": "text"}`, `{"type": "json_object"}`
/// (any JSON object) or `{"type": "json_schema", "json_schema": {"schema": ...}}`.
fn response_format_of(format: &Bound<'_, PyAny>) -> PyResult<Option<Grammar>> {
    let bad = |msg: &str| invalid(format!("response_format {msg}"));
    let d = format.cast::<PyDict>().map_err(|_| bad("must be a dict with a `type`"))?;
    let kind: String = d
        .get_item("type")?
        .ok_or_else(|| bad("has no `type`"))?
        .extract()
        .map_err(|_| bad("`type` must be a str"))?;
    match kind.as_str() {
        "text" => Ok(None),
        "json_object" => Ok(Some(Grammar::JsonSchema(serde_json::json!({"type": "object"})))),
        "json_schema" => {
            let spec = d.get_item("json_schema")?.ok_or_else(|| bad("of type json_schema needs `json_schema`"))?;
            let spec = spec.cast::<PyDict>().map_err(|_| bad("`json_schema` must be a dict"))?;
            let schema = spec.get_item("schema")?.ok_or_else(|| bad("`json_schema` has no `schema`"))?;
            Ok(Some(Grammar::JsonSchema(json_value("response_format's schema", &schema)?)))
        }
        other => Err(bad(&format!("type `{other}` is unknown (expected text, json_object or json_schema)"))),
    }
}

/// What a request constrains its output to: its grammar or its response_format (one of them).
fn constraint_of(
    grammar: &Option<Py<PyAny>>,
    grammar_type: &Option<String>,
    response_format: &Option<Py<PyAny>>,
    py: Python<'_>,
) -> PyResult<Option<Grammar>> {
    match (response_format, grammar_of(grammar, grammar_type, py)?) {
        (Some(_), Some(_)) => Err(invalid("give either grammar or response_format, not both")),
        (Some(f), None) => response_format_of(f.bind(py)),
        (None, g) => Ok(g),
    }
}

/// A seed as the engine takes it (a u64); any other int is a ValueError, not an OverflowError.
pub(crate) fn seed_of(seed: Option<i128>) -> PyResult<Option<u64>> {
    seed.map(|s| u64::try_from(s).map_err(|_| invalid_field("seed", format!("seed must be in [0, 2**64), got {s}"))))
        .transpose()
}

fn count(name: &'static str, v: i64) -> PyResult<usize> {
    if v < 1 {
        return Err(invalid_field(name, format!("{name} must be at least 1, got {v}")));
    }
    Ok(v as usize)
}

#[pyclass(get_all, set_all, module = "mistralrs")]
pub struct ChatCompletionRequest {
    messages: Py<PyAny>,
    model: String,
    logit_bias: Option<HashMap<i128, f32>>,
    logprobs: bool,
    top_logprobs: Option<i64>,
    max_tokens: Option<i64>,
    n_choices: i64,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    stop_seqs: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    stream: bool,
    grammar: Option<Py<PyAny>>,
    grammar_type: Option<String>,
    adapters: Option<Vec<String>>,
    seed: Option<i128>,
    ignore_eos: bool,
    response_format: Option<Py<PyAny>>,
    tools: Option<Py<PyAny>>,
    tool_choice: Option<Py<PyAny>>,
    parallel_tool_calls: Option<bool>,
}

#[pymethods]
impl ChatCompletionRequest {
    #[new]
    #[pyo3(signature = (messages, model, logit_bias=None, logprobs=false, top_logprobs=None, max_tokens=None,
        n_choices=1, presence_penalty=None, frequency_penalty=None, repetition_penalty=None, stop_seqs=None,
        temperature=None, top_p=None, top_k=None, min_p=None, stream=false, grammar=None, grammar_type=None,
        adapters=None, seed=None, ignore_eos=false, response_format=None, tools=None, tool_choice=None,
        parallel_tool_calls=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        messages: Py<PyAny>,
        model: String,
        logit_bias: Option<HashMap<i128, f32>>,
        logprobs: bool,
        top_logprobs: Option<i64>,
        max_tokens: Option<i64>,
        n_choices: i64,
        presence_penalty: Option<f32>,
        frequency_penalty: Option<f32>,
        repetition_penalty: Option<f32>,
        stop_seqs: Option<Vec<String>>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        top_k: Option<i64>,
        min_p: Option<f64>,
        stream: bool,
        grammar: Option<Py<PyAny>>,
        grammar_type: Option<String>,
        adapters: Option<Vec<String>>,
        seed: Option<i128>,
        ignore_eos: bool,
        response_format: Option<Py<PyAny>>,
        tools: Option<Py<PyAny>>,
        tool_choice: Option<Py<PyAny>>,
        parallel_tool_calls: Option<bool>,
    ) -> Self {
        Self {
            messages, model, logit_bias, logprobs, top_logprobs, max_tokens, n_choices, presence_penalty,
            frequency_penalty, repetition_penalty, stop_seqs, temperature, top_p, top_k, min_p, stream, grammar,
            grammar_type, adapters, seed, ignore_eos, response_format, tools, tool_choice, parallel_tool_calls,
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let msgs = self.messages.bind(py).repr().map(|r| r.to_string()).unwrap_or_default();
        format!(
            "ChatCompletionRequest(model={:?}, messages={msgs}, max_tokens={:?}, temperature={:?}, stream={})",
            self.model, self.max_tokens, self.temperature, self.stream
        )
    }
}

impl ChatCompletionRequest {
    pub fn to_core(&self, py: Python<'_>) -> PyResult<GenerationRequest> {
        let n = count("n_choices", self.n_choices)?;
        let grammar = constraint_of(&self.grammar, &self.grammar_type, &self.response_format, py)?;
        Ok(GenerationRequest {
            model: self.model.clone(),
            prompt: messages_of(self.messages.bind(py))?,
            sampling: sampling(
                self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty,
                self.frequency_penalty, self.presence_penalty, &self.logit_bias, self.logprobs, self.top_logprobs,
            )?,
            max_tokens: self.max_tokens,
            n_choices: n,
            best_of: n,
            stop_seqs: self.stop_seqs.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos,
            stream: self.stream,
            echo_prompt: false,
            seed: seed_of(self.seed)?,
            logprobs: self.logprobs,
            adapters: self.adapters.clone(),
            grammar,
            tools: tools_of(&self.tools, &self.tool_choice, self.parallel_tool_calls, py)?,
        })
    }
}

/// A completion prompt: text, or token ids (as OpenAI's completions API,
/// vLLM and llama-cpp-python take them).
#[derive(Clone, FromPyObject, IntoPyObject)]
pub enum CompletionPrompt {
    Text(String),
    Ids(Vec<i64>),
}

#[pyclass(get_all, set_all, module = "mistralrs")]
pub struct CompletionRequest {
    prompt: CompletionPrompt,
    model: String,
    echo_prompt: bool,
    best_of: Option<i64>,
    max_tokens: Option<i64>,
    n_choices: i64,
    logit_bias: Option<HashMap<i128, f32>>,
    logprobs: bool,
    top_logprobs: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    stop_seqs: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    suffix: Option<String>,
    stream: bool,
    grammar: Option<Py<PyAny>>,
    grammar_type: Option<String>,
    adapters: Option<Vec<String>>,
    seed: Option<i128>,
    ignore_eos: bool,
    response_format: Option<Py<PyAny>>,
}

#[pymethods]
impl CompletionRequest {
    #[new]
    #[pyo3(signature = (prompt, model, echo_prompt=false, best_of=None, max_tokens=None, n_choices=1, logit_bias=None,
        logprobs=false, top_logprobs=None, presence_penalty=None, frequency_penalty=None, repetition_penalty=None,
        stop_seqs=None, temperature=None, top_p=None, top_k=None, min_p=None, suffix=None, stream=false,
        grammar=None, grammar_type=None, adapters=None, seed=None, ignore_eos=false, response_format=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        prompt: CompletionPrompt,
        model: String,
        echo_prompt: bool,
        best_of: Option<i64>,
        max_tokens: Option<i64>,
        n_choices: i64,
        logit_bias: Option<HashMap<i128, f32>>,
        logprobs: bool,
        top_logprobs: Option<i64>,
        presence_penalty: Option<f32>,
        frequency_penalty: Option<f32>,
        repetition_penalty: Option<f32>,
        stop_seqs: Option<Vec<String>>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        top_k: Option<i64>,
        min_p: Option<f64>,
        suffix: Option<String>,
        stream: bool,
        grammar: Option<Py<PyAny>>,
        grammar_type: Option<String>,
        adapters: Option<Vec<String>>,
        seed: Option<i128>,
        ignore_eos: bool,
        response_format: Option<Py<PyAny>>,
    ) -> Self {
        Self {
            prompt, model, echo_prompt, best_of, max_tokens, n_choices, logit_bias, logprobs, top_logprobs,
            presence_penalty, frequency_penalty, repetition_penalty, stop_seqs, temperature, top_p, top_k, min_p,
            suffix, stream, grammar, grammar_type, adapters, seed, ignore_eos, response_format,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "CompletionRequest(model={:?}, prompt={}, max_tokens={:?}, temperature={:?}, stream={})",
            self.model,
            match &self.prompt {
                CompletionPrompt::Text(t) => format!("{t:?}"),
                CompletionPrompt::Ids(ids) => format!("{ids:?}"),
            },
            self.max_tokens,
            self.temperature,
            self.stream
        )
    }
}

impl CompletionRequest {
    pub fn to_core(&self, py: Python<'_>) -> PyResult<GenerationRequest> {
        if self.suffix.is_some() {
            return Err(not_implemented("fill-in-the-middle completion (`suffix`)"));
        }
        Ok(GenerationRequest {
            model: self.model.clone(),
            prompt: match &self.prompt {
                CompletionPrompt::Text(t) => PromptInput::Completion(t.clone()),
                CompletionPrompt::Ids(ids) => PromptInput::Tokens(
                    ids.iter()
                        .map(|&t| u32::try_from(t).map_err(|_| invalid_field("prompt", format!("prompt token id {t} is not a vocabulary id"))))
                        .collect::<PyResult<_>>()?,
                ),
            },
            sampling: sampling(
                self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty,
                self.frequency_penalty, self.presence_penalty, &self.logit_bias, self.logprobs, self.top_logprobs,
            )?,
            max_tokens: self.max_tokens,
            n_choices: count("n_choices", self.n_choices)?,
            // As OpenAI and vLLM: best_of defaults to n.
            best_of: count("best_of", self.best_of.unwrap_or(self.n_choices))?,
            stop_seqs: self.stop_seqs.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos,
            stream: self.stream,
            echo_prompt: self.echo_prompt,
            seed: seed_of(self.seed)?,
            logprobs: self.logprobs,
            adapters: self.adapters.clone(),
            grammar: constraint_of(&self.grammar, &self.grammar_type, &self.response_format, py)?,
            tools: None,
        })
    }
}
