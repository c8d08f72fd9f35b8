//! Readiness through the tokio runtime: an fd registered with tokio's reactor
//! (`AsyncFd`), for the types of this backend that an event loop awaits. Each of them
//! holds a [`Registration`] as a field declared *before* the field that owns its fd, so
//! the registration is dropped first, as `AsyncFd::register_with_interest` requires.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// An fd owned by the struct that holds the [`Registration`].
#[derive(Debug)]
struct FdRef(RawFd);

impl AsRawFd for FdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// An fd's registration with a tokio runtime for readability, or none yet.
#[derive(Debug, Default)]
pub(super) struct Registration {
    io: Option<AsyncFd<FdRef>>,
}

impl Registration {
    /// Registers `fd` with the current runtime, if it is not registered already.
    ///
    /// # Errors
    ///
    /// Outside a tokio runtime, or if the reactor refuses the fd.
    ///
    /// # Panics
    ///
    /// In a tokio runtime built without IO (`enable_io`), as tokio itself does.
    ///
    /// # Safety
    ///
    /// `fd` must stay open, referring to the same file, until this registration is
    /// [`clear`](Self::clear)ed or dropped.
    pub(super) unsafe fn register(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.io.is_some() {
            return Ok(());
        }
        // tokio would panic without a runtime; a clear error is kinder.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "not within a tokio runtime: call this from inside one (#[tokio::main])",
            ));
        }
        // SAFETY: forwarded from this function's contract.
        let io =
            unsafe { AsyncFd::register_with_interest(FdRef(fd.as_raw_fd()), Interest::READABLE) }
                .map_err(io::Error::from)?;
        self.io = Some(io);
        Ok(())
    }

    /// Deregisters the fd, if it was registered.
    pub(super) fn clear(&mut self) {
        self.io = None;
    }

    /// Waits until the fd is readable, clears that readiness, and returns whether the
    /// reactor reported the read side closed (the peer's end has gone).
    ///
    /// # Errors
    ///
    /// If the fd was never registered, or the reactor fails.
    pub(super) async fn readable(&self) -> io::Result<bool> {
        let io = self
            .io
            .as_ref()
            .ok_or_else(|| io::Error::other("waited on an fd not registered with tokio"))?;
        let mut guard = io.readable().await?;
        let closed = guard.ready().is_read_closed();
        guard.clear_ready();
        Ok(closed)
    }
}
