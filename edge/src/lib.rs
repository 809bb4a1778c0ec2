//! kestrel-edge: the inspection-unit firmware as a library (the `kestrel-edge` binary is a thin shell over [`run`]).
//!
//! # How a unit is put together
//!
//! ```text
//!  camera ──► capture thread ──► bounded FrameQueue ──► inference thread ──► Journal (disk ring, seq numbers)
//!  (camera::)    │ free-run: drop oldest        (inference::)     │            │
//!                │ triggered: never drop,                         ├──► I/O thread: reject pulses, lamps (pins::)
//!  trigger pin ──┘   overflow = fault                             └──► broadcast ──► link tasks (TCP, serial)
//! ```
//!
//! * [`board`], [`camera`], [`pins`]: the hardware edge (board profiles, frame sources, GPIO lines), each behind a
//!   small fallible trait with a fake, so everything above runs in tests on any machine.
//! * [`runtime`]: threads and queues wiring the pieces together; [`Unit::start`] is the in-process entry point the
//!   integration tests and the HIL harness use, [`run`] the binary's.
//! * [`inference`]: kestrel-vision model → score, verdict, anomaly map and wire mask.
//! * [`journal`]: crash-tolerant on-disk ring of verdicts; `Replay` is served from it.
//! * [`link`]: kestrel-wire over TCP and serial (handshake, HMAC auth, subscriptions, per-client backpressure).
//! * [`stats`]: counters and latency percentiles reported as wire `Stats`.
//! * [`supervise`]: heartbeats, the systemd watchdog and exit-on-panic (a unit never looks alive while it is not).
//! * [`store`]: the model store (signed bundles by content hash, A/B slots switched atomically); the decisions
//!   about which model runs (flash, self-test, rollback, boot fallback) are `runtime::models`, see
//!   `docs/flashing.md`.
//!
//! Capture and inference run on plain OS threads because both block (V4L2 poll, candle on the CPU); only the links
//! use tokio. Nothing on the link side can block capture or inference: verdicts reach clients through a bounded
//! broadcast ring, and a client that falls behind is told how many verdicts it missed (it can `Replay` them).

pub mod board;
pub mod camera;
pub mod cli;
pub mod inference;
pub mod journal;
pub mod link;
pub mod pins;
pub mod runtime;
pub mod stats;
pub mod store;
pub mod supervise;

pub use cli::run;
pub use runtime::{EdgeError, Unit, UnitHandle, UnitOptions};

/// `e` and its causes, outermost first, joined by `: ` (fault details and logs, where one line is wanted). Errors
/// keep their causes as `source()` rather than in their message, so each appears once.
pub fn error_text(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |c| c.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Firmware version string reported by `--version` and in the `Hello` handshake.
pub const FW_VERSION: &str = env!("CARGO_PKG_VERSION");
