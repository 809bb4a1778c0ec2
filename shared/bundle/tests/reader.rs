//! The reader's checks, section by section: every truncation, every flipped byte, hostile lengths, keys, and the
//! tensor-table rules (bundles with bad tables are sealed with a valid signature so they reach those checks).

mod common;

use common::{info, key, other_key, sample, sections, trusted, with_lengths};
use kestrel_bundle::testing::seal_raw;
use kestrel_bundle::{
    inspect_untrusted, BundleError, BundleWriter, Dtype, FirmwareVersion, Manifest, Section,
    SelfTest, TableProblem, TensorEntry, TrustedKeys, VerifiedBundle, ALIGN, FORMAT_VERSION,
    PREFIX_LEN,
};

fn parse(bytes: &[u8]) -> Result<VerifiedBundle, BundleError> {
    VerifiedBundle::parse(bytes.to_vec(), &trusted())
}

#[test]
fn round_trip_gives_back_manifest_and_tensor_bytes() {
    let bytes = sample();
    let b = parse(&bytes).unwrap();
    assert_eq!(b.manifest().model, info());
    assert_eq!(b.signer().name, "test");
    assert_eq!(b.signer().key, key().public_key());
    assert_eq!(b.as_bytes(), &bytes[..]);
    let bias: Vec<f32> = b
        .tensor("head.bias")
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(bias, [0.5, -1.0, 2.25]);
    assert_eq!(
        b.tensor("head.weight").unwrap(),
        &[1, 0xfe, 3, 0xfc, 0x7f, 0x80]
    );
    assert_eq!(
        b.entry("head.weight").unwrap().scales.as_deref(),
        Some("head.weight.scales")
    );
    assert_eq!(b.entry("head.weight.scales").unwrap().shape, [3]);
    assert_eq!(b.tensor("bank.index").unwrap(), &[1, 0, 0, 0, 7, 0, 0, 0]);
    assert_eq!(b.tensor("selftest.image").unwrap().len(), 24);
    assert_eq!(b.tensor("absent"), None);
    // Each tensor starts on a 64-byte boundary of the file, not only of the payload.
    let payload_start = sections(&bytes)[3].1.start;
    for t in &b.manifest().tensors {
        assert_eq!(
            (payload_start as u64 + t.offset) % ALIGN as u64,
            0,
            "{}",
            t.name
        );
    }
    let hashed = &bytes[..sections(&bytes)[4].1.start];
    assert_eq!(b.sha256_hex(), hex_sha256(hashed));
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn writing_is_deterministic() {
    assert_eq!(sample(), sample());
}

#[test]
fn truncation_at_every_byte_names_the_cut_section() {
    let bytes = sample();
    let secs = sections(&bytes);
    for cut in 0..bytes.len() {
        let err = parse(&bytes[..cut])
            .err()
            .unwrap_or_else(|| panic!("cut at {cut} parsed"));
        // The section the cut falls into (a cut exactly at a boundary lacks all of the next non-empty section).
        let (expected, range) = secs.iter().find(|(_, r)| r.end > cut).unwrap();
        match err {
            BundleError::Truncated {
                section,
                need,
                have,
            } => {
                assert_eq!(section, *expected, "cut at {cut}");
                assert_eq!(have, cut as u64);
                let want = if section == Section::Prefix {
                    PREFIX_LEN
                } else {
                    range.end
                };
                assert_eq!(need, want as u64, "cut at {cut}");
            }
            other => panic!("cut at {cut}: {other}"),
        }
    }
}

#[test]
fn appended_bytes_are_a_length_mismatch() {
    let mut bytes = sample();
    let len = bytes.len() as u64;
    bytes.push(0);
    match parse(&bytes).unwrap_err() {
        BundleError::LengthMismatch { declared, actual } => {
            assert_eq!((declared, actual), (len, len + 1))
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_flipped_byte_anywhere_gives_the_error_of_its_section() {
    let bytes = sample();
    let secs = sections(&bytes);
    assert!(!secs[2].1.is_empty(), "fixture must have manifest padding");
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0xff;
        let err = parse(&bad)
            .err()
            .unwrap_or_else(|| panic!("flip at {i} parsed"));
        let section = secs.iter().find(|(_, r)| r.contains(&i)).unwrap().0;
        let ok = match (section, i, &err) {
            (Section::Prefix, 0..8, BundleError::BadMagic { .. }) => true,
            (
                Section::Prefix,
                8..10,
                BundleError::UnsupportedVersion {
                    supported: FORMAT_VERSION,
                    ..
                },
            ) => true,
            (Section::Prefix, 10..12, BundleError::UnsupportedFlags { .. }) => true,
            // A different manifest length moves every later section; a small change may keep the payload start
            // and then shows up as non-zero padding or as a hash mismatch (the prefix is hashed).
            (
                Section::Prefix,
                12..16,
                BundleError::Truncated { .. }
                | BundleError::LengthMismatch { .. }
                | BundleError::NonZeroPadding { .. }
                | BundleError::HashMismatch { .. },
            ) => true,
            (
                Section::Prefix,
                16..24,
                BundleError::Truncated { .. } | BundleError::LengthMismatch { .. },
            ) => true,
            (
                Section::Manifest | Section::Payload | Section::Hash,
                _,
                BundleError::HashMismatch { .. },
            ) => true,
            (Section::Padding, _, BundleError::NonZeroPadding { offset }) => *offset == i as u64,
            (Section::Signature, _, BundleError::BadSignature { tried: 1 }) => true,
            _ => false,
        };
        assert!(ok, "flip at {i} in the {section}: {err}");
    }
}

#[test]
fn huge_declared_lengths_are_refused_by_arithmetic_not_allocation() {
    // A 64-byte file: the prefix and the padding an empty manifest needs.
    let mut tiny = sample()[..PREFIX_LEN].to_vec();
    tiny.resize(64, 0);
    let m_need = PREFIX_LEN as u64 + u64::from(u32::MAX);
    let cases = [
        (u32::MAX, 0, Section::Manifest, m_need),
        (u32::MAX, u64::MAX, Section::Manifest, m_need),
        (0, u64::MAX, Section::Payload, u64::MAX),
        (0, u64::MAX - 64, Section::Payload, u64::MAX),
        (0, 1 << 40, Section::Payload, 64 + (1 << 40)),
    ];
    for (m, p, want_section, want_need) in cases {
        match parse(&with_lengths(tiny.clone(), m, p)).unwrap_err() {
            BundleError::Truncated {
                section,
                need,
                have,
            } => {
                assert_eq!(
                    (section, need, have),
                    (want_section, want_need, 64),
                    "{m} {p}"
                )
            }
            other => panic!("{m} {p}: {other}"),
        }
    }
}

#[test]
fn wrong_key_unsigned_and_no_keys_are_refused() {
    let bytes = sample();
    let other = TrustedKeys::new().with("other", other_key().public_key());
    assert!(matches!(
        VerifiedBundle::parse(bytes.clone(), &other).unwrap_err(),
        BundleError::BadSignature { tried: 1 }
    ));
    assert!(matches!(
        VerifiedBundle::parse(bytes.clone(), &TrustedKeys::new()).unwrap_err(),
        BundleError::NoTrustedKeys
    ));

    let mut unsigned = bytes.clone();
    let n = unsigned.len();
    unsigned[n - 64..].fill(0);
    let err = parse(&unsigned).unwrap_err();
    assert!(matches!(err, BundleError::Unsigned), "{err}");
    assert!(err.to_string().contains("unsigned"));

    // Several trusted keys: the one that signed is reported.
    let both = TrustedKeys::new()
        .with("other", other_key().public_key())
        .with("test", key().public_key());
    assert_eq!(
        VerifiedBundle::parse(bytes, &both).unwrap().signer().name,
        "test"
    );
}

#[test]
fn a_signature_over_the_hash_without_the_domain_tag_is_refused() {
    // Same hash, signed as a bare message: proves the domain separation is part of what is verified.
    let bytes = sample();
    let secs = sections(&bytes);
    let hash = &bytes[secs[4].1.clone()];
    let bare =
        ed25519_dalek::Signer::sign(&ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]), hash);
    let mut bad = bytes.clone();
    bad[secs[5].1.clone()].copy_from_slice(&bare.to_bytes());
    assert!(matches!(
        parse(&bad).unwrap_err(),
        BundleError::BadSignature { .. }
    ));
}

#[test]
fn another_format_version_says_which_it_supports() {
    let mut bytes = sample();
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    let err = parse(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ),
        "{err}"
    );
}

