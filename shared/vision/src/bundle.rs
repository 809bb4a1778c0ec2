//! A fitted [`Model`] as a signed `.kbundle` (the `kestrel-bundle` container) and back.
//!
//! [`Model::to_bundle`] writes what scoring needs and nothing else: the backbone with BatchNorm folded into its
//! convolutions (so a unit never sees BatchNorm), the detector state, the model description (model.toml's text as
//! the manifest's `spec`, so nothing is guessed at load time) and a self-test image with the score the *quantised*
//! model gives it. [`Model::from_bundle`] rebuilds a model from a [`VerifiedBundle`], dequantising every tensor to
//! f32 (candle has no int8 convolution). The tensors, the quantisation rules and their measured effect on the
//! metrics are described in `docs/bundle.md` ("Model bundles from kestrel-vision").
//!
//! An f32 bundle scores bit-identically to the model it was exported from: the folded weights are the very tensors
//! the model runs with.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use kestrel_bundle::{
    BundleError, BundleWriter, Dtype, FirmwareRange, ModelInfo, SelfTest, SigningKey, TensorEntry,
    TrustedKeys, VerifiedBundle,
};

pub use kestrel_bundle::Quantisation as Quant;

use crate::backbone::{self, BackboneError};
use crate::detector::DetectorError;
use crate::model::{Model, ModelError, ModelSpec, Rgb8, MODEL_FORMAT};

/// Prefix of the backbone's folded convolution tensors (`backbone.conv1.weight`, `backbone.layer1.0.conv1.bias`).
pub const BACKBONE_PREFIX: &str = "backbone.";
/// Prefix of the detector state tensors (`detector.mean`, `detector.bank`, ...).
pub const DETECTOR_PREFIX: &str = "detector.";
/// The self-test image tensor (`U8`, `[size, size, 3]`).
pub const SELF_TEST_IMAGE: &str = "self_test.image";
/// Suffix of a packed whitening factor: a detector state tensor named `…whiten` (PaDiM's `whiten`, GDE's
/// `image_whiten` and `window_whiten`: lower-triangular `L⁻¹` stacks) travels as `…whiten_tril`, its lower triangles
/// only, which halves its size.
const TRIL_SUFFIX: &str = "_tril";

/// What a bundle says about the model beyond what the model knows itself.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    /// Model name (e.g. the product line).
    pub name: String,
    /// Anti-rollback counter: units refuse a lower version than their active one.
    pub model_version: u64,
    /// Firmware versions the bundle runs on.
    pub firmware: FirmwareRange,
    /// An image to embed as the self-test (resized to the model's input size); `None` for no self-test.
    pub self_test: Option<image::RgbImage>,
}

