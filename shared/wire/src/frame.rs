//! Framing: `COBS(postcard(Envelope) ‖ CRC-32) ‖ 0x00`, at most [`MAX_FRAME_LEN`] bytes on the wire.
//!
//! Why this shape:
//! - **COBS** removes every `0x00` from the frame body, so `0x00` marks frame ends unambiguously. After line noise, a
//!   dropped byte or a peer that started mid-frame, the receiver throws away bytes up to the next `0x00` and is back
//!   in sync; no length field can lie to it. Overhead is one byte per 254.
//! - **CRC-32/ISO-HDLC** (the zlib/Ethernet CRC-32, little-endian after the payload) *inside* the COBS body, because
//!   postcard happily decodes random bytes into plausible values: without a checksum a corrupted threshold could be
//!   applied. The CRC guards against noise only; authenticity is [`crate::auth`]'s job.
//! - **64 KiB limit** on the whole frame (sentinel included) bounds the receiver's buffer on a small unit and the time
//!   one frame occupies a 115 200-baud line (~6 s). Bulk data is chunked ([`crate::upload`]).
//! - An empty frame (a lone `0x00`) is ignored: senders may emit one on connect or after an error to flush a
//!   half-received frame at the peer.
//!
//! [`FrameDecoder`] is a push-style state machine (no IO), so the same code serves serial, TCP and in-memory test
//! transports, and the fuzz target drives it directly.

use alloc::vec::Vec;

use crate::protocol::Envelope;

/// Largest frame on the wire, in bytes, including the trailing `0x00`.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Length of the CRC-32 trailer inside the COBS body.
pub const CRC_LEN: usize = 4;

/// Largest `bytes` of one [`crate::BundleChunk`]: 60 KiB leaves room for the envelope, tag, CRC and worst-case COBS
/// overhead (pinned by a test) under [`MAX_FRAME_LEN`].
pub const MAX_BUNDLE_CHUNK: usize = 60 * 1024;

/// Chunk size the host should use by default: 16 KiB keeps a 115 200-baud line free for events every ~1.5 s.
pub const DEFAULT_BUNDLE_CHUNK: usize = 16 * 1024;

/// CRC-32/ISO-HDLC (poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF; check value 0xCBF43926).
pub const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32/ISO-HDLC of `bytes` ([`CRC32`]): the checksum inside every frame, and the one the edge's verdict journal
/// puts on each record, so both use one definition.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

/// Failure to build a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame would exceed [`MAX_FRAME_LEN`]; chunk the payload.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Encoded length including the sentinel.
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// postcard refused to serialise the envelope.
    #[error("the envelope cannot be serialised")]
    Serialize(#[source] postcard::Error),
}

