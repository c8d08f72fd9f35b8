//! [`AsyncServer`]: accepts connections without blocking the runtime, each handshake a
//! task of its own. Its [`serve`](AsyncServer::serve) is in `serve.rs`.

use std::path::Path;

use ::tokio::task::JoinSet;

use super::AsyncConnection;
use crate::config::ServerConfig;
use crate::conn::Connection;
use crate::error::Error;
use crate::handshake::{Carries, ServerHandshake, Step};
use crate::server::Server;
use crate::sys::User;

/// A server for tokio programs. See the [module docs](crate::tokio).
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
    handshakes: JoinSet<Result<Option<Connection>, Error>>,
    /// The server's configuration, shared with the handshake tasks.
    config: std::sync::Arc<ServerConfig>,
    /// Clients may still wait in the listener's queue: the last round of accepts ended on
    /// an error (a client refused at the limit, or out of fds) before it found the queue
    /// empty. The listener's readiness is edge-triggered and already cleared, so the next
    /// call accepts again before it waits, or those clients would wait for a new one.
    backlog: bool,
    /// What the connections it makes carry: plain messages, until [`serve`](Self::serve)
    /// turns it into a server of calls ([`carry_calls`](Self::carry_calls)).
    carries: Carries,
    /// Its listener registered with the runtime.
    pub(super) server: Server,
}

/// Carries one handshake to its end, waiting for the client's bytes through the runtime.
/// `Ok(None)` for a probe that hung up without a byte.
async fn drive_handshake(
    mut handshake: ServerHandshake,
    config: std::sync::Arc<ServerConfig>,
    own_user: User,
    carries: Carries,
) -> Result<Option<Connection>, Error> {
    handshake
        .register_with_runtime()
        .map_err(|error| Error::io("registering a client with the tokio runtime", error))?;
    loop {
        let waiting = match handshake.advance(&config, own_user, carries)? {
            Step::Waiting(waiting) => waiting,
            Step::Probe => return Ok(None),
            // The connection's control channel is no longer registered: whoever drives
            // the connection registers what it waits on.
            Step::Done(connection) => return Ok(Some(*connection)),
        };
        let deadline = ::tokio::time::Instant::from_std(waiting.deadline());
        match ::tokio::time::timeout_at(deadline, waiting.control().stirred()).await {
            Err(_elapsed) => return Err(waiting.timed_out()),
            Ok(stirred) => stirred.map_err(|error| Error::io("waiting for a client", error))?,
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
        let mut server = Server::bind(path, config)?;
        server
            .listener_mut()
            .register()
            .map_err(|error| Error::io("registering the listener with the tokio runtime", error))?;
        Ok(AsyncServer {
            handshakes: JoinSet::new(),
            backlog: false,
            carries: Carries::Messages,
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
    /// The connection carries plain messages: a client that makes calls (a
    /// [`Client`](super::Client)) is refused at its handshake, with an error on both sides
    /// that says to use [`serve`](Self::serve) for calls.
    ///
    /// # Errors
    ///
    /// As [`Server::accept`]: errors about one client leave the server usable.
    pub async fn accept(&mut self) -> Result<AsyncConnection, Error> {
        AsyncConnection::from_connection(self.accept_connection().await?)
    }

    /// [`accept`](Self::accept), returning the connection before it is registered with
    /// the runtime, for [`serve`](Self::serve)'s sweeper, which watches its fds itself.
    pub(super) async fn accept_connection(&mut self) -> Result<Connection, Error> {
        if std::mem::take(&mut self.backlog) {
            self.take_waiting_clients()?;
        }
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
                acceptable = self.server.listener().acceptable() => {
                    acceptable.map_err(|error| Error::io("waiting for clients", error))?;
                    self.take_waiting_clients()?;
                }
            }
        }
    }

    /// From now on, the connections this server makes carry calls. Handshakes that an
    /// earlier, cancelled [`accept`](Self::accept) left under way were for plain messages:
    /// they are dropped, and their clients see the handshake end (as after a restart).
    pub(super) fn carry_calls(&mut self) {
        self.carries = Carries::Calls;
        // Dropping a join set aborts its tasks, and nothing reports them.
        self.handshakes = JoinSet::new();
    }

    /// Starts a handshake task for every client waiting in the listener's queue. The
    /// listener's readiness was cleared before, so this must go on until the queue is
    /// empty: an error about one client ends it early, and leaves [`backlog`] set for the
    /// next call to go on.
    ///
    /// [`backlog`]: Self::backlog
    fn take_waiting_clients(&mut self) -> Result<(), Error> {
        loop {
            match self.server.start_handshake() {
                Ok(Some(handshake)) => {
                    let config = self.config.clone();
                    let own_user = self.server.own_user();
                    self.handshakes.spawn(drive_handshake(
                        handshake,
                        config,
                        own_user,
                        self.carries,
                    ));
                }
                Ok(None) => return Ok(()),
                Err(error) => {
                    self.backlog = true;
                    return Err(error);
                }
            }
        }
    }

    /// The socket path the server listens on.
    pub fn path(&self) -> &Path {
        self.server.path()
    }
}
