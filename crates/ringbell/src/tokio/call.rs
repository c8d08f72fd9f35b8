//! The server's side of one call: [`Call`], what a handler of
//! [`AsyncServer::serve_calls`](super::AsyncServer::serve_calls) gets. Its request, its
//! metadata and deadline, the client's streamed messages, a way to stream responses, and
//! whether the client has given up. The sweeper (`serve.rs`) holds the other end of each:
//! it moves what the handler sends into the ring, and tells the handler of credit and
//! cancellation through [`CallState`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use ::tokio::sync::{mpsc, Notify, Semaphore};

use crate::core::call::{
    add_to_pack, encode_item, encode_server_credit, is_pack, item_cost, packable, start_pack,
    Metadata, Mode, REQUEST_WINDOW,
};
use crate::error::Error;

/// What a call's handler and the sweeper share: whether the call is cancelled, and the
/// client's credit for streamed responses.
#[derive(Debug)]
pub(super) struct CallState {
    /// SYNC: set (SeqCst) before `cancel.notify_waiters()`; a waiter enables its
    /// `Notified` before it loads the flag, so it either sees the flag or is woken.
    cancelled: AtomicBool,
    cancel: Notify,
    /// What the client takes now of streamed responses, in [`item_cost`]s: the sweeper
    /// adds what the client's credit grants, and closes it when the call is cancelled.
    credit: Semaphore,
    /// Streamed responses the handler sent that the sweeper has not taken yet, packed
    /// for the wire as they come: the handler tells the sweeper only when this was empty,
    /// so a handler that sends faster than the sweeper sweeps pays a lock and a copy per
    /// item, not a message through the channel and an allocation.
    unsent: Mutex<Unsent>,
}

/// Streamed responses on their way to the sweeper: messages ready for the wire (packs, or
/// an `ITEM` too large to pack), and what they cost against the client's credit.
#[derive(Debug, Default)]
pub(super) struct Unsent {
    pub(super) messages: Vec<Vec<u8>>,
    pub(super) cost: u32,
}

impl Unsent {
    /// Adds `item` to the last message if it is a pack with room, or as a new message.
    fn push(&mut self, item: &[u8], cost: u32, limit: usize) {
        self.cost += cost;
        if !packable(item.len(), limit) {
            self.messages.push(encode_item(item));
            return;
        }
        if let Some(last) = self.messages.last_mut() {
            if is_pack(last) && add_to_pack(last, item, limit) {
                return;
            }
        }
        self.messages.push(start_pack(item, limit));
    }
}

impl CallState {
    pub(super) fn new(window: u32) -> Arc<CallState> {
        Arc::new(CallState {
            cancelled: AtomicBool::new(false),
            cancel: Notify::new(),
            credit: Semaphore::new(window as usize),
            unsent: Mutex::new(Unsent::default()),
        })
    }

    /// Cancels the call: the handler's waits end, and its sends fail.
    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel.notify_waiters();
        self.credit.close();
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The client granted `n` more streamed responses.
    pub(super) fn grant(&self, n: u32) {
        self.credit.add_permits(n as usize);
    }

    /// Takes the streamed responses the handler has sent since the last take.
    pub(super) fn take_unsent(&self) -> Unsent {
        std::mem::take(&mut *self.unsent.lock().unwrap_or_else(PoisonError::into_inner))
    }

