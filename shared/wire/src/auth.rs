//! Link authentication with a pre-shared unit key: HMAC-SHA256 challenge–response, then per-frame tags.
//!
//! Why not TLS: the same protocol runs over a 115 200-baud serial line, where a TLS stack is heavy and certificates
//! need a PKI the plant does not have. A pre-shared 32-byte key per unit (written by `kestrel keygen`, installed on the
//! unit at commissioning) gives *authentication and integrity*, not confidentiality, which is what the threat model
//! asks for: only the holder of the unit key may change the unit's behaviour (thresholds, models, triggers). Models
//! themselves are additionally protected by the bundle's Ed25519 signature; this layer decides who may *ask*.
//!
//! Handshake, after both [`Hello`](crate::Hello)s (edge nonce `Ne`, host nonce `Nh`, both 32 bytes, fresh and
//! unpredictable):
//!
//! ```text
//! edge → host  AuthChallenge { nonce: Ne }
//! host → edge  AuthResponse  { nonce: Nh, proof: HMAC(K, T(1)) }     edge verifies → session established
//! edge → host  AuthConfirm   { proof: HMAC(K, T(2)) }                host verifies → session established
//! session key  S = HMAC(K, T(3))
//! T(p) = "kestrel-wire/auth/v1" ‖ p ‖ PROTO_VERSION (u16 LE) ‖ SCHEMA_HASH ‖ Ne ‖ Nh ‖ unit_id (UTF-8)
//! ```
//!
//! The purpose byte `p` keeps the two proofs and the session key apart (a proof cannot be reflected back), binding the
//! protocol version and schema hash stops a downgrade, and `unit_id` ties the key to the unit it was issued for. Each
//! proof is verified in constant time.
//!
//! After the handshake every frame either way carries `tag = HMAC(S, d ‖ seq (u32 LE) ‖ postcard(msg))[..16]`, with
//! `d = 0x01` host → edge and `d = 0x02` edge → host (a frame cannot be reflected to its sender). A receiver accepts a
//! tagged frame only if the tag verifies *and* its `seq` is strictly above the last accepted one, so a recorded frame
//! cannot be replayed within the session, and a fresh session key per connection makes it useless in any other.
//! Control messages ([`Msg::is_control`]) are refused unless they arrive tagged in an established session; the edge
//! answers every refusal with the [`Nack`] from [`AuthError::nack`].
//!
//! Nonces are supplied by the caller, so the crate needs no RNG on `no_std`; with `std`, [`Nonce::random`] reads the
//! OS source. A nonce must never be reused with the same key.

use alloc::string::{String, ToString};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::protocol::{
    AuthChallenge, AuthConfirm, AuthResponse, Direction, Envelope, Msg, Nack, NackCode, Role, Tag,
};

type HmacSha256 = Hmac<Sha256>;

/// Length of the pre-shared unit key.
pub const KEY_LEN: usize = 32;
/// Length of handshake nonces.
pub const NONCE_LEN: usize = 32;
/// Length of the per-frame tag (HMAC-SHA256 truncated to 128 bits).
pub const TAG_LEN: usize = 16;

const LABEL: &[u8] = b"kestrel-wire/auth/v1";
const PURPOSE_HOST_PROOF: u8 = 1;
const PURPOSE_EDGE_PROOF: u8 = 2;
const PURPOSE_SESSION_KEY: u8 = 3;
const DIR_HOST_TO_EDGE: u8 = 0x01;
const DIR_EDGE_TO_HOST: u8 = 0x02;

/// The pre-shared key of one unit. `Debug` does not print it.
#[derive(Clone)]
pub struct UnitKey([u8; KEY_LEN]);

impl UnitKey {
    /// Wrap 32 key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        UnitKey(bytes)
    }

    /// Key from a slice that must be exactly [`KEY_LEN`] bytes (e.g. read from a key file).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, AuthError> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| AuthError::KeyLength { len: bytes.len() })?;
        Ok(UnitKey(arr))
    }

    /// The key bytes (for writing a key file).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A fresh random key from the OS source (`kestrel keygen`).
    #[cfg(feature = "std")]
    pub fn generate() -> Result<Self, AuthError> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k).map_err(AuthError::Random)?;
        Ok(UnitKey(k))
    }
}

