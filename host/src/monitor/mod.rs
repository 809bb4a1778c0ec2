//! `kestrel monitor`'s client library: talk to an inspection unit over TCP or a serial line in kestrel-wire.
//!
//! Layers, bottom up (each usable on its own, e.g. by the HIL harness in `tests/`):
//! - [`addr`]: `tcp://HOST:PORT` / `serial:///dev/ttyX?baud=N` parsing (key files: [`kestrel_wire::keyfile`]);
//! - [`link`]: opening TCP or serial as a kestrel-link framed stream (the framing is shared with the unit);
//! - [`session`]: `Hello` with protocol/schema check, HMAC-SHA256 challenge–response with the unit key, tagged
//!   frames afterwards;
//! - [`client`]: [`Monitor`], a subscription that reconnects, replays the unit's journal from the first verdict it
//!   has not shown, and deduplicates by journal seq ([`tracker`]), so a link drop loses no verdict;
//! - [`flash`]: `kestrel flash`: probe, resumable chunked upload, commit, activate, rollback;
//! - [`render`]: table / plain / JSON output and reject-mask PNGs.
//!
//! Errors are [`MonitorError`], one variant per cause, each with its own exit code.

pub mod addr;
pub mod client;
pub mod error;
pub mod flash;
pub mod link;
pub mod render;
pub mod session;
pub mod tracker;

pub use addr::UnitAddr;
pub use client::{Monitor, MonitorCounters, MonitorOptions, Update};
pub use error::MonitorError;
pub use kestrel_wire::read_key_file;
pub use session::{ConnectOptions, Session};
