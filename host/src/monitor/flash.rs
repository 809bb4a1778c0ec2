//! Flashing a unit: the client side of `kestrel flash` over an authenticated [`Session`].
//!
//! 1. **Probe** (`BundleProbe`): the bundle's head and trailer; the unit checks the signature against its trusted
//!    keys, firmware range, input size and model version. A refusal costs a few hundred bytes, not the whole
//!    upload. `--dry-run` stops here.
//! 2. **Upload**: `BundleBegin` answered by `UploadStatus { received }` (non-zero when the unit kept part of an
//!    earlier attempt), then `BundleChunk`s from there, each acknowledged, with up to `window` in flight so a long
//!    link is kept busy. A dropped link is reconnected (for up to `reconnect_for`) and the upload resumes from the
//!    unit's count, never from zero.
//! 3. **Commit** (`BundleCommit`): the unit checks size, hash and signature again and stores the bundle in its
//!    inactive slot.
//! 4. **Activate** (`Activate { sha256 }`): the unit loads the model, runs its self-test and switches between two
//!    frames; its answer comes after the switch.
//!
//! `rollback` sends `Rollback`. All steps report refusals as [`MonitorError::Refused`] with the unit's
//! [`kestrel_wire::NackCode`], so the CLI's exit code says why (see `docs/flashing.md`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use kestrel_bundle::probe_parts;
use kestrel_wire::upload::bundle_begin;
use kestrel_wire::{Activate, BundleChunk, BundleProbe, Hello, ModelRef, Msg};

use super::addr::UnitAddr;
use super::error::MonitorError;
use super::session::{ConnectOptions, Session};

/// How to flash.
#[derive(Debug, Clone)]
pub struct FlashOptions {
    /// The unit.
    pub addr: UnitAddr,
    /// Key and handshake settings.
    pub connect: ConnectOptions,
    /// Bytes per chunk (clamped to the frame limit).
    pub chunk: usize,
    /// Chunks in flight before waiting for an acknowledgement.
    pub window: usize,
    /// Activate even if the bundle's model version is below the active one.
    pub allow_downgrade: bool,
    /// Keep reconnecting a dropped link for this long before giving up.
    pub reconnect_for: Duration,
    /// How long to wait for any single answer before treating the link as dead.
    pub reply_timeout: Duration,
}

impl FlashOptions {
    /// Defaults: 16 KiB chunks, 4 in flight, 60 s of reconnection, 30 s per answer.
    pub fn new(addr: UnitAddr, connect: ConnectOptions) -> Self {
        FlashOptions {
            addr,
            connect,
            chunk: kestrel_wire::frame::DEFAULT_BUNDLE_CHUNK,
            window: 4,
            allow_downgrade: false,
            reconnect_for: Duration::from_secs(60),
            reply_timeout: Duration::from_secs(30),
        }
    }
}

/// Where a flash stands, for progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlashProgress {
    /// Connected; the unit said hello.
    Connected(Hello),
    /// The unit accepted the probe.
    Probed,
    /// Bytes acknowledged by the unit, of the total.
    Uploaded {
        /// Acknowledged bytes.
        acked: u64,
        /// Bundle size.
        total: u64,
    },
    /// The link dropped; reconnecting to resume.
    Reconnecting(String),
    /// The upload resumes at this offset.
    Resumed(u64),
    /// The unit verified and stored the bundle.
    Committed,
}

/// What a flash did, as measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FlashReport {
    /// The unit's `Hello` at the first connection (what it ran before).
    pub before: Hello,
    /// The model active afterwards (`None` for a dry run).
    pub active: Option<ModelRef>,
    /// Bundle size in bytes.
    pub size: u64,
    /// Bundle bytes sent by this run (less than `size` when the unit already had part of it).
    pub payload_sent: u64,
    /// Bytes written to the link(s), framing, acknowledgements' requests and handshakes included.
    pub wire_sent: u64,
    /// Bytes read from the link(s).
    pub wire_received: u64,
    /// Reconnections during the upload.
    pub reconnects: u32,
    /// Time from the first `BundleBegin` to the unit's acknowledgement of the last chunk.
    pub upload_time: Duration,
    /// Time of commit and activation (verification, model load, self-test).
    pub activate_time: Duration,
}

/// Link bytes of sessions that ended, plus the current one.
#[derive(Default)]
struct Wire {
    sent: u64,
    received: u64,
}

impl Wire {
    fn retire(&mut self, s: &Session) {
        let (r, w) = s.link().bytes();
        self.received += r;
        self.sent += w;
    }
}

