//! The peer libraries `ringbell bench` measures ringbell against, each used as its own
//! documentation recommends, behind one message-channel interface, so that the benchmark
//! times them with the very loops (and byte-for-byte checks) it uses for ringbell.
//!
//! A measurement has two processes. The parent calls [`listen`], which sets up whatever the
//! library needs to meet a peer and returns the arguments for the child; the child (the
//! `ringbell` executable again, in its hidden `__peer-lib` command) calls
//! [`connect_child`] with them; the parent then [`Pending::accept`]s. Both ends are a
//! [`Channel`]: messages of any size from 0 bytes to the agreed maximum, in order.
//!
//! Only this crate depends on the peer libraries, so ringbell's own dependency tree stays
//! lean.

use std::io;
use std::time::Duration;

mod tokio_uds;

/// A peer library and the way it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// tokio `UnixStream`s with a length prefix, driven by a current-thread runtime: what
    /// a typical async Rust application does.
    TokioUnixStream,
}

impl PeerKind {
    /// Every peer, in the order of the reports.
    pub const ALL: [PeerKind; 1] = [PeerKind::TokioUnixStream];

    /// The row name in reports.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::TokioUnixStream => "tokio UnixStream",
        }
    }

    /// The name on the command line of `__peer-lib`.
    pub fn arg(self) -> &'static str {
        match self {
            PeerKind::TokioUnixStream => "tokio-uds",
        }
    }

    /// The peer named `arg` on the command line.
    pub fn from_arg(arg: &str) -> Option<PeerKind> {
        PeerKind::ALL.into_iter().find(|peer| peer.arg() == arg)
    }

    /// Whether a waiting side sleeps in the kernel (round trips cost tens of µs), rather
    /// than busy-polling.
    pub fn sleeps(self) -> bool {
        match self {
            PeerKind::TokioUnixStream => true,
        }
    }

    /// Whether the peer carries a one-way stream (and so has a throughput row).
    pub fn streams(self) -> bool {
        match self {
            PeerKind::TokioUnixStream => true,
        }
    }

    /// The ringbell row the targets compare this peer with, if any.
    pub fn compare_with(self) -> Option<&'static str> {
        match self {
            PeerKind::TokioUnixStream => None,
        }
    }

    /// How the library is used, for the report.
    pub fn how(self) -> &'static str {
        match self {
            PeerKind::TokioUnixStream => {
                "tokio 1.x UnixStream (socket pair), current-thread runtime on each side, \
                 4-byte length prefix, write_all of prefix + payload, read_exact into a \
                 reused buffer"
            }
        }
    }
}

/// One end of a message channel through a peer library.
pub trait Channel: Send {
    /// Sends one message, waiting while the library applies backpressure.
    fn send(&mut self, message: &[u8]) -> io::Result<()>;

    /// Receives the next message into `buffer` (replacing its contents) and returns its
    /// length, or `None` if `timeout` passed first (`None` timeout: wait as long as it
    /// takes). An error of kind `UnexpectedEof` means the other side is gone.
    fn recv(
        &mut self,
        buffer: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> io::Result<Option<usize>>;
}

/// The parent's half of a channel whose child has not connected yet.
pub struct Pending {
    inner: Box<dyn FnOnce(Duration) -> io::Result<Box<dyn Channel>> + Send>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Pending {
    /// Waits up to `timeout` for the child to connect, and returns the parent's end.
    pub fn accept(self, timeout: Duration) -> io::Result<Box<dyn Channel>> {
        (self.inner)(timeout)
    }
}

/// What the parent must hand the child so that it can connect.
#[derive(Debug)]
pub struct ChildSetup {
    /// Arguments for [`connect_child`], to pass on the child's command line.
    pub args: Vec<String>,
    /// Fds the child must inherit (their close-on-exec flag cleared for its spawn only).
    pub inherited: Vec<std::os::fd::OwnedFd>,
}

/// Sets up a channel through `kind` for messages of up to `max_message` bytes.
pub fn listen(kind: PeerKind, max_message: usize) -> io::Result<(ChildSetup, Pending)> {
    match kind {
        PeerKind::TokioUnixStream => tokio_uds::listen(max_message),
    }
}

/// The child's end of a channel through `kind`, from the parent's [`ChildSetup::args`].
pub fn connect_child(kind: PeerKind, args: &[String]) -> io::Result<Box<dyn Channel>> {
    match kind {
        PeerKind::TokioUnixStream => tokio_uds::connect_child(args),
    }
}

/// An `InvalidInput` error about the child's arguments.
fn bad_args(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("peer arguments: {what}"),
    )
}
