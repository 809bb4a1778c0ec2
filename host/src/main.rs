//! `kestrel` binary: parse, run, map errors to documented exit codes (see `kestrel --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kestrel_host::cli::Cli::parse();
    match kestrel_host::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(kestrel_host::exit_code(&e))
        }
    }
}
