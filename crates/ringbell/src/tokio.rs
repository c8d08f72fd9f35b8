//! The async API, for programs built on tokio (cargo feature `tokio`, on by default).
//!
//! [`AsyncConnection`] is a [`Connection`] whose waits are tokio futures: it spins for the
//! connection's spin budget like the blocking API, then, instead of sleeping on a futex,
//! announces that it waits in an event loop and awaits its doorbell fd (and its control
//! socket, which reports the peer's death) through [`AsyncFd`]. No thread blocks per
//! connection, and an idle connection costs nothing until the peer rings.
//!
//! [`AsyncServer`] accepts connections without blocking the runtime: each handshake is a
//! task that waits on its client's socket, all of them at once, so a client that stalls
//! its handshake delays nobody else. [`AsyncServer::serve`] runs a handler for every
//! request of every client from one *sweeper* task, which sweeps all the rings while any
//! has work and sleeps on one epoll set when none has (see `tokio_serve.rs`).

#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::time::Instant;

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::Interest;
use ::tokio::task::JoinSet;

use crate::config::{ClientConfig, ServerConfig, WaitStrategy};

#[path = "tokio_rpc.rs"]
mod rpc;
#[path = "tokio_serve.rs"]
mod serve;
use crate::conn::{Connection, Pushed, SendProgress};
use crate::error::Error;
use crate::handshake::{ServerHandshake, Step};
use crate::server::Server;
use crate::sys::{Poller, Stirred};
pub use rpc::{Client, ClientGroup, DEFAULT_MAX_IN_FLIGHT};

/// Checks between two yields to the runtime while spinning.
const SPINS_PER_YIELD: u32 = 64;

/// An fd owned by something else (the [`Connection`] or the [`Server`]), registered with
/// tokio. Every `AsyncFd<FdRef>` is declared before its owner in the structs below, so it
/// is deregistered before the fd is closed.
#[derive(Debug)]
struct FdRef(RawFd);

impl AsRawFd for FdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Registers `fd` with the current tokio runtime for readability.
///
/// # Safety
///
/// `fd` must stay open, referring to the same file, until the returned `AsyncFd` is
/// dropped. The structs here guarantee it by declaring each `AsyncFd` field before the
/// field that owns its fd (fields drop in declaration order) and never replacing the owner.
unsafe fn register(fd: RawFd) -> Result<AsyncFd<FdRef>, Error> {
    // SAFETY: forwarded from this function's contract.
    unsafe { AsyncFd::register_with_interest(FdRef(fd), Interest::READABLE) }
        .map_err(|error| Error::io("registering an fd with the tokio runtime", error.into()))
}

/// A message connection whose waits are tokio futures. See the [module docs](self).
///
/// Made by [`AsyncConnection::connect`] or [`AsyncServer::accept`]. Both must be called
/// from within a tokio runtime with IO enabled.
///
/// # Cancellation
///
/// [`recv`](Self::recv) is cancellation-safe: if its future is dropped before it completes,
/// no message is lost, and a message that had arrived in part is completed by the next
/// `recv`. Dropping a [`send`](Self::send) future before it completes sends nothing of a
/// message that fits one frame, and withdraws a larger message that was partly sent (the
/// receiver discards the part), so the peer never sees half a message. Hence
/// `tokio::time::timeout` works on both.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), ringbell::Error> {
/// use ringbell::tokio::AsyncConnection;
/// use ringbell::ClientConfig;
///
/// let mut conn = AsyncConnection::connect("/tmp/app.sock", ClientConfig::default()).await?;
/// conn.send(b"ping").await?;
/// let mut reply = Vec::new();
/// conn.recv(&mut reply).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncConnection {
    doorbell: AsyncFd<FdRef>,
    control: AsyncFd<FdRef>,
    inner: Connection,
}

