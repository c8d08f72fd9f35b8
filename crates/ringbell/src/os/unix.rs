//! Unix extensions.

use std::os::fd::{AsFd, BorrowedFd};

use crate::Connection;

/// The fds of a [`Connection`], for an event loop of your own (`poll`, `epoll`, `kqueue`,
/// mio...). See [`Connection::arm_doorbell`] for the protocol.
///
/// ```no_run
/// use ringbell::os::unix::ConnectionExt;
/// use ringbell::{ClientConfig, Connection};
/// use rustix::event::{poll, PollFd, PollFlags};
///
/// let mut conn = Connection::connect("/tmp/app.sock", ClientConfig::default())?;
/// let mut buf = Vec::new();
/// loop {
///     if let Some(n) = conn.try_recv(&mut buf)? {
///         println!("got {n} bytes");
///         break;
///     }
///     if conn.arm_doorbell()? {
///         let (doorbell, control) = (conn.doorbell_fd(), conn.control_fd());
///         let mut fds = [
///             PollFd::new(&doorbell, PollFlags::IN),
///             // RDHUP, not IN: the peer's death, not bytes it might write.
///             PollFd::new(&control, PollFlags::RDHUP),
///         ];
///         poll(&mut fds, None).ok();
///     }
/// }
/// # Ok::<(), ringbell::Error>(())
/// ```
///
/// # Platform-specific behaviour
///
/// On macOS there is no `POLLRDHUP`: poll the control fd with no events, and a hang-up is
/// reported as `POLLHUP`.
pub trait ConnectionExt {
    /// The doorbell: an fd that polls readable after the peer rang it, which it does
    /// when this side is armed (see [`Connection::arm_doorbell`]). It is this side's own
    /// end of a socket pair: never read from or write to it yourself.
    fn doorbell_fd(&self) -> BorrowedFd<'_>;

    /// The control socket. It polls readable, with `POLLRDHUP`, when the peer closes or
    /// dies; and readable, briefly, when the peer sends the grant of a large-message
    /// region, which the next [`try_recv`](Connection::try_recv) reads. Never read from
    /// or write to it yourself.
    fn control_fd(&self) -> BorrowedFd<'_>;
}

impl ConnectionExt for Connection {
    fn doorbell_fd(&self) -> BorrowedFd<'_> {
        self.doorbell().as_fd()
    }

    fn control_fd(&self) -> BorrowedFd<'_> {
        self.control().as_fd()
    }
}
