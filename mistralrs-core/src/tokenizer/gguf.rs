//! A `tokenizers` tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.*`),
//! for both vocabularies llama.cpp writes: `gpt2` (byte-level BPE with
//! merges) and `llama` (SentencePiece pieces with scores).

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Value as Json};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Tokenizer};

use super::spm::{Spm, SpmOptions};
use super::TextTokenizer;
use crate::error::{Error, Result};
use crate::weights::gguf::{value_as_u64, GgufFile};

// llama.cpp's token types.
const TYPE_NORMAL: u64 = 1;
const TYPE_UNKNOWN: u64 = 2;
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;
const TYPE_UNUSED: u64 = 5;

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Tokens that end generation wherever a vocabulary has them, as llama.cpp
/// decides by their text: most files name only their EOS, not the chat
/// format's end of turn (Gemma's `<end_of_turn>`, ChatML's `<|im_end|>`),
/// which transformers ends on through generation_config.json.
const END_OF_GENERATION: [&str; 10] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// What the tokenizer metadata says besides the pieces themselves.
pub struct GgufVocab {
    pub tokenizer: TextTokenizer,
    pub bos: Option<String>,
    pub eos: Option<String>,
    /// EOS and end-of-turn ids.
    pub eos_ids: Vec<u32>,
    pub chat_template: Option<String>,
}

/// A string array of the metadata, borrowed.
fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    match file.get_strings(key) {
        Some(items) => items,
        None if file.get(key).is_some() => Err(Error::bad_file(&file.path, format!("`{key}` is not an array of strings"))),
        None => Err(Error::bad_file(&file.path, format!("missing metadata key `{key}`; pass tok_model_id or tokenizer_json"))),
    }
}

/// Pieces of these types are added tokens, matched whole before the model runs.
fn is_added(token_type: u64) -> bool {
    matches!(token_type, TYPE_CONTROL | TYPE_UNKNOWN | TYPE_USER_DEFINED)
}

fn numbers(file: &GgufFile, key: &str) -> Option<Vec<u64>> {
    match file.get(key) {
        Some(Value::Array(items)) => items.iter().map(value_as_u64).collect(),
        _ => None,
    }
}

fn scores(file: &GgufFile, key: &str) -> Option<Vec<f32>> {
    match file.get(key) {
        Some(Value::Array(items)) => items.iter().map(|v| v.to_f32().ok()).collect(),
        _ => None,
    }
}

fn bool_key(file: &GgufFile, key: &str) -> Option<bool> {
    file.get(key).and_then(|v| v.to_bool().ok())
}

pub fn from_gguf(file: &GgufFile) -> Result<GgufVocab> {
    let model = file
        .get_str("tokenizer.ggml.model")
        .ok_or_else(|| Error::bad_file(&file.path, "no tokenizer in the GGUF metadata (`tokenizer.ggml.model`); pass tok_model_id or tokenizer_json"))?
        .to_string();
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let types = numbers(file, "tokenizer.ggml.token_type").unwrap_or_else(|| vec![TYPE_NORMAL; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(Error::bad_file(&file.path, "`tokenizer.ggml.token_type` and `tokenizer.ggml.tokens` differ in length"));
    }
    // A special-token id outside the vocabulary is a corrupt file, not a
    // token to drop quietly (an EOS that never matches never ends a sequence).
    let id = |key: &str| -> Result<Option<u32>> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => match value_as_u64(v).filter(|&i| i < tokens.len() as u64) {
                Some(i) => Ok(Some(i as u32)),
                None => Err(Error::bad_file(
                    &file.path,
                    format!("metadata key `{key}` is {v:?}, not a token id of the {}-token vocabulary", tokens.len()),
                )),
            },
        }
    };
    let bos_id = id("tokenizer.ggml.bos_token_id")?;
    let eos_id = id("tokenizer.ggml.eos_token_id")?;
    let eot_id = id("tokenizer.ggml.eot_token_id")?;

    let tokenizer = match model.as_str() {
        "gpt2" => {
            let add_bos = bool_key(file, "tokenizer.ggml.add_bos_token").unwrap_or(false);
            gpt2_tokenizer(file, &tokens, &types, add_bos.then_some(bos_id).flatten())?
        }
        "llama" => {
            let add_bos = bool_key(file, "tokenizer.ggml.add_bos_token").unwrap_or(true);
            sentencepiece_tokenizer(file, &tokens, &types, add_bos.then_some(bos_id).flatten())?
        }
        other => {
            return Err(Error::bad_file(
                &file.path,
                format!("GGUF tokenizer model `{other}` is not supported (gpt2 and llama are); pass tokenizer_json"),
            ))
        }
    };

    let by_text = tokens.iter().enumerate().filter(|(_, t)| END_OF_GENERATION.contains(t)).map(|(i, _)| i as u32);
    let mut eos_ids: Vec<u32> = eos_id.into_iter().chain(eot_id).chain(by_text).collect();
    eos_ids.sort_unstable();
    eos_ids.dedup();
    Ok(GgufVocab {
        tokenizer: tokenizer
            .with_unused((0..types.len() as u32).filter(|&i| types[i as usize] == TYPE_UNUSED).collect())
            .with_special((0..types.len() as u32).filter(|&i| types[i as usize] == TYPE_CONTROL).collect()),
        bos: bos_id.map(|i| tokens[i as usize].to_string()),
        eos: eos_id.map(|i| tokens[i as usize].to_string()),
        eos_ids,
        chat_template: file.get_str("tokenizer.chat_template").map(str::to_string),
    })
}

