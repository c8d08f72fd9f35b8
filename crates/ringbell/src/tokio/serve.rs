//! [`AsyncServer::serve_calls`] and [`AsyncServer::serve`]: one *sweeper* task serves
//! every connection.
//!
//! A task per connection, each sleeping on its own doorbell, makes every request cost a
//! doorbell ring, a wake-up and a read, the price of a Unix socket. The sweeper instead
//! holds all the connections and sweeps their rings in turn: it takes each message, starts
//! a handler for each new call, and puts what handlers send in the ring. While any ring
//! has work it does not sleep, so its announcement stays down and clients send without a
//! syscall. Only when a sweep finds nothing for the spin budget of [`ServerConfig::wait`]
//! does it announce that it sleeps, on every connection that is not announced already, and
//! wait on one [`Poller`] that holds every connection's doorbell and control socket, and on
//! the channel its handlers send through. It wakes when any of them stirs, and sweeps
//! again. A connection it has armed and that has not rung is skipped by the sweep, so an
//! idle client costs nothing.
//!
//! Doorbell rings are deferred to the end of each sweep and made once per doorbell: the
//! connections of a [`ClientGroup`](super::ClientGroup) to one server share one, so a sweep
//! that answers a hundred of a client process's calls wakes that process once, not a
//! hundred times.
//!
//! A handler's future is polled once, in the sweep, as it is made. If it finishes then
//! (most unary handlers never wait for anything), its reply goes out at once, with no task
//! spawned; if it waits, it becomes a task of its own, and the sweeper collects its reply
//! when it ends. Panics are caught either way and become an error reply.
//!
//! Streams and cancellation (the call protocol is in `core/call.rs`): what a handler
//! sends ([`Call::send`]) reaches the sweeper through one channel shared by every
//! handler, in order, and the sweeper takes everything in it before it puts a call's final
//! reply in the ring, so a reply never overtakes its call's streamed responses. A client's
//! credit, streamed messages and cancels are taken from its ring like requests. A
//! cancelled call (by its client, its deadline, or its connection's end) has its state
//! flagged at once, which ends its handler's waits; what it had queued is withdrawn and
//! nothing more of it is sent; a handler still running after
//! [`ServerConfig::cancel_grace`] is aborted.
//!
//! Bounds: a connection has at most [`ServerConfig::concurrent_requests`] calls under way
//! (handlers running, plus messages waiting for room in its ring). Past that the sweeper
//! stops reading it, its ring fills, and its client's calls wait. A
//! [`Client`](super::Client) keeps within the bound by itself (the handshake tells it), so
//! that the sweeper always reads its ring, and a stream waiting for the client's credit is
//! never stuck behind a request the sweeper will not take.
//!
//! [`ServerConfig::wait`]: crate::ServerConfig::wait
//! [`ServerConfig::concurrent_requests`]: crate::ServerConfig::concurrent_requests
//! [`ServerConfig::cancel_grace`]: crate::ServerConfig::cancel_grace

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ::tokio::sync::{mpsc, watch};
use ::tokio::task::{AbortHandle, Id as TaskId, JoinError, JoinSet};

use super::call::{Call, CallParts, CallState, Link, Outgoing, OutgoingKind};
use super::client::Outbox;
use super::{arm, AsyncServer, WatchedPoller};
use crate::config::WaitStrategy;
use crate::conn::{Budget, Charge, Connection};
use crate::core::call::{
    decode_from_client, encode_ended, encode_reply_within, FromClient, Open, PACK_LIMIT,
    REQUEST_WINDOW,
};
use crate::core::ring::max_frame_payload;
use crate::core::wait::{SpinLearner, PEER_CHECK_INTERVAL};
use crate::error::Error;
use crate::sys::Stirred;

/// Sweeps between two yields to the runtime while there is work, so that handler tasks
/// and the accepting loop run even while the sweeper never runs out of work.
const SWEEPS_PER_YIELD: u32 = 4;

/// Idle sweeps between two yields to the runtime while spinning (each sweep also gives
/// the CPU to other threads with `sched_yield`).
const SPINS_PER_YIELD: u32 = 256;

/// Sweeps between two looks at the clock for [`PEER_CHECK_INTERVAL`].
const EVENT_CHECK_SWEEPS: u32 = 64;

/// What the handler made of one call: the final response, or the error to reply with.
type Outcome = Result<Vec<u8>, String>;

/// A handler's future, boxed to become a task.
type Handling = Pin<Box<dyn Future<Output = Outcome> + Send>>;

