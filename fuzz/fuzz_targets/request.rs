//! Requests as a caller can build them (every field the Python classes
//! pass to the engine, any value its type allows, grammars included), sent
//! to one tiny model that must keep serving after each.
#![no_main]

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mistralrs_core::chat_template::ChatMessage;
use mistralrs_core::grammar::Grammar;
use mistralrs_core::request::{GenerationRequest, PromptInput};
use mistralrs_core::sampler::SamplingParams;
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
                msgs.push(ChatMessage::new(&role, text(u)?));
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
        tools: None,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(req) = request(&mut u) {
        common::run(runner(), req);
    }
});
