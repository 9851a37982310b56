//! How many tokens a speculating sequence's draft proposes next, from what
//! its last proposals were worth (the scheduler asks, verification reports),
//! and what a step costs on this machine (`Costs`, measured by the engine).

/// The most steps a sequence goes without drafting after drafting did not
/// pay (the draft then catches up on the skipped tokens in one pass).
const MAX_BACKOFF: usize = 128;

/// A speculating sequence's decoding steps 0, PLAIN_EVERY, 2 PLAIN_EVERY ..
/// propose nothing: once the draft proposes at every step, a plain step is
/// otherwise never seen, and its cost is what each kept token saves. Counted
/// per sequence, so that the same request drafts the same way each time.
const PLAIN_EVERY: usize = 64;

/// A draft pass, a verified row and a target step, in seconds, as the
/// engine measures them (moving averages over its steps): what a step of
/// speculation costs a sequence and what its kept tokens save.
#[derive(Debug, Default, Clone, Copy)]
pub struct Costs {
    /// A target step whose sequences all decode one token.
    step: Option<f64>,
    /// What each proposal row adds to such a step.
    row: Option<f64>,
    /// A sequence's share of a draft pass that reads a step's tokens (not
    /// one catching up).
    pass: Option<f64>,
    /// Times are not weighed (`NO_PAUSES_ENV`): drafting never pauses.
    untimed: bool,
}

/// Set to 1: drafting never pauses, so that where a request drafts depends
/// on its text alone, not on measured times (for comparisons).
pub const NO_PAUSES_ENV: &str = "MISTRALRS_SPEC_NO_PAUSES";

fn average(old: Option<f64>, x: f64) -> Option<f64> {
    Some(old.map_or(x, |o| 0.8 * o + 0.2 * x))
}

impl Costs {
    /// Costs still to measure; untimed where `NO_PAUSES_ENV` says so.
    pub fn from_env() -> Self {
        Self { untimed: std::env::var_os(NO_PAUSES_ENV).is_some_and(|v| v == "1"), ..Self::default() }
    }

    /// A target step of decoding sequences took `secs` with `proposals`
    /// proposal rows among them.
    pub fn observe(&mut self, secs: f64, proposals: usize) {
        if proposals == 0 {
            self.step = average(self.step, secs);
        } else if let Some(step) = self.step {
            self.row = average(self.row, ((secs - step) / proposals as f64).max(0.0));
        }
    }

    /// What a sequence is charged for its `share` of a draft pass (seconds).
    /// A pass `catching_up` (on a prompt, or after a pause) is charged as a
    /// step's pass, once one is measured: what it reads past that is spent
    /// whatever the pace does next, so it would only skew the pacing. A
    /// step's pass is charged what it took, and measured.
    pub fn charge_pass(&mut self, share: f64, catching_up: bool) -> f64 {
        if catching_up {
            return self.pass.unwrap_or(share);
        }
        self.pass = average(self.pass, share);
        share
    }

    /// Seconds a sequence's step of speculation saved (negative: lost):
    /// `accepted` tokens it did not have to decode one step each, less its
    /// share of the draft's passes (`draft`, each charged as a step's
    /// pass) and the verification of its `proposed` rows. Before any plain
    /// step is measured (or untimed), kept tokens count as free (the draft
    /// is tried).
    pub fn value(&self, proposed: usize, accepted: usize, draft: f64) -> f64 {
        let Some(step) = self.step.filter(|_| !self.untimed) else { return accepted as f64 };
        accepted as f64 * step - draft - proposed as f64 * self.row.unwrap_or(0.0)
    }
}

/// Per sequence, how many tokens the draft proposes next: up to `gamma`,
/// grown by 2 after a step that kept every proposal and shrunk by 1 after
/// one that did not (as transformers' assisted generation does). Drafting
/// pauses while it does not pay: when the moving value of its steps (what
/// they saved less what they cost, `Costs::value`) is negative, for 1, 2,
/// 4, .. `MAX_BACKOFF` steps, so a draft that does not match the text
/// costs little; a step that pays again ends the pauses. The catch-up pass
/// after a pause is charged as a step's pass: what it reads past that is
/// spent whatever the pace does next, and charging it made one slow resume
/// look like a failing draft (Qwen2.5-Coder 0.5B for 1.5B on prose paused
/// for ever longer, then caught up on every skipped token).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    limit: usize,
    skip: usize,
    backoff: usize,
    /// Moving value of this sequence's steps of speculation (seconds).
    worth: f64,
    /// Decoding steps planned so far.
    planned: usize,
}

impl Default for Pace {
    fn default() -> Self {
        Self { limit: 4, skip: 0, backoff: 0, worth: 0.0, planned: 0 }
    }
}

impl Pace {
    /// Tokens to propose this step (0 while paused, and at every
    /// PLAIN_EVERY-th step from the first), at most `gamma`.
    pub fn next(&mut self, gamma: usize) -> usize {
        self.planned += 1;
        if (self.planned - 1).is_multiple_of(PLAIN_EVERY) {
            return 0;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return 0;
        }
        self.limit.clamp(1, gamma.max(1))
    }

    /// `accepted` of `proposed` proposals were kept (proposed == 0: the
    /// draft was unsure of its first token), and the step was worth `value`
    /// seconds (`Costs::value`).
    pub fn update(&mut self, proposed: usize, accepted: usize, value: f64) {
        if proposed > 0 && accepted == proposed {
            self.limit += 2;
        } else {
            self.limit = self.limit.saturating_sub(1).max(1);
        }
        self.worth = 0.5 * self.worth + 0.5 * value;
        if self.worth < 0.0 {
            self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
            self.skip = self.backoff;
        } else {
            self.backoff = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_weigh_kept_tokens_against_draft_and_rows() {
        let mut c = Costs::default();
        assert_eq!(c.value(2, 2, 0.5), 2.0, "unmeasured: kept tokens count");
        c.observe(0.040, 0);
        c.observe(0.050, 2); // 5 ms a row
        assert!((c.value(2, 2, 0.020) - (2.0 * 0.040 - 0.020 - 2.0 * 0.005)).abs() < 1e-12);
        assert!(c.value(0, 0, 0.015) < 0.0);
    }

    #[test]
    fn plain_steps_come_first_then_one_in_plain_every() {
        let mut p = Pace::default();
        let plain: Vec<usize> = (0..3 * PLAIN_EVERY).filter(|_| p.next(8) == 0).collect();
        assert_eq!(plain, [0, PLAIN_EVERY, 2 * PLAIN_EVERY]);
    }

    #[test]
    fn drafting_pauses_while_it_loses_and_resumes_when_it_pays() {
        let mut p = Pace::default();
        assert_eq!(p.next(8), 0, "the first step is plain");
        assert_eq!(p.next(8), 4);
        let mut paused = Vec::new();
        for _ in 0..4 {
            p.update(0, 0, -0.015);
            let mut skipped = 0;
            while p.next(8) == 0 {
                skipped += 1;
            }
            paused.push(skipped);
        }
        assert_eq!(paused, [1, 2, 4, 8]);
        p.update(3, 3, 0.100);
        assert_eq!(p.next(8), 3, "no pause after a step that pays; the limit grows from 1 by 2");
    }
}
