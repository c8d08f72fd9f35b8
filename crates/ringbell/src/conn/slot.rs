//! A server's count of its connections and handshakes in progress, under its limit
//! (`ServerConfig::max_connections`). A [`ConnectionSlot`] travels from the handshake to
//! the connection it makes, and gives its place back when dropped. It also carries the
//! server's memory [`Budget`], which all its connections share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::budget::Budget;

/// A server's count of connections and handshakes in progress, under its limit.
#[derive(Debug)]
pub(crate) struct ConnectionSlots {
    held: Arc<AtomicUsize>,
    limit: usize,
    budget: Arc<Budget>,
}

impl ConnectionSlots {
    /// `limit` connections, sharing `budget` bytes for messages in transit.
    pub(crate) fn new(limit: usize, budget: usize) -> ConnectionSlots {
        ConnectionSlots {
            held: Arc::new(AtomicUsize::new(0)),
            limit,
            budget: Budget::new(budget),
        }
    }

    /// One place under the limit, or `None` if all are taken.
    pub(crate) fn try_take(&self) -> Option<ConnectionSlot> {
        self.held
            // SYNC: a count only; nothing is published through it, so Relaxed suffices:
            // the read-modify-write alone keeps takers from overshooting the limit.
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held < self.limit).then_some(held + 1)
            })
            .ok()
            .map(|_| ConnectionSlot {
                held: self.held.clone(),
                budget: self.budget.clone(),
            })
    }
}

/// One connection's (or handshake's) place under its server's connection limit, given
/// back when dropped, that is when the connection or the failed handshake is dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    held: Arc<AtomicUsize>,
    budget: Arc<Budget>,
}

impl ConnectionSlot {
    /// The server's memory budget.
    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        // SYNC: as in `try_take`, a count only.
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}
