//! A fitted model: backbone + pre-processing + detector + post-processing + threshold, and its directory format.
//!
//! A model directory (`kestrel fit -o DIR`) holds:
//! * `model.toml`: human-readable: what was fitted, on what, with which settings, and the threshold with where it came
//!   from. Everything needed to rebuild the model; nothing needs guessing at load time.
//! * `backbone.safetensors`: backbone weights with torchvision names (un-folded, so the file is a normal checkpoint).
//! * `padim.safetensors` or `patchcore.safetensors`: detector state.
//!
//! Loading a directory gives bit-identical scores to the model that was saved (tested).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::backbone::{self, Arch, BackboneError, ResNet, ResNetConfig, WeightSource};
use crate::detector::padim::{Padim, PadimConfig, PadimFit};
use crate::detector::patchcore::{PatchCore, PatchCoreConfig, PatchCoreFit};
use crate::detector::{DetectorError, DetectorKind, PatchMap};
use crate::postprocess;
use crate::preprocess::PreprocessConfig;

/// Current model directory format version.
pub const MODEL_FORMAT: u32 = 1;

/// Errors of fitting, saving, loading and scoring models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Backbone problem.
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    /// Detector problem.
    #[error(transparent)]
    Detector(#[from] DetectorError),
    /// Reading or writing a file failed.
    #[error("{path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `model.toml` is malformed.
    #[error("{path}: invalid model description: {detail}\n  hint: was this directory written by `kestrel fit`?")]
    Spec {
        /// File.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A tensor file is missing or inconsistent.
    #[error("{path}")]
    Tensors {
        /// File.
        path: PathBuf,
        /// Why.
        source: candle_core::Error,
    },
    /// Input batch does not match the model's input size.
    #[error("input batch has shape {got:?}, the model expects N×3×{size}×{size}")]
    InputShape {
        /// Shape given.
        got: Vec<usize>,
        /// Model input side.
        size: u32,
    },
    /// Any other tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Backbone section of model.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneSpec {
    /// Architecture name.
    pub arch: Arch,
    /// Exact shape (so a config change in a later version cannot silently alter old models).
    pub config: ResNetConfig,
    /// Where the weights came from when fitting (informational; the weights themselves are in the directory).
    pub weights: WeightSource,
}

/// Detector section of model.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorSpec {
    /// Which detector.
    pub kind: DetectorKind,
    /// PaDiM settings (when `kind = "padim"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padim: Option<PadimConfig>,
    /// PatchCore settings (when `kind = "patchcore"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patchcore: Option<PatchCoreConfig>,
    /// Feature grid [h, w] of the patch map.
    pub grid: [usize; 2],
    /// Number of good images fitted on.
    pub train_images: usize,
}

/// Post-processing section of model.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostprocessSpec {
    /// Gaussian blur σ applied to the upsampled map (anomalib: 4).
    pub blur_sigma: f32,
}

/// Decision threshold and its provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdSpec {
    /// Image score at or above which a part is rejected.
    pub image: f32,
    /// How it was chosen (e.g. "max score of 12 held-out good images").
    pub method: String,
    /// Good images in the validation split.
    pub validation_good: usize,
    /// Defect images in the validation split.
    pub validation_defect: usize,
}

/// Training data provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Dataset root as given.
    pub root: PathBuf,
    /// Category (product).
    pub category: String,
}

/// The whole of model.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Directory format version.
    pub format: u32,
    /// kestrel version that wrote it.
    pub kestrel_version: String,
    /// Seconds since the Unix epoch at fit time.
    pub created_unix: u64,
    /// Training data.
    pub data: DataSpec,
    /// Backbone.
    pub backbone: BackboneSpec,
    /// Pre-processing (resize, normalise).
    pub preprocess: PreprocessConfig,
    /// Detector.
    pub detector: DetectorSpec,
    /// Post-processing.
    pub postprocess: PostprocessSpec,
    /// Threshold, when one was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<ThresholdSpec>,
}

#[derive(Debug, Clone)]
enum Fitted {
    Padim(Padim),
    PatchCore(PatchCore),
}

/// Scoring output for one image, at model input resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Anomaly map, `size`×`size` row-major, after upsampling and blur.
    pub map: Vec<f32>,
    /// Map side.
    pub size: usize,
    /// Image anomaly score.
    pub score: f32,
}

