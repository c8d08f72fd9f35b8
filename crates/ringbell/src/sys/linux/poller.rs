//! A poller: one fd that becomes readable when any of many registered fds does, so that
//! one task can sleep on thousands of connections at once and learn, when it wakes, which
//! of them stirred. On Linux, an epoll instance.
//!
//! Registrations are edge-triggered: an fd is reported once per change (a doorbell rung
//! again while already readable is reported again, since every send to a socket is an
//! edge), so the owner never sees the same readiness twice and never needs to tell the
//! kernel that it has handled it. Each fd is registered with a `u64` key of the owner's
//! choosing, returned with its events.
//!
//! See epoll(7), epoll_create1(2), epoll_ctl(2), epoll_wait(2).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::epoll;
use rustix::io::Errno;

use super::io_error;

/// Events fetched by one `epoll_wait`; more are fetched by the next call.
const EVENTS_PER_CALL: usize = 256;

/// What a registered fd reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stirred {
    /// The key the fd was registered with.
    pub(crate) key: u64,
    /// It has bytes to read, or its peer hung up.
    pub(crate) readable: bool,
    /// Its peer hung up, or it has an error: for a control socket, the peer is gone.
    pub(crate) hung_up: bool,
}

/// An epoll instance. Dropping it closes it, which unregisters everything.
#[derive(Debug)]
pub(crate) struct Poller {
    fd: OwnedFd,
}

impl Poller {
    /// A new poller with nothing registered.
    pub(crate) fn new() -> io::Result<Poller> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io_error)?;
        Ok(Poller { fd })
    }

    /// Watches `fd` for readability and hang-up, reported with `key`.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, key: u64) -> io::Result<()> {
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ET;
        epoll::add(&self.fd, fd, epoll::EventData::new_u64(key), flags).map_err(io_error)
    }

    /// Stops watching `fd`. Must be called before `fd` is closed if another fd may still
    /// refer to the same open file (a `dup` or an fd passed to another process), since
    /// the registration belongs to the open file, not to the fd.
    pub(crate) fn remove(&self, fd: BorrowedFd<'_>) {
        // ENOENT (never added) and EBADF cannot leave anything registered.
        let _ = epoll::delete(&self.fd, fd);
    }

    /// Takes every event reported since the last call, without waiting, and passes each
    /// to `each`.
    pub(crate) fn drain(&self, mut each: impl FnMut(Stirred)) -> io::Result<()> {
        let no_wait = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // On the stack: an `Event` may hold a pointer, which would make a `Poller` that
        // kept them neither `Send` nor `Sync`.
        let mut buffer = [MaybeUninit::<epoll::Event>::uninit(); EVENTS_PER_CALL];
        loop {
            let events = match epoll::wait(&self.fd, &mut buffer, Some(&no_wait)) {
                Ok((events, _)) => events,
                Err(Errno::INTR) => continue,
                Err(errno) => return Err(io_error(errno)),
            };
            let fetched = events.len();
            for event in events.iter() {
                let flags = event.flags;
                let hung_up = flags.intersects(
                    epoll::EventFlags::RDHUP | epoll::EventFlags::HUP | epoll::EventFlags::ERR,
                );
                each(Stirred {
                    key: event.data.u64(),
                    readable: flags.contains(epoll::EventFlags::IN) || hung_up,
                    hung_up,
                });
            }
            if fetched < EVENTS_PER_CALL {
                return Ok(());
            }
        }
    }
}

impl AsFd for Poller {
    /// Readable while events are waiting to be drained.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::doorbell_pair;

    #[test]
    fn reports_a_ring_and_a_hang_up_with_their_keys() {
        let poller = Poller::new().unwrap();
        let (bell_a, ringer_a) = doorbell_pair().unwrap();
        let (bell_b, ringer_b) = doorbell_pair().unwrap();
        poller.add(bell_a.as_fd(), 7).unwrap();
        poller.add(bell_b.as_fd(), 9).unwrap();

        let mut seen = Vec::new();
        poller.drain(|stirred| seen.push(stirred)).unwrap();
        assert!(seen.is_empty(), "nothing rang yet: {seen:?}");

        ringer_a.ring();
        poller.drain(|stirred| seen.push(stirred)).unwrap();
        assert_eq!(
            seen,
            [Stirred {
                key: 7,
                readable: true,
                hung_up: false
            }]
        );

        // Edge-triggered: not reported again until something changes.
        seen.clear();
        poller.drain(|stirred| seen.push(stirred)).unwrap();
        assert!(seen.is_empty(), "reported twice: {seen:?}");

        drop(ringer_b);
        poller.drain(|stirred| seen.push(stirred)).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].key, 9);
        assert!(seen[0].hung_up);

        // Removed: a ring is no longer reported.
        seen.clear();
        poller.remove(bell_a.as_fd());
        ringer_a.ring();
        poller.drain(|stirred| seen.push(stirred)).unwrap();
        assert!(seen.is_empty(), "reported after removal: {seen:?}");
    }

    #[test]
    fn drains_more_events_than_one_call_fetches() {
        let poller = Poller::new().unwrap();
        let pairs: Vec<_> = (0..EVENTS_PER_CALL as u64 * 2 + 3)
            .map(|key| {
                let (bell, ringer) = doorbell_pair().unwrap();
                poller.add(bell.as_fd(), key).unwrap();
                ringer.ring();
                (bell, ringer)
            })
            .collect();
        let mut keys = Vec::new();
        poller.drain(|stirred| keys.push(stirred.key)).unwrap();
        keys.sort_unstable();
        assert_eq!(keys, (0..pairs.len() as u64).collect::<Vec<_>>());
    }
}
