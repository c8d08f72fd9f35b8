#!/usr/bin/env bash
# The portable code never names an OS type or call: only src/sys/ (the platform contract
# and its backends) and src/os/ (the per-OS extension traits) may. This fails on any line
# of the library outside them that does, comments aside, and prints the lines.
set -euo pipefail
cd "$(dirname "$0")/.."
src=crates/ringbell/src
pattern='rustix|libc::|mio::|epoll|kqueue|tokio::io::unix|std::os::(fd|unix|windows)|OwnedFd|AsFd|BorrowedFd|RawFd|AsRawFd|AsyncFd|windows_sys|getuid|RLIMIT'
hits=$(grep -rnE "$pattern" "$src" --include='*.rs' |
    grep -vE "^$src/(sys|os)/" |
    grep -vE '^\S+:[0-9]+:\s*//' || true)
if [ -n "$hits" ]; then
    echo "These lines outside $src/sys/ and $src/os/ name an OS type or call:"
    echo "$hits"
    echo "Move the code behind the platform contract (src/sys/mod.rs)."
    exit 1
fi
echo "portable: no OS names outside $src/sys/ and $src/os/"