/// Wait for the answer to request `re`: `Ok(msg)` for an `Ack`/`UploadStatus` naming it, `Refused` for its
/// `Nack`; other traffic (events) is logged and skipped.
async fn answer(
    s: &mut Session,
    re: u32,
    request: &'static str,
    timeout: Duration,
) -> Result<Msg, MonitorError> {
    loop {
        let msg = recv(s, timeout).await?;
        match msg {
            Msg::Ack(ref a) if a.re == re => return Ok(msg),
            Msg::UploadStatus(ref u) if u.re == re => return Ok(msg),
            Msg::Nack(n) if n.re == re => {
                return Err(MonitorError::Refused {
                    addr: s.addr().to_string(),
                    request,
                    code: n.code,
                    detail: n.detail,
                })
            }
            other => skip(other),
        }
    }
}

async fn recv(s: &mut Session, timeout: Duration) -> Result<Msg, MonitorError> {
    match tokio::time::timeout(timeout, s.recv()).await {
        Ok(r) => r,
        Err(_) => Err(MonitorError::Disconnected {
            addr: s.addr().to_string(),
            handshake: false,
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", timeout.as_secs()),
            ),
        }),
    }
}

/// Traffic that is not the answer being waited for: events (the unit's own `BundleRefused`, faults) repeat what the
/// `Nack` says, and no verdicts come without a subscription.
fn skip(_msg: Msg) {}

