//! Line I/O on the real clock: a polling loop like the runtime's I/O thread drives the fake reject output from the
//! schedule, and the fake board's timestamped transition log shows the pulses where the profile puts them
//! (issue 5, item 3: reject_delay_ms / reject_pulse_ms on a monotonic clock).

use std::time::{Duration, Instant};

use kestrel_edge::board::PinsConfig;
use kestrel_edge::pins::{self, RejectScheduler, Signal, TriggerDetector};

/// Generous bound for scheduling jitter on a loaded 2-core CI machine; the logic itself is exact (unit tests).
const SLACK: Duration = Duration::from_millis(15);

#[test]
fn reject_pulses_land_delay_after_capture_and_last_the_pulse() {
    let (mut io, board) = pins::open(&PinsConfig::Fake).unwrap();
    let board = board.unwrap();
    let delay = Duration::from_millis(30);
    let pulse = Duration::from_millis(20);
    let mut sched = RejectScheduler::new(delay, pulse);
    let t0 = Instant::now();
    // Two rejected parts 100 ms apart, and a third 10 ms after the second (its pulse merges with the second's).
    let captures = [
        t0,
        t0 + Duration::from_millis(100),
        t0 + Duration::from_millis(110),
    ];
    for c in captures {
        sched.schedule(c);
    }
    // The I/O thread: sleep until the next deadline, poll, repeat.
    while let Some(deadline) = sched.next_deadline() {
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
        sched.poll(Instant::now(), &mut io.reject).unwrap();
    }
    let log = board.transitions_of(Signal::Reject);
    let levels: Vec<bool> = log.iter().map(|t| t.high).collect();
    assert_eq!(
        levels,
        [true, false, true, false],
        "two pulses (the third part merged): {log:?}"
    );
    let expect = [
        (captures[0] + delay, pulse),
        (captures[1] + delay, pulse + Duration::from_millis(10)),
    ];
    for (pair, (start, width)) in log.chunks(2).zip(expect) {
        let (rise, fall) = (pair[0].at, pair[1].at);
        assert!(
            rise >= start && rise - start < SLACK,
            "pulse started {:?} late",
            rise - start
        );
        let got = fall - rise;
        assert!(
            got + SLACK > width && got < width + SLACK,
            "pulse lasted {got:?}, want {width:?}"
        );
    }
    let stats = sched.stats();
    assert_eq!((stats.scheduled, stats.pulses, stats.missed), (3, 2, 0));
    assert!(!board.level(Signal::Reject));
}

#[test]
fn trigger_edges_from_the_board_are_debounced() {
    let (mut io, board) = pins::open(&PinsConfig::Fake).unwrap();
    let board = board.unwrap();
    let trigger = io.trigger.as_mut().unwrap();
    let mut det = TriggerDetector::new(Duration::from_millis(3));
    assert_eq!(
        det.poll(trigger).unwrap(),
        None,
        "first sample sets the level"
    );
    // A bounce shorter than the debounce, then a real part.
    board.set_trigger(true);
    assert_eq!(det.poll(trigger).unwrap(), None);
    board.set_trigger(false);
    assert_eq!(det.poll(trigger).unwrap(), None);
    board.set_trigger(true);
    let rose = Instant::now();
    let mut edge = None;
    while edge.is_none() && rose.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(1));
        edge = det.poll(trigger).unwrap();
    }
    let edge = edge.expect("a stable high is a part");
    assert!(
        edge >= rose - Duration::from_millis(1) && edge <= rose + SLACK,
        "edge dated at the rise"
    );
    assert_eq!((det.edges(), det.glitches()), (1, 1));
}
