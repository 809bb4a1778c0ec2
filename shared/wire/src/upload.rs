//! Bundle upload: splitting a `.kbundle` into frames (host) and checking the chunk stream (edge).
//!
//! A bundle is far larger than one 64 KiB frame, so the host sends `BundleBegin { size, sha256 }`, then in-order
//! `BundleChunk { offset, bytes }`s, then `BundleCommit`. Both sides use this module so they agree on the rules: chunks
//! are contiguous (offset = bytes received so far), never run past the declared size, and the commit checks size and
//! SHA-256 of what arrived. The bundle's *signature* is checked by the bundle reader (kestrel-vision), not here: the
//! hash only proves the transfer was complete.

use alloc::vec::Vec;

use sha2::{Digest, Sha256};

use crate::frame::MAX_BUNDLE_CHUNK;
use crate::protocol::{BundleBegin, BundleChunk, Msg, NackCode};

/// `BundleBegin` for `bundle` (size and SHA-256).
pub fn bundle_begin(bundle: &[u8]) -> BundleBegin {
    BundleBegin {
        size: bundle.len() as u64,
        sha256: Sha256::digest(bundle).into(),
    }
}

/// Split `bundle` into chunks of `chunk_len` bytes (the last may be shorter).
///
/// `chunk_len` is clamped to `1..=`[`MAX_BUNDLE_CHUNK`] so every chunk fits a frame; use
/// [`crate::frame::DEFAULT_BUNDLE_CHUNK`] unless the link is fast.
pub fn bundle_chunks(bundle: &[u8], chunk_len: usize) -> impl Iterator<Item = BundleChunk> + '_ {
    let chunk_len = chunk_len.clamp(1, MAX_BUNDLE_CHUNK);
    bundle
        .chunks(chunk_len)
        .enumerate()
        .map(move |(i, bytes)| BundleChunk {
            offset: (i * chunk_len) as u64,
            bytes: bytes.to_vec(),
        })
}

/// The whole upload as messages: `BundleBegin`, the chunks, `BundleCommit`.
pub fn bundle_upload(bundle: &[u8], chunk_len: usize) -> impl Iterator<Item = Msg> + '_ {
    core::iter::once(Msg::BundleBegin(bundle_begin(bundle)))
        .chain(bundle_chunks(bundle, chunk_len).map(Msg::BundleChunk))
        .chain(core::iter::once(Msg::BundleCommit))
}

/// Edge-side check of an upload in progress. Errors are the [`NackCode`] to answer with.
#[derive(Debug, Clone)]
pub struct UploadState {
    size: u64,
    sha256: [u8; 32],
    received: u64,
    hasher: Sha256,
}

impl UploadState {
    /// Start an upload; refuses bundles larger than `max_size` (the unit's free store space).
    pub fn begin(begin: &BundleBegin, max_size: u64) -> Result<Self, NackCode> {
        if begin.size > max_size {
            return Err(NackCode::BundleTooLarge);
        }
        Ok(UploadState {
            size: begin.size,
            sha256: begin.sha256,
            received: 0,
            hasher: Sha256::new(),
        })
    }

    /// Accept the next chunk if it continues exactly where the upload stands and stays within the declared size.
    /// The caller writes `chunk.bytes` to storage after this returns `Ok`.
    pub fn accept(&mut self, chunk: &BundleChunk) -> Result<(), NackCode> {
        let len = chunk.bytes.len() as u64;
        if chunk.offset != self.received
            || len > self.size - self.received
            || chunk.bytes.len() > MAX_BUNDLE_CHUNK
        {
            return Err(NackCode::BundleOffset);
        }
        self.hasher.update(&chunk.bytes);
        self.received += len;
        Ok(())
    }

