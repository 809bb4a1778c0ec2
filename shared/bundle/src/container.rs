//! Reading and sealing the container bytes (layout in `docs/bundle.md`).
//!
//! Check order, cheapest and least trusting first: prefix fields, then every declared length against the real file
//! length (so no later step can index or allocate past the file), zero padding, SHA-256, the signature, and only
//! then the manifest decode and the tensor-table checks. The manifest is the only structure decoded from the file,
//! it is decoded from a slice bounded by the already-checked manifest length, and only after the signature proves a
//! trusted key wrote it.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{BundleError, Section};
use crate::keys::{SigningKey, TrustedKey, TrustedKeys};
use crate::manifest::{Manifest, ModelInfo, TensorEntry};
use crate::{ALIGN, FORMAT_VERSION, HASH_LEN, MAGIC, PREFIX_LEN, SIGNATURE_LEN, SIGNING_DOMAIN};

/// Byte ranges of a bundle's sections, all checked to lie inside the file and to tile it exactly.
struct Layout {
    manifest: Range<usize>,
    payload: Range<usize>,
    /// Start of the stored hash; everything before it is hashed.
    hash: usize,
    signature: usize,
}

fn align_up(n: u64) -> u64 {
    // `n` is at most PREFIX_LEN + u32::MAX here, far from overflowing.
    n.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// Checks the fixed prefix (length, magic, version, flags) and returns the declared manifest and payload lengths.
fn read_prefix(bytes: &[u8]) -> Result<(u64, u64), BundleError> {
    let Some(prefix) = bytes.first_chunk::<PREFIX_LEN>() else {
        return Err(BundleError::Truncated {
            section: Section::Prefix,
            need: PREFIX_LEN as u64,
            have: bytes.len() as u64,
        });
    };
    let magic: [u8; 8] = prefix[0..8].try_into().expect("8 bytes");
    if magic != MAGIC {
        return Err(BundleError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([prefix[8], prefix[9]]);
    if version != FORMAT_VERSION {
        return Err(BundleError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let flags = u16::from_le_bytes([prefix[10], prefix[11]]);
    if flags != 0 {
        return Err(BundleError::UnsupportedFlags { flags });
    }
    let manifest_len = u64::from(u32::from_le_bytes(
        prefix[12..16].try_into().expect("4 bytes"),
    ));
    let payload_len = u64::from_le_bytes(prefix[16..24].try_into().expect("8 bytes"));
    Ok((manifest_len, payload_len))
}

/// The file length a prefix declares (saturating, so a hostile length is an impossible size, never a wrapped one).
fn declared_len(manifest_len: u64, payload_len: u64) -> u64 {
    align_up(PREFIX_LEN as u64 + manifest_len)
        .saturating_add(payload_len)
        .saturating_add((HASH_LEN + SIGNATURE_LEN) as u64)
}

/// The trusted key whose signature over `hash` verifies; the same refusals as [`VerifiedBundle::parse`].
fn check_signature(
    hash: &[u8; 32],
    signature: &[u8; 64],
    keys: &TrustedKeys,
) -> Result<TrustedKey, BundleError> {
    if keys.is_empty() {
        return Err(BundleError::NoTrustedKeys);
    }
    if signature.iter().all(|&b| b == 0) {
        return Err(BundleError::Unsigned);
    }
    let message = signed_message(hash);
    keys.iter()
        .find(|k| k.key.verifies(&message, signature))
        .cloned()
        .ok_or(BundleError::BadSignature { tried: keys.len() })
}

impl Layout {
    fn read(bytes: &[u8]) -> Result<Layout, BundleError> {
        let have = bytes.len() as u64;
        let (manifest_len, payload_len) = read_prefix(bytes)?;
        // Section ends as the prefix declares them, in u64 and saturating: a hostile payload length (up to
        // u64::MAX) becomes an impossible "need", never a wrapped small one.
        let manifest_end = PREFIX_LEN as u64 + manifest_len;
        let padding_end = align_up(manifest_end);
        let payload_end = padding_end.saturating_add(payload_len);
        let hash_end = payload_end.saturating_add(HASH_LEN as u64);
        let signature_end = hash_end.saturating_add(SIGNATURE_LEN as u64);
        for (section, need) in [
            (Section::Manifest, manifest_end),
            (Section::Padding, padding_end),
            (Section::Payload, payload_end),
            (Section::Hash, hash_end),
            (Section::Signature, signature_end),
        ] {
            if need > have {
                return Err(BundleError::Truncated {
                    section,
                    need,
                    have,
                });
            }
        }
        if signature_end != have {
            return Err(BundleError::LengthMismatch {
                declared: signature_end,
                actual: have,
            });
        }
        // Every end is now <= bytes.len(), so the conversions to usize are lossless.
        let layout = Layout {
            manifest: PREFIX_LEN..manifest_end as usize,
            payload: padding_end as usize..payload_end as usize,
            hash: payload_end as usize,
            signature: hash_end as usize,
        };
        if let Some(i) = bytes[layout.manifest.end..layout.payload.start]
            .iter()
            .position(|&b| b != 0)
        {
            return Err(BundleError::NonZeroPadding {
                offset: (layout.manifest.end + i) as u64,
            });
        }
        Ok(layout)
    }

    /// Recomputes the SHA-256 over everything before the trailer and compares it with the stored one.
    fn check_hash(&self, bytes: &[u8]) -> Result<[u8; 32], BundleError> {
        let computed: [u8; 32] = Sha256::digest(&bytes[..self.hash]).into();
        let stored: [u8; 32] = bytes[self.hash..self.signature]
            .try_into()
            .expect("32 bytes");
        if stored != computed {
            return Err(BundleError::HashMismatch { stored, computed });
        }
        Ok(computed)
    }

    fn signature<'a>(&self, bytes: &'a [u8]) -> &'a [u8; 64] {
        bytes[self.signature..].try_into().expect("64 bytes")
    }

    /// Decodes the manifest (exactly its declared bytes, no trailing data) and checks it against the payload.
    fn manifest(&self, bytes: &[u8]) -> Result<Manifest, BundleError> {
        let (manifest, rest) = postcard::take_from_bytes::<Manifest>(&bytes[self.manifest.clone()])
            .map_err(BundleError::Manifest)?;
        if !rest.is_empty() {
            return Err(BundleError::ManifestTrailingBytes { extra: rest.len() });
        }
        manifest.validate(&bytes[self.payload.clone()])?;
        Ok(manifest)
    }
}

/// The message an Ed25519 signature covers: a domain tag (so a bundle signature can never be replayed as, or be
/// forged from, a signature over anything else the same key signs) followed by the bundle hash.
fn signed_message(hash: &[u8; 32]) -> Vec<u8> {
    [SIGNING_DOMAIN, hash.as_slice()].concat()
}

/// A bundle whose structure, hash and signature (by a trusted key) have been checked, and whose tensor table
/// describes its payload exactly. The only way to get one is [`VerifiedBundle::parse`] or
/// [`VerifiedBundle::parse_file`].
#[derive(Debug)]
pub struct VerifiedBundle {
    bytes: Vec<u8>,
    manifest: Manifest,
    payload: Range<usize>,
    sha256: [u8; 32],
    signer: TrustedKey,
}

impl VerifiedBundle {
    /// Checks `bytes` in full (see the module docs for the order) and accepts it when one of `keys` signed it.
    pub fn parse(bytes: Vec<u8>, keys: &TrustedKeys) -> Result<Self, BundleError> {
        let layout = Layout::read(&bytes)?;
        let sha256 = layout.check_hash(&bytes)?;
        let signer = check_signature(&sha256, layout.signature(&bytes), keys)?;
        let manifest = layout.manifest(&bytes)?;
        Ok(VerifiedBundle {
            manifest,
            payload: layout.payload,
            sha256,
            signer,
            bytes,
        })
    }

    /// Reads and parses a bundle file, refusing one longer than `max_len` bytes before reading it.
    pub fn parse_file(path: &Path, max_len: u64, keys: &TrustedKeys) -> Result<Self, BundleError> {
        let file = File::open(path).map_err(BundleError::io("open bundle", path))?;
        let len = file
            .metadata()
            .map_err(BundleError::io("stat bundle", path))?
            .len();
        if len > max_len {
            return Err(BundleError::TooLarge { len, max: max_len });
        }
        // The file may grow between stat and read: read at most one byte past the limit to notice.
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(max_len.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(BundleError::io("read bundle", path))?;
        if bytes.len() as u64 > max_len {
            return Err(BundleError::TooLarge {
                len: bytes.len() as u64,
                max: max_len,
            });
        }
        VerifiedBundle::parse(bytes, keys)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The table entry of tensor `name`.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.manifest.tensor(name)
    }

    /// The bytes of tensor `name` (little-endian elements; 64-byte aligned within the file, though not
    /// necessarily in memory).
    pub fn tensor(&self, name: &str) -> Option<&[u8]> {
        let t = self.entry(name)?;
        // Validated at parse: offset + len lies inside the payload.
        let start = self.payload.start + t.offset as usize;
        Some(&self.bytes[start..start + t.len as usize])
    }

    /// SHA-256 of the file up to the trailer, which is also the content hash units store models under.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// The trusted key whose signature verified.
    pub fn signer(&self) -> &TrustedKey {
        &self.signer
    }

    /// The whole file, e.g. to store it in a model slot.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What [`inspect_untrusted`] can tell about a bundle without trusting it.
#[derive(Debug)]
pub struct UntrustedInspection {
    pub manifest: Manifest,
    pub sha256: [u8; 32],
    /// Whether the signature field is non-zero. Says nothing about whether the signature is valid.
    pub has_signature: bool,
}

/// Reads a bundle's manifest **without checking its signature**, for inspection tools that have no trusted keys
/// (listing what a file claims to be). Structure, hash and tensor table are still checked, so what it returns is
/// at least self-consistent, but anyone could have written it: never use it to decide what a unit runs or whether
/// a bundle is acceptable. Use [`VerifiedBundle::parse`] for that.
pub fn inspect_untrusted(bytes: &[u8]) -> Result<UntrustedInspection, BundleError> {
    let layout = Layout::read(bytes)?;
    let sha256 = layout.check_hash(bytes)?;
    let has_signature = layout.signature(bytes).iter().any(|&b| b != 0);
    let manifest = layout.manifest(bytes)?;
    Ok(UntrustedInspection {
        manifest,
        sha256,
        has_signature,
    })
}

/// What a unit can tell from a bundle's head (prefix and manifest) and trailer (hash and signature) alone.
#[derive(Debug)]
pub struct ProbedBundle {
    /// The signed model information (firmware range, input size, model version, ...).
    pub model: ModelInfo,
    /// The hash the signature covers; the upload's SHA-256 must equal it.
    pub sha256: [u8; 32],
    /// The trusted key whose signature verified.
    pub signer: TrustedKey,
}

/// Checks a bundle from its head and trailer without its payload: the dry run of a flash, so a unit can refuse a
/// bundle (untrusted signer, other firmware or input size, downgrade) before minutes of upload over a serial line.
///
/// `head` must be exactly the prefix and the manifest, `trailer` the last 96 bytes, `size` the file length. The
/// signature is checked before the manifest is decoded, as in [`VerifiedBundle::parse`]. What this cannot check is
/// that the payload (and so the hash) matches the head: the full parse at commit does that, so a probe's `Ok` is a
/// prediction, never a reason to run a model.
pub fn probe(
    head: &[u8],
    trailer: &[u8],
    size: u64,
    keys: &TrustedKeys,
) -> Result<ProbedBundle, BundleError> {
    let (manifest_len, payload_len) = read_prefix(head)?;
    let manifest_end = PREFIX_LEN as u64 + manifest_len;
    let have = head.len() as u64;
    if have < manifest_end {
        return Err(BundleError::Truncated {
            section: Section::Manifest,
            need: manifest_end,
            have,
        });
    }
    if have > manifest_end {
        return Err(BundleError::LengthMismatch {
            declared: manifest_end,
            actual: have,
        });
    }
    let declared = declared_len(manifest_len, payload_len);
    if declared != size {
        return Err(BundleError::LengthMismatch {
            declared,
            actual: size,
        });
    }
    let Some((hash, signature)) = trailer
        .split_first_chunk::<HASH_LEN>()
        .and_then(|(h, rest)| Some((h, rest.first_chunk::<SIGNATURE_LEN>()?)))
        .filter(|_| trailer.len() == HASH_LEN + SIGNATURE_LEN)
    else {
        return Err(BundleError::Truncated {
            section: Section::Signature,
            need: (HASH_LEN + SIGNATURE_LEN) as u64,
            have: trailer.len() as u64,
        });
    };
    let signer = check_signature(hash, signature, keys)?;
    let (manifest, rest) = postcard::take_from_bytes::<Manifest>(&head[PREFIX_LEN..])
        .map_err(BundleError::Manifest)?;
    if !rest.is_empty() {
        return Err(BundleError::ManifestTrailingBytes { extra: rest.len() });
    }
    manifest.model.validate()?;
    Ok(ProbedBundle {
        model: manifest.model,
        sha256: *hash,
        signer,
    })
}

/// Splits a bundle file into what [`probe`] takes: (head, trailer). `None` when the bytes are too short to hold
/// a prefix, the declared manifest and a trailer.
pub fn probe_parts(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (manifest_len, _) = read_prefix(bytes).ok()?;
    let head_len = usize::try_from(PREFIX_LEN as u64 + manifest_len).ok()?;
    let trailer_start = bytes.len().checked_sub(HASH_LEN + SIGNATURE_LEN)?;
    (head_len <= trailer_start).then(|| (&bytes[..head_len], &bytes[trailer_start..]))
}

/// Assembles and signs a bundle from an encoded manifest and a payload. No checks on their content: the writer
/// validates before it calls this, and tests call it (feature `testing`) to build hostile bundles.
pub(crate) fn seal(
    manifest: &[u8],
    payload: &[u8],
    key: &SigningKey,
) -> Result<Vec<u8>, BundleError> {
    let manifest_len =
        u32::try_from(manifest.len()).map_err(|_| BundleError::ManifestTooLarge {
            len: manifest.len(),
        })?;
    let payload_start = align_up((PREFIX_LEN + manifest.len()) as u64) as usize;
    let mut out = Vec::with_capacity(payload_start + payload.len() + HASH_LEN + SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&manifest_len.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(manifest);
    out.resize(payload_start, 0);
    out.extend_from_slice(payload);
    let hash: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&hash);
    out.extend_from_slice(&key.sign(&signed_message(&hash)));
    Ok(out)
}
