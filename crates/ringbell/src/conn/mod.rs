//! [`Connection`]: two rings in a shared segment, two doorbells and a control channel.
//!
//! - this file: the type, its public API, and its end (`Drop`);
//! - [`send`]: putting messages into the ring, large ones through [`large`] (in chunks
//!   where no region can be had), and waiting for room;
//! - [`receive`]: taking messages out, checking every frame the peer wrote, large ones out
//!   of the peer's region, reassembling chunks;
//! - [`large`]: the large-message regions, ours and the peer's: made, granted, mapped,
//!   copied into and out of;
//! - [`batch`]: taking every message waiting at once, into a [`Batch`];
//! - [`wake`]: waking the peer and being woken, the event-loop side of that (doorbells),
//!   and noticing the peer's death;
//! - [`segment`]: the shared segment, laid out and checked;
//! - [`slot`]: a server's count of its connections.

mod batch;
mod budget;
mod large;
mod receive;
mod segment;
mod send;
mod slot;
mod wake;

use std::path::Path;
use std::time::Duration;

use crate::config::{ClientConfig, WaitStrategy};
use crate::core::layout::{SegmentHeader, CLIENT_TO_SERVER, SERVER_TO_CLIENT};
use crate::core::ring::{Consumer, PackCursor, Producer, RingError};
use crate::core::sync::Ordering;
use crate::error::Error;
use crate::handshake::Carries;
use crate::sys::{ControlStream, Doorbell, DoorbellRinger};

pub use batch::{Batch, BatchIter};
#[cfg(ringbell_async)]
pub(crate) use budget::{Budget, Charge};
use receive::{PartialMessage, Patience, Quiet};
pub(crate) use segment::Segment;
pub(crate) use send::Publish;
#[cfg(ringbell_async)]
pub(crate) use send::{Pushed, SendProgress};
pub(crate) use slot::{ConnectionSlot, ConnectionSlots};
#[cfg(ringbell_async)]
pub(crate) use wake::WaitFor;
use wake::{rings, wake, Learned};

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

impl Side {
    /// The ring this side produces into; also its index in `SegmentHeader::closed`.
    fn tx_index(self) -> usize {
        match self {
            Side::Server => SERVER_TO_CLIENT,
            Side::Client => CLIENT_TO_SERVER,
        }
    }

    fn rx_index(self) -> usize {
        1 - self.tx_index()
    }
}

/// Per-connection settings, resolved from the server's and the client's configs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) wait: WaitStrategy,
    pub(crate) max_message_size: usize,
    pub(crate) send_timeout: Option<Duration>,
    /// What the connection carries, as agreed in the handshake.
    pub(crate) carries: Carries,
    /// Close the connection after this long with nothing moving and nothing under way.
    pub(crate) idle_timeout: Option<Duration>,
    /// Close the connection after this long stopped in the middle of a message.
    pub(crate) stall_timeout: Option<Duration>,
    /// On a connection of calls, how many the server takes at once (its
    /// `concurrent_requests`, sent in the Welcome): a client keeps no more outstanding.
    /// Read by the async `Client` only (not yet on Windows).
    #[cfg_attr(not(ringbell_async), allow(dead_code))]
    pub(crate) concurrent_calls: usize,
}

/// Which way a message goes, seen from one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Sending,
    Receiving,
}

/// The most bytes a message may carry on the wire: `max_message_size`, and on a connection
/// of calls what the call protocol adds to it (`core/call.rs`): a request's trailer and
/// metadata ([`REQUEST_ROOM`](crate::core::call::REQUEST_ROOM)) towards the server, a
/// kind byte ([`REPLY_ROOM`](crate::core::call::REPLY_ROOM)) towards the client. So the
/// limit a user sets is the payload's: a request, a streamed message or a response may
/// be as large as it. A plain message above `max_message_size` is refused on both ends.
fn wire_limit(settings: &Settings, side: Side, direction: Direction) -> usize {
    if settings.carries != Carries::Calls {
        return settings.max_message_size;
    }
    let towards_server = matches!(
        (side, direction),
        (Side::Client, Direction::Sending) | (Side::Server, Direction::Receiving)
    );
    let room = if towards_server {
        crate::core::call::REQUEST_ROOM
    } else {
        crate::core::call::REPLY_ROOM
    };
    settings.max_message_size.saturating_add(room)
}

fn corrupted(error: RingError) -> Error {
    Error::Corrupted { detail: error.0 }
}

