//! `kestrel-edge` binary: parse, run, map the outcome to an exit code (all logic is in the library).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Malloc and thread-pool settings for tensor work; first, while the process has one thread.
    kestrel_vision::process::tune_at_start();
    let cli = kestrel_edge::cli::Cli::parse();
    match kestrel_edge::run(cli) {
        Ok(()) => ExitCode::from(kestrel_wire::exit::SUCCESS),
        Err(e) => {
            eprint!("{}", kestrel_edge::cli::report(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
