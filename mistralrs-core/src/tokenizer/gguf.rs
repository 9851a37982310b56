//! A `tokenizers` tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.*`),
//! for both vocabularies llama.cpp writes: `gpt2` (byte-level BPE with
//! merges) and `llama` (SentencePiece pieces with scores).

use rayon::prelude::*;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Value as Json};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Tokenizer};

use super::TextTokenizer;
use crate::error::{Error, Result};
use crate::weights::gguf::{value_as_u64, GgufFile};

// llama.cpp's token types.
const TYPE_NORMAL: u64 = 1;
const TYPE_UNKNOWN: u64 = 2;
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;
const TYPE_UNUSED: u64 = 5;
const TYPE_BYTE: u64 = 6;

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
    match file.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.to_string().map(String::as_str).map_err(|_| Error::bad_file(&file.path, format!("`{key}` holds a non-string"))))
            .collect(),
        Some(_) => Err(Error::bad_file(&file.path, format!("`{key}` is not an array"))),
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

    let ((json, bpe_model), default_add_bos) = match model.as_str() {
        "gpt2" => (gpt2_json(file)?, false),
        "llama" => (llama_json(file, &tokens, &types)?, true),
        other => {
            return Err(Error::bad_file(
                &file.path,
                format!("GGUF tokenizer model `{other}` is not supported (gpt2 and llama are); pass tokenizer_json"),
            ))
        }
    };
    let mut json = json;
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
    let add_bos = bool_key(file, "tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos);
    if let (true, Some(b)) = (add_bos, bos_id) {
        let bos = tokens[b as usize];
        json["post_processor"] = json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [b], "tokens": [bos]}}
        });
    }
    // The pieces are assembled with the `tokenizers` API rather than parsed
    // from one tokenizer.json text: for a 150k vocabulary with its merges
    // the JSON round trip took half a second of the load.
    let bad = |e: &dyn std::fmt::Display| Error::bad_file(&file.path, format!("cannot build a tokenizer from the GGUF vocabulary: {e}"));
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, bpe_model.merges)
        .fuse_unk(bpe_model.fuse_unk)
        .byte_fallback(bpe_model.byte_fallback);
    if let Some(unk) = bpe_model.unk {
        bpe = bpe.unk_token(unk);
    }
    let mut tokenizer = Tokenizer::new(bpe.build().map_err(|e| bad(&e))?);
    let part = |key: &str| json.get(key).filter(|v| !v.is_null()).cloned();
    if let Some(n) = part("normalizer") {
        tokenizer.with_normalizer(Some(serde_json::from_value::<NormalizerWrapper>(n).map_err(|e| bad(&e))?)).map_err(|e| bad(&e))?;
    }
    if let Some(p) = part("pre_tokenizer") {
        tokenizer.with_pre_tokenizer(Some(serde_json::from_value::<PreTokenizerWrapper>(p).map_err(|e| bad(&e))?));
    }
    if let Some(d) = part("decoder") {
        tokenizer.with_decoder(Some(serde_json::from_value::<DecoderWrapper>(d).map_err(|e| bad(&e))?));
    }
    if let Some(p) = part("post_processor") {
        tokenizer.with_post_processor(Some(serde_json::from_value::<PostProcessorWrapper>(p).map_err(|e| bad(&e))?));
    }
    tokenizer.add_tokens(added).map_err(|e| bad(&e))?;

    let by_text = tokens.iter().enumerate().filter(|(_, t)| END_OF_GENERATION.contains(t)).map(|(i, _)| i as u32);
    let mut eos_ids: Vec<u32> = eos_id.into_iter().chain(eot_id).chain(by_text).collect();
    eos_ids.sort_unstable();
    eos_ids.dedup();
    Ok(GgufVocab {
        tokenizer: TextTokenizer::with_pieces(tokenizer, tokens.iter().zip(&types).map(|(p, &t)| (*p, is_added(t))))
            .with_unused((0..types.len() as u32).filter(|&i| types[i as usize] == TYPE_UNUSED).collect())
            .with_special((0..types.len() as u32).filter(|&i| types[i as usize] == TYPE_CONTROL).collect()),
        bos: bos_id.map(|i| tokens[i as usize].to_string()),
        eos: eos_id.map(|i| tokens[i as usize].to_string()),
        eos_ids,
        chat_template: file.get_str("tokenizer.chat_template").map(str::to_string),
    })
}

/// The BPE model besides its vocabulary (the GGUF's token list).
struct BpeModel {
    merges: Vec<(String, String)>,
    unk: Option<String>,
    fuse_unk: bool,
    byte_fallback: bool,
}

fn split_regex(regex: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// Byte-level BPE; the pre-tokenizer follows `tokenizer.ggml.pre`, the name
/// llama.cpp gives each model family's splitting rules.
fn gpt2_json(file: &GgufFile) -> Result<(Json, BpeModel)> {
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
    let parts = json!({
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    });
    Ok((parts, BpeModel { merges, unk: None, fuse_unk: false, byte_fallback: false }))
}

/// SentencePiece BPE as transformers converts it: merges ranked by the score
/// of the piece they produce, byte fallback for unknown characters, and a
/// space prefix (`▁`) added by the normalizer.
fn llama_json(file: &GgufFile, tokens: &[&str], types: &[u64]) -> Result<(Json, BpeModel)> {
    let scores = scores(file, "tokenizer.ggml.scores")
        .ok_or_else(|| Error::bad_file(&file.path, "missing metadata key `tokenizer.ggml.scores`"))?;
    if scores.len() != tokens.len() {
        return Err(Error::bad_file(
            &file.path,
            format!("`tokenizer.ggml.scores` has {} entries for {} tokens", scores.len(), tokens.len()),
        ));
    }
    // 262k pieces (Gemma) give half a million merges: the derivation runs on
    // the thread pool with a fast hash, in piece order, and is sorted stably.
    let ids: ahash::AHashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let per_piece: Vec<Vec<(usize, usize, f32)>> = tokens
        .par_iter()
        .enumerate()
        .map(|(i, piece)| {
            if types[i] != TYPE_NORMAL && types[i] != TYPE_USER_DEFINED {
                return Vec::new();
            }
            let mut local: Vec<(usize, usize, f32)> = piece
                .char_indices()
                .skip(1)
                .filter_map(|(at, _)| {
                    let (l, r) = piece.split_at(at);
                    Some((*ids.get(l)?, *ids.get(r)?, scores[i]))
                })
                .collect();
            local.sort_by_key(|&(l, r, _)| (l, r));
            local
        })
        .collect();
    let mut merges: Vec<(usize, usize, f32)> = per_piece.into_iter().flatten().collect();
    // Stable: equal scores keep the piece order above.
    merges.par_sort_by(|a, b| b.2.total_cmp(&a.2));
    let merges: Vec<(String, String)> = merges.par_iter().map(|&(l, r, _)| (tokens[l].to_string(), tokens[r].to_string())).collect();
    let unk = types.iter().position(|&t| t == TYPE_UNKNOWN).map(|i| tokens[i].to_string());
    let byte_fallback = types.contains(&TYPE_BYTE);
    let add_prefix = bool_key(file, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let mut norm = vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
    let mut dec = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_prefix {
        norm.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
        dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let parts = json!({
        "normalizer": {"type": "Sequence", "normalizers": norm},
        "decoder": {"type": "Sequence", "decoders": dec},
    });
    Ok((parts, BpeModel { merges, unk, fuse_unk: true, byte_fallback }))
}
