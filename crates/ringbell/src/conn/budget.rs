//! A server's memory budget (`ServerConfig::memory_budget`): one count, shared by all its
//! connections, of the bytes it holds for messages in transit.
//!
//! What is charged, and when:
//!
//! - a chunked message being received: its announced length, reserved when its first
//!   chunk is taken (`conn/receive.rs`). The reservation is only a count: the buffer
//!   itself still grows as the bytes arrive (`grow_for_chunk`), so memory follows what the
//!   peer paid for in ring bandwidth. Reserving the whole length up front is what keeps
//!   honest clients from deadlocking: a message that has begun can always finish, however
//!   many others arrive at once, so the budget never holds a set of half-received
//!   messages that each wait for the others' room;
//! - in `AsyncServer::serve`, a call under way: its request, from the moment it is taken,
//!   and then its reply, until the reply is in the ring (`tokio/serve.rs`). That memory
//!   exists already, so it is charged even past the limit ([`Budget::charge`]); what the
//!   sweeper refuses, while the budget is spent, is taking more requests from a connection
//!   that already has calls under way.
//!
//! What a connection does when the budget has no room: it waits. The chunk stays in its
//! ring, the sender finds the ring full and waits too, as it does for a slow reader:
//! backpressure, which loses nothing. A refusal would have to drop a message the sender
//! believes sent (a plain connection has no reply to carry the error). A waiter sleeps
//! (a condition variable for a blocking `recv`, a tokio `Notify` for the async side) and
//! is woken by the next release, so waiting costs no CPU.
//!
//! A hostile client can hold a reservation and stall; the stall timeout
//! (`ServerConfig::stall_timeout`) closes a connection that stops in the middle of a
//! message, which gives its reservation back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// A server's count of bytes held for messages in transit, under its limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Receivers waiting for room: a release looks at this before it takes the lock.
    waiting: AtomicUsize,
    /// Counts releases made while someone waited, so that a blocking waiter cannot miss
    /// one between its last look and its sleep.
    releases: Mutex<u64>,
    released: Condvar,
    #[cfg(ringbell_async)]
    notify: ::tokio::sync::Notify,
}

/// Bytes charged to a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            releases: Mutex::new(0),
            released: Condvar::new(),
            #[cfg(ringbell_async)]
            notify: ::tokio::sync::Notify::new(),
        })
    }

    /// Charges `bytes` if they fit under the limit, or returns `None`.
    pub(crate) fn try_charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        self.used
            // SYNC: SeqCst, as in `release`, against a waiter's increment of `waiting`:
            // either the waiter sees this room, or the releaser sees the waiter.
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .ok()
            .map(|_| Charge {
                budget: self.clone(),
                bytes,
            })
    }

    /// Charges `bytes` whether or not they fit: for memory that is held already.
    #[cfg(ringbell_async)]
    pub(crate) fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        // SYNC: as in `try_charge`.
        self.used.fetch_add(bytes, Ordering::SeqCst);
        Charge {
            budget: self.clone(),
            bytes,
        }
    }

    /// Whether everything is charged: no new work should be taken on.
    #[cfg(ringbell_async)]
    pub(crate) fn spent(&self) -> bool {
        // SYNC: a heuristic for the sweeper; a stale answer delays a request by one sweep.
        self.used.load(Ordering::Relaxed) >= self.limit
    }

    /// Bytes charged now, for tests and reports.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    fn release(&self, bytes: usize) {
        // SYNC: SeqCst, paired with the SeqCst increment of `waiting` in the waits below.
        self.used.fetch_sub(bytes, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        *self
            .releases
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) += 1;
        self.released.notify_all();
        #[cfg(ringbell_async)]
        self.notify.notify_waiters();
    }

    /// Waits until `bytes` can be charged, or until `until`, whichever comes first.
    /// Returns the charge if it was made.
    pub(crate) fn charge_within(self: &Arc<Self>, bytes: usize, until: Instant) -> Option<Charge> {
        let _waiting = Waiting::new(self);
        let mut releases = self
            .releases
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        loop {
            // Looked at after `waiting` went up and with the lock held: a release after
            // this look bumps `releases` under the same lock, so the sleep below sees it.
            if let Some(charge) = self.try_charge(bytes) {
                return Some(charge);
            }
            let left = until.checked_duration_since(Instant::now())?;
            let seen = *releases;
            let (guard, _) = self
                .released
                .wait_timeout_while(releases, left, |now| *now == seen)
                .unwrap_or_else(|poison| poison.into_inner());
            releases = guard;
            if *releases == seen {
                // Timed out with no release.
                return self.try_charge(bytes);
            }
        }
    }

    /// A notice of the next release, registered now: make it before the last try that
    /// failed, then await it, and no release between the two is missed (tokio's
    /// `notify_waiters` reaches a `Notified` from its creation, polled or not).
    #[cfg(ringbell_async)]
    pub(crate) fn notice(&self) -> ReleaseNotice<'_> {
        ReleaseNotice {
            _waiting: Waiting::new(self),
            notified: self.notify.notified(),
        }
    }
}

/// The next release of a [`Budget`]'s bytes, awaited with [`wait`](Self::wait).
#[cfg(ringbell_async)]
pub(crate) struct ReleaseNotice<'a> {
    _waiting: Waiting<'a>,
    notified: ::tokio::sync::futures::Notified<'a>,
}

#[cfg(ringbell_async)]
impl ReleaseNotice<'_> {
    pub(crate) async fn wait(self) {
        self.notified.await;
    }
}

/// Counts one waiter in `waiting` while it lives.
struct Waiting<'a>(&'a Budget);

impl<'a> Waiting<'a> {
    fn new(budget: &'a Budget) -> Self {
        // SYNC: SeqCst, paired with `release`.
        budget.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(budget)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // SYNC: a count; SeqCst like its increment.
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Charge {
    /// Makes this charge `bytes`, whether or not they fit (held already), releasing the
    /// difference if it shrinks.
    #[cfg(ringbell_async)]
    pub(crate) fn resize(&mut self, bytes: usize) {
        if bytes > self.bytes {
            // SYNC: as in `Budget::charge`.
            self.budget
                .used
                .fetch_add(bytes - self.bytes, Ordering::SeqCst);
        } else if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn charges_fit_under_the_limit_and_come_back_on_drop() {
        let budget = Budget::new(100);
        let first = budget.try_charge(60).unwrap();
        assert!(budget.try_charge(41).is_none());
        let second = budget.try_charge(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(first);
        assert_eq!(budget.used(), 40);
        drop(second);
        assert_eq!(budget.used(), 0);
        // Not even an overflowing request gets in.
        assert!(budget.try_charge(usize::MAX).is_none());
    }

    #[test]
    fn a_blocked_charge_is_made_when_another_is_released() {
        let budget = Budget::new(100);
        let held = budget.try_charge(100).unwrap();
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || {
                budget
                    .charge_within(50, Instant::now() + Duration::from_secs(60))
                    .map(|charge| charge.bytes)
            })
        };
        // Whenever the waiter gets there, before or after this drop, it gets its room.
        drop(held);
        assert_eq!(waiter.join().unwrap(), Some(50));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_blocked_charge_gives_up_at_its_deadline() {
        let budget = Budget::new(10);
        let _held = budget.try_charge(10).unwrap();
        assert!(budget.charge_within(1, Instant::now()).is_none());
    }
}
