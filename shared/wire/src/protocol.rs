//! Every message that crosses the link, in one table.
//!
//! Why one module: host and edge must agree on every byte, and the schema hash ([`crate::SCHEMA_HASH`]) is derived
//! from [`Envelope`] downwards, so keeping the whole tree here makes "did I change the protocol?" a one-file question.
//!
//! Rules that keep the encoding stable (postcard is not self-describing):
//! - integers are fixed-width Rust types (`u16`/`u32`/`u64`, never `usize`) so both ends agree on the range;
//! - enum variants are encoded by index: **append** new variants, never reorder or remove them;
//! - no `#[serde(skip_serializing_if)]`, `untagged` or `flatten` (postcard cannot decode them);
//! - any change to a type here changes [`crate::SCHEMA_HASH`]; the pin test then asks for a [`crate::PROTO_VERSION`]
//!   bump.
//!
//! Device-side failures travel as data ([`NackCode`], [`FaultCode`]), not as Rust error types: the host keeps the code
//! in its own error (`MonitorError::Refused`) apart from link failures, because the fix differs (see `docs/wire.md`).

use alloc::string::String;
use alloc::vec::Vec;

use postcard_schema::Schema;
use serde::{Deserialize, Serialize};

use crate::mask::Mask;

/// Per-frame authentication tag: HMAC-SHA256 truncated to 16 bytes (see [`crate::auth`]).
pub type Tag = [u8; 16];

/// Outer wrapper of every frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Envelope {
    /// Sender's frame counter; strictly increasing per connection and direction (replay window of tagged frames).
    pub seq: u32,
    /// The message.
    pub msg: Msg,
    /// Truncated HMAC over direction ‖ `seq` ‖ postcard(`msg`) under the session key; `None` before authentication.
    pub tag: Option<Tag>,
}

impl Envelope {
    /// An untagged envelope (before authentication, or when the caller does its own sealing).
    pub fn new(seq: u32, msg: Msg) -> Self {
        Envelope {
            seq,
            msg,
            tag: None,
        }
    }
}

/// Which peer a connection end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub enum Role {
    /// The `kestrel` CLI (flash, monitor).
    Host,
    /// An inspection unit running `kestrel-edge`.
    Edge,
}

/// Which way a message is allowed to travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Host → edge only.
    HostToEdge,
    /// Edge → host only.
    EdgeToHost,
    /// Both ways (the handshake).
    Both,
}

/// Every message of the protocol. Variant order is the wire encoding: append only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub enum Msg {
    /// Handshake, both ways, first frame of a connection.
    Hello(Hello),
    /// Edge → host: authentication challenge carrying the edge nonce.
    AuthChallenge(AuthChallenge),
    /// Host → edge: host nonce and proof of key possession.
    AuthResponse(AuthResponse),
    /// Edge → host: the edge's proof of key possession; the session is established.
    AuthConfirm(AuthConfirm),
    /// Host → edge: start streaming verdicts (replaces a previous subscription).
    Subscribe(Subscribe),
    /// Host → edge: change the anomaly-score threshold of the active model.
    SetThreshold(SetThreshold),
    /// Host → edge: capture and inspect one frame now (software trigger).
    SoftTrigger,
    /// Host → edge: a bundle upload starts.
    BundleBegin(BundleBegin),
    /// Host → edge: one piece of the bundle being uploaded.
    BundleChunk(BundleChunk),
    /// Host → edge: all chunks sent; verify size, SHA-256 and signature, then store into the inactive slot.
    BundleCommit,
    /// Host → edge: switch the active model to a stored bundle (self-test, automatic rollback on failure).
    Activate(Activate),
    /// Host → edge: go back to the previously active model.
    Rollback,
    /// Host → edge: ask for a [`Stats`] snapshot.
    Status,
    /// Host → edge: resend journaled verdicts from a journal sequence number.
    Replay(Replay),
    /// Edge → host: result of one inspected frame.
    Verdict(Verdict),
    /// Edge → host: counters, in reply to [`Msg::Status`] or periodically.
    Stats(Stats),
    /// Edge → host: something happened on the unit.
    Event(Event),
    /// Edge → host: request `re` was carried out.
    Ack(Ack),
    /// Edge → host: request `re` was refused.
    Nack(Nack),
    /// Edge → host: a replay starts; says which journal range follows.
    ReplayBegin(ReplayBegin),
    /// Edge → host: one journaled verdict of a replay (distinct from live [`Msg::Verdict`]s).
    Replayed(Verdict),
    /// Edge → host: the replay started by the last [`Msg::ReplayBegin`] is complete.
    ReplayEnd(ReplayEnd),
    /// Edge → host: answer to [`Msg::BundleBegin`]: where the upload stands (0 = fresh start, more = resume).
    UploadStatus(UploadStatus),
    /// Host → edge: check a bundle's signature and compatibility without sending or storing it (`--dry-run`).
    BundleProbe(BundleProbe),
}