/// Settings for fitting.
#[derive(Debug, Clone)]
pub struct FitSettings {
    /// Architecture.
    pub arch: Arch,
    /// Weights origin (for the record).
    pub weights_source: WeightSource,
    /// Pre-processing.
    pub preprocess: PreprocessConfig,
    /// Detector kind.
    pub kind: DetectorKind,
    /// PaDiM settings override (defaults depend on the backbone).
    pub padim: Option<PadimConfig>,
    /// PatchCore settings.
    pub patchcore: PatchCoreConfig,
    /// Blur σ.
    pub blur_sigma: f32,
    /// Data provenance.
    pub data: DataSpec,
}

/// A model ready to score images.
#[derive(Debug, Clone)]
pub struct Model {
    spec: ModelSpec,
    weights: HashMap<String, Tensor>,
    net: ResNet,
    device: Device,
    fitted: Fitted,
}

/// Incremental fitting: feed batches of pre-processed good images, then [`Fitter::finish`].
pub struct Fitter {
    settings: FitSettings,
    weights: HashMap<String, Tensor>,
    net: ResNet,
    device: Device,
    state: FitState,
    last_stage: usize,
}

enum FitState {
    Padim(Box<PadimFit>),
    PatchCore(Box<PatchCoreFit>),
}

impl Fitter {
    /// Prepare a fit. `weights` are torchvision-named backbone tensors; `expected_images` sizes PatchCore's projection
    /// and memory planning.
    pub fn new(
        settings: FitSettings,
        weights: HashMap<String, Tensor>,
        expected_images: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let cfg = settings.arch.config();
        let net = backbone::resnet_from_weights(
            &cfg,
            settings.arch.name(),
            weights.clone(),
            &weights_path(&settings.weights_source),
            device,
        )?
        .fold_batch_norm()?;
        let ch = cfg.stage_channels();
        let size = settings.preprocess.output_size() as usize;
        let state = match settings.kind {
            DetectorKind::Padim => {
                let total = ch[0] + ch[1] + ch[2];
                let pc = settings
                    .padim
                    .clone()
                    .unwrap_or_else(|| PadimConfig::default_for(total));
                FitState::Padim(Box::new(PadimFit::new(pc, total)?))
            }
            DetectorKind::Patchcore => {
                let grid = (size.div_ceil(8), size.div_ceil(8));
                FitState::PatchCore(Box::new(PatchCoreFit::new(
                    settings.patchcore.clone(),
                    ch[1] + ch[2],
                    grid,
                    expected_images,
                )?))
            }
        };
        let last_stage = *settings.kind.stages().last().expect("non-empty");
        Ok(Self {
            settings,
            weights,
            net,
            device: device.clone(),
            state,
            last_stage,
        })
    }

    /// Whether PatchCore spills training patches to disk (so the CLI can say so).
    pub fn spills_to_disk(&self) -> bool {
        matches!(&self.state, FitState::PatchCore(f) if f.spills())
    }

    /// Add a batch (N×3×S×S, pre-processed) of good images.
    pub fn add_batch(&mut self, x: &Tensor) -> Result<(), ModelError> {
        check_input(x, self.settings.preprocess.output_size())?;
        let x = x.to_device(&self.device)?;
        let stages = self.net.stages(&x, self.last_stage, false)?;
        match &mut self.state {
            FitState::Padim(f) => f.add(&stages)?,
            FitState::PatchCore(f) => f.add(&stages)?,
        }
        Ok(())
    }

    /// Finish fitting; `progress(done, total)` reports coreset selection.
    pub fn finish(self, progress: &dyn Fn(usize, usize)) -> Result<Model, ModelError> {
        let s = self.settings;
        let (fitted, det) = match self.state {
            FitState::Padim(f) => {
                let m = f.finish()?;
                let spec = DetectorSpec {
                    kind: DetectorKind::Padim,
                    padim: Some(m.config.clone()),
                    patchcore: None,
                    grid: [m.grid.0, m.grid.1],
                    train_images: m.images,
                };
                (Fitted::Padim(m), spec)
            }
            FitState::PatchCore(f) => {
                let m = f.finish(progress)?;
                let spec = DetectorSpec {
                    kind: DetectorKind::Patchcore,
                    padim: None,
                    patchcore: Some(m.config.clone()),
                    grid: [m.grid.0, m.grid.1],
                    train_images: m.images,
                };
                (Fitted::PatchCore(m), spec)
            }
        };
        let spec = ModelSpec {
            format: MODEL_FORMAT,
            kestrel_version: env!("CARGO_PKG_VERSION").to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            data: s.data,
            backbone: BackboneSpec {
                arch: s.arch,
                config: s.arch.config(),
                weights: s.weights_source,
            },
            preprocess: s.preprocess,
            detector: det,
            postprocess: PostprocessSpec {
                blur_sigma: s.blur_sigma,
            },
            threshold: None,
        };
        Ok(Model {
            spec,
            weights: self.weights,
            net: self.net,
            device: self.device,
            fitted,
        })
    }
}

