//! The control socket: a Unix stream socket carrying the handshake and its fds, kept open
//! for the connection's life so that end-of-file means "the peer is gone".
//!
//! See unix(7) (`SCM_RIGHTS`, `SO_PEERCRED`), sendmsg(2), recvmsg(2).

#![allow(unsafe_code)]

use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    connect, recvmsg, send, sendmsg, sockopt, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
};

pub(super) use super::flags::HANG_UP;
use super::flags::{self, RECV_FDS, SEND};
use super::readiness::Registered;
use super::{credentials, io_error, Grant, User};

/// Something a thread can wait on with [`wait_readable`]: a listener, a control stream, a
/// doorbell.
pub(crate) trait Source {
    /// The fd to poll.
    fn source(&self) -> BorrowedFd<'_>;
}

/// `timeout` for poll(2), at least 1 µs (a zero timeout would not wait at all, which the
/// caller's loop handles anyway, but a rounding to zero of a short wait would spin).
pub(super) fn poll_timeout(timeout: Duration) -> Timespec {
    let timeout = timeout.max(Duration::from_micros(1));
    Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    }
}

/// An fd to hold in reserve (see `ControlListener::spare_fd`); `None` if none is left.
fn open_spare_fd() -> Option<OwnedFd> {
    rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

/// The time left before `deadline`, or a `TimedOut` error.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    // A zero timeout would mean "no timeout" to the kernel.
    Ok(left.max(Duration::from_micros(1)))
}

/// Waits until one of `sources` is readable (or hung up, or in error) or `timeout` passes
/// (`None`: no bound), and returns which are: `ready[i]` is about `sources[i]`. poll(2).
pub(crate) fn wait_readable(
    sources: &[&dyn Source],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let fds: Vec<BorrowedFd<'_>> = sources.iter().map(|source| source.source()).collect();
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN | HANG_UP))
        .collect();
    let timeout = timeout.map(poll_timeout);
    match poll(&mut polled, timeout.as_ref()) {
        Ok(_) | Err(Errno::INTR) => {}
        Err(errno) => return Err(io_error(errno)),
    }
    Ok(polled.iter().map(|fd| !fd.revents().is_empty()).collect())
}

/// The most fds one handshake message may carry.
pub(crate) const MAX_FDS: usize = 4;

/// A listening socket bound to a path, removed again on drop.
#[derive(Debug)]
pub(crate) struct ControlListener {
    /// With its registration with the tokio runtime, if it has one.
    listener: Registered<UnixListener>,
    path: PathBuf,
    /// Device and inode of the socket file we created, so that drop removes only our own.
    identity: (u64, u64),
    /// An fd held in reserve: when the process runs out of fds, it is closed for a moment
    /// so that one waiting client can be accepted, told why it is refused, and closed,
    /// instead of waiting in the queue until its connect times out.
    spare_fd: std::sync::Mutex<Option<OwnedFd>>,
}

