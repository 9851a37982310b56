//! OpenAI-shaped responses. With the `pyo3` feature these are the Python
//! classes themselves (read-only attributes), so the binding needs no copy.
//! They pickle through their JSON form, so they cross process boundaries
//! (multiprocessing, Ray Serve replicas answering another process).

use serde::{Deserialize, Serialize};

macro_rules! py_value {
    ($($ty:ident),* $(,)?) => {$(
        #[cfg(feature = "pyo3")]
        #[pyo3::pymethods]
        impl $ty {
            fn __repr__(&self) -> String {
                format!("{self:?}")
            }

            fn __reduce__<'py>(
                slf: &pyo3::Bound<'py, Self>,
            ) -> pyo3::PyResult<(pyo3::Bound<'py, pyo3::PyAny>, (String,))> {
                use pyo3::types::PyAnyMethods;
                let json = serde_json::to_string(slf.get())
                    .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
                Ok((slf.get_type().getattr("_from_json")?, (json,)))
            }

            /// The inverse of pickling: the value whose JSON form `json` is.
            #[staticmethod]
            fn _from_json(json: &str) -> pyo3::PyResult<Self> {
                serde_json::from_str(json).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
            }
        }
    )*};
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub avg_tok_per_sec: f64,
    pub avg_prompt_tok_per_sec: f64,
    pub avg_compl_tok_per_sec: f64,
    pub total_time_sec: f64,
    pub total_prompt_time_sec: f64,
    pub total_completion_time_sec: f64,
    /// As OpenAI reports it: `cached_tokens` of the prompt came from the prefix cache.
    pub prompt_tokens_details: PromptTokensDetails,
    /// Speculative decoding: the share of the draft model's proposed tokens
    /// that the target accepted (None without a draft, or before any proposal).
    pub acceptance_rate: Option<f64>,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    /// UTF-8 bytes as ints (Python `list[int]`, as OpenAI returns them).
    pub bytes: Vec<u16>,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseLogprob {
    pub token: String,
    pub logprob: f32,
    /// UTF-8 bytes as ints (Python `list[int]`, as OpenAI returns them).
    pub bytes: Vec<u16>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logprobs {
    pub content: Vec<ResponseLogprob>,
}

/// The function a tool call names, and its arguments as JSON text.
#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// A call the model made (OpenAI's `message.tool_calls[i]`).
#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub r#type: String,
    pub function: FunctionCall,
}

/// A piece of a streamed call: `name` on its first delta, `arguments` fragments after.
#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    pub name: Option<String>,
    pub arguments: String,
}

/// A streamed piece of tool call `index` of a choice: `id` and `type` on its first delta.
#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: usize,
    pub id: Option<String>,
    pub r#type: Option<String>,
    pub function: FunctionCallDelta,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseMessage {
    pub role: String,
    /// None when the answer is only tool calls.
    pub content: Option<String>,
    /// The calls the model made; None when it made none.
    pub tool_calls: Option<Vec<ToolCall>>,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    pub index: usize,
    pub finish_reason: String,
    pub message: ResponseMessage,
    pub logprobs: Option<Logprobs>,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delta {
    pub role: String,
    /// None in a chunk that carries tool-call deltas or only the finish reason of a call.
    pub content: Option<String>,
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub finish_reason: Option<String>,
    pub logprobs: Option<Logprobs>,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionChunkResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    pub usage: Option<Usage>,
}

#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub finish_reason: Option<String>,
    pub logprobs: Option<Logprobs>,
}

/// A completion, or with `stream=True` one chunk of it (`usage` on the last).
#[cfg_attr(feature = "pyo3", pyo3::pyclass(get_all, frozen, module = "mistralrs"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<Usage>,
}

py_value!(
    Usage,
    PromptTokensDetails,
    TopLogprob,
    ResponseLogprob,
    Logprobs,
    FunctionCall,
    ToolCall,
    FunctionCallDelta,
    ToolCallDelta,
    ResponseMessage,
    Choice,
    ChatCompletionResponse,
    Delta,
    ChunkChoice,
    ChatCompletionChunkResponse,
    CompletionChoice,
    CompletionResponse,
);

/// What a request's channel carries.
#[derive(Debug, Clone)]
pub enum Event {
    ChatChunk(ChatCompletionChunkResponse),
    CompletionChunk(CompletionResponse),
    Chat(ChatCompletionResponse),
    Completion(CompletionResponse),
}