impl AsyncConnection {
    /// Connects to the server at `path`. The handshake runs on tokio's blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect`].
    pub async fn connect(path: impl AsRef<Path>, config: ClientConfig) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let connection = ::tokio::task::spawn_blocking(move || Connection::connect(path, config))
            .await
            .map_err(|error| Error::io("running the handshake", std::io::Error::other(error)))??;
        Self::from_connection(connection)
    }

    /// Wraps a connection made with the blocking API. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the connection's fds cannot be registered with the runtime.
    pub fn from_connection(connection: Connection) -> Result<Self, Error> {
        // SAFETY: both fds are owned by `connection`, which becomes the `inner` field,
        // declared after `doorbell` and `control`, so it closes them only after both
        // registrations are gone; a `Connection` never replaces its fds.
        let (doorbell, control) = unsafe {
            (
                register(connection.doorbell_fd().as_raw_fd())?,
                register(connection.control_fd().as_raw_fd())?,
            )
        };
        Ok(AsyncConnection {
            doorbell,
            control,
            inner: connection,
        })
    }

    /// Sends one message, waiting while the ring is full. See the cancellation notes above.
    ///
    /// # Errors
    ///
    /// As [`Connection::send`], except that there is no send timeout: wrap the future in
    /// `tokio::time::timeout` instead.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.send_with_correlation(msg, 0).await
    }

    pub(crate) async fn send_with_correlation(
        &mut self,
        msg: &[u8],
        correlation: u64,
    ) -> Result<(), Error> {
        self.inner.check_sendable(msg)?;
        let mut attempt = SendAttempt {
            connection: &mut self.inner,
            sent: SendProgress::default(),
            finished: false,
        };
        loop {
            let payload = match attempt
                .connection
                .push_some(msg, correlation, &mut attempt.sent)
            {
                Ok(Pushed::Done) => {
                    attempt.finished = true;
                    return Ok(());
                }
                Ok(Pushed::Full { payload }) => payload,
                Err(error) => return Err(attempt.connection.fail(error)),
            };
            let connection = &mut *attempt.connection;
            let strategy = connection.wait_strategy();
            if spin(strategy, || connection.has_room(payload)).await? {
                continue;
            }
            if !attempt.connection.arm_send_doorbell(payload)? {
                continue;
            }
            wait_for_ring(&self.doorbell, &self.control).await?;
            attempt.connection.settle_doorbell(true);
            attempt.connection.ensure_peer_alive()?;
        }
    }

    /// Receives the next message into `buf` (replacing its contents) and returns its length.
    /// Cancellation-safe.
    ///
    /// # Errors
    ///
    /// As [`Connection::recv`], without `Timeout`: wrap the future in
    /// `tokio::time::timeout` for a deadline.
    pub async fn recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, Error> {
        loop {
            if let Some(len) = self.inner.try_recv(buf)? {
                return Ok(len);
            }
            let inner = &mut self.inner;
            let strategy = inner.wait_strategy();
            if spin(strategy, || inner.has_data()).await? {
                continue;
            }
            if !self.inner.arm_doorbell()? {
                continue;
            }
            wait_for_ring(&self.doorbell, &self.control).await?;
            // `try_recv` above resets the doorbell and checks the peer when the ring is empty.
        }
    }

    /// The blocking connection inside, for its accessors (`max_message_size`, ...).
    pub fn get_ref(&self) -> &Connection {
        &self.inner
    }

    /// The blocking connection inside, no longer registered with the runtime.
    pub fn into_inner(self) -> Connection {
        let AsyncConnection {
            doorbell,
            control,
            inner,
        } = self;
        // Deregistered before `inner` could close the fds.
        drop((doorbell, control));
        inner
    }
}

/// A send in progress: if its future is dropped before the message is complete, the part
/// already in the ring is withdrawn.
struct SendAttempt<'a> {
    connection: &'a mut Connection,
    sent: SendProgress,
    finished: bool,
}

impl Drop for SendAttempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.connection.abandon_send(&self.sent);
        }
    }
}

