//! The Windows backend, steps 1 to 3 of `docs/WINDOWS.md`: the whole platform contract,
//! built on `windows-sys` and tested under Wine (never on real Windows yet). The blocking
//! and the async API above `sys` run on it.
//!
//! - shared memory: an unnamed, pagefile-backed `SEC_COMMIT` section, whose size is fixed
//!   at creation and which dies with its last handle and view ([`region`]);
//! - grants: handles, pushed into the peer with `DuplicateHandle` and reduced rights, or
//!   pulled from it, and received as integer values that are checked before use
//!   ([`handle`]);
//! - doorbells: one auto-reset event, and a blocking wait that also ends when the peer's
//!   process does ([`doorbell`]); the contract's form of that wait, which takes the
//!   peer's process from the control stream, and the absence of a shared-memory wait
//!   ([`wait`]);
//! - users: the SID of a process's token ([`user`]);
//! - the control channel: named pipes, owner-only, in byte mode with frames that carry
//!   handle values beside the bytes; the server pushes its grants (and its own process
//!   handle, for the client's waits), the client offers its own for the server to pull;
//!   `wait_readable` over a listener and streams ([`pipe`]; the frames in [`frame`] and
//!   the address rule in [`pipe_name`], both platform-free and tested on every OS);
//! - resource exhaustion: no handle limit to raise, and the errors that mean the system
//!   ran out ([`limits`]);
//! - readiness for tokio (step 3): one-shot waits registered with the system thread pool,
//!   re-armed by each await, whose callbacks wake the task (`readiness.rs`), on a
//!   doorbell's event, the listener's connect event, a read issued ahead on the control
//!   pipe (`pipe.rs`) and the peer's process; and the poller, one queue of stirred keys
//!   fed by such waits (`poller.rs`).
//!
//! There is no `SharedWait`: `WaitOnAddress` wakes only threads of its own process, and
//! across processes it hangs silently, so a blocking side sleeps on its doorbell, as on
//! the POSIX backend.

// Compiled on every OS for their tests (like `sys/macos/timeout.rs`): the framing and the
// address rule are platform-free; the rest is Windows calls.
#[cfg(windows)]
mod doorbell;
#[cfg_attr(not(windows), allow(dead_code))]
mod frame;
#[cfg(windows)]
mod handle;
#[cfg(windows)]
mod limits;
#[cfg(windows)]
mod pipe;
mod pipe_name;
#[cfg(all(windows, feature = "tokio"))]
mod poller;
#[cfg(all(windows, feature = "tokio"))]
mod readiness;
#[cfg(windows)]
mod region;
#[cfg(windows)]
mod security;
#[cfg(all(test, windows))]
mod tests;
#[cfg(windows)]
mod user;
#[cfg(windows)]
mod wait;

#[cfg(windows)]
pub(crate) use doorbell::{doorbell_pair, Doorbell, DoorbellRinger};
// The form of the wait that says how it ended, for the backend's own tests.
#[cfg(all(windows, test))]
pub(crate) use doorbell::{sleep_until_rung_or_ended, Rang};
#[cfg(all(windows, test))]
pub(crate) use frame::MAX_GRANTS;
#[cfg(windows)]
pub(crate) use handle::{Grant, PeerProcess, PushedHandle};
#[cfg(windows)]
pub(crate) use limits::{
    is_resource_exhaustion, raise_resource_limit, OUT_OF_HANDLES, RAISE_LIMIT_HINT,
};
#[cfg(windows)]
pub(crate) use pipe::{wait_readable, ControlListener, ControlStream, Source};
#[cfg(all(windows, feature = "tokio"))]
pub(crate) use poller::{Poller, Stirred};
#[cfg(windows)]
pub(crate) use region::SharedRegion;
#[cfg(windows)]
pub(crate) use user::{current_user, User};
#[cfg(windows)]
pub(crate) use wait::{shared_wait, sleep_until_rung};

/// This backend's name, for reports.
#[cfg(windows)]
pub(crate) const BACKEND: &str = "windows";

/// An `InvalidData` error about an object received from the peer.
fn invalid(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}
