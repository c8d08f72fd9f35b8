//! Typed messages (postcard): decoding fails cleanly or yields a value that round-trips.
//!
//! The checks live in `ringbell::fuzz_api`, which `tests/fuzz_corpus.rs` replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringbell::fuzz_api::codec(data));