impl Msg {
    /// Whether this message is a *control* message: a host request that must carry a valid per-frame tag from an
    /// authenticated session, and is refused with a [`Nack`] otherwise.
    ///
    /// Every host → edge message except the handshake itself counts, read-only ones included: status and replay
    /// still cost the unit link time (a journal replay over 115 200 baud takes minutes) and reveal production data,
    /// so nothing is served to a peer that has not proven it holds the unit key.
    pub fn is_control(&self) -> bool {
        self.direction() == Direction::HostToEdge && !matches!(self, Msg::AuthResponse(_))
    }

    /// Which way this message may travel; a peer refuses messages arriving from the wrong side.
    pub fn direction(&self) -> Direction {
        match self {
            Msg::Hello(_) => Direction::Both,
            Msg::AuthResponse(_)
            | Msg::Subscribe(_)
            | Msg::SetThreshold(_)
            | Msg::SoftTrigger
            | Msg::BundleBegin(_)
            | Msg::BundleChunk(_)
            | Msg::BundleCommit
            | Msg::Activate(_)
            | Msg::Rollback
            | Msg::Status
            | Msg::Replay(_)
            | Msg::BundleProbe(_) => Direction::HostToEdge,
            Msg::AuthChallenge(_)
            | Msg::AuthConfirm(_)
            | Msg::Verdict(_)
            | Msg::Stats(_)
            | Msg::Event(_)
            | Msg::Ack(_)
            | Msg::Nack(_)
            | Msg::ReplayBegin(_)
            | Msg::Replayed(_)
            | Msg::ReplayEnd(_)
            | Msg::UploadStatus(_) => Direction::EdgeToHost,
        }
    }

    /// Stable variant name for logs and the action journal.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello(_) => "Hello",
            Msg::AuthChallenge(_) => "AuthChallenge",
            Msg::AuthResponse(_) => "AuthResponse",
            Msg::AuthConfirm(_) => "AuthConfirm",
            Msg::Subscribe(_) => "Subscribe",
            Msg::SetThreshold(_) => "SetThreshold",
            Msg::SoftTrigger => "SoftTrigger",
            Msg::BundleBegin(_) => "BundleBegin",
            Msg::BundleChunk(_) => "BundleChunk",
            Msg::BundleCommit => "BundleCommit",
            Msg::Activate(_) => "Activate",
            Msg::Rollback => "Rollback",
            Msg::Status => "Status",
            Msg::Replay(_) => "Replay",
            Msg::Verdict(_) => "Verdict",
            Msg::Stats(_) => "Stats",
            Msg::Event(_) => "Event",
            Msg::Ack(_) => "Ack",
            Msg::Nack(_) => "Nack",
            Msg::ReplayBegin(_) => "ReplayBegin",
            Msg::Replayed(_) => "Replayed",
            Msg::ReplayEnd(_) => "ReplayEnd",
            Msg::UploadStatus(_) => "UploadStatus",
            Msg::BundleProbe(_) => "BundleProbe",
        }
    }
}

/// Identity of a model bundle: its manifest name, model version and the SHA-256 of the whole `.kbundle` file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct ModelRef {
    /// Human-readable model name from the bundle manifest.
    pub name: String,
    /// The bundle's SHA-256 as its signature covers it (everything before the trailer; `kestrel export` prints it):
    /// the name the unit stores it under and what `Activate` names.
    pub sha256: [u8; 32],
    /// The bundle's model version (anti-rollback counter); 0 for a development model directory.
    pub version: u64,
}

/// A/B model slot on the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

/// First frame each way. A peer whose `proto_version` or `schema_hash` differs is refused
/// ([`NackCode::IncompatibleProtocol`]) instead of being misparsed later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Hello {
    /// [`crate::PROTO_VERSION`] of the sender.
    pub proto_version: u16,
    /// [`crate::SCHEMA_HASH`] of the sender.
    pub schema_hash: [u8; 8],
    /// Which peer sent it.
    pub role: Role,
    /// Unit identity (edge) or the unit the host means to talk to (host); selects the pre-shared key.
    pub unit_id: String,
    /// Board profile name (`boards/<board>.toml`); empty from the host.
    pub board: String,
    /// Firmware (`kestrel-edge`) or CLI version string.
    pub fw_version: String,
    /// Model currently active on the unit; `None` from the host or on an unflashed unit.
    pub active_model: Option<ModelRef>,
}

