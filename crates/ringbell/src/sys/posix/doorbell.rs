//! Doorbells: how a side that waits in an event loop is woken. A doorbell is the two ends
//! of a Unix stream socket pair: the waiter polls its end ([`Doorbell`]), the other side
//! sends a byte to its end ([`DoorbellRinger`]) when the waiter announced that it sleeps.
//!
//! Why not an eventfd, as first planned: an eventfd passed with `SCM_RIGHTS` is one open
//! file description shared by both processes, so the peer can clear its `O_NONBLOCK` flag
//! and fill its counter, and our next `write(2)` to it blocks for ever — one hostile
//! client could stall a whole event loop. Each end of a socket pair is a description of
//! its own, and every call here passes `MSG_DONTWAIT` (non-blocking per call, whatever the
//! flags), and never raises `SIGPIPE` when the peer has gone (`MSG_NOSIGNAL`, or
//! `SO_NOSIGPIPE` on macOS: see `flags.rs`). A ring costs one
//! `send(2)`, paid only when the peer sleeps in an event loop.
//!
//! See socketpair(2), send(2), recv(2), poll(2).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rustix::fs::{fstat, FileType};
use rustix::io::Errno;
use rustix::net::{recv, send, AddressFamily, RecvFlags, SendFlags, SocketType};

use super::flags::{self, HANG_UP, SEND};
use super::readiness::Registered;
use super::socket::{poll_timeout, ControlStream};
use super::{io_error, Grant};
use crate::core::wait::Woke;

/// The end a waiter polls: readable after a ring.
#[derive(Debug)]
pub(crate) struct Doorbell {
    /// With its registration with the tokio runtime, if it has one.
    fd: Registered<OwnedFd>,
    /// A wait saw the other end hang up (the peer closed or shut down its ringer): nobody
    /// can ring this doorbell again, and a wait on it would return at once for ever. Its
    /// owner treats that as the peer's death (see [`closed`](Self::closed)).
    closed: AtomicBool,
}

/// The end the other side rings.
#[derive(Debug)]
pub(crate) struct DoorbellRinger {
    fd: OwnedFd,
    /// The socket's identity (device and inode): the same for every fd of this socket,
    /// whichever process passed it, and different for every other open socket. Read by
    /// the tokio server only.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    id: u64,
}

/// A new doorbell and its ringer, not rung.
pub(crate) fn doorbell_pair() -> io::Result<(Doorbell, DoorbellRinger)> {
    let (bell, ringer) = flags::stream_pair(true)?;
    let id = identity(&fstat(&ringer).map_err(io_error)?);
    Ok((Doorbell::new(bell), DoorbellRinger { fd: ringer, id }))
}

/// A socket's identity: device and inode of its sockfs inode, unique among open sockets.
fn identity(stat: &rustix::fs::Stat) -> u64 {
    // Sockets all live on the one sockfs device; mixing the device in keeps a file of
    // another file system, with a chosen inode number, from passing for a given socket.
    // (Casts: the field types differ between OSes; no bit of either is lost.)
    #[allow(clippy::unnecessary_cast)]
    let (ino, dev) = (stat.st_ino as u64, stat.st_dev as u64);
    ino ^ dev.rotate_left(40)
}

/// Checks that an fd received from the peer is a Unix stream socket, as every doorbell
/// end is (not merely something whose mode says socket, such as an `O_PATH` fd of a
/// socket file, which would fail every ring), and returns its identity.
fn check_socket(fd: &OwnedFd) -> io::Result<u64> {
    let stat = fstat(fd).map_err(io_error)?;
    let not_a_doorbell = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "a doorbell fd passed by the peer is not a Unix stream socket",
        )
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
        return Err(not_a_doorbell());
    }
    let domain = rustix::net::getsockname(fd)
        .map_err(|_| not_a_doorbell())?
        .address_family();
    let kind = rustix::net::sockopt::socket_type(fd).map_err(|_| not_a_doorbell())?;
    if domain != AddressFamily::UNIX || kind != SocketType::STREAM {
        return Err(not_a_doorbell());
    }
    Ok(identity(&stat))
}

impl Doorbell {
    fn new(fd: OwnedFd) -> Doorbell {
        Doorbell {
            fd: Registered::new(fd),
            closed: AtomicBool::new(false),
        }
    }

    /// Whether a wait saw the other end hang up: no ring can come any more. The peer
    /// either died (its control stream will say so) or made itself impossible to wait
    /// for; either way its connection is over.
    pub(crate) fn closed(&self) -> bool {
        // SYNC: Relaxed: a flag read by the thread that set it, or by one that only closes
        // the connection on the strength of it; it publishes nothing.
        self.closed.load(Ordering::Relaxed)
    }

