//! How many tokens a speculating sequence's draft proposes next, from how
//! its last proposals fared (the scheduler asks, verification reports).

/// The most steps a sequence goes without drafting after proposals failed
/// (the draft then catches up on the skipped tokens in one pass).
const MAX_BACKOFF: usize = 16;

/// Per sequence, how many tokens the draft proposes next: up to `gamma`,
/// grown by 2 after a step that kept every proposal and shrunk by 1 after
/// one that did not (as transformers' assisted generation does); after a
/// step that kept none (or where the draft was unsure of its first token)
/// drafting pauses for 1, 2, 4, .. `MAX_BACKOFF` steps, so a draft that
/// does not match the text (prose for a code model) costs next to nothing.
/// One kept token barely pays for the draft passes it took, so only two or
/// more end a pause's doubling.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    limit: usize,
    skip: usize,
    backoff: usize,
}

impl Default for Pace {
    fn default() -> Self {
        Self { limit: 4, skip: 0, backoff: 0 }
    }
}

impl Pace {
    /// Tokens to propose this step (0 while paused), at most `gamma`.
    pub fn next(&mut self, gamma: usize) -> usize {
        if self.skip > 0 {
            self.skip -= 1;
            return 0;
        }
        self.limit.clamp(1, gamma.max(1))
    }

    /// `accepted` of `proposed` proposals (proposed > 0) were kept, or the
    /// draft proposed nothing though asked to (proposed == 0).
    pub fn update(&mut self, proposed: usize, accepted: usize) {
        if proposed > 0 && accepted == proposed {
            self.limit += 2;
        } else {
            self.limit = self.limit.saturating_sub(1).max(1);
        }
        if accepted == 0 {
            self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
            self.skip = self.backoff;
        } else if accepted >= 2 {
            self.backoff = 0;
        }
    }
}
