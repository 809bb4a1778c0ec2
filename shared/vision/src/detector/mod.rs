//! Unsupervised detectors fitted on good images only: [`padim`] and [`patchcore`].
//!
//! Both consume backbone stages (c1..c3) in batches while fitting (streaming: no detector needs every image's
//! features at once) and produce, per image, a patch-level [`PatchMap`]; PatchCore also produces its own re-weighted
//! image score. Turning patch maps into full-resolution heatmaps is [`crate::postprocess`]'s job.

pub mod padim;
pub mod patchcore;

use serde::{Deserialize, Serialize};

/// A patch-level anomaly map (row-major, `w`×`h`).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchMap {
    /// Width (grid columns).
    pub w: usize,
    /// Height (grid rows).
    pub h: usize,
    /// Scores, row-major.
    pub data: Vec<f32>,
}

/// Which detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    /// PaDiM: per-position Gaussians, Mahalanobis distance.
    Padim,
    /// PatchCore: coreset memory bank, nearest-neighbour distance.
    Patchcore,
}

impl DetectorKind {
    /// The backbone stages (1-based) this detector reads; the backbone runs up to the last one.
    pub fn stages(self) -> &'static [usize] {
        match self {
            DetectorKind::Padim => &padim::PADIM_STAGES,
            DetectorKind::Patchcore => &patchcore::PATCHCORE_STAGES,
        }
    }

    /// Name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Padim => "padim",
            DetectorKind::Patchcore => "patchcore",
        }
    }
}

/// Detector errors.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    /// A hyper-parameter is out of range.
    #[error("invalid detector configuration: {0}")]
    Config(String),
    /// Too few training images.
    #[error("need at least {needed} good training image(s), got {got}")]
    NotEnoughImages {
        /// Minimum.
        needed: usize,
        /// Given.
        got: usize,
    },
    /// A numerical failure, with what to change.
    #[error("numerical problem: {0}")]
    Numerical(String),
    /// Temporary storage failed.
    #[error("temporary storage for training patches failed")]
    Io(#[source] std::io::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
