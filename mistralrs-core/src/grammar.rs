//! Structured output: a request's grammar (a regex, a JSON Schema or a Lark
//! grammar) compiled by llguidance into a matcher per sequence, which says
//! each step which tokens may come next and which ones the grammar forces.
//!
//! llguidance works on the vocabulary as bytes: a trie of every token's raw
//! bytes, built once per runner (on the first request with a grammar, since
//! most runners never need it). Special tokens are marked so that no grammar
//! can spell them as text: a JSON string may hold the characters
//! `<|im_end|>`, but never the end-of-turn token itself.

use std::sync::Arc;

use llguidance::api::{StopReason, TopLevelGrammar};
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;

/// What a request constrains its output to.
#[derive(Debug, Clone)]
pub enum Grammar {
    /// The whole output matches this regular expression.
    Regex(String),
    /// The output is JSON valid against this schema.
    JsonSchema(serde_json::Value),
    /// The output is a sentence of this Lark grammar (llguidance's dialect).
    Lark(String),
}

impl Grammar {
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_json_options(schema)),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        }
    }
}

/// JSON comes out on one line, as OpenAI's structured outputs give it: no
/// whitespace but an optional space after `,` and `:` (the separators are
/// regexes). Pretty-printing let a model spend its tokens on newlines and
/// indentation and run out of `max_tokens` before closing the value.
/// A schema that sets llguidance's own options (`x-guidance`, e.g.
/// `{"whitespace_flexible": true}`) keeps them instead.
pub fn compact_json_options() -> serde_json::Value {
    serde_json::json!({
        "whitespace_flexible": false, "item_separator": ", ?", "key_separator": ": ?", "coerce_one_of": true,
    })
}

/// The schema with our JSON options, unless it sets llguidance's own; and
/// `oneOf` read as `anyOf` unless it says otherwise. llguidance cannot
/// enforce "exactly one branch"; the branches of real schemas' `oneOf`s are
/// almost always disjoint (tagged unions, `null` or a value), where a value
/// valid for one branch is valid for exactly one, so this is what vLLM's and
/// llama.cpp's grammars do too. Keywords it cannot enforce at all are still
/// refused (no `lenient`): the request fails naming them rather than getting
/// output the schema does not hold to.
fn with_json_options(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        let opts = obj.entry("x-guidance").or_insert_with(compact_json_options);
        if let Some(o) = opts.as_object_mut() {
            o.entry("coerce_one_of").or_insert(serde_json::Value::Bool(true));
        }
    }
    schema
}

/// The vocabulary as llguidance sees it: the token trie, and our tokenizer
/// for the text a grammar forces.
struct Vocab {
    trie: TokTrie,
    tokenizer: Arc<TextTokenizer>,
}

impl TokenizerEnv for Vocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // Forced text is tokenized as the model would have written it; bytes
        // that are not UTF-8 (a cut multi-byte character) go by the trie.
        std::str::from_utf8(s)
            .ok()
            .and_then(|t| self.tokenizer.encode_plain(t).ok())
            .unwrap_or_else(|| self.trie.greedy_tokenize(s))
    }
}

/// Compiles requests' grammars against one model's vocabulary.
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl GrammarCompiler {
    /// `eos`: the token that ends the output once the grammar is complete.
    pub fn new(tokenizer: Arc<TextTokenizer>, eos: u32) -> Result<Self> {
        let n = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if tokenizer.is_special(id) {
                    [&[TokTrie::SPECIAL_TOKEN_MARKER], bytes].concat()
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let trie = TokTrie::from(&TokRxInfo::new(n as u32, eos), &words);
        let env: TokEnv = Arc::new(Vocab { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::runtime(format!("cannot prepare the vocabulary for grammars: {e}")))?;
        // Grammar warnings and errors reach the caller as exceptions, not stderr.
        factory.quiet();
        Ok(Self { factory })
    }

    /// A matcher at the start of the output; an invalid grammar is a
    /// request error carrying llguidance's message.
    pub fn compile(&self, grammar: &Grammar) -> Result<Matcher> {
        let parser = self
            .factory
            .create_parser(grammar.top_level())
            .map_err(|e| Error::invalid(format!("invalid grammar: {e}")))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::invalid(format!("invalid grammar: {e}")));
        }
        // A grammar can compile and still admit no output at all (a JSON
        // schema whose `$ref` only refers to itself): its first mask fails or
        // allows nothing. That is the request's fault, found before any work,
        // not an engine failure at its first step.
        if !matcher.compute_mask().is_ok_and(|m| !m.is_zero()) {
            return Err(Error::invalid(
                "invalid grammar: no output can match it (for a JSON schema: a `$ref` that only refers to itself, or constraints no value meets)",
            ));
        }
        Ok(matcher)
    }
}

/// An llguidance message without the parser state it may append (for a
/// caller, the reason is the first line; the rest is a dump of internals).
fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().trim_end().to_string()
}

/// Sets every logit the matcher does not allow next to -inf; all of them
/// when it allows nothing at all (a grammar the vocabulary cannot spell on).
pub fn mask_logits(matcher: &mut Matcher, logits: &mut [f32]) -> Result<()> {
    let mask = match matcher.compute_mask() {
        Ok(mask) => mask,
        Err(_) if matcher.stop_reason() == StopReason::NoExtensionBias => {
            logits.fill(f32::NEG_INFINITY);
            return Ok(());
        }
        Err(e) => return Err(Error::runtime(format!("grammar: {}", first_line(&e)))),
    };
    let allowed = mask.len().min(logits.len());
    for (i, x) in logits[..allowed].iter_mut().enumerate() {
        if !mask.is_allowed(i as u32) {
            *x = f32::NEG_INFINITY;
        }
    }
    logits[allowed..].fill(f32::NEG_INFINITY);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of a few words and the end token.
    fn words() -> Arc<TextTokenizer> {
        use tokenizers::models::wordlevel::WordLevel;
        let vocab = [("a", 0u32), ("b", 1), ("ab", 2), ("</s>", 3), ("[UNK]", 4)];
        let model = WordLevel::builder()
            .vocab(vocab.iter().map(|(w, i)| (w.to_string(), *i)).collect())
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        Arc::new(TextTokenizer::new(tokenizers::Tokenizer::new(model)).with_special(vec![3, 4]))
    }

    #[test]
    fn invalid_grammars_are_request_errors() {
        let c = GrammarCompiler::new(words(), 3).unwrap();
        for g in [
            Grammar::Regex("(".into()),
            Grammar::Lark("start: nothing_defined".into()),
            Grammar::JsonSchema(serde_json::json!({"type": 5})),
            // Compiles, but no value can match: a reference to itself alone.
            Grammar::JsonSchema(serde_json::json!({"$ref": "#"})),
            Grammar::JsonSchema(serde_json::json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})),
        ] {
            let e = c.compile(&g).err().expect("invalid");
            assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        }
    }
}
