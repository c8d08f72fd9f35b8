//! Receiving: frames out of the ring, every one checked against what the peer may
//! legally have written; a large message copied out of the peer's region (`large.rs`),
//! or its chunks put back together.

use std::time::{Duration, Instant};

use super::budget::Charge;
use super::wake::{peer_alive, peer_closed, rings, wait_on};
use super::{corrupted, Connection};
use crate::core::large::{LargeRef, LARGE_REF_LEN};
use crate::core::ring::{max_frame_payload, Frame, FrameKind, PackCursor};
use crate::core::wait::{self, Waited, PEER_CHECK_INTERVAL};
use crate::error::Error;

/// A chunked message received in part when a `recv` timed out: kept so that the next
/// `recv` continues it and nothing is lost.
#[derive(Debug)]
pub(super) struct PartialMessage {
    bytes: Vec<u8>,
    message: InProgress,
}

/// The chunked message being received; its bytes so far are in the receive buffer.
#[derive(Debug)]
struct InProgress {
    total: usize,
    correlation: u64,
    /// Whether it comes in pieces through the peer's region, rather than in chunks.
    pieces: bool,
    /// Its reservation of the server's memory budget (none on a client), given back when
    /// this is dropped: delivered, withdrawn, or its connection gone.
    _charge: Option<Charge>,
}

/// Where this side's indices stood when it last saw them move, and since when: for the
/// idle and stall timeouts. Looked at only when a receive is about to wait, so the hot
/// path pays nothing for it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Quiet {
    mark: (u64, u64),
    since: Instant,
}

impl Quiet {
    pub(super) fn new() -> Quiet {
        Quiet {
            mark: (0, 0),
            since: Instant::now(),
        }
    }
}

/// How long a receive may wait.
#[derive(Debug, Clone, Copy)]
pub(super) enum Patience {
    Until(Option<Instant>),
    /// Return at once; with `check_peer`, make the syscall that notices a peer that died
    /// without a goodbye when nothing is waiting (an event loop that watches the control
    /// socket itself does without it).
    NoWait {
        check_peer: bool,
    },
}

/// What [`Connection::reserve`] got.
enum Reserved {
    /// The reservation (none on a client).
    Charged(Option<Charge>),
    /// The budget has no room and patience ran out: the frame stays in the ring.
    GaveUp,
    /// The budget has no room yet; the peer lives: look at the ring again.
    Retry,
}

/// How many frames one receive handles between two looks at its deadline.
const FRAMES_PER_DEADLINE_CHECK: u32 = 256;

/// A message received, with the correlation id it was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) correlation: u64,
}

impl Connection {
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
    #[cfg(ringbell_async)]
    pub(crate) fn try_recv_tagged(
        &mut self,
        buf: &mut Vec<u8>,
        check_peer: bool,
    ) -> Result<Option<Received>, Error> {
        self.usable()?;
        self.publish_sent();
        let result = self.receive_frames(buf, Patience::NoWait { check_peer });
        if let Err(error) = &result {
            self.broken = error.terminal_copy();
        }
        result
    }

