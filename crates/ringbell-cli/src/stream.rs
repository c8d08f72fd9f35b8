//! The byte-stream baselines: what people use instead of shared memory. A Unix stream
//! socket, a pair of pipes (on Windows, anonymous pipes, which Windows makes named pipes),
//! or TCP on loopback, each message framed as a 4-byte
//! little-endian length and the payload; the sender builds the frame in one buffer and
//! writes it with one `write_all` (one syscall for small messages), the receiver reads
//! through a `BufReader`.
//!
//! [`StreamChannel`] implements ringbell's [`IpcTransport`], so `demo` and `bench` measure
//! these with the very loops they use for ringbell, and the `__stream-peer` child serves
//! them with the same echo/sink loop as `ringbell serve`.
//!
//! The two ends are connected before the peer starts: a socket pair or two pipes whose
//! child ends the peer inherits, or a TCP listener of ours that the peer connects to. So no
//! path or port has to be agreed on, and nothing is left behind.

use std::fs::File;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::Duration;

use clap::ValueEnum;
use ringbell::{Error, IpcTransport};
#[cfg(unix)]
use rustix::io::{fcntl_setfd, FdFlags};

use crate::child::{PeerLauncher, PeerProcess};
use crate::error::{CliError, Context};
use crate::serve::{serve_connection, ServeMode};

/// The largest frame a receiver accepts, so that a corrupt length cannot size a huge
/// allocation. The same as ringbell's default maximum message size.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

const LENGTH_PREFIX_LEN: usize = 4;

/// How long the TCP peer may take to connect back.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which byte stream carries the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamKind {
    /// A Unix stream socket (a connected socket pair). Unix only.
    Uds,
    /// Two pipes, one each way (on Windows, anonymous pipes).
    Pipe,
    /// TCP on 127.0.0.1, with `TCP_NODELAY`.
    Tcp,
}

impl StreamKind {
    /// The name on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            StreamKind::Uds => "uds",
            StreamKind::Pipe => "pipe",
            StreamKind::Tcp => "tcp",
        }
    }

    /// The name in reports.
    pub fn label(self) -> &'static str {
        match self {
            StreamKind::Uds => "unix socket",
            StreamKind::Pipe => "pipe",
            StreamKind::Tcp => "tcp loopback",
        }
    }
}

/// The reading half of a stream: readable, and able to wait for its next byte.
trait ReadHalf: Read + Send {
    /// Waits up to `timeout` for the next byte; `false` if none came.
    fn wait_readable(&self, timeout: Duration) -> io::Result<bool>;
}

/// On Unix every stream is an fd, and poll(2) waits for any of them.
#[cfg(unix)]
impl<T: Read + AsFd + Send> ReadHalf for T {
    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let fd = self.as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        loop {
            match poll(&mut fds, Some(&timeout)) {
                Ok(ready) => return Ok(ready > 0),
                Err(rustix::io::Errno::INTR) => continue,
                Err(errno) => return Err(errno.into()),
            }
        }
    }
}

