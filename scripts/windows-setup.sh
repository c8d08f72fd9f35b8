#!/usr/bin/env bash
# Sets this Linux machine up to build ringbell for Windows (x86_64-pc-windows-gnu) and to
# run its tests under Wine through the cargo runner in .cargo/config.toml. Idempotent:
# each step does only what is missing, and says how long it took.
#
#   1. Debian's wine64 (Wine 8.0) and gcc-mingw-w64-x86-64 (the linker), through apt.
#   2. The Rust standard library for x86_64-pc-windows-gnu, through rustup.
#   3. The bcryptprimitives.dll shim (scripts/windows/bcryptprimitives.c): Rust's std
#      needs ProcessPrng, which Wine 8.0 lacks, so without it no Rust executable starts.
#   4. A Wine prefix. Creating one takes about 10 s on first use; made here, it is not
#      paid inside a test's timeout.
#
# The shim and the prefix go to target/wine/ (scripts/windows/wine-env.sh says why, and
# how to move them). Then: cargo test --target x86_64-pc-windows-gnu
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/windows/wine-env.sh
source scripts/windows/wine-env.sh

timed() {
    local what=$1 t0 t1 ds
    shift
    t0=$(date +%s%N)
    "$@"
    t1=$(date +%s%N)
    ds=$(((t1 - t0) / 100000000))
    echo "== $what: $((ds / 10)).$((ds % 10)) s"
}
quiet() { "$@" >/dev/null; }

# 1. Packages. --no-install-recommends: wine64 recommends the `wine` wrapper, wine32,
#    fonts, Mesa and GStreamer (113 packages instead of 32), none of which a console
#    test needs; the runner calls the wine64 loader itself.
packages=(wine64 gcc-mingw-w64-x86-64)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=()
    ((EUID == 0)) || sudo=(sudo)
    timed "apt-get update" "${sudo[@]}" apt-get update -qq
    timed "apt-get install ${missing[*]}" quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "== packages ${packages[*]}: already installed"
fi
ringbell_find_wine || { echo "no Wine found after installing ${packages[*]}" >&2; exit 1; }

# 2. The target's standard library. rustup downloads it from its own server; if that
#    fails, so does this script: the platform is never skipped quietly.
if rustup target list --installed | grep -qx x86_64-pc-windows-gnu; then
    echo "== rustup target x86_64-pc-windows-gnu: already installed"
else
    timed "rustup target add x86_64-pc-windows-gnu" rustup target add x86_64-pc-windows-gnu
fi

# 3. The shim DLL, rebuilt when its source is newer.
src=scripts/windows/bcryptprimitives.c
mkdir -p "$RINGBELL_WINE_DIR"
if [[ ! -f $RINGBELL_WINE_SHIM || $src -nt $RINGBELL_WINE_SHIM ]]; then
    timed "build $RINGBELL_WINE_SHIM" x86_64-w64-mingw32-gcc -shared -O2 -s -Wall -Werror \
        -o "$RINGBELL_WINE_SHIM" "$src" -ladvapi32
else
    echo "== $RINGBELL_WINE_SHIM: up to date"
fi

# 4. The Wine prefix. There is no display: disabling mscoree and mshtml keeps wineboot
#    from offering to install Wine Mono and Gecko. `wineserver -w` waits until the
#    prefix's set-up has finished.
if [[ -f $WINEPREFIX/system.reg ]]; then
    echo "== Wine prefix $WINEPREFIX: already initialised"
else
    init_prefix() {
        WINEDLLOVERRIDES="mscoree,mshtml=" "$RINGBELL_WINE" wineboot --init >/dev/null 2>&1
        "$RINGBELL_WINESERVER" -w
    }
    timed "wineboot --init (Wine prefix $WINEPREFIX)" init_prefix
fi
echo "== ready: $("$RINGBELL_WINE" --version) ($RINGBELL_WINE)"
