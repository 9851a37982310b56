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

use std::collections::HashMap;

use candle_core::Device;

use super::emission::{dead_end, flat_logits, force, grammar_err, StopRules, GRAMMAR_DEAD_END};
use super::group::Group;
use super::pace::Costs;
use super::sequence::Sequence;
use crate::error::{Error, Result};
use crate::kv_cache::{BlockAllocator, BlockTable, KvDtype, KvPool, SideState, StepKv};
use crate::models::{CausalLm, ForwardBatch};
use crate::request::GenerationRequest;
use crate::tokenizer::TextTokenizer;

/// The draft model and its cache.
pub struct Draft {
    pub model: Box<dyn CausalLm>,
    pub kv: KvPool,
    pub alloc: BlockAllocator,
    /// Tokens proposed per sequence per step, at most.
    pub gamma: usize,
    /// What speculation costs and saves here, measured step by step.
    pub costs: Costs,
}

impl Draft {
    /// A draft model with a pool of `blocks` cache blocks, keeping up to
    /// `prefix_cache_n` prefixes in up to `prefix_cache_bytes` (as the
    /// target's pool does: a system prompt shared by requests is read by the
    /// draft once, not at every request's first proposal).
    pub fn new(
        model: Box<dyn CausalLm>,
        gamma: usize,
        blocks: usize,
        device: &Device,
        kv_dtype: KvDtype,
        prefix_cache_n: usize,
        prefix_cache_bytes: usize,
    ) -> Result<Self> {
        let dc = model.config();
        let kv = KvPool::new(model.cache_layers(), blocks, dc.num_kv_heads, dc.head_dim, device, kv_dtype, false)
            .map_err(|e| Error::runtime(format!("cannot allocate the draft model's KV cache: {e}")))?;
        let block_bytes = KvPool::block_bytes(model.cache_layers(), dc.num_kv_heads, dc.head_dim, kv_dtype);
        let n = if model.keys_depend_on_length() { 0 } else { prefix_cache_n };
        let alloc = BlockAllocator::new(blocks, n).growing_below((prefix_cache_bytes / block_bytes.max(1)).max(1));
        Ok(Self { model, kv, alloc, gamma, costs: Costs::from_env() })
    }
}

/// The draft stops proposing once its chance that every proposal so far is
/// kept (the product of its probabilities for them) falls below this, as
/// llama.cpp's `--draft-p-min` (this default) stops at one unsure token. The
/// token that crosses the line is still proposed: its pass is paid for and
/// its row costs the target little, and the draft's unsure first tokens
/// are kept about half the time (Qwen2.5-Coder 0.5B for 1.5B: 35–75% from
/// probability 0.1 to 0.75), where dropping them wasted the pass.
const P_MIN: f32 = 0.75;

/// A pass in which some sequence reads more than this many tokens is the
/// draft catching up (on the prompt, or after a pause); a step of
/// speculation reads its last proposal and the target's token after it.
const STEP_READ: usize = 2;

/// The probability softmax(`logits`) gives token `t`.
fn prob_of(logits: &[f32], t: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let Some(&lt) = logits.get(t as usize) else { return 0.0 };
    if !lt.is_finite() {
        return 0.0;
    }
    let z: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    (lt - max).exp() / z
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
    // Both laws may span the vocabulary: look q up by token, not by a search per entry.
    let q: HashMap<u32, f32> = q.iter().copied().collect();
    let residual: Vec<(u32, f32)> =
        p.iter().map(|&(t, pt)| (t, (pt - q.get(&t).copied().unwrap_or(0.0)).max(0.0))).filter(|c| c.1 > 0.0).collect();
    // p == q up to rounding leaves nothing: then p itself is the right law.
    Verdict::Resample(if residual.is_empty() { p.to_vec() } else { residual })
}

