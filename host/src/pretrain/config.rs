//! Pretraining configuration: tasks, presets, and how a TOML file and flags layer over a preset.
//!
//! Every hyperparameter lives in [`PretrainConfig`]. A run starts from a preset (`tiny` for a 2-core CPU in
//! minutes, `paper` for a GPU at paper scale), then a TOML file may replace any subset of fields (unknown keys are
//! refused, so a typo cannot be silently ignored), then flags replace single fields. The resolved configuration is
//! written next to the weights and into every checkpoint, so a run can be reproduced or resumed exactly.

use std::path::PathBuf;

use kestrel_vision::backbone::Arch;
use serde::{Deserialize, Serialize};

use super::gmm_loss::Matching;
use super::optim::{OptimizerConfig, OptimizerKind};
use super::PretrainError;
use crate::synth::gmm::GmmPreset;
pub use crate::synth::TaskKind;

/// Named starting points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Narrow ResNet-18 at 64×64: minutes on a 2-core CPU (docs/pretraining.md, "Training").
    Tiny,
    /// ResNet-18 at 128×128, 200 classes, 3000 steps: about an hour on a 2-core CPU.
    Small,
    /// Wide-ResNet-50-2 at 256×256, 1000 classes: paper scale, for a GPU.
    Paper,
}

/// Fractal task settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FractalTaskConfig {
    /// Number of classes (IFS codes).
    pub classes: usize,
    /// Chaos-game iterations per image (0: the generator's default for the image size).
    pub n_iter: usize,
}

/// GMM task settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GmmTaskConfig {
    /// Pseudo-defect distribution.
    pub preset: GmmPreset,
    /// Good images to blend defects into (a folder of images); generated textures when absent.
    pub normal_images: Option<PathBuf>,
    /// How predicted components are matched to true ones in the direct loss.
    pub matching: Matching,
    /// Weight λ of the re-render loss (0 disables it).
    pub lambda_indirect: f64,
    /// Weight of the opacity term inside the re-render loss.
    pub lambda_alpha: f64,
    /// Side at which the re-render loss renders (≤ image size; smaller is cheaper).
    pub render_size: usize,
}

/// CutPaste task settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CutPasteTaskConfig {
    /// Good images of the product (a folder of images); generated textures when absent.
    pub normal_images: Option<PathBuf>,
    /// Each sample is a square crop of this share of a good image's shorter side squared (CutPaste's patch-level
    /// variant: 64 px crops of 256 px images, 1/16).
    pub crop_area: [f64; 2],
    /// Hidden widths of the classification head (CutPaste: 512, 128), each a linear layer and ReLU.
    pub head_hidden: Vec<usize>,
}

impl Default for CutPasteTaskConfig {
    fn default() -> Self {
        Self {
            normal_images: None,
            crop_area: [1.0 / 16.0, 1.0 / 4.0],
            head_hidden: vec![512, 128],
        }
    }
}

/// DS2 task settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ds2TaskConfig {
    /// Good images of the product(s) (a folder of images); generated textures when absent.
    pub normal_images: Option<PathBuf>,
    /// RandomResizedCrop area range of each view (DS2: 0.08–1 at 224 px; 0.2–1 for small images).
    pub crop_scale: [f64; 2],
    /// Projector inner width (DS2: 4096; narrower for small batches, whose BatchNorm statistics are noisy).
    pub inner_dim: usize,
    /// Projection width (256).
    pub out_dim: usize,
    /// Sharpness γ of the propagation similarity (2).
    pub gamma: f64,
    /// Positive-pair radius in bin diagonals (DS2: 0.1; PixPro: 0.7).
    pub radius: f32,
    /// Starting momentum of the moving-average networks (0.99, to 1 on a cosine).
    pub momentum: f64,
}

impl Default for Ds2TaskConfig {
    fn default() -> Self {
        Self {
            normal_images: None,
            crop_scale: [0.2, 1.0],
            inner_dim: 512,
            out_dim: 256,
            gamma: 2.0,
            radius: 0.1,
            momentum: 0.99,
        }
    }
}

/// Multi-task settings: one backbone, one head per task, the weighted sum of the task losses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultiTaskConfig {
    /// The tasks (any but `multi-task`, each once).
    pub tasks: Vec<TaskKind>,
    /// Loss weight per task, in the same order.
    pub weights: Vec<f64>,
    /// Input side of the DS2 task's views (its c5 map needs at least 96 px while the others train at
    /// `image_size`).
    pub ds2_image_size: usize,
}

