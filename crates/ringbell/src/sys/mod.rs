//! The platform contract. Everything that names an OS type or call lives below this module
//! (and in `crate::os`, the per-OS extension traits); the rest of the crate is portable
//! and holds only the opaque values defined here. A new OS is a new folder here that
//! provides the names below; nothing above `sys` changes.
//!
//! The contract speaks of concepts, not of file descriptors, because not every OS has them
//! (Windows has handles, which travel by `DuplicateHandle` rather than over a socket).
//! Every backend provides:
//!
//! * **`SharedRegion`**: a read-write mapping of a shared-memory object.
//!   `create(len) -> (SharedRegion, Grant)` makes a zeroed object of `len` bytes that its
//!   peer cannot resize (but on the POSIX backend on Linux, see `posix/shm.rs`), maps it,
//!   and returns the grant to send (`create_for_messages(len)`: the same, for a
//!   large-message region, under a name that tells it from a segment where objects have
//!   names); `adopt(grant, len)`
//!   checks a region received from the peer (what kind of object it is, who owns it, its
//!   size) *before* mapping it, because a peer that could shrink the object would make
//!   every access a potential `SIGBUS`; `as_ptr()`, `len()`. The mapping goes on drop, and
//!   no name is left behind in any file system.
//! * **`Grant`**: an OS object on its way to the peer or just received from it: a region,
//!   a doorbell end, later a process handle. The handshake sends and receives grants and
//!   does not know what they are made of (on Unix an fd passed with `SCM_RIGHTS`).
//! * **`SharedWait`** and **`shared_wait()`**: a sleep on a word in shared memory that the
//!   peer process can wake (`crate::core::wait::Sleeper`, plus `wake(word)`), with an
//!   absolute deadline; on Linux the shared futex. `shared_wait()` is `None` on a backend
//!   without one: a blocking connection then sleeps on its doorbell instead
//!   (`SLEEP_DOORBELL` in `core/wait.rs`), which every backend has.
//! * **`Doorbell`** and **`DoorbellRinger`**, from `doorbell_pair()`: what a waiter sleeps
//!   on when it cannot sleep on shared memory (an event loop, or a backend without
//!   `SharedWait`), and the other end, which wakes it. `drain()` and `ring()` never block,
//!   whatever the peer does to its own end; `into_grant()` and `adopt(grant)` (which
//!   checks what it received) move an end to the peer; `sleep_until_rung(doorbell,
//!   control, deadline)` is the blocking wait, which also ends when the peer dies.
//! * **`ControlListener`** and **`ControlStream`**: the local channel of the handshake,
//!   which stays open for the connection's life so that its end means "the peer is gone".
//!   `bind(path)` (owner-only; replaces a dead server's address, refuses a live one with
//!   `AddrInUse`), `accept()`, `connect(path, deadline)`, `send_with_grants` and
//!   `recv_with_grants` (at most `MAX_GRANTS` a message, more is an `InvalidData` error),
//!   `try_read_with_grants` (what has arrived, without waiting), `grants_outlive_sender()`
//!   (whether a grant sent stays receivable after this process ends: not a Windows
//!   client's, which the server pulls from the client's handle table),
//!   `peer_user()`, `peer_pid()`, `peer_gone()`. The listener removes its address on drop.
//! * **`User`** and **`current_user()`**: who a peer runs as, for admission checks: a uid
//!   on Unix (later a SID on Windows), with `Option` accessors for what an OS may lack.
//! * **`Source`** and **`wait_readable(sources, timeout)`**: anything a thread can wait on
//!   (the listener, a control stream), and the wait for any of several. For the
//!   blocking server, which carries many handshakes on one thread.
//! * With the `tokio` feature, **readiness**: a `Doorbell`, `ControlStream` and
//!   `ControlListener` can be registered with the tokio runtime (`register()`) and awaited
//!   (`rung()`, `stirred()`, `acceptable()`); a `Poller` is one waitable object standing
//!   for many sources: `add(source, key)` watches one for readability and hang-up,
//!   edge-triggered, `remove(source)`, `drain(each)` reports without waiting every source
//!   that stirred since the last call, and `stirred()` awaits the next. A server's
//!   sweeper sleeps on one for all its connections at once. The tokio layer above has no
//!   `unsafe` and names no OS type.
//! * **Resource exhaustion**: `raise_resource_limit()` (a server's handle limit, to the
//!   most it may have), `is_resource_exhaustion(&io::Error)`, and the words that tell a
//!   user which limit it was and how to raise it (`OUT_OF_HANDLES`, `RAISE_LIMIT_HINT`).
//! * **`BACKEND`**: the backend's name, for reports.
//!
//! # The backends
//!
//! | backend | where | shared memory | sleeping | poller |
//! |---|---|---|---|---|
//! | `linux` | Linux | sealed memfd | shared futex | epoll (through mio) |
//! | `macos` | macOS (compiled and linted, never run yet) | `shm_open`, unlinked at once | `os_sync_wait_on_address` (14.4+), else the doorbell | kqueue (through mio) |
//! | `posix` | Linux with `--cfg ringbell_force_posix`, to test what macOS runs | `shm_open`, unlinked at once | the doorbell | epoll (through mio) |
//! | `windows` | Windows (steps 1 to 3 of `docs/WINDOWS.md`, tested under Wine only) | an unnamed `SEC_COMMIT` section | the doorbell: an auto-reset event (waits end with the peer's process) | one-shot `RegisterWaitForSingleObject` waits feeding one queue (`windows/poller.rs`) |
//!
//! `posix/` holds everything the backends share (sockets, doorbells, grants, credentials,
//! the poller, readiness, limits, and the `shm_open` region); `linux/` and `macos/` hold
//! only what each replaces: the memfd region and the futex, and the `os_sync` wait. CI
//! runs the whole test suite on `linux` and `posix`, so the code macOS runs is tested on
//! Linux, except for its macOS-only parts (the `os_sync` calls, `getpeereid`,
//! `SO_NOSIGPIPE` and `fcntl` where macOS lacks `MSG_NOSIGNAL` and `SOCK_CLOEXEC`, sizes
//! rounded to 16 KiB, the kind check of a shm fd), which CI only compiles and lints for
//! both Apple targets. See `docs/MACOS.md`. Both sides of a connection must use the same
//! backend: a memfd client refuses a `shm_open` region, and says so in its handshake
//! error.
//!
//! `windows/` is the Windows backend, built in the steps of `docs/WINDOWS.md`. It has the
//! whole contract: the region, grants (handles pushed with `DuplicateHandle` or pulled
//! from the client, and the checks of a received handle value), doorbells, users, the
//! control channel (named pipes, whose frames carry handle values beside the bytes),
//! `wait_readable`, the limits, and (step 3) readiness and the poller, through waits
//! registered with the system thread pool; so the blocking and the async API above `sys`
//! are built there, and tested under Wine in CI with real processes (this conformance
//! suite among its tests). Its framing and address rule are platform-free and tested on
//! every OS.
//!
//! Where the Windows backend differs from the Unix ones in kind, within the contract:
//! `sleep_until_rung` learns of the peer's death from the peer's process (which the
//! `ControlStream` holds), not from the stream's hang-up; a doorbell is reset by the wait
//! that sees its ring, and its `closed()` is always `false` (an event has no other end);
//! `wait_readable` waits on the listener's event and on reads issued ahead on the streams
//! (a byte-mode pipe signals nothing without a read in flight), and past 64 sources looks
//! at them in short pauses; readiness is a one-shot
//! wait registered with the thread pool per await, a stream's a read issued ahead; a
//! poller reports a ring once its callback has run (so a caller awaits `stirred` before
//! `drain`), watches a stream's peer's *process* for its end, and never reports a doorbell
//! hung up; a ringer's `id` is distinct for every handle (rings to one shared event are
//! repeated, not merged); an address is a pipe name, which goes with its last instance;
//! there is no handle limit to raise.

