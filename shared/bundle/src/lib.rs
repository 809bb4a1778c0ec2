//! The `.kbundle` container: one file that carries a fitted model from the host to inspection units.
//!
//! A bundle is a fixed 24-byte prefix (magic, format version, flags, manifest and payload lengths), a postcard
//! [`Manifest`], zero padding to 64 bytes, the tensor payload (each tensor 64-byte aligned), and a trailer of
//! SHA-256 over everything before it plus an Ed25519 signature over that hash. `docs/bundle.md` has the byte
//! layout, the order of the reader's checks and the key-file rules.
//!
//! Units read bundles before they trust them, so this crate is small on purpose: no ML runtime, no async, nothing
//! that interprets the model. [`VerifiedBundle::parse`] is the only way to a usable bundle and it refuses anything
//! unsigned, signed by an untrusted key, or inconsistent, with a [`BundleError`] that names the problem.
//!
//! ```
//! use kestrel_bundle::*;
//!
//! let key = SigningKey::from_seed([7; 32]);
//! let info = ModelInfo {
//!     name: "bottle-line-3".into(),
//!     category: "bottle".into(),
//!     created_unix_s: 1_767_225_600,
//!     writer: "kestrel 0.1.0".into(),
//!     model_version: 4,
//!     firmware: FirmwareRange { min: FirmwareVersion::new(0, 1, 0), max: FirmwareVersion::new(0, 9, 0) },
//!     input_size: 224,
//!     threshold: 0.42,
//!     quantisation: Quantisation::Int8,
//!     spec: "[backbone]\narch = \"resnet18\"\n".into(),
//!     self_test: None,
//! };
//! let bytes = BundleWriter::new(info)
//!     .add_f32_tensor("head.bias", &[2], &[0.5, -1.0])?
//!     .add_int8_tensor("head.weight", &[2, 3], &[1, -2, 3, 4, 5, -6], &[0.01, 0.02])?
//!     .finish(&key)?;
//!
//! let trusted = TrustedKeys::new().with("factory", key.public_key());
//! let bundle = VerifiedBundle::parse(bytes, &trusted)?;
//! assert_eq!(bundle.signer().name, "factory");
//! assert_eq!(bundle.manifest().tensor("head.weight").unwrap().scales.as_deref(), Some("head.weight.scales"));
//! assert_eq!(bundle.tensor("head.bias"), Some(&[0, 0, 0, 0x3f, 0, 0, 0x80, 0xbf][..]));
//! bundle.manifest().model.check_firmware(FirmwareVersion::new(0, 2, 0))?;
//! # Ok::<(), BundleError>(())
//! ```

mod container;
mod error;
mod keys;
mod manifest;
mod writer;

pub use container::{
    inspect_untrusted, probe, probe_parts, ProbedBundle, UntrustedInspection, VerifiedBundle,
};
pub use error::{BundleError, KeyProblem, Section, TableProblem};
pub use keys::{PublicKey, SigningKey, TrustedKey, TrustedKeys};
pub use manifest::{
    Dtype, FirmwareRange, FirmwareVersion, Manifest, ModelInfo, ParseFirmwareVersionError,
    Quantisation, SelfTest, TensorEntry,
};
pub use writer::BundleWriter;

/// First 8 bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"KSTRLBND";
/// The container format this crate reads and writes. A reader refuses any other.
pub const FORMAT_VERSION: u16 = 1;
/// Magic (8) + format version (2) + flags (2) + manifest length (4) + payload length (8).
pub const PREFIX_LEN: usize = 24;
/// Alignment of the payload start in the file and of every tensor offset within the payload.
pub const ALIGN: usize = 64;
/// SHA-256 digest length.
pub const HASH_LEN: usize = 32;
/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;
/// Prefix of the signed message: `SIGNING_DOMAIN || sha256`.
pub const SIGNING_DOMAIN: &[u8] = b"kestrel-bundle-v1";

/// Building blocks for tests and fuzzing (feature `testing`): sign arbitrary bytes as a bundle, so hostile
/// manifests and tables reach the checks behind the signature.
#[cfg(feature = "testing")]
pub mod testing {
    use crate::{BundleError, SigningKey};

    /// Assembles prefix, `manifest` (any bytes, not necessarily a valid manifest), padding, `payload`, hash and a
    /// valid signature by `key`.
    pub fn seal_raw(
        manifest: &[u8],
        payload: &[u8],
        key: &SigningKey,
    ) -> Result<Vec<u8>, BundleError> {
        crate::container::seal(manifest, payload, key)
    }
}
