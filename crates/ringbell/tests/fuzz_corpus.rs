//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same checks the
//! fuzz targets run (`ringbell::fuzz_api`), on the stable toolchain: every input the fuzzer
//! found interesting, and every crash once fixed, stays a regression test.
//!
//! Fuzzing itself needs nightly and cargo-fuzz; see `docs/FUZZING.md`.

use std::fs;
use std::path::PathBuf;

/// Runs `check` on every file of `fuzz/corpus/<target>/`, and fails if there are none:
/// a corpus that went missing must not pass as a corpus that passed.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading the corpus {}: {error}", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.expect("listing the corpus").path();
        if !path.is_file() {
            continue;
        }
        let input =
            fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
        // A failing input is named in the panic message, so it can be replayed alone with
        // `cargo fuzz run <target> <file>`.
        let outcome = std::panic::catch_unwind(|| check(&input));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        replayed += 1;
    }
    assert!(replayed > 0, "the corpus {} is empty", dir.display());
}

#[test]
fn frame_header_corpus() {
    replay("frame_header", ringbell::fuzz_api::frame_header);
}

#[test]
fn handshake_corpus() {
    replay("handshake", ringbell::fuzz_api::handshake);
}

#[test]
fn hostile_ring_corpus() {
    replay("hostile_ring", ringbell::fuzz_api::hostile_ring);
}

#[test]
fn call_messages_corpus() {
    replay("call_messages", ringbell::fuzz_api::call_messages);
}

#[cfg(feature = "codec")]
#[test]
fn codec_corpus() {
    replay("codec", ringbell::fuzz_api::codec);
}
