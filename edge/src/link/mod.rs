//! Host links: kestrel-wire over TCP ([`tcp`]) and serial ([`serial`]), one [`session`] state machine for both.
//!
//! # Connection protocol (edge side)
//!
//! 1. The edge sends its `Hello` as soon as a session starts (TCP: on accept; serial: when the port opens).
//! 2. The host sends its `Hello`. An incompatible one (protocol version or schema hash) is answered with
//!    `Nack(IncompatibleProtocol)` naming both versions, and the session ends.
//! 3. The edge sends `AuthChallenge`; the host answers `AuthResponse`; the edge checks the proof (HMAC-SHA256 with
//!    the pre-shared unit key) and sends `AuthConfirm`. A wrong proof gets `Nack(AuthFailed)` and ends the session.
//! 4. From then on every frame is tagged; unauthenticated, badly tagged or replayed requests get a `Nack` and are
//!    otherwise ignored. Requests: `Subscribe`, `Status` → `Stats`, `Replay` → `ReplayBegin`/`Replayed`*/`ReplayEnd`,
//!    `SoftTrigger`, `SetThreshold`; each answered with `Ack`/`Nack` naming the request's `seq`. Model flashing:
//!    `BundleProbe` (dry run), `BundleBegin` → `UploadStatus` (where to resume), `BundleChunk`s (each acked),
//!    `BundleCommit`, `Activate`, `Rollback` (see `docs/flashing.md`).
//!
//! A serial line has no "connect": a host `Hello` arriving in any state restarts the handshake (the edge answers
//! with a fresh `Hello` and challenge), so a host that re-opens the port, or a new host, can always get in. Bytes
//! left in the line from an earlier session are skipped by the host until the edge's `Hello`; hosts should send a
//! lone `0x00` first so the edge's decoder drops any half frame.
//!
//! # Backpressure
//!
//! Verdicts and events reach sessions through one bounded `tokio::sync::broadcast` ring (the per-client outbox):
//! the inference thread never waits for a client. A client that falls more than [`OUTBOX_LEN`] messages behind
//! loses the oldest ones; its session counts them, tells the client at once with a `Stats` whose
//! `missed_by_client` is the running total, and the client can `Replay` them from the journal. Memory per client is
//! bounded by the ring and the socket buffers, never by how slow the client is. A TCP client that cannot take a
//! frame within [`TCP_WRITE_TIMEOUT`] is disconnected (it can reconnect and replay); a serial write just waits,
//! because a serial line with nobody listening is normal and the ring already bounds what piles up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kestrel_wire::{
    Activate, BundleBegin, BundleChunk, BundleProbe, Event, ModelRef, NackCode, Stats, UnitKey,
    Verdict,
};

use crate::journal::Journal;

pub mod serial;
pub mod session;
pub mod tcp;

/// Messages buffered per client before the oldest are dropped (and counted) for a slow client.
pub const OUTBOX_LEN: usize = 1024;
/// How long a TCP client may refuse data before it is disconnected.
pub const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the runtime publishes to every session.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A fresh verdict, with the mask computed once for whoever wants it (sessions strip it per subscription).
    Verdict(Verdict),
    /// A unit event (faults, threshold changes).
    Event(Event),
}

/// The unit as a link sees it: requests that change the unit, and the state a host may read.
pub trait UnitControl: Send + Sync {
    /// Capture and inspect one part now (triggered mode only).
    fn soft_trigger(&self) -> Result<(), (NackCode, String)>;
    /// Replace the decision threshold; returns the one it replaced.
    fn set_threshold(&self, threshold: f32) -> Result<f32, (NackCode, String)>;
    /// The model in use; `None` = the unit has no model and sends no verdicts.
    fn active_model(&self) -> Option<ModelRef>;
    /// Unit counters with this client's own two fields filled in.
    fn stats(&self, missed_by_client: u64, link_errors: u64) -> Stats;
    /// `BundleBegin`: start or resume an upload; returns the bytes already held (where the next chunk starts).
    fn upload_begin(&self, begin: &BundleBegin) -> Result<u64, (NackCode, String)> {
        let _ = begin;
        Err(unsupported("bundle uploads"))
    }
    /// `BundleChunk`: append to the upload in progress.
    fn upload_chunk(&self, chunk: &BundleChunk) -> Result<(), (NackCode, String)> {
        let _ = chunk;
        Err(unsupported("bundle uploads"))
    }
    /// `BundleCommit`: verify and store the upload (blocking: hashing and signature checks).
    fn upload_commit(&self) -> Result<(), (NackCode, String)> {
        Err(unsupported("bundle uploads"))
    }
    /// `BundleProbe`: would this bundle be accepted?
    fn probe(&self, probe: &BundleProbe) -> Result<(), (NackCode, String)> {
        let _ = probe;
        Err(unsupported("bundle checks"))
    }
    /// `Activate` (blocking: loads and self-tests the model).
    fn activate(&self, activate: &Activate) -> Result<(), (NackCode, String)> {
        let _ = activate;
        Err(unsupported("model activation"))
    }
    /// `Rollback` (blocking: loads and self-tests the previous model).
    fn rollback(&self) -> Result<(), (NackCode, String)> {
        Err(unsupported("rollback"))
    }
    /// Record a control action that was carried out (the session knows who asked, the unit what changed).
    fn audit(&self, entry: crate::runtime::control::AuditEntry) {
        let _ = entry;
    }
}

fn unsupported(what: &str) -> (NackCode, String) {
    (
        NackCode::Unexpected,
        format!("{what}: not supported by this unit"),
    )
}

/// Everything a session needs; cheap to clone (all shared).
#[derive(Clone)]
pub struct LinkContext {
    /// Unit id (Hello, authentication transcript).
    pub unit_id: String,
    /// Board profile name (Hello).
    pub board: String,
    /// Pre-shared unit key (may control).
    pub key: UnitKey,
    /// Optional second key that may only watch (`<state>/monitor.key`).
    pub read_only_key: Option<UnitKey>,
    /// Verdict journal for replays.
    pub journal: Arc<Mutex<Journal>>,
    /// Live verdicts and events.
    pub outgoing: tokio::sync::broadcast::Sender<Arc<Outgoing>>,
    /// The runtime.
    pub control: Arc<dyn UnitControl>,
    /// Becomes `true` when the unit stops (after inference drained): sessions flush and end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for LinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkContext")
            .field("unit_id", &self.unit_id)
            .field("board", &self.board)
            .finish_non_exhaustive()
    }
}

/// Link failures that stop a listener (a single session's failure is only logged).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The TCP listen address could not be bound.
    #[error("cannot listen on {addr} (is another kestrel-edge running, or is the address wrong in the board profile?)")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The serial device could not be opened.
    #[error("cannot open serial device {device} (check the path, permissions (dialout group) and that no other program holds it)")]
    Serial {
        /// The device path.
        device: String,
        /// The driver error.
        #[source]
        source: tokio_serial::Error,
    },
    /// A pseudo-terminal could not be created.
    #[error("cannot create a pseudo-terminal for the simulated serial link")]
    Pty(#[source] tokio_serial::Error),
}
