//! The grammar a request with tools decodes under (llguidance's Lark
//! dialect, with each call's JSON as an embedded JSON Schema).
//!
//! - `required` or a named function: the output is calls and nothing else.
//! - `auto`: the model writes text freely, but once it opens a call (the
//!   format's trigger) the rest must be well-formed calls of the listed
//!   tools: the grammar is triggered lazily by the call's opening, as
//!   llama.cpp's lazy grammars are, so a call is never malformed.
//!
//! Every call is an object naming one tool (`{"const": name}`) with
//! arguments valid against that tool's `parameters`; several calls only
//! when `parallel_tool_calls` allows them.

use serde_json::{json, Value};

use super::format::{ToolCallFormat, HERMES_CLOSE, HERMES_OPEN, LLAMA_PYTHON_TAG, MISTRAL_OPEN};
use super::{ToolChoice, ToolRequest};
use crate::grammar::{compact_json_options, Grammar};

/// The grammar of `req`'s output in `format`, or None when it may not call
/// tools. `special(text)` is the id of the special token spelled `text`, if
/// the vocabulary has one: a grammar names such a token by id, since its
/// text is not text the model can write.
/// Text that opens with `{` (after any whitespace): the start of a bare JSON call.
const LEADING_BRACE: &str = r"[ \t\r\n]*\{(?s:.*)";

/// Text that opens with `{` or a ```` ```json ```` fence: a bare call, fenced or not.
const LEADING_CALL: &str = r"[ \t\r\n]*(\{|```json)(?s:.*)";

