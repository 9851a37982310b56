//! Finding the calls in a finished output. A call must be complete and
//! well-formed JSON naming a function; otherwise the whole output stays
//! text (a call cut off by `max_tokens`, or text that only looks like one).

use serde_json::Value;

use super::format::{ToolCallFormat, HERMES_CLOSE, HERMES_OPEN, LLAMA_PYTHON_TAG, MISTRAL_OPEN};
use super::ParsedCall;

/// The fence a bare JSON call may come in (Hermes).
pub const JSON_FENCE: &str = "```json";

/// An output split into its text and its calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The text before the calls (the whole output when there are none);
    /// None when a call came with no text but whitespace.
    pub content: Option<String>,
    pub calls: Vec<ParsedCall>,
}

impl Parsed {
    fn text(out: &str) -> Self {
        Self { content: Some(out.to_string()), calls: Vec::new() }
    }

    fn calls(before: &str, calls: Vec<ParsedCall>) -> Self {
        let content = (!before.trim().is_empty()).then(|| before.to_string());
        Self { content, calls }
    }
}

/// The calls `out` holds in `format`.
pub fn parse(format: ToolCallFormat, out: &str) -> Parsed {
    let found = match format {
        ToolCallFormat::Hermes => hermes(out),
        ToolCallFormat::Mistral => mistral(out),
        ToolCallFormat::Llama3Json => llama3(out),
        ToolCallFormat::Generic => return generic(out).unwrap_or_else(|| Parsed::text(out)),
    };
    match found {
        Some((before, calls)) if !calls.is_empty() => Parsed::calls(before, calls),
        _ => Parsed::text(out),
    }
}

/// `<tool_call>{...}</tool_call>` blocks, separated by whitespace only; or
/// bare JSON calls making up the whole answer (as Qwen2.5-Coder writes them).
fn hermes(out: &str) -> Option<(&str, Vec<ParsedCall>)> {
    let trimmed = out.trim();
    if trimmed.starts_with('{') {
        return json_calls(out, "arguments", "").map(|calls| ("", calls));
    }
    if let Some(fenced) = trimmed.strip_prefix(JSON_FENCE).and_then(|t| t.strip_suffix("```")) {
        return json_calls(fenced, "arguments", "").map(|calls| ("", calls));
    }
    let start = out.find(HERMES_OPEN)?;
    let mut rest = &out[start..];
    let mut calls = Vec::new();
    while let Some(body) = rest.strip_prefix(HERMES_OPEN) {
        let (json, after) = match body.find(HERMES_CLOSE) {
            Some(end) => (&body[..end], &body[end + HERMES_CLOSE.len()..]),
            // The last block may lack its closing tag (a model that stops at it).
            None => (body, ""),
        };
        calls.push(call_of(&serde_json::from_str(json.trim()).ok()?, "arguments")?);
        rest = after.trim_start();
    }
    rest.is_empty().then_some((&out[..start], calls))
}

/// `[TOOL_CALLS]` then a JSON list of calls.
fn mistral(out: &str) -> Option<(&str, Vec<ParsedCall>)> {
    let start = out.find(MISTRAL_OPEN)?;
    let list: Value = serde_json::from_str(out[start + MISTRAL_OPEN.len()..].trim()).ok()?;
    let calls = match list {
        Value::Array(items) => items.iter().map(|c| call_of(c, "arguments")).collect::<Option<Vec<_>>>()?,
        one @ Value::Object(_) => vec![call_of(&one, "arguments")?],
        _ => return None,
    };
    Some((&out[..start], calls))
}

/// The whole output is calls: JSON objects separated by `;` (and
/// whitespace), optionally after `<|python_tag|>`.
fn llama3(out: &str) -> Option<(&str, Vec<ParsedCall>)> {
    let body = out.trim_start();
    json_calls(body.strip_prefix(LLAMA_PYTHON_TAG).unwrap_or(body), "parameters", ";").map(|calls| ("", calls))
}

/// JSON call objects making up the whole of `text`, separated by
/// whitespace and `sep` (if not empty).
fn json_calls(text: &str, key: &str, sep: &str) -> Option<Vec<ParsedCall>> {
    let mut rest = text.trim_start();
    if !rest.starts_with('{') {
        return None;
    }
    let mut calls = Vec::new();
    loop {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        calls.push(call_of(&values.next()?.ok()?, key)?);
        let after = rest[values.byte_offset()..].trim_start();
        if after.is_empty() {
            return Some(calls);
        }
        rest = if sep.is_empty() { after } else { after.strip_prefix(sep)?.trim_start() };
    }
}