    /// Records that the other end hung up (for an owner that learnt it from a poller).
    pub(crate) fn mark_closed(&self) {
        // SYNC: as in `closed`.
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Adopts a doorbell end received from the peer, after checking what it is.
    pub(crate) fn adopt(grant: Grant) -> io::Result<Doorbell> {
        let fd = grant.into_fd();
        check_socket(&fd)?;
        Ok(Doorbell::new(fd))
    }

    /// This end, to send to the peer (which will wait on it).
    pub(crate) fn into_grant(self) -> Grant {
        Grant::from_fd(self.fd.into_inner())
    }

    /// Another handle for the same doorbell (`dup`), for a connection that shares it.
    #[cfg(feature = "tokio")]
    pub(crate) fn try_clone(&self) -> io::Result<Doorbell> {
        Ok(Doorbell::new(self.fd.try_clone()?))
    }

    /// Registers the doorbell with the current tokio runtime, for [`rung`](Self::rung).
    /// Does nothing if it is registered already.
    #[cfg(feature = "tokio")]
    pub(crate) fn register(&mut self) -> io::Result<()> {
        self.fd.register()
    }

    /// Undoes [`register`](Self::register).
    #[cfg(feature = "tokio")]
    pub(crate) fn deregister(&mut self) {
        self.fd.deregister();
    }

    /// Waits, in the tokio runtime it is registered with, until the doorbell is rung or the
    /// peer's end closes (then [`closed`](Self::closed) says so from here on). The caller
    /// then [`drain`](Self::drain)s it.
    #[cfg(feature = "tokio")]
    pub(crate) async fn rung(&self) -> io::Result<()> {
        // tokio never clears a read-closed readiness, so every later wait would return at
        // once: the caller must stop waiting, which `closed` tells it.
        if self.fd.readable().await? {
            self.mark_closed();
        }
        Ok(())
    }

    /// Resets the doorbell after a wake-up. Never blocks: reads until nothing is left,
    /// a bounded number of times (a peer that rings without pause cannot keep us here).
    pub(crate) fn drain(&self) {
        let mut bytes = [0u8; 256];
        for _ in 0..16 {
            match recv(&self.fd, &mut bytes, RecvFlags::DONTWAIT) {
                Ok((read, _)) if read == bytes.len() => continue,
                Err(Errno::INTR) => continue,
                _ => break,
            }
        }
    }
}

impl DoorbellRinger {
    /// Adopts a ringer end received from the peer, after checking what it is.
    pub(crate) fn adopt(grant: Grant) -> io::Result<DoorbellRinger> {
        let fd = grant.into_fd();
        let id = check_socket(&fd)?;
        // We send to it: on macOS it must not raise SIGPIPE when the peer has gone.
        flags::no_sigpipe(&fd)?;
        Ok(DoorbellRinger { fd, id })
    }

    /// This end, to send to the peer (which will ring it).
    pub(crate) fn into_grant(self) -> Grant {
        Grant::from_fd(self.fd)
    }

    /// A grant of another handle for this end (`dup`), for a peer that rings a doorbell
    /// which others ring too.
    #[cfg(feature = "tokio")]
    pub(crate) fn grant(&self) -> io::Result<Grant> {
        Ok(Grant::from_fd(self.fd.try_clone()?))
    }

    /// Which doorbell this rings: equal for two ringers of the same socket.
    #[cfg(feature = "tokio")]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Wakes whoever polls the other end. Never blocks; a full socket buffer means the
    /// doorbell is rung already, and a peer that has gone will be noticed elsewhere.
    pub(crate) fn ring(&self) {
        let _ = send(&self.fd, &[1], SendFlags::DONTWAIT | SEND);
    }
}

/// Sleeps until `doorbell` is rung, the peer at the other end of `control` is gone, or
/// `deadline` passes (`None`: no bound); may return early. The blocking wait of a backend
/// without a shared-memory wait; the caller drains the doorbell when it wakes. One
/// `poll(2)`: the control socket is watched for its hang-up only, never for bytes a hostile
/// peer might write to it, which would make every sleep return at once.
///
/// A hung-up doorbell (the peer closed or shut down its ringer) polls readable for ever,
/// so it is recorded ([`Doorbell::closed`]) and reported, with a hung-up control stream,
/// as [`Woke::PeerHungUp`]: the caller must check the peer at once and stop waiting,
/// instead of spinning on a doorbell that nobody can ring.
pub(crate) fn sleep_until_rung(
    doorbell: &Doorbell,
    control: &ControlStream,
    deadline: Option<Instant>,
) -> Woke {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [
        PollFd::new(&doorbell.fd, PollFlags::IN | HANG_UP),
        PollFd::new(control, HANG_UP),
    ];
    let timeout =
        deadline.map(|deadline| poll_timeout(deadline.saturating_duration_since(Instant::now())));
    // EINTR, ENOMEM: an early return, which the caller's loop treats as such.
    if poll(&mut fds, timeout.as_ref()).is_err() {
        return Woke::Maybe;
    }
    let hung_up = |fd: &PollFd<'_>| {
        fd.revents()
            .intersects(HANG_UP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
    };
    if hung_up(&fds[0]) {
        doorbell.mark_closed();
    }
    if hung_up(&fds[0]) || hung_up(&fds[1]) {
        Woke::PeerHungUp
    } else {
        Woke::Maybe
    }
}

impl super::Source for Doorbell {
    fn source(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsFd for DoorbellRinger {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