/// A bidirectional message channel to one peer process, over shared memory.
///
/// Made by [`Server::accept`](crate::Server::accept) on the server and
/// [`Connection::connect`] on the client; both ends have the same API. Messages arrive
/// whole and in order; each `send` is one message. `send` blocks while the ring is full
/// and never drops a message; a message larger than one frame (a quarter of the ring)
/// goes through a shared region of the sender's, made on first use (at most
/// 2 × [`max_message_size`](Self::max_message_size) per direction).
///
/// A connection is one producer and one consumer: `send` and `recv` take `&mut self`.
/// Move it to the thread that uses it (it is `Send`).
///
/// Dropping a connection tells the peer at once: its blocked `recv` or `send` returns
/// [`Error::PeerDied`] after any messages already sent have been received. If the process
/// dies instead, the peer notices within about 50 ms (a waiting side checks its peer's
/// control channel that often).
///
/// For event loops of your own, [`arm_doorbell`](Self::arm_doorbell) and
/// [`try_recv`](Self::try_recv), with the OS handles to wait on from the per-OS extension
/// traits (on Unix, [`ConnectionExt`](crate::os::unix::ConnectionExt)).
///
/// # Examples
///
/// ```no_run
/// use ringbell::{ClientConfig, Connection};
/// use std::time::Duration;
///
/// let mut conn = Connection::connect("/tmp/app.sock", ClientConfig::default())?;
/// conn.send(b"ping")?;
/// let mut reply = Vec::new();
/// let n = conn.recv(&mut reply, Some(Duration::from_secs(1)))?;
/// assert_eq!(n, reply.len());
/// # Ok::<(), ringbell::Error>(())
/// ```
#[derive(Debug)]
pub struct Connection {
    tx: Producer,
    rx: Consumer,
    /// Keeps the mapping that `tx` and `rx` point into alive: declared after them and never
    /// handed out.
    segment: Segment,
    control: ControlStream,
    /// Rung by the peer when this side announced that it sleeps on its doorbell (in an
    /// event loop, or on a backend without a shared-memory wait).
    own_doorbell: Doorbell,
    /// Rung by us when the peer announced that it sleeps on its doorbell.
    peer_doorbell: DoorbellRinger,
    side: Side,
    settings: Settings,
    rx_partial: Option<PartialMessage>,
    /// The pack whose messages are being received: its frame stays in the ring until its
    /// last message is taken.
    rx_pack: Option<PackCursor>,
    /// A chunked send timed out: the receiver must be told to drop its chunks before the
    /// next message.
    tx_abort_pending: bool,
    /// Our large-message region, made on first use (`large.rs`).
    tx_large: large::Outgoing,
    /// The peer's large-message region, mapped when its first `Large` frame arrives.
    rx_large: Option<large::IncomingRegion>,
    /// Whether `arm_doorbell` announced a doorbell wait that is still outstanding.
    doorbell_armed: bool,
    /// The error that ended this connection, returned again by every later call.
    broken: Option<Error>,
    /// When a wait should next check, with a syscall, that the peer is still alive. Kept
    /// across calls, so that a loop of short waits checks as often as one long one.
    peer_check_due: Option<std::time::Instant>,
    /// How soon this side's waits for data and for room have ended lately, which sets how
    /// long the next ones spin (`core::wait::SpinLearner`).
    learned: Learned,
    /// On a server, this connection's place under its connection limit, freed on drop.
    slot: Option<ConnectionSlot>,
    /// Doorbell rings are recorded in `ring_owed` instead of made (a server's sweeper
    /// makes them after its sweep, once per doorbell).
    defer_rings: bool,
    /// A deferred ring not made yet. Atomic only so that `Connection` stays `Sync`.
    ring_owed: std::sync::atomic::AtomicBool,
    /// The last receive left a chunked message's first chunk in the ring for want of room
    /// in the server's memory budget.
    awaiting_budget: bool,
    /// For the idle and stall timeouts: when the indices last moved.
    quiet: Quiet,
}

impl Connection {
    pub(crate) fn new(
        segment: Segment,
        side: Side,
        control: ControlStream,
        own_doorbell: Doorbell,
        peer_doorbell: DoorbellRinger,
        settings: Settings,
    ) -> Connection {
        let grants_outlive_us = control.grants_outlive_sender();
        Connection {
            tx: Producer::new(segment.raw_ring(side.tx_index())),
            rx: Consumer::new(segment.raw_ring(side.rx_index())),
            segment,
            control,
            own_doorbell,
            peer_doorbell,
            side,
            settings,
            rx_partial: None,
            rx_pack: None,
            tx_abort_pending: false,
            tx_large: large::Outgoing::new(grants_outlive_us),
            rx_large: None,
            doorbell_armed: false,
            broken: None,
            peer_check_due: None,
            learned: Learned::default(),
            slot: None,
            defer_rings: false,
            ring_owed: std::sync::atomic::AtomicBool::new(false),
            awaiting_budget: false,
            quiet: Quiet::new(),
        }
    }