    /// Bytes accepted so far (where the next chunk must start).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Declared total size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Finish: everything arrived and the SHA-256 matches. Returns the hash (the bundle's identity).
    pub fn commit(self) -> Result<[u8; 32], NackCode> {
        if self.received != self.size {
            return Err(NackCode::BundleHashMismatch);
        }
        let got: [u8; 32] = self.hasher.finalize().into();
        if got != self.sha256 {
            return Err(NackCode::BundleHashMismatch);
        }
        Ok(got)
    }
}

/// Reassemble an upload in memory (tests, small bundles): feeds every message through [`UploadState`].
pub fn reassemble(msgs: impl IntoIterator<Item = Msg>, max_size: u64) -> Result<Vec<u8>, NackCode> {
    let mut state: Option<UploadState> = None;
    let mut out = Vec::new();
    for msg in msgs {
        match msg {
            Msg::BundleBegin(b) => {
                state = Some(UploadState::begin(&b, max_size)?);
                out.clear();
            }
            Msg::BundleChunk(c) => {
                state.as_mut().ok_or(NackCode::NoUpload)?.accept(&c)?;
                out.extend_from_slice(&c.bytes);
            }
            Msg::BundleCommit => {
                state.take().ok_or(NackCode::NoUpload)?.commit()?;
                return Ok(out);
            }
            _ => return Err(NackCode::Unexpected),
        }
    }
    Err(NackCode::NoUpload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn upload_round_trips() {
        let bundle: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let msgs: Vec<Msg> = bundle_upload(&bundle, 7000).collect();
        assert_eq!(msgs.len(), 2 + 15);
        assert_eq!(reassemble(msgs, 1 << 20).unwrap(), bundle);
        assert_eq!(
            reassemble(bundle_upload(&[], 10), 0).unwrap(),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn chunk_len_is_clamped() {
        let bundle = vec![1u8; MAX_BUNDLE_CHUNK * 2 + 1];
        let lens: Vec<usize> = bundle_chunks(&bundle, usize::MAX)
            .map(|c| c.bytes.len())
            .collect();
        assert_eq!(lens, vec![MAX_BUNDLE_CHUNK, MAX_BUNDLE_CHUNK, 1]);
        assert_eq!(bundle_chunks(&[1, 2], 0).count(), 2);
    }

    #[test]
    fn bad_uploads_are_refused() {
        let bundle = vec![5u8; 100];
        let begin = bundle_begin(&bundle);
        assert_eq!(
            UploadState::begin(&begin, 99).unwrap_err(),
            NackCode::BundleTooLarge
        );
        let mut st = UploadState::begin(&begin, 100).unwrap();
        // Gap.
        assert_eq!(
            st.accept(&BundleChunk {
                offset: 10,
                bytes: vec![5; 10]
            }),
            Err(NackCode::BundleOffset)
        );
        // Past the declared size.
        assert_eq!(
            st.accept(&BundleChunk {
                offset: 0,
                bytes: vec![5; 101]
            }),
            Err(NackCode::BundleOffset)
        );
        st.accept(&BundleChunk {
            offset: 0,
            bytes: vec![5; 60],
        })
        .unwrap();
        // Overlap.
        assert_eq!(
            st.accept(&BundleChunk {
                offset: 50,
                bytes: vec![5; 10]
            }),
            Err(NackCode::BundleOffset)
        );
        // Incomplete commit.
        assert_eq!(st.clone().commit(), Err(NackCode::BundleHashMismatch));
        // Complete but different bytes.
        let mut wrong = st.clone();
        wrong
            .accept(&BundleChunk {
                offset: 60,
                bytes: vec![6; 40],
            })
            .unwrap();
        assert_eq!(wrong.commit(), Err(NackCode::BundleHashMismatch));
        st.accept(&BundleChunk {
            offset: 60,
            bytes: vec![5; 40],
        })
        .unwrap();
        assert_eq!(st.commit(), Ok(begin.sha256));
        assert_eq!(reassemble([Msg::BundleCommit], 10), Err(NackCode::NoUpload));
    }
}
