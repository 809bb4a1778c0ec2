//! Line I/O: the trigger input, the reject output and the ready/fault lamps, behind embedded-hal 1.0 traits.
//!
//! The runtime only ever sees `embedded_hal::digital::{InputPin, OutputPin}` trait objects ([`DynInput`],
//! [`DynOutput`]) with one error type ([`PinError`]); which hardware is behind them is decided once, here, from the
//! board profile:
//! - `kind = "fake"`: in-memory pins ([`FakeBoard`]) that tests (and `sim.toml`) drive and observe, with a
//!   timestamped transition log so reject timing can be asserted;
//! - `kind = "gpio-cdev"` (feature `gpio-cdev`): Linux GPIO character-device lines (`/dev/gpiochipN`, found by chip
//!   path or label, line by name or offset, optional active-low) through `gpiocdev-embedded-hal`. Without the
//!   feature, opening such a profile fails with [`PinError::NotCompiled`] instead of failing to build.
//!
//! Levels are *logical*: `set_high` on the reject output means "reject", whatever the line's polarity; active-low
//! inversion happens in the kernel (the line is requested active-low), so fakes and real pins behave the same.
//!
//! Timing logic is kept out of the pins and tested with explicit `Instant`s, no sleeps:
//! - [`RejectScheduler`]: pulse `reject_delay_ms` after a part's capture time, for `reject_pulse_ms`; overlapping
//!   pulses merge into one.
//! - [`TriggerDetector`]: debounced rising-edge detection on a polled input.

mod fake;
mod reject;
mod trigger;

#[cfg(feature = "gpio-cdev")]
mod cdev;

pub use fake::{FakeBoard, FakeInput, FakeOutput, Signal, Transition};
pub use reject::{RejectScheduler, RejectStats};
pub use trigger::TriggerDetector;

use crate::board::PinsConfig;

/// The one error type of every pin the unit uses (fake or real).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The binary was built without the cargo feature this backend needs.
    #[error("pins kind {kind:?} needs kestrel-edge built with feature `{feature}` (cargo build --features {feature})")]
    NotCompiled {
        /// Pins kind from the profile.
        kind: &'static str,
        /// Missing cargo feature.
        feature: &'static str,
    },
    /// The GPIO chip could not be found or opened.
    #[error("GPIO chip {chip}: {reason}")]
    Chip {
        /// Chip path or label from the profile.
        chip: String,
        /// What failed or what to check.
        reason: String,
        /// The driver error, when a driver call failed.
        #[source]
        source: Option<GpioCause>,
    },
    /// A line could not be found or requested.
    #[error("GPIO {signal} {line}: {reason}")]
    Line {
        /// Which signal (trigger, reject, ...).
        signal: Signal,
        /// The line as written in the profile.
        line: String,
        /// What failed or what to check.
        reason: String,
        /// The driver error, when a driver call failed.
        #[source]
        source: Option<GpioCause>,
    },
    /// Reading or driving a line failed at run time.
    #[error("GPIO {signal}: {reason}")]
    Io {
        /// Which signal.
        signal: Signal,
        /// What failed.
        reason: String,
        /// The driver error, when a driver call failed.
        #[source]
        source: Option<GpioCause>,
    },
}

/// The driver error behind a [`PinError`] on real GPIO lines (`gpiocdev` errors convert into it).
#[cfg(feature = "gpio-cdev")]
pub type GpioCause = gpiocdev_embedded_hal::Error;
/// The driver error behind a [`PinError`]: none without a GPIO backend compiled in.
#[cfg(not(feature = "gpio-cdev"))]
pub type GpioCause = std::convert::Infallible;

impl embedded_hal::digital::Error for PinError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

/// A boxed input pin (the trigger).
pub type DynInput = Box<dyn embedded_hal::digital::InputPin<Error = PinError> + Send>;
/// A boxed output pin (reject, lamps).
pub type DynOutput = Box<dyn embedded_hal::digital::OutputPin<Error = PinError> + Send>;

/// The unit's lines, opened.
pub struct LineIo {
    /// Part-present input; None on boards without one (free-run only).
    pub trigger: Option<DynInput>,
    /// Reject actuator.
    pub reject: DynOutput,
    /// "Ready" lamp.
    pub ready: DynOutput,
    /// Fault lamp.
    pub fault: DynOutput,
    /// "Alive" output to the PLC: toggles every [`crate::runtime::lines::ALIVE_PERIOD`] while every thread of the
    /// unit runs, and stops toggling when one hangs or the process dies (the PLC watches for edges).
    pub alive: Option<DynOutput>,
}

impl std::fmt::Debug for LineIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineIo")
            .field("trigger", &self.trigger.is_some())
            .finish_non_exhaustive()
    }
}

/// Opens the lines a board profile describes. Outputs start low (not rejecting, lamps off). For `kind = "fake"` the
/// second value is the [`FakeBoard`] that drives and observes them.
pub fn open(cfg: &PinsConfig) -> Result<(LineIo, Option<FakeBoard>), PinError> {
    match cfg {
        PinsConfig::Fake => {
            let board = FakeBoard::new();
            let io = LineIo {
                trigger: Some(Box::new(board.input())),
                reject: Box::new(board.output(Signal::Reject)),
                ready: Box::new(board.output(Signal::Ready)),
                fault: Box::new(board.output(Signal::Fault)),
                alive: Some(Box::new(board.output(Signal::Alive))),
            };
            Ok((io, Some(board)))
        }
        #[cfg(feature = "gpio-cdev")]
        PinsConfig::GpioCdev {
            chip,
            trigger,
            reject,
            ready,
            fault,
            alive,
        } => Ok((
            cdev::open(chip, trigger.as_ref(), reject, ready, fault, alive.as_ref())?,
            None,
        )),
        #[cfg(not(feature = "gpio-cdev"))]
        PinsConfig::GpioCdev { .. } => Err(PinError::NotCompiled {
            kind: "gpio-cdev",
            feature: "gpio-cdev",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_profile_opens_connected_pins() {
        let (mut io, board) = open(&PinsConfig::Fake).unwrap();
        let board = board.expect("fake pins come with their board");
        io.reject.set_high().unwrap();
        assert!(board.level(Signal::Reject));
        board.set_trigger(true);
        assert!(io.trigger.as_mut().unwrap().is_high().unwrap());
    }

    #[cfg(not(feature = "gpio-cdev"))]
    #[test]
    fn gpio_cdev_without_feature_names_the_feature() {
        use crate::board::{LineId, LineRef};
        let line = |o| LineRef {
            id: LineId::Offset(o),
            active_low: false,
        };
        let cfg = PinsConfig::GpioCdev {
            chip: "/dev/gpiochip0".into(),
            trigger: None,
            reject: line(1),
            ready: line(2),
            fault: line(3),
            alive: None,
        };
        let err = open(&cfg).unwrap_err();
        assert_eq!(
            err,
            PinError::NotCompiled {
                kind: "gpio-cdev",
                feature: "gpio-cdev"
            }
        );
        assert!(err.to_string().contains("--features gpio-cdev"));
    }
}
