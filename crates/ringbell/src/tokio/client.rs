//! Request/response: a [`Client`] handle that many tasks can clone and call through at
//! once, and [`ClientGroup`], whose clients share one driver task, and one doorbell per
//! server process. The
//! server's side, [`AsyncServer::serve`], is in `serve.rs`.
//!
//! [`AsyncServer::serve`]: super::AsyncServer::serve
//!
//! On the wire every message of a call is tagged with its correlation id (never 0, never
//! reused), and says what it is in its last byte: an opening, a streamed message, credit,
//! a cancel, the final reply (see `core/call.rs`). Replies may come in any order.
//!
//! The connections of a group are driven by one task that never blocks: it moves queued
//! requests into their rings while they fit, takes whatever replies have arrived, and
//! otherwise sleeps on one [`Poller`] holding the group's doorbells and every connection's
//! control socket, together with its queue of calls. A [`Client`] made on its own is a
//! group of one. Each client has at most `max_in_flight` calls outstanding: more callers
//! wait for a slot.
//!
//! Why groups: a process that holds many connections (to many servers, or many to one)
//! would otherwise have one task and one doorbell per connection, and a server that
//! answers many of them at once would ring and wake each. With one doorbell for all the
//! group's connections to a server, the server rings it once per sweep (see
//! `serve.rs`) and the group's task wakes once for all the replies. Not one for
//! the whole group: a server holds its doorbell's ringer and could silence it for
//! everyone who rings it, so servers never share one.

use std::collections::{HashMap, VecDeque};
#[cfg(feature = "tower")]
use std::future::Future;
use std::path::{Path, PathBuf};
#[cfg(feature = "tower")]
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ::tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::stream::{CallGuard, CallOptions, Event, RequestSender, ResponseStream};
use super::{arm, WatchedPoller};
use crate::config::{ClientConfig, WaitStrategy};
use crate::conn::{Connection, Publish, Pushed, SendProgress};
use crate::core::call::{
    check_pack, decode_from_server, encode_cancel, encode_client_credit, encode_end, encode_open,
    item_cost, FromServer, Mode, Pack, REQUEST_WINDOW,
};
use crate::core::in_flight::InFlight;
use crate::core::ring::max_frame_payload;
use crate::core::wait::{yield_if_spinning_long, SpinLearner, PEER_CHECK_INTERVAL};
use crate::error::Error;
use crate::handshake::SharedDoorbell;
use crate::sys;

/// Default bound on a [`Client`]'s outstanding calls.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// A copy of a connection-ending error for each of the callers it ends.
fn copy_of(error: &Error) -> Error {
    error.terminal_copy().unwrap_or(Error::PeerDied)
}

/// Where a call's responses go.
enum Sink {
    /// A unary call's caller: the reply only.
    Reply(oneshot::Sender<Result<Vec<u8>, Error>>),
    /// A stream: its messages, then its end.
    Stream(mpsc::UnboundedSender<Event>),
    /// Nobody: the call was cancelled (or broke the protocol) and waits for the server's
    /// word that it has ended, holding its slot until then.
    Gone,
}

/// One call on its way to the driver.
pub(super) struct NewCall {
    correlation: u64,
    /// Its opening, encoded.
    message: Vec<u8>,
    sink: Sink,
    /// Its stream's window, in bytes (0 on a unary call).
    window: u32,
    /// The credit of its request stream, on a two-way call.
    send_credit: Option<Arc<Semaphore>>,
    /// Held until the call ends: the in-flight bound.
    permit: OwnedSemaphorePermit,
}

/// A call sent and waiting for its end.
struct Pending {
    sink: Sink,
    /// Its stream's window, in bytes: what each streamed response costs depends on it.
    window: u32,
    /// What the server may still send of streamed responses before the client grants
    /// more, in `core::call::item_cost`s.
    credit: u32,
    send_credit: Option<Arc<Semaphore>>,
    _permit: OwnedSemaphorePermit,
}

impl Pending {
    /// Ends the call with `outcome`: the caller or the stream gets it, and the request
    /// stream, if any, is closed.
    fn end(mut self, outcome: Result<Vec<u8>, Error>) {
        self.tell(outcome);
    }

    /// Whether someone still waits for what the call brings.
    fn is_live(&self) -> bool {
        !matches!(self.sink, Sink::Gone)
    }

    /// Gives the caller or the stream `outcome` and leaves nobody to tell: the call
    /// itself may still be under way on the server.
    fn tell(&mut self, outcome: Result<Vec<u8>, Error>) {
        if let Some(credit) = &self.send_credit {
            credit.close();
        }
        match std::mem::replace(&mut self.sink, Sink::Gone) {
            Sink::Gone => {}
            Sink::Reply(reply) => {
                let _ = reply.send(outcome);
            }
            Sink::Stream(events) => {
                let _ = events.send(Event::End(outcome));
            }
        }
    }
}

/// A request/response client over one connection. Cheap to clone; every clone calls
/// through the same connection, with up to `max_in_flight` calls outstanding at once
/// (and no more than the server takes at once on a connection, which it says in the
/// handshake). The connection closes when the last clone is dropped and its calls have
/// ended.
///
/// Besides unary calls ([`call`](Self::call), [`call_with`](Self::call_with)), it makes
/// streaming calls: [`call_stream`](Self::call_stream) (one request, streamed responses)
/// and [`open`](Self::open) (both ways). Dropping a call's future or its
/// [`ResponseStream`] cancels it on the server.
///
/// ```no_run
/// # async fn run() -> Result<(), ringbell::Error> {
/// use ringbell::tokio::Client;
/// use ringbell::ClientConfig;
///
/// let client = Client::connect("/tmp/app.sock", ClientConfig::default()).await?;
/// let reply = client.call(b"what time is it?").await?;
/// # let _ = reply;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    handle: Arc<Membership>,
    in_flight: Arc<Semaphore>,
    max_message_size: usize,
}

