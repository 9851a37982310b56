//! Speculative decoding: a small draft model proposes a few tokens per
//! decoding sequence, the target model scores them all in one forward pass,
//! and the standard acceptance rule keeps a prefix of them (Leviathan et
//! al. 2023, Chen et al. 2023), so the output is distributed exactly as the
//! target's alone (and under greedy decoding is the same text).
//!
//! The draft keeps its own paged KV cache, in block tables of its own, and
//! follows each sequence lazily: before proposing it catches up on whatever
//! tokens it has not seen (the prompt, the target's corrections). Both
//! caches roll back by forgetting positions: a sequence's `computed` count
//! drops to the accepted tokens, and later writes overwrite what lies past it.

use crate::kv_cache::{BlockAllocator, KvPool};
use crate::models::CausalLm;

/// The draft model and its cache.
pub struct Draft {
    pub model: Box<dyn CausalLm>,
    pub kv: KvPool,
    pub alloc: BlockAllocator,
    /// Tokens proposed per sequence per step, at most.
    pub gamma: usize,
}

/// What the acceptance rule makes of one proposed token.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Accept,
    /// Rejected: the token to emit instead is drawn from these weights.
    Resample(Vec<(u32, f32)>),
}

/// The acceptance rule: `d`, drawn from the draft's distribution `q`, is
/// kept with probability min(1, p(d) / q(d)) (`u` uniform in [0, 1));
/// otherwise the replacement comes from max(0, p − q), renormalized. Under
/// greedy decoding p and q are point masses and this keeps `d` exactly when
/// it is the target's choice, else emits the target's choice.
pub fn verify(p: &[(u32, f32)], q: &[(u32, f32)], d: u32, u: f32) -> Verdict {
    let prob = |dist: &[(u32, f32)], t: u32| dist.iter().find(|c| c.0 == t).map_or(0.0, |c| c.1);
    let (pd, qd) = (prob(p, d), prob(q, d));
    if qd > 0.0 && u < pd / qd {
        return Verdict::Accept;
    }
    let residual: Vec<(u32, f32)> =
        p.iter().map(|&(t, pt)| (t, (pt - prob(q, t)).max(0.0))).filter(|c| c.1 > 0.0).collect();
    // p == q up to rounding leaves nothing: then p itself is the right law.
    Verdict::Resample(if residual.is_empty() { p.to_vec() } else { residual })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_keeps_only_the_targets_choice() {
        assert_eq!(verify(&[(5, 1.0)], &[(5, 1.0)], 5, 0.999), Verdict::Accept);
        assert_eq!(verify(&[(5, 1.0)], &[(7, 1.0)], 7, 0.0), Verdict::Resample(vec![(5, 1.0)]));
    }

    /// The emitted token's law is p, for any q: the exact sum over the
    /// draft's proposal and both branches of the rule.
    #[test]
    fn emitted_tokens_follow_the_target() {
        let p = [(0u32, 0.5f32), (1, 0.3), (2, 0.2)];
        let q = [(0u32, 0.2f32), (1, 0.6), (3, 0.2)];
        let mut law = [0f64; 4];
        for &(d, qd) in &q {
            // P(accept) = min(1, p/q); integrate over u in steps.
            let steps = 10_000;
            for k in 0..steps {
                let u = (k as f32 + 0.5) / steps as f32;
                let w = qd as f64 / steps as f64;
                match verify(&p, &q, d, u) {
                    Verdict::Accept => law[d as usize] += w,
                    Verdict::Resample(r) => {
                        let z: f32 = r.iter().map(|c| c.1).sum();
                        for (t, x) in r {
                            law[t as usize] += w * (x / z) as f64;
                        }
                    }
                }
            }
        }
        for (t, want) in [(0, 0.5), (1, 0.3), (2, 0.2), (3, 0.0)] {
            assert!((law[t] - want).abs() < 1e-3, "token {t}: {} vs {want}", law[t]);
        }
    }
}
