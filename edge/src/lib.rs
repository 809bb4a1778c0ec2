//! kestrel-edge: inspection-unit firmware. Camera capture, scoring, line I/O and links land with the edge issue; this
//! build only reports its version.

/// Firmware version string reported by `--version` and, later, in the `Hello` handshake.
pub const FW_VERSION: &str = env!("CARGO_PKG_VERSION");
