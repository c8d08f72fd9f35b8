//! The platform contract. Everything that names an OS call lives below this module; the
//! rest of the crate is portable and talks to these types only.
//!
//! Every backend provides:
//!
//! * `SharedRegion` — a mapping of a shared-memory object that the creator can pass to a
//!   peer as an fd: `create(len) -> (SharedRegion, OwnedFd)` makes a zeroed, size-sealed
//!   object and maps it; `open(fd, len)` checks that a received object is sealed against
//!   resizing and has exactly `len` bytes *before* mapping it (a peer that could shrink
//!   the object would make every access a potential `SIGBUS`); `as_ptr()`, `len()`; the
//!   mapping is removed on drop, and no name is left in any file system.
//! * `OsFutex` — implements [`crate::wait::Futex`] on a word in shared memory, waking
//!   sleepers in *other processes* (so never a process-private futex), with an absolute
//!   monotonic deadline.
//! * `doorbell_pair() -> (Doorbell, DoorbellRinger)` — an fd a waiter can poll in an
//!   event loop, and the other end that wakes it: `Doorbell::drain()` and
//!   `DoorbellRinger::ring()` never block, whatever the peer does to its own end (so an
//!   fd shared with the peer, such as an eventfd, does not qualify); both have
//!   `from_peer(fd)` (checks what it received) and `as_fd()`.
//! * `ControlListener` / `ControlStream` — the local stream socket that carries the
//!   handshake and the fds, and whose end-of-file tells a side that its peer is gone:
//!   `bind(path)` (owner-only, replaces a dead server's socket file, refuses a live one
//!   with `AddrInUse`), `accept()`, `connect(path)`, `send_with_fds`, `recv_with_fds`,
//!   `peer_uid()`, `peer_gone()`; the listener removes its socket file on drop.
//! * `Poller` (for the tokio feature) — one pollable fd standing for many: `add(fd, key)`
//!   watches an fd for readability and hang-up, edge-triggered; `remove(fd)`;
//!   `drain(each)` reports, without waiting, every fd that stirred since the last call,
//!   by key. A server's sweeper sleeps on it for all its connections at once.
//! * `current_uid()`, and `raise_open_files_limit()` (to the hard limit, for servers).
//!
//! Linux is the only backend today; macOS and Windows follow behind the same contract.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!("ringbell supports Linux only for now; macOS and Windows backends are planned");
