//! Property tests: the reader never panics (arbitrary bytes, mutated bundles, arbitrary signed manifests and
//! tables), and whatever the writer accepts reads back identically.

mod common;

use common::{info, key, sample, trusted};
use kestrel_bundle::testing::seal_raw;
use kestrel_bundle::{
    inspect_untrusted, BundleWriter, Dtype, Manifest, TensorEntry, VerifiedBundle,
};
use proptest::prelude::*;

fn dtype() -> impl Strategy<Value = Dtype> {
    prop_oneof![
        Just(Dtype::F32),
        Just(Dtype::F16),
        Just(Dtype::I8),
        Just(Dtype::U32),
        Just(Dtype::U8)
    ]
}

/// Mostly small values (so tables are sometimes valid) with extremes mixed in.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..200, 1 => Just(u64::MAX), 1 => any::<u64>(), 1 => (0u64..4).prop_map(|k| k * 64)]
}

fn entry() -> impl Strategy<Value = TensorEntry> {
    let name = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just(String::new()),
        "[a-z.]{1,6}"
    ];
    let scales = proptest::option::of(prop_oneof![Just("a".to_string()), Just("b".to_string())]);
    (
        name,
        dtype(),
        proptest::collection::vec(size(), 0..4),
        size(),
        size(),
        scales,
    )
        .prop_map(|(name, dtype, shape, offset, len, scales)| TensorEntry {
            name,
            dtype,
            shape,
            offset,
            len,
            scales,
        })
}

fn check_no_panic(bytes: Vec<u8>) {
    let _ = inspect_untrusted(&bytes);
    if let Ok(b) = VerifiedBundle::parse(bytes, &trusted()) {
        // Every view the table promises must be in bounds.
        for t in &b.manifest().tensors {
            assert_eq!(b.tensor(&t.name).unwrap().len() as u64, t.len);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_no_panic(bytes);
    }

    #[test]
    fn mutated_bundles_never_panic_and_never_pass(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = sample();
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        // Any change to a signed bundle must be refused (a flip pair can cancel out only on the same byte with the
        // same mask, which changes nothing; skip that case).
        let changed = bytes != sample();
        let _ = inspect_untrusted(&bytes);
        let result = VerifiedBundle::parse(bytes, &trusted());
        prop_assert!(!changed || result.is_err());
    }

    #[test]
    fn signed_arbitrary_tables_never_panic(
        tensors in proptest::collection::vec(entry(), 0..5),
        payload in proptest::collection::vec(prop_oneof![8 => Just(0u8), 1 => any::<u8>()], 0..300),
    ) {
        let mut model = info();
        model.self_test = None;
        let manifest = postcard::to_allocvec(&Manifest { model, tensors }).unwrap();
        check_no_panic(seal_raw(&manifest, &payload, &key()).unwrap());
    }

    #[test]
    fn signed_arbitrary_manifest_bytes_never_panic(
        manifest in proptest::collection::vec(any::<u8>(), 0..300),
        payload in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        check_no_panic(seal_raw(&manifest, &payload, &key()).unwrap());
    }

    #[test]
    fn what_the_writer_accepts_reads_back(
        tensors in proptest::collection::vec(
            (dtype(), proptest::collection::vec(0u64..5, 0..3)).prop_flat_map(|(dtype, shape)| {
                let len = TensorEntry::expected_len(dtype, &shape).unwrap() as usize;
                (Just(dtype), Just(shape), proptest::collection::vec(any::<u8>(), len))
            }),
            0..6,
        ),
    ) {
        let mut model = info();
        model.self_test = None;
        let mut w = BundleWriter::new(model.clone());
        for (i, (dtype, shape, bytes)) in tensors.iter().enumerate() {
            w = w.add_tensor(&format!("t{i}"), *dtype, shape, bytes).unwrap();
        }
        let b = VerifiedBundle::parse(w.finish(&key()).unwrap(), &trusted()).unwrap();
        prop_assert_eq!(&b.manifest().model, &model);
        prop_assert_eq!(b.manifest().tensors.len(), tensors.len());
        for (i, (dtype, shape, bytes)) in tensors.iter().enumerate() {
            let e = b.entry(&format!("t{i}")).unwrap();
            prop_assert_eq!((e.dtype, &e.shape), (*dtype, shape));
            prop_assert_eq!(b.tensor(&e.name).unwrap(), &bytes[..]);
        }
    }
}