fn sealed(manifest: &Manifest, payload: &[u8]) -> Vec<u8> {
    seal_raw(&postcard::to_allocvec(manifest).unwrap(), payload, &key()).unwrap()
}

fn entry(name: &str, dtype: Dtype, shape: &[u64], offset: u64) -> TensorEntry {
    let len = TensorEntry::expected_len(dtype, shape).unwrap();
    TensorEntry {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        offset,
        len,
        scales: None,
    }
}

fn table_error(tensors: Vec<TensorEntry>, payload: &[u8]) -> (String, TableProblem) {
    let mut model = info();
    model.self_test = None;
    match parse(&sealed(&Manifest { model, tensors }, payload)).unwrap_err() {
        BundleError::TensorTable { name, problem } => (name, problem),
        other => panic!("{other}"),
    }
}

#[test]
fn tensor_table_violations_are_named() {
    let payload = vec![0u8; 256];
    let a = entry("a", Dtype::F32, &[16], 0); // bytes 0..64
    let problem = |tensors: Vec<TensorEntry>| table_error(tensors, &payload);

    assert_eq!(
        problem(vec![
            entry("a", Dtype::F32, &[32], 0),
            entry("b", Dtype::U8, &[128], 64),
            entry("c", Dtype::U8, &[64], 192)
        ]),
        ("b".into(), TableProblem::Overlap { other: "a".into() })
    );
    assert_eq!(
        problem(vec![a.clone(), entry("b", Dtype::U8, &[256], 64)]),
        (
            "b".into(),
            TableProblem::OutOfBounds {
                offset: 64,
                len: 256,
                payload_len: 256
            }
        )
    );
    let mut huge = entry("b", Dtype::U8, &[1], u64::MAX - 63);
    huge.len = 64;
    assert_eq!(
        problem(vec![a.clone(), huge]).1,
        TableProblem::OutOfBounds {
            offset: u64::MAX - 63,
            len: 64,
            payload_len: 256
        }
    );
    assert_eq!(
        problem(vec![a.clone(), entry("b", Dtype::U8, &[8], 65)]),
        ("b".into(), TableProblem::Misaligned { offset: 65 })
    );
    let mut short = entry("b", Dtype::F32, &[48], 64);
    short.len = 190;
    assert_eq!(
        problem(vec![a.clone(), short]),
        (
            "b".into(),
            TableProblem::LenMismatch {
                declared: 190,
                expected: 192
            }
        )
    );
    assert_eq!(
        problem(vec![
            a.clone(),
            TensorEntry {
                shape: vec![u64::MAX, 2],
                ..entry("b", Dtype::U8, &[0], 64)
            }
        ]),
        ("b".into(), TableProblem::ShapeOverflow)
    );
    assert_eq!(
        problem(vec![a.clone(), a.clone()]),
        ("a".into(), TableProblem::Duplicate)
    );
    assert_eq!(
        problem(vec![entry("", Dtype::U8, &[256], 0)]),
        ("".into(), TableProblem::EmptyName)
    );
    assert_eq!(
        problem(vec![a.clone(), entry("b", Dtype::U8, &[64], 128)]),
        ("b".into(), TableProblem::TrailingPayload { extra: 64 })
    );
    let mut gap = payload.clone();
    gap[100] = 1;
    assert_eq!(
        table_error(vec![a.clone(), entry("b", Dtype::U8, &[128], 128)], &gap),
        ("b".into(), TableProblem::NonZeroGap { offset: 100 })
    );
    assert_eq!(
        table_error(vec![], &[0; 3]),
        ("(none)".into(), TableProblem::TrailingPayload { extra: 3 })
    );
    // The same shapes, laid out correctly, pass: the failures above are the violations, not the fixture.
    let mut model = info();
    model.self_test = None;
    let good = vec![
        a,
        entry("b", Dtype::U8, &[64], 64),
        entry("c", Dtype::U8, &[128], 128),
    ];
    parse(&sealed(
        &Manifest {
            model: model.clone(),
            tensors: good,
        },
        &payload,
    ))
    .unwrap();
    parse(&sealed(
        &Manifest {
            model,
            tensors: vec![],
        },
        &[],
    ))
    .unwrap();
}

