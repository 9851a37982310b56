//! Choosing the next token from one step's logits, in the order the API
//! documents: logit bias, penalties, then greedy or temperature + top-k /
//! top-p / min-p and a seeded draw. Log-probabilities are taken after bias
//! and penalties, before temperature (as OpenAI reports them).

use std::collections::HashMap;

use rand::{rngs::StdRng, Rng, SeedableRng};

/// Temperatures below this sample greedily (llama.cpp and vLLM do likewise).
pub const MIN_TEMPERATURE: f64 = 1e-5;

#[derive(Debug, Clone, Default)]
pub struct SamplingParams {
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: HashMap<u32, f32>,
    /// Report the chosen token's logprob and this many alternatives (None: no logprobs).
    pub top_logprobs: Option<usize>,
}

impl SamplingParams {
    /// Greedy at temperature 0, and below `MIN_TEMPERATURE`, where dividing
    /// the logits would overflow to infinities: there the law is argmax anyway.
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_none_or(|t| t < MIN_TEMPERATURE)
    }
}

#[derive(Debug, Clone)]
pub struct Sampled {
    pub token: u32,
    /// ln p(token), when asked for (logprobs, or best_of ranking).
    pub logprob: Option<f32>,
    /// The most likely tokens and their logprobs, best first.
    pub top: Vec<(u32, f32)>,
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    repeat_last_n: usize,
    want_logprob: bool,
    /// Scratch reused every step: (token, weight) candidates.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// `want_logprob`: compute the chosen token's logprob even without
    /// `top_logprobs` (best_of ranks choices by it).
    pub fn new(params: SamplingParams, seed: u64, repeat_last_n: usize, want_logprob: bool) -> Self {
        let want_logprob = want_logprob || params.top_logprobs.is_some();
        Self { params, rng: StdRng::seed_from_u64(seed), repeat_last_n, want_logprob, candidates: Vec::new() }
    }

    /// `logits` (the vocabulary's, modified in place); `context`: prompt and
    /// generated tokens so far.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> Sampled {
        self.apply_bias_and_penalties(logits, context);
        let token = if self.params.is_greedy() { argmax(logits) } else { self.draw(logits) };
        self.report(logits, token)
    }

    /// The distribution `sample` draws from, written into `out` as (token,
    /// probability) pairs (one pair, probability 1, when greedy; in no
    /// particular order otherwise); `logits` get the bias and penalties, as
    /// `sample` gives them (for `report`). `out` is the caller's, so that a
    /// distribution kept across a step (speculative decoding) reuses its buffer.
    pub fn distribution(&mut self, logits: &mut [f32], context: &[u32], out: &mut Vec<(u32, f32)>) {
        self.apply_bias_and_penalties(logits, context);
        out.clear();
        if self.params.is_greedy() {
            out.push((argmax(logits), 1.0));
            return;
        }
        self.candidates(logits);
        out.extend_from_slice(&self.candidates);
    }

    /// A uniform draw in [0, 1) from this sequence's generator.
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }

    /// A token drawn from `dist` ((token, weight) pairs, weights not necessarily normalized).
    pub fn draw_from(&mut self, dist: &[(u32, f32)]) -> u32 {
        let total: f32 = dist.iter().map(|c| c.1).sum();
        let mut x = self.rng.random::<f32>() * total;
        for c in dist {
            x -= c.1;
            if x <= 0.0 {
                return c.0;
            }
        }
        dist.iter().rev().find(|c| c.1 > 0.0).map_or(0, |c| c.0)
    }

    /// What the response says of `token`, chosen from `logits` (after bias
    /// and penalties): its logprob and the top alternatives, when asked for.
    pub fn report(&self, logits: &[f32], token: u32) -> Sampled {
        let log_norm = self.want_logprob.then(|| log_sum_exp(logits));
        let logprob = log_norm.map(|z| logits[token as usize] - z);
        let top = match (self.params.top_logprobs, log_norm) {
            (Some(n), Some(z)) if n > 0 => top_n(logits, n).into_iter().map(|(t, l)| (t, l - z)).collect(),
            _ => Vec::new(),
        };
        Sampled { token, logprob, top }
    }

    fn apply_bias_and_penalties(&self, logits: &mut [f32], context: &[u32]) {
        for (&tok, &bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(tok as usize) {
                *l += bias;
            }
        }
        let p = &self.params;
        if p.repetition_penalty.is_none() && p.frequency_penalty.is_none() && p.presence_penalty.is_none() {
            return;
        }
        let window = &context[context.len().saturating_sub(self.repeat_last_n)..];
        // The window is short (repeat_last_n), so counting by scanning it beats a map.
        for (i, &tok) in window.iter().enumerate() {
            if window[..i].contains(&tok) {
                continue;
            }
            let count = window[i..].iter().filter(|&&t| t == tok).count() as f32;
            let Some(l) = logits.get_mut(tok as usize) else { continue };
            if let Some(rp) = p.repetition_penalty {
                *l = if *l > 0.0 { *l / rp } else { *l * rp };
            }
            *l -= p.frequency_penalty.unwrap_or(0.0) * count + p.presence_penalty.unwrap_or(0.0);
        }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        self.candidates(logits);
        let cands = std::mem::take(&mut self.candidates);
        let token = self.draw_from(&cands);
        self.candidates = cands;
        token
    }

    /// Fills `candidates` with the tokens temperature, top-k, top-p and
    /// min-p leave, and their probabilities (normalized). The vocabulary is
    /// never sorted whole: top-k selects its k in linear time, top-p and
    /// min-p sort only the head they keep (grown until it holds the mass),
    /// and with no filter the draw runs over the vocabulary as it is.
    fn candidates(&mut self, logits: &[f32]) {
        let temp = self.params.temperature.unwrap_or(1.0) as f32;
        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l / temp)));
        let top_k = self.params.top_k.filter(|&k| k > 0 && k < cands.len());
        if let Some(k) = top_k {
            cands.select_nth_unstable_by(k - 1, best_first);
            cands.truncate(k);
        }
        // Probabilities of the remaining candidates (summed in f64: the
        // vocabulary is in no particular order, and the sum must not depend on it).
        let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0f64;
        for c in cands.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += c.1 as f64;
        }
        for c in cands.iter_mut() {
            c.1 = (c.1 as f64 / total) as f32;
        }
        let top_p = self.params.top_p.filter(|&p| p < 1.0);
        let min_p = self.params.min_p.filter(|&p| p > 0.0);
        if top_p.is_none() && min_p.is_none() {
            return;
        }
        // Both filters keep a head of the candidates ordered best first.
        let mut keep = cands.len();
        if let Some(top_p) = top_p {
            // The smallest head whose mass reaches top_p.
            keep = sorted_head(cands, |head| {
                let mut mass = 0f32;
                head.iter()
                    .position(|c| {
                        mass += c.1;
                        mass >= top_p as f32
                    })
                    .map(|i| i + 1)
            });
            cands.truncate(keep);
        }
        if let Some(min_p) = min_p {
            let floor = cands.iter().map(|c| c.1).fold(0f32, f32::max) * min_p as f32;
            // Tokens at or above the floor come first; the head is cut at the first below it.
            keep = sorted_head(cands, |head| head.iter().position(|c| c.1 < floor)).max(1);
            cands.truncate(keep);
        }
        let total: f32 = cands[..keep].iter().map(|c| c.1).sum();
        for c in cands.iter_mut() {
            c.1 /= total;
        }
    }
}