/// A client's place in its group; the last clone to go tells the driver.
#[derive(Debug)]
struct Membership {
    id: u64,
    driver: mpsc::UnboundedSender<ToDriver>,
    /// The next call's correlation id. Ids are never 0 and never reused: a u64 counted up
    /// from 1 does not wrap in centuries of calls, so a late reply or streamed message of
    /// a call given up can never reach a later call.
    next_call: AtomicU64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let _ = self.driver.send(ToDriver::Leave { id: self.id });
    }
}

impl Client {
    /// Connects to the server at `path`, in a group of its own, with the default bound of
    /// outstanding calls. Must be called within a tokio runtime. It holds six fds: three
    /// for the connection and three for its group (use one [`ClientGroup`] for many
    /// connections: three fds each, plus the group's three).
    ///
    /// # Errors
    ///
    /// As [`AsyncConnection::connect`](super::AsyncConnection::connect).
    pub async fn connect(path: impl AsRef<Path>, config: ClientConfig) -> Result<Client, Error> {
        ClientGroup::new()?.connect(path, config).await
    }

    /// Drives `connection`, made for calls, from a task of its own (on the current tokio
    /// runtime) and returns a client that allows `max_in_flight` outstanding calls (at
    /// least 1). For `test_api`: every public way to make a client connects it for calls.
    #[cfg(feature = "__test-api")]
    pub(crate) fn from_connection(
        connection: Connection,
        max_in_flight: usize,
    ) -> Result<Client, Error> {
        let group = ClientGroup::new()?;
        Ok(group.adopt(connection, None, max_in_flight))
    }

    /// Sends `request` and waits for its reply. If all slots are taken, waits for one
    /// first. Dropping the future gives up on the call: the server cancels its handler,
    /// and a reply that was already on its way is discarded (it never reaches another
    /// caller).
    ///
    /// # Errors
    ///
    /// [`Error::Handler`] if the server's handler failed for this request (the connection
    /// goes on); [`Error::PeerDied`] or [`Error::Corrupted`] if the connection ended;
    /// [`Error::TooLarge`] if the request exceeds the connection's maximum.
    pub async fn call(&self, request: &[u8]) -> Result<Vec<u8>, Error> {
        self.call_with(request, CallOptions::default()).await
    }

