//! `kestrel export`: a fitted model directory → a signed, quantised `.kbundle`, with the cost of quantisation
//! measured: part sizes against f32, and metric differences between the model and the bundle (dequantised exactly
//! as a unit loads it) on the model's validation images and, with `--data`, on a test split.

use std::path::Path;

use anyhow::Context;
use kestrel_bundle::{FirmwareRange, FirmwareVersion, SigningKey, TrustedKeys, VerifiedBundle};
use kestrel_vision::backbone::WeightSource;
use kestrel_vision::bundle::{BundleInfo, PartSizes, Quant};
use kestrel_vision::dataset::{self, ConversionCounts, Dataset, OpenOptions, Sample};
use kestrel_vision::detector::DetectorConfig;
use kestrel_vision::device::parse_device;
use kestrel_vision::metrics;
use kestrel_vision::model::{Model, ModelSpec};
use kestrel_vision::scoring::score_files;
use serde::Serialize;

use super::eval::{evaluate, EvalRow};
use super::fmt_opt;
use crate::cli::{ExportArgs, QuantArg};

/// Image scores of the model and of the bundle on the same images.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreComparison {
    /// Which images (`validation` or `test`) and how they were chosen.
    pub split: String,
    pub images: usize,
    /// Image AUROC of the f32 model and of the bundle (`None` without both good and defect images).
    pub image_auroc_f32: Option<f64>,
    pub image_auroc_bundle: Option<f64>,
    /// Largest |bundle score − model score| relative to the model's score.
    pub max_rel_score_diff: f64,
    /// Images whose verdict at the model threshold differs.
    pub verdict_changes: usize,
}

/// `kestrel export --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub bundle: String,
    pub sha256: String,
    pub quant: String,
    pub sizes_f32: PartSizes,
    pub sizes: PartSizes,
    pub validation: Option<ScoreComparison>,
    /// Why the validation images were not compared, when they were not.
    pub validation_note: Option<String>,
    /// The test split metrics of the f32 model and the bundle (`--data`).
    pub test_f32: Option<EvalRow>,
    pub test_bundle: Option<EvalRow>,
    pub self_test_score: Option<f32>,
}

fn quant(q: QuantArg) -> Quant {
    match q {
        QuantArg::Int8 => Quant::Int8,
        QuantArg::F16 => Quant::F16,
        QuantArg::F32 => Quant::F32,
    }
}

/// The seed `kestrel fit` used for its splits: the one model.toml records (older models: the random-init seed, else
/// the detector's).
fn fit_seed(spec: &ModelSpec) -> u64 {
    if let Some(seed) = spec.data.split_seed {
        return seed;
    }
    match (&spec.backbone.weights, &spec.detector.config) {
        (WeightSource::Random { seed }, _) => *seed,
        (_, DetectorConfig::Padim(c)) => c.seed,
        (_, DetectorConfig::Patchcore(c)) => c.seed,
        // GDE models always record their split seed.
        (_, DetectorConfig::Gde(_)) => 0,
    }
}

/// The validation images `kestrel fit` held out, rebuilt from model.toml (data root, category, seed) with fit's
/// default fraction; checked against the split sizes the threshold records. `Err` says why it is not available.
fn validation_split(spec: &ModelSpec) -> Result<Vec<Sample>, String> {
    let th = spec
        .threshold
        .as_ref()
        .ok_or("the model has no threshold")?;
    let mut ds = dataset::open_with(
        &spec.data.root,
        &OpenOptions {
            category: Some(spec.data.category.clone()),
            ..OpenOptions::default()
        },
    )
    .map_err(|e| {
        format!(
            "cannot open the training data {}: {e}",
            spec.data.root.display()
        )
    })?;
    if ds.train.len() >= 10 {
        ds.hold_out_validation(0.1, fit_seed(spec))
            .map_err(|e| e.to_string())?;
    }
    let (good, defect) =
        ds.validation.iter().fold(
            (0, 0),
            |(g, d), s| if s.is_good() { (g + 1, d) } else { (g, d + 1) },
        );
    if (good, defect) != (th.validation_good, th.validation_defect) {
        return Err(format!(
            "the hold-out rebuilt from model.toml has {good} good + {defect} defect images, the threshold was \
             chosen on {} + {} (fitted with another --validation-fraction?)",
            th.validation_good, th.validation_defect
        ));
    }
    Ok(ds.validation)
}

fn image_scores(model: &Model, samples: &[Sample], batch: usize) -> anyhow::Result<Vec<f32>> {
    let paths: Vec<&Path> = samples.iter().map(|s| s.path.as_path()).collect();
    let mut scores = Vec::with_capacity(paths.len());
    score_files(
        model,
        &paths,
        batch,
        &mut ConversionCounts::default(),
        &mut |_, _, s| -> anyhow::Result<()> {
            scores.push(s.score);
            Ok(())
        },
    )?;
    Ok(scores)
}

fn compare(
    split: String,
    samples: &[Sample],
    a: &[f32],
    b: &[f32],
    threshold: f32,
) -> ScoreComparison {
    let labels: Vec<bool> = samples.iter().map(|s| !s.is_good()).collect();
    ScoreComparison {
        split,
        images: samples.len(),
        image_auroc_f32: metrics::image_auroc(a, &labels).ok(),
        image_auroc_bundle: metrics::image_auroc(b, &labels).ok(),
        max_rel_score_diff: a
            .iter()
            .zip(b)
            .map(|(x, y)| ((y - x).abs() / x.abs().max(1e-12)) as f64)
            .fold(0.0, f64::max),
        verdict_changes: a
            .iter()
            .zip(b)
            .filter(|(x, y)| (**x >= threshold) != (**y >= threshold))
            .count(),
    }
}

