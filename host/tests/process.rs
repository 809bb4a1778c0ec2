//! How a `kestrel` process ends: exit codes as documented (README, `--help`, kestrel-wire's table agree), and
//! output piped into a reader that stops early (`| head`) ends quietly with the work done.

use std::process::{Command, Stdio};

use kestrel_wire::exit;

mod common;
use common::assert_success;

/// The README's `### Exit codes` section as (code, meaning) pairs.
fn readme_exit_codes() -> Vec<(u8, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("### Exit codes")
        .nth(1)
        .expect("README has an `### Exit codes` section");
    let text: String = section
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    // The list ends at the first full stop; what follows says where the table lives.
    let list = text.split(". ").next().unwrap().trim_end_matches('.');
    list.replace("`kestrel monitor`: ", "")
        .split(" · ")
        .map(|item| {
            let (code, meaning) = item.trim().split_once(' ').expect("`N meaning`");
            (code.parse().expect("a code number"), meaning.to_string())
        })
        .collect()
}

#[test]
fn readme_lists_the_wire_exit_code_table() {
    let table: Vec<(u8, String)> = exit::TABLE
        .iter()
        .map(|(c, m)| (*c, m.to_string()))
        .collect();
    assert_eq!(readme_exit_codes(), table);
}

#[test]
fn help_lists_the_wire_exit_code_table() {
    let out = common::kestrel(&["--help"]);
    assert_success(&out);
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(help.contains(&kestrel_host::exit_codes_help()), "{help}");
    for (code, meaning) in exit::TABLE {
        assert!(
            help.contains(&format!("{code} {meaning}")),
            "{code} {meaning} missing: {help}"
        );
    }
}

#[test]
fn monitor_help_names_the_codes_monitor_can_exit_with() {
    let out = common::kestrel(&["monitor", "--help"]);
    assert_success(&out);
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let para = help
        .split("Exit codes")
        .nth(1)
        .expect("an exit-code paragraph");
    let para = para.split("\n\n").next().unwrap();
    let mut codes: Vec<u8> = para
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        [
            exit::SUCCESS,
            exit::FAILURE,
            exit::USAGE,
            exit::UNREACHABLE,
            exit::INCOMPATIBLE,
            exit::AUTH_FAILED,
            exit::REFUSED
        ],
        "{para}"
    );
}

#[test]
fn a_closed_stdout_ends_quietly_and_the_work_is_done() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("samples");
    // The reader is gone before the first line: every line kestrel prints meets a broken pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args([
            "synth", "fractal", "-n", "2", "--size", "32", "--seed", "1", "-o",
        ])
        .arg(&dir)
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(exit::SUCCESS as i32),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for name in ["0000.png", "0001.png", "0001.json"] {
        assert!(dir.join(name).is_file(), "{name} written");
    }
}