impl core::fmt::Debug for UnitKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("UnitKey(<redacted>)")
    }
}

/// A handshake nonce. Must be unpredictable and never reused with the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// A nonce from the OS random source.
    #[cfg(feature = "std")]
    pub fn random() -> Result<Self, AuthError> {
        let mut n = [0u8; NONCE_LEN];
        getrandom::fill(&mut n).map_err(AuthError::Random)?;
        Ok(Nonce(n))
    }
}

/// An authentication failure. Those caused by the peer map to a [`NackCode`] via [`AuthError::nack`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A key of the wrong length.
    #[error("unit key must be {KEY_LEN} bytes, got {len}")]
    KeyLength {
        /// Length supplied.
        len: usize,
    },
    /// A handshake message arrived in the wrong state (response without challenge, confirm without response).
    #[error("authentication step out of order: {step}")]
    OutOfOrder {
        /// The step that was not expected.
        step: &'static str,
    },
    /// The peer's handshake proof did not verify: it does not hold this unit's key (or talks to another unit).
    #[error("handshake proof did not verify (wrong key or unit id)")]
    BadProof,
    /// A control message without a valid session, or an untagged frame after the session was established.
    #[error("{msg} refused: not authenticated")]
    Unauthenticated {
        /// [`Msg::name`] of the refused message.
        msg: &'static str,
    },
    /// The frame's tag did not verify.
    #[error("{msg} refused: frame tag did not verify")]
    BadTag {
        /// [`Msg::name`] of the refused message.
        msg: &'static str,
    },
    /// A tagged frame whose sequence number is not above the last accepted one.
    #[error("frame {seq} refused as a replay (last accepted {last})")]
    Replayed {
        /// Sequence number of the refused frame.
        seq: u32,
        /// Last accepted sequence number.
        last: u32,
    },
    /// A message that may not travel in this direction.
    #[error("{msg} may not be sent by the {from:?}")]
    WrongDirection {
        /// [`Msg::name`] of the message.
        msg: &'static str,
        /// The role that sent (or tried to send) it.
        from: Role,
    },
    /// This side's sequence counter is exhausted (2³² frames); reconnect to start a new session.
    #[error("sequence numbers exhausted; reconnect")]
    SeqExhausted,
    /// postcard could not serialise the message for tagging.
    #[error("cannot serialise message for tagging")]
    Encode(#[source] postcard::Error),
    /// The OS random source failed.
    #[cfg(feature = "std")]
    #[error("OS random source failed")]
    Random(#[source] getrandom::Error),
}

impl AuthError {
    /// The refusal to send back for a frame with envelope `seq == re`, when the failure is the peer's doing.
    /// `None` for local failures (key length, RNG, own counter).
    pub fn nack(&self, re: u32) -> Option<Nack> {
        let code = match self {
            AuthError::OutOfOrder { .. } | AuthError::BadProof => NackCode::AuthFailed,
            AuthError::Unauthenticated { .. } => NackCode::Unauthenticated,
            AuthError::BadTag { .. } => NackCode::BadTag,
            AuthError::Replayed { .. } => NackCode::Replayed,
            AuthError::WrongDirection { .. } => NackCode::Unexpected,
            _ => return None,
        };
        Some(Nack {
            re,
            code,
            detail: self.to_string(),
        })
    }
}

/// State shared by both sides once past the handshake: sequence counters and the session key.
#[derive(Clone)]
struct Channel {
    role: Role,
    /// `None` once `u32::MAX` has been used.
    next_seq: Option<u32>,
    last_rx: Option<u32>,
    session: Option<[u8; 32]>,
}

impl Channel {
    fn new(role: Role) -> Self {
        Channel {
            role,
            next_seq: Some(0),
            last_rx: None,
            session: None,
        }
    }

    fn peer(&self) -> Role {
        match self.role {
            Role::Host => Role::Edge,
            Role::Edge => Role::Host,
        }
    }

    fn establish(&mut self, session: [u8; 32]) {
        self.session = Some(session);
        self.last_rx = None;
    }

    fn seal(&mut self, msg: Msg) -> Result<Envelope, AuthError> {
        check_direction(&msg, self.role)?;
        let seq = self.next_seq.ok_or(AuthError::SeqExhausted)?;
        let tag = match &self.session {
            Some(key) => Some(frame_tag(key, self.role, seq, &msg).map_err(AuthError::Encode)?),
            // Refuse locally what the peer would refuse anyway.
            None if msg.is_control() => return Err(AuthError::Unauthenticated { msg: msg.name() }),
            None => None,
        };
        self.next_seq = seq.checked_add(1);
        Ok(Envelope { seq, msg, tag })
    }

    fn open(&mut self, env: &Envelope) -> Result<(), AuthError> {
        let name = env.msg.name();
        check_direction(&env.msg, self.peer())?;
        match (&self.session, &env.tag) {
            (None, None) if !env.msg.is_control() => Ok(()),
            (None, _) | (Some(_), None) => Err(AuthError::Unauthenticated { msg: name }),
            (Some(key), Some(tag)) => {
                let mac = frame_mac(key, self.peer(), env.seq, &env.msg)
                    .map_err(|_| AuthError::BadTag { msg: name })?;
                mac.verify_truncated_left(tag)
                    .map_err(|_| AuthError::BadTag { msg: name })?;
                if let Some(last) = self.last_rx {
                    if env.seq <= last {
                        return Err(AuthError::Replayed { seq: env.seq, last });
                    }
                }
                self.last_rx = Some(env.seq);
                Ok(())
            }
        }
    }
}

fn check_direction(msg: &Msg, from: Role) -> Result<(), AuthError> {
    let ok = match msg.direction() {
        Direction::Both => true,
        Direction::HostToEdge => from == Role::Host,
        Direction::EdgeToHost => from == Role::Edge,
    };
    if ok {
        Ok(())
    } else {
        Err(AuthError::WrongDirection {
            msg: msg.name(),
            from,
        })
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length")
}

fn transcript(key: &UnitKey, purpose: u8, ne: &Nonce, nh: &Nonce, unit_id: &str) -> HmacSha256 {
    let mut mac = keyed(&key.0);
    mac.update(LABEL);
    mac.update(&[purpose]);
    mac.update(&crate::PROTO_VERSION.to_le_bytes());
    mac.update(&crate::SCHEMA_HASH);
    mac.update(&ne.0);
    mac.update(&nh.0);
    mac.update(unit_id.as_bytes());
    mac
}

fn proof(key: &UnitKey, purpose: u8, ne: &Nonce, nh: &Nonce, unit_id: &str) -> [u8; 32] {
    transcript(key, purpose, ne, nh, unit_id)
        .finalize()
        .into_bytes()
        .into()
}

/// Feeds postcard's serialiser straight into the MAC, so tagging needs no buffer.
struct MacSink<'a>(&'a mut HmacSha256);

impl postcard::ser_flavors::Flavor for MacSink<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.update(&[data]);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.update(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn frame_mac(
    session: &[u8; 32],
    sender: Role,
    seq: u32,
    msg: &Msg,
) -> postcard::Result<HmacSha256> {
    let mut mac = keyed(session);
    mac.update(&[match sender {
        Role::Host => DIR_HOST_TO_EDGE,
        Role::Edge => DIR_EDGE_TO_HOST,
    }]);
    mac.update(&seq.to_le_bytes());
    postcard::serialize_with_flavor(msg, MacSink(&mut mac))?;
    Ok(mac)
}

fn frame_tag(session: &[u8; 32], sender: Role, seq: u32, msg: &Msg) -> postcard::Result<Tag> {
    let full = frame_mac(session, sender, seq, msg)?
        .finalize()
        .into_bytes();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&full[..TAG_LEN]);
    Ok(tag)
}

#[derive(Clone)]
enum EdgeStep {
    Idle,
    Challenged(Nonce),
    Established,
}

/// The unit's side: issues the challenge, checks the host's proof, then seals and opens frames.
#[derive(Clone)]
pub struct EdgeAuthenticator {
    key: UnitKey,
    /// A second key that may only watch (see [`KeyRole`]).
    read_only: Option<UnitKey>,
    /// Which key the established session was proven with.
    role: Option<KeyRole>,
    unit_id: String,
    step: EdgeStep,
    chan: Channel,
}

/// Which of a unit's keys a host proved it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// The unit key: may watch and control (threshold, triggers, flashing).
    Control,
    /// The read-only monitor key: may subscribe, read stats and replay, nothing else.
    ReadOnly,
}

