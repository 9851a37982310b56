//! The JSON and template text a model folder brings, chosen by the first
//! byte: 0 config.json, 1 tokenizer.json, 2 a chat template, 3
//! tokenizer_config.json; each beside the committed fixture's other files.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use mistralrs_core::chat_template::{ChatMessage, ChatTemplate};
use mistralrs_core::tokenizer::TextTokenizer;
use mistralrs_core::{Architecture, ModelSpec};

const FILES: [&str; 4] = ["config.json", "tokenizer.json", "model.safetensors", "tokenizer_config.json"];

fn folder_with(name: &str, text: &[u8]) -> std::path::PathBuf {
    let dir = common::scratch();
    for f in FILES {
        common::copy_fixture(&dir, f);
    }
    common::write(&dir, name, text);
    dir
}

fn messages() -> Vec<Vec<ChatMessage>> {
    let m = |role: &str, content: &str| ChatMessage::new(role, content);
    vec![
        vec![m("user", "Hello")],
        vec![m("system", "Be brief."), m("user", "Hi"), m("assistant", "Hello!"), m("user", "Bye")],
        vec![m("assistant", "")],
    ]
}

fuzz_target!(|data: &[u8]| {
    // tokenizer.json parsing: see TextTokenizer::from_file.
    common::tolerate_panics_in(&["tokenizers"]);
    let Some((&kind, text)) = data.split_first() else { return };
    match kind % 4 {
        0 => {
            // The architecture the config names, so every one of them is reached.
            let arch = serde_json::from_slice::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("model_type")?.as_str().and_then(Architecture::from_model_type))
                .unwrap_or(Architecture::Llama);
            let dir = folder_with("config.json", text);
            let spec = ModelSpec::Plain { model_id: Some(dir.display().to_string()), arch, tokenizer_json: None, adapters: None };
            common::load_and_generate(&spec);
        }
        1 => {
            let dir = folder_with("tokenizer.json", text);
            if let Ok(tok) = TextTokenizer::from_file(&dir.join("tokenizer.json")) {
                for s in ["Hello world", " <s> 12345 é 日本 🙂", ""] {
                    if let Ok(ids) = tok.encode_with_specials(s) {
                        let _ = tok.decode(&ids, true);
                    }
                    let _ = tok.encode_plain(s);
                }
                let n = tok.vocab_size().min(4096) as u32;
                let all: Vec<u32> = (0..n).collect();
                let _ = tok.decode(&all, false);
                for id in 0..n {
                    let _ = tok.token_bytes(id);
                }
            }
            common::load_and_generate(&common::plain_spec(&dir));
        }
        2 => {
            let Ok(t) = std::str::from_utf8(text) else { return };
            if let Ok(tpl) = ChatTemplate::new(t.to_string(), "<s>".into(), "</s>".into()) {
                for msgs in messages() {
                    let _ = tpl.render(&msgs, true, None);
                    let _ = tpl.render(&msgs, false, None);
                }
            }
        }
        _ => common::load_and_generate(&common::plain_spec(&folder_with("tokenizer_config.json", text))),
    }
});
