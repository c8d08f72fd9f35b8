//! The one place the crate takes its atomics from.
//!
//! Under `--cfg loom` these are loom's model-checked atomics, so the ring and the
//! sleep/wake protocol can be explored exhaustively by the loom tests; otherwise they are
//! std's. Code that touches shared indices or waiter words must import from here.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// A pause inside a spin loop. Under loom it yields, so the model can run the other thread.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
