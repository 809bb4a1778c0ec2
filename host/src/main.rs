//! `kestrel` binary: parse, run, map errors to documented exit codes (see `kestrel --help`).

fn main() -> std::process::ExitCode {
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
