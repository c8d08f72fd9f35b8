//! Grants on Unix: an fd, passed to the peer with `SCM_RIGHTS` (see unix(7)), which makes
//! the receiving process an fd of its own for the same open file.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// An OS object on its way to the peer, or just received from it: here, an fd.
#[derive(Debug)]
pub(crate) struct Grant {
    fd: OwnedFd,
}

impl Grant {
    pub(in crate::sys) fn from_fd(fd: OwnedFd) -> Grant {
        Grant { fd }
    }

    pub(in crate::sys) fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub(in crate::sys) fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl AsFd for Grant {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