impl core::fmt::Debug for EdgeAuthenticator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EdgeAuthenticator")
            .field("unit_id", &self.unit_id)
            .field("established", &self.is_established())
            .finish_non_exhaustive()
    }
}

impl EdgeAuthenticator {
    /// For unit `unit_id` holding `key`.
    pub fn new(key: UnitKey, unit_id: impl Into<String>) -> Self {
        EdgeAuthenticator {
            key,
            read_only: None,
            role: None,
            unit_id: unit_id.into(),
            step: EdgeStep::Idle,
            chan: Channel::new(Role::Edge),
        }
    }

    /// Also accept hosts holding `key`, as read-only monitors ([`KeyRole::ReadOnly`]).
    pub fn with_read_only_key(mut self, key: Option<UnitKey>) -> Self {
        self.read_only = key;
        self
    }

    /// The role of the established session's key; `None` before authentication.
    pub fn role(&self) -> Option<KeyRole> {
        self.role.filter(|_| self.is_established())
    }

    /// Start (or restart) authentication with a fresh nonce; any previous session ends. Returns the sealed
    /// [`AuthChallenge`] frame to send.
    pub fn challenge(&mut self, nonce: Nonce) -> Result<Envelope, AuthError> {
        self.step = EdgeStep::Challenged(nonce);
        self.chan.session = None;
        self.chan
            .seal(Msg::AuthChallenge(AuthChallenge { nonce: nonce.0 }))
    }

