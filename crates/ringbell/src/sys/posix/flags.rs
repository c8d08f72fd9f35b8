//! What the Unixes of this backend differ in, for sockets and fds, in one place: the rest
//! of `posix/` calls these and names no OS.
//!
//! - Linux sets close-on-exec and non-blocking atomically (`SOCK_CLOEXEC`,
//!   `SOCK_NONBLOCK`, `MSG_CMSG_CLOEXEC`) and suppresses `SIGPIPE` per call
//!   (`MSG_NOSIGNAL`); macOS has none of these, so it gets `fcntl` after the call that
//!   made the fd, and `SO_NOSIGPIPE` on every socket (PLATFORMS.md, trap 6). The window
//!   between a `socketpair` or `recvmsg` and its `fcntl`, in which another thread's
//!   `fork` + `exec` could inherit the fd, is macOS's and cannot be closed from here.
//! - Linux reports a peer's hang-up as `POLLRDHUP`, even with bytes still queued; macOS
//!   has no `POLLRDHUP`, and reports `POLLHUP` (with `POLLIN`) whatever one asks for.
//! - A socket path fits in `sun_path`: 108 bytes on Linux, 104 on macOS, with the NUL.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::event::PollFlags;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use super::io_error;

/// Flags for every `send`: no `SIGPIPE` from a peer that has gone (on macOS, every socket
/// has `SO_NOSIGPIPE` instead: see [`no_sigpipe`]).
#[cfg(target_os = "linux")]
pub(super) const SEND: SendFlags = SendFlags::NOSIGNAL;
#[cfg(not(target_os = "linux"))]
pub(super) const SEND: SendFlags = SendFlags::empty();

/// Flags for a `recvmsg` that may carry fds: close-on-exec at once where the OS can (on
/// macOS, [`received`] sets it after).
#[cfg(target_os = "linux")]
pub(super) const RECV_FDS: RecvFlags = RecvFlags::CMSG_CLOEXEC;
#[cfg(not(target_os = "linux"))]
pub(super) const RECV_FDS: RecvFlags = RecvFlags::empty();

/// What a socket is polled for to learn that its peer is gone (see the module docs).
#[cfg(target_os = "linux")]
pub(super) const HANG_UP: PollFlags = PollFlags::RDHUP;
#[cfg(not(target_os = "linux"))]
pub(super) const HANG_UP: PollFlags = PollFlags::empty();

/// The size of `sun_path`, which holds a socket's path and its NUL.
#[cfg(target_os = "linux")]
const SUN_PATH: usize = 108;
#[cfg(not(target_os = "linux"))]
const SUN_PATH: usize = 104;

/// A connected pair of Unix stream sockets, close-on-exec, non-blocking if asked, and
/// never raising `SIGPIPE`. See socketpair(2).
pub(super) fn stream_pair(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketType};
    #[cfg(target_os = "linux")]
    let flags = if nonblocking {
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK
    } else {
        SocketFlags::CLOEXEC
    };
    #[cfg(not(target_os = "linux"))]
    let flags = SocketFlags::empty();
    let (one, other) =
        socketpair(AddressFamily::UNIX, SocketType::STREAM, flags, None).map_err(io_error)?;
    #[cfg(not(target_os = "linux"))]
    for fd in [&one, &other] {
        made(fd)?;
        if nonblocking {
            let flags = rustix::fs::fcntl_getfl(fd).map_err(io_error)?;
            rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK).map_err(io_error)?;
        }
    }
    Ok((one, other))
}

/// A new Unix stream socket, close-on-exec and never raising `SIGPIPE`. See socket(2).
pub(super) fn stream_socket() -> io::Result<OwnedFd> {
    use rustix::net::{socket_with, AddressFamily, SocketType};
    #[cfg(target_os = "linux")]
    let flags = SocketFlags::CLOEXEC;
    #[cfg(not(target_os = "linux"))]
    let flags = SocketFlags::empty();
    let fd = socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None).map_err(io_error)?;
    #[cfg(not(target_os = "linux"))]
    made(&fd)?;
    Ok(fd)
}

/// On macOS: close-on-exec and `SO_NOSIGPIPE` for a socket this process just made.
#[cfg(not(target_os = "linux"))]
fn made(fd: impl AsFd) -> io::Result<()> {
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC).map_err(io_error)?;
    no_sigpipe(&fd)
}

/// An fd that arrived with `SCM_RIGHTS`: close-on-exec (on Linux, [`RECV_FDS`] did it).
pub(super) fn received(fd: &OwnedFd) -> io::Result<()> {
    #[cfg(not(target_os = "linux"))]
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC).map_err(io_error)?;
    let _ = fd;
    Ok(())
}

/// A socket that this process will send to and did not make with [`stream_pair`] or
/// [`stream_socket`] (one accepted, or received from the peer): on macOS, `SO_NOSIGPIPE`,
/// so that a send to a peer that has gone is an error, not a signal. On Linux, [`SEND`]
/// does that per call.
pub(super) fn no_sigpipe(socket: impl AsFd) -> io::Result<()> {
    #[cfg(not(target_os = "linux"))]
    rustix::net::sockopt::set_socket_nosigpipe(&socket, true).map_err(io_error)?;
    let _ = socket;
    Ok(())
}

/// Refuses a socket path that does not fit in `sun_path`, with an error that says so,
/// rather than let the OS truncate or refuse it less clearly.
pub(super) fn check_socket_path(path: &Path) -> io::Result<()> {
    let len = path.as_os_str().len();
    if fits_sun_path(len, SUN_PATH) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "the socket path {} is {len} bytes long; this OS allows at most {} \
             (choose a shorter path, for example in /tmp)",
            path.display(),
            SUN_PATH - 1
        ),
    ))
}

/// Whether a path of `len` bytes, and its NUL, fit in a `sun_path` of `sun_path` bytes.
fn fits_sun_path(len: usize, sun_path: usize) -> bool {
    len < sun_path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_must_fit_sun_path_with_its_nul() {
        // macOS: sun_path is 104 bytes.
        assert!(fits_sun_path(103, 104));
        assert!(!fits_sun_path(104, 104));
        // Linux: 108.
        assert!(fits_sun_path(107, 108));
        assert!(!fits_sun_path(108, 108));
        let long = Path::new("/tmp").join("x".repeat(200));
        let error = check_socket_path(&long).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("205 bytes long"), "{error}");
        assert!(check_socket_path(Path::new("/tmp/app.sock")).is_ok());
    }
}