    /// The server's memory budget, on a server's connection.
    pub(crate) fn budget(&self) -> Option<&std::sync::Arc<budget::Budget>> {
        self.slot.as_ref().map(ConnectionSlot::budget)
    }

    /// Counts this connection under its server's limit until it is dropped.
    pub(crate) fn hold_slot(&mut self, slot: ConnectionSlot) {
        self.slot = Some(slot);
    }

    /// Connects to the server listening at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if nothing listens there, or if this process is out of file
    /// descriptors (a connection takes three); [`Error::PermissionDenied`] if the server
    /// does not admit this uid, or this client does not trust the server's
    /// ([`ClientConfig::trust_server_uid`]); [`Error::ServerBusy`] if the server is at its
    /// connection limit or out of fds; [`Error::Handshake`] if the other end is not a
    /// compatible ringbell server, sends a malformed or unsafe segment, or does not answer
    /// within [`ClientConfig::connect_timeout`].
    pub fn connect(path: impl AsRef<Path>, config: ClientConfig) -> Result<Connection, Error> {
        crate::handshake::connect(path.as_ref(), &config)
    }

    /// Sends one message, waiting while the ring is full.
    ///
    /// # Errors
    ///
    /// * [`Error::TooLarge`] if `msg` exceeds the connection's maximum message size (nothing
    ///   is sent, the connection stays usable);
    /// * [`Error::Timeout`] if a send timeout is configured and the peer did not make room
    ///   in time (the message is not delivered, not even in part);
    /// * [`Error::PeerDied`] if the peer closed or died;
    /// * [`Error::Corrupted`] if the peer broke the ring's invariants.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.send_with_correlation(msg, 0)
    }

    /// Sends one message of exactly `len` bytes that `fill` writes straight into the ring,
    /// so that a serializer writes into the shared memory without a buffer of its own
    /// (the codec's [`send_value`](Self::send_value) does). Waits, as
    /// [`send`](Self::send) does, until the ring has room, then calls `fill` once, with
    /// `len` zeroed bytes.
    ///
    /// * The length is fixed: the message is `len` bytes, and the bytes `fill` does not
    ///   write are zero.
    /// * If `fill` returns an error, or panics, nothing is sent and the connection stays
    ///   usable; the error (or the panic) is passed on.
    /// * A message larger than one frame (a quarter of the ring) cannot be written in
    ///   place: `fill` then writes into a buffer, which is sent as [`send`](Self::send)
    ///   sends it (through the large-message region).
    ///
    /// `fill` writes into memory that the peer maps too. An honest peer never touches it
    /// before the message is sent; a hostile one could change it under `fill`, which only
    /// spoils the message it receives. So write the bytes; do not read back from the
    /// slice anything you rely on.
    ///
    /// ```no_run
    /// # use ringbell::{ClientConfig, Connection, Error};
    /// # let mut conn = Connection::connect("/tmp/app.sock", ClientConfig::default())?;
    /// let (id, name) = (7u32, "open");
    /// conn.send_with(4 + name.len(), |buf| {
    ///     buf[..4].copy_from_slice(&id.to_le_bytes());
    ///     buf[4..].copy_from_slice(name.as_bytes());
    ///     Ok::<(), Error>(())
    /// })?;
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `fill`'s error, or, converted into `E`, those of [`send`](Self::send).
    pub fn send_with<E: From<Error>>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.check_sendable_len(len)?;
        if len > crate::core::ring::max_frame_payload(self.segment.capacity()) {
            let mut buf = vec![0; len];
            fill(&mut buf)?;
            return Ok(self.send(&buf)?);
        }
        self.send_in_place(len, fill)
    }

    /// Sends every message of `msgs`, in order, as [`feed`](Self::feed) each and then
    /// [`flush`](Self::flush): the peer is shown them with one store of the ring's tail
    /// and woken at most once, instead of once per message. Nothing waits for a batch to
    /// fill: what is written is sent when this returns.
    ///
    /// Messages of up to 1 KiB travel packed: several share one frame of the ring, each
    /// behind a 4-byte length instead of a 16-byte header of its own, and the connection's
    /// checks (still open, the peer still there) are made once for the batch, not once
    /// per message. So a batch of small messages costs the sender little more than
    /// copying them, and the receiver one frame to check; the receiver still gets them
    /// one by one from [`recv`](Self::recv), or many at once from
    /// [`recv_batch`](Self::recv_batch), whichever it calls. A pack's room in the ring
    /// (at most a quarter of it) goes back to the sender when its last message has been
    /// received, not message by message: a peer that takes one message of a pack and
    /// then waits to send holds that room meanwhile.
    ///
    /// ```no_run
    /// # use ringbell::{ClientConfig, Connection};
    /// # let mut conn = Connection::connect("/tmp/app.sock", ClientConfig::default())?;
    /// let tokens: [&[u8]; 3] = [b"Hel", b"lo", b"!"];
    /// conn.send_batch(&tokens)?;
    /// # Ok::<(), ringbell::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), for the first message that fails; the messages before it
    /// are sent.
    pub fn send_batch(&mut self, msgs: &[&[u8]]) -> Result<(), Error> {
        let fed = self.feed_all(msgs);
        self.flush()?;
        fed
    }

    /// Writes one message into the ring without showing it to the peer yet, as a
    /// `futures` `Sink`'s `feed` does; [`flush`](Self::flush) shows it, with everything
    /// fed before, at the cost of one message. Waits, like [`send`](Self::send), while the
    /// ring is full, and then shows the peer what it has so far, so that it can make room.
    ///
    /// A message fed and not flushed is still sent: by the next [`send`](Self::send) or
    /// `flush`, by any receive or wait on this connection (so a request fed and then
    /// waited for cannot hang), or when the connection is dropped.
    ///
    /// A message of up to 1 KiB goes into the frame the messages fed before it are in,
    /// while it has room, as [`send_batch`](Self::send_batch) says.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn feed(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.feed_all(&[msg])
    }

    /// Shows the peer every message [`feed`](Self::feed) wrote, and wakes it if it sleeps.
    /// One store of the ring's tail, and at most one wake-up, whatever their number.
    ///
    /// # Errors
    ///
    /// The error that ended the connection earlier, if one did.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.usable()?;
        self.publish_sent();
        Ok(())
    }

    /// Receives the next message into `buf`, replacing its contents, and returns its
    /// length. Waits at most `timeout` (`None`: as long as the peer lives).
    ///
    /// # Errors
    ///
    /// * [`Error::Timeout`] if no whole message arrived in time (a message that arrived in
    ///   part is kept and completed by the next call);
    /// * [`Error::PeerDied`] once the peer has closed or died and every message it sent
    ///   has been received;
    /// * [`Error::Corrupted`] if the peer broke the protocol;
    /// * [`Error::Idle`] if the connection's idle timeout
    ///   ([`ServerConfig::idle_timeout`](crate::ServerConfig::idle_timeout),
    ///   [`ClientConfig::idle_timeout`]) or a server's stall timeout passed with nothing
    ///   moving; the connection is then closed.
    ///
    /// On a server, a message larger than one frame also waits for room in the server's
    /// [`memory_budget`](crate::ServerConfig::memory_budget), within the same timeout.
    pub fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<usize, Error> {
        let deadline = timeout.and_then(crate::core::wait::deadline_after);
        match self.receive(buf, Patience::Until(deadline))? {
            Some(received) => Ok(received.len),
            None => Err(Error::Timeout),
        }
    }

    /// Receives the next message if one is already there, without waiting.
    ///
    /// Returns `Ok(None)` if none is. This is the receiving half of event-loop use, with
    /// [`arm_doorbell`](Self::arm_doorbell).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), except that it never times out.
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<Option<usize>, Error> {
        Ok(self
            .receive(buf, Patience::NoWait { check_peer: true })?
            .map(|received| received.len))
    }

    /// This side's doorbell, for the per-OS extension traits and the event-loop drivers.
    pub(crate) fn doorbell(&self) -> &Doorbell {
        &self.own_doorbell
    }

    /// The control channel, for the per-OS extension traits and the event-loop drivers.
    pub(crate) fn control(&self) -> &ControlStream {
        &self.control
    }

    /// The largest message this connection carries, as decided by the server.
    pub fn max_message_size(&self) -> usize {
        self.settings.max_message_size
    }

    /// What the connection carries, as agreed in the handshake.
    pub(crate) fn carries(&self) -> Carries {
        self.settings.carries
    }

    /// On a connection of calls, how many the server takes at once.
    #[cfg(ringbell_async)]
    pub(crate) fn concurrent_calls(&self) -> usize {
        self.settings.concurrent_calls
    }

    /// The most bytes a message this side sends may carry on the wire.
    pub(crate) fn send_limit(&self) -> usize {
        wire_limit(&self.settings, self.side, Direction::Sending)
    }

    /// The most bytes a message this side receives may carry on the wire.
    pub(crate) fn receive_limit(&self) -> usize {
        wire_limit(&self.settings, self.side, Direction::Receiving)
    }

    /// Bytes per ring and direction, as decided by the server.
    pub fn ring_capacity(&self) -> usize {
        self.segment.capacity()
    }

    /// Returns the error that ended the connection, if any.
    fn usable(&self) -> Result<(), Error> {
        match &self.broken {
            Some(error) => Err(error.terminal_copy().unwrap_or(Error::PeerDied)),
            None => Ok(()),
        }
    }

    fn header(&self) -> &SegmentHeader {
        self.segment.header()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.say_goodbye();
    }
}

