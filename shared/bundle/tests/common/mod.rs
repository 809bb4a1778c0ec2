//! Shared fixtures: a fixed key, a small bundle with every kind of tensor, and the byte ranges of its sections.
#![allow(dead_code)] // each test binary uses a different subset

use std::ops::Range;

use kestrel_bundle::{
    BundleWriter, Dtype, FirmwareRange, FirmwareVersion, ModelInfo, Quantisation, Section,
    SelfTest, SigningKey, TrustedKeys, ALIGN, HASH_LEN, PREFIX_LEN, SIGNATURE_LEN,
};

pub fn key() -> SigningKey {
    SigningKey::from_seed([0x5a; 32])
}

pub fn other_key() -> SigningKey {
    SigningKey::from_seed([0xa5; 32])
}

pub fn trusted() -> TrustedKeys {
    TrustedKeys::new().with("test", key().public_key())
}

pub fn info() -> ModelInfo {
    ModelInfo {
        name: "tile-line-1".into(),
        category: "magnetic_tile".into(),
        created_unix_s: 1_767_225_600,
        writer: "kestrel 0.1.0".into(),
        model_version: 3,
        firmware: FirmwareRange {
            min: FirmwareVersion::new(0, 1, 0),
            max: FirmwareVersion::new(0, 3, 9),
        },
        input_size: 64,
        threshold: 0.375,
        quantisation: Quantisation::Int8,
        spec: "[backbone]\narch = \"resnet18_narrow\"\n[detector]\nkind = \"padim\"\n".into(),
        self_test: Some(SelfTest {
            image: "selftest.image".into(),
            expected_score: 0.25,
            tolerance: 1e-3,
        }),
    }
}

/// A small bundle: an f32 bias (odd length, so the next tensor needs alignment padding), an int8 weight with
/// scales, an f16 tensor, a u32 index tensor and the 4×2 RGB self-test image.
pub fn sample() -> Vec<u8> {
    let image: Vec<u8> = (0u8..24).map(|i| i.wrapping_mul(37)).collect();
    BundleWriter::new(info())
        .add_f32_tensor("head.bias", &[3], &[0.5, -1.0, 2.25])
        .unwrap()
        .add_int8_tensor(
            "head.weight",
            &[3, 2],
            &[1, -2, 3, -4, 127, -128],
            &[0.01, 0.02, 0.03],
        )
        .unwrap()
        .add_tensor(
            "bank.f16",
            Dtype::F16,
            &[2, 2],
            &[0x00, 0x3c, 0x00, 0x40, 0x00, 0xc0, 0x00, 0x00],
        )
        .unwrap()
        .add_tensor("bank.index", Dtype::U32, &[2], &[1, 0, 0, 0, 7, 0, 0, 0])
        .unwrap()
        .add_tensor("selftest.image", Dtype::U8, &[4, 2, 3], &image)
        .unwrap()
        .finish(&key())
        .unwrap()
}

/// The sections of a well-formed bundle as byte ranges, read from its prefix.
pub fn sections(bytes: &[u8]) -> Vec<(Section, Range<usize>)> {
    let manifest_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let payload_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let manifest_end = PREFIX_LEN + manifest_len;
    let payload_start = manifest_end.next_multiple_of(ALIGN);
    let payload_end = payload_start + payload_len;
    let hash_end = payload_end + HASH_LEN;
    vec![
        (Section::Prefix, 0..PREFIX_LEN),
        (Section::Manifest, PREFIX_LEN..manifest_end),
        (Section::Padding, manifest_end..payload_start),
        (Section::Payload, payload_start..payload_end),
        (Section::Hash, payload_end..hash_end),
        (Section::Signature, hash_end..hash_end + SIGNATURE_LEN),
    ]
}

/// Replaces the prefix's declared lengths (no hash fix-up needed: lengths are checked before the hash).
pub fn with_lengths(mut bytes: Vec<u8>, manifest_len: u32, payload_len: u64) -> Vec<u8> {
    bytes[12..16].copy_from_slice(&manifest_len.to_le_bytes());
    bytes[16..24].copy_from_slice(&payload_len.to_le_bytes());
    bytes
}
