//! `kestrel synth`: write samples of the synthetic pretraining images so a person can look at them (and at the
//! parameters that made them) before spending hours pretraining on millions of such images.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::cli::SynthArgs;
use crate::synth::cutpaste::{CutPasteConfig, CutPasteGenerator};
use crate::synth::fractal::{FractalConfig, FractalGenerator, MultiConfig, MultiFractalGenerator};
use crate::synth::gmm::{GmmConfig, GmmGenerator};
use crate::synth::texture::NormalSource;
use crate::synth::views::{ViewConfig, ViewGenerator};
use crate::synth::{check_size, Image, TaskKind};

enum Generator {
    Fractal(FractalGenerator),
    Multi(MultiFractalGenerator),
    Gmm(GmmGenerator),
    CutPaste(CutPasteGenerator),
    Views(ViewGenerator),
}

impl Generator {
    /// The generator the command line asks for.
    fn new(a: &SynthArgs) -> anyhow::Result<Self> {
        Ok(match a.kind {
            TaskKind::Fractal => Generator::Fractal(FractalGenerator::new(
                FractalConfig::new(a.size),
                a.classes,
                a.seed,
            )?),
            TaskKind::MultiFractal => Generator::Multi(MultiFractalGenerator::new(
                MultiConfig::new(a.size),
                a.classes,
                a.seed,
            )?),
            TaskKind::Gmm => {
                let normals = NormalSource::from_dir(a.normal_images.as_deref(), a.size)?;
                let cfg = GmmConfig {
                    preset: a.preset,
                    ..GmmConfig::new(a.size)
                };
                Generator::Gmm(GmmGenerator::new(cfg, normals, a.seed)?)
            }
            TaskKind::Cutpaste => {
                let normals = NormalSource::from_dir(a.normal_images.as_deref(), 2 * a.size)?;
                Generator::CutPaste(CutPasteGenerator::new(
                    CutPasteConfig::new(a.size),
                    normals,
                    a.seed,
                )?)
            }
            TaskKind::Ds2 => {
                let normals = NormalSource::from_dir(a.normal_images.as_deref(), a.size)?;
                Generator::Views(ViewGenerator::new(
                    ViewConfig::new(a.size),
                    normals,
                    a.seed,
                )?)
            }
            TaskKind::MultiTask => anyhow::bail!(
                "multi-task trains on the other tasks' images: synthesise each of them (fractal, gmm, cutpaste, ds2)"
            ),
        })
    }

    /// Write every sample (`NNNN.png` and `NNNN.json`, plus the normal image and opacity for GMM); returns the
    /// generator's settings for `synth.json`.
    fn write_all(
        &self,
        a: &SynthArgs,
        pb: &indicatif::ProgressBar,
    ) -> anyhow::Result<serde_json::Value> {
        Ok(match self {
            Generator::Fractal(g) => {
                write_each(a, pb, |i, stem| {
                    let s = g.sample(i);
                    save_png(&s.image, stem, "")?;
                    Ok(json!({ "index": i, "class": s.params.class, "params": s.params }))
                })?;
                json!({ "classes": a.classes, "fractal": g.config() })
            }
            Generator::Multi(g) => {
                write_each(a, pb, |i, stem| {
                    let s = g.sample(i);
                    save_png(&s.image, stem, "")?;
                    Ok(json!({
                        "index": i,
                        "labels": s.params.labels,
                        "pos_weight": s.params.pos_weight(a.classes),
                        "params": s.params,
                    }))
                })?;
                json!({ "classes": a.classes, "multi": g.config() })
            }
            Generator::Gmm(g) => {
                write_each(a, pb, |i, stem| {
                    let s = g.sample(i);
                    save_png(&s.image, stem, "")?;
                    save_png(&s.normal, stem, "_normal")?;
                    save_alpha(&s.alpha, a.size, stem)?;
                    let components: Vec<_> = s
                        .target
                        .active()
                        .map(|k| json!({ "slot": k, "component": s.target.components[k] }))
                        .collect();
                    Ok(json!({
                        "index": i,
                        "strength": s.target.strength,
                        "components": components,
                        "info": s.info,
                    }))
                })?;
                json!({
                    "gmm": g.config(),
                    "normal_images": a.normal_images,
                    "colour_units": "network units [-1, 1]; pixel value = (c + 1) / 2",
                })
            }
            Generator::CutPaste(g) => {
                write_each(a, pb, |i, stem| {
                    let s = g.sample(i);
                    save_png(&s.normal, stem, "_normal")?;
                    save_png(&s.cutpaste, stem, "_cutpaste")?;
                    save_png(&s.scar, stem, "_scar")?;
                    Ok(json!({
                        "index": i,
                        "labels": { "normal": 0, "cutpaste": 1, "scar": 2 },
                        "cut": s.cut,
                        "scar": s.scar_paste,
                        "origin": s.origin,
                    }))
                })?;
                json!({ "cutpaste": g.config(), "normal_images": a.normal_images })
            }
            Generator::Views(g) => {
                write_each(a, pb, |i, stem| {
                    let p = g.sample(i);
                    save_png(&p.views[0], stem, "_view1")?;
                    save_png(&p.views[1], stem, "_view2")?;
                    Ok(json!({
                        "index": i,
                        "boxes": p.boxes,
                        "box_convention": "(x0, y0, x1, y1) in [0, 1] of the original; x0 > x1 when mirrored",
                    }))
                })?;
                json!({ "views": g.config(), "normal_images": a.normal_images })
            }
        })
    }
}

