//! `kestrel fit`: fit a detector on a category's good images and choose its threshold on held-out images.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kestrel_vision::backbone::{self, Arch, WeightSource};
use kestrel_vision::dataset::{self, ConversionCounts, Dataset, OpenOptions};
use kestrel_vision::detector::gde::{GdeConfig, GdeImageScore};
use kestrel_vision::detector::padim::{PadimConfig, PADIM_STAGES};
use kestrel_vision::detector::patchcore::{CoresetMethod, PatchCoreConfig};
use kestrel_vision::detector::{DetectorConfig, DetectorKind};
use kestrel_vision::device::parse_device;
use kestrel_vision::model::{preprocess_batch, DataSpec, FitSettings, Fitter, Model, Rgb8};
use kestrel_vision::preprocess::PreprocessConfig;
use kestrel_vision::scoring::score_files;
use kestrel_vision::threshold::ThresholdSpec;
use rayon::prelude::*;
use serde::Serialize;

use super::recipe::{self, PretrainRecipe, RecipeOptions};
use crate::cli::{DetectorArg, FitArgs};
use crate::images;
use crate::progress;

/// Everything `fit_category` needs (a validated plan built from the command line, or by `demo`).
#[derive(Debug, Clone)]
pub struct FitPlan {
    /// Dataset root.
    pub data: PathBuf,
    /// Dataset open options (category, layout).
    pub open: OpenOptions,
    /// Backbone.
    pub arch: Arch,
    /// Weights file, or random init.
    pub weights: Option<PathBuf>,
    /// Seed.
    pub seed: u64,
    /// Pre-processing.
    pub preprocess: PreprocessConfig,
    /// Detector.
    pub kind: DetectorKind,
    /// PaDiM channel count override.
    pub n_features: Option<usize>,
    /// PaDiM's backbone stages (PatchCore's are in `patchcore`); `None`: the detector's default.
    pub padim_layers: Option<Vec<usize>>,
    /// PatchCore settings.
    pub patchcore: PatchCoreConfig,
    /// GDE settings.
    pub gde: GdeConfig,
    /// Blur σ of the heatmap.
    pub blur_sigma: f32,
    /// Validation hold-out fraction.
    pub validation_fraction: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Device spec.
    pub device: String,
    /// Hide progress bars.
    pub quiet: bool,
    /// Choose the backbone with a pretraining recipe instead of `weights`.
    pub pretrain: Option<PretrainRecipe>,
    /// The recipe's candidates and pretraining length.
    pub recipe: RecipeOptions,
}

/// What a fit produced, for printing.
#[derive(Debug, Clone, Serialize)]
pub struct FitSummary {
    /// Category.
    pub category: String,
    /// Output directory.
    pub model: PathBuf,
    /// Detector.
    pub detector: String,
    /// Backbone.
    pub arch: String,
    /// Training images.
    pub train_images: usize,
    /// Validation images (good, defect).
    pub validation_good: usize,
    /// Validation defect images.
    pub validation_defect: usize,
    /// Threshold, when chosen.
    pub threshold: Option<f32>,
    /// Seconds spent.
    pub seconds: f64,
}