/// Append one frame for `env` to `out`. On error `out` is left as it was.
///
/// Returns the number of bytes appended (including the trailing `0x00`).
pub fn encode_frame(env: &Envelope, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let mut body = postcard::to_allocvec(env).map_err(EncodeError::Serialize)?;
    let crc = crc32(&body);
    body.extend_from_slice(&crc.to_le_bytes());

    // Cheap early refusal for the obvious case, before touching `out`: COBS never shrinks its input.
    if body.len() + 1 > MAX_FRAME_LEN {
        return Err(EncodeError::TooLarge {
            len: body.len() + 1,
            max: MAX_FRAME_LEN,
        });
    }
    let start = out.len();
    out.resize(start + cobs::max_encoding_length(body.len()), 0);
    let n = cobs::encode(&body, &mut out[start..]);
    out.truncate(start + n);
    out.push(0);
    let len = n + 1;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Why a frame was dropped by [`FrameDecoder`]. Each variant is counted in [`FrameCounts`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// More than [`MAX_FRAME_LEN`] bytes without a `0x00`; bytes are discarded up to the next `0x00`.
    #[error("frame exceeds the {limit}-byte limit; discarding up to the next 0x00")]
    Oversized {
        /// [`MAX_FRAME_LEN`].
        limit: usize,
    },
    /// The frame body is not valid COBS.
    #[error("invalid COBS encoding")]
    Cobs,
    /// The decoded body is too short to hold the CRC.
    #[error("frame body of {len} bytes is shorter than its CRC")]
    TooShort {
        /// Decoded length.
        len: usize,
    },
    /// CRC mismatch: line noise, or a peer using a different framing.
    #[error("CRC mismatch: frame says {received:#010x}, body gives {computed:#010x}")]
    Crc {
        /// CRC carried by the frame.
        received: u32,
        /// CRC computed over the body.
        computed: u32,
    },
    /// The CRC is good but the body is not an [`Envelope`] of this schema (peer on another protocol version?).
    #[error("frame does not decode as an Envelope")]
    Decode(#[source] postcard::Error),
    /// An [`Envelope`] decoded but bytes were left over (peer on another protocol version?).
    #[error("{len} trailing bytes after the Envelope")]
    TrailingBytes {
        /// Bytes left over.
        len: usize,
    },
}

/// Decoder statistics: good frames and errors by kind (reported to the host in [`crate::Stats::link_errors`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCounts {
    /// Envelopes decoded.
    pub frames: u64,
    /// Lone `0x00` sentinels (flushes); not errors.
    pub empty: u64,
    /// [`FrameError::Oversized`].
    pub oversized: u64,
    /// [`FrameError::Cobs`].
    pub cobs: u64,
    /// [`FrameError::TooShort`].
    pub too_short: u64,
    /// [`FrameError::Crc`].
    pub crc: u64,
    /// [`FrameError::Decode`].
    pub decode: u64,
    /// [`FrameError::TrailingBytes`].
    pub trailing: u64,
}

impl FrameCounts {
    /// All errors, of every kind.
    pub fn errors(&self) -> u64 {
        self.oversized + self.cobs + self.too_short + self.crc + self.decode + self.trailing
    }

    fn record(&mut self, err: &FrameError) {
        let slot = match err {
            FrameError::Oversized { .. } => &mut self.oversized,
            FrameError::Cobs => &mut self.cobs,
            FrameError::TooShort { .. } => &mut self.too_short,
            FrameError::Crc { .. } => &mut self.crc,
            FrameError::Decode(_) => &mut self.decode,
            FrameError::TrailingBytes { .. } => &mut self.trailing,
        };
        *slot += 1;
    }
}

/// Streaming frame decoder: feed it whatever the transport delivered, get envelopes and errors back in order.
///
/// It buffers at most [`MAX_FRAME_LEN`]` - 1` bytes. A frame that grows past that is reported once as
/// [`FrameError::Oversized`] and the rest of it is skipped up to the next `0x00`; any other bad frame is reported
/// when its `0x00` arrives. Either way the next frame decodes normally.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    discarding: bool,
    counts: FrameCounts,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; returns every frame completed by them, in order.
    pub fn push(&mut self, data: &[u8]) -> Vec<Result<Envelope, FrameError>> {
        let mut out = Vec::new();
        self.push_with(data, |r| out.push(r));
        out
    }

    /// Feed bytes and hand each completed frame to `sink` (no intermediate allocation).
    pub fn push_with(&mut self, data: &[u8], mut sink: impl FnMut(Result<Envelope, FrameError>)) {
        let mut rest = data;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == 0) {
                Some(end) => {
                    self.absorb(&rest[..end], &mut sink);
                    self.finish(&mut sink);
                    rest = &rest[end + 1..];
                }
                None => {
                    self.absorb(rest, &mut sink);
                    break;
                }
            }
        }
    }

    /// Counters since construction.
    pub fn counts(&self) -> &FrameCounts {
        &self.counts
    }

    /// Bytes of an unfinished frame currently buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Drop any partial frame (e.g. after the transport reconnected). Counters are kept.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    fn absorb(&mut self, bytes: &[u8], sink: &mut impl FnMut(Result<Envelope, FrameError>)) {
        if self.discarding || bytes.is_empty() {
            return;
        }
        if self.buf.len() + bytes.len() > MAX_FRAME_LEN - 1 {
            self.buf.clear();
            self.discarding = true;
            let err = FrameError::Oversized {
                limit: MAX_FRAME_LEN,
            };
            self.counts.record(&err);
            sink(Err(err));
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn finish(&mut self, sink: &mut impl FnMut(Result<Envelope, FrameError>)) {
        if self.discarding {
            self.discarding = false;
            return;
        }
        if self.buf.is_empty() {
            self.counts.empty += 1;
            return;
        }
        let result = decode_body(&mut self.buf);
        self.buf.clear();
        match &result {
            Ok(_) => self.counts.frames += 1,
            Err(e) => self.counts.record(e),
        }
        sink(result);
    }
}

