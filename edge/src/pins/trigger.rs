//! Debounced rising-edge detection for the trigger input.
//!
//! Photo-eyes and PLC outputs through opto-couplers bounce and pick up spikes. The detector accepts a new level only
//! after it has been *stable* for the debounce time (a glitch filter, as camera trigger inputs usually implement),
//! and reports a rising edge with the instant the line *first* went high, so the part's timing is not shifted by the
//! debounce time. A line that is already high at start-up is not a part arriving: the first sample only sets the
//! initial level.
//!
//! The detector is pure: [`TriggerDetector::update`] takes a level and a time (tests pass explicit `Instant`s);
//! [`TriggerDetector::poll`] reads a pin and uses `Instant::now()`. [`TriggerDetector::next_deadline`] tells a
//! polling thread when a pending level change will have been stable long enough.

use std::time::{Duration, Instant};

use super::{DynInput, PinError};

/// Debounced rising-edge detector; see the module docs.
#[derive(Debug, Clone)]
pub struct TriggerDetector {
    debounce: Duration,
    /// Accepted level; None before the first sample.
    stable: Option<bool>,
    /// A level different from `stable`, and when it was first seen.
    candidate: Option<(bool, Instant)>,
    edges: u64,
    glitches: u64,
}

impl TriggerDetector {
    /// A detector that needs `debounce` of stable level (zero accepts every change at once).
    pub fn new(debounce: Duration) -> Self {
        TriggerDetector {
            debounce,
            stable: None,
            candidate: None,
            edges: 0,
            glitches: 0,
        }
    }

    /// Feeds one sample; returns the instant of the rising edge when one is accepted.
    pub fn update(&mut self, high: bool, now: Instant) -> Option<Instant> {
        let Some(stable) = self.stable else {
            self.stable = Some(high);
            return None;
        };
        if high == stable {
            if self.candidate.take().is_some() {
                self.glitches += 1;
            }
            return None;
        }
        let since = match self.candidate {
            Some((level, since)) if level == high => since,
            _ => {
                self.candidate = Some((high, now));
                now
            }
        };
        if now.saturating_duration_since(since) < self.debounce {
            return None;
        }
        self.stable = Some(high);
        self.candidate = None;
        if high {
            self.edges += 1;
            Some(since)
        } else {
            None
        }
    }

    /// Reads `pin` now and feeds the level to [`update`](Self::update).
    pub fn poll(&mut self, pin: &mut DynInput) -> Result<Option<Instant>, PinError> {
        let high = pin.is_high()?;
        Ok(self.update(high, Instant::now()))
    }

    /// When a pending change will have been stable for the debounce time (poll again then), if one is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.candidate.map(|(_, since)| since + self.debounce)
    }

    /// Rising edges accepted so far.
    pub fn edges(&self) -> u64 {
        self.edges
    }

    /// Level changes rejected as too short.
    pub fn glitches(&self) -> u64 {
        self.glitches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds (ms, level) samples and returns the edge instants as ms offsets.
    fn run(debounce_ms: u64, samples: &[(u64, bool)]) -> (Vec<u64>, TriggerDetector) {
        let t0 = Instant::now();
        let mut d = TriggerDetector::new(Duration::from_millis(debounce_ms));
        let edges = samples
            .iter()
            .filter_map(|&(ms, high)| d.update(high, t0 + Duration::from_millis(ms)))
            .map(|e| (e - t0).as_millis() as u64)
            .collect();
        (edges, d)
    }

    #[test]
    fn zero_debounce_reports_every_rising_edge_at_once() {
        let (edges, d) = run(
            0,
            &[(0, false), (1, true), (2, false), (3, true), (4, true)],
        );
        assert_eq!(edges, [1, 3]);
        assert_eq!(d.edges(), 2);
    }

    #[test]
    fn edge_is_accepted_after_stable_debounce_and_dated_at_its_start() {
        let (edges, _) = run(
            5,
            &[
                (0, false),
                (10, true),
                (12, true),
                (14, true),
                (15, true),
                (16, true),
            ],
        );
        assert_eq!(edges, [10], "accepted at 15 ms, dated 10 ms");
    }

    #[test]
    fn bounces_shorter_than_debounce_are_glitches() {
        let samples = [
            (0, false),
            (10, true),
            (11, false),
            (12, true),
            (13, false),
            (30, false),
        ];
        let (edges, d) = run(5, &samples);
        assert!(edges.is_empty());
        assert_eq!(d.glitches(), 2);
    }

    #[test]
    fn bouncy_rising_edge_counts_once_from_the_last_bounce() {
        let samples = [
            (0, false),
            (10, true),
            (11, false),
            (12, true),
            (17, true),
            (18, true),
            (40, true),
        ];
        let (edges, _) = run(5, &samples);
        assert_eq!(edges, [12]);
    }

    #[test]
    fn falling_edge_is_debounced_too() {
        // A short low blip while a part is present must not create a second part.
        let samples = [
            (0, false),
            (1, true),
            (6, true), // part 1 accepted at 6 ms, dated 1 ms
            (50, false),
            (51, true),
            (52, true), // 1 ms low blip: a glitch, not a new part
            (100, false),
            (110, false), // part 1 leaves
            (111, true),
            (116, true), // part 2
        ];
        let (edges, d) = run(5, &samples);
        assert_eq!(edges, [1, 111]);
        assert_eq!(d.edges(), 2);
        assert_eq!(d.glitches(), 1);
    }

    #[test]
    fn line_high_at_startup_is_not_a_part() {
        let (edges, _) = run(0, &[(0, true), (5, true)]);
        assert!(edges.is_empty());
    }

    #[test]
    fn next_deadline_points_at_the_end_of_the_debounce() {
        let t0 = Instant::now();
        let mut d = TriggerDetector::new(5 * MS);
        d.update(false, t0);
        assert_eq!(d.next_deadline(), None);
        d.update(true, t0 + 2 * MS);
        assert_eq!(d.next_deadline(), Some(t0 + 7 * MS));
    }

    #[test]
    fn poll_reads_the_pin() {
        let board = crate::pins::FakeBoard::new();
        let mut pin: DynInput = Box::new(board.input());
        let mut d = TriggerDetector::new(Duration::ZERO);
        assert_eq!(d.poll(&mut pin).unwrap(), None);
        board.set_trigger(true);
        assert!(d.poll(&mut pin).unwrap().is_some());
        board.set_failing(crate::pins::Signal::Trigger, true);
        assert!(d.poll(&mut pin).is_err());
    }
}
