//! TCP link: accept host clients (several at once, up to the profile's `max_clients`) and run a session for each.
//!
//! A connection over the limit gets one untagged `Nack(Busy)` saying how many clients the unit serves, and is
//! closed, so the host prints a reason instead of hanging.

use std::net::SocketAddr;
use std::sync::Arc;

use kestrel_link::FrameWriter;
use kestrel_wire::{Envelope, Msg, Nack, NackCode};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::session::{serve, SessionOptions};
use super::{LinkContext, LinkError, TCP_WRITE_TIMEOUT};

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
    let mut shutdown = ctx.shutdown.clone();
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: log, back off briefly, keep serving the others.
                tracing::warn!(error = %e, "accepting a TCP client failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_clients, "refusing TCP client: unit is at its client limit");
            let detail = format!(
                "unit serves at most {max_clients} clients at once; close another monitor first"
            );
            let env = Envelope::new(
                0,
                Msg::Nack(Nack {
                    re: 0,
                    code: NackCode::Busy,
                    detail,
                }),
            );
            let mut refusal = FrameWriter::new();
            let _ = tokio::time::timeout(TCP_WRITE_TIMEOUT, refusal.send(&mut stream, &env)).await;
            continue;
        };
        tracing::info!(%peer, "TCP client connected");
        let ctx = ctx.clone();
        sessions.spawn(async move {
            let opts = SessionOptions {
                write_timeout: Some(TCP_WRITE_TIMEOUT),
                transport: "tcp",
            };
            let end = serve(stream, ctx, opts).await;
            tracing::info!(%peer, ?end, "TCP client session ended");
            drop(permit);
        });
        // Reap finished sessions so the set does not grow with every connection ever made.
        while sessions.try_join_next().is_some() {}
    }
    // Sessions see the same shutdown flag, flush and end by themselves.
    while sessions.join_next().await.is_some() {}
}