    /// [`Self::challenge`] with a nonce from the OS random source.
    #[cfg(feature = "std")]
    pub fn challenge_random(&mut self) -> Result<Envelope, AuthError> {
        self.challenge(Nonce::random()?)
    }

    /// Check the host's proof. On success returns the [`AuthConfirm`] frame to send (sealed untagged, since the
    /// host cannot check a tag before it has the session key) and establishes the session; on failure a new
    /// challenge is needed.
    pub fn accept_response(&mut self, resp: &AuthResponse) -> Result<Envelope, AuthError> {
        let EdgeStep::Challenged(ne) = self.step else {
            return Err(AuthError::OutOfOrder {
                step: "AuthResponse",
            });
        };
        self.step = EdgeStep::Idle;
        let nh = Nonce(resp.nonce);
        let verifies = |key: &UnitKey| {
            transcript(key, PURPOSE_HOST_PROOF, &ne, &nh, &self.unit_id)
                .verify_slice(&resp.proof)
                .is_ok()
        };
        let (key, role) = if verifies(&self.key) {
            (self.key.clone(), KeyRole::Control)
        } else {
            match &self.read_only {
                Some(k) if verifies(k) => (k.clone(), KeyRole::ReadOnly),
                _ => return Err(AuthError::BadProof),
            }
        };
        let confirm = AuthConfirm {
            proof: proof(&key, PURPOSE_EDGE_PROOF, &ne, &nh, &self.unit_id),
        };
        let env = self.chan.seal(Msg::AuthConfirm(confirm))?;
        self.chan
            .establish(proof(&key, PURPOSE_SESSION_KEY, &ne, &nh, &self.unit_id));
        self.step = EdgeStep::Established;
        self.role = Some(role);
        Ok(env)
    }

