//! Supervision: the unit must never *look* alive while it is not inspecting.
//!
//! - **Heartbeats.** Each long-running thread (capture, inference, line I/O, links) beats a [`Heartbeats`] slot on
//!   every turn of its loop (they all wake at least every 100 ms). A thread that stops beating is hung or dead.
//! - **systemd watchdog.** Under systemd with `WatchdogSec=` (`boards/kestrel-edge.service`), [`Watchdog`] sends
//!   `WATCHDOG=1` to `$NOTIFY_SOCKET` every half period, but only while every thread beat within the last half
//!   period; otherwise it stops petting and logs which thread is stuck, and systemd kills and restarts the unit.
//!   It also sends `READY=1` once the unit is up and `STOPPING=1` at shutdown (`Type=notify`).
//! - **Panics** (installed by the binary, [`exit_on_panic`]): a panic in any thread ends the process with exit code
//!   1 after logging it, instead of leaving a process whose other threads keep the links open while, say, the
//!   inference thread is gone. systemd's `Restart=on-failure` brings it back.
//!
//! The notify protocol is a datagram with `KEY=VALUE` lines on a unix socket; written here with std so the firmware
//! does not need libsystemd.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A thread that has not beaten for this long counts as hung (for the "alive" output; the systemd watchdog uses
/// half its own period).
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// The threads that beat.
pub const THREADS: [&str; 4] = ["capture", "inference", "lines", "links"];

/// Last-beat times of the unit's threads (ms since the registry was created).
#[derive(Debug)]
pub struct Heartbeats {
    epoch: Instant,
    last_ms: [AtomicU64; THREADS.len()],
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeats {
    /// Every thread counts as having beaten now.
    pub fn new() -> Self {
        Heartbeats {
            epoch: Instant::now(),
            last_ms: Default::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Thread `index` (into [`THREADS`]) is alive.
    pub fn beat(&self, index: usize) {
        self.last_ms[index].store(self.now_ms(), Ordering::Relaxed);
    }

    /// The threads that have not beaten within `within`, by name.
    pub fn stale(&self, within: Duration) -> Vec<&'static str> {
        let now = self.now_ms();
        let limit = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        THREADS
            .iter()
            .zip(&self.last_ms)
            .filter(|(_, t)| now.saturating_sub(t.load(Ordering::Relaxed)) > limit)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Index of each thread in [`THREADS`].
pub mod thread {
    /// Capture.
    pub const CAPTURE: usize = 0;
    /// Inference.
    pub const INFERENCE: usize = 1;
    /// Line I/O.
    pub const LINES: usize = 2;
    /// Links (a tick task on the link runtime).
    pub const LINKS: usize = 3;
}

/// A connection to systemd's notify socket, when the process runs under systemd.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: String,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace); `None` when not set or unusable.
    pub fn from_env() -> Option<Notifier> {
        let addr = std::env::var("NOTIFY_SOCKET").ok()?;
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, addr })
    }

    /// Send one notification (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`).
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        if let Some(name) = self.addr.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            self.socket.send_to_addr(state.as_bytes(), &a)?;
        } else {
            self.socket.send_to(state.as_bytes(), &self.addr)?;
        }
        Ok(())
    }
}

/// The watchdog period systemd asks for (`$WATCHDOG_USEC`), when it is meant for this process (`$WATCHDOG_PID`).
pub fn watchdog_period() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let us: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (us > 0).then(|| Duration::from_micros(us))
}

/// The petting thread; see the module docs.
#[derive(Debug)]
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    notifier: Option<Arc<Notifier>>,
}

impl Watchdog {
    /// Notify `READY=1` and, if systemd asked for a watchdog, pet it while every thread beats.
    pub fn start(beats: Arc<Heartbeats>) -> Watchdog {
        let notifier = Notifier::from_env().map(Arc::new);
        let stop = Arc::new(AtomicBool::new(false));
        if let Some(n) = &notifier {
            if let Err(e) = n.notify("READY=1") {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        }
        let thread = match (&notifier, watchdog_period()) {
            (Some(n), Some(period)) => {
                let (n, stop) = (n.clone(), stop.clone());
                let half = period / 2;
                tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog on");
                std::thread::Builder::new()
                    .name("kestrel-watchdog".into())
                    .spawn(move || {
                        let mut reported = false;
                        while !stop.load(Ordering::Relaxed) {
                            let stale = beats.stale(half);
                            if stale.is_empty() {
                                let _ = n.notify("WATCHDOG=1");
                                reported = false;
                            } else if !reported {
                                tracing::error!(threads = ?stale, "threads stopped beating; letting systemd's watchdog restart the unit");
                                reported = true;
                            }
                            std::thread::sleep(half.min(Duration::from_secs(1)));
                        }
                    })
                    .ok()
            }
            _ => None,
        };
        Watchdog {
            stop,
            thread,
            notifier,
        }
    }

    /// Tell systemd the unit is stopping and end the petting thread.
    pub fn stop(&mut self) {
        if let Some(n) = &self.notifier {
            let _ = n.notify("STOPPING=1");
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Make a panic in any thread end the process (exit code 1) after the default report and a log line.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        tracing::error!(%thread, "panic: the unit stops so that its supervisor restarts it");
        eprintln!("kestrel-edge: a thread ({thread}) panicked; exiting so the supervisor restarts the unit");
        std::process::exit(i32::from(kestrel_wire::exit::FAILURE));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_threads_are_named() {
        let b = Heartbeats::new();
        std::thread::sleep(Duration::from_millis(30));
        for i in [thread::CAPTURE, thread::INFERENCE, thread::LINKS] {
            b.beat(i);
        }
        assert_eq!(b.stale(Duration::from_millis(20)), vec!["lines"]);
        assert!(b.stale(Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn notifications_reach_a_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr: path.display().to_string(),
        };
        n.notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