#[test]
fn scales_must_exist_and_fit_the_output_channels() {
    let payload = vec![0u8; 80];
    let with_scales = |dtype, shape: &[u64], scales: &str| TensorEntry {
        scales: Some(scales.into()),
        ..entry("w", dtype, shape, 0)
    };
    let s = entry("s", Dtype::F32, &[4], 64);
    let check = |w: TensorEntry, s: TensorEntry| table_error(vec![w, s], &payload);
    assert_eq!(
        check(with_scales(Dtype::I8, &[4, 2], "nope"), s.clone()),
        (
            "w".into(),
            TableProblem::ScalesMissing {
                scales: "nope".into()
            }
        )
    );
    assert_eq!(
        check(with_scales(Dtype::I8, &[3, 2], "s"), s.clone()),
        (
            "w".into(),
            TableProblem::ScalesShape {
                scales: "s".into(),
                channels: 3
            }
        )
    );
    assert_eq!(
        check(
            with_scales(Dtype::I8, &[4, 2], "s"),
            entry("s", Dtype::F16, &[8], 64)
        )
        .1,
        TableProblem::ScalesShape {
            scales: "s".into(),
            channels: 4
        }
    );
    assert_eq!(
        check(
            with_scales(Dtype::I8, &[4, 2], "s"),
            entry("s", Dtype::F32, &[2, 2], 64)
        )
        .1,
        TableProblem::ScalesShape {
            scales: "s".into(),
            channels: 4
        }
    );
    assert_eq!(
        check(with_scales(Dtype::U8, &[4, 2], "s"), s.clone()).1,
        TableProblem::ScalesOnNonInt8
    );
    assert_eq!(
        check(with_scales(Dtype::I8, &[], "s"), s.clone()).1,
        TableProblem::ScalesWithoutChannels
    );
    // And the consistent one parses.
    let mut model = info();
    model.self_test = None;
    let tensors = vec![with_scales(Dtype::I8, &[4, 2], "s"), s];
    parse(&sealed(&Manifest { model, tensors }, &payload)).unwrap();
}

