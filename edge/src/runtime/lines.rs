//! The line-I/O thread: sole owner of the pins. It polls the trigger input (debounced), drives reject pulses from
//! [`RejectScheduler`] on the monotonic clock, sets the lamps on request, and enforces part **deadlines**: every
//! part the unit has committed to judge is announced with [`IoCmd::Expect`]; if its verdict has not claimed it by
//! `reference instant + reject_delay − margin`, this thread claims it and applies `on_late` (reject by default) in
//! time for the part's pulse window, then tells the runtime (`LineEvents::late`). Whoever claims a part first (the
//! inference thread with a verdict, or this thread at the deadline) decides it; the other learns it was late.
//!
//! Why a dedicated thread: reject pulses must start within a millisecond or two of their deadline whatever the
//! inference or link load, so the thread that drives them does nothing else and sleeps exactly until the next
//! deadline (or the next trigger poll).

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use kestrel_wire::FaultCode;

use crate::pins::{LineIo, PinError, RejectScheduler, TriggerDetector};

/// Trigger input sampling period in triggered mode.
pub const TRIGGER_POLL: Duration = Duration::from_millis(1);
/// Half period of the "alive" output: it toggles this often while every thread of the unit beats.
pub const ALIVE_PERIOD: Duration = Duration::from_millis(250);
/// Longest wait for pending reject pulses at shutdown (parts already inspected are still on the conveyor).
pub const SHUTDOWN_PULSE_WAIT: Duration = Duration::from_secs(5);

/// Requests to the I/O thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCmd {
    /// Reject the part seen at this instant (pulse after the profile's delay).
    Reject(Instant),
    /// Watch part `part` (reference instant `at`): decide it by `on_late` if nobody claims it by its deadline.
    Expect {
        /// The runtime's part number.
        part: u64,
        /// The part's reference instant (trigger edge or capture time).
        at: Instant,
    },
    /// Set both lamps.
    Lamps {
        /// Ready lamp.
        ready: bool,
        /// Fault lamp.
        fault: bool,
    },
    /// Finish pending pulses, switch everything off, end the thread.
    Shutdown,
}

/// Callbacks from the I/O thread into the runtime.
pub trait LineEvents: Send {
    /// A debounced rising edge on the trigger input, at the instant the line first went high.
    fn trigger(&self, at: Instant);
    /// A pin failed (reported once per failure streak).
    fn fault(&self, code: FaultCode, detail: String);
    /// Claim the decision on `part`; `true` for exactly one caller (see the module docs).
    fn claim(&self, part: u64) -> bool;
    /// `part` reached its deadline unclaimed; this thread applied `on_late` (`rejected` says which way).
    fn late(&self, part: u64, rejected: bool);
    /// Called on every turn of the loop (the watchdog's heartbeat).
    fn alive(&self) {}
    /// Whether every thread of the unit is beating (the "alive" output toggles only then).
    fn healthy(&self) -> bool {
        true
    }
}

/// When parts are due and what a late one gets.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From a part's reference instant to its deadline (`reject_delay − margin`).
    pub after: Duration,
    /// Reject late parts (`on_late = "reject"`), or let them pass.
    pub reject_late: bool,
}

/// Run the I/O loop until [`IoCmd::Shutdown`] (or the runtime drops its sender).
pub fn run(
    mut io: LineIo,
    rx: Receiver<IoCmd>,
    mut sched: RejectScheduler,
    mut trigger: Option<TriggerDetector>,
    deadlines: Deadlines,
    events: &dyn LineEvents,
) {
    let mut alive_level = false;
    let mut alive_next = Instant::now();
    // (deadline, part, reference instant), earliest first.
    let mut due: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u64, Instant)>> =
        std::collections::BinaryHeap::new();
    let mut failing = false;
    let mut report = |r: Result<(), PinError>, what: &str| match r {
        Ok(()) => failing = false,
        Err(e) => {
            if !failing {
                tracing::error!(error = %e, what, "line I/O failed");
                events.fault(
                    FaultCode::Gpio,
                    format!("{what}: {}", crate::error_text(&e)),
                );
            }
            failing = true;
        }
    };
    loop {
        events.alive();
        let now = Instant::now();
        if let (Some(det), Some(pin)) = (trigger.as_mut(), io.trigger.as_mut()) {
            match det.poll(pin) {
                Ok(Some(at)) => events.trigger(at),
                Ok(None) => {}
                Err(e) => report(Err(e), "reading the trigger input"),
            }
        }
        while let Some(&std::cmp::Reverse((deadline, part, at))) = due.peek() {
            if deadline > now {
                break;
            }
            due.pop();
            if events.claim(part) {
                if deadlines.reject_late {
                    sched.schedule(at);
                }
                events.late(part, deadlines.reject_late);
            }
        }
        let r = sched.poll(now, &mut io.reject);
        report(r, "driving the reject output");
        if let Some(pin) = io.alive.as_mut() {
            if now >= alive_next {
                alive_next = now + ALIVE_PERIOD;
                if events.healthy() {
                    alive_level = !alive_level;
                    let r = pin.set_state(alive_level.into());
                    report(r, "toggling the alive output");
                }
            }
        }
        let mut wait = if trigger.is_some() {
            TRIGGER_POLL
        } else {
            Duration::from_millis(100)
        };
        if let Some(d) = sched.next_deadline() {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        if let Some(std::cmp::Reverse((d, _, _))) = due.peek() {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        match rx.recv_timeout(wait) {
            Ok(IoCmd::Reject(at)) => sched.schedule(at),
            Ok(IoCmd::Expect { part, at }) => {
                due.push(std::cmp::Reverse((at + deadlines.after, part, at)))
            }
            Ok(IoCmd::Lamps { ready, fault }) => {
                let r = io.ready.set_state(ready.into());
                report(r, "switching the ready lamp");
                let r = io.fault.set_state(fault.into());
                report(r, "switching the fault lamp");
            }
            Ok(IoCmd::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
    // Parts already judged bad are still travelling to the actuator: finish their pulses, within reason.
    let until = Instant::now() + SHUTDOWN_PULSE_WAIT;
    while let Some(d) = sched.next_deadline() {
        if d > until {
            break;
        }
        std::thread::sleep(d.saturating_duration_since(Instant::now()));
        let r = sched.poll(Instant::now(), &mut io.reject);
        report(r, "driving the reject output");
    }
    let r = sched.cancel_all(&mut io.reject);
    report(r, "releasing the reject output");
    let r = io.ready.set_low();
    report(r, "switching the ready lamp off");
    let r = io.fault.set_low();
    report(r, "switching the fault lamp off");
    if let Some(pin) = io.alive.as_mut() {
        let r = pin.set_low();
        report(r, "releasing the alive output");
    }
}
