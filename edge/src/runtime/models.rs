//! Which model the unit runs, and how that changes: boot from the store, uploads, activation with self-test,
//! rollback (asked for, or automatic), and the checks a bundle must pass first. `docs/flashing.md` tells the story;
//! [`crate::store`] keeps the files.
//!
//! Every check that can refuse a bundle runs **before** anything the unit inspects with changes: the upload lands in
//! `incoming/` and then in the inactive slot; activation verifies hash and signature again, checks firmware range,
//! input size and model version, loads the model and runs its self-test, and only then writes `slots.toml` and
//! hands the new scorer to the inference thread, which swaps it in between two batches. Inspection goes on with the
//! old model during all of it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kestrel_bundle::{BundleError, FirmwareVersion, ModelInfo, TrustedKeys, VerifiedBundle};
use kestrel_wire::{
    Activate, BundleBegin, BundleChunk, BundleProbe, EventKind, FaultCode, ModelRef, NackCode, Slot,
};

use super::Shared;
use crate::inference::{Inspector, VisionInspector};
use crate::store::{self, ModelStore, Upload, MAX_BUNDLE_BYTES, MAX_TRIAL_BOOTS};

/// Frames a newly activated model must inspect without an inference failure before it is confirmed; a failure
/// before that rolls the unit back to the previous model by itself.
pub const TRIAL_FRAMES: u32 = 5;

/// An upload untouched this long may be replaced by another host's upload of a different bundle.
const UPLOAD_IDLE: Duration = Duration::from_secs(30);

/// How long an activation waits for the inference thread to take the new model (it does so between batches).
const SWAP_TIMEOUT: Duration = Duration::from_secs(60);

/// A refusal as the link sends it.
pub type Refusal = (NackCode, String);

/// A new scorer for the inference thread, applied between two batches.
pub(crate) struct Swap {
    pub inspector: Box<dyn Inspector>,
    pub model: ModelRef,
    pub previous: Option<ModelRef>,
    pub threshold: f32,
    /// Frames left before the model is confirmed; `None` = already confirmed.
    pub trial: Option<u32>,
    /// Told once the inference thread uses the new scorer.
    pub done: Option<mpsc::SyncSender<()>>,
    /// Published by the inference thread right after the swap (an automatic rollback's event, so no host sees it
    /// before the unit runs the model it names).
    pub event: Option<EventKind>,
}

/// Inference runs timed at load to estimate a model's p99 on this unit (after one warm-up run).
pub const TIMING_RUNS: usize = 10;

/// What a model must manage on this unit: its inference time against the conveyor.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// `reject_delay − deadline margin`: a model slower than this judges parts after their deadline.
    pub per_frame: Duration,
    /// Frame size to time with (the camera's, else the model's input size).
    pub frame: Option<(u32, u32)>,
}

/// Model-store state shared by the links and the inference thread.
pub(crate) struct ModelManager {
    state: PathBuf,
    device: String,
    input_size: Option<u32>,
    budget: Budget,
    store: Mutex<Option<ModelStore>>,
    upload: Mutex<Option<(Upload, Instant)>>,
    /// One commit, activation or rollback at a time.
    ops: Mutex<()>,
    swap_tx: Mutex<mpsc::Sender<Swap>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The firmware version bundles are checked against.
pub fn firmware_version() -> FirmwareVersion {
    FirmwareVersion::from_str(crate::FW_VERSION).expect("CARGO_PKG_VERSION is MAJOR.MINOR.PATCH")
}

/// The link's answer to a bundle the reader or a compatibility check refused.
fn refusal(e: &BundleError) -> Refusal {
    let code = match e {
        BundleError::Unsigned | BundleError::BadSignature { .. } | BundleError::NoTrustedKeys => {
            NackCode::BundleSignature
        }
        BundleError::FirmwareIncompatible { .. } | BundleError::InputSizeMismatch { .. } => {
            NackCode::BundleIncompatible
        }
        BundleError::Downgrade { .. } => NackCode::Downgrade,
        BundleError::TooLarge { .. } => NackCode::BundleTooLarge,
        _ => NackCode::BundleInvalid,
    };
    (code, crate::error_text(e))
}

/// The unit's trusted signing keys (`<state>/trusted/*.pub`), read at each use so a newly installed key counts.
pub fn trusted_keys(state: &Path) -> Result<TrustedKeys, BundleError> {
    TrustedKeys::from_dir(&state.join("trusted"))
}

/// Where a unit keeps its trusted keys, for messages.
fn trusted_hint(state: &Path) -> String {
    format!(
        "install the signer's public key (signing.pub from `kestrel keygen`) in {}",
        state.join("trusted").display()
    )
}

impl ModelManager {
    pub(crate) fn new(
        state: &Path,
        device: &str,
        input_size: Option<u32>,
        budget: Budget,
        store: Option<ModelStore>,
        swap_tx: mpsc::Sender<Swap>,
    ) -> Self {
        ModelManager {
            state: state.to_path_buf(),
            device: device.to_string(),
            input_size,
            budget,
            store: Mutex::new(store),
            upload: Mutex::new(None),
            ops: Mutex::new(()),
            swap_tx: Mutex::new(swap_tx),
        }
    }

