//! Text <-> token ids, on the `tokenizers` library (tokenizer.json and
//! byte-level GGUF vocabularies) or on our own SentencePiece encoder (GGUF
//! `llama` vocabularies), plus what the engine needs per token: its raw
//! bytes (for logprobs).

pub mod gguf;
pub mod spm;

use std::path::Path;

use tokenizers::Tokenizer;

use spm::parse_byte_piece;

use crate::error::{Error, Result};


/// A call into `tokenizers`, whose encoders and decoders panic (rather than
/// fail) on some states a malformed tokenizer.json leaves, such as a
/// post-processor naming a special token it does not define: such a panic
/// is the call's error, not a crash of the request or the process.
fn guarded<T>(f: impl FnOnce() -> tokenizers::Result<T>) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(p) => Err(format!("the tokenizer is malformed ({})", crate::error::panic_message(p.as_ref()))),
    }
}

/// What turns text into ids and back.
enum Codec {
    Hf(Tokenizer),
    Spm(spm::Spm),
}

pub struct TextTokenizer {
    codec: Codec,
    /// Raw bytes of every token id, as OpenAI's logprobs `bytes` report them:
    /// token `i` is `bytes[ends[i - 1]..ends[i]]` (one buffer, not a
    /// vector per token, for 150k-token vocabularies).
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Ids that are in the vocabulary only to pad it (llama.cpp's UNUSED
    /// type): never sampled.
    unused: Vec<u32>,
    /// Control tokens (BOS, EOS, chat markers), sorted: never text a grammar may spell.
    special: Vec<u32>,
    /// SentencePiece's byte-fallback pieces (`<0xE4>`), sorted: a decoder
    /// turns a run of them into text together, all or nothing.
    byte_pieces: Vec<u32>,
    /// Added tokens that decoding skips (those `tokenizers` marks special), sorted.
    skipped: Vec<u32>,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if path.exists() {
                Error::bad_file(path, format!("cannot read tokenizer: {e}"))
            } else {
                Error::not_found(path, "tokenizer file does not exist")
            }
        })?;
        // The JSON is checked first: `tokenizers` panics instead of failing
        // on some malformed files (its decoder and normalizer deserializers
        // `expect`), and no syntax error should get that far.
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| Error::bad_file(path, format!("cannot load tokenizer: invalid JSON: {e}")))?;
        // Well-formed JSON with a malformed part can still reach those
        // `expect`s; the library's panic is this file's error.
        let parsed = std::panic::catch_unwind(|| text.parse::<Tokenizer>()).map_err(|p| {
            Error::bad_file(path, format!("cannot load tokenizer: malformed ({})", crate::error::panic_message(p.as_ref())))
        })?;
        let inner = parsed.map_err(|e| Error::bad_file(path, format!("cannot load tokenizer: {e}")))?;
        // A post-processor that names a special token it does not define
        // parses, then fails every prompt: found here, it is the file's error.
        guarded(|| inner.encode_fast("a", true))
            .map_err(|e| Error::bad_file(path, format!("cannot load tokenizer: encoding a probe failed: {e}")))?;
        // Without tokens every prompt encodes to nothing and every answer is "": the file's error.
        if inner.get_vocab_size(true) == 0 {
            return Err(Error::bad_file(path, "cannot load tokenizer: its vocabulary is empty"));
        }
        Ok(Self::new(inner))
    }

    /// Token pieces are looked up in the tokenizer's model by id.
    pub fn new(inner: Tokenizer) -> Self {
        let n = inner.get_vocab_size(true) as u32;
        let added = inner.get_added_tokens_decoder();
        let mut special: Vec<u32> = added.iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        special.sort_unstable();
        let pieces: Vec<(String, bool)> = (0..n)
            .map(|id| match added.get(&id) {
                Some(tok) => (tok.content.clone(), true),
                None => (inner.id_to_token(id).unwrap_or_default(), false),
            })
            .collect();
        Self::with_pieces(inner, pieces.iter().map(|(p, a)| (p.as_str(), *a))).with_special(special)
    }

    /// `pieces`: every id's piece in id order, and whether it is an added
    /// token (whose piece is its text) rather than a model piece.
    pub fn with_pieces<'a>(inner: Tokenizer, pieces: impl Iterator<Item = (&'a str, bool)>) -> Self {
        let byte_level = inner
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|s| s.contains("\"ByteLevel\""));
        let mut skipped: Vec<u32> =
            inner.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        skipped.sort_unstable();
        Self::from_parts(Codec::Hf(inner), pieces, byte_level, skipped)
    }

    /// A SentencePiece vocabulary; `pieces` as for `with_pieces`, and
    /// `skipped` (sorted) the added tokens decoding drops.
    pub fn sentencepiece<'a>(spm: spm::Spm, pieces: impl Iterator<Item = (&'a str, bool)>, skipped: Vec<u32>) -> Self {
        Self::from_parts(Codec::Spm(spm), pieces, false, skipped)
    }

    fn from_parts<'a>(codec: Codec, pieces: impl Iterator<Item = (&'a str, bool)>, byte_level: bool, skipped: Vec<u32>) -> Self {
        let (mut bytes, mut ends, mut byte_pieces) = (Vec::new(), Vec::new(), Vec::new());
        for (id, (piece, added)) in pieces.enumerate() {
            if !added && !byte_level && parse_byte_piece(piece).is_some() {
                byte_pieces.push(id as u32);
            }
            match (added, byte_level) {
                (true, _) => bytes.extend_from_slice(piece.as_bytes()),
                (false, true) => bytes.extend(piece.chars().map(|c| unicode_to_byte(c).unwrap_or(b'?'))),
                (false, false) => push_sentencepiece_bytes(piece, &mut bytes),
            }
            ends.push(bytes.len());
        }
        debug_assert!(skipped.is_sorted());
        Self { codec, bytes, ends, unused: Vec::new(), special: Vec::new(), byte_pieces, skipped }
    }

    /// Tokens of a raw prompt with the tokenizer's own special-token rules
    /// (its post-processor adds BOS where the model's tokenizer does).
    pub fn encode_with_specials(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, true)
    }

    /// Tokens of an already-templated prompt: nothing is added.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, false)
    }

    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        match &self.codec {
            Codec::Hf(inner) => {
                let encoded = guarded(|| inner.encode_fast(text, add_special))
                    .map_err(|e| Error::invalid(format!("cannot tokenize the prompt: {e}")))?;
                Ok(encoded.get_ids().to_vec())
            }
            Codec::Spm(spm) => Ok(spm.encode(text, add_special)),
        }
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.ends.len()) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.ends.len()
            )));
        }
        match &self.codec {
            Codec::Hf(inner) => guarded(|| inner.decode(ids, skip_special))
                .map_err(|e| Error::runtime(format!("cannot decode tokens: {e}"))),
            Codec::Spm(spm) => Ok(spm.decode(ids, |id| skip_special && self.is_skipped_in_text(id))),
        }
    }

    /// The same tokenizer with `ids` marked as never to be sampled.
    pub fn with_unused(self, unused: Vec<u32>) -> Self {
        Self { unused, ..self }
    }

    /// The same tokenizer with `ids` (sorted) as its control tokens.
    pub fn with_special(self, special: Vec<u32>) -> Self {
        debug_assert!(special.is_sorted());
        Self { special, ..self }
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.binary_search(&id).is_ok()
    }

    /// Whether `id` is a byte-fallback piece (`<0xE4>`), whose text depends
    /// on the byte pieces next to it.
    pub fn is_byte_piece(&self, id: u32) -> bool {
        self.byte_pieces.binary_search(&id).is_ok()
    }

    /// Whether `decode(.., skip_special = true)` drops `id`: the tokens on
    /// either side of it are then decoded as neighbours.
    pub fn is_skipped_in_text(&self, id: u32) -> bool {
        self.skipped.binary_search(&id).is_ok()
    }

    /// Hides what can never be a real next token from the sampler: ids past
    /// the vocabulary (an output head padded beyond it, as Qwen2's 151,936
    /// rows for 151,665 tokens) and padding entries within it.
    pub fn mask_unsampleable(&self, logits: &mut [f32]) {
        if logits.len() > self.ends.len() {
            logits[self.ends.len()..].fill(f32::NEG_INFINITY);
        }
        for &id in &self.unused {
            if let Some(x) = logits.get_mut(id as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.ends.len()
    }

    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match self.ends.get(i) {
            Some(&end) => &self.bytes[if i == 0 { 0 } else { self.ends[i - 1] }..end],
            None => &[],
        }
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.codec {
            Codec::Hf(inner) => inner.token_to_id(token),
            Codec::Spm(spm) => spm.id(token.as_bytes()),
        }
    }

    pub fn token_str(&self, id: u32) -> Option<String> {
        match &self.codec {
            Codec::Hf(inner) => inner.id_to_token(id),
            Codec::Spm(spm) => ((id as usize) < spm.vocab_size()).then(|| spm.piece(id).to_string()),
        }
    }
}

/// GPT-2's byte-to-unicode table, inverted: the printable character each
/// byte was mapped to by the byte-level pre-tokenizer, back to the byte.
fn unicode_to_byte(c: char) -> Option<u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    // The other bytes were assigned 256, 257, ... in increasing byte order.
    static OTHERS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let cp = c as u32;
    if cp < 256 {
        return printable(cp).then_some(cp as u8);
    }
    let others = OTHERS.get_or_init(|| (0u32..256).filter(|&b| !printable(b)).map(|b| b as u8).collect());
    others.get((cp - 256) as usize).copied()
}

/// SentencePiece pieces: `▁` is a space and `<0xNN>` a raw byte.
fn push_sentencepiece_bytes(piece: &str, out: &mut Vec<u8>) {
    if let Some(b) = parse_byte_piece(piece) {
        out.push(b);
        return;
    }
    for (i, part) in piece.split('\u{2581}').enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(part.as_bytes());
    }
}
