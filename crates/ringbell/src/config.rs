//! Connection settings: [`WaitStrategy`], [`ServerConfig`] and [`ClientConfig`].

use std::time::Duration;

/// How a side waits for a message (or for room in a full ring).
///
/// A cross-process wake-up through the kernel costs tens of microseconds on a VM (about
/// 35–40 µs one way on the development machines), while a peer's store to a shared
/// cache line is seen in well under a microsecond. Spinning therefore wins latency when
/// the answer comes soon, and sleeping wins CPU when it does not.
///
/// The server's [`ServerConfig::wait`] applies to its side of every connection, the
/// client's [`ClientConfig::wait`] to its own:
///
/// ```
/// use ringbell::{ClientConfig, ServerConfig, WaitStrategy};
/// use std::time::Duration;
///
/// // A latency-critical client with a core to spare: never sleep.
/// let client = ClientConfig::default().wait(WaitStrategy::Spin);
/// // A server with many mostly idle clients: spin briefly, then sleep.
/// let server = ServerConfig::default().wait(WaitStrategy::Adaptive {
///     spin: Duration::from_micros(20),
/// });
/// # let _ = (client, server);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitStrategy {
    /// Never sleep: poll the ring until the condition holds. The lowest latency, and a
    /// full core burned while waiting. Use it only with a core to spare for each waiter.
    Spin,
    /// Spin for up to `spin`, then sleep on a futex. The default.
    ///
    /// The spin adapts to the peer: each side learns how soon its waits end. While at
    /// least half of its recent waits that spun (about the last 8) ended within `spin`, a
    /// wait spins for the whole of `spin`; otherwise it sleeps at once, but for a probe
    /// that spins again, one wait in 8 to 64, to notice when the peer has become quick
    /// (a wait that slept at once teaches nothing: its time includes the wake-up's own).
    /// So a peer that answers at memory speed is caught before anyone sleeps, and one
    /// that answers every few milliseconds (an editor) costs no spinning on either side.
    /// A spin that has found nothing for a few microseconds also gives the CPU away
    /// (`sched_yield`) on every look, so that a peer waiting for this very core runs.
    ///
    /// While the peer is still taking what this side sent it (a request, the pieces of a
    /// large one), its answer cannot come yet: a receive's spin counts `spin` from the
    /// peer's last such progress, not from the start of the wait, for at most five times
    /// `spin` in all.
    Adaptive {
        /// How long a wait spins before sleeping, from its start or from the peer's last
        /// progress (see above).
        spin: Duration,
    },
    /// Sleep at once (after one look at the ring). Zero CPU while waiting; every wake-up
    /// pays the kernel's cost.
    Block,
}

impl WaitStrategy {
    /// The default spin budget of [`WaitStrategy::Adaptive`]: 50 µs.
    ///
    /// Why: a sleep/wake round costs about 35–40 µs one way here, so spinning about as long
    /// as a wake-up would cost keeps the waiter within 2× of the best choice made with
    /// hindsight (the classic ski-rental bound), while a peer that answers at memory speed
    /// (a request/response partner, an echo server) is caught before we ever sleep. An idle
    /// connection spins for 50 µs once after its last message and then costs no CPU.
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::Adaptive {
            spin: Self::DEFAULT_SPIN,
        }
    }
}

/// What a [`Server`](crate::Server) offers its clients. Built with chained methods:
///
/// ```
/// use ringbell::{ServerConfig, WaitStrategy};
/// let config = ServerConfig::default()
///     .wait(WaitStrategy::Spin)
///     .ring_capacity(1 << 16)
///     .max_message_size(16 << 20);
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub(crate) wait: WaitStrategy,
    pub(crate) ring_capacity: usize,
    pub(crate) max_message_size: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) send_timeout: Option<Duration>,
    pub(crate) allowed_uids: Option<Vec<u32>>,
    /// Users admitted by the OS's own name for them where that is no uid: SIDs on Windows
    /// (`os::windows::ServerConfigExt::allow_sid`). Empty elsewhere.
    #[cfg(not(loom))]
    pub(crate) allowed_users: Vec<crate::sys::User>,
    pub(crate) concurrent_requests: usize,
    pub(crate) max_connections: usize,
    pub(crate) memory_budget: Option<usize>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) stall_timeout: Option<Duration>,
    pub(crate) cancel_grace: Duration,
}