    /// The receive loop shared by `recv` and `try_recv`: returns `None` when patience ran
    /// out with no whole message.
    pub(super) fn receive(
        &mut self,
        buf: &mut Vec<u8>,
        patience: Patience,
    ) -> Result<Option<Received>, Error> {
        self.usable()?;
        self.publish_sent();
        if self.doorbell_armed {
            self.disarm_doorbell();
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
        self.awaiting_budget = false;
        if self.rx_pack.is_some() {
            return self.take_from_pack(buf).map(Some);
        }
        // The chunked message in progress; its bytes are in `buf`.
        let mut chunked: Option<InProgress> = None;
        if let Some(partial) = self.rx_partial.take() {
            *buf = partial.bytes;
            chunked = Some(partial.message);
        }
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
                        if let Err(gone) = peer_alive(
                            &self.control,
                            &self.own_doorbell,
                            self.header(),
                            self.side,
                            check_peer,
                        ) {
                            if self.rx.has_data().map_err(corrupted)? {
                                continue;
                            }
                            return Err(gone);
                        }
                        Waited::TimedOut
                    }
                    Patience::Until(deadline) => {
                        let quiet = self.quiet_deadline(chunked.is_some());
                        let quiet_at = quiet.as_ref().map(|(at, _)| *at);
                        let until = match (deadline, quiet_at) {
                            (Some(deadline), Some(quiet)) => Some(deadline.min(quiet)),
                            (deadline, quiet) => deadline.or(quiet),
                        };
                        // Cache hints: what we sent last goes towards the peer, the
                        // lines our next message goes to come to us (see there).
                        self.tx.prepare_to_wait();
                        let (rx, tx, header, side) =
                            (&mut self.rx, &mut self.tx, self.segment.header(), self.side);
                        let waited = wait_on(
                            &self.settings.wait,
                            &mut self.learned.data,
                            &rings(&self.segment, side).rx.readable,
                            &self.own_doorbell,
                            &self.control,
                            until,
                            &mut self.peer_check_due,
                            || Ok(rx.has_data().map_err(corrupted)? || peer_closed(header, side)),
                            |thorough| {
                                peer_alive(
                                    &self.control,
                                    &self.own_doorbell,
                                    header,
                                    side,
                                    thorough,
                                )
                            },
                            // The peer taking what we sent (a request, the pieces of a
                            // large one) is the peer at work on it: see `wait_until`. A
                            // wrong index is ignored here; the next send reports it.
                            || tx.consumer_head().ok(),
                        )?;
                        if waited == Waited::TimedOut {
                            if let Some((quiet, idle)) = quiet {
                                if Instant::now() >= quiet {
                                    return Err(self.close_idle(idle));
                                }
                            }
                            if deadline.is_none_or(|deadline| Instant::now() < deadline) {
                                // Neither deadline has passed yet: wait again.
                                continue;
                            }
                        }
                        waited
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
            match (header.kind, &chunked) {
                (FrameKind::Message, None) => {
                    if len > self.receive_limit() {
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
                (FrameKind::Pack, None) => {
                    if len == 0 {
                        return Err(Error::Corrupted {
                            detail: "a pack holds no message",
                        });
                    }
                    self.rx_pack = Some(PackCursor::new(frame));
                    return self.take_from_pack(buf).map(Some);
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
                        .filter(|&total| total <= self.receive_limit() && total >= len - 8)
                        .ok_or(Error::Corrupted {
                            detail: "a chunked message announces a length beyond the maximum",
                        })?;
                    // The whole length is reserved in the budget before the first byte is
                    // taken (see `conn/budget.rs` for why), or the chunk waits in the ring.
                    let charge = match self.reserve(total, patience)? {
                        Reserved::Charged(charge) => charge,
                        Reserved::GaveUp => return Ok(None),
                        Reserved::Retry => continue,
                    };
                    // Room for this chunk only, not for the announced total: see
                    // `grow_for_chunk`.
                    grow_for_chunk(buf, len - 8, total)?;
                    self.take_payload(&frame, 8, buf);
                    chunked = Some(InProgress {
                        total,
                        correlation: header.correlation,
                        pieces: false,
                        _charge: charge,
                    });
                }
                (FrameKind::Large, None) => {
                    // Reserved in the budget as a chunked message's length is, though only
                    // for the copy: the message is taken whole, now.
                    let announced = self.large_len(&frame)?;
                    let _charge = match self.reserve(announced, patience)? {
                        Reserved::Charged(charge) => charge,
                        Reserved::GaveUp => return Ok(None),
                        Reserved::Retry => continue,
                    };
                    let len = self.take_large(&frame, buf)?;
                    // Handed back at once, not an eighth of the ring later: the sender
                    // reclaims its region by our head, and may wait for it.
                    self.rx.release(&frame);
                    self.publish_received();
                    return Ok(Some(Received {
                        len,
                        correlation: header.correlation,
                    }));
                }
                (FrameKind::Piece, None) => {
                    // As a first chunk: the whole length reserved before any of it is taken.
                    let total = self.piece_total(&frame)?;
                    let charge = match self.reserve(total, patience)? {
                        Reserved::Charged(charge) => charge,
                        Reserved::GaveUp => return Ok(None),
                        Reserved::Retry => continue,
                    };
                    self.take_piece(&frame, total, buf)?;
                    if buf.len() == total {
                        return Ok(Some(Received {
                            len: total,
                            correlation: header.correlation,
                        }));
                    }
                    chunked = Some(InProgress {
                        total,
                        correlation: header.correlation,
                        pieces: true,
                        _charge: charge,
                    });
                }
                (FrameKind::Piece, Some(message)) if message.pieces => {
                    let (total, correlation) = (message.total, message.correlation);
                    if header.correlation != correlation {
                        return Err(Error::Corrupted {
                            detail: "a piece does not belong to the message in progress",
                        });
                    }
                    self.take_piece(&frame, total, buf)?;
                    if buf.len() == total {
                        return Ok(Some(Received {
                            len: total,
                            correlation,
                        }));
                    }
                }
                (FrameKind::Middle | FrameKind::Last, Some(message)) if !message.pieces => {
                    let (total, correlation) = (message.total, message.correlation);
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
                    grow_for_chunk(buf, len, total)?;
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

    /// Takes the next message of the pack being received (`rx_pack`, which the caller
    /// checked is set), appending it to `buf`; the cursor goes with the pack's last
    /// message. On an error the cursor stays at the wrong entry, so that the error, not
    /// the pack read anew from its start, is what a later receive meets.
    pub(super) fn take_from_pack(&mut self, buf: &mut Vec<u8>) -> Result<Received, Error> {
        let Some(mut cursor) = self.rx_pack else {
            unreachable!("take_from_pack without a pack being received");
        };
        let max_len = self.receive_limit();
        let packed = self
            .rx
            .take_packed(&mut cursor, max_len, buf)
            .map_err(corrupted)?;
        if packed.published {
            self.wake_writer();
        }
        self.rx_pack = (!packed.last).then_some(cursor);
        Ok(Received {
            len: packed.len,
            correlation: cursor.correlation(),
        })
    }

    /// Reserves `len` bytes of the server's memory budget for a message about to be taken
    /// (nothing on a client). When the budget has no room: hands back what was taken so
    /// far (so the peer is not stuck), then gives up at once without waiting (an event loop
    /// then waits for a release: `awaiting_budget`), or waits for a release until the
    /// deadline, checking meanwhile that the peer lives (a message it can never finish).
    fn reserve(&mut self, len: usize, patience: Patience) -> Result<Reserved, Error> {
        let Some(budget) = self.budget().cloned() else {
            return Ok(Reserved::Charged(None));
        };
        if let Some(charge) = budget.try_charge(len) {
            return Ok(Reserved::Charged(Some(charge)));
        }
        self.publish_received();
        let deadline = match patience {
            Patience::NoWait { .. } => {
                self.awaiting_budget = true;
                return Ok(Reserved::GaveUp);
            }
            Patience::Until(deadline) => deadline,
        };
        let check = Instant::now() + PEER_CHECK_INTERVAL;
        let until = deadline.map_or(check, |d| d.min(check));
        if let Some(charge) = budget.charge_within(len, until) {
            return Ok(Reserved::Charged(Some(charge)));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Reserved::GaveUp);
        }
        peer_alive(
            &self.control,
            &self.own_doorbell,
            self.segment.header(),
            self.side,
            true,
        )?;
        Ok(Reserved::Retry)
    }

    /// The length a `Large` frame announces, checked against the limit, before its region
    /// is looked at (for the budget's reservation); `take_large` checks the rest.
    fn large_len(&self, frame: &Frame) -> Result<usize, Error> {
        let mut payload = [0u8; LARGE_REF_LEN];
        if frame.payload_len() != LARGE_REF_LEN {
            return Err(Error::Corrupted {
                detail: "a large-message frame has the wrong length",
            });
        }
        self.rx.copy_payload(frame, 0, &mut payload);
        LargeRef::decode(&payload)
            .and_then(|large| usize::try_from(large.len).ok())
            .filter(|&len| len <= self.receive_limit())
            .ok_or(Error::Corrupted {
                detail: "a large message exceeds the connection's maximum size",
            })
    }

    /// Keeps the part received of a chunked message in progress (its bytes are in `buf`),
    /// so that the next receive continues it: giving up early must not lose data.
    fn keep_partial(&mut self, buf: &mut Vec<u8>, chunked: Option<InProgress>) {
        if let Some(message) = chunked {
            self.rx_partial = Some(PartialMessage {
                bytes: std::mem::take(buf),
                message,
            });
        }
    }

    /// Whether the last receive left a chunked message waiting for room in the server's
    /// memory budget (its first chunk is still in the ring): an event-loop driver then
    /// waits for a release of the budget, not for the doorbell.
    #[cfg(ringbell_async)]
    pub(crate) fn awaiting_budget(&self) -> bool {
        self.awaiting_budget
    }

    /// When this connection, about to wait with its ring empty, times out for having
    /// moved nothing (`mid_message`: stopped inside a chunked message, the stall timeout;
    /// else the idle timeout), with the error it then ends with. `None` if no timeout
    /// applies.
    pub(crate) fn quiet_deadline(&mut self, mid_message: bool) -> Option<(Instant, Error)> {
        let (timeout, mid_message) = match (mid_message, self.settings.stall_timeout) {
            (true, Some(stall)) => (stall, true),
            _ => (self.settings.idle_timeout?, false),
        };
        let mark = (self.rx.head(), self.tx.tail());
        if mark != self.quiet.mark {
            self.quiet = Quiet {
                mark,
                since: Instant::now(),
            };
        }
        let error = Error::Idle {
            after: timeout,
            mid_message,
        };
        Some((self.quiet.since + timeout, error))
    }

    /// [`quiet_deadline`](Self::quiet_deadline) for a driver that receives without
    /// waiting: the chunked message in progress is the one kept between receives.
    #[cfg(ringbell_async)]
    pub(crate) fn quiet_deadline_now(&mut self) -> Option<(Instant, Error)> {
        self.quiet_deadline(self.rx_partial.is_some())
    }

    /// Ends the connection for having moved nothing: tells the peer at once (as a drop
    /// would), drops a message received in part, and returns the error, which every
    /// later call returns again.
    pub(crate) fn close_idle(&mut self, error: Error) -> Error {
        self.rx_partial = None;
        self.say_goodbye();
        self.broken = error.terminal_copy();
        error
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
    pub(super) fn publish_received(&mut self) {
        if self.rx.publish() {
            self.wake_writer();
        }
    }
}

/// Makes room in `buf` for `incoming` more bytes of a chunked message that announced
/// `total`: at least doubling what it holds, never past `total`. So what a receiver holds
/// follows what the peer actually sent, for which the peer pays in ring bandwidth; a peer
/// that announces the maximum and then stalls costs one chunk, not the maximum (which,
/// over thousands of connections, would have been committed memory on an OS without
/// overcommit). An honest message costs a logarithmic number of moves, and none at all
/// into a buffer reused from an earlier message of the same size.
///
/// A failed allocation is the peer's doing (it chose the size, within the limit) and
/// leaves the frame unread, so the connection cannot go on: [`Error::Corrupted`].
pub(super) fn grow_for_chunk(
    buf: &mut Vec<u8>,
    incoming: usize,
    total: usize,
) -> Result<(), Error> {
    let needed = buf.len() + incoming;
    if needed <= buf.capacity() {
        return Ok(());
    }
    let target = buf.capacity().saturating_mul(2).min(total).max(needed);
    buf.try_reserve_exact(target - buf.len())
        .map_err(|_| Error::Corrupted {
            detail: "a chunked message is larger than this process could allocate",
        })
}

#[cfg(test)]
mod tests {
    use super::grow_for_chunk;

    #[test]
    fn a_chunked_message_is_held_as_it_arrives_doubling_up_to_its_total() {
        let total = 16 << 20;
        let chunk = 32 << 10;
        let mut buf = Vec::new();
        grow_for_chunk(&mut buf, chunk - 8, total).unwrap();
        // A first chunk's worth, not the 16 MiB announced.
        assert!(buf.capacity() < 2 * chunk, "{}", buf.capacity());
        // Then doubling as the chunks arrive, capped at the total.
        let mut moves = 0;
        while buf.len() < total {
            let incoming = chunk.min(total - buf.len());
            let before = buf.capacity();
            grow_for_chunk(&mut buf, incoming, total).unwrap();
            moves += usize::from(buf.capacity() != before);
            assert!(buf.capacity() <= total && buf.capacity() >= buf.len() + incoming);
            buf.resize(buf.len() + incoming, 0);
        }
        assert_eq!(buf.capacity(), total);
        assert!(moves <= 10, "{moves} moves for 512 chunks");
        // A buffer reused for a message of the same size grows no more.
        buf.clear();
        let capacity = buf.capacity();
        grow_for_chunk(&mut buf, chunk, total).unwrap();
        assert_eq!(buf.capacity(), capacity);
    }
}
