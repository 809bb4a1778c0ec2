//! `kestrel fit --pretrain synthetic`: pick the backbone by how well it finds defects planted in the product's own
//! good images, so a user gets adapted features without knowing which pretraining recipe suits the product.
//!
//! 1. A fifth of the good training images (at least 4) is held out for the comparison.
//! 2. Candidate backbones are pretrained at the `tiny` preset: `random` (no pretraining), `fractal` (product
//!    independent: cached in the user's cache directory, keyed by its settings), `fractal-gmm` (the GMM stage on
//!    the remaining good images, medium defects, 2×2 head), `cutpaste`, `ds2`, `fractal-ds2` — the good images
//!    they see are the remaining ones, never the held-out ones.
//! 3. For each candidate the user's detector is fitted on the remaining good images and scores the held-out images
//!    as they are and with a procedural scratch planted in each ([`crate::synth::scratch`], a defect family no
//!    candidate trains on). The proxy is the mean of image AUROC (good vs scratched) and pixel AUROC (scratch
//!    masks).
//! 4. The best proxy wins (ties: the earlier candidate); `kestrel fit` then fits on all training images with it.
//!    model.toml records the candidates, their scores and the choice (`[recipe]`).
//!
//! docs/pretraining.md ("Choosing a recipe") has the measurements behind this design.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use kestrel_vision::dataset::{load_rgb, ConversionCounts, Dataset, Sample};
use kestrel_vision::metrics::{image_auroc, pixel_auroc, AnomalyMap};
use kestrel_vision::model::{CandidateScore, RecipeSpec, Rgb8};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::fit::{fit_model, FitPlan};
use crate::pretrain::{train, Preset, PretrainConfig, RunOptions, TaskKind};
use crate::synth::gmm::GmmPreset;
use crate::synth::scratch::plant_scratch;
use crate::synth::{role, stream};

/// The recipes `--pretrain` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PretrainRecipe {
    /// Compare synthetic-pretraining candidates on planted defects and fit with the best.
    Synthetic,
}

/// A candidate backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Candidate {
    /// Random initialisation from the fit's seed.
    Random,
    /// Fractal classification (product independent, cached).
    Fractal,
    /// Fractal, then GMM pseudo-defects on the product's good images.
    FractalGmm,
    /// CutPaste 3-way on the product's good images.
    Cutpaste,
    /// DS2 dense contrastive on the product's good images.
    Ds2,
    /// Fractal, then DS2.
    FractalDs2,
}

impl Candidate {
    /// The default set, in the order tried.
    pub const DEFAULT: [Candidate; 4] = [
        Candidate::Random,
        Candidate::Fractal,
        Candidate::FractalGmm,
        Candidate::Cutpaste,
    ];

    fn name(self) -> &'static str {
        match self {
            Candidate::Random => "random",
            Candidate::Fractal => "fractal",
            Candidate::FractalGmm => "fractal-gmm",
            Candidate::Cutpaste => "cutpaste",
            Candidate::Ds2 => "ds2",
            Candidate::FractalDs2 => "fractal-ds2",
        }
    }
}

/// What the chooser settled on.
pub struct Chosen {
    /// The winning backbone's weights (`None`: random initialisation).
    pub weights: Option<PathBuf>,
    /// The record for model.toml.
    pub spec: RecipeSpec,
}

/// The cache directory for product-independent weights: `$KESTREL_CACHE_DIR`, else `$XDG_CACHE_HOME/kestrel`, else
/// `~/.cache/kestrel`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("KESTREL_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("kestrel"));
    }
    let home = std::env::var_os("HOME")
        .context("no cache directory: set KESTREL_CACHE_DIR (or HOME / XDG_CACHE_HOME)")?;
    Ok(PathBuf::from(home).join(".cache/kestrel"))
}

