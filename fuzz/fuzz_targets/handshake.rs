//! Handshake messages: the prefix and Welcome decoders accept only well-formed messages of the
//! expected kind, and what they accept re-encodes to the same bytes.
//!
//! The checks live in `ringbell::fuzz_api`, which `tests/fuzz_corpus.rs` replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringbell::fuzz_api::handshake(data));
