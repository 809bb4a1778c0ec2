//! Reject-pulse scheduling on a monotonic clock.
//!
//! A part is seen by the camera at its capture time `t`; it reaches the reject actuator (air jet, pusher, diverter)
//! after a fixed conveyor travel time. So the pulse for a rejected part is the window
//! `[t + reject_delay, t + reject_delay + reject_pulse)`, computed from the *capture* time — never from when
//! inference happened to finish — which keeps the pulse on the part whatever the inference latency (as long as it
//! is below the delay).
//!
//! Windows that overlap or touch merge into one longer pulse: two adjacent bad parts must not get a glitch of a few
//! microseconds between their pulses, which a solenoid cannot follow anyway.
//!
//! The scheduler is pure bookkeeping plus one pin write per level change. The I/O thread calls
//! [`RejectScheduler::poll`] with the current time (and sleeps until [`RejectScheduler::next_deadline`]); tests
//! call it with explicit `Instant`s, so the timing logic is tested without sleeping. Windows that were already over
//! before they could be driven (inference slower than the conveyor) are counted as *missed* — a fault the runtime
//! must report — and the lag of every pulse start is recorded.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{DynOutput, PinError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: Instant,
    end: Instant,
    /// Parts whose pulses merged into this window.
    parts: u64,
    /// The output was driven high for this window.
    started: bool,
}

/// Counters of a [`RejectScheduler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectStats {
    /// Parts scheduled for rejection.
    pub scheduled: u64,
    /// Pulses driven (merged windows count once).
    pub pulses: u64,
    /// Parts whose whole window had passed before it could be driven (the part went by unrejected).
    pub missed: u64,
    /// Largest delay between a window's start and the moment the output was driven high.
    pub max_lag: Duration,
}

/// Schedules reject pulses; see the module docs.
#[derive(Debug)]
pub struct RejectScheduler {
    delay: Duration,
    pulse: Duration,
    /// Sorted by start, pairwise disjoint and non-adjacent.
    windows: VecDeque<Window>,
    /// Level last written to the pin successfully.
    driven_high: bool,
    stats: RejectStats,
}

impl RejectScheduler {
    /// A scheduler for `delay` of conveyor travel and pulses of `pulse`.
    pub fn new(delay: Duration, pulse: Duration) -> Self {
        RejectScheduler {
            delay,
            pulse,
            windows: VecDeque::new(),
            driven_high: false,
            stats: RejectStats::default(),
        }
    }

    /// Schedules the pulse for a part captured at `capture`.
    pub fn schedule(&mut self, capture: Instant) {
        self.stats.scheduled += 1;
        let start = capture + self.delay;
        let mut w = Window {
            start,
            end: start + self.pulse,
            parts: 1,
            started: false,
        };
        // Absorb every window that overlaps or touches the new one, then insert in order.
        let mut i = 0;
        while i < self.windows.len() {
            let o = self.windows[i];
            if o.start <= w.end && w.start <= o.end {
                w.start = w.start.min(o.start);
                w.end = w.end.max(o.end);
                w.parts += o.parts;
                w.started |= o.started;
                self.windows.remove(i);
            } else {
                i += 1;
            }
        }
        let at = self.windows.partition_point(|o| o.start < w.start);
        self.windows.insert(at, w);
    }

    /// Drives the output to what the schedule wants at `now`. A pin error leaves the schedule as it was, so the next
    /// poll retries the write.
    pub fn poll(&mut self, now: Instant, pin: &mut DynOutput) -> Result<(), PinError> {
        // Retire windows that are over.
        while let Some(front) = self.windows.front() {
            if front.end > now {
                break;
            }
            if !front.started {
                self.stats.missed += front.parts;
            }
            self.windows.pop_front();
        }
        let want_high = self.windows.front().is_some_and(|w| w.start <= now);
        if want_high != self.driven_high {
            if want_high {
                pin.set_high()?;
            } else {
                pin.set_low()?;
            }
            self.driven_high = want_high;
        }
        if want_high {
            if let Some(w) = self.windows.front_mut() {
                if !w.started {
                    w.started = true;
                    self.stats.pulses += 1;
                    self.stats.max_lag = self.stats.max_lag.max(now - w.start);
                }
            }
        }
        Ok(())
    }

    /// When `poll` must next be called: the end of the pulse being driven, or the start of the next one.
    pub fn next_deadline(&self) -> Option<Instant> {
        let front = self.windows.front()?;
        Some(if self.driven_high {
            front.end
        } else {
            front.start
        })
    }

    /// Whether the output is currently driven high.
    pub fn is_active(&self) -> bool {
        self.driven_high
    }

    /// Windows not yet finished.
    pub fn pending(&self) -> usize {
        self.windows.len()
    }

    /// Counters since creation.
    pub fn stats(&self) -> RejectStats {
        self.stats
    }

