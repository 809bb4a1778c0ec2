//! Supervision from outside the process: the real `kestrel-edge` binary under a fake systemd (a notify socket and
//! `WATCHDOG_USEC`) says READY=1, pets the watchdog while its threads beat and STOPPING=1 at SIGTERM; and a panic
//! in any thread ends the process with exit code 1 (checked by re-running this test binary as the panicking child).

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn board(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("board.toml");
    std::fs::write(
        &path,
        format!(
            r#"name = "watchdog-sim"
state_dir = "{}"
[camera]
kind = "synthetic"
width = 64
height = 64
fps = 30.0
[pins]
kind = "fake"
[inspection]
mode = "free-run"
queue_depth = 2
reject_delay_ms = 200
reject_pulse_ms = 10
[tcp]
listen = "127.0.0.1:0"
max_clients = 2
[compute]
device = "cpu"
[unit]
id = "watchdog-1"
"#,
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_unit_notifies_systemd_and_pets_its_watchdog() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kestrel-edge"))
        .args(["run", "--board"])
        .arg(board(tmp.path()))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1");
    let t = Instant::now();
    let mut pets = 0;
    while t.elapsed() < Duration::from_secs(1) {
        if recv() == "WATCHDOG=1" {
            pets += 1;
        }
    }
    assert!(
        pets >= 3,
        "{pets} WATCHDOG=1 in a second with a 400 ms period"
    );
    // SIGTERM: a clean stop says so first.
    sigterm(child.id());
    let mut stopping = false;
    for _ in 0..20 {
        if recv() == "STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The child half of the panic test: only runs when re-executed by the parent.
#[test]
#[ignore = "helper: re-executed by a_panic_in_any_thread_ends_the_process_with_exit_code_1"]
fn panicking_child() {
    if std::env::var_os("KESTREL_PANIC_CHILD").is_none() {
        return;
    }
    kestrel_edge::supervise::exit_on_panic();
    std::thread::Builder::new()
        .name("kestrel-inference".into())
        .spawn(|| panic!("simulated bug in the inference thread"))
        .unwrap();
    // The main thread would go on forever; only the hook can end the process.
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn a_panic_in_any_thread_ends_the_process_with_exit_code_1() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "supervise::panicking_child",
            "--ignored",
            "--nocapture",
        ])
        .env("KESTREL_PANIC_CHILD", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kestrel-inference") && err.contains("panicked"),
        "{err}"
    );
}
