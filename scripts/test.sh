#!/usr/bin/env bash
# The project's one test command (the README's second command; .ci/run calls it too).
#
# 1. Every unit, property, doc and cross-process integration test of the workspace, on the
#    native backend (sys/linux).
# 2. The same again on the POSIX backend (sys/posix, which macOS uses), which
#    `--cfg ringbell_force_posix` selects on Linux. It rebuilds everything, so it gets a
#    target directory of its own.
# 3. The CLI's bench once more, built without its optional `peers` feature, as the README's
#    first command builds it.
# 4. The loom models of the ring, the sleep/wake protocol and the in-flight table. loom
#    replaces the atomics through `--cfg loom`, which rebuilds the crate and its
#    dependencies, so it gets a target directory of its own and does not invalidate the
#    normal build.
# 5. Miri over the ring's unsafe code on heap memory and over the fuzz corpus, when a
#    nightly toolchain is installed (it is added to the nightly if missing). Without one,
#    this step says loudly that it did not run; it is never reported as passed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace --all-features (backend: linux)"
cargo test --workspace --all-features --locked

echo "== cargo test --workspace --all-features (backend: posix, RUSTFLAGS=--cfg ringbell_force_posix)"
RUSTFLAGS="--cfg ringbell_force_posix" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/posix" \
    cargo test --workspace --all-features --locked

# The runs above enable every feature. The README's first command builds the CLI without
# its `peers` feature: check that `bench` then says how to get the peers, rather than fail.
echo "== the CLI's bench without its optional peers feature"
cargo test -p ringbell-cli --locked --test cli bench_quick

echo "== loom models (RUSTFLAGS=--cfg loom)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test -p ringbell --release --locked --lib loom

echo "== Miri: the ring over heap memory, and the fuzz corpus"
if rustup toolchain list 2>/dev/null | grep -q '^nightly' &&
    { cargo +nightly miri --version >/dev/null 2>&1 ||
        rustup component add miri --toolchain nightly >/dev/null 2>&1; }; then
    # Isolation off: proptest looks up its regression files. Few cases: Miri is ~1000x
    # slower than native code, and the point is the checks on each access, not the count.
    export MIRIFLAGS="-Zmiri-disable-isolation" PROPTEST_CASES=8
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/miri"
    cargo +nightly miri test -p ringbell --locked --features __test-api --lib core::ring::
    cargo +nightly miri test -p ringbell --locked --no-default-features \
        --features codec,__test-api --test fuzz_corpus
else
    echo "!! Miri NOT RUN: no nightly toolchain with Miri here (see docs/FUZZING.md)."
    echo "!! Everything above passed; this step did not run and is not counted."
fi
