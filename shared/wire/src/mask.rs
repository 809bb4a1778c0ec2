//! Anomaly masks on the wire, and their run-length encoding.
//!
//! A mask is a `u8` anomaly map at reduced resolution (e.g. 64×64 or the detector's grid), row-major, one byte per
//! pixel. Thresholded or smooth maps are mostly long runs of equal bytes, so a trivial RLE shrinks them a lot while
//! staying cheap on the unit and easy to decode in any language; at 115 200 baud every byte saved is ~87 µs.
//!
//! RLE format: a sequence of `(count, value)` byte pairs, `count` in `1..=255`, meaning `count` copies of `value`.
//! Longer runs are split into several pairs. The empty map encodes to no bytes. Encoding is canonical: adjacent pairs
//! carry different values unless the first has `count == 255`.
//!
//! Decoding is hostile-input safe: the total run length is summed and compared with `width × height` *before* the
//! output buffer is allocated, so a 64 KiB frame cannot make the host allocate more than the declared mask.

use alloc::vec::Vec;

use postcard_schema::Schema;
use serde::{Deserialize, Serialize};

/// How [`Mask::data`] is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub enum MaskEncoding {
    /// `width × height` bytes, row-major.
    Raw,
    /// `(count, value)` pairs, see the [module docs](self).
    Rle,
}

/// A reduced-resolution anomaly map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Schema)]
#[cfg_attr(feature = "testing", derive(proptest_derive::Arbitrary))]
pub struct Mask {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
    /// Encoding of `data`.
    pub encoding: MaskEncoding,
    /// Encoded pixels.
    pub data: Vec<u8>,
}

/// A mask whose data does not match its declared shape or encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MaskError {
    /// The (decoded) pixel count differs from `width × height`.
    #[error("mask has {got} pixels, expected {expected} (width × height)")]
    LengthMismatch {
        /// `width × height`.
        expected: usize,
        /// What the data holds.
        got: usize,
    },
    /// RLE data must be whole `(count, value)` pairs.
    #[error("RLE data has odd length {len}; it must be (count, value) pairs")]
    RleOddLength {
        /// Length of the RLE data.
        len: usize,
    },
    /// A run count of zero is not allowed (it would make encodings non-canonical and hide padding).
    #[error("RLE run at byte {at} has count 0")]
    RleZeroRun {
        /// Byte offset of the bad pair.
        at: usize,
    },
}

impl Mask {
    /// Number of pixels, `width × height` (fits `usize` on 32-bit targets: at most 65535²).
    pub fn pixel_count(&self) -> usize {
        usize::from(self.width) * usize::from(self.height)
    }

    /// A raw mask; `pixels` must hold exactly `width × height` bytes.
    pub fn raw(width: u16, height: u16, pixels: Vec<u8>) -> Result<Mask, MaskError> {
        check_len(width, height, pixels.len())?;
        Ok(Mask {
            width,
            height,
            encoding: MaskEncoding::Raw,
            data: pixels,
        })
    }

    /// An RLE mask of `width × height` pixels.
    pub fn rle(width: u16, height: u16, pixels: &[u8]) -> Result<Mask, MaskError> {
        check_len(width, height, pixels.len())?;
        Ok(Mask {
            width,
            height,
            encoding: MaskEncoding::Rle,
            data: rle_encode(pixels),
        })
    }

    /// Whichever of raw and RLE is smaller (raw on a tie, since it is cheaper to decode).
    pub fn compact(width: u16, height: u16, pixels: &[u8]) -> Result<Mask, MaskError> {
        let rle = Mask::rle(width, height, pixels)?;
        if rle.data.len() < pixels.len() {
            Ok(rle)
        } else {
            Ok(Mask {
                width,
                height,
                encoding: MaskEncoding::Raw,
                data: pixels.to_vec(),
            })
        }
    }

    /// Decoded pixels, row-major; checks that the data matches the declared shape.
    pub fn pixels(&self) -> Result<Vec<u8>, MaskError> {
        match self.encoding {
            MaskEncoding::Raw => {
                check_len(self.width, self.height, self.data.len())?;
                Ok(self.data.clone())
            }
            MaskEncoding::Rle => rle_decode(&self.data, self.pixel_count()),
        }
    }
}

fn check_len(width: u16, height: u16, got: usize) -> Result<(), MaskError> {
    let expected = usize::from(width) * usize::from(height);
    if got == expected {
        Ok(())
    } else {
        Err(MaskError::LengthMismatch { expected, got })
    }
}

/// Run-length encode `pixels` as `(count, value)` pairs (canonical form, see the [module docs](self)).
pub fn rle_encode(pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = pixels;
    while let Some(&value) = rest.first() {
        let run = rest
            .iter()
            .take(usize::from(u8::MAX))
            .take_while(|&&p| p == value)
            .count();
        // `run` is in 1..=255 by construction.
        out.push(run as u8);
        out.push(value);
        rest = &rest[run..];
    }
    out
}

/// Total pixel count described by RLE `data`, validating its structure without allocating.
pub fn rle_decoded_len(data: &[u8]) -> Result<usize, MaskError> {
    if !data.len().is_multiple_of(2) {
        return Err(MaskError::RleOddLength { len: data.len() });
    }
    let mut total = 0usize;
    for (i, pair) in data.chunks_exact(2).enumerate() {
        if pair[0] == 0 {
            return Err(MaskError::RleZeroRun { at: 2 * i });
        }
        total += usize::from(pair[0]);
    }
    Ok(total)
}

/// Decode RLE `data` that must describe exactly `expected_len` pixels. The length is checked before allocating.
pub fn rle_decode(data: &[u8], expected_len: usize) -> Result<Vec<u8>, MaskError> {
    let got = rle_decoded_len(data)?;
    if got != expected_len {
        return Err(MaskError::LengthMismatch {
            expected: expected_len,
            got,
        });
    }
    let mut out = Vec::with_capacity(got);
    for pair in data.chunks_exact(2) {
        out.extend(core::iter::repeat_n(pair[1], usize::from(pair[0])));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn rle_known_bytes() {
        assert_eq!(rle_encode(&[]), Vec::<u8>::new());
        assert_eq!(rle_encode(&[7, 7, 7, 0, 9]), vec![3, 7, 1, 0, 1, 9]);
        // A run of 300 splits at 255.
        assert_eq!(rle_encode(&[5; 300]), vec![255, 5, 45, 5]);
    }

    #[test]
    fn rle_rejects_malformed() {
        assert_eq!(rle_decode(&[1], 1), Err(MaskError::RleOddLength { len: 1 }));
        assert_eq!(
            rle_decode(&[1, 2, 0, 3], 1),
            Err(MaskError::RleZeroRun { at: 2 })
        );
        assert_eq!(
            rle_decode(&[255, 1], 10),
            Err(MaskError::LengthMismatch {
                expected: 10,
                got: 255
            })
        );
    }

    #[test]
    fn mask_shape_is_checked() {
        assert_eq!(
            Mask::raw(2, 2, vec![0; 3]),
            Err(MaskError::LengthMismatch {
                expected: 4,
                got: 3
            })
        );
        let m = Mask::compact(4, 4, &[0; 16]).unwrap();
        assert_eq!(m.encoding, MaskEncoding::Rle);
        assert_eq!(m.pixels().unwrap(), vec![0; 16]);
        let noisy: Vec<u8> = (0..16).collect();
        let m = Mask::compact(4, 4, &noisy).unwrap();
        assert_eq!(m.encoding, MaskEncoding::Raw);
        assert_eq!(m.pixels().unwrap(), noisy);
    }
}
