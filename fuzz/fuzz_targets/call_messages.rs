//! The call protocol's messages (`core/call.rs`), from either side: decoding fails
//! cleanly, stays within the protocol's limits, or yields a message that re-encodes.
//!
//! The checks live in `ringbell::fuzz_api`, which `tests/fuzz_corpus.rs` replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringbell::fuzz_api::call_messages(data));
