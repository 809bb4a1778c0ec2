//! Serial link: one session at a time on a UART (`/dev/ttyTHS1`, a USB adapter) or, on the simulated board, on the
//! master side of a pseudo-terminal whose slave path the unit publishes for the host to open.
//!
//! The edge keeps its own handle on the pty slave open for the unit's lifetime. Without it the master reads fail
//! with EIO whenever no host has the slave open, and the slave's terminal settings (raw mode, set at creation) would
//! be reset by the kernel when the last opener closes it.
//!
//! The baud rate is applied to real UARTs; a pty has no line rate (it moves bytes as fast as both sides go).

use std::path::PathBuf;
use std::time::Duration;

use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use super::session::{serve, SessionEnd, SessionOptions};
use super::{LinkContext, LinkError};

/// An opened serial endpoint.
pub struct SerialLink {
    port: SerialStream,
    /// The pty slave, held open (see module docs); `None` for a real device.
    _slave: Option<SerialStream>,
    /// Path a host opens: the pty slave, or the device itself.
    pub path: PathBuf,
}

impl std::fmt::Debug for SerialLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialLink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SerialLink {
    /// Open a UART at `baud` (8N1, no flow control).
    pub fn open_device(device: &std::path::Path, baud: u32) -> Result<Self, LinkError> {
        let name = device.to_string_lossy().into_owned();
        let port = tokio_serial::new(&name, baud)
            .open_native_async()
            .map_err(|source| LinkError::Serial {
                device: name.clone(),
                source,
            })?;
        Ok(Self {
            port,
            _slave: None,
            path: device.to_path_buf(),
        })
    }

    /// Create a pseudo-terminal pair; the host opens [`SerialLink::path`].
    pub fn open_pty() -> Result<Self, LinkError> {
        let (master, slave) = SerialStream::pair().map_err(LinkError::Pty)?;
        let path = slave.name().map(PathBuf::from).ok_or_else(|| {
            LinkError::Pty(tokio_serial::Error::new(
                tokio_serial::ErrorKind::Unknown,
                "pty slave has no name",
            ))
        })?;
        Ok(Self {
            port: master,
            _slave: Some(slave),
            path,
        })
    }
}

/// Serve sessions on the line until shutdown: when one ends (host gone, failed handshake), the next starts.
pub async fn serve_serial(mut link: SerialLink, ctx: LinkContext) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let opts = SessionOptions::serial();
        let end = serve(&mut link.port, ctx.clone(), opts).await;
        tracing::info!(path = %link.path.display(), ?end, "serial session ended");
        match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Io(_) | SessionEnd::PeerClosed => {
                // A UART unplugged or a read error: wait a little rather than spin, then listen again.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            _ => {}
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
