//! The formats models write tool calls in, one per model family, and which
//! one a chat template implies.

use crate::error::{Error, Result};

/// How a model writes its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// Hermes / Qwen 2.5: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
    /// one block per call, after any text.
    Hermes,
    /// Llama 3.1 / 3.2 / 3.3: the whole answer is `{"name": ..., "parameters": {...}}`
    /// (optionally after `<|python_tag|>`), calls separated by `;`.
    Llama3Json,
    /// Mistral v0.3: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`, after any text.
    Mistral,
    /// Any template without tool support: the tools are described in a system
    /// message and the whole answer is one JSON object, `{"tool_call": {"name",
    /// "arguments"}}` (`{"tool_calls": [...]}` when several calls are allowed)
    /// or `{"response": "..."}`, as llama.cpp's generic format.
    Generic,
}

/// The names `Runner(tool_call_format=...)` and `serve --tool-call-parser` take.
pub const FORMAT_NAMES: [&str; 4] = ["hermes", "llama3_json", "mistral", "generic"];

impl ToolCallFormat {
    /// A format by name (vLLM's parser names; `qwen` and `llama3` as aliases).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "hermes" | "qwen" | "qwen2_5" => Self::Hermes,
            "llama3_json" | "llama3" | "llama" => Self::Llama3Json,
            "mistral" => Self::Mistral,
            "generic" => Self::Generic,
            other => {
                return Err(Error::invalid(format!(
                    "unknown tool call format `{other}` (expected one of {})",
                    FORMAT_NAMES.join(", ")
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hermes => "hermes",
            Self::Llama3Json => "llama3_json",
            Self::Mistral => "mistral",
            Self::Generic => "generic",
        }
    }

    /// The format a chat template teaches its model, from the markers it
    /// writes; the generic one for a template that never renders `tools`.
    pub fn detect(template: &str) -> Self {
        if template.contains("[TOOL_CALLS]") {
            Self::Mistral
        } else if template.contains("<tool_call>") {
            Self::Hermes
        } else if template.contains("<|python_tag|>")
            || (template.contains("<|start_header_id|>") && template.contains("tools"))
        {
            Self::Llama3Json
        } else {
            Self::Generic
        }
    }

    /// Whether the chat template itself renders the tools (the generic
    /// format describes them in a system message of its own).
    pub fn template_renders_tools(self) -> bool {
        self != Self::Generic
    }

    /// The text that opens a call where a call may follow other text.
    pub fn trigger(self) -> Option<&'static str> {
        match self {
            Self::Hermes => Some(HERMES_OPEN),
            Self::Mistral => Some(MISTRAL_OPEN),
            Self::Llama3Json | Self::Generic => None,
        }
    }

    /// The special tokens this format writes, which the output's text must
    /// keep for the calls to be found.
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            Self::Hermes => &[HERMES_OPEN, HERMES_CLOSE],
            Self::Mistral => &[MISTRAL_OPEN],
            Self::Llama3Json => &[LLAMA_PYTHON_TAG],
            Self::Generic => &[],
        }
    }

    /// The key holding a call's arguments as the model writes them.
    pub fn arguments_key(self) -> &'static str {
        match self {
            Self::Llama3Json => "parameters",
            _ => "arguments",
        }
    }
}

pub const HERMES_OPEN: &str = "<tool_call>";
pub const HERMES_CLOSE: &str = "</tool_call>";
pub const MISTRAL_OPEN: &str = "[TOOL_CALLS]";
pub const LLAMA_PYTHON_TAG: &str = "<|python_tag|>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_from_templates() {
        assert_eq!(ToolCallFormat::detect("{{ '<tool_call>\\n' }}"), ToolCallFormat::Hermes);
        assert_eq!(ToolCallFormat::detect("[AVAILABLE_TOOLS] [TOOL_CALLS]"), ToolCallFormat::Mistral);
        assert_eq!(
            ToolCallFormat::detect("<|start_header_id|>{% if tools %}{% endif %}"),
            ToolCallFormat::Llama3Json
        );
        assert_eq!(ToolCallFormat::detect("<|im_start|>{{ m['content'] }}"), ToolCallFormat::Generic);
        for n in FORMAT_NAMES {
            assert_eq!(ToolCallFormat::from_name(n).unwrap().name(), n);
        }
        assert!(ToolCallFormat::from_name("xml").is_err());
    }
}
