//! Triggered mode judges a part by a frame taken after its trigger: frames the camera (driver) buffered before the
//! trigger show the previous part or an empty belt, and are discarded.

use std::time::Duration;

use crate::common::{recv_until, send, sim_profile, ScriptedInspector};
use kestrel_edge::board::Mode;
use kestrel_edge::camera::{now_us, CameraError, Frame, FrameSource};
use kestrel_edge::{Unit, UnitOptions};
use kestrel_wire::{Msg, Outcome};

/// The first `stale` frames were captured a second before they are delivered (a driver's buffered queue); later
/// ones are captured at delivery, 20 ms apart.
struct Buffered {
    next: u64,
    stale: u64,
}

impl FrameSource for Buffered {
    fn next_frame(&mut self) -> Result<Frame, CameraError> {
        let id = self.next;
        self.next += 1;
        let t = if id < self.stale {
            now_us().saturating_sub(1_000_000)
        } else {
            std::thread::sleep(Duration::from_millis(20));
            now_us()
        };
        Ok(Frame {
            id,
            t_capture_us: t,
            width: 8,
            height: 8,
            rgb: vec![100; 8 * 8 * 3],
        })
    }
    fn describe(&self) -> String {
        "buffered test source".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_part_is_never_judged_by_a_frame_from_before_its_trigger() {
    let tmp = tempfile::tempdir().unwrap();
    let mut profile = sim_profile(tmp.path(), Mode::Triggered, 4, 30.0);
    profile.inspection.exposure_offset_ms = 5;
    let unit = Unit::start(
        profile,
        UnitOptions {
            inspector: Some(Box::new(ScriptedInspector {
                reject_every: 0,
                delay: Duration::from_millis(1),
            })),
            source: Some(Box::new(Buffered { next: 0, stale: 3 })),
            ..Default::default()
        },
    )
    .unwrap();
    let mut c = crate::common::connect_unit(&unit).await;
    crate::common::subscribe_all(&mut c).await;
    send(&mut c, Msg::SoftTrigger).await;
    let v = recv_until(&mut c, Duration::from_secs(10), |m| match m {
        Msg::Verdict(v) => Some(v),
        _ => None,
    })
    .await
    .expect("a verdict");
    assert_eq!(v.outcome, Outcome::Inspected);
    assert_eq!(v.frame_id, 3, "the three buffered frames were discarded");
    assert_eq!(unit.stats().dropped, 3);
    tokio::task::spawn_blocking(move || unit.shutdown())
        .await
        .unwrap()
        .unwrap();
}
