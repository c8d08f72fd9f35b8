//! A consumer reading a ring whose tail index and bytes come from the fuzzer (a hostile producer):
//! it hands out only published frames inside the ring, and stops within a bounded number of steps.
//!
//! The checks live in `ringbell::fuzz_api`, which `tests/fuzz_corpus.rs` replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringbell::fuzz_api::hostile_ring(data));
