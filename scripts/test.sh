#!/usr/bin/env bash
# The project's one test command (the README's second command; .ci/run calls it too).
#
# 1. Every unit, property, doc and cross-process integration test of the workspace.
# 2. The loom models of the ring and the sleep/wake protocol. loom replaces the atomics
#    through `--cfg loom`, which rebuilds the crate and its dependencies, so it gets a
#    target directory of its own and does not invalidate the normal build.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace --all-features"
cargo test --workspace --all-features --locked

echo "== loom models (RUSTFLAGS=--cfg loom)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test -p ringbell --release --locked --lib loom
