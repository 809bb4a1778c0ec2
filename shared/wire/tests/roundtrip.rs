//! Property tests: every message type survives postcard, and RLE masks survive encode/decode.
//!
//! Values come from the `Arbitrary` derives behind the `testing` feature. Floats may be NaN, so equality is checked
//! on the re-encoded bytes (bit-exact) as well as on values where `x == x`.

use kestrel_wire::mask::{rle_decode, rle_encode};
use kestrel_wire::*;
use proptest::prelude::*;

fn assert_round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + core::fmt::Debug,
{
    let bytes = postcard::to_stdvec(value).unwrap();
    let (back, rest) = postcard::take_from_bytes::<T>(&bytes).unwrap();
    assert!(rest.is_empty(), "trailing bytes after {value:?}");
    assert_eq!(postcard::to_stdvec(&back).unwrap(), bytes);
    #[allow(clippy::eq_op)]
    if value == value {
        assert_eq!(&back, value);
    }
}

macro_rules! round_trips {
    ($($name:ident: $ty:ty),* $(,)?) => {
        proptest! {
            $(
                #[test]
                fn $name(value in any::<$ty>()) {
                    assert_round_trip(&value);
                }
            )*
        }
    };
}

round_trips! {
    envelope: Envelope,
    msg: Msg,
    hello: Hello,
    auth_challenge: AuthChallenge,
    auth_response: AuthResponse,
    auth_confirm: AuthConfirm,
    subscribe: Subscribe,
    set_threshold: SetThreshold,
    bundle_begin: BundleBegin,
    bundle_chunk: BundleChunk,
    activate: Activate,
    upload_status: UploadStatus,
    bundle_probe: BundleProbe,
    replay: Replay,
    verdict: Verdict,
    outcome: Outcome,
    stats: Stats,
    event: Event,
    event_kind: EventKind,
    ack: Ack,
    nack: Nack,
    nack_code: NackCode,
    fault_code: FaultCode,
    replay_begin: ReplayBegin,
    replay_end: ReplayEnd,
    model_ref: ModelRef,
    mask: Mask,
}

/// Pixel maps that look like real masks (long runs) as well as noise.
fn pixels() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        prop::collection::vec((1usize..400, any::<u8>()), 0..12).prop_map(|runs| runs
            .into_iter()
            .flat_map(|(n, v)| std::iter::repeat_n(v, n))
            .collect()),
    ]
}

proptest! {
    #[test]
    fn rle_round_trips(px in pixels()) {
        let enc = rle_encode(&px);
        prop_assert_eq!(rle_decode(&enc, px.len()).unwrap(), px.clone());
        // Never worse than 2 bytes per pixel; every count in 1..=255.
        prop_assert!(enc.len() <= 2 * px.len());
        prop_assert!(enc.chunks(2).all(|p| p[0] >= 1));
        // Canonical: re-encoding the decoded pixels gives the same bytes.
        prop_assert_eq!(rle_encode(&rle_decode(&enc, px.len()).unwrap()), enc);
    }

    #[test]
    fn rle_decode_never_panics_and_respects_the_declared_length(data in prop::collection::vec(any::<u8>(), 0..64), len in 0usize..2000) {
        if let Ok(px) = rle_decode(&data, len) {
            prop_assert_eq!(px.len(), len);
        }
    }

    #[test]
    fn masks_round_trip_through_every_encoding(w in 0u16..40, h in 0u16..40, seed in any::<u8>()) {
        let n = usize::from(w) * usize::from(h);
        let px: Vec<u8> = (0..n).map(|i| if (i / 7) % 3 == 0 { seed } else { (i % 5) as u8 }).collect();
        for mask in [Mask::raw(w, h, px.clone()).unwrap(), Mask::rle(w, h, &px).unwrap(), Mask::compact(w, h, &px).unwrap()] {
            prop_assert_eq!(mask.pixels().unwrap(), px.clone());
            assert_round_trip(&mask);
        }
    }
}