    /// [`call`](Self::call) with a timeout, which travels with the call: when it passes,
    /// the server cancels the handler and this returns [`Error::Timeout`]. The same as
    /// `call_with(request, CallOptions::default().timeout(timeout))`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), ringbell::Error> {
    /// use ringbell::tokio::Client;
    /// use ringbell::{ClientConfig, Error};
    /// use std::time::Duration;
    ///
    /// let client = Client::connect("/tmp/rpc.sock", ClientConfig::default()).await?;
    /// match client.call_timeout(b"slow question", Duration::from_millis(250)).await {
    ///     Ok(reply) => println!("{} bytes", reply.len()),
    ///     Err(Error::Timeout) => println!("no answer in time; the client is still usable"),
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call), and [`Error::Timeout`] when `timeout` passes first.
    pub async fn call_timeout(&self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, Error> {
        self.call_with(request, CallOptions::default().timeout(timeout))
            .await
    }

    /// [`call`](Self::call) made as `options` say: a timeout that travels with it, and
    /// metadata the handler reads with [`Call::metadata`](super::Call::metadata).
    ///
    /// ```no_run
    /// # async fn run(client: ringbell::tokio::Client) -> Result<(), ringbell::Error> {
    /// use ringbell::tokio::CallOptions;
    /// use std::time::Duration;
    ///
    /// let options = CallOptions::default()
    ///     .timeout(Duration::from_secs(2))
    ///     .metadata("request-id", b"42");
    /// let reply = client.call_with(b"req", options).await?;
    /// # let _ = reply;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`call_timeout`](Self::call_timeout), and [`Error::InvalidConfig`] if the
    /// metadata is over its limits ([`Metadata`](crate::tokio::Metadata)).
    pub async fn call_with(&self, request: &[u8], options: CallOptions) -> Result<Vec<u8>, Error> {
        let deadline = options.deadline_from_now();
        let call = async {
            let metadata_len = self.check(request, &options)?;
            let permit = self.permit().await?;
            let (reply, answer) = oneshot::channel();
            let sink = Sink::Reply(reply);
            let mut guard = self.send_call(
                request,
                &options,
                (Mode::Unary, metadata_len, deadline),
                sink,
                None,
                permit,
            )?;
            let outcome = answer.await.map_err(|_| Error::PeerDied);
            guard.disarm();
            outcome?
        };
        match deadline {
            Some(at) => ::tokio::time::timeout_at(at.into(), call)
                .await
                .map_err(|_| Error::Timeout)?,
            None => call.await,
        }
    }

    /// Sends `request` and returns the stream of the handler's responses: each message
    /// it sends with [`Call::send`](super::Call::send), then its final reply
    /// ([`ResponseStream::reply`]). Returns once the call is sent (after waiting for a
    /// slot, if all are taken). Dropping the stream before its end cancels the call.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call), for making the call; the stream's own errors come from
    /// it.
    pub async fn call_stream(&self, request: &[u8]) -> Result<ResponseStream, Error> {
        self.call_stream_with(request, CallOptions::default()).await
    }

    /// [`call_stream`](Self::call_stream) made as `options` say (a timeout for the whole
    /// stream, metadata, the stream's window).
    ///
    /// # Errors
    ///
    /// As [`call_with`](Self::call_with).
    pub async fn call_stream_with(
        &self,
        request: &[u8],
        options: CallOptions,
    ) -> Result<ResponseStream, Error> {
        let (_, stream) = self
            .start_stream(request, options, Mode::ServerStream)
            .await?;
        Ok(stream)
    }

    /// Opens a two-way call with `request` as its first message: the handler reads the
    /// [`RequestSender`]'s messages with [`Call::recv`](super::Call::recv) and streams
    /// its responses to the [`ResponseStream`]. The call ends when the handler returns.
    ///
    /// ```no_run
    /// # async fn run(client: ringbell::tokio::Client) -> Result<(), ringbell::Error> {
    /// use ringbell::tokio::CallOptions;
    ///
    /// let (mut sender, mut stream) = client.open(b"header", CallOptions::default()).await?;
    /// sender.send(b"more").await?;
    /// sender.finish().await?;
    /// while let Some(message) = stream.next().await {
    ///     let _ = message?;
    /// }
    /// let reply = stream.reply().await?;
    /// # let _ = reply;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`call_with`](Self::call_with), for making the call.
    pub async fn open(
        &self,
        request: &[u8],
        options: CallOptions,
    ) -> Result<(RequestSender, ResponseStream), Error> {
        let (sender, stream) = self.start_stream(request, options, Mode::TwoWay).await?;
        Ok((sender.expect("a two-way call has a sender"), stream))
    }

    async fn start_stream(
        &self,
        request: &[u8],
        options: CallOptions,
        mode: Mode,
    ) -> Result<(Option<RequestSender>, ResponseStream), Error> {
        let deadline = options.deadline_from_now();
        let metadata_len = self.check(request, &options)?;
        let permit = match deadline {
            Some(at) => ::tokio::time::timeout_at(at.into(), self.permit())
                .await
                .map_err(|_| Error::Timeout)??,
            None => self.permit().await?,
        };
        let (events, stream_events) = mpsc::unbounded_channel();
        let send_credit = mode
            .sends_stream()
            .then(|| Arc::new(Semaphore::new(REQUEST_WINDOW as usize)));
        let guard = self.send_call(
            request,
            &options,
            (mode, metadata_len, deadline),
            Sink::Stream(events),
            send_credit.clone(),
            permit,
        )?;
        let sender = send_credit.map(|credit| RequestSender {
            driver: self.handle.driver.clone(),
            member: self.handle.id,
            correlation: guard.correlation,
            credit,
            max_message_size: self.max_message_size,
            finished: false,
        });
        let stream = ResponseStream::new(stream_events, guard, options.window, deadline);
        Ok((sender, stream))
    }

    /// The checks made before a call takes a slot: its size, and its metadata's (whose
    /// encoded length this returns).
    fn check(&self, request: &[u8], options: &CallOptions) -> Result<usize, Error> {
        if request.len() > self.max_message_size {
            return Err(Error::TooLarge {
                len: request.len(),
                max: self.max_message_size,
            });
        }
        options
            .metadata
            .encoded_len()
            .map_err(|detail| Error::InvalidConfig { detail })
    }

    /// A place among the outstanding calls, waiting for one if all are taken.
    async fn permit(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::PeerDied)
    }

    /// Hands a call to the driver; the guard cancels it if it is dropped armed.
    fn send_call(
        &self,
        request: &[u8],
        options: &CallOptions,
        (mode, metadata_len, deadline): (Mode, usize, Option<Instant>),
        sink: Sink,
        send_credit: Option<Arc<Semaphore>>,
        permit: OwnedSemaphorePermit,
    ) -> Result<CallGuard, Error> {
        let correlation = self.handle.next_call.fetch_add(1, Ordering::Relaxed);
        // What is left of the timeout travels: the time spent waiting for a slot is gone.
        let left = deadline.map(|at| at.saturating_duration_since(Instant::now()));
        let message = encode_open(
            request,
            mode,
            options.window,
            left,
            &options.metadata,
            metadata_len,
        );
        let call = NewCall {
            correlation,
            message,
            sink,
            window: if mode.takes_stream() {
                options.window
            } else {
                0
            },
            send_credit,
            permit,
        };
        let id = self.handle.id;
        self.handle
            .driver
            .send(ToDriver::Call { id, call })
            .map_err(|_| Error::PeerDied)?;
        Ok(CallGuard {
            driver: self.handle.driver.clone(),
            member: id,
            correlation,
            armed: true,
        })
    }
}

#[cfg(feature = "tower")]
impl tower_service::Service<Vec<u8>> for Client {
    type Response = Vec<u8>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Vec<u8>, Error>> + Send>>;

    /// Always ready: a call past the in-flight bound waits inside its future, so tower's
    /// concurrency limits compose with it.
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Vec<u8>) -> Self::Future {
        let client = self.clone();
        Box::pin(async move { client.call(&request).await })
    }
}

/// Messages waiting for room in the ring, in order, and how far the first one has got.
#[derive(Default)]
pub(super) struct Outbox {
    queue: VecDeque<Queued>,
    progress: SendProgress,
    /// The bytes of the messages in `queue`.
    bytes: usize,
    /// How many of them end their call (the server's final replies).
    finals: usize,
}

struct Queued {
    id: u64,
    message: Vec<u8>,
    role: Role,
}

/// What a queued message is to its call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The client's opening: until it is in the ring, the server knows nothing of the call.
    Opens,
    Other,
    /// The server's final reply (or `ENDED`), which the client counts on.
    Ends,
}

impl Outbox {
    /// Queues `message`, to go with `id`.
    pub(super) fn push(&mut self, id: u64, message: Vec<u8>) {
        self.queue_up(id, message, Role::Other);
    }

    /// Queues the opening of call `id`.
    pub(super) fn push_opening(&mut self, id: u64, message: Vec<u8>) {
        self.queue_up(id, message, Role::Opens);
    }

    /// Queues the message that ends call `id`: counted by [`finals`](Self::finals) until
    /// it is in the ring.
    pub(super) fn push_final(&mut self, id: u64, message: Vec<u8>) {
        self.queue_up(id, message, Role::Ends);
    }