    /// The unit's state directory.
    pub(crate) fn state(&self) -> &Path {
        &self.state
    }

    /// The inference-time budget models are held to.
    pub(crate) fn budget(&self) -> Budget {
        self.budget
    }

    /// Firmware range and input size.
    fn check_compat(&self, model: &ModelInfo) -> Result<(), BundleError> {
        model.check_firmware(firmware_version())?;
        if let Some(size) = self.input_size {
            model.check_input_size(size)?;
        }
        Ok(())
    }

    /// Read, verify (hash, signature by a trusted key), check compatibility, load, self-test and time the bundle
    /// at `path`. What every path to a running model goes through, boot included.
    fn load(&self, path: &Path) -> Result<(VisionInspector, ModelRef), Refusal> {
        self.load_not_older(path, None)
    }

    /// [`Self::load`], refusing (right after the signature check, before the model is built) a model version below
    /// `not_older_than` (anti-rollback).
    fn load_not_older(
        &self,
        path: &Path,
        not_older_than: Option<u64>,
    ) -> Result<(VisionInspector, ModelRef), Refusal> {
        let keys = trusted_keys(&self.state).map_err(|e| {
            (
                NackCode::BundleSignature,
                format!("{}; {}", crate::error_text(&e), trusted_hint(&self.state)),
            )
        })?;
        let bundle = VerifiedBundle::parse_file(path, MAX_BUNDLE_BYTES, &keys).map_err(|e| {
            let (code, text) = refusal(&e);
            (code, format!("{}: {text}", path.display()))
        })?;
        self.check_compat(&bundle.manifest().model)
            .map_err(|e| refusal(&e))?;
        if let Some(active) = not_older_than {
            check_not_older(&bundle.manifest().model, active)?;
        }
        let mut inspector = VisionInspector::from_bundle(&bundle, &self.device).map_err(|e| {
            let code = match e {
                crate::inference::InferenceError::SelfTest { .. }
                | crate::inference::InferenceError::NoSelfTest { .. } => NackCode::SelfTestFailed,
                _ => NackCode::BundleInvalid,
            };
            (code, crate::error_text(&e))
        })?;
        let size = self.budget.frame.unwrap_or((
            bundle.manifest().model.input_size,
            bundle.manifest().model.input_size,
        ));
        check_speed(&mut inspector, size, self.budget.per_frame)?;
        let model = inspector.model_ref();
        Ok((inspector, model))
    }

    /// A bundle file given on the command line (`kestrel-edge run --model FILE.kbundle`), checked like a flashed one.
    pub(crate) fn load_file(&self, path: &Path) -> Result<VisionInspector, Refusal> {
        self.load(path).map(|(i, _)| i)
    }

    /// Identity of the bundle in `slot` (verified), for `Stats` and events; `None` when empty or unreadable.
    fn describe(&self, slot: Slot) -> Option<ModelRef> {
        let path = lock(&self.store).as_ref()?.path_in(slot)?;
        let keys = trusted_keys(&self.state).ok()?;
        let b = VerifiedBundle::parse_file(&path, MAX_BUNDLE_BYTES, &keys).ok()?;
        let info = &b.manifest().model;
        Some(ModelRef {
            name: info.name.clone(),
            sha256: *b.sha256(),
            version: info.model_version,
        })
    }

