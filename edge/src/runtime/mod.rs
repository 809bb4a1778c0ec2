//! The running unit: threads, queues and shared state, and the [`Unit::start`] / [`UnitHandle`] API that the binary,
//! the integration tests and the HIL harness all use.
//!
//! # Threads
//!
//! - **capture** (`capture`): free-run: reads frames as fast as the camera delivers them into the [`FrameQueue`]
//!   (full → drop the oldest, counted). Triggered: waits for part triggers (trigger pin edges from the I/O thread,
//!   `SoftTrigger` from links), grabs one frame per part and queues it; nothing is dropped, an over-depth queue
//!   raises a `TriggerOverflow` fault (fault lamp) until it drains.
//! - **inference** (`inference`): pops batches, scores them, journals each verdict (sequence number), counts it,
//!   asks the I/O thread to reject bad parts, and publishes the verdict to the links. It owns the scorer: a flashed
//!   or rolled-back model arrives through a channel and is swapped in between two batches ([`models`]).
//! - **lines** ([`lines`]): owns the pins (trigger polling, reject pulses, lamps).
//! - **links**: a tokio runtime on its own thread running the TCP and serial servers ([`crate::link`]).
//!
//! # Timing
//!
//! A part's reference instant is its trigger edge (triggered mode: the photo-eye defines where the part is) or its
//! frame's capture time (free-run). Reject pulses are scheduled from it on the monotonic clock, so inference latency
//! does not move the pulse. Verdicts carry the same instant converted to Unix-epoch microseconds.
//!
//! # Faults and lamps
//!
//! Active faults are a set; the fault lamp is on while it is non-empty, and every change is published as an
//! `Event`. The ready lamp is on while the unit runs with a model. No model (none installed, or it failed to
//! load) is itself a fault: the unit stays up and reachable, says "no model" in `Hello`, and sends no verdicts.
//!
//! # Shutdown ([`UnitHandle::shutdown`], SIGTERM/SIGINT in the binary)
//!
//! Stop capture → inference drains the queue → journal fsync → links flush what was produced and close →
//! pending reject pulses finish (bounded) → lamps and reject output off. Nothing already captured is lost.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kestrel_wire::{
    Activate, AuthError, BundleBegin, BundleChunk, BundleProbe, Event, EventKind, FaultCode,
    KeyFileError, ModelRef, NackCode, Outcome, Stats, UnitKey, Verdict,
};

use crate::board::{BoardError, BoardProfile, Mode, OnLate};
use crate::camera::{CameraError, Frame, FrameSource};
use crate::inference::{self, Inspector, VisionInspector};
use crate::journal::{Journal, JournalConfig, JournalError};
use crate::link::{self, LinkContext, LinkError, Outgoing, UnitControl};
use crate::pins::{FakeBoard, PinError, RejectScheduler, TriggerDetector};
use crate::stats::UnitStats;

pub mod control;
pub mod key;
pub mod lines;
pub mod models;
pub mod queue;

use lines::IoCmd;
use queue::{FrameQueue, PartAdmission, Pop};

/// Largest batch the inference thread scores at once (frames that piled up while it was busy).
pub const MAX_BATCH: usize = 4;

/// Consecutive on-time verdicts after which a `VerdictLate` fault clears.
pub const ON_TIME_TO_CLEAR: u32 = 50;

/// `frame_id` of a verdict for a part no frame was captured for (capture backlog full, camera failed).
pub const NO_FRAME: u64 = u64::MAX;

