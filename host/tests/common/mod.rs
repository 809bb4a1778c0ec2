//! Helpers shared by the CLI integration tests (each test file is its own crate and includes this module).

use std::process::{Command, Output};

/// Run the `kestrel` binary built for this test run, on 2 threads like CI.
pub fn kestrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("spawn kestrel")
}

/// Fail the test with the exit code and both streams unless `out` succeeded.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "kestrel failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