/// Run the comparison for `ds`'s training images; candidate weights go to `<out>/pretrain/`.
pub fn choose(plan: &FitPlan, ds: &Dataset, out: &Path) -> anyhow::Result<Chosen> {
    let r = &plan.recipe;
    if ds.train.len() < 8 {
        anyhow::bail!(
            "--pretrain synthetic needs at least 8 good training images (it holds some out to compare backbones), \
             found {}",
            ds.train.len()
        );
    }
    let (fit_on, proxy) = split(&ds.train, plan.seed);
    let work = out.join("pretrain");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let good_dir = link_images(&fit_on, &work.join("good-images"))?;
    let say = |m: String| {
        if !plan.quiet {
            eprintln!("{m}");
        }
    };
    say(format!(
        "choosing a backbone: {} candidates, detector fitted on {} good images, {} held out with planted scratches",
        r.candidates.len(),
        fit_on.len(),
        proxy.len()
    ));
    let proxy_set = ProxySet::new(&proxy, plan.preprocess.output_size(), plan.seed)?;
    let mut scores = Vec::with_capacity(r.candidates.len());
    let mut fractal: Option<PathBuf> = None;
    for &c in &r.candidates {
        let t0 = Instant::now();
        let weights = match c {
            Candidate::Random => None,
            Candidate::Fractal => Some(fractal_weights(plan, &mut fractal)?),
            Candidate::FractalGmm | Candidate::FractalDs2 => {
                let init = fractal_weights(plan, &mut fractal)?;
                let task = if c == Candidate::FractalGmm {
                    TaskKind::Gmm
                } else {
                    TaskKind::Ds2
                };
                Some(pretrain(
                    plan,
                    task,
                    Some(&init),
                    &good_dir,
                    &work.join(c.name()),
                )?)
            }
            Candidate::Cutpaste => Some(pretrain(
                plan,
                TaskKind::Cutpaste,
                None,
                &good_dir,
                &work.join(c.name()),
            )?),
            Candidate::Ds2 => Some(pretrain(
                plan,
                TaskKind::Ds2,
                None,
                &good_dir,
                &work.join(c.name()),
            )?),
        };
        let pretrain_seconds = if c == Candidate::Random {
            0.0
        } else {
            t0.elapsed().as_secs_f64()
        };
        let paths: Vec<&Path> = fit_on.iter().map(|s| s.path.as_path()).collect();
        let mut counts = ConversionCounts::default();
        let model = fit_model(plan, weights.as_deref(), &paths, &ds.category, &mut counts)
            .with_context(|| format!("fitting the `{}` candidate", c.name()))?;
        let (image, pixel) = proxy_set.score(&model)?;
        let proxy = (image + pixel) / 2.0;
        say(format!(
            "  {:<12} image AUROC {image:.4}  pixel AUROC {pixel:.4}  proxy {proxy:.4}",
            c.name()
        ));
        scores.push(CandidateScore {
            name: c.name().into(),
            weights,
            pretrain_seconds,
            image_auroc: image,
            pixel_auroc: pixel,
            proxy,
        });
    }
    let best = scores
        .iter()
        .enumerate()
        .fold(0, |b, (i, s)| if s.proxy > scores[b].proxy { i } else { b });
    say(format!("chose `{}`", scores[best].name));
    // The links were only for the pretraining runs; the candidates' weights stay (model.toml names them).
    std::fs::remove_dir_all(&good_dir)
        .with_context(|| format!("removing {}", good_dir.display()))?;
    Ok(Chosen {
        weights: scores[best].weights.clone(),
        spec: RecipeSpec {
            recipe: "synthetic".into(),
            proxy_defects: "procedural scratches".into(),
            proxy_images: proxy.len(),
            chosen: scores[best].name.clone(),
            candidates: scores,
        },
    })
}

/// Hold out a fifth (at least 4) of `train`, by a seeded shuffle.
fn split(train: &[Sample], seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    let k = (train.len() / 5).max(4);
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ 0x5245_4349_5045,
    )); // "RECIPE"
    let held: std::collections::HashSet<usize> = order[..k].iter().copied().collect();
    let (mut fit_on, mut proxy) = (Vec::new(), Vec::new());
    for (i, s) in train.iter().enumerate() {
        if held.contains(&i) {
            proxy.push(s.clone());
        } else {
            fit_on.push(s.clone());
        }
    }
    (fit_on, proxy)
}