/// Errors that stop a unit from starting (or from shutting down cleanly). Each keeps the error that caused it as
/// its `source()`; the binary prints the chain and maps the variant to an exit code ([`EdgeError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The board profile is invalid.
    #[error(transparent)]
    Board(#[from] BoardError),
    /// The camera could not be opened.
    #[error(transparent)]
    Camera(#[from] CameraError),
    /// The line I/O could not be opened.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// The journal could not be opened or synced.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A link could not be set up.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The unit key file is missing or malformed.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// No key file exists yet and no key could be generated.
    #[error("cannot generate a unit key")]
    KeyGenerate {
        /// Why.
        #[source]
        source: AuthError,
    },
    /// No key file exists yet and the new one could not be written.
    #[error("cannot create the unit key file {} (check that the state directory is writable)", path.display())]
    KeyCreate {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The state directory cannot be created.
    #[error("cannot create the state directory {} (pass --state DIR or fix `state_dir` in the board profile)", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An OS resource (thread, async runtime) could not be created.
    #[error("cannot start the {what}")]
    Os {
        /// What was being started.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl EdgeError {
    /// Process exit code (see `kestrel_wire::exit`): configuration problems are usage errors.
    pub fn exit_code(&self) -> u8 {
        use kestrel_wire::exit;
        match self {
            EdgeError::Board(_)
            | EdgeError::Key(_)
            | EdgeError::KeyGenerate { .. }
            | EdgeError::KeyCreate { .. }
            | EdgeError::StateDir { .. } => exit::USAGE,
            _ => exit::FAILURE,
        }
    }
}

/// How to start a unit beyond what the board profile says.
#[derive(Default)]
pub struct UnitOptions {
    /// State directory (journal, key, installed model); overrides the profile's `state_dir`.
    pub state_dir: Option<PathBuf>,
    /// Model directory from `kestrel fit`; default: `<state>/model` if it exists.
    pub model_dir: Option<PathBuf>,
    /// Unit key file (hex); default: the profile's `unit.key_file`, else `<state>/unit.key` (created if missing).
    pub key_file: Option<PathBuf>,
    /// Journal size and fsync policy.
    pub journal: JournalConfig,
    /// Scorer to use instead of loading a model (tests: scripted or deliberately slow inspectors).
    pub inspector: Option<Box<dyn Inspector>>,
    /// Frame source to use instead of opening the profile's camera (tests).
    pub source: Option<Box<dyn FrameSource>>,
    /// Listen for SIGTERM/SIGINT; [`UnitHandle::wait`] returns when one arrives.
    pub handle_signals: bool,
}

impl std::fmt::Debug for UnitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOptions")
            .field("state_dir", &self.state_dir)
            .field("model_dir", &self.model_dir)
            .field("key_file", &self.key_file)
            .field("journal", &self.journal)
            .field("inspector", &self.inspector.is_some())
            .field("source", &self.source.is_some())
            .field("handle_signals", &self.handle_signals)
            .finish()
    }
}

/// A part waiting for inspection.
struct Part {
    /// Part number once the unit has committed to judge it (its deadline is watched from then on): at capture in
    /// triggered mode, when inference takes the frame in free-run.
    id: Option<u64>,
    frame: Frame,
    /// Reference instant for the reject pulse (trigger edge or capture time).
    at: Instant,
    /// The same instant in Unix-epoch µs.
    wall_us: u64,
}

/// A trigger waiting for its frame.
struct TriggerReq {
    at: Instant,
}

/// State shared by the threads and the links.
struct Shared {
    mode: Mode,
    stats: UnitStats,
    threshold_bits: AtomicU32,
    /// The active model's own (fitted) threshold: what `SetThreshold` is bounded against.
    fitted_bits: AtomicU32,
    /// State directory (persisted threshold).
    state: PathBuf,
    /// Every control action, appended and fsynced.
    audit: control::AuditLog,
    /// The model the inference thread scores with (it updates this when it swaps models).
    model: Mutex<Option<ModelRef>>,
    /// The model a rollback would return to.
    previous_model: Mutex<Option<ModelRef>>,
    models: models::ModelManager,
    faults: Mutex<HashSet<FaultCode>>,
    outgoing: tokio::sync::broadcast::Sender<Arc<Outgoing>>,
    /// Every verdict, late and uninspected parts included, is journaled here before it is published.
    journal: Arc<Mutex<Journal>>,
    /// Parts announced to the I/O thread whose decision nobody has claimed yet.
    pending: Mutex<HashSet<u64>>,
    next_part: AtomicU64,
    /// Reject parts whose verdict misses the deadline (`on_late = "reject"`).
    reject_late: bool,
    /// On-time verdicts since the last late one (the late fault clears after [`ON_TIME_TO_CLEAR`]).
    on_time_streak: AtomicU32,
    io_tx: Mutex<mpsc::Sender<IoCmd>>,
    /// Per-thread liveness for the systemd watchdog ([`crate::supervise`]).
    beats: Arc<crate::supervise::Heartbeats>,
    /// Triggered mode: a part's frame must be captured at least this long after its trigger.
    exposure_offset: Duration,
    /// Triggered mode: how long capture waits for a fresh frame (until the part's deadline).
    fresh_wait: Duration,
    trigger_tx: Mutex<Option<mpsc::SyncSender<TriggerReq>>>,
    stopping: AtomicBool,
}

impl Shared {
    fn threshold(&self) -> f32 {
        f32::from_bits(self.threshold_bits.load(Ordering::Relaxed))
    }

    fn active_model_ref(&self) -> Option<ModelRef> {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn has_model(&self) -> bool {
        self.model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Called by the inference thread when it starts scoring with a new model.
    fn model_swapped(&self, model: ModelRef, previous: Option<ModelRef>, threshold: f32) {
        // A threshold an operator set for this very model earlier still applies to it.
        let applied = control::persisted_threshold(&self.state, &model.sha256).unwrap_or(threshold);
        self.fitted_bits
            .store(threshold.to_bits(), Ordering::Relaxed);
        self.threshold_bits
            .store(applied.to_bits(), Ordering::Relaxed);
        *self.model.lock().unwrap_or_else(|p| p.into_inner()) = Some(model);
        *self
            .previous_model
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = previous;
        let f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        self.update_lamps(&f);
    }

    fn publish(&self, o: Outgoing) {
        // No receiver (no client connected) is fine: the journal keeps verdicts for later replay.
        let _ = self.outgoing.send(Arc::new(o));
    }

    fn event(&self, kind: EventKind) {
        self.publish(Outgoing::Event(Event {
            t_us: unix_us(Instant::now()),
            kind,
        }));
    }

    fn io(&self, cmd: IoCmd) {
        let _ = self
            .io_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(cmd);
    }

    fn update_lamps(&self, faults: &HashSet<FaultCode>) {
        // Ready means "inspecting": a model runs and the camera delivers. Faults that make the unit reject parts
        // uninspected (fail closed) switch it off.
        let blind =
            faults.contains(&FaultCode::CameraLost) || faults.contains(&FaultCode::CameraTimeout);
        let ready = self.has_model() && !blind && !self.stopping.load(Ordering::Relaxed);
        self.io(IoCmd::Lamps {
            ready,
            fault: !faults.is_empty(),
        });
    }

    fn raise(&self, code: FaultCode, detail: String) {
        let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if f.insert(code) {
            tracing::error!(?code, %detail, "fault raised");
            self.update_lamps(&f);
            drop(f);
            self.event(EventKind::Fault { code, detail });
        }
    }

    fn clear(&self, code: FaultCode) {
        let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if f.remove(&code) {
            tracing::info!(?code, "fault cleared");
            self.update_lamps(&f);
            drop(f);
            self.event(EventKind::FaultCleared { code });
        }
    }

    /// Announce part `at` to the I/O thread's deadline watch; returns its number.
    fn register(&self, at: Instant) -> u64 {
        let id = self.next_part.fetch_add(1, Ordering::Relaxed);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        self.io(IoCmd::Expect { part: id, at });
        id
    }

    /// Take the decision on `part`: `true` for exactly one caller (verdict in time, or the I/O thread at the
    /// deadline).
    fn claim(&self, part: u64) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&part)
    }

    /// A scored part: decide it (or learn it was late), count, journal and publish its verdict.
    fn judged(&self, part: &Part, r: inference::Inspection) {
        let threshold = self.threshold();
        let model_pass = inference::passes(r.score, threshold);
        let on_time = part.id.is_none_or(|id| self.claim(id));
        let (pass, outcome) = if on_time {
            if !model_pass {
                self.io(IoCmd::Reject(part.at));
            }
            let streak = self.on_time_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= ON_TIME_TO_CLEAR {
                self.clear(FaultCode::VerdictLate);
            }
            (model_pass, Outcome::Inspected)
        } else {
            // The I/O thread already applied `on_late` at the deadline.
            if !model_pass && !self.reject_late {
                tracing::error!(
                    frame = part.frame.id,
                    score = r.score,
                    "a late part the model rejects was let pass (on_late = \"pass\")"
                );
            }
            (!self.reject_late, Outcome::Late)
        };
        let mask = if self.outgoing.receiver_count() > 0 {
            match inference::mask_from_map(&r.map, threshold) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "no mask for this verdict");
                    None
                }
            }
        } else {
            None
        };
        self.record(
            part.frame.id,
            part.at,
            part.wall_us,
            r.score,
            pass,
            mask,
            outcome,
        );
    }

    /// A part that will not be scored (no model, camera failure, overflow, scoring error): rejected unless the I/O
    /// thread already decided it at its deadline, counted, journaled as uninspected, published.
    fn uninspected(&self, part: &Part, why: &str) {
        self.lost(part.id, part.frame.id, part.at, part.wall_us, why);
    }

    fn lost(&self, id: Option<u64>, frame_id: u64, at: Instant, wall_us: u64, why: &str) {
        let pass = if id.is_none_or(|id| self.claim(id)) {
            self.io(IoCmd::Reject(at));
            false
        } else {
            !self.reject_late
        };
        self.stats.record_uninspected();
        tracing::warn!(frame = frame_id, %why, pass, "part not inspected");
        self.record(
            frame_id,
            at,
            wall_us,
            f32::NAN,
            pass,
            None,
            Outcome::Uninspected,
        );
    }

    /// Journal a verdict (the journal assigns its sequence number, even when the write fails), count it, publish.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        frame_id: u64,
        at: Instant,
        wall_us: u64,
        score: f32,
        pass: bool,
        mask: Option<kestrel_wire::Mask>,
        outcome: Outcome,
    ) {
        let latency = at.elapsed();
        let mut v = Verdict {
            seq: 0,
            frame_id,
            t_capture_us: wall_us,
            latency_us: u32::try_from(latency.as_micros()).unwrap_or(u32::MAX),
            score,
            pass,
            mask,
            outcome,
        };
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let appended = j.append(&v);
        let healthy = j.is_healthy();
        drop(j);
        v.seq = match appended {
            Ok(seq) => seq,
            Err(JournalError::Append { seq, source }) => {
                self.raise(FaultCode::Storage, crate::error_text(&*source));
                seq
            }
            Err(e) => {
                // `append` only fails with `Append`; anything else is a bug, still not a reason to lose the verdict.
                self.raise(FaultCode::Storage, crate::error_text(&e));
                return;
            }
        };
        if healthy {
            self.clear(FaultCode::Storage);
        }
        if outcome == Outcome::Uninspected {
            self.stats.record_decision(pass);
        } else {
            self.stats.record_verdict(pass, latency);
        }
        tracing::debug!(
            seq = v.seq,
            frame = v.frame_id,
            score = v.score,
            pass,
            ?outcome,
            "verdict"
        );
        self.publish(Outgoing::Verdict(v));
    }

    /// A journal sync outcome: a failure is a fault that stays until a sync succeeds.
    fn journal_result(&self, r: Result<(), JournalError>) {
        match r {
            Ok(()) => {
                let healthy = self
                    .journal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_healthy();
                if healthy {
                    self.clear(FaultCode::Storage);
                }
            }
            Err(e) => self.raise(FaultCode::Storage, crate::error_text(&e)),
        }
    }

    /// A part arrived (trigger edge or SoftTrigger): hand it to the capture thread.
    fn trigger(&self, at: Instant) -> Result<(), (NackCode, String)> {
        let tx = self.trigger_tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else {
            return Err((NackCode::TriggerUnavailable, "the unit is stopping".into()));
        };
        match tx.try_send(TriggerReq { at }) {
            Ok(()) => Ok(()),
            Err(_) => {
                // Capture itself is behind by a whole queue of triggers: this part cannot be photographed.
                self.part_lost(at, "trigger arrived while the capture backlog was full");
                Err((
                    NackCode::Busy,
                    "capture backlog full; the part was rejected uninspected".into(),
                ))
            }
        }
    }

    /// A triggered part that cannot be inspected: reject it (fail-safe), journal it, raise the overflow fault.
    fn part_lost(&self, at: Instant, why: &str) {
        self.lost(None, NO_FRAME, at, unix_us(at), why);
        self.raise(
            FaultCode::TriggerOverflow,
            format!("{why}; parts are rejected uninspected until the unit catches up"),
        );
    }
}

