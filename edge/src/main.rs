//! `kestrel-edge` binary: parse, run, map the outcome to an exit code (all logic is in the library).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = kestrel_edge::cli::Cli::parse();
    match kestrel_edge::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kestrel-edge: error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                // Library errors often embed their source's text already; print a cause only when it adds something.
                let text = s.to_string();
                if !e.to_string().contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                src = s.source();
            }
            ExitCode::from(e.exit_code())
        }
    }
}
