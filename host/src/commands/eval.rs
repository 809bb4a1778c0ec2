//! `kestrel eval`: score a category's test split and compute image AUROC, pixel AUROC, AUPRO and F1-max.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kestrel_vision::dataset::{self, ConversionCounts, Dataset, OpenOptions};
use kestrel_vision::device::parse_device;
use kestrel_vision::map::ScoreMap;
use kestrel_vision::metrics::{self, AnomalyMap, MetricsReport, PixelMetricsOptions};
use kestrel_vision::model::Model;
use kestrel_vision::npy::{write_npy_file, Array2};
use kestrel_vision::preprocess::{overlay_heatmap, resize_mask_nearest};
use kestrel_vision::resample;
use kestrel_vision::scoring::score_files;
use serde::Serialize;

use crate::cli::EvalArgs;
use crate::images;
use crate::progress;

/// One row of the evaluation table / one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    /// Category.
    pub category: String,
    /// The metrics (flattened: same keys as `kestrel metrics --json`).
    #[serde(flatten)]
    pub metrics: MetricsReport,
    /// Scoring throughput including image decoding.
    pub images_per_s: f64,
    /// The model's own threshold (chosen at fit time on validation data), for reference.
    pub model_threshold: Option<f32>,
}

/// Evaluate `model` on `ds.test`; optionally write heatmaps under `heatmaps`.
pub fn evaluate(
    model: &Model,
    ds: &Dataset,
    batch_size: usize,
    heatmaps: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<EvalRow> {
    if ds.test.is_empty() {
        anyhow::bail!("category `{}` has no test images to evaluate", ds.category);
    }
    let size = model.spec().preprocess.output_size();
    let threshold = model.spec().threshold.as_ref().map(|t| t.image);
    if let Some(dir) = heatmaps {
        for sub in ["maps", "masks", "overlays"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
    }
    let paths: Vec<&Path> = ds.test.iter().map(|s| s.path.as_path()).collect();
    let mut counts = ConversionCounts::default();
    let pb = progress::bar(paths.len() as u64, "scoring", quiet);
    let mut maps: Vec<AnomalyMap> = Vec::with_capacity(paths.len());
    let mut scores: HashMap<String, f64> = HashMap::new();
    let mut score_list = Vec::with_capacity(paths.len());
    let t0 = std::time::Instant::now();
    score_files(
        model,
        &paths,
        batch_size,
        &mut counts,
        &mut |i, image, scored| -> anyhow::Result<()> {
            pb.inc(1);
            let sample = &ds.test[i];
            let (w, h) = image.image.dimensions();
            let mask = match sample.load_mask(w, h)? {
                Some(m) => Some(resize_mask_nearest(&m, size, size)?),
                None => None,
            };
            if let Some(dir) = heatmaps {
                write_npy_file(
                    &dir.join("maps").join(format!("{}.npy", sample.name)),
                    &Array2::from(&scored.map),
                )?;
                if let Some(m) = &mask {
                    m.to_image()
                        .save(dir.join("masks").join(format!("{}.png", sample.name)))
                        .with_context(|| format!("writing mask for {}", sample.name))?;
                }
                let full = resample::bilinear(&scored.map, w as usize, h as usize)?;
                let (lo, hi) = overlay_range(threshold, &scored.map);
                overlay_heatmap(&image.image, full.data(), lo, hi)?
                    .save(dir.join("overlays").join(format!("{}.png", sample.name)))
                    .with_context(|| format!("writing overlay for {}", sample.name))?;
            }
            scores.insert(sample.name.clone(), scored.score as f64);
            score_list.push(scored.score);
            maps.push(AnomalyMap::from_score_map(
                sample.name.clone(),
                scored.map,
                mask.map(|m| m.data),
            )?);
            Ok(())
        },
    )?;
    let elapsed = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    if !quiet {
        images::report_conversions(&counts);
    }
    let mut report = metrics::evaluate(&maps[..], Some(&scores), &PixelMetricsOptions::default())?;
    // Image labels come from the dataset (defect folder), not from masks, so defect images annotated at image level
    // only still count as defective.
    let labels: Vec<bool> = ds.test.iter().map(|s| !s.is_good()).collect();
    report.image_auroc = metrics::image_auroc(&score_list, &labels).ok();
    let f = metrics::f1_max(&score_list, &labels)?;
    report.f1_max = labels.iter().any(|l| *l).then_some(f.f1);
    report.threshold = f.threshold;
    if let Some(dir) = heatmaps {
        let mut csv = std::fs::File::create(dir.join("scores.csv"))?;
        writeln!(csv, "name,score")?;
        for (s, v) in ds.test.iter().zip(&score_list) {
            // Written as the exact f64 value of the f32 score, so `kestrel metrics --scores` reproduces eval.
            writeln!(csv, "{},{}", s.name, *v as f64)?;
        }
    }
    Ok(EvalRow {
        category: ds.category.clone(),
        metrics: report,
        images_per_s: ds.test.len() as f64 / elapsed.max(1e-9),
        model_threshold: threshold,
    })
}

/// Colour range of overlays: around the model threshold when there is one (the threshold maps to the middle of the
/// colour scale), else the map's own range.
fn overlay_range(threshold: Option<f32>, map: &ScoreMap) -> (f32, f32) {
    match threshold {
        Some(t) if t > 0.0 => (0.5 * t, 1.5 * t),
        _ => {
            let lo = map.min();
            let hi = map.data().iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            (lo, hi.max(lo + 1e-6))
        }
    }
}

/// Print rows as a table (stops quietly when stdout's reader has gone, see [`crate::output`]).
pub fn print_table(rows: &[EvalRow]) -> std::io::Result<()> {
    use super::fmt_opt;
    crate::outln!(
        "{:<20} {:>11} {:>11} {:>8} {:>8} {:>10} {:>8} {:>9}",
        "category",
        "image AUROC",
        "pixel AUROC",
        "AUPRO",
        "F1-max",
        "threshold",
        "images",
        "images/s"
    )?;
    for r in rows {
        crate::outln!(
            "{:<20} {:>11} {:>11} {:>8} {:>8} {:>10.4} {:>8} {:>9.2}",
            r.category,
            fmt_opt(r.metrics.image_auroc),
            fmt_opt(r.metrics.pixel_auroc),
            fmt_opt(r.metrics.aupro),
            fmt_opt(r.metrics.f1_max),
            r.metrics.threshold,
            r.metrics.images,
            r.images_per_s
        )?;
    }
    Ok(())
}

/// Models to evaluate: `(category, model dir)`.
fn models_to_run(
    model: &Path,
    category: Option<&str>,
) -> anyhow::Result<Vec<(Option<String>, PathBuf)>> {
    if model.join("model.toml").is_file() || super::is_bundle(model) {
        if category == Some("all") {
            anyhow::bail!("{} holds a single model; `--category all` needs a folder of per-category models (from `kestrel fit --category all`)", model.display());
        }
        return Ok(vec![(category.map(str::to_string), model.to_path_buf())]);
    }
    if !model.is_dir() {
        anyhow::bail!(
            "{}: not a model directory (no model.toml); fit one with `kestrel fit -o DIR`",
            model.display()
        );
    }
    let mut subs: Vec<(Option<String>, PathBuf)> = std::fs::read_dir(model)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("model.toml").is_file())
        .map(|p| (p.file_name().map(|n| n.to_string_lossy().into_owned()), p))
        .collect();
    subs.sort();
    match category {
        Some("all") | None if !subs.is_empty() => Ok(subs),
        Some(c) => subs
            .into_iter()
            .find(|(n, _)| n.as_deref() == Some(c))
            .map(|s| vec![s])
            .ok_or_else(|| {
                anyhow::anyhow!("no model for category `{c}` under {}", model.display())
            }),
        None => anyhow::bail!("{}: not a model directory (no model.toml)", model.display()),
    }
}

/// `kestrel eval`.
pub fn run(a: &EvalArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.compute.device)?;
    let mut rows = Vec::new();
    for (cat, dir) in models_to_run(&a.model, a.category.as_deref())? {
        let (model, _) = super::load_model(&dir, &a.trust, &device)?;
        let category = cat.unwrap_or_else(|| model.spec().data.category.clone());
        let ds = dataset::open_with(
            &a.data,
            &OpenOptions {
                category: Some(category.clone()),
                layout: a.layout.into(),
                ..OpenOptions::default()
            },
        )?;
        let out = a.heatmaps.as_ref().map(|h| h.join(&category));
        let row = evaluate(&model, &ds, a.compute.batch_size, out.as_deref(), a.json)?;
        if a.json {
            crate::outln!("{}", serde_json::to_string(&row)?)?;
        }
        rows.push(row);
    }
    if !a.json {
        print_table(&rows)?;
    }
    Ok(())
}