    fn queue_up(&mut self, id: u64, message: Vec<u8>, role: Role) {
        self.bytes += message.len();
        self.finals += usize::from(role == Role::Ends);
        self.queue.push_back(Queued { id, message, role });
    }

    /// The bytes of the messages waiting.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The messages waiting that end their call.
    pub(super) fn finals(&self) -> usize {
        self.finals
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Withdraws the messages of call `id` that wait: its call was cancelled. The one
    /// being written stays, since part of it is in the ring already; so does a final one,
    /// which the peer counts on. Returns whether the call's opening was among them: then
    /// the peer never hears of the call.
    pub(super) fn withdraw(&mut self, id: u64) -> bool {
        let begun = self.progress != SendProgress::default();
        let bytes = &mut self.bytes;
        let mut index = 0;
        let mut opening = false;
        self.queue.retain(|queued| {
            let keep = queued.id != id || queued.role == Role::Ends || (index == 0 && begun);
            index += 1;
            if !keep {
                *bytes -= queued.message.len();
                opening |= queued.role == Role::Opens;
            }
            keep
        });
        opening
    }

    /// Moves messages into the ring while they fit, and shows them to the peer at once:
    /// one publication (and at most one wake-up) for all of them, so that a peer that
    /// reads as they come takes them in one pass, not one pass each (measured on one
    /// stream of 64-byte items: see docs/BENCHMARKS.md, "Streamed calls"). Nothing waits
    /// for more to come. Returns whether any went, and the size of the frame that did not
    /// fit, if one is waiting.
    pub(super) fn flush(
        &mut self,
        connection: &mut Connection,
    ) -> Result<(bool, Option<usize>), Error> {
        let flushed = self.flush_unpublished(connection);
        connection.publish_sent();
        flushed
    }

    fn flush_unpublished(
        &mut self,
        connection: &mut Connection,
    ) -> Result<(bool, Option<usize>), Error> {
        let mut moved = false;
        let one_frame = max_frame_payload(connection.ring_capacity());
        while let Some(queued) = self.queue.front() {
            // A message in chunks is shown chunk by chunk, so that the peer takes the
            // first while we write the next.
            let publish = if queued.message.len() > one_frame {
                Publish::Now
            } else {
                Publish::Later
            };
            match connection.push_some(&queued.message, queued.id, &mut self.progress, publish) {
                Ok(Pushed::Done) => {
                    self.bytes -= queued.message.len();
                    self.finals -= usize::from(queued.role == Role::Ends);
                    self.queue.pop_front();
                    self.progress = SendProgress::default();
                    moved = true;
                }
                Ok(Pushed::Full { payload }) => return Ok((moved, Some(payload))),
                Err(error) => return Err(connection.fail(error)),
            }
        }
        Ok((moved, None))
    }
}

/// Clients whose connections share one driver task, and one doorbell per server process:
/// for a process that holds many connections at once. Cheap to clone; the group's task
/// ends when the group and all its clients have been dropped and their calls have ended,
/// and every fd goes with it. The group holds a poller (an epoll set on Linux) and a
/// doorbell pair per server process it talks to, and each of its connections three fds
/// (control socket, a copy of its doorbell, the server's ringer).
///
/// ```no_run
/// # async fn run() -> Result<(), ringbell::Error> {
/// use ringbell::tokio::ClientGroup;
/// use ringbell::ClientConfig;
///
/// let group = ClientGroup::new()?;
/// let index = group.connect("/tmp/index.sock", ClientConfig::default()).await?;
/// let model = group.connect("/tmp/model.sock", ClientConfig::default()).await?;
/// let (a, b) = tokio::join!(index.call(b"lookup"), model.call(b"complete"));
/// # let _ = (a, b);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientGroup {
    shared: Arc<GroupShared>,
}

#[derive(Debug)]
struct GroupShared {
    /// The doorbell the group's connections to each server process give that server, by
    /// the server's pid. One per server, not one for the group: a server holds the ringer
    /// of its doorbell and could silence it (`shutdown(2)`) for everyone who rings it, so
    /// one server must not share a doorbell with another. Weak: the driver and the
    /// connections keep a doorbell alive while it serves any.
    doorbells: Mutex<HashMap<u32, Weak<SharedDoorbell>>>,
    driver: mpsc::UnboundedSender<ToDriver>,
    next_id: AtomicU64,
}

impl GroupShared {
    /// The doorbell for the connections to the server process `pid`: the one they share
    /// already, or a new one.
    fn doorbell_for(&self, pid: u32) -> Result<Arc<SharedDoorbell>, Error> {
        let mut doorbells = self
            .doorbells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(doorbell) = doorbells.get(&pid).and_then(Weak::upgrade) {
            return Ok(doorbell);
        }
        let (bell, ringer) =
            sys::doorbell_pair().map_err(|error| Error::io("creating a doorbell", error))?;
        let doorbell = Arc::new(SharedDoorbell { bell, ringer });
        doorbells.retain(|_, doorbell| doorbell.strong_count() > 0);
        doorbells.insert(pid, Arc::downgrade(&doorbell));
        Ok(doorbell)
    }
}

/// What the clients of a group, and their calls, tell its driver.
pub(super) enum ToDriver {
    /// A new connection, whose doorbell is shared with the group's other connections to
    /// the same server, or (`None`) its own.
    Join {
        id: u64,
        connection: Box<Connection>,
        shared: Option<Arc<SharedDoorbell>>,
    },
    Call {
        id: u64,
        call: NewCall,
    },
    /// The caller gave up on the call: cancel it on the server.
    Cancel {
        id: u64,
        correlation: u64,
    },
    /// The stream's reader took `n` messages: the server may send as many more.
    Credit {
        id: u64,
        correlation: u64,
        n: u32,
    },
    /// A message of a two-way call's request stream, encoded.
    Data {
        id: u64,
        correlation: u64,
        message: Vec<u8>,
    },
    /// The end of a two-way call's request stream.
    End {
        id: u64,
        correlation: u64,
    },
    /// Every clone of this client is gone: close it once its calls have ended.
    Leave {
        id: u64,
    },
}

