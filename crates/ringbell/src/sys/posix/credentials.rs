//! Who a peer runs as: the uid the kernel recorded for the other end of a Unix socket when
//! it connected (unix(7) `SO_PEERCRED` on Linux; `getpeereid(3)` on macOS, which rustix
//! does not wrap, so the `libc` crate's declaration is used there).

#![cfg_attr(target_vendor = "apple", allow(unsafe_code))]

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

/// The user at the other end of the connected Unix socket `socket`: `getpeereid(3)`, the
/// effective uid the kernel recorded when the peer connected (or listened).
#[cfg(target_vendor = "apple")]
pub(super) fn peer_user(socket: impl AsFd) -> io::Result<User> {
    use std::os::fd::AsRawFd;
    let (mut uid, mut gid): (libc::uid_t, libc::gid_t) = (0, 0);
    // SAFETY: the fd is a valid socket for the duration of the call (borrowed), and both
    // out-pointers point at live locals of the right types.
    let status = unsafe { libc::getpeereid(socket.as_fd().as_raw_fd(), &mut uid, &mut gid) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(User { uid })
}

/// The pid of the process at the other end of `socket`: `LOCAL_PEERPID`, which macOS
/// keeps as the last process to use the socket, so a hint (PLATFORMS.md), good enough to
/// tell one server process's connections from another's.
#[cfg(all(target_vendor = "apple", feature = "tokio"))]
pub(super) fn peer_pid(socket: impl AsFd) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut pid: libc::pid_t = 0;
    let mut len = std::mem::size_of::<libc::pid_t>() as libc::socklen_t;
    // SAFETY: the fd is a valid socket for the duration of the call (borrowed), and the
    // out-pointer and its length describe a live `pid_t`.
    let status = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_LOCAL,
            libc::LOCAL_PEERPID,
            (&mut pid as *mut libc::pid_t).cast(),
            &mut len,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid as u32)
}

/// The pid of the process at the other end of `socket`, as recorded when it connected.
#[cfg(all(target_os = "linux", feature = "tokio"))]
pub(super) fn peer_pid(socket: impl AsFd) -> io::Result<u32> {
    let credentials = rustix::net::sockopt::socket_peercred(socket).map_err(super::io_error)?;
    Ok(credentials.pid.as_raw_nonzero().get() as u32)
}
