//! tokio `UnixStream`: the async Rust application's everyday choice. Each side runs a
//! current-thread runtime and awaits its reads and writes on it, as an application's
//! connection task would; messages are a 4-byte little-endian length and the payload.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

use crate::{bad_args, inherited_fd, Channel, ChildSetup, Pending};

struct TokioChannel {
    runtime: Runtime,
    stream: UnixStream,
    /// Prefix and payload, written with one `write_all`.
    frame: Vec<u8>,
    max_message: usize,
}

impl TokioChannel {
    fn new(stream: std::os::unix::net::UnixStream, max_message: usize) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        stream.set_nonblocking(true)?;
        let stream = {
            let _entered = runtime.enter();
            UnixStream::from_std(stream)?
        };
        Ok(TokioChannel {
            runtime,
            stream,
            frame: Vec::new(),
            max_message,
        })
    }
}

impl Channel for TokioChannel {
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        let len = u32::try_from(message.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?;
        self.frame.clear();
        self.frame.extend_from_slice(&len.to_le_bytes());
        self.frame.extend_from_slice(message);
        let (stream, frame) = (&mut self.stream, &self.frame);
        self.runtime.block_on(stream.write_all(frame))
    }

    fn recv(
        &mut self,
        buffer: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> io::Result<Option<usize>> {
        let (stream, max_message) = (&mut self.stream, self.max_message);
        let read = async move {
            let mut prefix = [0u8; 4];
            stream.read_exact(&mut prefix).await?;
            let len = u32::from_le_bytes(prefix) as usize;
            if len > max_message {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a frame announces {len} bytes, more than {max_message}"),
                ));
            }
            buffer.clear();
            buffer.resize(len, 0);
            stream.read_exact(buffer).await?;
            Ok(len)
        };
        self.runtime.block_on(async move {
            match timeout {
                // A timeout before the first byte consumes nothing; the benchmark uses it
                // only for the first reply.
                Some(timeout) => match tokio::time::timeout(timeout, read).await {
                    Ok(result) => result.map(Some),
                    Err(_elapsed) => Ok(None),
                },
                None => read.await.map(Some),
            }
        })
    }
}

pub(crate) fn listen(max_message: usize) -> io::Result<(ChildSetup, Pending)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs = OwnedFd::from(theirs);
    let setup = ChildSetup {
        args: vec![theirs.as_raw_fd().to_string(), max_message.to_string()],
        inherited: vec![theirs],
    };
    let pending = Pending {
        inner: Box::new(move |_timeout| {
            Ok(Box::new(TokioChannel::new(ours, max_message)?) as Box<dyn Channel>)
        }),
    };
    Ok((setup, pending))
}

pub(crate) fn connect_child(args: &[String]) -> io::Result<Box<dyn Channel>> {
    let [fd, max_message] = args else {
        return Err(bad_args("expected: <socket fd> <max message>"));
    };
    let max_message = max_message
        .parse()
        .map_err(|_| bad_args("the maximum message size is not a number"))?;
    let fd = inherited_fd(fd)?;
    Ok(Box::new(TokioChannel::new(fd.into(), max_message)?))
}