/// What `kestrel synth --json` prints.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    kind: &'a str,
    count: usize,
    size: usize,
    seed: u64,
    output: &'a Path,
    seconds: f64,
    images_per_s: f64,
    threads: usize,
}

/// `kestrel synth`.
pub fn run(a: &SynthArgs) -> anyhow::Result<()> {
    if a.count == 0 {
        anyhow::bail!("-n/--count must be at least 1");
    }
    check_size(a.size)?;
    if a.normal_images.is_some() && !matches!(a.kind, TaskKind::Gmm | TaskKind::Cutpaste) {
        anyhow::bail!(
            "--normal-images only applies to `kestrel synth gmm` and `kestrel synth cutpaste`"
        );
    }
    // Build (and so validate) the generator before touching the output folder.
    let generator = Generator::new(a)?;
    prepare_output(&a.output)?;
    let pb = crate::progress::bar(a.count as u64, "synthesising", a.json);
    let start = Instant::now();
    let config = generator.write_all(a, &pb)?;
    let kind = a.kind.name();
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let mut meta = json!({ "kind": kind, "count": a.count, "size": a.size, "seed": a.seed });
    if let (Some(m), Some(c)) = (meta.as_object_mut(), config.as_object()) {
        m.extend(c.clone());
    }
    save_json(&a.output.join("synth"), &meta)?;
    let summary = Summary {
        kind,
        count: a.count,
        size: a.size,
        seed: a.seed,
        output: &a.output,
        seconds,
        images_per_s: a.count as f64 / seconds.max(1e-9),
        threads: rayon::current_num_threads(),
    };
    if a.json {
        crate::outln!("{}", serde_json::to_string(&summary)?)?;
    } else {
        crate::outln!(
            "wrote {} {kind} images ({} px, seed {}) to {} in {:.2}s ({:.0} images/s on {} threads, PNG writing included)",
            a.count,
            a.size,
            a.seed,
            a.output.display(),
            seconds,
            summary.images_per_s,
            summary.threads
        )?;
    }
    Ok(())
}

/// Create the output folder; refuse one with files in it, so old and new samples never mix.
fn prepare_output(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            anyhow::bail!(
                "{} already exists and is not empty; remove it or choose another folder",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Render and write every sample in parallel (rendering and PNG encoding both scale with cores): `one` writes
/// sample `i`'s images at its file stem (`<output>/NNNN`) and returns the parameters written to `NNNN.json`.
fn write_each(
    a: &SynthArgs,
    pb: &indicatif::ProgressBar,
    one: impl Fn(u64, &Path) -> anyhow::Result<serde_json::Value> + Sync,
) -> anyhow::Result<()> {
    let width = (a.count - 1).to_string().len().max(4);
    (0..a.count as u64).into_par_iter().try_for_each(|i| {
        let stem = a.output.join(format!("{i:0width$}"));
        let params = one(i, &stem)?;
        save_json(&stem, &params)?;
        pb.inc(1);
        Ok(())
    })
}

fn save_png(img: &Image, stem: &Path, suffix: &str) -> anyhow::Result<()> {
    let path = with_suffix(stem, suffix, "png");
    img.to_rgb8()
        .save(&path)
        .with_context(|| format!("writing {}", path.display()))
}

/// The soft defect mask as an 8-bit gray image (255 = fully opaque).
fn save_alpha(alpha: &[f32], size: usize, stem: &Path) -> anyhow::Result<()> {
    let path = with_suffix(stem, "_alpha", "png");
    let raw = alpha
        .iter()
        .map(|a| (a.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    image::GrayImage::from_raw(size as u32, size as u32, raw)
        .context("internal: alpha map size")?
        .save(&path)
        .with_context(|| format!("writing {}", path.display()))
}

fn save_json(stem: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let path = with_suffix(stem, "", "json");
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

fn with_suffix(stem: &Path, suffix: &str, ext: &str) -> std::path::PathBuf {
    let mut name = stem.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    name.push(".");
    name.push(ext);
    stem.with_file_name(name)
}
