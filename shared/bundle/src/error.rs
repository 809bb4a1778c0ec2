//! Every way reading, writing or trusting a bundle can fail, as one typed enum.
//!
//! Each variant names what was wrong with enough numbers to act on (which section, how many bytes were needed, which
//! tensor, which file); the caller decides whether it is a log line, an `Event` to the host or a CLI exit code.

use std::fmt;
use std::path::PathBuf;

use crate::manifest::FirmwareVersion;

/// The consecutive sections of a `.kbundle` file, in file order (see `docs/bundle.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// Magic, format version, flags and the two declared lengths (24 bytes).
    Prefix,
    /// The postcard-encoded [`Manifest`](crate::Manifest).
    Manifest,
    /// Zero bytes from the end of the manifest to the next 64-byte boundary.
    Padding,
    /// Tensor bytes.
    Payload,
    /// SHA-256 over everything before it.
    Hash,
    /// Ed25519 signature over the domain-separated hash.
    Signature,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Prefix => "prefix",
            Section::Manifest => "manifest",
            Section::Padding => "padding",
            Section::Payload => "payload",
            Section::Hash => "hash",
            Section::Signature => "signature",
        })
    }
}

/// What is wrong with one entry of the tensor table (or the self-test that names a tensor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableProblem {
    #[error("the name is empty")]
    EmptyName,
    #[error("the name appears more than once in the table")]
    Duplicate,
    #[error("offset {offset} is not a multiple of 64")]
    Misaligned { offset: u64 },
    #[error("bytes {offset}..{offset}+{len} lie outside the {payload_len}-byte payload")]
    OutOfBounds {
        offset: u64,
        len: u64,
        payload_len: u64,
    },
    #[error("the element count of its shape times the dtype size overflows u64")]
    ShapeOverflow,
    #[error("declared length {declared} bytes, but its shape and dtype make {expected}")]
    LenMismatch { declared: u64, expected: u64 },
    #[error("its bytes overlap tensor `{other}`")]
    Overlap { other: String },
    #[error("payload byte {offset} before it (alignment padding) is not zero")]
    NonZeroGap { offset: u64 },
    #[error("the payload goes on for {extra} bytes after the last tensor")]
    TrailingPayload { extra: u64 },
    #[error("only i8 tensors carry scales")]
    ScalesOnNonInt8,
    #[error("an i8 tensor with scales needs at least one dimension (the output channels)")]
    ScalesWithoutChannels,
    #[error("its scales tensor `{scales}` is not in the table")]
    ScalesMissing { scales: String },
    #[error("its scales tensor `{scales}` must be f32 of shape [{channels}]")]
    ScalesShape { scales: String, channels: u64 },
    #[error("the self-test image tensor is not in the table")]
    SelfTestMissing,
    #[error("the self-test image must be u8 of shape [h, w, 3]")]
    SelfTestShape,
}

/// A key file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// `found` counts bytes read, at most 128: nothing longer is read from a key file.
    #[error("expected 64 hex digits (a 32-byte key) and a newline, found {found} bytes")]
    WrongLength { found: usize },
    #[error("it is not hexadecimal")]
    NotHex,
    #[error("it is not a valid Ed25519 public key (not a curve point, or a weak small-order key)")]
    NotAKey,
    #[error("it is not a regular file")]
    NotAFile,
}

/// Everything that can go wrong with a bundle, its keys or its compatibility with a unit.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is truncated in its {section}: the declared layout needs {need} bytes, the file has {have}")]
    Truncated {
        section: Section,
        need: u64,
        have: u64,
    },
    #[error(
        "not a kestrel bundle: the file starts with {found:02x?}, expected the magic `KSTRLBND`"
    )]
    BadMagic { found: [u8; 8] },
    #[error("bundle format version {found} is not supported (this reader knows {supported}); update the firmware")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("bundle sets flags {flags:#06x} this reader does not know; update the firmware")]
    UnsupportedFlags { flags: u16 },
    #[error("bundle is {actual} bytes but its prefix declares {declared}: bytes were appended or the lengths are wrong")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("bundle file is {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: u64, max: u64 },
    #[error("manifest of {len} bytes does not fit the 32-bit length field")]
    ManifestTooLarge { len: usize },
    #[error("padding byte at file offset {offset} is not zero")]
    NonZeroPadding { offset: u64 },
    #[error(
        "bundle hash mismatch: stored {}, computed {}; the file is corrupt",
        hex::encode(stored),
        hex::encode(computed)
    )]
    HashMismatch {
        stored: [u8; 32],
        computed: [u8; 32],
    },
    #[error("no trusted public keys to check the signature against")]
    NoTrustedKeys,
    #[error("bundle is unsigned (all-zero signature); sign it with `kestrel export --key`")]
    Unsigned,
    #[error("bundle signature does not verify against any of the {tried} trusted public keys")]
    BadSignature { tried: usize },
    #[error("cannot decode the bundle manifest")]
    Manifest(#[source] postcard::Error),
    #[error("the manifest encoding is followed by {extra} unexpected bytes")]
    ManifestTrailingBytes { extra: usize },
    #[error("manifest field `{field}` is invalid: {problem}")]
    ManifestField {
        field: &'static str,
        problem: &'static str,
    },
    #[error("tensor `{name}`: {problem}")]
    TensorTable { name: String, problem: TableProblem },
    #[error("bundle needs firmware {min} to {max}, this unit runs {firmware}")]
    FirmwareIncompatible {
        firmware: FirmwareVersion,
        min: FirmwareVersion,
        max: FirmwareVersion,
    },
    #[error(
        "bundle model takes {bundle}×{bundle} input, this unit is configured for {unit}×{unit}"
    )]
    InputSizeMismatch { bundle: u32, unit: u32 },
    #[error("bundle model version {bundle} is older than the active model version {active} (anti-rollback)")]
    Downgrade { bundle: u64, active: u64 },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {}: {problem}", path.display())]
    KeyFile { path: PathBuf, problem: KeyProblem },
    #[error(
        "signing key {} has mode {mode:04o}, which lets group or others access it; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },
    #[error("no trusted public keys (*.pub) in {}; copy the host's public key there", dir.display())]
    NoTrustedKeysIn { dir: PathBuf },
    #[error("cannot get randomness from the operating system for a new key")]
    Random(#[source] getrandom::Error),
}

impl BundleError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BundleError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn table(name: &str, problem: TableProblem) -> Self {
        BundleError::TensorTable {
            name: name.to_owned(),
            problem,
        }
    }
}
