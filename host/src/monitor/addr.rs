//! Unit addresses as typed on the command line: `tcp://HOST:PORT` or `serial:///dev/ttyX[?baud=N]`.
//!
//! Parsed into a [`UnitAddr`] before any IO so a typo is a usage error (exit 2) naming what was wrong, not a
//! connection failure.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Serial baud rate when the address gives none. 115 200 is what every USB-serial adapter and Jetson UART accepts;
/// boards configured faster say so in the address (`?baud=921600`).
pub const DEFAULT_BAUD: u32 = 115_200;

/// Where a unit is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitAddr {
    /// TCP, `host:port` (a name or an IP; resolved at connect time, so a DHCP'd unit can move).
    Tcp {
        /// Host name or IP literal (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A serial device (UART, USB-serial adapter or pseudo-terminal).
    Serial {
        /// Device path, e.g. `/dev/ttyUSB0`.
        path: PathBuf,
        /// Line rate in baud.
        baud: u32,
    },
}

impl UnitAddr {
    /// Whether the link is a serial line (masks default to off there: a 64×64 mask costs ~0.4 s at 115 200 baud).
    pub fn is_serial(&self) -> bool {
        matches!(self, UnitAddr::Serial { .. })
    }
}

/// A unit address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad unit address `{text}`: {reason} (expected tcp://HOST:PORT or serial:///dev/ttyX[?baud=N])"
)]
pub struct AddrError {
    /// The address as given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for UnitAddr {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| AddrError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = text.strip_prefix("tcp://") {
            let rest = rest.trim_end_matches('/');
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(err("missing host"));
            }
            let port: u16 = port
                .parse()
                .map_err(|_| err("port must be a number 1-65535"))?;
            if port == 0 {
                return Err(err("port must be a number 1-65535"));
            }
            Ok(UnitAddr::Tcp {
                host: host.to_string(),
                port,
            })
        } else if let Some(rest) = text.strip_prefix("serial://") {
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (rest, None),
            };
            if !path.starts_with('/') {
                return Err(err(
                    "serial device must be an absolute path, e.g. serial:///dev/ttyUSB0",
                ));
            }
            let mut baud = DEFAULT_BAUD;
            for pair in query.into_iter().flat_map(|q| q.split('&')) {
                match pair.split_once('=') {
                    Some(("baud", v)) => {
                        baud = v
                            .parse()
                            .ok()
                            .filter(|b| *b > 0)
                            .ok_or_else(|| err("baud must be a positive number"))?;
                    }
                    _ => return Err(err(&format!("unknown option `{pair}` (only baud=N)"))),
                }
            }
            Ok(UnitAddr::Serial {
                path: PathBuf::from(path),
                baud,
            })
        } else {
            Err(err("unknown scheme"))
        }
    }
}

impl fmt::Display for UnitAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitAddr::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            UnitAddr::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            UnitAddr::Serial { path, baud } => {
                write!(f, "serial://{}?baud={baud}", path.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_serial() {
        assert_eq!(
            "tcp://127.0.0.1:7700".parse::<UnitAddr>().unwrap(),
            UnitAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 7700
            }
        );
        assert_eq!(
            "tcp://[::1]:9".parse::<UnitAddr>().unwrap(),
            UnitAddr::Tcp {
                host: "::1".into(),
                port: 9
            }
        );
        assert_eq!(
            "serial:///dev/ttyUSB0?baud=921600"
                .parse::<UnitAddr>()
                .unwrap(),
            UnitAddr::Serial {
                path: "/dev/ttyUSB0".into(),
                baud: 921_600
            }
        );
        let s: UnitAddr = "serial:///dev/pts/3".parse().unwrap();
        assert_eq!(
            s,
            UnitAddr::Serial {
                path: "/dev/pts/3".into(),
                baud: DEFAULT_BAUD
            }
        );
        assert!(s.is_serial());
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "tcp://unit-3.line:7700",
            "tcp://[::1]:9",
            "serial:///dev/ttyTHS0?baud=921600",
        ] {
            let a: UnitAddr = text.parse().unwrap();
            assert_eq!(a.to_string(), text);
            assert_eq!(a.to_string().parse::<UnitAddr>().unwrap(), a);
        }
    }

    #[test]
    fn refuses_bad_addresses_with_a_reason() {
        for (text, reason) in [
            ("127.0.0.1:7700", "unknown scheme"),
            ("tcp://host", "missing :PORT"),
            ("tcp://:80", "missing host"),
            ("tcp://h:0", "port"),
            ("tcp://h:99999", "port"),
            ("serial://ttyUSB0", "absolute path"),
            ("serial:///dev/ttyS0?baud=fast", "baud"),
            (
                "serial:///dev/ttyS0?parity=even",
                "unknown option `parity=even`",
            ),
        ] {
            let e = text.parse::<UnitAddr>().unwrap_err();
            assert!(e.to_string().contains(reason), "{text}: {e}");
            assert!(e.to_string().contains(text), "{e}");
        }
    }
}