impl ClientGroup {
    /// A new group, with its driver task spawned on the current tokio runtime (so it must
    /// be called within one).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the group's poller cannot be created (out of fds, usually), or if
    /// this is not called within a tokio runtime (where tokio itself would panic).
    pub fn new() -> Result<ClientGroup, Error> {
        if ::tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::io(
                "starting a client group",
                std::io::Error::other(
                    "not within a tokio runtime: call this from inside one (#[tokio::main])",
                ),
            ));
        }
        let (driver, messages) = mpsc::unbounded_channel();
        let task = GroupDriver::new()?;
        ::tokio::spawn(task.run(messages));
        Ok(ClientGroup {
            shared: Arc::new(GroupShared {
                doorbells: Mutex::new(HashMap::new()),
                driver,
                next_id: AtomicU64::new(0),
            }),
        })
    }

    /// Connects to the server at `path` as a member of this group, with the default bound
    /// of outstanding calls ([`DEFAULT_MAX_IN_FLIGHT`]). The handshake runs on tokio's
    /// blocking pool.
    ///
    /// # Errors
    ///
    /// As [`AsyncConnection::connect`](super::AsyncConnection::connect).
    pub async fn connect(
        &self,
        path: impl AsRef<Path>,
        config: ClientConfig,
    ) -> Result<Client, Error> {
        self.connect_bounded(path, config, DEFAULT_MAX_IN_FLIGHT)
            .await
    }

    /// [`connect`](Self::connect), allowing `max_in_flight` outstanding calls (at least 1):
    /// a caller past the bound waits for a slot, so a burst of calls cannot fill the ring
    /// faster than the server answers.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), ringbell::Error> {
    /// use ringbell::tokio::ClientGroup;
    /// use ringbell::ClientConfig;
    ///
    /// let group = ClientGroup::new()?;
    /// // Up to 4 calls in flight on this connection; the fifth caller waits.
    /// let client = group
    ///     .connect_bounded("/tmp/rpc.sock", ClientConfig::default(), 4)
    ///     .await?;
    /// let reply = client.call(b"hello").await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`AsyncConnection::connect`](super::AsyncConnection::connect).
    pub async fn connect_bounded(
        &self,
        path: impl AsRef<Path>,
        config: ClientConfig,
        max_in_flight: usize,
    ) -> Result<Client, Error> {
        let path: PathBuf = path.as_ref().to_path_buf();
        let shared = self.shared.clone();
        let (connection, doorbell) = ::tokio::task::spawn_blocking(move || {
            crate::handshake::connect_sharing(&path, &config, &|pid| shared.doorbell_for(pid))
        })
        .await
        .map_err(|error| Error::io("running the handshake", std::io::Error::other(error)))??;
        Ok(self.adopt(connection, Some(doorbell), max_in_flight))
    }

    /// Hands `connection` to the driver and returns its client.
    fn adopt(
        &self,
        connection: Connection,
        shared: Option<Arc<SharedDoorbell>>,
        max_in_flight: usize,
    ) -> Client {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let max_message_size = connection.max_message_size();
        // No more outstanding than the server takes at once: see `ServerConfig::concurrent_requests`.
        let max_in_flight = max_in_flight.min(connection.concurrent_calls()).max(1);
        // If the driver has gone (its runtime is shutting down), the connection is
        // dropped with the message, and the client's calls fail with `PeerDied`.
        let _ = self.shared.driver.send(ToDriver::Join {
            id,
            connection: Box::new(connection),
            shared,
        });
        Client {
            handle: Arc::new(Membership {
                id,
                driver: self.shared.driver.clone(),
                next_call: AtomicU64::new(1),
            }),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_message_size,
        }
    }
}

/// Poller keys: a member's are its slot times two (its own doorbell, if it has one) and
/// that plus one (its control socket); a shared doorbell's, its index with this bit set.
const SHARED_DOORBELL_BIT: usize = 1 << (usize::BITS - 1);

/// Yield to the runtime after this many passes in a row that found work.
const PASSES_PER_YIELD: u32 = 4;

/// Passes between two looks at the clock for [`PEER_CHECK_INTERVAL`].
const EVENT_CHECK_PASSES: u32 = 64;

/// One connection of a group.
struct Member {
    id: u64,
    connection: Connection,
    /// The index of its shared doorbell in `GroupDriver::doorbells`; `None`: its own,
    /// watched under its slot's key.
    doorbell: Option<usize>,
    pending: InFlight<Pending>,
    outbox: Outbox,
    blocked: Option<usize>,
    /// Its control socket stirred: the next receive that finds the ring empty checks
    /// the peer with a syscall.
    peer_stirred: bool,
    /// Its clients are gone: close it once nothing is under way.
    left: bool,
}