    async fn cancelled(&self) {
        loop {
            let notified = self.cancel.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// A message a handler sends on its call, on its way to the sweeper.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) slot: usize,
    pub(super) generation: u64,
    pub(super) correlation: u64,
    /// A credit's message, encoded; empty for `Items`.
    pub(super) message: Vec<u8>,
    pub(super) kind: OutgoingKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutgoingKind {
    /// The call has streamed responses waiting in its [`CallState`]'s `unsent`.
    Items,
    /// A credit of this many messages for the client's stream.
    Credit(u32),
}

/// Where a call's messages go: the sweeper, and which connection and call they are of.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub(super) to_sweeper: mpsc::UnboundedSender<Outgoing>,
    pub(super) slot: usize,
    pub(super) generation: u64,
    pub(super) correlation: u64,
}

impl Link {
    fn send(&self, message: Vec<u8>, kind: OutgoingKind) -> Result<(), Error> {
        self.to_sweeper
            .send(Outgoing {
                slot: self.slot,
                generation: self.generation,
                correlation: self.correlation,
                message,
                kind,
            })
            .map_err(|_| Error::Cancelled)
    }
}

/// One call, as its handler sees it: see
/// [`AsyncServer::serve_calls`](super::AsyncServer::serve_calls).
///
/// A call is over when its handler returns: what it returns is the final reply. Before
/// that it may [`send`](Self::send) streamed responses, if the client asked for them
/// ([`Client::call_stream`](super::Client::call_stream) or
/// [`open`](super::Client::open)), and [`recv`](Self::recv) the client's streamed
/// messages, on a two-way call ([`open`](super::Client::open)).
#[derive(Debug)]
pub struct Call {
    /// The call's opening message; the request is its first `request_len` bytes.
    message: Vec<u8>,
    request_len: usize,
    metadata: Metadata,
    deadline: Option<Instant>,
    mode: Mode,
    /// The client's window, in bytes (0 on a unary call): what an item costs depends on it.
    window: u32,
    /// The largest pack of items the connection takes.
    pack_limit: usize,
    max_message_size: usize,
    state: Arc<CallState>,
    link: Link,
    /// The client's streamed messages, on a two-way call.
    inbound: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    /// Messages of the client's stream taken since we last granted it credit.
    taken: u32,
}

/// What the sweeper hands a new [`Call`].
pub(super) struct CallParts {
    pub(super) message: Vec<u8>,
    pub(super) request_len: usize,
    pub(super) metadata: Metadata,
    pub(super) deadline: Option<Instant>,
    pub(super) mode: Mode,
    pub(super) window: u32,
    pub(super) pack_limit: usize,
    pub(super) max_message_size: usize,
    pub(super) state: Arc<CallState>,
    pub(super) link: Link,
    pub(super) inbound: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
}

impl Call {
    pub(super) fn new(parts: CallParts) -> Call {
        Call {
            message: parts.message,
            request_len: parts.request_len,
            metadata: parts.metadata,
            deadline: parts.deadline,
            mode: parts.mode,
            window: parts.window,
            pack_limit: parts.pack_limit,
            max_message_size: parts.max_message_size,
            state: parts.state,
            link: parts.link,
            inbound: parts.inbound,
            taken: 0,
        }
    }

    /// The request's bytes.
    pub fn request(&self) -> &[u8] {
        &self.message[..self.request_len]
    }

    /// The request's bytes, owned (without a copy).
    pub fn into_request(mut self) -> Vec<u8> {
        self.message.truncate(self.request_len);
        std::mem::take(&mut self.message)
    }

    /// The metadata the client sent with the call.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// When the call's deadline passes, if the client gave it one
    /// ([`CallOptions::timeout`](super::CallOptions::timeout)). It travels as a duration,
    /// so this is the client's timeout counted from when the server took the request.
    /// When it passes, the call is cancelled.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the client takes streamed responses: it called
    /// [`call_stream`](super::Client::call_stream) or [`open`](super::Client::open).
    pub fn is_streaming(&self) -> bool {
        self.mode.takes_stream()
    }

    /// Whether the call has been cancelled: its client gave up on it (dropped its future
    /// or stream), its deadline passed, or its connection ended. Once true, nothing more
    /// of the call reaches the client, and the handler should return; one that has not
    /// returned within [`ServerConfig::cancel_grace`](crate::ServerConfig::cancel_grace)
    /// has its future dropped.
    pub fn is_cancelled(&self) -> bool {
        self.state.is_cancelled()
    }

    /// Completes when the call is cancelled (see [`is_cancelled`](Self::is_cancelled)),
    /// to race against the work in a `tokio::select!`.
    pub async fn cancelled(&self) {
        self.state.cancelled().await;
    }

    /// Sends one streamed response. Waits while the client's credit is used up (it has
    /// not taken the responses sent so far: the call's window, in bytes), so a slow reader
    /// slows the handler rather than filling the server's memory. The items sent while
    /// the connection is busy travel packed, several to a message.
    ///
    /// # Errors
    ///
    /// [`Error::Cancelled`] once the call is cancelled (return then);
    /// [`Error::NotStreaming`] if the client made a unary call; [`Error::TooLarge`] if
    /// `message` is larger than the connection's `max_message_size`. Nothing is sent
    /// then, and the call goes on.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), Error> {
        if !self.mode.takes_stream() {
            return Err(Error::NotStreaming);
        }
        if message.len() > self.max_message_size {
            return Err(Error::TooLarge {
                len: message.len(),
                max: self.max_message_size,
            });
        }
        let cost = item_cost(message.len(), self.window);
        match self.state.credit.acquire_many(cost).await {
            // The credit is spent: the sweeper counts the response as sent when it takes it.
            Ok(permit) => permit.forget(),
            Err(_closed) => return Err(Error::Cancelled),
        }
        let first = {
            let mut unsent = self
                .state
                .unsent
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let first = unsent.messages.is_empty();
            unsent.push(message, cost, self.pack_limit);
            first
        };
        if first {
            self.link.send(Vec::new(), OutgoingKind::Items)?;
        }
        Ok(())
    }

    /// The client's next streamed message, on a two-way call
    /// ([`Client::open`](super::Client::open)). `None` once the client has finished its
    /// stream, on a call that is not two-way, and once the call is cancelled.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let inbound = self.inbound.as_mut()?;
        let message = ::tokio::select! {
            biased;
            () = self.state.cancelled() => None,
            message = inbound.recv() => message,
        };
        let Some(message) = message else {
            self.inbound = None;
            return None;
        };
        // Credit back in halves of the window: one message per half rather than per
        // message, and the client never waits while half the window is still in flight.
        self.taken += 1;
        if self.taken >= REQUEST_WINDOW / 2 {
            let taken = std::mem::take(&mut self.taken);
            let _ = self
                .link
                .send(encode_server_credit(taken), OutgoingKind::Credit(taken));
        }
        Some(message)
    }
}

