//! The synthetic generator writes a valid MVTec category that the dataset reader opens with the right counts,
//! masks that match the defects, and images that pre-process to the expected tensor shape.

mod dataset_util;

use dataset_util::Root;
use kestrel_vision::dataset::{open, Layout, LayoutChoice, Mask};
use kestrel_vision::preprocess::{preprocess, PreprocessConfig};
use kestrel_vision::synthetic::{
    write_mvtec_category, DefectKind, Product, SyntheticError, SyntheticSpec,
};

#[test]
fn generated_category_reads_back_with_counts_and_masks() {
    let r = Root::new();
    let spec = SyntheticSpec {
        size: 64,
        n_train_good: 10,
        n_test_good: 4,
        n_test_defect: 9,
        seed: 42,
        ..SyntheticSpec::default()
    };
    let summary = write_mvtec_category(r.path(), "fabric", &spec).unwrap();
    assert_eq!(summary.category_dir, r.path().join("fabric"));
    assert_eq!((summary.train_good, summary.test_good), (10, 4));
    // 9 defects round-robin over the 4 kinds in `ALL` order: the first kind gets the extra one.
    assert_eq!(
        summary.test_defects,
        vec![
            (DefectKind::Hole, 3),
            (DefectKind::MissingTexture, 2),
            (DefectKind::Scratch, 2),
            (DefectKind::Stain, 2),
        ]
    );
    assert_eq!(summary.files_written, 10 + 4 + 2 * 9);

    let ds = open(r.path(), None, LayoutChoice::Auto).unwrap();
    assert_eq!(ds.layout, Layout::Mvtec);
    assert_eq!(ds.category, "fabric");
    assert_eq!(ds.train.len(), 10);
    assert_eq!(ds.test.iter().filter(|s| s.is_good()).count(), 4);
    assert_eq!(
        ds.defect_types(),
        ["hole", "missing_texture", "scratch", "stain"]
    );
    assert!(
        ds.skipped.is_empty() && ds.warnings.is_empty(),
        "{:?}",
        ds.warnings
    );

    let report = ds.inspect().unwrap();
    assert_eq!(report.masks_checked, 9);
    assert_eq!(report.image_sizes.get(&(64, 64)), Some(&23));
    assert!(!report.conversions.any_converted());

    // Each mask read back from disk equals the in-memory one, and marks a visible difference from a good image.
    let product = Product::new(64, 42).unwrap();
    for s in ds.test.iter().filter(|s| !s.is_good()) {
        let img = s.load().unwrap().image;
        let mask: Mask = s.load_mask(img.width(), img.height()).unwrap().unwrap();
        assert!(mask.any(), "{} has an empty mask", s.name);
        assert!(mask.data.iter().all(|&v| v <= 1));
        let kind: DefectKind = s.defect_type.as_deref().unwrap().parse().unwrap();
        // The writer numbers defects globally in round-robin order; find this one's index.
        let k: usize = s
            .path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .parse()
            .unwrap();
        let pos = spec.defect_kinds.iter().position(|&d| d == kind).unwrap();
        let index = (k * spec.defect_kinds.len() + pos) as u64;
        let (expected_img, expected_mask) = product.defective(index, kind);
        assert_eq!(img, expected_img, "{}", s.name);
        assert_eq!(mask, expected_mask, "{}", s.name);
    }

    // Pre-processing a generated image gives a CHW tensor of the configured size.
    let cfg = PreprocessConfig {
        image_size: 32,
        ..PreprocessConfig::default()
    };
    let x = preprocess(&ds.train[0].load().unwrap().image, &cfg).unwrap();
    assert_eq!(x.len(), 3 * 32 * 32);
    assert!(x.iter().all(|v| v.is_finite() && v.abs() < 5.0));
}

#[test]
fn generation_is_deterministic_and_refuses_to_overwrite() {
    let (a, b) = (Root::new(), Root::new());
    let spec = SyntheticSpec {
        size: 48,
        n_train_good: 3,
        n_test_good: 1,
        n_test_defect: 4,
        seed: 7,
        ..SyntheticSpec::default()
    };
    write_mvtec_category(a.path(), "p", &spec).unwrap();
    write_mvtec_category(b.path(), "p", &spec).unwrap();
    for rel in [
        "p/train/good/000.png",
        "p/test/good/000.png",
        "p/test/stain/000.png",
        "p/ground_truth/missing_texture/000_mask.png",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(rel)).unwrap(),
            std::fs::read(b.path().join(rel)).unwrap(),
            "{rel}"
        );
    }
    match write_mvtec_category(a.path(), "p", &spec) {
        Err(SyntheticError::NotEmpty { path }) => assert_eq!(path, a.path().join("p")),
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    // An existing but empty folder is fine.
    let c = Root::new();
    c.dir("p");
    write_mvtec_category(c.path(), "p", &spec).unwrap();
}

#[test]
fn default_spec_is_fast_enough_for_a_demo() {
    let r = Root::new();
    let t = std::time::Instant::now();
    let s = write_mvtec_category(r.path(), "demo", &SyntheticSpec::default()).unwrap();
    let elapsed = t.elapsed();
    assert_eq!(s.train_good + s.test_good, 80);
    // Generous bound: debug-profile test builds on a loaded 2-core machine; release takes far less.
    assert!(elapsed.as_secs_f32() < 20.0, "took {elapsed:?}");
}
