//! The POSIX backend: what every Unix shares, and all of macOS's backend but its wait
//! (`sys/macos/`; its few macOS-only branches here are in `flags.rs`, `credentials.rs`,
//! `shm.rs` and `mapping.rs`; compiled and linted in CI, never run on a Mac yet).
//!
//! - shared memory: `shm_open` with a random name, unlinked at once (`shm.rs`), mapped
//!   by [`mapping`];
//! - no shared-memory wait: a blocking side sleeps on its doorbell (`no_shared_wait.rs`;
//!   macOS 14.4 has one, in `sys/macos/`);
//! - doorbells: Unix stream socket pairs ([`doorbell`]);
//! - the control channel: a Unix stream socket carrying fds with `SCM_RIGHTS`
//!   ([`socket`]), peer credentials from the kernel ([`credentials`]);
//! - grants: fds ([`grant`]);
//! - the poller: mio's, which is epoll on Linux and kqueue on macOS ([`poller`]);
//! - tokio readiness through `AsyncFd` ([`readiness`]); handle limits ([`limits`]).
//!
//! The Linux backend (`sys/linux/`) uses all of this but the shared memory and the wait.
//! Linux CI runs this backend whole with `--cfg ringbell_force_posix`.
//!
//! Where this backend is weaker on Linux than on macOS: a POSIX shm object on Linux can
//! be resized by anyone who holds it, so a peer of our uid could shrink the region under
//! our mapping and turn our next access into a `SIGBUS`; macOS refuses a second
//! `ftruncate` of a shm object, and Linux's own backend seals its memfd. See `shm.rs`.

mod credentials;
mod doorbell;
mod flags;
mod grant;
mod limits;
mod mapping;
#[cfg(all(target_os = "linux", ringbell_force_posix))]
mod no_shared_wait;
#[cfg(feature = "tokio")]
mod poller;
mod readiness;
#[cfg(any(ringbell_force_posix, not(target_os = "linux")))]
mod shm;
mod socket;

pub(crate) use credentials::{current_user, User};
pub(crate) use doorbell::{doorbell_pair, sleep_until_rung, Doorbell, DoorbellRinger};
pub(crate) use grant::Grant;
pub(crate) use limits::{
    is_resource_exhaustion, raise_resource_limit, OUT_OF_HANDLES, RAISE_LIMIT_HINT,
};
pub(crate) use mapping::SharedRegion;
#[cfg(all(target_os = "linux", not(ringbell_force_posix)))]
pub(in crate::sys) use mapping::{check_received, invalid};
#[cfg(all(target_os = "linux", ringbell_force_posix))]
pub(crate) use no_shared_wait::{shared_wait, BACKEND};
#[cfg(feature = "tokio")]
pub(crate) use poller::{Poller, Stirred};
#[cfg(test)]
pub(crate) use socket::MAX_FDS as MAX_GRANTS;
pub(crate) use socket::{wait_readable, ControlListener, ControlStream, Source};

/// Turns a rustix errno into a std error.
fn io_error(errno: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(errno)
}