#[cfg(feature = "codec")]
impl Call {
    /// [`request`](Self::request), decoded as a `T` (feature `codec`).
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the request is not a valid `T`.
    pub fn request_value<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        crate::codec::decode(self.request())
    }

    /// [`send`](Self::send) of `value`, encoded with postcard (feature `codec`).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), and [`Error::Codec`] if `value` cannot be encoded.
    pub async fn send_value<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), Error> {
        let bytes = crate::codec::encode(value)?;
        self.send(&bytes).await
    }

    /// [`recv`](Self::recv), decoded as a `T` (feature `codec`): `None` as for `recv`.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the message is not a valid `T`.
    pub async fn recv_value<T: serde::de::DeserializeOwned>(&mut self) -> Option<Result<T, Error>> {
        let message = self.recv().await?;
        Some(crate::codec::decode(&message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::call::{decode_from_server, FromServer, Pack, PACK_LIMIT};

    /// What the sweeper takes is what the handler sent, in order, packed under the limit
    /// (a large item alone), with the cost of every item.
    #[test]
    fn unsent_items_are_packed_in_order_with_their_cost() {
        let mut unsent = Unsent::default();
        let big = vec![3u8; 70_000];
        let items: Vec<&[u8]> = vec![b"one", b"", &big, b"two", b"three"];
        for item in &items {
            unsent.push(item, item_cost(item.len(), 1 << 20), PACK_LIMIT);
        }
        let expected_cost: u32 = items.iter().map(|i| item_cost(i.len(), 1 << 20)).sum();
        assert_eq!(unsent.cost, expected_cost);
        assert_eq!(unsent.messages.len(), 3, "a pack, the large item, a pack");
        let mut taken: Vec<Vec<u8>> = Vec::new();
        for message in &unsent.messages {
            match decode_from_server(message).unwrap() {
                FromServer::Item(len) => taken.push(message[..len].to_vec()),
                FromServer::Items { len, .. } => {
                    let mut pack = Pack::new(message[..len].to_vec());
                    while let Some(item) = pack.next_item() {
                        taken.push(item);
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        let expected: Vec<Vec<u8>> = items.iter().map(|i| i.to_vec()).collect();
        assert_eq!(taken, expected);
    }
}