impl Default for MultiTaskConfig {
    fn default() -> Self {
        Self {
            tasks: vec![TaskKind::Fractal, TaskKind::Gmm, TaskKind::Ds2],
            weights: vec![1.0, 1.0, 0.5],
            ds2_image_size: 128,
        }
    }
}

/// Everything that determines a pretraining run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Task.
    pub task: TaskKind,
    /// Preset the run started from (recorded in the weights' metadata).
    pub preset: Preset,
    /// Backbone architecture.
    pub arch: Arch,
    /// Input side in pixels.
    pub image_size: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Optimiser steps.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak (cosine schedule).
    pub final_lr_fraction: f64,
    /// Optimiser.
    pub optimizer: OptimizerConfig,
    /// Clip the global gradient norm to this (none: no clipping).
    pub clip_grad_norm: Option<f64>,
    /// Seed of weights initialisation and of every generated sample.
    pub seed: u64,
    /// Distinct samples: step `s` draws samples `s·B .. (s+1)·B` modulo this (a fixed dataset seen for several
    /// epochs, as FractalDB does); 0 draws fresh samples forever.
    #[serde(default)]
    pub dataset_size: u64,
    /// Start the backbone from these weights (a `kestrel pretrain` output or torchvision-named safetensors of the
    /// same architecture) instead of the seeded random initialisation; the task head always starts fresh. Lets one
    /// task continue another, e.g. GMM regression on top of fractal classification.
    #[serde(default)]
    pub init_weights: Option<PathBuf>,
    /// The head sees the last stage average-pooled to a `head_grid × head_grid` grid, flattened (1: global
    /// average pooling). Global pooling throws away *where* things are, which the GMM task must regress (the
    /// means of the mixture); a 2×2 grid keeps the quadrant. Needs `image_size / 32` divisible by it.
    #[serde(default = "one")]
    pub head_grid: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Batches prepared ahead by the loader thread.
    pub prefetch: usize,
    /// Write a CSV row every this many steps.
    pub log_every: u64,
    /// Fractal and multi-fractal settings.
    pub fractal: FractalTaskConfig,
    /// GMM settings.
    pub gmm: GmmTaskConfig,
    /// CutPaste settings.
    #[serde(default)]
    pub cutpaste: CutPasteTaskConfig,
    /// DS2 settings.
    #[serde(default)]
    pub ds2: Ds2TaskConfig,
    /// Multi-task settings.
    #[serde(default)]
    pub multi: MultiTaskConfig,
}

fn one() -> usize {
    1
}

