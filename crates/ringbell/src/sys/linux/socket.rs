//! The control socket: a Unix stream socket carrying the handshake and its fds, kept open
//! for the connection's life so that end-of-file means "the peer is gone".
//!
//! See unix(7) (`SCM_RIGHTS`, `SO_PEERCRED`), sendmsg(2), recvmsg(2).

use std::cell::Cell;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    connect, recvmsg, send, sendmsg, socket_with, sockopt, AddressFamily, RecvAncillaryBuffer,
    RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use super::io_error;

/// An fd to hold in reserve (see `ControlListener::spare_fd`); `None` if none is left.
fn open_spare_fd() -> Option<OwnedFd> {
    rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

/// Whether `error` says the process or the system ran out of fds.
pub(crate) fn is_out_of_fds(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(code) if code == Errno::MFILE.raw_os_error() || code == Errno::NFILE.raw_os_error())
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

/// Waits until one of `fds` is readable (or hung up, or in error) or `timeout` passes
/// (`None`: no bound), and returns which are: `ready[i]` is about `fds[i]`. poll(2).
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN | PollFlags::RDHUP))
        .collect();
    let timeout = timeout.map(|timeout| Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    });
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
    listener: UnixListener,
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
            listener,
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
                Ok((stream, _)) => return Ok(ControlStream::from_stream(stream)),
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
                let _ = send(&stream, refusal, SendFlags::NOSIGNAL | SendFlags::DONTWAIT);
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
    stream: UnixStream,
    /// While set, every read and write must complete by then (the handshake's deadline):
    /// each syscall gets the time that is left, so a peer trickling bytes cannot stretch it.
    deadline: Cell<Option<Instant>>,
}

impl ControlStream {
    fn from_stream(stream: UnixStream) -> ControlStream {
        ControlStream {
            stream,
            deadline: Cell::new(None),
        }
    }

    /// Connects to a listener at `path`, giving up at `deadline` (a connect waits while the
    /// listener's queue of unaccepted connections is full).
    pub(crate) fn connect(path: &Path, deadline: Instant) -> io::Result<ControlStream> {
        let address = SocketAddrUnix::new(path).map_err(io_error)?;
        let fd = socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(io_error)?;
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
        Ok(ControlStream::from_stream(UnixStream::from(fd)))
    }

    /// Bounds every later read and write by `deadline` (`None`: no bound). A deadline that
    /// passes surfaces as a `TimedOut` or `WouldBlock` error.
    pub(crate) fn set_deadline(&self, deadline: Option<Instant>) -> io::Result<()> {
        self.deadline.set(deadline);
        if deadline.is_none() {
            self.stream.set_read_timeout(None)?;
            self.stream.set_write_timeout(None)?;
        }
        Ok(())
    }

    /// Gives the next syscall the time left before the deadline, if there is one.
    fn arm(&self) -> io::Result<()> {
        if let Some(deadline) = self.deadline.get() {
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
            match send(&self.stream, bytes, SendFlags::NOSIGNAL) {
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
            match (&self.stream).read(buf) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// [`try_read`](Self::try_read), also returning the fds attached to the bytes read
    /// (marked close-on-exec). More than [`MAX_FDS`] is an `InvalidData` error, as for
    /// [`recv_with_fds`](Self::recv_with_fds).
    pub(crate) fn try_read_with_fds(
        &self,
        buf: &mut [u8],
    ) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = loop {
            let mut iov = [io::IoSliceMut::new(buf)];
            match recvmsg(
                &self.stream,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            ) {
                Ok(received) => break received,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(None),
                Err(errno) => return Err(io_error(errno)),
            }
        };
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                fds.extend(received_fds);
            }
        }
        if received.flags.contains(ReturnFlags::CTRUNC) {
            return Err(if fds.len() < MAX_FDS {
                io_error(Errno::MFILE)
            } else {
                io::Error::new(io::ErrorKind::InvalidData, "the peer attached too many fds")
            });
        }
        Ok(Some((received.bytes, fds)))
    }

    /// Sends `bytes` if the socket buffer takes them all at once, without waiting, and
    /// reports whether it did. For a refusal to a client that may already be gone.
    pub(crate) fn try_send(&self, bytes: &[u8]) -> bool {
        send(
            &self.stream,
            bytes,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) == Ok(bytes.len())
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

    /// Writes all of `bytes`, with `fds` attached to the first byte.
    pub(crate) fn send_with_fds(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many fds for one message",
            ));
        }
        let sent = loop {
            self.arm()?;
            match sendmsg(
                &self.stream,
                &[io::IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(sent) => break sent,
                Err(Errno::INTR) => continue,
                Err(errno) => return Err(io_error(errno)),
            }
        };
        self.write_all(&bytes[sent..])
    }

    /// Reads exactly `buf.len()` bytes and returns the fds attached to them (marked
    /// close-on-exec). More fds than [`MAX_FDS`] is an `InvalidData` error (the kernel
    /// closes the ones that did not fit).
    pub(crate) fn recv_with_fds(&self, buf: &mut [u8]) -> io::Result<Vec<OwnedFd>> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = loop {
            self.arm()?;
            let mut iov = [io::IoSliceMut::new(buf)];
            match recvmsg(
                &self.stream,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(received) => break received,
                Err(Errno::INTR) => continue,
                Err(errno) => return Err(io_error(errno)),
            }
        };
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                fds.extend(received_fds);
            }
        }
        if received.flags.contains(ReturnFlags::CTRUNC) && fds.len() < MAX_FDS {
            // Room for MAX_FDS was given, yet fewer arrived: the kernel could not install
            // them here (this process is out of fds), not a peer sending too many.
            return Err(io_error(Errno::MFILE));
        }
        if received.flags.contains(ReturnFlags::CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer attached too many fds",
            ));
        }
        if received.bytes == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.read_exact(&mut buf[received.bytes..])?;
        Ok(fds)
    }

    /// The uid of the process at the other end, as the kernel recorded it at connect time.
    pub(crate) fn peer_uid(&self) -> io::Result<u32> {
        Ok(sockopt::socket_peercred(&self.stream)
            .map_err(io_error)?
            .uid
            .as_raw())
    }

    /// The pid of the process at the other end, as the kernel recorded it at connect time.
    #[cfg(feature = "tokio")]
    pub(crate) fn peer_pid(&self) -> io::Result<u32> {
        Ok(sockopt::socket_peercred(&self.stream)
            .map_err(io_error)?
            .pid
            .as_raw_nonzero()
            .get() as u32)
    }

    /// Whether the peer has closed its end (or its process died). One non-blocking
    /// `poll(2)` for `POLLRDHUP`, which is reported even when unread bytes are queued, so
    /// a peer cannot hide its death by writing to the control socket first.
    pub(crate) fn peer_gone(&self) -> bool {
        let mut fds = [PollFd::new(&self.stream, PollFlags::RDHUP)];
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
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
            Err(Errno::INTR) | Err(Errno::AGAIN) | Err(Errno::NOMEM) => false,
            Err(_) => true,
        }
    }
}

impl AsFd for ControlStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}