impl ControlListener {
    /// Binds `path` with mode 0600, or 0666 if `other_users` may connect. A socket file
    /// left by a dead server (nobody accepts on it) is replaced; a live server gives
    /// `AddrInUse`; a path that is not a socket is never touched.
    pub(crate) fn bind(path: &Path, other_users: bool) -> io::Result<ControlListener> {
        flags::check_socket_path(path)?;
        let listener = match UnixListener::bind(path) {
            Ok(listener) => listener,
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                let metadata = std::fs::symlink_metadata(path)?;
                if !metadata.file_type().is_socket() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{} exists and is not a socket; not replacing it",
                            path.display()
                        ),
                    ));
                }
                match UnixStream::connect(path) {
                    Ok(_probe) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("a live server listens at {}", path.display()),
                        ))
                    }
                    Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                        // Stale: its server died without removing it.
                        std::fs::remove_file(path)?;
                        UnixListener::bind(path)?
                    }
                    Err(error) => return Err(error),
                }
            }
            Err(error) => return Err(error),
        };
        // Set the mode at once; SO_PEERCRED checks cover the instant before this.
        let mode = if other_users { 0o666 } else { 0o600 };
        let finish = || -> io::Result<std::fs::Metadata> {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            std::fs::symlink_metadata(path)
        };
        let metadata = finish().inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })?;
        Ok(ControlListener {
            listener: Registered::new(listener),
            path: path.to_path_buf(),
            identity: (metadata.dev(), metadata.ino()),
            spare_fd: std::sync::Mutex::new(open_spare_fd()),
        })
    }

    /// Makes [`accept`](Self::accept) return `WouldBlock` instead of waiting, for a server
    /// that polls [`as_fd`](AsFd::as_fd) together with its handshakes in progress.
    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        self.listener.set_nonblocking(true)
    }

    /// Takes the next client from the queue (after `set_nonblocking`, `WouldBlock` if there
    /// is none). The accepted stream is blocking.
    pub(crate) fn accept(&self) -> io::Result<ControlStream> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => return ControlStream::from_stream(stream),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Out of fds: spends the spare fd to accept one waiting client, sends it `refusal`,
    /// closes it, and takes the spare back. Returns whether a client was refused.
    pub(crate) fn refuse_one(&self, refusal: &[u8]) -> bool {
        let Ok(mut spare) = self.spare_fd.lock() else {
            return false;
        };
        if spare.take().is_none() {
            *spare = open_spare_fd();
            return false;
        }
        let refused = match self.listener.accept() {
            Ok((stream, _)) => {
                // Without SO_NOSIGPIPE (macOS), a client gone already would be a SIGPIPE.
                if flags::no_sigpipe(&stream).is_ok() {
                    let _ = send(&stream, refusal, SEND | SendFlags::DONTWAIT);
                }
                true
            }
            Err(_) => false,
        };
        *spare = open_spare_fd();
        refused
    }

    /// The path the listener is bound to.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Registers the listener with the current tokio runtime, for
    /// [`acceptable`](Self::acceptable).
    #[cfg(feature = "tokio")]
    pub(crate) fn register(&mut self) -> io::Result<()> {
        self.listener.register()
    }

    /// Waits, in the runtime it is registered with, until a client may be waiting to be
    /// accepted. The readiness is cleared first, so the caller must then accept until
    /// `WouldBlock`: a client that arrives meanwhile makes the next wait return at once.
    #[cfg(feature = "tokio")]
    pub(crate) async fn acceptable(&self) -> io::Result<()> {
        self.listener.readable().await.map(drop)
    }
}

