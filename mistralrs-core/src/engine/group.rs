//! One request's bookkeeping: its choices' results, timings, and the
//! responses (or stream chunks) sent back on its channel.

use std::sync::mpsc::Sender;
use std::time::Instant;

use super::sequence::Sequence;
use crate::error::{Error, Result};
use crate::request::RequestKind;
use crate::response::*;
use crate::tools::parse::{parse, Parsed};
use crate::tools::stream::ToolStream;
use crate::tools::{call_id, ToolCallFormat};

/// Called after each event a request's caller can now receive (and when its
/// channel closes): how an asyncio caller is woken without a thread of its own.
pub type Notify = std::sync::Arc<dyn Fn() + Send + Sync>;

/// Where a request's events go.
pub struct Responder {
    tx: Sender<Result<Event>>,
    notify: Option<Notify>,
}

impl Responder {
    pub fn new(tx: Sender<Result<Event>>, notify: Option<Notify>) -> Self {
        Self { tx, notify }
    }

    /// False when the caller has stopped listening.
    fn send(&self, ev: Result<Event>) -> bool {
        let ok = self.tx.send(ev).is_ok();
        if let Some(n) = &self.notify {
            n();
        }
        ok
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // The channel closes after this: a waiting caller must look again.
        if let Some(n) = self.notify.take() {
            drop(std::mem::replace(&mut self.tx, std::sync::mpsc::channel().0));
            n();
        }
    }
}

pub struct Group {
    pub id: String,
    pub kind: RequestKind,
    pub model: String,
    pub fingerprint: String,
    pub created: u64,
    pub stream: bool,
    pub logprobs: bool,
    pub n_choices: usize,
    /// Text put before each completion (`echo_prompt`); when streaming, in each choice's first chunk.
    pub echo: Option<String>,
    /// Choices whose first chunk has been streamed.
    pub started: Vec<bool>,
    /// Speculative decoding: draft tokens proposed for this request, and accepted.
    pub spec_proposed: usize,
    pub spec_accepted: usize,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: Option<usize>,
    pub responder: Responder,
    /// One slot per generated sequence (best_of of them).
    pub finished: Vec<Option<Finished>>,
    pub admitted: Option<Instant>,
    pub prompt_done: Option<Instant>,
    /// The client stopped listening; its sequences are dropped.
    pub cancelled: bool,
    /// Set by the caller's side when it stops listening.
    pub cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The format the model writes tool calls in, when the request lets it call tools.
    pub tools: Option<ToolCallFormat>,
    /// Streaming with tools: each choice's output so far.
    pub tool_streams: Vec<ToolStream>,
}

/// A finished output as the chat API answers it: its text, its tool calls
/// (with fresh ids) and its finish reason (`tool_calls` when it made calls).
fn with_calls(format: ToolCallFormat, parsed: Parsed, reason: &'static str) -> (Option<String>, Option<Vec<ToolCall>>, &'static str) {
    if parsed.calls.is_empty() {
        return (parsed.content, None, reason);
    }
    let calls = parsed
        .calls
        .into_iter()
        .map(|c| ToolCall {
            id: call_id(format),
            r#type: "function".into(),
            function: FunctionCall { name: c.name, arguments: c.arguments },
        })
        .collect();
    (parsed.content, Some(calls), if reason == "stop" { "tool_calls" } else { reason })
}

pub struct Finished {
    pub text: String,
    pub reason: &'static str,
    pub logprobs: Vec<ResponseLogprob>,
    pub tokens: usize,
    pub mean_logprob: f64,
}

impl Group {
    pub fn send(&mut self, ev: Event) {
        if !self.responder.send(Ok(ev)) {
            self.cancelled = true;
        }
    }

    pub fn fail(&mut self, e: Error) {
        self.responder.send(Err(e));
        self.cancelled = true;
    }

    pub fn is_done(&self) -> bool {
        self.finished.iter().all(Option::is_some)
    }

    pub fn record(&mut self, seq: &Sequence) {
        let g = seq.generated().max(1) as f64;
        self.finished[seq.choice] = Some(Finished {
            text: seq.out.text().to_string(),
            reason: seq.finish.unwrap_or("stop"),
            logprobs: seq.logprobs.clone(),
            tokens: seq.generated(),
            mean_logprob: seq.logprob_sum / g,
        });
    }

