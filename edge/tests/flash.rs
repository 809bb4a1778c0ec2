//! Flashing a unit end to end, in-process: the real `kestrel flash` client library against a whole unit on a
//! simulated board with a real model store. Bundles are exported from a tiny fitted model with a self-test image.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{fit_tiny_model, recv_until, send, sim_profile};
use kestrel_bundle::{FirmwareRange, FirmwareVersion, SigningKey};
use kestrel_edge::board::{BoardProfile, Mode};
use kestrel_edge::camera::{CameraError, Frame, FrameSource};
use kestrel_edge::{Unit, UnitHandle, UnitOptions};
use kestrel_host::monitor::flash::{self, FlashOptions, FlashProgress};
use kestrel_host::monitor::{ConnectOptions, MonitorError, UnitAddr};
use kestrel_vision::bundle::{BundleInfo, Quant};
use kestrel_vision::model::Model;
use kestrel_wire::upload::{bundle_begin, bundle_chunks};
use kestrel_wire::{EventKind, FaultCode, ModelRef, Msg, NackCode};

fn signing_key() -> SigningKey {
    SigningKey::from_seed([42; 32])
}

/// Trust `key` on the unit whose state directory is `state`.
fn trust(state: &Path, name: &str, key: &SigningKey) {
    let dir = state.join("trusted");
    std::fs::create_dir_all(&dir).unwrap();
    key.public_key()
        .write_file(&dir.join(format!("{name}.pub")))
        .unwrap();
}

/// The tiny model (fitted once per test) as a signed int8 bundle of `version`, with a self-test image.
fn bundle(model: &Model, version: u64, firmware: FirmwareRange, key: &SigningKey) -> Vec<u8> {
    let image = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
    });
    model
        .to_bundle(
            Quant::Int8,
            BundleInfo {
                name: format!("tiny-v{version}"),
                model_version: version,
                firmware,
                self_test: Some(image),
            },
            key,
        )
        .unwrap()
}

fn any_firmware() -> FirmwareRange {
    FirmwareRange {
        min: FirmwareVersion::new(0, 0, 0),
        max: FirmwareVersion::new(99, 0, 0),
    }
}

fn tiny_model(dir: &Path) -> Model {
    Model::load(&fit_tiny_model(dir), &candle_core::Device::Cpu).unwrap()
}

fn start(profile: BoardProfile, source: Option<Box<dyn FrameSource>>) -> UnitHandle {
    Unit::start(
        profile,
        UnitOptions {
            source,
            ..Default::default()
        },
    )
    .unwrap()
}

fn addr(unit: &UnitHandle) -> UnitAddr {
    common::unit_addr(unit)
}

fn options(unit: &UnitHandle) -> FlashOptions {
    let mut c = ConnectOptions::new(unit.key().clone());
    c.handshake_timeout = Duration::from_secs(20);
    let mut o = FlashOptions::new(addr(unit), c);
    o.reconnect_for = Duration::from_secs(10);
    o
}

async fn stop(unit: UnitHandle) {
    tokio::task::spawn_blocking(move || unit.shutdown())
        .await
        .unwrap()
        .unwrap();
}

fn refused_code(e: &MonitorError) -> NackCode {
    match e {
        MonitorError::Refused { code, .. } => *code,
        other => panic!("expected a refusal, got {other}"),
    }
}

fn name(m: &Option<ModelRef>) -> Option<(String, u64)> {
    m.as_ref().map(|m| (m.name.clone(), m.version))
}