    fn send_swap(&self, swap: Swap) -> Result<(), Refusal> {
        lock(&self.swap_tx).send(swap).map_err(|_| {
            (
                NackCode::Internal,
                "the inference thread has stopped (the unit is shutting down)".into(),
            )
        })
    }
}

/// What the unit starts with.
pub(crate) struct Boot {
    pub inspector: Option<Box<dyn Inspector>>,
    pub previous: Option<ModelRef>,
    /// Frames left before the booted model is confirmed.
    pub trial: Option<u32>,
    /// Problems to raise as a `ModelLoadFailed` fault (the unit still runs a model when it could fall back).
    pub problems: Vec<String>,
}

impl ModelManager {
    /// Choose and load the model to boot from the store: the active slot, verified again and self-tested; on any
    /// failure (or too many unconfirmed starts) the other slot, which then becomes active. Never "no model" while a
    /// slot holds a model that loads; every fallback is reported in `problems`.
    pub(crate) fn boot(&self) -> Boot {
        let mut problems = Vec::new();
        let mut guard = lock(&self.store);
        let Some(store) = guard.as_mut() else {
            return Boot {
                inspector: None,
                previous: None,
                trial: None,
                problems,
            };
        };
        let Some((active, path)) = store.active() else {
            return Boot {
                inspector: None,
                previous: None,
                trial: None,
                problems,
            };
        };
        let mut attempt_active = true;
        if !store.slots().confirmed {
            match store.note_trial_boot() {
                Ok(n) if n > MAX_TRIAL_BOOTS => {
                    problems.push(format!(
                        "slot {active:?} was activated but never confirmed in {MAX_TRIAL_BOOTS} starts"
                    ));
                    attempt_active = false;
                }
                Ok(_) => {}
                Err(e) => problems.push(crate::error_text(&e)),
            }
        }
        drop(guard);
        if attempt_active {
            match self.load(&path) {
                Ok((insp, model)) => {
                    let confirmed = lock(&self.store)
                        .as_ref()
                        .is_some_and(|s| s.slots().confirmed);
                    tracing::info!(model = %model.name, version = model.version, slot = ?active, "booting the active model");
                    return Boot {
                        inspector: Some(Box::new(insp)),
                        previous: self.describe(store::other(active)),
                        trial: (!confirmed).then_some(TRIAL_FRAMES),
                        problems,
                    };
                }
                Err((_, e)) => problems.push(format!("active model (slot {active:?}): {e}")),
            }
        }
        let fallback = store::other(active);
        let path = lock(&self.store).as_ref().and_then(|s| s.path_in(fallback));
        if let Some(path) = path {
            match self.load(&path) {
                Ok((insp, model)) => {
                    if let Some(s) = lock(&self.store).as_mut() {
                        if let Err(e) = s.activate_confirmed(fallback) {
                            problems.push(crate::error_text(&e));
                        }
                    }
                    problems.push(format!(
                        "running the previous model {} (version {}) from slot {fallback:?} instead",
                        model.name, model.version
                    ));
                    tracing::error!(problems = %problems.join("; "), "fell back to the previous model");
                    return Boot {
                        inspector: Some(Box::new(insp)),
                        previous: None,
                        trial: None,
                        problems,
                    };
                }
                Err((_, e)) => problems.push(format!("previous model (slot {fallback:?}): {e}")),
            }
        }
        problems.push("no stored model loads; flash one with `kestrel flash`".into());
        Boot {
            inspector: None,
            previous: None,
            trial: None,
            problems,
        }
    }
}

impl Shared {
    /// `BundleBegin`: start or resume an upload; returns how many bytes the unit already holds.
    pub(crate) fn upload_begin(&self, begin: &BundleBegin) -> Result<u64, Refusal> {
        let m = &self.models;
        let mut up = lock(&m.upload);
        if let Some((u, last)) = up.as_mut() {
            if u.begin() == begin {
                *last = Instant::now();
                return Ok(u.received());
            }
            if last.elapsed() < UPLOAD_IDLE {
                return Err((
                    NackCode::Busy,
                    format!(
                        "another bundle ({}) is being uploaded; try again when it finishes or in {} s",
                        hex::encode(u.begin().sha256),
                        UPLOAD_IDLE.as_secs()
                    ),
                ));
            }
        }
        if let Some((old, _)) = up.take() {
            old.discard();
        }
        let store = lock(&m.store);
        let Some(store) = store.as_ref() else {
            return Err((
                NackCode::Internal,
                "the model store could not be opened; see the unit's log".into(),
            ));
        };
        let u = store.start_upload(begin)?;
        let received = u.received();
        if received > 0 {
            tracing::info!(received, size = begin.size, "resuming a bundle upload");
        } else {
            tracing::info!(size = begin.size, sha256 = %hex::encode(begin.sha256), "bundle upload started");
        }
        *up = Some((u, Instant::now()));
        Ok(received)
    }