impl Hello {
    /// Whether the peer speaks exactly our protocol (version and schema hash).
    pub fn is_compatible(&self) -> bool {
        self.proto_version == crate::PROTO_VERSION && self.schema_hash == crate::SCHEMA_HASH
    }
}

/// Edge → host: fresh edge nonce that the host must answer with [`AuthResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct AuthChallenge {
    /// Unpredictable, never-reused 32-byte nonce chosen by the edge.
    pub nonce: [u8; 32],
}

/// Host → edge: host nonce plus HMAC proof over both nonces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct AuthResponse {
    /// Unpredictable, never-reused 32-byte nonce chosen by the host.
    pub nonce: [u8; 32],
    /// HMAC-SHA256(unit key, host-proof label ‖ transcript).
    pub proof: [u8; 32],
}

/// Edge → host: the edge's HMAC proof, so the host knows it talks to the real unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct AuthConfirm {
    /// HMAC-SHA256(unit key, edge-proof label ‖ transcript).
    pub proof: [u8; 32],
}

/// Host → edge: what to stream to this client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Subscribe {
    /// Attach a mask to every n-th sent verdict; 0 = never (the default on serial links).
    pub masks_every: u16,
    /// Only send verdicts whose score is at least this; rejects are always sent. `f32::NEG_INFINITY` = all.
    pub min_score: f32,
}

/// Host → edge: new decision threshold on the anomaly score of the active model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct SetThreshold {
    /// Scores above this are rejects.
    pub threshold: f32,
}

/// Host → edge: a bundle of `size` bytes with this SHA-256 follows as [`BundleChunk`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct BundleBegin {
    /// Total bundle size in bytes; the edge checks free space before accepting.
    pub size: u64,
    /// SHA-256 of the whole bundle file (trailer included), checked at [`Msg::BundleCommit`]: the transfer's
    /// integrity, and the name of a resumable partial upload.
    pub sha256: [u8; 32],
}

/// Host → edge: bundle bytes at `offset`. Chunks are sent in order; the edge refuses gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct BundleChunk {
    /// Byte offset of `bytes` within the bundle.
    pub offset: u64,
    /// At most [`crate::frame::MAX_BUNDLE_CHUNK`] bytes so the frame stays under the 64 KiB limit.
    pub bytes: Vec<u8>,
}

/// Host → edge: make the stored bundle with this SHA-256 the active model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Activate {
    /// The signed SHA-256 of the bundle to activate ([`ModelRef::sha256`]; names it by content, so a race with
    /// another upload cannot swap it).
    pub sha256: [u8; 32],
    /// Activate even when the bundle's model version is below the active model's (anti-rollback override).
    pub allow_downgrade: bool,
}

/// Edge → host: where an upload stands after [`Msg::BundleBegin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct UploadStatus {
    /// [`Envelope::seq`] of the `BundleBegin` being answered.
    pub re: u32,
    /// Bytes of this bundle (same size and SHA-256) the unit already holds; the next chunk must start here.
    pub received: u64,
}

/// Host → edge: the parts of a bundle that carry its identity and claims, for a check without upload: the bytes
/// from the start of the file to the end of the manifest, and the 96-byte trailer (SHA-256 and signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct BundleProbe {
    /// Prefix and manifest (at most [`crate::frame::MAX_BUNDLE_CHUNK`] bytes).
    pub head: Vec<u8>,
    /// SHA-256 (32 bytes) then Ed25519 signature (64 bytes), as at the end of the file.
    pub trailer: Vec<u8>,
    /// Total file size (the unit checks it against the prefix and its free space).
    pub size: u64,
    /// Report a model version below the active one as acceptable (what `--allow-downgrade` would do).
    pub allow_downgrade: bool,
}

/// Host → edge: resend the journal from `from_seq` (journal sequence numbers, i.e. [`Verdict::seq`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Replay {
    /// First journal sequence number wanted.
    pub from_seq: u64,
}

