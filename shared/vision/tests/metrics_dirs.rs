//! `evaluate_dirs`: the `kestrel metrics` entry point, its file matching rules and its error messages.

use std::fs;
use std::path::{Path, PathBuf};

use image::GrayImage;
use kestrel_vision::metrics::{evaluate_dirs, MetricsError};
use kestrel_vision::npy::{write_npy_file, Array2};

/// A temporary `maps/` + `masks/` pair.
struct Dirs {
    _tmp: tempfile::TempDir,
    maps: PathBuf,
    masks: PathBuf,
    root: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let (maps, masks) = (root.join("maps"), root.join("masks"));
        fs::create_dir(&maps).unwrap();
        fs::create_dir(&masks).unwrap();
        Self {
            _tmp: tmp,
            maps,
            masks,
            root,
        }
    }

    fn map(&self, name: &str, rows: usize, cols: usize, values: &[f32]) -> PathBuf {
        let path = self.maps.join(format!("{name}.npy"));
        write_npy_file(&path, &Array2::new(rows, cols, values.to_vec()).unwrap()).unwrap();
        path
    }

    fn mask(&self, name: &str, width: u32, height: u32, anomalous: &[(u32, u32)]) -> PathBuf {
        let mut img = GrayImage::new(width, height);
        for &(x, y) in anomalous {
            img.put_pixel(x, y, image::Luma([255]));
        }
        let path = self.masks.join(format!("{name}.png"));
        img.save(&path).unwrap();
        path
    }

    fn csv(&self, text: &str) -> PathBuf {
        let path = self.root.join("scores.csv");
        fs::write(&path, text).unwrap();
        path
    }

    fn eval(
        &self,
        csv: Option<&Path>,
    ) -> Result<kestrel_vision::metrics::MetricsReport, MetricsError> {
        evaluate_dirs(&self.maps, &self.masks, csv)
    }
}

/// Two good images and one defective one, small enough to check by hand.
fn small_set() -> Dirs {
    let d = Dirs::new();
    d.map("a_good", 2, 2, &[0.1, 0.2, 0.3, 0.4]);
    d.map("b_good", 2, 2, &[0.2, 0.2, 0.2, 0.9]); // max 0.9: a false alarm
    d.map("c_bad", 2, 2, &[0.8, 0.1, 0.1, 0.1]);
    d.mask("c_bad", 2, 2, &[(0, 0)]);
    // An all-zero mask is a good image, like a missing one.
    d.mask("a_good", 2, 2, &[]);
    fs::write(d.maps.join("notes.txt"), "ignored").unwrap();
    d
}

#[test]
fn hand_checked_report() {
    let d = small_set();
    let r = d.eval(None).unwrap();
    // Image scores (maxima): a 0.4 (good), b 0.9 (good), c 0.8 (bad): c beats a, loses to b.
    assert_eq!(r.image_auroc, Some(0.5));
    // Best F1 at threshold 0.8: TP 1, FP 1 -> P 0.5, R 1.
    assert_eq!(r.threshold, 0.8f32 as f64);
    assert!((r.f1_max.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    // The one anomalous pixel (0.8) is beaten only by the 0.9 pixel among 11 normal pixels.
    assert!((r.pixel_auroc.unwrap() - 10.0 / 11.0).abs() < 1e-12);
    assert_eq!((r.images, r.pixels), (3, 12));

    let json = serde_json::to_value(&r).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.len(),
        7,
        "image_auroc, pixel_auroc, aupro, f1_max, threshold, images, pixels: {keys:?}"
    );
    for key in [
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "f1_max",
        "threshold",
        "images",
        "pixels",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn csv_scores_replace_map_maxima() {
    let d = small_set();
    let csv = d.csv("name,score\nc_bad,3\n\nb_good,2\na_good,1\n");
    let r = d.eval(Some(&csv)).unwrap();
    assert_eq!(r.image_auroc, Some(1.0));
    assert_eq!(r.threshold, 3.0);
    // Headerless works too.
    let csv = d.csv("c_bad,3\nb_good,2\na_good,1");
    assert_eq!(d.eval(Some(&csv)).unwrap().image_auroc, Some(1.0));
}

#[test]
fn mismatched_names_are_errors_naming_the_file() {
    let d = small_set();

    let csv = d.csv("name,score\na_good,1\nb_good,2\nc_bad,3\nz_extra,4\n");
    let err = d.eval(Some(&csv)).unwrap_err();
    assert!(
        matches!(&err, MetricsError::CsvNameWithoutMap { line: 5, name, .. } if name == "z_extra"),
        "{err:?}"
    );
    assert!(err.to_string().contains("z_extra.npy"), "{err}");

    let csv = d.csv("a_good,1\nc_bad,3\n");
    let err = d.eval(Some(&csv)).unwrap_err();
    assert!(
        matches!(&err, MetricsError::MapMissingFromCsv { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("b_good.npy"), "{err}");

    let csv = d.csv("a_good,1\nb_good,oops\nc_bad,3\n");
    let err = d.eval(Some(&csv)).unwrap_err();
    assert!(
        matches!(&err, MetricsError::CsvSyntax { line: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("scores.csv:2"), "{err}");

    d.mask("orphan", 2, 2, &[(1, 1)]);
    let err = d.eval(None).unwrap_err();
    assert!(
        matches!(&err, MetricsError::MaskWithoutMap { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("orphan.png"), "{err}");
}

#[test]
fn size_mismatch_and_bad_files_are_errors_naming_the_file() {
    let d = Dirs::new();
    d.map("x", 2, 3, &[0.0; 6]);
    d.mask("x", 2, 3, &[]); // 2 wide, 3 high; the map is 3 wide, 2 high
    let err = d.eval(None).unwrap_err();
    assert!(
        matches!(
            &err,
            MetricsError::MaskSizeMismatch {
                mask_width: 2,
                mask_height: 3,
                map_width: 3,
                map_height: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("x.png") && message.contains("x.npy"),
        "{message}"
    );

    let d = Dirs::new();
    d.map("good", 1, 2, &[0.0, 1.0]);
    fs::write(d.maps.join("broken.npy"), b"\x93NUMPY\x01\x00garbage").unwrap();
    let err = d.eval(None).unwrap_err();
    assert!(
        matches!(&err, MetricsError::Npy { path, .. } if path.ends_with("broken.npy")),
        "{err:?}"
    );

    let d = Dirs::new();
    d.map("m", 1, 2, &[0.0, 1.0]);
    fs::write(d.masks.join("m.png"), b"not a png").unwrap();
    let err = d.eval(None).unwrap_err();
    assert!(
        matches!(&err, MetricsError::MaskDecode { path, .. } if path.ends_with("m.png")),
        "{err:?}"
    );

    let d = Dirs::new();
    d.map("n", 1, 2, &[0.0, f32::NAN]);
    let err = d.eval(None).unwrap_err();
    assert!(
        matches!(&err, MetricsError::NanScore { index: 1, .. }),
        "{err:?}"
    );

    let d = Dirs::new();
    assert!(matches!(d.eval(None), Err(MetricsError::NoMaps(_))));
    d.map("m", 1, 1, &[0.5]);
    let missing = d.root.join("nope");
    assert!(matches!(
        evaluate_dirs(&d.maps, &missing, None),
        Err(MetricsError::Io { path, .. }) if path == missing
    ));
}