/// Errors of exporting a model to a bundle or loading one.
#[derive(Debug, thiserror::Error)]
pub enum BundleModelError {
    /// The container refused (structure, signature, table).
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Building or scoring the model failed (boxed: `ModelError` is large and this is the cold path).
    #[error(transparent)]
    Model(Box<ModelError>),
    /// The bundle's folded backbone weights do not build the network its spec names.
    #[error("the bundle's backbone weights do not fit its spec")]
    Backbone(#[source] BackboneError),
    /// The bundle's detector state does not rebuild its detector.
    #[error("the bundle's detector state does not rebuild its detector")]
    Detector(#[source] DetectorError),
    /// A model without a threshold gives no verdicts, so it is not shipped.
    #[error(
        "the model has no threshold; set `threshold.image` in its model.toml before exporting it"
    )]
    NoThreshold,
    /// The manifest's `spec` is not a model description this version reads.
    #[error("the bundle's model description (spec) cannot be parsed")]
    SpecSyntax(#[source] toml::de::Error),
    /// The model description cannot be written as TOML.
    #[error("cannot write the model description")]
    SpecWrite(#[source] toml::ser::Error),
    /// The spec was written by a newer kestrel.
    #[error("the bundle's model format {found} is newer than this kestrel understands ({MODEL_FORMAT}); upgrade kestrel")]
    FormatTooNew {
        /// Format found.
        found: u32,
    },
    /// The typed manifest fields contradict the spec, or a tensor is not what this loader expects.
    #[error("inconsistent bundle: {0}")]
    Inconsistent(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<ModelError> for BundleModelError {
    fn from(e: ModelError) -> Self {
        BundleModelError::Model(Box::new(e))
    }
}

/// Largest accepted `|score − expected|` for the self-test image, given the expected score: 0.1 % of the score
/// (at least of 1.0). The unit dequantises the same bytes with the same code, so on the same CPU build the score is
/// bit-identical; the margin covers other CPUs, whose GEMM kernels may sum in another order (measured differences
/// are around 1e-6 relative).
pub fn self_test_tolerance(expected: f32) -> f32 {
    1e-3 * expected.abs().max(1.0)
}

/// Bytes per part of a bundle, from its tensor table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PartSizes {
    /// Backbone weights, biases and int8 scales.
    pub backbone: u64,
    /// Detector state.
    pub detector: u64,
    /// The self-test image.
    pub self_test: u64,
    /// The whole file (prefix, manifest, padding, payload, hash, signature).
    pub total: u64,
}

impl PartSizes {
    /// Sizes of the parts of a bundle of `file_len` bytes with tensor table `tensors`.
    pub fn of(tensors: &[TensorEntry], file_len: u64) -> Self {
        let sum = |prefix: &str| {
            tensors
                .iter()
                .filter(|t| t.name.starts_with(prefix))
                .map(|t| t.len)
                .sum()
        };
        Self {
            backbone: sum(BACKBONE_PREFIX),
            detector: sum(DETECTOR_PREFIX),
            self_test: sum(SELF_TEST_IMAGE),
            total: file_len,
        }
    }
}

impl Model {
    /// Export as a signed bundle with weights stored as `quant` (see `docs/bundle.md`). With a self-test image the
    /// expected score is computed by loading the bundle's own (dequantised) tensors, exactly as a unit will.
    pub fn to_bundle(
        &self,
        quant: Quant,
        info: BundleInfo,
        key: &SigningKey,
    ) -> Result<Vec<u8>, BundleModelError> {
        let spec = self.spec();
        let threshold = spec
            .threshold
            .as_ref()
            .ok_or(BundleModelError::NoThreshold)?
            .image;
        let size = spec.preprocess.output_size();
        let model_info = ModelInfo {
            name: info.name,
            category: spec.data.category.clone(),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            writer: format!("kestrel {}", env!("CARGO_PKG_VERSION")),
            model_version: info.model_version,
            firmware: info.firmware,
            input_size: size,
            threshold,
            quantisation: quant,
            spec: self.spec_toml().map_err(BundleModelError::SpecWrite)?,
            self_test: None,
        };
        let mut tensors = Vec::new();
        for (name, t) in self.net.folded_tensors()? {
            let name = format!("{BACKBONE_PREFIX}{name}");
            // Convolution weights are 4-D; biases stay f32 in every mode (a few hundred values, and an int8 bias
            // error would shift whole channels).
            tensors.push(match (quant, t.rank()) {
                (Quant::Int8, 4) => Encoded::int8(name, &t)?,
                (Quant::F16, 4) => Encoded::float(name, &t, Dtype::F16)?,
                _ => Encoded::float(name, &t, Dtype::F32)?,
            });
        }
        let state_dtype = match quant {
            Quant::F32 => Dtype::F32,
            Quant::F16 | Quant::Int8 => Dtype::F16,
        };
        for (name, t) in self
            .detector()
            .state()
            .map_err(BundleModelError::Detector)?
        {
            let t = t.to_device(&Device::Cpu)?;
            tensors.push(if t.dtype() == DType::U32 {
                let v: Vec<u32> = t.flatten_all()?.to_vec1()?;
                Encoded::Raw {
                    name: format!("{DETECTOR_PREFIX}{name}"),
                    dtype: Dtype::U32,
                    shape: shape_u64(&t),
                    bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                }
            } else if name.ends_with("whiten") {
                let tril = pack_lower_triangle(&t)?;
                Encoded::float(
                    format!("{DETECTOR_PREFIX}{name}{TRIL_SUFFIX}"),
                    &tril,
                    state_dtype,
                )?
            } else {
                Encoded::float(format!("{DETECTOR_PREFIX}{name}"), &t, state_dtype)?
            });
        }
        let Some(image) = info.self_test else {
            return Ok(Encoded::writer(model_info, &tensors)?.finish(key)?);
        };
        let image =
            image::imageops::resize(&image, size, size, image::imageops::FilterType::Triangle);
        tensors.push(Encoded::Raw {
            name: SELF_TEST_IMAGE.into(),
            dtype: Dtype::U8,
            shape: vec![size as u64, size as u64, 3],
            bytes: image.as_raw().clone(),
        });
        // Score the image with this very bundle, dequantised, so the expected score is what a unit computes.
        let trial = Encoded::writer(model_info.clone(), &tensors)?.finish(key)?;
        let own = TrustedKeys::new().with("export", key.public_key());
        let quantised = Model::from_bundle(&VerifiedBundle::parse(trial, &own)?, &Device::Cpu)?;
        let expected = quantised.score_rgb8(&[Rgb8::from(&image)])?[0].score;
        if !expected.is_finite() {
            return Err(BundleModelError::Inconsistent(format!(
                "the self-test image scores {expected}, not a finite number"
            )));
        }
        let info = ModelInfo {
            self_test: Some(SelfTest {
                image: SELF_TEST_IMAGE.into(),
                expected_score: expected,
                tolerance: self_test_tolerance(expected),
            }),
            ..model_info
        };
        Ok(Encoded::writer(info, &tensors)?.finish(key)?)
    }

    /// Rebuild a model from a verified bundle onto `device`; every tensor is dequantised to f32.
    pub fn from_bundle(
        bundle: &VerifiedBundle,
        device: &Device,
    ) -> Result<Model, BundleModelError> {
        let info = &bundle.manifest().model;
        let spec: ModelSpec = toml::from_str(&info.spec).map_err(BundleModelError::SpecSyntax)?;
        if spec.format > MODEL_FORMAT {
            return Err(BundleModelError::FormatTooNew { found: spec.format });
        }
        if info.input_size != spec.preprocess.output_size() {
            return Err(BundleModelError::Inconsistent(format!(
                "manifest input size {} but the spec's pre-processing gives {}",
                info.input_size,
                spec.preprocess.output_size()
            )));
        }
        let scales: HashSet<&str> = bundle
            .manifest()
            .tensors
            .iter()
            .filter_map(|t| t.scales.as_deref())
            .collect();
        let mut weights = HashMap::new();
        let mut state = HashMap::new();
        for entry in &bundle.manifest().tensors {
            if scales.contains(entry.name.as_str()) {
                continue;
            }
            if let Some(name) = entry.name.strip_prefix(BACKBONE_PREFIX) {
                weights.insert(name.to_owned(), decode(bundle, entry)?);
            } else if let Some(name) = entry.name.strip_prefix(DETECTOR_PREFIX) {
                state.insert(name.to_owned(), decode(bundle, entry)?);
            }
        }
        let packed: Vec<String> = state
            .keys()
            .filter(|k| k.ends_with(&format!("whiten{TRIL_SUFFIX}")))
            .cloned()
            .collect();
        for name in packed {
            let tril = state.remove(&name).expect("key listed above");
            let full = name.trim_end_matches(TRIL_SUFFIX).to_owned();
            state.insert(full, unpack_lower_triangle(&tril, &name)?);
        }
        let origin = format!("<bundle {}>", bundle.sha256_hex());
        let net = backbone::resnet_from_folded_weights(
            &spec.backbone.config,
            spec.backbone.arch.name(),
            weights,
            Path::new(&origin),
            device,
        )
        .map_err(BundleModelError::Backbone)?;
        let get = |n: &str| {
            state.get(n).cloned().ok_or_else(|| {
                candle_core::Error::Msg(format!("tensor `{DETECTOR_PREFIX}{n}` missing"))
            })
        };
        let detector = spec
            .detector
            .load(&get)
            .map_err(BundleModelError::Detector)?;
        Ok(Model::from_parts(spec, net, device, detector))
    }
}

/// The self-test image of a verified bundle as RGB8 pixels, with its expected score and tolerance.
pub fn self_test_image(bundle: &VerifiedBundle) -> Option<(image::RgbImage, &SelfTest)> {
    let test = bundle.manifest().model.self_test.as_ref()?;
    let entry = bundle.entry(&test.image)?;
    let (h, w) = (entry.shape[0] as u32, entry.shape[1] as u32);
    let image = image::RgbImage::from_raw(w, h, bundle.tensor(&test.image)?.to_vec())?;
    Some((image, test))
}

fn shape_u64(t: &Tensor) -> Vec<u64> {
    t.dims().iter().map(|&d| d as u64).collect()
}

/// One tensor encoded for the payload, kept so the bundle can be written twice (before and after the self-test
/// score is known) without encoding again.
enum Encoded {
    Raw {
        name: String,
        dtype: Dtype,
        shape: Vec<u64>,
        bytes: Vec<u8>,
    },
    Int8 {
        name: String,
        shape: Vec<u64>,
        values: Vec<i8>,
        scales: Vec<f32>,
    },
}

impl Encoded {
    /// An f32 or f16 tensor.
    fn float(name: String, t: &Tensor, dtype: Dtype) -> candle_core::Result<Self> {
        let v: Vec<f32> = t
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let bytes = match dtype {
            Dtype::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        Ok(Encoded::Raw {
            name,
            dtype,
            shape: shape_u64(t),
            bytes,
        })
    }

    /// A weight quantised per output channel (see [`quantise_int8`]).
    fn int8(name: String, t: &Tensor) -> candle_core::Result<Self> {
        let (values, scales) = quantise_int8(t)?;
        Ok(Encoded::Int8 {
            name,
            shape: shape_u64(t),
            values,
            scales,
        })
    }

    fn writer(info: ModelInfo, tensors: &[Encoded]) -> Result<BundleWriter, BundleError> {
        tensors
            .iter()
            .try_fold(BundleWriter::new(info), |w, t| match t {
                Encoded::Raw {
                    name,
                    dtype,
                    shape,
                    bytes,
                } => w.add_tensor(name, *dtype, shape, bytes),
                Encoded::Int8 {
                    name,
                    shape,
                    values,
                    scales,
                } => w.add_int8_tensor(name, shape, values, scales),
            })
    }
}

/// Symmetric per-output-channel int8: `scale[c] = max|w_c| / 127`, `q = round(w / scale)` (an all-zero channel
/// gets scale 0 and zeros).
fn quantise_int8(t: &Tensor) -> candle_core::Result<(Vec<i8>, Vec<f32>)> {
    let channels = t.dims()[0];
    let v: Vec<f32> = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let per = v.len() / channels.max(1);
    let mut q = Vec::with_capacity(v.len());
    let mut scales = Vec::with_capacity(channels);
    for c in v.chunks(per.max(1)) {
        let max = c.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = max / 127.0;
        scales.push(scale);
        q.extend(c.iter().map(|&x| {
            if scale > 0.0 {
                (x / scale).round().clamp(-127.0, 127.0) as i8
            } else {
                0
            }
        }));
    }
    Ok((q, scales))
}

/// A tensor of the bundle as a CPU tensor: floats (f16, int8 with scales) as f32, integers as they are.
fn decode(bundle: &VerifiedBundle, entry: &TensorEntry) -> Result<Tensor, BundleModelError> {
    let bytes = bundle
        .tensor(&entry.name)
        .expect("a verified bundle has every tensor of its table");
    let shape: Vec<usize> = entry.shape.iter().map(|&d| d as usize).collect();
    let cpu = &Device::Cpu;
    Ok(match entry.dtype {
        Dtype::F32 => Tensor::from_raw_buffer(bytes, DType::F32, &shape, cpu)?,
        Dtype::F16 => {
            Tensor::from_raw_buffer(bytes, DType::F16, &shape, cpu)?.to_dtype(DType::F32)?
        }
        Dtype::U32 => Tensor::from_raw_buffer(bytes, DType::U32, &shape, cpu)?,
        Dtype::U8 => Tensor::from_raw_buffer(bytes, DType::U8, &shape, cpu)?,
        Dtype::I8 => {
            let scales_name = entry.scales.as_deref().ok_or_else(|| {
                BundleModelError::Inconsistent(format!(
                    "int8 tensor `{}` has no per-channel scales",
                    entry.name
                ))
            })?;
            let scales = bundle
                .tensor(scales_name)
                .expect("a verified bundle's scales exist");
            let scales: Vec<f32> = scales
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let per = bytes.len() / scales.len().max(1);
            let v: Vec<f32> = bytes
                .chunks(per.max(1))
                .zip(&scales)
                .flat_map(|(c, &s)| c.iter().map(move |&q| s * (q as i8) as f32))
                .collect();
            Tensor::from_vec(v, shape, cpu)?
        }
    })
}

/// `(P, d, d)` lower-triangular matrices → `(P, d·(d+1)/2)`, row by row. Refuses a matrix with anything above the
/// diagonal, so packing can never lose a value.
fn pack_lower_triangle(t: &Tensor) -> Result<Tensor, BundleModelError> {
    let (p, d, d2) = t.dims3()?;
    if d != d2 {
        return Err(BundleModelError::Inconsistent(format!(
            "whitening factor has shape {:?}, not (P, d, d)",
            t.dims()
        )));
    }
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(p * d * (d + 1) / 2);
    for m in v.chunks(d * d) {
        for i in 0..d {
            if m[i * d + i + 1..(i + 1) * d].iter().any(|&x| x != 0.0) {
                return Err(BundleModelError::Inconsistent(
                    "whitening factor is not lower triangular".into(),
                ));
            }
            out.extend_from_slice(&m[i * d..i * d + i + 1]);
        }
    }
    Ok(Tensor::from_vec(out, (p, d * (d + 1) / 2), &Device::Cpu)?)
}

/// Inverse of [`pack_lower_triangle`]: zeros above the diagonal.
fn unpack_lower_triangle(t: &Tensor, name: &str) -> Result<Tensor, BundleModelError> {
    let (p, len) = t.dims2()?;
    // len = d(d+1)/2  ⇒  d = (√(8·len + 1) − 1) / 2, checked exactly below.
    let d = ((((8 * len + 1) as f64).sqrt() - 1.0) / 2.0).round() as usize;
    if d * (d + 1) / 2 != len {
        return Err(BundleModelError::Inconsistent(format!(
            "`{DETECTOR_PREFIX}{name}` has {len} values per position, not a triangle d·(d+1)/2"
        )));
    }
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; p * d * d];
    for (m, packed) in out.chunks_mut(d * d).zip(v.chunks(len)) {
        let mut k = 0;
        for i in 0..d {
            m[i * d..i * d + i + 1].copy_from_slice(&packed[k..k + i + 1]);
            k += i + 1;
        }
    }
    Ok(Tensor::from_vec(out, (p, d, d), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::DetectorKind;
    use kestrel_bundle::FirmwareVersion;

    fn key() -> SigningKey {
        SigningKey::from_seed([9; 32])
    }

    fn trusted() -> TrustedKeys {
        TrustedKeys::new().with("test", key().public_key())
    }

    /// The shared tiny test model (narrow ResNet-18 at 64×64), threshold 1.5.
    fn tiny_model(kind: DetectorKind) -> Model {
        crate::testing::tiny_model(kind, 1.5)
    }

    fn info(self_test: Option<image::RgbImage>) -> BundleInfo {
        BundleInfo {
            name: "unit-test".into(),
            model_version: 3,
            firmware: FirmwareRange {
                min: FirmwareVersion::new(0, 1, 0),
                max: FirmwareVersion::new(0, 9, 0),
            },
            self_test,
        }
    }

    fn test_image(seed: u8) -> image::RgbImage {
        image::RgbImage::from_fn(80, 72, |x, y| {
            image::Rgb([
                (x * 3 + y) as u8 ^ seed,
                (y * 5) as u8,
                (x * y) as u8 ^ seed.wrapping_mul(7),
            ])
        })
    }

    fn scores(m: &Model, images: &[image::RgbImage]) -> Vec<crate::model::Scored> {
        let views: Vec<Rgb8<'_>> = images.iter().map(Rgb8::from).collect();
        m.score_rgb8(&views).unwrap()
    }

    /// An f32 bundle scores bit-identically (maps and scores) to the model it came from, for both detectors.
    #[test]
    fn f32_round_trip_is_bit_identical() {
        let images = [test_image(1), test_image(2)];
        for kind in [
            DetectorKind::Padim,
            DetectorKind::Patchcore,
            DetectorKind::Gde,
        ] {
            let m = tiny_model(kind);
            let bytes = m.to_bundle(Quant::F32, info(None), &key()).unwrap();
            let b = VerifiedBundle::parse(bytes, &trusted()).unwrap();
            assert!(b.manifest().tensor("backbone.conv1.bias").is_some());
            assert!(!b.manifest().tensors.iter().any(|t| t.name.contains("bn")));
            let back = Model::from_bundle(&b, &Device::Cpu).unwrap();
            assert_eq!(back.spec(), m.spec(), "{kind:?}");
            assert_eq!(scores(&back, &images), scores(&m, &images), "{kind:?}");
            assert!(matches!(
                back.save(tempfile::tempdir().unwrap().path()),
                Err(ModelError::NoCheckpoint)
            ));
        }
    }

    /// int8 and f16 bundles stay within the documented tolerance of the f32 model on a random model (relative
    /// to the score: 3 % for int8, 0.5 % for f16), store what they say, and are smaller.
    #[test]
    fn quantised_bundles_stay_close() {
        let images = [test_image(3), test_image(4), test_image(5)];
        for kind in [
            DetectorKind::Padim,
            DetectorKind::Patchcore,
            DetectorKind::Gde,
        ] {
            let m = tiny_model(kind);
            let reference = scores(&m, &images);
            let f32_len = m.to_bundle(Quant::F32, info(None), &key()).unwrap().len();
            for (quant, tol) in [(Quant::Int8, 0.03f32), (Quant::F16, 0.005)] {
                let bytes = m.to_bundle(quant, info(None), &key()).unwrap();
                assert!(bytes.len() < f32_len, "{kind:?} {quant:?}");
                let b = VerifiedBundle::parse(bytes, &trusted()).unwrap();
                let conv = b
                    .manifest()
                    .tensor("backbone.layer1.0.conv1.weight")
                    .unwrap();
                let bias = b.manifest().tensor("backbone.layer1.0.conv1.bias").unwrap();
                assert_eq!(bias.dtype, Dtype::F32);
                match quant {
                    Quant::Int8 => assert_eq!(conv.dtype, Dtype::I8),
                    _ => assert_eq!(conv.dtype, Dtype::F16),
                }
                let back = Model::from_bundle(&b, &Device::Cpu).unwrap();
                for (got, want) in scores(&back, &images).iter().zip(&reference) {
                    let rel = (got.score - want.score).abs() / want.score.abs().max(1e-6);
                    assert!(
                        rel < tol,
                        "{kind:?} {quant:?}: {} vs {}",
                        got.score,
                        want.score
                    );
                }
            }
        }
    }

    /// The self-test score is the quantised bundle's own score of the stored image, and passes on reload.
    #[test]
    fn self_test_records_the_quantised_score() {
        let m = tiny_model(DetectorKind::Padim);
        let bytes = m
            .to_bundle(Quant::Int8, info(Some(test_image(6))), &key())
            .unwrap();
        let b = VerifiedBundle::parse(bytes, &trusted()).unwrap();
        let (image, test) = self_test_image(&b).unwrap();
        assert_eq!(image.dimensions(), (64, 64));
        let back = Model::from_bundle(&b, &Device::Cpu).unwrap();
        let score = back.score_rgb8(&[Rgb8::from(&image)]).unwrap()[0].score;
        assert_eq!(score, test.expected_score);
        assert!(test.accepts(score));
        assert_eq!(test.tolerance, self_test_tolerance(score));
    }

    /// A flipped payload byte, another signer, and a model without threshold are all refused.
    #[test]
    fn tampered_and_untrusted_bundles_are_refused() {
        let m = tiny_model(DetectorKind::Patchcore);
        let mut bytes = m.to_bundle(Quant::Int8, info(None), &key()).unwrap();
        let other = TrustedKeys::new().with("other", SigningKey::from_seed([1; 32]).public_key());
        assert!(matches!(
            VerifiedBundle::parse(bytes.clone(), &other),
            Err(BundleError::BadSignature { .. })
        ));
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        assert!(matches!(
            VerifiedBundle::parse(bytes, &trusted()),
            Err(BundleError::HashMismatch { .. })
        ));
        let mut none = m.clone();
        none.set_threshold(None);
        assert!(matches!(
            none.to_bundle(Quant::F32, info(None), &key()),
            Err(BundleModelError::NoThreshold)
        ));
    }

    #[test]
    fn int8_quantisation_is_per_channel_and_symmetric() {
        let t = Tensor::new(
            &[
                [127.0f32, -64.0, 32.0],
                [0.0, 0.0, 0.0],
                [-254.0, 128.0, 2.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let (q, s) = quantise_int8(&t).unwrap();
        assert_eq!(s, vec![1.0, 0.0, 2.0]);
        assert_eq!(q, vec![127, -64, 32, 0, 0, 0, -127, 64, 1]);
    }

    #[test]
    fn triangle_packing_round_trips_and_refuses_upper_values() {
        let lower = Tensor::new(
            &[[[1.0f32, 0.0, 0.0], [2.0, 3.0, 0.0], [4.0, 5.0, 6.0]]],
            &Device::Cpu,
        )
        .unwrap();
        let packed = pack_lower_triangle(&lower).unwrap();
        assert_eq!(
            packed.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
        );
        let back = unpack_lower_triangle(&packed, "whiten_tril").unwrap();
        assert_eq!(
            back.to_vec3::<f32>().unwrap(),
            lower.to_vec3::<f32>().unwrap()
        );
        let full = Tensor::ones((1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(pack_lower_triangle(&full).is_err());
    }
}
