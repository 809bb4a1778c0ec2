//! The simulated unit: the real firmware started in-process from `boards/sim.toml`, shrunk for fast tests.

use std::path::{Path, PathBuf};

use kestrel_edge::board::{BoardProfile, CameraConfig, Mode};
use kestrel_edge::camera::Frame;
use kestrel_edge::inference::{InferenceError, Inspection, Inspector};
use kestrel_edge::pins::FakeBoard;
use kestrel_edge::runtime::{Unit, UnitHandle, UnitOptions};
use kestrel_host::monitor::UnitAddr;
use kestrel_vision::map::ScoreMap;
use kestrel_wire::{ModelRef, UnitKey};

use crate::HilError;

/// How to shrink and configure the simulated board.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Free-run or triggered.
    pub mode: Mode,
    /// Camera rate (frames/s); the synthetic source paces itself.
    pub fps: f64,
    /// Frame side in pixels (square).
    pub side: u32,
    /// Every n-th frame is a reject ([`ScriptedScorer`]).
    pub reject_every: u64,
    /// Inspection queue depth.
    pub queue_depth: usize,
    /// Reject pulse delay after the part's capture/trigger instant.
    pub reject_delay_ms: u32,
    /// Reject pulse width.
    pub reject_pulse_ms: u32,
    /// Keep the profile's pseudo-terminal serial link.
    pub serial: bool,
}

impl Default for SimOptions {
    /// Free-run at 100 frames/s, 64×64, every 4th frame a reject, no serial link.
    fn default() -> Self {
        SimOptions {
            mode: Mode::FreeRun,
            fps: 100.0,
            side: 64,
            reject_every: 4,
            queue_depth: 8,
            reject_delay_ms: 30,
            reject_pulse_ms: 10,
            serial: false,
        }
    }
}

/// Scores frames by their id so suites know which verdicts are rejects: frame `id` is a reject when `id + 1` is a
/// multiple of `reject_every`. Its 16×16 anomaly map has one hot 3×3 spot (whose place moves with the id) on a
/// cool background, so masks on the wire have structure a suite can check.
#[derive(Debug, Clone)]
pub struct ScriptedScorer {
    /// Reject period in frames (0 = never).
    pub reject_every: u64,
}

/// Side of the scripted anomaly map.
pub const MAP_SIDE: u32 = 16;
/// The scripted threshold; rejects score 0.9, good parts 0.2.
pub const THRESHOLD: f32 = 0.5;

impl ScriptedScorer {
    /// Whether frame `id` is scripted as a reject.
    pub fn is_reject(&self, id: u64) -> bool {
        self.reject_every > 0 && (id + 1).is_multiple_of(self.reject_every)
    }

    fn map(&self, id: u64, reject: bool) -> ScoreMap {
        let side = MAP_SIDE as usize;
        let (cx, cy) = (
            1 + (id as usize % (side - 2)),
            1 + (id as usize / 3 % (side - 2)),
        );
        let hot = if reject { 0.9 } else { 0.3 };
        let data = (0..side * side)
            .map(|i| {
                let (x, y) = (i % side, i / side);
                if x.abs_diff(cx) <= 1 && y.abs_diff(cy) <= 1 {
                    hot
                } else {
                    0.05
                }
            })
            .collect();
        ScoreMap::new(side, side, data).expect("MAP_SIDE² values")
    }
}

impl Inspector for ScriptedScorer {
    fn inspect(&mut self, frames: &[Frame]) -> Result<Vec<Inspection>, InferenceError> {
        Ok(frames
            .iter()
            .map(|f| {
                let reject = self.is_reject(f.id);
                Inspection {
                    score: if reject { 0.9 } else { 0.2 },
                    map: self.map(f.id, reject),
                }
            })
            .collect())
    }

    fn model_ref(&self) -> ModelRef {
        ModelRef {
            name: format!("hil-scripted-1-in-{}", self.reject_every),
            sha256: [0x4b; 32],
            version: 0,
        }
    }

    fn threshold(&self) -> f32 {
        THRESHOLD
    }
}