#[test]
fn the_self_test_image_must_be_an_rgb_u8_tensor() {
    let payload = vec![0u8; 12];
    let run = |t: TensorEntry| {
        let mut model = info();
        model.self_test = Some(SelfTest {
            image: "img".into(),
            expected_score: 0.1,
            tolerance: 0.0,
        });
        parse(&sealed(
            &Manifest {
                model,
                tensors: vec![t],
            },
            &payload,
        ))
    };
    let err = |r: Result<VerifiedBundle, BundleError>| match r.unwrap_err() {
        BundleError::TensorTable { name, problem } => (name, problem),
        other => panic!("{other}"),
    };
    assert_eq!(
        err(run(entry("other", Dtype::U8, &[2, 2, 3], 0))),
        ("img".into(), TableProblem::SelfTestMissing)
    );
    assert_eq!(
        err(run(entry("img", Dtype::U8, &[4, 3], 0))).1,
        TableProblem::SelfTestShape
    );
    assert_eq!(
        err(run(entry("img", Dtype::U8, &[1, 3, 4], 0))).1,
        TableProblem::SelfTestShape
    );
    assert_eq!(
        err(run(entry("img", Dtype::F32, &[1, 1, 3], 0))).1,
        TableProblem::SelfTestShape
    );
    run(entry("img", Dtype::U8, &[2, 2, 3], 0)).unwrap();
}