fn weights_path(w: &WeightSource) -> PathBuf {
    match w {
        WeightSource::File { path } => path.clone(),
        WeightSource::Random { seed } => PathBuf::from(format!("<random init, seed {seed}>")),
    }
}

fn check_input(x: &Tensor, size: u32) -> Result<(), ModelError> {
    let d = x.dims();
    if d.len() != 4 || d[1] != 3 || d[2] != size as usize || d[3] != size as usize {
        return Err(ModelError::InputShape {
            got: d.to_vec(),
            size,
        });
    }
    Ok(())
}

impl Model {
    /// The description written to model.toml.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Set the decision threshold.
    pub fn set_threshold(&mut self, t: Option<ThresholdSpec>) {
        self.spec.threshold = t;
    }

    /// Score a batch of pre-processed images (N×3×S×S).
    pub fn score_batch(&self, x: &Tensor) -> Result<Vec<Scored>, ModelError> {
        check_input(x, self.spec.preprocess.output_size())?;
        let x = x.to_device(&self.device)?;
        let last = *self.spec.detector.kind.stages().last().expect("non-empty");
        let stages = self.net.stages(&x, last, false)?;
        let size = self.spec.preprocess.output_size() as usize;
        let sigma = self.spec.postprocess.blur_sigma;
        let raw: Vec<(PatchMap, Option<f32>, bool)> = match &self.fitted {
            Fitted::Padim(p) => p
                .score(&stages)?
                .into_iter()
                .map(|m| (m, None, true))
                .collect(),
            Fitted::PatchCore(p) => p
                .score(&stages)?
                .into_iter()
                .map(|(m, s)| (m, Some(s), false))
                .collect(),
        };
        use rayon::prelude::*;
        Ok(raw
            .into_par_iter()
            .map(|(m, score, bilinear)| {
                // anomalib: PaDiM upsamples bilinearly, PatchCore with nearest (F.interpolate default).
                let up = if bilinear {
                    postprocess::upsample_bilinear(&m.data, m.w, m.h, size, size)
                } else {
                    postprocess::upsample_nearest(&m.data, m.w, m.h, size, size)
                };
                let map = postprocess::gaussian_blur(&up, size, size, sigma);
                let score =
                    score.unwrap_or_else(|| map.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
                Scored { map, size, score }
            })
            .collect())
    }

    /// Write the model directory (created if missing; existing model files are replaced atomically per file).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let toml_txt = toml::to_string_pretty(&self.spec).map_err(|e| ModelError::Spec {
            path: dir.join("model.toml"),
            detail: e.to_string(),
        })?;
        let header = "# kestrel model: written by `kestrel fit`. Edit `threshold.image` to move the reject threshold.\n";
        write_atomic(
            &dir.join("model.toml"),
            format!("{header}{toml_txt}").as_bytes(),
        )?;
        save_tensors(
            &self.weights.clone().into_iter().collect::<Vec<_>>(),
            &dir.join("backbone.safetensors"),
        )?;
        let (name, tensors) = match &self.fitted {
            Fitted::Padim(p) => ("padim.safetensors", p.tensors()?),
            Fitted::PatchCore(p) => ("patchcore.safetensors", p.tensors()),
        };
        save_tensors(&tensors, &dir.join(name))
    }

    /// Load a model directory onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let toml_path = dir.join("model.toml");
        let txt = std::fs::read_to_string(&toml_path).map_err(|source| ModelError::Io {
            path: toml_path.clone(),
            source,
        })?;
        let spec: ModelSpec = toml::from_str(&txt).map_err(|e| ModelError::Spec {
            path: toml_path.clone(),
            detail: e.to_string(),
        })?;
        if spec.format > MODEL_FORMAT {
            return Err(ModelError::Spec {
                path: toml_path,
                detail: format!(
                    "format {} is newer than this kestrel understands ({MODEL_FORMAT}); upgrade kestrel",
                    spec.format
                ),
            });
        }
        let bb_path = dir.join("backbone.safetensors");
        let weights = load_tensors(&bb_path)?;
        let net = backbone::resnet_from_weights(
            &spec.backbone.config,
            spec.backbone.arch.name(),
            weights.clone(),
            &bb_path,
            device,
        )?
        .fold_batch_norm()?;
        let grid = (spec.detector.grid[0], spec.detector.grid[1]);
        let missing = |what: &str| ModelError::Spec {
            path: toml_path.clone(),
            detail: format!("detector.{what} section missing"),
        };
        let fitted = match spec.detector.kind {
            DetectorKind::Padim => {
                let p = dir.join("padim.safetensors");
                let t = load_tensors(&p)?;
                let cfg = spec
                    .detector
                    .padim
                    .clone()
                    .ok_or_else(|| missing("padim"))?;
                let get = |n: &str| {
                    t.get(n)
                        .cloned()
                        .ok_or_else(|| candle_core::Error::Msg(format!("tensor `{n}` missing")))
                };
                Fitted::Padim(
                    Padim::from_tensors(cfg, grid, spec.detector.train_images, &get)
                        .map_err(|source| ModelError::Tensors { path: p, source })?,
                )
            }
            DetectorKind::Patchcore => {
                let p = dir.join("patchcore.safetensors");
                let t = load_tensors(&p)?;
                let cfg = spec
                    .detector
                    .patchcore
                    .clone()
                    .ok_or_else(|| missing("patchcore"))?;
                let bank = t.get("bank").cloned().ok_or_else(|| ModelError::Tensors {
                    path: p.clone(),
                    source: candle_core::Error::Msg("tensor `bank` missing".into()),
                })?;
                Fitted::PatchCore(
                    PatchCore::new(cfg, grid, spec.detector.train_images, bank)
                        .map_err(|source| ModelError::Tensors { path: p, source })?,
                )
            }
        };
        Ok(Self {
            spec,
            weights,
            net,
            device: device.clone(),
            fitted,
        })
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let tmp = path.with_extension("tmp");
    let err = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn save_tensors(tensors: &[(String, Tensor)], path: &Path) -> Result<(), ModelError> {
    let tmp = path.with_extension("safetensors.tmp");
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| v.to_device(&Device::Cpu).map(|v| (k.clone(), v)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&map, &tmp).map_err(|source| ModelError::Tensors {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>, ModelError> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| ModelError::Tensors {
        path: path.to_path_buf(),
        source,
    })
}

/// Stack pre-processed CHW images (each `3·size·size` floats) into an N×3×S×S tensor.
pub fn batch_tensor(images: &[Vec<f32>], size: u32, device: &Device) -> Result<Tensor, ModelError> {
    let s = size as usize;
    let mut flat = Vec::with_capacity(images.len() * 3 * s * s);
    for im in images {
        if im.len() != 3 * s * s {
            return Err(ModelError::InputShape {
                got: vec![im.len()],
                size,
            });
        }
        flat.extend_from_slice(im);
    }
    Ok(Tensor::from_vec(flat, (images.len(), 3, s, s), device)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kind: DetectorKind) -> FitSettings {
        FitSettings {
            arch: Arch::Resnet18Narrow,
            weights_source: WeightSource::Random { seed: 1 },
            preprocess: PreprocessConfig {
                image_size: 64,
                ..PreprocessConfig::default()
            },
            kind,
            padim: None,
            patchcore: PatchCoreConfig {
                coreset_ratio: 0.2,
                ..Default::default()
            },
            blur_sigma: 4.0,
            data: DataSpec {
                root: "mem".into(),
                category: "unit".into(),
            },
        }
    }

    /// Save → load gives identical scores, for both detectors.
    #[test]
    fn save_load_round_trip_is_exact() {
        let dev = Device::Cpu;
        for kind in [DetectorKind::Padim, DetectorKind::Patchcore] {
            let w = backbone::random_weights(&Arch::Resnet18Narrow.config(), 1, &dev).unwrap();
            let mut f = Fitter::new(settings(kind), w, 6, &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (6, 3, 64, 64), &dev).unwrap();
            f.add_batch(&x.narrow(0, 0, 3).unwrap()).unwrap();
            f.add_batch(&x.narrow(0, 3, 3).unwrap()).unwrap();
            let m = f.finish(&|_, _| {}).unwrap();
            let test = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &dev).unwrap();
            let a = m.score_batch(&test).unwrap();
            let dir = tempfile::tempdir().unwrap();
            m.save(dir.path()).unwrap();
            let back = Model::load(dir.path(), &dev).unwrap();
            let b = back.score_batch(&test).unwrap();
            assert_eq!(a, b, "{kind:?}");
            assert_eq!(back.spec(), m.spec());
            assert_eq!(a[0].map.len(), 64 * 64);
        }
    }

    #[test]
    fn wrong_input_size_is_a_clear_error() {
        let dev = Device::Cpu;
        let w = backbone::random_weights(&Arch::Resnet18Narrow.config(), 1, &dev).unwrap();
        let mut f = Fitter::new(settings(DetectorKind::Padim), w, 2, &dev).unwrap();
        let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &dev).unwrap();
        let e = f.add_batch(&x).unwrap_err().to_string();
        assert!(e.contains("3×64×64"), "{e}");
    }
}
