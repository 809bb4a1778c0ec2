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
//! What a detector reads from the backbone is its [`Features`]: stage maps of the whole input (PaDiM, PatchCore) or
//! pooled embeddings of the input and of windows cut from it (GDE). [`Features::extract`] is the one place that
//! runs the backbone for fitting and scoring, so the edge computes exactly what the host fitted.
//! New detectors (the trained ones) plug in by adding a variant and implementing the two traits.
//! The algorithms, and where we follow or leave anomalib, are in `docs/detectors.md`.

pub mod gde;
pub mod padim;
pub mod patchcore;

use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::backbone::ResNet;
use crate::map::ScoreMap;
use crate::postprocess::Upsample;
use gde::{Gde, GdeConfig, GdeFit};
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
    /// What it reads from the backbone (by default the stage maps up to its last stage).
    fn features(&self) -> Features {
        Features::Stages {
            last: self.kind().last_stage(),
        }
    }
    /// How its patch map is upsampled to the input size.
    fn upsample(&self) -> Upsample;
    /// Score a batch of [`Features::extract`]'s output: for [`Features::Stages`], `stages[i]` is backbone stage
    /// `i + 1` (c1, c2, ...). One [`PatchScore`] per image, in batch order.
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
    /// GDE.
    Gde(GdeConfig),
}

/// What a detector reads from the backbone: [`Features::extract`] computes it, for fitting and scoring alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Features {
    /// The stage maps c1..c`last` of the whole input.
    Stages {
        /// Last stage (1..=4).
        last: usize,
    },
    /// Globally average-pooled, L2-normalised embeddings of stage `stage`: of the whole input, `(N, d)`, and of
    /// every `window × window` px window at `stride` (each through the backbone on its own), `(N, P, d)` with the
    /// windows in row-major grid order.
    PooledWindows {
        /// Stage (1..=4).
        stage: usize,
        /// Window side, px.
        window: usize,
        /// Window stride, px.
        stride: usize,
    },
}

/// Windows per backbone pass in [`Features::extract`]: bounds the activations' memory (256 windows of 32² are
/// about four 256² images).
const WINDOW_CHUNK: usize = 256;

impl Features {
    /// Run `net` on the pre-processed batch `x` (N×3×S×S) and return what the detector reads.
    pub fn extract(&self, net: &ResNet, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match *self {
            Features::Stages { last } => net.stages(x, last, false),
            Features::PooledWindows {
                stage,
                window,
                stride,
            } => {
                let (n, c, h, w) = x.dims4()?;
                if window == 0 || stride == 0 || window > h || window > w {
                    candle_core::bail!(
                        "windows of {window} px at stride {stride} do not fit a {h}×{w} input"
                    );
                }
                let pooled = |t: &Tensor| -> candle_core::Result<Tensor> {
                    let s = net
                        .stages(t, stage, false)?
                        .pop()
                        .expect("at least one stage");
                    let e = s.mean((2, 3))?;
                    let norm = e
                        .sqr()?
                        .sum_keepdim(1)?
                        .sqrt()?
                        .clamp(1e-12, f64::INFINITY)?;
                    e.broadcast_div(&norm)
                };
                let image = pooled(x)?;
                let (gh, gw) = ((h - window) / stride + 1, (w - window) / stride + 1);
                let p = gh * gw;
                let src: Vec<f32> = x
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1()?;
                let mut out = Vec::new();
                let all = n * p;
                for start in (0..all).step_by(WINDOW_CHUNK) {
                    let m = WINDOW_CHUNK.min(all - start);
                    let mut buf = Vec::with_capacity(m * c * window * window);
                    for k in start..start + m {
                        let (i, q) = (k / p, k % p);
                        let (y0, x0) = ((q / gw) * stride, (q % gw) * stride);
                        for ch in 0..c {
                            let plane = &src[(i * c + ch) * h * w..(i * c + ch + 1) * h * w];
                            for y in y0..y0 + window {
                                buf.extend_from_slice(&plane[y * w + x0..y * w + x0 + window]);
                            }
                        }
                    }
                    let t = Tensor::from_vec(buf, (m, c, window, window), x.device())?;
                    out.push(pooled(&t)?);
                }
                let windows = Tensor::cat(&out, 0)?;
                let d = windows.dims()[1];
                Ok(vec![image, windows.reshape((n, p, d))?])
            }
        }
    }
}