impl UnitControl for Shared {
    fn soft_trigger(&self) -> Result<(), (NackCode, String)> {
        if self.mode != Mode::Triggered {
            return Err((
                NackCode::TriggerUnavailable,
                "the unit is in free-run mode; SoftTrigger needs `mode = \"triggered\"` in the board profile".into(),
            ));
        }
        // Without a model the part is rejected uninspected, like a hardware trigger (fail closed).
        self.trigger(Instant::now())
    }

    fn set_threshold(&self, threshold: f32) -> Result<f32, (NackCode, String)> {
        let Some(model) = self.active_model_ref() else {
            return Err((
                NackCode::Unexpected,
                "no model installed: there is no threshold to set".into(),
            ));
        };
        let fitted = f32::from_bits(self.fitted_bits.load(Ordering::Relaxed));
        if let Some(problem) = control::threshold_problem(threshold, fitted) {
            return Err((NackCode::InvalidThreshold, problem));
        }
        // Persisted first: a threshold that would not survive a restart is not applied.
        control::persist_threshold(&self.state, &model.sha256, threshold).map_err(|e| {
            let detail = format!(
                "cannot persist the threshold in {}: {e}",
                self.state.display()
            );
            self.raise(FaultCode::Storage, detail.clone());
            (NackCode::Internal, detail)
        })?;
        let old = f32::from_bits(
            self.threshold_bits
                .swap(threshold.to_bits(), Ordering::Relaxed),
        );
        tracing::info!(old, threshold, "threshold changed by a host");
        self.event(EventKind::ThresholdChanged { threshold });
        Ok(old)
    }

    fn audit(&self, entry: control::AuditEntry) {
        if let Err(e) = self.audit.append(&entry) {
            self.raise(
                FaultCode::Storage,
                format!("cannot append to the audit log: {e}"),
            );
        }
    }

    fn active_model(&self) -> Option<ModelRef> {
        self.active_model_ref()
    }

    fn stats(&self, missed_by_client: u64, link_errors: u64) -> Stats {
        Stats {
            model: self.active_model_ref(),
            previous_model: self
                .previous_model
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..self.stats.snapshot(missed_by_client, link_errors)
        }
    }

    fn upload_begin(&self, begin: &BundleBegin) -> Result<u64, (NackCode, String)> {
        Shared::upload_begin(self, begin)
    }

    fn upload_chunk(&self, chunk: &BundleChunk) -> Result<(), (NackCode, String)> {
        Shared::upload_chunk(self, chunk)
    }

    fn upload_commit(&self) -> Result<(), (NackCode, String)> {
        Shared::upload_commit(self).map(|_| ())
    }

    fn probe(&self, probe: &BundleProbe) -> Result<(), (NackCode, String)> {
        Shared::probe(self, probe)
    }

    fn activate(&self, a: &Activate) -> Result<(), (NackCode, String)> {
        Shared::activate(self, a).map(|_| ())
    }

    fn rollback(&self) -> Result<(), (NackCode, String)> {
        Shared::rollback(self).map(|_| ())
    }
}