fn split_regex(regex: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// Byte-level BPE on `tokenizers`; the pre-tokenizer follows
/// `tokenizer.ggml.pre`, the name llama.cpp gives each model family's
/// splitting rules. `bos`: added in front of every prompt.
fn gpt2_tokenizer(file: &GgufFile, tokens: &[&str], types: &[u64], bos: Option<u32>) -> Result<TextTokenizer> {
    let merges: Vec<(String, String)> = strings(file, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m, ""));
            (a.to_string(), b.to_string())
        })
        .collect();
    let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let (normalizer, pre_tokenizer) = match pre {
        "default" | "gpt-2" | "gpt2" => (Json::Null, byte_level(true)),
        "smollm" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        ),
        "llama3" | "llama-bpe" | "smaug-bpe" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [split_regex(LLAMA3_REGEX), byte_level(false)]}),
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split_regex(QWEN2_REGEX), byte_level(false)]}),
        ),
        other => {
            return Err(Error::bad_file(
                &file.path,
                format!(
                    "GGUF pre-tokenizer `{other}` is not supported (default, gpt-2, smollm, llama3, llama-bpe, qwen2 are); \
                     pass tok_model_id or tokenizer_json"
                ),
            ))
        }
    };
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    // Control, unknown and user-defined pieces are matched whole, before the
    // model runs; all but user-defined ones are special (skipped when decoding).
    let added: Vec<AddedToken> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| is_added(t))
        .map(|(i, &t)| {
            AddedToken::from(tokens[i].to_string(), t != TYPE_USER_DEFINED)
                .single_word(false)
                .lstrip(false)
                .rstrip(false)
                .normalized(false)
        })
        .collect();
    // The pieces are assembled with the `tokenizers` API rather than parsed
    // from one tokenizer.json text: for a 150k vocabulary with its merges
    // the JSON round trip took half a second of the load.
    let bad = |e: &dyn std::fmt::Display| Error::bad_file(&file.path, format!("cannot build a tokenizer from the GGUF vocabulary: {e}"));
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| bad(&e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    if !normalizer.is_null() {
        tokenizer.with_normalizer(Some(serde_json::from_value::<NormalizerWrapper>(normalizer).map_err(|e| bad(&e))?)).map_err(|e| bad(&e))?;
    }
    tokenizer.with_pre_tokenizer(Some(serde_json::from_value::<PreTokenizerWrapper>(pre_tokenizer).map_err(|e| bad(&e))?));
    tokenizer.with_decoder(Some(serde_json::from_value::<DecoderWrapper>(decoder).map_err(|e| bad(&e))?));
    if let Some(b) = bos {
        let bos = tokens[b as usize];
        let post = json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [b], "tokens": [bos]}}
        });
        tokenizer.with_post_processor(Some(serde_json::from_value::<PostProcessorWrapper>(post).map_err(|e| bad(&e))?));
    }
    tokenizer.add_tokens(added).map_err(|e| bad(&e))?;
    Ok(TextTokenizer::with_pieces(tokenizer, tokens.iter().zip(types).map(|(p, &t)| (*p, is_added(t)))))
}

/// SentencePiece pieces with scores, encoded by our own `Spm` (llama.cpp's
/// algorithm) and decoded as transformers' conversion does: `▁` is a space,
/// unknown characters fall back to byte pieces, and the text gets a dummy
/// `▁` prefix unless the file says otherwise. `bos`: added in front of
/// every prompt.
fn sentencepiece_tokenizer(file: &GgufFile, tokens: &[&str], types: &[u64], bos: Option<u32>) -> Result<TextTokenizer> {
    let scores = scores(file, "tokenizer.ggml.scores")
        .ok_or_else(|| Error::bad_file(&file.path, "missing metadata key `tokenizer.ggml.scores`"))?;
    if scores.len() != tokens.len() {
        return Err(Error::bad_file(
            &file.path,
            format!("`tokenizer.ggml.scores` has {} entries for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let ids_where = |keep: &dyn Fn(u64) -> bool| (0..types.len() as u32).filter(|&i| keep(types[i as usize])).collect::<Vec<u32>>();
    // Phi-3's added tokens swallow the whitespace after them (its
    // tokenizer.json says `rstrip`; a GGUF does not, so llama.cpp decides
    // by the model's name, and so do we), except these three.
    let name = file.get_str("general.name").unwrap_or_default().to_lowercase();
    let rstrip = if name.contains("phi-3") || name.contains("phi3") {
        let kept = ["<unk>", "<s>", "<|endoftext|>"];
        (0..types.len() as u32)
            .filter(|&i| (is_added(types[i as usize]) || tokens[i as usize] == "</s>") && !kept.contains(&tokens[i as usize]))
            .collect()
    } else {
        Vec::new()
    };
    let opts = SpmOptions {
        unk: types.iter().position(|&t| t == TYPE_UNKNOWN).map(|i| i as u32),
        add_prefix: bool_key(file, "tokenizer.ggml.add_space_prefix").unwrap_or(true),
        bos,
        added: ids_where(&is_added),
        rstrip,
    };
    // Control and unknown pieces are special: decoding skips them.
    let skipped = ids_where(&|t| is_added(t) && t != TYPE_USER_DEFINED);
    let pieces = tokens.iter().zip(types).map(|(p, &t)| (*p, is_added(t)));
    Ok(TextTokenizer::sentencepiece(Spm::new(tokens, scores, opts), pieces, skipped))
}
