//! Shared pieces of the edge integration tests: a simulated board profile, a tiny fitted model, scripted
//! inspectors, and helpers around the real host client (kestrel-host's monitor [`Session`]).

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use kestrel_edge::board::{
    BoardProfile, CameraConfig, ComputeConfig, InspectionConfig, Mode, PinsConfig, SerialConfig,
    TcpConfig, UnitConfig,
};
use kestrel_edge::camera::Frame;
use kestrel_edge::inference::{InferenceError, Inspection, Inspector};
use kestrel_host::monitor::{ConnectOptions, Session, UnitAddr};
use kestrel_vision::map::ScoreMap;
use kestrel_wire::{ModelRef, Msg, UnitKey};

/// A simulated board: synthetic 64×64 camera at `fps`, fake pins, TCP on a free loopback port.
pub fn sim_profile(state: &Path, mode: Mode, queue_depth: usize, fps: f64) -> BoardProfile {
    BoardProfile {
        name: "sim-test".into(),
        camera: CameraConfig::Synthetic {
            width: 64,
            height: 64,
            fps,
            defect_every: 4,
            seed: 3,
        },
        pins: PinsConfig::Fake,
        inspection: InspectionConfig {
            mode,
            queue_depth,
            reject_delay_ms: 200,
            reject_pulse_ms: 5,
            trigger_debounce_ms: 1,
            on_late: kestrel_edge::board::OnLate::Reject,
            deadline_margin_ms: 2,
            exposure_offset_ms: 0,
        },
        tcp: Some(TcpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_clients: 4,
        }),
        serial: None,
        state_dir: state.to_path_buf(),
        compute: ComputeConfig {
            device: "cpu".into(),
            threads: None,
            input_size: None,
        },
        unit: UnitConfig {
            id: "sim-test-1".into(),
            key_file: None,
        },
    }
}

/// The same with a pseudo-terminal serial link.
pub fn with_pty(mut p: BoardProfile) -> BoardProfile {
    p.serial = Some(SerialConfig {
        device: "pty".into(),
        baud: 921_600,
    });
    p
}

/// Scores frames by id: every `reject_every`-th frame scores 2.0 (reject at threshold 1.0), others 0.5; each call
/// takes `delay` per frame (a slow model).
pub struct ScriptedInspector {
    pub reject_every: u64,
    pub delay: Duration,
}

impl Inspector for ScriptedInspector {
    fn inspect(&mut self, frames: &[Frame]) -> Result<Vec<Inspection>, InferenceError> {
        std::thread::sleep(self.delay * frames.len() as u32);
        Ok(frames
            .iter()
            .map(|f| {
                let score = if self.reject_every > 0 && f.id.is_multiple_of(self.reject_every) {
                    2.0
                } else {
                    0.5
                };
                Inspection {
                    score,
                    map: ScoreMap::filled(4, 4, score).unwrap(),
                }
            })
            .collect())
    }
    fn model_ref(&self) -> ModelRef {
        ModelRef {
            name: "scripted".into(),
            sha256: [1; 32],
            version: 0,
        }
    }
    fn threshold(&self) -> f32 {
        1.0
    }
}

/// The shared tiny PaDiM model (kestrel-vision's test model: narrow ResNet-18, random weights, 64×64), saved into
/// `dir/model` with a threshold that passes everything.
pub fn fit_tiny_model(dir: &Path) -> PathBuf {
    let model =
        kestrel_vision::testing::tiny_model(kestrel_vision::detector::DetectorKind::Padim, 1e9);
    let out = dir.join("model");
    model.save(&out).unwrap();
    out
}

/// A running unit's TCP address as the host client takes it.
pub fn unit_addr(unit: &kestrel_edge::UnitHandle) -> UnitAddr {
    let a = unit.tcp_addr().expect("the test profile has a TCP link");
    UnitAddr::Tcp {
        host: a.ip().to_string(),
        port: a.port(),
    }
}

/// [`connect`] to a running unit with its own key and id.
pub async fn connect_unit(unit: &kestrel_edge::UnitHandle) -> Session {
    connect(unit_addr(unit), unit.key(), unit.unit_id()).await
}

/// Subscribe to every verdict (no masks) and wait for the unit's `Ack`.
pub async fn subscribe_all(s: &mut Session) {
    s.request(Msg::Subscribe(kestrel_wire::Subscribe {
        masks_every: 0,
        min_score: f32::NEG_INFINITY,
    }))
    .await
    .expect("Subscribe acknowledged");
}

/// The real host client (`kestrel monitor`'s [`Session`]) connected to `addr` and authenticated with the unit's key,
/// refusing any unit but `unit_id`.
pub async fn connect(addr: UnitAddr, key: &UnitKey, unit_id: &str) -> Session {
    let mut opts = ConnectOptions::new(key.clone());
    opts.expect_unit = Some(unit_id.into());
    opts.client_name = "edge-tests".into();
    opts.handshake_timeout = Duration::from_secs(20);
    Session::open(&addr, &opts)
        .await
        .expect("handshake with the unit")
}

/// Next message from the unit, within 20 s; every frame it sent so far must have verified.
pub async fn recv(s: &mut Session) -> Msg {
    let msg = tokio::time::timeout(Duration::from_secs(20), s.recv())
        .await
        .expect("the unit answered within 20 s")
        .expect("the link stays up");
    assert_eq!(s.refused_frames(), 0, "every frame from the unit verifies");
    msg
}

/// Send a request; returns its envelope seq (what Ack/Nack name).
pub async fn send(s: &mut Session, msg: Msg) -> u32 {
    s.send(msg).await.expect("request sent")
}

/// Next message matching `f`, skipping others (events, stats), within `timeout`.
pub async fn recv_until<T>(
    s: &mut Session,
    timeout: Duration,
    mut f: impl FnMut(Msg) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, recv(s)).await {
            Ok(m) => {
                if let Some(t) = f(m) {
                    return Some(t);
                }
            }
            Err(_) => return None,
        }
    }
}
