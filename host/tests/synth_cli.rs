//! `kestrel synth` end to end: the binary writes images and parameter JSON, is deterministic, and refuses
//! settings and folders that would give confusing output.

use std::path::Path;
use std::process::Output;

mod common;
use common::{assert_success, kestrel};

fn ok(out: &Output) -> serde_json::Value {
    assert_success(out);
    serde_json::from_slice(&out.stdout).expect("JSON summary on stdout")
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json file")).expect("valid json")
}

fn synth(kind: &str, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "synth",
        kind,
        "-n",
        "3",
        "--size",
        "48",
        "--seed",
        "5",
        "--json",
        "-o",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&kestrel(&args))
}

#[test]
fn fractal_writes_images_and_parameters_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let summary = synth("fractal", &a, &["--classes", "2"]);
    assert_eq!(summary["kind"], "fractal");
    assert_eq!(summary["count"], 3);
    for i in 0..3 {
        let img = image::open(a.join(format!("{i:04}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (48, 48));
        let params = read_json(&a.join(format!("{i:04}.json")));
        assert_eq!(params["class"], i % 2);
        assert!(params["params"]["maps"].as_array().unwrap().len() >= 2);
    }
    assert_eq!(read_json(&a.join("synth.json"))["classes"], 2);
    synth("fractal", &b, &["--classes", "2"]);
    for name in ["0000.png", "0002.png", "0001.json"] {
        assert_eq!(
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
            "{name} differs between runs with the same seed"
        );
    }
}

#[test]
fn multi_fractal_records_labels() {
    let tmp = tempfile::tempdir().unwrap();
    synth("multi-fractal", tmp.path(), &["--classes", "7"]);
    for i in 0..3 {
        let p = read_json(&tmp.path().join(format!("{i:04}.json")));
        let labels = p["labels"].as_array().unwrap();
        assert!(!labels.is_empty() && labels.len() <= 5);
        assert!(labels.iter().all(|l| l.as_u64().unwrap() < 7));
        let w = p["pos_weight"].as_f64().unwrap();
        assert!(
            (w - 7.0 / labels.len() as f64).abs() < 1e-5,
            "pos_weight {w}"
        );
    }
}

#[test]
fn gmm_blends_into_given_normal_images() {
    let tmp = tempfile::tempdir().unwrap();
    let normals = tmp.path().join("good");
    std::fs::create_dir(&normals).unwrap();
    for k in 0..2u8 {
        image::RgbImage::from_fn(70, 60, |x, y| image::Rgb([100 + k * 50, (x + y) as u8, 90]))
            .save(normals.join(format!("g{k}.png")))
            .unwrap();
    }
    let out = tmp.path().join("out");
    synth(
        "gmm",
        &out,
        &[
            "--normal-images",
            normals.to_str().unwrap(),
            "--preset",
            "medium",
        ],
    );
    for i in 0..3 {
        for suffix in ["", "_normal", "_alpha"] {
            assert!(out.join(format!("{i:04}{suffix}.png")).is_file());
        }
        let p = read_json(&out.join(format!("{i:04}.json")));
        assert_eq!(p["info"]["normal"]["kind"], "image");
        assert!(p["strength"].as_f64().unwrap() <= 1.0);
    }
    // Generated textures when no images are given.
    let out2 = tmp.path().join("out2");
    synth("gmm", &out2, &[]);
    let kind = read_json(&out2.join("0000.json"))["info"]["normal"]["kind"].clone();
    assert!(kind == "product" || kind == "plasma", "{kind}");
}

#[test]
fn refuses_bad_settings_and_non_empty_folders() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("old.png"), b"x").unwrap();
    let out = kestrel(&[
        "synth",
        "fractal",
        "-n",
        "1",
        "-o",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let fresh = tmp.path().join("new");
    let fresh = fresh.to_str().unwrap();
    for args in [
        vec!["synth", "fractal", "-n", "0", "-o", fresh],
        vec!["synth", "fractal", "--size", "8", "-o", fresh],
        vec!["synth", "fractal", "--classes", "0", "-o", fresh],
        vec!["synth", "fractal", "--normal-images", ".", "-o", fresh],
    ] {
        let out = kestrel(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
    // An unreadable normal image is bad input data (exit 3).
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("broken.png"), b"not a png").unwrap();
    let out = kestrel(&[
        "synth",
        "gmm",
        "--normal-images",
        bad.to_str().unwrap(),
        "-o",
        tmp.path().join("gmm").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
