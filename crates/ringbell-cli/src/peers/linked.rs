//! The peer libraries, linked in (the `peers` feature): the `ringbell-bench-peers` crate's
//! channels as [`IpcTransport`]s, and `__peer-lib`, the child process at their other end.

use std::io;
use std::time::Duration;

use ringbell::{Error, IpcTransport};
use ringbell_bench_peers::Channel;
pub use ringbell_bench_peers::PeerKind;
use rustix::io::{fcntl_setfd, FdFlags};

use crate::child::{PeerLauncher, PeerProcess};
use crate::error::{CliError, Context};
use crate::serve::{serve_connection, ServeMode};

/// How long the peer's child may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The smallest largest message a peer is set up for: every row up to 1 MiB sets its
/// peer up the same way (iceoryx2 preallocates slices of it), and the larger rows for
/// their own size.
const MIN_MAX_MESSAGE: usize = 1 << 20;

/// A peer library's channel end, as an [`IpcTransport`].
pub struct PeerTransport {
    channel: Box<dyn Channel>,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport").finish_non_exhaustive()
    }
}

fn to_ringbell(error: io::Error) -> Error {
    match error.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset => Error::PeerDied,
        _ => Error::Io(error),
    }
}

impl IpcTransport for PeerTransport {
    fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.channel.send(msg).map_err(to_ringbell)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<usize, Error> {
        match self.channel.recv(buf, timeout).map_err(to_ringbell)? {
            Some(len) => Ok(len),
            None => Err(Error::Timeout),
        }
    }
}

/// Starts a `__peer-lib` child serving `mode` through `peer`, set up for messages of up
/// to `size` bytes (1 MiB at least), and returns it with our end.
pub fn start(
    peer: PeerKind,
    launcher: &PeerLauncher,
    mode: ServeMode,
    size: usize,
) -> Result<(PeerProcess, PeerTransport), CliError> {
    let (setup, pending) = ringbell_bench_peers::listen(peer, size.max(MIN_MAX_MESSAGE))
        .context(format_args!("setting up {}", peer.name()))?;
    let args: [std::ffi::OsString; 5] = [
        "__peer-lib".into(),
        "--peer".into(),
        peer.arg().into(),
        "--mode".into(),
        mode.arg().into(),
    ];
    // Exactly these fds cross `exec`, for this spawn only; ours close when `setup` drops.
    for fd in &setup.inherited {
        fcntl_setfd(fd, FdFlags::empty()).context("letting the peer inherit its fds")?;
    }
    // The library's own arguments go last, after `--`, past the launcher's options.
    let mut command = launcher.command(&args);
    command.arg("--").args(&setup.args);
    let mut process = PeerProcess::spawn(&format!("{} peer", peer.name()), command)?;
    drop(setup);
    let channel = pending
        .accept(CONNECT_TIMEOUT)
        .context(format_args!("waiting for the {} peer", peer.name()));
    // If the child died, say so rather than report the timeout it caused.
    process.check_alive()?;
    Ok((process, PeerTransport { channel: channel? }))
}

/// `ringbell __peer-lib`: the other end of a peer channel, serving `mode` until the parent
/// hangs up.
pub fn run_child(peer: PeerKind, mode: ServeMode, args: &[String]) -> Result<(), CliError> {
    let channel = ringbell_bench_peers::connect_child(peer, args)
        .context(format_args!("connecting the {} peer", peer.name()))?;
    let mut transport = PeerTransport { channel };
    serve_connection(&mut transport, mode)?;
    Ok(())
}
