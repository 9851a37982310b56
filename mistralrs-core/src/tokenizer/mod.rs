//! Text <-> token ids, on the `tokenizers` library, plus what the engine
//! needs per token: its raw bytes (for logprobs).

pub mod gguf;

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};


pub struct TextTokenizer {
    inner: Tokenizer,
    /// Raw bytes of every token id, as OpenAI's logprobs `bytes` report them.
    token_bytes: Vec<Vec<u8>>,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| {
            if path.exists() {
                Error::bad_file(path, format!("cannot load tokenizer: {e}"))
            } else {
                Error::not_found(path, "tokenizer file does not exist")
            }
        })?;
        Ok(Self::new(inner))
    }

    pub fn new(inner: Tokenizer) -> Self {
        let byte_level = inner
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|s| s.contains("\"ByteLevel\""));
        let n = inner.get_vocab_size(true);
        let added = inner.get_added_tokens_decoder();
        let token_bytes = (0..n as u32)
            .map(|id| match (added.get(&id), inner.id_to_token(id)) {
                (Some(tok), _) => tok.content.as_bytes().to_vec(),
                (None, Some(piece)) if byte_level => byte_level_bytes(&piece),
                (None, Some(piece)) => sentencepiece_bytes(&piece),
                (None, None) => Vec::new(),
            })
            .collect();
        Self { inner, token_bytes }
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
        Ok(self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| Error::invalid(format!("cannot tokenize the prompt: {e}")))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.token_bytes.len()) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.token_bytes.len()
            )));
        }
        self.inner.decode(ids, skip_special).map_err(|e| Error::runtime(format!("cannot decode tokens: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], |b| b.as_slice())
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// GPT-2's byte-to-unicode table, inverted: the printable character each
/// byte was mapped to by the byte-level pre-tokenizer, back to the byte.
fn byte_level_bytes(piece: &str) -> Vec<u8> {
    piece.chars().map(|c| unicode_to_byte(c).unwrap_or(b'?')).collect()
}

fn unicode_to_byte(c: char) -> Option<u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let cp = c as u32;
    if cp < 256 && printable(cp) {
        return Some(cp as u8);
    }
    // The other bytes were assigned 256, 257, ... in increasing byte order.
    let mut next = 256u32;
    for b in 0u32..256 {
        if !printable(b) {
            if next == cp {
                return Some(b as u8);
            }
            next += 1;
        }
    }
    None
}

/// SentencePiece pieces: `▁` is a space and `<0xNN>` a raw byte.
fn sentencepiece_bytes(piece: &str) -> Vec<u8> {
    if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
        if let Ok(b) = u8::from_str_radix(&piece[3..5], 16) {
            return vec![b];
        }
    }
    piece.replace('\u{2581}', " ").into_bytes()
}
