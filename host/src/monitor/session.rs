//! One authenticated connection to a unit: `Hello` exchange with protocol/schema check, HMAC-SHA256
//! challenge–response with the pre-shared unit key (kestrel-wire's [`HostAuthenticator`]), then tagged frames.
//!
//! Handshake failures are sorted by cause, because the fix differs: a peer that answers with another protocol
//! version or schema hash (or with bytes that are not kestrel-wire frames at all) is [`MonitorError::Incompatible`];
//! a unit that refuses our proof, or cannot prove it holds the key itself, is [`MonitorError::AuthRefused`].
//!
//! Our `Hello` goes out before we know the unit's id, so it is sent outside the authenticator with `seq` 0 and the
//! authenticator's own counter starts at 0 again. That is harmless: handshake frames are untagged and the replay
//! window only covers tagged frames of the established session.

use std::collections::VecDeque;
use std::time::Duration;

use kestrel_wire::{
    Envelope, Hello, HostAuthenticator, Msg, NackCode, Role, UnitKey, PROTO_VERSION, SCHEMA_HASH,
};

use super::addr::UnitAddr;
use super::error::MonitorError;
use super::link::{self, FramedLink};

/// How a client introduces itself.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The unit's pre-shared key.
    pub key: UnitKey,
    /// Refuse a unit whose `Hello` names another id (guards against a swapped cable or address).
    pub expect_unit: Option<String>,
    /// How long the whole handshake may take.
    pub handshake_timeout: Duration,
    /// Sent as `fw_version` in our `Hello`, for the unit's log.
    pub client_name: String,
}

