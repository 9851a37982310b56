//! Incremental detokenization: the text of a sequence's generated tokens,
//! kept up to date token by token without decoding the whole completion
//! again, and the stop-string search over it.

use crate::error::Result;
use crate::tokenizer::TextTokenizer;

/// The text of a sequence's generated tokens, built incrementally as vLLM
/// and text-generation-inference do: each new token decodes a short window
/// that starts a few tokens back (`prefix..`), and the new text is what that
/// window adds to the decoding of its already-read part (`prefix..read`).
/// The window's context keeps decoders that look at neighbouring tokens
/// (SentencePiece's leading space, byte-level merges) exact. A window that
/// ends inside a character (multi-byte tokens decode to U+FFFD until
/// complete) or in a byte-fallback piece (a run of them decodes together, to
/// text or to one U+FFFD per byte) stays provisional: its text is there to be
/// searched for stop strings, but the window is decoded again with the next
/// token. So
/// the text always equals a one-shot decode of the whole completion (as
/// transformers' `decode`), without decoding the completion on every token.
#[derive(Default)]
pub struct TextOut {
    /// The decoded text, stop strings cut off.
    text: String,
    /// Bytes of `text` already streamed.
    emitted: usize,
    /// Bytes of `text` that no later token can change: what precedes the
    /// window's provisional tail.
    committed: usize,
    /// The window: generated tokens from `prefix` on are decoded for each
    /// new token; those before `read` are in the committed text.
    prefix: usize,
    read: usize,
    /// The window ends in a run of byte-fallback pieces, which a later piece
    /// may turn from text into U+FFFDs: its text is not streamed yet.
    in_byte_run: bool,
    /// Special tokens stay in the text (a tool-call format's markers, which
    /// decoding would otherwise drop).
    keep_special: bool,
}

impl TextOut {
    /// The text of a sequence whose special tokens are part of it.
    pub fn keeping_special_tokens() -> Self {
        Self { keep_special: true, ..Self::default() }
    }

    /// An empty text with this one's settings (a sibling choice's).
    pub fn empty_like(&self) -> Self {
        Self { keep_special: self.keep_special, ..Self::default() }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Bytes of the text no later token can change (stop strings there were searched for).
    pub fn committed(&self) -> usize {
        self.committed
    }

    /// Brings the text up to date with the generated tokens.
    pub fn extend(&mut self, generated: &[u32], tok: &TextTokenizer) -> Result<()> {
        let window = &generated[self.prefix..];
        let skip = !self.keep_special;
        let read = tok.decode(&window[..self.read - self.prefix], skip)?;
        let full = tok.decode(window, skip)?;
        // The window's text extends its read part's; where a decoder rewrote
        // the boundary instead, the committed text stays and the rest follows.
        let mut common = read.bytes().zip(full.bytes()).take_while(|(a, b)| a == b).count();
        while !full.is_char_boundary(common) {
            common -= 1;
        }
        self.text.truncate(self.committed);
        self.text.push_str(&full[common..]);
        // A window that ends inside a character, or in a byte-fallback piece
        // (whose run the next piece may extend or invalidate; tokens that
        // decoding skips do not end a run), stays open.
        let last_text = window.iter().rev().find(|&&t| !(skip && tok.is_skipped_in_text(t)));
        self.in_byte_run = last_text.is_some_and(|&t| tok.is_byte_piece(t));
        let open = full.ends_with('\u{FFFD}') || self.in_byte_run;
        if full.len() > read.len() && !open {
            self.committed = self.text.len();
            self.prefix = self.read;
            self.read = generated.len();
        }
        Ok(())
    }

    /// Cuts the text at a stop string.
    pub fn cut(&mut self, at: usize) {
        self.text.truncate(at);
        self.committed = self.committed.min(at);
    }

    /// Text not yet streamed. While running, a tail that could start a stop
    /// string, that ends in an undecodable character (U+FFFD) or that an open
    /// byte-fallback run may still rewrite, waits.
    pub fn take_emittable(&mut self, finished: bool, stops: &[String]) -> String {
        let text = &self.text;
        let mut end = text.len();
        if !finished {
            if self.in_byte_run {
                end = end.min(self.committed);
            }
            end -= partial_stop_len(&text[..end], stops);
            while text[..end].ends_with('\u{FFFD}') {
                end -= '\u{FFFD}'.len_utf8();
            }
        }
        // Text already streamed is never taken back.
        if end <= self.emitted || !text.is_char_boundary(self.emitted) {
            return String::new();
        }
        let out = text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }
}

/// Byte offset of the earliest stop string in `text`, looking only where a
/// match could involve text added after `from`.
pub fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            let mut start = from.saturating_sub(s.len() - 1);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            text[start..].find(s.as_str()).map(|i| start + i)
        })
        .min()
}

/// Length of the longest tail of `text` that is a proper prefix of a stop string.
fn partial_stop_len(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| (1..s.len()).rev().filter(|&k| s.is_char_boundary(k)).find(|&k| text.ends_with(&s[..k])))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use crate::tokenizer::TextTokenizer;

    /// Incremental detokenization equals `tokenizers`' one-shot decode of the
    /// whole completion after every token, and what it streams adds up to it,
    /// on random token sequences that crowd byte-fallback pieces, multi-byte
    /// pieces and skipped special tokens together: SentencePiece with byte
    /// fallback (phi3, gemma), byte-level BPE (qwen2).
    #[test]
    fn incremental_text_equals_one_shot_decode() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        for name in ["phi3-tiny", "gemma-tiny", "qwen2-tiny", "llama-tiny"] {
            let tok = TextTokenizer::from_file(&fixtures.join(name).join("tokenizer.json")).expect("fixture tokenizer");
            let n = tok.vocab_size() as u32;
            // Byte pieces, specials and multi-byte pieces are drawn often.
            let odd: Vec<u32> = (0..n)
                .filter(|&t| tok.is_byte_piece(t) || tok.is_skipped_in_text(t) || tok.token_bytes(t).iter().any(|&b| b >= 0x80))
                .collect();
            let mut rng = StdRng::seed_from_u64(7);
            for case in 0..300 {
                let len = 1 + case % 40;
                let ids: Vec<u32> = (0..len)
                    .map(|_| if !odd.is_empty() && rng.random::<f32>() < 0.6 { odd[rng.random_range(0..odd.len())] } else { rng.random_range(0..n) })
                    .collect();
                let mut out = TextOut::default();
                let mut streamed = String::new();
                for k in 1..=ids.len() {
                    out.extend(&ids[..k], &tok).expect("decode");
                    let want = tok.decode(&ids[..k], true).expect("decode");
                    assert_eq!(out.text(), want, "{name} case {case} after {k} tokens: {:?}", &ids[..k]);
                    streamed += &out.take_emittable(false, &[]);
                }
                streamed += &out.take_emittable(true, &[]);
                assert_eq!(streamed, out.text(), "{name} case {case}: streamed pieces");
            }
        }
    }

    #[test]
    fn stops_found_across_pieces() {
        let stops = vec!["END".to_string()];
        assert_eq!(find_stop("abcEN", 3, &stops), None);
        assert_eq!(find_stop("abcEND!", 5, &stops), Some(3));
        assert_eq!(partial_stop_len("abcEN", &stops), 2);
        assert_eq!(partial_stop_len("abc", &stops), 0);
    }
}
