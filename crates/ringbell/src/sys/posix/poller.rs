//! A poller: one waitable fd that becomes readable when any of many registered sources
//! does, so that one task can sleep on thousands of connections at once and learn, when
//! it wakes, which of them stirred.
//!
//! It is mio's `Poll`: epoll on Linux, kqueue (with `EV_CLEAR`) on macOS. mio rather than
//! our own epoll and kqueue code, or `poll(2)`: it is made for exactly this, tokio already
//! depends on it, it gives both OSes one edge-triggered interface, and its epoll or kqueue
//! fd is itself pollable, so tokio can await it. `poll(2)` has no such fd (a thread would
//! have to block in it for the runtime) and costs a pass over every fd per call.
//!
//! Registrations are edge-triggered: a source is reported once per change (a doorbell
//! rung again while already readable is reported again, since every send to a socket is
//! an edge), so the owner never sees the same readiness twice and never needs to tell the
//! kernel that it has handled it. Each source is registered with a key of the owner's
//! choosing, returned with its events.
//!
//! See epoll(7) and kqueue(2).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::readiness::Registration;
use super::Source;

/// Events fetched by one poll; more are fetched by the next call.
const EVENTS_PER_CALL: usize = 256;

/// What a registered source reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stirred {
    /// The key the source was registered with.
    pub(crate) key: usize,
    /// It has bytes to read, or its peer hung up.
    pub(crate) readable: bool,
    /// Its peer hung up, or it has an error: for a control socket, the peer is gone.
    pub(crate) hung_up: bool,
}

/// A poller, registered with the tokio runtime it was made in. Dropping it closes it,
/// which unregisters everything.
#[derive(Debug)]
pub(crate) struct Poller {
    /// The poller's own fd in the runtime; declared before `poll`, which owns that fd, so
    /// that it is dropped first.
    registration: Registration,
    poll: Poll,
    events: Events,
}

impl Poller {
    /// A new poller with nothing registered, registered with the current tokio runtime.
    pub(crate) fn new() -> io::Result<Poller> {
        let poll = Poll::new()?;
        let mut registration = Registration::default();
        // SAFETY: the registry's fd is the poll's own, owned by `poll`, which becomes a
        // field declared after `registration`, so the registration goes first; the poll
        // is never replaced.
        unsafe { registration.register(poll.registry().as_fd())? };
        Ok(Poller {
            registration,
            poll,
            events: Events::with_capacity(EVENTS_PER_CALL),
        })
    }

    /// Watches `source` for readability and hang-up, reported with `key`.
    pub(crate) fn add(&self, source: &dyn Source, key: usize) -> io::Result<()> {
        let fd = source.source().as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), Token(key), Interest::READABLE)
    }

    /// Stops watching `source`. Must be called before the source is closed if another fd
    /// may still refer to the same open file (a `dup`, or an fd passed to another
    /// process), since the registration belongs to the open file, not to the fd.
    pub(crate) fn remove(&self, source: &dyn Source) {
        let fd = source.source().as_raw_fd();
        // ENOENT (never added) and EBADF cannot leave anything registered.
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
    }

    /// Waits until a watched source has stirred; [`drain`](Self::drain) then says which.
    pub(crate) async fn stirred(&self) -> io::Result<()> {
        self.registration.readable().await.map(drop)
    }

    /// Takes every event reported since the last call, without waiting, and passes each
    /// to `each`.
    pub(crate) fn drain(&mut self, mut each: impl FnMut(Stirred)) -> io::Result<()> {
        loop {
            match self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            let mut fetched = 0;
            for event in self.events.iter() {
                fetched += 1;
                let hung_up = event.is_read_closed() || event.is_error();
                each(Stirred {
                    key: event.token().0,
                    readable: event.is_readable() || hung_up,
                    hung_up,
                });
            }
            if fetched < EVENTS_PER_CALL {
                return Ok(());
            }
        }
    }
}
