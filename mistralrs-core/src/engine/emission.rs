//! Emission: what a sequence's tokens become for its caller. A sampled token
//! is judged (end of sequence, grammar, length), turned into text by
//! incremental detokenization, searched for stop strings, and streamed as a
//! chunk once no stop string or incomplete character can still hold it back.

use super::group::Group;
use super::sequence::Sequence;
use crate::error::{Error, Result};
use crate::request::GenerationRequest;
use crate::response::{ResponseLogprob, TopLogprob};
use crate::sampler::Sampled;
use crate::tokenizer::TextTokenizer;

/// What the engine needs to judge each new token.
pub struct StopRules<'a> {
    pub eos: &'a [u32],
    pub ignore_eos: bool,
    pub stop_seqs: &'a [String],
    pub logprobs: bool,
}

impl<'a> StopRules<'a> {
    pub fn of(req: &'a GenerationRequest, eos: &'a [u32]) -> Self {
        Self { eos, ignore_eos: req.ignore_eos, stop_seqs: &req.stop_seqs, logprobs: req.logprobs }
    }
}

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
}

impl TextOut {
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Brings the text up to date with the generated tokens.
    fn extend(&mut self, generated: &[u32], tok: &TextTokenizer) -> Result<()> {
        let window = &generated[self.prefix..];
        let read = tok.decode(&window[..self.read - self.prefix], true)?;
        let full = tok.decode(window, true)?;
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
        let last_text = window.iter().rev().find(|&&t| !tok.is_skipped_in_text(t));
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
    fn cut(&mut self, at: usize) {
        self.text.truncate(at);
        self.committed = self.committed.min(at);
    }

    /// Text not yet streamed. While running, a tail that could start a stop
    /// string, that ends in an undecodable character (U+FFFD) or that an open
    /// byte-fallback run may still rewrite, waits.
    fn take_emittable(&mut self, finished: bool, stops: &[String]) -> String {
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

impl Sequence {
    /// Takes a sampled token; returns the text that may be streamed now.
    pub fn accept(&mut self, s: Sampled, tok: &TextTokenizer, rules: &StopRules) -> Result<String> {
        if !rules.ignore_eos && rules.eos.contains(&s.token) {
            return Ok(self.finish_now("stop", rules));
        }
        if let Some(m) = &mut self.grammar {
            // The mask let only tokens the grammar takes through.
            m.consume_token(s.token).map_err(grammar_err)?;
        }
        self.tokens.push(s.token);
        if let Some(lp) = s.logprob {
            self.logprob_sum += lp as f64;
        }
        if rules.logprobs {
            self.logprobs.push(ResponseLogprob {
                token: token_text(tok, s.token),
                logprob: s.logprob.unwrap_or(0.0),
                bytes: byte_list(tok, s.token),
                top_logprobs: s
                    .top
                    .iter()
                    .map(|&(t, l)| TopLogprob { token: token_text(tok, t), logprob: l, bytes: byte_list(tok, t) })
                    .collect(),
            });
        }
        // Text before the provisional tail was searched when it was added.
        let searched_from = self.out.committed;
        self.out.extend(&self.tokens[self.prompt_len..], tok)?;
        if let Some(cut) = find_stop(&self.out.text, searched_from, rules.stop_seqs) {
            self.out.cut(cut);
            self.finish = Some("stop");
        } else if self.generated() >= self.max_new {
            self.finish = Some("length");
        } else if self.grammar.as_ref().is_some_and(|m| m.is_stopped()) {
            // The grammar admits nothing more (not even a longer match).
            self.finish = Some("stop");
        }
        Ok(self.out.take_emittable(self.finish.is_some(), rules.stop_seqs))
    }

    /// Ends the sequence where it stands (`reason` as its finish reason);
    /// returns the text not yet streamed.
    pub fn finish_now(&mut self, reason: &'static str, rules: &StopRules) -> String {
        self.finish = Some(reason);
        self.out.take_emittable(true, rules.stop_seqs)
    }
}

/// Samples one token for `seq` from its logits row, appends the tokens its
/// grammar then forces, and streams what they add. An error fails only this
/// request.
pub fn advance(seq: &mut Sequence, row: &mut [f32], group: &mut Group, req: &GenerationRequest, tok: &TextTokenizer, eos: &[u32]) {
    let before = seq.logprobs.len();
    match sample_and_force(seq, row, req, tok, eos) {
        Ok(piece) => stream(seq, group, piece, before),
        Err(e) => fail_group(group, e),
    }
}

fn sample_and_force(seq: &mut Sequence, row: &mut [f32], req: &GenerationRequest, tok: &TextTokenizer, eos: &[u32]) -> Result<String> {
    tok.mask_unsampleable(row);
    let rules = StopRules::of(req, eos);
    if seq.grammar.is_some() && dead_end(row) {
        return Ok(seq.finish_now(GRAMMAR_DEAD_END, &rules));
    }
    let sampled = seq.sampler.sample(row, &seq.tokens);
    let piece = seq.accept(sampled, tok, &rules)?;
    Ok(piece + &force(seq, tok, &rules)?)
}

/// Appends the tokens the grammar forces next; returns the text they add.
/// Forced tokens have probability 1 under the grammar: logprob 0, no alternatives.
pub fn force(seq: &mut Sequence, tok: &TextTokenizer, rules: &StopRules) -> Result<String> {
    let mut piece = String::new();
    for token in seq.forced_tokens() {
        if seq.finish.is_some() {
            break;
        }
        piece += &seq.accept(Sampled { token, logprob: Some(0.0), top: Vec::new() }, tok, rules)?;
    }
    Ok(piece)
}

/// Sends what a step added to a streamed request: a chunk when there is
/// text, and the last one (with its finish reason) when the sequence ended.
pub fn stream(seq: &Sequence, group: &mut Group, piece: String, before: usize) {
    if group.stream && (!piece.is_empty() || seq.finish.is_some()) {
        if seq.finish.is_some() {
            group.record(seq);
        }
        let lp = seq.logprobs[before..].to_vec();
        group.chunk(seq.choice, piece, seq.finish, Some(lp));
    }
}

/// Fails one request (its sequences are dropped after the step), leaving
/// the others of the step running.
pub fn fail_group(group: &mut Group, e: Error) {
    if !group.cancelled {
        group.fail(e);
    }
}

/// The finish reason of a sequence whose grammar allows no next token (not
/// even the end): the vocabulary cannot spell what the grammar needs next.
pub const GRAMMAR_DEAD_END: &str = "grammar_dead_end";

/// No token can be sampled from this row.
pub fn dead_end(row: &[f32]) -> bool {
    row.iter().all(|&x| x == f32::NEG_INFINITY)
}

pub fn grammar_err(e: impl std::fmt::Display) -> Error {
    Error::runtime(format!("grammar: {e}"))
}

/// One step's logits as one flat buffer, `vocab` values per row: a single
/// copy out of the tensor instead of a vector per row.
pub fn flat_logits(logits: candle_core::Tensor) -> Result<(Vec<f32>, usize)> {
    let vocab = logits.dim(candle_core::D::Minus1)?;
    Ok((logits.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?, vocab))
}

/// Byte offset of the earliest stop string in `text`, looking only where a
/// match could involve text added after `from`.
fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<usize> {
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

fn byte_list(tok: &TextTokenizer, id: u32) -> Vec<u16> {
    tok.token_bytes(id).iter().map(|&b| b as u16).collect()
}

fn token_text(tok: &TextTokenizer, id: u32) -> String {
    String::from_utf8_lossy(tok.token_bytes(id)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

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
