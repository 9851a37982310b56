//! SentencePiece vocabularies of GGUF files (`tokenizer.ggml.model = llama`),
//! encoded from the pieces' scores as llama.cpp's `llm_tokenizer_spm` does,
//! and decoded as transformers' converted tokenizer does.
//!
//! Why not `tokenizers`' BPE: it needs merges, and a SentencePiece GGUF has
//! none. Deriving them (every split of every piece into two pieces: half a
//! million for Gemma's 262k pieces) and building the BPE tables took 0.5 s
//! and ~100 MiB of a Gemma 3 270M load, more than llama.cpp's whole load.
//! Scoring bigrams directly needs only a piece -> id table.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use aho_corasick::{AhoCorasick, MatchKind};
use hashbrown::HashTable;

/// Pieces by text, built once per load.
pub struct Spm {
    /// Every piece's text back to back: piece `i` is `text[starts[i]..starts[i + 1]]`.
    text: String,
    starts: Vec<u32>,
    scores: Vec<f32>,
    /// Piece ids keyed by their text's hash (every piece, as llama.cpp's `token_to_id`).
    ids: HashTable<u32>,
    hasher: ahash::RandomState,
    /// The piece of each byte, `<0xE4>` (byte fallback), where the vocabulary has it.
    byte_ids: [Option<u32>; 256],
    unk: Option<u32>,
    /// `▁` before the text and after every added token (SentencePiece's dummy prefix).
    add_prefix: bool,
    bos: Option<u32>,
    /// Added tokens (control, unknown and user-defined pieces), matched whole
    /// in the raw text before it is split into characters; leftmost-longest,
    /// as `tokenizers` matches them.
    added: Option<AhoCorasick>,
    added_ids: Vec<u32>,
    /// Added tokens that swallow the ASCII whitespace after them (sorted).
    rstrip: Vec<u32>,
}

/// What a vocabulary needs besides its pieces.
pub struct SpmOptions {
    pub unk: Option<u32>,
    pub add_prefix: bool,
    /// BOS, where the file asks for it to be added.
    pub bos: Option<u32>,
    pub added: Vec<u32>,
    /// Added tokens after which whitespace is dropped (llama.cpp's RSTRIP
    /// attribute; transformers' `rstrip` of an added token).
    pub rstrip: Vec<u32>,
}

/// Two adjacent symbols whose concatenation is a piece.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

