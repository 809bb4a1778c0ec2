//! kestrel-wire: the interface control document between the host (`kestrel`) and inspection units (`kestrel-edge`).
//!
//! This crate holds only types and pure codecs: no IO, no async runtime, no tensor library, so that both sides (and a
//! no_std target) agree on every byte. The messages and framing land with the edge issue; until then this crate only
//! pins the protocol version.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

/// Protocol version exchanged in the handshake; bumped on any incompatible change to the message types.
pub const PROTO_VERSION: u16 = 1;
