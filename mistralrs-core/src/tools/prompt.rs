//! The conversation as the chat template takes it when the request has
//! tools (or earlier calls in its history).
//!
//! A template that knows tools gets them as the `tools` variable, as
//! transformers' `apply_chat_template(messages, tools=...)` passes them, and
//! the history's calls and results as they are. A template that does not
//! (the generic format) gets the tools described in a system message, and
//! calls and results written into ordinary turns as the JSON the model is
//! asked to answer with.

use serde_json::{json, Value};

use super::format::ToolCallFormat;
use super::{ToolChoice, ToolRequest};
use crate::chat_template::ChatMessage;

/// The messages to render, and the `tools` variable (None: no tools shown).
/// With `tool_choice="none"` the tools are not shown, so the model answers
/// in text (vLLM's `--exclude-tools-when-tool-choice-none`).
pub fn prepare(format: ToolCallFormat, req: Option<&ToolRequest>, messages: &[ChatMessage]) -> (Vec<ChatMessage>, Option<Value>) {
    let shown = req.filter(|r| r.calls_allowed());
    match format {
        ToolCallFormat::Generic => (generic_messages(shown, messages), None),
        ToolCallFormat::Mistral => (mistral_ids(messages), shown.map(ToolRequest::template_value)),
        _ => (messages.to_vec(), shown.map(ToolRequest::template_value)),
    }
}

/// Mistral's templates take call ids of exactly 9 letters and digits: other
/// ids (OpenAI's `call_...`) are cut to their last 9, as vLLM does.
fn mistral_ids(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let nine = |id: &str| -> String {
        let alnum: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
        alnum[alnum.len().saturating_sub(9)..].to_string()
    };
    messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(calls) = &mut m.tool_calls {
                for c in calls {
                    c.id = nine(&c.id);
                }
            }
            m.tool_call_id = m.tool_call_id.as_deref().map(nine);
            m
        })
        .collect()
}

/// The generic format: a system message describing the tools and the
/// answer's JSON; earlier calls as that JSON in the assistant's turn; tool
/// results as a user turn (consecutive results in one).
fn generic_messages(req: Option<&ToolRequest>, messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let parallel = req.is_none_or(|r| r.parallel);
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    if let Some(r) = req {
        let text = generic_instructions(r);
        match messages.first() {
            Some(first) if first.role == "system" => {
                let mut m = first.clone();
                m.content = Some(format!("{}\n\n{text}", first.content.as_deref().unwrap_or_default()));
                out.push(m);
            }
            _ => out.push(ChatMessage::new("system", text)),
        }
    }
    let skip = usize::from(req.is_some() && messages.first().is_some_and(|m| m.role == "system"));
    let mut last_was_result = false;
    for m in &messages[skip..] {
        match (m.role.as_str(), &m.tool_calls) {
            ("assistant", Some(calls)) if !calls.is_empty() => {
                let calls: Vec<Value> =
                    calls.iter().map(|c| json!({"name": c.function.name, "arguments": c.function.arguments})).collect();
                let answer = if parallel || calls.len() > 1 {
                    json!({ "tool_calls": calls })
                } else {
                    json!({ "tool_call": calls[0] })
                };
                out.push(ChatMessage::new("assistant", answer.to_string()));
                last_was_result = false;
            }
            ("tool", _) => {
                let mut result = json!({ "content": m.content.as_deref().unwrap_or_default() });
                if let Some(id) = &m.tool_call_id {
                    result["tool_call_id"] = json!(id);
                }
                if let Some(name) = &m.name {
                    result["name"] = json!(name);
                }
                let text = json!({ "tool_response": result }).to_string();
                match out.last_mut() {
                    Some(prev) if last_was_result => {
                        prev.content = Some(format!("{}\n{text}", prev.content.as_deref().unwrap_or_default()));
                    }
                    _ => out.push(ChatMessage::new("user", text)),
                }
                last_was_result = true;
            }
            _ => {
                out.push(m.clone());
                last_was_result = false;
            }
        }
    }
    out
}

/// What the generic format tells the model: its tools and how to answer.
fn generic_instructions(req: &ToolRequest) -> String {
    let tools: Vec<Value> = req
        .callable()
        .map(|t| {
            let f = &t.raw["function"];
            let mut v = json!({ "name": t.name, "parameters": t.parameters });
            if let Some(d) = f.get("description").and_then(Value::as_str) {
                v["description"] = json!(d);
            }
            v
        })
        .collect();
    let call = r#"{"name": "<tool name>", "arguments": {<the arguments>}}"#;
    let calling = if req.parallel {
        format!("{{\"tool_calls\": [{call}, ...]}} to call one or more tools")
    } else {
        format!("{{\"tool_call\": {call}}} to call a tool")
    };
    let how = match &req.choice {
        ToolChoice::Auto => format!("Respond with one JSON object: either {calling}, or {{\"response\": \"<your reply>\"}} to reply to the user directly."),
        ToolChoice::Named(n) => format!("Respond with one JSON object, {calling}: call `{n}`."),
        _ => format!("Respond with one JSON object, {calling}."),
    };
    format!(
        "You can call these tools, whose arguments are described by JSON Schema:\n{}\n\n{how}",
        Value::Array(tools)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat_template::{MessageFunction, MessageToolCall};

    #[test]
    fn generic_history_becomes_ordinary_turns() {
        let tools = json!([{"type": "function", "function": {"name": "f", "description": "Does f."}}]);
        let req = ToolRequest::new(Some(tools), None, Some(true)).unwrap().unwrap();
        let mut call = ChatMessage::new("assistant", String::new());
        call.content = None;
        call.tool_calls = Some(vec![MessageToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: MessageFunction { name: "f".into(), arguments: json!({"x": 1}) },
        }]);
        let mut result = ChatMessage::new("tool", "42".to_string());
        result.tool_call_id = Some("call_1".into());
        let msgs = vec![ChatMessage::new("user", "Hi".to_string()), call, result.clone(), result];
        let (out, tools) = prepare(ToolCallFormat::Generic, Some(&req), &msgs);
        assert!(tools.is_none());
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(out[0].content.as_deref().unwrap().contains("\"description\":\"Does f.\""));
        assert_eq!(out[2].content.as_deref(), Some(r#"{"tool_calls":[{"name":"f","arguments":{"x":1}}]}"#));
        assert_eq!(out[3].content.as_deref().unwrap().lines().count(), 2);
    }

    #[test]
    fn mistral_ids_are_nine_characters() {
        let mut m = ChatMessage::new("tool", "x".to_string());
        m.tool_call_id = Some("call_abcdefghijkl".into());
        assert_eq!(mistral_ids(&[m])[0].tool_call_id.as_deref(), Some("defghijkl"));
    }
}