    /// Drops every pending window and drives the output low (shutdown, or a fault that stops the line).
    pub fn cancel_all(&mut self, pin: &mut DynOutput) -> Result<(), PinError> {
        self.windows.clear();
        pin.set_low()?;
        self.driven_high = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pins::{FakeBoard, Signal};

    const MS: Duration = Duration::from_millis(1);

    fn setup(delay_ms: u64, pulse_ms: u64) -> (RejectScheduler, DynOutput, FakeBoard) {
        let board = FakeBoard::new();
        let pin: DynOutput = Box::new(board.output(Signal::Reject));
        (
            RejectScheduler::new(
                Duration::from_millis(delay_ms),
                Duration::from_millis(pulse_ms),
            ),
            pin,
            board,
        )
    }

    /// Polls at each offset (ms from t0) and returns the level after each poll.
    fn levels(
        s: &mut RejectScheduler,
        pin: &mut DynOutput,
        board: &FakeBoard,
        t0: Instant,
        at: &[u64],
    ) -> Vec<bool> {
        at.iter()
            .map(|&ms| {
                s.poll(t0 + Duration::from_millis(ms), pin).unwrap();
                board.level(Signal::Reject)
            })
            .collect()
    }

    #[test]
    fn pulse_starts_after_the_delay_and_lasts_the_pulse() {
        let (mut s, mut pin, board) = setup(100, 20);
        let t0 = Instant::now();
        s.schedule(t0);
        assert_eq!(s.next_deadline(), Some(t0 + 100 * MS));
        assert_eq!(
            levels(&mut s, &mut pin, &board, t0, &[0, 99]),
            [false, false]
        );
        assert_eq!(levels(&mut s, &mut pin, &board, t0, &[100]), [true]);
        assert_eq!(s.next_deadline(), Some(t0 + 120 * MS));
        assert_eq!(
            levels(&mut s, &mut pin, &board, t0, &[119, 120, 500]),
            [true, false, false]
        );
        assert_eq!(s.next_deadline(), None);
        assert_eq!(
            s.stats(),
            RejectStats {
                scheduled: 1,
                pulses: 1,
                missed: 0,
                max_lag: Duration::ZERO
            }
        );
        assert_eq!(
            board.transitions_of(Signal::Reject).len(),
            2,
            "exactly one rising and one falling edge"
        );
    }

    #[test]
    fn overlapping_and_touching_pulses_merge() {
        let (mut s, mut pin, board) = setup(50, 20);
        let t0 = Instant::now();
        s.schedule(t0); // 50..70
        s.schedule(t0 + 10 * MS); // 60..80 overlaps
        s.schedule(t0 + 30 * MS); // 80..100 touches
        s.schedule(t0 + 200 * MS); // 250..270 separate
        assert_eq!(s.pending(), 2);
        let got = levels(
            &mut s,
            &mut pin,
            &board,
            t0,
            &[50, 70, 80, 99, 100, 249, 250, 270],
        );
        assert_eq!(got, [true, true, true, true, false, false, true, false]);
        let st = s.stats();
        assert_eq!((st.scheduled, st.pulses, st.missed), (4, 2, 0));
        assert_eq!(board.transitions_of(Signal::Reject).len(), 4);
    }

    #[test]
    fn out_of_order_schedules_are_sorted() {
        let (mut s, mut pin, board) = setup(10, 5);
        let t0 = Instant::now();
        s.schedule(t0 + 100 * MS); // 110..115
        s.schedule(t0); // 10..15
        assert_eq!(s.next_deadline(), Some(t0 + 10 * MS));
        assert_eq!(
            levels(&mut s, &mut pin, &board, t0, &[10, 15, 110, 115]),
            [true, false, true, false]
        );
    }

    #[test]
    fn a_window_already_over_is_counted_missed_and_never_pulsed() {
        let (mut s, mut pin, board) = setup(10, 5);
        let t0 = Instant::now();
        s.schedule(t0);
        s.poll(t0 + 40 * MS, &mut pin).unwrap();
        assert!(!board.level(Signal::Reject));
        assert_eq!(s.stats().missed, 1);
        assert_eq!(s.stats().pulses, 0);
        assert!(board.transitions_of(Signal::Reject).is_empty());
    }

    #[test]
    fn a_late_start_is_driven_and_its_lag_recorded() {
        let (mut s, mut pin, board) = setup(10, 20);
        let t0 = Instant::now();
        s.schedule(t0);
        s.poll(t0 + 13 * MS, &mut pin).unwrap();
        assert!(board.level(Signal::Reject));
        assert_eq!(s.stats().max_lag, 3 * MS);
    }

    #[test]
    fn pin_failure_is_reported_and_retried() {
        let (mut s, mut pin, board) = setup(0, 10);
        let t0 = Instant::now();
        s.schedule(t0);
        board.set_failing(Signal::Reject, true);
        assert!(s.poll(t0 + MS, &mut pin).is_err());
        assert!(!s.is_active());
        board.set_failing(Signal::Reject, false);
        s.poll(t0 + 2 * MS, &mut pin).unwrap();
        assert!(board.level(Signal::Reject) && s.is_active());
    }

    #[test]
    fn cancel_all_drops_the_schedule_and_releases_the_output() {
        let (mut s, mut pin, board) = setup(0, 100);
        let t0 = Instant::now();
        s.schedule(t0);
        s.poll(t0, &mut pin).unwrap();
        assert!(board.level(Signal::Reject));
        s.cancel_all(&mut pin).unwrap();
        assert!(!board.level(Signal::Reject));
        assert_eq!(s.next_deadline(), None);
    }
}
