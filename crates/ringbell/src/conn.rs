//! [`Connection`]: two rings, two doorbells and a control socket; `send`, `recv` and
//! their timeouts.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{ClientConfig, WaitStrategy};
use crate::error::Error;
use crate::layout::{RingControl, SegmentHeader, WaitCell, CLIENT_TO_SERVER, SERVER_TO_CLIENT};
use crate::ring::{max_frame_payload, Consumer, Frame, FrameKind, Producer, RingError};
use crate::segment::Segment;
use crate::server::ConnectionSlot;
use crate::sync::Ordering;
use crate::sys::{ControlStream, Doorbell, DoorbellRinger, OsFutex};
use crate::wait::{self, Futex, Waited};

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
}

/// A chunked message received in part when a `recv` timed out: kept so that the next
/// `recv` continues it and nothing is lost.
#[derive(Debug)]
struct PartialMessage {
    bytes: Vec<u8>,
    total: usize,
    correlation: u64,
}

/// How long a receive may wait.
#[derive(Debug, Clone, Copy)]
enum Patience {
    Until(Option<Instant>),
    /// Return at once; with `check_peer`, make the syscall that notices a peer that died
    /// without a goodbye when nothing is waiting (an event loop that watches the control
    /// socket itself does without it).
    NoWait {
        check_peer: bool,
    },
}

/// How far a send has got: payload bytes of a chunked message already in the ring.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendProgress {
    bytes: usize,
}

/// What [`Connection::push_some`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The whole message is in the ring.
    Done,
    /// The ring has no room for the next frame, of `payload` bytes.
    Full { payload: usize },
}

/// How many frames one receive handles between two looks at its deadline.
const FRAMES_PER_DEADLINE_CHECK: u32 = 256;

/// A message received, with the correlation id it was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) correlation: u64,
}

fn corrupted(error: RingError) -> Error {
    Error::Corrupted { detail: error.0 }
}

