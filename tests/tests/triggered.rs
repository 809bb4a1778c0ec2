//! Triggered mode on the simulated board's fake pins: one verdict per trigger edge, and a reject pulse
//! `reject_delay_ms` after the part's trigger, `reject_pulse_ms` wide, for exactly the rejected parts.

use std::time::Duration;

use kestrel_edge::board::Mode;
use kestrel_edge::pins::Signal;
use kestrel_hil::{verdicts, Monitor, SimOptions, Target};

const DELAY_MS: u32 = 30;
const PULSE_MS: u32 = 10;
/// Trigger polling, debounce and thread wake-ups on a loaded 2-core CI box.
const SLACK_MS: u128 = 25;

#[tokio::test]
async fn each_trigger_gives_one_verdict_and_rejects_pulse_on_time() {
    let target = Target::acquire(SimOptions {
        mode: Mode::Triggered,
        reject_every: 2,
        reject_delay_ms: DELAY_MS,
        reject_pulse_ms: PULSE_MS,
        ..SimOptions::default()
    })
    .unwrap();
    let Some(sim) = target.sim() else {
        eprintln!("skipped: driving the trigger needs the simulated board's fake pins");
        return;
    };
    let mut m = Monitor::connect(target.monitor_options(target.tcp()))
        .await
        .unwrap();
    let board = sim.board().clone();
    board.clear_log();
    const PARTS: usize = 6;
    // Parts 80 ms apart: longer than delay + pulse, so pulses never merge and each maps to its trigger. Trigger
    // pulses are 25 ms wide so the polling line thread sees each one on a loaded CI machine too.
    let driver = std::thread::spawn(move || {
        for _ in 0..PARTS {
            board.set_trigger(true);
            std::thread::sleep(Duration::from_millis(25));
            board.set_trigger(false);
            std::thread::sleep(Duration::from_millis(55));
        }
        board
    });
    let got = verdicts(&mut m, PARTS, Duration::from_secs(5))
        .await
        .unwrap();
    let board = driver.join().unwrap();
    // Let the last pulse finish.
    tokio::time::sleep(Duration::from_millis(u64::from(DELAY_MS + PULSE_MS) + 50)).await;
    let rejects = got.iter().filter(|(v, _)| !v.pass).count();
    assert!(
        rejects > 0 && rejects < PARTS,
        "1-in-2 scripted rejects among {PARTS} parts: {rejects}"
    );
    // No more verdicts than parts: nothing is captured without a trigger.
    assert!(
        tokio::time::timeout(
            Duration::from_millis(200),
            verdicts(&mut m, 1, Duration::from_secs(1))
        )
        .await
        .map_or(true, |r| r.is_err()),
        "a verdict arrived without a trigger"
    );

    let triggers: Vec<_> = board
        .transitions_of(Signal::Trigger)
        .into_iter()
        .filter(|t| t.high)
        .collect();
    assert_eq!(triggers.len(), PARTS);
    let reject_log = board.transitions_of(Signal::Reject);
    let rises: Vec<_> = reject_log.iter().filter(|t| t.high).collect();
    let falls: Vec<_> = reject_log.iter().filter(|t| !t.high).collect();
    assert_eq!(
        rises.len(),
        rejects,
        "one pulse per rejected part: {}",
        board.summary()
    );
    assert_eq!(falls.len(), rejects);
    for (rise, fall) in rises.iter().zip(&falls) {
        // The trigger this pulse belongs to: the last one before the pulse minus the delay.
        let trig = triggers
            .iter()
            .rev()
            .find(|t| t.at <= rise.at)
            .expect("a pulse follows a trigger");
        let delay = rise.at.duration_since(trig.at).as_millis();
        assert!(
            delay >= u128::from(DELAY_MS) && delay <= u128::from(DELAY_MS) + SLACK_MS,
            "pulse {delay} ms after its trigger, want {DELAY_MS} ms (+{SLACK_MS})"
        );
        // The window is anchored to the part (the scheduler's contract): the pulse ends `delay + pulse` after the
        // part's instant even when the I/O thread raised it late, so measure the end from the trigger too.
        // (Observed here: a 10 ms pulse raised ~1 ms late is ~9 ms wide.)
        let end = fall.at.duration_since(trig.at).as_millis();
        let want_end = u128::from(DELAY_MS + PULSE_MS);
        assert!(
            end >= want_end && end <= want_end + SLACK_MS,
            "pulse ends {end} ms after its trigger, want {want_end} ms (+{SLACK_MS})"
        );
    }
}
