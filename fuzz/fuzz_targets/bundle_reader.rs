//! Fuzz the `.kbundle` reader, the boundary every model file crosses before a unit trusts it.
//!
//! The first input byte picks how the rest is used, so all of the reader gets fuzzed, including the checks a
//! forged file cannot reach because they come after the signature:
//! - 0: the bytes as a whole file;
//! - 1: xor-mutations of the committed golden bundle (a valid file), which must never be accepted unless the
//!   mutation changed nothing;
//! - otherwise: manifest bytes and payload, sealed and signed with the trusted test key (`testing::seal_raw`),
//!   which exercises the manifest decoder and the tensor-table checks.
//!
//! Invariants beyond "does not panic": an accepted bundle's tensor views have the lengths its table declares, and
//! the untrusted inspection of an accepted bundle reports the same manifest and hash.
#![no_main]

use kestrel_bundle::testing::seal_raw;
use kestrel_bundle::{inspect_untrusted, SigningKey, TrustedKeys, VerifiedBundle};
use libfuzzer_sys::fuzz_target;

const GOLDEN: &[u8] = include_bytes!("../../shared/bundle/tests/golden/sample.kbundle");
/// The seed the golden bundle was signed with (`shared/bundle/tests/common/mod.rs`).
const SEED: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = SigningKey::from_seed(SEED);
    let keys = TrustedKeys::new().with("fuzz", key.public_key());
    match mode {
        0 => {
            check(rest.to_vec(), &keys);
        }
        1 => {
            let mut bytes = GOLDEN.to_vec();
            // Pairs of (position, xor mask); a trailing odd byte truncates at that fraction of the file.
            for pair in rest.chunks(2) {
                match *pair {
                    [at, mask] => {
                        let i = usize::from(at) * bytes.len() / 256;
                        bytes[i] ^= mask;
                    }
                    [cut] => bytes.truncate(usize::from(cut) * bytes.len() / 256),
                    _ => unreachable!(),
                }
            }
            let unchanged = bytes == GOLDEN;
            let accepted = check(bytes, &keys);
            assert!(
                unchanged || !accepted,
                "a modified golden bundle was accepted"
            );
        }
        _ => {
            let Some((&split, body)) = rest.split_first() else {
                return;
            };
            let (manifest, payload) = body.split_at(usize::from(split).min(body.len()));
            let bytes =
                seal_raw(manifest, payload, &key).expect("a short manifest fits the length field");
            check(bytes, &keys);
        }
    }
});

/// Parses `bytes` both ways; returns whether the trusted parse accepted it.
fn check(bytes: Vec<u8>, keys: &TrustedKeys) -> bool {
    let inspected = inspect_untrusted(&bytes);
    let Ok(bundle) = VerifiedBundle::parse(bytes, keys) else {
        return false;
    };
    for t in &bundle.manifest().tensors {
        let view = bundle
            .tensor(&t.name)
            .expect("every table entry has a view");
        assert_eq!(view.len() as u64, t.len);
    }
    let inspected = inspected.expect("what parse accepts, inspection accepts");
    assert_eq!(&inspected.manifest, bundle.manifest());
    assert_eq!(&inspected.sha256, bundle.sha256());
    assert!(inspected.has_signature);
    true
}
