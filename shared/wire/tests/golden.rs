//! Golden bytes: the exact postcard encoding of one sample of every message, and of a few whole frames.
//!
//! These pin the wire format independently of the schema hash: a change that keeps the schema but changes the bytes
//! (a serde attribute, a postcard upgrade) fails here. The bytes were recorded once from this code (run the test,
//! copy the `got` array from the failure message) and checked by hand against the postcard wire-format spec for the
//! first few messages. Updating them means the protocol changed: bump `PROTO_VERSION`.

use kestrel_wire::*;

fn model() -> ModelRef {
    ModelRef {
        name: "bottle-r18".into(),
        sha256: [0xAB; 32],
        version: 7,
    }
}

fn verdict() -> Verdict {
    Verdict {
        seq: 1_000_000,
        frame_id: 42,
        t_capture_us: 1_767_225_600_000_000,
        latency_us: 12_345,
        score: 0.75,
        pass: false,
        mask: Some(Mask::rle(4, 2, &[0, 0, 0, 0, 9, 9, 9, 0]).unwrap()),
        outcome: kestrel_wire::Outcome::Inspected,
    }
}

/// One sample per `Msg` variant, in variant order.
fn samples() -> Vec<(Msg, &'static [u8])> {
    vec![
        (
            Msg::Hello(Hello {
                proto_version: 1,
                schema_hash: [1, 2, 3, 4, 5, 6, 7, 8],
                role: Role::Edge,
                unit_id: "line3-cam1".into(),
                board: "orin-nano".into(),
                fw_version: "0.1.0".into(),
                active_model: Some(model()),
            }),
            &[
                7, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 1, 10, 108, 105, 110, 101, 51, 45, 99, 97, 109,
                49, 9, 111, 114, 105, 110, 45, 110, 97, 110, 111, 5, 48, 46, 49, 46, 48, 1, 10, 98,
                111, 116, 116, 108, 101, 45, 114, 49, 56, 171, 171, 171, 171, 171, 171, 171, 171,
                171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171,
                171, 171, 171, 171, 171, 171, 171, 171, 7, 0,
            ],
        ),
        (
            Msg::AuthChallenge(AuthChallenge { nonce: [0x11; 32] }),
            &[
                7, 1, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17,
                17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 0,
            ],
        ),
        (
            Msg::AuthResponse(AuthResponse {
                nonce: [0x22; 32],
                proof: [0x33; 32],
            }),
            &[
                7, 2, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34,
                34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 34, 51, 51, 51, 51, 51, 51, 51, 51,
                51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51,
                51, 51, 51, 0,
            ],
        ),
        (
            Msg::AuthConfirm(AuthConfirm { proof: [0x44; 32] }),
            &[
                7, 3, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68,
                68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 68, 0,
            ],
        ),
        (
            Msg::Subscribe(Subscribe {
                masks_every: 10,
                min_score: 0.5,
            }),
            &[7, 4, 10, 0, 0, 0, 63, 0],
        ),
        (
            Msg::SetThreshold(SetThreshold { threshold: 1.25 }),
            &[7, 5, 0, 0, 160, 63, 0],
        ),
        (Msg::SoftTrigger, &[7, 6, 0]),
        (
            Msg::BundleBegin(BundleBegin {
                size: 300_000,
                sha256: [0x55; 32],
            }),
            &[
                7, 7, 224, 167, 18, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85,
                85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 85, 0,
            ],
        ),
        (
            Msg::BundleChunk(BundleChunk {
                offset: 16_384,
                bytes: vec![0, 1, 2, 0xFF],
            }),
            &[7, 8, 128, 128, 1, 4, 0, 1, 2, 255, 0],
        ),
        (Msg::BundleCommit, &[7, 9, 0]),
        (
            Msg::Activate(Activate {
                sha256: [0x66; 32],
                allow_downgrade: true,
            }),
            &[
                7, 10, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102,
                102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102, 102,
                102, 1, 0,
            ],
        ),
        (Msg::Rollback, &[7, 11, 0]),
        (Msg::Status, &[7, 12, 0]),
        (
            Msg::Replay(Replay { from_seq: 999_000 }),
            &[7, 13, 216, 252, 60, 0],
        ),
        (
            Msg::Verdict(verdict()),
            &[
                7, 14, 192, 132, 61, 42, 128, 128, 129, 177, 132, 233, 145, 3, 185, 96, 0, 0, 64,
                63, 0, 1, 4, 2, 1, 6, 4, 0, 3, 9, 1, 0, 0, 0,
            ],
        ),
        (
            Msg::Stats(Stats {
                frames: 100_000,
                passes: 99_000,
                rejects: 990,
                dropped: 10,
                latency_p50_us: 8_000,
                latency_p99_us: 21_000,
                uptime_s: 86_400,
                missed_by_client: 3,
                link_errors: 1,
                model: Some(model()),
                previous_model: None,
                late: 4,
                uninspected: 2,
            }),
            &[
                7, 15, 160, 141, 6, 184, 133, 6, 222, 7, 10, 192, 62, 136, 164, 1, 128, 163, 5, 3,
                1, 1, 10, 98, 111, 116, 116, 108, 101, 45, 114, 49, 56, 171, 171, 171, 171, 171,
                171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171,
                171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 7, 0, 4, 2, 0,
            ],
        ),
        (
            Msg::Event(Event {
                t_us: 1_767_225_600_000_000,
                kind: EventKind::Fault {
                    code: FaultCode::CameraTimeout,
                    detail: "no frame in 2 s".into(),
                },
            }),
            &[
                7, 16, 128, 128, 129, 177, 132, 233, 145, 3, 0, 0, 15, 110, 111, 32, 102, 114, 97,
                109, 101, 32, 105, 110, 32, 50, 32, 115, 0,
            ],
        ),
        (Msg::Ack(Ack { re: 17 }), &[7, 17, 17, 0]),
        (
            Msg::Nack(Nack {
                re: 18,
                code: NackCode::BundleSignature,
                detail: "untrusted key".into(),
            }),
            &[
                7, 18, 18, 12, 13, 117, 110, 116, 114, 117, 115, 116, 101, 100, 32, 107, 101, 121,
                0,
            ],
        ),
        (
            Msg::ReplayBegin(ReplayBegin {
                re: 19,
                first_seq: 999_100,
                end_seq: 1_000_001,
            }),
            &[7, 19, 19, 188, 253, 60, 193, 132, 61, 0],
        ),
        (
            Msg::Replayed(Verdict {
                mask: None,
                ..verdict()
            }),
            &[
                7, 20, 192, 132, 61, 42, 128, 128, 129, 177, 132, 233, 145, 3, 185, 96, 0, 0, 64,
                63, 0, 0, 0, 0,
            ],
        ),
        (
            Msg::ReplayEnd(ReplayEnd { re: 19, sent: 901 }),
            &[7, 21, 19, 133, 7, 0],
        ),
        (
            Msg::UploadStatus(UploadStatus {
                re: 20,
                received: 65_536,
            }),
            &[7, 22, 20, 128, 128, 4, 0],
        ),
        (
            Msg::BundleProbe(BundleProbe {
                head: vec![b'K', b'S', 0, 1],
                trailer: vec![9; 3],
                size: 1_000_000,
                allow_downgrade: false,
            }),
            &[7, 23, 4, 75, 83, 0, 1, 3, 9, 9, 9, 192, 132, 61, 0, 0],
        ),
    ]
}

