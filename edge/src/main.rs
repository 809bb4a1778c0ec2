use clap::Parser;

/// kestrel-edge: inspection-unit firmware for Jetson-class boards.
///
/// This build is a placeholder until the edge issue lands: it only prints its version and the wire protocol version
/// it will speak. Camera capture, scoring, line I/O and host links are not in this build yet.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "kestrel-edge {} (wire protocol {}); firmware features land with the edge issue",
        kestrel_edge::FW_VERSION,
        kestrel_wire::PROTO_VERSION
    );
}
