//! In-memory pins for simulation and tests.
//!
//! A [`FakeBoard`] is a cheap clonable handle on shared state: the runtime owns the pins it hands out
//! ([`FakeInput`], [`FakeOutput`]); a test (or the sim harness) keeps a clone of the board to drive the trigger input,
//! read output levels, wait for a level, inject pin failures, and read the timestamped log of every level change.
//! The log is what reject-timing tests assert against: `(Instant, signal, level)` per transition, on the same
//! monotonic clock the camera stamps frames with.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::PinError;

/// The unit's four signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Part-present input.
    Trigger,
    /// Reject actuator output.
    Reject,
    /// Ready lamp output.
    Ready,
    /// Fault lamp output.
    Fault,
    /// "Alive" heartbeat output to the PLC.
    Alive,
}

impl Signal {
    const ALL: [Signal; 5] = [
        Signal::Trigger,
        Signal::Reject,
        Signal::Ready,
        Signal::Fault,
        Signal::Alive,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Trigger => "trigger",
            Signal::Reject => "reject",
            Signal::Ready => "ready",
            Signal::Fault => "fault",
            Signal::Alive => "alive",
        })
    }
}

/// One level change of one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// When it happened (monotonic).
    pub at: Instant,
    /// Which signal.
    pub signal: Signal,
    /// New logical level.
    pub high: bool,
}

#[derive(Debug, Default)]
struct State {
    levels: [bool; 5],
    failing: [bool; 5],
    log: Vec<Transition>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// Handle on a set of fake pins; see the module docs. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeBoard {
    shared: Arc<Shared>,
}