/// `{"tool_call": call}`, `{"tool_calls": [call, ...]}` or `{"response": text}`.
fn generic(out: &str) -> Option<Parsed> {
    let v: Value = serde_json::from_str(out.trim()).ok()?;
    if let Some(text) = v.get("response").and_then(Value::as_str) {
        return Some(Parsed { content: Some(text.to_string()), calls: Vec::new() });
    }
    let calls = match (v.get("tool_call"), v.get("tool_calls")) {
        (Some(c), _) => vec![call_of(c, "arguments")?],
        (None, Some(Value::Array(items))) => items.iter().map(|c| call_of(c, "arguments")).collect::<Option<_>>()?,
        _ => return None,
    };
    (!calls.is_empty()).then(|| Parsed { content: None, calls })
}

/// A call object: its `name` and its arguments under `key` (either key is
/// accepted, as models mix them up), as JSON text. Arguments given as a
/// JSON string are read as the object they spell.
fn call_of(v: &Value, key: &str) -> Option<ParsedCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let other = if key == "arguments" { "parameters" } else { "arguments" };
    let args = v.get(key).or_else(|| v.get(other)).cloned().unwrap_or_else(|| serde_json::json!({}));
    let args = match args {
        Value::String(s) => serde_json::from_str::<Value>(&s).ok().filter(Value::is_object)?,
        Value::Object(_) => args,
        _ => return None,
    };
    Some(ParsedCall { name, arguments: args.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> ParsedCall {
        ParsedCall { name: name.into(), arguments: args.into() }
    }

    #[test]
    fn hermes_blocks() {
        let out = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}}\n</tool_call>";
        let p = parse(ToolCallFormat::Hermes, out);
        assert_eq!(p.content.as_deref(), Some("Let me check.\n"));
        assert_eq!(p.calls, vec![call("get_weather", r#"{"city":"Paris"}"#), call("get_weather", r#"{"city":"Lyon"}"#)]);
        // No text: no content.
        let p = parse(ToolCallFormat::Hermes, "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>");
        assert_eq!((p.content, p.calls.len()), (None, 1));
        // Bare JSON calls, the whole answer (Qwen2.5-Coder's habit).
        let p = parse(ToolCallFormat::Hermes, "{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n{\"name\": \"g\", \"arguments\": {}}");
        assert_eq!((p.content, p.calls), (None, vec![call("f", r#"{"x":1}"#), call("g", "{}")]));
        let p = parse(ToolCallFormat::Hermes, "```json\n{\"name\": \"f\", \"arguments\": {}}\n```");
        assert_eq!((p.content, p.calls), (None, vec![call("f", "{}")]));
    }

    #[test]
    fn what_only_looks_like_a_call_stays_text() {
        for (f, out) in [
            (ToolCallFormat::Hermes, "Use <tool_call> tags like <tool_call>this</tool_call>."),
            (ToolCallFormat::Hermes, "<tool_call>\n{\"name\": \"f\", \"argu"),
            (ToolCallFormat::Hermes, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call> and then text"),
            (ToolCallFormat::Hermes, "{\"name\": \"f\", \"arguments\": {}}. Then some text."),
            (ToolCallFormat::Mistral, "[TOOL_CALLS] [{\"name\": \"f\""),
            (ToolCallFormat::Llama3Json, "{\"not\": \"a call\"}"),
            (ToolCallFormat::Llama3Json, "The answer is {\"name\": \"f\"}"),
            (ToolCallFormat::Generic, "{\"something\": 1}"),
            (ToolCallFormat::Generic, "plain text"),
        ] {
            let p = parse(f, out);
            assert_eq!((p.content.as_deref(), p.calls.len()), (Some(out), 0), "{f:?}: {out}");
        }
    }

    #[test]
    fn mistral_llama_and_generic() {
        let p = parse(ToolCallFormat::Mistral, "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {}}]");
        assert_eq!(p.calls, vec![call("a", r#"{"x":1}"#), call("b", "{}")]);
        let p = parse(ToolCallFormat::Llama3Json, "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}");
        assert_eq!(p.calls, vec![call("a", r#"{"x":1}"#), call("b", "{}")]);
        let p = parse(ToolCallFormat::Llama3Json, "{\"name\": \"a\", \"parameters\": {\"x\": 1}}");
        assert_eq!((p.content, p.calls), (None, vec![call("a", r#"{"x":1}"#)]));
        let p = parse(ToolCallFormat::Generic, "{\"tool_calls\": [{\"name\": \"a\", \"arguments\": {}}]}");
        assert_eq!(p.calls, vec![call("a", "{}")]);
        let p = parse(ToolCallFormat::Generic, "{\"response\": \"Hello\"}");
        assert_eq!((p.content.as_deref(), p.calls.len()), (Some("Hello"), 0));
    }
}
