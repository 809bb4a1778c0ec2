//! Loading images for the network: decode, convert to RGB, pre-process, in parallel batches.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Tensor;
use kestrel_vision::dataset::{ConversionCounts, LoadedImage};
use kestrel_vision::model::{batch_tensor, Model, Scored};
use kestrel_vision::preprocess::{preprocess, PreprocessConfig};
use rayon::prelude::*;

/// One decoded image with its network input.
pub struct Prepared {
    /// The decoded image (original size).
    pub image: LoadedImage,
    /// Pre-processed CHW input.
    pub input: Vec<f32>,
}

/// Decode and pre-process `paths` in parallel; conversions are tallied into `counts`.
pub fn prepare(
    paths: &[&Path],
    cfg: &PreprocessConfig,
    counts: &mut ConversionCounts,
) -> anyhow::Result<Vec<Prepared>> {
    let out: Vec<anyhow::Result<Prepared>> = paths
        .par_iter()
        .map(|p| {
            let image = kestrel_vision::dataset::load_rgb(p)?;
            let input = preprocess(&image.image, cfg)
                .with_context(|| format!("pre-processing {}", p.display()))?;
            Ok(Prepared { image, input })
        })
        .collect();
    let out: Vec<Prepared> = out.into_iter().collect::<anyhow::Result<_>>()?;
    for p in &out {
        counts.record_loaded(&p.image);
    }
    Ok(out)
}

/// Stack prepared inputs into a batch tensor.
pub fn to_batch(
    prepared: &[Prepared],
    cfg: &PreprocessConfig,
    model_device: &candle_core::Device,
) -> anyhow::Result<Tensor> {
    let inputs: Vec<Vec<f32>> = prepared.iter().map(|p| p.input.clone()).collect();
    Ok(batch_tensor(&inputs, cfg.output_size(), model_device)?)
}

/// Score `paths` with `model` in batches, calling `each` with every image and its result in order.
pub fn score_paths(
    model: &Model,
    paths: &[&Path],
    batch_size: usize,
    counts: &mut ConversionCounts,
    pb: &indicatif::ProgressBar,
    each: &mut dyn FnMut(usize, Prepared, Scored) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let cfg = model.spec().preprocess.clone();
    let mut index = 0;
    for chunk in paths.chunks(batch_size.max(1)) {
        let prepared = prepare(chunk, &cfg, counts)?;
        let batch = to_batch(&prepared, &cfg, model.device())?;
        let scored = model.score_batch(&batch)?;
        for (p, s) in prepared.into_iter().zip(scored) {
            each(index, p, s)?;
            index += 1;
        }
        pb.inc(chunk.len() as u64);
    }
    Ok(())
}

/// Expand files and folders into a sorted list of image files.
pub fn expand_image_paths(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let exts = kestrel_vision::dataset::IMAGE_EXTENSIONS;
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
            .unwrap_or(false)
    };
    let mut out = Vec::new();
    for i in inputs {
        if i.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(i)
                .with_context(|| format!("reading folder {}", i.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            v.sort();
            out.extend(v);
        } else if i.is_file() {
            out.push(i.clone());
        } else {
            anyhow::bail!("{}: no such file or folder", i.display());
        }
    }
    if out.is_empty() {
        anyhow::bail!(
            "no images found (looked for extensions {})",
            exts.join(", ")
        );
    }
    Ok(out)
}

/// Print the colour conversions that happened, once, to stderr.
pub fn report_conversions(counts: &ConversionCounts) {
    for line in counts.describe() {
        eprintln!("note: {line}");
    }
}
