//! Readiness through the tokio runtime: an fd registered with tokio's reactor
//! (`AsyncFd`), for the types of this backend that an event loop awaits.
//!
//! [`Registered`] holds what owns the fd together with its [`Registration`], declared
//! first so that it is dropped first, as `AsyncFd::register_with_interest` requires, and
//! gives out only shared access, so the fd cannot be replaced while it is registered. A
//! doorbell, a control stream and a listener each hold their socket in one. (The poller
//! holds its own registration, beside the `mio::Poll` it needs `&mut` access to.)

#![allow(unsafe_code)]

#[cfg(feature = "tokio")]
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
#[cfg(feature = "tokio")]
use std::os::fd::{AsRawFd, RawFd};

#[cfg(feature = "tokio")]
use tokio::io::unix::AsyncFd;
#[cfg(feature = "tokio")]
use tokio::io::Interest;

/// `inner`, which owns an fd, and (with the `tokio` feature) its registration with a tokio
/// runtime, which is dropped first.
#[derive(Debug)]
pub(super) struct Registered<T: AsFd> {
    /// Declared before `inner`, so that it is dropped first.
    #[cfg(feature = "tokio")]
    registration: Registration,
    inner: T,
}

impl<T: AsFd> Registered<T> {
    /// `inner`, not registered yet.
    pub(super) fn new(inner: T) -> Registered<T> {
        Registered {
            #[cfg(feature = "tokio")]
            registration: Registration::default(),
            inner,
        }
    }

    /// `inner`, deregistered first if it was registered.
    pub(super) fn into_inner(self) -> T {
        // Moving `inner` out drops the registration at the end of this function, before
        // the caller can close the fd.
        self.inner
    }

    /// Registers the fd with the current tokio runtime, if it is not registered already.
    ///
    /// # Errors
    ///
    /// As [`Registration::register`].
    #[cfg(feature = "tokio")]
    pub(super) fn register(&mut self) -> io::Result<()> {
        // SAFETY: `inner` owns the fd and is never replaced (this type gives out no
        // `&mut T`), and `registration` is dropped before it (field order), or with
        // `into_inner` before the caller gets it back.
        unsafe { self.registration.register(self.inner.as_fd()) }
    }

    /// Deregisters the fd, if it was registered.
    #[cfg(feature = "tokio")]
    pub(super) fn deregister(&mut self) {
        self.registration.clear();
    }

    /// As [`Registration::readable`].
    #[cfg(feature = "tokio")]
    pub(super) async fn readable(&self) -> io::Result<bool> {
        self.registration.readable().await
    }
}

impl<T: AsFd> std::ops::Deref for Registered<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsFd> AsFd for Registered<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// An fd owned by the struct that holds the [`Registration`].
#[cfg(feature = "tokio")]
#[derive(Debug)]
struct FdRef(RawFd);

#[cfg(feature = "tokio")]
impl AsRawFd for FdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// An fd's registration with a tokio runtime for readability, or none yet.
#[cfg(feature = "tokio")]
#[derive(Debug, Default)]
pub(super) struct Registration {
    io: Option<AsyncFd<FdRef>>,
}

#[cfg(feature = "tokio")]
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
