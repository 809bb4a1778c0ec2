//! A whole unit on a simulated board, in-process: synthetic camera, fake pins, real journal, real TCP and pty links,
//! driven by an authenticated host client. Each test runs in well under a few seconds (64×64 frames; scripted
//! inspectors except where the real model is the point).

mod common;

use std::time::{Duration, Instant};

use common::{fit_tiny_model, recv, recv_until, send, sim_profile, with_pty, ScriptedInspector};
use kestrel_edge::board::{BoardProfile, Mode};
use kestrel_edge::journal::{Journal, JournalConfig};
use kestrel_edge::pins::Signal;
use kestrel_edge::{Unit, UnitHandle, UnitOptions};
use kestrel_host::monitor::{Session, UnitAddr};
use kestrel_wire::{Ack, EventKind, FaultCode, Msg, Nack, Outcome, Replay, Subscribe, Verdict};

const ALL: Subscribe = Subscribe {
    masks_every: 0,
    min_score: f32::NEG_INFINITY,
};

fn scripted(
    reject_every: u64,
    delay_ms: u64,
) -> Option<Box<dyn kestrel_edge::inference::Inspector>> {
    Some(Box::new(ScriptedInspector {
        reject_every,
        delay: Duration::from_millis(delay_ms),
    }))
}

/// Start a unit on `profile` with the scripted inspector (see [`scripted`]).
fn start_scripted(profile: BoardProfile, every: u64, ms: u64) -> UnitHandle {
    Unit::start(
        profile,
        UnitOptions {
            inspector: scripted(every, ms),
            ..Default::default()
        },
    )
    .unwrap()
}

async fn connect(unit: &UnitHandle) -> Session {
    common::connect_unit(unit).await
}

async fn subscribe(c: &mut Session, sub: Subscribe) {
    let re = send(c, Msg::Subscribe(sub)).await;
    let ack = recv_until(c, Duration::from_secs(5), |m| {
        matches!(m, Msg::Ack(Ack { re: r }) if r == re).then_some(())
    })
    .await;
    assert!(ack.is_some(), "Subscribe acknowledged");
}

async fn next_verdict(c: &mut Session) -> Verdict {
    recv_until(c, Duration::from_secs(10), |m| match m {
        Msg::Verdict(v) => Some(v),
        _ => None,
    })
    .await
    .expect("a verdict within 10 s")
}