#[test]
fn invalid_model_fields_are_named() {
    type Spoil = fn(&mut kestrel_bundle::ModelInfo);
    let cases: [(Spoil, &str); 6] = [
        (|m| m.name.clear(), "name"),
        (|m| m.input_size = 0, "input_size"),
        (|m| m.threshold = f32::NAN, "threshold"),
        (
            |m| std::mem::swap(&mut m.firmware.min, &mut m.firmware.max),
            "firmware",
        ),
        (
            |m| m.self_test.as_mut().unwrap().expected_score = f32::INFINITY,
            "self_test.expected_score",
        ),
        (
            |m| m.self_test.as_mut().unwrap().tolerance = -1.0,
            "self_test.tolerance",
        ),
    ];
    for (spoil, want) in cases {
        let mut model = info();
        spoil(&mut model);
        let image = entry("selftest.image", Dtype::U8, &[1, 1, 3], 0);
        match parse(&sealed(
            &Manifest {
                model: model.clone(),
                tensors: vec![image],
            },
            &[0; 3],
        ))
        .unwrap_err()
        {
            BundleError::ManifestField { field, .. } => assert_eq!(field, want),
            other => panic!("{want}: {other}"),
        }
        // The writer applies the same rules, so it cannot produce what a unit would refuse.
        let writer = BundleWriter::new(model)
            .add_tensor("selftest.image", Dtype::U8, &[1, 1, 3], &[0; 3])
            .unwrap();
        assert!(
            matches!(writer.finish(&key()), Err(BundleError::ManifestField { field, .. }) if field == want)
        );
    }
}

#[test]
fn a_manifest_that_is_not_postcard_or_has_trailing_bytes_is_refused() {
    let err = parse(&seal_raw(&[0xff; 9], &[], &key()).unwrap()).unwrap_err();
    assert!(matches!(err, BundleError::Manifest(_)), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "postcard error kept as source"
    );

    // A vector count far beyond the bytes present: postcard stops at the end of the manifest slice.
    let mut m = postcard::to_allocvec(&info()).unwrap();
    m.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(matches!(
        parse(&seal_raw(&m, &[], &key()).unwrap()).unwrap_err(),
        BundleError::Manifest(_)
    ));

    let mut model = info();
    model.self_test = None;
    let mut m = postcard::to_allocvec(&Manifest {
        model,
        tensors: vec![],
    })
    .unwrap();
    m.extend_from_slice(&[0, 0]);
    assert!(matches!(
        parse(&seal_raw(&m, &[], &key()).unwrap()).unwrap_err(),
        BundleError::ManifestTrailingBytes { extra: 2 }
    ));
}

#[test]
fn the_writer_refuses_bad_tensors_early() {
    let w = || BundleWriter::new(info());
    assert!(matches!(
        w().add_tensor("x", Dtype::F32, &[3], &[0; 11]).unwrap_err(),
        BundleError::TensorTable {
            problem: TableProblem::LenMismatch {
                declared: 11,
                expected: 12
            },
            ..
        }
    ));
    assert!(matches!(
        w().add_tensor("x", Dtype::U8, &[u64::MAX, 3], &[])
            .unwrap_err(),
        BundleError::TensorTable {
            problem: TableProblem::ShapeOverflow,
            ..
        }
    ));
    let twice = w()
        .add_tensor("x", Dtype::U8, &[1], &[1])
        .unwrap()
        .add_tensor("x", Dtype::U8, &[1], &[1]);
    assert!(matches!(
        twice.unwrap_err(),
        BundleError::TensorTable {
            problem: TableProblem::Duplicate,
            ..
        }
    ));
    // The self-test names an image that was never added.
    assert!(matches!(
        w().finish(&key()).unwrap_err(),
        BundleError::TensorTable {
            problem: TableProblem::SelfTestMissing,
            ..
        }
    ));
    // Int8 with the wrong number of scales.
    let bad = w().add_int8_tensor("w", &[2, 1], &[1, 2], &[0.5]).unwrap();
    assert!(matches!(
        bad.finish(&key()).unwrap_err(),
        BundleError::TensorTable {
            problem: TableProblem::ScalesShape { channels: 2, .. },
            ..
        }
    ));
}