/// Decode one frame body (COBS-encoded, without its `0x00`) in place.
fn decode_body(buf: &mut [u8]) -> Result<Envelope, FrameError> {
    let len = cobs::decode_in_place(buf).map_err(|_| FrameError::Cobs)?;
    if len < CRC_LEN {
        return Err(FrameError::TooShort { len });
    }
    let (body, crc) = buf[..len].split_at(len - CRC_LEN);
    let received = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32(body);
    if received != computed {
        return Err(FrameError::Crc { received, computed });
    }
    let (env, rest) = postcard::take_from_bytes::<Envelope>(body).map_err(FrameError::Decode)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes { len: rest.len() });
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BundleChunk, Msg};
    use alloc::vec;

    fn env(seq: u32) -> Envelope {
        Envelope::new(seq, Msg::Status)
    }

    #[test]
    fn crc_is_iso_hdlc() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn largest_bundle_chunk_fits_in_a_frame() {
        // Worst case for every variable-length field and for COBS (no zero byte anywhere in the payload).
        let big = Envelope {
            seq: u32::MAX,
            msg: Msg::BundleChunk(BundleChunk {
                offset: u64::MAX,
                bytes: vec![0xFF; MAX_BUNDLE_CHUNK],
            }),
            tag: Some([0xFF; 16]),
        };
        let mut out = Vec::new();
        let len = encode_frame(&big, &mut out).unwrap();
        assert!(len <= MAX_FRAME_LEN, "{len}");
        let got = FrameDecoder::new().push(&out);
        assert_eq!(got, vec![Ok(big)]);
    }

    #[test]
    fn too_large_is_refused_and_out_untouched() {
        let big = Envelope::new(
            1,
            Msg::BundleChunk(BundleChunk {
                offset: 0,
                bytes: vec![1; MAX_FRAME_LEN],
            }),
        );
        let mut out = vec![9, 9];
        assert!(matches!(
            encode_frame(&big, &mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        assert_eq!(out, vec![9, 9]);
    }

    #[test]
    fn cobs_block_boundaries_round_trip() {
        // COBS changes behaviour at 254-byte blocks; exercise sizes around them with and without zeros.
        for n in [250usize, 253, 254, 255, 256, 507, 508, 509, 762] {
            for fill in [0u8, 1, 0xFF] {
                let e = Envelope::new(
                    n as u32,
                    Msg::BundleChunk(BundleChunk {
                        offset: 0,
                        bytes: vec![fill; n],
                    }),
                );
                let mut out = Vec::new();
                encode_frame(&e, &mut out).unwrap();
                assert_eq!(out.iter().filter(|&&b| b == 0).count(), 1);
                assert_eq!(
                    FrameDecoder::new().push(&out),
                    vec![Ok(e)],
                    "n={n} fill={fill}"
                );
            }
        }
    }

    #[test]
    fn oversized_garbage_then_recovery() {
        let mut stream = vec![0x55; MAX_FRAME_LEN + 10];
        stream.push(0);
        encode_frame(&env(3), &mut stream).unwrap();
        let mut dec = FrameDecoder::new();
        let got = dec.push(&stream);
        assert_eq!(
            got,
            vec![
                Err(FrameError::Oversized {
                    limit: MAX_FRAME_LEN
                }),
                Ok(env(3))
            ]
        );
        assert_eq!(dec.counts().oversized, 1);
        assert_eq!(dec.counts().frames, 1);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn largest_encodable_frame_is_decodable() {
        // Grow a chunk until the encoder refuses it; the last accepted frame sits at the limit (COBS may jump by
        // two bytes at a block boundary) and the decoder must take it.
        let mut n = MAX_FRAME_LEN - 400;
        let mut last = None;
        loop {
            let e = Envelope::new(
                0,
                Msg::BundleChunk(BundleChunk {
                    offset: 0,
                    bytes: vec![7; n],
                }),
            );
            let mut out = Vec::new();
            match encode_frame(&e, &mut out) {
                Ok(len) => last = Some((e, out, len)),
                Err(EncodeError::TooLarge { .. }) => break,
                Err(err) => panic!("{err}"),
            }
            n += 1;
        }
        let (e, out, len) = last.expect("start below the limit");
        assert!(len >= MAX_FRAME_LEN - 1, "{len}");
        assert_eq!(FrameDecoder::new().push(&out), vec![Ok(e)]);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let mut dec = FrameDecoder::new();
        // Lone sentinels are flushes, not errors.
        assert!(dec.push(&[0, 0]).is_empty());
        // Three bytes decode to two: shorter than a CRC.
        assert_eq!(
            dec.push(&[3, 1, 1, 0]),
            vec![Err(FrameError::TooShort { len: 2 })]
        );
        // A COBS code byte pointing past the end.
        assert_eq!(dec.push(&[9, 1, 0]), vec![Err(FrameError::Cobs)]);
        // Valid COBS, wrong CRC.
        let mut good = Vec::new();
        encode_frame(&env(1), &mut good).unwrap();
        let mut bad = good.clone();
        bad[1] ^= 0x40;
        assert!(matches!(dec.push(&bad)[..], [Err(FrameError::Crc { .. })]));
        // Good CRC over bytes that are not an Envelope (variant 200 does not exist).
        let mut body = vec![1u8, 0xC8, 0x01];
        body.extend_from_slice(&CRC32.checksum(&body).to_le_bytes());
        let mut frame = cobs_frame(&body);
        assert!(matches!(dec.push(&frame)[..], [Err(FrameError::Decode(_))]));
        // Good CRC, good Envelope, one byte too many.
        let mut body = postcard::to_allocvec(&env(2)).unwrap();
        body.push(0xAA);
        body.extend_from_slice(&CRC32.checksum(&body).to_le_bytes());
        frame = cobs_frame(&body);
        assert_eq!(
            dec.push(&frame),
            vec![Err(FrameError::TrailingBytes { len: 1 })]
        );
        assert_eq!(dec.push(&good), vec![Ok(env(1))]);
        let c = *dec.counts();
        assert_eq!(
            c,
            FrameCounts {
                frames: 1,
                empty: 2,
                oversized: 0,
                cobs: 1,
                too_short: 1,
                crc: 1,
                decode: 1,
                trailing: 1
            }
        );
        assert_eq!(c.errors(), 5);
    }

    fn cobs_frame(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0; cobs::max_encoding_length(body.len())];
        let n = cobs::encode(body, &mut out);
        out.truncate(n);
        out.push(0);
        out
    }
}
