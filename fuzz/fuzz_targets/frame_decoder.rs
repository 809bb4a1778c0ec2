//! Fuzz the frame decoder, the decode boundary every byte from a serial line or socket crosses.
//!
//! The input is split into pieces (sizes taken from the input itself) and pushed piecewise, so buffering across
//! `push` calls is exercised too. Invariants checked beyond "does not panic":
//! - every result is counted exactly once (frames + errors == results);
//! - nothing is ever buffered beyond the frame limit;
//! - every envelope that decodes re-encodes to a frame that decodes to the same bytes (the decoder accepts nothing
//!   the encoder could not have produced, up to non-canonical varints);
//! - mask payloads and the auth layer do not panic on whatever the decoder lets through.
#![no_main]

use kestrel_wire::{encode_frame, EdgeAuthenticator, FrameDecoder, Msg, UnitKey, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);
    let mut dec = FrameDecoder::new();
    let mut auth = EdgeAuthenticator::new(UnitKey::from_bytes([0x42; 32]), "fuzz");
    let mut results = 0u64;
    for chunk in body.chunks(piece) {
        for result in dec.push(chunk) {
            results += 1;
            let Ok(env) = result else { continue };
            let mut frame = Vec::new();
            encode_frame(&env, &mut frame).expect("a decoded envelope fits a frame");
            let again = FrameDecoder::new().push(&frame);
            let [Ok(back)] = again.as_slice() else {
                panic!("re-encoded frame did not decode: {again:?}")
            };
            assert_eq!(frame_of(back), frame_of(&env));
            if let Msg::Verdict(v) | Msg::Replayed(v) = &env.msg {
                if let Some(mask) = &v.mask {
                    let _ = mask.pixels();
                }
            }
            let _ = auth.open(&env);
        }
        assert!(dec.buffered() < MAX_FRAME_LEN);
    }
    let c = dec.counts();
    assert_eq!(c.frames + c.errors(), results);
});

fn frame_of(env: &kestrel_wire::Envelope) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(env, &mut v).unwrap();
    v
}
