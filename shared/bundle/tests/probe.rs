//! `probe`: the dry-run check a unit makes from a bundle's head and trailer alone, before any upload.

mod common;

use common::{info, key, other_key, sample, trusted};
use kestrel_bundle::{probe, probe_parts, BundleError, Section, TrustedKeys};

#[test]
fn a_good_bundle_probes_to_its_signed_model_information() {
    let bytes = sample();
    let (head, trailer) = probe_parts(&bytes).unwrap();
    let p = probe(head, trailer, bytes.len() as u64, &trusted()).unwrap();
    assert_eq!(p.model, info());
    assert_eq!(p.signer.name, "test");
    assert_eq!(&p.sha256[..], &trailer[..32]);
}

#[test]
fn probe_refuses_what_the_full_reader_refuses_about_identity() {
    let bytes = sample();
    let n = bytes.len() as u64;
    let (head, trailer) = probe_parts(&bytes).unwrap();

    let other = TrustedKeys::new().with("other", other_key().public_key());
    assert!(matches!(
        probe(head, trailer, n, &other).unwrap_err(),
        BundleError::BadSignature { tried: 1 }
    ));
    assert!(matches!(
        probe(head, trailer, n, &TrustedKeys::new()).unwrap_err(),
        BundleError::NoTrustedKeys
    ));
    let mut unsigned = trailer.to_vec();
    unsigned[32..].fill(0);
    assert!(matches!(
        probe(head, &unsigned, n, &trusted()).unwrap_err(),
        BundleError::Unsigned
    ));
    // A hash that the signature does not cover.
    let mut other_hash = trailer.to_vec();
    other_hash[0] ^= 1;
    assert!(matches!(
        probe(head, &other_hash, n, &trusted()).unwrap_err(),
        BundleError::BadSignature { .. }
    ));
    // Size that disagrees with the prefix, a cut head, extra head bytes, a short trailer.
    assert!(matches!(
        probe(head, trailer, n + 1, &trusted()).unwrap_err(),
        BundleError::LengthMismatch { .. }
    ));
    assert!(matches!(
        probe(&head[..head.len() - 1], trailer, n, &trusted()).unwrap_err(),
        BundleError::Truncated {
            section: Section::Manifest,
            ..
        }
    ));
    let mut long = head.to_vec();
    long.push(0);
    assert!(matches!(
        probe(&long, trailer, n, &trusted()).unwrap_err(),
        BundleError::LengthMismatch { .. }
    ));
    assert!(matches!(
        probe(head, &trailer[1..], n, &trusted()).unwrap_err(),
        BundleError::Truncated {
            section: Section::Signature,
            ..
        }
    ));
    assert!(matches!(
        probe(&head[..10], trailer, n, &trusted()).unwrap_err(),
        BundleError::Truncated {
            section: Section::Prefix,
            ..
        }
    ));
    let mut magic = head.to_vec();
    magic[0] ^= 0xff;
    assert!(matches!(
        probe(&magic, trailer, n, &trusted()).unwrap_err(),
        BundleError::BadMagic { .. }
    ));
    assert!(probe_parts(&bytes[..20]).is_none());
    let _ = key();
}

#[test]
fn probe_never_panics_on_arbitrary_input() {
    let bytes = sample();
    let n = bytes.len();
    // Every cut of the head and trailer, every size around the real one.
    for cut in 0..n.min(600) {
        let _ = probe(&bytes[..cut], &bytes[n - 96..], n as u64, &trusted());
        let _ = probe(&bytes[..cut], &bytes[cut..], cut as u64, &trusted());
        let _ = probe_parts(&bytes[..cut]);
    }
    for size in [0, 1, u64::MAX, n as u64 - 1] {
        let (h, t) = probe_parts(&bytes).unwrap();
        let _ = probe(h, t, size, &trusted());
    }
}
