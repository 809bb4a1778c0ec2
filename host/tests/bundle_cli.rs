//! `kestrel keygen` → `fit` → `export` → `eval`/`predict` with the bundle, on a small synthetic product, and the
//! refusals: an unverifiable bundle, a signing key others can read, a tampered bundle, an existing key.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{assert_success, kestrel};

fn ok(out: &Output) -> String {
    assert_success(out);
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// 24 good training images, so fit holds out a validation split and chooses a threshold.
fn product(dir: &Path) -> PathBuf {
    common::product(dir, 24, 6, 6, 11)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.lines().next().expect("one line")).expect("valid JSON")
}

#[test]
fn keygen_export_eval_predict_with_an_int8_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let data = product(tmp.path());
    let keys = tmp.path().join("keys");
    ok(&kestrel(&["keygen", "-o", s(&keys)]));
    let key = keys.join("signing.key");
    let public = keys.join("signing.pub");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let again = kestrel(&["keygen", "-o", s(&keys)]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let model = tmp.path().join("model");
    common::fit_widget(&data, &model, "padim");
    let bundle = tmp.path().join("widget.kbundle");
    let report = json(&ok(&kestrel(&[
        "export",
        "--model",
        s(&model),
        "--key",
        s(&key),
        "--quant",
        "int8",
        "--model-version",
        "7",
        "--data",
        s(&data),
        "-o",
        s(&bundle),
        "--json",
    ])));
    assert!(
        report["sizes"]["backbone"].as_u64().unwrap() * 3
            < report["sizes_f32"]["backbone"].as_u64().unwrap()
    );
    assert!(
        report["sizes"]["total"].as_u64().unwrap() == std::fs::metadata(&bundle).unwrap().len()
    );
    assert_eq!(report["validation"]["images"].as_u64(), Some(2), "{report}");
    assert!(report["self_test_score"].as_f64().is_some());
    let auroc_f32 = report["test_f32"]["image_auroc"].as_f64().unwrap();
    let auroc_q = report["test_bundle"]["image_auroc"].as_f64().unwrap();
    assert!((auroc_f32 - auroc_q).abs() < 0.1, "{report}");

    // eval with the bundle gives what export measured for it.
    let row = json(&ok(&kestrel(&[
        "eval",
        "--model",
        s(&bundle),
        "--data",
        s(&data),
        "--trusted-key",
        s(&public),
        "--json",
    ])));
    assert_eq!(row["image_auroc"], report["test_bundle"]["image_auroc"]);
    assert_eq!(row["pixel_auroc"], report["test_bundle"]["pixel_auroc"]);

    // predict: by extension with --trusted-dir; and a bundle without the extension is still recognised.
    let plain = tmp.path().join("widget.bin");
    std::fs::copy(&bundle, &plain).unwrap();
    let image = data.join("widget/test/good/000.png");
    let a = json(&ok(&kestrel(&[
        "predict",
        "--model",
        s(&bundle),
        "--trusted-dir",
        s(&keys),
        s(&image),
        "-o",
        s(&tmp.path().join("p1")),
        "--json",
    ])));
    let b = json(&ok(&kestrel(&[
        "predict",
        "--model",
        s(&plain),
        "--trusted-key",
        s(&public),
        s(&image),
        "-o",
        s(&tmp.path().join("p2")),
        "--json",
    ])));
    assert_eq!(a["score"], b["score"]);

    // No trust given: refused, naming the flags (exit 2).
    let out = kestrel(&[
        "predict",
        "--model",
        s(&bundle),
        s(&image),
        "-o",
        s(&tmp.path().join("p3")),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--trusted-key"), "{}", stderr(&out));

    // Another key: refused as a bad model (exit 4).
    let other = tmp.path().join("other");
    ok(&kestrel(&["keygen", "-o", s(&other)]));
    let out = kestrel(&[
        "predict",
        "--model",
        s(&bundle),
        "--trusted-key",
        s(&other.join("signing.pub")),
        s(&image),
        "-o",
        s(&tmp.path().join("p4")),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("signature"), "{}", stderr(&out));

    // A flipped byte: refused (exit 4).
    let mut bytes = std::fs::read(&bundle).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let bad = tmp.path().join("bad.kbundle");
    std::fs::write(&bad, bytes).unwrap();
    let out = kestrel(&[
        "eval",
        "--model",
        s(&bad),
        "--data",
        s(&data),
        "--trusted-key",
        s(&public),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("hash mismatch"), "{}", stderr(&out));
}

#[cfg(unix)]
#[test]
fn export_refuses_a_signing_key_others_can_read_and_a_bad_model_dir() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    ok(&kestrel(&["keygen", "-o", s(&keys)]));
    let key = keys.join("signing.key");
    let out_file = tmp.path().join("m.kbundle");
    // Not a model directory: exit 4 before the key is even needed.
    let out = kestrel(&[
        "export",
        "--model",
        s(tmp.path()),
        "--key",
        s(&key),
        "-o",
        s(&out_file),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let model = tmp.path().join("model");
    let data = product(tmp.path());
    common::fit_widget(&data, &model, "patchcore");
    let out = kestrel(&[
        "export",
        "--model",
        s(&model),
        "--key",
        s(&key),
        "-o",
        s(&out_file),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    assert!(!out_file.exists());
}
