//! Handshake and authentication: the unit identifies itself with our protocol and schema, a wrong key is refused
//! (and told apart from other failures), and control messages without a session are refused with a `Nack`.

use std::time::Duration;

use kestrel_hil::{SimOptions, Target, PROTO_VERSION};
use kestrel_host::monitor::link::{self, FramedLink};
use kestrel_host::monitor::{MonitorError, Session};
use kestrel_wire::{exit, Envelope, Hello, Msg, NackCode, Role, UnitKey, SCHEMA_HASH};

#[tokio::test]
async fn hello_names_the_unit_and_our_protocol() {
    let target = Target::acquire(SimOptions::default()).unwrap();
    let s = Session::open(&target.tcp(), &target.connect_options())
        .await
        .unwrap();
    let peer = s.peer();
    assert_eq!(peer.role, Role::Edge);
    assert_eq!(peer.proto_version, PROTO_VERSION);
    assert_eq!(peer.schema_hash, SCHEMA_HASH);
    assert!(!peer.fw_version.is_empty());
    if let Some(sim) = target.sim() {
        assert_eq!(peer.unit_id, sim.unit_id());
        assert_eq!(peer.board, "sim");
        let model = peer.active_model.as_ref().expect("the sim runs a scorer");
        assert!(model.name.starts_with("hil-scripted"), "{}", model.name);
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused_as_an_auth_failure() {
    let target = Target::acquire(SimOptions::default()).unwrap();
    let mut opts = target.connect_options();
    let mut wrong = *target.key().as_bytes();
    wrong[0] ^= 0x80;
    opts.key = UnitKey::from_bytes(wrong);
    let e = Session::open(&target.tcp(), &opts).await.unwrap_err();
    assert!(matches!(e, MonitorError::AuthRefused { .. }), "{e}");
    assert_eq!(e.exit_code(), exit::AUTH_FAILED);
    // The unit stays available to the right key afterwards.
    Session::open(&target.tcp(), &target.connect_options())
        .await
        .unwrap();
}

#[tokio::test]
async fn unauthenticated_control_is_nacked() {
    let target = Target::acquire(SimOptions::default()).unwrap();
    let mut raw: FramedLink = link::connect(&target.tcp()).await.unwrap();
    let hello = Hello {
        proto_version: PROTO_VERSION,
        schema_hash: SCHEMA_HASH,
        role: Role::Host,
        unit_id: String::new(),
        board: String::new(),
        fw_version: "hil raw".into(),
        active_model: None,
    };
    raw.send(&Envelope::new(0, Msg::Hello(hello)))
        .await
        .unwrap();
    // Skip the handshake entirely and ask for a replay of the journal, untagged.
    raw.send(&Envelope::new(
        1,
        Msg::Replay(kestrel_wire::Replay { from_seq: 0 }),
    ))
    .await
    .unwrap();
    let nack = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Msg::Nack(n) = raw.recv().await.unwrap().msg {
                break n;
            }
        }
    })
    .await
    .expect("a Nack within 3 s");
    assert_eq!(nack.re, 1);
    assert!(
        matches!(nack.code, NackCode::Unauthenticated | NackCode::Unexpected),
        "{nack:?}"
    );
}

#[tokio::test]
async fn another_schema_is_refused_as_incompatible() {
    let target = Target::acquire(SimOptions::default()).unwrap();
    let mut raw: FramedLink = link::connect(&target.tcp()).await.unwrap();
    let mut schema = SCHEMA_HASH;
    schema[0] ^= 1;
    let hello = Hello {
        proto_version: PROTO_VERSION,
        schema_hash: schema,
        role: Role::Host,
        unit_id: String::new(),
        board: String::new(),
        fw_version: "hil old build".into(),
        active_model: None,
    };
    raw.send(&Envelope::new(0, Msg::Hello(hello)))
        .await
        .unwrap();
    let nack = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match raw.recv().await.map(|e| e.msg) {
                Ok(Msg::Nack(n)) => break Some(n),
                Ok(_) => continue,
                Err(_) => break None,
            }
        }
    })
    .await
    .expect("an answer within 3 s")
    .expect("a Nack before the unit closes");
    assert_eq!(nack.code, NackCode::IncompatibleProtocol);
}
