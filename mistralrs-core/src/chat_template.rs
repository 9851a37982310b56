//! Chat templates: the Jinja templates of `tokenizer_config.json` / GGUF
//! rendered with minijinja, set up the way transformers sets up jinja2
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`,
//! `strftime_now`).

use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{context, Environment, ErrorKind};

use crate::error::{Error, Result};

/// One turn of a conversation, as chat templates see it (transformers'
/// message dicts): keys that are None are left out, as transformers drops them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    /// None: an assistant turn that only calls tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The calls an assistant turn made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<MessageToolCall>>,
    /// A tool turn: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool turn: the function that answered (OpenAI's optional `name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self { role: role.to_string(), content: Some(content.into()), tool_calls: None, tool_call_id: None, name: None }
    }
}

/// A call in an assistant turn, as templates take it: the arguments as a
/// JSON value (the templates write them with `tojson`), not as JSON text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MessageToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: MessageFunction,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MessageFunction {
    pub name: String,
    pub arguments: serde_json::Value,
}

pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The template's text (what it teaches the model, e.g. its tool-call format).
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// A template given to the Runner: a `.json` file (`{"chat_template", "bos_token"?, "eos_token"?}`),
/// a `.jinja` file, or the template text itself.
pub struct TemplateOverride {
    pub template: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl TemplateOverride {
    pub fn parse(arg: &str) -> Result<Self> {
        let path = Path::new(arg);
        let looks_like_file = arg.ends_with(".json") || arg.ends_with(".jinja");
        if looks_like_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::not_found(path, format!("cannot read chat template: {e}")))?;
            if arg.ends_with(".json") {
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))?;
                let s = |k: &str| v.get(k).and_then(token_text);
                let template = s("chat_template")
                    .ok_or_else(|| Error::bad_file(path, "no `chat_template` string in the file"))?;
                return Ok(Self { template, bos_token: s("bos_token"), eos_token: s("eos_token") });
            }
            return Ok(Self { template: text, bos_token: None, eos_token: None });
        }
        Ok(Self { template: arg.to_string(), bos_token: None, eos_token: None })
    }
}

/// A special token as tokenizer_config.json writes it: a string or `{"content": ...}`.
pub fn token_text(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_string).or_else(|| v.get("content").and_then(|c| c.as_str()).map(str::to_string))
}

/// tokenizer_config.json's `chat_template`: a string, or a list of named
/// templates of which "default" is used.
pub fn template_from_config(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => items
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| items.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl ChatTemplate {
    pub fn new(template: String, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::runtime(format!("template syntax: {e}")))?;
        env.set_syntax(syntax);
        // A template is code from a file: it runs on a budget of work
        // (instructions, and the bytes of the strings and lists it builds)
        // and of output, so none can loop or grow for ever.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        // transformers replaces jinja2's `tojson` (which escapes HTML) with
        // json.dumps(ensure_ascii=False): templates print tools and arguments with it.
        env.add_filter("tojson", python_tojson);
        crate::template_namespaces::check(&template).map_err(Error::invalid)?;
        let source = template.clone();
        env.add_template_owned("chat", template)
            .map_err(|e| Error::invalid(format!("the chat template does not parse: {e}")))?;
        Ok(Self { env, source, bos_token, eos_token })
    }

    /// The prompt of `messages`; `tools` is the template's `tools` variable
    /// (None when the request has none, as transformers passes it).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool, tools: Option<&serde_json::Value>) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(Error::runtime)?;
        let mut out = Capped { buf: Vec::new(), overflowed: false };
        let ctx = context! {
            messages => Serde(messages),
            tools => Serde(tools),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        tmpl.render_captured_to(ctx, &mut out).map_err(|e| match e.kind() {
            ErrorKind::OutOfFuel => Error::invalid(format!(
                "the chat template ran past its budget ({TEMPLATE_FUEL} instructions, or {} MB of data built; \
                 a runaway loop?)",
                TEMPLATE_FUEL * 64 >> 20
            )),
            _ if out.overflowed => Error::invalid(format!(
                "the chat template's output passed {} MiB (a runaway loop?)",
                TEMPLATE_MAX_OUTPUT >> 20
            )),
            _ => Error::invalid(format!("chat template error: {e}")),
        })?;
        String::from_utf8(out.buf).map_err(|e| Error::invalid(format!("chat template output is not UTF-8: {e}")))
    }
}

/// minijinja's fuel per render: one per instruction, one per 64 bytes of
/// data a template builds (its strings, lists and maps). Real templates
/// take tens of thousands for long conversations; a runaway loop or a
/// string doubled in a loop stops after about a second and ~300 MB.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// Bytes a rendered prompt may have: far beyond any context window.
const TEMPLATE_MAX_OUTPUT: usize = 64 << 20;