/// Edge → host: one inspected frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Verdict {
    /// Journal sequence number (persistent across reboots; what [`Replay::from_seq`] refers to).
    pub seq: u64,
    /// Camera frame counter (or hardware trigger count in triggered mode).
    pub frame_id: u64,
    /// Capture time, microseconds since the Unix epoch on the unit's clock.
    pub t_capture_us: u64,
    /// Capture → verdict latency in microseconds.
    pub latency_us: u32,
    /// Image anomaly score.
    pub score: f32,
    /// `true` = good part, `false` = reject.
    pub pass: bool,
    /// Reduced-resolution anomaly map, when the subscription asks for one.
    pub mask: Option<Mask>,
    /// How the verdict came about: judged in time, judged after the part's deadline, or not judged at all.
    pub outcome: Outcome,
}

/// How a [`Verdict`] came about. Append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub enum Outcome {
    /// Scored before the part's deadline; `pass` is the model's verdict.
    Inspected,
    /// Scored after the deadline: the line already got the `on_late` decision (reject by default), which `pass`
    /// records; `score` is what the model said afterwards.
    Late,
    /// Never scored (no model, camera failure, queue overflow, scoring error): rejected, `score` is NaN.
    Uninspected,
}

/// Edge → host: counters since the unit started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Stats {
    /// Frames inspected.
    pub frames: u64,
    /// Verdicts with `pass = true`.
    pub passes: u64,
    /// Verdicts with `pass = false`.
    pub rejects: u64,
    /// Frames dropped before inspection (free-run under load).
    pub dropped: u64,
    /// Median capture → verdict latency in microseconds over the recent window.
    pub latency_p50_us: u32,
    /// 99th-percentile latency in microseconds over the recent window.
    pub latency_p99_us: u32,
    /// Seconds since the unit started.
    pub uptime_s: u64,
    /// Verdicts this client missed (its send queue overflowed); fetch them with [`Msg::Replay`].
    pub missed_by_client: u64,
    /// Frames from this client that failed to decode (CRC, COBS, oversize…), as counted by the edge's decoder.
    pub link_errors: u64,
    /// The model the unit inspects with; `None` = no model (parts are not passed).
    pub model: Option<ModelRef>,
    /// The model a rollback would return to, if any.
    pub previous_model: Option<ModelRef>,
    /// Parts whose verdict was not ready by their deadline (they got the `on_late` decision).
    pub late: u64,
    /// Parts that were never scored (no model, camera failure, overflow, scoring error) and were rejected.
    pub uninspected: u64,
}

/// Edge → host: something happened, stamped with the unit clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Event {
    /// Microseconds since the Unix epoch on the unit's clock.
    pub t_us: u64,
    /// What happened.
    pub kind: EventKind,
}

/// What an [`Event`] reports. Append only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub enum EventKind {
    /// The unit entered a fault state (fault lamp on).
    Fault {
        /// Which fault.
        code: FaultCode,
        /// Human-readable detail for the log.
        detail: String,
    },
    /// A fault condition went away.
    FaultCleared {
        /// Which fault.
        code: FaultCode,
    },
    /// A model passed its self-test and is now active.
    ModelActivated {
        /// The model.
        model: ModelRef,
        /// Slot it runs from.
        slot: Slot,
    },
    /// The unit went back to the previous model.
    RolledBack {
        /// Model that was active.
        from: ModelRef,
        /// Model that is active now.
        to: ModelRef,
        /// `true` when the unit did it itself (self-test failure), `false` on a host [`Msg::Rollback`].
        automatic: bool,
    },
    /// The decision threshold changed.
    ThresholdChanged {
        /// New threshold.
        threshold: f32,
    },
    /// The unit refused a bundle (signature, hash, compatibility, self-test); it keeps its current model.
    BundleRefused {
        /// SHA-256 of the refused bundle as the upload declared it.
        sha256: [u8; 32],
        /// Why, as the `Nack` gave it.
        code: NackCode,
        /// Human-readable detail.
        detail: String,
    },
    /// A newly activated model inspected its first frames without failure; the unit will boot it from now on.
    ModelConfirmed {
        /// The model.
        model: ModelRef,
    },
}

/// Unit fault conditions, as data so host and edge agree on them. Append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub enum FaultCode {
    /// No frame from the camera within the configured timeout.
    CameraTimeout,
    /// The camera device disappeared or failed to stream.
    CameraLost,
    /// The backbone or detector failed on a frame.
    InferenceFailed,
    /// Triggered mode: the trigger queue overflowed, so a part went uninspected.
    TriggerOverflow,
    /// A model bundle could not be loaded.
    ModelLoadFailed,
    /// A newly activated model failed its self-test.
    SelfTestFailed,
    /// The journal or model store could not be written.
    Storage,
    /// A GPIO line (trigger, reject, lamps) failed.
    Gpio,
    /// Anything else; see the detail string.
    Internal,
    /// Verdicts are arriving after their parts' deadlines (inspection slower than the conveyor).
    VerdictLate,
    /// The model's measured inference time exceeds the reject delay; it was refused.
    ModelTooSlow,
}

