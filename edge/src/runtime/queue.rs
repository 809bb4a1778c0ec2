//! The bounded hand-over between the capture thread and the inference thread.
//!
//! Two admission policies, one per inspection mode:
//! - **free-run** ([`FrameQueue::push_drop_oldest`]): a full queue drops its *oldest* frame, because the newest
//!   frame shows the line as it is now; the caller counts the drop.
//! - **triggered** ([`FrameQueue::push_part`]): every triggered part is a physical object that must get a verdict,
//!   so nothing is dropped: parts beyond the nominal depth are still queued and reported as an overflow (the runtime
//!   raises a fault). Only past a hard memory limit ([`HARD_LIMIT_FACTOR`] × depth) is a part refused, and the
//!   runtime then rejects it uninspected (fail-safe).
//!
//! A plain `Mutex<VecDeque>` + `Condvar`: one producer, one consumer, a handful of frames; no lock-free machinery
//! needed, and popping a whole batch under one lock lets inference batch frames that piled up.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Triggered parts may exceed the nominal depth up to this factor before being refused.
pub const HARD_LIMIT_FACTOR: usize = 4;

/// Result of admitting a triggered part.
#[derive(Debug, PartialEq, Eq)]
pub enum PartAdmission<T> {
    /// Queued within the nominal depth.
    Queued,
    /// Queued, but the queue is over its nominal depth (a fault condition).
    Overflow,
    /// Refused: the hard limit is reached. The item is handed back.
    Refused(T),
}

/// What [`FrameQueue::pop_batch`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<T> {
    /// One or more items, oldest first.
    Items(Vec<T>),
    /// Nothing arrived within the timeout.
    Timeout,
    /// The queue is closed and empty: the producer is gone.
    Closed,
}

#[derive(Debug)]
struct Inner<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A bounded multi-policy queue; see the module docs.
#[derive(Debug)]
pub struct FrameQueue<T> {
    depth: usize,
    inner: Mutex<Inner<T>>,
    ready: Condvar,
}

impl<T> FrameQueue<T> {
    /// A queue of nominal depth `depth` (at least 1).
    pub fn new(depth: usize) -> Self {
        Self {
            depth: depth.max(1),
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(depth.max(1)),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Free-run admission: returns the dropped oldest item when the queue was full.
    pub fn push_drop_oldest(&self, item: T) -> Option<T> {
        let mut g = self.lock();
        let dropped = if g.items.len() >= self.depth {
            g.items.pop_front()
        } else {
            None
        };
        g.items.push_back(item);
        drop(g);
        self.ready.notify_one();
        dropped
    }

    /// Triggered admission (never drops a queued part).
    pub fn push_part(&self, item: T) -> PartAdmission<T> {
        let mut g = self.lock();
        let len = g.items.len();
        if len >= self.depth * HARD_LIMIT_FACTOR {
            return PartAdmission::Refused(item);
        }
        g.items.push_back(item);
        drop(g);
        self.ready.notify_one();
        if len >= self.depth {
            PartAdmission::Overflow
        } else {
            PartAdmission::Queued
        }
    }

    /// Up to `max` oldest items, waiting at most `timeout` for the first.
    pub fn pop_batch(&self, max: usize, timeout: Duration) -> Pop<T> {
        let mut g = self.lock();
        if g.items.is_empty() && !g.closed {
            g = self
                .ready
                .wait_timeout_while(g, timeout, |i| i.items.is_empty() && !i.closed)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if g.items.is_empty() {
            return if g.closed { Pop::Closed } else { Pop::Timeout };
        }
        let n = max.max(1).min(g.items.len());
        Pop::Items(g.items.drain(..n).collect())
    }

    /// Nominal depth.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No more items will come; the consumer drains what is queued, then sees [`Pop::Closed`].
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn free_run_drops_the_oldest() {
        let q = FrameQueue::new(2);
        assert_eq!(q.push_drop_oldest(1), None);
        assert_eq!(q.push_drop_oldest(2), None);
        assert_eq!(q.push_drop_oldest(3), Some(1));
        assert_eq!(q.pop_batch(10, NOW), Pop::Items(vec![2, 3]));
    }

    #[test]
    fn triggered_parts_overflow_then_are_refused_at_the_hard_limit() {
        let q = FrameQueue::new(2);
        assert_eq!(q.push_part(0), PartAdmission::Queued);
        assert_eq!(q.push_part(1), PartAdmission::Queued);
        for i in 2..8 {
            assert_eq!(q.push_part(i), PartAdmission::Overflow);
        }
        assert_eq!(q.push_part(8), PartAdmission::Refused(8));
        assert_eq!(q.pop_batch(100, NOW), Pop::Items((0..8).collect()));
    }

    #[test]
    fn close_drains_then_reports_closed() {
        let q = FrameQueue::new(4);
        q.push_drop_oldest(1);
        q.close();
        assert_eq!(q.pop_batch(1, NOW), Pop::Items(vec![1]));
        assert_eq!(q.pop_batch(1, NOW), Pop::Closed);
    }

    #[test]
    fn pop_waits_for_a_producer_or_times_out() {
        let q = std::sync::Arc::new(FrameQueue::new(4));
        assert_eq!(q.pop_batch(1, Duration::from_millis(5)), Pop::<u8>::Timeout);
        let p = q.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            p.push_drop_oldest(9);
        });
        assert_eq!(q.pop_batch(4, Duration::from_secs(5)), Pop::Items(vec![9]));
        t.join().unwrap();
    }
}
