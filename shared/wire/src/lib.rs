//! kestrel-wire: the interface control document between the host (`kestrel`) and inspection units (`kestrel-edge`).
//!
//! This crate holds only types and pure codecs: no IO, no async runtime, no tensor library, so that both sides (and a
//! `no_std + alloc` target: build with `--no-default-features`) agree on every byte. Transports (serial, TCP,
//! in-memory) live in the host and edge crates and feed bytes to [`FrameDecoder`].
//!
//! # Wire format (protocol version [`PROTO_VERSION`])
//!
//! **Frames.** Every message travels as one frame:
//! `COBS( postcard(Envelope) ‖ CRC-32 ) ‖ 0x00`. The [`Envelope`] is serialised with postcard 1.x (varint integers,
//! length-prefixed strings and byte vectors, enum variants as varint indices, fields in declaration order). The
//! CRC is CRC-32/ISO-HDLC ([`frame::CRC32`]) over the postcard bytes, appended little-endian. The result is
//! COBS-encoded, so it contains no `0x00`, and one `0x00` ends the frame. A frame is at most [`MAX_FRAME_LEN`]
//! (64 KiB) bytes including the `0x00`; bundles are sent in chunks ([`upload`]). A receiver drops a frame that fails
//! COBS, CRC or postcard decoding or has bytes left over after the envelope, counts it ([`FrameCounts`]), and
//! resynchronises at the next `0x00`. A lone `0x00` is an empty frame and is ignored; senders may use one to flush.
//!
//! **Envelope.** `Envelope { seq: u32, msg: Msg, tag: Option<[u8; 16]> }`. `seq` counts the sender's frames on this
//! connection; `tag` authenticates the frame once a session exists ([`auth`]).
//!
//! **Connection.** Both sides first send [`Hello`] with [`PROTO_VERSION`] and [`SCHEMA_HASH`]; a peer with a
//! different version or hash is answered with `Nack(IncompatibleProtocol)` and the connection closed, because
//! postcard is not self-describing and would otherwise misparse. Then the edge sends `AuthChallenge`, the host
//! `AuthResponse`, the edge `AuthConfirm` (HMAC-SHA256 with the pre-shared unit key, see [`auth`]). From then on every
//! frame is tagged, and control messages ([`Msg::is_control`]) without a valid tag or with a replayed `seq` are
//! refused with a [`Nack`]. Requests are answered with [`Ack`]/[`Nack`] naming the request's `seq`.
//!
//! **Messages.** Defined in [`protocol`]; their exact bytes are pinned by golden tests (`tests/golden.rs`), and
//! their schema by [`SCHEMA_HASH`] (`tests/schema.rs`).
//!
//! **Evolution.** Enum variants are append-only. Any change to a type in [`protocol`] or [`mask`] changes
//! [`SCHEMA_HASH`]; bump [`PROTO_VERSION`] with it.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod auth;
pub mod exit;
pub mod frame;
pub mod keyfile;
pub mod mask;
pub mod protocol;
pub mod upload;

pub use auth::{AuthError, EdgeAuthenticator, HostAuthenticator, KeyRole, Nonce, UnitKey};
pub use frame::{
    crc32, encode_frame, EncodeError, FrameCounts, FrameDecoder, FrameError, MAX_FRAME_LEN,
};
pub use keyfile::{key_text, parse_key_text, KeyTextError};
#[cfg(feature = "std")]
pub use keyfile::{read_key_file, KeyFileError};
pub use mask::{Mask, MaskEncoding, MaskError};
pub use protocol::*;

/// Protocol version exchanged in the handshake; bumped on any incompatible change to the message types.
pub const PROTO_VERSION: u16 = 2;

/// Hash of the whole message schema (every type reachable from [`Envelope`]: field and variant names, order and
/// types), exchanged in [`Hello`].
///
/// It is postcard-schema's `Key` (FNV-1a 64 over a path and the schema tree) for [`Envelope`] under the path
/// `"kestrel-wire/Envelope"`, computed at compile time. It is a guard against mismatched builds, not a security
/// measure (the key is non-cryptographic). A test pins its value, so a change to the types fails until the pin and
/// [`PROTO_VERSION`] are updated together.
pub const SCHEMA_HASH: [u8; 8] =
    postcard_schema::key::Key::for_path::<Envelope>("kestrel-wire/Envelope").to_bytes();
