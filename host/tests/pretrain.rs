//! Pretraining end to end on problems small enough for seconds: the loss falls, a resumed run continues exactly,
//! and the exported backbone is what `kestrel fit --weights` takes.

use std::path::Path;

mod common;
use common::{assert_success, kestrel};

use candle_core::{Device, Tensor};
use kestrel_host::pretrain::engine;
use kestrel_host::pretrain::{train, Preset, PretrainConfig, RunOptions, TaskKind};
use kestrel_vision::backbone::read_metadata;
use kestrel_vision::backbone::{self, Arch};
use kestrel_vision::synthetic::{write_mvtec_category, SyntheticSpec};

/// A tiny but real problem: narrow ResNet-18 at 32×32.
fn small(task: TaskKind, steps: u64) -> PretrainConfig {
    let mut c = PretrainConfig::preset(task, Preset::Tiny);
    c.image_size = 32;
    c.batch_size = 16;
    c.steps = steps;
    c.warmup_steps = 2;
    c.log_every = 5;
    c.checkpoint_every = 0;
    c.fractal.classes = 4;
    c.fractal.n_iter = 2000;
    c.gmm.render_size = 16;
    c
}

/// `n` good images of a synthetic product (`size` px) under `dir`; returns their folder.
fn good_images(dir: &Path, size: u32, n: usize, seed: u64) -> std::path::PathBuf {
    write_mvtec_category(
        dir,
        "widget",
        &SyntheticSpec {
            size,
            n_train_good: n,
            n_test_good: 0,
            n_test_defect: 0,
            seed,
            ..SyntheticSpec::default()
        },
    )
    .unwrap();
    dir.join("widget/train/good")
}

fn opts(output: &Path) -> RunOptions {
    RunOptions {
        output: output.to_path_buf(),
        resume: None,
        device: Device::Cpu,
        quiet: true,
    }
}

fn csv_losses(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn fractal_classification_loss_falls_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.safetensors");
    // 32 distinct images seen for 20 epochs: the loss must fall (fresh fractals every step need far longer runs
    // than a test can afford to beat chance).
    let mut cfg = small(TaskKind::Fractal, 40);
    cfg.dataset_size = 32;
    cfg.lr = 0.05;
    let report = train(&cfg, &opts(&out)).unwrap();
    let losses = csv_losses(&report.log);
    assert_eq!(losses.len(), 8);
    // Chance is ln 4 = 1.386. The last window must be clearly below the first.
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.75 * first, "loss did not fall: {losses:?}");
}

#[test]
fn gmm_regression_loss_falls_and_every_part_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.safetensors");
    let cfg = small(TaskKind::Gmm, 30);
    let report = train(&cfg, &opts(&out)).unwrap();
    let text = std::fs::read_to_string(&report.log).unwrap();
    assert!(text.starts_with(
        "step,loss,lr,grad_norm,images_per_s,elapsed_s,direct,param,mass,strength,indirect"
    ));
    let losses = csv_losses(&report.log);
    assert!(losses.iter().all(|l| l.is_finite()));
    let head: f64 = losses[..2].iter().sum::<f64>() / 2.0;
    let tail: f64 = losses[losses.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(tail < head, "GMM loss did not fall: {losses:?}");
}

#[test]
fn cutpaste_on_a_products_good_images_learns_and_exports_without_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_images(dir.path(), 96, 12, 3);
    let out = dir.path().join("c.safetensors");
    let mut cfg = small(TaskKind::Cutpaste, 60);
    cfg.cutpaste.normal_images = Some(good);
    cfg.batch_size = 8;
    cfg.dataset_size = 16;
    let report = train(&cfg, &opts(&out)).unwrap();
    let text = std::fs::read_to_string(&report.log).unwrap();
    assert!(text.starts_with("step,loss,lr,grad_norm,images_per_s,elapsed_s,accuracy"));
    let losses = csv_losses(&report.log);
    // Chance is ln 3 = 1.099; 16 samples seen for 30 epochs must be learnt.
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.8 * first, "CutPaste loss did not fall: {losses:?}");
    let w = backbone::read_weights(&out).unwrap();
    assert!(w.keys().all(|k| !k.starts_with("head")), "head exported");
    assert_eq!(read_metadata(&out).unwrap()["kestrel.task"], "cutpaste");
}