/// Index of every `Msg` variant. Exhaustive on purpose: a new variant does not compile until it gets a sample here.
fn variant_index(msg: &Msg) -> usize {
    match msg {
        Msg::Hello(_) => 0,
        Msg::AuthChallenge(_) => 1,
        Msg::AuthResponse(_) => 2,
        Msg::AuthConfirm(_) => 3,
        Msg::Subscribe(_) => 4,
        Msg::SetThreshold(_) => 5,
        Msg::SoftTrigger => 6,
        Msg::BundleBegin(_) => 7,
        Msg::BundleChunk(_) => 8,
        Msg::BundleCommit => 9,
        Msg::Activate(_) => 10,
        Msg::Rollback => 11,
        Msg::Status => 12,
        Msg::Replay(_) => 13,
        Msg::Verdict(_) => 14,
        Msg::Stats(_) => 15,
        Msg::Event(_) => 16,
        Msg::Ack(_) => 17,
        Msg::Nack(_) => 18,
        Msg::ReplayBegin(_) => 19,
        Msg::Replayed(_) => 20,
        Msg::ReplayEnd(_) => 21,
        Msg::UploadStatus(_) => 22,
        Msg::BundleProbe(_) => 23,
    }
}
const MSG_VARIANTS: usize = 24;

/// Compare every case, then fail once listing all mismatches in paste-ready form.
fn check_all(cases: Vec<(String, Vec<u8>, &[u8])>) {
    let mut bad = String::new();
    for (name, got, want) in &cases {
        if got.as_slice() != *want {
            bad.push_str(&format!("{name}:\n  got  &{got:?}\n  want &{want:?}\n"));
        }
    }
    assert!(
        bad.is_empty(),
        "golden bytes differ (the wire format changed; bump PROTO_VERSION):\n{bad}"
    );
}