    /// `BundleChunk`: append it to the upload in progress.
    pub(crate) fn upload_chunk(&self, chunk: &BundleChunk) -> Result<(), Refusal> {
        let mut up = lock(&self.models.upload);
        let Some((u, last)) = up.as_mut() else {
            return Err((
                NackCode::NoUpload,
                "no upload in progress (send BundleBegin first)".into(),
            ));
        };
        u.write(chunk)?;
        *last = Instant::now();
        Ok(())
    }

    /// `BundleCommit`: check size and hash, verify the bundle (signature, compatibility), store it in the inactive
    /// slot. A refused bundle is deleted and reported as an event too.
    pub(crate) fn upload_commit(&self) -> Result<Slot, Refusal> {
        let m = &self.models;
        let _op = m.ops.try_lock().map_err(|_| busy())?;
        let Some((upload, _)) = lock(&m.upload).take() else {
            return Err((
                NackCode::NoUpload,
                "no upload in progress (send BundleBegin and the chunks first)".into(),
            ));
        };
        let sha256 = upload.begin().sha256;
        let part = upload
            .finish()
            .map_err(|r| self.refused_bundle(sha256, r))?;
        let checked = trusted_keys(&m.state)
            .map_err(|e| {
                (
                    NackCode::BundleSignature,
                    format!("{}; {}", crate::error_text(&e), trusted_hint(&m.state)),
                )
            })
            .and_then(|keys| {
                let b = VerifiedBundle::parse_file(&part, MAX_BUNDLE_BYTES, &keys)
                    .map_err(|e| refusal(&e))?;
                m.check_compat(&b.manifest().model)
                    .map_err(|e| refusal(&e))?;
                Ok(b)
            });
        let bundle = match checked {
            Ok(b) => b,
            Err(r) => {
                let _ = std::fs::remove_file(&part);
                return Err(self.refused_bundle(sha256, r));
            }
        };
        let mut store = lock(&m.store);
        let store = store.as_mut().ok_or_else(|| {
            (
                NackCode::Internal,
                "the model store could not be opened".into(),
            )
        })?;
        // Stored under the hash the signature covers: the identity `Hello`, `Stats` and `Activate` use.
        let slot = store.install(&part, bundle.sha256()).map_err(|e| {
            self.raise(FaultCode::Storage, crate::error_text(&e));
            (NackCode::Internal, crate::error_text(&e))
        })?;
        let info = &bundle.manifest().model;
        tracing::info!(model = %info.name, version = info.model_version, signer = %bundle.signer().name, ?slot, "bundle stored");
        Ok(slot)
    }

    /// Log, publish and pass on a refusal of bundle `sha256`.
    fn refused_bundle(&self, sha256: [u8; 32], (code, detail): Refusal) -> Refusal {
        tracing::error!(sha256 = %hex::encode(sha256), ?code, %detail, "bundle refused");
        self.event(EventKind::BundleRefused {
            sha256,
            code,
            detail: detail.clone(),
        });
        (code, detail)
    }

    /// `BundleProbe` (`kestrel flash --dry-run`): would this bundle be accepted and activated?
    pub(crate) fn probe(&self, p: &BundleProbe) -> Result<(), Refusal> {
        let m = &self.models;
        if p.size > MAX_BUNDLE_BYTES {
            return Err((
                NackCode::BundleTooLarge,
                format!(
                    "bundle of {} bytes is larger than the unit accepts ({MAX_BUNDLE_BYTES})",
                    p.size
                ),
            ));
        }
        let keys = trusted_keys(&m.state).map_err(|e| {
            (
                NackCode::BundleSignature,
                format!("{}; {}", crate::error_text(&e), trusted_hint(&m.state)),
            )
        })?;
        let probed =
            kestrel_bundle::probe(&p.head, &p.trailer, p.size, &keys).map_err(|e| refusal(&e))?;
        m.check_compat(&probed.model).map_err(|e| refusal(&e))?;
        if !p.allow_downgrade {
            self.check_version(&probed.model)?;
        }
        Ok(())
    }