impl Connection {
    /// Tells the peer this side is done: whatever it sleeps on, it wakes and sees the
    /// goodbye flag. Done on drop, or earlier by a side that gives up on the connection.
    fn say_goodbye(&mut self) {
        // Messages fed and not flushed are sent, before the goodbye.
        self.tx.publish();
        // SYNC: pairs with the Acquire load in `peer_closed`: everything we published
        // before is visible to a peer that sees the flag.
        self.header().closed[self.side.tx_index()].store(1, Ordering::Release);
        // Wake the peer wherever it may sleep: waiting for our data or for our room.
        wake(
            &rings(&self.segment, self.side).tx.readable,
            &self.peer_doorbell,
        );
        wake(
            &rings(&self.segment, self.side).rx.writable,
            &self.peer_doorbell,
        );
    }
}

/// The interface every ringbell transport implements: one message per `send`, whole
/// messages in order from `recv`. [`Connection`] is the shared-memory implementation;
/// other platforms and a TCP transport will implement the same trait. Code written
/// against it works with any of them:
///
/// ```no_run
/// use ringbell::{ClientConfig, Connection, Error, IpcTransport};
///
/// /// Sends `request` and waits for one answer, over any transport.
/// fn ask(transport: &mut impl IpcTransport, request: &[u8]) -> Result<Vec<u8>, Error> {
///     transport.send(request)?;
///     let mut answer = Vec::new();
///     transport.recv(&mut answer, None)?;
///     Ok(answer)
/// }
///
/// let mut conn = Connection::connect("/tmp/app.sock", ClientConfig::default())?;
/// let answer = ask(&mut conn, b"status")?;
/// # Ok::<(), Error>(())
/// ```
pub trait IpcTransport {
    /// Sends one message. See [`Connection::send`].
    ///
    /// # Errors
    ///
    /// As [`Connection::send`].
    fn send(&mut self, msg: &[u8]) -> Result<(), Error>;