async fn stop(unit: UnitHandle) {
    tokio::task::spawn_blocking(move || unit.shutdown())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn verdicts_flow_over_tcp_from_a_fitted_model_with_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fit_tiny_model(tmp.path());
    let mut profile = sim_profile(&tmp.path().join("state"), Mode::FreeRun, 4, 30.0);
    // A debug build scores a 64×64 frame in tens of ms: give the conveyor time so no verdict is late.
    profile.inspection.reject_delay_ms = 2000;
    let unit = Unit::start(
        profile,
        UnitOptions {
            model_dir: Some(model.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut c = connect(&unit).await;
    let hello = c.peer().clone();
    assert!(hello.active_model.unwrap().name.contains("tiny"));
    subscribe(
        &mut c,
        Subscribe {
            masks_every: 2,
            min_score: f32::NEG_INFINITY,
        },
    )
    .await;
    let vs = [
        next_verdict(&mut c).await,
        next_verdict(&mut c).await,
        next_verdict(&mut c).await,
    ];
    assert!(vs
        .windows(2)
        .all(|w| w[1].seq == w[0].seq + 1 && w[1].frame_id > w[0].frame_id));
    assert_eq!(
        vs.iter().map(|v| v.mask.is_some()).collect::<Vec<_>>(),
        vec![true, false, true]
    );
    let m = vs[0].mask.as_ref().unwrap();
    assert_eq!((m.width, m.height), (64, 64));
    assert_eq!(m.pixels().unwrap().len(), 64 * 64);
    assert!(vs
        .iter()
        .all(|v| v.pass && v.score.is_finite() && v.latency_us > 0));
    // One scoring path: the host scoring the same frames with the same model directory gets the unit's scores.
    let host = kestrel_vision::model::Model::load(&model, &candle_core::Device::Cpu).unwrap();
    let camera = kestrel_edge::camera::synthetic::SyntheticSource::new(
        kestrel_edge::camera::synthetic::SyntheticParams {
            width: 64,
            height: 64,
            fps: None,
            defect_every: 4,
            seed: 3,
        },
    )
    .unwrap();
    for v in &vs {
        let f = camera.render(v.frame_id);
        let frame = kestrel_vision::model::Rgb8 {
            pixels: &f.rgb,
            width: f.width,
            height: f.height,
        };
        let on_host = host.score_rgb8(&[frame]).unwrap()[0].score;
        let rel = (on_host - v.score).abs() / on_host.abs().max(1e-6);
        assert!(
            rel < 1e-5,
            "frame {}: host {on_host} vs unit {}",
            v.frame_id,
            v.score
        );
    }
    let board = unit.fake_board().unwrap();
    assert!(board.level(Signal::Ready), "ready lamp on with a model");
    assert!(!board.level(Signal::Fault));
    stop(unit).await;
}

#[tokio::test]
async fn without_a_model_triggered_parts_fail_closed_rejected_and_journaled_uninspected() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = sim_profile(tmp.path(), Mode::Triggered, 4, 100.0);
    let unit = Unit::start(profile, UnitOptions::default()).unwrap();
    assert!(
        unit.key_path().starts_with(tmp.path()),
        "a key was created in the state dir"
    );
    let board = unit.fake_board().unwrap();
    assert!(
        board.wait_for(Signal::Fault, true, Duration::from_secs(2)),
        "fault lamp lit"
    );
    assert!(!board.level(Signal::Ready));
    let mut c = connect(&unit).await;
    assert_eq!(c.peer().active_model, None);
    subscribe(&mut c, ALL).await;
    // A part arrives although there is no model: it is rejected, not ignored.
    let re = send(&mut c, Msg::SoftTrigger).await;
    let acked = recv_until(&mut c, Duration::from_secs(5), |m| {
        matches!(m, Msg::Ack(a) if a.re == re).then_some(())
    })
    .await;
    assert!(acked.is_some(), "the trigger is accepted");
    let v = next_verdict(&mut c).await;
    assert_eq!(v.outcome, Outcome::Uninspected);
    assert!(!v.pass && v.score.is_nan(), "{v:?}");
    assert!(
        board.wait_for(Signal::Reject, true, Duration::from_secs(2)),
        "reject pulse driven"
    );
    send(&mut c, Msg::Status).await;
    let stats = recv_until(&mut c, Duration::from_secs(5), |m| match m {
        Msg::Stats(s) => Some(s),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        (stats.frames, stats.passes, stats.rejects, stats.uninspected),
        (0, 0, 1, 1)
    );
    assert_eq!(unit.faults(), vec![FaultCode::ModelLoadFailed]);
    let seq = v.seq;
    stop(unit).await;
    // Journaled: a replay after a restart shows the uninspected part.
    let j = Journal::open(&tmp.path().join("journal"), JournalConfig::default()).unwrap();
    let rec = j.read_from(seq, 1).unwrap().records;
    assert_eq!(rec[0].outcome, Outcome::Uninspected);
}

#[tokio::test]
async fn free_run_drops_the_oldest_frames_under_load_and_counts_them() {
    let tmp = tempfile::tempdir().unwrap();
    // Camera at 200 fps, model at ~40 ms per frame: most frames must be dropped, none may queue up.
    let profile = sim_profile(tmp.path(), Mode::FreeRun, 2, 200.0);
    let unit = start_scripted(profile, 0, 40);
    let mut c = connect(&unit).await;
    subscribe(&mut c, ALL).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(next_verdict(&mut c).await.frame_id);
    }
    let s = unit.stats();
    assert!(s.dropped > 0, "{s:?}");
    // Dropping the oldest means the unit keeps up with the present: consecutive verdicts skip frames.
    assert!(ids.windows(2).any(|w| w[1] > w[0] + 1), "{ids:?}");
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "{ids:?}");
    stop(unit).await;
}

#[tokio::test]
async fn triggered_parts_are_all_inspected_and_an_overflow_is_a_fault_until_drained() {
    let tmp = tempfile::tempdir().unwrap();
    let mut profile = sim_profile(tmp.path(), Mode::Triggered, 2, 500.0);
    // Conveyor travel longer than the backlog (7 parts × 150 ms), so every reject pulse is still ahead of the part.
    profile.inspection.reject_delay_ms = 2000;
    let unit = start_scripted(profile, 1, 150);
    let board = unit.fake_board().unwrap().clone();
    let mut c = connect(&unit).await;
    subscribe(&mut c, ALL).await;
    // Six parts on the trigger input, one every 50 ms while inspection takes 150 ms: by the sixth, four parts wait
    // and the queue (depth 2) overflows. Pulses are 25 ms wide so that the line thread, which polls the input, sees
    // every one even on a loaded CI machine (4 ms pulses were missed under load: a part that never arrived).
    for _ in 0..6 {
        board.set_trigger(true);
        std::thread::sleep(Duration::from_millis(25));
        board.set_trigger(false);
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut verdicts = 0;
    let mut fault = false;
    let mut cleared = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (verdicts < 6 || !cleared) && Instant::now() < deadline {
        match recv(&mut c).await {
            Msg::Verdict(_) => verdicts += 1,
            Msg::Event(e) => match e.kind {
                EventKind::Fault {
                    code: FaultCode::TriggerOverflow,
                    ..
                } => fault = true,
                EventKind::FaultCleared {
                    code: FaultCode::TriggerOverflow,
                } => cleared = true,
                _ => {}
            },
            _ => {}
        }
    }
    assert_eq!(verdicts, 6, "every triggered part gets a verdict");
    assert!(
        fault && cleared,
        "overflow raised then cleared (fault {fault}, cleared {cleared})"
    );
    assert_eq!(unit.stats().dropped, 0, "nothing dropped in triggered mode");
    // The lamp follows the fault (the I/O thread applies it within a poll period).
    assert!(board.wait_for(Signal::Fault, false, Duration::from_secs(1)));
    let lamp = board.transitions_of(Signal::Fault);
    assert!(lamp.iter().any(|t| t.high), "{lamp:?}");
    // A SoftTrigger is one more part.
    let re = send(&mut c, Msg::SoftTrigger).await;
    assert!(recv_until(&mut c, Duration::from_secs(5), |m| {
        matches!(m, Msg::Ack(Ack { re: r }) if r == re).then_some(())
    })
    .await
    .is_some());
    assert!(next_verdict(&mut c).await.frame_id > 0);
    // Every part scored as a reject (scripted): the reject output pulses after the conveyor delay.
    assert!(board.wait_for(Signal::Reject, true, Duration::from_secs(5)));
    stop(unit).await;
}

#[tokio::test]
async fn a_link_drop_loses_no_verdict_thanks_to_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = sim_profile(tmp.path(), Mode::FreeRun, 4, 200.0);
    let unit = start_scripted(profile, 5, 1);
    let mut c = connect(&unit).await;
    subscribe(&mut c, ALL).await;
    let mut seen = vec![next_verdict(&mut c).await.seq];
    for _ in 0..4 {
        seen.push(next_verdict(&mut c).await.seq);
    }
    drop(c); // the link drops
    tokio::time::sleep(Duration::from_millis(150)).await; // verdicts keep coming meanwhile
    let mut c = connect(&unit).await;
    subscribe(&mut c, ALL).await;
    let from = *seen.last().unwrap() + 1;
    let re = send(&mut c, Msg::Replay(Replay { from_seq: from })).await;
    let mut end = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut live = Vec::new();
    while end.is_none() && Instant::now() < deadline {
        match recv(&mut c).await {
            Msg::ReplayBegin(b) => {
                assert_eq!((b.re, b.first_seq), (re, from));
                end = Some(b.end_seq);
            }
            Msg::Verdict(v) => live.push(v.seq),
            _ => {}
        }
    }
    let end = end.unwrap();
    assert!(
        end > from + 5,
        "verdicts were produced while disconnected ({from}..{end})"
    );
    loop {
        match recv(&mut c).await {
            Msg::Replayed(v) => seen.push(v.seq),
            Msg::Verdict(v) => live.push(v.seq),
            Msg::ReplayEnd(e) => {
                assert_eq!(e.sent, end - from);
                break;
            }
            _ => {}
        }
    }
    seen.extend(live.into_iter().filter(|s| *s >= end));
    seen.sort_unstable();
    seen.dedup();
    let first = seen[0];
    assert_eq!(
        seen,
        (first..first + seen.len() as u64).collect::<Vec<_>>(),
        "no gap anywhere"
    );
    stop(unit).await;
}

#[tokio::test]
async fn shutdown_drains_fsyncs_switches_off_and_numbering_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let unit = start_scripted(sim_profile(&state, Mode::FreeRun, 4, 200.0), 2, 1);
    let board = unit.fake_board().unwrap().clone();
    let mut c = connect(&unit).await;
    subscribe(&mut c, ALL).await;
    let mut last = 0;
    for _ in 0..5 {
        last = next_verdict(&mut c).await.seq;
    }
    let key = unit.key().as_bytes().to_vec();
    stop(unit).await;
    for s in [Signal::Ready, Signal::Fault, Signal::Reject] {
        assert!(!board.level(s), "{s:?} off after shutdown");
    }
    let next = {
        let j = Journal::open(&state.join("journal"), JournalConfig::default()).unwrap();
        assert_eq!(j.recovery().skipped_seqs, 0, "clean close: no crash skip");
        assert!(j.next_seq() > last);
        j.next_seq()
    };
    let unit = start_scripted(sim_profile(&state, Mode::FreeRun, 4, 200.0), 2, 1);
    assert_eq!(unit.key().as_bytes().to_vec(), key, "the unit key persists");
    let mut c = connect(&unit).await;
    subscribe(&mut c, ALL).await;
    assert!(
        next_verdict(&mut c).await.seq >= next,
        "numbering continues after a restart"
    );
    stop(unit).await;
}

