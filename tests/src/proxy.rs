//! A TCP proxy the harness puts between a client and a unit, to force link drops that look to both ends like a
//! pulled cable or a switch reboot (connections reset mid-stream), on a simulated unit and on real hardware alike.

use std::net::SocketAddr;
use std::sync::Arc;

use kestrel_host::monitor::UnitAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections to a unit until [`TcpProxy::cut`] drops them all.
pub struct TcpProxy {
    addr: SocketAddr,
    cut_tx: Arc<watch::Sender<u64>>,
}

impl TcpProxy {
    /// Listen on a free loopback port and forward to `unit` (a `tcp://` address). Must be called within a tokio
    /// runtime; the proxy lives as long as that runtime.
    pub async fn start(unit: &UnitAddr) -> std::io::Result<TcpProxy> {
        let UnitAddr::Tcp { host, port } = unit.clone() else {
            return Err(std::io::Error::other("the proxy forwards TCP units only"));
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut_tx, _) = watch::channel(0u64);
        let cut_tx = Arc::new(cut_tx);
        let cuts = cut_tx.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                let (host, port) = (host.clone(), port);
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect((host.as_str(), port)).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.changed() => {}
                    }
                    // Dropping both sockets here resets the link for client and unit.
                });
            }
        });
        Ok(TcpProxy { addr, cut_tx })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> UnitAddr {
        UnitAddr::Tcp {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
        }
    }

    /// Drop every connection open now; new connections are forwarded again.
    pub fn cut(&self) {
        self.cut_tx.send_modify(|n| *n += 1);
    }
}
