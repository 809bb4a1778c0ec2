//! The verdict stream over TCP: contiguous journal sequence numbers, the scripted rejects, and masks that decode
//! to the scorer's anomaly map (hot spot where the scorer put it).

use std::time::Duration;

use kestrel_hil::{verdicts, Monitor, SimOptions, Target};
use kestrel_vision::threshold::rejects;

#[tokio::test]
async fn verdicts_are_contiguous_and_match_the_scorer() {
    let target = Target::acquire(SimOptions::default()).unwrap();
    let mut m = Monitor::connect(target.monitor_options(target.tcp()))
        .await
        .unwrap();
    let got = verdicts(&mut m, 24, Duration::from_secs(5)).await.unwrap();
    for w in got.windows(2) {
        assert_eq!(
            w[1].0.seq,
            w[0].0.seq + 1,
            "journal seqs must be contiguous"
        );
        assert!(w[1].0.frame_id > w[0].0.frame_id);
        assert!(w[1].0.t_capture_us >= w[0].0.t_capture_us);
    }
    if let Some(sim) = target.sim() {
        for (v, _) in &got {
            assert_eq!(
                v.pass,
                !sim.scorer().is_reject(v.frame_id),
                "frame {}",
                v.frame_id
            );
            // The unit's verdict is kestrel-vision's rule on the score it reported, as on the host.
            assert_eq!(v.pass, !rejects(v.score, kestrel_hil::THRESHOLD));
            assert!(v.latency_us < 1_000_000, "latency {} µs", v.latency_us);
            assert!(v.mask.is_none(), "no masks were asked for");
        }
        assert!(
            got.iter().any(|(v, _)| !v.pass),
            "24 frames at 1-in-4 hold a reject"
        );
        assert!(sim.journal_next_seq() > got.last().unwrap().0.seq);
    }
}

#[tokio::test]
async fn masks_over_tcp_decode_to_the_anomaly_map() {
    let target = Target::acquire(SimOptions::default()).unwrap();
    let mut opts = target.monitor_options(target.tcp());
    opts.masks_every = 1;
    let mut m = Monitor::connect(opts).await.unwrap();
    let got = verdicts(&mut m, 12, Duration::from_secs(5)).await.unwrap();
    for (v, _) in &got {
        let mask = v
            .mask
            .as_ref()
            .expect("masks_every = 1: every verdict has a mask");
        let px = mask.pixels().unwrap();
        assert_eq!(px.len(), usize::from(mask.width) * usize::from(mask.height));
        if target.sim().is_some() {
            assert_eq!((mask.width, mask.height), (16, 16));
            // The scorer's 3×3 hot spot is the only bright region: 9 pixels well above the background.
            let hot = px.iter().filter(|&&p| p > 40).count();
            assert_eq!(hot, 9, "frame {}: {px:?}", v.frame_id);
            let max = *px.iter().max().unwrap();
            if v.pass {
                assert!(
                    max < 128,
                    "a good part's map stays under the threshold level"
                );
            } else {
                assert!(max > 128, "a reject's map exceeds the threshold level");
            }
        }
    }
}
