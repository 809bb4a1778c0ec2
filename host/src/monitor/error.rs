//! What can go wrong talking to a unit, kept apart by cause so the CLI can give each its own exit code
//! ([`MonitorError::exit_code`], values from [`kestrel_wire::exit`]) and a one-line message saying which.
//!
//! Link failures (unreachable, dropped) are ours to retry; protocol and key mismatches are not, because retrying
//! cannot fix them. Refusals the unit sends as data (`Nack`) keep their [`NackCode`] (see `docs/wire.md`).

use std::time::Duration;

use kestrel_wire::{exit, AuthError, KeyFileError, NackCode};

use super::addr::{AddrError, UnitAddr};

/// A monitor/client failure. Variants caused by another error hold it as their `source()` (printed after the
/// message by the CLI), not its text.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The address did not parse.
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// The key file is missing or malformed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// No connection could be opened.
    #[error(
        "unit {addr} is unreachable (check the address, cabling and that kestrel-edge is running)"
    )]
    Unreachable {
        /// Where we tried.
        addr: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The link dropped (retried by the monitor; fatal for a single [`super::Session`]).
    #[error("link to {addr} dropped{}", if *.handshake { " during the handshake" } else { "" })]
    Disconnected {
        /// The unit.
        addr: String,
        /// Whether it dropped before the session was established.
        handshake: bool,
        /// What ended the link.
        #[source]
        source: std::io::Error,
    },
    /// The link dropped (or went silent) and could not be re-established in time.
    #[error("lost the link to {addr} and could not reconnect within {}s", within.as_secs())]
    LinkLost {
        /// The unit.
        addr: String,
        /// How long reconnection was tried.
        within: Duration,
        /// Why the last attempt failed.
        #[source]
        source: Box<MonitorError>,
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
        /// The link failure that signalled the refusal, if that is how the unit refused.
        #[source]
        source: Option<std::io::Error>,
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
    /// Our side of the authentication failed (no OS randomness, sequence numbers exhausted).
    #[error("{what} for unit {addr} failed")]
    Auth {
        /// The unit.
        addr: String,
        /// What we were doing.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: AuthError,
    },
    /// A local failure (writing a reject PNG, the terminal).
    #[error("{what}")]
    Local {
        /// What we were doing.
        what: String,
        /// Why it failed.
        #[source]
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
            MonitorError::Protocol { .. }
            | MonitorError::Auth { .. }
            | MonitorError::Local { .. } => exit::FAILURE,
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

    /// The message and every cause after it, `: `-separated (for updates that carry a failure as text).
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_sources_printed_once() {
        let e = MonitorError::LinkLost {
            addr: "tcp://u:1".into(),
            within: Duration::from_secs(3),
            source: Box::new(MonitorError::Unreachable {
                addr: "tcp://u:1".into(),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            }),
        };
        assert_eq!(e.exit_code(), exit::UNREACHABLE);
        let text = e.chain();
        assert!(text.starts_with("lost the link to tcp://u:1 and could not reconnect within 3s: unit tcp://u:1 is unreachable"), "{text}");
        assert_eq!(text.matches("refused").count(), 1, "{text}");
    }

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
                source: None,
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