/// Spins under `strategy` until `ready()`; returns whether it became ready. `Spin` spins
/// until it does, yielding to the runtime now and then; `Adaptive` for its budget; `Block`
/// not at all.
async fn spin(
    strategy: WaitStrategy,
    mut ready: impl FnMut() -> Result<bool, Error>,
) -> Result<bool, Error> {
    let budget = match strategy {
        WaitStrategy::Spin => None,
        WaitStrategy::Adaptive { spin } => Some(spin),
        WaitStrategy::Block => return Ok(false),
    };
    let until = budget.map(|budget| Instant::now() + budget);
    loop {
        for _ in 0..SPINS_PER_YIELD {
            if ready()? {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        if until.is_some_and(|until| Instant::now() >= until) {
            return Ok(false);
        }
        if budget.is_none() {
            ::tokio::task::yield_now().await;
        }
    }
}

/// A [`Poller`] that the runtime watches: what a server's sweeper and a client group's
/// driver sleep on, for all their connections at once.
#[derive(Debug)]
struct WatchedPoller {
    /// Readiness of `poller` through the runtime. Declared before `poller`, which owns
    /// its fd, so that the registration is dropped first.
    readiness: AsyncFd<FdRef>,
    poller: Poller,
    /// The events of the last [`take`](Self::take), kept to reuse the allocation.
    events: Vec<Stirred>,
}

impl WatchedPoller {
    /// An empty poller, registered with the current runtime.
    fn new() -> Result<WatchedPoller, Error> {
        let poller = Poller::new().map_err(|error| Error::io("creating an epoll set", error))?;
        // SAFETY: `poller` owns the fd and is declared after `readiness`, so the
        // registration is dropped first; the poller is never replaced.
        let readiness = unsafe { register(poller.as_fd().as_raw_fd())? };
        Ok(WatchedPoller {
            readiness,
            poller,
            events: Vec::new(),
        })
    }

    fn add(&self, fd: BorrowedFd<'_>, key: u64) -> std::io::Result<()> {
        self.poller.add(fd, key)
    }

    fn remove(&self, fd: BorrowedFd<'_>) {
        self.poller.remove(fd);
    }

    /// Waits until a watched fd has stirred; [`take`](Self::take) then says which.
    async fn stirred(&self) -> std::io::Result<()> {
        self.readiness.readable().await?.clear_ready();
        Ok(())
    }

    /// Every event since the last call, without waiting. Hand the vector back with
    /// [`give_back`](Self::give_back) to reuse it.
    fn take(&mut self) -> Vec<Stirred> {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        if let Err(error) = self.poller.drain(|event| events.push(event)) {
            tracing::warn!("ringbell: reading an epoll set: {error}");
        }
        events
    }

    fn give_back(&mut self, events: Vec<Stirred>) {
        self.events = events;
    }
}

/// Announces on `connection` that its driver is going to sleep: for the next message if
/// it is `receiving`, for room if a frame of `blocked` bytes waits for it. Returns `false`
/// if that has come already: look again, do not sleep.
fn arm(
    connection: &mut Connection,
    receiving: bool,
    blocked: Option<usize>,
) -> Result<bool, Error> {
    if receiving && !connection.arm_doorbell()? {
        return Ok(false);
    }
    if let Some(payload) = blocked {
        if !connection.arm_send_doorbell(payload)? {
            // Room, or the peer has gone, and then nothing will ever make room: find out
            // which (one syscall, and only here).
            connection.ensure_peer_alive()?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// Which fd ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rung {
    /// The doorbell: the peer published, or made room.
    Doorbell,
    /// The control socket: usually the peer's death.
    Control,
}

/// Waits until the doorbell rings or the control socket reports something (the peer's
/// death, usually), then clears the readiness that fired.
async fn wait_for_ring(doorbell: &AsyncFd<FdRef>, control: &AsyncFd<FdRef>) -> Result<Rung, Error> {
    let io = |error| Error::io("waiting for the doorbell", error);
    Ok(::tokio::select! {
        guard = doorbell.readable() => {
            let mut guard = guard.map_err(io)?;
            // The peer's end of the doorbell closed: the peer is gone. (tokio never clears
            // this readiness, so treating it as a ring would loop for ever.)
            let peer_gone = guard.ready().is_read_closed();
            guard.clear_ready();
            if peer_gone { Rung::Control } else { Rung::Doorbell }
        }
        guard = control.readable() => {
            guard.map_err(io)?.clear_ready();
            Rung::Control
        }
    })
}

/// A server for tokio programs. See the [module docs](self).
///
/// ```no_run
/// # async fn run() -> Result<(), ringbell::Error> {
/// use ringbell::tokio::AsyncServer;
/// use ringbell::ServerConfig;
///
/// let mut server = AsyncServer::bind("/tmp/app.sock", ServerConfig::default())?;
/// loop {
///     match server.accept().await {
///         Ok(mut conn) => {
///             tokio::spawn(async move {
///                 let mut buf = Vec::new();
///                 while conn.recv(&mut buf).await.is_ok() {
///                     if conn.send(&buf).await.is_err() {
///                         break;
///                     }
///                 }
///             });
///         }
///         Err(error) => eprintln!("refused a client: {error}"),
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncServer {
    listener: AsyncFd<FdRef>,
    handshakes: JoinSet<Result<Option<Connection>, Error>>,
    /// The server's configuration, shared with the handshake tasks.
    config: std::sync::Arc<ServerConfig>,
    server: Server,
}

/// Carries one handshake to its end, waiting for the client's bytes through the runtime.
/// `Ok(None)` for a probe that hung up without a byte.
async fn drive_handshake(
    mut handshake: ServerHandshake,
    config: std::sync::Arc<ServerConfig>,
    own_uid: u32,
) -> Result<Option<Connection>, Error> {
    loop {
        let waiting = match handshake.advance(&config, own_uid)? {
            Step::Waiting(waiting) => waiting,
            Step::Probe => return Ok(None),
            Step::Done(connection) => return Ok(Some(*connection)),
        };
        let deadline = ::tokio::time::Instant::from_std(waiting.deadline());
        {
            // Registered for this wait only: the connection re-registers its fds later.
            // SAFETY: `waiting` owns the fd and outlives `socket`, which is dropped at the
            // end of this block, before `waiting` is moved or dropped.
            let socket = unsafe { register(waiting.as_raw_fd())? };
            match ::tokio::time::timeout_at(deadline, socket.readable()).await {
                Err(_elapsed) => return Err(waiting.timed_out()),
                Ok(guard) => drop(guard.map_err(|error| Error::io("waiting for a client", error))?),
            }
        }
        handshake = waiting;
    }
}

impl AsyncServer {
    /// Binds `path`, as [`Server::bind`]. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`Server::bind`], and [`Error::Io`] if the socket cannot be registered with the
    /// runtime.
    pub fn bind(path: impl AsRef<Path>, config: ServerConfig) -> Result<Self, Error> {
        let server = Server::bind(path, config)?;
        // SAFETY: the listening fd is owned by `server`, which becomes the last field, so
        // it is closed only after the registration is gone.
        let listener = unsafe { register(server.listener_fd().as_raw_fd())? };
        Ok(AsyncServer {
            listener,
            handshakes: JoinSet::new(),
            config: std::sync::Arc::new(server.config().clone()),
            server,
        })
    }

    /// Waits for the next client whose handshake succeeds, or fails. Every client that
    /// connects starts its handshake at once, as a task of its own that waits on the
    /// client's socket without blocking a thread; each is bounded by the handshake
    /// timeout, so a client that stalls holds one fd until then and delays nobody. How
    /// many handshakes and connections exist at once is bounded by
    /// [`ServerConfig::max_connections`](crate::ServerConfig::max_connections).
    /// Cancellation-safe: handshakes under way carry on and are returned by a later call.
    ///
    /// # Errors
    ///
    /// As [`Server::accept`]: errors about one client leave the server usable.
    pub async fn accept(&mut self) -> Result<AsyncConnection, Error> {
        AsyncConnection::from_connection(self.accept_connection().await?)
    }

    /// [`accept`](Self::accept), returning the connection before it is registered with
    /// the runtime, for [`serve`](Self::serve)'s sweeper, which watches its fds itself.
    async fn accept_connection(&mut self) -> Result<Connection, Error> {
        loop {
            ::tokio::select! {
                Some(joined) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match joined {
                        Ok(Ok(Some(connection))) => return Ok(connection),
                        Ok(Ok(None)) => continue,
                        Ok(Err(error)) => return Err(error),
                        Err(error) => {
                            return Err(Error::io("running a handshake", std::io::Error::other(error)))
                        }
                    }
                }
                guard = self.listener.readable() => {
                    let mut guard = guard.map_err(|error| Error::io("waiting for clients", error))?;
                    loop {
                        match self.server.start_handshake()? {
                            Some(handshake) => {
                                let config = self.config.clone();
                                let own_uid = self.server.own_uid();
                                self.handshakes.spawn(drive_handshake(handshake, config, own_uid));
                            }
                            None => {
                                guard.clear_ready();
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The socket path the server listens on.
    pub fn path(&self) -> &Path {
        self.server.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_types_are_send() {
        fn is_send<T: Send>() {}
        is_send::<AsyncConnection>();
        is_send::<AsyncServer>();
    }
}