pub fn tool_grammar(req: &ToolRequest, format: ToolCallFormat, special: &dyn Fn(&str) -> Option<u32>) -> Option<Grammar> {
    if !req.calls_allowed() {
        return None;
    }
    let only_calls = req.choice != ToolChoice::Auto;
    let lit = |s: &str| special(s).map_or_else(|| lark_string(s), |id| format!("<[{id}]>"));
    let many = req.parallel;
    let lark = match format {
        ToolCallFormat::Generic => {
            return Some(Grammar::Lark(format!("start: %json {}", generic_schema(req, only_calls))));
        }
        ToolCallFormat::Hermes => {
            let body = format!("%json {}", calls_schema(req, format, ""));
            let close = lit(HERMES_CLOSE);
            let rest = format!(r#"call_rest: "\n" body "\n" {close}"#);
            let more = if many { format!("\nmore: \"\\n\" {} call_rest", lit(HERMES_OPEN)) } else { String::new() };
            let calls = if many { "call_rest more*" } else { "call_rest" };
            let start = opening(HERMES_OPEN, only_calls, calls, &lit, special);
            if only_calls {
                return Some(Grammar::Lark(format!("{start}\n{rest}{more}\nbody: {body}\n")));
            }
            // Under `auto`, a call may also be bare JSON opening the answer, in a ```json fence or
            // not (Qwen2.5-Coder writes both instead of the tags; llama.cpp's Hermes parser takes
            // them too). Text then must not open with either, nor the lexeme that ends in the tag.
            let start = start
                .replacen("start: TEXT", "start: bare_calls | fenced | TEXT", 1)
                .replace("TEXT: /(?s:.*)/", &format!("TEXT: /(?s:.*)/ & ~/{LEADING_CALL}/"))
                .replace("lead[lazy]: /(?s:.*)", &format!("lead[lazy]: ~/{LEADING_CALL}/ & /(?s:.*)"));
            let bare = if many { r#"bare_calls: body ("\n" body)*"# } else { "bare_calls: body" };
            let fenced = r#"fenced: "```json\n" bare_calls "\n```""#;
            format!("{start}\n{bare}\n{fenced}\n{rest}{more}\nbody: {body}\n")
        }
        ToolCallFormat::Mistral => {
            let body = format!("%json {}", calls_schema(req, format, ""));
            let list = if many { r#""[" body ("," " "? body)* "]""# } else { r#""[" body "]""# };
            let start = opening(MISTRAL_OPEN, only_calls, "\" \"? call_list", &lit, special);
            format!("{start}\ncall_list: {list}\nbody: {body}\n")
        }
        ToolCallFormat::Llama3Json => {
            let body = format!("%json {}", calls_schema(req, format, ""));
            let tag = special(LLAMA_PYTHON_TAG).map(|id| format!("<[{id}]>?"));
            let calls = if many { r#"body (";" " "? body)*"# } else { "body" };
            let calls = match tag {
                Some(t) => format!("{t} {calls}"),
                None => calls.to_string(),
            };
            if only_calls {
                format!("start: calls\ncalls: {calls}\nbody: {body}\n")
            } else {
                // Text is anything that does not open with `{` (a call): the
                // first character decides, as Llama's own parsers read it.
                format!(
                    "start: TEXT | calls\nTEXT: /(?s:.*)/ & ~/{LEADING_BRACE}/\ncalls: {calls}\nbody: {body}\n"
                )
            }
        }
    };
    Some(Grammar::Lark(lark))
}

/// The `start` rule of a format whose calls open with `trigger` (after any
/// text, under `auto`). A trigger that is a special token is a token of its
/// own that no text regex can match; a trigger that is text ends a lazy
/// lexeme (the shortest text that ends with it), which text without it
/// cannot reach.
fn opening(trigger: &str, only_calls: bool, calls: &str, lit: &dyn Fn(&str) -> String, special: &dyn Fn(&str) -> Option<u32>) -> String {
    let open = lit(trigger);
    if only_calls {
        return format!("start: {open} {calls}");
    }
    match special(trigger) {
        Some(_) => format!("start: TEXT ({open} {calls})?\nTEXT: /(?s:.*)/"),
        None => {
            let t = regex_escape(trigger);
            format!("start: TEXT | lead {calls}\nTEXT: /(?s:.*)/ & ~/(?s:.*){t}(?s:.*)/\nlead[lazy]: /(?s:.*){t}/")
        }
    }
}

/// One call as JSON: an object with the tool's name and its arguments, for
/// each callable tool. `path` is where the schema sits in the grammar's
/// JSON document, so that `$ref`s inside a tool's parameters still resolve.
fn calls_schema(req: &ToolRequest, format: ToolCallFormat, path: &str) -> Value {
    let key = format.arguments_key();
    let alternatives: Vec<Value> = req
        .callable()
        .enumerate()
        .map(|(i, t)| {
            let params = closed_objects(&rebase_refs(&t.parameters, &format!("{path}/anyOf/{i}/properties/{key}")));
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, key: params},
                "required": ["name", key],
                "additionalProperties": false,
            })
        })
        .collect();
    let mut schema = json!({ "anyOf": alternatives });
    if path.is_empty() {
        schema["x-guidance"] = compact_json_options();
    }
    schema
}

/// The generic format's answer: `{"tool_call": call}` (`{"tool_calls":
/// [call, ...]}` when parallel calls are allowed), or `{"response": text}`
/// unless a call is required.
fn generic_schema(req: &ToolRequest, only_calls: bool) -> Value {
    let (key, inner_path) = if req.parallel { ("tool_calls", "/anyOf/0/properties/tool_calls/items") } else { ("tool_call", "/anyOf/0/properties/tool_call") };
    let call = calls_schema(req, ToolCallFormat::Generic, inner_path);
    let value = if req.parallel { json!({"type": "array", "items": call, "minItems": 1}) } else { call };
    let mut alternatives = vec![json!({
        "type": "object", "properties": {key: value}, "required": [key], "additionalProperties": false,
    })];
    if !only_calls {
        alternatives.push(json!({
            "type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
            "additionalProperties": false,
        }));
    }
    json!({ "anyOf": alternatives, "x-guidance": compact_json_options() })
}

/// `schema` with its local `$ref`s (`#...`) pointing below `base`, where it
/// is embedded: a tool's `{"$ref": "#/$defs/x"}` means its own `$defs`.
fn rebase_refs(schema: &Value, base: &str) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("$ref", Value::String(r)) if r.starts_with('#') => Value::String(format!("#{base}{}", &r[1..])),
                        _ => rebase_refs(v, base),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| rebase_refs(v, base)).collect()),
        other => other.clone(),
    }
}

/// `schema` with `"additionalProperties": false` on each object schema that
/// lists `properties` and says nothing about others, as llama.cpp's grammars
/// read such schemas (and OpenAI's strict mode requires): a call's arguments
/// are the ones the tool declares, not keys a small model invents.
fn closed_objects(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out: serde_json::Map<String, Value> = map
                .iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        // Maps of names to schemas: each schema, not the map, is closed.
                        ("properties" | "$defs" | "definitions" | "patternProperties", Value::Object(named)) => {
                            Value::Object(named.iter().map(|(n, s)| (n.clone(), closed_objects(s))).collect())
                        }
                        _ => closed_objects(v),
                    };
                    (k.clone(), v)
                })
                .collect();
            let open = ["additionalProperties", "patternProperties", "unevaluatedProperties"].iter().all(|k| !map.contains_key(*k));
            if map.get("properties").is_some_and(Value::is_object) && open {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(closed_objects).collect()),
        other => other.clone(),
    }
}