impl Member {
    /// Takes one message of the call `correlation` from the server, in `buf`.
    fn take(&mut self, correlation: u64, buf: &mut Vec<u8>) -> Result<(), Error> {
        let message = decode_from_server(buf).map_err(|detail| Error::Corrupted { detail })?;
        match message {
            FromServer::Reply(len) | FromServer::Failed(len) => {
                // Unknown: a call given up on; its reply is for nobody.
                let Some(pending) = self.pending.complete(correlation) else {
                    return Ok(());
                };
                buf.truncate(len);
                let body = std::mem::take(buf);
                pending.end(match message {
                    FromServer::Reply(_) => Ok(body),
                    _ => Err(Error::Handler {
                        message: String::from_utf8_lossy(&body).into_owned(),
                    }),
                });
            }
            FromServer::Item(len) => {
                let Some(pending) = self.pending.get_mut(correlation) else {
                    return Ok(());
                };
                let cost = item_cost(len, pending.window);
                if !self.take_credit(correlation, cost) {
                    return Ok(());
                }
                buf.truncate(len);
                self.deliver(correlation, Event::Item(std::mem::take(buf)));
            }
            FromServer::Items { count, len } => {
                let Some(pending) = self.pending.get_mut(correlation) else {
                    return Ok(());
                };
                let window = pending.window;
                let mut cost = 0u32;
                check_pack(&buf[..len], count, |item| {
                    cost = cost.saturating_add(item_cost(item, window));
                })
                .map_err(|detail| Error::Corrupted { detail })?;
                if !self.take_credit(correlation, cost) {
                    return Ok(());
                }
                buf.truncate(len);
                self.deliver(correlation, Event::Items(Pack::new(std::mem::take(buf))));
            }
            FromServer::Ended => {
                // The server cancels a call by itself only when its deadline has passed;
                // after our own cancel, nobody listens.
                if let Some(pending) = self.pending.complete(correlation) {
                    pending.end(Err(Error::Timeout));
                }
            }
            FromServer::Credit(n) => {
                if let Some(credit) = self
                    .pending
                    .get_mut(correlation)
                    .and_then(|pending| pending.send_credit.as_ref())
                {
                    // A server cannot make a window larger than the protocol's.
                    credit.add_permits(n.min(REQUEST_WINDOW) as usize);
                }
            }
        }
        Ok(())
    }
}

impl Member {
    /// Spends `cost` of call `correlation`'s credit on streamed responses that came.
    /// Returns whether they are to be delivered: not if the call's stream has gone (they
    /// were sent before our cancel reached the server), nor if the server broke the
    /// call's flow control, which ends the call (not the connection: it is cancelled on
    /// the server, whose word that it has ended frees its slot).
    fn take_credit(&mut self, correlation: u64, cost: u32) -> bool {
        let Some(pending) = self.pending.get_mut(correlation) else {
            return false;
        };
        let over = match &pending.sink {
            Sink::Gone => return false,
            Sink::Stream(_) if cost <= pending.credit => None,
            Sink::Stream(_) => Some("the server streamed more than the call's credit allows"),
            Sink::Reply(_) => Some("the server streamed a message on a unary call"),
        };
        if let Some(detail) = over {
            pending.tell(Err(Error::Corrupted { detail }));
            self.outbox.withdraw(correlation);
            self.outbox.push(correlation, encode_cancel());
            return false;
        }
        pending.credit -= cost;
        true
    }

    /// Hands streamed responses to call `correlation`'s stream.
    fn deliver(&mut self, correlation: u64, event: Event) {
        if let Some(Sink::Stream(events)) = self.pending.get_mut(correlation).map(|p| &p.sink) {
            // A stream dropped meanwhile has its cancel on the way.
            let _ = events.send(event);
        }
    }
}

/// The task that drives every connection of a group.
struct GroupDriver {
    /// The shared doorbells, the members' own doorbells and every control socket.
    poller: WatchedPoller,
    /// The shared doorbells the members use, each with how many members use it; watched
    /// while any does.
    doorbells: Vec<Option<(Arc<SharedDoorbell>, usize)>>,
    members: Vec<Option<Member>>,
    free: Vec<usize>,
    slot_of: HashMap<u64, usize>,
    /// The errors that ended connections whose clients are still around, for their
    /// later calls.
    ended: HashMap<u64, Error>,
    buf: Vec<u8>,
    /// How the driver waits while calls are under way: the most eager strategy of its
    /// connections (`Spin` before `Adaptive` with the longest spin, before `Block`).
    wait: WaitStrategy,
    /// How long the driver's waits for its servers have lasted lately, which sets how
    /// long the next one spins before it sleeps.
    learner: SpinLearner,
}

/// The more eager of two ways to wait: the one that spins longer.
fn more_eager(a: WaitStrategy, b: WaitStrategy) -> WaitStrategy {
    match (a, b) {
        (WaitStrategy::Spin, _) | (_, WaitStrategy::Spin) => WaitStrategy::Spin,
        (WaitStrategy::Adaptive { spin: x }, WaitStrategy::Adaptive { spin: y }) => {
            WaitStrategy::Adaptive { spin: x.max(y) }
        }
        (adaptive @ WaitStrategy::Adaptive { .. }, _) | (_, adaptive) => adaptive,
    }
}

impl GroupDriver {
    fn new() -> Result<GroupDriver, Error> {
        Ok(GroupDriver {
            poller: WatchedPoller::new()?,
            doorbells: Vec::new(),
            members: Vec::new(),
            free: Vec::new(),
            slot_of: HashMap::new(),
            ended: HashMap::new(),
            buf: Vec::new(),
            wait: WaitStrategy::Block,
            learner: SpinLearner::default(),
        })
    }

    /// Whether any call is under way, whose answer may be a moment away.
    fn awaiting_answers(&self) -> bool {
        self.members
            .iter()
            .flatten()
            .any(|member| !member.pending.is_empty())
    }

    /// Sets [`wait`](Self::wait) from the connections the driver has now.
    fn refresh_wait(&mut self) {
        self.wait = self
            .members
            .iter()
            .flatten()
            .map(|member| member.connection.wait_strategy())
            .fold(WaitStrategy::Block, more_eager);
    }

