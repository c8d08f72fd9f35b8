//! Shared futexes: see futex(2). The word lives in a `MAP_SHARED` mapping, so the wait
//! queue is keyed on the memory object, not on our address space: waiters in other
//! processes are woken. That is why `FUTEX_PRIVATE_FLAG` is never set here.

use std::num::NonZeroU32;
use std::time::Instant;

use rustix::thread::futex::{self, Timespec};
use rustix::time::{clock_gettime, ClockId};

use crate::core::sync::AtomicU32;
use crate::core::wait::{Sleeper, Woke, SLEEP_FUTEX};

/// The kernel's futex, on a word in shared memory.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SharedWait;

/// Linux always has one.
#[inline]
pub(crate) fn shared_wait() -> Option<SharedWait> {
    Some(SharedWait)
}

/// `FUTEX_BITSET_MATCH_ANY`: with `FUTEX_WAIT_BITSET` this is a plain wait, but one whose
/// timeout is an absolute `CLOCK_MONOTONIC` time, so retries never stretch a deadline.
const MATCH_ANY: NonZeroU32 = NonZeroU32::MAX;

/// `deadline` as an absolute `CLOCK_MONOTONIC` time. `Instant` is `CLOCK_MONOTONIC` on
/// Linux, but does not expose its value, so take the distance from now.
fn absolute(deadline: Instant) -> Timespec {
    let now = clock_gettime(ClockId::Monotonic);
    let remaining = deadline.saturating_duration_since(Instant::now());
    let nanos = now.tv_nsec as u64 + u64::from(remaining.subsec_nanos());
    Timespec {
        tv_sec: now.tv_sec + remaining.as_secs() as i64 + (nanos / 1_000_000_000) as i64,
        tv_nsec: (nanos % 1_000_000_000) as _,
    }
}

impl Sleeper for SharedWait {
    fn announcement(&self) -> u32 {
        SLEEP_FUTEX
    }

    fn sleep(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> Woke {
        let timeout = deadline.map(absolute);
        // EAGAIN (the value changed), EINTR and ETIMEDOUT all mean "look again", which the
        // caller does; it also bounds every wait by its own deadline, so no error here can
        // turn into a sleep without end.
        let _ = futex::wait_bitset(
            word,
            futex::Flags::empty(),
            expected,
            timeout.as_ref(),
            MATCH_ANY,
        );
        Woke::Maybe
    }
}

impl SharedWait {
    /// Wakes every thread, in any process, sleeping on `word`.
    pub(crate) fn wake(&self, word: &AtomicU32) {
        let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
    }
}