#[test]
fn ds2_loss_falls_and_only_the_online_backbone_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_images(dir.path(), 128, 6, 4);
    let out = dir.path().join("d.safetensors");
    let mut cfg = PretrainConfig::preset(TaskKind::Ds2, Preset::Tiny);
    cfg.ds2.normal_images = Some(good);
    cfg.ds2.inner_dim = 64;
    cfg.image_size = 96;
    cfg.batch_size = 6;
    cfg.steps = 16;
    cfg.warmup_steps = 2;
    cfg.log_every = 4;
    cfg.checkpoint_every = 0;
    let report = train(&cfg, &opts(&out)).unwrap();
    let text = std::fs::read_to_string(&report.log).unwrap();
    assert!(text.starts_with("step,loss,lr,grad_norm,images_per_s,elapsed_s,c4,c5,positives"));
    let losses = csv_losses(&report.log);
    // Each scale's loss is −2 × the mean cosine of positive pairs: in [−4, 4] summed; it must fall.
    assert!(
        losses.iter().all(|l| (-4.0..=4.0).contains(l)),
        "{losses:?}"
    );
    assert!(
        losses[losses.len() - 1] < losses[0],
        "DS2 loss did not fall: {losses:?}"
    );
    let w = backbone::read_weights(&out).unwrap();
    assert!(
        w.keys().all(|k| !k.starts_with("head")),
        "head or momentum network exported"
    );
    let init = backbone::random_weights(&cfg.arch.config(), cfg.seed, &Device::Cpu).unwrap();
    assert_eq!(w.len(), init.len(), "exactly the backbone's tensors");
    let moved = (&w["layer4.1.conv2.weight"] - &init["layer4.1.conv2.weight"])
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(moved > 0.0, "the online backbone trained");
}