    /// Receives the next message into `buf` (replacing its contents) and returns its
    /// length, waiting at most `timeout`. See [`Connection::recv`].
    ///
    /// # Errors
    ///
    /// As [`Connection::recv`].
    fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<usize, Error>;

    /// Sends every message of `msgs`, in order. See [`Connection::send_batch`], which
    /// shows them to the peer at once; this default sends them one by one.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), for the first message that fails; the messages before it
    /// are sent.
    fn send_batch(&mut self, msgs: &[&[u8]]) -> Result<(), Error> {
        msgs.iter().try_for_each(|msg| self.send(msg))
    }
}

impl IpcTransport for Connection {
    fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        Connection::send(self, msg)
    }

    fn send_batch(&mut self, msgs: &[&[u8]]) -> Result<(), Error> {
        Connection::send_batch(self, msgs)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<usize, Error> {
        Connection::recv(self, buf, timeout)
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn calls_get_room_for_the_call_protocol_and_plain_messages_none() {
        let settings = |carries| Settings {
            wait: WaitStrategy::default(),
            max_message_size: 1000,
            send_timeout: None,
            carries,
            idle_timeout: None,
            stall_timeout: None,
            concurrent_calls: 1,
        };
        let calls = settings(Carries::Calls);
        // The server's messages, as sent and as received: a kind byte.
        assert_eq!(wire_limit(&calls, Side::Server, Direction::Sending), 1001);
        assert_eq!(wire_limit(&calls, Side::Client, Direction::Receiving), 1001);
        // The client's: an opening's trailer and metadata.
        let requests = 1000 + crate::core::call::REQUEST_ROOM;
        assert_eq!(
            wire_limit(&calls, Side::Client, Direction::Sending),
            requests
        );
        assert_eq!(
            wire_limit(&calls, Side::Server, Direction::Receiving),
            requests
        );
        // Plain messages, either way.
        let plain = settings(Carries::Messages);
        for side in [Side::Server, Side::Client] {
            for direction in [Direction::Sending, Direction::Receiving] {
                assert_eq!(wire_limit(&plain, side, direction), 1000);
            }
        }
    }
}
