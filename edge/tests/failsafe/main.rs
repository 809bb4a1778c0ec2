//! The unit fails safe: deadlines, link hygiene, audited control, fresh frames and supervision, in one test binary
//! (one link step instead of five; each module says what it checks).

#[path = "../common/mod.rs"]
mod common;

mod control;
mod deadlines;
mod fresh_frames;
mod links;
mod supervise;