/// A synchronous pipe on Windows cannot be waited on: it is looked at (`PeekNamedPipe`)
/// until a byte is there, at once and yielding the CPU between looks for the first
/// [`PIPE_LOOK_AT_ONCE`], then with a sleep between looks. (A sleep lasts a whole clock tick
/// on Windows, 15.6 ms by default, which would add itself to a reply timed this way; the
/// throughput rows end with such a timed `recv`.) Only a timed `recv` waits so, when nothing
/// is buffered; a round trip's reply is read by a blocking `ReadFile`.
#[cfg(windows)]
impl ReadHalf for File {
    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        use std::os::windows::io::AsHandle;
        let started = std::time::Instant::now();
        loop {
            match crate::windows::pipe_bytes_available(self.as_handle()) {
                Ok(0) => {}
                Ok(_) => return Ok(true),
                // The writer has gone: readable, and the read says so (end of file).
                Err(_) => return Ok(true),
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Ok(false);
            }
            if waited < PIPE_LOOK_AT_ONCE {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// How long a timed wait on a Windows pipe looks again at once before it sleeps between
/// looks: far longer than a reply takes when the peer is awake.
#[cfg(windows)]
const PIPE_LOOK_AT_ONCE: Duration = Duration::from_millis(5);

/// A socket on Windows: a read timeout and a peek, which leaves the byte for the read.
#[cfg(windows)]
impl ReadHalf for TcpStream {
    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        // A zero timeout would mean none at all.
        self.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let peeked = self.peek(&mut [0u8; 1]);
        self.set_read_timeout(None)?;
        match peeked {
            Ok(_) => Ok(true),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Ok(false)
            }
            // A reset or the like: readable, and the read says what happened.
            Err(_) => Ok(true),
        }
    }
}

/// One end of a length-prefixed message stream.
pub struct StreamChannel {
    reader: BufReader<Box<dyn ReadHalf>>,
    writer: Box<dyn Write + Send>,
    /// Reused for prefix + payload, so that each message is one write.
    frame: Vec<u8>,
    /// Set when a frame was cut off: the stream is out of step and cannot be used again.
    broken: bool,
}

impl std::fmt::Debug for StreamChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamChannel")
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl StreamChannel {
    fn new(reader: Box<dyn ReadHalf>, writer: Box<dyn Write + Send>) -> StreamChannel {
        StreamChannel {
            // Large enough that a 64 KiB message is read in one syscall, as a ring would.
            reader: BufReader::with_capacity(128 << 10, reader),
            writer,
            frame: Vec::new(),
            broken: false,
        }
    }

    /// Over a connected Unix stream socket.
    #[cfg(unix)]
    pub fn unix(stream: UnixStream) -> io::Result<StreamChannel> {
        let writer = stream.try_clone()?;
        Ok(StreamChannel::new(Box::new(stream), Box::new(writer)))
    }

    /// Over a connected TCP stream; Nagle's algorithm is turned off, as every
    /// latency-minded TCP user does.
    pub fn tcp(stream: TcpStream) -> io::Result<StreamChannel> {
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        Ok(StreamChannel::new(Box::new(stream), Box::new(writer)))
    }

    /// Over two pipes: messages arrive on `read`, leave on `write` (fds on Unix, handles
    /// on Windows).
    pub fn pipes(read: impl Into<File>, write: impl Into<File>) -> StreamChannel {
        StreamChannel::new(Box::new(read.into()), Box::new(write.into()))
    }

    fn usable(&self) -> Result<(), Error> {
        if self.broken {
            return Err(Error::Io(io::Error::other(
                "the stream broke off mid-message earlier; reconnect",
            )));
        }
        Ok(())
    }

    /// Marks the stream unusable and turns `error` into ringbell's terms.
    fn fail(&mut self, what: &str, error: io::Error) -> Error {
        self.broken = true;
        match error.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                Error::PeerDied
            }
            kind => Error::Io(io::Error::new(kind, format!("{what}: {error}"))),
        }
    }

    /// Waits up to `timeout` for the next byte; `false` if none came.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, Error> {
        self.reader
            .get_ref()
            .wait_readable(timeout)
            .map_err(|error| {
                Error::Io(io::Error::new(
                    error.kind(),
                    format!("waiting for the stream: {error}"),
                ))
            })
    }
}

impl StreamChannel {
    /// Appends `msg`, length-prefixed, to the frame buffer of the next write.
    fn frame_message(&mut self, msg: &[u8]) -> Result<(), Error> {
        if msg.len() > MAX_MESSAGE_SIZE {
            return Err(Error::TooLarge {
                len: msg.len(),
                max: MAX_MESSAGE_SIZE,
            });
        }
        let len = u32::try_from(msg.len()).expect("MAX_MESSAGE_SIZE fits in u32");
        self.frame.extend_from_slice(&len.to_le_bytes());
        self.frame.extend_from_slice(msg);
        Ok(())
    }

    /// Writes the frame buffer, all of it.
    fn write_frames(&mut self) -> Result<(), Error> {
        if let Err(error) = self.writer.write_all(&self.frame) {
            return Err(self.fail("writing to the stream", error));
        }
        Ok(())
    }
}