impl Source for ControlListener {
    fn source(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl AsFd for ControlListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One end of a connected control socket.
#[derive(Debug)]
pub(crate) struct ControlStream {
    /// With its registration with the tokio runtime, if it has one.
    stream: Registered<UnixStream>,
    /// While set, every read and write must complete by then (the handshake's deadline):
    /// each syscall gets the time that is left, so a peer trickling bytes cannot stretch it.
    /// A mutex rather than a `Cell` so that the stream is `Sync` (a task awaiting it holds
    /// a shared reference across the await); it is taken only during the handshake.
    deadline: Mutex<Option<Instant>>,
}

impl ControlStream {
    /// A connected stream (accepted or connected; std makes both close-on-exec), set so
    /// that a send to a peer that has gone never raises `SIGPIPE`.
    fn from_stream(stream: UnixStream) -> io::Result<ControlStream> {
        flags::no_sigpipe(&stream)?;
        Ok(ControlStream {
            stream: Registered::new(stream),
            deadline: Mutex::new(None),
        })
    }

    /// Connects to a listener at `path`, giving up at `deadline` (a connect waits while the
    /// listener's queue of unaccepted connections is full).
    pub(crate) fn connect(path: &Path, deadline: Instant) -> io::Result<ControlStream> {
        flags::check_socket_path(path)?;
        let address = SocketAddrUnix::new(path).map_err(io_error)?;
        let fd = flags::stream_socket()?;
        let left = remaining(deadline)?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(left)).map_err(io_error)?;
        loop {
            match connect(&fd, &address) {
                Ok(()) => break,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the server's queue of pending connections stayed full",
                    ))
                }
                Err(errno) => return Err(io_error(errno)),
            }
        }
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, None).map_err(io_error)?;
        ControlStream::from_stream(UnixStream::from(fd))
    }

    /// Bounds every later read and write by `deadline` (`None`: no bound). A deadline that
    /// passes surfaces as a `TimedOut` or `WouldBlock` error.
    pub(crate) fn set_deadline(&self, deadline: Option<Instant>) -> io::Result<()> {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = deadline;
        if deadline.is_none() {
            self.stream.set_read_timeout(None)?;
            self.stream.set_write_timeout(None)?;
        }
        Ok(())
    }

    /// Gives the next syscall the time left before the deadline, if there is one.
    fn arm(&self) -> io::Result<()> {
        let deadline = *self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(deadline) = deadline {
            let left = remaining(deadline)?;
            self.stream.set_read_timeout(Some(left))?;
            self.stream.set_write_timeout(Some(left))?;
        }
        Ok(())
    }

    /// Writes all of `bytes`. Uses `MSG_NOSIGNAL`: a peer that hung up gives `BrokenPipe`,
    /// never a `SIGPIPE`, even in a host program that did not ignore the signal.
    pub(crate) fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.arm()?;
            match send(&self.stream, bytes, SEND) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(sent) => bytes = &bytes[sent..],
                Err(Errno::INTR) => continue,
                Err(errno) => return Err(io_error(errno)),
            }
        }
        Ok(())
    }

    /// One `read(2)`, retried on `EINTR`, within the deadline. Any fds a peer attaches
    /// are discarded by the kernel.
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.arm()?;
            match (&*self.stream).read(buf) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Reads what has arrived, without waiting (`None`: nothing has), with the grants
    /// attached to the bytes read (fds, marked close-on-exec). More than [`MAX_FDS`] is an
    /// `InvalidData` error, as for [`recv_with_grants`](Self::recv_with_grants).
    pub(crate) fn try_read_with_grants(
        &self,
        buf: &mut [u8],
    ) -> io::Result<Option<(usize, Vec<Grant>)>> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = loop {
            let mut iov = [io::IoSliceMut::new(buf)];
            match recvmsg(
                &self.stream,
                &mut iov,
                &mut control,
                RECV_FDS | RecvFlags::DONTWAIT,
            ) {
                Ok(received) => break received,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(None),
                Err(errno) => return Err(io_error(errno)),
            }
        };
        let fds = received_grants(&mut control)?;
        if received.flags.contains(ReturnFlags::CTRUNC) {
            return Err(if fds.len() < MAX_FDS {
                io_error(Errno::MFILE)
            } else {
                too_many_fds()
            });
        }
        Ok(Some((received.bytes, fds)))
    }

    /// Sends `bytes` if the socket buffer takes them all at once, without waiting, and
    /// reports whether it did. For a refusal to a client that may already be gone.
    pub(crate) fn try_send(&self, bytes: &[u8]) -> bool {
        send(&self.stream, bytes, SEND | SendFlags::DONTWAIT) == Ok(bytes.len())
    }

    /// Reads exactly `buf.len()` bytes.
    pub(crate) fn read_exact(&self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_some(buf)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                read => buf = &mut buf[read..],
            }
        }
        Ok(())
    }

    /// Writes all of `bytes`, with `grants` attached to the first byte (the peer receives
    /// fds of its own for them; ours stay open until the caller drops them).
    pub(crate) fn send_with_grants(&self, bytes: &[u8], grants: &[&Grant]) -> io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = grants.iter().map(|grant| grant.as_fd()).collect();
        let fds = &fds[..];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many fds for one message",
            ));
        }
        let sent = loop {
            self.arm()?;
            match sendmsg(&self.stream, &[io::IoSlice::new(bytes)], &mut control, SEND) {
                Ok(sent) => break sent,
                Err(Errno::INTR) => continue,
                Err(errno) => return Err(io_error(errno)),
            }
        };
        self.write_all(&bytes[sent..])
    }

    /// Reads exactly `buf.len()` bytes and returns the grants attached to them (fds,
    /// marked close-on-exec). More than [`MAX_FDS`] is an `InvalidData` error (the kernel
    /// closes the fds that did not fit).
    pub(crate) fn recv_with_grants(&self, buf: &mut [u8]) -> io::Result<Vec<Grant>> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = loop {
            self.arm()?;
            let mut iov = [io::IoSliceMut::new(buf)];
            match recvmsg(&self.stream, &mut iov, &mut control, RECV_FDS) {
                Ok(received) => break received,
                Err(Errno::INTR) => continue,
                Err(errno) => return Err(io_error(errno)),
            }
        };
        let fds = received_grants(&mut control)?;
        if received.flags.contains(ReturnFlags::CTRUNC) && fds.len() < MAX_FDS {
            // Room for MAX_FDS was given, yet fewer arrived: the kernel could not install
            // them here (this process is out of fds), not a peer sending too many.
            return Err(io_error(Errno::MFILE));
        }
        if received.flags.contains(ReturnFlags::CTRUNC) {
            return Err(too_many_fds());
        }
        if received.bytes == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.read_exact(&mut buf[received.bytes..])?;
        Ok(fds)
    }

    /// The user of the process at the other end, as the kernel recorded it at connect time.
    pub(crate) fn peer_user(&self) -> io::Result<User> {
        credentials::peer_user(&self.stream)
    }

    /// The pid of the process at the other end, as the kernel recorded it at connect time.
    #[cfg(feature = "tokio")]
    pub(crate) fn peer_pid(&self) -> io::Result<u32> {
        credentials::peer_pid(&self.stream)
    }

    /// Registers the socket with the current tokio runtime, for
    /// [`stirred`](Self::stirred).
    #[cfg(feature = "tokio")]
    pub(crate) fn register(&mut self) -> io::Result<()> {
        self.stream.register()
    }

    /// Undoes [`register`](Self::register).
    #[cfg(feature = "tokio")]
    pub(crate) fn deregister(&mut self) {
        self.stream.deregister();
    }

    /// Waits, in the runtime it is registered with, until the socket reports something:
    /// after the handshake, that is the peer's hang-up, or bytes a misbehaving peer wrote.
    /// The caller finds out which with [`peer_gone`](Self::peer_gone).
    #[cfg(feature = "tokio")]
    pub(crate) async fn stirred(&self) -> io::Result<()> {
        self.stream.readable().await.map(drop)
    }

    /// Whether a grant this end sends stays receivable if this process ends before the
    /// peer reads it: always, since an fd in flight with `SCM_RIGHTS` is held by the
    /// socket until it is received.
    pub(crate) fn grants_outlive_sender(&self) -> bool {
        true
    }

    /// Whether the peer has closed its end (or its process died). One non-blocking
    /// `poll(2)` for `POLLRDHUP`, which is reported even when unread bytes are queued, so
    /// a peer cannot hide its death by writing to the control socket first.
    pub(crate) fn peer_gone(&self) -> bool {
        let mut fds = [PollFd::new(&self.stream, HANG_UP)];
        match poll(
            &mut fds,
            Some(&Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        ) {
            Ok(0) => false,
            Ok(_) => fds[0]
                .revents()
                .intersects(HANG_UP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
            Err(Errno::INTR) | Err(Errno::AGAIN) | Err(Errno::NOMEM) => false,
            Err(_) => true,
        }
    }
}

impl Source for ControlStream {
    fn source(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsFd for ControlStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// The fds that came with a message, as grants. More than [`MAX_FDS`] is an `InvalidData`
/// error (and the fds are closed): the buffer has room for a few more, because rustix's
/// `cmsg_space!` pads it for alignment, but nothing we speak sends so many.
fn received_grants(control: &mut RecvAncillaryBuffer<'_>) -> io::Result<Vec<Grant>> {
    let mut grants = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            grants.extend(fds.map(Grant::from_fd));
        }
    }
    if grants.len() > MAX_FDS {
        return Err(too_many_fds());
    }
    for grant in &grants {
        flags::received(grant.fd())?;
    }
    Ok(grants)
}

fn too_many_fds() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the peer attached too many fds")
}
