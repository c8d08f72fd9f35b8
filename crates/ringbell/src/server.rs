//! [`Server`]: a listening socket that hands out [`Connection`]s.

use std::path::Path;

use crate::config::ServerConfig;
use crate::conn::Connection;
use crate::error::Error;
use crate::handshake;
use crate::ring;
use crate::sys::ControlListener;

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
    own_uid: u32,
}

impl Server {
    /// Binds `path` and starts listening.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if the ring capacity is not a power of two between 256 B
    /// and 1 GiB or the maximum message size is 0; [`Error::AddressInUse`] if a live
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
        // Each connection holds three fds here; the usual soft limit of 1,024 would stop a
        // server near 300 clients, long before the hard limit does.
        crate::sys::raise_open_files_limit();
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
        Ok(Server {
            listener,
            config,
            own_uid: handshake::own_uid(),
        })
    }

    /// Waits for the next client and completes its handshake.
    ///
    /// A connection closed before sending anything (such as another server's check for
    /// a live socket, see [`bind`](Self::bind)) is passed over silently.
    ///
    /// Handshakes run one at a time, each bounded by
    /// [`ServerConfig::handshake_timeout`]: a client that stalls delays the next one by at
    /// most that long.
    ///
    /// # Errors
    ///
    /// Errors about one client leave the server fully usable; call `accept` again:
    /// [`Error::Handshake`] (garbage, wrong version, hung up or too slow),
    /// [`Error::PermissionDenied`] (uid not admitted; the client is told so), and
    /// [`Error::Io`] while setting up its memory. An [`Error::Io`] from the listening
    /// socket itself (for example, out of file descriptors) is about the server.
    pub fn accept(&self) -> Result<Connection, Error> {
        loop {
            let control = self
                .listener
                .accept()
                .map_err(|error| self.accept_failed(error))?;
            // A connection closed before its first byte is a liveness probe, not a client.
            if let Some(connection) = handshake::serve(control, &self.config, self.own_uid)? {
                return Ok(connection);
            }
        }
    }

    /// Accepts the next waiting connection without waiting and without a handshake, for the
    /// async server: `Ok(None)` if none is waiting. Call [`listen_nonblocking`] first.
    ///
    /// [`listen_nonblocking`]: Self::listen_nonblocking
    #[cfg(feature = "tokio")]
    pub(crate) fn try_accept_stream(&self) -> Result<Option<crate::sys::ControlStream>, Error> {
        match self.listener.accept() {
            Ok(stream) => Ok(Some(stream)),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(self.accept_failed(error)),
        }
    }

    /// Switches the listening socket to non-blocking accepts (see `try_accept_stream`).
    #[cfg(feature = "tokio")]
    pub(crate) fn listen_nonblocking(&self) -> Result<(), Error> {
        self.listener
            .set_nonblocking()
            .map_err(|error| Error::io("making the listening socket non-blocking", error))
    }

    /// The listening socket, for an event loop to poll.
    #[cfg(feature = "tokio")]
    pub(crate) fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }

    /// Runs the handshake on a stream from `try_accept_stream`. Blocking, bounded by the
    /// handshake timeout; `Ok(None)` for a probe that hung up without a byte.
    #[cfg(feature = "tokio")]
    pub(crate) fn handshake(
        config: &ServerConfig,
        own_uid: u32,
        stream: crate::sys::ControlStream,
    ) -> Result<Option<Connection>, Error> {
        handshake::serve(stream, config, own_uid)
    }

    /// This server's uid, admitted by default.
    #[cfg(feature = "tokio")]
    pub(crate) fn own_uid(&self) -> u32 {
        self.own_uid
    }

    /// Serves every client with `handler`, for programs without an async runtime: each
    /// request is passed to it, and what it returns is the reply, matched to the request
    /// by correlation id (a [`tokio::Client`](crate::tokio::Client) calls it like the async
    /// server). Never returns.
    ///
    /// Each connection gets a thread that reads its requests one at a time; the handlers
    /// run on a pool of `min(concurrent_requests, 2 × cores)` worker threads shared by all
    /// connections, so at most that many run at once. A handler that returns an error or
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
            match self.accept() {
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
        if crate::sys::is_out_of_fds(&error) {
            let refused = self
                .listener
                .refuse_one(&handshake::out_of_resources_refusal());
            tracing::warn!(
                path = %self.path().display(),
                refused_a_client = refused,
                "out of file descriptors: refusing new clients, serving the connected ones; \
                 raise RLIMIT_NOFILE to serve more"
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
/// leaves or breaks the protocol.
fn serve_connection(connection: &mut Connection, pool: &WorkerPool) {
    let mut buf = Vec::new();
    let (reply, replies) = std::sync::mpsc::channel();
    while let Ok(request) = connection.recv_tagged(&mut buf, None) {
        let job = Job {
            request: std::mem::take(&mut buf),
            reply: reply.clone(),
        };
        if pool.jobs.send(job).is_err() {
            return;
        }
        let Ok(result) = replies.recv() else { return };
        let message = crate::reply::encode_reply(result);
        if connection
            .send_with_correlation(&message, request.correlation)
            .is_err()
        {
            return;
        }
    }
}
