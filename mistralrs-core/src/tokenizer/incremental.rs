//! Decoding a growing token sequence piece by piece, so that the pieces
//! concatenate to the decoding of the whole: each new piece is the difference
//! between decoding a short window with and without the newest tokens, and is
//! held back while it ends in an incomplete UTF-8 character.

use super::TextTokenizer;
use crate::error::Result;

#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// The text that `ids` (all generated tokens so far, the newest last)
    /// adds to what was returned before.
    pub fn step(&mut self, tok: &TextTokenizer, ids: &[u32]) -> Result<String> {
        self.next_piece(tok, ids, false)
    }

    /// Like `step`, for the last tokens: nothing is held back, so an
    /// incomplete character comes out as U+FFFD as in a whole decode.
    pub fn flush(&mut self, tok: &TextTokenizer, ids: &[u32]) -> Result<String> {
        self.next_piece(tok, ids, true)
    }

    fn next_piece(&mut self, tok: &TextTokenizer, ids: &[u32], last: bool) -> Result<String> {
        let prefix = tok.decode(&ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&ids[self.prefix_offset..], true)?;
        let complete = last || !full.ends_with('\u{FFFD}');
        if full.len() > prefix.len() && complete && full.is_char_boundary(prefix.len()) {
            let piece = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }
}
