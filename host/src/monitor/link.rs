//! Opening a framed kestrel-wire link to a unit: TCP or a serial line, wrapped in kestrel-link's [`FramedLink`].
//!
//! The link only moves [`kestrel_wire::Envelope`]s; it knows nothing of authentication or sessions
//! ([`super::session`]). The framing itself (read loop, frame decoder, encode and flush) is kestrel-link's, shared
//! with the unit's own sessions.

use std::io;
use std::time::Duration;

pub use kestrel_link::{FramedLink, Transport};

use super::addr::UnitAddr;

/// How long a TCP connect may take before the unit counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Open the transport for `addr`.
pub async fn connect(addr: &UnitAddr) -> io::Result<FramedLink> {
    match addr {
        UnitAddr::Tcp { host, port } => {
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                )
            })??;
            // Verdicts are small and latency matters more than packet count.
            stream.set_nodelay(true)?;
            Ok(FramedLink::new(stream))
        }
        UnitAddr::Serial { path, baud } => {
            use tokio_serial::SerialPortBuilderExt;
            let port = tokio_serial::new(path.to_string_lossy(), *baud)
                .open_native_async()
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        SerialOpen {
                            path: path.clone(),
                            source: e,
                        },
                    )
                })?;
            Ok(FramedLink::new(port))
        }
    }
}

/// A serial port that would not open, keeping the driver's error as its source.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {}", path.display())]
struct SerialOpen {
    path: std::path::PathBuf,
    #[source]
    source: tokio_serial::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_tcp_is_an_io_error() {
        // Bind then drop a listener: the port is (almost certainly) closed now.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let addr = UnitAddr::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        assert!(connect(&addr).await.is_err());
    }

    #[tokio::test]
    async fn a_missing_serial_port_names_the_path_and_keeps_the_cause() {
        let addr = UnitAddr::Serial {
            path: "/dev/kestrel-no-such-tty".into(),
            baud: 115_200,
        };
        let e = connect(&addr).await.unwrap_err();
        let inner = e.get_ref().expect("a SerialOpen");
        assert!(
            inner.to_string().contains("/dev/kestrel-no-such-tty"),
            "{inner}"
        );
        assert!(inner.source().is_some());
    }
}