impl ServerConfig {
    /// Default bytes per ring and direction: 128 KiB. A connection's segment is then a
    /// little over 256 KiB, so a thousand clients cost about 256 MiB of shared memory once
    /// their rings have been used all round, while 64 KiB messages still stream through
    /// without waiting on every chunk.
    pub const DEFAULT_RING_CAPACITY: usize = 128 << 10;
    /// Default largest message: 16 MiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
    /// Default bound on the requests of one connection handled at once: 64.
    pub const DEFAULT_CONCURRENT_REQUESTS: usize = 64;
    /// Default bound on connections, handshakes in progress included: 4,096. Each holds
    /// three fds and, once its rings have been used all round, twice the ring capacity of
    /// memory (256 KiB by default), so the default bounds a server at about 1 GiB and
    /// 12,288 fds however many clients come.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
    /// Default time a client has to complete the handshake: 2 s.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default time a client may stop in the middle of a message before it is closed: 60 s.
    ///
    /// Why: an honest sender never pauses inside a message. Its `send` writes chunk after
    /// chunk as room appears, and when it is our side that does not read, its next chunk
    /// waits in the ring, which does not count as a stall. So only a peer that stopped
    /// (hostile, or suspended in a debugger) is cut, while what it holds (a reservation
    /// of the [`memory_budget`](Self::memory_budget) for the whole message) comes back.
    /// Sixty seconds is nginx's `client_body_timeout`, the same rule for HTTP bodies.
    pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default time a cancelled call's handler has to return before its future is
    /// dropped: 1 s.
    ///
    /// Why: a handler that checks [`Call::is_cancelled`](crate::tokio::Call::is_cancelled)
    /// or awaits [`Call::cancelled`](crate::tokio::Call::cancelled), or whose next
    /// [`Call::send`](crate::tokio::Call::send) fails, returns within microseconds, and a
    /// second leaves room for the clean-up it may owe (freeing a GPU slot, writing a log
    /// line). A handler that ignores the cancel entirely is stopped at its next `.await`
    /// after that, so an abandoned generation costs at most a second of work.
    pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(1);
    /// The memory budget's floor when it is derived from the other settings: 64 MiB.
    pub const MIN_DEFAULT_MEMORY_BUDGET: usize = 64 << 20;

    /// How the server's side of each connection waits. For
    /// [`AsyncServer::serve`](crate::tokio::AsyncServer::serve), how long its sweeper keeps
    /// sweeping after it last found work before it sleeps (`Spin`: never sleeps; `Block`:
    /// sleeps at once). While it sweeps, clients send without a syscall.
    pub fn wait(mut self, strategy: WaitStrategy) -> Self {
        self.wait = strategy;
        self
    }

