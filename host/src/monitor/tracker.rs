//! Which journal sequence numbers the monitor has shown, so replays after a reconnect fill gaps without showing a
//! verdict twice.
//!
//! The unit numbers every verdict in its journal (`Verdict::seq`, contiguous). The tracker keeps a *watermark*
//! (every seq below it has been seen or given up on) plus the set of seqs seen above it. Memory stays small: the set
//! only holds verdicts that arrived ahead of a gap, and gaps are closed by a replay or given up when the unit says
//! its journal no longer holds them ([`SeqTracker::give_up_below`]).

use std::collections::BTreeSet;

/// Whether a verdict is new to the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: show it.
    New,
    /// Already shown (live and replayed copies of the same journal entry): drop it.
    Duplicate,
}

/// Watermark + out-of-order set over journal sequence numbers.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    next: Option<u64>,
    ahead: BTreeSet<u64>,
}

impl SeqTracker {
    /// A tracker that starts at the first seq it observes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker that expects `seq` first (e.g. `--replay-from`): anything below counts as seen.
    pub fn starting_at(seq: u64) -> Self {
        SeqTracker {
            next: Some(seq),
            ahead: BTreeSet::new(),
        }
    }

    /// Record `seq`.
    pub fn observe(&mut self, seq: u64) -> Seen {
        let Some(next) = self.next else {
            self.next = Some(seq.saturating_add(1));
            return Seen::New;
        };
        if seq < next || self.ahead.contains(&seq) {
            return Seen::Duplicate;
        }
        if seq == next {
            self.next = Some(next + 1);
            self.absorb();
        } else {
            self.ahead.insert(seq);
        }
        Seen::New
    }

    /// Where a replay should start so nothing after the last contiguous verdict is missed; `None` before the first.
    pub fn resume_from(&self) -> Option<u64> {
        self.next
    }

    /// Whether some seq is missing below one that was seen.
    pub fn has_gap(&self) -> bool {
        !self.ahead.is_empty()
    }

    /// The highest seq seen beyond a gap, if any.
    pub fn max_ahead(&self) -> Option<u64> {
        self.ahead.last().copied()
    }

    /// Give up on every missing seq below `end` (the unit's journal no longer holds them); returns how many.
    pub fn give_up_below(&mut self, end: u64) -> u64 {
        let Some(next) = self.next else {
            self.next = Some(end);
            return 0;
        };
        if end <= next {
            return 0;
        }
        let seen: Vec<u64> = self.ahead.range(next..end).copied().collect();
        for s in &seen {
            self.ahead.remove(s);
        }
        self.next = Some(end);
        self.absorb();
        (end - next) - seen.len() as u64
    }

    fn absorb(&mut self) {
        if let Some(mut next) = self.next {
            while self.ahead.remove(&next) {
                next += 1;
            }
            self.next = Some(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn contiguous_then_gap_then_fill() {
        let mut t = SeqTracker::new();
        assert_eq!(t.observe(10), Seen::New);
        assert_eq!(t.observe(11), Seen::New);
        assert_eq!(t.observe(14), Seen::New);
        assert!(t.has_gap());
        assert_eq!(t.resume_from(), Some(12));
        assert_eq!(t.observe(11), Seen::Duplicate);
        assert_eq!(t.observe(12), Seen::New);
        assert_eq!(t.observe(13), Seen::New);
        assert_eq!(t.observe(14), Seen::Duplicate);
        assert!(!t.has_gap());
        assert_eq!(t.resume_from(), Some(15));
    }

    #[test]
    fn giving_up_counts_only_the_missing() {
        let mut t = SeqTracker::starting_at(0);
        t.observe(0);
        t.observe(3);
        t.observe(5);
        // 1, 2 and 4 are missing below 6; 3 and 5 were seen.
        assert_eq!(t.give_up_below(6), 3);
        assert_eq!(t.resume_from(), Some(6));
        assert!(!t.has_gap());
        assert_eq!(t.give_up_below(2), 0);
    }

    proptest! {
        /// However copies arrive (replays overlapping live verdicts, reordered), each seq is new exactly once.
        #[test]
        fn every_seq_is_new_exactly_once(
            start in 0u64..1000,
            order in proptest::collection::vec(0u64..40, 1..120),
        ) {
            let mut t = SeqTracker::starting_at(start);
            let mut shown = std::collections::BTreeSet::new();
            for off in &order {
                let seq = start + off;
                let seen = t.observe(seq);
                prop_assert_eq!(seen == Seen::New, shown.insert(seq));
            }
            let all: std::collections::BTreeSet<u64> = order.iter().map(|o| start + o).collect();
            prop_assert_eq!(shown, all);
        }
    }
}