/// The draft model's proposals for this step's speculating sequences (those
/// of `running` the scheduler gave proposals). The draft first reads what it
/// has not seen of each (the prompt, the target's last tokens), then proposes
/// one token per pass, all the sequences in each pass; proposals are appended
/// to the sequences' tokens, to be verified by the target in this step's
/// forward pass.
pub fn propose(draft: &mut Draft, running: &mut [Sequence], tok: &TextTokenizer, device: &Device) -> Result<()> {
    let spec: Vec<usize> = (0..running.len()).filter(|&i| running[i].proposals() > 0).collect();
    for &i in &spec {
        let s = &mut running[i];
        let need = BlockTable::blocks_for(s.tokens.len() + s.proposals() - 1);
        let Some(sp) = s.spec.as_mut() else { continue };
        sp.drafted = 0;
        sp.draft_secs = 0.0;
        sp.reuse_cached_prefix(&s.tokens, &mut draft.alloc);
        sp.register_full_blocks(&s.tokens, &mut draft.alloc);
        while sp.blocks.blocks.len() < need {
            let Some(b) = draft.alloc.allocate() else { break };
            sp.blocks.blocks.push(b);
        }
        if sp.blocks.blocks.len() < need {
            // No room in the draft's pool: this sequence decodes plainly.
            s.stop_drafting();
        }
    }
    // Per sequence, the draft's chance that every proposal made so far is
    // kept (the product of its probabilities for them).
    let mut chance = vec![1f32; running.len()];
    let mut empty = Vec::new();
    let most = spec.iter().map(|&i| running[i].proposals()).max().unwrap_or(0);
    for round in 0..most {
        let members: Vec<usize> = spec.iter().copied().filter(|&i| running[i].proposals() > round).collect();
        if members.is_empty() {
            break;
        }
        let started = std::time::Instant::now();
        let (mut logits, vocab, catching_up) = {
            let inputs: Vec<(&[u32], usize)> = members
                .iter()
                .map(|&i| {
                    let at = running[i].spec.as_ref().map_or(0, |sp| sp.computed);
                    (&running[i].tokens[at..], at)
                })
                .collect();
            let catching_up = inputs.iter().any(|(t, _)| t.len() > STEP_READ);
            let batch = ForwardBatch::new(&inputs, device)?;
            drop(inputs);
            let mut sides = vec![SideState::default(); members.len()];
            // Members propose, so each has its speculative state.
            let tables: Vec<&BlockTable> = members.iter().filter_map(|&i| running[i].spec.as_ref().map(|sp| &sp.blocks)).collect();
            let mut kv = StepKv::new(&draft.kv, tables, sides.iter_mut().collect());
            let (logits, vocab) = flat_logits(draft.model.forward(&batch, &mut kv)?)?;
            (logits, vocab, catching_up)
        };
        // Each member's share of the pass (`Costs::charge_pass`).
        let charge = draft.costs.charge_pass(started.elapsed().as_secs_f64() / members.len() as f64, catching_up);
        for (&i, row) in members.iter().zip(logits.chunks_exact_mut(vocab)) {
            let s = &mut running[i];
            let Some(sp) = s.spec.as_mut() else { continue };
            sp.draft_secs += charge;
            sp.computed = s.tokens.len();
            tok.mask_unsampleable(row);
            if round == 0 {
                sp.grammar = s.grammar.as_ref().map(|m| Box::new(m.deep_clone()));
            }
            // A grammar completed by the last proposal allows nothing more to propose.
            let masked = match &mut sp.grammar {
                Some(m) => !m.is_stopped() && crate::grammar::mask_logits(m, row).is_ok() && !dead_end(row),
                None => true,
            };
            if sp.dists.len() <= sp.drafted {
                sp.dists.push(Vec::new());
            }
            let q = &mut sp.dists[sp.drafted];
            s.sampler.distribution(row, &s.tokens, q);
            let d = s.sampler.draw_from(q);
            // A token the grammar refuses on the draft's side stops the draft
            // before it: what was proposed so far is verified.
            if !masked || sp.grammar.as_mut().is_some_and(|m| m.consume_token(d).is_err()) {
                if sp.drafted == 0 {
                    empty.push(i);
                }
                s.stop_drafting();
                continue;
            }
            sp.drafted += 1;
            s.tokens.push(d);
            chance[i] *= prob_of(row, d);
            if chance[i] < P_MIN {
                s.stop_drafting();
            }
        }
    }
    // A sequence that proposed nothing settles its step now, the others at verification.
    for &i in &empty {
        if let Some(sp) = running[i].spec.as_mut() {
            sp.pace.update(0, 0, draft.costs.value(0, 0, sp.draft_secs));
        }
    }
    Ok(())
}

