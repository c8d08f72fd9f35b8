//! eventfd doorbells: see eventfd(2). A side that waits in an event loop polls its doorbell;
//! the peer writes to it only when the waiter announced that it sleeps.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
use rustix::io::Errno;

use super::io_error;

/// A non-blocking eventfd.
#[derive(Debug)]
pub(crate) struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new doorbell, not rung.
    pub(crate) fn new() -> io::Result<Doorbell> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(io_error)?;
        Ok(Doorbell { fd })
    }

    /// Adopts a doorbell received from the peer, after checking that it is an eventfd, and
    /// makes it non-blocking whatever the peer set (a blocking eventfd near its maximum
    /// count would let the peer stall our `ring`).
    pub(crate) fn from_peer(fd: OwnedFd) -> io::Result<Doorbell> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if link.as_os_str() != "anon_inode:[eventfd]" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the doorbell fd passed by the peer is not an eventfd",
            ));
        }
        let flags = fcntl_getfl(&fd).map_err(io_error)?;
        fcntl_setfl(&fd, flags | OFlags::NONBLOCK).map_err(io_error)?;
        Ok(Doorbell { fd })
    }

    /// Wakes whoever polls the doorbell. Never blocks; a counter already at its maximum
    /// is as good as rung.
    pub(crate) fn ring(&self) {
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::AGAIN) => {}
            // Nothing else can fail on a valid eventfd; a waiter also re-checks on its own.
            Err(_) => {}
        }
    }

    /// Resets the doorbell after a wake-up. Never blocks.
    pub(crate) fn drain(&self) {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut counter);
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