/// Channels of the embedding of stages `layers` (1-based).
pub fn layer_channels(stage_channels: [usize; 4], layers: &[usize]) -> usize {
    layers.iter().map(|&l| stage_channels[l - 1]).sum()
}

/// Stage taps must be 1..=4, increasing, and at least one.
pub fn check_layers(layers: &[usize]) -> Result<(), DetectorError> {
    let ok = !layers.is_empty()
        && layers.iter().all(|l| (1..=4).contains(l))
        && layers.windows(2).all(|w| w[0] < w[1]);
    if ok {
        Ok(())
    } else {
        Err(DetectorError::Config(format!(
            "layers {layers:?}: need one or more backbone stages from 1 to 4, in increasing order (e.g. 1,2,3)"
        )))
    }
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
            DetectorConfig::Gde(_) => DetectorKind::Gde,
        }
    }

    /// What the detector reads from the backbone.
    pub fn features(&self) -> Features {
        let last = |layers: &[usize]| Features::Stages {
            last: layers.iter().copied().max().unwrap_or(1),
        };
        match self {
            DetectorConfig::Gde(c) => c.features(),
            DetectorConfig::Padim(c) => last(&c.layers),
            DetectorConfig::Patchcore(c) => last(&c.layers),
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
            DetectorConfig::Padim(c) => {
                check_layers(&c.layers)?;
                Box::new(PadimFit::new(c.clone(), layer_channels(ch, &c.layers))?)
            }
            DetectorConfig::Patchcore(c) => {
                check_layers(&c.layers)?;
                // The first stage's grid: the input downsampled 4× by the stem, then 2× per later stage, rounding
                // up like the convolutions (c2: 8×).
                let g = shape.input_size.div_ceil(4 << (c.layers[0] - 1));
                Box::new(PatchCoreFit::new(
                    c.clone(),
                    layer_channels(ch, &c.layers),
                    (g, g),
                    expected_images,
                )?)
            }
            DetectorConfig::Gde(c) => Box::new(GdeFit::new(c.clone(), ch[3], shape.input_size)?),
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
            DetectorConfig::Gde(c) => Arc::new(Gde::from_tensors(
                c.clone(),
                self.grid,
                self.train_images,
                get,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gde: Option<GdeConfig>,
    grid: [usize; 2],
    train_images: usize,
}

impl TryFrom<RawDetectorSpec> for DetectorSpec {
    type Error = String;

    fn try_from(r: RawDetectorSpec) -> Result<Self, String> {
        let tables: Vec<&str> = [
            ("padim", r.padim.is_some()),
            ("patchcore", r.patchcore.is_some()),
            ("gde", r.gde.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect();
        let config = match (r.kind, r.padim, r.patchcore, r.gde) {
            (DetectorKind::Padim, Some(c), None, None) => DetectorConfig::Padim(c),
            (DetectorKind::Patchcore, None, Some(c), None) => DetectorConfig::Patchcore(c),
            (DetectorKind::Gde, None, None, Some(c)) => DetectorConfig::Gde(c),
            (kind, ..) => {
                let found = match tables.as_slice() {
                    [] => "neither".to_string(),
                    t => t
                        .iter()
                        .map(|n| format!("[detector.{n}]"))
                        .collect::<Vec<_>>()
                        .join(" and "),
                };
                return Err(format!(
                    "detector kind `{}` needs exactly its own settings table [detector.{}]; found {found}",
                    kind.name(),
                    kind.name(),
                ));
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
        let kind = s.kind();
        let (mut padim, mut patchcore, mut gde) = (None, None, None);
        match s.config {
            DetectorConfig::Padim(c) => padim = Some(c),
            DetectorConfig::Patchcore(c) => patchcore = Some(c),
            DetectorConfig::Gde(c) => gde = Some(c),
        }
        Self {
            kind,
            padim,
            patchcore,
            gde,
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
    /// GDE: Gaussians on pooled image and window embeddings, Mahalanobis distance.
    Gde,
}

impl DetectorKind {
    /// The backbone stages (1-based) this detector reads; the backbone runs up to the last one.
    pub fn stages(self) -> &'static [usize] {
        match self {
            DetectorKind::Padim => &padim::PADIM_STAGES,
            DetectorKind::Patchcore => &patchcore::PATCHCORE_STAGES,
            DetectorKind::Gde => &gde::GDE_STAGES,
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
            DetectorKind::Gde => "gde",
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
