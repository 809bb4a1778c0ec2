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

use std::sync::Arc;

use rayon::prelude::*;

use crate::backbone::{self, Arch, BackboneError, ResNet, ResNetConfig, WeightSource};
use crate::detector::{Detector, DetectorConfig, DetectorError, DetectorFit, FeatureShape};
use crate::map::{MapError, ScoreMap};
use crate::postprocess;
use crate::preprocess::{preprocess_rgb8, PreprocessConfig, PreprocessError};

pub use crate::detector::DetectorSpec;
pub use crate::threshold::ThresholdSpec;

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
        #[source]
        source: std::io::Error,
    },
    /// `model.toml` cannot be parsed.
    #[error(
        "{path}: invalid model description\n  hint: was this directory written by `kestrel fit`?"
    )]
    SpecSyntax {
        /// File.
        path: PathBuf,
        /// The TOML parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// `model.toml` could not be written (a value TOML cannot represent).
    #[error("{path}: cannot write the model description")]
    SpecWrite {
        /// File.
        path: PathBuf,
        /// The TOML writer's error.
        #[source]
        source: toml::ser::Error,
    },
    /// `model.toml` was written by a newer kestrel.
    #[error("{path}: model format {found} is newer than this kestrel understands ({MODEL_FORMAT}); upgrade kestrel")]
    FormatTooNew {
        /// File.
        path: PathBuf,
        /// Format found.
        found: u32,
    },
    /// A tensor file is missing or inconsistent.
    #[error("{path}")]
    Tensors {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: candle_core::Error,
    },
    /// A detector state file does not rebuild its detector.
    #[error("{path}")]
    DetectorState {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: DetectorError,
    },
    /// An image could not be pre-processed (e.g. a frame buffer shorter than its declared size).
    #[error("image {index} of the batch")]
    Preprocess {
        /// Position in the batch.
        index: usize,
        /// Why.
        #[source]
        source: PreprocessError,
    },
    /// A map had an impossible size (a bug, reported rather than panicking).
    #[error(transparent)]
    Map(#[from] MapError),
    /// Input batch does not match the model's input size.
    #[error("input batch has shape {got:?}, the model expects N×3×{size}×{size}")]
    InputShape {
        /// Shape given.
        got: Vec<usize>,
        /// Model input side.
        size: u32,
    },
    /// [`Model::save`] on a model loaded from a bundle: it holds folded (and maybe quantised) weights only.
    #[error("this model was loaded from a bundle and holds only folded weights; save the original model directory")]
    NoCheckpoint,
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

/// Post-processing section of model.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostprocessSpec {
    /// Gaussian blur σ applied to the upsampled map (anomalib: 4).
    pub blur_sigma: f32,
}

/// Training data provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Dataset root as given.
    pub root: PathBuf,
    /// Category (product).
    pub category: String,
    /// Seed of the validation hold-out (so `kestrel export` can rebuild the split the threshold was chosen on).
    /// Absent in models written before it was recorded; then the backbone's or detector's seed is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
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
    /// How the backbone was chosen, when `kestrel fit --pretrain synthetic` chose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<RecipeSpec>,
}

/// What `kestrel fit --pretrain synthetic` tried and chose: each candidate backbone's detector was fitted on most of
/// the good training images and scored on the rest, as they are and with a synthetic defect planted in each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipeSpec {
    /// The recipe (`synthetic`).
    pub recipe: String,
    /// The planted defect family.
    pub proxy_defects: String,
    /// Good training images held out for the comparison (each scored as is and with a planted defect).
    pub proxy_images: usize,
    /// The candidates, in the order tried.
    pub candidates: Vec<CandidateScore>,
    /// The chosen candidate's name.
    pub chosen: String,
}

/// One candidate backbone of a [`RecipeSpec`] and how its detector did on the planted defects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    /// Name (`random`, `fractal`, `fractal-gmm`, `cutpaste`, ...).
    pub name: String,
    /// Its weights file (none for random initialisation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// Seconds spent pretraining it (0 when cached or random).
    pub pretrain_seconds: f64,
    /// Image AUROC: held-out good images against the same images with a planted defect.
    pub image_auroc: f64,
    /// Pixel AUROC over the same images, the planted defects' masks as ground truth.
    pub pixel_auroc: f64,
    /// What was compared: the mean of the two.
    pub proxy: f64,
}

