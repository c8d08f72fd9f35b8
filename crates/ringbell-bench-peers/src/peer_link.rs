//! A socket pair beside a shared-memory library, carrying nothing: each process holds one
//! end, so that the other learns when it is gone (its end reads end-of-file), which
//! shared memory alone does not tell. iceoryx2 notices a dead process only when someone
//! scans its node list; a busy-polling receiver would spin on for ever.
//!
//! It is also the goodbye: a side that drops its channel shuts its end down and waits,
//! briefly, for the other to close, so that the child removes its own iceoryx2 resources
//! before the parent removes the services' last ones (and before the benchmark kills it).

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// How long a side that hangs up waits for the other to close its end. A busy-polling
/// peer notices within a few milliseconds, a sleeping one when it is woken.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// One end of the pair. Clones share the socket (a publisher's backpressure handler keeps
/// one, and must be `Send`).
#[derive(Debug, Clone)]
pub(crate) struct PeerLink {
    socket: Arc<UnixStream>,
}

impl PeerLink {
    /// A connected pair: ours, and the fd for the child to inherit.
    pub(crate) fn pair() -> io::Result<(PeerLink, OwnedFd)> {
        let (ours, theirs) = UnixStream::pair()?;
        Ok((PeerLink::new(ours)?, OwnedFd::from(theirs)))
    }

    /// The child's end, from the fd it inherited.
    pub(crate) fn inherited(fd: OwnedFd) -> io::Result<PeerLink> {
        PeerLink::new(UnixStream::from(fd))
    }

    fn new(socket: UnixStream) -> io::Result<PeerLink> {
        socket.set_nonblocking(true)?;
        Ok(PeerLink {
            socket: Arc::new(socket),
        })
    }

    /// `Err(UnexpectedEof)` if the other process has exited or hung up. One `read`, which
    /// would block (nothing is ever written) while the other side lives.
    pub(crate) fn check(&self) -> io::Result<()> {
        match (&*self.socket).read(&mut [0u8; 1]) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(()),
            Ok(0) => Err(peer_gone()),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the other process wrote on the liveness socket, which carries nothing",
            )),
            Err(error) => Err(error),
        }
    }

    /// Tells the other side that we are leaving (shuts our end down, then calls
    /// `wake_the_other`, for a side that may be asleep elsewhere than on this socket), and
    /// waits up to [`GOODBYE_TIMEOUT`] until it has closed its end: exited, or dropped its
    /// channel. If it left first, there is nothing to wait for.
    pub(crate) fn hang_up(&self, wake_the_other: impl FnOnce()) {
        if self.check().is_err() || self.socket.shutdown(Shutdown::Write).is_err() {
            return;
        }
        wake_the_other();
        // One blocking read: end-of-file when the other side closes, or the timeout.
        let blocking = self
            .socket
            .set_nonblocking(false)
            .and_then(|()| self.socket.set_read_timeout(Some(GOODBYE_TIMEOUT)));
        if blocking.is_ok() {
            let _ = (&*self.socket).read(&mut [0u8; 1]);
        }
    }
}

/// The error a channel reports once the other side is gone.
pub(crate) fn peer_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the other process has exited or hung up",
    )
}
