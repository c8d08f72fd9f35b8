#!/usr/bin/env bash
# cargo's runner for x86_64-pc-windows-gnu (.cargo/config.toml): runs the Windows
# executable it is given, with its arguments, under Wine, and exits with its exit code.
#
#   scripts/windows/wine-runner.sh path/to/foo.exe [args...]
#
# Set up first with scripts/windows-setup.sh. Before running, it puts the
# bcryptprimitives.dll shim (see scripts/windows/bcryptprimitives.c) beside the
# executable, where Wine's loader looks first, and also beside the crate's binaries when
# the executable is a test in deps/ (tests spawn those binaries through
# CARGO_BIN_EXE_*). Child processes started from the same directories find it too.
#
# Wine passes on only the low 8 bits of the exit code, as any Unix process does: a test
# binary's 101 stays 101; an NTSTATUS crash code such as 0xC0000005 arrives as 5.
set -euo pipefail
# shellcheck source=scripts/windows/wine-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/wine-env.sh"
ringbell_find_wine || { echo "wine-runner: no Wine found: run scripts/windows-setup.sh" >&2; exit 127; }

if (($# == 0)); then
    echo "usage: $0 EXE [ARGS...]" >&2
    exit 2
fi
exe=$1
shift
if [[ ! -f $RINGBELL_WINE_SHIM ]]; then
    echo "wine-runner: $RINGBELL_WINE_SHIM is missing: run scripts/windows-setup.sh" >&2
    exit 127
fi
if [[ ! -f $WINEPREFIX/system.reg ]]; then
    echo "wine-runner: no Wine prefix at $WINEPREFIX yet; creating it on this run is slow" \
        "(run scripts/windows-setup.sh first)" >&2
fi

# Copied (12 KiB), not symlinked, though Wine follows a symlink too: a directory of test
# binaries then stays usable on its own. The copy is made under a temporary name and
# renamed into place, as several runners may share a directory at once.
place_shim() {
    local dir=$1 dest=$1/bcryptprimitives.dll
    if ! cmp -s "$RINGBELL_WINE_SHIM" "$dest"; then
        cp "$RINGBELL_WINE_SHIM" "$dest.$$.tmp"
        mv -f "$dest.$$.tmp" "$dest"
    fi
}
dir=$(dirname "$exe")
place_shim "$dir"
if [[ $(basename "$dir") == deps ]]; then
    place_shim "$(dirname "$dir")"
fi

exec "$RINGBELL_WINE" "$exe" "$@"