// The queue pops the highest score first and, among equal scores, the
// leftmost pair (llama.cpp's `llm_bigram_spm::comparator`).
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// A run of the text: a character, or pieces merged into one; `len == 0`
/// once merged into its left neighbour. `prev` / `next` link the live ones.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    pub fn new(pieces: &[&str], scores: Vec<f32>, opts: SpmOptions) -> Self {
        let mut text = String::with_capacity(pieces.iter().map(|p| p.len()).sum());
        let mut starts = Vec::with_capacity(pieces.len() + 1);
        starts.push(0);
        for p in pieces {
            text.push_str(p);
            starts.push(text.len() as u32);
        }
        let hasher = ahash::RandomState::with_seeds(0x6d69, 0x7374, 0x7261, 0x6c73);
        let mut ids = HashTable::with_capacity(pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            let h = hasher.hash_one(p.as_bytes());
            let at = |&id: &u32| &text.as_bytes()[starts[id as usize] as usize..starts[id as usize + 1] as usize];
            // The first id of a piece wins, as llama.cpp's map keeps it.
            if ids.find(h, |id| at(id) == p.as_bytes()).is_none() {
                ids.insert_unique(h, i as u32, |id| hasher.hash_one(at(id)));
            }
        }
        let mut spm = Self {
            text,
            starts,
            scores,
            ids,
            hasher,
            byte_ids: [None; 256],
            unk: opts.unk,
            add_prefix: opts.add_prefix,
            bos: opts.bos,
            added: None,
            added_ids: Vec::new(),
            rstrip: opts.rstrip,
        };
        spm.rstrip.sort_unstable();
        for b in 0..=255u8 {
            spm.byte_ids[b as usize] = spm.id(format!("<0x{b:02X}>").as_bytes());
        }
        let added: Vec<u32> = opts.added.into_iter().filter(|&id| !spm.piece(id).is_empty()).collect();
        if !added.is_empty() {
            let patterns: Vec<&str> = added.iter().map(|&id| spm.piece(id)).collect();
            spm.added = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns).ok();
            spm.added_ids = added;
        }
        spm
    }

    pub fn vocab_size(&self) -> usize {
        self.scores.len()
    }

    pub fn piece(&self, id: u32) -> &str {
        let i = id as usize;
        match (self.starts.get(i), self.starts.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.text[a as usize..b as usize],
            _ => "",
        }
    }

    pub fn id(&self, piece: &[u8]) -> Option<u32> {
        let h = self.hasher.hash_one(piece);
        self.ids.find(h, |&id| self.piece(id).as_bytes() == piece).copied()
    }

    /// Token ids of `text`: added tokens where they occur, the rest split
    /// into pieces; BOS first when `add_special` and the file asks for it.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if let (true, Some(bos)) = (add_special, self.bos) {
            out.push(bos);
        }
        let plain = |part: &str, out: &mut Vec<u32>| {
            if !part.is_empty() {
                self.encode_plain(part, out);
            }
        };
        let mut at = 0;
        if let Some(ac) = &self.added {
            for m in ac.find_iter(text) {
                // A token inside whitespace a previous one swallowed goes with it.
                if m.start() < at {
                    continue;
                }
                plain(&text[at..m.start()], &mut out);
                let id = self.added_ids[m.pattern().as_usize()];
                out.push(id);
                at = m.end();
                if self.rstrip.binary_search(&id).is_ok() {
                    at += text[at..].bytes().take_while(u8::is_ascii_whitespace).count();
                }
            }
        }
        plain(&text[at..], &mut out);
        out
    }

    /// Text without added tokens: `▁` for spaces (and before it, with the
    /// dummy prefix), then llama.cpp's bigram merging by piece score.
    fn encode_plain(&self, part: &str, out: &mut Vec<u32>) {
        let mut norm = String::with_capacity(part.len() + 3 * (part.len() / 4 + 1));
        if self.add_prefix {
            norm.push('\u{2581}');
        }
        for c in part.chars() {
            norm.push(if c == ' ' { '\u{2581}' } else { c });
        }
        let bytes = norm.as_bytes();
        let mut symbols: Vec<Symbol> = Vec::with_capacity(norm.len());
        for (i, (start, c)) in norm.char_indices().enumerate() {
            let end = start + c.len_utf8();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: (end < norm.len()).then_some(i + 1),
            });
        }
        let mut queue = BinaryHeap::with_capacity(symbols.len());
        let bigram = |symbols: &[Symbol], left: Option<usize>, right: Option<usize>, queue: &mut BinaryHeap<Bigram>| {
            let (Some(left), Some(right)) = (left, right) else { return };
            let (l, r) = (symbols[left], symbols[right]);
            if let Some(id) = self.id(&bytes[l.start..r.start + r.len]) {
                queue.push(Bigram { score: self.scores[id as usize], left, right, len: l.len + r.len });
            }
        };
        for i in 1..symbols.len() {
            bigram(&symbols, Some(i - 1), Some(i), &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // One side already merged elsewhere: the pair is stale.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(b.left);
            }
            bigram(&symbols, l.prev, Some(b.left), &mut queue);
            bigram(&symbols, Some(b.left), r.next, &mut queue);
        }
        // Every merged symbol is a piece; a character that is not falls
        // back to its bytes' pieces, or to one (fused) unknown token.
        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let text = &bytes[s.start..s.start + s.len];
            match self.id(text) {
                Some(id) => out.push(id),
                None => {
                    let fallback: Option<Vec<u32>> = text.iter().map(|&b| self.byte_ids[b as usize]).collect();
                    match (fallback, self.unk) {
                        (Some(ids), _) => out.extend(ids),
                        (None, Some(unk)) if out.last() != Some(&unk) => out.push(unk),
                        _ => {}
                    }
                }
            }
            at = s.next;
        }
    }

    /// The text of `ids` (`skip` drops the ids it holds): `▁` is a space, a
    /// run of byte pieces is its UTF-8 text or one U+FFFD per byte, and the
    /// dummy prefix's leading space is removed.
    pub fn decode(&self, ids: &[u32], skip: impl Fn(u32) -> bool) -> String {
        let mut out = String::new();
        let mut run: Vec<u8> = Vec::new();
        let flush = |run: &mut Vec<u8>, out: &mut String| {
            match std::str::from_utf8(run) {
                Ok(s) => out.push_str(s),
                Err(_) => out.extend(std::iter::repeat_n('\u{FFFD}', run.len())),
            }
            run.clear();
        };
        for &id in ids.iter().filter(|&&id| !skip(id)) {
            let piece = self.piece(id);
            if let Some(b) = parse_byte_piece(piece) {
                run.push(b);
                continue;
            }
            flush(&mut run, &mut out);
            for c in piece.chars() {
                out.push(if c == '\u{2581}' { ' ' } else { c });
            }
        }
        flush(&mut run, &mut out);
        if self.add_prefix && out.starts_with(' ') {
            out.remove(0);
        }
        out
    }
}

/// The byte of a byte-fallback piece (`<0xE4>`).
pub fn parse_byte_piece(piece: &str) -> Option<u8> {
    if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
        return u8::from_str_radix(&piece[3..5], 16).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(add_prefix: bool) -> Spm {
        // id: piece (score)
        let pieces = ["<unk>", "<s>", "<0x41>", "\u{2581}", "a", "b", "c", "ab", "bc", "\u{2581}a", "abc", "<ctl>"];
        let scores = vec![0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -2.0, -5.0, -3.0, -4.0, -6.0, 0.0];
        Spm::new(&pieces, scores, SpmOptions { unk: Some(0), add_prefix, bos: Some(1), added: vec![0, 1, 11], rstrip: vec![] })
    }

    #[test]
    fn merges_the_best_scored_pair_first() {
        let v = vocab(false);
        // "bc" (-3) beats "ab" (-5); "a"+"bc" is "abc" (-6).
        assert_eq!(v.encode("abc", false), vec![10]);
        // "ab" then nothing (no "abb"): "ab", "b".
        assert_eq!(v.encode("abb", false), vec![7, 5]);
        assert_eq!(v.encode("abc", true), vec![1, 10]);
    }

    #[test]
    fn prefix_added_tokens_and_fallback() {
        let v = vocab(true);
        // "▁a" (-4) is taken before "ab" (-5); "bc" joins "▁a"? no such piece.
        assert_eq!(v.encode("abc", false), vec![9, 8]);
        // The added token splits the text; each part gets its own prefix.
        assert_eq!(v.encode("a<ctl>a", false), vec![9, 11, 9]);
        // 'A' falls back to its byte piece; 'Z' has none: unknown, fused.
        assert_eq!(v.encode("AZZ", false), vec![3, 2, 0]);
        assert_eq!(v.decode(&[9, 8, 11, 9], |id| id == 11), "abc a");
        assert_eq!(v.decode(&[2, 4], |_| false), "Aa");
    }
}
