//! The journal under SIGKILL, out of process: the real `kestrel-edge` binary (synthetic camera at 100 fps, the tiny
//! model) is killed at random instants again and again while it produces verdicts. Afterwards the journal must hold
//! strictly increasing sequence numbers with no duplicate, and a monitor replaying from 0 (what `kestrel monitor
//! --replay-from 0` does) must show every journaled verdict exactly once. The monitor's `lost` count is reported
//! against what the journal really lacks (see the issue note: numbers skipped at crash recovery still count as lost).
//!
//! CI runs 5 kills; `cargo test -p kestrel-edge --test crash crash_journal -- --ignored --nocapture` runs 100.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::common::fit_tiny_model;
use kestrel_edge::journal::{Journal, JournalConfig};
use kestrel_host::monitor::{
    read_key_file, ConnectOptions, Monitor, MonitorOptions, UnitAddr, Update,
};

fn board(dir: &Path, state: &Path) -> PathBuf {
    let path = dir.join("board.toml");
    std::fs::write(
        &path,
        format!(
            r#"name = "journal-crash"
state_dir = "{}"
[camera]
kind = "synthetic"
width = 64
height = 64
fps = 100.0
defect_every = 7
seed = 4
[pins]
kind = "fake"
[inspection]
mode = "free-run"
queue_depth = 4
reject_delay_ms = 500
reject_pulse_ms = 10
[tcp]
listen = "127.0.0.1:0"
max_clients = 4
[compute]
device = "cpu"
threads = 1
[unit]
id = "journal-crash-1"
"#,
            state.display()
        ),
    )
    .unwrap();
    path
}

fn spawn(board: &Path, model: &Path) -> (Child, UnitAddr) {
    crate::spawn_edge(board, &["--model".as_ref(), model.as_os_str()])
}

fn run_kills(kills: usize, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let model = fit_tiny_model(tmp.path());
    let board = board(tmp.path(), &state);
    let mut rng = seed | 1;
    for _ in 0..kills {
        let (mut child, _) = spawn(&board, &model);
        // Somewhere in the first half second of verdicts.
        std::thread::sleep(Duration::from_millis(
            50 + crate::next_random(&mut rng) % 450,
        ));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // The journal as the last run left it.
    let journal = Journal::open(&state.join("journal"), JournalConfig::default()).unwrap();
    let records = journal.read_from(0, usize::MAX).unwrap().records;
    let end = journal.next_seq();
    drop(journal);
    let seqs: Vec<u64> = records.iter().map(|v| v.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    let journaled: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(journaled.len(), seqs.len(), "no duplicate sequence number");
    let last = *seqs.last().expect("verdicts were journaled");
    assert!(
        seqs.len() >= kills,
        "{} verdicts over {kills} lives",
        seqs.len()
    );

    // Replay everything through the real monitor client.
    let (mut child, addr) = spawn(&board, &model);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = read_key_file(&state.join("unit.key")).unwrap();
    let (shown, counters) = rt.block_on(async {
        let mut opts = MonitorOptions::new(addr, ConnectOptions::new(key));
        opts.replay_from = Some(0);
        let mut m = Monitor::connect(opts).await.unwrap();
        let mut shown = Vec::new();
        while shown.last().is_none_or(|&s| s < last) {
            match tokio::time::timeout(Duration::from_secs(30), m.next())
                .await
                .expect("the replay progresses")
                .unwrap()
            {
                Update::Verdict { verdict, .. } => shown.push(verdict.seq),
                _ => continue,
            }
        }
        (shown, m.counters())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let shown_up_to_last: Vec<u64> = shown.iter().copied().filter(|&s| s <= last).collect();
    let shown_set: HashSet<u64> = shown_up_to_last.iter().copied().collect();
    assert_eq!(
        shown_set.len(),
        shown_up_to_last.len(),
        "no verdict shown twice"
    );
    assert_eq!(shown_set, journaled, "every journaled verdict shown once");
    // A process crash (the machine kept running) loses no written record, so numbering continues without gaps and a
    // monitor has nothing to count as lost: verdicts that were still in the queue at the kill were never published.
    let unassigned = (last + 1) - seqs.len() as u64;
    assert_eq!(unassigned, 0, "no gap in the numbering");
    assert_eq!(counters.lost, 0, "no phantom losses");
    eprintln!(
        "crash_journal: {kills} SIGKILLs; journal {} verdicts, seq 0..={last} strictly increasing, no duplicates \
         (next seq after recovery {end}); replay from 0 showed each journaled verdict exactly once; numbers never \
         given to a journaled verdict below {last}: {unassigned}; monitor lost {} (duplicates dropped {})",
        seqs.len(),
        counters.lost,
        counters.duplicates
    );
}

#[test]
fn a_few_kills_keep_the_journal_strictly_increasing_and_replayable() {
    run_kills(5, 0xfeed_0005);
}

#[test]
#[ignore = "long fault-injection run (100 kills, about two minutes); figures go in the issue note"]
fn one_hundred_kills_keep_the_journal_strictly_increasing_and_replayable() {
    run_kills(100, 0xfeed_0100);
}
