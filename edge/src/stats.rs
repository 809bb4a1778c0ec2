//! Unit counters and latency percentiles, reported to hosts as wire [`Stats`].
//!
//! Written by the capture and inference threads, read by every link task, so the counters are atomics (no lock on
//! the hot path) and only the latency window sits behind a short mutex. Percentiles are computed over the last
//! [`LATENCY_WINDOW`] verdicts rather than since boot: an operator asking "how fast is it now" after a model change
//! or a thermal throttle needs the recent figure, and a bounded window keeps memory and sort cost constant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kestrel_wire::Stats;

/// Number of most recent capture → verdict latencies the percentiles are taken over.
pub const LATENCY_WINDOW: usize = 1024;

/// Shared counters of one running unit.
#[derive(Debug)]
pub struct UnitStats {
    started: Instant,
    frames: AtomicU64,
    passes: AtomicU64,
    rejects: AtomicU64,
    dropped: AtomicU64,
    late: AtomicU64,
    uninspected: AtomicU64,
    latencies: Mutex<LatencyWindow>,
}

#[derive(Debug)]
struct LatencyWindow {
    ring: Vec<u32>,
    next: usize,
}

impl Default for UnitStats {
    fn default() -> Self {
        Self::new()
    }
}

impl UnitStats {
    /// Counters at zero; uptime counts from now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            frames: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            late: AtomicU64::new(0),
            uninspected: AtomicU64::new(0),
            latencies: Mutex::new(LatencyWindow {
                ring: Vec::with_capacity(LATENCY_WINDOW),
                next: 0,
            }),
        }
    }

    /// One frame was inspected with this verdict and capture → verdict latency.
    pub fn record_verdict(&self, pass: bool, latency: Duration) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.record_decision(pass);
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let mut w = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        if w.ring.len() < LATENCY_WINDOW {
            w.ring.push(us);
        } else {
            let i = w.next;
            w.ring[i] = us;
        }
        w.next = (w.next + 1) % LATENCY_WINDOW;
    }

    /// A verdict without an inspected frame (an uninspected part): counts as a pass or reject only.
    pub fn record_decision(&self, pass: bool) {
        if pass {
            self.passes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.rejects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `n` frames were dropped before inspection (free-run overload, trigger overflow).
    pub fn record_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// A part's verdict was not ready by its deadline (it got the `on_late` decision).
    pub fn record_late(&self) {
        self.late.fetch_add(1, Ordering::Relaxed);
    }

    /// A part was rejected without being scored.
    pub fn record_uninspected(&self) {
        self.uninspected.fetch_add(1, Ordering::Relaxed);
    }

    /// Late parts so far.
    pub fn late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// Uninspected parts so far.
    pub fn uninspected(&self) -> u64 {
        self.uninspected.load(Ordering::Relaxed)
    }

    /// Frames inspected so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Frames dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A wire snapshot; the two per-client fields come from the link asking.
    pub fn snapshot(&self, missed_by_client: u64, link_errors: u64) -> Stats {
        let (p50, p99) = {
            let w = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
            let mut v = w.ring.clone();
            drop(w);
            v.sort_unstable();
            (percentile(&v, 50.0), percentile(&v, 99.0))
        };
        Stats {
            frames: self.frames(),
            passes: self.passes.load(Ordering::Relaxed),
            rejects: self.rejects.load(Ordering::Relaxed),
            dropped: self.dropped(),
            latency_p50_us: p50,
            latency_p99_us: p99,
            uptime_s: self.started.elapsed().as_secs(),
            missed_by_client,
            link_errors,
            // Filled in by the runtime, which knows the models.
            model: None,
            previous_model: None,
            late: self.late(),
            uninspected: self.uninspected(),
        }
    }
}

/// Nearest-rank percentile of sorted values (0 for an empty set): the smallest value with at least `p`% of the
/// values at or below it. Nearest-rank rather than interpolated so the figure is a latency that really happened.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 99.0), 7);
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
    }

    #[test]
    fn counts_and_window_keep_only_recent_latencies() {
        let s = UnitStats::new();
        for _ in 0..LATENCY_WINDOW {
            s.record_verdict(true, Duration::from_millis(500));
        }
        // A full window of fast verdicts replaces every slow one.
        for _ in 0..LATENCY_WINDOW {
            s.record_verdict(false, Duration::from_micros(10));
        }
        s.record_dropped(3);
        let snap = s.snapshot(4, 5);
        assert_eq!(snap.frames, 2 * LATENCY_WINDOW as u64);
        assert_eq!(snap.passes, LATENCY_WINDOW as u64);
        assert_eq!(snap.rejects, LATENCY_WINDOW as u64);
        assert_eq!(snap.dropped, 3);
        assert_eq!((snap.latency_p50_us, snap.latency_p99_us), (10, 10));
        assert_eq!((snap.missed_by_client, snap.link_errors), (4, 5));
    }

    #[test]
    fn huge_latency_saturates() {
        let s = UnitStats::new();
        s.record_verdict(true, Duration::from_secs(10_000));
        assert_eq!(s.snapshot(0, 0).latency_p99_us, u32::MAX);
    }
}