    fn usage(&self) -> Usage {
        let now = Instant::now();
        let start = self.admitted.unwrap_or(now);
        let prompt_done = self.prompt_done.unwrap_or(now);
        let completion_tokens: usize = self.finished.iter().flatten().map(|f| f.tokens).sum();
        let prompt_s = prompt_done.duration_since(start).as_secs_f64();
        let compl_s = now.duration_since(prompt_done).as_secs_f64();
        let total_s = now.duration_since(start).as_secs_f64();
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        // The first token of each choice comes out of the prompt pass; the
        // completion rate counts the tokens decoded after it.
        let decoded = completion_tokens.saturating_sub(self.finished.len());
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens + completion_tokens,
            avg_tok_per_sec: rate(self.prompt_tokens + completion_tokens, total_s),
            avg_prompt_tok_per_sec: rate(self.prompt_tokens, prompt_s),
            avg_compl_tok_per_sec: rate(decoded, compl_s),
            total_time_sec: total_s,
            total_prompt_time_sec: prompt_s,
            total_completion_time_sec: compl_s,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: self.cached_tokens.unwrap_or(0) },
            acceptance_rate: (self.spec_proposed > 0).then(|| self.spec_accepted as f64 / self.spec_proposed as f64),
        }
    }

    fn logprobs_of(&self, f: &Finished) -> Option<Logprobs> {
        self.logprobs.then(|| Logprobs { content: f.logprobs.clone() })
    }

    /// A streamed piece of choice `choice` (`reason` on its last piece).
    pub fn chunk(&mut self, choice: usize, text: String, reason: Option<&'static str>, lp: Option<Vec<ResponseLogprob>>) {
        match self.tools {
            Some(format) if self.kind == RequestKind::Chat => self.tool_chunks(format, choice, text, reason, lp),
            _ => self.send_chunk(choice, Some(text), None, reason, lp),
        }
    }

    /// Streaming with tools: text until a call may be opening; at the end,
    /// the rest of the text, then each call as two deltas (its id and name,
    /// then its arguments), then the finish reason.
    fn tool_chunks(&mut self, format: ToolCallFormat, choice: usize, text: String, reason: Option<&'static str>, lp: Option<Vec<ResponseLogprob>>) {
        let Some(stream) = self.tool_streams.get_mut(choice) else { return };
        let now = stream.push(&text);
        let Some(reason) = reason else {
            if !now.is_empty() || lp.as_ref().is_some_and(|l| !l.is_empty()) {
                self.send_chunk(choice, Some(now), None, None, lp);
            }
            return;
        };
        let parsed = parse(format, stream.text());
        let rest = now + &stream.rest_of(parsed.content.as_deref());
        let (_, calls, reason) = with_calls(format, parsed, reason);
        let mut lp = lp;
        if !rest.is_empty() {
            self.send_chunk(choice, Some(rest), None, None, lp.take());
        }
        for (index, c) in calls.into_iter().flatten().enumerate() {
            let first = ToolCallDelta {
                index,
                id: Some(c.id),
                r#type: Some(c.r#type),
                function: FunctionCallDelta { name: Some(c.function.name), arguments: String::new() },
            };
            let args = ToolCallDelta {
                index,
                id: None,
                r#type: None,
                function: FunctionCallDelta { name: None, arguments: c.function.arguments },
            };
            self.send_chunk(choice, None, Some(vec![first]), None, lp.take());
            self.send_chunk(choice, None, Some(vec![args]), None, None);
        }
        self.send_chunk(choice, None, None, Some(reason), lp);
    }

    fn send_chunk(
        &mut self,
        choice: usize,
        text: Option<String>,
        tool_calls: Option<Vec<ToolCallDelta>>,
        reason: Option<&'static str>,
        lp: Option<Vec<ResponseLogprob>>,
    ) {
        let text = match (&self.echo, self.started.get_mut(choice)) {
            (Some(echo), Some(started)) if !*started => Some(format!("{echo}{}", text.unwrap_or_default())),
            _ => text,
        };
        if let Some(s) = self.started.get_mut(choice) {
            *s = true;
        }
        let usage = (reason.is_some() && self.is_done()).then(|| self.usage());
        let logprobs = lp.filter(|_| self.logprobs).map(|content| Logprobs { content });
        let ev = match self.kind {
            RequestKind::Chat => Event::ChatChunk(ChatCompletionChunkResponse {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: vec![ChunkChoice {
                    index: choice,
                    delta: Delta { role: "assistant".into(), content: text, tool_calls },
                    finish_reason: reason.map(str::to_string),
                    logprobs,
                }],
                usage,
            }),
            RequestKind::Completion => Event::CompletionChunk(CompletionResponse {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: vec![CompletionChoice {
                    index: choice,
                    text: text.unwrap_or_default(),
                    finish_reason: reason.map(str::to_string),
                    logprobs,
                }],
                usage,
            }),
        };
        self.send(ev);
    }

    /// The whole response, once every choice is finished.
    pub fn complete(&mut self) {
        let usage = self.usage();
        let mut order: Vec<usize> = (0..self.finished.len()).collect();
        if self.finished.len() > self.n_choices {
            // best_of: keep the choices with the highest mean logprob.
            let score = |i: &usize| self.finished[*i].as_ref().map_or(f64::MIN, |f| f.mean_logprob);
            order.sort_by(|a, b| score(b).total_cmp(&score(a)));
            order.truncate(self.n_choices);
        }
        let done: Vec<&Finished> = order.iter().filter_map(|&i| self.finished[i].as_ref()).collect();
        let ev = match self.kind {
            RequestKind::Chat => Event::Chat(ChatCompletionResponse {
                id: self.id.clone(),
                object: "chat.completion".into(),
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: done
                    .iter()
                    .enumerate()
                    .map(|(index, f)| {
                        let (content, tool_calls, reason) = match self.tools {
                            Some(format) => with_calls(format, parse(format, &f.text), f.reason),
                            None => (Some(f.text.clone()), None, f.reason),
                        };
                        Choice {
                            index,
                            finish_reason: reason.into(),
                            message: ResponseMessage { role: "assistant".into(), content, tool_calls },
                            logprobs: self.logprobs_of(f),
                        }
                    })
                    .collect(),
                usage,
            }),
            RequestKind::Completion => Event::Completion(CompletionResponse {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: done
                    .iter()
                    .enumerate()
                    .map(|(index, f)| CompletionChoice {
                        index,
                        text: format!("{}{}", self.echo.as_deref().unwrap_or(""), f.text),
                        finish_reason: Some(f.reason.into()),
                        logprobs: self.logprobs_of(f),
                    })
                    .collect(),
                usage: Some(usage),
            }),
        };
        self.send(ev);
    }
}
