//! Pre-shared unit key files: 64 hex digits (32 bytes), optionally surrounded by whitespace.
//!
//! Hex text rather than raw bytes so a key survives copy-paste, configuration management and `cat`; the unit reads
//! the same format (`unit.key_file` in its board profile).

use std::path::{Path, PathBuf};

use kestrel_wire::auth::KEY_LEN;
use kestrel_wire::UnitKey;

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read unit key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not 32 bytes of hex.
    #[error("unit key file {path}: {reason}; it must hold {} hex digits ({KEY_LEN} bytes)", KEY_LEN * 2)]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Read and parse a key file.
pub fn read_key_file(path: &Path) -> Result<UnitKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_key(&text).map_err(|reason| KeyFileError::Format {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parse key text (hex, surrounding whitespace ignored); the error says what is wrong without echoing the key.
pub fn parse_key(text: &str) -> Result<UnitKey, String> {
    let hexdigits = text.trim();
    if hexdigits.len() != KEY_LEN * 2 {
        return Err(format!("found {} characters", hexdigits.len()));
    }
    let bytes = hex::decode(hexdigits).map_err(|e| format!("not hex ({e})"))?;
    UnitKey::from_slice(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_with_whitespace() {
        let hexkey = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let k = parse_key(&format!("  {hexkey}\n")).unwrap();
        assert_eq!(k.as_bytes()[1], 0x11);
        assert_eq!(k.as_bytes()[31], 0xff);
    }

    #[test]
    fn refuses_short_and_non_hex_keys_without_echoing_them() {
        let e = parse_key("abcd").unwrap_err();
        assert!(e.contains("4 characters"), "{e}");
        let secretish = "zz".repeat(32);
        let e = parse_key(&secretish).unwrap_err();
        assert!(e.contains("not hex") && !e.contains(&secretish), "{e}");
    }

    #[test]
    fn key_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("unit.key");
        let e = read_key_file(&p).unwrap_err();
        assert!(e.to_string().contains("unit.key"), "{e}");
        std::fs::write(&p, "12").unwrap();
        let e = read_key_file(&p).unwrap_err();
        assert!(
            e.to_string().contains("unit.key") && e.to_string().contains("64 hex digits"),
            "{e}"
        );
    }
}
