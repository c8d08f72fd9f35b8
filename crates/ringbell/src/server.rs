//! [`Server`]: a listening socket that hands out [`Connection`]s.

use std::path::Path;
use std::time::Instant;

use crate::config::ServerConfig;
use crate::conn::{Connection, ConnectionSlots};
use crate::core::ring;
use crate::error::Error;
use crate::handshake::{self, Carries, ServerHandshake, Step};
use crate::sys::{self, ControlListener, User};

/// Listens on a Unix socket path and sets up a shared-memory [`Connection`] for each client.
///
/// The socket file is created owner-only (mode 0600) and removed when the server is
/// dropped. With [`ServerConfig::allow_uid`], it is made connectable by every local user
/// (0666) instead, because a file mode cannot name a list of uids: the server then checks
/// each client's uid (`SO_PEERCRED`) and refuses the others with
/// [`Error::PermissionDenied`]. Binding raises the process's soft limit on open files to its hard limit: a
/// connection holds three fds on the server. When fds still run out, `accept` returns
/// [`Error::Io`] ("Too many open files") and the existing connections carry on. Binding over a socket file left by a dead server replaces it; binding where a
/// live server listens fails with [`Error::AddressInUse`].
///
/// # Examples
///
/// ```no_run
/// use ringbell::{Server, ServerConfig};
///
/// let server = Server::bind("/tmp/app.sock", ServerConfig::default())?;
/// loop {
///     match server.accept() {
///         Ok(mut conn) => {
///             std::thread::spawn(move || {
///                 let mut buf = Vec::new();
///                 while conn.recv(&mut buf, None).is_ok() {
///                     if conn.send(&buf).is_err() {
///                         break;
///                     }
///                 }
///             });
///         }
///         // One client's failed handshake does not affect the server.
///         Err(error) => eprintln!("refused a client: {error}"),
///     }
/// }
/// # Ok::<(), ringbell::Error>(())
/// ```
#[derive(Debug)]
pub struct Server {
    listener: ControlListener,
    config: ServerConfig,
    own_user: User,
    /// Connections and handshakes in progress, against `config.max_connections`.
    slots: ConnectionSlots,
    /// The handshakes the blocking `accept` carries between calls.
    pending: std::sync::Mutex<Vec<ServerHandshake>>,
}