/// Fit one category and save it to `out`.
pub fn fit_category(plan: &FitPlan, out: &Path) -> anyhow::Result<FitSummary> {
    let t0 = std::time::Instant::now();
    parse_device(&plan.device)?;
    plan.preprocess.validate()?;
    let mut ds: Dataset = dataset::open_with(&plan.data, &plan.open)?;
    for w in &ds.warnings {
        eprintln!("warning: {w}");
    }
    if ds.train.is_empty() {
        anyhow::bail!(
            "{}: no good training images found for category `{}`",
            plan.data.display(),
            ds.category
        );
    }
    if ds.train.len() >= 10 && plan.validation_fraction > 0.0 {
        ds.hold_out_validation(plan.validation_fraction, plan.seed)?;
    }
    let recipe = match plan.pretrain {
        Some(PretrainRecipe::Synthetic) => Some(recipe::choose(plan, &ds, out)?),
        None => None,
    };
    let weights = match &recipe {
        Some(r) => r.weights.clone(),
        None => plan.weights.clone(),
    };
    let mut counts = ConversionCounts::default();
    let paths: Vec<&Path> = ds.train.iter().map(|s| s.path.as_path()).collect();
    let mut model = fit_model(plan, weights.as_deref(), &paths, &ds.category, &mut counts)?;
    model.set_recipe(recipe.map(|r| r.spec));

    // Threshold on the validation split only (anomalib's F1-adaptive rule; max good score without defects).
    let threshold = choose_threshold(&model, &ds, plan, &mut counts)?;
    model.set_threshold(threshold.clone());
    if !plan.quiet {
        images::report_conversions(&counts);
    }
    model
        .save(out)
        .with_context(|| format!("saving model to {}", out.display()))?;
    Ok(FitSummary {
        category: ds.category.clone(),
        model: out.to_path_buf(),
        detector: plan.kind.name().into(),
        arch: plan.arch.name().into(),
        train_images: ds.train.len(),
        validation_good: threshold.as_ref().map(|t| t.validation_good).unwrap_or(0),
        validation_defect: threshold.as_ref().map(|t| t.validation_defect).unwrap_or(0),
        threshold: threshold.map(|t| t.image),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Fit `plan`'s detector on the good images `paths` with the backbone `weights` (random from `plan.seed` when
/// `None`), with progress bars; colour conversions are tallied into `counts`.
pub fn fit_model(
    plan: &FitPlan,
    weights: Option<&Path>,
    paths: &[&Path],
    category: &str,
    counts: &mut ConversionCounts,
) -> anyhow::Result<Model> {
    let device = parse_device(&plan.device)?;
    let cfg = plan.arch.config();
    let (weights, source) = match weights {
        Some(p) => {
            check_pretrained_arch(p, plan.arch)?;
            (
                backbone::read_weights(p)?,
                WeightSource::File {
                    path: p.to_path_buf(),
                },
            )
        }
        None => (
            backbone::random_weights(&cfg, plan.seed, &candle_core::Device::Cpu)?,
            WeightSource::Random { seed: plan.seed },
        ),
    };
    let settings = FitSettings {
        arch: plan.arch,
        weights_source: source,
        preprocess: plan.preprocess.clone(),
        detector: match plan.kind {
            DetectorKind::Padim => {
                let layers = plan
                    .padim_layers
                    .clone()
                    .unwrap_or_else(|| PADIM_STAGES.to_vec());
                let defaults = PadimConfig::for_layers(cfg.stage_channels(), &layers);
                DetectorConfig::Padim(match plan.n_features {
                    Some(n) => PadimConfig {
                        n_features: n,
                        seed: plan.seed,
                        ..defaults
                    },
                    None => defaults,
                })
            }
            DetectorKind::Patchcore => DetectorConfig::Patchcore(plan.patchcore.clone()),
            DetectorKind::Gde => DetectorConfig::Gde(plan.gde.clone()),
        },
        blur_sigma: plan.blur_sigma,
        data: DataSpec {
            root: plan.data.clone(),
            category: category.to_string(),
            split_seed: Some(plan.seed),
        },
    };
    let mut fitter = Fitter::new(settings, weights, paths.len(), &device)?;
    if fitter.spills_to_disk() {
        eprintln!("note: training patch features exceed the RAM budget; spilling them to a temporary file");
    }
    let pb = progress::bar(paths.len() as u64, "features", plan.quiet);
    for chunk in paths.chunks(plan.batch_size.max(1)) {
        let loaded = chunk
            .par_iter()
            .map(|p| dataset::load_rgb(p))
            .collect::<Result<Vec<_>, _>>()?;
        loaded.iter().for_each(|l| counts.record_loaded(l));
        let views: Vec<Rgb8<'_>> = loaded.iter().map(|l| Rgb8::from(&l.image)).collect();
        fitter.add_batch(&preprocess_batch(&views, &plan.preprocess, &device)?)?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let cpb = progress::bar(
        0,
        "coreset",
        plan.quiet || plan.kind != DetectorKind::Patchcore,
    );
    let model = fitter.finish(&|done, total| {
        cpb.set_length(total as u64);
        cpb.set_position(done as u64);
    })?;
    cpb.finish_and_clear();
    Ok(model)
}

fn choose_threshold(
    model: &Model,
    ds: &Dataset,
    plan: &FitPlan,
    counts: &mut ConversionCounts,
) -> anyhow::Result<Option<ThresholdSpec>> {
    if ds.validation.is_empty() {
        return Ok(None);
    }
    let paths: Vec<&Path> = ds.validation.iter().map(|s| s.path.as_path()).collect();
    let labels: Vec<bool> = ds.validation.iter().map(|s| !s.is_good()).collect();
    let pb = progress::bar(paths.len() as u64, "validation", plan.quiet);
    let mut scores = Vec::with_capacity(paths.len());
    score_files(
        model,
        &paths,
        plan.batch_size,
        counts,
        &mut |_, _, s| -> anyhow::Result<()> {
            scores.push(s.score);
            pb.inc(1);
            Ok(())
        },
    )?;
    pb.finish_and_clear();
    Ok(Some(ThresholdSpec::from_validation(&scores, &labels)?))
}

/// `kestrel fit`.
pub fn run(a: &FitArgs) -> anyhow::Result<()> {
    if a.pretrain.is_some() && a.weights.is_some() {
        anyhow::bail!(
            "--pretrain chooses the backbone's weights itself; drop --weights (or --pretrain)"
        );
    }
    if a.pretrain.is_none() && (a.pretrain_candidates.is_some() || a.pretrain_steps.is_some()) {
        anyhow::bail!("--pretrain-candidates and --pretrain-steps apply with --pretrain synthetic");
    }
    if a.pretrain_steps == Some(0) || a.pretrain_candidates.as_ref().is_some_and(|c| c.is_empty()) {
        anyhow::bail!(
            "--pretrain-steps must be at least 1 and --pretrain-candidates must name one or more"
        );
    }
    let arch = match (&a.pretrain, &a.arch) {
        // The recipe pretrains at the tiny preset: its architecture unless told otherwise.
        (Some(_), None) => kestrel_vision::backbone::Arch::Resnet18Narrow,
        _ => resolve_arch(a.arch.as_deref(), a.weights.as_deref())?,
    };
    if !(0.0..1.0).contains(&a.validation_fraction) {
        anyhow::bail!(
            "--validation-fraction must be in [0, 1), got {}",
            a.validation_fraction
        );
    }
    if a.ram_budget_gib.is_nan() || a.ram_budget_gib <= 0.0 {
        anyhow::bail!("--ram-budget-gib must be positive");
    }
    if a.layers.is_some() && a.detector == DetectorArg::Gde {
        anyhow::bail!("--layers applies to padim and patchcore; GDE reads the last stage");
    }
    if let Some(l) = &a.layers {
        kestrel_vision::detector::check_layers(l)?;
    }
    if !(a.blur_sigma.is_finite() && a.blur_sigma >= 0.0) {
        anyhow::bail!(
            "--blur-sigma must be 0 (no blur) or a positive number of pixels, got {}",
            a.blur_sigma
        );
    }
    let base = FitPlan {
        data: a.data.clone(),
        open: OpenOptions {
            category: a.category.clone(),
            layout: a.layout.into(),
            ..OpenOptions::default()
        },
        arch,
        weights: a.weights.clone(),
        seed: a.seed,
        preprocess: PreprocessConfig {
            image_size: a.image_size,
            ..PreprocessConfig::default()
        },
        kind: match a.detector {
            DetectorArg::Padim => DetectorKind::Padim,
            DetectorArg::Patchcore => DetectorKind::Patchcore,
            DetectorArg::Gde => DetectorKind::Gde,
        },
        n_features: a.n_features,
        padim_layers: a.layers.clone(),
        patchcore: PatchCoreConfig {
            coreset_ratio: a.coreset_ratio,
            num_neighbors: a.num_neighbors,
            seed: a.seed,
            ram_budget_bytes: (a.ram_budget_gib * (1u64 << 30) as f64) as u64,
            coreset_method: match a.coreset_method {
                crate::cli::CoresetArg::Batched => CoresetMethod::Batched,
                crate::cli::CoresetArg::Greedy => CoresetMethod::Greedy,
            },
            layers: a
                .layers
                .clone()
                .unwrap_or_else(|| PatchCoreConfig::default().layers),
            ..PatchCoreConfig::default()
        },
        gde: GdeConfig {
            window: a.window,
            stride: a.window_stride,
            per_position: a.per_position,
            image_score: match a.gde_image_score {
                crate::cli::GdeImageScoreArg::Embedding => GdeImageScore::Embedding,
                crate::cli::GdeImageScoreArg::MapMax => GdeImageScore::MapMax,
            },
        },
        blur_sigma: a.blur_sigma,
        validation_fraction: a.validation_fraction,
        batch_size: a.compute.batch_size,
        device: a.compute.device.clone(),
        quiet: a.json,
        pretrain: a.pretrain,
        recipe: RecipeOptions {
            candidates: a
                .pretrain_candidates
                .clone()
                .unwrap_or_else(|| recipe::Candidate::DEFAULT.to_vec()),
            steps: a.pretrain_steps,
        },
    };
    let cats: Vec<(Option<String>, PathBuf)> = if a.category.as_deref() == Some("all") {
        dataset::categories(&a.data)?
            .into_iter()
            .map(|c| (Some(c.clone()), a.output.join(&c)))
            .collect()
    } else {
        vec![(a.category.clone(), a.output.clone())]
    };
    for (cat, out) in cats {
        let mut plan = base.clone();
        plan.open.category = cat;
        let s = fit_category(&plan, &out)?;
        if a.json {
            crate::outln!("{}", serde_json::to_string(&s)?)?;
        } else {
            crate::outln!(
                "fitted {} ({}, {}) on {} good images in {:.1}s → {}",
                s.category,
                s.detector,
                s.arch,
                s.train_images,
                s.seconds,
                s.model.display()
            )?;
            match s.threshold {
                Some(t) => crate::outln!(
                    "  threshold {t:.4} chosen on {} good + {} defect validation images",
                    s.validation_good, s.validation_defect
                )?,
                None => crate::outln!(
                    "  no threshold: fewer than 10 training images to hold out; set threshold.image in model.toml"
                )?,
            }
        }
    }
    Ok(())
}

/// The backbone to fit: `--arch` when given, else the architecture `kestrel pretrain` recorded in the weights'
/// metadata, else resnet18.
fn resolve_arch(arch: Option<&str>, weights: Option<&Path>) -> anyhow::Result<Arch> {
    if let Some(name) = arch {
        return Ok(Arch::parse(name)?);
    }
    let recorded = weights
        .and_then(pretrained_metadata)
        .and_then(|meta| meta.get("kestrel.arch").cloned());
    Ok(match recorded {
        Some(name) => Arch::parse(&name)?,
        None => Arch::Resnet18,
    })
}

/// The metadata of a safetensors weights file (header only). `None` for other formats and for files whose header
/// cannot be read: the weights reader reports those with its own error.
fn pretrained_metadata(path: &Path) -> Option<std::collections::HashMap<String, String>> {
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !is_safetensors {
        return None;
    }
    backbone::read_metadata(path).ok()
}

/// Weights written by `kestrel pretrain` name their architecture in the file's metadata: refuse a mismatch with a
/// message that says which `--arch` to use, rather than a list of missing tensors.
fn check_pretrained_arch(path: &Path, arch: Arch) -> anyhow::Result<()> {
    let Some(meta) = pretrained_metadata(path) else {
        return Ok(());
    };
    if let Some(trained) = meta.get("kestrel.arch") {
        if trained != arch.name() {
            anyhow::bail!(
                "{} holds a {trained} backbone (kestrel pretrain {}, preset {}, step {}), not the {} asked for; \
                 fit with --arch {trained}, or leave --arch out to use the file's",
                path.display(),
                meta.get("kestrel.task").map_or("?", String::as_str),
                meta.get("kestrel.preset").map_or("?", String::as_str),
                meta.get("kestrel.step").map_or("?", String::as_str),
                arch.name(),
            );
        }
    }
    Ok(())
}
