//! `kestrel` binary: parse, run, map errors to documented exit codes (see `kestrel --help`).

fn main() -> std::process::ExitCode {
    // Malloc and thread-pool settings for tensor work; first, while the process has one thread.
    kestrel_vision::process::tune_at_start();
    let cli = match kestrel_host::cli::parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", kestrel_host::render_error(&e));
            return std::process::ExitCode::from(kestrel_wire::exit::USAGE);
        }
    };
    match kestrel_host::run(cli) {
        Ok(()) => std::process::ExitCode::from(kestrel_wire::exit::SUCCESS),
        Err(e) => {
            eprintln!("error: {}", kestrel_host::render_error(&e));
            std::process::ExitCode::from(kestrel_host::exit_code(&e))
        }
    }
}
