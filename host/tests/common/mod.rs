//! Helpers shared by the CLI integration tests (each test file is its own crate and includes this module).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kestrel_vision::synthetic::{write_mvtec_category, SyntheticSpec};

/// Run the `kestrel` binary built for this test run, on 2 threads like CI.
pub fn kestrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("spawn kestrel")
}

/// Fail the test with the exit code and both streams unless `out` succeeded.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "kestrel failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Write the synthetic product `widget` (MVTec AD layout) under `dir/data` at 64 px with the given image counts and
/// seed; returns the dataset root.
#[allow(dead_code)] // not every test file writes a product
pub fn product(
    dir: &Path,
    train_good: usize,
    test_good: usize,
    test_defect: usize,
    seed: u64,
) -> PathBuf {
    let root = dir.join("data");
    write_mvtec_category(
        &root,
        "widget",
        &SyntheticSpec {
            size: 64,
            n_train_good: train_good,
            n_test_good: test_good,
            n_test_defect: test_defect,
            seed,
            ..SyntheticSpec::default()
        },
    )
    .expect("synthetic data");
    root
}

/// `kestrel fit` of the synthetic `widget` product under `data` into `model`: narrow ResNet-18 with random weights
/// at 64×64, `detector` (PatchCore keeps a quarter of its patches), JSON output.
#[allow(dead_code)] // not every test file fits a model
pub fn fit_widget(data: &Path, model: &Path, detector: &str) {
    fit_widget_with(data, model, detector, &[]);
}

/// [`fit_widget`] with extra `kestrel fit` arguments.
#[allow(dead_code)] // not every test file fits a model
pub fn fit_widget_with(data: &Path, model: &Path, detector: &str, extra: &[&str]) {
    let mut args = vec![
        "fit",
        "--data",
        data.to_str().unwrap(),
        "--category",
        "widget",
        "--arch",
        "resnet18_narrow",
        "--image-size",
        "64",
        "--detector",
        detector,
        "--coreset-ratio",
        "0.25",
        "-o",
        model.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    assert_success(&kestrel(&args));
}
