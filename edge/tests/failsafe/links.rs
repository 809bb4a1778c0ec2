//! Link hygiene on TCP: sockets that never authenticate are closed at the handshake deadline and never take a
//! client slot, so idle or hostile connections cannot lock a monitor out.

use std::time::{Duration, Instant};

use crate::common::{sim_profile, ScriptedInspector};
use kestrel_edge::board::Mode;
use kestrel_edge::{Unit, UnitOptions};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_neither_lock_a_monitor_out_nor_stay_open() {
    let tmp = tempfile::tempdir().unwrap();
    // max_clients = 4 in the test profile: twice that many idle sockets.
    let profile = sim_profile(tmp.path(), Mode::FreeRun, 4, 30.0);
    let unit = Unit::start(
        profile,
        UnitOptions {
            inspector: Some(Box::new(ScriptedInspector {
                reject_every: 0,
                delay: Duration::from_millis(5),
            })),
            ..Default::default()
        },
    )
    .unwrap();
    let a = unit.tcp_addr().unwrap();
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(a).await.unwrap());
    }
    let t = Instant::now();
    let s = crate::common::connect_unit(&unit).await;
    let connected_in = t.elapsed();
    assert!(
        connected_in < Duration::from_secs(6),
        "monitor authenticated after {connected_in:?}"
    );
    // Every idle socket is closed by the unit at the 5 s handshake deadline (after its Hello: read to EOF).
    for mut sock in idle {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(8), sock.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "an idle socket was still open after 8 s");
    }
    eprintln!("links: monitor authenticated {connected_in:?} after 8 idle sockets; all idle sockets closed");
    drop(s);
    tokio::task::spawn_blocking(move || unit.shutdown())
        .await
        .unwrap()
        .unwrap();
}