/// A bidirectional message channel to one peer process, over shared memory.
///
/// Made by [`Server::accept`](crate::Server::accept) on the server and
/// [`Connection::connect`] on the client; both ends have the same API. Messages arrive
/// whole and in order; each `send` is one message. `send` blocks while the ring is full
/// and never drops a message; messages larger than the ring go through in chunks.
///
/// A connection is one producer and one consumer: `send` and `recv` take `&mut self`.
/// Move it to the thread that uses it (it is `Send`).
///
/// Dropping a connection tells the peer at once: its blocked `recv` or `send` returns
/// [`Error::PeerDied`] after any messages already sent have been received. If the process
/// dies instead, the peer notices within about 50 ms (a waiting side checks its peer's
/// control socket that often).
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
    /// Rung by the peer when this side announced it waits in an event loop.
    own_doorbell: Doorbell,
    /// Rung by us when the peer announced it waits in an event loop.
    peer_doorbell: DoorbellRinger,
    side: Side,
    settings: Settings,
    rx_partial: Option<PartialMessage>,
    /// A chunked send timed out: the receiver must be told to drop its chunks before the
    /// next message.
    tx_abort_pending: bool,
    /// Whether `arm_doorbell` announced a doorbell wait that is still outstanding.
    doorbell_armed: bool,
    /// The error that ended this connection, returned again by every later call.
    broken: Option<Error>,
    /// When a wait should next check, with a syscall, that the peer is still alive. Kept
    /// across calls, so that a loop of short waits checks as often as one long one.
    peer_check_due: Option<Instant>,
    /// On a server, this connection's place under its connection limit, freed on drop.
    slot: Option<ConnectionSlot>,
    /// Doorbell rings are recorded in `ring_owed` instead of made (a server's sweeper
    /// makes them after its sweep, once per doorbell).
    defer_rings: bool,
    /// A deferred ring not made yet. Atomic only so that `Connection` stays `Sync`.
    ring_owed: std::sync::atomic::AtomicBool,
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
            tx_abort_pending: false,
            doorbell_armed: false,
            broken: None,
            peer_check_due: None,
            slot: None,
            defer_rings: false,
            ring_owed: std::sync::atomic::AtomicBool::new(false),
        }
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

    /// Receives the next message into `buf`, replacing its contents, and returns its
    /// length. Waits at most `timeout` (`None`: as long as the peer lives).
    ///
    /// # Errors
    ///
    /// * [`Error::Timeout`] if no whole message arrived in time (a message that arrived in
    ///   part is kept and completed by the next call);
    /// * [`Error::PeerDied`] once the peer has closed or died and every message it sent
    ///   has been received;
    /// * [`Error::Corrupted`] if the peer broke the protocol.
    pub fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<usize, Error> {
        let deadline = timeout.and_then(wait::deadline_after);
        match self.receive(buf, Patience::Until(deadline))? {
            Some(received) => Ok(received.len),
            None => Err(Error::Timeout),
        }
    }

    /// Receives the next message if one is already there, without waiting.
    ///
    /// Returns `Ok(None)` if none is. This is the receiving half of event-loop use, with
    /// [`arm_doorbell`](Self::arm_doorbell) and [`doorbell_fd`](Self::doorbell_fd).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), except that it never times out.
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<Option<usize>, Error> {
        Ok(self
            .receive(buf, Patience::NoWait { check_peer: true })?
            .map(|received| received.len))
    }

    /// Like [`recv`](Self::recv), with the correlation id the message was sent with.
    pub(crate) fn recv_tagged(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Received, Error> {
        let deadline = timeout.and_then(wait::deadline_after);
        self.receive(buf, Patience::Until(deadline))?
            .ok_or(Error::Timeout)
    }

    /// Like [`try_recv`](Self::try_recv), with the correlation id the message was sent
    /// with, for an event-loop driver that manages the doorbell itself (see
    /// [`settle_doorbell`](Self::settle_doorbell)) and watches the control socket: it
    /// neither drains the doorbell nor, unless `check_peer`, polls the control socket.
    #[cfg(feature = "tokio")]
    pub(crate) fn try_recv_tagged(
        &mut self,
        buf: &mut Vec<u8>,
        check_peer: bool,
    ) -> Result<Option<Received>, Error> {
        self.usable()?;
        let result = self.receive_frames(buf, Patience::NoWait { check_peer });
        if let Err(error) = &result {
            self.broken = error.terminal_copy();
        }
        result
    }

    /// Announces that this side is about to wait for a message in an event loop, polling
    /// [`doorbell_fd`](Self::doorbell_fd) for `POLLIN` (and [`control_fd`](Self::control_fd)
    /// for `POLLRDHUP`, which it reports when the peer is gone). Returns `false` if a message arrived
    /// meanwhile: call [`try_recv`](Self::try_recv) instead of waiting.
    ///
    /// While armed, the peer's next `send` writes to the doorbell (one syscall); otherwise
    /// sends make no syscall at all. The next `try_recv` or `recv` disarms it.
    ///
    /// ```no_run
    /// # use ringbell::{ClientConfig, Connection};
    /// # let mut conn = Connection::connect("/tmp/app.sock", ClientConfig::default())?;
    /// use rustix::event::{poll, PollFd, PollFlags};
    /// let mut buf = Vec::new();
    /// loop {
    ///     if let Some(n) = conn.try_recv(&mut buf)? {
    ///         println!("got {n} bytes");
    ///         break;
    ///     }
    ///     if conn.arm_doorbell()? {
    ///         let (doorbell, control) = (conn.doorbell_fd(), conn.control_fd());
    ///         let mut fds = [
    ///             PollFd::new(&doorbell, PollFlags::IN),
    ///             // RDHUP, not IN: the peer's death, not bytes it might write.
    ///             PollFd::new(&control, PollFlags::RDHUP),
    ///         ];
    ///         poll(&mut fds, None).ok();
    ///     }
    /// }
    /// # Ok::<(), ringbell::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] if the peer broke the ring's invariants, or the error that
    /// ended the connection earlier.
    pub fn arm_doorbell(&mut self) -> Result<bool, Error> {
        self.usable()?;
        self.publish_received();
        let (rx, header, side) = (&mut self.rx, self.segment.header(), self.side);
        let mut ready = || -> Result<bool, Error> {
            Ok(rx.has_data().map_err(corrupted)? || peer_closed(header, side))
        };
        let armed = !wait::announce(
            rx_readable(&self.segment, self.side),
            wait::SLEEP_DOORBELL,
            &mut ready,
        )
        .inspect_err(|error| self.broken = error.terminal_copy())?;
        self.doorbell_armed = armed;
        Ok(armed)
    }

    /// Like [`arm_doorbell`](Self::arm_doorbell), for a sender waiting for room for a
    /// frame of `payload` bytes: returns `false` if it fits already (or the peer has gone).
    #[cfg(feature = "tokio")]
    pub(crate) fn arm_send_doorbell(&mut self, payload: usize) -> Result<bool, Error> {
        self.usable()?;
        self.publish_received();
        let (tx, header, side) = (&mut self.tx, self.segment.header(), self.side);
        let mut ready = || -> Result<bool, Error> {
            Ok(tx.has_room(payload).map_err(corrupted)? || peer_closed(header, side))
        };
        let cell = &rings(&self.segment, side).tx.writable;
        let armed = !wait::announce(cell, wait::SLEEP_DOORBELL, &mut ready)
            .inspect_err(|error| self.broken = error.terminal_copy())?;
        Ok(armed)
    }

    /// Whether a frame of `payload` bytes fits in the ring now (a spin-phase check).
    #[cfg(feature = "tokio")]
    pub(crate) fn has_room(&mut self, payload: usize) -> Result<bool, Error> {
        self.tx.has_room(payload).map_err(corrupted)
    }

    /// Whether a frame is waiting to be received (a spin-phase check).
    #[cfg(feature = "tokio")]
    pub(crate) fn has_data(&mut self) -> Result<bool, Error> {
        self.rx.has_data().map_err(corrupted)
    }

    /// `Err(PeerDied)` if the peer closed or died (one non-blocking syscall).
    #[cfg(feature = "tokio")]
    pub(crate) fn ensure_peer_alive(&mut self) -> Result<(), Error> {
        self.usable()?;
        peer_alive(&self.control, self.header(), self.side, true)
            .inspect_err(|error| self.broken = error.terminal_copy())
    }

    /// Records `error` as the end of the connection if it is terminal, and returns it.
    #[cfg(feature = "tokio")]
    pub(crate) fn fail(&mut self, error: Error) -> Error {
        if self.broken.is_none() {
            self.broken = error.terminal_copy();
        }
        error
    }

    /// Withdraws any announcement still standing, so the peer stops ringing until we arm
    /// again, and, if the doorbell rang (`drain`), resets it. A doorbell left rung makes
    /// the next wait return at once, which then drains it: cheaper than a read that finds
    /// nothing after every wake-up for another reason.
    #[cfg(feature = "tokio")]
    pub(crate) fn settle_doorbell(&mut self, drain: bool) {
        let rings = rings(&self.segment, self.side);
        wait::withdraw(&rings.rx.readable);
        wait::withdraw(&rings.tx.writable);
        self.doorbell_armed = false;
        if drain {
            self.own_doorbell.drain();
        }
    }

    /// Whether the announcement made by [`arm_doorbell`](Self::arm_doorbell) still stands:
    /// `false` once the peer took it down to ring (or we withdrew it). One load.
    #[cfg(feature = "tokio")]
    pub(crate) fn doorbell_armed(&self) -> bool {
        // SYNC: Relaxed: a stale `true` only delays the sweep that follows the ring, which
        // the doorbell's wake-up then triggers; nothing is read on the strength of it.
        // The peer can write this word: one that keeps it set only goes unswept until its
        // control socket stirs, which affects its own connection alone.
        rx_readable(&self.segment, self.side)
            .sleeping
            .load(Ordering::Relaxed)
            != 0
    }

    /// The settings this connection waits with.
    #[cfg(feature = "tokio")]
    pub(crate) fn wait_strategy(&self) -> WaitStrategy {
        self.settings.wait
    }

    /// The doorbell: an fd that polls readable after the peer rang it, which it does
    /// when this side is armed (see [`arm_doorbell`](Self::arm_doorbell)). It is this
    /// side's own end of a socket pair: never read from or write to it yourself.
    pub fn doorbell_fd(&self) -> BorrowedFd<'_> {
        self.own_doorbell.as_fd()
    }

    /// The control socket. It polls readable, with `POLLRDHUP`, when the peer closes or
    /// dies; never read from or write to it.
    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.control.as_fd()
    }

    /// The largest message this connection carries, as decided by the server.
    pub fn max_message_size(&self) -> usize {
        self.settings.max_message_size
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

    /// Sends one message tagged with `correlation` (request/response matching).
    pub(crate) fn send_with_correlation(
        &mut self,
        msg: &[u8],
        correlation: u64,
    ) -> Result<(), Error> {
        self.check_sendable(msg)?;
        let deadline = self.settings.send_timeout.and_then(wait::deadline_after);
        let mut sent = SendProgress::default();
        let result = loop {
            match self.push_some(msg, correlation, &mut sent) {
                Ok(Pushed::Done) => break Ok(()),
                Ok(Pushed::Full { payload }) => match self.wait_for_room(payload, deadline) {
                    Ok(Waited::Ready) => continue,
                    Ok(Waited::TimedOut) => break Err(Error::Timeout),
                    Err(error) => break Err(error),
                },
                Err(error) => break Err(error),
            }
        };
        if let Err(error) = &result {
            self.abandon_send(&sent);
            self.broken = error.terminal_copy();
        }
        result
    }

    /// The checks before a send: the connection is usable, the message fits the limit, and
    /// the peer has not said goodbye.
    pub(crate) fn check_sendable(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.usable()?;
        if msg.len() > self.settings.max_message_size {
            return Err(Error::TooLarge {
                len: msg.len(),
                max: self.settings.max_message_size,
            });
        }
        if peer_closed(self.header(), self.side) {
            self.broken = Some(Error::PeerDied);
            return Err(Error::PeerDied);
        }
        Ok(())
    }

    /// Pushes as many frames of `msg` as fit now, without waiting, continuing from `sent`.
    /// A message that fits one frame is pushed whole or not at all; a larger one goes in
    /// full chunks. A pending abort (see [`abandon_send`](Self::abandon_send)) goes first.
    pub(crate) fn push_some(
        &mut self,
        msg: &[u8],
        correlation: u64,
        sent: &mut SendProgress,
    ) -> Result<Pushed, Error> {
        if self.tx_abort_pending {
            if !self.try_push_frame(FrameKind::Abort, 0, &[])? {
                return Ok(Pushed::Full { payload: 0 });
            }
            self.tx_abort_pending = false;
        }
        let max_payload = max_frame_payload(self.segment.capacity());
        if msg.len() <= max_payload {
            return Ok(
                if self.try_push_frame(FrameKind::Message, correlation, &[msg])? {
                    Pushed::Done
                } else {
                    Pushed::Full { payload: msg.len() }
                },
            );
        }
        // Chunked: the first frame carries the total length, so the receiver can check the
        // chunks against it and allocate once. Every chunk but the last is a full frame.
        if sent.bytes == 0 {
            let first = max_payload - 8;
            let total = (msg.len() as u64).to_le_bytes();
            if !self.try_push_frame(FrameKind::First, correlation, &[&total, &msg[..first]])? {
                return Ok(Pushed::Full {
                    payload: max_payload,
                });
            }
            sent.bytes = first;
        }
        while sent.bytes < msg.len() {
            let rest = &msg[sent.bytes..];
            let len = rest.len().min(max_payload);
            let kind = if len == rest.len() {
                FrameKind::Last
            } else {
                FrameKind::Middle
            };
            if !self.try_push_frame(kind, correlation, &[&rest[..len]])? {
                return Ok(Pushed::Full { payload: len });
            }
            sent.bytes += len;
        }
        Ok(Pushed::Done)
    }

    /// Gives up on a send after `sent`: if part of a chunked message is in the ring, the
    /// next send withdraws it with an abort frame, so the receiver never sees half a
    /// message.
    pub(crate) fn abandon_send(&mut self, sent: &SendProgress) {
        if sent.bytes > 0 {
            self.tx_abort_pending = true;
        }
    }

    /// Pushes one frame if it fits now, and wakes the peer if it sleeps.
    fn try_push_frame(
        &mut self,
        kind: FrameKind,
        correlation: u64,
        parts: &[&[u8]],
    ) -> Result<bool, Error> {
        if !self
            .tx
            .try_push(kind, correlation, parts)
            .map_err(corrupted)?
        {
            return Ok(false);
        }
        self.wake_peer(&rings(&self.segment, self.side).tx.readable);
        Ok(true)
    }

    /// Waits under the configured strategy until a frame of `payload` bytes fits.
    fn wait_for_room(
        &mut self,
        payload: usize,
        deadline: Option<Instant>,
    ) -> Result<Waited, Error> {
        self.publish_received();
        if peer_closed(self.header(), self.side) {
            return Err(Error::PeerDied);
        }
        let (tx, header, side) = (&mut self.tx, self.segment.header(), self.side);
        wait::wait_until(
            &self.settings.wait,
            &rings(&self.segment, side).tx.writable,
            &OsFutex,
            deadline,
            &mut self.peer_check_due,
            || Ok(tx.has_room(payload).map_err(corrupted)? || peer_closed(header, side)),
            |thorough| peer_alive(&self.control, header, side, thorough),
        )
    }

    /// The receive loop shared by `recv` and `try_recv`: returns `None` when patience ran
    /// out with no whole message.
    fn receive(
        &mut self,
        buf: &mut Vec<u8>,
        patience: Patience,
    ) -> Result<Option<Received>, Error> {
        self.usable()?;
        if self.doorbell_armed {
            self.doorbell_armed = false;
            wait::withdraw(rx_readable(&self.segment, self.side));
            self.own_doorbell.drain();
        }
        let result = self.receive_frames(buf, patience);
        if let Err(error) = &result {
            self.broken = error.terminal_copy();
        }
        result
    }

    fn receive_frames(
        &mut self,
        buf: &mut Vec<u8>,
        patience: Patience,
    ) -> Result<Option<Received>, Error> {
        buf.clear();
        // (total, correlation) of a chunked message in progress; its bytes are in `buf`.
        let mut chunked = None;
        if let Some(partial) = self.rx_partial.take() {
            *buf = partial.bytes;
            chunked = Some((partial.total, partial.correlation));
        }
        let max = self.settings.max_message_size;
        let mut frames = 0u32;
        loop {
            let Some(frame) = self.rx.peek().map_err(corrupted)? else {
                self.publish_received();
                // The peer publishes its last frames before it says goodbye: after seeing the
                // flag, look at the ring once more before reporting its death.
                if peer_closed(self.header(), self.side) {
                    if self.rx.has_data().map_err(corrupted)? {
                        continue;
                    }
                    return Err(Error::PeerDied);
                }
                let waited = match patience {
                    Patience::NoWait { check_peer } => {
                        if let Err(gone) =
                            peer_alive(&self.control, self.header(), self.side, check_peer)
                        {
                            if self.rx.has_data().map_err(corrupted)? {
                                continue;
                            }
                            return Err(gone);
                        }
                        Waited::TimedOut
                    }
                    Patience::Until(deadline) => {
                        let (rx, header, side) = (&mut self.rx, self.segment.header(), self.side);
                        wait::wait_until(
                            &self.settings.wait,
                            &rings(&self.segment, side).rx.readable,
                            &OsFutex,
                            deadline,
                            &mut self.peer_check_due,
                            || Ok(rx.has_data().map_err(corrupted)? || peer_closed(header, side)),
                            |thorough| peer_alive(&self.control, header, side, thorough),
                        )?
                    }
                };
                if waited == Waited::TimedOut {
                    self.keep_partial(buf, chunked);
                    return Ok(None);
                }
                continue;
            };
            let header = frame.header;
            let len = frame.payload_len();
            // An honest sender fills every chunk but the last, so a message takes a bounded
            // number of frames; a hostile one still cannot hold us past our deadline.
            frames += 1;
            if frames % FRAMES_PER_DEADLINE_CHECK == 0 {
                let out_of_patience = match patience {
                    Patience::NoWait { .. } => true,
                    Patience::Until(deadline) => deadline.is_some_and(|d| Instant::now() >= d),
                };
                if out_of_patience {
                    self.keep_partial(buf, chunked);
                    return Ok(None);
                }
            }
            let full_chunk = max_frame_payload(self.segment.capacity());
            match (header.kind, chunked) {
                (FrameKind::Message, None) => {
                    if len > max {
                        return Err(Error::Corrupted {
                            detail: "a message exceeds the connection's maximum size",
                        });
                    }
                    self.take_payload(&frame, 0, buf);
                    return Ok(Some(Received {
                        len,
                        correlation: header.correlation,
                    }));
                }
                (FrameKind::First, None) => {
                    let mut total = [0u8; 8];
                    if len != full_chunk {
                        return Err(Error::Corrupted {
                            detail: "a first chunk is not a full frame",
                        });
                    }
                    self.rx.copy_payload(&frame, 0, &mut total);
                    let total = u64::from_le_bytes(total);
                    let total = usize::try_from(total)
                        .ok()
                        .filter(|&total| total <= max && total >= len - 8)
                        .ok_or(Error::Corrupted {
                            detail: "a chunked message announces a length beyond the maximum",
                        })?;
                    // Within max_message_size, but that may still be more than this process
                    // can allocate; the frame stays unread, so the connection cannot go on.
                    buf.try_reserve_exact(total).map_err(|_| Error::Corrupted {
                        detail: "a chunked message is larger than this process could allocate",
                    })?;
                    self.take_payload(&frame, 8, buf);
                    chunked = Some((total, header.correlation));
                }
                (FrameKind::Middle | FrameKind::Last, Some((total, correlation))) => {
                    let sized_right = match header.kind {
                        FrameKind::Middle => len == full_chunk,
                        _ => len > 0,
                    };
                    if header.correlation != correlation || buf.len() + len > total || !sized_right
                    {
                        return Err(Error::Corrupted {
                            detail: "a chunk does not belong to the message in progress",
                        });
                    }
                    self.take_payload(&frame, 0, buf);
                    if header.kind == FrameKind::Last {
                        if buf.len() != total {
                            return Err(Error::Corrupted {
                                detail: "a chunked message ended short of its announced length",
                            });
                        }
                        return Ok(Some(Received {
                            len: total,
                            correlation,
                        }));
                    }
                }
                (FrameKind::Abort, Some(_)) => {
                    if self.rx.release(&frame) {
                        self.wake_writer();
                    }
                    buf.clear();
                    chunked = None;
                }
                _ => {
                    return Err(Error::Corrupted {
                        detail: "a frame arrived out of sequence",
                    })
                }
            }
        }
    }

    /// Keeps the part received of a chunked message in progress (its bytes are in `buf`),
    /// so that the next receive continues it: giving up early must not lose data.
    fn keep_partial(&mut self, buf: &mut Vec<u8>, chunked: Option<(usize, u64)>) {
        if let Some((total, correlation)) = chunked {
            self.rx_partial = Some(PartialMessage {
                bytes: std::mem::take(buf),
                total,
                correlation,
            });
        }
    }

    /// Appends `frame`'s payload from `skip` on to `buf`, releases the frame, and wakes the
    /// peer if it waits for room.
    fn take_payload(&mut self, frame: &Frame, skip: usize, buf: &mut Vec<u8>) {
        self.rx.append_payload(frame, skip, buf);
        if self.rx.release(frame) {
            self.wake_writer();
        }
    }

    /// Hands the space of every frame received so far back to the peer, and wakes it if it
    /// waits for room. Called before this side waits for anything: two sides that both
    /// wait to send must not be stuck on space that one of them has freed.
    fn publish_received(&mut self) {
        if self.rx.publish() {
            self.wake_writer();
        }
    }

    /// Wakes the peer if it sleeps waiting for room in the ring we consume.
    fn wake_writer(&self) {
        self.wake_peer(&rings(&self.segment, self.side).rx.writable);
    }

    /// The waker's half of the protocol on `cell`, then the wake-up it asks for: a futex
    /// wake at once, a doorbell ring at once or, if rings are deferred, owed.
    fn wake_peer(&self, cell: &WaitCell) {
        let wake = wait::notify(cell);
        if wake.futex {
            OsFutex.wake(&cell.seq);
        }
        if wake.doorbell {
            if self.defer_rings {
                self.ring_owed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            } else {
                self.peer_doorbell.ring();
            }
        }
    }

    /// From now on, a doorbell ring this connection's sends and receives would make is
    /// only recorded, for the caller to make with [`ring_owed`](Self::ring_owed) and
    /// [`ring_peer`](Self::ring_peer): a server that replies to many connections of one
    /// client in a sweep rings that client's shared doorbell once.
    #[cfg(feature = "tokio")]
    pub(crate) fn defer_doorbell_rings(&mut self) {
        self.defer_rings = true;
    }

    /// Takes the ring owed since the last call: `Some(doorbell id)` if there is one.
    /// Connections whose peers share a doorbell return the same id.
    #[cfg(feature = "tokio")]
    pub(crate) fn ring_owed(&self) -> Option<u64> {
        self.ring_owed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
            .then(|| self.peer_doorbell.id())
    }

    /// Rings the peer's doorbell.
    #[cfg(feature = "tokio")]
    pub(crate) fn ring_peer(&self) {
        self.peer_doorbell.ring();
    }
}