/// A running simulated unit with its own temporary state directory (journal, key).
pub struct SimUnit {
    handle: Option<UnitHandle>,
    scorer: ScriptedScorer,
    state: tempfile::TempDir,
}

/// `boards/sim.toml` of this checkout.
pub fn sim_profile_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/sim.toml")
}

impl SimUnit {
    /// Start the firmware on `boards/sim.toml`, shrunk per `opts`.
    pub fn start(opts: SimOptions) -> Result<SimUnit, HilError> {
        let mut profile = BoardProfile::load(&sim_profile_path())?;
        let CameraConfig::Synthetic { seed, .. } = profile.camera else {
            return Err(HilError::Sim(
                "boards/sim.toml no longer uses the synthetic camera".into(),
            ));
        };
        profile.camera = CameraConfig::Synthetic {
            width: opts.side,
            height: opts.side,
            fps: opts.fps,
            defect_every: 0,
            seed,
        };
        profile.inspection.mode = opts.mode;
        profile.inspection.queue_depth = opts.queue_depth;
        profile.inspection.reject_delay_ms = opts.reject_delay_ms;
        profile.inspection.reject_pulse_ms = opts.reject_pulse_ms;
        profile.inspection.trigger_debounce_ms = 1;
        if let Some(tcp) = profile.tcp.as_mut() {
            tcp.listen = "127.0.0.1:0".parse().expect("literal address");
        }
        if !opts.serial {
            profile.serial = None;
        }
        let state = tempfile::tempdir()?;
        profile.state_dir = state.path().to_path_buf();
        let scorer = ScriptedScorer {
            reject_every: opts.reject_every,
        };
        let opts = UnitOptions {
            state_dir: Some(state.path().to_path_buf()),
            inspector: Some(Box::new(scorer.clone())),
            ..UnitOptions::default()
        };
        // The firmware runs its own tokio runtime for the links and blocks on it while starting, which tokio refuses
        // inside another runtime (the suites are `#[tokio::test]`s): start it from a plain thread.
        let handle = std::thread::spawn(move || Unit::start(profile, opts))
            .join()
            .map_err(|_| HilError::Sim("Unit::start panicked".into()))??;
        Ok(SimUnit {
            handle: Some(handle),
            scorer,
            state,
        })
    }

    fn handle(&self) -> &UnitHandle {
        self.handle.as_ref().expect("running until shutdown")
    }

    /// Its TCP address.
    pub fn tcp(&self) -> UnitAddr {
        let a = self.handle().tcp_addr().expect("sim.toml has a TCP link");
        UnitAddr::Tcp {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }

    /// Its pty, when started with `serial: true`.
    pub fn serial(&self) -> Option<UnitAddr> {
        self.handle().serial_path().map(|p| UnitAddr::Serial {
            path: p.to_path_buf(),
            baud: 921_600,
        })
    }

    /// Its key.
    pub fn key(&self) -> UnitKey {
        self.handle().key().clone()
    }

    /// Its unit id.
    pub fn unit_id(&self) -> String {
        self.handle().unit_id().to_string()
    }

    /// The fake pins.
    pub fn board(&self) -> &FakeBoard {
        self.handle().fake_board().expect("sim.toml has fake pins")
    }

    /// The scorer (to know which frames are rejects).
    pub fn scorer(&self) -> &ScriptedScorer {
        &self.scorer
    }

    /// The next journal sequence number (one past the last verdict journaled).
    pub fn journal_next_seq(&self) -> u64 {
        self.handle().journal_next_seq()
    }

    /// The unit's state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Stop the unit cleanly (also done on drop, with errors ignored).
    pub fn shutdown(mut self) -> Result<(), HilError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), HilError> {
        match self.handle.take() {
            // Off the caller's thread for the same reason as in `start`.
            Some(h) => std::thread::spawn(move || h.shutdown())
                .join()
                .map_err(|_| HilError::Sim("shutdown panicked".into()))?
                .map_err(HilError::from),
            None => Ok(()),
        }
    }
}

impl Drop for SimUnit {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
