//! `kestrel export` → `kestrel flash` → a simulated unit whose directory camera replays known images, and the parity
//! the product promises: for the same bundle, every score the unit reports equals, bit for bit, what
//! `kestrel predict --model X.kbundle` computes on the host, and every mask it sends is the one the host's anomaly
//! map gives. Also the CLI contract of `flash` (`--dry-run`, `--json`, exit codes, `--rollback`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{assert_success, kestrel};
use kestrel_edge::board::BoardProfile;
use kestrel_edge::inference::mask_from_map;
use kestrel_edge::{Unit, UnitHandle, UnitOptions};
use kestrel_host::monitor::{ConnectOptions, Session, UnitAddr};
use kestrel_vision::map::ScoreMap;
use kestrel_vision::npy::read_npy_file;
use kestrel_wire::{Msg, Subscribe};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: &Output) -> String {
    assert_success(out);
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// A board profile like `boards/sim.toml`, with a directory camera replaying `frames` at 20 fps.
fn profile(dir: &Path, frames: &Path, state: &Path) -> BoardProfile {
    let path = dir.join("board.toml");
    std::fs::write(
        &path,
        format!(
            r#"name = "sim-dir"
state_dir = "{}"
[camera]
kind = "directory"
path = "{}"
fps = 20.0
looped = true
[pins]
kind = "fake"
[inspection]
mode = "free-run"
queue_depth = 2
reject_delay_ms = 250
reject_pulse_ms = 20
trigger_debounce_ms = 2
[tcp]
listen = "127.0.0.1:0"
max_clients = 4
[compute]
device = "cpu"
threads = 2
[unit]
id = "parity-1"
"#,
            s(state),
            s(frames)
        ),
    )
    .unwrap();
    BoardProfile::load(&path).unwrap()
}

fn unit_url(unit: &UnitHandle) -> String {
    let a = unit.tcp_addr().unwrap();
    format!("tcp://{a}")
}

#[test]
fn flashed_bundle_scores_on_the_unit_exactly_as_predict_scores_on_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::product(tmp.path(), 24, 4, 4, 5);
    let model = tmp.path().join("model");
    common::fit_widget(&data, &model, "padim");
    let keys = tmp.path().join("keys");
    ok(&kestrel(&["keygen", "-o", s(&keys)]));
    let bundle = tmp.path().join("widget.kbundle");
    ok(&kestrel(&[
        "export",
        "--model",
        s(&model),
        "--key",
        s(&keys.join("signing.key")),
        "--model-version",
        "3",
        "-o",
        s(&bundle),
    ]));

    // The frames the unit's camera replays: the test images, good and defective, in a fixed order.
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for sub in std::fs::read_dir(data.join("widget/test")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    {
        for f in files {
            let name = format!("{:03}.png", names.len());
            std::fs::copy(&f, frames.join(&name)).unwrap();
            names.push(name);
        }
    }

    let state = tmp.path().join("state");
    std::fs::create_dir_all(state.join("trusted")).unwrap();
    std::fs::copy(keys.join("signing.pub"), state.join("trusted/line.pub")).unwrap();
    let unit = Unit::start(profile(tmp.path(), &frames, &state), UnitOptions::default()).unwrap();
    let url = unit_url(&unit);
    let unit_key = unit.key_path().to_path_buf();

    // Dry run: accepted, nothing stored, nothing active.
    let out = json_lines(&ok(&kestrel(&[
        "flash",
        s(&bundle),
        "--unit",
        &url,
        "--key-file",
        s(&unit_key),
        "--dry-run",
        "--json",
    ])));
    assert_eq!(out[0]["dry_run"], true);
    assert!(unit.active_model().is_none());

    let out = json_lines(&ok(&kestrel(&[
        "flash",
        s(&bundle),
        "--unit",
        &url,
        "--key-file",
        s(&unit_key),
        "--json",
    ])));
    let report = &out[0];
    assert_eq!(report["active"]["version"], 3, "{report}");
    assert_eq!(report["active"]["sha256"], report["bundle"]["sha256"]);
    assert!(report["before"].is_null());
    let active = unit
        .active_model()
        .expect("the unit runs the flashed model");
    assert_eq!(hex::encode(active.sha256), report["bundle"]["sha256"]);

    // The host's view of the same bundle.
    let pred_dir = tmp.path().join("pred");
    let preds = json_lines(&ok(&kestrel(&[
        "predict",
        "--model",
        s(&bundle),
        "--trusted-key",
        s(&keys.join("signing.pub")),
        s(&frames),
        "-o",
        s(&pred_dir),
        "--json",
    ])));
    assert_eq!(preds.len(), names.len());
    let mut host: HashMap<String, (f32, ScoreMap)> = HashMap::new();
    for p in &preds {
        let image = Path::new(p["image"].as_str().unwrap());
        let name = image.file_name().unwrap().to_string_lossy().into_owned();
        let score = p["score"].as_f64().unwrap() as f32;
        let map = read_npy_file(Path::new(p["map"].as_str().unwrap())).unwrap();
        let map = ScoreMap::new(map.cols(), map.rows(), map.into_data()).unwrap();
        host.insert(name, (score, map));
    }
    let threshold = {
        let info = kestrel_bundle::inspect_untrusted(&std::fs::read(&bundle).unwrap()).unwrap();
        info.manifest.model.threshold
    };

    // The unit's verdicts for every frame, at least once each.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let compared = rt.block_on(async {
        let a = unit.tcp_addr().unwrap();
        let addr = UnitAddr::Tcp {
            host: a.ip().to_string(),
            port: a.port(),
        };
        let mut session = Session::open(&addr, &ConnectOptions::new(unit.key().clone()))
            .await
            .unwrap();
        session
            .request(Msg::Subscribe(Subscribe {
                masks_every: 1,
                min_score: f32::NEG_INFINITY,
            }))
            .await
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut compared = 0usize;
        while seen.len() < names.len() {
            let msg = tokio::time::timeout_at(deadline, session.recv())
                .await
                .expect("a verdict for every frame within 120 s")
                .unwrap();
            let Msg::Verdict(v) = msg else { continue };
            let name = &names[(v.frame_id % names.len() as u64) as usize];
            let (score, map) = &host[name];
            assert_eq!(
                v.score.to_bits(),
                score.to_bits(),
                "{name}: unit {} vs host {}",
                v.score,
                score
            );
            assert_eq!(v.pass, *score < threshold, "{name}");
            let want = mask_from_map(map, threshold).unwrap();
            assert_eq!(v.mask.as_ref(), Some(&want), "{name}: mask");
            seen.insert(name.clone());
            compared += 1;
        }
        compared
    });
    assert!(compared >= names.len());

    // Rollback with nothing before it is refused with exit code 8; a wrong unit key with 7.
    let out = kestrel(&[
        "flash",
        "--rollback",
        "--unit",
        &url,
        "--key-file",
        s(&unit_key),
    ]);
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    let wrong = tmp.path().join("wrong.key");
    std::fs::write(&wrong, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = kestrel(&["flash", s(&bundle), "--unit", &url, "--key-file", s(&wrong)]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    drop(unit);
}

#[test]
fn flash_refuses_bad_arguments_as_usage_errors_and_an_absent_unit_as_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("unit.key");
    std::fs::write(&key, format!("{}\n", "cd".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let junk = tmp.path().join("junk.kbundle");
    std::fs::write(&junk, b"not a bundle").unwrap();
    // No bundle and no --rollback.
    let out = kestrel(&[
        "flash",
        "--unit",
        "tcp://127.0.0.1:9",
        "--key-file",
        s(&key),
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Not a bundle: refused locally, before any connection.
    let out = kestrel(&[
        "flash",
        s(&junk),
        "--unit",
        "tcp://127.0.0.1:9",
        "--key-file",
        s(&key),
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // Bad address.
    let out = kestrel(&[
        "flash",
        "--rollback",
        "--unit",
        "ftp://x",
        "--key-file",
        s(&key),
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Nobody listening.
    let out = kestrel(&[
        "flash",
        "--rollback",
        "--unit",
        "tcp://127.0.0.1:9",
        "--key-file",
        s(&key),
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
}
