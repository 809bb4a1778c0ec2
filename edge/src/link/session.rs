//! One host session over any byte stream: handshake, authentication, requests, and the verdict stream with mask
//! decimation and missed-verdict accounting. Generic over `AsyncRead + AsyncWrite`, so TCP, serial and in-memory
//! `tokio::io::duplex` tests all run this exact code (see the [module docs](super) for the protocol).

use std::time::Duration;

use kestrel_link::{FrameReader, FrameWriter};
use kestrel_wire::{
    Ack, AuthError, EdgeAuthenticator, Envelope, Hello, KeyRole, Msg, Nack, NackCode, ReplayBegin,
    ReplayEnd, Role, Subscribe, UploadStatus, Verdict, PROTO_VERSION, SCHEMA_HASH,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast::error::RecvError;

use super::{LinkContext, Outgoing};

/// Records read from the journal per step of a replay (bounded memory, and live traffic resumes between steps).
const REPLAY_BATCH: usize = 256;

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The peer closed the stream.
    PeerClosed,
    /// The unit is shutting down (the verdict stream ended).
    Shutdown,
    /// The peer speaks another protocol version or schema.
    Incompatible,
    /// The peer failed authentication.
    AuthFailed,
    /// A write did not complete in time (slow or dead TCP client).
    WriteTimeout,
    /// The stream failed.
    Io(std::io::Error),
    /// Our side of the authentication failed (no OS randomness, sequence numbers exhausted).
    Auth(AuthError),
    /// The peer did not authenticate within the handshake deadline.
    HandshakeTimeout,
    /// The authenticated peer sent nothing for the idle timeout.
    Idle,
    /// The peer authenticated but every client slot is taken.
    Busy,
}

