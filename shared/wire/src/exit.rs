//! Process exit codes of the `kestrel` CLI and `kestrel-edge`: the one table every binary, its `--help` and the
//! README take their numbers from, so scripts, CI and the HIL harness can tell failures apart without parsing
//! messages.
//!
//! They live here (not in the host crate) because the edge and the test harness map the same conditions, and
//! because several of them are decided by wire data ([`crate::NackCode::exit_code`]). Values are `u8` for
//! `std::process::ExitCode::from`. 0–2 follow the usual convention (clap exits with 2 on a usage error); 5–8 are
//! only produced by commands that talk to a unit (`kestrel monitor`).

/// Success.
pub const SUCCESS: u8 = 0;
/// Unexpected failure (anything not covered below).
pub const FAILURE: u8 = 1;
/// Bad command line or configuration (arguments, board profile, state directory, key file).
pub const USAGE: u8 = 2;
/// Bad input data: a dataset layout, images, masks, anomaly maps or a CSV that cannot be used.
pub const BAD_DATA: u8 = 3;
/// Bad model: a model directory, backbone weights or a model bundle that cannot be loaded, verified or uploaded.
pub const BAD_MODEL: u8 = 4;
/// The unit could not be reached, or the link dropped.
pub const UNREACHABLE: u8 = 5;
/// The unit speaks another protocol version or schema.
pub const INCOMPATIBLE: u8 = 6;
/// Authentication with the unit key failed (or the unit refused a frame as unauthenticated).
pub const AUTH_FAILED: u8 = 7;
/// The unit refused a request for another reason ([`crate::Nack`]).
pub const REFUSED: u8 = 8;

/// Every code with the short meaning that `--help` and the README print (in this order, this wording).
pub const TABLE: [(u8, &str); 9] = [
    (SUCCESS, "success"),
    (FAILURE, "unexpected failure"),
    (USAGE, "bad command line"),
    (
        BAD_DATA,
        "bad input data (dataset, images, masks, maps, CSV)",
    ),
    (BAD_MODEL, "bad model directory, weights or bundle"),
    (UNREACHABLE, "unit unreachable or link lost"),
    (INCOMPATIBLE, "other protocol version or schema"),
    (AUTH_FAILED, "key refused"),
    (REFUSED, "request refused"),
];

/// The short meaning of `code` from [`TABLE`]; `None` for a code this table does not define.
pub fn meaning(code: u8) -> Option<&'static str> {
    TABLE.iter().find(|(c, _)| *c == code).map(|(_, m)| *m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_each_code_once_in_order() {
        let codes: alloc::vec::Vec<u8> = TABLE.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, (0..=8).collect::<alloc::vec::Vec<u8>>());
        assert_eq!(meaning(BAD_DATA), Some(TABLE[3].1));
        assert_eq!(meaning(9), None);
    }
}