#[tokio::test]
async fn the_pty_serial_link_speaks_the_same_protocol() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = with_pty(sim_profile(tmp.path(), Mode::FreeRun, 4, 100.0));
    let unit = start_scripted(profile, 3, 1);
    let path = unit.pty_path().expect("pty path published").to_path_buf();
    let addr = UnitAddr::Serial {
        path,
        baud: 921_600,
    };
    let mut c = common::connect(addr, unit.key(), unit.unit_id()).await;
    let re = send(&mut c, Msg::Subscribe(ALL)).await;
    let got = recv_until(&mut c, Duration::from_secs(10), |m| match m {
        Msg::Verdict(v) => Some(v),
        Msg::Nack(Nack { re: r, .. }) if r == re => panic!("Subscribe refused"),
        _ => None,
    })
    .await;
    assert!(got.is_some(), "verdicts over the pty");
    stop(unit).await;
}

#[tokio::test]
async fn the_alive_output_toggles_while_the_unit_runs_and_is_released_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = sim_profile(tmp.path(), Mode::FreeRun, 4, 30.0);
    let unit = start_scripted(profile, 0, 5);
    let board = unit.fake_board().unwrap().clone();
    assert!(board.wait_for(Signal::Alive, true, Duration::from_secs(2)));
    assert!(board.wait_for(Signal::Alive, false, Duration::from_secs(2)));
    assert!(board.wait_for(Signal::Alive, true, Duration::from_secs(2)));
    stop(unit).await;
    assert!(!board.level(Signal::Alive), "released at shutdown");
}
