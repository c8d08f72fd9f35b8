//! The client's side of calls beyond request/reply: [`CallOptions`] (a timeout that
//! travels with the call, metadata, a stream's window), [`ResponseStream`] (streamed
//! responses, then the final reply) and [`RequestSender`] (the client's half of a two-way
//! call). The driver that moves their messages is in `client.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::tokio::sync::{mpsc, Semaphore};

use super::client::ToDriver;
use crate::core::call::{item_cost, Metadata, Pack, MAX_STREAM_WINDOW};
use crate::error::Error;

/// The window of streamed responses a call asks for by default: 64 KiB, as HTTP/2's
/// default stream window.
///
/// Why: enough that a reader a little behind never stalls the handler (it grants more at
/// half the window, so 32 KiB are always in flight: 400 tokens of 64 bytes, the
/// [`ITEM_OVERHEAD`](crate::tokio::ITEM_OVERHEAD) included, which hides a credit's round
/// trip even through a kernel wake-up), small enough that a stream never read holds about
/// 64 KiB in each side's memory (or one item, if an item is larger). It was 32 messages,
/// whatever their size, until the window was counted in bytes: a round trip of credit per
/// 16 messages bounded one stream to about 1–2 M items/s (docs/BENCHMARKS.md, "Streamed
/// calls").
pub const DEFAULT_STREAM_WINDOW: u32 = 64 << 10;

/// How a call is made: its timeout, its metadata, and the window of a stream.
///
/// ```
/// use ringbell::tokio::CallOptions;
/// use std::time::Duration;
///
/// let options = CallOptions::default()
///     .timeout(Duration::from_secs(2))
///     .metadata("request-id", b"42");
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct CallOptions {
    pub(super) timeout: Option<Duration>,
    pub(super) metadata: Metadata,
    pub(super) window: u32,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            timeout: None,
            metadata: Metadata::default(),
            window: DEFAULT_STREAM_WINDOW,
        }
    }
}

impl CallOptions {
    /// The call may take at most `timeout`, counted from when it is made (waiting for a
    /// place among the client's outstanding calls included). It travels with the call,
    /// as a duration, so the server cancels its handler when it passes; the client gets
    /// [`Error::Timeout`]. Default: none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds a metadata entry, which the handler reads with
    /// [`Call::metadata`](super::Call::metadata). Keys may repeat. The limits are
    /// [`Metadata`]'s: a call over them fails with [`Error::InvalidConfig`] before
    /// anything is sent.
    pub fn metadata(mut self, key: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.metadata.push(key.into(), value.as_ref().to_vec());
        self
    }

    /// How many bytes of streamed responses may be in flight before the client has taken
    /// any (default [`DEFAULT_STREAM_WINDOW`], at least 1, at most
    /// [`MAX_STREAM_WINDOW`], 1 MiB: a server grants no call more). Each item counts its
    /// length plus [`ITEM_OVERHEAD`](crate::tokio::ITEM_OVERHEAD) bytes; an item larger
    /// than the window is sent once nothing else is in flight. The client grants more as
    /// the stream is read, half a window at a time, and all it has taken whenever it waits.
    ///
    /// Named for its unit: it was `window(messages)` before protocol version 5, and a
    /// count of messages passed as bytes would quietly allow a single item in flight.
    pub fn window_bytes(mut self, bytes: u32) -> Self {
        self.window = bytes.clamp(1, MAX_STREAM_WINDOW);
        self
    }

    /// When the call's time is up, counted from now.
    pub(super) fn deadline_from_now(&self) -> Option<Instant> {
        self.timeout
            .and_then(|timeout| Instant::now().checked_add(timeout))
    }
}

/// What the driver sends a stream.
#[derive(Debug)]
pub(super) enum Event {
    Item(Vec<u8>),
    /// Several items, in order, in one message.
    Items(Pack),
    End(Result<Vec<u8>, Error>),
}

/// Tells the driver that a call was given up, unless it ended first.
#[derive(Debug)]
pub(super) struct CallGuard {
    pub(super) driver: mpsc::UnboundedSender<ToDriver>,
    pub(super) member: u64,
    pub(super) correlation: u64,
    pub(super) armed: bool,
}