/// Higher weight first, then the lower token id (a total order: the head it
/// selects is the same whichever algorithm selects it).
fn best_first(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Sorts a growing head of `cands` best first until `cut` finds where to
/// cut it (Some(length)); returns that length, or all of `cands` when the
/// whole list is sorted without a cut. Only the head is ever sorted: each
/// round selects the next best `grow` candidates in linear time.
fn sorted_head(cands: &mut [(u32, f32)], cut: impl Fn(&[(u32, f32)]) -> Option<usize>) -> usize {
    let mut sorted = 0;
    let mut grow = 64;
    while sorted < cands.len() {
        let (len, end) = (cands.len(), (sorted + grow).min(cands.len()));
        let rest = &mut cands[sorted..];
        if end < len {
            rest.select_nth_unstable_by(end - sorted - 1, best_first);
        }
        rest[..end - sorted].sort_unstable_by(best_first);
        // A cut inside the earlier rounds' head would have been found there.
        if let Some(n) = cut(&cands[..end]) {
            return n;
        }
        sorted = end;
        grow *= 4;
    }
    cands.len()
}

/// First index of the largest value (torch's argmax tie rule).
fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

fn log_sum_exp(xs: &[f32]) -> f32 {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = xs.iter().map(|&x| ((x - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

fn top_n(xs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &x) in xs.iter().enumerate() {
        if best.len() == n && best.last().is_some_and(|b| x <= b.1) {
            continue;
        }
        let at = best.partition_point(|b| b.1 >= x);
        best.insert(at, (i as u32, x));
        best.truncate(n);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p, 0, 64, false)
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = sampler(SamplingParams::default());
        assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, 2.0], &[]).token, 1);
    }

    #[test]
    fn logit_bias_comes_first() {
        let mut p = SamplingParams::default();
        p.logit_bias.insert(0, 10.0);
        assert_eq!(sampler(p).sample(&mut [1.0, 3.0], &[]).token, 0);
    }

    #[test]
    fn repetition_penalty_as_transformers() {
        let p = SamplingParams { repetition_penalty: Some(2.0), ..Default::default() };
        let mut logits = [4.0, -1.0, 3.0];
        sampler(p).apply_bias_and_penalties(&mut logits, &[0, 1, 0]);
        assert_eq!(logits, [2.0, -2.0, 3.0]);
    }

    #[test]
    fn frequency_and_presence_as_openai() {
        let p = SamplingParams { frequency_penalty: Some(0.5), presence_penalty: Some(1.0), ..Default::default() };
        let mut logits = [4.0, 4.0, 4.0];
        sampler(p).apply_bias_and_penalties(&mut logits, &[0, 0, 1]);
        assert_eq!(logits, [2.0, 2.5, 4.0]);
    }

    #[test]
    fn penalties_only_see_the_last_n_tokens() {
        let p = SamplingParams { presence_penalty: Some(1.0), ..Default::default() };
        let s = Sampler::new(p, 0, 2, false);
        let mut logits = [0.0, 0.0, 0.0];
        s.apply_bias_and_penalties(&mut logits, &[0, 1, 2]);
        assert_eq!(logits, [0.0, -1.0, -1.0]);
    }

    #[test]
    fn logprobs_are_log_softmax() {
        let p = SamplingParams { top_logprobs: Some(2), ..Default::default() };
        let out = sampler(p).sample(&mut [0.0, (2f32).ln()], &[]);
        assert_eq!(out.token, 1);
        assert!((out.logprob.unwrap() - (2f32 / 3.0).ln()).abs() < 1e-6);
        assert_eq!(out.top[0].0, 1);
        assert!((out.top[1].1 - (1f32 / 3.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let p = SamplingParams { temperature: Some(1.0), top_k: Some(1), ..Default::default() };
        assert_eq!(sampler(p).sample(&mut [0.0, 1.0, 0.5], &[]).token, 1);
        let p = SamplingParams { temperature: Some(1.0), ..Default::default() };
        let draw = |seed| {
            let mut s = Sampler::new(p.clone(), seed, 64, false);
            (0..20).map(|_| s.sample(&mut [0.0; 8], &[]).token).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    /// The old way: the whole vocabulary sorted best first, then cut.
    fn reference_candidates(p: &SamplingParams, logits: &[f32]) -> Vec<(u32, f32)> {
        let temp = p.temperature.unwrap_or(1.0) as f32;
        let mut c: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / temp)).collect();
        c.sort_unstable_by(best_first);
        if let Some(k) = p.top_k.filter(|&k| k > 0) {
            c.truncate(k);
        }
        let max = c[0].1;
        let total: f64 = c.iter().map(|x| (x.1 - max).exp() as f64).sum();
        for x in c.iter_mut() {
            x.1 = ((x.1 - max).exp() as f64 / total) as f32;
        }
        if let Some(top_p) = p.top_p.filter(|&q| q < 1.0) {
            let mut mass = 0f32;
            let keep = c.iter().position(|x| { mass += x.1; mass >= top_p as f32 }).map_or(c.len(), |i| i + 1);
            c.truncate(keep);
        }
        if let Some(min_p) = p.min_p.filter(|&q| q > 0.0) {
            let floor = c[0].1 * min_p as f32;
            let keep = c.iter().take_while(|x| x.1 >= floor).count().max(1);
            c.truncate(keep);
        }
        let total: f32 = c.iter().map(|x| x.1).sum();
        c.iter_mut().for_each(|x| x.1 /= total);
        c
    }

    /// Partial selection keeps the same tokens, in the same order where the
    /// filters order them, with the same probabilities up to summation order.
    #[test]
    fn partial_selection_keeps_what_a_full_sort_keeps() {
        let mut rng = StdRng::seed_from_u64(1);
        for case in 0..200 {
            let v = [5, 70, 300, 5000][case % 4];
            // Peaked and flat rows, with ties.
            let scale = [0.5f32, 4.0, 12.0][case % 3];
            let logits: Vec<f32> = (0..v).map(|_| (rng.random::<f32>() * scale * 8.0).round() / 8.0).collect();
            let p = SamplingParams {
                temperature: Some(0.7),
                top_k: [None, Some(1), Some(40), Some(10_000)][case % 4],
                top_p: [None, Some(0.9), Some(0.3)][(case / 4) % 3],
                min_p: [None, Some(0.05)][(case / 12) % 2],
                ..Default::default()
            };
            let want = reference_candidates(&p, &logits);
            let mut s = sampler(p.clone());
            s.candidates(&logits);
            let mut got = s.candidates.clone();
            if p.top_p.is_none() && p.min_p.is_none() {
                // Unordered without those filters: compare as sets.
                got.sort_unstable_by(best_first);
            }
            assert_eq!(got.len(), want.len(), "case {case}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0, "case {case}");
                assert!((g.1 - w.1).abs() < 1e-5, "case {case}: {} vs {}", g.1, w.1);
            }
        }
    }

    #[test]
    fn top_p_keeps_the_head() {
        let p = SamplingParams { temperature: Some(1.0), top_p: Some(0.5), ..Default::default() };
        let mut s = sampler(p);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [5.0, 0.0, 0.0], &[]).token, 0);
        }
    }
}
