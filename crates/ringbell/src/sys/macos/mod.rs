//! The macOS backend: the POSIX backend (`sys/posix/`) with its shared-memory wait filled
//! in by `os_sync_wait_on_address` (macOS 14.4 and later, looked up at run time:
//! [`os_sync`]). On an older macOS it is the POSIX backend as it is, sleeping on the
//! doorbell.
//!
//! What else macOS needs is in `posix/`, as branches of the code that Linux CI runs with
//! `--cfg ringbell_force_posix`: `SO_NOSIGPIPE` and `fcntl` where macOS lacks
//! `MSG_NOSIGNAL` and `SOCK_CLOEXEC`, and its 104-byte `sun_path` (`posix/flags.rs`);
//! `getpeereid` and `LOCAL_PEERPID` (`posix/credentials.rs`); shm objects sized in
//! multiples of 16 KiB, the one-`ftruncate` rule (`posix/shm.rs`), and the kind and size
//! checks of a received shm fd (`posix/mapping.rs`).
//!
//! Why not POSIX semaphores, which the original design named: macOS has no unnamed ones
//! (`sem_init` fails with `ENOSYS`), no `sem_timedwait`, and named ones outlive a crash.
//!
//! CI compiles and lints this for `aarch64-apple-darwin` and `x86_64-apple-darwin`; it has
//! never run on a Mac (see `docs/MACOS.md`). Its arithmetic ([`timeout`]) is platform-free
//! and tested on every OS.

#[cfg(target_vendor = "apple")]
mod os_sync;
mod timeout;

#[cfg(target_vendor = "apple")]
pub(crate) use super::posix::SharedRegion;
#[cfg(target_vendor = "apple")]
pub(crate) use os_sync::shared_wait;

/// This backend's name, for reports.
#[cfg(target_vendor = "apple")]
pub(crate) const BACKEND: &str = "macos";
