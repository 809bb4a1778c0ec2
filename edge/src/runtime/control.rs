//! Control that lasts and leaves a trace: the operator's threshold, kept per model across restarts, and the audit log
//! of every control action.
//!
//! - `<state>/threshold.toml` holds the threshold a host set and the SHA-256 of the model it was set for. It is
//!   applied whenever that model runs (boot, rollback to it) and ignored for any other, so a new model starts from
//!   its own fitted threshold. Written atomically (temp file, fsync, rename, fsync of the directory).
//! - A threshold must stay within [`THRESHOLD_RANGE`] times the fitted one: a typo (`0.5` for `5.0`) must not turn a
//!   unit into one that passes everything.
//! - `<state>/audit.log`: one JSON object per line and per control action (threshold, bundle stored, activation,
//!   rollback): when, what, the value before and after, which key role and which link. fsynced per line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A new threshold must lie within `[fitted / 4, fitted × 4]`.
pub const THRESHOLD_RANGE: f32 = 4.0;

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    model: String,
    threshold: f32,
}

/// The persisted threshold for the model with SHA-256 `model`, if one was set for it.
pub fn persisted_threshold(state: &Path, model: &[u8; 32]) -> Option<f32> {
    let text = std::fs::read_to_string(state.join("threshold.toml")).ok()?;
    let p: Persisted = toml::from_str(&text).ok()?;
    (p.model == hex::encode(model) && p.threshold.is_finite()).then_some(p.threshold)
}

/// Persist `threshold` for model `model` (atomic replace).
pub fn persist_threshold(state: &Path, model: &[u8; 32], threshold: f32) -> std::io::Result<()> {
    let path = state.join("threshold.toml");
    let tmp = state.join("threshold.toml.tmp");
    let text = format!(
        "# The threshold a host set for this model (kestrel-edge writes this file).\n{}",
        toml::to_string(&Persisted {
            model: hex::encode(model),
            threshold,
        })
        .expect("serialises")
    );
    let mut f = File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    File::open(state)?.sync_all()
}

/// Why a threshold is refused, or `None` when it is acceptable against the fitted one.
pub fn threshold_problem(new: f32, fitted: f32) -> Option<String> {
    if !new.is_finite() {
        return Some(format!("threshold must be a finite number, got {new}"));
    }
    if fitted.is_finite() && fitted > 0.0 {
        let (lo, hi) = (fitted / THRESHOLD_RANGE, fitted * THRESHOLD_RANGE);
        if !(lo..=hi).contains(&new) {
            return Some(format!(
                "threshold {new} is outside {lo}..={hi} (the fitted threshold {fitted} divided or multiplied by \
                 {THRESHOLD_RANGE}); refit the model if its scale really changed"
            ));
        }
    }
    None
}

/// One audited control action.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Unix-epoch microseconds on the unit's clock.
    pub t_us: u64,
    /// `SetThreshold`, `BundleStored`, `Activate`, `Rollback`.
    pub action: &'static str,
    /// The value before.
    pub old: String,
    /// The value after.
    pub new: String,
    /// `control` or `read-only` (the key the host proved).
    pub key: &'static str,
    /// `tcp` or `serial`.
    pub link: &'static str,
}

/// The append-only audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log in `<state>/audit.log` (created on first entry).
    pub fn new(state: &Path) -> Self {
        AuditLog {
            path: state.join("audit.log"),
        }
    }

    /// Append and fsync one entry.
    pub fn append(&self, e: &AuditEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_string(e).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_bounded_by_the_fitted_one() {
        assert!(threshold_problem(2.0, 1.0).is_none());
        assert!(threshold_problem(0.25, 1.0).is_none());
        assert!(threshold_problem(0.2, 1.0).unwrap().contains("outside"));
        assert!(threshold_problem(4.5, 1.0).is_some());
        assert!(threshold_problem(f32::NAN, 1.0).is_some());
        // A model without a usable fitted threshold bounds nothing but finiteness.
        assert!(threshold_problem(-3.0, f32::NAN).is_none());
    }

    #[test]
    fn a_persisted_threshold_applies_to_its_model_only() {
        let dir = tempfile::tempdir().unwrap();
        persist_threshold(dir.path(), &[1; 32], 2.5).unwrap();
        assert_eq!(persisted_threshold(dir.path(), &[1; 32]), Some(2.5));
        assert_eq!(persisted_threshold(dir.path(), &[2; 32]), None);
        let log = AuditLog::new(dir.path());
        for i in 0..2 {
            log.append(&AuditEntry {
                t_us: i,
                action: "SetThreshold",
                old: "1".into(),
                new: "2.5".into(),
                key: "control",
                link: "tcp",
            })
            .unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("\"action\":\"SetThreshold\""));
    }
}