    /// Whether a session is established.
    pub fn is_established(&self) -> bool {
        matches!(self.step, EdgeStep::Established)
    }

    /// Wrap an outgoing message: next sequence number, and a tag once the session is established.
    pub fn seal(&mut self, msg: Msg) -> Result<Envelope, AuthError> {
        self.chan.seal(msg)
    }

    /// Check an incoming frame. `Err` means refuse it; reply with [`AuthError::nack`] where that is `Some`.
    pub fn open(&mut self, env: &Envelope) -> Result<(), AuthError> {
        self.chan.open(env)
    }
}

#[derive(Clone)]
enum HostStep {
    Idle,
    Responded(Nonce, Nonce),
    Established,
}

/// The host's side: answers the challenge, checks the unit's proof, then seals and opens frames.
#[derive(Clone)]
pub struct HostAuthenticator {
    key: UnitKey,
    unit_id: String,
    step: HostStep,
    chan: Channel,
}

impl core::fmt::Debug for HostAuthenticator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostAuthenticator")
            .field("unit_id", &self.unit_id)
            .field("established", &self.is_established())
            .finish_non_exhaustive()
    }
}

impl HostAuthenticator {
    /// For talking to unit `unit_id` (check it against the unit's [`Hello`](crate::Hello)) with its `key`.
    pub fn new(key: UnitKey, unit_id: impl Into<String>) -> Self {
        HostAuthenticator {
            key,
            unit_id: unit_id.into(),
            step: HostStep::Idle,
            chan: Channel::new(Role::Host),
        }
    }

    /// Answer the unit's challenge with a fresh host nonce; returns the sealed [`AuthResponse`] frame to send.
    pub fn respond(
        &mut self,
        challenge: &AuthChallenge,
        nonce: Nonce,
    ) -> Result<Envelope, AuthError> {
        let ne = Nonce(challenge.nonce);
        self.chan.session = None;
        self.step = HostStep::Responded(ne, nonce);
        let proof = proof(&self.key, PURPOSE_HOST_PROOF, &ne, &nonce, &self.unit_id);
        self.chan.seal(Msg::AuthResponse(AuthResponse {
            nonce: nonce.0,
            proof,
        }))
    }

    /// [`Self::respond`] with a nonce from the OS random source.
    #[cfg(feature = "std")]
    pub fn respond_random(&mut self, challenge: &AuthChallenge) -> Result<Envelope, AuthError> {
        self.respond(challenge, Nonce::random()?)
    }

    /// Check the unit's proof; on success the session is established and control messages may be sent.
    pub fn accept_confirm(&mut self, confirm: &AuthConfirm) -> Result<(), AuthError> {
        let HostStep::Responded(ne, nh) = self.step else {
            return Err(AuthError::OutOfOrder {
                step: "AuthConfirm",
            });
        };
        self.step = HostStep::Idle;
        transcript(&self.key, PURPOSE_EDGE_PROOF, &ne, &nh, &self.unit_id)
            .verify_slice(&confirm.proof)
            .map_err(|_| AuthError::BadProof)?;
        self.chan.establish(proof(
            &self.key,
            PURPOSE_SESSION_KEY,
            &ne,
            &nh,
            &self.unit_id,
        ));
        self.step = HostStep::Established;
        Ok(())
    }

    /// Whether a session is established.
    pub fn is_established(&self) -> bool {
        matches!(self.step, HostStep::Established)
    }

    /// Wrap an outgoing message: next sequence number, and a tag once the session is established. Control
    /// messages are refused before that.
    pub fn seal(&mut self, msg: Msg) -> Result<Envelope, AuthError> {
        self.chan.seal(msg)
    }

    /// Check an incoming frame (direction, and once established: tag and replay window).
    pub fn open(&mut self, env: &Envelope) -> Result<(), AuthError> {
        self.chan.open(env)
    }
}
