//! The pre-shared unit key: where it comes from, and creating one on first start.
//!
//! Order: `--key-file`, else the profile's `unit.key_file`, else `<state>/unit.key`. Only that last, default
//! location is created when missing (32 random bytes, hex, mode 0600), so a fresh clone's `sim.toml` starts without
//! setup while a configured key file that is missing is an error (a typo must not silently make a new key that no
//! host knows). Hosts authenticate with the same file (`kestrel monitor --key-file`); its format and parser are
//! kestrel-wire's ([`kestrel_wire::keyfile`]), shared with the host.

use std::io::Write;
use std::path::{Path, PathBuf};

use kestrel_wire::{key_text, read_key_file, UnitKey};

use super::EdgeError;

/// File name of the default key in the state directory.
pub const DEFAULT_KEY_FILE: &str = "unit.key";

/// Load the key from `explicit`, or from (or into) `<state>/unit.key`.
pub fn resolve(explicit: Option<&Path>, state: &Path) -> Result<(UnitKey, PathBuf), EdgeError> {
    if let Some(p) = explicit {
        return Ok((read_key_file(p)?, p.to_path_buf()));
    }
    let p = state.join(DEFAULT_KEY_FILE);
    if p.exists() {
        return Ok((read_key_file(&p)?, p));
    }
    let key = UnitKey::generate().map_err(|source| EdgeError::KeyGenerate { source })?;
    create(&p, &key).map_err(|source| EdgeError::KeyCreate {
        path: p.clone(),
        source,
    })?;
    tracing::warn!(path = %p.display(), "created a new unit key; give this file to hosts (kestrel monitor --key-file)");
    Ok((key, p))
}

/// Write a new key file readable by its owner only; fails if the file exists.
fn create(p: &Path, key: &UnitKey) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(key_text(key).as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_is_created_once_then_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, pa) = resolve(None, tmp.path()).unwrap();
        let (b, pb) = resolve(None, tmp.path()).unwrap();
        assert_eq!(pa, pb);
        assert_eq!(a.as_bytes(), b.as_bytes());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&pa).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn explicit_key_must_exist_and_be_64_hex_digits() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("k");
        assert!(resolve(Some(&missing), tmp.path())
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
        std::fs::write(&missing, "abcd\n").unwrap();
        // Group/others may read it (the default umask): refused with the fix.
        let e = resolve(Some(&missing), tmp.path()).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(
            &missing,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let e = resolve(Some(&missing), tmp.path()).unwrap_err().to_string();
        assert!(e.contains("32 bytes") && e.contains("64 hex digits"), "{e}");
        std::fs::write(&missing, format!("  {}\n", "0f".repeat(32))).unwrap();
        assert_eq!(
            resolve(Some(&missing), tmp.path()).unwrap().0.as_bytes(),
            &[0x0f; 32]
        );
    }

    #[test]
    fn an_uncreatable_default_key_is_a_key_error_with_its_cause() {
        let tmp = tempfile::tempdir().unwrap();
        let e = resolve(None, &tmp.path().join("no-such-dir")).unwrap_err();
        assert!(matches!(e, EdgeError::KeyCreate { .. }), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.exit_code(), kestrel_wire::exit::USAGE);
    }
}