impl lines::LineEvents for Arc<Shared> {
    fn trigger(&self, at: Instant) {
        // With or without a model: a part without a model is rejected uninspected (fail closed), never ignored.
        let _ = Shared::trigger(self, at);
    }

    fn fault(&self, code: FaultCode, detail: String) {
        self.raise(code, detail);
    }

    fn claim(&self, part: u64) -> bool {
        Shared::claim(self, part)
    }

    fn alive(&self) {
        self.beats.beat(crate::supervise::thread::LINES);
    }

    fn healthy(&self) -> bool {
        self.beats.stale(crate::supervise::STALE_AFTER).is_empty()
    }

    fn late(&self, part: u64, rejected: bool) {
        self.stats.record_late();
        self.on_time_streak.store(0, Ordering::Relaxed);
        self.raise(
            FaultCode::VerdictLate,
            format!(
                "part {part} had no verdict by its deadline (inspection slower than the reject delay); it was {}",
                if rejected { "rejected (on_late = \"reject\")" } else { "passed (on_late = \"pass\")" }
            ),
        );
    }
}

/// Unix-epoch microseconds of a monotonic instant (via the current offset between the two clocks).
fn unix_us(at: Instant) -> u64 {
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let age = Instant::now().saturating_duration_since(at);
    u64::try_from(now_wall.saturating_sub(age).as_micros()).unwrap_or(u64::MAX)
}

/// Entry point to start a unit.
#[derive(Debug)]
pub struct Unit;

/// A running unit. Dropping it shuts it down too (errors then only logged).
pub struct UnitHandle {
    tcp_addr: Option<SocketAddr>,
    serial_path: Option<PathBuf>,
    serial_is_pty: bool,
    fake_board: Option<FakeBoard>,
    key: UnitKey,
    key_path: PathBuf,
    unit_id: String,
    shared: Arc<Shared>,
    journal: Arc<Mutex<Journal>>,
    queue: Arc<FrameQueue<Part>>,
    capture: Option<JoinHandle<()>>,
    inference: Option<JoinHandle<()>>,
    lines: Option<JoinHandle<()>>,
    links: Option<JoinHandle<()>>,
    links_stop: tokio::sync::watch::Sender<bool>,
    signal_rx: Option<mpsc::Receiver<&'static str>>,
    watchdog: crate::supervise::Watchdog,
    stopped: bool,
}

impl std::fmt::Debug for UnitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitHandle")
            .field("unit_id", &self.unit_id)
            .field("tcp_addr", &self.tcp_addr)
            .field("serial_path", &self.serial_path)
            .finish_non_exhaustive()
    }
}

impl Unit {
    /// Start a unit for `profile`: open the journal, model, camera, pins and links, then start the threads.
    /// Returns once the links are listening.
    ///
    /// Each step is a function below, in this order; a failure in any of them drops what the earlier ones opened.
    pub fn start(profile: BoardProfile, mut opts: UnitOptions) -> Result<UnitHandle, EdgeError> {
        let state = create_state_dir(&profile, &opts)?;
        let (key, key_path) = key::resolve(
            opts.key_file
                .as_deref()
                .or(profile.unit.key_file.as_deref()),
            &state,
        )?;
        let journal = open_journal(&state, opts.journal)?;
        configure_compute(&profile);
        let (swap_tx, swap_rx) = mpsc::channel();
        let (store, store_error) = match crate::store::ModelStore::open(&state) {
            Ok(s) => (Some(s), None),
            Err(e) => {
                tracing::error!(error = %crate::error_text(&e), "model store unusable");
                (None, Some(crate::error_text(&e)))
            }
        };
        let delay = profile.inspection.reject_delay_ms;
        let budget = models::Budget {
            per_frame: Duration::from_millis(
                (delay - profile.inspection.deadline_margin_ms.min(delay)).into(),
            ),
            frame: profile.camera.frame_size(),
        };
        let manager = models::ModelManager::new(
            &state,
            &profile.compute.device,
            profile.compute.input_size,
            budget,
            store,
            swap_tx,
        );
        let mut model = load_model(
            opts.inspector.take(),
            opts.model_dir.as_deref(),
            &state,
            &profile,
            &manager,
        );
        if let Some(e) = store_error {
            model.problems.push(e);
        }
        // A camera the unit opened itself can be reopened after failures; one given by a test cannot.
        let reopen = opts.source.is_none().then(|| profile.camera.clone());
        let source = open_camera(opts.source.take(), &profile)?;
        let (line_io, fake_board) = crate::pins::open(&profile.pins)?;
        let wiring = Wiring::new(&profile, &model, manager, &journal);
        let shared = wiring.shared.clone();
        // An optional second key for monitors that may watch but not control (`<state>/monitor.key`, mode 0600).
        let read_only_key = {
            let p = state.join("monitor.key");
            p.exists()
                .then(|| kestrel_wire::read_key_file(&p))
                .transpose()?
        };
        let links = Links::open(&profile, &key, read_only_key, &journal, &shared)?;
        let (tcp_addr, serial_path) = (links.tcp_addr, links.serial_path.clone());
        let links_stop = links.stop.clone();
        let (links, signal_rx) = links.spawn(opts.handle_signals, shared.beats.clone())?;
        let lines = spawn_lines(&profile, line_io, wiring.io_rx, &shared)?;
        let pipeline = spawn_pipeline(
            source,
            reopen,
            wiring.trig_rx,
            Scorer {
                inspector: model.inspector,
                trial: model.trial,
                swaps: swap_rx,
            },
            wiring.depth,
            &shared,
            &journal,
        )?;

        // Last: READY=1 goes out only when every thread runs.
        let watchdog = crate::supervise::Watchdog::start(shared.beats.clone());
        Ok(UnitHandle {
            tcp_addr,
            serial_is_pty: profile.serial.as_ref().is_some_and(|s| s.is_pty()),
            serial_path,
            fake_board,
            key,
            key_path,
            unit_id: profile.unit.id,
            shared,
            journal,
            queue: pipeline.queue,
            capture: Some(pipeline.capture),
            inference: Some(pipeline.inference),
            lines: Some(lines),
            links: Some(links),
            links_stop,
            signal_rx: opts.handle_signals.then_some(signal_rx),
            watchdog,
            stopped: false,
        })
    }
}

/// The state directory (journal, key, installed model): `--state`, else the profile's, created if missing.
fn create_state_dir(profile: &BoardProfile, opts: &UnitOptions) -> Result<PathBuf, EdgeError> {
    let state = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| profile.state_dir.clone());
    std::fs::create_dir_all(&state).map_err(|source| EdgeError::StateDir {
        path: state.clone(),
        source,
    })?;
    Ok(state)
}

