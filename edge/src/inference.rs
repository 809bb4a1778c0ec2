//! Scoring frames with a kestrel-vision model: score, verdict, anomaly map, and the wire mask.
//!
//! The runtime talks to an [`Inspector`] trait, not to candle, so its threading, queueing and fault logic is tested
//! with a scripted fake and the real model is tested here. [`VisionInspector`] loads a model directory written by
//! `kestrel fit` (`Model::load`) and scores frames with `Model::score_rgb8`, the one kestrel-vision path from pixels
//! to score that `kestrel eval` and `kestrel predict` also run, so a frame scores the same on the unit as the same
//! image does on the host by construction, not by keeping two copies in step.
//!
//! The verdict rule is kestrel-vision's (`threshold::rejects`): a part is rejected when its score is **at or above**
//! the threshold, or NaN; `SetThreshold` replaces the threshold at run time. A model directory without a threshold is
//! refused at load: the unit would otherwise have to invent one.
//!
//! The wire mask is the anomaly map resized bilinearly (`resample::bilinear`, the resize the host uses for its
//! overlays) to at most [`MASK_SIDE`]² and quantised to `u8` relative to
//! the threshold (`128` = exactly at threshold, `255` = twice it or more), so a host can draw "how far over" without
//! knowing the model's score scale; it is sent RLE-encoded when that is smaller (anomaly maps are smooth, so mostly
//! flat regions compress well), raw otherwise.

use std::path::{Path, PathBuf};

use kestrel_bundle::VerifiedBundle;
use kestrel_vision::device::parse_device;
use kestrel_vision::map::{MapError, ScoreMap};
use kestrel_vision::model::{Model, Rgb8};
use kestrel_vision::resample;
use kestrel_wire::{Mask, MaskError, ModelRef};
use sha2::{Digest, Sha256};

use crate::camera::Frame;

/// Side of the wire mask grid (64×64 = 4 KiB raw, far less RLE-encoded).
pub const MASK_SIDE: u32 = 64;

