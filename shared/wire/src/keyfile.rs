//! The unit key as text: 64 hex digits (32 bytes), optionally surrounded by whitespace, in a key file both sides
//! read (`kestrel monitor --key-file`, the unit's `<state>/unit.key` or `unit.key_file`).
//!
//! Hex text rather than raw bytes so a key survives copy-paste, configuration management and `cat`. Errors say
//! what is wrong with the text without ever echoing it: the text is the secret.

use alloc::string::String;

use crate::auth::{UnitKey, KEY_LEN};

/// Number of hex digits in a key text.
pub const KEY_HEX_LEN: usize = KEY_LEN * 2;

/// Key text that is not 64 hex digits. Never contains the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyTextError {
    /// Wrong number of characters (after trimming whitespace).
    #[error("found {chars} characters, expected {KEY_HEX_LEN} hex digits ({KEY_LEN} bytes)")]
    Length {
        /// Characters found.
        chars: usize,
    },
    /// A character that is not a hex digit.
    #[error("not hex: character {at} is not a hex digit")]
    NotHex {
        /// 0-based position (after trimming).
        at: usize,
    },
}

/// Parse key text: [`KEY_HEX_LEN`] hex digits (either case), surrounding whitespace ignored.
pub fn parse_key_text(text: &str) -> Result<UnitKey, KeyTextError> {
    let digits = text.trim();
    let chars = digits.chars().count();
    if chars != KEY_HEX_LEN {
        return Err(KeyTextError::Length { chars });
    }
    let mut key = [0u8; KEY_LEN];
    // `chars == bytes` here unless a multi-byte character sneaked in; `nibble` refuses those by position.
    let bytes = digits.as_bytes();
    if bytes.len() != KEY_HEX_LEN {
        let at = digits
            .chars()
            .position(|c| !c.is_ascii_hexdigit())
            .unwrap_or(0);
        return Err(KeyTextError::NotHex { at });
    }
    for (i, out) in key.iter_mut().enumerate() {
        let hi = nibble(bytes[2 * i]).ok_or(KeyTextError::NotHex { at: 2 * i })?;
        let lo = nibble(bytes[2 * i + 1]).ok_or(KeyTextError::NotHex { at: 2 * i + 1 })?;
        *out = hi << 4 | lo;
    }
    Ok(UnitKey::from_bytes(key))
}

/// The key as key-file text: [`KEY_HEX_LEN`] lowercase hex digits and a newline.
pub fn key_text(key: &UnitKey) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(KEY_HEX_LEN + 1);
    for b in key.as_bytes() {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xF)] as char);
    }
    s.push('\n');
    s
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(feature = "std")]
pub use file::{read_key_file, KeyFileError};

#[cfg(feature = "std")]
mod file {
    use std::path::{Path, PathBuf};

    use super::{parse_key_text, KeyTextError, KEY_HEX_LEN};
    use crate::auth::{UnitKey, KEY_LEN};

    /// A key file that cannot be used.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum KeyFileError {
        /// The file could not be read.
        #[error("cannot read unit key file {}", path.display())]
        Read {
            /// The file.
            path: PathBuf,
            /// Why.
            #[source]
            source: std::io::Error,
        },
        /// The content is not a key.
        #[error("unit key file {} must hold {KEY_HEX_LEN} hex digits ({KEY_LEN} bytes)", path.display())]
        Format {
            /// The file.
            path: PathBuf,
            /// What is wrong with the text.
            #[source]
            source: KeyTextError,
        },
        /// Group or others may read the file: whoever can read a unit key can control that unit.
        #[error("unit key file {} is readable by group or others (mode {mode:03o}); run `chmod 600 {}`", path.display(), path.display())]
        Insecure {
            /// The file.
            path: PathBuf,
            /// Its permission bits.
            mode: u32,
        },
    }

    impl KeyFileError {
        /// The key file the error is about.
        pub fn path(&self) -> &Path {
            match self {
                KeyFileError::Read { path, .. }
                | KeyFileError::Format { path, .. }
                | KeyFileError::Insecure { path, .. } => path,
            }
        }
    }

    /// Read and parse a key file. On unix a file that grants group or others any permission is refused (the mode
    /// is read from the opened file, not looked up by path again).
    pub fn read_key_file(path: &Path) -> Result<UnitKey, KeyFileError> {
        use std::io::Read;
        let read_err = |source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Insecure {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let mut text = String::new();
        file.take(4096)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        parse_key_text(&text).map_err(|source| KeyFileError::Format {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    #[test]
    fn parses_hex_with_whitespace_in_either_case() {
        let hexkey = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let k = parse_key_text(&format!("  {hexkey}\n")).unwrap();
        assert_eq!(k.as_bytes()[1], 0x11);
        assert_eq!(k.as_bytes()[31], 0xff);
        assert_eq!(key_text(&k), format!("{}\n", hexkey.to_lowercase()));
        assert_eq!(
            parse_key_text(&key_text(&k)).unwrap().as_bytes(),
            k.as_bytes()
        );
    }

    #[test]
    fn refuses_short_and_non_hex_keys_without_echoing_them() {
        let e = parse_key_text("abcd").unwrap_err();
        assert_eq!(e, KeyTextError::Length { chars: 4 });
        assert!(e.to_string().contains("4 characters"), "{e}");
        let secretish = "zz".repeat(32);
        let e = parse_key_text(&secretish).unwrap_err();
        assert_eq!(e, KeyTextError::NotHex { at: 0 });
        let text = e.to_string();
        assert!(
            text.contains("not hex") && !text.contains(&secretish),
            "{text}"
        );
        // A multi-byte character: 64 characters but more bytes.
        let e = parse_key_text(&format!("é{}", "0".repeat(63))).unwrap_err();
        assert_eq!(e, KeyTextError::NotHex { at: 0 });
        let e = parse_key_text(&format!("{}g", "0".repeat(63))).unwrap_err();
        assert_eq!(e, KeyTextError::NotHex { at: 63 });
    }

    #[cfg(feature = "std")]
    #[test]
    fn key_file_errors_name_the_file_and_keep_the_cause() {
        use std::error::Error as _;
        let dir = std::env::temp_dir().join(format!("kestrel-wire-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("unit.key");
        let _ = std::fs::remove_file(&p);
        let e = read_key_file(&p).unwrap_err();
        assert!(matches!(e, KeyFileError::Read { .. }));
        assert!(e.to_string().contains("unit.key"), "{e}");
        assert!(e.source().is_some());
        std::fs::write(&p, "12").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = read_key_file(&p).unwrap_err();
            assert!(
                matches!(e, KeyFileError::Insecure { mode: 0o644, .. }),
                "{e}"
            );
            assert!(e.to_string().contains("chmod 600"), "{e}");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let e = read_key_file(&p).unwrap_err();
        assert!(
            e.to_string().contains("unit.key") && e.to_string().contains("64 hex digits"),
            "{e}"
        );
        assert_eq!(
            e.source().unwrap().to_string(),
            KeyTextError::Length { chars: 2 }.to_string()
        );
        std::fs::write(&p, format!(" {}\n", "0f".repeat(32))).unwrap();
        assert_eq!(read_key_file(&p).unwrap().as_bytes(), &[0x0f; 32]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
