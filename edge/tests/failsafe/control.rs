//! Control that lasts and is audited: `SetThreshold` is bounded by the fitted threshold, persisted for the active
//! model across restarts and written to `<state>/audit.log`; a read-only monitor key may watch but not control.

use std::time::Duration;

use crate::common::{sim_profile, ScriptedInspector};
use kestrel_edge::board::{BoardProfile, Mode};
use kestrel_edge::{Unit, UnitHandle, UnitOptions};
use kestrel_host::monitor::{ConnectOptions, MonitorError, Session};
use kestrel_wire::{key_text, Msg, NackCode, SetThreshold, UnitKey};

fn start(profile: BoardProfile) -> UnitHandle {
    Unit::start(
        profile,
        UnitOptions {
            // Fitted threshold 1.0, model identity [1; 32].
            inspector: Some(Box::new(ScriptedInspector {
                reject_every: 0,
                delay: Duration::from_millis(5),
            })),
            ..Default::default()
        },
    )
    .unwrap()
}

async fn session(unit: &UnitHandle, key: &UnitKey) -> Result<Session, MonitorError> {
    let addr = crate::common::unit_addr(unit);
    let mut o = ConnectOptions::new(key.clone());
    o.handshake_timeout = Duration::from_secs(20);
    Session::open(&addr, &o).await
}

fn refused(e: MonitorError) -> NackCode {
    match e {
        MonitorError::Refused { code, .. } => code,
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_are_bounded_persisted_audited_and_read_only_keys_cannot_control() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = sim_profile(tmp.path(), Mode::FreeRun, 4, 30.0);
    let monitor_key = UnitKey::from_bytes([0x5a; 32]);
    let path = tmp.path().join("monitor.key");
    std::fs::write(&path, key_text(&monitor_key)).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let unit = start(profile.clone());
    assert_eq!(unit.threshold(), 1.0);

    // The read-only key watches...
    let mut ro = session(&unit, &monitor_key).await.unwrap();
    ro.send(Msg::Status).await.unwrap();
    // ...but may not change anything.
    let e = ro
        .request(Msg::SetThreshold(SetThreshold { threshold: 1.5 }))
        .await
        .unwrap_err();
    assert_eq!(refused(e), NackCode::Unauthenticated);
    let e = ro.request(Msg::SoftTrigger).await.unwrap_err();
    assert_eq!(refused(e), NackCode::Unauthenticated);

    let mut ctl = session(&unit, unit.key()).await.unwrap();
    // Bounded: 10× the fitted threshold is refused.
    let e = ctl
        .request(Msg::SetThreshold(SetThreshold { threshold: 10.0 }))
        .await
        .unwrap_err();
    assert_eq!(refused(e), NackCode::InvalidThreshold);
    ctl.request(Msg::SetThreshold(SetThreshold { threshold: 1.5 }))
        .await
        .unwrap();
    assert_eq!(unit.threshold(), 1.5);
    drop((ro, ctl));
    tokio::task::spawn_blocking(move || unit.shutdown())
        .await
        .unwrap()
        .unwrap();

    // Survives a restart with the same model.
    let unit = start(profile);
    assert_eq!(unit.threshold(), 1.5);
    let audit = std::fs::read_to_string(tmp.path().join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{audit}");
    assert_eq!(lines[0]["action"], "SetThreshold");
    assert_eq!(lines[0]["old"], "1");
    assert_eq!(lines[0]["new"], "1.5");
    assert_eq!(lines[0]["key"], "control");
    tokio::task::spawn_blocking(move || unit.shutdown())
        .await
        .unwrap()
        .unwrap();
}