/// Edge → host: request with envelope `seq == re` succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Ack {
    /// [`Envelope::seq`] of the request being answered.
    pub re: u32,
}

/// Edge → host: request with envelope `seq == re` was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Nack {
    /// [`Envelope::seq`] of the request being answered.
    pub re: u32,
    /// Why, as data.
    pub code: NackCode,
    /// Human-readable detail (may be empty).
    pub detail: String,
}

/// Why the unit refused a request. Append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub enum NackCode {
    /// Protocol version or schema hash of the peer's [`Hello`] differs.
    IncompatibleProtocol,
    /// A control message arrived without a valid session (no tag, or before authentication).
    Unauthenticated,
    /// The per-frame tag did not verify.
    BadTag,
    /// The frame's sequence number is not above the last accepted one (replay).
    Replayed,
    /// The challenge-response proof did not verify, or the handshake step was out of order.
    AuthFailed,
    /// The message is not valid in this direction or state.
    Unexpected,
    /// The unit is busy with a conflicting operation (another upload, an activation).
    Busy,
    /// Threshold not finite.
    InvalidThreshold,
    /// Bundle larger than the unit's store.
    BundleTooLarge,
    /// Chunk offset is not where the upload stands (gap, overlap, past the declared size).
    BundleOffset,
    /// A chunk or commit arrived with no upload in progress.
    NoUpload,
    /// Size or SHA-256 at commit differs from [`BundleBegin`].
    BundleHashMismatch,
    /// The bundle's signature did not verify against the unit's trusted keys.
    BundleSignature,
    /// The bundle failed to parse (magic, version, lengths).
    BundleInvalid,
    /// No stored bundle has that SHA-256.
    UnknownModel,
    /// The activated model failed its self-test; the unit rolled back.
    SelfTestFailed,
    /// No previous model to roll back to.
    NoRollbackTarget,
    /// Software trigger while the unit is not in a mode that accepts one.
    TriggerUnavailable,
    /// The requested journal range is no longer held.
    ReplayUnavailable,
    /// Unexpected failure on the unit; see the detail string.
    Internal,
    /// The bundle's model version is below the active model's (anti-rollback); `--allow-downgrade` overrides.
    Downgrade,
    /// The bundle is for another firmware range or input size than this unit's.
    BundleIncompatible,
    /// The model's inference p99 on this unit exceeds the reject delay: it would judge parts too late.
    ModelTooSlow,
}

impl NackCode {
    /// Host CLI exit code for a request refused with this code (see [`crate::exit`]).
    pub fn exit_code(self) -> u8 {
        use crate::exit;
        match self {
            NackCode::IncompatibleProtocol => exit::INCOMPATIBLE,
            NackCode::Unauthenticated
            | NackCode::BadTag
            | NackCode::Replayed
            | NackCode::AuthFailed => exit::AUTH_FAILED,
            NackCode::BundleTooLarge
            | NackCode::BundleHashMismatch
            | NackCode::BundleSignature
            | NackCode::BundleInvalid
            | NackCode::BundleIncompatible
            | NackCode::SelfTestFailed
            | NackCode::ModelTooSlow => exit::BAD_MODEL,
            _ => exit::REFUSED,
        }
    }
}

/// Edge → host: a replay follows. Records `first_seq..end_seq` are sent as [`Msg::Replayed`], then [`ReplayEnd`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct ReplayBegin {
    /// [`Envelope::seq`] of the [`Msg::Replay`] request.
    pub re: u32,
    /// First journal sequence number that will be sent (above `from_seq` when the ring already dropped some).
    pub first_seq: u64,
    /// One past the last journal sequence number that will be sent.
    pub end_seq: u64,
}

impl ReplayBegin {
    /// Records the host asked for that the journal no longer holds.
    pub fn lost(&self, from_seq: u64) -> u64 {
        self.first_seq.saturating_sub(from_seq)
    }
}

/// Edge → host: replay complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct ReplayEnd {
    /// [`Envelope::seq`] of the [`Msg::Replay`] request.
    pub re: u32,
    /// Records actually sent.
    pub sent: u64,
}
