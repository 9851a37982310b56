//! Requests as a caller can build them (every field the Python classes
//! pass to the engine, any value its type allows, grammars, tools, tool
//! choices and tool-call / tool-result messages included), sent to one tiny
//! model that must keep serving after each.
#![no_main]

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mistralrs_core::chat_template::{ChatMessage, MessageFunction, MessageToolCall};
use mistralrs_core::grammar::Grammar;
use mistralrs_core::request::{GenerationRequest, PromptInput};
use mistralrs_core::sampler::SamplingParams;
use mistralrs_core::tools::ToolRequest;
use serde_json::{json, Value};
use mistralrs_core::Runner;

fn runner() -> &'static Runner {
    static RUNNER: OnceLock<Runner> = OnceLock::new();
    RUNNER.get_or_init(|| common::small_runner(&common::plain_spec(&common::fixture())).expect("the fixture loads"))
}

fn text(u: &mut Unstructured) -> Result<String> {
    // Mostly short strings, now and then one of a few KB.
    let s: String = u.arbitrary()?;
    Ok(if u.ratio(1, 16)? { s.repeat(64) } else { s })
}

fn prompt(u: &mut Unstructured) -> Result<PromptInput> {
    Ok(match u.int_in_range(0..=3)? {
        0 => {
            let n = u.int_in_range(0..=4)?;
            let mut msgs = Vec::with_capacity(n);
            for _ in 0..n {
                let role = match u.int_in_range(0..=3)? {
                    0 => "system".to_string(),
                    1 => "user".to_string(),
                    2 => "assistant".to_string(),
                    _ => u.arbitrary()?,
                };
                let mut m = ChatMessage::new(&role, text(u)?);
                match u.int_in_range(0..=5)? {
                    // An assistant turn that called tools (content absent or not).
                    0 => {
                        m.role = "assistant".into();
                        if u.arbitrary()? {
                            m.content = None;
                        }
                        let calls = (0..u.int_in_range(0..=2)?)
                            .map(|_| {
                                Ok(MessageToolCall {
                                    id: text(u)?,
                                    kind: if u.arbitrary()? { "function".into() } else { text(u)? },
                                    function: MessageFunction { name: text(u)?, arguments: json_value(u)? },
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        m.tool_calls = Some(calls);
                    }
                    // A tool's result, answering a call by id.
                    1 => {
                        m.role = "tool".into();
                        m.tool_call_id = if u.arbitrary()? { Some(text(u)?) } else { None };
                        m.name = if u.arbitrary()? { Some(text(u)?) } else { None };
                    }
                    _ => {}
                }
                msgs.push(m);
            }
            PromptInput::Messages(msgs)
        }
        1 => PromptInput::Templated(text(u)?),
        2 => PromptInput::Completion(text(u)?),
        _ => PromptInput::Tokens(u.arbitrary()?),
    })
}

fn grammar(u: &mut Unstructured) -> Result<Option<Grammar>> {
    Ok(match u.int_in_range(0..=5)? {
        0 => Some(Grammar::Regex(text(u)?)),
        1 => Some(Grammar::Lark(text(u)?)),
        2 => Some(Grammar::JsonSchema(serde_json::from_str(&text(u)?).unwrap_or(serde_json::Value::Null))),
        3 => Some(Grammar::JsonSchema(serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}}))),
        _ => None,
    })
}

/// Any JSON a client could send: parsed from arbitrary text, or a few
/// shapes that reach further (objects, schemas).
fn json_value(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => serde_json::from_str(&text(u)?).unwrap_or(Value::Null),
        1 => json!({"type": "object", "properties": {text(u)?: {"type": "string"}}, "required": [text(u)?]}),
        2 => json!({ text(u)?: text(u)? }),
        _ => Value::String(text(u)?),
    })
}

/// `tools`, `tool_choice` and `parallel_tool_calls` as a client sends them,
/// through the same checks the Python classes and the server use; None when
/// the request has none, or when the checks refuse them (which is their
/// answer to a bad list, and exercised all the same).
fn tools(u: &mut Unstructured) -> Result<Option<ToolRequest>> {
    if u.ratio(1, 2)? {
        return Ok(None);
    }
    let list = match u.int_in_range(0..=2)? {
        0 => json_value(u)?,
        _ => Value::Array(
            (0..u.int_in_range(0..=3)?)
                .map(|_| {
                    let name = if u.arbitrary()? { format!("f{}", u.int_in_range(0..=3)?) } else { text(u)? };
                    let params = if u.arbitrary()? {
                        json!({"type": "object", "properties": {"x": {"type": "integer"}, "s": {"type": "string"}}, "required": ["x"]})
                    } else {
                        json_value(u)?
                    };
                    Ok(json!({"type": "function", "function": {"name": name, "description": text(u)?, "parameters": params}}))
                })
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    let choice = match u.int_in_range(0..=5)? {
        0 => None,
        1 => Some(json!("auto")),
        2 => Some(json!("none")),
        3 => Some(json!("required")),
        4 => Some(json!({"type": "function", "function": {"name": format!("f{}", u.int_in_range(0..=3)?)}})),
        _ => Some(json_value(u)?),
    };
    Ok(ToolRequest::new(Some(list), choice, u.arbitrary()?).ok().flatten())
}

fn sampling(u: &mut Unstructured) -> Result<SamplingParams> {
    let mut logit_bias = HashMap::new();
    for _ in 0..u.int_in_range(0..=3)? {
        logit_bias.insert(u.arbitrary()?, u.arbitrary()?);
    }
    Ok(SamplingParams {
        temperature: u.arbitrary()?,
        top_k: u.arbitrary()?,
        top_p: u.arbitrary()?,
        min_p: u.arbitrary()?,
        repetition_penalty: u.arbitrary()?,
        frequency_penalty: u.arbitrary()?,
        presence_penalty: u.arbitrary()?,
        logit_bias,
        top_logprobs: u.arbitrary()?,
    })
}

fn request(u: &mut Unstructured) -> Result<GenerationRequest> {
    // Long generations only make the run slow: what matters is the range
    // checks, so a large max_tokens stays large and a middling one shrinks.
    let max_tokens = match u.arbitrary::<Option<i64>>()? {
        Some(m) if (7..100_000).contains(&m) => Some(m % 7),
        None => Some(4),
        other => other,
    };
    let n_choices = u.arbitrary::<u8>()? as usize;
    let best_of = n_choices + u.int_in_range(0..=3)? as usize;
    let n_stops = u.int_in_range(0..=2)?;
    Ok(GenerationRequest {
        model: "fuzz".into(),
        prompt: prompt(u)?,
        sampling: sampling(u)?,
        max_tokens,
        n_choices,
        best_of: if u.ratio(1, 4)? { u.arbitrary::<u8>()? as usize } else { best_of },
        stop_seqs: (0..n_stops).map(|_| text(u)).collect::<Result<_>>()?,
        ignore_eos: u.arbitrary()?,
        stream: u.arbitrary()?,
        echo_prompt: u.arbitrary()?,
        seed: u.arbitrary()?,
        logprobs: u.arbitrary()?,
        adapters: if u.ratio(1, 8)? { Some(u.arbitrary()?) } else { None },
        grammar: grammar(u)?,
        tools: tools(u)?,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(req) = request(&mut u) {
        common::run(runner(), req);
    }
});
