//! The shared-memory wait of macOS 14.4 and later: `os_sync_wait_on_address` and
//! `os_sync_wake_by_address_all` with their `SHARED` flags (libplatform's
//! `<os/os_sync_wait_on_address.h>`), the public successors of the private `__ulock_*`
//! calls. With `SHARED`, the wait is keyed on the memory object, not on our address space,
//! so a waker in the peer process wakes us, as with Linux's shared futex.
//!
//! The two functions are looked up at run time (`dlsym`), once: linking them would make
//! the binary refuse to start before 14.4. Where they are missing, [`shared_wait`] is
//! `None` and a waiting side sleeps on its doorbell, as on the POSIX backend. Both ends of
//! a connection run on the same OS, so they agree on whether the functions exist.

#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::io;
use std::sync::OnceLock;
use std::time::Instant;

use super::timeout::timeout_ns;
use crate::core::sync::AtomicU32;
use crate::core::wait::{Sleeper, Woke, SLEEP_FUTEX};

/// `os_sync_wait_on_address_with_timeout(addr, value, size, flags, clockid, timeout_ns)`,
/// in the `libc` crate's own types for it.
type WaitWithTimeout = unsafe extern "C" fn(
    *mut c_void,
    u64,
    libc::size_t,
    libc::os_sync_wait_on_address_flags_t,
    libc::os_clockid_t,
    u64,
) -> c_int;
/// `os_sync_wake_by_address_all(addr, size, flags)`.
type WakeAll =
    unsafe extern "C" fn(*mut c_void, libc::size_t, libc::os_sync_wake_by_address_flags_t) -> c_int;

/// The size of every word we wait on: the `seq` of a `WaitCell`. Both ends must pass the
/// same size and flags for a word, or the kernel refuses the second with `EDOM`.
const WORD: usize = std::mem::size_of::<u32>();

/// `os_sync`'s wait and wake, as found in this process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedWait {
    wait: WaitWithTimeout,
    wake: WakeAll,
}

/// The shared-memory wait, if this macOS has one (14.4 and later).
pub(crate) fn shared_wait() -> Option<SharedWait> {
    static FOUND: OnceLock<Option<SharedWait>> = OnceLock::new();
    *FOUND.get_or_init(look_up)
}

fn look_up() -> Option<SharedWait> {
    // SAFETY: `dlsym` with `RTLD_DEFAULT` and a NUL-terminated name only searches the
    // images already loaded; it returns null for a missing symbol.
    let (wait, wake) = unsafe {
        (
            libc::dlsym(
                libc::RTLD_DEFAULT,
                c"os_sync_wait_on_address_with_timeout".as_ptr(),
            ),
            libc::dlsym(libc::RTLD_DEFAULT, c"os_sync_wake_by_address_all".as_ptr()),
        )
    };
    if wait.is_null() || wake.is_null() {
        return None;
    }
    // SAFETY: both symbols are functions with these C signatures (the header above, and
    // the `libc` crate's declarations of the same functions).
    unsafe {
        Some(SharedWait {
            wait: std::mem::transmute::<*mut c_void, WaitWithTimeout>(wait),
            wake: std::mem::transmute::<*mut c_void, WakeAll>(wake),
        })
    }
}

impl Sleeper for SharedWait {
    fn announcement(&self) -> u32 {
        SLEEP_FUTEX
    }

    fn sleep(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> Woke {
        let Some(timeout) = timeout_ns(deadline, Instant::now()) else {
            return Woke::Maybe;
        };
        // SAFETY: `word` is a live, aligned 4-byte word (in memory shared with the peer,
        // which may write it at any time: the kernel only compares it with `expected`).
        let result = unsafe {
            (self.wait)(
                word.as_ptr().cast(),
                u64::from(expected),
                WORD,
                libc::OS_SYNC_WAIT_ON_ADDRESS_SHARED,
                libc::OS_CLOCK_MACH_ABSOLUTE_TIME,
                timeout,
            )
        };
        if result >= 0 {
            return Woke::Maybe;
        }
        match io::Error::last_os_error().raw_os_error() {
            // Timed out or interrupted: the caller looks at its condition again, and bounds
            // every wait by its own deadline.
            Some(libc::ETIMEDOUT | libc::EINTR) => Woke::Maybe,
            // `EDOM`: someone waits on this word with another size or mode (only a confused
            // or hostile peer would); `EINVAL`, `EFAULT`, `ENOMEM` and the rest: this OS
            // will not do it now, and might not on the next try either, which would make
            // the wait a busy loop. Sleep on the doorbell instead, for the rest of this
            // wait (`core::wait::Fallback`); never a panic.
            _ => Woke::Unavailable,
        }
    }
}

impl SharedWait {
    /// Wakes every thread, in any process, sleeping on `word`. Every word has one waiter
    /// by design, but `…_all` rather than `…_any` leaves no honest waiter asleep if a
    /// hostile peer waits on the same word too.
    pub(crate) fn wake(&self, word: &AtomicU32) {
        // `ENOENT` means nobody waited, the usual case; any other error can only come from
        // a peer that confused the word, whose own waits then end at their deadlines.
        // SAFETY: as in `sleep`.
        let _ = unsafe {
            (self.wake)(
                word.as_ptr().cast(),
                WORD,
                libc::OS_SYNC_WAKE_BY_ADDRESS_SHARED,
            )
        };
    }
}
