//! Process-wide settings for tensor work, applied by `kestrel` and `kestrel-edge` at start ([`tune_at_start`]).
//!
//! **Memory.** candle allocates a fresh buffer for every op's output. With glibc's default malloc, a buffer above its mmap
//! threshold (128 KiB, raised dynamically as large blocks are freed) is its own `mmap`: the kernel zeroes every page
//! on first touch, and `munmap` shoots the pages out of every core's TLB. A training step allocates and frees
//! hundreds of such buffers, so page faults and TLB shootdowns were a tenth of its time. [`keep_freed_buffers`]
//! turns per-buffer mappings off (`M_MMAP_MAX = 0`, and the mmap threshold at its 32 MiB cap) and stops the heap
//! from being trimmed, so freed buffers of every size are reused from the heap (docs/training.md, "Memory"). glibc
//! still maps memory when the heap cannot grow.
//!
//! The cost is resident memory: the heap keeps its high-water mark. Both programs reach a steady state (a training
//! step, a frame) that they then repeat, so the high-water mark is what they need anyway.
//!
//! **Spinning.** candle runs its element-wise ops on a pool of its own, whose idle workers spin up to 25,000 times
//! before they sleep. Our convolutions, BatchNorm and GEMMs run on rayon's pool, and a training step alternates
//! between the two many times: a candle worker still spinning after its op took a core from the rayon worker that had
//! the next op's work. [`limit_pool_spinning`] shortens the spin (docs/training.md, "Threads").

use std::sync::OnceLock;

/// The spin count `kestrel` sets for candle's pool (`CANDLE_BARRIER_POOL_SPIN_LIMIT`) unless the user set one.
pub const CANDLE_SPIN_LIMIT: &str = "1000";

/// Both settings, unless `KESTREL_UNTUNED` is set (to measure without them). Call it first thing in `main`, before
/// any thread is started: it may set an environment variable.
pub fn tune_at_start() {
    if std::env::var_os("KESTREL_UNTUNED").is_some() {
        return;
    }
    limit_pool_spinning();
    keep_freed_buffers();
}

/// Shorten the spin of candle's idle pool workers to [`CANDLE_SPIN_LIMIT`], unless `CANDLE_BARRIER_POOL_SPIN_LIMIT`
/// is already set. candle reads the variable when it first uses its pool, so this must run before that; and since
/// it writes the environment, before the process starts threads (another thread reading the environment at the
/// same time is undefined behaviour in C).
pub fn limit_pool_spinning() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, CANDLE_SPIN_LIMIT);
    }
}

/// Largest mmap threshold glibc accepts on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 * 1024 * 1024;

/// Tune glibc's malloc for candle's allocation pattern, once per process; a no-op on other C libraries. Returns
/// whether the settings were applied (glibc refuses values out of its range; the process then runs as before).
pub fn keep_freed_buffers() -> bool {
    static APPLIED: OnceLock<bool> = OnceLock::new();
    *APPLIED.get_or_init(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes malloc's parameters, under glibc's own locks.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        false
    })
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings_and_repeats_are_harmless() {
        assert!(super::keep_freed_buffers());
        assert!(super::keep_freed_buffers());
    }
}
