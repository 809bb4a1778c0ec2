//! TCP link: accept host clients and run a session for each.
//!
//! Resources go to hosts that prove they hold the unit key, not to whoever opens a socket:
//! - a connection must authenticate within [`HANDSHAKE_DEADLINE`] or it is closed;
//! - at most [`MAX_HANDSHAKES`] connections may be in the handshake at once (more are closed on accept);
//! - the profile's `max_clients` slots are taken only at authentication, so idle or hostile sockets cannot lock a
//!   monitor out; an authenticated host over the limit gets `Nack(Busy)` saying so;
//! - an authenticated session silent for [`IDLE_TIMEOUT`] is closed, and TCP keepalive finds peers that vanished
//!   without a FIN (a pulled cable) even when the unit has nothing to send.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::session::{serve, SessionOptions};
use super::{LinkContext, LinkError, TCP_WRITE_TIMEOUT};

/// A TCP peer must authenticate within this long.
pub const HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
/// Connections allowed in the handshake at once.
pub const MAX_HANDSHAKES: usize = 32;
/// An authenticated host that sends nothing for this long is disconnected (monitors poll `Status` every second).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Keepalive probes after 30 s of silence, every 10 s.
fn keepalive(stream: &tokio::net::TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "TCP keepalive not set");
    }
}

/// Bind `addr` (port 0 = any free port); returns the listener and the address actually bound.
///
/// Synchronous (std bind, then handed to tokio) so a unit can be started from sync and async code alike; must be
/// called inside the link runtime's context (`Runtime::enter`).
pub fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), LinkError> {
    let err = |source| LinkError::Bind { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(err)?;
    std_listener.set_nonblocking(true).map_err(err)?;
    let local = std_listener.local_addr().map_err(err)?;
    let l = TcpListener::from_std(std_listener).map_err(err)?;
    Ok((l, local))
}

/// Accept clients until shutdown; each session runs in its own task.
pub async fn serve_tcp(listener: TcpListener, max_clients: usize, ctx: LinkContext) {
    let slots = Arc::new(Semaphore::new(max_clients.max(1)));
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut shutdown = ctx.shutdown.clone();
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: log, back off briefly, keep serving the others.
                tracing::warn!(error = %e, "accepting a TCP client failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        keepalive(&stream);
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing TCP client: {MAX_HANDSHAKES} connections are already in the handshake");
            continue;
        };
        tracing::info!(%peer, "TCP client connected");
        let ctx = ctx.clone();
        let slots = slots.clone();
        sessions.spawn(async move {
            let opts = SessionOptions {
                write_timeout: Some(TCP_WRITE_TIMEOUT),
                transport: "tcp",
                handshake_deadline: Some(HANDSHAKE_DEADLINE),
                idle_timeout: Some(IDLE_TIMEOUT),
                client_slots: Some(slots),
                handshake_permit: Some(handshake),
            };
            let end = serve(stream, ctx, opts).await;
            tracing::info!(%peer, ?end, "TCP client session ended");
        });
        // Reap finished sessions so the set does not grow with every connection ever made.
        while sessions.try_join_next().is_some() {}
    }
    // Sessions see the same shutdown flag, flush and end by themselves.
    while sessions.join_next().await.is_some() {}
}