impl AsyncServer {
    /// Serves every client with `handler`, which gets each [`Call`]: its request,
    /// metadata and deadline, and the means to stream responses ([`Call::send`]), to take
    /// the client's streamed messages ([`Call::recv`]), and to learn of its cancellation
    /// ([`Call::cancelled`]). What the handler returns is the final reply: `Ok` the
    /// response, `Err` an [`Error::Handler`] for the client, after any responses it
    /// streamed. Runs until its future is dropped, which closes every connection it serves
    /// (their clients' calls then fail with [`Error::PeerDied`]).
    ///
    /// One sweeper task serves all the connections (see [`serve`](Self::serve) for how
    /// it spins and sleeps, and the bounds). A call is cancelled when its client drops
    /// its future or stream, when its deadline passes, or when its connection ends: the
    /// handler sees it at once, nothing more of the call is sent, and a handler that has
    /// not returned within [`ServerConfig::cancel_grace`] has its future dropped.
    ///
    /// [`ServerConfig::cancel_grace`]: crate::ServerConfig::cancel_grace
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), ringbell::Error> {
    /// use ringbell::tokio::{AsyncServer, Call};
    /// use ringbell::ServerConfig;
    ///
    /// let server = AsyncServer::bind("/tmp/tokens.sock", ServerConfig::default())?;
    /// server
    ///     .serve_calls(|mut call: Call| async move {
    ///         let prompt = call.request().to_vec();
    ///         for word in prompt.split(|&b| b == b' ') {
    ///             if call.is_cancelled() {
    ///                 break; // the client pressed Escape: stop generating
    ///             }
    ///             call.send(word).await?; // waits while the client is behind
    ///         }
    ///         Ok::<_, ringbell::Error>(b"done".to_vec())
    ///     })
    ///     .await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serve_calls<H, F, E>(self, handler: H)
    where
        H: Fn(Call) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.serve_calls_until(handler, std::future::pending(), Duration::MAX)
            .await
    }

    /// Serves every call with a [`tower::Service<Call>`](tower_service::Service) (feature
    /// `tower`), so that tower's layers (timeouts, concurrency limits, tracing, load
    /// shedding) stack in front of the handler. Each call gets a clone of `service`, made
    /// when it arrives, which is then polled ready and called, as tower's contract asks;
    /// its response is the call's reply, and its error (or a readiness error) an error
    /// reply with the error's message.
    ///
    /// A cancelled call drops the service's future after the grace, as for
    /// [`serve_calls`](Self::serve_calls); a layer such as tower's `Timeout` ends it
    /// sooner, with an error reply.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), ringbell::Error> {
    /// use std::time::Duration;
    /// use ringbell::tokio::{AsyncServer, Call};
    /// use ringbell::ServerConfig;
    /// use tower::ServiceBuilder;
    ///
    /// let service = ServiceBuilder::new()
    ///     .concurrency_limit(32)
    ///     .timeout(Duration::from_secs(5))
    ///     .service_fn(|call: Call| async move {
    ///         Ok::<_, tower::BoxError>(call.into_request().to_ascii_uppercase())
    ///     });
    /// let server = AsyncServer::bind("/tmp/app.sock", ServerConfig::default())?;
    /// server.serve_service(service).await;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tower")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub async fn serve_service<S>(self, service: S)
    where
        S: tower_service::Service<Call, Response = Vec<u8>> + Clone + Send + 'static,
        S::Error: std::fmt::Display + Send + 'static,
        S::Future: Send + 'static,
    {
        // The handler is shared by the sweeper and every handler task (`Sync`), which a
        // tower service need not be: each call clones it under a lock, and the clone is
        // the call's own.
        let service = std::sync::Mutex::new(service);
        self.serve_calls(move |call: Call| {
            let mut service = service
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            async move {
                std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(call).await
            }
        })
        .await
    }

    /// [`serve_calls`](Self::serve_calls) with a graceful shutdown, as
    /// [`serve_until`](Self::serve_until) has.
    pub async fn serve_calls_until<H, F, E>(
        mut self,
        handler: H,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) where
        H: Fn(Call) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.carry_calls();
        let config = self.server.config();
        let sweeper = match Sweeper::new(Arc::new(handler), config) {
            Ok(sweeper) => sweeper,
            Err(error) => {
                tracing::error!("ringbell: cannot serve: {error}");
                return;
            }
        };
        let (stop, stopping) = watch::channel(false);
        // A bounded hand-over: if the sweeper falls behind, accepting waits for it.
        let (arrive, arrivals) = mpsc::channel(64);
        // The sweeper belongs to this future: dropping it closes every connection.
        let mut sweeping = JoinSet::new();
        sweeping.spawn(sweeper.run(arrivals, stopping));
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            ::tokio::select! {
                () = &mut shutdown => break,
                accepted = self.accept_connection() => match accepted {
                    Ok(connection) => {
                        if arrive.send(connection).await.is_err() {
                            break;
                        }
                    }
                    Err(Error::Io(_)) => {
                        // About the listening socket (out of fds, say): pause instead of
                        // spinning, and keep serving the connections we have.
                        ::tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    // About one client only.
                    Err(_) => {}
                },
                Some(ended) = sweeping.join_next() => {
                    if let Err(error) = ended {
                        tracing::error!("ringbell: the server's sweeper failed: {error}");
                    }
                    break;
                }
            }
        }
        // Stop accepting: the socket file goes, new clients get "connection refused".
        drop(self);
        drop(arrive);
        let _ = stop.send(true);
        let drained = async { while sweeping.join_next().await.is_some() {} };
        let _ = ::tokio::time::timeout(grace, drained).await;
        // Whatever is left past the grace period is cut off when `sweeping` drops.
    }

    /// Serves every client with `handler`, for unary calls: each request is passed to it,
    /// and what it returns is the reply. Sugar over [`serve_calls`](Self::serve_calls),
    /// whose handlers can also stream, see metadata and deadlines, and learn of
    /// cancellation; a dropped call's handler here is cancelled as there (its future
    /// dropped after [`ServerConfig::cancel_grace`](crate::ServerConfig::cancel_grace)). Runs until its future is dropped, which closes every
    /// connection it serves (their clients' calls then fail with [`Error::PeerDied`]).
    ///
    /// One sweeper task serves all the connections. While any of them has a request, it
    /// sweeps their rings without sleeping, so clients send without a syscall; after the
    /// spin budget of [`ServerConfig::wait`](crate::ServerConfig::wait) with nothing to
    /// do, it sleeps on one poller (an epoll set on Linux) that holds them all. Doorbell
    /// rings are made once per sweep and doorbell, so the connections of one
    /// [`ClientGroup`](super::ClientGroup) to this server cost one wake-up per sweep.
    ///
    /// Each handler's future is first polled within the sweep; one that has to wait
    /// becomes a tokio task of its own. So a handler should not block or compute for long
    /// before its first `.await`: that holds up every connection. Use
    /// `tokio::task::spawn_blocking` for such work.
    ///
    /// Each connection has up to [`ServerConfig::concurrent_requests`] requests under way
    /// at once; past that its requests wait in its ring, and its client feels
    /// backpressure. A response can be as large as the connection's `max_message_size`
    /// (the reply's status byte does not count against it); a larger one fails its call with an
    /// [`Error::Handler`] that says so. A handler that returns an error or panics becomes
    /// an [`Error::Handler`] reply for that request only. A client that fails its
    /// handshake, breaks the protocol or dies is dropped without affecting the others.
    ///
    /// [`ServerConfig::concurrent_requests`]: crate::ServerConfig::concurrent_requests
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), ringbell::Error> {
    /// use ringbell::tokio::AsyncServer;
    /// use ringbell::ServerConfig;
    ///
    /// let server = AsyncServer::bind("/tmp/app.sock", ServerConfig::default())?;
    /// server
    ///     .serve(|request: Vec<u8>| async move {
    ///         Ok::<_, std::io::Error>(request.into_iter().rev().collect())
    ///     })
    ///     .await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serve<H, F, E>(self, handler: H)
    where
        H: Fn(Vec<u8>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.serve_until(handler, std::future::pending(), Duration::MAX)
            .await
    }

    /// [`serve`](Self::serve) with a graceful shutdown: when `shutdown` completes, the
    /// server stops accepting (its socket file is removed), stops reading new requests,
    /// lets the handlers under way finish and sends their replies, for at most `grace`;
    /// then it closes every connection. A client's calls that were not taken up get
    /// [`Error::PeerDied`] as soon as its connection closes, never a hang.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), ringbell::Error> {
    /// use ringbell::tokio::AsyncServer;
    /// use ringbell::ServerConfig;
    /// use std::time::Duration;
    ///
    /// let server = AsyncServer::bind("/tmp/app.sock", ServerConfig::default())?;
    /// let ctrl_c = async { tokio::signal::ctrl_c().await.ok(); };
    /// server
    ///     .serve_until(
    ///         |request: Vec<u8>| async move { Ok::<_, std::io::Error>(request) },
    ///         ctrl_c,
    ///         Duration::from_secs(5),
    ///     )
    ///     .await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serve_until<H, F, E>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) where
        H: Fn(Vec<u8>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.serve_calls_until(
            move |call: Call| handler(call.into_request()),
            shutdown,
            grace,
        )
        .await
    }
}

