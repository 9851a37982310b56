//! Streaming with tools: text is streamed as it comes, but nothing from the
//! opening of a call on, so that a call reaches the client as tool-call
//! deltas, never as text. When the output ends, `parse` decides: the calls
//! it finds are sent as deltas, and if there are none the held text is sent
//! as text. Streamed text always adds up to the non-streamed `content`.

use super::format::{ToolCallFormat, LLAMA_PYTHON_TAG};
use super::parse::JSON_FENCE;

/// One choice's streamed output, as far as it is known.
#[derive(Debug)]
pub struct ToolStream {
    format: ToolCallFormat,
    /// The output so far.
    text: String,
    /// Bytes of `text` streamed.
    sent: usize,
}

impl ToolStream {
    pub fn new(format: ToolCallFormat) -> Self {
        Self { format, text: String::new(), sent: 0 }
    }

    /// Takes the next piece of the output; returns the text that can be
    /// streamed now (possibly empty).
    pub fn push(&mut self, piece: &str) -> String {
        self.text.push_str(piece);
        let safe = self.safe_end();
        // Text that is only whitespace so far waits: if a call follows, the
        // answer has no text at all.
        if safe <= self.sent || self.text[..safe].trim().is_empty() {
            return String::new();
        }
        let out = self.text[self.sent..safe].to_string();
        self.sent = safe;
        out
    }

    /// The whole output, once it has ended.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What is left to stream of `content` (the text `parse` found), given
    /// what was streamed already (always a prefix of it).
    pub fn rest_of(&self, content: Option<&str>) -> String {
        content.and_then(|c| c.get(self.sent..)).unwrap_or_default().to_string()
    }

    /// How far the text can be streamed: up to where a call may be opening.
    fn safe_end(&self) -> usize {
        let t = &self.text;
        match self.format {
            // The whole answer is one JSON object: nothing is text until it is parsed.
            ToolCallFormat::Generic => 0,
            ToolCallFormat::Llama3Json => {
                let lead = t.trim_start();
                if lead.is_empty() || lead.starts_with('{') || is_prefix_either_way(lead, LLAMA_PYTHON_TAG) {
                    0
                } else {
                    t.len()
                }
            }
            // A Hermes answer opening with `{` or a ```json fence may be a bare JSON call.
            ToolCallFormat::Hermes if t.trim_start().starts_with('{') || is_prefix_either_way(t.trim_start(), JSON_FENCE) => 0,
            ToolCallFormat::Hermes | ToolCallFormat::Mistral => {
                let trigger = self.format.trigger().unwrap_or_default();
                if let Some(at) = t.find(trigger) {
                    return at;
                }
                // Hold a tail that could be the start of the trigger.
                let held = (1..trigger.len().min(t.len() + 1))
                    .rev()
                    .find(|&n| t.is_char_boundary(t.len() - n) && trigger.starts_with(&t[t.len() - n..]))
                    .unwrap_or(0);
                t.len() - held
            }
        }
    }
}

/// Whether one of `a` and `b` starts with the other.
fn is_prefix_either_way(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::parse::parse;

    /// Streams `out` in pieces of `step` bytes (on char boundaries) and
    /// checks the streamed text against the parsed content.
    fn stream(format: ToolCallFormat, out: &str, step: usize) -> String {
        let mut s = ToolStream::new(format);
        let mut streamed = String::new();
        let mut i = 0;
        while i < out.len() {
            let mut j = (i + step).min(out.len());
            while !out.is_char_boundary(j) {
                j += 1;
            }
            streamed += &s.push(&out[i..j]);
            i = j;
        }
        let parsed = parse(format, s.text());
        streamed += &s.rest_of(parsed.content.as_deref());
        assert_eq!(Some(streamed.as_str()).filter(|s| !s.is_empty()), parsed.content.as_deref(), "{format:?} {out:?} step {step}");
        streamed
    }

    #[test]
    fn streamed_text_adds_up_to_the_content() {
        let outs = [
            (ToolCallFormat::Hermes, "Sure, é. <tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"),
            (ToolCallFormat::Hermes, "\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"),
            (ToolCallFormat::Hermes, "Just text, with a < and <tool but no call."),
            (ToolCallFormat::Hermes, "Broken <tool_call>{\"na"),
            (ToolCallFormat::Hermes, "{\"name\": \"f\", \"arguments\": {}}"),
            (ToolCallFormat::Hermes, " {not a call} then text"),
            (ToolCallFormat::Hermes, "```json\n{\"name\": \"f\", \"arguments\": {}}\n```"),
            (ToolCallFormat::Hermes, "``inline`` code"),
            (ToolCallFormat::Mistral, "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {}}]"),
            (ToolCallFormat::Mistral, "Text [TOOL"),
            (ToolCallFormat::Llama3Json, "{\"name\": \"f\", \"parameters\": {}}"),
            (ToolCallFormat::Llama3Json, "  Hello {there}"),
            (ToolCallFormat::Generic, "{\"response\": \"Hi!\"}"),
            (ToolCallFormat::Generic, "{\"tool_call\": {\"name\": \"f\", \"arguments\": {}}}"),
        ];
        for (f, out) in outs {
            for step in [1, 2, 3, 7, 100] {
                stream(f, out, step);
            }
        }
        assert_eq!(stream(ToolCallFormat::Hermes, outs[0].1, 1), "Sure, é. ");
        assert_eq!(stream(ToolCallFormat::Hermes, outs[2].1, 1), outs[2].1);
    }
}