/// A folder holding (links to) `samples`, for the pretraining tasks that read a folder of good images.
fn link_images(samples: &[Sample], dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, s) in samples.iter().enumerate() {
        let name = s
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let link = dir.join(format!("{i:05}-{name}"));
        let target = std::fs::canonicalize(&s.path)
            .with_context(|| format!("reading {}", s.path.display()))?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {}", link.display()))?;
        #[cfg(not(unix))]
        std::fs::copy(&target, &link).with_context(|| format!("copying {}", link.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// The tiny-preset configuration of `task` for this fit.
fn tiny(plan: &FitPlan, task: TaskKind) -> PretrainConfig {
    let mut c = PretrainConfig::preset(task, Preset::Tiny);
    c.arch = plan.arch;
    c.seed = plan.seed;
    if let Some(steps) = plan.recipe.steps {
        c.steps = steps;
        c.warmup_steps = c.warmup_steps.min(steps / 20);
    }
    c
}

/// The fractal candidate's weights: from the cache when a run with the same settings is there, else trained and
/// cached.
fn fractal_weights(plan: &FitPlan, memo: &mut Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = memo {
        return Ok(p.clone());
    }
    let cfg = tiny(plan, TaskKind::Fractal);
    // A stable digest of the settings and the kestrel version (std's hasher may change between Rust releases).
    let key = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(toml::to_string(&cfg).unwrap_or_default().as_bytes());
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        hex::encode(&h.finalize()[..8])
    };
    // One directory per settings: the weights with their log, settings and stem filters. Trained in a partial
    // directory and renamed when complete, so an interrupted run is never taken for a cached one.
    let root = cache_dir()?;
    let name = format!("fractal-tiny-{}-{key}", plan.arch.name());
    let dir = root.join(&name);
    let path = dir.join("weights.safetensors");
    if !path.is_file() {
        let partial = root.join(format!(".partial-{name}"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .with_context(|| format!("clearing {}", partial.display()))?;
        }
        std::fs::create_dir_all(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        run_pretraining(plan, &cfg, &partial.join("weights.safetensors"))?;
        std::fs::rename(&partial, &dir).with_context(|| format!("caching {}", dir.display()))?;
    }
    *memo = Some(path.clone());
    Ok(path)
}

/// Pretrain `task` on the good images in `good`, optionally from `init`; returns the weights path.
fn pretrain(
    plan: &FitPlan,
    task: TaskKind,
    init: Option<&Path>,
    good: &Path,
    out: &Path,
) -> anyhow::Result<PathBuf> {
    let mut cfg = tiny(plan, task);
    cfg.init_weights = init.map(Path::to_path_buf);
    match task {
        TaskKind::Gmm => {
            cfg.gmm.normal_images = Some(good.to_path_buf());
            cfg.gmm.preset = GmmPreset::Medium;
            cfg.head_grid = 2;
        }
        TaskKind::Cutpaste => cfg.cutpaste.normal_images = Some(good.to_path_buf()),
        TaskKind::Ds2 => cfg.ds2.normal_images = Some(good.to_path_buf()),
        _ => {}
    }
    let path = out.with_extension("safetensors");
    run_pretraining(plan, &cfg, &path)?;
    Ok(path)
}

fn run_pretraining(plan: &FitPlan, cfg: &PretrainConfig, output: &Path) -> anyhow::Result<()> {
    if !plan.quiet {
        eprintln!(
            "  pretraining {} ({} steps of {} at {} px) → {}",
            cfg.task.name(),
            cfg.steps,
            cfg.batch_size,
            cfg.image_size,
            output.display()
        );
    }
    train(
        cfg,
        &RunOptions {
            output: output.to_path_buf(),
            resume: None,
            device: kestrel_vision::device::parse_device(&plan.device)?,
            quiet: plan.quiet,
        },
    )
    .with_context(|| format!("pretraining the {} candidate", cfg.task.name()))?;
    Ok(())
}

/// The held-out good images at the model's input size, each also with a planted scratch and its mask.
struct ProxySet {
    size: u32,
    good: Vec<image::RgbImage>,
    scratched: Vec<(image::RgbImage, Vec<u8>)>,
}

impl ProxySet {
    fn new(samples: &[Sample], size: u32, seed: u64) -> anyhow::Result<Self> {
        let good: Vec<image::RgbImage> = samples
            .par_iter()
            .map(|s| {
                let img = load_rgb(&s.path)?.image;
                Ok(image::imageops::resize(
                    &img,
                    size,
                    size,
                    image::imageops::FilterType::Triangle,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let scratched = good
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let mut img = g.clone();
                let mask = plant_scratch(&mut img, &mut stream(seed, role::SCRATCH, i as u64));
                (img, mask)
            })
            .collect();
        Ok(Self {
            size,
            good,
            scratched,
        })
    }

    /// (image AUROC, pixel AUROC) of `model` on the set.
    fn score(&self, model: &kestrel_vision::model::Model) -> anyhow::Result<(f64, f64)> {
        let s = self.size as usize;
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        let mut maps = Vec::new();
        let images: Vec<(&image::RgbImage, Option<&Vec<u8>>)> = self
            .good
            .iter()
            .map(|g| (g, None))
            .chain(self.scratched.iter().map(|(i, m)| (i, Some(m))))
            .collect();
        for chunk in images.chunks(8) {
            let views: Vec<Rgb8<'_>> = chunk.iter().map(|(i, _)| Rgb8::from(*i)).collect();
            for ((_, mask), scored) in chunk.iter().zip(model.score_rgb8(&views)?) {
                scores.push(scored.score);
                labels.push(mask.is_some());
                let mask = mask.cloned().unwrap_or_else(|| vec![0u8; s * s]);
                maps.push(AnomalyMap::from_score_map(
                    format!("proxy-{}", maps.len()),
                    scored.map,
                    Some(mask),
                )?);
            }
        }
        let image = image_auroc(&scores, &labels)?;
        let pixel = pixel_auroc(&maps, 256 << 20)?;
        Ok((image, pixel))
    }
}

/// `--pretrain` settings of a fit.
#[derive(Debug, Clone)]
pub struct RecipeOptions {
    /// Candidates, in the order tried.
    pub candidates: Vec<Candidate>,
    /// Pretraining steps of each candidate (`None`: the tiny preset's).
    pub steps: Option<u64>,
}

impl Default for RecipeOptions {
    fn default() -> Self {
        Self {
            candidates: Candidate::DEFAULT.to_vec(),
            steps: None,
        }
    }
}