    /// Anti-rollback against the running model.
    fn check_version(&self, model: &ModelInfo) -> Result<(), Refusal> {
        check_not_older(model, self.active_version())
    }

    fn active_version(&self) -> u64 {
        self.active_model_ref().map_or(0, |m| m.version)
    }

    /// `Activate`: verify, load and self-test the stored bundle, persist the choice, and swap it in.
    pub(crate) fn activate(&self, a: &Activate) -> Result<ModelRef, Refusal> {
        let m = &self.models;
        let _op = m.ops.try_lock().map_err(|_| busy())?;
        let hex = hex::encode(a.sha256);
        let (slot, path) = {
            let store = lock(&m.store);
            let store = store.as_ref().ok_or_else(|| {
                (
                    NackCode::Internal,
                    "the model store could not be opened".into(),
                )
            })?;
            let slot = store.slots().find(&hex).ok_or_else(|| {
                (
                    NackCode::UnknownModel,
                    format!("no stored bundle {hex}; upload it first (kestrel flash does both)"),
                )
            })?;
            (slot, store.bundle_path(&hex))
        };
        let not_older = (!a.allow_downgrade).then(|| self.active_version());
        let (insp, model) = m.load_not_older(&path, not_older).map_err(|r| match r.0 {
            // A downgrade is a refusal of the request, not of the bundle: no `BundleRefused` event.
            NackCode::Downgrade => r,
            _ => self.refused_bundle(a.sha256, r),
        })?;
        let previous = self.active_model_ref();
        if let Some(s) = lock(&m.store).as_mut() {
            s.activate(slot).map_err(|e| {
                self.raise(FaultCode::Storage, crate::error_text(&e));
                (NackCode::Internal, crate::error_text(&e))
            })?;
        }
        self.swap_and_wait(Swap {
            threshold: insp.threshold(),
            inspector: Box::new(insp),
            model: model.clone(),
            previous,
            trial: Some(TRIAL_FRAMES),
            done: None,
            event: None,
        })?;
        self.clear(FaultCode::ModelLoadFailed);
        self.clear(FaultCode::SelfTestFailed);
        self.event(EventKind::ModelActivated {
            model: model.clone(),
            slot,
        });
        tracing::info!(model = %model.name, version = model.version, ?slot, "model activated");
        Ok(model)
    }

    /// `Rollback` from a host: back to the model in the other slot.
    pub(crate) fn rollback(&self) -> Result<ModelRef, Refusal> {
        let m = &self.models;
        let _op = m.ops.try_lock().map_err(|_| busy())?;
        let swap = self.prepare_rollback(false)?;
        let to = swap.model.clone();
        self.swap_and_wait(swap)?;
        Ok(to)
    }

    /// Load the other slot's model and persist it as active (confirmed: it ran before); returns the swap that puts
    /// it to work, announcing `RolledBack` once applied. `automatic` = the unit decided (first frames failed).
    fn prepare_rollback(&self, automatic: bool) -> Result<Swap, Refusal> {
        let m = &self.models;
        let (target, path) = {
            let store = lock(&m.store);
            let store = store.as_ref().ok_or_else(|| {
                (
                    NackCode::Internal,
                    "the model store could not be opened".into(),
                )
            })?;
            let target = store.inactive_slot();
            match (store.slots().active, store.path_in(target)) {
                (Some(_), Some(p)) => (target, p),
                _ => {
                    return Err((
                        NackCode::NoRollbackTarget,
                        "no previous model is stored on this unit".into(),
                    ))
                }
            }
        };
        let (insp, to) = m
            .load(&path)
            .map_err(|(code, detail)| (code, format!("the previous model cannot run: {detail}")))?;
        if let Some(s) = lock(&m.store).as_mut() {
            s.activate_confirmed(target)
                .map_err(|e| (NackCode::Internal, crate::error_text(&e)))?;
        }
        let from = self.active_model_ref();
        tracing::warn!(model = %to.name, version = to.version, automatic, "rolling back");
        Ok(Swap {
            threshold: insp.threshold(),
            inspector: Box::new(insp),
            event: from.clone().map(|from| EventKind::RolledBack {
                from,
                to: to.clone(),
                automatic,
            }),
            model: to,
            previous: from,
            trial: None,
            done: None,
        })
    }

