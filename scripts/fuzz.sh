#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (see docs/FUZZING.md), one at a time.
#
#   scripts/fuzz.sh [--cmin] [TARGET|all] [SECONDS]
#
#   TARGET   frame_header, handshake, hostile_ring, codec, or all (the default)
#   SECONDS  how long each target runs (default 600)
#   --cmin   afterwards, minimise the target's corpus in fuzz/corpus/TARGET (`cargo fuzz
#            cmin`), keeping only inputs that add coverage: commit the result
#
# Needs the nightly toolchain and cargo-fuzz, once per machine (crates.io only):
#
#   rustup toolchain install nightly
#   cargo install cargo-fuzz --locked
#
# Each run uses one core (`-jobs=1`, niced), so the rest of the machine stays usable. New
# inputs go to fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET, libFuzzer's log to
# fuzz/logs/TARGET/fuzz-0.log; builds to $CARGO_TARGET_DIR, else fuzz/target. The stable
# test `cargo test -p ringbell --all-features --test fuzz_corpus` replays the corpus.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
all_targets=(frame_header handshake hostile_ring call_messages codec)

cmin=false
if [[ "${1:-}" == "--cmin" ]]; then
    cmin=true
    shift
fi
target="${1:-all}"
seconds="${2:-600}"
if [[ "$target" == all ]]; then
    targets=("${all_targets[@]}")
elif [[ " ${all_targets[*]} " == *" $target "* ]]; then
    targets=("$target")
else
    echo "unknown target '$target'; one of: ${all_targets[*]} all" >&2
    exit 2
fi

fuzz() {
    nice -n 10 cargo +nightly fuzz "$@"
}
target_dir="${CARGO_TARGET_DIR:-$root/fuzz/target}"

for name in "${targets[@]}"; do
    log_dir="$root/fuzz/logs/$name"
    mkdir -p "$log_dir"
    echo "== $name: ${seconds} s on one core (log: $log_dir/fuzz-0.log)"
    # libFuzzer writes a -jobs run's log to fuzz-0.log in its working directory.
    (cd "$log_dir" && fuzz run --fuzz-dir "$root/fuzz" --target-dir "$target_dir" "$name" -- \
        -jobs=1 -max_total_time="$seconds" -malloc_limit_mb=64 -print_final_stats=1)
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' \
        "$log_dir/fuzz-0.log" || true
    if $cmin; then
        # The codec target walks postcard's and serde's code, where keeping an input per
        # hit count (libFuzzer's default) kept 437 files; by edges alone, 181 cover as much.
        cmin_args=()
        [[ "$name" == codec ]] && cmin_args=(-- -use_counters=0)
        (cd "$log_dir" &&
            fuzz cmin --fuzz-dir "$root/fuzz" --target-dir "$target_dir" "$name" "${cmin_args[@]}")
    fi
    echo "   corpus: $(find "$root/fuzz/corpus/$name" -type f | wc -l) files"
done
