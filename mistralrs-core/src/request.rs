//! A generation request as the engine receives it, and its validation.

use crate::chat_template::{ChatMessage, ROLES};
use crate::error::{Error, Result};
use crate::grammar::Grammar;
use crate::sampler::SamplingParams;
use crate::tools::ToolRequest;

#[derive(Debug, Clone)]
pub enum PromptInput {
    /// Rendered with the chat template, then tokenized without special tokens.
    Messages(Vec<ChatMessage>),
    /// An already-templated chat prompt, tokenized without special tokens.
    Templated(String),
    /// A completion prompt, tokenized with the tokenizer's special-token rules.
    Completion(String),
    /// A completion prompt given as token ids (OpenAI's `prompt: list[int]`),
    /// used as they are once checked against the vocabulary.
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Chat,
    Completion,
}

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub model: String,
    pub prompt: PromptInput,
    pub sampling: SamplingParams,
    /// Raw from the caller (validated below); None = until EOS or the context ends.
    pub max_tokens: Option<i64>,
    pub n_choices: usize,
    /// Completions: generate this many and keep the best `n_choices` by mean logprob.
    pub best_of: usize,
    pub stop_seqs: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub echo_prompt: bool,
    pub seed: Option<u64>,
    pub logprobs: bool,
    /// The LoRA set for this request (names of loaded adapters); None: the runner's active set.
    pub adapters: Option<Vec<String>>,
    /// What every choice's output must match.
    pub grammar: Option<Grammar>,
    /// Chat: the functions the model may call, and how.
    pub tools: Option<ToolRequest>,
}

/// Sequences one request may ask for (OpenAI's limit on `n`).
pub const MAX_CHOICES: usize = 128;

impl GenerationRequest {
    pub fn kind(&self) -> RequestKind {
        match self.prompt {
            PromptInput::Completion(_) | PromptInput::Tokens(_) => RequestKind::Completion,
            _ => RequestKind::Chat,
        }
    }

    /// Every field check that needs no model.
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = self.max_tokens {
            if m < 0 {
                return Err(Error::invalid_field("max_tokens", format!("max_tokens must be >= 0, got {m}")));
            }
        }
        let s = &self.sampling;
        if let Some(t) = s.temperature {
            if !(t >= 0.0 && t.is_finite()) {
                return Err(Error::invalid_field("temperature", format!("temperature must be >= 0, got {t}")));
            }
        }
        if let Some(p) = s.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::invalid_field("top_p", format!("top_p must be in (0, 1], got {p}")));
            }
        }
        if let Some(p) = s.min_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::invalid_field("min_p", format!("min_p must be in [0, 1], got {p}")));
            }
        }
        if let Some(r) = s.repetition_penalty {
            if !(r > 0.0 && r.is_finite()) {
                return Err(Error::invalid_field(
                    "repetition_penalty",
                    format!("repetition_penalty must be > 0, got {r}"),
                ));
            }
        }
        for (name, v) in [("presence_penalty", s.presence_penalty), ("frequency_penalty", s.frequency_penalty)] {
            if let Some(v) = v {
                if !(-2.0..=2.0).contains(&v) {
                    return Err(Error::invalid_field(name, format!("{name} must be in [-2, 2], got {v}")));
                }
            }
        }
        if let Some((t, b)) = s.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(*b)) {
            return Err(Error::invalid_field(
                "logit_bias",
                format!("logit_bias for token {t} must be in [-100, 100], got {b}"),
            ));
        }
        if let Some(n) = s.top_logprobs {
            if n > 20 {
                return Err(Error::invalid_field("top_logprobs", format!("top_logprobs must be at most 20, got {n}")));
            }
        }
        if self.n_choices == 0 {
            return Err(Error::invalid_field("n_choices", "n_choices must be at least 1"));
        }
        if self.best_of > MAX_CHOICES {
            return Err(Error::invalid_field(
                "best_of",
                format!(
                    "best_of / n_choices must be at most {MAX_CHOICES} (each choice is a sequence), got {}",
                    self.best_of
                ),
            ));
        }
        if self.best_of < self.n_choices {
            return Err(Error::invalid_field(
                "best_of",
                format!("best_of ({}) must be at least n_choices ({})", self.best_of, self.n_choices),
            ));
        }
        if self.stop_seqs.iter().any(String::is_empty) {
            return Err(Error::invalid_field("stop_seqs", "stop_seqs must not contain an empty string"));
        }
        if let PromptInput::Messages(msgs) = &self.prompt {
            if msgs.is_empty() {
                return Err(Error::invalid_field("messages", "messages must not be empty"));
            }
            if let Some(m) = msgs.iter().find(|m| !ROLES.contains(&m.role.as_str())) {
                return Err(Error::invalid_field(
                    "messages",
                    format!("unknown message role `{}` (expected one of {})", m.role, ROLES.join(", ")),
                ));
            }
            if let Some((i, m)) = msgs.iter().enumerate().find(|(_, m)| m.content.is_none() && m.tool_calls.is_none()) {
                return Err(Error::invalid_field(
                    "messages",
                    format!("messages[{i}] ({}) has no content (only an assistant turn with tool_calls may omit it)", m.role),
                ));
            }
            if let Some((i, _)) = msgs.iter().enumerate().find(|(_, m)| m.tool_calls.is_some() && m.role != "assistant") {
                return Err(Error::invalid_field("messages", format!("messages[{i}]: only assistant turns carry tool_calls")));
            }
            check_tool_results(msgs)?;
        }
        if self.tools.as_ref().is_some_and(|t| t.calls_allowed()) && self.grammar.is_some() {
            return Err(Error::invalid_field(
                "tools",
                "tools cannot be combined with a grammar or response_format (unless tool_choice is \"none\")",
            ));
        }
        if self.tools.is_some() && self.kind() == RequestKind::Completion {
            return Err(Error::invalid_field("tools", "tools need a chat request"));
        }
        Ok(())
    }
}

/// As OpenAI's API: a `tool` message answers a call of the assistant turn
/// before it (other results may come between), and names one of its calls.
fn check_tool_results(msgs: &[crate::chat_template::ChatMessage]) -> Result<()> {
    let mut open: Option<Vec<&str>> = None;
    for (i, m) in msgs.iter().enumerate() {
        match m.role.as_str() {
            "tool" => {
                let Some(ids) = &open else {
                    return Err(Error::invalid_field(
                        "messages",
                        format!("messages[{i}]: a `tool` message must answer a call of the assistant turn before it (its tool_calls)"),
                    ));
                };
                if let Some(id) = m.tool_call_id.as_deref() {
                    if !ids.is_empty() && !ids.contains(&id) {
                        return Err(Error::invalid_field(
                            "messages",
                            format!("messages[{i}]: tool_call_id `{id}` is not a call of the assistant turn before it"),
                        ));
                    }
                }
            }
            "assistant" => {
                open = m.tool_calls.as_ref().map(|c| c.iter().map(|c| c.id.as_str()).filter(|id| !id.is_empty()).collect());
            }
            _ => open = None,
        }
    }
    Ok(())
}
