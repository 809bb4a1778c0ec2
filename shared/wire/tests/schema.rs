//! The schema hash exchanged in `Hello` is pinned here, together with the protocol version it belongs to.
//!
//! If `current_schema_is_pinned` fails, you changed a wire type (field, variant, order or type). That is an
//! incompatible protocol change: old units would misparse new frames. Bump `PROTO_VERSION` in `src/lib.rs`, then
//! *append* `(new version, new hash)` to `HISTORY` below. Never edit an existing entry. Then regenerate the readable
//! snapshot `tests/schema.txt` (`KESTREL_BLESS=1`).

use kestrel_wire::{Envelope, PROTO_VERSION, SCHEMA_HASH};
use postcard_schema::key::Key;
use postcard_schema::schema::owned::OwnedNamedType;
use postcard_schema::Schema;

/// Every released (protocol version, schema hash) pair, oldest first.
const HISTORY: &[(u16, [u8; 8])] = &[
    (1, [188, 118, 137, 51, 212, 101, 226, 249]),
    (2, [23, 192, 81, 234, 9, 199, 19, 88]),
];

fn describe_schema() -> String {
    let owned = OwnedNamedType::from(Envelope::SCHEMA);
    let mut types = std::collections::HashSet::new();
    postcard_schema::schema::fmt::discover_tys(&owned, &mut types);
    let mut lines: Vec<String> = types
        .iter()
        .map(|t| {
            let mut s = String::new();
            postcard_schema::schema::fmt::fmt_owned_nt_to_buf(t, &mut s, true);
            s
        })
        .filter(|s| s.starts_with("struct") || s.starts_with("enum"))
        .collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn current_schema_is_pinned() {
    let (version, hash) = *HISTORY.last().unwrap();
    assert!(
        version == PROTO_VERSION && hash == SCHEMA_HASH,
        "the wire schema changed: SCHEMA_HASH is now {SCHEMA_HASH:?} under PROTO_VERSION {PROTO_VERSION}, but the \
         last pinned entry is ({version}, {hash:?}).\nBump PROTO_VERSION and append (PROTO_VERSION, SCHEMA_HASH) to \
         HISTORY in shared/wire/tests/schema.rs.\nCurrent schema:\n{}",
        describe_schema()
    );
}

/// `tests/schema.txt` is the readable form of the schema, so a protocol change shows up as a reviewable diff.
/// Regenerate it with `KESTREL_BLESS=1 cargo test -p kestrel-wire --test schema`.
#[test]
fn schema_description_matches_snapshot() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schema.txt");
    let now = describe_schema() + "\n";
    if std::env::var_os("KESTREL_BLESS").is_some() {
        std::fs::write(path, &now).unwrap();
    }
    let pinned = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        pinned == now,
        "tests/schema.txt is out of date (rerun with KESTREL_BLESS=1 and bump PROTO_VERSION):\n{now}"
    );
}

#[test]
fn history_is_append_only_shaped() {
    for pair in HISTORY.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "versions must strictly increase: {pair:?}"
        );
        assert_ne!(
            pair[0].1, pair[1].1,
            "a version bump must come with a schema change: {pair:?}"
        );
    }
}

#[test]
fn hash_is_the_postcard_schema_key_of_envelope() {
    assert_eq!(
        SCHEMA_HASH,
        Key::for_path::<Envelope>("kestrel-wire/Envelope").to_bytes()
    );
}

// The hash must react to the kinds of change that break postcard decoding. Local stand-ins show it does.
#[allow(dead_code)]
mod v1 {
    #[derive(postcard_schema::Schema)]
    pub struct Ack {
        pub re: u32,
    }
    #[derive(postcard_schema::Schema)]
    pub enum Msg {
        Status,
        Ack(Ack),
    }
}
#[allow(dead_code)]
mod widened {
    #[derive(postcard_schema::Schema)]
    pub struct Ack {
        pub re: u64,
    }
    #[derive(postcard_schema::Schema)]
    pub enum Msg {
        Status,
        Ack(Ack),
    }
}
#[allow(dead_code)]
mod renamed {
    #[derive(postcard_schema::Schema)]
    pub struct Ack {
        pub request: u32,
    }
    #[derive(postcard_schema::Schema)]
    pub enum Msg {
        Status,
        Ack(Ack),
    }
}
#[allow(dead_code)]
mod reordered {
    #[derive(postcard_schema::Schema)]
    pub struct Ack {
        pub re: u32,
    }
    #[derive(postcard_schema::Schema)]
    pub enum Msg {
        Ack(Ack),
        Status,
    }
}
#[allow(dead_code)]
mod appended {
    #[derive(postcard_schema::Schema)]
    pub struct Ack {
        pub re: u32,
    }
    #[derive(postcard_schema::Schema)]
    pub enum Msg {
        Status,
        Ack(Ack),
        Rollback,
    }
}

#[test]
fn hash_changes_with_the_types() {
    let key = |k: Key| k.to_bytes();
    let base = key(Key::for_path::<v1::Msg>("kestrel-wire/Envelope"));
    for (what, other) in [
        (
            "widened field",
            key(Key::for_path::<widened::Msg>("kestrel-wire/Envelope")),
        ),
        (
            "renamed field",
            key(Key::for_path::<renamed::Msg>("kestrel-wire/Envelope")),
        ),
        (
            "reordered variants",
            key(Key::for_path::<reordered::Msg>("kestrel-wire/Envelope")),
        ),
        (
            "appended variant",
            key(Key::for_path::<appended::Msg>("kestrel-wire/Envelope")),
        ),
    ] {
        assert_ne!(base, other, "{what} must change the hash");
    }
    // Deterministic: the same types give the same hash.
    assert_eq!(base, key(Key::for_path::<v1::Msg>("kestrel-wire/Envelope")));
}