impl IpcTransport for StreamChannel {
    fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.usable()?;
        self.frame.clear();
        self.frame_message(msg)?;
        self.write_frames()
    }

    /// The stream's own batching: every message framed into one buffer, one write.
    fn send_batch(&mut self, msgs: &[&[u8]]) -> Result<(), Error> {
        self.usable()?;
        self.frame.clear();
        msgs.iter().try_for_each(|msg| self.frame_message(msg))?;
        self.write_frames()
    }

    /// A timeout is clean (nothing consumed) while no byte of the next frame has arrived;
    /// a frame cut off midway by an error breaks the stream for good.
    fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<usize, Error> {
        self.usable()?;
        if let Some(timeout) = timeout {
            if self.reader.buffer().is_empty() && !self.wait_readable(timeout)? {
                return Err(Error::Timeout);
            }
        }
        loop {
            match self.reader.fill_buf() {
                Ok([]) => return Err(Error::PeerDied),
                Ok(_) => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(self.fail("reading from the stream", error)),
            }
        }
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        if let Err(error) = self.reader.read_exact(&mut prefix) {
            return Err(self.fail("reading a message length", error));
        }
        let len = u32::from_le_bytes(prefix) as usize;
        if len > MAX_MESSAGE_SIZE {
            self.broken = true;
            return Err(Error::Corrupted {
                detail: "a stream frame announces more than the maximum message size",
            });
        }
        buf.clear();
        buf.resize(len, 0);
        if let Err(error) = self.reader.read_exact(buf) {
            return Err(self.fail("reading a message", error));
        }
        Ok(len)
    }
}

/// Starts a `__stream-peer` serving `mode` over a new stream of `kind`, and returns it with
/// our end. The peer is killed when the returned process is dropped.
pub fn start_peer(
    launcher: &PeerLauncher,
    kind: StreamKind,
    mode: ServeMode,
) -> Result<(PeerProcess, StreamChannel), CliError> {
    let name = format!("{} peer", kind.label());
    let mut args: Vec<std::ffi::OsString> = vec![
        "__stream-peer".into(),
        "--kind".into(),
        kind.arg().into(),
        "--mode".into(),
        mode.arg().into(),
    ];
    match kind {
        #[cfg(windows)]
        StreamKind::Uds => Err(CliError::new(
            "the Unix-socket baseline is Unix's: Windows has no socket pair in Rust's std",
        )),
        #[cfg(unix)]
        StreamKind::Uds => {
            let (ours, theirs) = UnixStream::pair().context("creating a socket pair")?;
            let theirs = OwnedFd::from(theirs);
            args.extend(["--fd".into(), theirs.as_raw_fd().to_string().into()]);
            let peer = spawn_inheriting(launcher, &name, &args, &[theirs.as_fd()])?;
            Ok((
                peer,
                StreamChannel::unix(ours).context("setting up the socket")?,
            ))
        }
        #[cfg(windows)]
        StreamKind::Pipe => {
            use crate::windows::{anonymous_pipe, handle_value};
            use std::os::windows::io::AsHandle;
            let (from_peer, to_us) = anonymous_pipe().context("creating a pipe")?;
            let (from_us, to_peer) = anonymous_pipe().context("creating a pipe")?;
            args.extend([
                "--fd".into(),
                handle_value(from_us.as_handle()).to_string().into(),
                "--write-fd".into(),
                handle_value(to_us.as_handle()).to_string().into(),
            ]);
            let peer = crate::child::spawn_inheriting_handles(
                launcher,
                &name,
                &args,
                &[from_us.as_handle(), to_us.as_handle()],
            )?;
            Ok((peer, StreamChannel::pipes(from_peer, to_peer)))
        }
        #[cfg(unix)]
        StreamKind::Pipe => {
            let (from_peer, to_us) = pipe_cloexec().context("creating a pipe")?;
            let (from_us, to_peer) = pipe_cloexec().context("creating a pipe")?;
            args.extend([
                "--fd".into(),
                from_us.as_raw_fd().to_string().into(),
                "--write-fd".into(),
                to_us.as_raw_fd().to_string().into(),
            ]);
            let peer = spawn_inheriting(launcher, &name, &args, &[from_us.as_fd(), to_us.as_fd()])?;
            Ok((peer, StreamChannel::pipes(from_peer, to_peer)))
        }
        StreamKind::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0").context("binding a TCP port")?;
            let address = listener.local_addr().context("reading the TCP port")?;
            args.extend(["--connect".into(), address.to_string().into()]);
            let mut peer = PeerProcess::spawn(&name, launcher.command(&args))?;
            let stream = accept_within(&listener, TCP_CONNECT_TIMEOUT, &mut peer)?;
            Ok((peer, StreamChannel::tcp(stream).context("setting up TCP")?))
        }
    }
}

/// A pipe whose two ends are closed on `exec`, as every fd of ours is until
/// [`spawn_inheriting`] lets one cross for one spawn. See pipe(2).
#[cfg(target_os = "linux")]
fn pipe_cloexec() -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
}

