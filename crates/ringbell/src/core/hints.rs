//! Cache hints for the ring's hot paths: where its lines should be before and after a
//! write. Both sides' cores take turns owning the same lines (the producer writes a
//! frame, the consumer reads it, the producer writes that line again a lap later), and on
//! the two-core VMs we measure on a line moving between cores costs 0.13–0.5 µs: the
//! whole of a spinning round trip is a handful of such moves. Two hints move lines early
//! or closer, off the path where a side waits for them:
//!
//! - [`prefetch_for_write`] (`PREFETCHW`): asks for a line this core is about to write;
//! - [`demote`] (`CLDEMOTE`): pushes a line this core has just written out of its own
//!   caches to the shared one, where the peer's core reads it sooner than from ours.
//!
//! Hints only: they read and write nothing the program can observe (whatever a line
//! holds, and whoever writes it, nothing changes), and they never fault. Each is issued
//! only where CPUID says the CPU has the instruction (looked up once), on x86-64; elsewhere
//! (and under Miri, which runs no assembly) they do nothing. The ARM equivalents (`PRFM
//! PSTL1KEEP`, and `DC CVAU`-like pushes) could only be compiled here, never run, so they
//! are left out until they can be measured.

#![allow(unsafe_code)]

/// The cache line: 64 bytes on every CPU these hints run on.
pub(crate) const CACHE_LINE: usize = 64;

/// Issues the x86 hint `$instruction` on the line holding `$at` (a `*const u8`) where the
/// CPU has `$feature` (a bit of [`x86::has`]); nothing elsewhere, or under Miri.
macro_rules! line_hint {
    ($instruction:literal, $feature:expr, $at:expr) => {{
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        if x86::has($feature) {
            // SAFETY: the CPU has the instruction (checked just above). Both hints change
            // no memory the program can observe (`readonly`: they are ordered after this
            // core's earlier stores, which a demotion carries with the line) and cannot
            // fault, whatever the address; the callers' addresses lie in the ring or its
            // control block anyway.
            unsafe {
                std::arch::asm!(
                    concat!($instruction, " [{}]"),
                    in(reg) $at,
                    options(nostack, preserves_flags, readonly)
                );
            }
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        let _ = $at;
    }};
}

/// Asks the CPU to fetch the line holding `at` for writing (x86's `PREFETCHW`), without
/// waiting for it. A producer's stores go to lines that the consumer's core read last;
/// each store then waits in the store buffer, in order, for its line to come back, and a
/// run of small messages stalls on them one after the other. Asked for ahead, the lines
/// travel while earlier messages are written. Measured on a run of 64-byte packed
/// messages (examples/batches.rs, six interleaved pairs on the 2-vCPU VM): 28.6–39.4 M
/// messages/s without, 99–107 M with.
///
/// Some Intel CPUs without CPUID's PRFCHW bit run it as a no-op; the first 64-bit ones
/// would refuse it, hence the check.
#[inline(always)]
pub(crate) fn prefetch_for_write(at: *const u8) {
    line_hint!("prefetchw", x86::PREFETCHW, at);
}

/// Pushes the line holding `at`, which this core has just written, from its private caches
/// towards the cache the cores share (x86's `CLDEMOTE`), without waiting. The peer's core,
/// spinning on the ring's tail, then reads the line from there rather than by a snoop into
/// ours. Used by `Producer::prepare_to_wait` on the lines of a small publication and on
/// the tail's, once a side starts to wait for the answer; measured there.
///
/// Ordered after this core's earlier stores to the same line, so the line goes with what
/// was written to it. CPUs without it (CPUID leaf 7, ECX bit 25) run its encoding as a
/// no-op hint, but it is only issued where CPUID reports it.
#[inline(always)]
pub(crate) fn demote(at: *const u8) {
    line_hint!("cldemote", x86::CLDEMOTE, at);
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
mod x86 {
    use std::sync::atomic::{AtomicU8, Ordering};

    /// CPUID leaf 0x8000_0001, ECX bit 8.
    pub(super) const PREFETCHW: u8 = 1 << 1;
    /// CPUID leaf 7 (subleaf 0), ECX bit 25.
    pub(super) const CLDEMOTE: u8 = 1 << 2;
    /// Set once the bits above are known.
    const KNOWN: u8 = 1 << 0;

    /// Whether the CPU has `feature` (one of the bits above), looked up once.
    #[inline(always)]
    pub(super) fn has(feature: u8) -> bool {
        // Relaxed, pairing with nothing: it caches the answer of an idempotent lookup,
        // which any thread may make again, and guards no other memory.
        static FEATURES: AtomicU8 = AtomicU8::new(0);
        let mut features = FEATURES.load(Ordering::Relaxed);
        if features & KNOWN == 0 {
            features = look_up();
            FEATURES.store(features, Ordering::Relaxed);
        }
        features & feature != 0
    }

    #[cold]
    fn look_up() -> u8 {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // SAFETY: CPUID exists on every x86-64 CPU. (The intrinsics are safe functions in
        // recent Rust, `unsafe` ones in the 1.85 this crate supports: hence the allow.)
        // Leaf 0 and leaf 0x8000_0000 say which basic and extended leaves exist.
        #[allow(unused_unsafe)]
        let (prfchw, leaf7) = unsafe {
            let extended = __cpuid(0x8000_0000).eax;
            let prfchw = extended >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0;
            let leaf7 = if __cpuid(0).eax >= 7 {
                __cpuid_count(7, 0).ecx
            } else {
                0
            };
            (prfchw, leaf7)
        };
        let mut features = KNOWN;
        if prfchw {
            features |= PREFETCHW;
        }
        if leaf7 & (1 << 25) != 0 {
            features |= CLDEMOTE;
        }
        features
    }
}
