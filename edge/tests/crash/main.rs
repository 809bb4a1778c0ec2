//! Fault injection from outside the process: the real `kestrel-edge` binary SIGKILLed while flashing
//! ([`crash_flash`]) and while journaling verdicts ([`crash_journal`]). One test binary; the long runs are
//! `cargo test -p kestrel-edge --test crash -- --ignored --nocapture`.

#[path = "../common/mod.rs"]
mod common;

mod crash_flash;
mod crash_journal;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kestrel_host::monitor::UnitAddr;

/// Start `kestrel-edge run --board BOARD` plus `extra` arguments and wait until it listens; returns the child and
/// its TCP address (read from the line the unit prints; stderr keeps being drained so the child never blocks).
pub fn spawn_edge(board: &Path, extra: &[&std::ffi::OsStr]) -> (Child, UnitAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kestrel-edge"))
        .args(["run", "--board"])
        .arg(board)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kestrel-edge");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("kestrel-edge: TCP link listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        }
    });
    let a = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("kestrel-edge listens within 60 s");
    let (host, port) = a.rsplit_once(':').unwrap();
    (
        child,
        UnitAddr::Tcp {
            host: host.into(),
            port: port.parse().unwrap(),
        },
    )
}

/// xorshift64*: reproducible kill instants without a rand dependency.
pub fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}