#[test]
fn every_message_has_a_golden_sample() {
    let mut seen = [false; MSG_VARIANTS];
    for (i, (msg, _)) in samples().iter().enumerate() {
        assert_eq!(variant_index(msg), i, "samples must be in variant order");
        seen[i] = true;
    }
    assert!(
        seen.iter().all(|&s| s),
        "every Msg variant needs a golden sample"
    );
}

#[test]
fn message_bytes() {
    let cases = samples()
        .into_iter()
        .map(|(msg, want)| {
            let env = Envelope::new(7, msg);
            let got = postcard::to_stdvec(&env).unwrap();
            // Decoding the golden bytes gives the sample back.
            if got.as_slice() == want {
                assert_eq!(postcard::from_bytes::<Envelope>(want).unwrap(), env);
            }
            (env.msg.name().to_string(), got, want)
        })
        .collect();
    check_all(cases);
}

#[test]
fn nested_enum_bytes() {
    let kinds: Vec<(EventKind, &[u8])> = vec![
        (
            EventKind::Fault {
                code: FaultCode::Gpio,
                detail: "reject line".into(),
            },
            &[
                0, 7, 11, 114, 101, 106, 101, 99, 116, 32, 108, 105, 110, 101,
            ],
        ),
        (
            EventKind::FaultCleared {
                code: FaultCode::CameraLost,
            },
            &[1, 1],
        ),
        (
            EventKind::ModelActivated {
                model: model(),
                slot: Slot::B,
            },
            &[
                2, 10, 98, 111, 116, 116, 108, 101, 45, 114, 49, 56, 171, 171, 171, 171, 171, 171,
                171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171,
                171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 7, 1,
            ],
        ),
        (
            EventKind::RolledBack {
                from: ModelRef {
                    name: "new".into(),
                    sha256: [1; 32],
                    version: 3,
                },
                to: ModelRef {
                    name: "old".into(),
                    sha256: [2; 32],
                    version: 2,
                },
                automatic: true,
            },
            &[
                3, 3, 110, 101, 119, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 111, 108, 100, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
                2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1,
            ],
        ),
        (
            EventKind::ThresholdChanged { threshold: -0.5 },
            &[4, 0, 0, 0, 191],
        ),
        (
            EventKind::BundleRefused {
                sha256: [3; 32],
                code: NackCode::BundleSignature,
                detail: "key".into(),
            },
            &[
                5, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
                3, 3, 3, 3, 3, 12, 3, 107, 101, 121,
            ],
        ),
        (
            EventKind::ModelConfirmed { model: model() },
            &[
                6, 10, 98, 111, 116, 116, 108, 101, 45, 114, 49, 56, 171, 171, 171, 171, 171, 171,
                171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 171,
                171, 171, 171, 171, 171, 171, 171, 171, 171, 171, 7,
            ],
        ),
    ];
    let mut cases: Vec<(String, Vec<u8>, &[u8])> = kinds
        .into_iter()
        .map(|(k, want)| (format!("{k:?}"), postcard::to_stdvec(&k).unwrap(), want))
        .collect();
    // Codes are data on the wire: their index is their encoding.
    let nack_codes = [
        NackCode::IncompatibleProtocol,
        NackCode::Unauthenticated,
        NackCode::BadTag,
        NackCode::Replayed,
        NackCode::AuthFailed,
        NackCode::Unexpected,
        NackCode::Busy,
        NackCode::InvalidThreshold,
        NackCode::BundleTooLarge,
        NackCode::BundleOffset,
        NackCode::NoUpload,
        NackCode::BundleHashMismatch,
        NackCode::BundleSignature,
        NackCode::BundleInvalid,
        NackCode::UnknownModel,
        NackCode::SelfTestFailed,
        NackCode::NoRollbackTarget,
        NackCode::TriggerUnavailable,
        NackCode::ReplayUnavailable,
        NackCode::Internal,
        NackCode::Downgrade,
        NackCode::BundleIncompatible,
        NackCode::ModelTooSlow,
    ];
    for (i, code) in nack_codes.iter().enumerate() {
        // Exhaustiveness guard: adding a code without listing it here fails to compile.
        match code {
            NackCode::IncompatibleProtocol
            | NackCode::Unauthenticated
            | NackCode::BadTag
            | NackCode::Replayed
            | NackCode::AuthFailed
            | NackCode::Unexpected
            | NackCode::Busy
            | NackCode::InvalidThreshold
            | NackCode::BundleTooLarge
            | NackCode::BundleOffset
            | NackCode::NoUpload
            | NackCode::BundleHashMismatch
            | NackCode::BundleSignature
            | NackCode::BundleInvalid
            | NackCode::UnknownModel
            | NackCode::SelfTestFailed
            | NackCode::NoRollbackTarget
            | NackCode::TriggerUnavailable
            | NackCode::ReplayUnavailable
            | NackCode::Internal
            | NackCode::Downgrade
            | NackCode::BundleIncompatible
            | NackCode::ModelTooSlow => {}
        }
        assert_eq!(
            postcard::to_stdvec(code).unwrap(),
            vec![i as u8],
            "{code:?}"
        );
    }
    let fault_codes = [
        FaultCode::CameraTimeout,
        FaultCode::CameraLost,
        FaultCode::InferenceFailed,
        FaultCode::TriggerOverflow,
        FaultCode::ModelLoadFailed,
        FaultCode::SelfTestFailed,
        FaultCode::Storage,
        FaultCode::Gpio,
        FaultCode::Internal,
        FaultCode::VerdictLate,
        FaultCode::ModelTooSlow,
    ];
    for (i, code) in fault_codes.iter().enumerate() {
        match code {
            FaultCode::CameraTimeout
            | FaultCode::CameraLost
            | FaultCode::InferenceFailed
            | FaultCode::TriggerOverflow
            | FaultCode::ModelLoadFailed
            | FaultCode::SelfTestFailed
            | FaultCode::Storage
            | FaultCode::Gpio
            | FaultCode::Internal
            | FaultCode::VerdictLate
            | FaultCode::ModelTooSlow => {}
        }
        assert_eq!(
            postcard::to_stdvec(code).unwrap(),
            vec![i as u8],
            "{code:?}"
        );
    }
    cases.push((
        "Mask::raw".into(),
        postcard::to_stdvec(&Mask::raw(2, 1, vec![0, 200]).unwrap()).unwrap(),
        &[2, 1, 0, 2, 0, 200],
    ));
    check_all(cases);
}

