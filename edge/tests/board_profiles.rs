//! Board profiles: every shipped profile parses, and every kind of bad profile is refused with the file, the key and
//! the reason (issue 5, item 2).

use std::path::{Path, PathBuf};

use kestrel_edge::board::{
    BoardError, BoardProfile, CameraConfig, LineId, Mode, PinsConfig, PixelFormat,
};

fn boards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards")
}

fn sim_text() -> String {
    std::fs::read_to_string(boards_dir().join("sim.toml")).unwrap()
}

fn orin_text() -> String {
    std::fs::read_to_string(boards_dir().join("jetson-orin-nano-devkit.toml")).unwrap()
}

/// Parses `text` as if it were `boards/test.toml` and returns the error, which must name the file and `key`.
fn refused(text: &str, key: &str) -> String {
    let origin = boards_dir().join("test.toml");
    let err = match BoardProfile::from_toml_str(text, &origin) {
        Ok(p) => panic!("profile was accepted, expected an error at {key}: {p:?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert_eq!(err.key(), key, "wrong key in: {msg}");
    assert!(
        msg.contains("test.toml"),
        "error does not name the file: {msg}"
    );
    assert!(msg.contains(key), "error does not name the key: {msg}");
    msg
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "test setup: {from:?} not in profile");
    text.replacen(from, to, 1)
}

#[test]
fn every_shipped_profile_parses_and_is_named_after_its_file() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(boards_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let profile = BoardProfile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(profile.name, path.file_stem().unwrap().to_str().unwrap());
            names.push(profile.name);
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "jetson-agx-orin-devkit",
            "jetson-orin-nano-devkit",
            "jetson-orin-nx",
            "sim"
        ]
    );
}

#[test]
fn sim_profile_runs_anywhere() {
    let p = BoardProfile::load(&boards_dir().join("sim.toml")).unwrap();
    assert!(
        matches!(
            p.camera,
            CameraConfig::Synthetic {
                width: 256,
                height: 256,
                ..
            }
        ),
        "{:?}",
        p.camera
    );
    assert_eq!(p.pins, PinsConfig::Fake);
    let tcp = p.tcp.unwrap();
    assert!(tcp.listen.ip().is_loopback() && tcp.listen.port() == 0);
    assert!(p.serial.unwrap().is_pty());
    assert_eq!(p.compute.device, "cpu");
    // Relative state_dir resolves against the profile's directory, whatever the working directory.
    assert_eq!(p.state_dir, boards_dir().join("../target/sim-state"));
    assert!(p.unit.key_file.is_none());
}

#[test]
fn jetson_profiles_use_v4l2_and_gpio_lines() {
    let p = BoardProfile::load(&boards_dir().join("jetson-orin-nano-devkit.toml")).unwrap();
    assert!(matches!(
        p.camera,
        CameraConfig::V4l2 {
            format: PixelFormat::Yuyv,
            width: 1280,
            fps: 30,
            ..
        }
    ));
    let PinsConfig::GpioCdev {
        chip,
        trigger,
        reject,
        ..
    } = p.pins
    else {
        panic!("{:?}", p.pins)
    };
    assert_eq!(chip, PathBuf::from("tegra234-gpio"));
    let trigger = trigger.expect("triggered mode has a trigger line");
    assert_eq!(trigger.id, LineId::Name("PAC.06".into()));
    assert!(trigger.active_low && !reject.active_low);
    assert_eq!(p.inspection.mode, Mode::Triggered);
    assert_eq!(p.compute.cuda_ordinal(), Some(0));
    let agx = BoardProfile::load(&boards_dir().join("jetson-agx-orin-devkit.toml")).unwrap();
    let PinsConfig::GpioCdev { reject, .. } = agx.pins else {
        panic!()
    };
    assert_eq!(reject.id, LineId::Offset(85));
}