#[cfg(unix)]
mod posix;

#[cfg(test)]
mod conformance;

#[cfg(all(target_os = "linux", not(ringbell_force_posix)))]
mod linux;

// On other OSes for its tests: its arithmetic is platform-free.
#[cfg(any(target_vendor = "apple", test))]
mod macos;

#[cfg(unix)]
pub(crate) use posix::{
    current_user, doorbell_pair, is_resource_exhaustion, raise_resource_limit, sleep_until_rung,
    wait_readable, ControlListener, ControlStream, Doorbell, DoorbellRinger, Grant, Source, User,
    OUT_OF_HANDLES, RAISE_LIMIT_HINT,
};
// The handshake sends fewer; the conformance suite checks the limit.
#[cfg(all(unix, test))]
pub(crate) use posix::MAX_GRANTS;
#[cfg(all(unix, feature = "tokio"))]
pub(crate) use posix::{Poller, Stirred};

#[cfg(all(target_os = "linux", not(ringbell_force_posix)))]
pub(crate) use linux::{shared_wait, SharedRegion, BACKEND};

#[cfg(target_vendor = "apple")]
pub(crate) use macos::{shared_wait, SharedRegion, BACKEND};

#[cfg(all(target_os = "linux", ringbell_force_posix))]
pub(crate) use posix::{shared_wait, SharedRegion, BACKEND};

// Windows: steps 1 to 3 of docs/WINDOWS.md: the whole contract, readiness and the poller
// (step 3) among it, so both the blocking and the async API above `sys` are built there.
// On other OSes for its tests: its framing and address rule are platform-free.
#[cfg(any(windows, test))]
mod windows;

#[cfg(windows)]
pub(crate) use windows::{
    current_user, doorbell_pair, is_resource_exhaustion, raise_resource_limit, shared_wait,
    sleep_until_rung, wait_readable, ControlListener, ControlStream, Doorbell, DoorbellRinger,
    Grant, SharedRegion, Source, User, BACKEND, OUT_OF_HANDLES, RAISE_LIMIT_HINT,
};
// The handshake sends fewer; the conformance suite checks the limit.
#[cfg(all(windows, test))]
pub(crate) use windows::MAX_GRANTS;
#[cfg(all(windows, feature = "tokio"))]
pub(crate) use windows::{Poller, Stirred};

#[cfg(not(any(target_os = "linux", target_vendor = "apple", windows)))]
compile_error!("ringbell has backends for Linux, macOS (the POSIX one) and, in part, Windows only");
