//! Unsupervised detectors fitted on good images only: [`padim`] and [`patchcore`], behind one [`Detector`] trait.
//!
//! A detector reads some backbone stages (its [`DetectorKind::stages`]) and turns them into, per image, a
//! patch-level [`ScoreMap`] and, when it has its own rule, an image score (PatchCore re-weights its maximum; PaDiM
//! leaves the image score to the heatmap's maximum). It also says how its patch map is brought to the input size
//! ([`Upsample`], anomalib's choice per detector) and hands out the tensors that persist it. Fitting is streaming
//! ([`DetectorFit`]): batches of good images' stages go in, nothing needs every image's features at once.
//!
//! [`DetectorConfig`] is what a user chooses (one variant per detector, so it cannot hold PatchCore settings for a
//! PaDiM model); [`DetectorSpec`] is that plus what fitting found (grid, image count), as model.toml stores it.
//! New detectors (GDE, the trained ones) plug in by adding a variant and implementing the two traits.
//! The algorithms, and where we follow or leave anomalib, are in `docs/detectors.md`.

pub mod padim;
pub mod patchcore;

use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::map::ScoreMap;
use crate::postprocess::Upsample;
use padim::{Padim, PadimConfig, PadimFit};
use patchcore::{PatchCore, PatchCoreConfig, PatchCoreFit};

/// What a detector says about one image.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchScore {
    /// Patch-level anomaly map (the detector's feature grid).
    pub map: ScoreMap,
    /// The detector's own image score, when it has a rule for one (else the heatmap's maximum is used).
    pub image_score: Option<f32>,
}

/// A fitted detector: scores backbone stages, persists itself, and names its map post-processing.
pub trait Detector: Send + Sync + std::fmt::Debug {
    /// Which detector (and so which backbone stages it reads).
    fn kind(&self) -> DetectorKind;
    /// How its patch map is upsampled to the input size.
    fn upsample(&self) -> Upsample;
    /// Score a batch: `stages[i]` is backbone stage `i + 1` (c1, c2, ...), at least up to the last of
    /// [`DetectorKind::stages`]. One [`PatchScore`] per image, in batch order.
    fn score(&self, stages: &[Tensor]) -> Result<Vec<PatchScore>, DetectorError>;
    /// The tensors that persist its state, by name.
    fn state(&self) -> Result<Vec<(String, Tensor)>, DetectorError>;
    /// Its settings and what fitting found, for model.toml.
    fn spec(&self) -> DetectorSpec;
}

/// A detector being fitted on good images, batch by batch.
pub trait DetectorFit: Send {
    /// Add a batch of good images' backbone stages (same layout as [`Detector::score`]).
    fn add(&mut self, stages: &[Tensor]) -> Result<(), DetectorError>;
    /// Whether training data is being spilled to disk (so a CLI can say so).
    fn spills_to_disk(&self) -> bool {
        false
    }
    /// Finish fitting; `progress(done, total)` reports long selection steps (PatchCore's coreset).
    fn finish(
        self: Box<Self>,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Arc<dyn Detector>, DetectorError>;
}

/// A detector's settings, as a user chooses them: one variant per detector.
#[derive(Debug, Clone, PartialEq)]
pub enum DetectorConfig {
    /// PaDiM.
    Padim(PadimConfig),
    /// PatchCore.
    Patchcore(PatchCoreConfig),
}

/// Backbone facts a detector needs to start fitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureShape {
    /// Channels of stages c1..c4.
    pub stage_channels: [usize; 4],
    /// Side of the (square) network input, in pixels.
    pub input_size: usize,
}

impl DetectorConfig {
    /// Which detector.
    pub fn kind(&self) -> DetectorKind {
        match self {
            DetectorConfig::Padim(_) => DetectorKind::Padim,
            DetectorConfig::Patchcore(_) => DetectorKind::Patchcore,
        }
    }

