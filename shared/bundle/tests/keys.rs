//! Key files: formats, the 0600 rule, and the trusted-key directory of a unit.

mod common;

use std::fs;
use std::path::Path;

use common::{key, other_key, sample};
use kestrel_bundle::{BundleError, KeyProblem, PublicKey, SigningKey, TrustedKeys, VerifiedBundle};

#[test]
fn signing_key_file_round_trips_with_mode_0600_and_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.key");
    let k = SigningKey::generate().unwrap();
    k.write_file(&path).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), 65);
    assert!(text.ends_with('\n') && text[..64].bytes().all(|b| b.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(
        SigningKey::read_file(&path).unwrap().public_key(),
        k.public_key()
    );
    let err = other_key().write_file(&path).unwrap_err();
    assert!(
        matches!(&err, BundleError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err}"
    );
    assert_eq!(
        SigningKey::read_file(&path).unwrap().public_key(),
        k.public_key(),
        "old key intact"
    );
    assert_ne!(SigningKey::generate().unwrap().public_key(), k.public_key());
    assert!(
        !format!("{k:?}").contains(&text[..64]),
        "Debug must not print the secret"
    );
}

#[cfg(unix)]
#[test]
fn a_signing_key_readable_by_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.key");
    key().write_file(&path).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o610, 0o601] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = SigningKey::read_file(&path).unwrap_err();
        assert!(
            matches!(err, BundleError::InsecureKeyFile { mode: m, .. } if m == mode),
            "{mode:o}: {err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    SigningKey::read_file(&path).unwrap();
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn malformed_key_files_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let hex64 = "ab".repeat(32);
    let cases = [
        (hex64.clone(), None),
        (format!("{hex64}\r\n"), None),
        (
            format!("{hex64}\n\n"),
            Some(KeyProblem::WrongLength { found: 66 }),
        ),
        (
            hex64[..62].to_string(),
            Some(KeyProblem::WrongLength { found: 62 }),
        ),
        ("zz".repeat(32), Some(KeyProblem::NotHex)),
        (
            "a".repeat(1000),
            Some(KeyProblem::WrongLength { found: 128 }),
        ),
    ];
    for (text, want) in cases {
        write(&path, &text);
        match (SigningKey::read_file(&path), want) {
            (Ok(_), None) => {}
            (Err(BundleError::KeyFile { problem, path: p }), Some(want)) => {
                assert_eq!(problem, want, "{text:?}");
                assert_eq!(p, path);
            }
            (other, want) => panic!("{text:?}: {other:?}, wanted {want:?}"),
        }
    }
    // A directory is not a key file.
    let err = SigningKey::read_file(dir.path());
    assert!(
        matches!(
            err,
            Err(BundleError::KeyFile {
                problem: KeyProblem::NotAFile,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn public_keys_round_trip_and_weak_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.pub");
    let public = key().public_key();
    public.write_file(&path).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), format!("{public}\n"));
    assert_eq!(PublicKey::read_file(&path).unwrap(), public);
    assert_eq!(public.fingerprint().len(), 16);
    assert_ne!(public.fingerprint(), other_key().public_key().fingerprint());
    // The identity point (small order) would accept forged signatures: refused.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(PublicKey::from_bytes(&identity), Err(KeyProblem::NotAKey));
    let weak = dir.path().join("weak.pub");
    write(&weak, &hex::encode(identity));
    assert!(matches!(
        PublicKey::read_file(&weak).unwrap_err(),
        BundleError::KeyFile {
            problem: KeyProblem::NotAKey,
            ..
        }
    ));
}

#[test]
fn a_units_trusted_dir_holds_its_pub_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = TrustedKeys::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, BundleError::NoTrustedKeysIn { dir: d } if d == dir.path()),
        "{err}"
    );

    other_key()
        .public_key()
        .write_file(&dir.path().join("b-old.pub"))
        .unwrap();
    key()
        .public_key()
        .write_file(&dir.path().join("a-factory.pub"))
        .unwrap();
    write(&dir.path().join("README"), "not a key");
    write(&dir.path().join("notes.pub.bak"), "not a key either");
    let keys = TrustedKeys::from_dir(dir.path()).unwrap();
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["a-factory", "b-old"]);
    let bundle = VerifiedBundle::parse(sample(), &keys).unwrap();
    assert_eq!(bundle.signer().name, "a-factory");

    write(&dir.path().join("c-broken.pub"), "0123");
    let err = TrustedKeys::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, BundleError::KeyFile { path, .. } if path.ends_with("c-broken.pub")),
        "{err}"
    );
    let err = TrustedKeys::from_dir(&dir.path().join("absent")).unwrap_err();
    assert!(matches!(err, BundleError::Io { .. }), "{err}");
}
