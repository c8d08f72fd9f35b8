//! The blocking waits of the contract on Windows: there is no shared-memory wait, so a
//! blocking side sleeps on its doorbell, and that sleep also watches the peer's process.
//!
//! [`sleep_until_rung`] is the contract's form of `doorbell::sleep_until_rung_or_ended`:
//! it takes the connection's `ControlStream`, which holds the peer's process (the server
//! opens its client's, the client adopts the one its server pushed with the welcome), and
//! returns the platform-free `Woke`: a ring or a timeout is `Woke::Maybe` (the caller
//! looks again), the peer's end `Woke::PeerHungUp` (the caller checks the peer at once,
//! and `ControlStream::peer_gone` then sees the ended process).

use std::time::{Duration, Instant};

use super::doorbell::{sleep_until_rung_or_ended, Doorbell, Rang};
use super::pipe::ControlStream;
use crate::core::wait::{Woke, PEER_CHECK_INTERVAL};

/// Sleeps until `doorbell` is rung, the peer at the other end of `control` ends, or
/// `deadline` passes (`None`: no bound); may return early. The caller drains the doorbell
/// when it wakes (here a wait that saw the ring has reset it already; the drain is
/// harmless).
///
/// Never a busy loop, whatever fails: a stream without the peer's process yet (a client
/// before its welcome; no connection sleeps then) sleeps on the doorbell alone, at most
/// [`PEER_CHECK_INTERVAL`] at a time, so that the caller's periodic look at the pipe still
/// comes; and a wait the OS refuses (it should not: both handles are ours and carry
/// `SYNCHRONIZE`) sleeps the same slice out before returning, so that a caller that loops
/// on it does not spin.
pub(crate) fn sleep_until_rung(
    doorbell: &Doorbell,
    control: &ControlStream,
    deadline: Option<Instant>,
) -> Woke {
    let slice = || {
        let cap = Instant::now() + PEER_CHECK_INTERVAL;
        deadline.map_or(cap, |deadline| deadline.min(cap))
    };
    let outcome = match control.peer_process() {
        Ok(peer) => sleep_until_rung_or_ended(doorbell, Some(peer), deadline),
        Err(_) => sleep_until_rung_or_ended(doorbell, None, Some(slice())),
    };
    match outcome {
        Ok(Rang::Rung | Rang::TimedOut) => Woke::Maybe,
        Ok(Rang::PeerEnded) => Woke::PeerHungUp,
        Err(error) => {
            tracing::debug!("a doorbell wait failed ({error}); sleeping out the slice instead");
            let until = slice();
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            );
            Woke::Maybe
        }
    }
}

/// Windows has no way for a process to sleep on a word of shared memory until another
/// process wakes it: `WaitOnAddress` wakes only threads of its own process, and a waiter
/// in another one is never woken (it hangs, silently). So this backend has none, and a
/// waiting side sleeps on its doorbell, as on the POSIX backend. Uninhabited: the code
/// that would call it is statically dead here.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SharedWait {}

/// No shared-memory wait on this backend: see [`SharedWait`].
pub(crate) fn shared_wait() -> Option<SharedWait> {
    None
}

impl SharedWait {
    /// Never called: there is no value to call it on.
    pub(crate) fn wake(&self, _word: &crate::core::sync::AtomicU32) {
        match *self {}
    }
}

impl crate::core::wait::Sleeper for SharedWait {
    fn announcement(&self) -> u32 {
        match *self {}
    }

    fn sleep(
        &self,
        _word: &crate::core::sync::AtomicU32,
        _expected: u32,
        _deadline: Option<Instant>,
    ) -> Woke {
        match *self {}
    }
}
