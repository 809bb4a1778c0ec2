//! `kestrel demo`: the whole flow on a built-in synthetic product, in about a minute on a laptop CPU.

use std::path::Path;

use anyhow::Context;
use kestrel_vision::backbone::Arch;
use kestrel_vision::dataset::{self, OpenOptions};
use kestrel_vision::detector::patchcore::PatchCoreConfig;
use kestrel_vision::detector::DetectorKind;
use kestrel_vision::device::parse_device;
use kestrel_vision::model::Model;
use kestrel_vision::preprocess::PreprocessConfig;
use kestrel_vision::synthetic::{write_mvtec_category, SyntheticSpec};

use super::eval::{evaluate, print_table};
use super::fit::{fit_category, FitPlan};
use crate::cli::DemoArgs;

const CATEGORY: &str = "widget";
const MARKER: &str = ".kestrel-demo";

/// `kestrel demo`.
pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    let data = a.out.join("data");
    prepare_data(&data, a.seed)?;
    let say = |s: String| -> std::io::Result<()> {
        if !a.json {
            crate::outln!("{s}")?;
        }
        Ok(())
    };
    say(format!(
        "synthetic product `{CATEGORY}` written to {} (MVTec AD layout)",
        data.display()
    ))?;
    let mut rows = Vec::new();
    for kind in [DetectorKind::Padim, DetectorKind::Patchcore] {
        let plan = FitPlan {
            data: data.clone(),
            open: OpenOptions {
                category: Some(CATEGORY.into()),
                ..OpenOptions::default()
            },
            // No pretrained weights ship with kestrel; a seeded random narrow ResNet-18 already separates the
            // synthetic defects. Use `kestrel fit --weights` with imported or pretrained weights on real products.
            arch: Arch::Resnet18Narrow,
            weights: None,
            seed: a.seed,
            preprocess: PreprocessConfig {
                image_size: 128,
                ..PreprocessConfig::default()
            },
            kind,
            n_features: None,
            padim_layers: None,
            pretrain: None,
            recipe: Default::default(),
            patchcore: PatchCoreConfig {
                seed: a.seed,
                ..PatchCoreConfig::default()
            },
            gde: Default::default(),
            blur_sigma: kestrel_vision::postprocess::DEFAULT_SIGMA,
            validation_fraction: 0.1,
            batch_size: a.compute.batch_size,
            device: a.compute.device.clone(),
            quiet: a.json,
        };
        let model_dir = a.out.join("models").join(kind.name());
        let s = fit_category(&plan, &model_dir)?;
        say(format!(
            "fitted {} on {} good images in {:.1}s → {}",
            kind.name(),
            s.train_images,
            s.seconds,
            model_dir.display()
        ))?;
        let model = Model::load(&model_dir, &parse_device(&a.compute.device)?)?;
        let ds = dataset::open_with(&plan.data, &plan.open)?;
        let heat = a.out.join("heatmaps").join(kind.name());
        let mut row = evaluate(&model, &ds, a.compute.batch_size, Some(&heat), a.json)?;
        row.category = format!("{CATEGORY}/{}", kind.name());
        if a.json {
            crate::outln!("{}", serde_json::to_string(&row)?)?;
        }
        rows.push(row);
    }
    if !a.json {
        crate::outln!()?;
        print_table(&rows)?;
        crate::outln!(
            "\nheatmap overlays: {}/heatmaps/<detector>/overlays; re-score them with `kestrel metrics`",
            a.out.display()
        )?;
    }
    Ok(())
}

/// (Re)generate the synthetic dataset. A folder we generated before (marked) is replaced; anything else is left
/// alone and reported, so the demo never deletes user data.
fn prepare_data(data: &Path, seed: u64) -> anyhow::Result<()> {
    if data.exists() {
        if data.join(MARKER).is_file() {
            std::fs::remove_dir_all(data)
                .with_context(|| format!("removing old demo data {}", data.display()))?;
        } else if std::fs::read_dir(data)?.next().is_some() {
            anyhow::bail!(
                "{} exists and was not made by `kestrel demo`; choose another folder with --out",
                data.display()
            );
        }
    }
    std::fs::create_dir_all(data)?;
    std::fs::write(data.join(MARKER), format!("seed = {seed}\n"))?;
    let spec = SyntheticSpec {
        seed,
        ..SyntheticSpec::default()
    };
    write_mvtec_category(data, CATEGORY, &spec)?;
    Ok(())
}
