# shellcheck shell=bash disable=SC2034
# (SC2034: the variables set here are for the scripts that source this file.)
# Sourced by scripts/windows-setup.sh and scripts/windows/wine-runner.sh, so that both
# agree on where the shim DLL and the Wine prefix are, and on which Wine to call.
#
# They live in target/wine/ of this checkout, whatever CARGO_TARGET_DIR says (cargo runs
# the runner from the package's directory, so a relative CARGO_TARGET_DIR could not be
# resolved there). RINGBELL_WINE_DIR moves them, e.g. to share one prefix between
# clones; RINGBELL_WINE names the Wine loader to use.
_ringbell_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RINGBELL_WINE_DIR=${RINGBELL_WINE_DIR:-$_ringbell_repo/target/wine}
RINGBELL_WINE_SHIM=$RINGBELL_WINE_DIR/bcryptprimitives.dll
unset _ringbell_repo
export WINEPREFIX=$RINGBELL_WINE_DIR/prefix
# Without a display Wine prints err:winediag / fixme lines on every start.
export WINEDEBUG=-all

# Sets RINGBELL_WINE and RINGBELL_WINESERVER; fails when no Wine is installed.
#
# Debian 12's wine64 package puts no wine64 on PATH: it installs the 64-bit loader as
# /usr/lib/wine/wine64 and leaves /usr/bin/wine to the `wine` package, a wrapper script
# that prefers a 32-bit Wine and warns when wine32 is missing. Other builds (WineHQ's,
# newer Debian) have wine64, or a WoW64 `wine`, on PATH.
ringbell_find_wine() {
    local w s
    if [[ -z ${RINGBELL_WINE:-} ]]; then
        for w in wine64 /usr/lib/wine/wine64 wine; do
            if command -v "$w" >/dev/null; then
                RINGBELL_WINE=$(command -v "$w")
                break
            fi
        done
    fi
    [[ -n ${RINGBELL_WINE:-} ]] || return 1
    RINGBELL_WINESERVER=wineserver
    for s in "$(dirname "$RINGBELL_WINE")"/wineserver64 "$(dirname "$RINGBELL_WINE")"/wineserver; do
        if [[ -x $s ]]; then
            RINGBELL_WINESERVER=$s
            break
        fi
    done
}
