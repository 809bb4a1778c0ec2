//! The monitor client: one logical subscription to a unit that survives link drops.
//!
//! [`Monitor::next`] yields [`Update`]s. Behind it the client keeps a [`Session`] open, subscribes, polls `Status`
//! for fresh [`Stats`], and when the link drops (EOF, IO error, or silence: a pulled serial cable never says EOF) it
//! reconnects with backoff and asks the unit to `Replay` its journal from the first sequence number not yet seen.
//! The same replay closes gaps in the live stream (a slow client's verdicts are dropped by the unit, which then
//! reports `missed_by_client`). Live and replayed copies of a verdict are deduplicated by journal seq
//! ([`SeqTracker`]), so every journaled verdict is shown exactly once, and one the unit no longer holds is reported
//! as [`Update::Lost`] instead of silently missing.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use kestrel_wire::{Event, Hello, Msg, Nack, NackCode, Replay, Stats, Subscribe, Verdict};
use tokio::time::Instant;

use super::addr::UnitAddr;
use super::error::MonitorError;
use super::session::{ConnectOptions, Session};
use super::tracker::{Seen, SeqTracker};

/// How the monitor subscribes and how hard it tries to stay connected.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// The unit.
    pub addr: UnitAddr,
    /// Key and handshake settings.
    pub connect: ConnectOptions,
    /// Attach a mask to every n-th verdict (0 = none).
    pub masks_every: u16,
    /// How often to ask for `Stats`.
    pub status_every: Duration,
    /// After a drop, how long to keep trying to reconnect before giving up.
    pub reconnect_for: Duration,
    /// A link with no frame at all for this long counts as dropped (Stats replies arrive every `status_every`).
    pub silence_timeout: Duration,
    /// Replay the journal from this seq at start (history), instead of starting with live verdicts.
    pub replay_from: Option<u64>,
}

impl MonitorOptions {
    /// Defaults for `addr`: masks off, stats every second, reconnect for 30 s, 5 s silence timeout.
    pub fn new(addr: UnitAddr, connect: ConnectOptions) -> Self {
        MonitorOptions {
            addr,
            connect,
            masks_every: 0,
            status_every: Duration::from_secs(1),
            reconnect_for: Duration::from_secs(30),
            silence_timeout: Duration::from_secs(5),
            replay_from: None,
        }
    }
}

/// What the monitor has to say.
#[derive(Debug, Clone)]
pub enum Update {
    /// A session is up (first connection or after a reconnect).
    Connected {
        /// The unit's `Hello`.
        peer: Hello,
        /// `true` after a link drop.
        reconnect: bool,
    },
    /// A verdict shown for the first time.
    Verdict {
        /// The verdict.
        verdict: Verdict,
        /// Whether it came from the journal (replay) rather than live.
        replayed: bool,
    },
    /// A counters snapshot.
    Stats(Stats),
    /// Something happened on the unit.
    Event(Event),
    /// The link dropped; the monitor is reconnecting.
    LinkDown {
        /// Why.
        cause: String,
    },
    /// Verdicts the unit's journal no longer holds (the drop outlasted the journal ring).
    Lost {
        /// First lost seq.
        from_seq: u64,
        /// How many.
        count: u64,
    },
    /// The unit refused a non-essential request.
    Refused {
        /// Which request.
        request: &'static str,
        /// The refusal.
        nack: Nack,
    },
}

/// Counters over the monitor's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonitorCounters {
    /// Verdicts shown (live + replayed).
    pub verdicts: u64,
    /// Of those, from replays.
    pub replayed: u64,
    /// Copies dropped as already shown.
    pub duplicates: u64,
    /// Successful reconnects.
    pub reconnects: u64,
    /// Verdicts the unit could no longer replay.
    pub lost: u64,
    /// Bytes received from the unit over all sessions (framing included): with `verdicts` this gives the link cost
    /// per verdict, e.g. to size a serial line.
    pub bytes_received: u64,
}

#[derive(Debug, Clone, Copy)]
struct ReplayInFlight {
    re: u32,
    from: u64,
    end: Option<u64>,
}

/// A self-healing subscription to one unit.
pub struct Monitor {
    opts: MonitorOptions,
    session: Option<Session>,
    tracker: SeqTracker,
    queue: VecDeque<Update>,
    pending: HashMap<u32, &'static str>,
    replay: Option<ReplayInFlight>,
    last_missed: u64,
    last_rx: Instant,
    next_status: Instant,
    counters: MonitorCounters,
}