/// Open (and recover) the verdict journal in `<state>/journal`.
fn open_journal(state: &Path, cfg: JournalConfig) -> Result<Arc<Mutex<Journal>>, EdgeError> {
    let journal = Journal::open(&state.join("journal"), cfg)?;
    tracing::info!(
        next_seq = journal.next_seq(),
        first_seq = journal.first_seq(),
        "journal open"
    );
    Ok(Arc::new(Mutex::new(journal)))
}

/// Apply `compute.threads`: candle's CPU kernels and the pre-processing run on rayon's global pool.
fn configure_compute(profile: &BoardProfile) {
    if let Some(n) = profile.compute.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            tracing::debug!(error = %e, "rayon pool already configured; compute.threads not applied");
        }
    }
}

/// The scorer the unit starts with, and what went wrong on the way.
struct LoadedModel {
    inspector: Option<Box<dyn Inspector>>,
    /// The model a rollback would return to.
    previous: Option<ModelRef>,
    /// Frames left before a newly activated model is confirmed.
    trial: Option<u32>,
    /// Load failures and fallbacks, raised as a `ModelLoadFailed` fault (also when a fallback model runs).
    problems: Vec<String>,
}

/// The model to start with, first that applies:
/// 1. the inspector given in the options (tests);
/// 2. `--model PATH`: a model directory from `kestrel fit` (development) or a `.kbundle` (verified like a flashed
///    one);
/// 3. the active slot of the model store, verified and self-tested, falling back to the other slot;
/// 4. a model directory `<state>/model` (units set up before bundles existed).
///
/// A model that fails to load is not an error: the unit runs without verdicts and raises a fault (module docs).
fn load_model(
    given: Option<Box<dyn Inspector>>,
    model_path: Option<&Path>,
    state: &Path,
    profile: &BoardProfile,
    manager: &models::ModelManager,
) -> LoadedModel {
    let mut loaded = LoadedModel {
        inspector: None,
        previous: None,
        trial: None,
        problems: Vec::new(),
    };
    if let Some(i) = given {
        loaded.inspector = Some(i);
        return loaded;
    }
    if let Some(path) = model_path.filter(|p| p.is_file()) {
        match manager.load_file(path) {
            Ok(i) => loaded.inspector = Some(Box::new(i)),
            Err((_, e)) => {
                tracing::error!(error = %e, "bundle failed to load; running without verdicts");
                loaded.problems.push(e);
            }
        }
        return loaded;
    }
    let dir = match model_path {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let boot = manager.boot();
            if boot.inspector.is_some() || !boot.problems.is_empty() {
                return LoadedModel {
                    inspector: boot.inspector,
                    previous: boot.previous,
                    trial: boot.trial,
                    problems: boot.problems,
                };
            }
            let d = state.join("model");
            d.is_dir().then_some(d)
        }
    };
    let Some(dir) = dir else {
        tracing::warn!("no model installed (flash one with `kestrel flash`, or pass --model DIR); running without verdicts");
        return loaded;
    };
    match VisionInspector::load(&dir, &profile.compute.device) {
        Ok(mut i) => {
            let size = profile.camera.frame_size().unwrap_or_else(|| {
                let s = i.input_size();
                (s, s)
            });
            match models::check_speed(&mut i, size, manager.budget().per_frame) {
                Ok(()) => loaded.inspector = Some(Box::new(i)),
                Err((_, e)) => {
                    tracing::error!(error = %e, "model refused; running without verdicts");
                    loaded.problems.push(e);
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %crate::error_text(&e), "model failed to load; running without verdicts");
            loaded.problems.push(crate::error_text(&e));
        }
    }
    loaded
}

/// The given frame source (tests), else the profile's camera.
fn open_camera(
    given: Option<Box<dyn FrameSource>>,
    profile: &BoardProfile,
) -> Result<Box<dyn FrameSource>, EdgeError> {
    let source = match given {
        Some(s) => s,
        None => crate::camera::open(&profile.camera)?,
    };
    tracing::info!(camera = %source.describe(), "camera open");
    Ok(source)
}

/// The state shared by every thread, and the receiving ends of the channels into the line and capture threads.
struct Wiring {
    shared: Arc<Shared>,
    io_rx: mpsc::Receiver<IoCmd>,
    trig_rx: mpsc::Receiver<TriggerReq>,
    depth: usize,
}

impl Wiring {
    /// Build the shared state for `model` and show the model state (ready lamp, or the no-model fault).
    fn new(
        profile: &BoardProfile,
        model: &LoadedModel,
        models: models::ModelManager,
        journal: &Arc<Mutex<Journal>>,
    ) -> Wiring {
        let profile_state = models.state().to_path_buf();
        let inspector = model.inspector.as_ref();
        let fitted = inspector.map(|i| i.threshold()).unwrap_or(f32::NAN);
        let threshold = inspector
            .and_then(|i| control::persisted_threshold(&profile_state, &i.model_ref().sha256))
            .unwrap_or(fitted);
        let (out_tx, _) = tokio::sync::broadcast::channel(link::OUTBOX_LEN);
        let (io_tx, io_rx) = mpsc::channel();
        let depth = profile.inspection.queue_depth.max(1);
        let (trig_tx, trig_rx) = mpsc::sync_channel(depth);
        let shared = Arc::new(Shared {
            mode: profile.inspection.mode,
            stats: UnitStats::new(),
            threshold_bits: AtomicU32::new(threshold.to_bits()),
            fitted_bits: AtomicU32::new(fitted.to_bits()),
            audit: control::AuditLog::new(&profile_state),
            state: profile_state.clone(),
            model: Mutex::new(inspector.map(|i| i.model_ref())),
            previous_model: Mutex::new(model.previous.clone()),
            models,
            faults: Mutex::new(HashSet::new()),
            outgoing: out_tx,
            journal: journal.clone(),
            pending: Mutex::new(HashSet::new()),
            next_part: AtomicU64::new(0),
            reject_late: profile.inspection.on_late == OnLate::Reject,
            on_time_streak: AtomicU32::new(0),
            io_tx: Mutex::new(io_tx),
            beats: Arc::new(crate::supervise::Heartbeats::new()),
            exposure_offset: Duration::from_millis(profile.inspection.exposure_offset_ms.into()),
            fresh_wait: {
                let delay = profile.inspection.reject_delay_ms;
                Duration::from_millis(
                    (delay - profile.inspection.deadline_margin_ms.min(delay))
                        .max(profile.inspection.exposure_offset_ms + 100)
                        .into(),
                )
            },
            trigger_tx: Mutex::new(Some(trig_tx)),
            stopping: AtomicBool::new(false),
        });
        if let Some(m) = shared.active_model_ref() {
            tracing::info!(model = %m.name, version = m.version, threshold, "model active");
            shared.update_lamps(&HashSet::new());
        }
        if !model.problems.is_empty() {
            shared.raise(FaultCode::ModelLoadFailed, model.problems.join("; "));
        } else if !shared.has_model() {
            shared.raise(FaultCode::ModelLoadFailed, "no model installed".into());
        }
        Wiring {
            shared,
            io_rx,
            trig_rx,
            depth,
        }
    }
}