/// A pipe whose two ends are closed on `exec`. macOS has no `pipe2`, so the flag is set
/// with `fcntl` just after `pipe`. A process started by another thread between the two
/// calls would inherit the ends; no other thread of ours starts processes (the invariant
/// [`spawn_inheriting`] relies on too), so none can.
#[cfg(all(unix, not(target_os = "linux")))]
fn pipe_cloexec() -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe()?;
    fcntl_setfd(&read, FdFlags::CLOEXEC)?;
    fcntl_setfd(&write, FdFlags::CLOEXEC)?;
    Ok((read, write))
}

/// Spawns the peer with exactly `inherited` crossing `exec` (their close-on-exec flag is
/// cleared for this spawn only; our copies are closed by the caller's drop). No other
/// thread of ours starts processes meanwhile, so no other child inherits them.
#[cfg(unix)]
fn spawn_inheriting(
    launcher: &PeerLauncher,
    name: &str,
    args: &[std::ffi::OsString],
    inherited: &[BorrowedFd<'_>],
) -> Result<PeerProcess, CliError> {
    for fd in inherited {
        fcntl_setfd(fd, FdFlags::empty()).context("letting the peer inherit its fds")?;
    }
    PeerProcess::spawn(name, launcher.command(args))
}

/// Accepts the peer's TCP connection, giving up if it has not come after `timeout` or the
/// peer died.
fn accept_within(
    listener: &TcpListener,
    timeout: Duration,
    peer: &mut PeerProcess,
) -> Result<TcpStream, CliError> {
    listener
        .set_nonblocking(true)
        .context("making the TCP listener non-blocking")?;
    let started = std::time::Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .context("making the TCP stream blocking")?;
                return Ok(stream);
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                peer.check_alive()?;
                if started.elapsed() > timeout {
                    return Err(CliError::new(format!(
                        "the TCP peer did not connect within {timeout:?}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(error) => return Err(error).context("accepting the TCP peer"),
        }
    }
}

/// Where a `__stream-peer` finds its end of the stream.
#[derive(Debug)]
pub enum PeerEnd {
    /// An inherited socket-pair end.
    #[cfg_attr(
        windows,
        allow(dead_code, reason = "the Unix-socket baseline's, which Windows lacks")
    )]
    Unix(i32),
    /// Inherited pipe ends: read, write.
    Pipes(i32, i32),
    /// Connect to this TCP address.
    Tcp(SocketAddr),
}

/// `ringbell __stream-peer`: serves one stream in `mode` until the other side hangs up.
pub fn run_peer(end: PeerEnd, mode: ServeMode) -> Result<(), CliError> {
    if let PeerEnd::Pipes(read, write) = &end {
        // Owning one fd or handle twice would close it twice.
        if read == write {
            return Err(CliError::new(format!(
                "--fd and --write-fd are both {read}: the two pipes' ends differ"
            )));
        }
    }
    let mut channel = match end {
        #[cfg(windows)]
        PeerEnd::Unix(_) => {
            return Err(CliError::new("the Unix-socket baseline is Unix's"));
        }
        #[cfg(windows)]
        PeerEnd::Pipes(read, write) => {
            let take = |value: i32, what: &str| {
                crate::windows::take_inherited_handle(i64::from(value), what).map_err(CliError::new)
            };
            StreamChannel::pipes(
                take(read, "the pipe to read")?,
                take(write, "the pipe to write")?,
            )
        }
        #[cfg(unix)]
        PeerEnd::Unix(fd) => {
            let fd = crate::shm::take_inherited_fd(fd, "the socket pair end")?;
            StreamChannel::unix(UnixStream::from(fd)).context("setting up the socket")?
        }
        #[cfg(unix)]
        PeerEnd::Pipes(read, write) => StreamChannel::pipes(
            crate::shm::take_inherited_fd(read, "the pipe to read")?,
            crate::shm::take_inherited_fd(write, "the pipe to write")?,
        ),
        PeerEnd::Tcp(address) => {
            let stream = TcpStream::connect_timeout(&address, TCP_CONNECT_TIMEOUT)
                .context(format_args!("connecting to {address}"))?;
            StreamChannel::tcp(stream).context("setting up TCP")?
        }
    };
    serve_connection(&mut channel, mode)?;
    Ok(())
}