    async fn run(mut self, mut messages: mpsc::UnboundedReceiver<ToDriver>) {
        let mut open = true;
        let mut passes: u32 = 0;
        let mut events_due = Instant::now() + PEER_CHECK_INTERVAL;
        // Since when the driver has waited for its servers with calls under way, and how
        // long that wait may spin (from `learner`, which learns how long it took).
        let mut idle: Option<(Instant, Option<Duration>)> = None;
        loop {
            let mut progressed = false;
            // The poller is looked at while busy too, so that a server that died
            // without a word fails its calls even while other members keep us busy.
            if passes % EVENT_CHECK_PASSES == 0 && Instant::now() >= events_due {
                self.take_events();
                events_due = Instant::now() + PEER_CHECK_INTERVAL;
            }
            while open {
                match messages.try_recv() {
                    Ok(message) => {
                        self.take(message);
                        progressed = true;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            for slot in 0..self.members.len() {
                progressed |= self.drive(slot);
            }
            if !open && self.slot_of.is_empty() {
                return;
            }
            passes = passes.wrapping_add(1);
            if progressed {
                if let Some((since, _)) = idle.take() {
                    self.learner.learn(&self.wait, since.elapsed());
                }
                if passes % PASSES_PER_YIELD == 0 {
                    ::tokio::task::yield_now().await;
                }
                continue;
            }
            if !self.awaiting_answers() {
                // Nothing is asked, so nothing will come: sleep at once, and learn
                // nothing from how long the callers take to ask.
                idle = None;
            } else {
                // An answer may be a moment away: spin for what the learner allows,
                // letting the runtime run the callers between passes (they take what was
                // delivered, and grant streams their credit).
                let now = Instant::now();
                let (since, budget) =
                    *idle.get_or_insert_with(|| (now, self.learner.budget(&self.wait)));
                if budget.is_none_or(|budget| now - since < budget) {
                    yield_if_spinning_long(since, now);
                    ::tokio::task::yield_now().await;
                    continue;
                }
            }
            if !self.arm_all() {
                // Something came in as we armed: drive again, letting the runtime run
                // first, so that no path through this loop can hold a thread for ever.
                ::tokio::task::yield_now().await;
                continue;
            }
            ::tokio::select! {
                stirred = self.poller.stirred() => match stirred {
                    Ok(()) => self.take_events(),
                    Err(error) => {
                        self.end_all(&Error::io("waiting for replies", error));
                        return;
                    }
                },
                message = messages.recv(), if open => match message {
                    Some(message) => self.take(message),
                    None => open = false,
                },
            }
            self.stand_down();
        }
    }

    fn take(&mut self, message: ToDriver) {
        match message {
            ToDriver::Join {
                id,
                connection,
                shared,
            } => self.join(id, *connection, shared),
            ToDriver::Call { id, call } => {
                let Some(&slot) = self.slot_of.get(&id) else {
                    let error = self.ended.get(&id).map_or(Error::PeerDied, copy_of);
                    Pending {
                        sink: call.sink,
                        window: 0,
                        credit: 0,
                        send_credit: call.send_credit,
                        _permit: call.permit,
                    }
                    .end(Err(error));
                    return;
                };
                let member = self.members[slot]
                    .as_mut()
                    .expect("slot_of points at members");
                let pending = Pending {
                    sink: call.sink,
                    window: call.window,
                    credit: call.window,
                    send_credit: call.send_credit,
                    _permit: call.permit,
                };
                if let Err(pending) = member.pending.insert(call.correlation, pending) {
                    // Ids come from a counter that does not wrap in practice.
                    pending.end(Err(Error::Corrupted {
                        detail: "a call id was reused while its call was under way",
                    }));
                    return;
                }
                member.outbox.push_opening(call.correlation, call.message);
            }
            ToDriver::Cancel { id, correlation } => {
                let Some(member) = self.member_mut(id) else {
                    return;
                };
                // The call keeps its slot until the server says it has ended (`Ended`, or
                // its reply if that crossed our cancel): its handler may run for the
                // grace yet, and the server counts it until then.
                let Some(pending) = member.pending.get_mut(correlation) else {
                    return;
                };
                if !pending.is_live() {
                    return;
                }
                pending.tell(Err(Error::Cancelled));
                if member.outbox.withdraw(correlation) {
                    // Its opening never left: the server knows nothing of it, and its
                    // slot comes back now.
                    member.pending.complete(correlation);
                } else {
                    member.outbox.push(correlation, encode_cancel());
                }
            }
            ToDriver::Credit { id, correlation, n } => {
                let Some(member) = self.member_mut(id) else {
                    return;
                };
                if let Some(pending) = member.pending.get_mut(correlation) {
                    if pending.is_live() {
                        pending.credit = pending.credit.saturating_add(n);
                        member.outbox.push(correlation, encode_client_credit(n));
                    }
                }
            }
            ToDriver::Data {
                id,
                correlation,
                message,
            } => self.push_if_live(id, correlation, message),
            ToDriver::End { id, correlation } => self.push_if_live(id, correlation, encode_end()),
            ToDriver::Leave { id } => {
                self.ended.remove(&id);
                if let Some(&slot) = self.slot_of.get(&id) {
                    if let Some(member) = self.members[slot].as_mut() {
                        member.left = true;
                    }
                }
            }
        }
    }

    /// Queues `message` of call `correlation` on client `id`'s connection, if someone
    /// still waits for that call: after a cancel, the call's messages are for nobody.
    fn push_if_live(&mut self, id: u64, correlation: u64, message: Vec<u8>) {
        let Some(member) = self.member_mut(id) else {
            return;
        };
        if member
            .pending
            .get_mut(correlation)
            .is_some_and(|pending| pending.is_live())
        {
            member.outbox.push(correlation, message);
        }
    }

    /// The member whose client is `id`, if its connection is open.
    fn member_mut(&mut self, id: u64) -> Option<&mut Member> {
        let slot = *self.slot_of.get(&id)?;
        self.members[slot].as_mut()
    }

    fn join(&mut self, id: u64, connection: Connection, shared: Option<Arc<SharedDoorbell>>) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.members.push(None);
            self.members.len() - 1
        });
        let key = slot << 1;
        let watched = self
            .poller
            .add(connection.control(), key | 1)
            .and_then(|()| match &shared {
                Some(doorbell) => self.watch_doorbell(doorbell).map(Some),
                None => self.poller.add(connection.doorbell(), key).map(|()| None),
            });
        let doorbell = match watched {
            Ok(doorbell) => doorbell,
            Err(error) => {
                self.poller.remove(connection.control());
                self.free.push(slot);
                self.ended
                    .insert(id, Error::io("watching a new connection", error));
                return;
            }
        };
        self.slot_of.insert(id, slot);
        self.members[slot] = Some(Member {
            id,
            connection,
            doorbell,
            pending: InFlight::default(),
            outbox: Outbox::default(),
            blocked: None,
            peer_stirred: false,
            left: false,
        });
        self.refresh_wait();
    }

