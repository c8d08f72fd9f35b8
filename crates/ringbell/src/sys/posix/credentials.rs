//! Who a peer runs as: the uid the kernel recorded for the other end of a Unix socket when
//! it connected (unix(7) `SO_PEERCRED` on Linux; `getpeereid(3)` on macOS, with the
//! macOS backend).

use std::fmt;
use std::io;
use std::os::fd::AsFd;

/// A user as the OS identifies it: a uid here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct User {
    uid: u32,
}

impl User {
    /// The uid, on the OSes that have them (all Unixes).
    pub(crate) fn uid(&self) -> Option<u32> {
        Some(self.uid)
    }

    /// Whether this is the system's administrator (uid 0), whom a client may trust.
    pub(crate) fn is_administrator(&self) -> bool {
        self.uid == 0
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.uid)
    }
}

/// The real user of this process (`getuid(2)`).
pub(crate) fn current_user() -> User {
    User {
        uid: rustix::process::getuid().as_raw(),
    }
}

/// The user at the other end of the connected Unix socket `socket`.
#[cfg(target_os = "linux")]
pub(super) fn peer_user(socket: impl AsFd) -> io::Result<User> {
    let credentials = rustix::net::sockopt::socket_peercred(socket).map_err(super::io_error)?;
    Ok(User {
        uid: credentials.uid.as_raw(),
    })
}

/// The pid of the process at the other end of `socket`, as recorded when it connected.
#[cfg(all(target_os = "linux", feature = "tokio"))]
pub(super) fn peer_pid(socket: impl AsFd) -> io::Result<u32> {
    let credentials = rustix::net::sockopt::socket_peercred(socket).map_err(super::io_error)?;
    Ok(credentials.pid.as_raw_nonzero().get() as u32)
}