    /// Bytes per ring and direction: a power of two from 256 B to 1 GiB. The server decides
    /// and the client learns it in the handshake.
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes;
        self
    }

    /// The largest message either side may send; this bounds what a receiver will ever
    /// allocate for one message.
    ///
    /// It also bounds the shared memory of large messages. A message larger than one frame
    /// (a quarter of the ring) goes in chunks through the ring from a side whose wait is
    /// [`WaitStrategy::Adaptive`], and through a shared region of its sender's from the
    /// others, made on the connection's first such message and granted to the receiver:
    /// from a [`WaitStrategy::Spin`] side in pieces of at most 128 KiB, each announced as
    /// soon as it is in, through a region of 512 KiB (or less for a small limit); from a
    /// [`WaitStrategy::Block`] side whole (one wake-up a message rather than one per
    /// ring-full), through a region of at least twice the largest message sent so far
    /// (rounded up to a power of two, at least 64 KiB), at most **2 × `max_message_size`,
    /// rounded up to 64 KiB**, which is also the most a receiver maps of its peer's. Each side holds at most one
    /// per direction (its own, and its peer's mapped), so a connection's regions come to
    /// at most 4 × `max_message_size` in all, held only once such messages were sent; a
    /// peer cannot make us map more, whatever it grants. So a server holds at most
    /// [`max_connections`](Self::max_connections) × 4 × `max_message_size` of regions
    /// (address space; the pages the messages touched), outside its
    /// [`memory_budget`](Self::memory_budget), as the rings are: a region lives as long as
    /// its connection, and charged to the budget it would hold it for good. Where the OS
    /// refuses a region (and from a client on Windows, whose grants the server pulls from
    /// its process), messages go in chunks through the ring instead.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// How long a client may take to complete the handshake before `accept` gives up on it.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long the server's `send` may wait for room in a full ring before it returns
    /// [`Error::Timeout`](crate::Error::Timeout). `None` (the default) waits as long as the
    /// peer lives, like a socket.
    pub fn send_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Admits clients running as `uid`, in addition to any admitted before. Until this is
    /// called, only the server's own uid is admitted (root is not special), and the socket
    /// file is owner-only. Once it is, the socket file is mode 0666 and the server admits
    /// or refuses each client by its kernel-reported uid (`SO_PEERCRED`), so other users'
    /// clients get [`Error::PermissionDenied`](crate::Error::PermissionDenied) from the
    /// server rather than from the file system.
    ///
    /// # Platform-specific behaviour
    ///
    /// A Unix setting: users are uids on every Unix (the peer's comes from `SO_PEERCRED`
    /// on Linux). Windows names users by SID, and uids given here admit nobody there: use
    /// `ringbell::os::windows::ServerConfigExt::allow_sid`, which admits a user by SID
    /// and opens the pipe to other users in the same way.
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.allowed_uids.get_or_insert_with(Vec::new).push(uid);
        self
    }

    /// How many calls of one connection `AsyncServer::serve` and `serve_calls` have under
    /// way at once (default 64): handlers running (streams included), plus replies
    /// waiting for room in the connection's ring. The server tells each client this bound
    /// in the handshake, and a [`tokio::Client`](crate::tokio::Client) keeps no more
    /// calls outstanding than it (callers past it wait in the client), so that the server
    /// always reads the client's ring: a stream waiting for the client's credit is never
    /// stuck behind a request the server will not take. A client that sends more anyway
    /// (hostile, or written by hand) feels backpressure: past the bound the server stops
    /// reading its ring, the ring fills, and its sends wait; no task piles up.
    pub fn concurrent_requests(mut self, requests: usize) -> Self {
        self.concurrent_requests = requests.max(1);
        self
    }

    /// The most connections the server holds at once, counting handshakes in progress
    /// (default [`DEFAULT_MAX_CONNECTIONS`](Self::DEFAULT_MAX_CONNECTIONS)). A client past
    /// it is refused at once: its `connect` returns
    /// [`Error::ServerBusy`](crate::Error::ServerBusy), and the server's `accept` returns
    /// the same error about it. Counting handshakes bounds what a flood of clients that
    /// connect and never complete the handshake can hold; each of those is dropped at its
    /// [`handshake_timeout`](Self::handshake_timeout).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// The most bytes the server holds at once, across all its connections, for messages
    /// in transit. Default: 16 × [`max_message_size`](Self::max_message_size), and at
    /// least [`MIN_DEFAULT_MEMORY_BUDGET`](Self::MIN_DEFAULT_MEMORY_BUDGET) (256 MiB with
    /// the default 16 MiB messages). It must be at least `max_message_size` plus 4,112
    /// bytes (what a call's opening carries after its request: its trailer and up to 4 KiB
    /// of metadata), or a largest message could never be received:
    /// [`Server::bind`](crate::Server::bind) refuses a smaller one.
    ///
    /// What counts:
    ///
    /// - a message larger than one frame (a quarter of the ring) being received: its
    ///   announced length, reserved when its first chunk is taken, and given back when
    ///   the message is delivered, withdrawn, or its connection closes. Only the count is
    ///   reserved: memory is allocated as the bytes arrive;
    /// - in [`AsyncServer::serve`](crate::tokio::AsyncServer::serve), each call under way:
    ///   its request while its handler runs, and its reply until the reply is in the ring.
    ///
    /// A connection whose next message does not fit waits: its chunks stay in its ring,
    /// and its sender waits for room as it would for a slow reader. Nothing is lost and
    /// nobody errs; the message goes on when other messages have been delivered.
    /// Likewise, while the budget is spent, `serve` takes no more requests from a client
    /// that already has calls under way (a client with none still gets one, so that
    /// every client makes progress); it reads on past their openings, which wait in order,
    /// so that the credit of the calls under way still arrives.
    ///
    /// Backpressure rather than a refusal, because a plain connection has no reply to
    /// carry a refusal in: the receiver would have to drop a message its sender believes
    /// sent. A peer that holds a reservation and stalls is closed at the
    /// [`stall_timeout`](Self::stall_timeout).
    ///
    /// - a large message received through its sender's region: its length, reserved like a
    ///   chunked one's, for as long as it is copied out.
    ///
    /// Not counted: messages of one frame (the ring bounds them), what your own code
    /// holds after `recv` returns, the shared rings (bounded by
    /// [`max_connections`](Self::max_connections) × 2 × [`ring_capacity`](Self::ring_capacity)),
    /// and the large-message regions, the server's own and those of its clients that it
    /// maps (at most one each per connection, of at most 2 × `max_message_size`: see
    /// [`max_message_size`](Self::max_message_size)).
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// The memory budget in force: the one set, or the default derived from
    /// `max_message_size`.
    pub(crate) fn effective_memory_budget(&self) -> usize {
        self.memory_budget.unwrap_or_else(|| {
            self.max_message_size
                .saturating_mul(16)
                .max(Self::MIN_DEFAULT_MEMORY_BUDGET)
        })
    }

    /// Closes a connection that has moved no frame in either direction for `timeout`,
    /// with nothing under way: no call of it being handled, no frame of it waiting in its
    /// ring for us to read. Default: `None`, never, for every kind of server.
    ///
    /// On our side, a blocking or async `recv` waiting on such a connection returns
    /// [`Error::Idle`](crate::Error::Idle), and the connection is closed: the peer's next
    /// call returns [`Error::PeerDied`](crate::Error::PeerDied).
    /// [`AsyncServer::serve`](crate::tokio::AsyncServer::serve) drops it and logs why.
    /// The timeout is a timer, not a poll: an idle server still uses no CPU.
    ///
    /// Why it is off by default, even for `serve`: users keep connections idle for hours
    /// (an editor and its back-end between two keystrokes), and a
    /// [`Client`](crate::tokio::Client) does not reconnect by itself, so closing an idle
    /// one would turn its next call into an error. What an idle connection holds is
    /// bounded anyway: a place under `max_connections`, its three fds and its rings. Set
    /// it when your clients reconnect, or to reclaim those from peers that stopped
    /// answering: for instance a hostile peer that erased its own waiter word, after which
    /// both sides wait on each other for ever.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Closes a connection whose client stops for `timeout` in the middle of a message
    /// (a chunked message begun, and nothing more of it in the ring). Default
    /// [`DEFAULT_STALL_TIMEOUT`](Self::DEFAULT_STALL_TIMEOUT) (60 s); `None` turns it off,
    /// which lets a stalled client hold its message's reservation of the
    /// [`memory_budget`](Self::memory_budget) until it dies.
    ///
    /// Our side's `recv` then returns [`Error::Idle`](crate::Error::Idle) (with
    /// `mid_message` set), the part received is dropped, and the connection is closed.
    pub fn stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// How long the handler of a cancelled call has to return, in
    /// [`AsyncServer::serve_calls`](crate::tokio::AsyncServer::serve_calls) and `serve`
    /// (default [`DEFAULT_CANCEL_GRACE`](Self::DEFAULT_CANCEL_GRACE)). A call is
    /// cancelled when its client drops it, when its deadline passes, or when its
    /// connection ends; its handler sees it at once ([`Call::cancelled`], a failed
    /// [`Call::send`]), nothing more of the call is sent, and a handler still running
    /// after this grace has its future dropped. `Duration::ZERO` drops it at once.
    ///
    /// [`Call::cancelled`]: crate::tokio::Call::cancelled
    /// [`Call::send`]: crate::tokio::Call::send
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Whether users other than the server's own may be admitted (by uid, or by the OS's
    /// own name for them), so that the socket file or pipe must let other users connect.
    #[cfg(not(loom))]
    pub(crate) fn admits_other_users(&self) -> bool {
        self.allowed_uids
            .as_ref()
            .is_some_and(|uids| !uids.is_empty())
            || !self.allowed_users.is_empty()
    }

    /// Whether a client running as `user` may connect to a server running as `own`.
    #[cfg(not(loom))]
    pub(crate) fn admits(&self, user: crate::sys::User, own: crate::sys::User) -> bool {
        user == own
            || self.allowed_users.contains(&user)
            || user.uid().is_some_and(|uid| {
                self.allowed_uids
                    .as_ref()
                    .is_some_and(|uids| uids.contains(&uid))
            })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            wait: WaitStrategy::default(),
            ring_capacity: Self::DEFAULT_RING_CAPACITY,
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            send_timeout: None,
            allowed_uids: None,
            #[cfg(not(loom))]
            allowed_users: Vec::new(),
            concurrent_requests: Self::DEFAULT_CONCURRENT_REQUESTS,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            memory_budget: None,
            idle_timeout: None,
            stall_timeout: Some(Self::DEFAULT_STALL_TIMEOUT),
            cancel_grace: Self::DEFAULT_CANCEL_GRACE,
        }
    }
}

