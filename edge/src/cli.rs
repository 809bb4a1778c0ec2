//! Command line of `kestrel-edge` (clap derive) and [`run`], the whole program behind `main`.
//!
//! Exit codes are `kestrel_wire::exit`'s (the help text below lists the three a unit uses; a test keeps the numbers
//! in step with the table).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::board::BoardProfile;
use crate::runtime::{EdgeError, Unit, UnitOptions};

/// kestrel-edge: inspection-unit firmware for Jetson-class boards.
///
/// Captures frames from the board's camera, scores each with an anomaly-detection model fitted by `kestrel fit`,
/// drives the reject output and lamps, journals every verdict, and streams verdicts to hosts (`kestrel monitor`)
/// over TCP and serial.
#[derive(Debug, Parser)]
#[command(version, about, long_about, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "\
Exit codes:
  0  stopped cleanly (SIGTERM or SIGINT)
  1  runtime failure (camera, pins, journal or link could not be opened)
  2  bad command line, board profile, state directory or key file

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=kestrel_edge=debug) for more detail.";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the inspection unit until SIGTERM/SIGINT.
    ///
    /// Example (simulated board, from a fresh clone):
    ///
    ///   kestrel-edge run --board boards/sim.toml
    ///
    /// The unit prints the TCP address and the serial (pty) path it listens on. Hosts authenticate with the unit
    /// key: by default `<state>/unit.key`, created on first start. Models arrive with `kestrel flash` (signed
    /// bundles, checked against the public keys in `<state>/trusted/`) and are kept in `<state>/models`; at every
    /// start the active one is verified and self-tested again, falling back to the previous one if it fails.
    /// Without a model the unit still runs, reports "no model" to hosts, lights the fault lamp and sends no
    /// verdicts.
    #[command(after_long_help = EXIT_CODES)]
    Run(RunArgs),
}

/// Arguments of `kestrel-edge run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Board profile (boards/<name>.toml): camera, pins, links, inspection mode, state directory.
    #[arg(long, value_name = "FILE", env = "KESTREL_BOARD")]
    pub board: PathBuf,
    /// State directory (journal, unit key, installed model); overrides `state_dir` in the profile.
    #[arg(long, value_name = "DIR", env = "KESTREL_STATE")]
    pub state: Option<PathBuf>,
    /// Development: a model directory from `kestrel fit` or a `.kbundle` (verified against `<state>/trusted/`),
    /// instead of the flashed model in `<state>/models`.
    #[arg(long, value_name = "DIR|FILE", env = "KESTREL_MODEL")]
    pub model: Option<PathBuf>,
    /// Pre-shared unit key file (64 hex digits); default: the profile's `unit.key_file`, else `<state>/unit.key`.
    #[arg(long, value_name = "FILE", env = "KESTREL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

/// Everything `main` does after parsing: logging, start, wait for a signal, clean shutdown.
pub fn run(cli: Cli) -> Result<(), EdgeError> {
    init_logging();
    crate::supervise::exit_on_panic();
    match cli.command {
        Command::Run(args) => {
            let profile = BoardProfile::load(&args.board)?;
            tracing::info!(board = %profile.name, unit = %profile.unit.id, fw = crate::FW_VERSION, "starting");
            let unit = Unit::start(
                profile,
                UnitOptions {
                    state_dir: args.state,
                    model_dir: args.model,
                    key_file: args.key_file,
                    handle_signals: true,
                    ..UnitOptions::default()
                },
            )?;
            eprintln!("kestrel-edge: unit key {}", unit.key_path().display());
            let sig = unit.wait();
            tracing::info!(signal = sig.unwrap_or("none"), "stop requested");
            unit.shutdown()
        }
    }
}

/// The text printed for a fatal error: the error, then each cause once, one per line. Library errors keep their
/// causes as `source()` instead of repeating them in their own message, so nothing is printed twice.
pub fn report(e: &dyn std::error::Error) -> String {
    let mut out = format!("kestrel-edge: error: {e}\n");
    for cause in std::iter::successors(e.source(), |c| c.source()) {
        out.push_str(&format!("  caused by: {cause}\n"));
    }
    out
}

/// Structured logs to stderr, filtered by `RUST_LOG` (default: info for kestrel, warn for the rest).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kestrel_edge=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn exit_code_help_lists_the_wire_table_codes() {
        use kestrel_wire::exit;
        let listed: Vec<(u8, &str)> = EXIT_CODES
            .lines()
            .filter_map(|l| {
                let (code, text) = l.trim_start().split_once("  ")?;
                Some((code.parse().ok()?, text))
            })
            .collect();
        let codes: Vec<u8> = listed.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, [exit::SUCCESS, exit::FAILURE, exit::USAGE]);
        // The edge's wording is its own (what each means on a unit), but the numbers are the table's.
        assert!(
            listed[2].1.starts_with(exit::meaning(exit::USAGE).unwrap()),
            "{listed:?}"
        );
    }

    #[test]
    fn report_prints_each_cause_once() {
        let e = EdgeError::StateDir {
            path: "/s".into(),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "Permission denied"),
        };
        let text = report(&e);
        assert_eq!(text.matches("Permission denied").count(), 1, "{text}");
        assert!(
            text.starts_with("kestrel-edge: error: cannot create the state directory /s"),
            "{text}"
        );
        assert!(text.ends_with("  caused by: Permission denied\n"), "{text}");
    }

    #[test]
    fn cli_is_consistent_and_parses_run() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "kestrel-edge",
            "run",
            "--board",
            "b.toml",
            "--model",
            "m",
            "--key-file",
            "k",
        ])
        .unwrap();
        let Command::Run(a) = c.command;
        assert_eq!(a.board, PathBuf::from("b.toml"));
        assert_eq!(a.model, Some(PathBuf::from("m")));
        assert_eq!(a.key_file, Some(PathBuf::from("k")));
        assert!(
            Cli::try_parse_from(["kestrel-edge", "run"]).is_err(),
            "--board is required"
        );
    }
}