#[test]
fn multi_task_trains_one_backbone_with_a_head_per_task_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_images(dir.path(), 128, 6, 4);
    let out = dir.path().join("m.safetensors");
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        "image_size = 32\nbatch_size = 4\nlog_every = 2\ncheckpoint_every = 0\n[fractal]\nclasses = 4\nn_iter = 2000\n\
         [gmm]\nrender_size = 16\n[ds2]\ninner_dim = 32\n[multi]\nds2_image_size = 96\n",
    )
    .unwrap();
    let run = kestrel(&[
        "pretrain",
        "multi-task",
        "--config",
        cfg.to_str().unwrap(),
        "--tasks",
        "fractal,gmm,ds2",
        "--task-weights",
        "1,1,0.5",
        "--normal-images",
        good.to_str().unwrap(),
        "--steps",
        "4",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_success(&run);
    let log = std::fs::read_to_string(dir.path().join("m.csv")).unwrap();
    assert!(
        log.starts_with("step,loss,lr,grad_norm,images_per_s,elapsed_s,fractal,gmm,ds2"),
        "{log}"
    );
    // total = fractal + gmm + 0.5·ds2 on every row.
    for row in log.lines().skip(1) {
        let v: Vec<f64> = row.split(',').map(|x| x.parse().unwrap()).collect();
        assert!(
            (v[1] - (v[6] + v[7] + 0.5 * v[8])).abs() < 1e-3 * v[1].abs().max(1.0),
            "{row}"
        );
    }
    let w = backbone::read_weights(&out).unwrap();
    assert!(w.keys().all(|k| !k.starts_with("head")));
    let toml = std::fs::read_to_string(&cfg).unwrap();
    assert!(toml.contains("ds2_image_size"));
    let bad = kestrel(&[
        "pretrain",
        "multi-task",
        "--tasks",
        "fractal,gmm",
        "--task-weights",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("one weight per task"));
}

#[test]
fn resume_from_a_checkpoint_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(TaskKind::MultiFractal, 6);
    cfg.checkpoint_every = 3;
    cfg.log_every = 1;
    let full = dir.path().join("full.safetensors");
    train(&cfg, &opts(&full)).unwrap();
    // The same run, resumed from its step-3 checkpoint into another output.
    let ckpt = engine::checkpoint_root(&full).join("step-0000003");
    assert!(ckpt.join("state.json").is_file());
    let resumed = dir.path().join("resumed.safetensors");
    let report = train(
        &cfg,
        &RunOptions {
            resume: Some(ckpt),
            ..opts(&resumed)
        },
    )
    .unwrap();
    assert_eq!((report.start_step, report.steps), (3, 6));
    let a = candle_core::safetensors::load(&full, &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(&resumed, &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let d = kestrel_vision::testing::max_abs_diff(ta, &b[name]).unwrap();
        assert!(d < 1e-5, "{name} differs by {d} after resume");
    }
    // Resuming into a run of another task is refused.
    let mut other = cfg.clone();
    other.task = TaskKind::Fractal;
    let err = train(
        &other,
        &RunOptions {
            resume: engine::latest_checkpoint(&engine::checkpoint_root(&full)),
            ..opts(&dir.path().join("x.safetensors"))
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot resume"), "{err}");
}

#[test]
fn exported_backbone_has_torchvision_names_metadata_and_no_head() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b.safetensors");
    let cfg = small(TaskKind::Fractal, 2);
    train(&cfg, &opts(&out)).unwrap();
    let filters = image::open(out.with_extension("filters.png")).unwrap();
    assert!(filters.width() > 32 && filters.height() > 32);
    let meta = read_metadata(&out).unwrap();
    assert_eq!(meta["kestrel.preset"], "tiny");
    assert_eq!(meta["kestrel.step"], "2");
    assert_eq!(meta["kestrel.task"], "fractal");
    assert_eq!(meta["kestrel.arch"], "resnet18_narrow");
    let w = backbone::read_weights(&out).unwrap();
    assert!(w.keys().all(|k| !k.starts_with("head")));
    assert!(w.contains_key("layer4.1.bn2.running_var"));
    // Training moved the BatchNorm statistics off their initial values.
    let rm: Tensor = w["bn1.running_mean"].clone();
    assert!(
        rm.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    let net = backbone::resnet_from_weights(
        &Arch::Resnet18Narrow.config(),
        "resnet18_narrow",
        w,
        &out,
        &Device::Cpu,
    );
    assert!(net.is_ok());
}

#[test]
fn cli_pretrain_then_fit_with_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("gmm.safetensors");
    let out = kestrel(&[
        "pretrain",
        "gmm",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--json",
        "-o",
        w.to_str().unwrap(),
    ]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["steps"], 2);
    // A second invocation continues from the newest checkpoint to a longer schedule.
    let out = kestrel(&[
        "pretrain",
        "gmm",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--json",
        "--resume",
        "-o",
        w.to_str().unwrap(),
    ]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["start_step"].as_u64(), report["steps"].as_u64()),
        (Some(2), Some(3))
    );

    let data = dir.path().join("data");
    write_mvtec_category(
        &data,
        "widget",
        &SyntheticSpec {
            size: 64,
            n_train_good: 10,
            n_test_good: 2,
            n_test_defect: 2,
            seed: 3,
            ..SyntheticSpec::default()
        },
    )
    .unwrap();
    let model = dir.path().join("model");
    let out = kestrel(&[
        "fit",
        "--data",
        data.to_str().unwrap(),
        "--category",
        "widget",
        "--arch",
        "resnet18_narrow",
        "--weights",
        w.to_str().unwrap(),
        "--image-size",
        "64",
        "-o",
        model.to_str().unwrap(),
        "--json",
    ]);
    assert_success(&out);
    let toml = std::fs::read_to_string(model.join("model.toml")).unwrap();
    assert!(toml.contains("gmm.safetensors"), "{toml}");

    // The weights' metadata names their architecture: fitting them as another one says which to use.
    let out = kestrel(&[
        "fit",
        "--data",
        data.to_str().unwrap(),
        "--category",
        "widget",
        "--arch",
        "resnet18",
        "--weights",
        w.to_str().unwrap(),
        "--image-size",
        "64",
        "-o",
        dir.path().join("m2").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--arch resnet18_narrow") && err.contains("preset tiny"),
        "{err}"
    );

    // Bad settings: a clear error and the CLI exit code.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "stpes = 3\n").unwrap();
    let out = kestrel(&[
        "pretrain",
        "fractal",
        "--config",
        bad.to_str().unwrap(),
        "-o",
        w.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("stpes"), "{err}");

    // The two-stage recipe from the flags: GMM with visible defects and a 2×2 head, on top of the first run's
    // backbone and the category's good images; the resolved settings record all of it.
    let w2 = dir.path().join("stage2.safetensors");
    let out = kestrel(&[
        "pretrain",
        "gmm",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "64",
        "--defects",
        "medium",
        "--head-grid",
        "2",
        "--normal-images",
        data.join("widget/train/good").to_str().unwrap(),
        "--init-weights",
        w.to_str().unwrap(),
        "--json",
        "-o",
        w2.to_str().unwrap(),
    ]);
    assert_success(&out);
    let settings = std::fs::read_to_string(w2.with_extension("toml")).unwrap();
    for want in [
        "head_grid = 2",
        "preset = \"medium\"",
        "init_weights = ",
        "normal_images = ",
    ] {
        assert!(settings.contains(want), "{want} missing from\n{settings}");
    }
}

#[test]
fn a_run_can_start_from_another_runs_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let fractal = dir.path().join("fractal.safetensors");
    train(&small(TaskKind::Fractal, 3), &opts(&fractal)).unwrap();
    let start = backbone::read_weights(&fractal).unwrap();

    // GMM on top of the fractal backbone, with a learning rate too small to move the weights: its export must
    // still hold the fractal run's convolutions, not the seeded random ones.
    let mut cfg = small(TaskKind::Gmm, 1);
    cfg.lr = 1e-12;
    cfg.warmup_steps = 0;
    cfg.seed = 7;
    cfg.init_weights = Some(fractal.clone());
    let gmm = dir.path().join("gmm.safetensors");
    train(&cfg, &opts(&gmm)).unwrap();
    let after = backbone::read_weights(&gmm).unwrap();
    let diff = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    for name in [
        "conv1.weight",
        "layer2.0.conv1.weight",
        "layer4.1.conv2.weight",
    ] {
        assert!(diff(&start[name], &after[name]) < 1e-6, "{name} moved");
    }
    let random = backbone::random_weights(&Arch::Resnet18Narrow.config(), 7, &Device::Cpu).unwrap();
    assert!(diff(&random["conv1.weight"], &after["conv1.weight"]) > 1e-3);
    assert!(read_metadata(&gmm).unwrap()["kestrel.config"].contains("init_weights"));

    // Another architecture is refused with the one the file holds.
    let mut wrong = small(TaskKind::Gmm, 1);
    wrong.arch = Arch::Resnet18;
    wrong.init_weights = Some(fractal);
    let err = train(&wrong, &opts(&dir.path().join("x.safetensors")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("resnet18_narrow"), "{err}");
}
