//! Dataset discovery: layout detection, the MVTec, folder and VisA layouts, and every error a user can hit
//! with a badly assembled dataset. Each test builds its dataset in a temporary folder.

mod dataset_util;

use std::path::PathBuf;

use dataset_util::Root;
use kestrel_vision::dataset::{
    self, categories, detect_layout, load_mask, load_rgb, open, open_with, DatasetError,
    DatasetWarning, Layout, LayoutChoice, OpenOptions, SourceColour,
};

fn names(samples: &[dataset::Sample]) -> Vec<&str> {
    samples.iter().map(|s| s.name.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// MVTec

#[test]
fn mvtec_root_with_one_category_is_detected_and_read() {
    let r = Root::new();
    r.mvtec("bottle", 3, 2, 2);
    r.text("bottle/train/good/notes.txt", "not an image");
    r.text("bottle/license.txt", "CC BY-NC-SA");
    assert_eq!(detect_layout(r.path(), None).unwrap(), Layout::Mvtec);
    assert_eq!(categories(r.path()).unwrap(), ["bottle"]);

    let ds = open(r.path(), None, LayoutChoice::Auto).unwrap();
    assert_eq!(ds.layout, Layout::Mvtec);
    assert_eq!(ds.category, "bottle");
    assert_eq!(ds.root, r.path().join("bottle"));
    assert_eq!(names(&ds.train), ["train_000", "train_001", "train_002"]);
    assert!(ds.validation.is_empty());
    // Sorted by path: `crack` before `good`.
    assert_eq!(
        names(&ds.test),
        ["crack_000", "crack_001", "good_000", "good_001"]
    );
    assert_eq!(ds.test[0].defect_type.as_deref(), Some("crack"));
    assert_eq!(
        ds.test[0].mask.as_deref(),
        Some(
            r.path()
                .join("bottle/ground_truth/crack/000_mask.png")
                .as_path()
        )
    );
    assert!(ds.test[2].is_good() && ds.test[2].mask.is_none());
    assert_eq!(ds.skipped, [r.path().join("bottle/train/good/notes.txt")]);
    assert_eq!(ds.defect_types(), ["crack"]);

    let report = ds.inspect().unwrap();
    assert_eq!(report.train, 3);
    assert_eq!(report.test_good, 2);
    assert_eq!(report.test_defects.get("crack"), Some(&2));
    assert_eq!(report.masks_checked, 2);
    assert_eq!(report.image_sizes.get(&(16, 12)), Some(&7));
    assert!(!report.conversions.any_converted());

    // The category folder itself is also accepted as root, and an explicit layout works.
    let ds2 = open(
        &r.path().join("bottle"),
        Some("bottle"),
        LayoutChoice::Mvtec,
    )
    .unwrap();
    assert_eq!(ds2.train, ds.train);
    assert_eq!(ds2.test, ds.test);
}

#[test]
fn mvtec_several_categories_need_a_choice() {
    let r = Root::new();
    r.mvtec("screw", 1, 0, 0);
    r.mvtec("bottle", 1, 0, 0);
    r.dir("not_a_category/images");
    assert_eq!(categories(r.path()).unwrap(), ["bottle", "screw"]);
    match open(r.path(), None, LayoutChoice::Auto) {
        Err(DatasetError::CategoryRequired { available, .. }) => {
            assert_eq!(available, ["bottle", "screw"])
        }
        other => panic!("expected CategoryRequired, got {other:?}"),
    }
    let err = open(r.path(), Some("zipper"), LayoutChoice::Auto).unwrap_err();
    assert!(
        matches!(err, DatasetError::CategoryNotFound { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("zipper") && msg.contains("bottle, screw"),
        "{msg}"
    );
    assert_eq!(
        open(r.path(), Some("screw"), LayoutChoice::Auto)
            .unwrap()
            .category,
        "screw"
    );
}

#[test]
fn mvtec_missing_folders_are_named() {
    let r = Root::new();
    r.dir("bottle/test/good");
    let err = open(r.path(), Some("bottle"), LayoutChoice::Mvtec).unwrap_err();
    match &err {
        DatasetError::MissingFolder {
            expected, layout, ..
        } => {
            assert_eq!(expected, &r.path().join("bottle/train/good"));
            assert_eq!(*layout, Layout::Mvtec);
        }
        other => panic!("expected MissingFolder, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("train/good") && msg.contains("recognised layouts"),
        "{msg}"
    );

    // A defect type without its ground_truth folder.
    let r = Root::new();
    r.mvtec("bottle", 1, 0, 0);
    r.rgb("bottle/test/crack/000.png", 16, 12);
    match open(r.path(), None, LayoutChoice::Auto) {
        Err(DatasetError::MissingFolder { expected, .. }) => {
            assert_eq!(expected, r.path().join("bottle/ground_truth/crack"))
        }
        other => panic!("expected MissingFolder, got {other:?}"),
    }
}

#[test]
fn mvtec_defect_without_mask_is_an_error() {
    let r = Root::new();
    r.mvtec("bottle", 1, 0, 1);
    r.rgb("bottle/test/crack/001.png", 16, 12);
    let err = open(r.path(), None, LayoutChoice::Auto).unwrap_err();
    match &err {
        DatasetError::MissingMask {
            image, expected, ..
        } => {
            assert_eq!(image, &r.path().join("bottle/test/crack/001.png"));
            assert_eq!(
                expected,
                &[r.path().join("bottle/ground_truth/crack/001_mask.png")]
            );
        }
        other => panic!("expected MissingMask, got {other:?}"),
    }
    assert!(err.to_string().contains("001_mask.png"));
}

#[test]
fn mvtec_plain_mask_names_and_unused_masks() {
    let r = Root::new();
    r.mvtec("bottle", 1, 0, 0);
    r.rgb("bottle/test/crack/000.png", 16, 12);
    r.mask("bottle/ground_truth/crack/000.png", 16, 12, |_, _| true);
    r.mask("bottle/ground_truth/crack/007_mask.png", 16, 12, |_, _| {
        true
    });
    let ds = open(r.path(), None, LayoutChoice::Auto).unwrap();
    assert_eq!(
        ds.test[0].mask,
        Some(r.path().join("bottle/ground_truth/crack/000.png"))
    );
    assert!(ds
        .warnings
        .iter()
        .any(|w| matches!(w, DatasetWarning::UnusedMasks { count: 1, .. })));
}

#[test]
fn empty_training_set_counts_skipped_files() {
    let r = Root::new();
    r.text("bottle/train/good/readme.md", "x");
    r.text("bottle/train/good/000.webp", "x");
    let err = open(r.path(), None, LayoutChoice::Auto).unwrap_err();
    match &err {
        DatasetError::EmptyTrainSet { folder, skipped } => {
            assert_eq!(folder, &r.path().join("bottle/train/good"));
            assert_eq!(*skipped, 2);
        }
        other => panic!("expected EmptyTrainSet, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("2 file(s) skipped") && msg.contains("png"),
        "{msg}"
    );
}

#[test]
fn unrecognised_and_missing_roots() {
    let r = Root::new();
    r.dir("images");
    r.text("readme.txt", "");
    let err = open(r.path(), None, LayoutChoice::Auto).unwrap_err();
    match &err {
        DatasetError::UnrecognisedLayout { entries, .. } => {
            assert_eq!(entries, &["images/", "readme.txt"])
        }
        other => panic!("expected UnrecognisedLayout, got {other:?}"),
    }
    assert!(
        err.to_string().contains("MVTec AD") && err.to_string().contains("folder (<root>/good")
    );
    assert!(categories(r.path()).is_err());

    let gone = r.path().join("does-not-exist");
    assert!(matches!(
        open(&gone, None, LayoutChoice::Auto),
        Err(DatasetError::RootNotFound { .. })
    ));
    // Explicit folder layout on the wrong tree names the expected folder.
    match open(r.path(), None, LayoutChoice::Folder) {
        Err(DatasetError::MissingFolder {
            expected, layout, ..
        }) => {
            assert_eq!(expected, r.path().join("good"));
            assert_eq!(layout, Layout::Folder);
        }
        other => panic!("expected MissingFolder, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Image and mask loading

#[test]
fn corrupt_images_are_named() {
    let r = Root::new();
    r.mvtec("bottle", 2, 0, 0);
    let bad = r.text("bottle/train/good/001.png", "this is not a png");
    let ds = open(r.path(), None, LayoutChoice::Auto).unwrap();
    for err in [ds.inspect().unwrap_err(), load_rgb(&bad).unwrap_err()] {
        match &err {
            DatasetError::Decode { path, .. } => assert_eq!(path, &bad),
            other => panic!("expected Decode, got {other:?}"),
        }
        assert!(err.to_string().contains("001.png"), "{err}");
    }

    // A valid header with truncated pixel data passes `inspect` but not `load_rgb`.
    let good = r.path().join("bottle/train/good/000.png");
    let bytes = std::fs::read(&good).unwrap();
    let truncated = r.file("truncated.png");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        load_rgb(&truncated),
        Err(DatasetError::Decode { .. })
    ));
    assert!(matches!(
        load_rgb(&r.path().join("missing.png")),
        Err(DatasetError::Io { .. })
    ));
}

#[test]
fn mask_size_mismatch_names_both_files_and_sizes() {
    let r = Root::new();
    r.mvtec("bottle", 1, 0, 0);
    let img = r.rgb("bottle/test/crack/000.png", 16, 12);
    let mask = r.mask("bottle/ground_truth/crack/000_mask.png", 8, 6, |_, _| true);
    let ds = open(r.path(), None, LayoutChoice::Auto).unwrap();
    let check = |err: DatasetError| {
        match &err {
            DatasetError::MaskSizeMismatch {
                mask: m,
                mask_width,
                mask_height,
                image,
                image_width,
                image_height,
            } => {
                assert_eq!(m, &mask);
                assert_eq!((*mask_width, *mask_height), (8, 6));
                assert_eq!(image.as_ref(), Some(&img));
                assert_eq!((*image_width, *image_height), (16, 12));
            }
            other => panic!("expected MaskSizeMismatch, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("8×6") && msg.contains("16×12") && msg.contains("000_mask.png"),
            "{msg}"
        );
    };
    check(ds.inspect().unwrap_err());
    check(ds.test[0].load_mask(16, 12).unwrap_err());
    // The free function cannot name the image but still reports both sizes.
    let err = load_mask(&mask, 16, 12).unwrap_err();
    assert!(err.to_string().contains("8×6"), "{err}");
}

#[test]
fn masks_are_binarised_from_any_non_zero_value() {
    let r = Root::new();
    let p = r.file("m.png");
    image::GrayImage::from_fn(3, 1, |x, _| image::Luma([[0, 1, 200][x as usize]]))
        .save(&p)
        .unwrap();
    assert_eq!(load_mask(&p, 3, 1).unwrap().data, [0, 1, 1]);
    let p = r.file("rgb_mask.png");
    image::RgbImage::from_fn(2, 1, |x, _| {
        image::Rgb(if x == 0 { [0, 0, 0] } else { [0, 0, 1] })
    })
    .save(&p)
    .unwrap();
    assert_eq!(load_mask(&p, 2, 1).unwrap().data, [0, 1]);
}

#[test]
fn colour_conversions_are_recorded_and_counted() {
    let r = Root::new();
    r.rgb("cat/train/good/0.png", 8, 8);
    let g = r.gray("cat/train/good/1.png", 8, 8);
    r.gray("cat/train/good/2.png", 8, 8);
    let a = r.rgba("cat/train/good/3.png", 8, 8);
    let w = r.gray16("cat/train/good/4.png", 8, 8);
    let loaded = load_rgb(&g).unwrap();
    assert_eq!(loaded.source, SourceColour::Gray);
    assert!(loaded.converted());
    let p = loaded.image.get_pixel(3, 0).0;
    assert_eq!(p, [27, 27, 27], "channel replication");
    let loaded = load_rgb(&a).unwrap();
    assert_eq!(loaded.source, SourceColour::Rgba);
    assert_eq!(
        loaded.image.get_pixel(0, 0).0,
        [10, 20, 30],
        "alpha dropped, not composited"
    );
    let loaded = load_rgb(&w).unwrap();
    assert_eq!(
        (loaded.source, loaded.source_bit_depth),
        (SourceColour::Gray, 16)
    );
    assert_eq!(loaded.image.get_pixel(0, 0).0, [255, 255, 255]);

    let ds = open(r.path(), None, LayoutChoice::Auto).unwrap();
    let c = ds.inspect().unwrap().conversions;
    assert_eq!((c.images, c.gray, c.rgba, c.high_bit_depth), (5, 3, 1, 1));
    let lines = c.describe();
    assert_eq!(
        lines[0],
        "converted 3 grayscale images to RGB by channel replication"
    );
    // Counting while loading gives the same numbers as inspecting headers.
    let mut counted = dataset::ConversionCounts::default();
    for s in &ds.train {
        counted.record_loaded(&s.load().unwrap());
    }
    assert_eq!(counted, c);
}

// ---------------------------------------------------------------------------------------------------------------
// Validation hold-out

#[test]
fn hold_out_validation_is_deterministic() {
    let r = Root::new();
    r.mvtec("bottle", 20, 1, 0);
    let base = open(r.path(), None, LayoutChoice::Auto).unwrap();
    let mut a = base.clone();
    assert_eq!(a.hold_out_validation(0.25, 1).unwrap(), 5);
    assert_eq!((a.train.len(), a.validation.len()), (15, 5));
    assert!(a.validation.iter().all(|s| s.is_good()));
    assert!(a.validation.windows(2).all(|w| w[0].path < w[1].path));
    let mut b = base.clone();
    b.hold_out_validation(0.25, 1).unwrap();
    assert_eq!(a, b);
    let mut c = base.clone();
    c.hold_out_validation(0.25, 2).unwrap();
    assert_ne!(a.validation, c.validation);
    // The test set is untouched.
    assert_eq!(a.test, base.test);

    let mut d = base.clone();
    assert!(matches!(
        d.hold_out_validation(1.0, 0),
        Err(DatasetError::InvalidFraction { .. })
    ));
    assert!(matches!(
        d.hold_out_validation(f64::NAN, 0),
        Err(DatasetError::InvalidFraction { .. })
    ));
    assert_eq!(d.hold_out_validation(0.0, 0).unwrap(), 0);
    let r1 = Root::new();
    r1.mvtec("one", 2, 0, 0);
    let mut e = open(r1.path(), None, LayoutChoice::Auto).unwrap();
    assert!(matches!(
        e.hold_out_validation(0.9, 0),
        Err(DatasetError::HoldOutTooLarge { available: 2, .. })
    ));
}

// ---------------------------------------------------------------------------------------------------------------
// Folder layout

#[test]
fn folder_layout_splits_good_images_and_pairs_masks() {
    let r = Root::new();
    for i in 0..10 {
        r.rgb(&format!("widget/good/img{i:02}.jpg"), 10, 10);
    }
    r.rgb("widget/defect/dent1.png", 10, 10);
    r.rgb("widget/defect/dent2.png", 10, 10);
    r.rgb("widget/defect/scratch/s1.png", 10, 10);
    r.rgb("widget/defect/scratch/s2.png", 10, 10);
    r.mask("widget/masks/dent1.png", 10, 10, |x, _| x == 0);
    r.mask("widget/masks/scratch/s1_mask.png", 10, 10, |x, _| x == 1);
    r.mask("widget/masks/s2_mask.png", 10, 10, |x, _| x == 2);
    r.mask("widget/masks/orphan.png", 10, 10, |_, _| true);
    r.rgb("widget/validation/good/v1.png", 10, 10);
    r.rgb("widget/validation/defect/vd.png", 10, 10);
    r.mask("widget/validation/masks/vd_mask.png", 10, 10, |_, _| true);
    r.dir("widget/bad");
    r.text("widget/good/Thumbs.db", "");

    assert_eq!(detect_layout(r.path(), None).unwrap(), Layout::Folder);
    assert_eq!(categories(r.path()).unwrap(), ["widget"]);
    let ds = open(r.path(), None, LayoutChoice::Auto).unwrap();
    assert_eq!(ds.layout, Layout::Folder);
    assert_eq!(ds.category, "widget");
    // Default test fraction 0.2 of 10 good images.
    assert_eq!(ds.train.len(), 8);
    let test_good: Vec<_> = ds.test.iter().filter(|s| s.is_good()).collect();
    assert_eq!(test_good.len(), 2);
    assert!(test_good.iter().all(|s| s.name.starts_with("good_img")));
    assert!(ds.train.iter().all(|s| s.name.starts_with("train_img")));
    assert!(ds.test.windows(2).all(|w| w[0].path < w[1].path));

    let by_name = |n: &str| {
        ds.test
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert_eq!(
        by_name("defect_dent1").mask,
        Some(r.path().join("widget/masks/dent1.png"))
    );
    assert_eq!(by_name("defect_dent2").mask, None);
    assert_eq!(
        by_name("scratch_s1").defect_type.as_deref(),
        Some("scratch")
    );
    assert_eq!(
        by_name("scratch_s1").mask,
        Some(r.path().join("widget/masks/scratch/s1_mask.png"))
    );
    assert_eq!(
        by_name("scratch_s2").mask,
        Some(r.path().join("widget/masks/s2_mask.png"))
    );

    assert_eq!(names(&ds.validation), ["val_defect_vd", "val_good_v1"]);
    assert_eq!(
        ds.validation[0].mask,
        Some(r.path().join("widget/validation/masks/vd_mask.png"))
    );
    assert_eq!(ds.skipped, [r.path().join("widget/good/Thumbs.db")]);

    let has = |f: &dyn Fn(&DatasetWarning) -> bool| ds.warnings.iter().any(f);
    assert!(has(&|w| matches!(
        w,
        DatasetWarning::DefectsWithoutMask { count: 1, .. }
    )));
    assert!(has(&|w| matches!(
        w,
        DatasetWarning::UnusedMasks { count: 1, .. }
    )));
    assert!(has(
        &|w| matches!(w, DatasetWarning::IgnoredFolders { folders } if folders == &[r.path().join("widget/bad")])
    ));
    for w in &ds.warnings {
        assert!(!w.to_string().is_empty());
    }
    let report = ds.inspect().unwrap();
    assert_eq!(report.defects_without_mask, 1);
    assert_eq!(report.masks_checked, 4);
    assert_eq!(
        ds.test
            .iter()
            .find(|s| s.name == "defect_dent2")
            .unwrap()
            .load_mask(10, 10)
            .unwrap(),
        None
    );

    // Same split every time; a different seed gives a different one; fraction 0 keeps all good for training.
    let again = open(r.path(), None, LayoutChoice::Folder).unwrap();
    assert_eq!(again, ds);
    let other = open_with(
        r.path(),
        &OpenOptions {
            split_seed: 99,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert_ne!(other.train, ds.train);
    let none = open_with(
        r.path(),
        &OpenOptions {
            folder_test_fraction: 0.0,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert_eq!(none.train.len(), 10);
    assert!(matches!(
        open_with(
            r.path(),
            &OpenOptions {
                folder_test_fraction: 1.5,
                ..OpenOptions::default()
            }
        ),
        Err(DatasetError::InvalidFraction { .. })
    ));
}

#[test]
fn folder_layout_root_with_categories_and_errors() {
    let r = Root::new();
    r.rgb("a/good/1.png", 4, 4);
    r.rgb("b/good/1.png", 4, 4);
    r.rgb("b/good/2.png", 4, 4);
    assert_eq!(categories(r.path()).unwrap(), ["a", "b"]);
    assert!(matches!(
        open(r.path(), None, LayoutChoice::Auto),
        Err(DatasetError::CategoryRequired { .. })
    ));
    let ds = open(r.path(), Some("b"), LayoutChoice::Auto).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (1, 1));
    // One good image: nothing can be held out for test.
    let ds = open(r.path(), Some("a"), LayoutChoice::Folder).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (1, 0));

    let r = Root::new();
    r.dir("good");
    r.text("good/a.gif", "");
    assert!(matches!(
        open(r.path(), None, LayoutChoice::Auto),
        Err(DatasetError::EmptyTrainSet { skipped: 1, .. })
    ));
}

#[test]
fn folder_layout_rejects_a_mask_of_the_wrong_size() {
    let r = Root::new();
    r.rgb("good/1.png", 10, 10);
    r.rgb("defect/d.png", 10, 10);
    r.mask("masks/d.png", 10, 9, |_, _| true);
    let ds = open(r.path(), None, LayoutChoice::Auto).unwrap();
    assert!(matches!(
        ds.inspect(),
        Err(DatasetError::MaskSizeMismatch { .. })
    ));
}

// ---------------------------------------------------------------------------------------------------------------
// VisA

fn visa_root() -> Root {
    let r = Root::new();
    for i in 0..3 {
        r.rgb(&format!("candle/Data/Images/Normal/{i:04}.JPG"), 12, 8);
    }
    r.rgb("candle/Data/Images/Anomaly/000.JPG", 12, 8);
    r.mask("candle/Data/Masks/Anomaly/000.png", 12, 8, |x, _| x > 6);
    r.rgb("pcb1/Data/Images/Normal/0000.JPG", 12, 8);
    r.text(
        "split_csv/1cls.csv",
        "object,split,label,image,mask\n\
         candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n\
         candle,train,normal,candle/Data/Images/Normal/0001.JPG,\n\
         candle,test,normal,candle/Data/Images/Normal/0002.JPG,\n\
         candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n\
         pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,\n",
    );
    r
}

#[test]
fn visa_split_csv_is_read() {
    let r = visa_root();
    assert_eq!(detect_layout(r.path(), None).unwrap(), Layout::Visa);
    assert_eq!(categories(r.path()).unwrap(), ["candle", "pcb1"]);
    assert!(matches!(
        open(r.path(), None, LayoutChoice::Auto),
        Err(DatasetError::CategoryRequired { .. })
    ));
    let ds = open(r.path(), Some("candle"), LayoutChoice::Auto).unwrap();
    assert_eq!(ds.layout, Layout::Visa);
    assert_eq!(names(&ds.train), ["train_0000", "train_0001"]);
    assert_eq!(names(&ds.test), ["anomaly_000", "good_0002"]);
    assert_eq!(ds.test[0].defect_type.as_deref(), Some("anomaly"));
    let mask = ds.test[0].load_mask(12, 8).unwrap().unwrap();
    assert_eq!(mask.count(), 5 * 8);
    ds.inspect().unwrap();
}

#[test]
fn visa_csv_errors_point_at_the_line() {
    let r = visa_root();
    let csv = r.path().join("split_csv/1cls.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("candle,test,normal,candle/Data/Images/Normal/9999.JPG,\n");
    std::fs::write(&csv, &text).unwrap();
    match open(r.path(), Some("candle"), LayoutChoice::Visa) {
        Err(DatasetError::MissingFile { path, line, .. }) => {
            assert_eq!(line, 7);
            assert_eq!(path, r.path().join("candle/Data/Images/Normal/9999.JPG"));
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    let cases: [(&str, &str); 4] = [
        (
            "candle,test,broken,candle/Data/Images/Normal/0002.JPG,\n",
            "unknown label",
        ),
        (
            "candle,train,anomaly,candle/Data/Images/Anomaly/000.JPG,x.png\n",
            "train split",
        ),
        (
            "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,\n",
            "empty mask column",
        ),
        (
            "candle,holdout,normal,candle/Data/Images/Normal/0002.JPG,\n",
            "unknown split",
        ),
    ];
    for (row, needle) in cases {
        let mut t = text.lines().take(6).collect::<Vec<_>>().join("\n");
        t.push('\n');
        t.push_str(row);
        std::fs::write(&csv, &t).unwrap();
        let err = open(r.path(), Some("candle"), LayoutChoice::Visa).unwrap_err();
        assert!(matches!(err, DatasetError::Csv { line: 7, .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    std::fs::write(&csv, "object,split,image\n").unwrap();
    let err = open(r.path(), None, LayoutChoice::Visa).unwrap_err();
    assert!(err.to_string().contains("no `label` column"), "{err}");

    // Explicit VisA layout without the CSV names it.
    let empty = Root::new();
    match open(empty.path(), None, LayoutChoice::Visa) {
        Err(DatasetError::MissingFolder { expected, .. }) => {
            assert_eq!(expected, empty.path().join("split_csv/1cls.csv"))
        }
        other => panic!("expected MissingFolder, got {other:?}"),
    }
}

#[test]
fn visa_custom_csv_path() {
    let r = visa_root();
    std::fs::rename(
        r.path().join("split_csv/1cls.csv"),
        r.path().join("mine.csv"),
    )
    .unwrap();
    let ds = open_with(
        r.path(),
        &OpenOptions {
            category: Some("pcb1".into()),
            visa_csv: Some(PathBuf::from("mine.csv")),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert_eq!(ds.train.len(), 1);
    assert!(ds.test.is_empty());
}
