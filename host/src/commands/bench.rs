//! `kestrel bench`: the performance figures a line engineer sizes hardware with, measured on this machine and
//! device: backbone forward, detector scoring and end-to-end throughput of a model (or of a random-weight backbone
//! when no model is given), a training step, and PatchCore's coreset selection.
//!
//! Every row is the median of `--repeat` timed runs after `--warmup` untimed ones. The PyTorch comparisons live in
//! `bench/` (they need a Python environment); this command needs nothing but the binary.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use kestrel_vision::backbone::{self, Arch};
use kestrel_vision::detector::patchcore::{greedy_k_center, greedy_k_center_batched};
use kestrel_vision::device::parse_device;
use kestrel_vision::model::Rgb8;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::pretrain::optim::{Optimizer, OptimizerConfig};
use crate::pretrain::task::PretrainNet;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// What was timed (stable key for scripts).
    pub case: String,
    /// The workload, in words.
    pub detail: String,
    /// Median milliseconds per `per`.
    pub median_ms: f64,
    /// Fastest run, milliseconds per `per`.
    pub min_ms: f64,
    /// The unit `median_ms` is for: `image`, `step`, `selection`.
    pub per: &'static str,
    /// `per` units per second at the median.
    pub per_second: f64,
}

/// `--json` output.
#[derive(Debug, Serialize)]
struct Report {
    device: String,
    threads: usize,
    rows: Vec<BenchRow>,
}

/// Time `f` (`warmup` untimed runs, then `repeat` timed ones); `units` is how many `per` one call covers.
fn time(
    case: &str,
    detail: String,
    per: &'static str,
    units: usize,
    (warmup, repeat): (usize, usize),
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<BenchRow> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ms = Vec::with_capacity(repeat.max(1));
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        f()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3 / units.max(1) as f64);
    }
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    Ok(BenchRow {
        case: case.into(),
        detail,
        median_ms: median,
        min_ms: ms[0],
        per,
        per_second: 1e3 / median,
    })
}

/// A deterministic synthetic RGB frame (gradients and noise): its content does not change the timings.
fn frame(width: u32, height: u32) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    (0..width * height)
        .flat_map(|i| {
            let (x, y) = (i % width, i / width);
            let n: u8 = rng.gen_range(0..32);
            [(x % 256) as u8 ^ n, (y % 256) as u8, ((x + y) % 256) as u8]
        })
        .collect()
}

