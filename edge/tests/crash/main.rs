//! Fault injection from outside the process: the real `kestrel-edge` binary SIGKILLed while flashing
//! ([`crash_flash`]) and while journaling verdicts ([`crash_journal`]). One test binary; the long runs are
//! `cargo test -p kestrel-edge --test crash -- --ignored --nocapture`.

#[path = "../common/mod.rs"]
mod common;

mod crash_flash;
mod crash_journal;
