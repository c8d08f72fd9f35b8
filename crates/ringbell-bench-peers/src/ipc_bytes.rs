//! ipc-channel 0.23 (Servo's): `IpcBytesSender` / `IpcBytesReceiver`, the byte channels
//! its documentation recommends for raw bytes (no serde on the way, unlike
//! `IpcSender<Vec<u8>>`), bootstrapped the documented way: the parent opens an
//! `IpcOneShotServer` and passes its name to the child, which creates both channels and
//! sends the parent its halves as the server's one message.
//!
//! Underneath, each channel is a Unix `SOCK_SEQPACKET` socket pair (a message too large
//! for one packet goes through a fresh socket pair, in fragments); a receiver sleeps in
//! `recvmsg`. A process that exits closes its ends, so the other side's receive reports
//! the channel disconnected: no liveness socket is needed here.

use std::io;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};
use ipc_channel::{IpcError, TryRecvError};

use crate::{bad_args, Channel, ChildSetup, Pending};

pub(crate) const HOW: &str = "ipc-channel 0.23: IpcBytesSender / IpcBytesReceiver (raw \
    bytes, no serde) one each way, bootstrapped with an IpcOneShotServer whose name the \
    child gets on its command line; Unix SOCK_SEQPACKET sockets underneath, recvmsg \
    blocking; a received Vec<u8> is moved into the caller's buffer, not copied. \
    IpcBytesReceiver has no timed receive, so a receive with a timeout (only the first \
    echo and the sink's count) polls try_recv, sleeping 20-100 µs in between";

/// What the child sends through the one-shot server: the sender to the child and the
/// receiver from it. `None` comes from the parent itself, to end an `accept` that
/// waited in vain.
type Hello = Option<(IpcBytesSender, IpcBytesReceiver)>;

/// Pauses between `try_recv`s in a receive with a timeout: short at first (the reply is
/// usually close), then capped so that a late reply costs little.
const FIRST_PAUSE: Duration = Duration::from_micros(20);
const LONGEST_PAUSE: Duration = Duration::from_micros(100);

struct IpcBytesChannel {
    sender: IpcBytesSender,
    receiver: IpcBytesReceiver,
}

pub(crate) fn listen() -> io::Result<(ChildSetup, Pending)> {
    let (server, name) = IpcOneShotServer::<Hello>::new()?;
    let setup = ChildSetup {
        args: vec![name.clone()],
        inherited: Vec::new(),
    };
    let pending = Pending {
        inner: Box::new(move |timeout| {
            let (to_child, from_child) = accept(server, name, timeout)?;
            Ok(Box::new(IpcBytesChannel {
                sender: to_child,
                receiver: from_child,
            }) as Box<dyn Channel>)
        }),
    };
    Ok((setup, pending))
}

/// `IpcOneShotServer::accept`, which has no timeout, on a thread of its own, for up to
/// `timeout`. Past it, we connect and say `None` ourselves, so that the thread ends.
fn accept(
    server: IpcOneShotServer<Hello>,
    name: String,
    timeout: Duration,
) -> io::Result<(IpcBytesSender, IpcBytesReceiver)> {
    let (accepted_tx, accepted) = mpsc::channel();
    let accepting = thread::Builder::new()
        .name("ipc-channel-accept".into())
        .spawn(move || {
            let _ = accepted_tx.send(server.accept());
        })?;
    let accepted = accepted.recv_timeout(timeout);
    if accepted.is_err() {
        if let Ok(unblock) = IpcSender::<Hello>::connect(name) {
            let _ = unblock.send(None);
        }
    }
    let _ = accepting.join();
    match accepted {
        Ok(Ok((_bootstrap, Some(channels)))) => Ok(channels),
        Ok(Ok((_bootstrap, None))) => Err(io::Error::other(
            "the child sent no channels through the one-shot server",
        )),
        Ok(Err(error)) => Err(from_ipc_error(error)),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the child did not connect to the one-shot server within {timeout:?}"),
        )),
    }
}

pub(crate) fn connect_child(args: &[String]) -> io::Result<Box<dyn Channel>> {
    let [name] = args else {
        return Err(bad_args("expected: <one-shot server name>"));
    };
    let (to_child, from_parent) = ipc::bytes_channel()?;
    let (to_parent, from_child) = ipc::bytes_channel()?;
    let bootstrap = IpcSender::<Hello>::connect(name.clone())?;
    bootstrap
        .send(Some((to_child, from_child)))
        .map_err(from_ipc_error)?;
    Ok(Box::new(IpcBytesChannel {
        sender: to_parent,
        receiver: from_parent,
    }))
}

impl Channel for IpcBytesChannel {
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        self.sender.send(message)
    }

    fn recv(
        &mut self,
        buffer: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> io::Result<Option<usize>> {
        let Some(timeout) = timeout else {
            let message = self.receiver.recv().map_err(from_ipc_error)?;
            return Ok(Some(take(message, buffer)));
        };
        let deadline = Instant::now() + timeout;
        let mut pause = FIRST_PAUSE;
        loop {
            match self.receiver.try_recv() {
                Ok(message) => return Ok(Some(take(message, buffer))),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::IpcError(error)) => return Err(from_ipc_error(error)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }
}

/// Moves `message` into `buffer`, and returns its length.
fn take(message: Vec<u8>, buffer: &mut Vec<u8>) -> usize {
    *buffer = message;
    buffer.len()
}

fn from_ipc_error(error: IpcError) -> io::Error {
    match error {
        IpcError::Disconnected => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other process has closed its ipc-channel sender",
        ),
        IpcError::Io(error) => error,
        IpcError::SerializationError(error) => {
            io::Error::new(io::ErrorKind::InvalidData, error.to_string())
        }
    }
}
