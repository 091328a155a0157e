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