enum Step {
    Msg(Msg),
    Down(String),
    StatusDue,
}

impl Monitor {
    /// Connect and subscribe. Failing to reach or authenticate on this first attempt is an error (no retry: a wrong
    /// address or key should fail fast).
    pub async fn connect(opts: MonitorOptions) -> Result<Monitor, MonitorError> {
        let session = Session::open(&opts.addr, &opts.connect).await?;
        let tracker = match opts.replay_from {
            Some(seq) => SeqTracker::starting_at(seq),
            None => SeqTracker::new(),
        };
        let mut m = Monitor {
            opts,
            session: None,
            tracker,
            queue: VecDeque::new(),
            pending: HashMap::new(),
            replay: None,
            last_missed: 0,
            last_rx: Instant::now(),
            next_status: Instant::now(),
            counters: MonitorCounters::default(),
        };
        let from = m.opts.replay_from;
        m.install(session, false, from).await?;
        Ok(m)
    }

    /// The unit's `Hello` of the current session (`None` while reconnecting).
    pub fn peer(&self) -> Option<&Hello> {
        self.session.as_ref().map(Session::peer)
    }

    /// Lifetime counters.
    pub fn counters(&self) -> MonitorCounters {
        let mut c = self.counters;
        c.bytes_received += self.session.as_ref().map_or(0, |s| s.link().bytes().0);
        c
    }

    /// The next update. Errors are final: the link could not be restored within `reconnect_for`, the unit refused
    /// the key or the subscription, or the protocol was broken.
    pub async fn next(&mut self) -> Result<Update, MonitorError> {
        loop {
            if let Some(u) = self.queue.pop_front() {
                return Ok(u);
            }
            if self.session.is_none() {
                self.reconnect().await?;
                continue;
            }
            let step = self.step().await?;
            match step {
                Step::Msg(msg) => {
                    self.last_rx = Instant::now();
                    self.handle(msg).await?;
                }
                Step::Down(cause) => self.link_down(cause),
                Step::StatusDue => {
                    self.next_status = Instant::now() + self.opts.status_every;
                    self.send(Msg::Status).await?;
                }
            }
        }
    }

    async fn step(&mut self) -> Result<Step, MonitorError> {
        let silence_deadline = self.last_rx + self.opts.silence_timeout;
        let status_due = self.next_status;
        let silence = self.opts.silence_timeout;
        let Some(session) = self.session.as_mut() else {
            return Ok(Step::Down("no session".into()));
        };
        tokio::select! {
            r = session.recv() => match r {
                Ok(msg) => Ok(Step::Msg(msg)),
                Err(e) if e.is_link_failure() => Ok(Step::Down(e.chain())),
                Err(e) => Err(e),
            },
            _ = tokio::time::sleep_until(status_due) => Ok(Step::StatusDue),
            _ = tokio::time::sleep_until(silence_deadline) => {
                Ok(Step::Down(format!("no frame from the unit for {}s", silence.as_secs_f32())))
            }
        }
    }