/// Verifies a sequence's proposals against the target's rows (one per
/// proposal, then one after them, `vocab` logits each) by the acceptance
/// rule: each kept one is emitted, and the first rejected one is replaced by
/// a draw from the rule's residual (or, all kept, one more token is drawn
/// from the last row). Both caches then hold only what was accepted.
/// Returns the text the emitted tokens add.
pub fn verify_and_accept(
    seq: &mut Sequence,
    rows: &mut [f32],
    vocab: usize,
    group: &mut Group,
    req: &GenerationRequest,
    tok: &TextTokenizer,
    eos: &[u32],
    costs: &Costs,
) -> Result<String> {
    let Some(mut sp) = seq.spec.take() else {
        return Err(Error::runtime("internal error: proposals to verify without a draft"));
    };
    let n = std::mem::take(&mut sp.proposals);
    sp.grammar = None;
    let base = seq.tokens.len() - n;
    // The grammar walked along the proposals (a copy: `accept` advances the sequence's own).
    let mut grammar = seq.grammar.as_ref().map(|m| m.deep_clone());
    let mut emitted = Vec::with_capacity(n + 1);
    let mut accepted = 0;
    let mut stuck = false;
    for (i, row) in rows.chunks_exact_mut(vocab).enumerate().take(n + 1) {
        tok.mask_unsampleable(row);
        if let Some(m) = &mut grammar {
            crate::grammar::mask_logits(m, row)?;
            if dead_end(row) {
                stuck = true;
                break;
            }
        }
        let mut p = std::mem::take(&mut sp.target);
        seq.sampler.distribution(row, &seq.tokens[..base + i], &mut p);
        let (token, kept) = if i < n {
            let d = seq.tokens[base + i];
            let u = seq.sampler.uniform();
            match verify(&p, &sp.dists[i], d, u) {
                Verdict::Accept => (d, true),
                Verdict::Resample(r) => (seq.sampler.draw_from(&r), false),
            }
        } else {
            (seq.sampler.draw_from(&p), false)
        };
        sp.target = p;
        emitted.push(seq.sampler.report(row, token));
        if !kept {
            break;
        }
        accepted += 1;
        if let Some(m) = &mut grammar {
            m.consume_token(token).map_err(grammar_err)?;
            if m.is_stopped() {
                break; // the grammar is complete: the sequence ends with this token
            }
        }
    }
    sp.drafted = 0;
    sp.computed = sp.computed.min(base + accepted);
    seq.spec = Some(sp);
    seq.tokens.truncate(base);
    seq.computed = base + accepted;
    group.spec_proposed += n;
    group.spec_accepted += accepted;
    if let Some(sp) = seq.spec.as_mut() {
        sp.pace.update(n, accepted, costs.value(n, accepted, sp.draft_secs));
    }
    let rules = StopRules::of(req, eos);
    let mut piece = String::new();
    for s in emitted {
        if seq.finish.is_some() {
            break;
        }
        piece += &seq.accept(s, tok, &rules)?;
    }
    // An end-of-sequence token is not appended: nothing past the tokens is computed.
    seq.computed = seq.computed.min(seq.tokens.len());
    if stuck && seq.finish.is_none() {
        return Ok(piece + &seq.finish_now(GRAMMAR_DEAD_END, &rules));
    }
    Ok(piece + &force(seq, tok, &rules)?)
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