/// One connection in the sweeper's care.
struct Served {
    connection: Connection,
    /// Tells this connection from an earlier one in the same slot, for handler tasks that
    /// finish after their connection has gone.
    generation: u64,
    /// Messages (replies, streamed responses, credit) waiting for room in the ring.
    outbox: Outbox,
    /// The frame size the outbox waits to fit, if the ring was full at the last flush.
    blocked: Option<usize>,
    /// Its calls whose handlers run, by correlation id.
    calls: HashMap<u64, Live>,
    /// Its control socket reported something (usually the peer's death): the next
    /// receive that finds the ring empty checks the peer with a syscall.
    peer_stirred: bool,
    /// Announced asleep with nothing under way: the sweep skips it until it rings.
    asleep: bool,
    /// The bytes of the requests its handlers hold.
    handling_bytes: usize,
    /// Calls' openings (correlation id, message) that came while the connection could
    /// start no call (`concurrent_requests` under way, or the memory budget spent):
    /// started in order as calls end. Reading goes on past them, so that the credit,
    /// cancels and streamed messages of the calls under way are read, or a connection
    /// whose calls all wait for credit would never get it. An honest client never has
    /// more than `concurrent_requests` parked (it counts its calls as the server does);
    /// at that many, reading stops, so a flood of openings waits in the client's ring.
    parked: VecDeque<(u64, Vec<u8>)>,
    /// What its calls under way hold (requests being handled, messages waiting for
    /// room), charged to the server's memory budget.
    charge: Option<Charge>,
}

/// A call whose handler runs, as the sweeper tracks it.
struct Live {
    state: Arc<CallState>,
    /// Where the client's streamed messages go, on a two-way call until its end.
    inbound: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Messages the client may still stream before we grant more.
    client_credit: u32,
    /// The cost of the streamed responses sent and not yet credited back by the client
    /// (see `core::call::item_cost`): with the credit left, never more than the call's
    /// window.
    unacknowledged: u32,
    deadline: Option<Instant>,
    /// Its task, once it has one (a handler that finished in its first poll never has).
    task: Option<TaskId>,
    request_bytes: usize,
}

impl Served {
    /// Calls under way, as its client counts them: handlers running (cancelled ones
    /// too, until they end) and final replies waiting for room. The client holds a call's
    /// slot until its final reply arrives, so it never opens more than this allows.
    fn under_way(&self) -> usize {
        self.calls.len() + self.outbox.finals()
    }

    /// Whether it may take another request: below the connection's bound and, while the
    /// server's memory budget is spent, only if it has none under way (so that every
    /// client still makes progress, one call at a time).
    fn may_take(&self, limit: usize) -> bool {
        let under_way = self.under_way();
        under_way < limit
            && (under_way == 0
                || !self
                    .connection
                    .budget()
                    .is_some_and(|budget| budget.spent()))
    }

