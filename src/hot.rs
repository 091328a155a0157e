//! Marks the threads that run the per-bin hot path (loop and emitter), so a test's
//! counting allocator can prove they allocate nothing after start-up.

use std::cell::Cell;

thread_local! {
    static HOT: Cell<bool> = const { Cell::new(false) };
}

/// The current thread enters its hot path.
pub fn enter() {
    HOT.with(|h| h.set(true));
}

/// The current thread leaves its hot path.
pub fn leave() {
    HOT.with(|h| h.set(false));
}

/// Whether the current thread is in its hot path. Safe to call from a global allocator
/// (const-initialised, no destructor).
#[inline]
pub fn is_hot() -> bool {
    HOT.try_with(|h| h.get()).unwrap_or(false)
}

/// A global allocator that counts allocations (tests): every allocation per thread, and
/// those made while a thread is hot, per thread and over all threads. Install it in a test
/// binary with `#[global_allocator] static A: neuroloop::hot::CountingAlloc = neuroloop::hot::CountingAlloc;`
/// (the library's own unit tests do, in lib.rs); the counters read 0 where it is not installed.
pub struct CountingAlloc;

static HOT_ALLOCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
thread_local! {
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
    static THREAD_HOT_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

#[inline]
fn count_allocation() {
    let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
    if is_hot() {
        HOT_ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = THREAD_HOT_ALLOCS.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches only
// const-initialised thread-locals and an atomic, which never allocate.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        std::alloc::System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        std::alloc::System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        std::alloc::System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        count_allocation();
        std::alloc::System.realloc(p, l, n)
    }
}

/// Allocations made by this thread so far (with [`CountingAlloc`] installed).
pub fn thread_allocations() -> u64 {
    THREAD_ALLOCS.with(|c| c.get())
}

/// Allocations this thread made while hot.
pub fn thread_hot_allocations() -> u64 {
    THREAD_HOT_ALLOCS.with(|c| c.get())
}

/// Allocations made while hot, all threads together.
pub fn hot_allocations() -> u64 {
    HOT_ALLOCS.load(std::sync::atomic::Ordering::Relaxed)
}