#[test]
fn frame_bytes() {
    let status = Envelope::new(0, Msg::Status);
    let tagged = Envelope {
        seq: 300,
        msg: Msg::Verdict(verdict()),
        tag: Some([0xA5; 16]),
    };
    let cases: Vec<(String, Vec<u8>, &[u8])> = vec![
        (
            "frame(Status)".into(),
            frame(&status),
            &[1, 2, 12, 5, 30, 150, 244, 83, 0],
        ),
        (
            "frame(tagged Verdict)".into(),
            frame(&tagged),
            &[
                18, 172, 2, 14, 192, 132, 61, 42, 128, 128, 129, 177, 132, 233, 145, 3, 185, 96, 1,
                3, 64, 63, 7, 1, 4, 2, 1, 6, 4, 4, 3, 9, 1, 1, 22, 1, 165, 165, 165, 165, 165, 165,
                165, 165, 165, 165, 165, 165, 165, 165, 165, 165, 160, 14, 186, 124, 0,
            ],
        ),
    ];
    for (_, bytes, want) in &cases {
        if bytes.as_slice() == *want {
            let got = FrameDecoder::new().push(want);
            assert_eq!(got.len(), 1);
        }
    }
    check_all(cases);
}

fn frame(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(env, &mut out).unwrap();
    out
}