impl PretrainConfig {
    /// The preset's configuration for `task`.
    pub fn preset(task: TaskKind, preset: Preset) -> Self {
        // Fractal recipes use SGD at lr 0.1 for batches of 256 (FractalDB); tiny's batch of 32 takes the linearly
        // scaled 0.0125–0.025 (at 0.1 the loss stayed above chance for the first hundred steps). GMM: AdamW 1e-3.
        // CutPaste: SGD lr 0.03, momentum 0.9, weight decay 3e-5, cosine (its paper's recipe, batch 96 × 3).
        let (optimizer, lr) = match (task, preset) {
            (TaskKind::Gmm, _) => (OptimizerConfig::adamw(), 1e-3),
            (TaskKind::Cutpaste, _) => (
                OptimizerConfig {
                    weight_decay: 3e-5,
                    ..OptimizerConfig::sgd()
                },
                0.03,
            ),
            // DS2 trains with LARS at 2.0 for batches of 256; plain SGD with momentum needs far less (0.5 diverged
            // in a tiny run): 0.05 with weight decay 1e-5.
            (TaskKind::Ds2, _) => (
                OptimizerConfig {
                    weight_decay: 1e-5,
                    ..OptimizerConfig::sgd()
                },
                0.05,
            ),
            (_, Preset::Tiny | Preset::Small) => (OptimizerConfig::sgd(), 0.025),
            (_, Preset::Paper) => (OptimizerConfig::sgd(), 0.1),
        };
        let gmm = GmmTaskConfig {
            preset: GmmPreset::Subtle,
            normal_images: None,
            matching: Matching::Nearest,
            lambda_indirect: 1.0,
            lambda_alpha: 1.0,
            render_size: 32,
        };
        let mut c = match preset {
            Preset::Tiny => Self {
                task,
                preset,
                arch: Arch::Resnet18Narrow,
                image_size: 64,
                batch_size: 32,
                steps: 1000,
                lr,
                warmup_steps: 50,
                final_lr_fraction: 0.0,
                optimizer,
                clip_grad_norm: Some(5.0),
                seed: 0,
                dataset_size: 0,
                init_weights: None,
                head_grid: 1,
                checkpoint_every: 200,
                keep_checkpoints: 2,
                prefetch: 2,
                log_every: 10,
                fractal: FractalTaskConfig {
                    classes: 100,
                    n_iter: 0,
                },
                gmm,
                cutpaste: CutPasteTaskConfig::default(),
                ds2: Ds2TaskConfig::default(),
                multi: MultiTaskConfig::default(),
            },
            Preset::Small => Self {
                preset,
                arch: Arch::Resnet18,
                image_size: 128,
                steps: 3000,
                warmup_steps: 150,
                checkpoint_every: 250,
                fractal: FractalTaskConfig {
                    classes: 200,
                    n_iter: 0,
                },
                gmm: GmmTaskConfig {
                    render_size: 32,
                    ..gmm
                },
                ..Self::preset(task, Preset::Tiny)
            },
            Preset::Paper => Self {
                task,
                preset,
                arch: Arch::WideResnet50_2,
                image_size: 256,
                batch_size: 256,
                steps: 350_000,
                lr,
                warmup_steps: 2000,
                final_lr_fraction: 0.0,
                optimizer,
                clip_grad_norm: None,
                seed: 0,
                dataset_size: 0,
                init_weights: None,
                head_grid: 1,
                checkpoint_every: 5000,
                keep_checkpoints: 3,
                prefetch: 4,
                log_every: 50,
                fractal: FractalTaskConfig {
                    classes: 1000,
                    n_iter: 0,
                },
                gmm: GmmTaskConfig {
                    render_size: 64,
                    ..gmm
                },
                cutpaste: CutPasteTaskConfig::default(),
                ds2: Ds2TaskConfig {
                    crop_scale: [0.08, 1.0],
                    inner_dim: 4096,
                    ..Ds2TaskConfig::default()
                },
                multi: MultiTaskConfig {
                    ds2_image_size: 256,
                    ..MultiTaskConfig::default()
                },
            },
        };
        if task == TaskKind::MultiTask {
            // Three forward/backward passes per step, DS2's at 128 px: the length of a DS2 run.
            c.steps = c.steps.min(400);
            c.warmup_steps = c.warmup_steps.min(20);
            c.checkpoint_every = c.checkpoint_every.min(100);
        }
        if task == TaskKind::Ds2 && preset == Preset::Tiny {
            // At 64 px c5 is 2×2 and the propagation has nothing to propagate: DS2 tiny runs at 128 px (c4 8×8,
            // c5 4×4), for 400 steps of 32 pairs.
            c.image_size = 128;
            c.steps = 400;
            c.warmup_steps = 20;
            c.checkpoint_every = 100;
        }
        c
    }

    /// Images the network sees per step: CutPaste shows each sample three times (normal, cut-paste, scar), DS2
    /// twice (two views), multi-task the sum over its tasks.
    pub fn images_per_step(&self) -> usize {
        match self.task {
            TaskKind::Cutpaste => 3 * self.batch_size,
            TaskKind::Ds2 => 2 * self.batch_size,
            TaskKind::MultiTask => self
                .multi
                .tasks
                .iter()
                .map(|&t| self.subtask(t).images_per_step())
                .sum(),
            _ => self.batch_size,
        }
    }

    /// The configuration of one task of a multi-task run: this one with `task` set (and DS2's view size).
    pub fn subtask(&self, task: TaskKind) -> PretrainConfig {
        let mut c = self.clone();
        c.task = task;
        if task == TaskKind::Ds2 && self.task == TaskKind::MultiTask {
            c.image_size = self.multi.ds2_image_size;
        }
        if task != TaskKind::Gmm {
            // The pooling grid is the GMM head's (where a stain is); the other heads pool globally.
            c.head_grid = 1;
        }
        c
    }