/// Scoring output for one image, at model input resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Anomaly map at the model's input size, after upsampling and blur.
    pub map: ScoreMap,
    /// Image anomaly score.
    pub score: f32,
}

/// Borrowed interleaved RGB8 pixels (`width × height × 3` bytes, row-major): a camera frame or a decoded image.
#[derive(Debug, Clone, Copy)]
pub struct Rgb8<'a> {
    /// The pixels.
    pub pixels: &'a [u8],
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl<'a> From<&'a image::RgbImage> for Rgb8<'a> {
    fn from(img: &'a image::RgbImage) -> Self {
        Self {
            pixels: img.as_raw(),
            width: img.width(),
            height: img.height(),
        }
    }
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
    /// Detector and its settings.
    pub detector: DetectorConfig,
    /// Blur σ.
    pub blur_sigma: f32,
    /// Data provenance.
    pub data: DataSpec,
}

/// A model ready to score images.
#[derive(Debug, Clone)]
pub struct Model {
    spec: ModelSpec,
    /// The unfolded (torchvision-named) backbone checkpoint, for [`Model::save`]; `None` for a model loaded from a
    /// bundle, which carries only folded weights.
    weights: Option<HashMap<String, Tensor>>,
    pub(crate) net: ResNet,
    device: Device,
    detector: Arc<dyn Detector>,
}

