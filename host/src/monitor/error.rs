//! What can go wrong talking to a unit, kept apart by cause so the CLI can give each its own exit code
//! ([`MonitorError::exit_code`], values from [`kestrel_wire::exit`]) and a one-line message saying which.
//!
//! Link failures (unreachable, dropped) are ours to retry; protocol and key mismatches are not, because retrying
//! cannot fix them. Refusals the unit sends as data (`Nack`) keep their [`NackCode`] (STYLE lesson 4).

use std::time::Duration;

use kestrel_wire::{exit, NackCode};

use super::addr::{AddrError, UnitAddr};
use super::key::KeyFileError;

/// A monitor/client failure.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The address did not parse.
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// The key file is missing or malformed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// No connection could be opened.
    #[error("unit {addr} is unreachable: {source}; check the address, cabling and that kestrel-edge is running")]
    Unreachable {
        /// Where we tried.
        addr: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The link dropped or went silent (retried by the monitor; fatal for a single [`super::Session`]).
    #[error("link to {addr} dropped: {cause}")]
    Disconnected {
        /// The unit.
        addr: String,
        /// What ended the link.
        cause: String,
    },
    /// The link dropped (or went silent) and could not be re-established in time.
    #[error("lost the link to {addr} ({cause}) and could not reconnect within {}s", within.as_secs())]
    LinkLost {
        /// The unit.
        addr: String,
        /// What ended the link.
        cause: String,
        /// How long reconnection was tried.
        within: Duration,
    },
    /// The peer speaks another protocol version or schema (or not kestrel-wire at all).
    #[error("unit {addr} speaks another protocol: {detail}; use a kestrel CLI built for the unit's firmware (or update the unit)")]
    Incompatible {
        /// The unit.
        addr: String,
        /// What differs.
        detail: String,
    },
    /// Authentication failed: the unit refused our key, or could not prove it holds it.
    #[error("unit {addr} refused the key: {detail}; check --key-file matches the unit's key")]
    AuthRefused {
        /// The unit.
        addr: String,
        /// What happened.
        detail: String,
    },
    /// The unit answered a request with a `Nack`.
    #[error("unit {addr} refused {request}: {code:?} {detail}")]
    Refused {
        /// The unit.
        addr: String,
        /// The request refused.
        request: &'static str,
        /// Why, as data.
        code: NackCode,
        /// The unit's detail text.
        detail: String,
    },
    /// The peer broke the protocol (unexpected message in a handshake step).
    #[error("unit {addr} broke the protocol: {detail}")]
    Protocol {
        /// The unit.
        addr: String,
        /// What was wrong.
        detail: String,
    },
    /// A local failure (writing a reject PNG, the terminal).
    #[error("{what}: {source}")]
    Local {
        /// What we were doing.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl MonitorError {
    /// Process exit code for this failure (see `kestrel monitor --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            MonitorError::Addr(_) | MonitorError::KeyFile(_) => exit::USAGE,
            MonitorError::Unreachable { .. }
            | MonitorError::Disconnected { .. }
            | MonitorError::LinkLost { .. } => exit::UNREACHABLE,
            MonitorError::Incompatible { .. } => exit::INCOMPATIBLE,
            MonitorError::AuthRefused { .. } => exit::AUTH_FAILED,
            MonitorError::Refused { code, .. } => code.exit_code(),
            MonitorError::Protocol { .. } | MonitorError::Local { .. } => exit::FAILURE,
        }
    }

    /// Whether reconnecting may help (link trouble), as opposed to a mismatch that will recur.
    pub fn is_link_failure(&self) -> bool {
        matches!(
            self,
            MonitorError::Unreachable { .. }
                | MonitorError::Disconnected { .. }
                | MonitorError::LinkLost { .. }
        )
    }

    pub(crate) fn unreachable(addr: &UnitAddr, source: std::io::Error) -> Self {
        MonitorError::Unreachable {
            addr: addr.to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_has_its_own_exit_code() {
        let addr = "tcp://u:1".to_string();
        let codes = [
            MonitorError::Unreachable {
                addr: addr.clone(),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            }
            .exit_code(),
            MonitorError::Incompatible {
                addr: addr.clone(),
                detail: String::new(),
            }
            .exit_code(),
            MonitorError::AuthRefused {
                addr: addr.clone(),
                detail: String::new(),
            }
            .exit_code(),
            MonitorError::Refused {
                addr,
                request: "Replay",
                code: NackCode::ReplayUnavailable,
                detail: String::new(),
            }
            .exit_code(),
        ];
        assert_eq!(
            codes,
            [
                exit::UNREACHABLE,
                exit::INCOMPATIBLE,
                exit::AUTH_FAILED,
                exit::REFUSED
            ]
        );
    }
}
