//! `kestrel predict`: score images with a fitted model; write heatmap overlays, the raw anomaly maps
//! (`maps/<stem>.npy`, at the model's input size: the map a unit reduces to its wire mask) and a scores CSV.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use kestrel_vision::dataset::ConversionCounts;
use kestrel_vision::device::parse_device;
use kestrel_vision::npy::{write_npy_file, Array2};
use kestrel_vision::preprocess::overlay_heatmap;
use kestrel_vision::resample;
use kestrel_vision::scoring::score_files;
use serde::Serialize;

use crate::cli::PredictArgs;
use crate::images;
use crate::progress;

/// One prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// Image path.
    pub image: String,
    /// Anomaly score.
    pub score: f32,
    /// `pass`, `reject`, or `unknown` when the model has no threshold.
    pub verdict: &'static str,
    /// Overlay written.
    pub heatmap: String,
    /// Anomaly map written (`.npy`, float32, the model's input size).
    pub map: String,
}

/// `kestrel predict`.
pub fn run(a: &PredictArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.compute.device)?;
    let (model, _) = super::load_model(&a.model, &a.trust, &device)?;
    let files = images::expand_image_paths(&a.images)?;
    std::fs::create_dir_all(a.output.join("maps"))
        .with_context(|| format!("creating {}", a.output.display()))?;
    let threshold = model.spec().threshold.clone();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let mut counts = ConversionCounts::default();
    let pb = progress::bar(paths.len() as u64, "scoring", a.json);
    let mut preds = Vec::with_capacity(paths.len());
    score_files(
        &model,
        &paths,
        a.compute.batch_size,
        &mut counts,
        &mut |i, image, s| -> anyhow::Result<()> {
            pb.inc(1);
            let path = paths[i];
            let (w, h) = image.image.dimensions();
            let full = resample::bilinear(&s.map, w as usize, h as usize)?;
            let (lo, hi) = match threshold.as_ref().map(|t| t.image) {
                Some(t) if t > 0.0 => (0.5 * t, 1.5 * t),
                _ => (0.0, s.score.max(1e-6)),
            };
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("image{i}"));
            let map_path = a.output.join("maps").join(format!("{stem}.npy"));
            write_npy_file(&map_path, &Array2::from(&s.map))?;
            let out = a.output.join(format!("{stem}_heatmap.png"));
            overlay_heatmap(&image.image, full.data(), lo, hi)?
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            let verdict = match &threshold {
                Some(t) if t.rejects(s.score) => "reject",
                Some(_) => "pass",
                None => "unknown",
            };
            let p = Prediction {
                image: path.display().to_string(),
                score: s.score,
                verdict,
                heatmap: out.display().to_string(),
                map: map_path.display().to_string(),
            };
            if a.json {
                crate::outln!("{}", serde_json::to_string(&p)?)?;
            }
            preds.push(p);
            Ok(())
        },
    )?;
    pb.finish_and_clear();
    let mut csv = std::fs::File::create(a.output.join("scores.csv"))?;
    writeln!(csv, "image,score,verdict")?;
    for p in &preds {
        writeln!(csv, "{},{},{}", p.image, p.score, p.verdict)?;
    }
    if !a.json {
        images::report_conversions(&counts);
        for p in &preds {
            crate::outln!("{:<8} {:>10.4}  {}", p.verdict, p.score, p.image)?;
        }
        if threshold.is_none() {
            eprintln!("note: the model has no threshold; set threshold.image in model.toml to get verdicts");
        }
    }
    Ok(())
}