/// `kestrel bench`.
pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    let reps = (a.warmup, a.repeat);
    let batch = a.batch_size.max(1);
    let mut rows = Vec::new();
    let say = |r: &BenchRow| {
        if !a.json {
            eprintln!("  {:<18} {:>10.2} ms/{}", r.case, r.median_ms, r.per);
        }
    };
    if let Some(path) = &a.model {
        let (model, _) = super::load_model(path, &a.trust, &device)?;
        let size = model.spec().preprocess.output_size();
        let (fw, fh) = a.frame.unwrap_or((size, size));
        let pixels = frame(fw, fh);
        let frames: Vec<Rgb8<'_>> = (0..batch)
            .map(|_| Rgb8 {
                pixels: &pixels,
                width: fw,
                height: fh,
            })
            .collect();
        let what = format!(
            "{} {}, batch {batch}",
            model.spec().backbone.arch.name(),
            size
        );
        let x = model.batch_rgb8(&frames)?;
        let r = time(
            "preprocess",
            format!("{fw}×{fh} frames → {size}², batch {batch}"),
            "image",
            batch,
            reps,
            || {
                model.batch_rgb8(&frames)?;
                Ok(())
            },
        )?;
        say(&r);
        rows.push(r);
        let r = time(
            "backbone_forward",
            what.clone(),
            "image",
            batch,
            reps,
            || {
                model.features(&x)?;
                Ok(())
            },
        )?;
        say(&r);
        rows.push(r);
        let stages = model.features(&x)?;
        let r = time(
            "detector_score",
            format!("{:?}, heatmap and score", model.detector().kind()),
            "image",
            batch,
            reps,
            || {
                model.score_features(&stages)?;
                Ok(())
            },
        )?;
        say(&r);
        rows.push(r);
        let r = time(
            "end_to_end",
            format!("{what}, {fw}×{fh} RGB8 frames"),
            "image",
            batch,
            reps,
            || {
                model.score_rgb8(&frames)?;
                Ok(())
            },
        )?;
        say(&r);
        rows.push(r);
    } else {
        let arch = Arch::parse(&a.arch)?;
        let cfg = arch.config();
        let w = backbone::random_weights(&cfg, 0, &device)?;
        let net = backbone::resnet_from_weights(
            &cfg,
            arch.name(),
            w,
            std::path::Path::new("random"),
            &device,
        )?
        .fold_batch_norm()?;
        let s = a.image_size as usize;
        let x = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &device)?;
        let r = time(
            "backbone_forward",
            format!(
                "{} {s}² to layer3 (random weights), batch {batch}",
                arch.name()
            ),
            "image",
            batch,
            reps,
            || {
                net.stages(&x, 3, false)?;
                Ok(())
            },
        )?;
        say(&r);
        rows.push(r);
    }
    if a.train {
        let arch = Arch::parse(&a.arch)?;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &device);
        let net = PretrainNet::new(&arch.config(), 100, 1, &[], vb)?;
        let mut opt = Optimizer::new(&vm, OptimizerConfig::sgd());
        let (tb, ts) = (a.train_batch, a.train_size);
        let x = Tensor::randn(0f32, 1.0, (tb, 3, ts, ts), &device)?;
        let labels: Vec<u32> = (0..tb).map(|i| (i * 37 % 100) as u32).collect();
        let y = Tensor::new(labels.as_slice(), &device)?;
        let r = time(
            "train_step",
            format!(
                "{} {tb}×{ts}², forward + cross-entropy + backward + SGD",
                arch.name()
            ),
            "step",
            1,
            reps,
            || {
                let logits = net.forward(&x, true)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                opt.backward_step(&loss, 0.01, None)?;
                Ok(())
            },
        )?;
        say(&r);
        rows.push(r);
    }
    if let Some(n) = a.coreset {
        let dim = a.coreset_dim;
        let target = ((n as f64 * a.coreset_ratio) as usize).max(1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..n * dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let one = (0, 1);
        let r = time(
            "coreset_batched",
            format!("{n}×{dim} → {target}"),
            "selection",
            1,
            one,
            || {
                greedy_k_center_batched(&x, dim, 0, target, &|_, _| {});
                Ok(())
            },
        )?;
        say(&r);
        rows.push(r);
        if a.coreset_greedy {
            let r = time(
                "coreset_greedy",
                format!("{n}×{dim} → {target}"),
                "selection",
                1,
                one,
                || {
                    greedy_k_center(&x, dim, 0, target, &|_, _| {});
                    Ok(())
                },
            )?;
            say(&r);
            rows.push(r);
        }
    }
    let report = Report {
        device: format!("{device:?}"),
        threads: rayon::current_num_threads(),
        rows,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("writing JSON")?
        );
        return Ok(());
    }
    println!(
        "{:<18} {:>12} {:>12} {:>12}  workload ({}, {} threads)",
        "case", "median ms", "min ms", "per second", report.device, report.threads
    );
    for r in &report.rows {
        println!(
            "{:<18} {:>12.2} {:>12.2} {:>12.1}  {} (per {})",
            r.case, r.median_ms, r.min_ms, r.per_second, r.detail, r.per
        );
    }
    Ok(())
}

/// `--frame 1920x1080`.
pub fn parse_frame(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', '×'])
        .ok_or_else(|| format!("frame size `{s}`: expected WIDTHxHEIGHT, e.g. 1280x1024"))?;
    let p = |v: &str| v.trim().parse::<u32>().ok().filter(|&v| v > 0);
    match (p(w), p(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(format!(
            "frame size `{s}`: expected WIDTHxHEIGHT with positive integers"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_parse_and_bad_ones_say_why() {
        assert_eq!(parse_frame("1280x1024").unwrap(), (1280, 1024));
        assert_eq!(parse_frame("640×480").unwrap(), (640, 480));
        assert!(parse_frame("1280").unwrap_err().contains("WIDTHxHEIGHT"));
        assert!(parse_frame("0x10").is_err());
    }

    #[test]
    fn timing_reports_per_unit_medians() {
        let r = time("t", "x".into(), "image", 4, (0, 3), || Ok(())).unwrap();
        assert_eq!(r.per, "image");
        assert!(r.min_ms <= r.median_ms && r.median_ms >= 0.0);
    }

    #[test]
    fn frames_are_deterministic() {
        assert_eq!(frame(8, 4), frame(8, 4));
        assert_eq!(frame(8, 4).len(), 8 * 4 * 3);
    }
}