#[test]
fn compatibility_checks() {
    let b = parse(&sample()).unwrap();
    let m = &b.manifest().model;
    for ok in ["0.1.0", "0.2.7", "0.3.9"] {
        m.check_firmware(ok.parse().unwrap()).unwrap();
    }
    for bad in ["0.0.9", "0.3.10", "1.0.0"] {
        let err = m.check_firmware(bad.parse().unwrap()).unwrap_err();
        assert!(
            matches!(err, BundleError::FirmwareIncompatible { .. }),
            "{bad}: {err}"
        );
        assert_eq!(
            err.to_string(),
            format!("bundle needs firmware 0.1.0 to 0.3.9, this unit runs {bad}")
        );
    }
    m.check_input_size(64).unwrap();
    assert!(matches!(
        m.check_input_size(224).unwrap_err(),
        BundleError::InputSizeMismatch {
            bundle: 64,
            unit: 224
        }
    ));
    m.check_not_older(3).unwrap();
    m.check_not_older(0).unwrap();
    assert!(matches!(
        m.check_not_older(4).unwrap_err(),
        BundleError::Downgrade {
            bundle: 3,
            active: 4
        }
    ));
    let test = m.self_test.as_ref().unwrap();
    assert!(test.accepts(0.2505) && test.accepts(0.2495));
    assert!(!test.accepts(0.252) && !test.accepts(f32::NAN));
}

#[test]
fn firmware_versions_parse_and_order() {
    assert_eq!(
        "1.20.300".parse::<FirmwareVersion>().unwrap(),
        FirmwareVersion::new(1, 20, 300)
    );
    for bad in ["1.2", "1.2.3.4", "1.2.x", "1.2.65536", "", "1..2"] {
        assert!(bad.parse::<FirmwareVersion>().is_err(), "{bad}");
    }
    assert!(FirmwareVersion::new(0, 10, 0) > FirmwareVersion::new(0, 9, 99));
    assert_eq!(FirmwareVersion::new(2, 0, 1).to_string(), "2.0.1");
}

#[test]
fn inspection_skips_only_the_signature() {
    let bytes = sample();
    let mut unsigned = bytes.clone();
    let n = unsigned.len();
    unsigned[n - 64..].fill(0);
    let seen = inspect_untrusted(&unsigned).unwrap();
    assert!(!seen.has_signature);
    assert_eq!(seen.manifest.model, info());
    assert!(inspect_untrusted(&bytes).unwrap().has_signature);
    assert_eq!(
        inspect_untrusted(&bytes).unwrap().sha256,
        *parse(&bytes).unwrap().sha256()
    );
    // Corruption is still caught.
    let mut corrupt = bytes.clone();
    corrupt[PREFIX_LEN + 1] ^= 1;
    assert!(matches!(
        inspect_untrusted(&corrupt).unwrap_err(),
        BundleError::HashMismatch { .. }
    ));
}

#[test]
fn parse_file_refuses_oversized_files_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.kbundle");
    let bytes = sample();
    std::fs::write(&path, &bytes).unwrap();
    let len = bytes.len() as u64;
    let b = VerifiedBundle::parse_file(&path, len, &trusted()).unwrap();
    assert_eq!(b.as_bytes(), &bytes[..]);
    assert!(matches!(
        VerifiedBundle::parse_file(&path, len - 1, &trusted()).unwrap_err(),
        BundleError::TooLarge { len: l, max } if l == len && max == len - 1
    ));
    let missing = dir.path().join("absent.kbundle");
    let err = VerifiedBundle::parse_file(&missing, len, &trusted()).unwrap_err();
    assert!(
        matches!(&err, BundleError::Io { path, .. } if *path == missing),
        "{err}"
    );
}