/// This side's two ring control blocks, borrowed from the segment (not from the ring
/// ends), so that a ring end can be borrowed mutably while we wait on a cell.
struct Rings<'a> {
    tx: &'a RingControl,
    rx: &'a RingControl,
}

fn rings(segment: &Segment, side: Side) -> Rings<'_> {
    let header = segment.header();
    Rings {
        tx: &header.rings[side.tx_index()],
        rx: &header.rings[side.rx_index()],
    }
}

/// The cell that this side's consumer sleeps on.
fn rx_readable(segment: &Segment, side: Side) -> &WaitCell {
    &rings(segment, side).rx.readable
}

/// The waker's half of the protocol, followed by the syscalls it asks for, at once.
fn wake(cell: &WaitCell, peer_doorbell: &DoorbellRinger) {
    let wake = wait::notify(cell);
    if wake.futex {
        OsFutex.wake(&cell.seq);
    }
    if wake.doorbell {
        peer_doorbell.ring();
    }
}

/// Whether the peer said goodbye (set its closed flag). One load, no syscall.
fn peer_closed(header: &SegmentHeader, side: Side) -> bool {
    // SYNC: pairs with the Release store in `Drop`: the peer's frames published before the
    // goodbye are visible once we see it.
    header.closed[side.rx_index()].load(Ordering::Acquire) != 0
}

/// `Err(PeerDied)` if the peer said goodbye (a flag in shared memory, no syscall) or, when
/// `thorough`, if its control socket shows end-of-file (one non-blocking syscall).
fn peer_alive(
    control: &ControlStream,
    header: &SegmentHeader,
    side: Side,
    thorough: bool,
) -> Result<(), Error> {
    if peer_closed(header, side) || (thorough && control.peer_gone()) {
        return Err(Error::PeerDied);
    }
    Ok(())
}

impl Drop for Connection {
    fn drop(&mut self) {
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
/// other platforms and a TCP transport will implement the same trait.
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
}

impl IpcTransport for Connection {
    fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        Connection::send(self, msg)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<usize, Error> {
        Connection::recv(self, buf, timeout)
    }
}
