//! The conversation as the chat template takes it when the request has
//! tools (or earlier calls in its history).
//!
//! A template that knows tools gets them as the `tools` variable, as
//! transformers' `apply_chat_template(messages, tools=...)` passes them, and
//! the history's calls and results as they are. A template that does not
//! (SmolLM2's, Gemma's: the generic format, or whichever format the runner
//! was told to use) gets the tools described in a system message with how
//! to call them, and calls and results written into ordinary turns: the
//! calls as the text the model is asked to write, the results as user turns.

use serde_json::{json, Value};

use super::format::{ToolCallFormat, HERMES_CLOSE, HERMES_OPEN, MISTRAL_OPEN};
use super::{ToolChoice, ToolRequest};
use crate::chat_template::ChatMessage;

/// The messages to render, and the `tools` variable (None: no tools shown).
/// `template_knows_tools`: the template renders `tools` and calls itself.
/// With `tool_choice="none"` the tools are not shown, so the model answers
/// in text (vLLM's `--exclude-tools-when-tool-choice-none`).
pub fn prepare(
    format: ToolCallFormat,
    template_knows_tools: bool,
    req: Option<&ToolRequest>,
    messages: &[ChatMessage],
) -> (Vec<ChatMessage>, Option<Value>) {
    let shown = req.filter(|r| r.calls_allowed());
    if !template_knows_tools || format == ToolCallFormat::Generic {
        return (written_messages(format, shown, messages), None);
    }
    match format {
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

/// A template without tools: a system message describing the tools and how
/// to call them in `format`; earlier calls as that text in the assistant's
/// turn; tool results as a user turn (consecutive results in one).
fn written_messages(format: ToolCallFormat, req: Option<&ToolRequest>, messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let parallel = req.is_none_or(|r| r.parallel);
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let starts_with_system = messages.first().is_some_and(|m| m.role == "system");
    if let Some(r) = req {
        let text = instructions(format, r);
        match messages.first() {
            Some(first) if starts_with_system => {
                let mut m = first.clone();
                m.content = Some(format!("{}\n\n{text}", first.content.as_deref().unwrap_or_default()));
                out.push(m);
            }
            _ => out.push(ChatMessage::new("system", text)),
        }
    }
    let skip = usize::from(req.is_some() && starts_with_system);
    let mut last_was_result = false;
    for m in &messages[skip..] {
        match (m.role.as_str(), &m.tool_calls) {
            ("assistant", Some(calls)) if !calls.is_empty() => {
                let calls: Vec<(&str, &Value)> = calls.iter().map(|c| (c.function.name.as_str(), &c.function.arguments)).collect();
                let written = written_calls(format, &calls, parallel);
                let text = match m.content.as_deref().filter(|c| !c.trim().is_empty()) {
                    Some(c) if format != ToolCallFormat::Generic && format != ToolCallFormat::Llama3Json => format!("{c}\n{written}"),
                    _ => written,
                };
                out.push(ChatMessage::new("assistant", text));
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

/// Calls as the model writes them in `format`.
fn written_calls(format: ToolCallFormat, calls: &[(&str, &Value)], parallel: bool) -> String {
    let object = |name: &str, args: &Value| json!({ "name": name, format.arguments_key(): args });
    match format {
        ToolCallFormat::Generic if parallel || calls.len() > 1 => {
            json!({ "tool_calls": calls.iter().map(|(n, a)| object(n, a)).collect::<Vec<_>>() }).to_string()
        }
        ToolCallFormat::Generic => json!({ "tool_call": object(calls[0].0, calls[0].1) }).to_string(),
        ToolCallFormat::Hermes => calls
            .iter()
            .map(|(n, a)| format!("{HERMES_OPEN}\n{}\n{HERMES_CLOSE}", object(n, a)))
            .collect::<Vec<_>>()
            .join("\n"),
        ToolCallFormat::Mistral => {
            format!("{MISTRAL_OPEN} {}", Value::Array(calls.iter().map(|(n, a)| object(n, a)).collect()))
        }
        ToolCallFormat::Llama3Json => calls.iter().map(|(n, a)| object(n, a).to_string()).collect::<Vec<_>>().join("; "),
    }
}

/// What a template without tools tells the model: its tools and how to
/// call them (or answer) in `format`.
fn instructions(format: ToolCallFormat, req: &ToolRequest) -> String {
    let tools: Vec<Value> = req
        .callable()
        .map(|t| {
            let f = &t.raw["function"];
            let mut v = json!({ "name": t.name });
            if let Some(d) = f.get("description").and_then(Value::as_str) {
                v["description"] = json!(d);
            }
            v["parameters"] = t.parameters.clone();
            v
        })
        .collect();
    let key = format.arguments_key();
    let call = format!(r#"{{"name": "<tool name>", "{key}": {{<the arguments>}}}}"#);
    let how = match format {
        ToolCallFormat::Generic => {
            let calling = if req.parallel {
                format!("{{\"tool_calls\": [{call}, ...]}} to call one or more tools")
            } else {
                format!("{{\"tool_call\": {call}}} to call a tool")
            };
            match &req.choice {
                ToolChoice::Auto => format!(
                    "Respond with one JSON object: either {calling}, or {{\"response\": \"<your reply>\"}} to reply to the user directly."
                ),
                _ => format!("Respond with one JSON object, {calling}."),
            }
        }
        ToolCallFormat::Hermes => format!("To call a tool, write {HERMES_OPEN}\n{call}\n{HERMES_CLOSE}"),
        ToolCallFormat::Mistral => format!("To call tools, write {MISTRAL_OPEN} [{call}, ...]"),
        ToolCallFormat::Llama3Json => format!("To call a tool, respond with only {call}"),
    };
    let how = match &req.choice {
        ToolChoice::Named(n) => format!("{how}\nCall the tool `{n}`."),
        ToolChoice::Required if format != ToolCallFormat::Generic => format!("{how}\nYou must call a tool."),
        _ => how,
    };
    format!("You can call these tools, whose arguments are described by JSON Schema:\n{}\n\n{how}", Value::Array(tools))
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
        let (out, tools) = prepare(ToolCallFormat::Generic, false, Some(&req), &msgs);
        assert!(tools.is_none());
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(out[0].content.as_deref().unwrap().contains("\"description\":\"Does f.\""));
        assert_eq!(out[2].content.as_deref(), Some(r#"{"tool_calls":[{"name":"f","arguments":{"x":1}}]}"#));
        assert_eq!(out[3].content.as_deref().unwrap().lines().count(), 2);
        // The same history for a model told to write Hermes calls.
        let (out, _) = prepare(ToolCallFormat::Hermes, false, Some(&req), &msgs);
        assert_eq!(out[2].content.as_deref(), Some("<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call>"));
    }

    #[test]
    fn mistral_ids_are_nine_characters() {
        let mut m = ChatMessage::new("tool", "x".to_string());
        m.tool_call_id = Some("call_abcdefghijkl".into());
        assert_eq!(mistral_ids(&[m])[0].tool_call_id.as_deref(), Some("defghijkl"));
    }
}