    /// The first frames of a new model failed: the swap back to the previous one, if there is one (the inference
    /// thread, which calls this, applies it at once).
    pub(crate) fn auto_rollback(&self, why: &str) -> Option<Swap> {
        tracing::error!(%why, "the new model failed on its first frames; rolling back");
        match self.prepare_rollback(true) {
            Ok(swap) => Some(swap),
            Err((_, detail)) => {
                self.raise(
                    FaultCode::SelfTestFailed,
                    format!("the new model failed on its first frames ({why}) and no rollback was possible: {detail}"),
                );
                None
            }
        }
    }

    /// The new model passed its first frames: boot it from now on.
    pub(crate) fn confirm_model(&self) {
        let Some(model) = self.active_model_ref() else {
            return;
        };
        if let Some(s) = lock(&self.models.store).as_mut() {
            if let Err(e) = s.confirm() {
                self.raise(FaultCode::Storage, crate::error_text(&e));
                return;
            }
        }
        tracing::info!(model = %model.name, "model confirmed");
        self.event(EventKind::ModelConfirmed { model });
    }

    fn swap_and_wait(&self, mut swap: Swap) -> Result<(), Refusal> {
        let (tx, rx) = mpsc::sync_channel(1);
        swap.done = Some(tx);
        self.models.send_swap(swap)?;
        rx.recv_timeout(SWAP_TIMEOUT).map_err(|_| {
            (
                NackCode::Internal,
                "the inference thread did not take the new model (stopping or stuck); see the unit's log".into(),
            )
        })
    }
}

/// Time `TIMING_RUNS` inferences of a mid-grey frame of `size` (after one warm-up) and refuse a model whose slowest
/// run, the p99 estimate of so few runs, exceeds `budget`: it would judge parts after their deadline.
pub(crate) fn check_speed(
    inspector: &mut VisionInspector,
    (width, height): (u32, u32),
    budget: Duration,
) -> Result<(), Refusal> {
    let frame = crate::camera::Frame {
        id: 0,
        t_capture_us: 0,
        width,
        height,
        rgb: vec![128; width as usize * height as usize * 3],
    };
    let mut runs = Vec::with_capacity(TIMING_RUNS);
    for i in 0..=TIMING_RUNS {
        let t = Instant::now();
        inspector
            .inspect(std::slice::from_ref(&frame))
            .map_err(|e| (NackCode::BundleInvalid, crate::error_text(&e)))?;
        if i > 0 {
            runs.push(t.elapsed());
        }
    }
    runs.sort();
    let p50 = runs[runs.len() / 2];
    let worst = *runs.last().expect("TIMING_RUNS > 0");
    tracing::info!(
        p50_ms = p50.as_secs_f64() * 1e3,
        p99_ms = worst.as_secs_f64() * 1e3,
        budget_ms = budget.as_secs_f64() * 1e3,
        "model timed"
    );
    if worst > budget {
        return Err((
            NackCode::ModelTooSlow,
            format!(
                "the model takes up to {:.1} ms per {width}×{height} frame on this unit (p50 {:.1} ms, {TIMING_RUNS} runs), \
                 more than the {:.1} ms the reject delay leaves; it would judge parts too late. Use a smaller model or \
                 input size, or lengthen inspection.reject_delay_ms if the conveyor allows",
                worst.as_secs_f64() * 1e3,
                p50.as_secs_f64() * 1e3,
                budget.as_secs_f64() * 1e3
            ),
        ));
    }
    Ok(())
}

/// Anti-rollback: refuse a model version below `active` with the way to override it.
fn check_not_older(model: &ModelInfo, active: u64) -> Result<(), Refusal> {
    model.check_not_older(active).map_err(|e| {
        (
            NackCode::Downgrade,
            format!(
                "{}; flash with --allow-downgrade to install it anyway",
                crate::error_text(&e)
            ),
        )
    })
}

fn busy() -> Refusal {
    (
        NackCode::Busy,
        "another bundle operation (commit, activation, rollback) is in progress; try again".into(),
    )
}