    /// Brings its charge to what its calls under way hold now.
    fn recharge(&mut self) {
        if let Some(charge) = &mut self.charge {
            let parked: usize = self.parked.iter().map(|(_, message)| message.len()).sum();
            charge.resize(self.outbox.bytes() + self.handling_bytes + parked);
        }
    }

    /// Cancels the call `correlation`, if it runs: its handler is told, what it queued
    /// is withdrawn, and nothing more of it is sent. Returns its task, which must end
    /// within the grace.
    fn cancel(&mut self, correlation: u64) -> Option<TaskId> {
        let live = self.calls.get_mut(&correlation)?;
        if live.state.is_cancelled() {
            return None;
        }
        live.state.cancel();
        live.inbound = None;
        self.outbox.withdraw(correlation);
        live.task
    }

    /// Forgets the call `correlation`: its handler has ended.
    fn forget(&mut self, correlation: u64) -> Option<Live> {
        let live = self.calls.remove(&correlation)?;
        self.handling_bytes -= live.request_bytes;
        Some(live)
    }
}

/// A handler task's connection and call.
struct Running {
    slot: usize,
    generation: u64,
    correlation: u64,
    state: Arc<CallState>,
    abort: AbortHandle,
    /// Cancelled: aborted if it has not ended by then.
    abort_at: Option<Instant>,
}

/// The connections of one server and everything under way on them.
struct Sweeper<H> {
    handler: Arc<H>,
    /// Calls of one connection under way at once.
    limit: usize,
    wait: WaitStrategy,
    /// How long the sweeper's idle spells have lasted lately, which sets how long the
    /// next one spins before it sleeps.
    learner: SpinLearner,
    /// How long a cancelled call's handler has to return.
    grace: Duration,
    /// Every connection's doorbell and control socket.
    poller: WatchedPoller,
    /// Connections by slot; a slot's index is its key in the poller (times two, plus one
    /// for the control socket).
    slots: Vec<Option<Served>>,
    free: Vec<usize>,
    generations: u64,
    handlers: JoinSet<Outcome>,
    running: HashMap<TaskId, Running>,
    /// What the handlers send (streamed responses, credit), in order; every [`Call`]
    /// holds a sender.
    from_handlers: mpsc::UnboundedReceiver<Outgoing>,
    to_sweeper: mpsc::UnboundedSender<Outgoing>,
    buf: Vec<u8>,
    /// Doorbell rings owed by this sweep: (doorbell id, slot, generation) of every
    /// connection that owes one. Each doorbell is rung once, through any of its
    /// connections still open.
    rings_due: Vec<(u64, usize, u64)>,
}

/// Poller keys: which of a connection's fds stirred.
fn doorbell_key(slot: usize) -> usize {
    slot << 1
}

fn control_key(slot: usize) -> usize {
    (slot << 1) | 1
}

fn broke_protocol(detail: &'static str) -> Error {
    Error::Corrupted { detail }
}