/// Incremental fitting: feed batches of pre-processed good images, then [`Fitter::finish`].
pub struct Fitter {
    settings: FitSettings,
    weights: HashMap<String, Tensor>,
    net: ResNet,
    device: Device,
    fit: Box<dyn DetectorFit>,
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
        let fit = settings.detector.fitter(
            FeatureShape {
                stage_channels: cfg.stage_channels(),
                input_size: settings.preprocess.output_size() as usize,
            },
            expected_images,
        )?;
        Ok(Self {
            settings,
            weights,
            net,
            device: device.clone(),
            fit,
        })
    }

    /// Whether PatchCore spills training patches to disk (so the CLI can say so).
    pub fn spills_to_disk(&self) -> bool {
        self.fit.spills_to_disk()
    }

    /// Add a batch (N×3×S×S, pre-processed) of good images.
    pub fn add_batch(&mut self, x: &Tensor) -> Result<(), ModelError> {
        check_input(x, self.settings.preprocess.output_size())?;
        let x = x.to_device(&self.device)?;
        let features = self.settings.detector.features().extract(&self.net, &x)?;
        Ok(self.fit.add(&features)?)
    }

    /// Finish fitting; `progress(done, total)` reports coreset selection.
    pub fn finish(self, progress: &dyn Fn(usize, usize)) -> Result<Model, ModelError> {
        let s = self.settings;
        let detector = self.fit.finish(progress)?;
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
            detector: detector.spec(),
            postprocess: PostprocessSpec {
                blur_sigma: s.blur_sigma,
            },
            threshold: None,
            recipe: None,
        };
        Ok(Model {
            spec,
            weights: Some(self.weights),
            net: self.net,
            device: self.device,
            detector,
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

    /// Record how the backbone was chosen.
    pub fn set_recipe(&mut self, r: Option<RecipeSpec>) {
        self.spec.recipe = r;
    }

    /// Score a batch of pre-processed images (N×3×S×S): backbone → detector → heatmap ([`postprocess::heatmap`],
    /// the detector's own upsampling, then the blur) → image score (the detector's own, else the heatmap's
    /// maximum; a NaN anywhere in the heatmap makes the score NaN, which every verdict rule treats as a reject).
    pub fn score_batch(&self, x: &Tensor) -> Result<Vec<Scored>, ModelError> {
        let stages = self.features(x)?;
        self.score_features(&stages)
    }

    /// The backbone half of [`Model::score_batch`]: what the detector reads ([`crate::detector::Features`]).
    pub fn features(&self, x: &Tensor) -> Result<Vec<Tensor>, ModelError> {
        check_input(x, self.spec.preprocess.output_size())?;
        let x = x.to_device(&self.device)?;
        Ok(self.detector.features().extract(&self.net, &x)?)
    }

    /// The detector half of [`Model::score_batch`]: stage outputs from [`Model::features`] to scored heatmaps.
    pub fn score_features(&self, stages: &[Tensor]) -> Result<Vec<Scored>, ModelError> {
        let size = self.spec.preprocess.output_size() as usize;
        let sigma = self.spec.postprocess.blur_sigma;
        let upsample = self.detector.upsample();
        self.detector
            .score(stages)?
            .into_par_iter()
            .map(|p| {
                let map = postprocess::heatmap(&p.map, upsample, size, sigma)?;
                let score = p.image_score.unwrap_or_else(|| map.max());
                Ok(Scored { map, score })
            })
            .collect()
    }

    /// Score RGB8 images of any size (camera frames, decoded files): the one path from pixels to scores that
    /// `kestrel eval`, `kestrel predict`, `kestrel fit`'s threshold and the edge unit all use. Images are
    /// pre-processed in parallel with the model's own [`PreprocessConfig`], stacked and scored as one batch.
    pub fn score_rgb8(&self, images: &[Rgb8<'_>]) -> Result<Vec<Scored>, ModelError> {
        let batch = self.batch_rgb8(images)?;
        self.score_batch(&batch)
    }

    /// Pre-process RGB8 images with the model's settings and stack them into its input batch.
    pub fn batch_rgb8(&self, images: &[Rgb8<'_>]) -> Result<Tensor, ModelError> {
        preprocess_batch(images, &self.spec.preprocess, &self.device)
    }

    /// The fitted detector.
    pub fn detector(&self) -> &dyn Detector {
        self.detector.as_ref()
    }

    /// A model from its parts (a bundle's spec, folded network and detector); it cannot be [saved](Model::save).
    pub(crate) fn from_parts(
        spec: ModelSpec,
        net: ResNet,
        device: &Device,
        detector: Arc<dyn Detector>,
    ) -> Self {
        Self {
            spec,
            weights: None,
            net,
            device: device.clone(),
            detector,
        }
    }

    /// model.toml's text (without the comment header): what [`Model::save`] writes and bundles carry as their spec.
    pub fn spec_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(&self.spec)
    }

    /// Write the model directory (created if missing; existing model files are replaced atomically per file).
    /// A model loaded from a bundle has no unfolded backbone checkpoint and cannot be saved.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let Some(weights) = &self.weights else {
            return Err(ModelError::NoCheckpoint);
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let toml_txt = self.spec_toml().map_err(|source| ModelError::SpecWrite {
            path: dir.join("model.toml"),
            source,
        })?;
        let header = "# kestrel model: written by `kestrel fit`. Edit `threshold.image` to move the reject threshold.\n";
        write_atomic(
            &dir.join("model.toml"),
            format!("{header}{toml_txt}").as_bytes(),
        )?;
        save_tensors(
            &weights.clone().into_iter().collect::<Vec<_>>(),
            &dir.join("backbone.safetensors"),
        )?;
        let tensors = self.detector.state()?;
        save_tensors(&tensors, &dir.join(detector_file(&self.spec.detector)))
    }

    /// Load a model directory onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let toml_path = dir.join("model.toml");
        let txt = std::fs::read_to_string(&toml_path).map_err(|source| ModelError::Io {
            path: toml_path.clone(),
            source,
        })?;
        let spec: ModelSpec = toml::from_str(&txt).map_err(|source| ModelError::SpecSyntax {
            path: toml_path.clone(),
            source,
        })?;
        if spec.format > MODEL_FORMAT {
            return Err(ModelError::FormatTooNew {
                path: toml_path,
                found: spec.format,
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
        let state_path = dir.join(detector_file(&spec.detector));
        let state = load_tensors(&state_path)?;
        let get = |n: &str| {
            state
                .get(n)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("tensor `{n}` missing")))
        };
        let detector = spec
            .detector
            .load(&get)
            .map_err(|source| ModelError::DetectorState {
                path: state_path,
                source,
            })?;
        Ok(Self {
            spec,
            weights: Some(weights),
            net,
            device: device.clone(),
            detector,
        })
    }
}

/// File name of a detector's state in a model directory.
fn detector_file(spec: &DetectorSpec) -> String {
    format!("{}.safetensors", spec.kind().name())
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

/// Pre-process RGB8 images (in parallel; each image's result does not depend on the others) and stack them into
/// an N×3×S×S batch on `device`.
pub fn preprocess_batch(
    images: &[Rgb8<'_>],
    cfg: &PreprocessConfig,
    device: &Device,
) -> Result<Tensor, ModelError> {
    let inputs: Vec<Vec<f32>> = images
        .par_iter()
        .enumerate()
        .map(|(index, im)| {
            preprocess_rgb8(im.pixels, im.width, im.height, cfg)
                .map_err(|source| ModelError::Preprocess { index, source })
        })
        .collect::<Result<_, _>>()?;
    batch_tensor(&inputs, cfg.output_size(), device)
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
    use crate::detector::padim::PadimConfig;
    use crate::detector::patchcore::PatchCoreConfig;
    use crate::detector::DetectorKind;

    fn settings(kind: DetectorKind) -> FitSettings {
        FitSettings {
            arch: Arch::Resnet18Narrow,
            weights_source: WeightSource::Random { seed: 1 },
            preprocess: PreprocessConfig {
                image_size: 64,
                ..PreprocessConfig::default()
            },
            detector: match kind {
                DetectorKind::Padim => DetectorConfig::Padim(PadimConfig::for_backbone(
                    Arch::Resnet18Narrow.config().stage_channels(),
                )),
                DetectorKind::Patchcore => DetectorConfig::Patchcore(PatchCoreConfig {
                    coreset_ratio: 0.2,
                    ..Default::default()
                }),
                DetectorKind::Gde => {
                    DetectorConfig::Gde(crate::detector::gde::GdeConfig::default())
                }
            },
            blur_sigma: 4.0,
            data: DataSpec {
                root: "mem".into(),
                category: "unit".into(),
                split_seed: None,
            },
        }
    }

    /// Save → load gives identical scores, for every detector.
    #[test]
    fn save_load_round_trip_is_exact() {
        let dev = Device::Cpu;
        for kind in [
            DetectorKind::Padim,
            DetectorKind::Patchcore,
            DetectorKind::Gde,
        ] {
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
            assert_eq!((a[0].map.width(), a[0].map.height()), (64, 64));
        }
    }

    /// Other stage taps: the map takes the first tapped stage's grid, save → load keeps them, bad taps are refused.
    #[test]
    fn layer_taps_set_the_grid_and_survive_a_round_trip() {
        let dev = Device::Cpu;
        let ch = Arch::Resnet18Narrow.config().stage_channels();
        let cases = [
            (
                DetectorConfig::Padim(PadimConfig::for_layers(ch, &[2, 3])),
                8,
            ),
            (
                DetectorConfig::Patchcore(PatchCoreConfig {
                    coreset_ratio: 0.5,
                    layers: vec![1, 2, 3],
                    ..Default::default()
                }),
                16,
            ),
        ];
        for (config, grid) in cases {
            let mut s = settings(DetectorKind::Padim);
            s.detector = config;
            let w = backbone::random_weights(&Arch::Resnet18Narrow.config(), 1, &dev).unwrap();
            let mut f = Fitter::new(s, w, 4, &dev).unwrap();
            f.add_batch(&Tensor::randn(0f32, 1.0, (4, 3, 64, 64), &dev).unwrap())
                .unwrap();
            let m = f.finish(&|_, _| {}).unwrap();
            assert_eq!(m.spec().detector.grid, (grid, grid));
            let test = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &dev).unwrap();
            let dir = tempfile::tempdir().unwrap();
            m.save(dir.path()).unwrap();
            let back = Model::load(dir.path(), &dev).unwrap();
            assert_eq!(
                m.score_batch(&test).unwrap(),
                back.score_batch(&test).unwrap()
            );
        }
        let mut s = settings(DetectorKind::Padim);
        s.detector = DetectorConfig::Padim(PadimConfig {
            layers: vec![3, 2],
            ..PadimConfig::for_backbone(ch)
        });
        let w = backbone::random_weights(&Arch::Resnet18Narrow.config(), 1, &dev).unwrap();
        let Err(e) = Fitter::new(s, w, 4, &dev) else {
            panic!("decreasing layers accepted");
        };
        let e = e.to_string();
        assert!(e.contains("increasing order"), "{e}");
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
