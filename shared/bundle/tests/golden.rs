//! The format must not drift silently: `tests/golden/sample.kbundle` is the fixture bundle (`common::sample`,
//! fixed key, deterministic Ed25519) as committed. The test compares a fresh write with it byte for byte and
//! parses the committed file. After a deliberate format change (bump `FORMAT_VERSION`), regenerate it with
//! `KESTREL_BUNDLE_BLESS=1 cargo test -p kestrel-bundle --test golden` and commit the new file.

mod common;

use std::path::PathBuf;

use common::{info, sample, trusted};
use kestrel_bundle::{VerifiedBundle, FORMAT_VERSION};

#[test]
fn the_written_bytes_match_the_committed_golden_bundle() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sample.kbundle");
    let fresh = sample();
    if std::env::var_os("KESTREL_BUNDLE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let golden = std::fs::read(&path).unwrap();
    assert_eq!(u16::from_le_bytes([golden[8], golden[9]]), FORMAT_VERSION);
    let first_difference = golden.iter().zip(&fresh).position(|(a, b)| a != b);
    assert!(
        golden == fresh,
        "the writer's output changed (golden {} bytes, fresh {} bytes, first difference at {first_difference:?}); \
         if deliberate, bump FORMAT_VERSION and rerun with KESTREL_BUNDLE_BLESS=1",
        golden.len(),
        fresh.len()
    );
    let b = VerifiedBundle::parse(golden, &trusted()).unwrap();
    assert_eq!(b.manifest().model, info());
}