/// The opened TCP listener and serial port, and the runtime that will serve them.
struct Links {
    rt: tokio::runtime::Runtime,
    ctx: LinkContext,
    tcp: Option<(tokio::net::TcpListener, usize)>,
    serial: Option<link::serial::SerialLink>,
    tcp_addr: Option<SocketAddr>,
    serial_path: Option<PathBuf>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Links {
    /// Create the link runtime (owned by its own thread, so the handle can be used and dropped from sync or async
    /// code) and open the profile's TCP and serial endpoints in it.
    fn open(
        profile: &BoardProfile,
        key: &UnitKey,
        read_only_key: Option<UnitKey>,
        journal: &Arc<Mutex<Journal>>,
        shared: &Arc<Shared>,
    ) -> Result<Links, EdgeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kestrel-link")
            .enable_all()
            .build()
            .map_err(|source| EdgeError::Os {
                what: "link runtime",
                source,
            })?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let ctx = LinkContext {
            unit_id: profile.unit.id.clone(),
            board: profile.name.clone(),
            key: key.clone(),
            read_only_key,
            journal: journal.clone(),
            outgoing: shared.outgoing.clone(),
            control: shared.clone(),
            shutdown: stop_rx,
        };
        let (tcp, serial) = {
            let _enter = rt.enter();
            let tcp = match &profile.tcp {
                Some(t) => Some((link::tcp::bind(t.listen)?, t.max_clients)),
                None => None,
            };
            let serial = match &profile.serial {
                Some(s) if s.is_pty() => Some(link::serial::SerialLink::open_pty()?),
                Some(s) => Some(link::serial::SerialLink::open_device(&s.device, s.baud)?),
                None => None,
            };
            (tcp, serial)
        };
        let tcp_addr = tcp.as_ref().map(|((_, a), _)| *a);
        let serial_path = serial.as_ref().map(|s| s.path.clone());
        if let Some(a) = tcp_addr {
            tracing::info!(addr = %a, "TCP link listening");
            eprintln!("kestrel-edge: TCP link listening on {a}");
        }
        if let Some(p) = &serial_path {
            tracing::info!(path = %p.display(), "serial link open");
            eprintln!("kestrel-edge: serial link on {}", p.display());
        }
        Ok(Links {
            rt,
            ctx,
            tcp: tcp.map(|((l, _), max)| (l, max)),
            serial,
            tcp_addr,
            serial_path,
            stop,
        })
    }

    /// Serve the links (and, if asked, wait for SIGTERM/SIGINT) on the link thread until shutdown.
    fn spawn(
        self,
        handle_signals: bool,
        beats: Arc<crate::supervise::Heartbeats>,
    ) -> Result<(JoinHandle<()>, mpsc::Receiver<&'static str>), EdgeError> {
        let (sig_tx, signal_rx) = mpsc::channel();
        let Links {
            rt,
            ctx,
            tcp,
            serial,
            ..
        } = self;
        let thread = std::thread::Builder::new()
            .name("kestrel-links".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    if let Some((listener, max)) = tcp {
                        tasks.spawn(link::tcp::serve_tcp(listener, max, ctx.clone()));
                    }
                    if let Some(s) = serial {
                        tasks.spawn(link::serial::serve_serial(s, ctx.clone()));
                    }
                    if handle_signals {
                        tasks.spawn(wait_for_signal(sig_tx, ctx.shutdown.clone()));
                    }
                    // The link runtime's heartbeat: a stuck runtime (every worker blocked) stops it.
                    let mut stop = ctx.shutdown.clone();
                    tasks.spawn(async move {
                        let mut tick = tokio::time::interval(Duration::from_millis(200));
                        loop {
                            tokio::select! {
                                _ = tick.tick() => beats.beat(crate::supervise::thread::LINKS),
                                _ = stop.wait_for(|s| *s) => return,
                            }
                        }
                    });
                    while tasks.join_next().await.is_some() {}
                });
                // Tasks still blocked (a serial write nobody reads) are abandoned here rather than hanging shutdown.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|source| EdgeError::Os {
                what: "link thread",
                source,
            })?;
        Ok((thread, signal_rx))
    }
}

/// The line I/O thread: trigger debouncing (triggered mode), reject pulses, lamps.
fn spawn_lines(
    profile: &BoardProfile,
    line_io: crate::pins::LineIo,
    io_rx: mpsc::Receiver<IoCmd>,
    shared: &Arc<Shared>,
) -> Result<JoinHandle<()>, EdgeError> {
    let trigger = (profile.inspection.mode == Mode::Triggered).then(|| {
        TriggerDetector::new(Duration::from_millis(
            profile.inspection.trigger_debounce_ms.into(),
        ))
    });
    let sched = RejectScheduler::new(
        Duration::from_millis(profile.inspection.reject_delay_ms.into()),
        Duration::from_millis(profile.inspection.reject_pulse_ms.into()),
    );
    let delay = profile.inspection.reject_delay_ms;
    let deadlines = lines::Deadlines {
        after: Duration::from_millis(
            (delay - profile.inspection.deadline_margin_ms.min(delay)).into(),
        ),
        reject_late: profile.inspection.on_late == OnLate::Reject,
    };
    let ev = shared.clone();
    std::thread::Builder::new()
        .name("kestrel-lines".into())
        .spawn(move || lines::run(line_io, io_rx, sched, trigger, deadlines, &ev))
        .map_err(|source| EdgeError::Os {
            what: "line I/O thread",
            source,
        })
}

/// The capture and inference threads and the queue between them.
struct Pipeline {
    queue: Arc<FrameQueue<Part>>,
    capture: JoinHandle<()>,
    inference: JoinHandle<()>,
}

/// What the inference thread scores with: the model it starts with, and where new ones arrive.
struct Scorer {
    inspector: Option<Box<dyn Inspector>>,
    /// Frames left before the starting model is confirmed (it was activated and not yet confirmed).
    trial: Option<u32>,
    swaps: mpsc::Receiver<models::Swap>,
}

