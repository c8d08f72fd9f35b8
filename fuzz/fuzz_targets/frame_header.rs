//! Frame headers: `FrameHeader::decode` reads back what it accepts and refuses only unknown
//! kinds and reserved bits.
//!
//! The checks live in `ringbell::fuzz_api`, which `tests/fuzz_corpus.rs` replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringbell::fuzz_api::frame_header(data));
