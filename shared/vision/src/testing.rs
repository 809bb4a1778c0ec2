//! Numeric comparison helpers shared by the unit tests, integration tests and benchmarks (public so the `tests/` and
//! `benches/` targets can use them; not part of the supported API).

use candle_core::{DType, Tensor};

/// Largest element-wise `|a − b|`, computed in f64. Shapes must match.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    if a.dims() != b.dims() {
        candle_core::bail!("shape mismatch: {:?} vs {:?}", a.dims(), b.dims());
    }
    (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()
}

/// `max |got − reference| / max(1, max |reference|)`: an error relative to the reference's scale.
pub fn max_rel_diff(got: &Tensor, reference: &Tensor) -> candle_core::Result<f64> {
    let scale = reference
        .to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    Ok(max_abs_diff(got, reference)? / scale.max(1.0))
}

/// A tiny fitted model for tests of everything around a model (bundles, units, flashing): narrow ResNet-18 with
/// random weights (seed 1) at 64×64, `kind` fitted on six deterministic pattern images, threshold `threshold`.
/// Deterministic, so bundles exported from it are byte-identical across runs; about a second to build in debug.
pub fn tiny_model(kind: crate::detector::DetectorKind, threshold: f32) -> crate::model::Model {
    use crate::backbone::{random_weights, Arch, WeightSource};
    use crate::detector::padim::PadimConfig;
    use crate::detector::patchcore::PatchCoreConfig;
    use crate::detector::{DetectorConfig, DetectorKind};
    use crate::model::{preprocess_batch, DataSpec, FitSettings, Fitter, Rgb8};
    use crate::preprocess::PreprocessConfig;
    use crate::threshold::ThresholdSpec;

    let dev = candle_core::Device::Cpu;
    let arch = Arch::Resnet18Narrow;
    let pre = PreprocessConfig {
        image_size: 64,
        ..PreprocessConfig::default()
    };
    let settings = FitSettings {
        arch,
        weights_source: WeightSource::Random { seed: 1 },
        preprocess: pre.clone(),
        detector: match kind {
            DetectorKind::Padim => {
                DetectorConfig::Padim(PadimConfig::for_backbone(arch.config().stage_channels()))
            }
            DetectorKind::Patchcore => DetectorConfig::Patchcore(PatchCoreConfig {
                coreset_ratio: 0.2,
                ..Default::default()
            }),
            DetectorKind::Gde => DetectorConfig::Gde(crate::detector::gde::GdeConfig::default()),
        },
        blur_sigma: 4.0,
        data: DataSpec {
            root: "synthetic".into(),
            category: "tiny".into(),
            split_seed: None,
        },
    };
    let weights = random_weights(&arch.config(), 1, &dev).expect("random weights");
    let mut fitter = Fitter::new(settings, weights, 6, &dev).expect("fitter");
    let images: Vec<Vec<u8>> = (0..6u32)
        .map(|k| {
            (0..64 * 64 * 3u32)
                .map(|i| ((i * 7 + k * 13) % 251) as u8)
                .collect()
        })
        .collect();
    let views: Vec<Rgb8<'_>> = images
        .iter()
        .map(|pixels| Rgb8 {
            pixels,
            width: 64,
            height: 64,
        })
        .collect();
    fitter
        .add_batch(&preprocess_batch(&views, &pre, &dev).expect("pre-processing"))
        .expect("fit batch");
    let mut model = fitter.finish(&|_, _| {}).expect("fit");
    model.set_threshold(Some(ThresholdSpec {
        image: threshold,
        method: "test".into(),
        validation_good: 0,
        validation_defect: 0,
    }));
    model
}
