//! Emission: what a sequence's tokens become for its caller. A sampled token
//! is judged (end of sequence, grammar, length), turned into text by
//! incremental detokenization, searched for stop strings, and streamed as a
//! chunk once no stop string or incomplete character can still hold it back.

use super::detokenize::find_stop;
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
        let searched_from = self.out.committed();
        self.out.extend(&self.tokens[self.prompt_len..], tok)?;
        if let Some(cut) = find_stop(self.out.text(), searched_from, rules.stop_seqs) {
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
    emit(seq, group, |seq, _| sample_and_force(seq, row, req, tok, eos));
}

/// Runs `accept` (which takes tokens into `seq` and returns the text they
/// add) and streams that text; an error fails only this request.
pub fn emit(seq: &mut Sequence, group: &mut Group, accept: impl FnOnce(&mut Sequence, &mut Group) -> Result<String>) {
    match accept(seq, group) {
        Ok(piece) => stream(seq, group, piece),
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
/// text, and the last one (with its finish reason) when the sequence ended;
/// each carries the logprobs of the tokens since the last chunk.
pub fn stream(seq: &mut Sequence, group: &mut Group, piece: String) {
    if group.stream && (!piece.is_empty() || seq.finish.is_some()) {
        if seq.finish.is_some() {
            group.record(seq);
        }
        let lp = seq.logprobs[seq.logprobs_streamed.min(seq.logprobs.len())..].to_vec();
        seq.logprobs_streamed = seq.logprobs.len();
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

fn byte_list(tok: &TextTokenizer, id: u32) -> Vec<u16> {
    tok.token_bytes(id).iter().map(|&b| b as u16).collect()
}

fn token_text(tok: &TextTokenizer, id: u32) -> String {
    String::from_utf8_lossy(tok.token_bytes(id)).into_owned()
}