impl FakeBoard {
    /// A board with every signal low and an empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test thread that panicked while holding the lock must not hide the original failure behind a poison.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, signal: Signal, high: bool) -> Result<(), PinError> {
        let mut st = self.lock();
        if st.failing[signal.index()] {
            return Err(PinError::Io {
                signal,
                reason: "injected failure (FakeBoard::set_failing)".into(),
                source: None,
            });
        }
        if st.levels[signal.index()] != high {
            st.levels[signal.index()] = high;
            st.log.push(Transition {
                at: Instant::now(),
                signal,
                high,
            });
            self.shared.changed.notify_all();
        }
        Ok(())
    }

    fn get(&self, signal: Signal) -> Result<bool, PinError> {
        let st = self.lock();
        if st.failing[signal.index()] {
            return Err(PinError::Io {
                signal,
                reason: "injected failure (FakeBoard::set_failing)".into(),
                source: None,
            });
        }
        Ok(st.levels[signal.index()])
    }

    /// Drives the trigger input (as the photo-eye or PLC would). Logged like any other transition.
    pub fn set_trigger(&self, high: bool) {
        // Driving the input is the test's side; an injected read failure must not stop it.
        let mut st = self.lock();
        let i = Signal::Trigger.index();
        if st.levels[i] != high {
            st.levels[i] = high;
            st.log.push(Transition {
                at: Instant::now(),
                signal: Signal::Trigger,
                high,
            });
            self.shared.changed.notify_all();
        }
    }

    /// Current logical level of a signal.
    pub fn level(&self, signal: Signal) -> bool {
        self.lock().levels[signal.index()]
    }

    /// Makes every read or write of `signal` fail with [`PinError::Io`] (or stop failing).
    pub fn set_failing(&self, signal: Signal, failing: bool) {
        self.lock().failing[signal.index()] = failing;
    }

    /// Every transition so far, oldest first.
    pub fn transitions(&self) -> Vec<Transition> {
        self.lock().log.clone()
    }

    /// The transitions of one signal, oldest first.
    pub fn transitions_of(&self, signal: Signal) -> Vec<Transition> {
        self.lock()
            .log
            .iter()
            .filter(|t| t.signal == signal)
            .copied()
            .collect()
    }

    /// Forgets the log (levels are kept).
    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// Blocks until `signal` is at `high` or `timeout` passes; returns whether it got there.
    pub fn wait_for(&self, signal: Signal, high: bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if st.levels[signal.index()] == high {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// An input pin reading the trigger signal.
    pub fn input(&self) -> FakeInput {
        FakeInput {
            board: self.clone(),
        }
    }

    /// An output pin driving `signal` (use [`Signal::Reject`], [`Signal::Ready`] or [`Signal::Fault`]).
    pub fn output(&self, signal: Signal) -> FakeOutput {
        FakeOutput {
            board: self.clone(),
            signal,
        }
    }

    /// One line per signal with its level, for test failure messages.
    pub fn summary(&self) -> String {
        let st = self.lock();
        Signal::ALL
            .iter()
            .map(|s| format!("{s}={}", u8::from(st.levels[s.index()])))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The fake trigger input.
#[derive(Debug, Clone)]
pub struct FakeInput {
    board: FakeBoard,
}

impl embedded_hal::digital::ErrorType for FakeInput {
    type Error = PinError;
}

impl embedded_hal::digital::InputPin for FakeInput {
    fn is_high(&mut self) -> Result<bool, PinError> {
        self.board.get(Signal::Trigger)
    }
    fn is_low(&mut self) -> Result<bool, PinError> {
        self.board.get(Signal::Trigger).map(|h| !h)
    }
}

/// A fake output line.
#[derive(Debug, Clone)]
pub struct FakeOutput {
    board: FakeBoard,
    signal: Signal,
}

impl embedded_hal::digital::ErrorType for FakeOutput {
    type Error = PinError;
}

impl embedded_hal::digital::OutputPin for FakeOutput {
    fn set_low(&mut self) -> Result<(), PinError> {
        self.board.set(self.signal, false)
    }
    fn set_high(&mut self) -> Result<(), PinError> {
        self.board.set(self.signal, true)
    }
}

impl embedded_hal::digital::StatefulOutputPin for FakeOutput {
    fn is_set_high(&mut self) -> Result<bool, PinError> {
        self.board.get(self.signal)
    }
    fn is_set_low(&mut self) -> Result<bool, PinError> {
        self.board.get(self.signal).map(|h| !h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::digital::{InputPin, OutputPin, StatefulOutputPin};

    #[test]
    fn outputs_log_only_real_transitions() {
        let board = FakeBoard::new();
        let mut lamp = board.output(Signal::Ready);
        lamp.set_low().unwrap(); // already low: no transition
        lamp.set_high().unwrap();
        lamp.set_high().unwrap();
        lamp.set_low().unwrap();
        let log = board.transitions_of(Signal::Ready);
        assert_eq!(
            log.iter().map(|t| t.high).collect::<Vec<_>>(),
            [true, false]
        );
        assert!(log[0].at <= log[1].at);
        assert!(board.transitions_of(Signal::Reject).is_empty());
        assert!(!lamp.is_set_high().unwrap());
    }

    #[test]
    fn trigger_is_driven_by_the_board_and_read_by_the_pin() {
        let board = FakeBoard::new();
        let mut input = board.input();
        assert!(input.is_low().unwrap());
        board.set_trigger(true);
        assert!(input.is_high().unwrap());
        assert_eq!(board.transitions().len(), 1);
    }

    #[test]
    fn injected_failures_surface_as_pin_errors() {
        let board = FakeBoard::new();
        let mut reject = board.output(Signal::Reject);
        board.set_failing(Signal::Reject, true);
        let err = reject.set_high().unwrap_err();
        assert!(
            matches!(
                err,
                PinError::Io {
                    signal: Signal::Reject,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!board.level(Signal::Reject));
        board.set_failing(Signal::Reject, false);
        reject.set_high().unwrap();
        assert!(board.level(Signal::Reject));
    }

    #[test]
    fn wait_for_sees_a_change_from_another_thread() {
        let board = FakeBoard::new();
        let mut fault = board.output(Signal::Fault);
        let t = std::thread::spawn(move || fault.set_high().unwrap());
        assert!(board.wait_for(Signal::Fault, true, Duration::from_secs(5)));
        t.join().unwrap();
        assert!(!board.wait_for(Signal::Ready, true, Duration::from_millis(1)));
        assert_eq!(
            board.summary(),
            "trigger=0 reject=0 ready=0 fault=1 alive=0"
        );
    }
}