impl PartialEq for SessionEnd {
    /// Ends compare by kind (IO errors by [`std::io::ErrorKind`]), which is what callers and tests branch on.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SessionEnd::Io(a), SessionEnd::Io(b)) => a.kind() == b.kind(),
            (SessionEnd::Auth(a), SessionEnd::Auth(b)) => a == b,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl Eq for SessionEnd {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    AwaitAuth,
    Ready,
}

/// Per-session settings that differ between transports.
#[derive(Debug)]
pub struct SessionOptions {
    /// Give up on a write after this long (TCP); `None` waits (serial).
    pub write_timeout: Option<Duration>,
    /// Transport name for logs.
    pub transport: &'static str,
    /// End the session if the peer has not authenticated this long after it started (TCP: a socket that never
    /// proves it holds the key must not hold resources); `None` = no limit (serial: a line has one peer).
    pub handshake_deadline: Option<Duration>,
    /// End an authenticated session that sent nothing for this long (hosts send `Status` every second or so).
    pub idle_timeout: Option<Duration>,
    /// Client slots: one is taken when the peer authenticates (not before, so idle or hostile sockets cannot lock
    /// a monitor out), released when the session ends. `None` = unlimited (serial).
    pub client_slots: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// Held until the peer authenticates (bounds how many sockets may sit in the handshake at once).
    pub handshake_permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl SessionOptions {
    /// Options for a serial line: writes wait, no deadlines, one peer.
    pub fn serial() -> Self {
        SessionOptions {
            write_timeout: None,
            transport: "serial",
            handshake_deadline: None,
            idle_timeout: None,
            client_slots: None,
            handshake_permit: None,
        }
    }
}

struct Session<W> {
    ctx: LinkContext,
    opts: SessionOptions,
    writer: W,
    frames_out: FrameWriter,
    frames_in: FrameReader,
    auth: EdgeAuthenticator,
    phase: Phase,
    sub: Option<Subscribe>,
    sent_verdicts: u64,
    missed: u64,
    started: tokio::time::Instant,
    last_rx: tokio::time::Instant,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A model for the audit log: name, version and hash, or `none`.
fn model_text(m: Option<kestrel_wire::ModelRef>) -> String {
    m.map_or_else(
        || "none".into(),
        |m| format!("{} v{} {}", m.name, m.version, hex::encode(m.sha256)),
    )
}

/// Run a blocking unit operation on tokio's blocking pool; a panic in it becomes an `Internal` refusal.
async fn blocking(
    f: impl FnOnce() -> Result<(), (NackCode, String)> + Send + 'static,
) -> Result<(), (NackCode, String)> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err((NackCode::Internal, format!("the operation failed: {e}"))))
}

/// Serve one session on `io` until the peer leaves, the unit shuts down, or the peer fails the handshake.
pub async fn serve<S>(io: S, ctx: LinkContext, opts: SessionOptions) -> SessionEnd
where
    S: AsyncRead + AsyncWrite,
{
    let (mut reader, writer) = tokio::io::split(io);
    let mut rx = ctx.outgoing.subscribe();
    let mut s = Session {
        auth: EdgeAuthenticator::new(ctx.key.clone(), ctx.unit_id.clone())
            .with_read_only_key(ctx.read_only_key.clone()),
        ctx,
        opts,
        writer,
        frames_out: FrameWriter::new(),
        frames_in: FrameReader::new(),
        phase: Phase::AwaitHello,
        sub: None,
        sent_verdicts: 0,
        missed: 0,
        started: tokio::time::Instant::now(),
        last_rx: tokio::time::Instant::now(),
        permit: None,
    };
    if let Err(end) = s.send_hello().await {
        return end;
    }
    let mut shutdown = s.ctx.shutdown.clone();
    loop {
        if *shutdown.borrow_and_update() {
            // Hand over what the runtime produced while draining, then end.
            while s.phase == Phase::Ready {
                let res = match rx.try_recv() {
                    Ok(o) => s.forward(&o).await,
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                        s.report_missed(n).await
                    }
                    Err(_) => break,
                };
                if let Err(end) = res {
                    return end;
                }
            }
            return SessionEnd::Shutdown;
        }
        // The next instant a deadline ends the session: the handshake's until authenticated, then the idle one.
        let deadline = if s.phase == Phase::Ready {
            s.opts
                .idle_timeout
                .map(|t| (s.last_rx + t, SessionEnd::Idle))
        } else {
            s.opts
                .handshake_deadline
                .map(|t| (s.started + t, SessionEnd::HandshakeTimeout))
        };
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let until = deadline.as_ref().map_or(far, |(t, _)| *t);
        tokio::select! {
            _ = tokio::time::sleep_until(until), if deadline.is_some() => {
                let (_, end) = deadline.expect("guarded");
                tracing::info!(transport = s.opts.transport, ?end, "closing the session");
                return end;
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    // The unit dropped its side without saying stop: it is gone all the same.
                    return SessionEnd::Shutdown;
                }
            }
            r = s.frames_in.recv(&mut reader) => {
                let env = match r {
                    Ok(Some(env)) => env,
                    Ok(None) => return SessionEnd::PeerClosed,
                    Err(e) => return SessionEnd::Io(e),
                };
                s.last_rx = tokio::time::Instant::now();
                if let Err(end) = s.handle(env).await {
                    return end;
                }
            }
            m = rx.recv(), if s.phase == Phase::Ready => {
                let res = match m {
                    Ok(o) => s.forward(&o).await,
                    Err(RecvError::Lagged(n)) => s.report_missed(n).await,
                    Err(RecvError::Closed) => return SessionEnd::Shutdown,
                };
                if let Err(end) = res {
                    return end;
                }
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> Session<W> {
    async fn send(&mut self, msg: Msg) -> Result<(), SessionEnd> {
        let env = self.auth.seal(msg).map_err(SessionEnd::Auth)?;
        self.write_env(&env).await
    }

    async fn write_env(&mut self, env: &Envelope) -> Result<(), SessionEnd> {
        let write = self.frames_out.send(&mut self.writer, env);
        match self.opts.write_timeout {
            Some(t) => match tokio::time::timeout(t, write).await {
                Ok(r) => r.map_err(SessionEnd::Io),
                Err(_) => Err(SessionEnd::WriteTimeout),
            },
            None => write.await.map_err(SessionEnd::Io),
        }
    }

    async fn send_hello(&mut self) -> Result<(), SessionEnd> {
        let hello = Hello {
            proto_version: PROTO_VERSION,
            schema_hash: SCHEMA_HASH,
            role: Role::Edge,
            unit_id: self.ctx.unit_id.clone(),
            board: self.ctx.board.clone(),
            fw_version: crate::FW_VERSION.to_string(),
            active_model: self.ctx.control.active_model(),
        };
        self.send(Msg::Hello(hello)).await
    }

    async fn nack(&mut self, re: u32, code: NackCode, detail: String) -> Result<(), SessionEnd> {
        self.send(Msg::Nack(Nack { re, code, detail })).await
    }

    async fn handle(&mut self, env: Envelope) -> Result<(), SessionEnd> {
        let re = env.seq;
        if let Msg::Hello(h) = &env.msg {
            return self.on_hello(re, h.clone()).await;
        }
        if let Err(e) = self.auth.open(&env) {
            tracing::debug!(transport = self.opts.transport, error = %e, msg = env.msg.name(), "refused frame");
            return match e.nack(re) {
                Some(n) => self.send(Msg::Nack(n)).await,
                None => Ok(()),
            };
        }
        match (self.phase, env.msg) {
            (Phase::AwaitAuth, Msg::AuthResponse(resp)) => match self.auth.accept_response(&resp) {
                Ok(confirm) => {
                    if let Some(slots) = &self.opts.client_slots {
                        match slots.clone().try_acquire_owned() {
                            Ok(p) => self.permit = Some(p),
                            Err(_) => {
                                let detail = "every client slot of the unit is taken by authenticated hosts; close \
                                              another monitor first"
                                    .to_string();
                                tracing::warn!(
                                    transport = self.opts.transport,
                                    "authenticated host refused: no client slot"
                                );
                                self.nack(re, NackCode::Busy, detail).await?;
                                return Err(SessionEnd::Busy);
                            }
                        }
                    }
                    self.opts.handshake_permit = None;
                    self.write_env(&confirm).await?;
                    self.phase = Phase::Ready;
                    tracing::info!(transport = self.opts.transport, "host authenticated");
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(transport = self.opts.transport, error = %e, "host failed authentication");
                    if let Some(n) = e.nack(re) {
                        self.send(Msg::Nack(n)).await?;
                    }
                    Err(SessionEnd::AuthFailed)
                }
            },
            (Phase::Ready, msg) => self.request(re, msg).await,
            (_, msg) => {
                let detail = format!(
                    "{} before the handshake finished (send Hello, then AuthResponse)",
                    msg.name()
                );
                self.nack(re, NackCode::Unexpected, detail).await
            }
        }
    }

    async fn on_hello(&mut self, re: u32, h: Hello) -> Result<(), SessionEnd> {
        if !h.is_compatible() {
            let detail = format!(
                "unit speaks protocol {PROTO_VERSION} (schema {}), host sent protocol {} (schema {}); update the older side",
                hex::encode(SCHEMA_HASH),
                h.proto_version,
                hex::encode(h.schema_hash)
            );
            tracing::warn!(transport = self.opts.transport, %detail, "incompatible host");
            self.nack(re, NackCode::IncompatibleProtocol, detail)
                .await?;
            return Err(SessionEnd::Incompatible);
        }
        if h.role != Role::Host {
            return self
                .nack(
                    re,
                    NackCode::Unexpected,
                    "Hello from another edge unit".into(),
                )
                .await;
        }
        if self.phase != Phase::AwaitHello {
            // A new host on a line that had a session (serial): start over with fresh sequence numbers.
            self.auth = EdgeAuthenticator::new(self.ctx.key.clone(), self.ctx.unit_id.clone())
                .with_read_only_key(self.ctx.read_only_key.clone());
            self.sub = None;
            self.sent_verdicts = 0;
            self.send_hello().await?;
        }
        let challenge = self.auth.challenge_random().map_err(SessionEnd::Auth)?;
        self.write_env(&challenge).await?;
        self.phase = Phase::AwaitAuth;
        Ok(())
    }

    async fn request(&mut self, re: u32, msg: Msg) -> Result<(), SessionEnd> {
        let changes_unit = matches!(
            msg,
            Msg::SetThreshold(_)
                | Msg::SoftTrigger
                | Msg::BundleBegin(_)
                | Msg::BundleChunk(_)
                | Msg::BundleCommit
                | Msg::BundleProbe(_)
                | Msg::Activate(_)
                | Msg::Rollback
        );
        if changes_unit && self.auth.role() != Some(KeyRole::Control) {
            let detail = format!(
                "{} needs the unit's control key; this host authenticated with the read-only monitor key",
                msg.name()
            );
            return self.nack(re, NackCode::Unauthenticated, detail).await;
        }
        match msg {
            Msg::Subscribe(mut s) => {
                if s.min_score.is_nan() {
                    s.min_score = f32::NEG_INFINITY;
                }
                self.sub = Some(s);
                self.sent_verdicts = 0;
                self.send(Msg::Ack(Ack { re })).await
            }
            Msg::Status => {
                let stats = self
                    .ctx
                    .control
                    .stats(self.missed, self.frames_in.counts().errors());
                self.send(Msg::Stats(stats)).await
            }
            Msg::Replay(r) => self.replay(re, r.from_seq).await,
            Msg::SoftTrigger => match self.ctx.control.soft_trigger() {
                Ok(()) => self.send(Msg::Ack(Ack { re })).await,
                Err((code, detail)) => self.nack(re, code, detail).await,
            },
            Msg::SetThreshold(t) if !t.threshold.is_finite() => {
                let detail = format!("threshold must be a finite number, got {}", t.threshold);
                self.nack(re, NackCode::InvalidThreshold, detail).await
            }
            Msg::SetThreshold(t) => match self.ctx.control.set_threshold(t.threshold) {
                Ok(old) => {
                    self.audit("SetThreshold", old.to_string(), t.threshold.to_string());
                    self.send(Msg::Ack(Ack { re })).await
                }
                Err((code, detail)) => self.nack(re, code, detail).await,
            },
            Msg::BundleBegin(b) => match self.ctx.control.upload_begin(&b) {
                Ok(received) => {
                    self.send(Msg::UploadStatus(UploadStatus { re, received }))
                        .await
                }
                Err((code, detail)) => self.nack(re, code, detail).await,
            },
            Msg::BundleChunk(c) => match self.ctx.control.upload_chunk(&c) {
                Ok(()) => self.send(Msg::Ack(Ack { re })).await,
                Err((code, detail)) => self.nack(re, code, detail).await,
            },
            Msg::BundleProbe(p) => match self.ctx.control.probe(&p) {
                Ok(()) => self.send(Msg::Ack(Ack { re })).await,
                Err((code, detail)) => self.nack(re, code, detail).await,
            },
            // Hashing, signature checks, model loading and the self-test take up to seconds: off the async workers.
            Msg::BundleCommit => {
                let ctl = self.ctx.control.clone();
                let r = blocking(move || ctl.upload_commit()).await;
                if r.is_ok() {
                    self.audit("BundleStored", String::new(), "inactive slot".into());
                }
                self.answer(re, r).await
            }
            Msg::Activate(a) => {
                let ctl = self.ctx.control.clone();
                let before = model_text(self.ctx.control.active_model());
                let r = blocking(move || ctl.activate(&a)).await;
                if r.is_ok() {
                    self.audit(
                        "Activate",
                        before,
                        model_text(self.ctx.control.active_model()),
                    );
                }
                self.answer(re, r).await
            }
            Msg::Rollback => {
                let ctl = self.ctx.control.clone();
                let before = model_text(self.ctx.control.active_model());
                let r = blocking(move || ctl.rollback()).await;
                if r.is_ok() {
                    self.audit(
                        "Rollback",
                        before,
                        model_text(self.ctx.control.active_model()),
                    );
                }
                self.answer(re, r).await
            }
            other => {
                let detail = format!("{} is not a request a unit serves", other.name());
                self.nack(re, NackCode::Unexpected, detail).await
            }
        }
    }

    fn audit(&self, action: &'static str, old: String, new: String) {
        self.ctx.control.audit(crate::runtime::control::AuditEntry {
            t_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            action,
            old,
            new,
            key: match self.auth.role() {
                Some(KeyRole::Control) => "control",
                _ => "read-only",
            },
            link: self.opts.transport,
        });
    }

    async fn answer(
        &mut self,
        re: u32,
        r: Result<(), (NackCode, String)>,
    ) -> Result<(), SessionEnd> {
        match r {
            Ok(()) => self.send(Msg::Ack(Ack { re })).await,
            Err((code, detail)) => self.nack(re, code, detail).await,
        }
    }

    async fn replay(&mut self, re: u32, from_seq: u64) -> Result<(), SessionEnd> {
        let journal = self.ctx.journal.clone();
        let (first_available, end_seq) = {
            let j = journal.lock().unwrap_or_else(|p| p.into_inner());
            (j.first_seq(), j.next_seq())
        };
        let first_seq = from_seq.max(first_available).min(end_seq);
        self.send(Msg::ReplayBegin(ReplayBegin {
            re,
            first_seq,
            end_seq,
        }))
        .await?;
        let mut next = first_seq;
        let mut sent = 0u64;
        while next < end_seq {
            let j = journal.clone();
            let batch = tokio::task::spawn_blocking(move || {
                j.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read_from(next, REPLAY_BATCH)
            })
            .await;
            let records = match batch {
                Ok(Ok(b)) => b.records,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "journal read failed during a replay");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal read task failed during a replay");
                    break;
                }
            };
            if records.is_empty() {
                break;
            }
            for v in records.into_iter().take_while(|v| v.seq < end_seq) {
                next = v.seq + 1;
                sent += 1;
                self.send(Msg::Replayed(v)).await?;
            }
        }
        self.send(Msg::ReplayEnd(ReplayEnd { re, sent })).await
    }

    async fn forward(&mut self, o: &Outgoing) -> Result<(), SessionEnd> {
        match o {
            Outgoing::Event(e) => self.send(Msg::Event(e.clone())).await,
            Outgoing::Verdict(v) => {
                let Some(sub) = self.sub.clone() else {
                    return Ok(());
                };
                if v.pass && v.score < sub.min_score {
                    return Ok(());
                }
                let with_mask = sub.masks_every > 0
                    && self
                        .sent_verdicts
                        .is_multiple_of(u64::from(sub.masks_every));
                self.sent_verdicts += 1;
                let v = Verdict {
                    mask: if with_mask { v.mask.clone() } else { None },
                    ..v.clone()
                };
                self.send(Msg::Verdict(v)).await
            }
        }
    }

    async fn report_missed(&mut self, n: u64) -> Result<(), SessionEnd> {
        self.missed += n;
        tracing::warn!(
            transport = self.opts.transport,
            missed = n,
            total = self.missed,
            "client too slow; dropped its oldest queued messages (it can Replay verdicts)"
        );
        let stats = self
            .ctx
            .control
            .stats(self.missed, self.frames_in.counts().errors());
        self.send(Msg::Stats(stats)).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Session tests over `tokio::io::duplex` with a real host-side authenticator and a fake unit.

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use kestrel_wire::{
        AuthChallenge, Event, EventKind, HostAuthenticator, Replay, SetThreshold, Stats, UnitKey,
    };
    use tokio::io::DuplexStream;

    use super::*;
    use crate::journal::{Journal, JournalConfig};
    use crate::link::UnitControl;

    pub(crate) struct FakeUnit {
        pub threshold_bits: AtomicU32,
    }

    impl UnitControl for FakeUnit {
        fn soft_trigger(&self) -> Result<(), (NackCode, String)> {
            Err((NackCode::TriggerUnavailable, "free-run".into()))
        }
        fn set_threshold(&self, t: f32) -> Result<f32, (NackCode, String)> {
            Ok(f32::from_bits(
                self.threshold_bits.swap(t.to_bits(), Ordering::Relaxed),
            ))
        }
        fn active_model(&self) -> Option<kestrel_wire::ModelRef> {
            None
        }
        fn stats(&self, missed: u64, link_errors: u64) -> Stats {
            Stats {
                frames: 7,
                passes: 0,
                rejects: 0,
                dropped: 0,
                latency_p50_us: 0,
                latency_p99_us: 0,
                uptime_s: 0,
                missed_by_client: missed,
                link_errors,
                model: None,
                previous_model: None,
                late: 0,
                uninspected: 0,
            }
        }
    }

    const KEY: [u8; 32] = [7; 32];
    const READ_ONLY_KEY: [u8; 32] = [8; 32];

    /// A host that can also break the protocol (raw, untagged or replayed frames), so not the real host client.
    struct Host {
        io: DuplexStream,
        rd: FrameReader,
        wr: FrameWriter,
        auth: HostAuthenticator,
    }

    impl Host {
        async fn send_raw(&mut self, env: &Envelope) {
            self.wr.send(&mut self.io, env).await.unwrap();
        }
        async fn send(&mut self, msg: Msg) -> u32 {
            let env = self.auth.seal(msg).unwrap();
            self.send_raw(&env).await;
            env.seq
        }
        async fn recv(&mut self) -> Envelope {
            let env = tokio::time::timeout(Duration::from_secs(5), self.rd.recv(&mut self.io))
                .await
                .expect("edge answered within 5 s")
                .unwrap()
                .expect("edge closed the stream");
            assert_eq!(
                self.rd.counts().errors(),
                0,
                "every frame from the edge decodes"
            );
            env
        }
        async fn recv_msg(&mut self) -> Msg {
            let env = self.recv().await;
            if self.auth.is_established() {
                self.auth.open(&env).unwrap();
            }
            env.msg
        }
    }

    fn host_hello(version: u16) -> Msg {
        Msg::Hello(Hello {
            proto_version: version,
            schema_hash: SCHEMA_HASH,
            role: Role::Host,
            unit_id: "unit-1".into(),
            board: String::new(),
            fw_version: "test".into(),
            active_model: None,
        })
    }

    pub(crate) struct Rig {
        host: Host,
        tx: tokio::sync::broadcast::Sender<Arc<Outgoing>>,
        stop: tokio::sync::watch::Sender<bool>,
        journal: Arc<Mutex<Journal>>,
        task: tokio::task::JoinHandle<SessionEnd>,
        _tmp: tempfile::TempDir,
    }

    fn rig(key: [u8; 32], outbox: usize) -> Rig {
        rig_with_pipe(key, outbox, 1 << 16)
    }

    fn rig_with_pipe(key: [u8; 32], outbox: usize, pipe: usize) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Arc::new(Mutex::new(
            Journal::open(tmp.path(), JournalConfig::default()).unwrap(),
        ));
        let (tx, _) = tokio::sync::broadcast::channel(outbox);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let ctx = LinkContext {
            shutdown,
            unit_id: "unit-1".into(),
            board: "sim".into(),
            key: UnitKey::from_bytes(KEY),
            read_only_key: Some(UnitKey::from_bytes(READ_ONLY_KEY)),
            journal: journal.clone(),
            outgoing: tx.clone(),
            control: Arc::new(FakeUnit {
                threshold_bits: AtomicU32::new(0),
            }),
        };
        let (a, b) = tokio::io::duplex(pipe);
        let task = tokio::spawn(serve(
            a,
            ctx,
            SessionOptions {
                write_timeout: Some(Duration::from_secs(5)),
                transport: "test",
                handshake_deadline: Some(Duration::from_secs(5)),
                idle_timeout: None,
                client_slots: None,
                handshake_permit: None,
            },
        ));
        Rig {
            host: Host {
                io: b,
                rd: FrameReader::new(),
                wr: FrameWriter::new(),
                auth: HostAuthenticator::new(UnitKey::from_bytes(key), "unit-1"),
            },
            tx,
            stop,
            journal,
            task,
            _tmp: tmp,
        }
    }

    async fn handshake(r: &mut Rig) {
        let Msg::Hello(h) = r.host.recv_msg().await else {
            panic!("edge Hello first")
        };
        assert!(h.is_compatible());
        assert_eq!(
            (h.role, h.unit_id.as_str(), h.board.as_str()),
            (Role::Edge, "unit-1", "sim")
        );
        assert_eq!(h.active_model, None, "no model installed");
        r.host.send(host_hello(PROTO_VERSION)).await;
        let Msg::AuthChallenge(c) = r.host.recv_msg().await else {
            panic!("challenge")
        };
        let resp = r
            .host
            .auth
            .respond_random(&AuthChallenge { nonce: c.nonce })
            .unwrap();
        r.host.send_raw(&resp).await;
    }

    async fn authenticated(outbox: usize) -> Rig {
        let mut r = rig(KEY, outbox);
        handshake(&mut r).await;
        let Msg::AuthConfirm(c) = r.host.recv_msg().await else {
            panic!("confirm")
        };
        r.host.auth.accept_confirm(&c).unwrap();
        r
    }

    fn verdict(seq: u64, pass: bool, score: f32) -> Verdict {
        Verdict {
            seq,
            frame_id: seq,
            t_capture_us: 1,
            latency_us: 2,
            score,
            pass,
            mask: Some(kestrel_wire::Mask::rle(1, 1, &[9]).unwrap()),
            outcome: kestrel_wire::Outcome::Inspected,
        }
    }

    #[tokio::test]
    async fn handshake_then_status_and_threshold() {
        let mut r = authenticated(16).await;
        let re = r.host.send(Msg::Status).await;
        let Msg::Stats(s) = r.host.recv_msg().await else {
            panic!("stats")
        };
        assert_eq!(s.frames, 7);
        let _ = re;
        let re = r
            .host
            .send(Msg::SetThreshold(SetThreshold {
                threshold: f32::INFINITY,
            }))
            .await;
        assert!(
            matches!(r.host.recv_msg().await, Msg::Nack(Nack { re: x, code: NackCode::InvalidThreshold, .. }) if x == re)
        );
        let re = r
            .host
            .send(Msg::SetThreshold(SetThreshold { threshold: 3.0 }))
            .await;
        assert_eq!(r.host.recv_msg().await, Msg::Ack(Ack { re }));
        let re = r.host.send(Msg::SoftTrigger).await;
        assert!(
            matches!(r.host.recv_msg().await, Msg::Nack(Nack { re: x, code: NackCode::TriggerUnavailable, .. }) if x == re)
        );
    }

    #[tokio::test]
    async fn wrong_key_is_refused_and_the_session_ends() {
        let mut r = rig([1; 32], 16);
        handshake(&mut r).await;
        assert!(matches!(
            r.host.recv_msg().await,
            Msg::Nack(Nack {
                code: NackCode::AuthFailed,
                ..
            })
        ));
        assert_eq!(r.task.await.unwrap(), SessionEnd::AuthFailed);
    }

    #[tokio::test]
    async fn other_protocol_version_is_refused_with_both_versions() {
        let mut r = rig(KEY, 16);
        let _ = r.host.recv_msg().await;
        r.host.send(host_hello(PROTO_VERSION + 1)).await;
        let Msg::Nack(n) = r.host.recv_msg().await else {
            panic!("nack")
        };
        assert_eq!(n.code, NackCode::IncompatibleProtocol);
        assert!(
            n.detail
                .contains(&format!("protocol {}", PROTO_VERSION + 1)),
            "{}",
            n.detail
        );
        assert_eq!(r.task.await.unwrap(), SessionEnd::Incompatible);
    }

    #[tokio::test]
    async fn control_before_auth_and_replayed_frames_get_nacks() {
        let mut r = rig(KEY, 16);
        let _ = r.host.recv_msg().await;
        r.host.send_raw(&Envelope::new(0, Msg::Status)).await;
        assert!(matches!(
            r.host.recv_msg().await,
            Msg::Nack(Nack {
                code: NackCode::Unauthenticated,
                ..
            })
        ));
        drop(r);
        let mut r = authenticated(16).await;
        let env = r.host.auth.seal(Msg::Status).unwrap();
        r.host.send_raw(&env).await;
        assert!(matches!(r.host.recv_msg().await, Msg::Stats(_)));
        r.host.send_raw(&env).await;
        assert!(matches!(
            r.host.recv_msg().await,
            Msg::Nack(Nack {
                code: NackCode::Replayed,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn subscription_filters_and_decimates_masks() {
        let mut r = authenticated(64).await;
        // Nothing is streamed before Subscribe; events are.
        r.tx.send(Arc::new(Outgoing::Verdict(verdict(0, true, 0.1))))
            .unwrap();
        let ev = Event {
            t_us: 5,
            kind: EventKind::ThresholdChanged { threshold: 2.0 },
        };
        r.tx.send(Arc::new(Outgoing::Event(ev.clone()))).unwrap();
        assert_eq!(r.host.recv_msg().await, Msg::Event(ev));
        let re = r
            .host
            .send(Msg::Subscribe(Subscribe {
                masks_every: 2,
                min_score: 0.5,
            }))
            .await;
        assert_eq!(r.host.recv_msg().await, Msg::Ack(Ack { re }));
        for (i, (pass, score)) in [
            (true, 0.1),
            (true, 0.6),
            (false, 0.2),
            (true, 0.9),
            (true, 0.7),
        ]
        .into_iter()
        .enumerate()
        {
            r.tx.send(Arc::new(Outgoing::Verdict(verdict(
                i as u64 + 1,
                pass,
                score,
            ))))
            .unwrap();
        }
        // 0.1 pass is below min_score; the 0.2 reject is sent anyway; masks on every 2nd sent verdict.
        let mut got = Vec::new();
        for _ in 0..4 {
            let Msg::Verdict(v) = r.host.recv_msg().await else {
                panic!("verdict")
            };
            got.push((v.seq, v.mask.is_some()));
        }
        assert_eq!(got, vec![(2, true), (3, false), (4, true), (5, false)]);
    }

    #[tokio::test]
    async fn slow_client_is_told_what_it_missed() {
        // A 64-byte pipe the host does not read: the session blocks on its first writes while 10 verdicts go
        // into a 4-slot ring.
        let mut r = rig_with_pipe(KEY, 4, 64);
        handshake(&mut r).await;
        let Msg::AuthConfirm(c) = r.host.recv_msg().await else {
            panic!("confirm")
        };
        r.host.auth.accept_confirm(&c).unwrap();
        let sub = Subscribe {
            masks_every: 0,
            min_score: f32::NEG_INFINITY,
        };
        let re = r.host.send(Msg::Subscribe(sub)).await;
        assert_eq!(r.host.recv_msg().await, Msg::Ack(Ack { re }));
        for i in 0..10 {
            r.tx.send(Arc::new(Outgoing::Verdict(verdict(i, true, 1.0))))
                .unwrap();
            tokio::task::yield_now().await;
        }
        let mut before = Vec::new();
        let missed = loop {
            match r.host.recv_msg().await {
                Msg::Verdict(v) => before.push(v.seq),
                Msg::Stats(s) => break s.missed_by_client,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(missed > 0);
        let mut after = Vec::new();
        while (before.len() + after.len()) as u64 + missed < 10 {
            let Msg::Verdict(v) = r.host.recv_msg().await else {
                panic!("verdict")
            };
            after.push(v.seq);
        }
        // Every verdict is either delivered or counted as missed, and the newest ones survive.
        assert_eq!(after.last(), Some(&9), "before {before:?} after {after:?}");
        assert_eq!(before.len() + after.len() + missed as usize, 10);
    }

    #[tokio::test]
    async fn replay_serves_the_journal_range() {
        let mut r = authenticated(16).await;
        {
            let mut j = r.journal.lock().unwrap();
            for i in 0..600 {
                j.append(&verdict(0, i % 2 == 0, i as f32)).unwrap();
            }
        }
        let re = r.host.send(Msg::Replay(Replay { from_seq: 10 })).await;
        assert_eq!(
            r.host.recv_msg().await,
            Msg::ReplayBegin(ReplayBegin {
                re,
                first_seq: 10,
                end_seq: 600
            })
        );
        for want in 10..600u64 {
            let Msg::Replayed(v) = r.host.recv_msg().await else {
                panic!("replayed")
            };
            assert_eq!((v.seq, v.score, v.mask), (want, want as f32, None));
        }
        assert_eq!(
            r.host.recv_msg().await,
            Msg::ReplayEnd(ReplayEnd { re, sent: 590 })
        );
    }

    #[tokio::test]
    async fn shutdown_ends_the_session() {
        let mut r = authenticated(4).await;
        let re = r
            .host
            .send(Msg::Subscribe(Subscribe {
                masks_every: 0,
                min_score: f32::NEG_INFINITY,
            }))
            .await;
        assert_eq!(r.host.recv_msg().await, Msg::Ack(Ack { re }));
        // Verdicts produced while the unit drains still reach the host before the session ends.
        r.tx.send(Arc::new(Outgoing::Verdict(verdict(3, true, 1.0))))
            .unwrap();
        r.stop.send(true).unwrap();
        assert!(matches!(r.host.recv_msg().await, Msg::Verdict(v) if v.seq == 3));
        let end = tokio::time::timeout(Duration::from_secs(5), r.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end, SessionEnd::Shutdown);
    }
}