impl<H, F, E> Sweeper<H>
where
    H: Fn(Call) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    fn new(handler: Arc<H>, config: &crate::ServerConfig) -> Result<Self, Error> {
        let poller = WatchedPoller::new()?;
        let (to_sweeper, from_handlers) = mpsc::unbounded_channel();
        Ok(Sweeper {
            handler,
            limit: config.concurrent_requests,
            wait: config.wait,
            learner: SpinLearner::default(),
            grace: config.cancel_grace,
            poller,
            slots: Vec::new(),
            free: Vec::new(),
            generations: 0,
            handlers: JoinSet::new(),
            running: HashMap::new(),
            from_handlers,
            to_sweeper,
            buf: Vec::new(),
            rings_due: Vec::new(),
        })
    }

    async fn run(
        mut self,
        mut arrivals: mpsc::Receiver<Connection>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut draining = *stopping.borrow();
        let mut accepting = true;
        // Since when nothing has moved, and how long that idle spell may spin (its
        // budget, from `learner`, which learns how long the spell took once work comes).
        let mut idle: Option<(Instant, Option<Duration>)> = None;
        let mut sweeps: u32 = 0;
        let mut events_due = Instant::now() + PEER_CHECK_INTERVAL;
        loop {
            let mut progressed = false;
            // Looked at on every pass, not only when asleep: a sweeper that always has
            // work must still shut down when asked.
            if !draining && *stopping.borrow() {
                draining = true;
            }
            // Likewise the poller, for the control sockets of clients that died
            // without a word: their connections are dropped even while others keep the
            // sweeper busy.
            if sweeps % EVENT_CHECK_SWEEPS == 0 && Instant::now() >= events_due {
                self.take_events();
                // And the timeouts (idle, stall, deadlines, cancel graces), which a busy
                // sweeper would otherwise never look at.
                self.reap();
                events_due = Instant::now() + PEER_CHECK_INTERVAL;
            }
            while accepting {
                match arrivals.try_recv() {
                    Ok(connection) => {
                        self.admit(connection);
                        progressed = true;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => accepting = false,
                }
            }
            progressed |= self.take_outgoing();
            while let Some(joined) = self.handlers.try_join_next_with_id() {
                self.finish(joined);
                progressed = true;
            }
            progressed |= self.sweep(draining);
            self.ring_due();
            if draining && self.running.is_empty() && self.outboxes_empty() {
                // Every reply is in its ring; dropping the sweeper closes the connections.
                return;
            }
            sweeps = sweeps.wrapping_add(1);
            if progressed {
                if let Some((since, _)) = idle.take() {
                    self.learner.learn(&self.wait, since.elapsed());
                }
                if sweeps % SWEEPS_PER_YIELD == 0 {
                    ::tokio::task::yield_now().await;
                }
                continue;
            }
            // Nothing to do: spin for the budget (sweeping again, and letting the runtime
            // run other tasks meanwhile), then sleep.
            let now = Instant::now();
            let spell_begins = idle.is_none();
            let (since, budget) =
                *idle.get_or_insert_with(|| (now, self.learner.budget(&self.wait)));
            if spell_begins {
                // What the last sweeps did may have woken handlers (credit granted, a
                // cancel, a new call): let them run now, not after `SPINS_PER_YIELD`
                // turns. Without this, a handler whose client granted credit waited up
                // to 256 turns of the spin below to send again, which capped one stream
                // of 64-byte items at about 410,000 items/s (window 32).
                ::tokio::task::yield_now().await;
                continue;
            }
            if budget.is_none_or(|budget| now - since < budget) {
                // Spin on this thread, giving the CPU to any other thread that waits for
                // it (`sched_yield`), rather than yield to tokio on every turn: a yield to
                // a multi-threaded runtime wakes an idle worker to steal the task, and the
                // client we wait for may be queued on this very CPU. Measured on 2 cores
                // (`bench --quick`): one client's p99 round trip was 66 µs with tokio
                // yields, 15 µs with this, 17 µs before the sweeper. The runtime still
                // gets the thread every `SPINS_PER_YIELD` turns, below.
                std::thread::yield_now();
                if sweeps % SPINS_PER_YIELD == 0 {
                    ::tokio::task::yield_now().await;
                }
                continue;
            }
            let quiet = self.arm_all(draining);
            self.ring_due();
            if !quiet {
                // Something came in as we armed: sweep again, letting the runtime run
                // first, so that no path through this loop can hold a thread for ever.
                ::tokio::task::yield_now().await;
                continue;
            }
            // Timers, not polls: the next idle, stall, deadline or grace, and, if a
            // request waits for room in the memory budget, the next release (with a
            // backstop, for releases made outside this task: connections accepted before
            // `serve`).
            let due = self.reap();
            let budget = self.budget_waited();
            let notice = budget.as_ref().map(|budget| budget.notice());
            let budget_released = async {
                match notice {
                    Some(notice) => {
                        let _ = ::tokio::time::timeout(PEER_CHECK_INTERVAL, notice.wait()).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let timer = async {
                match due {
                    Some(at) => ::tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            ::tokio::select! {
                () = budget_released => {}
                () = timer => {
                    self.reap();
                }
                stirred = self.poller.stirred() => match stirred {
                    Ok(()) => self.take_events(),
                    Err(error) => {
                        tracing::error!("ringbell: the server cannot wait for its clients: {error}");
                        return;
                    }
                },
                arrived = arrivals.recv(), if accepting => match arrived {
                    Some(connection) => self.admit(connection),
                    None => accepting = false,
                },
                Some(outgoing) = self.from_handlers.recv() => self.deliver(outgoing),
                Some(joined) = self.handlers.join_next_with_id(), if !self.handlers.is_empty() => {
                    self.finish(joined);
                }
                _ = stopping.changed(), if !draining => draining = true,
            }
            // The idle spell goes on (its spin spent) until a sweep finds work, which
            // ends it and teaches the learner how long it took.
        }
    }

    /// Takes a new connection into a free slot, watching its doorbell and control socket.
    fn admit(&mut self, mut connection: Connection) {
        connection.defer_doorbell_rings();
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let watched = self
            .poller
            .add(connection.doorbell(), doorbell_key(slot))
            .and_then(|()| self.poller.add(connection.control(), control_key(slot)));
        if let Err(error) = watched {
            tracing::warn!("ringbell: dropping a new client: cannot watch its connection: {error}");
            self.poller.remove(connection.doorbell());
            self.free.push(slot);
            return;
        }
        self.generations += 1;
        let charge = connection.budget().map(|budget| budget.charge(0));
        self.slots[slot] = Some(Served {
            connection,
            generation: self.generations,
            outbox: Outbox::default(),
            blocked: None,
            calls: HashMap::new(),
            // Its first requests may have arrived before it was watched.
            peer_stirred: true,
            asleep: false,
            handling_bytes: 0,
            parked: VecDeque::new(),
            charge,
        });
    }

    /// Drops the connection in `slot` (its client has gone or broke the protocol), and
    /// cancels its calls: their work is for nobody.
    fn drop_connection(&mut self, slot: usize, why: &Error) {
        let Some(mut served) = self.slots[slot].take() else {
            return;
        };
        tracing::debug!("ringbell: closing a connection: {why}");
        self.poller.remove(served.connection.doorbell());
        self.poller.remove(served.connection.control());
        let correlations: Vec<u64> = served.calls.keys().copied().collect();
        for correlation in correlations {
            if let Some(task) = served.cancel(correlation) {
                self.start_grace(task);
            }
        }
        self.free.push(slot);
    }

    /// The cancelled call's task has the grace to end; then it is aborted.
    fn start_grace(&mut self, task: TaskId) {
        let Some(running) = self.running.get_mut(&task) else {
            return;
        };
        if self.grace.is_zero() {
            running.abort.abort();
            let running = self.running.remove(&task).expect("looked up");
            self.end_aborted(&running);
            return;
        }
        running.abort_at = Some(Instant::now() + self.grace);
    }

    /// Ends the cancelled call of a task that was aborted: its client learns that it is over.
    fn end_aborted(&mut self, running: &Running) {
        let outcome = Err(String::new());
        self.reply(
            running.slot,
            running.generation,
            running.correlation,
            outcome,
        );
    }

    /// One pass over every connection that may have work. Returns whether anything moved.
    fn sweep(&mut self, draining: bool) -> bool {
        let mut progressed = false;
        for slot in 0..self.slots.len() {
            match self.serve_one(slot, draining) {
                Ok(moved) => progressed |= moved,
                Err(error) => {
                    self.drop_connection(slot, &error);
                    progressed = true;
                }
            }
        }
        progressed
    }

    /// Takes the messages of the connection in `slot` while it may have more calls under
    /// way, starts their handlers, and moves what waits for its ring into it. While
    /// draining, it still takes the client's credit, streamed messages and cancels, so that
    /// the calls under way can finish, but starts no new call.
    fn serve_one(&mut self, slot: usize, draining: bool) -> Result<bool, Error> {
        let Some(served) = self.slots[slot].as_mut() else {
            return Ok(false);
        };
        if served.asleep {
            if served.connection.doorbell_armed() {
                return Ok(false);
            }
            // It rang (the ringer took our announcement down).
            served.asleep = false;
        }
        let mut progressed = false;
        loop {
            let Some(served) = self.slots[slot].as_mut() else {
                return Ok(progressed);
            };
            if draining {
                // Never started: their client gets `PeerDied` when the connection closes.
                served.parked.clear();
            }
            if !served.parked.is_empty() && served.may_take(self.limit) {
                let (correlation, message) = served.parked.pop_front().expect("not empty");
                self.buf = message;
                let FromClient::Open(open) =
                    decode_from_client(&self.buf).map_err(broke_protocol)?
                else {
                    unreachable!("only openings are parked");
                };
                self.open_call(slot, correlation, open)?;
                progressed = true;
                continue;
            }
            if served.parked.len() >= self.limit {
                break;
            }
            let check_peer = served.peer_stirred;
            let Some(received) = served
                .connection
                .try_recv_tagged(&mut self.buf, check_peer)?
            else {
                served.peer_stirred = false;
                break;
            };
            progressed = true;
            let correlation = received.correlation;
            match decode_from_client(&self.buf).map_err(broke_protocol)? {
                FromClient::Open(_) if draining => {
                    // Never started: its client gets `PeerDied` when the connection closes.
                }
                FromClient::Open(_)
                    if !served.parked.is_empty() || !served.may_take(self.limit) =>
                {
                    served
                        .parked
                        .push_back((correlation, std::mem::take(&mut self.buf)));
                }
                FromClient::Open(open) => self.open_call(slot, correlation, open)?,
                FromClient::Data(len) => {
                    let live = served.calls.get_mut(&correlation);
                    let Some(live) = live.filter(|live| !live.state.is_cancelled()) else {
                        // A call that has ended or been cancelled: its client's messages
                        // in flight are for nobody.
                        continue;
                    };
                    let inbound = live.inbound.as_ref().ok_or(broke_protocol(
                        "a streamed message on a call that takes none",
                    ))?;
                    if live.client_credit == 0 {
                        return Err(broke_protocol(
                            "the client streamed more messages than the call's credit allows",
                        ));
                    }
                    live.client_credit -= 1;
                    self.buf.truncate(len);
                    // The handler may have dropped its `Call` and still be running.
                    let _ = inbound.send(std::mem::take(&mut self.buf));
                }
                FromClient::End => {
                    if let Some(live) = served.calls.get_mut(&correlation) {
                        live.inbound = None;
                    }
                }
                FromClient::Cancel => {
                    if let Some(at) = served.parked.iter().position(|(id, _)| *id == correlation) {
                        // Never started: it ends here, with its word to the client.
                        served.parked.remove(at);
                        served.outbox.push_final(correlation, encode_ended());
                    } else if let Some(task) = served.cancel(correlation) {
                        self.start_grace(task);
                    }
                }
                FromClient::Credit(n) => {
                    if let Some(live) = served.calls.get_mut(&correlation) {
                        // Credit only for what was sent: a client cannot make the call's
                        // window larger than it asked for at the opening.
                        let n = n.min(live.unacknowledged);
                        live.unacknowledged -= n;
                        live.state.grant(n);
                    }
                }
            }
            if let Some(served) = self.slots[slot].as_mut() {
                // Before the next look at the budget.
                served.recharge();
            }
        }
        let Some(served) = self.slots[slot].as_mut() else {
            return Ok(progressed);
        };
        let (moved, blocked) = served.outbox.flush(&mut served.connection)?;
        served.blocked = blocked;
        served.recharge();
        if let Some(doorbell) = served.connection.ring_owed() {
            self.rings_due.push((doorbell, slot, served.generation));
        }
        Ok(progressed || moved)
    }

    /// Starts the call `correlation` of the connection in `slot`, whose opening is in
    /// `self.buf`: its handler is polled once, and becomes a task if it waits.
    fn open_call(&mut self, slot: usize, correlation: u64, open: Open) -> Result<(), Error> {
        let served = self.slots[slot].as_mut().expect("the caller looked");
        if served.calls.contains_key(&correlation) {
            return Err(broke_protocol("a call opened with the id of one under way"));
        }
        let state = CallState::new(open.window);
        let (inbound, inbound_rx) = if open.mode.sends_stream() {
            let (sender, receiver) = mpsc::unbounded_channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        // A deadline too far to represent is none.
        let deadline = open
            .deadline
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let request_bytes = open.request_len;
        served.calls.insert(
            correlation,
            Live {
                state: state.clone(),
                inbound,
                client_credit: if open.mode.sends_stream() {
                    REQUEST_WINDOW
                } else {
                    0
                },
                unacknowledged: 0,
                deadline,
                task: None,
                request_bytes,
            },
        );
        served.handling_bytes += request_bytes;
        let call = Call::new(CallParts {
            message: std::mem::take(&mut self.buf),
            request_len: open.request_len,
            metadata: open.metadata,
            deadline,
            mode: open.mode,
            window: open.window,
            // A pack in one frame of this connection's ring, so it is never chunked.
            pack_limit: PACK_LIMIT
                .min(served.connection.send_limit())
                .min(max_frame_payload(served.connection.ring_capacity())),
            max_message_size: served.connection.max_message_size(),
            state: state.clone(),
            link: Link {
                to_sweeper: self.to_sweeper.clone(),
                slot,
                generation: served.generation,
                correlation,
            },
            inbound: inbound_rx,
        });
        let generation = served.generation;
        match first_poll(&*self.handler, call) {
            Ok(outcome) => {
                // What it streamed first, then its reply.
                self.take_outgoing();
                self.reply(slot, generation, correlation, outcome);
            }
            Err(waiting) => {
                let task = self.handlers.spawn(waiting);
                if let Some(live) = self.slots[slot]
                    .as_mut()
                    .and_then(|served| served.calls.get_mut(&correlation))
                {
                    live.task = Some(task.id());
                }
                self.running.insert(
                    task.id(),
                    Running {
                        slot,
                        generation,
                        correlation,
                        state,
                        abort: task,
                        abort_at: None,
                    },
                );
            }
        }
        Ok(())
    }

    /// Ends the call `correlation` with its handler's outcome: the reply goes in the
    /// outbox, or, if the call was cancelled, the word that it has ended (and nothing of
    /// the outcome).
    fn reply(&mut self, slot: usize, generation: u64, correlation: u64, outcome: Outcome) {
        let Some(served) = self.slots[slot]
            .as_mut()
            .filter(|served| served.generation == generation)
        else {
            return;
        };
        let Some(live) = served.forget(correlation) else {
            return;
        };
        let last = if live.state.is_cancelled() {
            encode_ended()
        } else {
            encode_reply_within(outcome, served.connection.max_message_size())
        };
        served.outbox.push_final(correlation, last);
        served.recharge();
        served.asleep = false;
    }

    /// Moves everything the handlers have sent into their connections' outboxes.
    /// Returns whether there was anything.
    fn take_outgoing(&mut self) -> bool {
        let mut any = false;
        while let Ok(outgoing) = self.from_handlers.try_recv() {
            self.deliver(outgoing);
            any = true;
        }
        any
    }

    /// Queues one message a handler sent, unless its call has ended or been cancelled.
    fn deliver(&mut self, outgoing: Outgoing) {
        let Some(served) = self.slots[outgoing.slot]
            .as_mut()
            .filter(|served| served.generation == outgoing.generation)
        else {
            return;
        };
        let Some(live) = served.calls.get_mut(&outgoing.correlation) else {
            return;
        };
        if live.state.is_cancelled() {
            return;
        }
        match outgoing.kind {
            OutgoingKind::Items => {
                let unsent = live.state.take_unsent();
                live.unacknowledged += unsent.cost;
                for message in unsent.messages {
                    served.outbox.push(outgoing.correlation, message);
                }
            }
            OutgoingKind::Credit(n) => {
                live.client_credit = live.client_credit.saturating_add(n);
                served.outbox.push(outgoing.correlation, outgoing.message);
            }
        }
        served.recharge();
        served.asleep = false;
    }

    /// Makes the doorbell rings this sweep owes, one per doorbell.
    fn ring_due(&mut self) {
        if self.rings_due.is_empty() {
            return;
        }
        self.rings_due.sort_unstable();
        let mut rung: Option<u64> = None;
        for &(doorbell, slot, generation) in &self.rings_due {
            if rung == Some(doorbell) {
                continue;
            }
            // A connection dropped since then cannot ring; another owner of the same
            // doorbell, if there is one, will.
            if let Some(served) = self.slots[slot]
                .as_ref()
                .filter(|served| served.generation == generation)
            {
                served.connection.ring_peer();
                rung = Some(doorbell);
            }
        }
        self.rings_due.clear();
    }

    /// Queues the reply of a handler task that ended.
    fn finish(&mut self, joined: Result<(TaskId, Outcome), JoinError>) {
        let (task, outcome) = match joined {
            Ok((task, outcome)) => (task, outcome),
            // Aborted tasks were removed from `running` when they were aborted.
            Err(error) => (error.id(), Err("the handler panicked".to_owned())),
        };
        let Some(running) = self.running.remove(&task) else {
            return;
        };
        // What it streamed before it ended goes before its reply.
        self.take_outgoing();
        self.reply(
            running.slot,
            running.generation,
            running.correlation,
            outcome,
        );
    }

    /// The memory budget, if a connection's request waits for room in it.
    fn budget_waited(&self) -> Option<Arc<Budget>> {
        self.slots
            .iter()
            .flatten()
            .find(|served| served.connection.awaiting_budget())
            .and_then(|served| served.connection.budget().cloned())
    }

    /// Everything that waits for a time: calls past their deadline are cancelled,
    /// cancelled handlers past their grace aborted, and quiet connections closed. Returns
    /// the next such time.
    fn reap(&mut self) -> Option<Instant> {
        let calls = self.reap_calls();
        let quiet = self.reap_quiet();
        match (calls, quiet) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Cancels the calls whose deadline has passed and aborts the cancelled handlers
    /// whose grace has; returns the next deadline or grace.
    fn reap_calls(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut soonest = |at: Instant| next = Some(next.map_or(at, |next: Instant| next.min(at)));
        let mut past_deadline = Vec::new();
        for (slot, served) in self.slots.iter_mut().enumerate() {
            let Some(served) = served else { continue };
            for (&correlation, live) in &served.calls {
                match live.deadline {
                    Some(_) if live.state.is_cancelled() => {}
                    Some(at) if at <= now => past_deadline.push((slot, correlation)),
                    Some(at) => soonest(at),
                    None => {}
                }
            }
        }
        for (slot, correlation) in past_deadline {
            let task = self.slots[slot]
                .as_mut()
                .and_then(|served| served.cancel(correlation));
            if let Some(task) = task {
                self.start_grace(task);
            }
        }
        // After the deadlines, so that the graces they started count for `next`.
        let mut overdue = Vec::new();
        for (&task, running) in &self.running {
            match running.abort_at {
                Some(at) if at <= now => overdue.push(task),
                Some(at) => soonest(at),
                None => {}
            }
        }
        for task in overdue {
            if let Some(running) = self.running.remove(&task) {
                running.abort.abort();
                debug_assert!(running.state.is_cancelled());
                self.end_aborted(&running);
            }
        }
        next
    }

    /// Closes the connections whose idle or stall timeout has passed, and returns the
    /// next such deadline. A connection counts as quiet only with its ring empty (a frame
    /// waiting there is ours to take, not the peer's stall) and not waiting for budget;
    /// for the idle timeout, also with no handler of it running. Messages waiting for room
    /// do not keep it open: a peer that does not read them is the one that stopped.
    fn reap_quiet(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for slot in 0..self.slots.len() {
            let Some(served) = self.slots[slot].as_mut() else {
                continue;
            };
            if served.connection.awaiting_budget() || served.connection.has_data().unwrap_or(true) {
                continue;
            }
            let Some((at, idle)) = served.connection.quiet_deadline_now() else {
                continue;
            };
            let mid_message = matches!(
                idle,
                Error::Idle {
                    mid_message: true,
                    ..
                }
            );
            if !mid_message && !served.calls.is_empty() {
                continue;
            }
            if now >= at {
                let error = served.connection.close_idle(idle);
                self.drop_connection(slot, &error);
                continue;
            }
            next = Some(next.map_or(at, |next| next.min(at)));
        }
        next
    }

    fn outboxes_empty(&self) -> bool {
        self.slots
            .iter()
            .flatten()
            .all(|served| served.outbox.is_empty())
    }

    /// Announces, on every connection not announced already, that the sweeper is going to
    /// sleep: for its next message if it may take one, for room if a message waits for
    /// it. Returns `false` if one of them turned out to have work: sweep again, do not
    /// sleep.
    fn arm_all(&mut self, draining: bool) -> bool {
        let mut all_quiet = true;
        for slot in 0..self.slots.len() {
            let Some(served) = self.slots[slot].as_mut() else {
                continue;
            };
            if served.asleep {
                continue;
            }
            // A request waiting for budget room is not ours to take yet: the sweeper waits
            // for a release (`budget_waited`), not for this connection's doorbell.
            let receiving = (draining || served.parked.len() < self.limit)
                && !served.connection.awaiting_budget();
            let armed = arm(&mut served.connection, receiving, served.blocked);
            // Arming hands back the space of what we received, which may owe a ring.
            if let Some(doorbell) = served.connection.ring_owed() {
                self.rings_due.push((doorbell, slot, served.generation));
            }
            match armed {
                Ok(true) => served.asleep = receiving && served.blocked.is_none(),
                Ok(false) => all_quiet = false,
                Err(error) => {
                    self.drop_connection(slot, &error);
                    all_quiet = false;
                }
            }
        }
        all_quiet
    }

    /// Handles what the poller reported after a sleep: resets the doorbells that rang, and
    /// has the connections whose control socket stirred check their peer.
    fn take_events(&mut self) {
        let mut stirred = self.poller.take();
        for Stirred { key, hung_up, .. } in stirred.drain(..) {
            let slot = key >> 1;
            let Some(served) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            served.asleep = false;
            if key & 1 == 0 {
                served.connection.settle_doorbell(true);
                if !hung_up {
                    continue;
                }
                served.connection.doorbell_hung_up();
            }
            served.connection.settle_doorbell(false);
            served.peer_stirred = true;
            // A peer that is gone will never make room for the messages still waiting.
            if served.blocked.is_some() {
                if let Err(error) = served.connection.ensure_peer_alive() {
                    self.drop_connection(slot, &error);
                }
            }
        }
        self.poller.give_back(stirred);
    }
}

/// Makes the handler's future for `call` and polls it once. Returns its outcome if it
/// finished, or the future (for a task of its own) if it waits. A panic, in the handler
/// or in that first poll, is an outcome too.
fn first_poll<H, F, E>(handler: &H, call: Call) -> Result<Outcome, Handling>
where
    H: Fn(Call) -> F,
    F: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let attempt = catch_unwind(AssertUnwindSafe(|| {
        let mut work = Box::pin(handler(call));
        // Anything the future registers this waker with is registered again with the
        // task's own when the task polls it, which it does as soon as it is spawned.
        let mut context = Context::from_waker(Waker::noop());
        match work.as_mut().poll(&mut context) {
            Poll::Ready(result) => Ok(result.map_err(|error| error.to_string())),
            Poll::Pending => Err(work),
        }
    }));
    match attempt {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(work)) => Err(Box::pin(async move {
            work.await.map_err(|error| error.to_string())
        })),
        Err(_panic) => Ok(Err("the handler panicked".to_owned())),
    }
}
