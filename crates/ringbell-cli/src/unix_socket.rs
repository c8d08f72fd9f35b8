//! The Unix-socket baseline: what people use instead of shared memory. A std
//! `UnixStream`, each message framed as a 4-byte little-endian length and the payload;
//! the sender builds the frame in one buffer and writes it with one `write_all` (one
//! syscall), the receiver reads through a `BufReader`.
//!
//! It implements ringbell's [`IpcTransport`], so the demo measures it with the very
//! loops it uses for ringbell, and `__uds-peer` serves it with the same echo/sink loop.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use ringbell::{Error, IpcTransport};

use crate::error::{CliError, Context};
use crate::serve::{announce_listening, serve_connection, ServeMode};

/// The largest frame a receiver accepts, so that a corrupt length cannot size a huge
/// allocation. The same as ringbell's default maximum message size.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

const LENGTH_PREFIX_LEN: usize = 4;

/// One end of a length-prefixed message stream over a Unix socket.
#[derive(Debug)]
pub struct UnixSocketChannel {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Reused for prefix + payload, so that each message is one write.
    frame: Vec<u8>,
    /// The read timeout currently set on the socket, to set it again only on a change.
    read_timeout: Option<Duration>,
    /// Set when a frame was cut off: the stream is out of step and cannot be used again.
    broken: bool,
}

impl UnixSocketChannel {
    /// Connects to a `__uds-peer` listening at `path`.
    pub fn connect(path: &Path) -> Result<UnixSocketChannel, CliError> {
        let stream =
            UnixStream::connect(path).context(format_args!("connecting to {}", path.display()))?;
        UnixSocketChannel::new(stream).context("setting up the unix socket")
    }

    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> io::Result<UnixSocketChannel> {
        let writer = stream.try_clone()?;
        Ok(UnixSocketChannel {
            reader: BufReader::new(stream),
            writer,
            frame: Vec::new(),
            read_timeout: None,
            broken: false,
        })
    }

    fn usable(&self) -> Result<(), Error> {
        if self.broken {
            return Err(Error::Io(io::Error::other(
                "the unix socket stream broke off mid-message earlier; reconnect",
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

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        // A zero timeout is refused by the socket; the smallest it takes is close enough.
        let timeout = timeout.map(|timeout| timeout.max(Duration::from_micros(1)));
        if timeout != self.read_timeout {
            self.reader
                .get_ref()
                .set_read_timeout(timeout)
                .map_err(|error| {
                    Error::Io(io::Error::new(
                        error.kind(),
                        format!("setting a read timeout: {error}"),
                    ))
                })?;
            self.read_timeout = timeout;
        }
        Ok(())
    }
}

impl IpcTransport for UnixSocketChannel {
    fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.usable()?;
        if msg.len() > MAX_MESSAGE_SIZE {
            return Err(Error::TooLarge {
                len: msg.len(),
                max: MAX_MESSAGE_SIZE,
            });
        }
        let len = u32::try_from(msg.len()).expect("MAX_MESSAGE_SIZE fits in u32");
        self.frame.clear();
        self.frame.extend_from_slice(&len.to_le_bytes());
        self.frame.extend_from_slice(msg);
        if let Err(error) = self.writer.write_all(&self.frame) {
            return Err(self.fail("writing to the unix socket", error));
        }
        Ok(())
    }

    /// A timeout is clean (nothing consumed) while no byte of the next frame has arrived;
    /// a frame cut off midway by a timeout or an error breaks the stream for good.
    fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<usize, Error> {
        self.usable()?;
        self.set_read_timeout(timeout)?;
        loop {
            match self.reader.fill_buf() {
                Ok([]) => return Err(Error::PeerDied),
                Ok(_) => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return Err(Error::Timeout)
                }
                Err(error) => return Err(self.fail("reading from the unix socket", error)),
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
                detail: "a unix socket frame announces more than the maximum message size",
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

/// `ringbell __uds-peer`: listens at `path`, serves one client in `mode`, and exits when
/// it hangs up.
pub fn run_peer(path: &Path, mode: ServeMode) -> Result<(), CliError> {
    let listener = UnixListener::bind(path).context(format_args!("binding {}", path.display()))?;
    announce_listening(path)?;
    let (stream, _) = listener
        .accept()
        .context("accepting a unix socket client")?;
    // One client only: nobody else needs to find the socket.
    drop(listener);
    let _ = std::fs::remove_file(path);
    let mut channel = UnixSocketChannel::new(stream).context("setting up the unix socket")?;
    serve_connection(&mut channel, mode)?;
    Ok(())
}