fn parse_firmware(
    given: &Option<String>,
    default: FirmwareVersion,
) -> anyhow::Result<FirmwareVersion> {
    Ok(match given {
        Some(s) => s.parse()?,
        None => default,
    })
}

/// `kestrel export`.
pub fn run(a: &ExportArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.compute.device)?;
    let model = Model::load(&a.model, &device)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let key = SigningKey::read_file(&a.key)?;
    let spec = model.spec().clone();
    let this: FirmwareVersion = env!("CARGO_PKG_VERSION").parse()?;
    let firmware = FirmwareRange {
        min: parse_firmware(&a.firmware_min, this)?,
        max: parse_firmware(
            &a.firmware_max,
            FirmwareVersion::new(this.major, this.minor, u16::MAX),
        )?,
    };
    let (validation, validation_note) = match validation_split(&spec) {
        Ok(v) => (v, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let test_ds: Option<Dataset> = match &a.data {
        Some(root) => Some(dataset::open_with(
            root,
            &OpenOptions {
                category: Some(
                    a.category
                        .clone()
                        .unwrap_or_else(|| spec.data.category.clone()),
                ),
                ..OpenOptions::default()
            },
        )?),
        None => None,
    };
    // The self-test image: the first validation image, else the first test image.
    let self_test_path = validation
        .first()
        .or_else(|| test_ds.as_ref().and_then(|d| d.test.first()))
        .map(|s| s.path.clone());
    let self_test = match &self_test_path {
        Some(p) => Some(dataset::load_rgb(p)?.image),
        None => None,
    };
    let info = BundleInfo {
        name: a.name.clone().unwrap_or_else(|| spec.data.category.clone()),
        model_version: a.model_version,
        firmware,
        self_test,
    };
    let q = quant(a.quant);
    let bytes = model.to_bundle(q, info.clone(), &key)?;
    let f32_len_and_table = if q == Quant::F32 {
        None
    } else {
        let f32_bytes = model.to_bundle(Quant::F32, info, &key)?;
        let m = kestrel_bundle::inspect_untrusted(&f32_bytes)?;
        Some(PartSizes::of(&m.manifest.tensors, f32_bytes.len() as u64))
    };
    let tmp = a.output.with_extension("kbundle.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.output).with_context(|| format!("writing {}", a.output.display()))?;

    let own = TrustedKeys::new().with("export", key.public_key());
    let bundle = VerifiedBundle::parse(bytes, &own)?;
    let sizes = PartSizes::of(&bundle.manifest().tensors, bundle.as_bytes().len() as u64);
    let quantised = Model::from_bundle(&bundle, &device)?;
    let threshold = spec
        .threshold
        .as_ref()
        .map(|t| t.image)
        .unwrap_or(f32::INFINITY);
    let validation_cmp = if validation.is_empty() {
        None
    } else {
        let f = image_scores(&model, &validation, a.compute.batch_size)?;
        let b = image_scores(&quantised, &validation, a.compute.batch_size)?;
        Some(compare(
            "validation (fit's hold-out rebuilt from model.toml)".into(),
            &validation,
            &f,
            &b,
            threshold,
        ))
    };
    let (test_f32, test_bundle) = match &test_ds {
        Some(ds) => (
            Some(evaluate(&model, ds, a.compute.batch_size, None, true)?),
            Some(evaluate(&quantised, ds, a.compute.batch_size, None, true)?),
        ),
        None => (None, None),
    };
    let report = ExportReport {
        bundle: a.output.display().to_string(),
        sha256: bundle.sha256_hex(),
        quant: format!("{q:?}").to_lowercase(),
        sizes_f32: f32_len_and_table.unwrap_or(sizes),
        sizes,
        validation: validation_cmp,
        validation_note,
        test_f32,
        test_bundle,
        self_test_score: bundle
            .manifest()
            .model
            .self_test
            .as_ref()
            .map(|t| t.expected_score),
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &ExportReport) {
    let kib = |b: u64| format!("{:.1} KiB", b as f64 / 1024.0);
    println!(
        "wrote {} ({}, sha256 {})",
        r.bundle,
        r.quant,
        &r.sha256[..16]
    );
    println!("{:<16} {:>12} {:>12}", "part", "f32", r.quant);
    for (name, f, q) in [
        ("backbone", r.sizes_f32.backbone, r.sizes.backbone),
        ("detector state", r.sizes_f32.detector, r.sizes.detector),
        ("self-test image", r.sizes_f32.self_test, r.sizes.self_test),
        ("total file", r.sizes_f32.total, r.sizes.total),
    ] {
        println!("{name:<16} {:>12} {:>12}", kib(f), kib(q));
    }
    match (&r.validation, &r.validation_note) {
        (Some(v), _) => println!(
            "{}: {} images, image AUROC {} → {}, max relative score change {:.2e}, {} verdict(s) changed",
            v.split,
            v.images,
            fmt_opt(v.image_auroc_f32),
            fmt_opt(v.image_auroc_bundle),
            v.max_rel_score_diff,
            v.verdict_changes
        ),
        (None, Some(why)) => println!("validation images not compared: {why}"),
        (None, None) => {}
    }
    if let (Some(f), Some(b)) = (&r.test_f32, &r.test_bundle) {
        let d = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => format!("{x:.4} → {y:.4} ({:+.4})", y - x),
            _ => "n/a".into(),
        };
        println!(
            "test split ({} images): image AUROC {}, pixel AUROC {}, AUPRO {}",
            f.metrics.images,
            d(f.metrics.image_auroc, b.metrics.image_auroc),
            d(f.metrics.pixel_auroc, b.metrics.pixel_auroc),
            d(f.metrics.aupro, b.metrics.aupro)
        );
    }
    if let Some(s) = r.self_test_score {
        println!("self-test: expected score {s:.6}");
    }
}
