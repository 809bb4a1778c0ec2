//! `kestrel monitor` end to end: the real binary against an in-process fake unit that speaks kestrel-wire with the
//! wire crate's own `EdgeAuthenticator` (the host crate cannot depend on the edge firmware; the real firmware is
//! exercised by the kestrel-hil suites in `tests/`).
//!
//! The fake keeps a "journal" (verdict `seq` → deterministic verdict), streams live verdicts every 2 ms once
//! subscribed, answers `Status` and `Replay`, and can drop the connection mid-stream while "production" continues,
//! which is how the no-loss reconnect path is checked.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kestrel_link::{FrameReader, FrameWriter};
use kestrel_wire::{
    key_text, Ack, EdgeAuthenticator, Envelope, Hello, Mask, Msg, Nack, NackCode, ReplayBegin,
    ReplayEnd, Role, Stats, UnitKey, Verdict, PROTO_VERSION, SCHEMA_HASH,
};
use tokio::net::tcp::OwnedWriteHalf;

const KEY: [u8; 32] = [7; 32];

#[derive(Clone)]
struct FakeSpec {
    key: UnitKey,
    proto_version: u16,
    /// Verdicts the unit produces in all (live seqs stop there).
    total: u64,
    /// On the first connection, drop the link after this many live verdicts...
    drop_after: Option<u64>,
    /// ...and let this many verdicts be "produced" while nobody is connected.
    produced_while_down: u64,
}

impl FakeSpec {
    fn new(total: u64) -> Self {
        FakeSpec {
            key: UnitKey::from_bytes(KEY),
            proto_version: PROTO_VERSION,
            total,
            drop_after: None,
            produced_while_down: 0,
        }
    }
}

struct FakeState {
    spec: FakeSpec,
    /// Next seq to produce.
    live: AtomicU64,
    connections: AtomicU64,
}

/// The journal: verdict `seq` is the same whenever it is sent. Every 4th is a reject with a structured mask.
fn journal(seq: u64, with_mask: bool) -> Verdict {
    let pass = seq % 4 != 3;
    let mask = (with_mask).then(|| {
        let px: Vec<u8> = (0..64u32)
            .map(|i| if i % 9 == (seq % 9) as u32 { 255 } else { 0 })
            .collect();
        Mask::compact(8, 8, &px).unwrap()
    });
    Verdict {
        seq,
        frame_id: 1000 + seq,
        t_capture_us: 1_700_000_000_000_000 + seq * 2000,
        latency_us: 4000 + (seq as u32 % 7) * 100,
        score: if pass { 0.1 } else { 0.9 },
        pass,
        mask,
        outcome: kestrel_wire::Outcome::Inspected,
    }
}

/// Start the fake unit on 127.0.0.1:0 in a background thread; returns its address.
fn start_fake(spec: FakeSpec) -> (SocketAddr, Arc<FakeState>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(FakeState {
        spec,
        live: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    });
    let st = state.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move { serve(sock, st).await });
            }
        });
    });
    (addr, state)
}

async fn send(wr: &mut OwnedWriteHalf, env: &Envelope) -> std::io::Result<()> {
    FrameWriter::new().send(wr, env).await
}