/// A buffer that refuses to grow past `TEMPLATE_MAX_OUTPUT`.
struct Capped {
    buf: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > TEMPLATE_MAX_OUTPUT {
            self.overflowed = true;
            return Err(std::io::Error::other("chat template output too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, as transformers' `tojson`:
/// `", "` and `": "` between items (`","` before a newline when indenting),
/// non-ASCII as it is, nothing escaped for HTML.
fn python_tojson(value: &minijinja::Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let (item, key) = match separators.as_deref() {
        Some([i, k]) => (i.clone(), k.clone()),
        Some(_) => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let mut out = String::new();
    let style = JsonStyle { indent, item: &item, key: &key, ensure_ascii: ensure_ascii.unwrap_or(false), sort_keys: sort_keys.unwrap_or(false) };
    style.write(&json, 0, &mut out);
    Ok(minijinja::Value::from_safe_string(out))
}

struct JsonStyle<'a> {
    indent: Option<usize>,
    item: &'a str,
    key: &'a str,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl JsonStyle<'_> {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        let quoted = serde_json::to_string(s).unwrap_or_default();
        if !self.ensure_ascii {
            out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }

    fn write(&self, v: &serde_json::Value, depth: usize, out: &mut String) {
        use serde_json::Value;
        match v {
            Value::String(s) => self.string(s, out),
            Value::Array(items) if items.is_empty() => out.push_str("[]"),
            Value::Object(map) if map.is_empty() => out.push_str("{}"),
            Value::Array(items) => {
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item);
                    }
                    self.newline(depth + 1, out);
                    self.write(x, depth + 1, out);
                }
                self.newline(depth, out);
                out.push(']');
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, x)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item);
                    }
                    self.newline(depth + 1, out);
                    self.string(k, out);
                    out.push_str(self.key);
                    self.write(x, depth + 1, out);
                }
                self.newline(depth, out);
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
}

/// `strftime_now(fmt)` for the formats chat templates use (%d %m %Y %y %b %B %H %M %S %%), in UTC.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    const MONTHS: [&str; 12] = [
        "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
        "November", "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_like_transformers() {
        let t = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let ct = ChatTemplate::new(t.into(), "<s>".into(), "</s>".into()).unwrap();
        let msgs = [ChatMessage::new("user", "Hi")];
        assert_eq!(ct.render(&msgs, true, None).unwrap(), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = "{{ raise_exception('only user and assistant roles') }}";
        let ct = ChatTemplate::new(t.into(), String::new(), String::new()).unwrap();
        let err = ct.render(&[], true, None).unwrap_err().to_string();
        assert!(err.contains("only user and assistant roles"), "{err}");
    }

    #[test]
    fn python_string_methods_work() {
        let t = "{{ messages[0]['content'].strip().upper() }}";
        let ct = ChatTemplate::new(t.into(), String::new(), String::new()).unwrap();
        let msgs = [ChatMessage::new("user", "  hi ")];
        assert_eq!(ct.render(&msgs, false, None).unwrap(), "HI");
    }

    #[test]
    fn loop_controls_and_block_trimming() {
        // transformers renders with trim_blocks and lstrip_blocks, and templates use loop controls.
        let t = "{% for m in messages %}\n  {% if m['role'] == 'system' %}{% continue %}{% endif %}\n{{ m['content'] }}|{% if loop.index > 2 %}{% break %}{% endif %}\n{% endfor %}";
        let ct = ChatTemplate::new(t.into(), String::new(), String::new()).unwrap();
        let m = |r: &str, c: &str| ChatMessage::new(r, c);
        let msgs = [m("system", "S"), m("user", "a"), m("assistant", "b"), m("user", "c")];
        assert_eq!(ct.render(&msgs, false, None).unwrap(), "a|b|");
    }

    #[test]
    fn strftime_now_formats_a_date() {
        let ct = ChatTemplate::new("{{ strftime_now('%d %b %Y') }}".into(), String::new(), String::new()).unwrap();
        let out = ct.render(&[], false, None).unwrap();
        assert_eq!(out.len(), 11, "{out}");
        assert!(out[7..].parse::<u32>().unwrap() >= 2024, "{out}");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let ct = ChatTemplate::new("{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}".into(), String::new(), String::new()).unwrap();
        let tools = serde_json::json!([{"b": "é<&>'\n", "a": [1, 2.5, {}], "c": null}]);
        let want = "[{\"b\": \"é<&>'\\n\", \"a\": [1, 2.5, {}], \"c\": null}]|{\n  \"b\": \"é<&>'\\n\",\n  \"a\": [\n    1,\n    2.5,\n    {}\n  ],\n  \"c\": null\n}";
        assert_eq!(ct.render(&[], false, Some(&tools)).unwrap(), want);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }
}