impl CallGuard {
    /// The call ended: nothing to cancel.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Cancels the call now (on the server too), once.
    pub(super) fn cancel(&mut self) {
        if std::mem::take(&mut self.armed) {
            let _ = self.driver.send(ToDriver::Cancel {
                id: self.member,
                correlation: self.correlation,
            });
        }
    }

    fn credit(&self, n: u32) {
        let _ = self.driver.send(ToDriver::Credit {
            id: self.member,
            correlation: self.correlation,
            n,
        });
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A copy of an error a stream ended with, for [`ResponseStream::reply`] after the
/// stream has yielded it.
fn copy_of(error: &Error) -> Error {
    match error {
        Error::Handler { message } => Error::Handler {
            message: message.clone(),
        },
        Error::Timeout => Error::Timeout,
        Error::Cancelled => Error::Cancelled,
        other => other.terminal_copy().unwrap_or(Error::PeerDied),
    }
}

/// The responses of a streaming call ([`Client::call_stream`](super::Client::call_stream),
/// [`Client::open`](super::Client::open)): the messages the handler streams, in order,
/// then its final reply ([`reply`](Self::reply)).
///
/// [`next`](Self::next) gives each message as `Some(Ok(message))`. Then:
///
/// - `None`: the stream is complete, and [`reply`](Self::reply) gives the handler's
///   final response;
/// - `Some(Err(error))`, then `None`: the stream was cut, after the messages before it:
///   [`Error::Handler`] if the handler failed or panicked, [`Error::PeerDied`] if the
///   connection ended, [`Error::Timeout`] if the call's timeout passed, [`Error::Corrupted`]
///   if the server broke the protocol. `reply` then returns the same error.
///
/// Dropping the stream before its end cancels the call on the server. It also implements
/// [`futures_core::Stream`].
///
/// ```no_run
/// # async fn run(client: ringbell::tokio::Client) -> Result<(), ringbell::Error> {
/// let mut tokens = client.call_stream(b"write a haiku").await?;
/// while let Some(token) = tokens.next().await {
///     print!("{}", String::from_utf8_lossy(&token?));
/// }
/// let summary = tokens.reply().await?;
/// # let _ = summary;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ResponseStream {
    events: mpsc::UnboundedReceiver<Event>,
    guard: CallGuard,
    /// The items of a pack not taken yet.
    pack: Pack,
    /// The call's window, in bytes: what an item costs depends on it.
    window: u32,
    /// Half the window: the client grants credit in steps of this much.
    credit_step: u32,
    /// The cost of the items taken since the last grant.
    taken: u32,
    /// When the call's time is up.
    deadline: Option<Pin<Box<::tokio::time::Sleep>>>,
    /// The end, once seen: the final reply, or the error that cut the stream.
    outcome: Option<Result<Vec<u8>, Error>>,
    /// The stream has ended; with an error, `next` has yielded it.
    ended: bool,
}

impl ResponseStream {
    pub(super) fn new(
        events: mpsc::UnboundedReceiver<Event>,
        guard: CallGuard,
        window: u32,
        deadline: Option<Instant>,
    ) -> ResponseStream {
        ResponseStream {
            events,
            guard,
            pack: Pack::default(),
            window,
            credit_step: (window / 2).max(1),
            taken: 0,
            deadline: deadline.map(|at| Box::pin(::tokio::time::sleep_until(at.into()))),
            outcome: None,
            ended: false,
        }
    }

    /// The next streamed message; `None` at the end of the stream. See the
    /// [type's docs](Self) for how a cut stream ends.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, Error>> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    /// Waits for the end of the call, discarding the streamed messages not taken yet, and
    /// returns the handler's final reply.
    ///
    /// # Errors
    ///
    /// The error that cut the stream, as [`next`](Self::next) gives it.
    pub async fn reply(mut self) -> Result<Vec<u8>, Error> {
        while self.next().await.is_some() {}
        self.outcome.take().unwrap_or(Err(Error::PeerDied))
    }

    fn end(&mut self, outcome: Result<Vec<u8>, Error>) -> Option<Result<Vec<u8>, Error>> {
        self.ended = true;
        self.deadline = None;
        match outcome {
            Ok(reply) => {
                self.guard.disarm();
                self.outcome = Some(Ok(reply));
                None
            }
            Err(error) => {
                // A timeout ends the call on the server too; any other error ended it.
                if matches!(error, Error::Timeout) {
                    self.guard.cancel();
                } else {
                    self.guard.disarm();
                }
                self.outcome = Some(Err(copy_of(&error)));
                Some(Err(error))
            }
        }
    }

