//! Tool calling, as OpenAI's chat API has it: a request lists functions
//! (`tools`), says whether the model may, must or must not call them
//! (`tool_choice`), and gets back the calls the model wrote, parsed out of
//! its text (`message.tool_calls`).
//!
//! Each model family writes calls in its own format (`format`), which its
//! chat template describes to it; the same format says how the calls are
//! found in the output (`parse`, and `stream` while streaming) and what a
//! well-formed call is (`grammar`): once a call is opened, decoding is
//! constrained to calls of the listed tools whose arguments validate
//! against their schemas. Templates with no tool support get a generic
//! JSON format (`prompt`).

pub mod format;
pub mod grammar;
pub mod parse;
pub mod prompt;
pub mod stream;

use serde_json::Value;

pub use format::ToolCallFormat;

use crate::error::{Error, Result};

/// One function a request offers the model.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    /// The JSON Schema of its arguments (an object schema).
    pub parameters: Value,
    /// The tool as the request gave it (`{"type": "function", "function": {...}}`),
    /// which chat templates render.
    pub raw: Value,
}

/// Whether the model may call the tools (`Auto`), must not (`None`), must
/// call at least one (`Required`) or must call this one (`Named`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// A request's tools and what it allows the model to do with them.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// Several calls in one answer (OpenAI's `parallel_tool_calls`, default true).
    pub parallel: bool,
}

/// What the engine needs to find a request's calls in its output.
#[derive(Debug, Clone, Copy)]
pub struct ToolOutput {
    pub format: ToolCallFormat,
    /// The format's markers are special tokens that decoding would drop:
    /// the output's text keeps its special tokens.
    pub keep_special: bool,
}

/// A call the model wrote: the function's name and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// OpenAI's limit on a function name: letters, digits, `_` and `-`, at most 64.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ToolRequest {
    /// Checks `tools` (OpenAI's list of `{"type": "function", "function":
    /// {"name", "description"?, "parameters"?, "strict"?}}`) and `choice`
    /// (`"auto"`, `"none"`, `"required"` or `{"type": "function", "function":
    /// {"name"}}`). None when the request has no tools and its choice allows that.
    pub fn new(tools: Option<Value>, choice: Option<Value>, parallel: Option<bool>) -> Result<Option<Self>> {
        let tools = match tools {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.into_iter().enumerate().map(|(i, t)| tool_of(i, t)).collect::<Result<_>>()?,
            Some(_) => return Err(Error::invalid_field("tools", "tools must be a list of {\"type\": \"function\", \"function\": {...}} objects")),
        };
        for (i, t) in tools.iter().enumerate() {
            if tools[..i].iter().any(|u| u.name == t.name) {
                return Err(Error::invalid_field("tools", format!("tools: the function name `{}` is given twice", t.name)));
            }
        }
        let choice = choice_of(choice, &tools)?;
        if tools.is_empty() {
            return match choice {
                ToolChoice::Auto | ToolChoice::None => Ok(None),
                _ => Err(Error::invalid_field("tool_choice", "tool_choice requires tools, and the request has none")),
            };
        }
        Ok(Some(Self { tools, choice, parallel: parallel.unwrap_or(true) }))
    }

    /// Whether the model may write calls at all.
    pub fn calls_allowed(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The tools a call may name: all of them, or the one `tool_choice` names.
    pub fn callable(&self) -> impl Iterator<Item = &Tool> {
        self.tools.iter().filter(move |t| match &self.choice {
            ToolChoice::Named(n) => &t.name == n,
            _ => true,
        })
    }

    /// The tools as chat templates take them.
    pub fn template_value(&self) -> Value {
        Value::Array(self.tools.iter().map(|t| t.raw.clone()).collect())
    }
}

fn tool_of(i: usize, t: Value) -> Result<Tool> {
    let bad = |msg: String| Error::invalid_field("tools", format!("tools[{i}]: {msg}"));
    let kind = t.get("type").and_then(Value::as_str);
    if kind != Some("function") {
        return Err(bad(format!("`type` must be \"function\", got {}", t.get("type").map_or("nothing".into(), Value::to_string))));
    }
    let f = t.get("function").filter(|f| f.is_object()).ok_or_else(|| bad("has no `function` object".into()))?;
    let name = f.get("name").and_then(Value::as_str).ok_or_else(|| bad("`function.name` must be a string".into()))?;
    if !valid_name(name) {
        return Err(bad(format!(
            "the function name {name:?} is not allowed (letters, digits, `_` and `-`, at most 64 characters)"
        )));
    }
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(bad(format!("`function.parameters` of `{name}` must be a JSON Schema object"))),
    };
    Ok(Tool { name: name.to_string(), parameters, raw: t })
}

fn choice_of(choice: Option<Value>, tools: &[Tool]) -> Result<ToolChoice> {
    let bad = |msg: String| Error::invalid_field("tool_choice", msg);
    Ok(match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => return Err(bad(format!("tool_choice `{other}` is unknown (expected auto, none, required or a function)"))),
        },
        Some(v @ Value::Object(_)) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| bad("tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}".into()))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(bad(format!("tool_choice names the function `{name}`, which is not among the tools")));
            }
            ToolChoice::Named(name.to_string())
        }
        Some(_) => return Err(bad("tool_choice must be a string or a function object".into())),
    })
}

/// A fresh call id: OpenAI's `call_` and 24 letters and digits, or 9 of
/// them for Mistral's templates, which refuse any other length.
pub fn call_id(format: ToolCallFormat) -> String {
    use rand::Rng;
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let mut draw = |n: usize| -> String { (0..n).map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char).collect() };
    match format {
        ToolCallFormat::Mistral => draw(9),
        _ => format!("call_{}", draw(24)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn requests_are_checked() {
        assert!(ToolRequest::new(None, None, None).unwrap().is_none());
        assert!(ToolRequest::new(Some(json!([])), Some(json!("none")), None).unwrap().is_none());
        let r = ToolRequest::new(Some(weather()), Some(json!({"type": "function", "function": {"name": "get_weather"}})), Some(false))
            .unwrap()
            .unwrap();
        assert_eq!(r.choice, ToolChoice::Named("get_weather".into()));
        assert!(!r.parallel);
        for (tools, choice, want) in [
            (json!([{"type": "function", "function": {"name": "a b"}}]), json!("auto"), "not allowed"),
            (json!([{"type": "code"}]), json!("auto"), "`type` must be"),
            (json!([{"type": "function"}]), json!("auto"), "no `function`"),
            (json!([{"type": "function", "function": {"name": "f", "parameters": 3}}]), json!("auto"), "JSON Schema object"),
            (weather(), json!({"type": "function", "function": {"name": "other"}}), "not among the tools"),
            (weather(), json!("sometimes"), "unknown"),
            (json!([]), json!("required"), "requires tools"),
        ] {
            let e = ToolRequest::new(Some(tools), Some(choice), None).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn call_ids_have_the_formats_lengths() {
        assert_eq!(call_id(ToolCallFormat::Mistral).len(), 9);
        let id = call_id(ToolCallFormat::Hermes);
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
    }
}