impl ConnectOptions {
    /// Defaults: any unit id, 5 s handshake, this CLI's version as the client name.
    pub fn new(key: UnitKey) -> Self {
        ConnectOptions {
            key,
            expect_unit: None,
            handshake_timeout: Duration::from_secs(5),
            client_name: format!("kestrel {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// An authenticated session with a unit.
pub struct Session {
    link: FramedLink,
    auth: HostAuthenticator,
    peer: Hello,
    addr: String,
    stash: VecDeque<Msg>,
    refused_frames: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("addr", &self.addr)
            .field("unit", &self.peer.unit_id)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connect to `addr` and authenticate.
    pub async fn open(addr: &UnitAddr, opts: &ConnectOptions) -> Result<Session, MonitorError> {
        let link = link::connect(addr)
            .await
            .map_err(|e| MonitorError::unreachable(addr, e))?;
        Session::handshake(link, addr.to_string(), opts).await
    }

    /// Authenticate over an already open link (`addr` only names the unit in errors). Used by [`Session::open`]
    /// and by tests over in-memory transports.
    pub async fn handshake(
        link: FramedLink,
        addr: String,
        opts: &ConnectOptions,
    ) -> Result<Session, MonitorError> {
        let mut hs = Handshake {
            link,
            addr,
            stage: Stage::Hello,
        };
        let (auth, peer) = match tokio::time::timeout(opts.handshake_timeout, hs.run(opts)).await {
            Ok(result) => result?,
            Err(_) => return Err(hs.timed_out(opts.handshake_timeout)),
        };
        Ok(Session {
            link: hs.link,
            auth,
            peer,
            addr: hs.addr,
            stash: VecDeque::new(),
            refused_frames: 0,
        })
    }

    /// The unit's `Hello` (id, board, firmware, active model).
    pub fn peer(&self) -> &Hello {
        &self.peer
    }

    /// The unit's address, as used in messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Seal (tag) and send a message; returns its envelope `seq` (what `Ack`/`Nack`/`ReplayBegin` name in `re`).
    pub async fn send(&mut self, msg: Msg) -> Result<u32, MonitorError> {
        let env = self.auth.seal(msg).map_err(|source| MonitorError::Auth {
            addr: self.addr.clone(),
            what: "sealing a frame",
            source,
        })?;
        self.link
            .send(&env)
            .await
            .map_err(|e| self.disconnected(e))?;
        Ok(env.seq)
    }

    /// Next message from the unit whose tag verified. Frames that fail authentication (bad tag, replayed
    /// sequence number, wrong direction) are dropped and counted in [`Session::refused_frames`].
    pub async fn recv(&mut self) -> Result<Msg, MonitorError> {
        if let Some(msg) = self.stash.pop_front() {
            return Ok(msg);
        }
        loop {
            let env = self.link.recv().await.map_err(|e| self.disconnected(e))?;
            if self.auth.open(&env).is_ok() {
                return Ok(env.msg);
            }
            self.refused_frames += 1;
        }
    }

    /// Send a request and wait for its `Ack` (or `ReplayBegin` for a `Replay`). Messages arriving meanwhile are
    /// kept for [`Session::recv`]. A `Nack` becomes [`MonitorError::Refused`].
    pub async fn request(&mut self, msg: Msg) -> Result<(), MonitorError> {
        let name = msg.name();
        let re = self.send(msg).await?;
        let mut held = VecDeque::new();
        let result = loop {
            let msg = match self.stash.pop_front() {
                Some(m) => m,
                None => {
                    let env = match self.link.recv().await {
                        Ok(env) => env,
                        Err(e) => break Err(self.disconnected(e)),
                    };
                    if self.auth.open(&env).is_err() {
                        self.refused_frames += 1;
                        continue;
                    }
                    env.msg
                }
            };
            match msg {
                Msg::Ack(a) if a.re == re => break Ok(()),
                Msg::ReplayBegin(ref b) if b.re == re => {
                    held.push_back(msg);
                    break Ok(());
                }
                Msg::Nack(n) if n.re == re => {
                    break Err(MonitorError::Refused {
                        addr: self.addr.clone(),
                        request: name,
                        code: n.code,
                        detail: n.detail,
                    })
                }
                other => held.push_back(other),
            }
        };
        held.append(&mut self.stash);
        self.stash = held;
        result
    }

    /// Frames from the unit dropped because they failed authentication.
    pub fn refused_frames(&self) -> u64 {
        self.refused_frames
    }

    /// The underlying link (decoder counters, byte counts).
    pub fn link(&self) -> &FramedLink {
        &self.link
    }

    fn disconnected(&self, source: std::io::Error) -> MonitorError {
        MonitorError::Disconnected {
            addr: self.addr.clone(),
            handshake: false,
            source,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Hello,
    Challenge,
    Confirm,
}

struct Handshake {
    link: FramedLink,
    addr: String,
    stage: Stage,
}

impl Handshake {
    async fn run(
        &mut self,
        opts: &ConnectOptions,
    ) -> Result<(HostAuthenticator, Hello), MonitorError> {
        let hello = Hello {
            proto_version: PROTO_VERSION,
            schema_hash: SCHEMA_HASH,
            role: Role::Host,
            unit_id: opts.expect_unit.clone().unwrap_or_default(),
            board: String::new(),
            fw_version: opts.client_name.clone(),
            active_model: None,
        };
        self.link.flush_peer().await.map_err(|e| self.io(e))?;
        self.link
            .send(&Envelope::new(0, Msg::Hello(hello)))
            .await
            .map_err(|e| self.io(e))?;

        let peer = match self.next().await? {
            Msg::Hello(h) => h,
            other => return Err(self.unexpected(&other)),
        };
        if !peer.is_compatible() {
            return Err(MonitorError::Incompatible {
                addr: self.addr.clone(),
                detail: format!(
                    "unit has protocol {} schema {}, this CLI has protocol {PROTO_VERSION} schema {}",
                    peer.proto_version,
                    hex::encode(peer.schema_hash),
                    hex::encode(SCHEMA_HASH)
                ),
            });
        }
        if let Some(want) = &opts.expect_unit {
            if *want != peer.unit_id {
                return Err(MonitorError::AuthRefused {
                    addr: self.addr.clone(),
                    detail: format!("this is unit `{}`, not `{want}`", peer.unit_id),
                    source: None,
                });
            }
        }

        let mut auth = HostAuthenticator::new(opts.key.clone(), peer.unit_id.clone());
        self.stage = Stage::Challenge;
        let challenge = match self.next().await? {
            Msg::AuthChallenge(c) => c,
            other => return Err(self.unexpected(&other)),
        };
        let response = auth
            .respond_random(&challenge)
            .map_err(|source| MonitorError::Auth {
                addr: self.addr.clone(),
                what: "answering the unit's challenge",
                source,
            })?;
        self.link.send(&response).await.map_err(|e| self.io(e))?;

        self.stage = Stage::Confirm;
        let confirm = match self.next().await? {
            Msg::AuthConfirm(c) => c,
            other => return Err(self.unexpected(&other)),
        };
        auth.accept_confirm(&confirm)
            .map_err(|_| MonitorError::AuthRefused {
                addr: self.addr.clone(),
                detail: "the unit could not prove it holds this key (another unit, or another key)"
                    .into(),
                source: None,
            })?;
        Ok((auth, peer))
    }

    /// Next message relevant to the current handshake stage. Anything else is skipped: on a serial line the unit
    /// may still be sending frames of an earlier session (verdicts, stats, a repeated `Hello`) when we start over.
    async fn next(&mut self) -> Result<Msg, MonitorError> {
        loop {
            let msg = self.link.recv().await.map_err(|e| self.io(e))?.msg;
            let wanted = match (&msg, self.stage) {
                (Msg::Nack(_), _) => true,
                (Msg::Hello(h), Stage::Hello) => h.role == Role::Edge,
                (Msg::AuthChallenge(_), Stage::Challenge)
                | (Msg::AuthConfirm(_), Stage::Confirm) => true,
                _ => false,
            };
            if wanted {
                return Ok(msg);
            }
        }
    }

    /// An IO failure during the handshake, sorted by how far we got.
    fn io(&self, e: std::io::Error) -> MonitorError {
        let garbage = self.link.counts().errors() > 0;
        match self.stage {
            Stage::Hello if garbage => self.not_kestrel(),
            Stage::Hello | Stage::Challenge => MonitorError::Disconnected {
                addr: self.addr.clone(),
                handshake: true,
                source: e,
            },
            // The unit hung up right after checking our proof: that is how a unit refuses a key it will not Nack.
            Stage::Confirm => MonitorError::AuthRefused {
                addr: self.addr.clone(),
                detail: "the unit closed the link after checking our key proof".into(),
                source: Some(e),
            },
        }
    }

    fn unexpected(&self, msg: &Msg) -> MonitorError {
        match msg {
            Msg::Nack(n) if n.code == NackCode::IncompatibleProtocol => {
                MonitorError::Incompatible {
                    addr: self.addr.clone(),
                    detail: format!("the unit refused our Hello: {}", n.detail),
                }
            }
            Msg::Nack(n) if n.code.exit_code() == kestrel_wire::exit::AUTH_FAILED => {
                MonitorError::AuthRefused {
                    addr: self.addr.clone(),
                    detail: format!("{:?}: {}", n.code, n.detail),
                    source: None,
                }
            }
            other => MonitorError::Protocol {
                addr: self.addr.clone(),
                detail: format!(
                    "expected {} in the handshake, got {}",
                    self.expected(),
                    other.name()
                ),
            },
        }
    }

    fn expected(&self) -> &'static str {
        match self.stage {
            Stage::Hello => "the unit's Hello",
            Stage::Challenge => "AuthChallenge",
            Stage::Confirm => "AuthConfirm",
        }
    }

    fn not_kestrel(&self) -> MonitorError {
        MonitorError::Incompatible {
            addr: self.addr.clone(),
            detail: format!(
                "its frames do not decode as kestrel-wire protocol {PROTO_VERSION} ({} bad frames)",
                self.link.counts().errors()
            ),
        }
    }

    fn timed_out(&self, after: Duration) -> MonitorError {
        match self.stage {
            Stage::Hello if self.link.counts().errors() > 0 => self.not_kestrel(),
            Stage::Hello => MonitorError::Incompatible {
                addr: self.addr.clone(),
                detail: format!(
                    "no kestrel-wire Hello within {}s (not a kestrel unit, or the wrong port/baud)",
                    after.as_secs_f32()
                ),
            },
            _ => MonitorError::Protocol {
                addr: self.addr.clone(),
                detail: format!(
                    "handshake stalled waiting for {} ({}s)",
                    self.expected(),
                    after.as_secs_f32()
                ),
            },
        }
    }
}
