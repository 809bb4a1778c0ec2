//! `kestrel pretrain`: resolve the settings (preset, then TOML file, then flags), train, report.

use std::path::PathBuf;

use anyhow::Context;
use kestrel_vision::backbone::Arch;

use crate::cli::PretrainArgs;
use crate::pretrain::{engine, PretrainConfig, RunOptions, TaskKind};

/// The configuration a command line asks for.
pub fn resolve(a: &PretrainArgs) -> anyhow::Result<PretrainConfig> {
    let mut cfg = PretrainConfig::preset(a.task, a.preset);
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the settings file {}", path.display()))?;
        cfg = cfg.overlay_toml(&text, path)?;
        // The task on the command line wins over a `task` key in the file.
        cfg.task = a.task;
    }
    if let Some(v) = a.steps {
        cfg.steps = v;
        // Keep the warm-up a sensible share of a shortened run.
        cfg.warmup_steps = cfg.warmup_steps.min(v / 20);
    }
    if let Some(v) = a.batch_size {
        cfg.batch_size = v;
    }
    if let Some(v) = a.lr {
        cfg.lr = v;
    }
    if let Some(v) = a.image_size {
        cfg.image_size = v;
        cfg.gmm.render_size = cfg.gmm.render_size.min(v);
    }
    if let Some(v) = a.seed {
        cfg.seed = v;
    }
    if let Some(v) = &a.arch {
        cfg.arch = Arch::parse(v)?;
    }
    if let Some(v) = a.optimizer {
        cfg.optimizer.kind = v;
    }
    if let Some(v) = a.classes {
        cfg.fractal.classes = v;
    }
    if let Some(v) = &a.normal_images {
        match cfg.task {
            TaskKind::Cutpaste => cfg.cutpaste.normal_images = Some(v.clone()),
            TaskKind::Ds2 => cfg.ds2.normal_images = Some(v.clone()),
            TaskKind::MultiTask => {
                cfg.gmm.normal_images = Some(v.clone());
                cfg.cutpaste.normal_images = Some(v.clone());
                cfg.ds2.normal_images = Some(v.clone());
            }
            _ => cfg.gmm.normal_images = Some(v.clone()),
        }
    }
    if let Some(t) = &a.tasks {
        cfg.multi.tasks = t.clone();
        if a.task_weights.is_none() {
            cfg.multi.weights = vec![1.0; t.len()];
        }
    }
    if let Some(w) = &a.task_weights {
        cfg.multi.weights = w.clone();
    }
    if (a.tasks.is_some() || a.task_weights.is_some()) && cfg.task != TaskKind::MultiTask {
        anyhow::bail!("--tasks and --task-weights apply to `kestrel pretrain multi-task` only");
    }
    if let Some(v) = a.matching {
        cfg.gmm.matching = v;
    }
    if let Some(v) = a.defects {
        cfg.gmm.preset = v;
    }
    if let Some(v) = a.head_grid {
        cfg.head_grid = v;
    }
    if let Some(v) = &a.init_weights {
        cfg.init_weights = Some(v.clone());
    }
    if let Some(v) = a.checkpoint_every {
        cfg.checkpoint_every = v;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `kestrel pretrain`.
pub fn run(a: &PretrainArgs) -> anyhow::Result<()> {
    let cfg = resolve(a)?;
    let device = kestrel_vision::device::parse_device(&a.device)?;
    let resume = match &a.resume {
        None => None,
        Some(p) if p.as_os_str() == "latest" && !p.exists() => {
            let root = engine::checkpoint_root(&a.output);
            Some(engine::latest_checkpoint(&root).with_context(|| {
                format!(
                    "--resume: no checkpoint under {} (give the checkpoint directory explicitly)",
                    root.display()
                )
            })?)
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    if !a.json {
        eprintln!(
            "pretrain {}: {} at {}×{}, batch {}, {} steps, {:?} lr {} (preset {:?}){}",
            cfg.task.name(),
            cfg.arch,
            cfg.image_size,
            cfg.image_size,
            cfg.batch_size,
            cfg.steps,
            cfg.optimizer.kind,
            cfg.lr,
            cfg.preset,
            resume
                .as_ref()
                .map(|r| format!(", resuming from {}", r.display()))
                .unwrap_or_default()
        );
    }
    let report = engine::train(
        &cfg,
        &RunOptions {
            output: a.output.clone(),
            resume,
            device,
            quiet: a.json,
        },
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        crate::outln!(
            "wrote {} ({} steps; loss {:.4} → {:.4}; {:.1} images/s; {:.0} s)\nlog {}, settings {}",
            report.output.display(),
            report.steps,
            report.first_loss,
            report.last_loss,
            report.images_per_second,
            report.seconds,
            report.log.display(),
            a.output.with_extension("toml").display()
        )?;
        crate::outln!(
            "use it: kestrel fit --arch {} --weights {} --data ... -o ...",
            cfg.arch,
            report.output.display()
        )?;
    }
    Ok(())
}