fn spawn_pipeline(
    source: Box<dyn FrameSource>,
    reopen: Option<crate::board::CameraConfig>,
    triggers: mpsc::Receiver<TriggerReq>,
    scorer: Scorer,
    depth: usize,
    shared: &Arc<Shared>,
    journal: &Arc<Mutex<Journal>>,
) -> Result<Pipeline, EdgeError> {
    let queue = Arc::new(FrameQueue::new(depth));
    let (q, sh) = (queue.clone(), shared.clone());
    let capture = std::thread::Builder::new()
        .name("kestrel-capture".into())
        .spawn(move || capture_loop(source, reopen, triggers, &q, &sh))
        .map_err(|source| EdgeError::Os {
            what: "capture thread",
            source,
        })?;
    let (q, sh, j) = (queue.clone(), shared.clone(), journal.clone());
    let inference = std::thread::Builder::new()
        .name("kestrel-inference".into())
        .spawn(move || inference_loop(scorer, &q, &sh, &j))
        .map_err(|source| EdgeError::Os {
            what: "inference thread",
            source,
        })?;
    Ok(Pipeline {
        queue,
        capture,
        inference,
    })
}

async fn wait_for_signal(
    tx: mpsc::Sender<&'static str>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install SIGTERM/SIGINT handlers; stop the unit another way");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = stop.wait_for(|s| *s) => return,
    };
    let _ = tx.send(name);
}

/// Consecutive capture failures after which the camera is opened again (a USB camera re-plugged, a driver reset).
const REOPEN_AFTER: u32 = 5;

fn capture_loop(
    mut source: Box<dyn FrameSource>,
    reopen: Option<crate::board::CameraConfig>,
    triggers: mpsc::Receiver<TriggerReq>,
    queue: &FrameQueue<Part>,
    shared: &Shared,
) {
    let mut failures = 0u32;
    let mut grab = |source: &mut Box<dyn FrameSource>| match source.next_frame() {
        Ok(f) => {
            if failures > 0 {
                failures = 0;
                shared.clear(FaultCode::CameraLost);
            }
            Some(f)
        }
        Err(e) => {
            if failures == 0 {
                shared.raise(FaultCode::CameraLost, crate::error_text(&e));
            }
            failures += 1;
            // A camera that keeps failing is opened again, without manual action.
            if let Some(cfg) = reopen.as_ref().filter(|_| failures >= REOPEN_AFTER) {
                match crate::camera::open(cfg) {
                    Ok(fresh) => {
                        tracing::warn!(camera = %fresh.describe(), "camera reopened");
                        *source = fresh;
                    }
                    Err(e) => {
                        tracing::debug!(error = %crate::error_text(&e), "camera still unavailable")
                    }
                }
            }
            // Do not spin on a dead camera.
            std::thread::sleep(Duration::from_millis(200));
            None
        }
    };
    loop {
        shared.beats.beat(crate::supervise::thread::CAPTURE);
        if shared.stopping.load(Ordering::Relaxed) {
            break;
        }
        match shared.mode {
            Mode::FreeRun => {
                let Some(frame) = grab(&mut source) else {
                    continue;
                };
                let at = frame.captured_at();
                let part = Part {
                    id: None,
                    frame,
                    at,
                    wall_us: unix_us(at),
                };
                if queue.push_drop_oldest(part).is_some() {
                    shared.stats.record_dropped(1);
                }
            }
            Mode::Triggered => {
                let req = match triggers.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) => r,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                // Triggered parts are watched from the trigger on, so a part waiting for its frame or stuck behind
                // slow inference still gets its `on_late` decision in time for its pulse.
                let id = shared.register(req.at);
                // Only a frame captured after the trigger (plus the exposure offset) shows this part: frames the
                // driver buffered earlier show the previous part or an empty belt, and are discarded.
                let fresh_after = req.at + shared.exposure_offset;
                let give_up = req.at + shared.fresh_wait;
                let mut stale = 0u64;
                let frame = loop {
                    let Some(f) = grab(&mut source) else {
                        break None;
                    };
                    if f.captured_at() >= fresh_after {
                        break Some(f);
                    }
                    stale += 1;
                    if Instant::now() >= give_up {
                        break None;
                    }
                };
                shared.stats.record_dropped(stale);
                let Some(frame) = frame else {
                    shared.lost(
                        Some(id),
                        NO_FRAME,
                        req.at,
                        unix_us(req.at),
                        "no frame captured after the trigger (camera failed or too slow)",
                    );
                    shared.raise(
                        FaultCode::CameraTimeout,
                        "no fresh frame for a triggered part before its deadline".into(),
                    );
                    continue;
                };
                shared.clear(FaultCode::CameraTimeout);
                let part = Part {
                    id: Some(id),
                    frame,
                    at: req.at,
                    wall_us: unix_us(req.at),
                };
                match queue.push_part(part) {
                    PartAdmission::Queued => {}
                    PartAdmission::Overflow => shared.raise(
                        FaultCode::TriggerOverflow,
                        format!(
                            "more triggered parts waiting than queue_depth ({}); inspection is slower than the line",
                            queue.depth()
                        ),
                    ),
                    PartAdmission::Refused(p) => {
                        shared.uninspected(&p, "inspection queue at its hard limit");
                        shared.raise(
                            FaultCode::TriggerOverflow,
                            "inspection queue at its hard limit; parts are rejected uninspected".into(),
                        );
                    }
                }
            }
        }
    }
    // Triggers already accepted still get their frame, so no triggered part is silently lost at shutdown.
    while let Ok(req) = triggers.try_recv() {
        match source.next_frame() {
            Ok(frame) => {
                let part = Part {
                    id: Some(shared.register(req.at)),
                    frame,
                    at: req.at,
                    wall_us: unix_us(req.at),
                };
                if let PartAdmission::Refused(p) = queue.push_part(part) {
                    shared.uninspected(&p, "inspection queue at its hard limit");
                }
            }
            Err(_) => shared.part_lost(req.at, "no frame from the camera for a triggered part"),
        }
    }
    queue.close();
}

