//! The reader allocates nothing by a declared size: with a counting allocator, parsing tiny files that declare
//! huge sections (and a signed manifest that declares a huge vector) never requests a large block.
//!
//! One test in its own binary, so no other test's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

mod common;

use common::{info, key, sample, trusted, with_lengths};
use kestrel_bundle::testing::seal_raw;
use kestrel_bundle::{BundleError, VerifiedBundle, PREFIX_LEN};

struct Counting;

thread_local! {
    /// Largest single allocation this thread requested while `TRACK` was set.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TRACK: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    // try_with: thread-locals may be gone while a thread shuts down.
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Largest single allocation made by `f` on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let out = f();
    TRACK.with(|t| t.set(false));
    (out, LARGEST.with(|l| l.get()))
}

#[test]
fn hostile_declared_sizes_allocate_nothing_large() {
    let keys = trusted();
    let mut tiny = sample()[..PREFIX_LEN].to_vec();
    tiny.resize(64, 0);
    for (m, p) in [
        (u32::MAX, 0),
        (0, u64::MAX),
        (u32::MAX, u64::MAX),
        (0, 1 << 40),
        (1 << 30, 1 << 30),
    ] {
        let bytes = with_lengths(tiny.clone(), m, p);
        let (result, largest) = largest_allocation(|| VerifiedBundle::parse(bytes, &keys));
        assert!(
            matches!(result, Err(BundleError::Truncated { .. })),
            "{m} {p}"
        );
        assert!(largest < 1024, "{m} {p}: allocated {largest} bytes");
    }

    // A validly signed manifest whose tensor table claims 2^32 - 1 entries: serde caps preallocation at 1 MiB and
    // postcard cannot read past the manifest slice, so this fails with a decode error and a bounded allocation.
    let mut manifest = postcard::to_allocvec(&info()).unwrap();
    manifest.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let bytes = seal_raw(&manifest, &[], &key()).unwrap();
    let (result, largest) = largest_allocation(|| VerifiedBundle::parse(bytes, &keys));
    assert!(matches!(result, Err(BundleError::Manifest(_))));
    assert!(largest <= 1 << 20, "allocated {largest} bytes");

    // Control: the counter does see allocations (a valid bundle's manifest strings and table).
    let bytes = sample();
    let (result, largest) = largest_allocation(|| VerifiedBundle::parse(bytes, &keys));
    result.unwrap();
    assert!(largest > 0);
}