/// Why scoring or loading failed.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The model directory could not be loaded.
    #[error("cannot load the model in {dir}: {source}")]
    Load {
        /// The directory.
        dir: PathBuf,
        /// What kestrel-vision said.
        #[source]
        source: Box<kestrel_vision::model::ModelError>,
    },
    /// The model has no decision threshold.
    #[error("the model in {dir} has no decision threshold; refit it with a validation split (`kestrel fit`) so one is chosen")]
    NoThreshold {
        /// The directory.
        dir: PathBuf,
    },
    /// The compute device in the board profile is unusable.
    #[error("compute device: {0}")]
    Device(#[from] kestrel_vision::device::DeviceError),
    /// Reading the model files to hash them failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The frames (first id given) could not be scored: a frame buffer that does not match its declared size, or
    /// a failure in the network or detector.
    #[error("scoring frames from id {first_frame}")]
    Score {
        /// Id of the first frame of the batch.
        first_frame: u64,
        /// Why.
        #[source]
        source: Box<kestrel_vision::model::ModelError>,
    },
    /// The bundle could not be turned into a model (its spec or tensors are inconsistent).
    #[error("cannot load bundle {sha256}")]
    Bundle {
        /// Hex SHA-256 of the bundle.
        sha256: String,
        /// What kestrel-vision said.
        #[source]
        source: Box<kestrel_vision::bundle::BundleModelError>,
    },
    /// The bundle carries no self-test image, so the unit cannot check that it scores as it did on the host.
    #[error("bundle {sha256} has no self-test image; export it again with `kestrel export` (which embeds one)")]
    NoSelfTest {
        /// Hex SHA-256 of the bundle.
        sha256: String,
    },
    /// The self-test image scored differently on this unit than at export.
    #[error("self-test failed: the embedded image scores {got} on this unit, the bundle expects {expected} ± {tolerance}")]
    SelfTest {
        /// Score on this unit.
        got: f32,
        /// Score recorded at export.
        expected: f32,
        /// Allowed difference.
        tolerance: f32,
    },
    /// A map could not be resized to the mask grid.
    #[error("building the wire mask")]
    MaskSize(#[from] MapError),
    /// The mask could not be encoded.
    #[error("building the wire mask")]
    MaskEncode(#[from] MaskError),
}

/// Result of scoring one frame: kestrel-vision's, unchanged (score and the anomaly map at the model's input size).
pub type Inspection = kestrel_vision::model::Scored;

/// Something that scores frames. Batches may be any size ≥ 1; results come back in frame order.
pub trait Inspector: Send {
    /// Score `frames`.
    fn inspect(&mut self, frames: &[Frame]) -> Result<Vec<Inspection>, InferenceError>;
    /// Identity of the model, for `Hello` and events.
    fn model_ref(&self) -> ModelRef;
    /// The threshold the model was fitted with.
    fn threshold(&self) -> f32;
}

/// The real inspector: a kestrel-vision model from a `kestrel fit` directory.
pub struct VisionInspector {
    model: Model,
    model_ref: ModelRef,
    threshold: f32,
}

impl std::fmt::Debug for VisionInspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionInspector")
            .field("model", &self.model_ref.name)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl VisionInspector {
    /// Load the model in `dir` onto `device` (`"cpu"` or `"cuda:N"`).
    pub fn load(dir: &Path, device: &str) -> Result<Self, InferenceError> {
        let dev = parse_device(device)?;
        let model = Model::load(dir, &dev).map_err(|source| InferenceError::Load {
            dir: dir.to_path_buf(),
            source: Box::new(source),
        })?;
        let threshold = model
            .spec()
            .threshold
            .as_ref()
            .map(|t| t.image)
            .filter(|t| t.is_finite())
            .ok_or_else(|| InferenceError::NoThreshold {
                dir: dir.to_path_buf(),
            })?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let name = format!(
            "{name} ({} {:?})",
            model.spec().data.category,
            model.spec().detector.kind()
        );
        let model_ref = ModelRef {
            name,
            sha256: hash_dir(dir)?,
            version: 0,
        };
        Ok(Self {
            model,
            model_ref,
            threshold,
        })
    }
}

impl VisionInspector {
    /// Load the model of a verified bundle onto `device` and run its self-test: the embedded image must score what
    /// it scored at export (within the recorded tolerance). A bundle that fails is never used.
    pub fn from_bundle(bundle: &VerifiedBundle, device: &str) -> Result<Self, InferenceError> {
        let dev = parse_device(device)?;
        let sha256 = bundle.sha256_hex();
        let model = Model::from_bundle(bundle, &dev).map_err(|source| InferenceError::Bundle {
            sha256: sha256.clone(),
            source: Box::new(source),
        })?;
        let info = &bundle.manifest().model;
        let model_ref = ModelRef {
            name: info.name.clone(),
            sha256: *bundle.sha256(),
            version: info.model_version,
        };
        let inspector = VisionInspector {
            model,
            model_ref,
            threshold: info.threshold,
        };
        let (image, test) = kestrel_vision::bundle::self_test_image(bundle)
            .ok_or(InferenceError::NoSelfTest { sha256 })?;
        let got = inspector
            .model
            .score_rgb8(&[Rgb8 {
                pixels: image.as_raw(),
                width: image.width(),
                height: image.height(),
            }])
            .map_err(|e| InferenceError::Score {
                first_frame: 0,
                source: Box::new(e),
            })?[0]
            .score;
        if !test.accepts(got) {
            return Err(InferenceError::SelfTest {
                got,
                expected: test.expected_score,
                tolerance: test.tolerance,
            });
        }
        tracing::info!(model = %info.name, version = info.model_version, score = got, expected = test.expected_score, "self-test passed");
        Ok(inspector)
    }
}

impl VisionInspector {
    /// Side of the model's square input.
    pub fn input_size(&self) -> u32 {
        self.model.spec().preprocess.output_size()
    }
}

impl Inspector for VisionInspector {
    fn inspect(&mut self, frames: &[Frame]) -> Result<Vec<Inspection>, InferenceError> {
        let views: Vec<Rgb8<'_>> = frames
            .iter()
            .map(|f| Rgb8 {
                pixels: &f.rgb,
                width: f.width,
                height: f.height,
            })
            .collect();
        self.model
            .score_rgb8(&views)
            .map_err(|e| InferenceError::Score {
                first_frame: frames.first().map_or(0, |f| f.id),
                source: Box::new(e),
            })
    }

    fn model_ref(&self) -> ModelRef {
        self.model_ref.clone()
    }

    fn threshold(&self) -> f32 {
        self.threshold
    }
}

/// The verdict rule: `true` (good part) when the score is below the threshold; a NaN score is a reject (fail safe).
/// kestrel-vision's [`kestrel_vision::threshold::rejects`], the rule `kestrel predict` applies too.
pub fn passes(score: f32, threshold: f32) -> bool {
    !kestrel_vision::threshold::rejects(score, threshold)
}

/// The wire mask of an anomaly map (see the module docs for the grid and the quantisation).
pub fn mask_from_map(map: &ScoreMap, threshold: f32) -> Result<Mask, InferenceError> {
    let (w, h) = (map.width(), map.height());
    let grid_w = w.clamp(1, MASK_SIDE as usize);
    let grid_h = h.clamp(1, MASK_SIDE as usize);
    let small = if (grid_w, grid_h) == (w, h) {
        map.clone()
    } else {
        resample::bilinear(map, grid_w, grid_h)?
    };
    // A non-positive threshold cannot scale the map; fall back to the map's own maximum so the picture is still useful.
    let scale = if threshold > 0.0 {
        threshold
    } else {
        small
            .data()
            .iter()
            .copied()
            .fold(f32::MIN_POSITIVE, f32::max)
    };
    let pixels: Vec<u8> = small
        .data()
        .iter()
        .map(|v| (v / scale * 128.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    Ok(Mask::compact(grid_w as u16, grid_h as u16, &pixels)?)
}

/// SHA-256 over the model directory's regular files in name order (name, length, bytes of each), so a different
/// model, or the same one refitted, gets a different identity. Bundles will carry their own file hash instead.
fn hash_dir(dir: &Path) -> Result<[u8; 32], InferenceError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InferenceError::Io { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let bytes = std::fs::read(&f).map_err(io(&f))?;
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        h.update(name.unwrap_or_default().as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_rule_rejects_at_threshold_and_nan() {
        assert!(passes(0.99, 1.0));
        assert!(!passes(1.0, 1.0));
        assert!(!passes(f32::NAN, 1.0));
    }

    #[test]
    fn mask_is_quantised_against_the_threshold_and_downsampled() {
        // 128×128 map: left half at the threshold, right half at twice it.
        let side = 128usize;
        let map: Vec<f32> = (0..side * side)
            .map(|i| if i % side < side / 2 { 2.0 } else { 4.0 })
            .collect();
        let m = mask_from_map(&ScoreMap::new(side, side, map).unwrap(), 2.0).unwrap();
        assert_eq!((m.width, m.height), (64, 64));
        let px = m.pixels().unwrap();
        assert_eq!(px[0], 128);
        assert_eq!(px[63], 255);
        // Two flat halves per row: RLE wins over 4096 raw bytes.
        assert_eq!(m.encoding, kestrel_wire::MaskEncoding::Rle);
        assert!(m.data.len() < 1024, "{}", m.data.len());
    }

    #[test]
    fn small_maps_keep_their_size_and_bad_thresholds_do_not_divide_by_zero() {
        let m =
            mask_from_map(&ScoreMap::new(2, 2, vec![0.0, 1.0, 2.0, 4.0]).unwrap(), 0.0).unwrap();
        assert_eq!((m.width, m.height), (2, 2));
        assert_eq!(m.pixels().unwrap(), vec![0, 32, 64, 128]);
    }

    #[test]
    fn missing_model_dir_is_a_load_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let err = VisionInspector::load(&tmp.path().join("nope"), "cpu").unwrap_err();
        assert!(matches!(err, InferenceError::Load { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