fn stored_bundles(state: &Path) -> usize {
    std::fs::read_dir(state.join("models"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "kbundle"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn flash_activate_downgrade_rollback_and_restart_from_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let key = signing_key();
    trust(&state, "factory", &key);
    let model = tiny_model(tmp.path());
    let v1 = bundle(&model, 1, any_firmware(), &key);
    let v2 = bundle(&model, 2, any_firmware(), &key);
    let profile = sim_profile(&state, Mode::FreeRun, 4, 30.0);

    let unit = start(profile.clone(), None);
    assert!(unit.active_model().is_none());
    let opts = options(&unit);

    // Dry run: accepted, nothing written.
    let r = flash::dry_run(&v1, &opts, &mut |_| {}).await.unwrap();
    assert!(r.active.is_none());
    assert_eq!(stored_bundles(&state), 0);

    // Flash v1, then v2: each becomes active; v1 stays as the rollback target.
    let mut seen = Vec::new();
    let r = flash::flash(&v1, &opts, &mut |p| seen.push(p))
        .await
        .unwrap();
    assert_eq!(name(&r.active), Some(("tiny-v1".into(), 1)));
    assert_eq!(r.payload_sent, v1.len() as u64);
    assert!(seen.contains(&FlashProgress::Committed));
    assert!(seen.contains(&FlashProgress::Uploaded {
        acked: v1.len() as u64,
        total: v1.len() as u64
    }));
    assert_eq!(name(&unit.active_model()), Some(("tiny-v1".into(), 1)));
    assert!(!unit.faults().contains(&FaultCode::ModelLoadFailed));

    let r = flash::flash(&v2, &opts, &mut |_| {}).await.unwrap();
    assert_eq!(name(&r.before.active_model), Some(("tiny-v1".into(), 1)));
    assert_eq!(name(&r.active), Some(("tiny-v2".into(), 2)));

    // Anti-rollback: v1 is refused (before any upload) unless --allow-downgrade.
    let e = flash::flash(&v1, &opts, &mut |_| {}).await.unwrap_err();
    assert_eq!(refused_code(&e), NackCode::Downgrade);
    assert_eq!(e.exit_code(), kestrel_wire::exit::REFUSED);
    let e = flash::dry_run(&v1, &opts, &mut |_| {}).await.unwrap_err();
    assert_eq!(refused_code(&e), NackCode::Downgrade);
    let mut down = opts.clone();
    down.allow_downgrade = true;
    let r = flash::flash(&v1, &down, &mut |_| {}).await.unwrap();
    assert_eq!(name(&r.active), Some(("tiny-v1".into(), 1)));

    // Rollback goes back to v2 (the model before the last flash), and twice goes back again.
    let (_, active) = flash::rollback(&opts).await.unwrap();
    assert_eq!(name(&active), Some(("tiny-v2".into(), 2)));
    assert_eq!(stored_bundles(&state), 2, "two slots, nothing else kept");

    // Verdicts flow from the active model.
    let mut s = common::connect(addr(&unit), unit.key(), unit.unit_id()).await;
    send(&mut s, Msg::Status).await;
    let stats = recv_until(&mut s, Duration::from_secs(10), |m| match m {
        Msg::Stats(st) => Some(st),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(name(&stats.model), Some(("tiny-v2".into(), 2)));
    assert_eq!(name(&stats.previous_model), Some(("tiny-v1".into(), 1)));
    drop(s);
    stop(unit).await;

    // A restart boots the active slot (verified and self-tested again).
    let unit = start(profile.clone(), None);
    assert_eq!(name(&unit.active_model()), Some(("tiny-v2".into(), 2)));
    assert!(unit.faults().is_empty(), "{:?}", unit.faults());
    stop(unit).await;

    // A corrupt active bundle falls back to the other slot, loudly (fault), never to "no model".
    let slots = std::fs::read_to_string(state.join("models/slots.toml")).unwrap();
    let active_hex = slot_hash(&slots, &active_slot(&slots));
    let path = state.join(format!("models/{active_hex}.kbundle"));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let unit = start(profile, None);
    assert_eq!(name(&unit.active_model()), Some(("tiny-v1".into(), 1)));
    assert!(unit.faults().contains(&FaultCode::ModelLoadFailed));
    stop(unit).await;
}

fn active_slot(slots: &str) -> String {
    slots
        .lines()
        .find_map(|l| l.strip_prefix("active = "))
        .unwrap()
        .trim_matches('"')
        .to_lowercase()
}

fn slot_hash(slots: &str, slot: &str) -> String {
    slots
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{slot} = ")))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

#[tokio::test]
async fn bundles_the_unit_must_not_run_are_refused_with_a_reason_and_an_event() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let key = signing_key();
    let model = tiny_model(tmp.path());
    let good = bundle(&model, 1, any_firmware(), &key);
    let mut profile = sim_profile(&state, Mode::FreeRun, 4, 30.0);
    profile.compute.input_size = Some(64);

    // No trusted keys installed yet: refused, and the message says where to put one.
    let unit = start(profile.clone(), None);
    let opts = options(&unit);
    let e = flash::dry_run(&good, &opts, &mut |_| {}).await.unwrap_err();
    assert_eq!(refused_code(&e), NackCode::BundleSignature);
    assert!(e.to_string().contains("trusted"), "{e}");
    assert_eq!(e.exit_code(), kestrel_wire::exit::BAD_MODEL);
    trust(&state, "factory", &key);

    // Signed by another key.
    let other = SigningKey::from_seed([9; 32]);
    let foreign = bundle(&model, 1, any_firmware(), &other);
    let e = flash::flash(&foreign, &opts, &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(refused_code(&e), NackCode::BundleSignature);
    // For another firmware range.
    let future = FirmwareRange {
        min: FirmwareVersion::new(9, 0, 0),
        max: FirmwareVersion::new(9, 9, 9),
    };
    let e = flash::flash(&bundle(&model, 1, future, &key), &opts, &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(refused_code(&e), NackCode::BundleIncompatible);
    stop(unit).await;

    // For another input size than the unit is qualified for.
    profile.compute.input_size = Some(128);
    let unit = start(profile.clone(), None);
    let opts = options(&unit);
    let e = flash::dry_run(&good, &opts, &mut |_| {}).await.unwrap_err();
    assert_eq!(refused_code(&e), NackCode::BundleIncompatible);
    assert!(e.to_string().contains("128×128"), "{e}");

    // Past the probe (a client that skips it): the commit refuses a foreign signature, deletes the upload and
    // tells every connected host with an event.
    let mut watcher = common::connect(addr(&unit), unit.key(), unit.unit_id()).await;
    let mut s = common::connect(addr(&unit), unit.key(), unit.unit_id()).await;
    let re = send(&mut s, Msg::BundleBegin(bundle_begin(&foreign))).await;
    let got = recv_until(&mut s, Duration::from_secs(10), |m| match m {
        Msg::UploadStatus(u) if u.re == re => Some(u.received),
        _ => None,
    })
    .await;
    assert_eq!(got, Some(0));
    for c in bundle_chunks(&foreign, 16 * 1024) {
        send(&mut s, Msg::BundleChunk(c)).await;
    }
    let re = send(&mut s, Msg::BundleCommit).await;
    let nack = recv_until(&mut s, Duration::from_secs(20), |m| match m {
        Msg::Nack(n) if n.re == re => Some(n),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(nack.code, NackCode::BundleSignature, "{}", nack.detail);
    let ev = recv_until(&mut watcher, Duration::from_secs(10), |m| match m {
        Msg::Event(e) => match e.kind {
            EventKind::BundleRefused { code, .. } => Some(code),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(ev, Some(NackCode::BundleSignature));
    assert_eq!(stored_bundles(&state), 0);
    // Activating something never stored.
    let re = send(
        &mut s,
        Msg::Activate(kestrel_wire::Activate {
            sha256: [7; 32],
            allow_downgrade: false,
        }),
    )
    .await;
    let nack = recv_until(&mut s, Duration::from_secs(10), |m| match m {
        Msg::Nack(n) if n.re == re => Some(n.code),
        _ => None,
    })
    .await;
    assert_eq!(nack, Some(NackCode::UnknownModel));
    // Rollback with nothing to go back to.
    let e = flash::rollback(&opts).await.unwrap_err();
    assert_eq!(refused_code(&e), NackCode::NoRollbackTarget);
    drop((s, watcher));
    stop(unit).await;
}

#[tokio::test]
async fn an_interrupted_upload_resumes_where_the_unit_stands() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let key = signing_key();
    trust(&state, "factory", &key);
    let model = tiny_model(tmp.path());
    let v1 = bundle(&model, 1, any_firmware(), &key);
    let unit = start(sim_profile(&state, Mode::FreeRun, 4, 30.0), None);

    // A first host sends part of the bundle and vanishes.
    let chunk = 8 * 1024;
    let sent = {
        let mut s = common::connect(addr(&unit), unit.key(), unit.unit_id()).await;
        send(&mut s, Msg::BundleBegin(bundle_begin(&v1))).await;
        let mut last = 0;
        for c in bundle_chunks(&v1, chunk).take(20) {
            last = send(&mut s, Msg::BundleChunk(c)).await;
        }
        recv_until(&mut s, Duration::from_secs(10), |m| {
            matches!(m, Msg::Ack(a) if a.re == last).then_some(())
        })
        .await
        .unwrap();
        20 * chunk as u64
    };
    // The next flash picks up at the unit's count.
    let mut resumed = None;
    let r = flash::flash(&v1, &options(&unit), &mut |p| {
        if let FlashProgress::Resumed(at) = p {
            resumed = Some(at);
        }
    })
    .await
    .unwrap();
    assert_eq!(resumed, Some(sent));
    assert_eq!(r.payload_sent, v1.len() as u64 - sent);
    assert_eq!(name(&r.active), Some(("tiny-v1".into(), 1)));
    stop(unit).await;
}

/// Good frames until `broken` is set, then frames whose buffer does not match their size (scoring fails).
struct Breakable {
    inner: Box<dyn FrameSource>,
    broken: Arc<AtomicBool>,
}

impl FrameSource for Breakable {
    fn next_frame(&mut self) -> Result<Frame, CameraError> {
        let mut f = self.inner.next_frame()?;
        if self.broken.load(Ordering::Relaxed) {
            f.rgb.truncate(10);
        }
        Ok(f)
    }
    fn describe(&self) -> String {
        "breakable synthetic".into()
    }
}

#[tokio::test]
async fn a_model_that_fails_its_first_frames_is_rolled_back_automatically() {
    let tmp = tempfile::tempdir().unwrap();
    let state: PathBuf = tmp.path().join("state");
    let key = signing_key();
    trust(&state, "factory", &key);
    let model = tiny_model(tmp.path());
    let v1 = bundle(&model, 1, any_firmware(), &key);
    let v2 = bundle(&model, 2, any_firmware(), &key);
    let profile = sim_profile(&state, Mode::FreeRun, 4, 30.0);
    let broken = Arc::new(AtomicBool::new(false));
    let source = Breakable {
        inner: kestrel_edge::camera::open(&profile.camera).unwrap(),
        broken: broken.clone(),
    };
    let unit = start(profile, Some(Box::new(source)));
    let opts = options(&unit);
    let mut watcher = common::connect(addr(&unit), unit.key(), unit.unit_id()).await;

    flash::flash(&v1, &opts, &mut |_| {}).await.unwrap();
    let confirmed = recv_until(&mut watcher, Duration::from_secs(20), |m| match m {
        Msg::Event(e) => match e.kind {
            EventKind::ModelConfirmed { model } => Some(model.version),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(confirmed, Some(1), "v1 inspected its first frames");

    broken.store(true, Ordering::Relaxed);
    flash::flash(&v2, &opts, &mut |_| {}).await.unwrap();
    let rolled = recv_until(&mut watcher, Duration::from_secs(20), |m| match m {
        Msg::Event(e) => match e.kind {
            EventKind::RolledBack {
                from,
                to,
                automatic,
            } => Some((from.version, to.version, automatic)),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(rolled, Some((2, 1, true)));
    assert_eq!(name(&unit.active_model()), Some(("tiny-v1".into(), 1)));
    let slots = std::fs::read_to_string(state.join("models/slots.toml")).unwrap();
    assert_eq!(active_slot(&slots), "a", "{slots}");
    drop(watcher);
    stop(unit).await;
}

#[tokio::test]
async fn a_model_slower_than_the_conveyor_is_refused_and_the_unit_stays_fail_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let key = signing_key();
    trust(&state, "factory", &key);
    let model = tiny_model(tmp.path());
    let v1 = bundle(&model, 1, any_firmware(), &key);
    let mut profile = sim_profile(&state, Mode::Triggered, 4, 30.0);
    // No time at all between camera and actuator: every model is too slow.
    profile.inspection.reject_delay_ms = 0;
    let unit = start(profile, None);
    let e = flash::flash(&v1, &options(&unit), &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(refused_code(&e), NackCode::ModelTooSlow, "{e}");
    assert!(e.to_string().contains("reject_delay_ms"), "{e}");
    assert!(unit.active_model().is_none());
    assert!(unit.faults().contains(&FaultCode::ModelLoadFailed));
    stop(unit).await;
}
