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
//! tonic (gRPC) is the exception: a gRPC service is calls, not a message channel, so
//! [`grpc`] gives the streamed-call rows a server and a client of their own (unary and
//! server-streaming calls over a Unix socket).
//!
//! Only this crate depends on the peer libraries, so ringbell's own dependency tree stays
//! lean.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

pub mod grpc;
mod iox2;
mod ipc_bytes;
mod peer_link;
mod tokio_uds;

/// A peer library and the way it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// tokio `UnixStream`s with a length prefix, driven by a current-thread runtime: what
    /// a typical async Rust application does.
    TokioUnixStream,
    /// iceoryx2 publish-subscribe, one service each way, both sides busy-polling: the
    /// library's lowest-latency set-up.
    Iceoryx2PubSub,
    /// iceoryx2 request-response, the parent the client and the child the server, both
    /// busy-polling: the round trip the issue holds ringbell's spinning one against.
    Iceoryx2RequestResponse,
    /// iceoryx2 publish-subscribe for the payload plus an event service each way, the
    /// receiver asleep in the kernel until notified: iceoryx2's blocking ping-pong.
    Iceoryx2Event,
    /// ipc-channel (Servo's) byte channels, bootstrapped with a one-shot server.
    IpcChannel,
}

impl PeerKind {
    /// Every peer, in the order of the reports.
    pub const ALL: [PeerKind; 5] = [
        PeerKind::TokioUnixStream,
        PeerKind::Iceoryx2PubSub,
        PeerKind::Iceoryx2RequestResponse,
        PeerKind::Iceoryx2Event,
        PeerKind::IpcChannel,
    ];

    /// The row name in reports.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::TokioUnixStream => "tokio UnixStream",
            PeerKind::Iceoryx2PubSub => "iceoryx2 pub-sub (spin)",
            PeerKind::Iceoryx2RequestResponse => "iceoryx2 req-resp (spin)",
            PeerKind::Iceoryx2Event => "iceoryx2 event (block)",
            PeerKind::IpcChannel => "ipc-channel",
        }
    }

    /// The name on the command line of `__peer-lib`.
    pub fn arg(self) -> &'static str {
        match self {
            PeerKind::TokioUnixStream => "tokio-uds",
            PeerKind::Iceoryx2PubSub => "iceoryx2-pubsub",
            PeerKind::Iceoryx2RequestResponse => "iceoryx2-reqresp",
            PeerKind::Iceoryx2Event => "iceoryx2-event",
            PeerKind::IpcChannel => "ipc-channel",
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
            PeerKind::TokioUnixStream | PeerKind::Iceoryx2Event | PeerKind::IpcChannel => true,
            PeerKind::Iceoryx2PubSub | PeerKind::Iceoryx2RequestResponse => false,
        }
    }

    /// Whether the peer carries a one-way stream (and so has a throughput row).
    pub fn streams(self) -> bool {
        match self {
            PeerKind::TokioUnixStream
            | PeerKind::Iceoryx2PubSub
            | PeerKind::Iceoryx2Event
            | PeerKind::IpcChannel => true,
            // A client holds a few requests in flight at most: request-response is for
            // round trips, and pub-sub is iceoryx2's stream.
            PeerKind::Iceoryx2RequestResponse => false,
        }
    }

    /// The ringbell row the targets compare this peer with, if any.
    pub fn compare_with(self) -> Option<&'static str> {
        match self {
            PeerKind::Iceoryx2RequestResponse => Some("ringbell spin"),
            PeerKind::Iceoryx2Event => Some("ringbell block"),
            PeerKind::TokioUnixStream | PeerKind::Iceoryx2PubSub | PeerKind::IpcChannel => None,
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
            PeerKind::Iceoryx2PubSub => iox2::HOW_PUBSUB,
            PeerKind::Iceoryx2RequestResponse => iox2::HOW_REQUEST_RESPONSE,
            PeerKind::Iceoryx2Event => iox2::HOW_EVENT,
            PeerKind::IpcChannel => ipc_bytes::HOW,
        }
    }
}

/// One end of a message channel through a peer library.
///
/// Not `Send`: iceoryx2's `ipc::Service` ports, the variant its own benchmarks use, are
/// single-threaded (their shared state is reference-counted with `Rc`); the thread-safe
/// variant would put a mutex on every send and receive. A channel stays on the thread
/// that made it, as every measurement does.
pub trait Channel {
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
    inner: Box<dyn FnOnce(Duration) -> io::Result<Box<dyn Channel>>>,
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
        PeerKind::Iceoryx2PubSub => iox2::listen(iox2::Pattern::PubSubSpin, max_message),
        PeerKind::Iceoryx2RequestResponse => {
            iox2::listen(iox2::Pattern::RequestResponseSpin, max_message)
        }
        PeerKind::Iceoryx2Event => iox2::listen(iox2::Pattern::PubSubEvent, max_message),
        PeerKind::IpcChannel => ipc_bytes::listen(),
    }
}

/// The child's end of a channel through `kind`, from the parent's [`ChildSetup::args`].
pub fn connect_child(kind: PeerKind, args: &[String]) -> io::Result<Box<dyn Channel>> {
    match kind {
        PeerKind::TokioUnixStream => tokio_uds::connect_child(args),
        PeerKind::Iceoryx2PubSub => iox2::connect_child(iox2::Pattern::PubSubSpin, args),
        PeerKind::Iceoryx2RequestResponse => {
            iox2::connect_child(iox2::Pattern::RequestResponseSpin, args)
        }
        PeerKind::Iceoryx2Event => iox2::connect_child(iox2::Pattern::PubSubEvent, args),
        PeerKind::IpcChannel => ipc_bytes::connect_child(args),
    }
}

/// Takes over the fd whose number the parent passed as `arg` (see
/// [`ChildSetup::inherited`]).
fn inherited_fd(arg: &str) -> io::Result<OwnedFd> {
    let fd: i32 = arg
        .parse()
        .map_err(|_| bad_args("an inherited fd is not a number"))?;
    if fd <= 2 {
        return Err(bad_args(
            "an inherited fd cannot be stdin, stdout or stderr",
        ));
    }
    // `OwnedFd::from_raw_fd` would own a number that may be closed or someone else's; a
    // borrowed duplicate tells whether it is open, and is closed at once.
    // SAFETY: borrowed for the duplication only, which fails (EBADF) if the number is not
    // open; nothing is read, written or closed through it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if borrowed.try_clone_to_owned().is_err() {
        return Err(bad_args("an inherited fd is not open in this process"));
    }
    // SAFETY: the parent passed this fd number for this process alone, left open across
    // exec (checked open above); nothing else here knows the number, so we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `InvalidInput` error about the child's arguments.
fn bad_args(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("peer arguments: {what}"),
    )
}