fn inference_loop(
    scorer: Scorer,
    queue: &FrameQueue<Part>,
    shared: &Shared,
    journal: &Mutex<Journal>,
) {
    let lock = || journal.lock().unwrap_or_else(|p| p.into_inner());
    let Scorer {
        mut inspector,
        mut trial,
        swaps,
    } = scorer;
    let mut failing = false;
    loop {
        shared.beats.beat(crate::supervise::thread::INFERENCE);
        // A new model (activation or rollback) takes over between two batches, threshold and identity with it.
        while let Ok(swap) = swaps.try_recv() {
            apply_swap(swap, &mut inspector, &mut trial, shared);
        }
        let max = match shared.mode {
            // Free-run: the newest frame wins. Older queued frames are stale by the time they would be scored, so
            // they are dropped (and counted) and the verdict latency stays near one inference time.
            Mode::FreeRun => usize::MAX,
            Mode::Triggered => MAX_BATCH,
        };
        let mut parts = match queue.pop_batch(max, Duration::from_millis(50)) {
            Pop::Closed => break,
            Pop::Timeout => {
                let synced = lock().sync_if_due();
                shared.journal_result(synced.map(|_| ()));
                continue;
            }
            Pop::Items(p) => p,
        };
        if shared.mode == Mode::FreeRun {
            let newest = parts.pop().expect("pop_batch returns at least one item");
            shared.stats.record_dropped(parts.len() as u64);
            parts = vec![newest];
        }
        let Some(insp) = inspector.as_mut() else {
            // No model: triggered parts fail closed (rejected, journaled as uninspected); free-run frames keep the
            // camera exercised but produce nothing.
            if shared.mode == Mode::Triggered {
                for p in &parts {
                    shared.uninspected(p, "no model is active");
                }
            }
            continue;
        };
        if shared.mode == Mode::FreeRun {
            // The unit commits to judging this frame now; its deadline counts from its capture.
            for p in &mut parts {
                p.id = Some(shared.register(p.at));
            }
        }
        let frames: Vec<Frame> = parts.iter().map(|p| p.frame.clone()).collect();
        let failure = match insp.inspect(&frames) {
            Ok(r) if r.len() == parts.len() => {
                if failing {
                    failing = false;
                    shared.clear(FaultCode::InferenceFailed);
                }
                for (part, r) in parts.iter().zip(r) {
                    shared.judged(part, r);
                }
                if let Some(left) = trial {
                    let left = left.saturating_sub(parts.len() as u32);
                    trial = (left > 0).then_some(left);
                    if trial.is_none() {
                        shared.confirm_model();
                    }
                }
                None
            }
            Ok(r) => Some(format!(
                "inspector returned {} results for {} frames",
                r.len(),
                parts.len()
            )),
            Err(e) => Some(crate::error_text(&e)),
        };
        if let Some(e) = failure {
            fail_parts(shared, &parts, &e, &mut failing);
            if trial.take().is_some() {
                if let Some(swap) = shared.auto_rollback(&e) {
                    apply_swap(swap, &mut inspector, &mut trial, shared);
                }
            }
        }
        if shared.mode == Mode::Triggered && queue.is_empty() {
            shared.clear(FaultCode::TriggerOverflow);
        }
    }
}

/// Start scoring with a new model (identity, threshold and trial count with it), then tell whoever waits.
fn apply_swap(
    swap: models::Swap,
    inspector: &mut Option<Box<dyn Inspector>>,
    trial: &mut Option<u32>,
    shared: &Shared,
) {
    shared.model_swapped(swap.model, swap.previous, swap.threshold);
    *inspector = Some(swap.inspector);
    *trial = swap.trial;
    if let Some(done) = swap.done {
        let _ = done.send(());
    }
    if let Some(kind) = swap.event {
        shared.event(kind);
    }
}

/// Scoring failed for these parts: they are rejected uninspected (fail-safe) and journaled so.
fn fail_parts(shared: &Shared, parts: &[Part], error: &str, failing: &mut bool) {
    for p in parts {
        shared.uninspected(p, error);
    }
    if !*failing {
        *failing = true;
        shared.raise(FaultCode::InferenceFailed, error.to_string());
    }
}

impl UnitHandle {
    /// The bound TCP address (port 0 in the profile is resolved here).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The pseudo-terminal a host opens, when the profile asks for `serial.device = "pty"`.
    pub fn pty_path(&self) -> Option<&Path> {
        self.serial_path.as_deref().filter(|_| self.serial_is_pty)
    }

    /// The serial path a host opens (pty slave or the device).
    pub fn serial_path(&self) -> Option<&Path> {
        self.serial_path.as_deref()
    }

    /// The fake pins, for `pins.kind = "fake"` profiles.
    pub fn fake_board(&self) -> Option<&FakeBoard> {
        self.fake_board.as_ref()
    }

    /// The unit key hosts must hold.
    pub fn key(&self) -> &UnitKey {
        &self.key
    }

    /// Where the unit key is stored.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Unit id (Hello).
    pub fn unit_id(&self) -> &str {
        &self.unit_id
    }

    /// The model in use.
    pub fn active_model(&self) -> Option<ModelRef> {
        self.shared.active_model_ref()
    }

    /// The decision threshold in force.
    pub fn threshold(&self) -> f32 {
        self.shared.threshold()
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot(0, 0)
    }

    /// Faults currently raised.
    pub fn faults(&self) -> Vec<FaultCode> {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Next journal sequence number.
    pub fn journal_next_seq(&self) -> u64 {
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_seq()
    }

    /// Block until SIGTERM or SIGINT (needs [`UnitOptions::handle_signals`]); returns the signal's name.
    pub fn wait(&self) -> Option<&'static str> {
        self.signal_rx.as_ref().and_then(|rx| rx.recv().ok())
    }

    /// Stop the unit cleanly (see the module docs for the order). Blocks until every thread has ended.
    pub fn shutdown(mut self) -> Result<(), EdgeError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), EdgeError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        tracing::info!("shutting down: stopping capture");
        self.watchdog.stop();
        self.shared.stopping.store(true, Ordering::Relaxed);
        // No new triggers; the capture thread drains the ones already accepted, then closes the queue.
        self.shared
            .trigger_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        join(self.capture.take(), "capture");
        join(self.inference.take(), "inference");
        let synced = self
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync();
        tracing::info!(
            queued = self.queue.len(),
            "inference drained; closing links"
        );
        let _ = self.links_stop.send(true);
        join(self.links.take(), "links");
        self.shared.io(IoCmd::Shutdown);
        join(self.lines.take(), "line I/O");
        tracing::info!(frames = self.shared.stats.frames(), "unit stopped");
        synced.map_err(EdgeError::from)
    }
}

fn join(h: Option<JoinHandle<()>>, what: &str) {
    if let Some(h) = h {
        if h.join().is_err() {
            tracing::error!(thread = what, "thread panicked");
        }
    }
}

impl Drop for UnitHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "unit shutdown failed");
        }
    }
}