    /// Counts one more member on `doorbell`, watching it if it is new; returns its index.
    fn watch_doorbell(&mut self, doorbell: &Arc<SharedDoorbell>) -> std::io::Result<usize> {
        let known = self.doorbells.iter().position(|entry| {
            entry
                .as_ref()
                .is_some_and(|(known, _)| Arc::ptr_eq(known, doorbell))
        });
        if let Some(index) = known {
            if let Some((_, members)) = self.doorbells[index].as_mut() {
                *members += 1;
            }
            return Ok(index);
        }
        let index = self
            .doorbells
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                self.doorbells.push(None);
                self.doorbells.len() - 1
            });
        self.poller
            .add(&doorbell.bell, SHARED_DOORBELL_BIT | index)?;
        self.doorbells[index] = Some((doorbell.clone(), 1));
        Ok(index)
    }

    /// Counts one member less on the doorbell at `index`; the last one unwatches it.
    fn unwatch_doorbell(&mut self, index: usize) {
        let Some((doorbell, members)) = self.doorbells[index].as_mut() else {
            return;
        };
        *members -= 1;
        if *members == 0 {
            self.poller.remove(&doorbell.bell);
            self.doorbells[index] = None;
        }
    }

    /// Moves the member's requests into its ring and its replies to their callers.
    /// Returns whether anything moved.
    fn drive(&mut self, slot: usize) -> bool {
        let Some(member) = self.members[slot].as_mut() else {
            return false;
        };
        let buf = &mut self.buf;
        let result = (|| -> Result<bool, Error> {
            let (moved, blocked) = member.outbox.flush(&mut member.connection)?;
            member.blocked = blocked;
            let mut progressed = moved;
            // A syscall to check the peer only after its control socket stirred; the
            // check runs when the ring is found empty.
            let check_peer = member.peer_stirred;
            while let Some(received) = member.connection.try_recv_tagged(buf, check_peer)? {
                member.take(received.correlation, buf)?;
                progressed = true;
            }
            member.peer_stirred = false;
            Ok(progressed)
        })();
        match result {
            Ok(progressed) => {
                if member.left && member.pending.is_empty() && member.outbox.is_empty() {
                    self.remove(slot, None);
                }
                progressed
            }
            Err(error) => {
                self.remove(slot, Some(error));
                true
            }
        }
    }

    /// Closes the member in `slot`. With an error, its calls under way fail with it, and
    /// so will its later ones.
    fn remove(&mut self, slot: usize, error: Option<Error>) {
        let Some(mut member) = self.members[slot].take() else {
            return;
        };
        self.poller.remove(member.connection.control());
        match member.doorbell {
            Some(index) => self.unwatch_doorbell(index),
            None => self.poller.remove(member.connection.doorbell()),
        }
        self.slot_of.remove(&member.id);
        self.free.push(slot);
        let error = error.unwrap_or(Error::PeerDied);
        for waiting in member.pending.drain() {
            waiting.end(Err(copy_of(&error)));
        }
        if !member.left {
            self.ended.insert(member.id, error);
        }
        self.refresh_wait();
    }

    fn end_all(&mut self, error: &Error) {
        for slot in 0..self.members.len() {
            self.remove(slot, Some(copy_of(error)));
        }
    }

    /// Announces on every member that the driver is going to sleep: for replies, and for
    /// room if a request waits for it. Returns `false` if one of them turned out to have
    /// something: drive again, do not sleep.
    fn arm_all(&mut self) -> bool {
        let mut all_quiet = true;
        for slot in 0..self.members.len() {
            let Some(member) = self.members[slot].as_mut() else {
                continue;
            };
            match arm(&mut member.connection, true, member.blocked) {
                Ok(true) => {}
                Ok(false) => all_quiet = false,
                Err(error) => {
                    self.remove(slot, Some(error));
                    all_quiet = false;
                }
            }
        }
        all_quiet
    }

    /// After a sleep: resets the doorbells that rang, and has the members whose control
    /// socket stirred check their peer.
    fn take_events(&mut self) {
        let mut stirred = self.poller.take();
        for event in stirred.drain(..) {
            if event.key & SHARED_DOORBELL_BIT != 0 {
                let index = event.key & !SHARED_DOORBELL_BIT;
                if let Some(Some((doorbell, _))) = self.doorbells.get(index) {
                    doorbell.bell.drain();
                }
                continue;
            }
            let slot = event.key >> 1;
            let Some(member) = self.members.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if event.key & 1 == 0 {
                member.connection.settle_doorbell(true);
                if !event.hung_up {
                    continue;
                }
                member.connection.doorbell_hung_up();
            }
            member.peer_stirred = true;
            // A peer that is gone will never make room for what we still have to send.
            if member.blocked.is_some() {
                if let Err(error) = member.connection.ensure_peer_alive() {
                    self.remove(slot, Some(error));
                }
            }
        }
        self.poller.give_back(stirred);
    }

    /// After a sleep: takes down every announcement, so that servers stop ringing while
    /// the driver is awake and looks at every ring anyway.
    fn stand_down(&mut self) {
        for member in self.members.iter_mut().flatten() {
            member.connection.settle_doorbell(false);
        }
    }
}
