//! The serial link (the sim's pseudo-terminal at a nominal 921 600 baud, or `KESTREL_UNIT_SERIAL`): same handshake,
//! verdicts and stats as TCP, over a byte stream without connection semantics.

use std::time::Duration;

use kestrel_hil::{verdicts, Monitor, SimOptions, Target, Update};

#[tokio::test]
async fn verdicts_and_stats_over_serial() {
    let target = Target::acquire(SimOptions {
        serial: true,
        ..SimOptions::default()
    })
    .unwrap();
    let Some(serial) = target.serial() else {
        eprintln!("skipped: no serial link (set KESTREL_UNIT_SERIAL for a real unit)");
        return;
    };
    let mut m = Monitor::connect(target.monitor_options(serial))
        .await
        .unwrap();
    let got = verdicts(&mut m, 10, Duration::from_secs(5)).await.unwrap();
    for w in got.windows(2) {
        assert_eq!(w[1].0.seq, w[0].0.seq + 1);
    }
    assert!(
        got.iter().all(|(v, _)| v.mask.is_none()),
        "serial subscriptions default to no masks"
    );
    let stats = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Update::Stats(s) = m.next().await.unwrap() {
                break s;
            }
        }
    })
    .await
    .expect("Stats within 3 s");
    assert_eq!(stats.link_errors, 0, "{stats:?}");
}

#[tokio::test]
async fn serial_reconnect_resumes_the_stream() {
    let target = Target::acquire(SimOptions {
        serial: true,
        ..SimOptions::default()
    })
    .unwrap();
    let Some(serial) = target.serial() else {
        eprintln!("skipped: no serial link");
        return;
    };
    let opts = target.monitor_options(serial);
    let mut first = Monitor::connect(opts.clone()).await.unwrap();
    let a = verdicts(&mut first, 5, Duration::from_secs(5))
        .await
        .unwrap();
    drop(first);
    // A second host session on the same line (the unit restarts its session on the new Hello).
    let mut second = Monitor::connect(opts).await.unwrap();
    let b = verdicts(&mut second, 5, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        b[0].0.seq > a[4].0.seq,
        "the new session continues the journal"
    );
}