/// `s` as a Lark string literal (JSON's string syntax, which Lark's shares).
fn lark_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$/-".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::ToolRequest;

    fn req(choice: &str, parallel: bool) -> ToolRequest {
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/unit"}},
                "required": ["city"], "$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}}}}},
            {"type": "function", "function": {"name": "get_time"}},
        ]);
        ToolRequest::new(Some(tools), Some(json!(choice)), Some(parallel)).unwrap().unwrap()
    }

    /// A vocabulary of single characters, the format's markers as whole
    /// tokens, and the end token: outputs are checked character by character.
    fn chars(specials: &[&str]) -> (std::sync::Arc<crate::tokenizer::TextTokenizer>, u32, Vec<u32>) {
        use tokenizers::models::wordlevel::WordLevel;
        let mut words: Vec<String> = (0x20u8..0x7f).map(|b| (b as char).to_string()).collect();
        words.push("\n".into());
        let first_special = words.len() as u32;
        words.extend(specials.iter().map(|s| s.to_string()));
        words.push("</s>".into());
        words.push("[UNK]".into());
        let eos = words.len() as u32 - 2;
        let vocab = words.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
        let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().unwrap();
        let special: Vec<u32> = (first_special..words.len() as u32).collect();
        // Text the grammar forces is tokenized one character at a time.
        let mut inner = tokenizers::Tokenizer::new(model);
        let split = tokenizers::pre_tokenizers::split::Split::new(
            tokenizers::pre_tokenizers::split::SplitPattern::Regex("(?s).".into()),
            tokenizers::SplitDelimiterBehavior::Isolated,
            false,
        )
        .unwrap();
        inner.with_pre_tokenizer(Some(split));
        let tok = crate::tokenizer::TextTokenizer::new(inner).with_special(special.clone());
        (std::sync::Arc::new(tok), eos, special)
    }

    /// Whether the grammar takes `out` (marker tokens for the markers, one
    /// token per character otherwise) and then allows the end.
    fn takes(g: &Grammar, out: &[&str], vocab: &(std::sync::Arc<crate::tokenizer::TextTokenizer>, u32, Vec<u32>)) -> bool {
        let compiler = crate::grammar::GrammarCompiler::new(vocab.0.clone(), vocab.1).unwrap();
        let mut m = compiler.compile(g).unwrap();
        for piece in out {
            let ids: Vec<u32> = match vocab.0.token_id(piece) {
                Some(id) if piece.len() > 1 => vec![id],
                _ => piece.chars().map(|c| vocab.0.token_id(&c.to_string()).unwrap()).collect(),
            };
            for id in ids {
                // A complete grammar (stopped) takes nothing more.
                let Ok(mask) = m.compute_mask() else { return false };
                if !mask.is_allowed(id) || m.consume_token(id).is_err() {
                    return false;
                }
            }
        }
        m.compute_mask().is_ok_and(|mask| mask.is_allowed(vocab.1)) || m.is_stopped()
    }

    #[test]
    fn the_grammars_take_calls_and_text_and_refuse_malformed_calls() {
        let call = r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#;
        let bad_name = r#"{"name": "get_wether", "arguments": {"city": "Paris"}}"#;
        let bad_args = r#"{"name": "get_weather", "arguments": {"town": "Paris"}}"#;
        // Hermes, its markers as text (the lazy lexeme) and as special tokens.
        for specials in [&[][..], &[HERMES_OPEN, HERMES_CLOSE][..]] {
            let vocab = chars(specials);
            let special = |s: &str| specials.contains(&s).then(|| vocab.0.token_id(s)).flatten();
            let auto = tool_grammar(&req("auto", true), ToolCallFormat::Hermes, &special).unwrap();
            let required = tool_grammar(&req("required", false), ToolCallFormat::Hermes, &special).unwrap();
            let text_then_call = ["Sure: ", HERMES_OPEN, "\n", call, "\n", HERMES_CLOSE];
            assert!(takes(&auto, &["Just text, no call."], &vocab));
            assert!(takes(&auto, &[call], &vocab), "a bare JSON call");
            assert!(takes(&auto, &["```json\n", call, "\n```"], &vocab), "a fenced JSON call");
            assert!(takes(&auto, &["```python\nprint(1)\n```"], &vocab), "code is text");
            assert!(!takes(&auto, &[bad_name], &vocab), "a bare JSON call of no tool");
            assert!(!takes(&auto, &["{ some braces }"], &vocab), "text opening with a brace is a call");
            assert!(takes(&auto, &text_then_call, &vocab), "{specials:?}");
            let two = [HERMES_OPEN, "\n", call, "\n", HERMES_CLOSE, "\n", HERMES_OPEN, "\n", call, "\n", HERMES_CLOSE];
            assert!(takes(&auto, &two, &vocab), "parallel calls");
            assert!(!takes(&required, &two, &vocab), "one call without parallel");
            assert!(!takes(&auto, &["Sure: ", HERMES_OPEN, "\n", bad_name], &vocab));
            assert!(!takes(&auto, &["Sure: ", HERMES_OPEN, "\n", bad_args], &vocab));
            assert!(!takes(&required, &["Sure"], &vocab));
            assert!(takes(&required, &[HERMES_OPEN, "\n", call, "\n", HERMES_CLOSE], &vocab));
        }
        let vocab = chars(&[]);
        let none = |_: &str| None;
        let llama = tool_grammar(&req("auto", true), ToolCallFormat::Llama3Json, &none).unwrap();
        let llama_call = r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#;
        assert!(takes(&llama, &["The weather is fine."], &vocab));
        assert!(takes(&llama, &[llama_call, "; ", llama_call], &vocab));
        assert!(!takes(&llama, &[call], &vocab), "Llama 3 calls hold `parameters`");
        let mistral = tool_grammar(&req("auto", false), ToolCallFormat::Mistral, &none).unwrap();
        assert!(takes(&mistral, &["[TOOL_CALLS] [", call, "]"], &vocab));
        assert!(!takes(&mistral, &["[TOOL_CALLS] [", call, ", ", call, "]"], &vocab), "one call without parallel");
        let generic = tool_grammar(&req("auto", true), ToolCallFormat::Generic, &none).unwrap();
        assert!(takes(&generic, &[r#"{"response": "Hello"}"#], &vocab));
        assert!(takes(&generic, &[r#"{"tool_calls": ["#, call, "]}"], &vocab));
        assert!(!takes(&generic, &["Hello"], &vocab));
        let generic_required = tool_grammar(&req("required", true), ToolCallFormat::Generic, &none).unwrap();
        assert!(!takes(&generic_required, &[r#"{"response": "Hello"}"#], &vocab));
        // The $ref into the tool's own $defs resolves: an enum value is taken, another is not.
        let with_unit = r#"{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}"#;
        let bad_unit = r#"{"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}"#;
        assert!(takes(&generic, &[r#"{"tool_calls": ["#, with_unit, "]}"], &vocab));
        assert!(!takes(&generic, &[r#"{"tool_calls": ["#, bad_unit, "]}"], &vocab));
    }

    #[test]
    fn refs_follow_the_parameters_into_the_grammar() {
        let s = calls_schema(&req("auto", true), ToolCallFormat::Hermes, "");
        assert_eq!(s["anyOf"][0]["properties"]["arguments"]["properties"]["unit"]["$ref"], "#/anyOf/0/properties/arguments/$defs/unit");
        assert_eq!(s["anyOf"][1]["properties"]["name"]["const"], "get_time");
    }

    #[test]
    fn none_has_no_grammar_and_the_others_do() {
        let no_special = |_: &str| None;
        assert!(tool_grammar(&req("none", true), ToolCallFormat::Hermes, &no_special).is_none());
        for f in [ToolCallFormat::Hermes, ToolCallFormat::Mistral, ToolCallFormat::Llama3Json, ToolCallFormat::Generic] {
            for c in ["auto", "required"] {
                assert!(matches!(tool_grammar(&req(c, true), f, &no_special), Some(Grammar::Lark(_))));
            }
        }
        let with_token = |s: &str| (s == HERMES_OPEN).then_some(7);
        let Some(Grammar::Lark(g)) = tool_grammar(&req("auto", false), ToolCallFormat::Hermes, &with_token) else { panic!() };
        assert!(g.contains("<[7]>") && !g.contains("more"), "{g}");
    }
}
