//! The platform-free core: everything here is pure algorithm over memory, with no syscall
//! and no OS type, so it can be model-checked with loom (`--cfg loom` swaps the atomics
//! of [`sync`]) and run under Miri.
//!
//! - [`ring`]: the single-producer single-consumer byte ring and its frames;
//! - [`large`]: the large-message region's placement, its frame and grant, and their checks;
//! - [`layout`]: the `#[repr(C)]` layout of a connection's shared segment;
//! - [`wait`]: the sleep/wake protocol and the `WaitStrategy` loop;
//! - [`in_flight`]: the table of calls awaiting their replies;
//! - [`call`]: the call protocol: opening, streams, credit, cancellation and replies;
//! - [`hints`]: cache hints (prefetch for writing, demotion) for the ring's hot paths;
//! - [`sync`]: the one place atomics come from.

#[cfg(not(loom))]
pub(crate) mod call;
pub(crate) mod hints;
#[cfg(any(ringbell_async, loom))]
pub(crate) mod in_flight;
pub(crate) mod large;
pub(crate) mod layout;
pub(crate) mod ring;
pub(crate) mod sync;
pub(crate) mod wait;
