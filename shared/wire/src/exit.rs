//! Process exit codes of the `kestrel` CLI and `kestrel-edge`, shared so scripts, CI and the HIL harness can tell
//! failures apart without parsing messages.
//!
//! They live here (not in the host crate) because the edge and the test harness map the same conditions, and
//! because several of them are decided by wire data ([`crate::NackCode::exit_code`]). Values are `u8` for
//! `std::process::ExitCode::from`. 0–2 follow the usual convention (clap exits with 2 on a usage error).

/// Success.
pub const SUCCESS: u8 = 0;
/// Unexpected failure (anything not covered below).
pub const FAILURE: u8 = 1;
/// Bad command line or configuration.
pub const USAGE: u8 = 2;
/// `kestrel eval` ran, but a metric is below its required threshold.
pub const BELOW_THRESHOLD: u8 = 3;
/// A bundle failed to parse, verify or upload intact.
pub const BAD_BUNDLE: u8 = 4;
/// The unit could not be reached, or the link dropped.
pub const UNREACHABLE: u8 = 5;
/// The unit speaks another protocol version or schema.
pub const INCOMPATIBLE: u8 = 6;
/// Authentication with the unit key failed (or the unit refused a frame as unauthenticated).
pub const AUTH_FAILED: u8 = 7;
/// The unit refused a request for another reason ([`crate::Nack`]).
pub const REFUSED: u8 = 8;