    /// Send on the current session; a link failure marks the link down (the caller's loop reconnects).
    async fn send(&mut self, msg: Msg) -> Result<Option<u32>, MonitorError> {
        let name = msg.name();
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        match session.send(msg).await {
            Ok(seq) => {
                self.pending.insert(seq, name);
                Ok(Some(seq))
            }
            Err(e) if e.is_link_failure() => {
                self.link_down(e.chain());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn install(
        &mut self,
        session: Session,
        reconnect: bool,
        replay_from: Option<u64>,
    ) -> Result<(), MonitorError> {
        let peer = session.peer().clone();
        self.session = Some(session);
        self.last_rx = Instant::now();
        self.next_status = Instant::now();
        self.last_missed = 0;
        self.queue.push_back(Update::Connected { peer, reconnect });
        // Replay first, so the history arrives before the live stream resumes; duplicates are dropped either way.
        if let Some(from) = replay_from {
            self.request_replay(from).await?;
        }
        self.send(Msg::Subscribe(Subscribe {
            masks_every: self.opts.masks_every,
            min_score: f32::NEG_INFINITY,
        }))
        .await?;
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<(), MonitorError> {
        let deadline = Instant::now() + self.opts.reconnect_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            match Session::open(&self.opts.addr, &self.opts.connect).await {
                Ok(session) => {
                    self.counters.reconnects += 1;
                    let from = self.tracker.resume_from();
                    return self.install(session, true, from).await;
                }
                Err(e) if e.is_link_failure() => {
                    if Instant::now() + backoff > deadline {
                        return Err(MonitorError::LinkLost {
                            addr: self.opts.addr.to_string(),
                            within: self.opts.reconnect_for,
                            source: Box::new(e),
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn link_down(&mut self, cause: String) {
        if let Some(s) = self.session.take() {
            self.counters.bytes_received += s.link().bytes().0;
        }
        self.pending.clear();
        self.replay = None;
        self.queue.push_back(Update::LinkDown { cause });
    }

    async fn request_replay(&mut self, from: u64) -> Result<(), MonitorError> {
        if self.replay.is_some() {
            return Ok(());
        }
        if let Some(re) = self.send(Msg::Replay(Replay { from_seq: from })).await? {
            self.replay = Some(ReplayInFlight {
                re,
                from,
                end: None,
            });
        }
        Ok(())
    }

    fn accept(&mut self, verdict: Verdict, replayed: bool) -> bool {
        match self.tracker.observe(verdict.seq) {
            Seen::Duplicate => {
                self.counters.duplicates += 1;
                false
            }
            Seen::New => {
                self.counters.verdicts += 1;
                if replayed {
                    self.counters.replayed += 1;
                }
                self.queue.push_back(Update::Verdict { verdict, replayed });
                true
            }
        }
    }

    fn give_up_below(&mut self, end: u64) {
        let from = self.tracker.resume_from().unwrap_or(end);
        let count = self.tracker.give_up_below(end);
        if count > 0 {
            self.counters.lost += count;
            self.queue.push_back(Update::Lost {
                from_seq: from,
                count,
            });
        }
    }

    async fn handle(&mut self, msg: Msg) -> Result<(), MonitorError> {
        match msg {
            Msg::Verdict(v) => {
                self.accept(v, false);
                if self.tracker.has_gap() {
                    if let Some(from) = self.tracker.resume_from() {
                        self.request_replay(from).await?;
                    }
                }
            }
            Msg::Replayed(v) => {
                self.accept(v, true);
            }
            Msg::ReplayBegin(b) => {
                if let Some(r) = self.replay.as_mut().filter(|r| r.re == b.re) {
                    r.end = Some(b.end_seq);
                    self.pending.remove(&b.re);
                    if b.first_seq > r.from {
                        let first = b.first_seq;
                        self.give_up_below(first);
                    }
                }
            }
            Msg::ReplayEnd(e) => {
                if let Some(r) = self.replay.filter(|r| r.re == e.re) {
                    self.replay = None;
                    if let Some(end) = r.end {
                        // Whatever is still missing below the replay's end is not in the journal any more.
                        self.give_up_below(end);
                    }
                    if self.tracker.has_gap() {
                        if let Some(from) = self.tracker.resume_from() {
                            self.request_replay(from).await?;
                        }
                    }
                }
            }
            Msg::Stats(s) => {
                if s.missed_by_client > self.last_missed {
                    self.last_missed = s.missed_by_client;
                    if let Some(from) = self.tracker.resume_from() {
                        self.request_replay(from).await?;
                    }
                }
                self.queue.push_back(Update::Stats(s));
            }
            Msg::Event(e) => self.queue.push_back(Update::Event(e)),
            Msg::Ack(a) => {
                self.pending.remove(&a.re);
            }
            Msg::Nack(n) => {
                let request = self.pending.remove(&n.re).unwrap_or("request");
                self.refused(request, n)?;
            }
            // Handshake messages or host-bound requests mid-session: nothing to do with them.
            _ => {}
        }
        Ok(())
    }

    fn refused(&mut self, request: &'static str, nack: Nack) -> Result<(), MonitorError> {
        let fatal =
            request == "Subscribe" || nack.code.exit_code() == kestrel_wire::exit::AUTH_FAILED;
        if fatal {
            return Err(MonitorError::Refused {
                addr: self.opts.addr.to_string(),
                request,
                code: nack.code,
                detail: nack.detail,
            });
        }
        if request == "Replay" {
            self.replay = None;
            if nack.code == NackCode::ReplayUnavailable {
                // The unit keeps nothing we asked for: every gap up to what we have seen is permanent.
                if let Some(end) = self.tracker_gap_end() {
                    self.give_up_below(end);
                }
            }
        }
        self.queue.push_back(Update::Refused { request, nack });
        Ok(())
    }

    /// The highest seq seen ahead of a gap, plus one (where giving up on a gap ends).
    fn tracker_gap_end(&self) -> Option<u64> {
        self.tracker.max_ahead().map(|s| s + 1)
    }
}