async fn serve(sock: tokio::net::TcpStream, st: Arc<FakeState>) -> std::io::Result<()> {
    let conn = st.connections.fetch_add(1, Ordering::SeqCst);
    let spec = &st.spec;
    let (mut rd, mut wr) = sock.into_split();
    let mut auth = EdgeAuthenticator::new(spec.key.clone(), "fake-7");
    let hello = Hello {
        proto_version: spec.proto_version,
        schema_hash: SCHEMA_HASH,
        role: Role::Edge,
        unit_id: "fake-7".into(),
        board: "fake".into(),
        fw_version: "fake 0".into(),
        active_model: None,
    };
    send(&mut wr, &auth.seal(Msg::Hello(hello)).unwrap()).await?;
    let mut frames = FrameReader::new();
    let mut masks_every: Option<u16> = None;
    let mut sent_live = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    loop {
        tokio::select! {
            r = frames.recv(&mut rd) => {
                let Some(env) = r? else {
                    return Ok(());
                };
                {
                    let re = env.seq;
                    match &env.msg {
                        Msg::Hello(_) => send(&mut wr, &auth.challenge_random().unwrap()).await?,
                        Msg::AuthResponse(r) => match auth.accept_response(r) {
                            Ok(confirm) => send(&mut wr, &confirm).await?,
                            Err(e) => {
                                let nack = e.nack(re).unwrap();
                                send(&mut wr, &auth.seal(Msg::Nack(nack)).unwrap()).await?;
                                return Ok(());
                            }
                        },
                        _ => {
                            if let Err(e) = auth.open(&env) {
                                let nack = e.nack(re).unwrap();
                                send(&mut wr, &auth.seal(Msg::Nack(nack)).unwrap()).await?;
                                continue;
                            }
                            let reply: Vec<Msg> = match &env.msg {
                                Msg::Subscribe(s) => {
                                    masks_every = Some(s.masks_every);
                                    vec![Msg::Ack(Ack { re })]
                                }
                                Msg::Status => {
                                    let live = st.live.load(Ordering::SeqCst).min(spec.total);
                                    vec![Msg::Stats(Stats {
                                        frames: live,
                                        passes: (0..live).filter(|s| s % 4 != 3).count() as u64,
                                        rejects: (0..live).filter(|s| s % 4 == 3).count() as u64,
                                        dropped: 0,
                                        latency_p50_us: 4300,
                                        latency_p99_us: 4600,
                                        uptime_s: 1,
                                        missed_by_client: 0,
                                        link_errors: frames.counts().errors(),
                                        model: None,
                                        previous_model: None,
                                        late: 0,
                                        uninspected: 0,
                                    })]
                                }
                                Msg::Replay(r) => {
                                    let end = st.live.load(Ordering::SeqCst).min(spec.total);
                                    let first = r.from_seq.min(end);
                                    let mut v = vec![Msg::ReplayBegin(ReplayBegin { re, first_seq: first, end_seq: end })];
                                    v.extend((first..end).map(|s| Msg::Replayed(journal(s, false))));
                                    v.push(Msg::ReplayEnd(ReplayEnd { re, sent: end - first }));
                                    v
                                }
                                other => vec![Msg::Nack(Nack {
                                    re,
                                    code: NackCode::Unexpected,
                                    detail: format!("fake does not do {}", other.name()),
                                })],
                            };
                            for m in reply {
                                send(&mut wr, &auth.seal(m).unwrap()).await?;
                            }
                        }
                    }
                }
            }
            _ = tick.tick(), if masks_every.is_some() => {
                let seq = st.live.fetch_add(1, Ordering::SeqCst);
                if seq >= spec.total {
                    continue;
                }
                let every = u64::from(masks_every.unwrap_or(0));
                let with_mask = every > 0 && sent_live.is_multiple_of(every);
                send(&mut wr, &auth.seal(Msg::Verdict(journal(seq, with_mask))).unwrap()).await?;
                sent_live += 1;
                if conn == 0 && spec.drop_after == Some(sent_live) {
                    st.live.fetch_add(spec.produced_while_down, Ordering::SeqCst);
                    return Ok(()); // drops the socket: the host sees EOF
                }
            }
        }
    }
}

fn key_file(dir: &Path, key: &[u8; 32]) -> std::path::PathBuf {
    let p = dir.join("unit.key");
    std::fs::write(&p, key_text(&UnitKey::from_bytes(*key))).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

fn monitor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .arg("monitor")
        .args(args)
        .env_remove("KESTREL_UNIT")
        .env_remove("KESTREL_UNIT_KEY")
        .output()
        .expect("spawn kestrel")
}

/// Run `kestrel monitor --unit UNIT --key-file <a file holding key>` plus `extra` (given the test's temp dir).
fn monitor_unit(
    unit: &str,
    key: &[u8; 32],
    extra: impl FnOnce(&Path) -> Vec<String>,
) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), key);
    let mut args = vec![
        "--unit".to_string(),
        unit.to_string(),
        "--key-file".to_string(),
        key.to_string_lossy().into_owned(),
    ];
    args.extend(extra(dir.path()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (monitor(&args), dir)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn verdict_seqs(lines: &[serde_json::Value]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l["type"] == "verdict")
        .map(|l| l["seq"].as_u64().unwrap())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn json_stream_stops_after_count_verdicts() {
    let (addr, _) = start_fake(FakeSpec::new(1000));
    let (out, _dir) = monitor_unit(&format!("tcp://{addr}"), &KEY, |_| {
        strings(&["--json", "--count", "25"])
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["type"], "connected", "{lines:?}");
    assert_eq!(lines[0]["unit_id"], "fake-7");
    let seqs = verdict_seqs(&lines);
    assert_eq!(seqs, (0..25).collect::<Vec<_>>());
    let rejects = lines
        .iter()
        .filter(|l| l["type"] == "verdict" && l["pass"] == false)
        .count();
    assert_eq!(rejects, 6, "every 4th verdict of the fake is a reject");
}

#[test]
fn save_rejects_writes_mask_pngs_named_by_seq() {
    let (addr, _) = start_fake(FakeSpec::new(1000));
    let (out, dir) = monitor_unit(&format!("tcp://{addr}"), &KEY, |d| {
        let rejects = d.join("rejects").to_string_lossy().into_owned();
        strings(&["--count", "12", "--save-rejects", &rejects])
    });
    let rejects = dir.path().join("rejects");
    assert!(out.status.success(), "{}", stderr(&out));
    // Not a terminal: plain lines, one per verdict, naming the mask file of each reject.
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("verdict ")).count(),
        12,
        "{text}"
    );
    let mut files: Vec<String> = std::fs::read_dir(&rejects)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "reject_0000000003_frame1003.png",
            "reject_0000000007_frame1007.png",
            "reject_0000000011_frame1011.png"
        ]
    );
    let img = image::open(rejects.join(&files[0])).unwrap().to_luma8();
    let want = journal(3, true).mask.unwrap().pixels().unwrap();
    assert_eq!(img.dimensions(), (8, 8));
    assert_eq!(img.into_raw(), want);
}

