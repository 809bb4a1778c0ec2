//! kestrel-hil: hardware-in-the-loop harness. The simulated board (file/synthetic camera, fake pins, TCP loopback,
//! pseudo-terminal serial) lands with the edge firmware; the same suites will address a real unit via `KESTREL_UNIT`.

/// The protocol version this harness speaks, re-exported so suites can assert it against a unit's `Hello`.
pub use kestrel_wire::PROTO_VERSION;
