//! Ledoit–Wolf parity with scikit-learn on recorded fixtures (made by scripts/fixtures/make_ledoit_wolf_fixtures.py:
//! sklearn.covariance.LedoitWolf fitted on the same float32 samples, in float64).

use std::path::Path;

use kestrel_vision::stats::LedoitWolfFit;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    n: usize,
    p: usize,
    x: Vec<f32>,
    location: Vec<f64>,
    covariance: Vec<f64>,
    shrinkage: f64,
}

fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-9 * scale.max(1e-300)
}

#[test]
fn matches_scikit_learn_on_every_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ledoit_wolf");
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).expect("fixture directory") {
        let path = entry.unwrap().path();
        let c: Case = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(c.x.len(), c.n * c.p, "{name}: fixture shape");
        // In uneven batches, as a detector streams them.
        let mut fit = LedoitWolfFit::new(c.p).unwrap();
        for chunk in c.x.chunks(7 * c.p) {
            fit.add(chunk).unwrap();
        }
        let g = fit.finish().unwrap();
        assert!(
            (g.shrinkage - c.shrinkage).abs() < 1e-9,
            "{name}: shrinkage {} vs sklearn {}",
            g.shrinkage,
            c.shrinkage
        );
        let loc_scale = c.location.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.mean.iter().zip(&c.location).enumerate() {
            assert!(close(*a, *b, loc_scale), "{name}: location[{i}] {a} vs {b}");
        }
        let cov_scale = c.covariance.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.covariance.iter().zip(&c.covariance).enumerate() {
            assert!(
                close(*a, *b, cov_scale),
                "{name}: covariance[{}, {}] {a} vs {b}",
                i / c.p,
                i % c.p
            );
        }
        cases += 1;
    }
    assert!(
        cases >= 6,
        "only {cases} fixtures found in {}",
        dir.display()
    );
}
