//! Ed25519 keys and their files.
//!
//! - Signing key file: the 32-byte seed as 64 lowercase hex digits and a newline, mode 0600. It is created with
//!   `create_new` (never overwrites a key) and refused at use when group or others have any permission on it.
//! - Public key file: 64 hex digits and a newline. A unit trusts every `*.pub` file in its `<state>/trusted/`
//!   directory ([`TrustedKeys::from_dir`]); several files allow key rotation.
//!
//! Hex text rather than PEM/PKCS#8: the files are one line, diffable, and need no ASN.1 parser on the unit.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};

use crate::error::{BundleError, KeyProblem};

/// Longest key file accepted (64 hex digits, CRLF and some slack); anything longer is not a key file.
const MAX_KEY_FILE: u64 = 128;

/// An Ed25519 signing key (host side: `kestrel keygen`, `kestrel export`). Zeroised on drop; `Debug` hides it.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public {})", self.public_key())
    }
}

impl SigningKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self, BundleError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(BundleError::Random)?;
        let key = SigningKey::from_seed(seed);
        seed.fill(0);
        Ok(key)
    }

    /// The key for a 32-byte seed (fixed test keys; keys read from files).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Writes the key to a new file with mode 0600 (unix); fails if `path` exists, so a key is never overwritten.
    pub fn write_file(&self, path: &Path) -> Result<(), BundleError> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        write_key_text(path, options, &hex::encode(self.0.to_bytes()))
    }

    /// Reads a key written by [`write_file`](Self::write_file). On unix, refuses a file that group or others have
    /// any permission on ([`BundleError::InsecureKeyFile`] says to `chmod 600` it): a readable signing key lets
    /// anyone sign models for every unit that trusts it.
    pub fn read_file(path: &Path) -> Result<Self, BundleError> {
        let (file, _meta) = open_key_file(path, "open signing key")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Mode of the opened file (fstat), not of whatever the path names by now.
            let mode = _meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(BundleError::InsecureKeyFile {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let mut seed = read_key_bytes(file, path)?;
        let key = SigningKey::from_seed(seed);
        seed.fill(0);
        Ok(key)
    }
}

/// An Ed25519 public key (unit side: verifies bundles).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// 64 lowercase hex digits, the key file's content.
impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl PublicKey {
    /// Parses 64 hex digits; refuses bytes that are not a curve point and weak (small-order) keys, which would let
    /// one signature verify for many messages.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyProblem> {
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| KeyProblem::NotAKey)?;
        if key.is_weak() {
            return Err(KeyProblem::NotAKey);
        }
        Ok(PublicKey(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// First 8 bytes of SHA-256 of the key, in hex: a short name for logs and status messages.
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// Strict Ed25519 verification (rejects non-canonical signatures as well as wrong ones).
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).is_ok()
    }

    /// Writes the key as a new file (fails if `path` exists).
    pub fn write_file(&self, path: &Path) -> Result<(), BundleError> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        write_key_text(path, options, &self.to_string())
    }

    pub fn read_file(path: &Path) -> Result<Self, BundleError> {
        let (file, _) = open_key_file(path, "open public key")?;
        let bytes = read_key_bytes(file, path)?;
        PublicKey::from_bytes(&bytes).map_err(|problem| BundleError::KeyFile {
            path: path.to_owned(),
            problem,
        })
    }
}

/// A public key a unit trusts, with the name of the file it came from (for logs: "signed by `factory-2026`").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub name: String,
    pub key: PublicKey,
}

/// The public keys a unit accepts bundles from.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<TrustedKey>);

impl TrustedKeys {
    pub fn new() -> Self {
        TrustedKeys::default()
    }

    pub fn with(mut self, name: impl Into<String>, key: PublicKey) -> Self {
        self.0.push(TrustedKey {
            name: name.into(),
            key,
        });
        self
    }

    /// Every `*.pub` file in `dir` (other files are ignored), in file-name order; the key's name is the file stem.
    /// A malformed `.pub` file is an error rather than skipped, and so is a directory without any: a unit with no
    /// trusted key could never accept a model, which is better said at startup than at the first flash.
    pub fn from_dir(dir: &Path) -> Result<Self, BundleError> {
        let mut paths: Vec<PathBuf> = Vec::new();
        for entry in fs::read_dir(dir).map_err(BundleError::io("list trusted keys in", dir))? {
            let path = entry
                .map_err(BundleError::io("list trusted keys in", dir))?
                .path();
            if path.extension().is_some_and(|e| e == "pub") {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(BundleError::NoTrustedKeysIn {
                dir: dir.to_owned(),
            });
        }
        paths.sort();
        let mut keys = TrustedKeys::new();
        for path in paths {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            keys = keys.with(name, PublicKey::read_file(&path)?);
        }
        Ok(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TrustedKey> {
        self.0.iter()
    }
}

fn write_key_text(path: &Path, options: OpenOptions, hex_text: &str) -> Result<(), BundleError> {
    let mut file = options
        .open(path)
        .map_err(BundleError::io("create key file", path))?;
    file.write_all(format!("{hex_text}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(BundleError::io("write key file", path))
}

/// Opens a key file and checks that it is a regular file (a directory or device is a configuration mistake).
fn open_key_file(path: &Path, action: &'static str) -> Result<(File, fs::Metadata), BundleError> {
    let file = File::open(path).map_err(BundleError::io(action, path))?;
    let meta = file.metadata().map_err(BundleError::io(action, path))?;
    if !meta.is_file() {
        return Err(BundleError::KeyFile {
            path: path.to_owned(),
            problem: KeyProblem::NotAFile,
        });
    }
    Ok((file, meta))
}

/// Reads a one-line hex key file: exactly 64 hex digits, then an optional `\n` or `\r\n`.
fn read_key_bytes(file: File, path: &Path) -> Result<[u8; 32], BundleError> {
    let problem = |problem| BundleError::KeyFile {
        path: path.to_owned(),
        problem,
    };
    let meta = file
        .metadata()
        .map_err(BundleError::io("stat key file", path))?;
    if !meta.is_file() {
        return Err(problem(KeyProblem::NotAFile));
    }
    let mut text = Vec::new();
    file.take(MAX_KEY_FILE)
        .read_to_end(&mut text)
        .map_err(BundleError::io("read key file", path))?;
    let line = text
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(&text);
    let mut bytes = [0u8; 32];
    if line.len() != 64 {
        return Err(problem(KeyProblem::WrongLength { found: text.len() }));
    }
    hex::decode_to_slice(line, &mut bytes).map_err(|_| problem(KeyProblem::NotHex))?;
    text.fill(0);
    Ok(bytes)
}
