//! Forced link drop → reconnect → journal replay: every journaled verdict is shown exactly once (compared by
//! journal seq), and the ones produced while the link was down arrive as replays.

use std::collections::BTreeSet;
use std::time::Duration;

use kestrel_hil::{Monitor, SimOptions, Target, TcpProxy, Update};

#[tokio::test]
async fn a_forced_disconnect_loses_no_verdict() {
    let target = Target::acquire(SimOptions::default()).unwrap();
    let proxy = TcpProxy::start(&target.tcp()).await.unwrap();
    let mut m = Monitor::connect(target.monitor_options(proxy.addr()))
        .await
        .unwrap();

    let mut seqs = Vec::new();
    let mut replayed = 0;
    let mut downs = 0;
    let mut reconnects = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    // 15 live verdicts, cut, then keep going until 30 more than the first seq have been shown.
    while seqs.len() < 45 {
        let u = tokio::time::timeout_at(deadline, m.next())
            .await
            .expect("stream stalled")
            .unwrap();
        match u {
            Update::Verdict {
                verdict,
                replayed: r,
            } => {
                seqs.push(verdict.seq);
                replayed += usize::from(r);
                if seqs.len() == 15 {
                    proxy.cut();
                    // Production goes on while the link is down: ~10 frames at 100 frames/s.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Update::LinkDown { .. } => downs += 1,
            Update::Connected {
                reconnect: true, ..
            } => reconnects += 1,
            Update::Lost { count, .. } => panic!("{count} verdicts lost"),
            _ => {}
        }
    }
    assert_eq!(downs, 1);
    assert_eq!(reconnects, 1);
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "a verdict was shown twice");
    let (first, last) = (*unique.first().unwrap(), *unique.last().unwrap());
    assert_eq!(
        unique.len() as u64,
        last - first + 1,
        "a verdict is missing in {first}..={last}"
    );
    assert!(
        replayed > 0,
        "verdicts produced during the outage come from the journal"
    );
    assert_eq!(m.counters().lost, 0);
    if let Some(sim) = target.sim() {
        assert!(sim.journal_next_seq() > last);
    }
}