/// How a client connects and waits. Built with chained methods:
///
/// ```
/// use ringbell::{ClientConfig, WaitStrategy};
/// use std::time::Duration;
/// let config = ClientConfig::default()
///     .wait(WaitStrategy::Block)
///     .connect_timeout(Duration::from_secs(1));
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub(crate) wait: WaitStrategy,
    pub(crate) connect_timeout: Duration,
    pub(crate) send_timeout: Option<Duration>,
    pub(crate) trusted_server_uids: Vec<u32>,
    /// Servers trusted by the OS's own name for their user where that is no uid: SIDs on
    /// Windows (`os::windows::ClientConfigExt::trust_server_sid`). Empty elsewhere.
    #[cfg(not(loom))]
    pub(crate) trusted_server_users: Vec<crate::sys::User>,
    pub(crate) idle_timeout: Option<Duration>,
}

impl ClientConfig {
    /// Default time allowed for connecting and the handshake: 5 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

    /// How the client's side waits.
    pub fn wait(mut self, strategy: WaitStrategy) -> Self {
        self.wait = strategy;
        self
    }

    /// How long `connect` may take, handshake included.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long `send` may wait for room in a full ring. `None` (the default) waits as long
    /// as the peer lives.
    pub fn send_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Closes the connection when it has moved no frame in either direction for
    /// `timeout`, with no frame waiting in its ring for us to read: the twin of
    /// [`ServerConfig::idle_timeout`]. A `recv` waiting then returns
    /// [`Error::Idle`](crate::Error::Idle). Default `None`, never. The calls of a
    /// [`Client`](crate::tokio::Client) are not covered: give each call its own timeout
    /// ([`Client::call_timeout`](crate::tokio::Client::call_timeout)).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Trusts a server running as `uid`, in addition to those trusted before. By default a
    /// client talks only to a server of its own uid or root's: anyone who can write to the
    /// socket's directory could have bound the path first, and a client would otherwise
    /// hand its messages to that impostor. The server's uid is the kernel's
    /// (`SO_PEERCRED`); an untrusted server gives
    /// [`Error::PermissionDenied`](crate::Error::PermissionDenied) before a byte is sent.
    ///
    /// # Platform-specific behaviour
    ///
    /// A Unix setting, like [`ServerConfig::allow_uid`]: uids given here trust nobody on
    /// Windows, where a client trusts a server of its own SID or LocalSystem's (S-1-5-18),
    /// and others by SID with `ringbell::os::windows::ClientConfigExt::trust_server_sid`.
    pub fn trust_server_uid(mut self, uid: u32) -> Self {
        self.trusted_server_uids.push(uid);
        self
    }

    /// Whether a server running as `server` may be talked to by a client running as `own`.
    #[cfg(not(loom))]
    pub(crate) fn trusts_server(&self, server: crate::sys::User, own: crate::sys::User) -> bool {
        server == own
            || server.is_administrator()
            || self.trusted_server_users.contains(&server)
            || server
                .uid()
                .is_some_and(|uid| self.trusted_server_uids.contains(&uid))
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            wait: WaitStrategy::default(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            send_timeout: None,
            trusted_server_uids: Vec::new(),
            #[cfg(not(loom))]
            trusted_server_users: Vec::new(),
            idle_timeout: None,
        }
    }
}