#[test]
fn missing_file_names_the_path() {
    let err = BoardProfile::load(Path::new("/nonexistent/kestrel/board.toml")).unwrap_err();
    assert!(matches!(err, BoardError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/kestrel/board.toml"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_refused() {
    let msg = refused(
        &replace(
            &sim_text(),
            "name = \"sim\"",
            "name = \"sim\"\ncolour = \"red\"",
        ),
        "colour",
    );
    assert!(msg.contains("unknown field `colour`"), "{msg}");
    let msg = refused(
        &replace(&sim_text(), "seed = 1", "seed = 1\nexposure = 3"),
        "camera",
    );
    assert!(msg.contains("exposure"), "{msg}");
    let msg = refused(
        &replace(&sim_text(), "max_clients = 4", "max_client = 4"),
        "tcp.max_client",
    );
    assert!(msg.contains("max_client") && msg.contains("line"), "{msg}");
    refused(
        &replace(
            &orin_text(),
            "reject = { name = \"PN.01\" }",
            "reject = { name = \"PN.01\", pull = \"up\" }",
        ),
        "pins",
    );
}

#[test]
fn wrong_types_and_unknown_variants_are_refused() {
    let msg = refused(
        &replace(&sim_text(), "queue_depth = 8", "queue_depth = \"eight\""),
        "inspection.queue_depth",
    );
    assert!(msg.contains("invalid type"), "{msg}");
    let msg = refused(
        &replace(&sim_text(), "kind = \"synthetic\"", "kind = \"gige\""),
        "camera.kind",
    );
    assert!(msg.contains("gige"), "{msg}");
    refused(
        &replace(&sim_text(), "mode = \"free-run\"", "mode = \"freerun\""),
        "inspection.mode",
    );
    refused(
        &replace(&orin_text(), "format = \"YUYV\"", "format = \"NV12\""),
        // Inside the tagged [camera] table the path stops at the table; the line number points at the key.
        "camera",
    );
}

#[test]
fn missing_keys_are_refused() {
    let msg = refused(
        &replace(&sim_text(), "reject_pulse_ms = 50\n", ""),
        "inspection",
    );
    assert!(msg.contains("reject_pulse_ms"), "{msg}");
}

/// (profile, text to replace, replacement, key the error must name, words the reason must contain)
const IMPOSSIBLE: &[(&str, &str, &str, &str, &str)] = &[
    // The synthetic product generator draws 32..=4096 px sides: refused at load, not when the camera opens.
    (
        "sim",
        "width = 256",
        "width = 5000",
        "camera.width",
        "out of range (32..=4096)",
    ),
    (
        "sim",
        "height = 256",
        "height = 16",
        "camera.height",
        "out of range (32..=4096)",
    ),
    (
        "sim",
        "fps = 30.0",
        "fps = 0.0",
        "camera.fps",
        "not a usable frame rate",
    ),
    (
        "orin",
        "fps = 30",
        "fps = 0",
        "camera.fps",
        "not a usable frame rate",
    ),
    (
        "sim",
        "baud = 921600",
        "baud = 11520",
        "serial.baud",
        "not a standard rate",
    ),
    (
        "sim",
        "reject_pulse_ms = 50",
        "reject_pulse_ms = 0",
        "inspection.reject_pulse_ms",
        "never rejects",
    ),
    (
        "sim",
        "queue_depth = 8",
        "queue_depth = 0",
        "inspection.queue_depth",
        "out of range",
    ),
    (
        "orin",
        "width = 1280",
        "width = 1281",
        "camera.width",
        "odd",
    ),
    (
        "orin",
        "buffers = 4",
        "buffers = 1",
        "camera.buffers",
        "out of range",
    ),
    (
        "sim",
        "width = 256",
        "width = 0",
        "camera.width",
        "out of range",
    ),
    (
        "sim",
        "reject_delay_ms = 250",
        "reject_delay_ms = 600000",
        "inspection.reject_delay_ms",
        "out of range",
    ),
    (
        "sim",
        "trigger_debounce_ms = 2",
        "trigger_debounce_ms = 5000",
        "inspection.trigger_debounce_ms",
        "out of range",
    ),
    (
        "sim",
        "listen = \"127.0.0.1:0\"",
        "listen = \"localhost\"",
        "tcp.listen",
        "not an IP:port",
    ),
    (
        "sim",
        "max_clients = 4",
        "max_clients = 0",
        "tcp.max_clients",
        "out of range",
    ),
    (
        "sim",
        "device = \"cpu\"",
        "device = \"gpu\"",
        "compute.device",
        "cuda:N",
    ),
    (
        "orin",
        "threads = 4",
        "threads = 0",
        "compute.threads",
        "out of range",
    ),
    (
        "sim",
        "id = \"sim-1\"",
        "id = \"sim 1\"",
        "unit.id",
        "not a valid unit id",
    ),
    (
        "orin",
        "device = \"/dev/ttyTHS0\"",
        "device = \"ttyTHS0\"",
        "serial.device",
        "absolute",
    ),
];

#[test]
fn impossible_values_are_refused() {
    let (sim, orin) = (sim_text(), orin_text());
    for &(base, from, to, key, reason) in IMPOSSIBLE {
        let text = if base == "sim" { &sim } else { &orin };
        let msg = refused(&replace(text, from, to), key);
        assert!(
            msg.contains(reason),
            "{to:?}: reason should say {reason:?}: {msg}"
        );
    }
}

#[test]
fn odd_width_is_fine_for_formats_without_pairs() {
    let text = replace(
        &replace(&orin_text(), "width = 1280", "width = 1281"),
        "format = \"YUYV\"",
        "format = \"GREY\"",
    );
    BoardProfile::from_toml_str(&text, &boards_dir().join("test.toml")).unwrap();
}

#[test]
fn inconsistent_pins_are_refused() {
    let orin = orin_text();
    let msg = refused(
        &replace(
            &orin,
            "trigger = { name = \"PAC.06\", active_low = true }\n",
            "",
        ),
        "pins.trigger",
    );
    assert!(msg.contains("triggered"), "{msg}");
    let msg = refused(
        &replace(
            &orin,
            "fault = { name = \"PQ.06\" }",
            "fault = { name = \"PN.01\" }",
        ),
        "pins.fault",
    );
    assert!(msg.contains("already used by pins.reject"), "{msg}");
    refused(
        &replace(
            &orin,
            "ready = { name = \"PQ.05\" }",
            "ready = { name = \"PQ.05\", offset = 105 }",
        ),
        "pins.ready",
    );
    refused(
        &replace(
            &orin,
            "ready = { name = \"PQ.05\" }",
            "ready = { active_low = true }",
        ),
        "pins.ready",
    );
}

#[test]
fn a_unit_needs_a_link() {
    let sim = sim_text();
    let start = sim.find("[tcp]").unwrap();
    let end = sim.find("[compute]").unwrap();
    let text = format!("{}{}", &sim[..start], &sim[end..]);
    refused(&text, "tcp");
}

#[test]
fn missing_files_are_refused() {
    let sim = sim_text();
    let msg = refused(
        &replace(
            &sim,
            "id = \"sim-1\"",
            "id = \"sim-1\"\nkey_file = \"no-such.key\"",
        ),
        "unit.key_file",
    );
    assert!(
        msg.contains("no-such.key") && msg.contains("does not exist"),
        "{msg}"
    );
    let dir_camera = "kind = \"directory\"\npath = \"no-such-frames\"\nfps = 5.0";
    let text = replace(
        &sim,
        "kind = \"synthetic\"\nwidth = 256\nheight = 256\nfps = 30.0\ndefect_every = 10\nseed = 1",
        dir_camera,
    );
    let msg = refused(&text, "camera.path");
    assert!(msg.contains("no-such-frames"), "{msg}");
}

#[test]
fn relative_files_resolve_against_the_profile_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("frames")).unwrap();
    std::fs::write(dir.path().join("unit.key"), "00").unwrap();
    let text = replace(
        &replace(
            &sim_text(),
            "id = \"sim-1\"",
            "id = \"sim-1\"\nkey_file = \"unit.key\"",
        ),
        "kind = \"synthetic\"\nwidth = 256\nheight = 256\nfps = 30.0\ndefect_every = 10\nseed = 1",
        "kind = \"directory\"\npath = \"frames\"\nfps = 5.0",
    );
    let path = dir.path().join("board.toml");
    std::fs::write(&path, text).unwrap();
    let p = BoardProfile::load(&path).unwrap();
    assert_eq!(p.unit.key_file.unwrap(), dir.path().join("unit.key"));
    assert_eq!(
        p.camera,
        CameraConfig::Directory {
            path: dir.path().join("frames"),
            fps: 5.0,
            looped: true
        }
    );
    assert_eq!(p.state_dir, dir.path().join("../target/sim-state"));
}