    /// Counts `item` as taken, granting the server more credit each half window (and
    /// whenever the stream is about to wait: see `poll_message`).
    fn took(&mut self, item: Vec<u8>) -> Vec<u8> {
        self.taken += item_cost(item.len(), self.window);
        if self.taken >= self.credit_step {
            self.guard.credit(std::mem::take(&mut self.taken));
        }
        item
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Vec<u8>, Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(item) = self.pack.next_item() {
            return Poll::Ready(Some(Ok(self.took(item))));
        }
        // Messages that arrived in time are delivered before the timeout is.
        let event = match self.events.poll_recv(cx) {
            Poll::Ready(event) => event,
            Poll::Pending => {
                if let Some(deadline) = self.deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(self.end(Err(Error::Timeout)));
                    }
                }
                // About to wait: give back all that was taken, not only whole half windows.
                // Items differ in cost, so the next one may need more than the server
                // has left while we keep some back (a 1-byte item, then one larger than
                // the window): both sides would wait for ever.
                if self.taken > 0 {
                    self.guard.credit(std::mem::take(&mut self.taken));
                }
                return Poll::Pending;
            }
        };
        Poll::Ready(match event {
            Some(Event::Item(message)) => Some(Ok(self.took(message))),
            Some(Event::Items(mut pack)) => {
                // The driver checked the pack: it holds at least one item.
                let first = pack.next_item().unwrap_or_default();
                self.pack = pack;
                Some(Ok(self.took(first)))
            }
            Some(Event::End(outcome)) => self.end(outcome),
            // The driver has gone: its runtime is shutting down.
            None => self.end(Err(Error::PeerDied)),
        })
    }
}

impl futures_core::Stream for ResponseStream {
    type Item = Result<Vec<u8>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_message(cx)
    }
}

/// The client's half of a two-way call ([`Client::open`](super::Client::open)): streams
/// messages to the handler, which takes them with [`Call::recv`](super::Call::recv).
/// [`finish`](Self::finish) (or dropping it) ends the stream; the call goes on until the
/// handler returns.
#[derive(Debug)]
pub struct RequestSender {
    pub(super) driver: mpsc::UnboundedSender<ToDriver>,
    pub(super) member: u64,
    pub(super) correlation: u64,
    /// Messages the server takes now; closed when the call ends.
    pub(super) credit: Arc<Semaphore>,
    pub(super) max_message_size: usize,
    pub(super) finished: bool,
}

impl RequestSender {
    /// Streams one message to the handler. Waits while the server's credit is used up
    /// (the handler has not taken the messages sent so far).
    ///
    /// # Errors
    ///
    /// [`Error::Cancelled`] if the call has ended (its reply came, it was cancelled, or
    /// its connection ended: the [`ResponseStream`] says which); [`Error::TooLarge`] if
    /// `message` is larger than the connection's `max_message_size`.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), Error> {
        if message.len() > self.max_message_size {
            return Err(Error::TooLarge {
                len: message.len(),
                max: self.max_message_size,
            });
        }
        match self.credit.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_closed) => return Err(Error::Cancelled),
        }
        self.driver
            .send(ToDriver::Data {
                id: self.member,
                correlation: self.correlation,
                message: crate::core::call::encode_data(message),
            })
            .map_err(|_| Error::PeerDied)
    }

    /// Ends the stream: the handler's [`Call::recv`](super::Call::recv) returns `None`
    /// after the messages sent.
    ///
    /// # Errors
    ///
    /// [`Error::PeerDied`] if the client's driver has gone (its runtime is shutting down).
    pub async fn finish(mut self) -> Result<(), Error> {
        self.finished = true;
        self.driver
            .send(ToDriver::End {
                id: self.member,
                correlation: self.correlation,
            })
            .map_err(|_| Error::PeerDied)
    }
}

impl Drop for RequestSender {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.driver.send(ToDriver::End {
                id: self.member,
                correlation: self.correlation,
            });
        }
    }
}