/// Connect, retrying link failures until `deadline`.
async fn connect(opts: &FlashOptions, deadline: Instant) -> Result<Session, MonitorError> {
    loop {
        match Session::open(&opts.addr, &opts.connect).await {
            Ok(s) => return Ok(s),
            Err(e) if e.is_link_failure() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Check `bundle` against the unit without sending it (`kestrel flash --dry-run`). Returns the unit's `Hello`.
pub async fn dry_run(
    bundle: &[u8],
    opts: &FlashOptions,
    progress: &mut dyn FnMut(FlashProgress),
) -> Result<FlashReport, MonitorError> {
    let mut s = Session::open(&opts.addr, &opts.connect).await?;
    progress(FlashProgress::Connected(s.peer().clone()));
    probe(&mut s, bundle, opts).await?;
    progress(FlashProgress::Probed);
    let (r, w) = s.link().bytes();
    Ok(FlashReport {
        before: s.peer().clone(),
        active: s.peer().active_model.clone(),
        size: bundle.len() as u64,
        payload_sent: 0,
        wire_sent: w,
        wire_received: r,
        reconnects: 0,
        upload_time: Duration::ZERO,
        activate_time: Duration::ZERO,
    })
}

async fn probe(s: &mut Session, bundle: &[u8], opts: &FlashOptions) -> Result<(), MonitorError> {
    let Some((head, trailer)) = probe_parts(bundle) else {
        return Err(MonitorError::Protocol {
            addr: s.addr().to_string(),
            detail: "the file is not a bundle (too short for its own header)".into(),
        });
    };
    let re = s
        .send(Msg::BundleProbe(BundleProbe {
            head: head.to_vec(),
            trailer: trailer.to_vec(),
            size: bundle.len() as u64,
            allow_downgrade: opts.allow_downgrade,
        }))
        .await?;
    answer(s, re, "BundleProbe", opts.reply_timeout).await?;
    Ok(())
}

/// Flash `bundle` onto the unit: probe, upload (resuming over reconnects), commit, activate.
pub async fn flash(
    bundle: &[u8],
    opts: &FlashOptions,
    progress: &mut dyn FnMut(FlashProgress),
) -> Result<FlashReport, MonitorError> {
    let size = bundle.len() as u64;
    let mut wire = Wire::default();
    let mut s = Session::open(&opts.addr, &opts.connect).await?;
    let before = s.peer().clone();
    progress(FlashProgress::Connected(before.clone()));
    probe(&mut s, bundle, opts).await?;
    progress(FlashProgress::Probed);

    // The unit stores and names bundles by the hash their signature covers (the trailer's first 32 bytes), not by
    // the hash of the whole file that checks the transfer.
    let signed_hash: [u8; 32] = probe_parts(bundle)
        .and_then(|(_, trailer)| trailer.first_chunk::<32>().copied())
        .expect("probe succeeded, so the bundle has a trailer");
    let started = Instant::now();
    let mut reconnects = 0u32;
    let mut payload_sent = 0u64;
    loop {
        match upload(&mut s, bundle, opts, &mut payload_sent, progress).await {
            Ok(()) => break,
            Err(e) if e.is_link_failure() => {
                progress(FlashProgress::Reconnecting(e.chain()));
                wire.retire(&s);
                s = connect(opts, Instant::now() + opts.reconnect_for)
                    .await
                    .map_err(|last| MonitorError::LinkLost {
                        addr: opts.addr.to_string(),
                        within: opts.reconnect_for,
                        source: Box::new(last),
                    })?;
                reconnects += 1;
            }
            Err(e) => return Err(e),
        }
    }
    let upload_time = started.elapsed();

    let t = Instant::now();
    let re = s.send(Msg::BundleCommit).await?;
    answer(&mut s, re, "BundleCommit", opts.reply_timeout).await?;
    progress(FlashProgress::Committed);
    let re = s
        .send(Msg::Activate(Activate {
            sha256: signed_hash,
            allow_downgrade: opts.allow_downgrade,
        }))
        .await?;
    answer(&mut s, re, "Activate", opts.reply_timeout * 4).await?;
    let activate_time = t.elapsed();
    let active = status_model(&mut s, opts.reply_timeout).await?;
    wire.retire(&s);
    Ok(FlashReport {
        before,
        active,
        size,
        payload_sent,
        wire_sent: wire.sent,
        wire_received: wire.received,
        reconnects,
        upload_time,
        activate_time,
    })
}

/// One upload attempt on session `s`: `BundleBegin`, then chunks from where the unit stands.
async fn upload(
    s: &mut Session,
    bundle: &[u8],
    opts: &FlashOptions,
    payload_sent: &mut u64,
    progress: &mut dyn FnMut(FlashProgress),
) -> Result<(), MonitorError> {
    let size = bundle.len() as u64;
    let re = s.send(Msg::BundleBegin(bundle_begin(bundle))).await?;
    let Msg::UploadStatus(status) = answer(s, re, "BundleBegin", opts.reply_timeout).await? else {
        return Err(MonitorError::Protocol {
            addr: s.addr().to_string(),
            detail: "BundleBegin answered without UploadStatus".into(),
        });
    };
    if status.received > size {
        return Err(MonitorError::Protocol {
            addr: s.addr().to_string(),
            detail: format!(
                "unit claims {} bytes of a {size}-byte bundle",
                status.received
            ),
        });
    }
    if status.received > 0 {
        progress(FlashProgress::Resumed(status.received));
    }
    let chunk = opts.chunk.clamp(1, kestrel_wire::frame::MAX_BUNDLE_CHUNK) as u64;
    let window = opts.window.max(1);
    let mut next = status.received;
    let mut acked = status.received;
    progress(FlashProgress::Uploaded { acked, total: size });
    // (request seq, end offset) of chunks in flight, oldest first.
    let mut in_flight: VecDeque<(u32, u64)> = VecDeque::new();
    while acked < size {
        while in_flight.len() < window && next < size {
            let end = (next + chunk).min(size);
            let re = s
                .send(Msg::BundleChunk(BundleChunk {
                    offset: next,
                    bytes: bundle[next as usize..end as usize].to_vec(),
                }))
                .await?;
            *payload_sent += end - next;
            in_flight.push_back((re, end));
            next = end;
        }
        match recv(s, opts.reply_timeout).await? {
            Msg::Ack(a) if in_flight.front().is_some_and(|&(re, _)| re == a.re) => {
                let (_, end) = in_flight.pop_front().expect("checked");
                acked = end;
                progress(FlashProgress::Uploaded { acked, total: size });
            }
            Msg::Nack(n) if in_flight.iter().any(|&(re, _)| re == n.re) => {
                return Err(MonitorError::Refused {
                    addr: s.addr().to_string(),
                    request: "BundleChunk",
                    code: n.code,
                    detail: n.detail,
                });
            }
            other => skip(other),
        }
    }
    Ok(())
}

/// The unit's active model, from a `Status` request.
async fn status_model(
    s: &mut Session,
    timeout: Duration,
) -> Result<Option<ModelRef>, MonitorError> {
    s.send(Msg::Status).await?;
    loop {
        match recv(s, timeout).await? {
            Msg::Stats(st) => return Ok(st.model),
            other => skip(other),
        }
    }
}

/// Ask the unit to go back to its previous model; returns the model active afterwards.
pub async fn rollback(opts: &FlashOptions) -> Result<(Hello, Option<ModelRef>), MonitorError> {
    let mut s = Session::open(&opts.addr, &opts.connect).await?;
    let before = s.peer().clone();
    let re = s.send(Msg::Rollback).await?;
    answer(&mut s, re, "Rollback", opts.reply_timeout * 4).await?;
    let active = status_model(&mut s, opts.reply_timeout).await?;
    Ok((before, active))
}