#[test]
fn dropped_link_is_replayed_without_loss_or_duplicates() {
    let mut spec = FakeSpec::new(60);
    spec.drop_after = Some(20);
    spec.produced_while_down = 7;
    let (addr, state) = start_fake(spec);
    let (out, _dir) = monitor_unit(&format!("tcp://{addr}"), &KEY, |_| {
        strings(&["--json", "--count", "60"])
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let mut seqs = verdict_seqs(&lines);
    let shown = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(shown, seqs.len(), "a verdict was shown twice");
    assert_eq!(seqs, (0..60).collect::<Vec<_>>(), "a verdict was lost");
    assert!(lines.iter().any(|l| l["type"] == "link_down"));
    assert!(lines
        .iter()
        .any(|l| l["type"] == "connected" && l["reconnect"] == true));
    let replayed = lines
        .iter()
        .filter(|l| l["type"] == "verdict" && l["replayed"] == true)
        .count();
    assert!(
        replayed >= 7,
        "the 7 verdicts produced while down must come from the journal ({replayed})"
    );
    assert_eq!(state.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn refused_key_is_exit_7_with_one_line() {
    let (addr, _) = start_fake(FakeSpec::new(10));
    let (out, _dir) = monitor_unit(&format!("tcp://{addr}"), &[8; 32], |_| Vec::new());
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("refused the key"), "{err}");
}

#[test]
fn other_protocol_version_is_exit_6() {
    let mut spec = FakeSpec::new(10);
    spec.proto_version = PROTO_VERSION + 1;
    let (addr, _) = start_fake(spec);
    let (out, _dir) = monitor_unit(&format!("tcp://{addr}"), &KEY, |_| Vec::new());
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("another protocol")
            && err.contains(&format!("protocol {}", PROTO_VERSION + 1)),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_peer_that_is_not_kestrel_is_exit_6() {
    // Something else listening on the port (here: a server that sends text without 0x00-delimited frames).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\0garbage\0");
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let (out, _dir) = monitor_unit(&format!("tcp://{addr}"), &KEY, |_| Vec::new());
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("do not decode as kestrel-wire"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unreachable_unit_is_exit_5() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let (out, _dir) = monitor_unit(&format!("tcp://127.0.0.1:{port}"), &KEY, |_| Vec::new());
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("unreachable") && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn bad_address_and_key_file_are_usage_errors() {
    let (out, dir) = monitor_unit("udp://1.2.3.4:5", &KEY, |_| Vec::new());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown scheme"));
    let bad = dir.path().join("short.key");
    std::fs::write(&bad, "abcd").unwrap();
    let out = monitor(&[
        "--unit",
        "tcp://127.0.0.1:1",
        "--key-file",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("short.key"));
}

#[test]
fn status_polls_bring_stats_lines() {
    let (addr, _) = start_fake(FakeSpec::new(1000));
    let (out, _dir) = monitor_unit(&format!("tcp://{addr}"), &KEY, |_| {
        strings(&["--json", "--count", "100"])
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    // The monitor asks for Status as soon as it is subscribed.
    let stats = lines
        .iter()
        .find(|l| l["type"] == "stats")
        .expect("a stats line");
    assert_eq!(stats["latency_p50_us"], 4300);
    assert_eq!(stats["link_errors"], 0);
}
