//! `Status` → `Stats`: the unit's counters are consistent with what the stream showed.

use std::time::Duration;

use kestrel_hil::{verdicts, Monitor, SimOptions, Target, Update};

#[tokio::test]
async fn stats_count_what_was_inspected() {
    let target = Target::acquire(SimOptions::default()).unwrap();
    let mut m = Monitor::connect(target.monitor_options(target.tcp()))
        .await
        .unwrap();
    let seen = verdicts(&mut m, 20, Duration::from_secs(5)).await.unwrap();
    // Stats are polled every 200 ms by the harness's monitor options.
    let stats = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Update::Stats(s) = m.next().await.unwrap() {
                break s;
            }
        }
    })
    .await
    .expect("Stats within 3 s");
    assert!(stats.frames >= seen.len() as u64, "{stats:?}");
    assert_eq!(stats.frames, stats.passes + stats.rejects, "{stats:?}");
    assert!(stats.latency_p50_us <= stats.latency_p99_us, "{stats:?}");
    assert!(stats.latency_p99_us > 0, "{stats:?}");
    assert_eq!(stats.link_errors, 0, "{stats:?}");
    if target.sim().is_some() {
        // 1 in 4 scripted rejects; allow for where the counters happened to stop.
        let expected = stats.frames / 4;
        assert!(stats.rejects.abs_diff(expected) <= 1, "{stats:?}");
        assert_eq!(stats.missed_by_client, 0, "{stats:?}");
    }
}
