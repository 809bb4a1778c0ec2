//! kestrel host: the `kestrel` command-line tool as a library (the binary only parses and calls [`run`]).
//!
//! Each subcommand lives in [`commands`]; shared glue (loading and batching images, progress bars) in [`images`] and
//! [`progress`]. Errors are `anyhow` here, at the top; the typed errors of kestrel-vision decide the exit code.

pub mod cli;
pub mod commands;
pub mod images;
pub mod monitor;
pub mod output;
pub mod pretrain;
pub mod progress;
pub mod synth;

use kestrel_bundle::BundleError;
use kestrel_vision::backbone::BackboneError;
use kestrel_vision::bundle::BundleModelError;
use kestrel_vision::dataset::DatasetError;
use kestrel_vision::metrics::MetricsError;
use kestrel_vision::model::ModelError;
use kestrel_vision::preprocess::PreprocessError;
use kestrel_wire::exit;

/// Run a parsed command line.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    use cli::Command;
    match cli.command {
        Command::Fit(a) => commands::fit::run(&a),
        Command::Eval(a) => commands::eval::run(&a),
        Command::Predict(a) => commands::predict::run(&a),
        Command::Metrics(a) => commands::metrics::run(&a),
        Command::Import(a) => commands::import::run(&a),
        Command::Demo(a) => commands::demo::run(&a),
        Command::Synth(a) => commands::synth::run(&a),
        Command::Pretrain(a) => commands::pretrain::run(&a),
        Command::Monitor(a) => commands::monitor::run(&a),
        Command::Keygen(a) => commands::keygen::run(&a),
        Command::Export(a) => commands::export::run(&a),
        Command::Flash(a) => commands::flash::run(&a),
        Command::Bench(a) => commands::bench::run(&a),
    }
}

/// The exit-code paragraph of `kestrel --help`, generated from kestrel-wire's [`exit::TABLE`] (codes 5 and up only
/// come from commands that talk to a unit).
pub fn exit_codes_help() -> String {
    let mut text = String::from("Exit codes: ");
    for (i, (code, meaning)) in exit::TABLE.iter().enumerate() {
        if *code == exit::UNREACHABLE {
            text.push_str("; `monitor`: ");
        } else if i > 0 {
            text.push_str(", ");
        }
        text.push_str(&format!("{code} {meaning}"));
    }
    text.push('.');
    text
}

/// The message printed for an error: every cause in the chain, each once. Library errors often repeat their source
/// in their own message (so they read well alone); this keeps `kestrel` from printing that text twice.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The documented exit code for an error: kestrel-wire's [`exit`] table, as `kestrel --help` and the README list it.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(m) = cause.downcast_ref::<monitor::MonitorError>() {
            return m.exit_code();
        }
        if cause.is::<DatasetError>() || cause.is::<MetricsError>() || cause.is::<PreprocessError>()
        {
            return exit::BAD_DATA;
        }
        if cause.is::<crate::pretrain::PretrainError>() {
            return match cause.downcast_ref::<crate::pretrain::PretrainError>() {
                Some(
                    crate::pretrain::PretrainError::Checkpoint { .. }
                    | crate::pretrain::PretrainError::ResumeMismatch { .. },
                ) => exit::BAD_MODEL,
                Some(crate::pretrain::PretrainError::Synth(_)) => exit::BAD_DATA,
                _ => exit::FAILURE,
            };
        }
        if let Some(b) = cause.downcast_ref::<BundleError>() {
            return match b {
                // A key file given on the command line that cannot be used (like `monitor --key-file`).
                BundleError::KeyFile { .. }
                | BundleError::InsecureKeyFile { .. }
                | BundleError::NoTrustedKeysIn { .. } => exit::USAGE,
                _ => exit::BAD_MODEL,
            };
        }
        if cause.is::<commands::Untrusted>() {
            return exit::USAGE;
        }
        if cause.is::<BackboneError>() || cause.is::<BundleModelError>() {
            return exit::BAD_MODEL;
        }
        if let Some(m) = cause.downcast_ref::<ModelError>() {
            return match m {
                ModelError::InputShape { .. } => exit::BAD_DATA,
                _ => exit::BAD_MODEL,
            };
        }
    }
    exit::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_errors_name_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(DatasetError::Io {
            path: "/data/x".into(),
            source: io,
        })
        .context("opening the dataset");
        let text = render_error(&e);
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        assert!(
            text.starts_with("opening the dataset: cannot read /data/x"),
            "{text}"
        );
        assert_eq!(exit_code(&e), exit::BAD_DATA);
    }
}