    /// Start fitting on features of the given shape; `expected_images` sizes PatchCore's projection and memory plan.
    pub fn fitter(
        &self,
        shape: FeatureShape,
        expected_images: usize,
    ) -> Result<Box<dyn DetectorFit>, DetectorError> {
        let ch = shape.stage_channels;
        Ok(match self {
            DetectorConfig::Padim(c) => Box::new(PadimFit::new(c.clone(), ch[0] + ch[1] + ch[2])?),
            DetectorConfig::Patchcore(c) => {
                // c2's grid: the input downsampled 8× (stem stride 4, layer2 stride 2), rounding up like the convs.
                let g = shape.input_size.div_ceil(8);
                Box::new(PatchCoreFit::new(
                    c.clone(),
                    ch[1] + ch[2],
                    (g, g),
                    expected_images,
                )?)
            }
        })
    }
}

/// The detector section of model.toml: settings plus what fitting found.
///
/// Stored in the file as `kind = "..."` with a `[detector.padim]` or `[detector.patchcore]` table (the layout model
/// directories have always had); reading refuses a file whose tables contradict its `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDetectorSpec", into = "RawDetectorSpec")]
pub struct DetectorSpec {
    /// Settings.
    pub config: DetectorConfig,
    /// Feature grid (h, w) of the patch map.
    pub grid: (usize, usize),
    /// Number of good images fitted on.
    pub train_images: usize,
}

impl DetectorSpec {
    /// Which detector.
    pub fn kind(&self) -> DetectorKind {
        self.config.kind()
    }

    /// Rebuild the fitted detector from its persisted tensors (`get(name)`).
    pub fn load(
        &self,
        get: &dyn Fn(&str) -> candle_core::Result<Tensor>,
    ) -> Result<Arc<dyn Detector>, DetectorError> {
        Ok(match &self.config {
            DetectorConfig::Padim(c) => Arc::new(Padim::from_tensors(
                c.clone(),
                self.grid,
                self.train_images,
                get,
            )?),
            DetectorConfig::Patchcore(c) => Arc::new(PatchCore::new(
                c.clone(),
                self.grid,
                self.train_images,
                get("bank")?,
            )?),
        })
    }
}

/// model.toml's detector table as written to disk.
#[derive(Serialize, Deserialize)]
struct RawDetectorSpec {
    kind: DetectorKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    padim: Option<PadimConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patchcore: Option<PatchCoreConfig>,
    grid: [usize; 2],
    train_images: usize,
}

impl TryFrom<RawDetectorSpec> for DetectorSpec {
    type Error = String;

    fn try_from(r: RawDetectorSpec) -> Result<Self, String> {
        let config = match (r.kind, r.padim, r.patchcore) {
            (DetectorKind::Padim, Some(c), None) => DetectorConfig::Padim(c),
            (DetectorKind::Patchcore, None, Some(c)) => DetectorConfig::Patchcore(c),
            (kind, padim, patchcore) => {
                return Err(format!(
                "detector kind `{}` needs exactly its own settings table [detector.{}]; found {}",
                kind.name(),
                kind.name(),
                match (padim.is_some(), patchcore.is_some()) {
                    (true, true) => "both [detector.padim] and [detector.patchcore]",
                    (false, false) => "neither",
                    (true, false) => "[detector.padim]",
                    (false, true) => "[detector.patchcore]",
                }
            ))
            }
        };
        Ok(Self {
            config,
            grid: (r.grid[0], r.grid[1]),
            train_images: r.train_images,
        })
    }
}

impl From<DetectorSpec> for RawDetectorSpec {
    fn from(s: DetectorSpec) -> Self {
        let (padim, patchcore) = match s.config {
            DetectorConfig::Padim(c) => (Some(c), None),
            DetectorConfig::Patchcore(c) => (None, Some(c)),
        };
        Self {
            kind: match (&padim, &patchcore) {
                (Some(_), _) => DetectorKind::Padim,
                _ => DetectorKind::Patchcore,
            },
            padim,
            patchcore,
            grid: [s.grid.0, s.grid.1],
            train_images: s.train_images,
        }
    }
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

    /// The last backbone stage it reads.
    pub fn last_stage(self) -> usize {
        *self.stages().last().expect("every detector reads a stage")
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
    /// A map could not be built (a bug in a detector's grid arithmetic, reported rather than panicking).
    #[error(transparent)]
    Map(#[from] crate::map::MapError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
