//! Parity of kestrel's metrics with scikit-learn (and with a from-the-definition AUPRO written in Python).
//!
//! Fixtures: `tests/fixtures/metrics/<case>/{maps/*.npy, masks/*.png, scores.csv?, expected.json}`, made by
//! `scripts/fixtures/make_metric_fixtures.py` (its header says how to regenerate them). Each case goes through
//! the same entry point as `kestrel metrics` ([`evaluate_dirs_with`]), once with the default memory budget and once
//! with the minimum budget, which forces the exact pixel metrics through many passes over the files.

use std::path::{Path, PathBuf};

use kestrel_vision::metrics::{
    evaluate_dirs_with, pixel_metrics, MapDirs, MetricsReport, PixelMetricsOptions,
    MIN_MEMORY_BUDGET,
};
use serde_json::Value;

const CASES: &[&str] = &[
    "random",
    "ties",
    "regions",
    "csv_scores",
    "no_defects",
    "all_defective",
];

/// |kestrel − sklearn| allowed for AUROC, F1 and the threshold.
const TOL: f64 = 1e-6;
/// |kestrel − reference| allowed for AUPRO.
const TOL_AUPRO: f64 = 1e-4;

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metrics")
        .join(case)
}

fn expected(case: &str) -> Value {
    let text = std::fs::read_to_string(case_dir(case).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn run(case: &str, memory_budget: usize) -> MetricsReport {
    let dir = case_dir(case);
    let csv = dir.join("scores.csv");
    let options = PixelMetricsOptions {
        memory_budget,
        ..PixelMetricsOptions::default()
    };
    evaluate_dirs_with(
        &dir.join("maps"),
        &dir.join("masks"),
        csv.exists().then_some(csv.as_path()),
        &options,
    )
    .unwrap_or_else(|e| panic!("{case}: {e}"))
}

/// Compares an optional metric with its JSON value (`null` = undefined) and returns the absolute difference.
fn check(case: &str, field: &str, got: Option<f64>, want: &Value, tol: f64) -> f64 {
    match (got, want.as_f64()) {
        (None, None) if want.is_null() => 0.0,
        (Some(g), Some(w)) => {
            let diff = (g - w).abs();
            assert!(
                diff <= tol,
                "{case}.{field}: kestrel {g} vs reference {w} (|diff| {diff:e} > {tol:e})"
            );
            diff
        }
        _ => panic!("{case}.{field}: kestrel {got:?} vs reference {want}"),
    }
}

#[test]
fn matches_sklearn_on_every_case() {
    let mut worst = [0.0f64; 5];
    for case in CASES {
        let want = expected(case);
        let got = run(case, PixelMetricsOptions::default().memory_budget);
        let diffs = [
            check(
                case,
                "image_auroc",
                got.image_auroc,
                &want["image_auroc"],
                TOL,
            ),
            check(
                case,
                "pixel_auroc",
                got.pixel_auroc,
                &want["pixel_auroc"],
                TOL,
            ),
            check(case, "f1_max", got.f1_max, &want["f1_max"], TOL),
            check(
                case,
                "threshold",
                Some(got.threshold),
                &want["threshold"],
                TOL,
            ),
            check(case, "aupro", got.aupro, &want["aupro"], TOL_AUPRO),
        ];
        assert_eq!(Some(got.images), want["images"].as_u64(), "{case}.images");
        assert_eq!(Some(got.pixels), want["pixels"].as_u64(), "{case}.pixels");
        eprintln!(
            "{case:>14}: |diff| image_auroc {:.1e} pixel_auroc {:.1e} f1_max {:.1e} threshold {:.1e} aupro {:.1e}",
            diffs[0], diffs[1], diffs[2], diffs[3], diffs[4]
        );
        for (w, d) in worst.iter_mut().zip(diffs) {
            *w = w.max(d);
        }
    }
    eprintln!(
        "{:>14}: |diff| image_auroc {:.1e} pixel_auroc {:.1e} f1_max {:.1e} threshold {:.1e} aupro {:.1e}",
        "worst", worst[0], worst[1], worst[2], worst[3], worst[4]
    );
}

#[test]
fn region_labelling_matches_scipy() {
    for case in CASES {
        let want = expected(case);
        let dir = case_dir(case);
        let source = MapDirs::open(&dir.join("maps"), &dir.join("masks")).unwrap();
        let got = pixel_metrics(&source, &PixelMetricsOptions::default()).unwrap();
        assert_eq!(
            Some(got.regions),
            want["regions"].as_u64(),
            "{case}.regions"
        );
        assert_eq!(
            Some(got.anomalous_pixels),
            want["anomalous_pixels"].as_u64(),
            "{case}.anomalous_pixels"
        );
    }
}

#[test]
fn tiny_memory_budget_gives_identical_results() {
    for case in CASES {
        let large = run(case, 1 << 30);
        let tiny = run(case, 0);
        // AUROC areas are exact integers until the last division: bit-identical for every budget.
        assert_eq!(large.pixel_auroc, tiny.pixel_auroc, "{case}.pixel_auroc");
        assert_eq!(large.image_auroc, tiny.image_auroc, "{case}.image_auroc");
        assert_eq!(large.f1_max, tiny.f1_max, "{case}.f1_max");
        assert_eq!(large.threshold, tiny.threshold, "{case}.threshold");
        assert_eq!((large.images, large.pixels), (tiny.images, tiny.pixels));
        // AUPRO sums floating-point trapezoids in a different grouping: equal up to rounding.
        match (large.aupro, tiny.aupro) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "{case}.aupro: {a} vs {b}"),
            (a, b) => assert_eq!(a, b, "{case}.aupro"),
        }
    }

    // And the tiny budget really does take the multi-pass path.
    let dir = case_dir("random");
    let source = MapDirs::open(&dir.join("maps"), &dir.join("masks")).unwrap();
    let tiny = PixelMetricsOptions {
        memory_budget: MIN_MEMORY_BUDGET,
        ..PixelMetricsOptions::default()
    };
    let passes_tiny = pixel_metrics(&source, &tiny).unwrap().passes;
    let passes_large = pixel_metrics(&source, &PixelMetricsOptions::default())
        .unwrap()
        .passes;
    assert!(
        passes_tiny > 10,
        "only {passes_tiny} passes with a {MIN_MEMORY_BUDGET}-byte budget"
    );
    assert!(
        passes_large <= 2,
        "{passes_large} passes with the default budget"
    );
    eprintln!("random: {passes_tiny} passes at {MIN_MEMORY_BUDGET} B, {passes_large} at the default budget");
}