impl Server {
    /// Binds `path` and starts listening.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if the ring capacity is not a power of two between 256 B
    /// and 1 GiB, the maximum message size is 0, or the memory budget is below it;
    /// [`Error::AddressInUse`] if a live
    /// server listens at `path`; [`Error::Io`] if the path cannot be bound (a missing
    /// directory, a path too long for a socket, a non-socket file in the way).
    pub fn bind(path: impl AsRef<Path>, config: ServerConfig) -> Result<Server, Error> {
        let path = path.as_ref();
        if !ring::valid_capacity(config.ring_capacity) {
            return Err(Error::InvalidConfig {
                detail: format!(
                    "ring_capacity must be a power of two from {} B to 1 GiB, not {}",
                    ring::MIN_CAPACITY,
                    config.ring_capacity
                ),
            });
        }
        if config.max_message_size == 0 || config.max_message_size > isize::MAX as usize {
            return Err(Error::InvalidConfig {
                detail: "max_message_size must be at least 1 byte".into(),
            });
        }
        // A call's opening carries its request and, after it, up to REQUEST_ROOM bytes of
        // trailer and metadata: the largest message a server may have to receive.
        let largest = config
            .max_message_size
            .saturating_add(crate::core::call::REQUEST_ROOM);
        if config.effective_memory_budget() < largest {
            return Err(Error::InvalidConfig {
                detail: format!(
                    "memory_budget ({} bytes) must be at least max_message_size ({} bytes) \
                     plus {} bytes for a call's trailer and metadata, or a largest message \
                     could never be received",
                    config.effective_memory_budget(),
                    config.max_message_size,
                    crate::core::call::REQUEST_ROOM
                ),
            });
        }
        // Each connection holds three fds here; the usual soft limit of 1,024 would stop a
        // server near 300 clients, long before the hard limit does.
        sys::raise_resource_limit();
        let listener =
            ControlListener::bind(path, config.admits_other_users()).map_err(|error| {
                if error.kind() == std::io::ErrorKind::AddrInUse {
                    Error::AddressInUse {
                        path: path.to_path_buf(),
                    }
                } else {
                    Error::io(&format!("binding {}", path.display()), error)
                }
            })?;
        // `accept` polls the listener together with the handshakes in progress.
        listener
            .set_nonblocking()
            .map_err(|error| Error::io("making the listening socket non-blocking", error))?;
        Ok(Server {
            listener,
            slots: ConnectionSlots::new(config.max_connections, config.effective_memory_budget()),
            config,
            own_user: sys::current_user(),
            pending: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Waits for the next client to complete its handshake, and returns its connection.
    ///
    /// Every client that connects starts a handshake at once, and all of them progress
    /// together, each bounded by [`ServerConfig::handshake_timeout`]: a client that stalls
    /// holds one fd until its deadline and delays nobody. A connection closed before
    /// sending anything (such as another server's check for a live socket, see
    /// [`bind`](Self::bind)) is passed over silently. Handshakes still in progress when this
    /// returns carry on in the next call. Calls from several threads take turns.
    ///
    /// # Errors
    ///
    /// Errors about one client leave the server fully usable; call `accept` again:
    /// [`Error::Handshake`] (garbage, wrong version, hung up or too slow),
    /// [`Error::PermissionDenied`] (uid not admitted; the client is told so),
    /// [`Error::ServerBusy`] (the client was refused at the connection limit, and told so),
    /// and [`Error::Io`] while setting up its memory. An [`Error::Io`] about the listening
    /// socket itself (for example, out of file descriptors) is about the server.
    ///
    /// The connection carries plain messages: a client that makes calls (a
    /// [`tokio::Client`](crate::tokio::Client)) is refused at its handshake, with an error
    /// on both sides that says to use [`serve`](Self::serve) for calls.
    pub fn accept(&self) -> Result<Connection, Error> {
        self.accept_carrying(Carries::Messages)
    }

    /// [`accept`](Self::accept) for a connection that carries `carries`. Handshakes left
    /// pending by an earlier call go on under this one's `carries`.
    pub(crate) fn accept_carrying(&self, carries: Carries) -> Result<Connection, Error> {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let now = Instant::now();
            if let Some(late) = pending
                .iter()
                .position(|handshake| handshake.deadline() <= now)
            {
                return Err(pending.swap_remove(late).timed_out());
            }
            let first_deadline = pending.iter().map(ServerHandshake::deadline).min();
            let ready = {
                let mut sources: Vec<&dyn sys::Source> = Vec::with_capacity(pending.len() + 1);
                sources.push(&self.listener);
                sources.extend(
                    pending
                        .iter()
                        .map(|handshake| handshake.control() as &dyn sys::Source),
                );
                sys::wait_readable(&sources, first_deadline.map(|deadline| deadline - now))
                    .map_err(|error| Error::io("waiting for clients", error))?
            };
            // Backwards, so that `swap_remove` only moves handshakes already looked at.
            for index in (0..pending.len()).rev() {
                if !ready[index + 1] {
                    continue;
                }
                let handshake = pending.swap_remove(index);
                match handshake.advance(&self.config, self.own_user, carries)? {
                    Step::Waiting(handshake) => pending.push(handshake),
                    Step::Probe => {}
                    // Welcomed by an earlier call that served the other kind: its client
                    // speaks that kind, which this caller would misread. It sees the
                    // connection end, as after any server's restart.
                    Step::Done(connection) if connection.carries() != carries => {
                        tracing::debug!("dropped a connection made for another kind of use");
                    }
                    Step::Done(connection) => return Ok(*connection),
                }
            }
            if ready[0] {
                while let Some(handshake) = self.start_handshake()? {
                    pending.push(handshake);
                }
            }
        }
    }

    /// Takes the next client from the listening socket's queue, without waiting, and
    /// starts its handshake: `Ok(None)` if no client is waiting.
    ///
    /// # Errors
    ///
    /// [`Error::ServerBusy`] if the client was refused at the connection limit (it is told
    /// so); [`Error::Io`] if accepting failed (out of fds: one client is told so).
    pub(crate) fn start_handshake(&self) -> Result<Option<ServerHandshake>, Error> {
        let control = match self.listener.accept() {
            Ok(control) => control,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(error) => return Err(self.accept_failed(error)),
        };
        let Some(slot) = self.slots.try_take() else {
            handshake::refuse_busy(control);
            tracing::debug!(
                limit = self.config.max_connections,
                "at the connection limit: refused a client"
            );
            return Err(Error::ServerBusy {
                detail: format!(
                    "refused a client: {} connections and handshakes are the limit \
                     (ServerConfig::max_connections)",
                    self.config.max_connections
                ),
            });
        };
        Ok(Some(ServerHandshake::start(control, &self.config, slot)))
    }

    /// The listening socket, for an event loop to register and await.
    #[cfg(ringbell_async)]
    pub(crate) fn listener_mut(&mut self) -> &mut ControlListener {
        &mut self.listener
    }

    /// The listening socket.
    #[cfg(ringbell_async)]
    pub(crate) fn listener(&self) -> &ControlListener {
        &self.listener
    }

    /// This server's user, admitted by default.
    #[cfg(ringbell_async)]
    pub(crate) fn own_user(&self) -> User {
        self.own_user
    }

    /// Serves every client with `handler`, for programs without an async runtime: each
    /// request is passed to it, and what it returns is the reply, matched to the request
    /// by correlation id (a [`tokio::Client`](crate::tokio::Client) calls it like the async
    /// server). Never returns.
    ///
    /// Each connection gets a thread that reads its requests one at a time; the handlers
    /// run on a pool of `min(concurrent_requests, 2 × cores)` worker threads shared by all
    /// connections, so at most that many run at once. A response above the connection's
    /// `max_message_size` (the reply's status byte does not count against it) fails its
    /// request with an error reply. A handler that returns an error or
    /// panics becomes an error reply for that request only. A client that fails its
    /// handshake or dies is dropped without affecting the others. For thousands of
    /// clients, prefer [`AsyncServer::serve`](crate::tokio::AsyncServer::serve): it needs no
    /// thread per connection.
    ///
    /// ```no_run
    /// use ringbell::{Server, ServerConfig};
    ///
    /// let server = Server::bind("/tmp/app.sock", ServerConfig::default())?;
    /// server.serve(|request: Vec<u8>| Ok::<_, std::io::Error>(request.to_ascii_uppercase()));
    /// # Ok::<(), ringbell::Error>(())
    /// ```
    pub fn serve<H, E>(&self, handler: H) -> !
    where
        H: Fn(Vec<u8>) -> Result<Vec<u8>, E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
        let workers = self.config.concurrent_requests.min(2 * cores).max(1);
        let pool = WorkerPool::start(workers, handler);
        loop {
            match self.accept_carrying(Carries::Calls) {
                Ok(mut connection) => {
                    let pool = pool.clone();
                    std::thread::spawn(move || serve_connection(&mut connection, &pool));
                }
                // About the listening socket (out of fds, say): pause instead of spinning.
                Err(Error::Io(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
                // About one client only.
                Err(_) => {}
            }
        }
    }

    /// Turns a failed `accept(2)` into an error, after telling one waiting client that we
    /// are out of fds (if that is the reason) rather than leaving it to time out.
    fn accept_failed(&self, error: std::io::Error) -> Error {
        if sys::is_resource_exhaustion(&error) {
            let refused = self
                .listener
                .refuse_one(&handshake::wire::out_of_resources_refusal());
            tracing::warn!(
                path = %self.path().display(),
                refused_a_client = refused,
                "{}: refusing new clients, serving the connected ones; {}",
                sys::OUT_OF_HANDLES,
                sys::RAISE_LIMIT_HINT
            );
        }
        Error::io("accepting a connection", error)
    }

    /// The socket path the server listens on.
    pub fn path(&self) -> &Path {
        self.listener.path()
    }

    /// The configuration the server was bound with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }
}

/// A request for the worker pool, with where to send its reply.
struct Job {
    request: Vec<u8>,
    reply: std::sync::mpsc::Sender<Result<Vec<u8>, String>>,
}

/// Threads that run a handler on requests from every connection.
#[derive(Clone)]
struct WorkerPool {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl WorkerPool {
    fn start<H, E>(workers: usize, handler: H) -> WorkerPool
    where
        H: Fn(Vec<u8>) -> Result<Vec<u8>, E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let handler = std::sync::Arc::new(handler);
        for _ in 0..workers {
            let (queue, handler) = (queue.clone(), handler.clone());
            std::thread::spawn(move || loop {
                // The lock is held only while taking a job, not while running it.
                let job = match queue.lock() {
                    Ok(queue) => queue.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(job.request)));
                let result = match outcome {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err("the handler panicked".to_owned()),
                };
                let _ = job.reply.send(result);
            });
        }
        WorkerPool { jobs }
    }
}

/// One connection's thread: requests in, through the pool, replies out, until the client
/// leaves or breaks the protocol. Calls are taken one at a time, so the client's other
/// messages of a call (credit, cancels, streamed messages) are for calls that have
/// ended: a blocking handler takes no stream and streams nothing. The client's limit of
/// outstanding calls comes from `concurrent_requests` as for the async server; the rest
/// wait in the ring.
fn serve_connection(connection: &mut Connection, pool: &WorkerPool) {
    use crate::core::call::{decode_from_client, encode_reply_within, FromClient};

    let mut buf = Vec::new();
    let (reply, replies) = std::sync::mpsc::channel();
    while let Ok(request) = connection.recv_tagged(&mut buf, None) {
        let open = match decode_from_client(&buf) {
            Ok(FromClient::Open(open)) => open,
            Ok(_) => continue,
            Err(detail) => {
                tracing::debug!(
                    "ringbell: closing a connection that broke the call protocol: {detail}"
                );
                return;
            }
        };
        buf.truncate(open.request_len);
        let job = Job {
            request: std::mem::take(&mut buf),
            reply: reply.clone(),
        };
        if pool.jobs.send(job).is_err() {
            return;
        }
        let Ok(result) = replies.recv() else { return };
        let message = encode_reply_within(result, connection.max_message_size());
        if connection
            .send_with_correlation(&message, request.correlation)
            .is_err()
        {
            return;
        }
    }
}
