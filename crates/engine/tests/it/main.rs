//! Integration tests of the engine: fast vs reference executors bit for bit, the `.vty` codec, model IDs
//! and weight proofs.

mod codec;
mod kernels;
mod onestep;
mod random_models;

use verity_engine::ir::*;

/// Counts, per thread, the allocations of at least [`LARGE`] bytes (to check that a steady stream of
/// runs draws its buffers from the executor's pool).
struct Counting;

/// What counts as a large allocation.
pub const LARGE: usize = 64 << 10;

thread_local! {
    static LARGE_ALLOCS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Large allocations made by this thread so far.
pub fn large_allocs() -> usize {
    LARGE_ALLOCS.with(|c| c.get())
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches only a
// thread-local `Cell` (const-initialized, no destructor, so no allocation).
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            let _ = LARGE_ALLOCS.try_with(|c| c.set(c.get() + 1));
        }
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            let _ = LARGE_ALLOCS.try_with(|c| c.set(c.get() + 1));
        }
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        if new >= LARGE {
            let _ = LARGE_ALLOCS.try_with(|c| c.set(c.get() + 1));
        }
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A fixed-point input.
pub fn input(name: &str, shape: Vec<u32>, scale: i8) -> Input {
    Input {
        name: name.into(),
        shape,
        scale,
        kind: InputKind::Fixed,
    }
}

/// A seeded generator of `n` values in `[-mag, mag]`.
pub fn gen(seed: u64, mag: i32) -> impl FnMut(usize) -> Vec<i32> {
    let mut state = seed;
    move |n| {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (state >> 32) as i64 % (2 * mag as i64 + 1);
                (r.rem_euclid(2 * mag as i64 + 1) - mag as i64) as i32
            })
            .collect()
    }
}
