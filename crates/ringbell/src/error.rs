//! The crate's error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong, and what to do about it.
///
/// Errors that end a connection ([`PeerDied`](Error::PeerDied),
/// [`Corrupted`](Error::Corrupted)) are returned again by every later call on it; drop
/// the connection and reconnect. The others leave the connection usable.
///
/// ```no_run
/// use ringbell::{ClientConfig, Connection, Error};
/// use std::time::Duration;
///
/// let mut conn = Connection::connect("/tmp/app.sock", ClientConfig::default())?;
/// let mut buf = Vec::new();
/// loop {
///     match conn.recv(&mut buf, Some(Duration::from_secs(1))) {
///         Ok(len) => println!("{len} bytes"),
///         Err(Error::Timeout) => continue, // nothing yet; the connection is fine
///         Err(Error::PeerDied) => break,   // the server went away: reconnect, or stop
///         Err(other) => return Err(other), // every error's message says what happened
///     }
/// }
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The deadline passed before the operation could complete. Nothing was consumed or
    /// half-sent: retry, or give up on the peer.
    Timeout,
    /// The peer closed the connection or its process died. Messages it sent before are
    /// still delivered first; after this, reconnect.
    PeerDied,
    /// The peer broke the protocol or the shared-memory invariants (a bug, memory
    /// corruption, or hostility). The connection is unusable; drop it.
    Corrupted {
        /// Which invariant was broken.
        detail: &'static str,
    },
    /// This side closed the connection because its peer moved nothing for the idle
    /// timeout ([`ServerConfig::idle_timeout`](crate::ServerConfig::idle_timeout),
    /// [`ClientConfig::idle_timeout`](crate::ClientConfig::idle_timeout)), or, with
    /// `mid_message`, stopped in the middle of a message for the
    /// [`stall_timeout`](crate::ServerConfig::stall_timeout) (the part received is
    /// dropped). The connection is unusable, like after `PeerDied`; the peer's next call
    /// gets `PeerDied`.
    Idle {
        /// How long nothing moved.
        after: Duration,
        /// Whether the peer stopped in the middle of a message.
        mid_message: bool,
    },
    /// A message is larger than the connection's `max_message_size`. Nothing was sent.
    TooLarge {
        /// The message's length.
        len: usize,
        /// The largest length allowed, decided by the server.
        max: usize,
    },
    /// The handshake failed: the other end is not a ringbell peer, speaks another protocol
    /// version, or sent a malformed message. On a server, only this client is affected.
    Handshake {
        /// What was wrong.
        detail: String,
    },
    /// A uid was not admitted: the server refused the client's (by default, only the
    /// server's own uid may connect; see
    /// [`ServerConfig::allow_uid`](crate::ServerConfig::allow_uid)), or the client does not
    /// trust the server's (see
    /// [`ClientConfig::trust_server_uid`](crate::ClientConfig::trust_server_uid)).
    PermissionDenied {
        /// Who was refused.
        detail: String,
    },
    /// The server refused a new connection for want of room: it is at its connection limit
    /// ([`ServerConfig::max_connections`](crate::ServerConfig::max_connections)) or out of
    /// file descriptors. Its other connections are unaffected; retry later.
    ServerBusy {
        /// Which limit was reached.
        detail: String,
    },
    /// A live server already listens at this path.
    AddressInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// A configuration value is out of range.
    InvalidConfig {
        /// Which value, and its allowed range.
        detail: String,
    },
    /// The server's handler failed (returned an error or panicked) for this request; the
    /// connection and other requests are not affected.
    Handler {
        /// What the handler reported.
        message: String,
    },
    /// A typed message could not be encoded, or a received message could not be decoded
    /// as the expected type (feature `codec`). The connection goes on.
    Codec {
        /// What the codec reported.
        detail: String,
    },
    /// The call was cancelled: its client gave up on it (dropped its future or its
    /// stream, or its deadline passed), or its connection ended. A handler sees it from
    /// [`Call::send`](crate::tokio::Call::send) and should return; a client sees it when
    /// it sends on a call that has already ended. The connection goes on.
    Cancelled,
    /// A message was streamed on a call that does not stream that way: a handler sent a
    /// streamed response to a client that made a unary call (`call`, not `call_stream`
    /// or `open`). Nothing was sent; the call goes on, and its final reply still can be.
    NotStreaming,
    /// The operating system refused an operation; the message says which one.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => f.write_str("timed out: the peer did not answer in time; retry or give up"),
            Error::PeerDied => f.write_str(
                "the peer closed the connection or its process died; reconnect to continue",
            ),
            Error::Corrupted { detail } => write!(
                f,
                "the peer broke the protocol ({detail}); the connection is closed, reconnect"
            ),
            Error::Idle { after, mid_message: false } => write!(
                f,
                "the connection moved nothing for {after:?} (its idle_timeout) and was closed; \
                 reconnect to continue"
            ),
            Error::Idle { after, mid_message: true } => write!(
                f,
                "the peer stopped in the middle of a message for {after:?} (the stall_timeout); \
                 the part received was dropped and the connection closed"
            ),
            Error::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes exceeds the connection's maximum of {max} bytes; \
                 raise ServerConfig::max_message_size or split the message"
            ),
            Error::Handshake { detail } => write!(f, "handshake failed: {detail}"),
            Error::PermissionDenied { detail } => write!(
                f,
                "permission denied: {detail}"
            ),
            Error::ServerBusy { detail } => {
                write!(f, "server busy: {detail}; retry later, or raise the limit")
            }
            Error::AddressInUse { path } => write!(
                f,
                "address in use: a live server already listens at {}; stop it or pick another path",
                path.display()
            ),
            Error::InvalidConfig { detail } => write!(f, "invalid configuration: {detail}"),
            Error::Codec { detail } => write!(
                f,
                "a typed message could not be encoded or decoded ({detail}); do both sides use the same types?"
            ),
            Error::Handler { message } => write!(
                f,
                "the server's handler failed for this request ({message}); other requests are unaffected"
            ),
            Error::Cancelled => f.write_str(
                "the call was cancelled: its client gave up, its deadline passed, or its connection ended",
            ),
            Error::NotStreaming => f.write_str(
                "the client made a unary call, which takes no streamed responses: \
                 have it use call_stream or open, or return the whole response",
            ),
            Error::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::Io(error)
    }
}

impl Error {
    /// An `Io` error that says which operation failed.
    pub(crate) fn io(what: &str, error: io::Error) -> Self {
        Error::Io(io::Error::new(error.kind(), format!("{what}: {error}")))
    }

    /// A copy for returning the same terminal error again. `Io` errors are not terminal.
    pub(crate) fn terminal_copy(&self) -> Option<Error> {
        match self {
            Error::PeerDied => Some(Error::PeerDied),
            Error::Corrupted { detail } => Some(Error::Corrupted { detail }),
            Error::Idle { after, mid_message } => Some(Error::Idle {
                after: *after,
                mid_message: *mid_message,
            }),
            _ => None,
        }
    }
}
