//! The async API, for programs built on tokio (cargo feature `tokio`, on by default).
//!
//! [`AsyncConnection`] is a [`crate::Connection`] whose waits are tokio
//! futures: it spins for the connection's spin budget like the blocking API, then, instead
//! of sleeping on shared memory, announces that it waits in an event loop and awaits its
//! doorbell (and its control channel, which reports the peer's death) through the
//! runtime. No thread blocks per connection, and an idle connection costs nothing until
//! the peer rings.
//!
//! [`AsyncServer`] accepts connections without blocking the runtime: each handshake is a
//! task that waits on its client's control channel, all of them at once, so a client that
//! stalls its handshake delays nobody else. [`AsyncServer::serve`] runs a handler for
//! every request of every client from one *sweeper* task, which sweeps all the rings while
//! any has work and sleeps on one poller for all of them when none has.
//!
//! [`Client`] makes calls through a connection, and a [`ClientGroup`] drives many
//! clients' connections from one task: unary calls ([`Client::call`]), calls whose
//! responses stream ([`Client::call_stream`], a [`ResponseStream`]) and two-way calls
//! ([`Client::open`]), each with a timeout that travels to the server and metadata
//! ([`CallOptions`]). A server's handler gets each as a [`Call`]
//! ([`AsyncServer::serve_calls`]). Dropping a call's future or stream cancels it on the
//! server, where the handler learns of it at once ([`Call::cancelled`]). Every stream has
//! a credit window both ways, so a slow reader slows its writer, never the server's
//! memory or the connection's other calls.

mod call;
mod client;
mod connection;
mod serve;
mod server;
mod stream;

use std::time::{Duration, Instant};

use crate::conn::Connection;
use crate::core::wait::yield_if_spinning_long;
use crate::error::Error;
use crate::sys::{Poller, Source, Stirred};

pub use crate::core::call::{
    Metadata, ITEM_OVERHEAD, MAX_METADATA_ENTRIES, MAX_METADATA_KEY_LEN, MAX_METADATA_LEN,
    MAX_STREAM_WINDOW, REQUEST_WINDOW,
};
pub use call::Call;
pub use client::{Client, ClientGroup, DEFAULT_MAX_IN_FLIGHT};
pub use connection::AsyncConnection;
pub use server::AsyncServer;
pub use stream::{CallOptions, RequestSender, ResponseStream, DEFAULT_STREAM_WINDOW};

/// Checks between two yields to the runtime while spinning.
const SPINS_PER_YIELD: u32 = 64;

/// Spins for `budget` (`None`: until `ready()`, yielding to the runtime now and then;
/// zero: not at all) until `ready()`; returns whether it became ready. `started` is set
/// at the spin's first look at the clock, if it gets so far (see
/// [`SpinLearner`](crate::core::wait::SpinLearner), which the budget comes from and
/// which the caller then teaches how long the whole wait took, with [`waited_since`]).
async fn spin(
    budget: Option<Duration>,
    started: &mut Option<Instant>,
    mut ready: impl FnMut() -> Result<bool, Error>,
) -> Result<bool, Error> {
    if budget == Some(Duration::ZERO) {
        return Ok(false);
    }
    loop {
        for _ in 0..SPINS_PER_YIELD {
            if ready()? {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        let now = Instant::now();
        let since = *started.get_or_insert(now);
        match budget {
            None => ::tokio::task::yield_now().await,
            Some(budget) if now.duration_since(since) >= budget => return Ok(false),
            Some(_) => yield_if_spinning_long(since, now),
        }
    }
}

/// How long a wait that began at `started` (`None`: it never looked at the clock, so it
/// ended within its first spins) has taken.
fn waited_since(started: Option<Instant>) -> Duration {
    started.map_or(Duration::ZERO, |started| started.elapsed())
}

/// A [`Poller`], with a buffer for its events: what a server's sweeper and a client
/// group's driver sleep on, for all their connections at once.
#[derive(Debug)]
struct WatchedPoller {
    poller: Poller,
    /// The events of the last [`take`](Self::take), kept to reuse the allocation.
    events: Vec<Stirred>,
}

impl WatchedPoller {
    /// An empty poller, registered with the current runtime.
    fn new() -> Result<WatchedPoller, Error> {
        let poller = Poller::new().map_err(|error| Error::io("creating a poller", error))?;
        Ok(WatchedPoller {
            poller,
            events: Vec::new(),
        })
    }

    fn add(&self, source: &dyn Source, key: usize) -> std::io::Result<()> {
        self.poller.add(source, key)
    }

    fn remove(&self, source: &dyn Source) {
        self.poller.remove(source);
    }

    /// Waits until a watched source has stirred; [`take`](Self::take) then says which.
    async fn stirred(&self) -> std::io::Result<()> {
        self.poller.stirred().await
    }

    /// Every event since the last call, without waiting. Hand the vector back with
    /// [`give_back`](Self::give_back) to reuse it.
    fn take(&mut self) -> Vec<Stirred> {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        if let Err(error) = self.poller.drain(|event| events.push(event)) {
            tracing::warn!("ringbell: reading a poller: {error}");
        }
        events
    }

    fn give_back(&mut self, events: Vec<Stirred>) {
        self.events = events;
    }
}

/// Announces on `connection` that its driver is going to sleep: for the next message if
/// it is `receiving`, for room if a frame of `blocked` bytes waits for it. Returns `false`
/// if that has come already: look again, do not sleep.
fn arm(
    connection: &mut Connection,
    receiving: bool,
    blocked: Option<usize>,
) -> Result<bool, Error> {
    if receiving && !connection.arm_doorbell()? {
        return Ok(false);
    }
    if let Some(payload) = blocked {
        if !connection.arm_send_doorbell(payload)? {
            // Room, or the peer has gone, and then nothing will ever make room: find out
            // which (one syscall, and only here).
            connection.ensure_peer_alive()?;
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_types_are_send() {
        fn is_send<T: Send>() {}
        is_send::<AsyncConnection>();
        is_send::<AsyncServer>();
    }
}