    /// Layer a TOML document over this configuration: any subset of fields, nested tables merged key by key.
    pub fn overlay_toml(
        &self,
        text: &str,
        origin: &std::path::Path,
    ) -> Result<Self, PretrainError> {
        let bad = |detail: String| PretrainError::Config {
            path: origin.to_path_buf(),
            detail,
        };
        let user: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut base = toml::Table::try_from(self).map_err(|e| bad(e.to_string()))?;
        merge(&mut base, user);
        toml::Value::Table(base)
            .try_into::<Self>()
            .map_err(|e| bad(e.to_string()))
            .and_then(|c| {
                c.validate().map_err(|e| match e {
                    PretrainError::Invalid { key, detail } => bad(format!("{key}: {detail}")),
                    other => other,
                })?;
                Ok(c)
            })
    }

    /// Check the ranges; the error names the key.
    pub fn validate(&self) -> Result<(), PretrainError> {
        let bad = |key: &str, detail: String| {
            Err(PretrainError::Invalid {
                key: key.to_string(),
                detail,
            })
        };
        if !(32..=1024).contains(&self.image_size) {
            return bad(
                "image_size",
                format!("must be 32–1024 pixels, got {}", self.image_size),
            );
        }
        let last = self.image_size / 32;
        if self.head_grid == 0
            || (self.head_grid > 1
                && (!last.is_multiple_of(self.head_grid) || !self.image_size.is_multiple_of(32)))
        {
            return bad(
                "head_grid",
                format!(
                    "must divide the last stage's side ({}×{} at image_size {}; image_size must be a multiple of \
                     32), got {}",
                    last, last, self.image_size, self.head_grid
                ),
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", format!("must be a positive number, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.final_lr_fraction) {
            return bad(
                "final_lr_fraction",
                format!("must be in [0, 1], got {}", self.final_lr_fraction),
            );
        }
        if let Some(c) = self.clip_grad_norm {
            if c.is_nan() || c <= 0.0 {
                return bad("clip_grad_norm", format!("must be positive, got {c}"));
            }
        }
        let o = &self.optimizer;
        if !(0.0..1.0).contains(&o.momentum) || o.weight_decay < 0.0 {
            return bad(
                "optimizer",
                "momentum must be in [0, 1) and weight_decay ≥ 0".into(),
            );
        }
        if o.kind == OptimizerKind::Adamw
            && !((0.0..1.0).contains(&o.beta1) && (0.0..1.0).contains(&o.beta2))
        {
            return bad("optimizer", "beta1 and beta2 must be in [0, 1)".into());
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints", "must keep at least one".into());
        }
        if self.prefetch == 0 || self.log_every == 0 {
            return bad("prefetch/log_every", "must be at least 1".into());
        }
        if matches!(self.task, TaskKind::Fractal | TaskKind::MultiFractal)
            && self.fractal.classes < 2
        {
            return bad(
                "fractal.classes",
                format!("need at least 2 classes, got {}", self.fractal.classes),
            );
        }
        let g = &self.gmm;
        if self.task == TaskKind::Gmm {
            if g.render_size < 8 || g.render_size > self.image_size {
                return bad(
                    "gmm.render_size",
                    format!(
                        "must be between 8 and image_size ({}), got {}",
                        self.image_size, g.render_size
                    ),
                );
            }
            if g.lambda_indirect < 0.0 || g.lambda_alpha < 0.0 {
                return bad("gmm.lambda_indirect", "loss weights must be ≥ 0".into());
            }
        }
        if self.task == TaskKind::Cutpaste {
            let a = self.cutpaste.crop_area;
            if !(a[0] > 0.0 && a[0] <= a[1] && a[1] <= 1.0) {
                return bad(
                    "cutpaste.crop_area",
                    format!("need 0 < low ≤ high ≤ 1, got {a:?}"),
                );
            }
            if self.cutpaste.head_hidden.contains(&0) {
                return bad("cutpaste.head_hidden", "widths must be at least 1".into());
            }
        }
        if self.task == TaskKind::MultiTask {
            let m = &self.multi;
            if m.tasks.is_empty() || m.tasks.len() != m.weights.len() {
                return bad(
                    "multi.tasks",
                    format!(
                        "need one or more tasks and one weight per task, got {} tasks and {} weights",
                        m.tasks.len(),
                        m.weights.len()
                    ),
                );
            }
            for (i, t) in m.tasks.iter().enumerate() {
                if *t == TaskKind::MultiTask || m.tasks[..i].contains(t) {
                    return bad(
                        "multi.tasks",
                        format!("`{}` cannot be a task here (nested, or twice)", t.name()),
                    );
                }
            }
            if m.weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
                || m.weights.iter().sum::<f64>() <= 0.0
            {
                return bad(
                    "multi.weights",
                    format!("need weights ≥ 0 that are not all 0, got {:?}", m.weights),
                );
            }
            for &t in &m.tasks {
                self.subtask(t).validate()?;
            }
        }
        if self.task == TaskKind::Ds2 {
            let d = &self.ds2;
            if self.image_size < 96 {
                return bad(
                    "image_size",
                    format!(
                        "DS2 needs at least 96 px (its c5 map is image_size / 32 positions a side), got {}",
                        self.image_size
                    ),
                );
            }
            if d.inner_dim == 0
                || d.out_dim == 0
                || d.gamma.is_nan()
                || d.gamma <= 0.0
                || d.radius.is_nan()
                || d.radius <= 0.0
            {
                return bad(
                    "ds2",
                    "inner_dim, out_dim, gamma and radius must be positive".into(),
                );
            }
            if !(0.0..1.0).contains(&d.momentum) {
                return bad(
                    "ds2.momentum",
                    format!("must be in [0, 1), got {}", d.momentum),
                );
            }
            let c = d.crop_scale;
            if !(c[0] > 0.0 && c[0] <= c[1] && c[1] <= 1.0) {
                return bad(
                    "ds2.crop_scale",
                    format!("need 0 < low ≤ high ≤ 1, got {c:?}"),
                );
            }
        }
        Ok(())
    }
}

/// Recursive table merge: `over` wins, nested tables merge.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn presets_validate_and_toml_overrides_a_subset() {
        for task in [
            TaskKind::Fractal,
            TaskKind::MultiFractal,
            TaskKind::Gmm,
            TaskKind::Cutpaste,
            TaskKind::Ds2,
            TaskKind::MultiTask,
        ] {
            for preset in [Preset::Tiny, Preset::Small, Preset::Paper] {
                PretrainConfig::preset(task, preset).validate().unwrap();
            }
        }
        let base = PretrainConfig::preset(TaskKind::Gmm, Preset::Tiny);
        let c = base
            .overlay_toml(
                "steps = 7\n[optimizer]\nweight_decay = 0.0\n[gmm]\nmatching = \"hungarian\"\n",
                Path::new("x.toml"),
            )
            .unwrap();
        assert_eq!(c.steps, 7);
        assert_eq!(c.optimizer.weight_decay, 0.0);
        assert_eq!(c.optimizer.kind, OptimizerKind::Adamw); // untouched keys keep the preset's value
        assert_eq!(c.gmm.matching, Matching::Hungarian);
        assert_eq!(c.batch_size, base.batch_size);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let base = PretrainConfig::preset(TaskKind::Fractal, Preset::Tiny);
        let e = base
            .overlay_toml("stesp = 7\n", Path::new("run.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.toml") && e.contains("stesp"), "{e}");
        let e = base.overlay_toml("[gmm]\nrender_size = 4\n", Path::new("run.toml"));
        assert!(
            e.is_ok(),
            "gmm settings are not checked for the fractal task"
        );
        let g = PretrainConfig::preset(TaskKind::Gmm, Preset::Tiny);
        let e = g
            .overlay_toml("[gmm]\nrender_size = 4\n", Path::new("run.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gmm.render_size"), "{e}");
        let e = base
            .overlay_toml("lr = -1.0\n", Path::new("run.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lr"), "{e}");
        // 64 px leaves a 2×2 last stage: grids 1 and 2 fit, 3 does not.
        assert!(g
            .overlay_toml("head_grid = 2\n", Path::new("run.toml"))
            .is_ok());
        for bad in [
            "head_grid = 3\n",
            "head_grid = 0\n",
            "image_size = 80\nhead_grid = 2\n",
        ] {
            let e = g
                .overlay_toml(bad, Path::new("run.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("head_grid"), "{bad}: {e}");
        }
    }
}
