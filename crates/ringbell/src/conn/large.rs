//! Large messages through a region (issue 14): the sender's own region, made on first use
//! and granted over the control channel, and the peer's, mapped when its first `Large` or
//! `Piece` frame arrives. The arithmetic and the checks are in `core/large.rs`; here are
//! the mappings, the copies in and out (a message whole, with its `Large` frame, or in
//! pieces, a `Piece` frame each), and the grant's trip over the control channel.
//!
//! # When chunks are still used
//!
//! A message larger than one frame goes through the region: in pieces from a side that
//! spins or waits `Adaptive` (the default), whole from one that blocks
//! (`Connection::large_route`; the measured reason is in `conn/send.rs`), unless the
//! region cannot be had: then in chunks through the ring, which the receiver still takes.
//! That is when
//!
//! - the OS refuses to make the region (out of memory, or of shared memory: `/dev/shm`
//!   full); the connection then keeps to chunks for its life, rather than retry a failing
//!   syscall for every message;
//! - the grant would not outlive this process (`ControlStream::grants_outlive_sender`):
//!   a Windows client's, which the server pulls from the client's handle table. A message
//!   sent just before the client exits must still arrive (the ring's data is in the
//!   server's segment, but the region would go with the client), so a Windows client
//!   sends large messages in chunks; its server's replies use the region.
//!
//! # Not charged to a server's memory budget
//!
//! A region lives as long as its connection, so a region charged to the server's
//! [memory budget](crate::ServerConfig::memory_budget) for its life would hold that budget
//! for good: with the smallest budget allowed (the largest message and a call's 4,112
//! bytes), one region of twice a message left no room to receive the next message, and
//! the server waited for ever (found by
//! `limits::a_server_with_the_smallest_budget_echoes_large_messages`). So regions are
//! bounded per connection, as the rings are, and documented with `max_message_size`: a
//! server holds at most `max_connections` × (its own region and its client's), each at
//! most 2 × `max_message_size`, and only on connections that sent messages larger than a
//! frame. A large message received is still reserved in the budget while it is copied
//! out, as a chunked one is while it arrives.
//!
//! # What a peer can make us hold
//!
//! At most one region per direction and connection: our outgoing one, replaced only once
//! everything in it was read (made once, of `PIECES_REGION`, 512 KiB, when we send in
//! pieces), and the peer's incoming one, whose mapping goes as soon as
//! the next generation is mapped (the ring delivers frames in order, so nothing of the old
//! one is unread by then), at most [`region_bound`] of the message limit in its
//! direction: 2 × `max_message_size`, rounded up to 64 KiB (what whole messages need; a
//! peer that sends in pieces grants 512 KiB). A peer that grants a new
//! generation with every message makes us map and unmap, never hold more.

//!
//! # The control channel carries data now
//!
//! Before, nothing was written on it after the handshake, and the event loops watch it
//! for the peer's death. A grant lies there only between its write and the receive of
//! the frame that names it, which follows at once; and a stirred control channel is not
//! taken for a hang-up anywhere: the sweeper and the client driver (edge-triggered
//! pollers) mark the connection to check its peer with `peer_gone`, which asks for the
//! hang-up itself (`POLLRDHUP` on Unix, the pipe's or the process's end on Windows), and
//! `AsyncConnection`'s await clears the readiness it saw, so bytes left unread never make
//! a loop spin. Only the receive path reads the channel.
//!
//! (On Windows a client cannot know when the server has pulled a handle it offered, so it
//! would have to keep its regions' offers until the connection closes; it has no region,
//! see above.)

#![allow(unsafe_code)]

use std::io;
use std::ptr;
use std::time::{Duration, Instant};

use super::send::SendProgress;
use super::{corrupted, Connection};
use crate::config::WaitStrategy;
use crate::core::large::{
    piece_len, pieces_region_capacity, region_bound, region_capacity_for, FrameCheck, Incoming,
    LargeRef, PieceRef, RegionGrant, RegionRing, LARGE_REF_LEN, PIECE_REF_LEN, REGION_GRANT_LEN,
};
use crate::core::ring::{max_frame_payload, Frame, FrameKind, Producer, RingError};
use crate::error::Error;
use crate::sys::SharedRegion;

/// How long a receiver waits for a region's grant on the control channel (see
/// [`Connection::read_region_grant`]): far beyond what an honest peer's grant takes to
/// arrive (it is written before the frame that names it), short enough that a peer that
/// never sends it holds a sweeper only briefly, once.
const GRANT_PATIENCE: Duration = Duration::from_millis(100);

/// What [`Connection::try_push_pieces`] or [`Connection::try_push_large`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LargePush {
    /// The whole message is in the region, and its frame (or its last piece's) in the ring.
    Done,
    /// No room yet, in the region or for the frame in the ring: whole, nothing was
    /// written; in pieces, the next piece waits.
    Full,
    /// No region can be had for it: send it in chunks.
    Chunks,
}

/// How a message larger than one frame goes (`Connection::large_route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LargeRoute {
    /// Whole through the region, with one `Large` frame.
    Whole,
    /// Through the region in pieces, each with its `Piece` frame.
    Pieces,
}

/// This side's outgoing region, and what it knows of its use.
#[derive(Debug)]
pub(super) struct Outgoing {
    region: Option<OutgoingRegion>,
    /// The generation of the last region made (0: none yet).
    generation: u32,
    /// Chunks from now on: the OS refused a region once, a grant failed half-way, or our
    /// grants would not outlive us (see the module's docs).
    unavailable: bool,
    /// The length of the piece a send in pieces waits to place (`None` when no send in
    /// pieces waits): what `room_for` looks for.
    pub(super) waiting_piece: Option<usize>,
}

impl Outgoing {
    /// No region yet; none ever where a grant would not outlive this process (see the
    /// module's docs).
    pub(super) fn new(grants_outlive_us: bool) -> Outgoing {
        Outgoing {
            region: None,
            generation: 0,
            unavailable: !grants_outlive_us,
            waiting_piece: None,
        }
    }
}

#[derive(Debug)]
struct OutgoingRegion {
    region: SharedRegion,
    generation: u32,
    placed: RegionRing,
}

/// The peer's region, mapped.
#[derive(Debug)]
pub(super) struct IncomingRegion {
    region: SharedRegion,
    generation: u32,
}

impl OutgoingRegion {
    /// Copies `msg` into the region at `offset`.
    fn write(&self, offset: usize, msg: &[u8]) {
        assert!(
            offset
                .checked_add(msg.len())
                .is_some_and(|end| end <= self.region.len()),
            "a placement outside the region"
        );
        // SAFETY: in bounds by the assertion; the mapping lives as long as `self`; `msg` is
        // private memory, so the ranges cannot overlap. The peer may write the region too,
        // which can only spoil the message it receives.
        unsafe {
            ptr::copy_nonoverlapping(msg.as_ptr(), self.region.as_ptr().add(offset), msg.len())
        }
    }
}

impl IncomingRegion {
    /// Appends `len` bytes from `offset` to `out`, copying straight into its spare
    /// capacity. `offset + len` must lie in the region (checked by `Incoming::check_frame`).
    fn append(&self, offset: usize, len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= self.region.len()),
            "a checked frame outside the region"
        );
        // The peer chose the size, within the limit: a failed allocation is its doing, and
        // leaves the frame unread, so the connection cannot go on.
        out.try_reserve_exact(len).map_err(|_| Error::Corrupted {
            detail: "a large message is larger than this process could allocate",
        })?;
        let spare = &mut out.spare_capacity_mut()[..len];
        // SAFETY: `offset + len` lies in the mapping (asserted above), which lives as long
        // as `self`; `spare` has room for `len` bytes; `u8` has no invalid bit patterns.
        // The peer may write the region meanwhile, which only garbles its own message.
        unsafe {
            ptr::copy_nonoverlapping(
                self.region.as_ptr().add(offset),
                spare.as_mut_ptr().cast::<u8>(),
                len,
            );
            // SAFETY: the `len` bytes after the current length were initialised just above.
            out.set_len(out.len() + len);
        }
        Ok(())
    }
}

/// Whether a send of `payload` bytes that reported `Full` can go on now: for a message
/// that fits one frame (or a chunk), room for it in the ring; for a larger one in pieces,
/// room for its next piece's frame in the ring and for the piece in the region (or no
/// region yet, which the send makes); whole, room for its `Large` frame in the ring and
/// for the message in the region (or, if the region must grow, everything in it read).
/// Takes the fields it needs, so that a wait can hold the others.
pub(super) fn room_for(
    tx: &mut Producer,
    outgoing: &mut Outgoing,
    payload: usize,
    limit: usize,
) -> Result<bool, RingError> {
    let largest_frame = max_frame_payload(tx.capacity());
    if payload <= largest_frame || outgoing.unavailable {
        return tx.has_room(payload.min(largest_frame));
    }
    if let Some(piece) = outgoing.waiting_piece {
        if !tx.has_room(PIECE_REF_LEN)? {
            return Ok(false);
        }
        let Some(current) = outgoing.region.as_mut() else {
            return Ok(true);
        };
        current.placed.reclaim(tx.consumer_head()?);
        return Ok(current.placed.place(piece).is_some());
    }
    if !tx.has_room(LARGE_REF_LEN)? {
        return Ok(false);
    }
    let Some(current) = outgoing.region.as_mut() else {
        return Ok(true);
    };
    current.placed.reclaim(tx.consumer_head()?);
    if current.placed.capacity() < region_capacity_for(payload, limit) {
        return Ok(current.placed.is_drained());
    }
    Ok(current.placed.place(payload).is_some())
}

impl Connection {
    /// How a large message goes from this side: by its wait strategy (the reason,
    /// measured, is at the caller in `send.rs`); in chunks where no region can be had
    /// (`try_push_pieces` and `try_push_large` say so).
    pub(super) fn large_route(&self) -> LargeRoute {
        match self.settings.wait {
            WaitStrategy::Spin | WaitStrategy::Adaptive { .. } => LargeRoute::Pieces,
            WaitStrategy::Block => LargeRoute::Whole,
        }
    }

    /// Puts as much of `msg` (larger than one frame) as fits now into the outgoing region
    /// in pieces, continuing from `sent`, and pushes each piece's frame once the piece is
    /// in; makes, and grants, the region first if there is none. A piece's frame goes
    /// after the piece, so what the peer can see is there; a send that gives up part-way
    /// leaves pieces the peer has taken, which the abort of `abandon_send` withdraws, as
    /// it withdraws chunks.
    pub(super) fn try_push_pieces(
        &mut self,
        msg: &[u8],
        correlation: u64,
        sent: &mut SendProgress,
        publish: super::Publish,
    ) -> Result<LargePush, Error> {
        if self.tx_large.region.is_none() {
            debug_assert_eq!(sent.bytes, 0, "a region goes only between messages");
            if self.tx_large.unavailable {
                return Ok(LargePush::Chunks);
            }
            if !self.tx.has_room(PIECE_REF_LEN).map_err(corrupted)? {
                self.tx_large.waiting_piece = Some(1);
                return Ok(LargePush::Full);
            }
            if !self.make_region(pieces_region_capacity(self.send_limit()))? {
                return Ok(LargePush::Chunks);
            }
        }
        while sent.bytes < msg.len() {
            let Some(current) = self.tx_large.region.as_mut() else {
                unreachable!("a region was made above, and stays while a message is sent");
            };
            let len = piece_len(msg.len(), sent.bytes, current.placed.capacity());
            let mut placement = current.placed.place(len);
            if placement.is_none() {
                // Reclaimed only when the region looks full, as the ring's producer reloads
                // the consumer's head only then.
                current
                    .placed
                    .reclaim(self.tx.consumer_head().map_err(corrupted)?);
                placement = current.placed.place(len);
            }
            let Some(placement) = placement else {
                self.tx_large.waiting_piece = Some(len);
                return Ok(LargePush::Full);
            };
            if !self.tx.has_room(PIECE_REF_LEN).map_err(corrupted)? {
                self.tx_large.waiting_piece = Some(len);
                return Ok(LargePush::Full);
            }
            let piece = &msg[sent.bytes..sent.bytes + len];
            current.write(placement.offset, piece);
            let frame = PieceRef {
                piece: LargeRef {
                    generation: current.generation,
                    offset: placement.offset as u64,
                    len: len as u64,
                },
                total: msg.len() as u64,
            };
            // Room for the frame was found just above, and nothing was written since.
            if !self.try_push_frame(FrameKind::Piece, correlation, &[&frame.encode()], publish)? {
                self.tx_large.waiting_piece = Some(len);
                return Ok(LargePush::Full);
            }
            let ring_after = self.tx.tail();
            if let Some(current) = self.tx_large.region.as_mut() {
                current.placed.commit(placement, ring_after);
            }
            sent.bytes += len;
            sent.pieces = true;
        }
        Ok(LargePush::Done)
    }

    /// Puts `msg` (larger than one frame) into the outgoing region and pushes its `Large`
    /// frame, without waiting; makes, and grants, a larger region first if it needs one.
    /// All or nothing: the frame goes last, so a message the peer can see is whole, and a
    /// send that gives up (`Full`, then a timeout) leaves nothing for it to see.
    pub(super) fn try_push_large(
        &mut self,
        msg: &[u8],
        correlation: u64,
        publish: super::Publish,
    ) -> Result<LargePush, Error> {
        if self.tx_large.unavailable {
            return Ok(LargePush::Chunks);
        }
        let limit = self.send_limit();
        if !room_for(&mut self.tx, &mut self.tx_large, msg.len(), limit).map_err(corrupted)? {
            return Ok(LargePush::Full);
        }
        let wanted = region_capacity_for(msg.len(), limit);
        let grows = self
            .tx_large
            .region
            .as_ref()
            .is_none_or(|current| current.placed.capacity() < wanted);
        if grows && !self.make_region(wanted)? {
            return Ok(LargePush::Chunks);
        }
        let Some(current) = self.tx_large.region.as_mut() else {
            return Ok(LargePush::Chunks);
        };
        let Some(placement) = current.placed.place(msg.len()) else {
            return Ok(LargePush::Full);
        };
        current.write(placement.offset, msg);
        let large = LargeRef {
            generation: current.generation,
            offset: placement.offset as u64,
            len: msg.len() as u64,
        };
        // `room_for` found room for the frame, and nothing was written since.
        if !self.try_push_frame(FrameKind::Large, correlation, &[&large.encode()], publish)? {
            return Ok(LargePush::Full);
        }
        let ring_after = self.tx.tail();
        if let Some(current) = self.tx_large.region.as_mut() {
            current.placed.commit(placement, ring_after);
        }
        Ok(LargePush::Done)
    }

    /// Replaces the outgoing region (everything in the old one has been read: `room_for`
    /// said so) by a new one of `capacity` bytes, and sends its grant to the peer before
    /// any frame names it. `false`: no region can be had (the OS refused), send in chunks.
    fn make_region(&mut self, capacity: usize) -> Result<bool, Error> {
        let Some(generation) = self.tx_large.generation.checked_add(1) else {
            // Four billion regions on one connection: keep to chunks rather than wrap.
            self.tx_large.unavailable = true;
            return Ok(false);
        };
        let (region, grant) = match SharedRegion::create_for_messages(capacity) {
            Ok(made) => made,
            Err(error) => {
                tracing::debug!(
                    "ringbell: no large-message region ({error}); large messages go in chunks"
                );
                self.tx_large.unavailable = true;
                return Ok(false);
            }
        };
        // The old region goes first: at most one per direction.
        self.tx_large.region = None;
        let announce = RegionGrant {
            generation,
            capacity: capacity as u64,
        };
        if let Err(error) = self.control.send_with_grants(&announce.encode(), &[&grant]) {
            // Part of the grant may be on its way: never send another on this stream, which
            // the peer could no longer read in step. No frame names this generation, so the
            // peer never reads what did arrive.
            self.tx_large.unavailable = true;
            return Err(control_error("sending a large-message region", error));
        }
        self.tx_large.generation = generation;
        self.tx_large.region = Some(OutgoingRegion {
            region,
            generation,
            placed: RegionRing::new(capacity),
        });
        Ok(true)
    }

    /// Takes the message of a `Large` frame (just peeked) into `buf`: maps the region of
    /// the next generation first if the frame names it, checks the frame against it, and
    /// copies the message out. Does not release the frame.
    pub(super) fn take_large(&mut self, frame: &Frame, buf: &mut Vec<u8>) -> Result<usize, Error> {
        let mut payload = [0u8; LARGE_REF_LEN];
        if frame.payload_len() != LARGE_REF_LEN {
            return Err(Error::Corrupted {
                detail: "a large-message frame has the wrong length",
            });
        }
        self.rx.copy_payload(frame, 0, &mut payload);
        let (offset, len) = self.locate(|view| view.check_frame(&payload))?;
        self.copy_out(offset, len, buf)?;
        Ok(len)
    }

    /// The length of the message a `Piece` frame (just peeked) is part of, checked against
    /// the limit, before its region is looked at (for the budget's reservation at the
    /// first piece); [`take_piece`](Self::take_piece) checks the rest.
    pub(super) fn piece_total(&self, frame: &Frame) -> Result<usize, Error> {
        let payload = self.piece_payload(frame)?;
        PieceRef::decode(&payload)
            .and_then(|piece| usize::try_from(piece.total).ok())
            .filter(|&total| total <= self.receive_limit())
            .ok_or(Error::Corrupted {
                detail: "a message in pieces exceeds the connection's maximum size",
            })
    }

    /// Appends the piece a `Piece` frame (just peeked) names to `buf`, which holds the
    /// pieces of its message so far, announced as `total` bytes by the first: checks the
    /// frame (its region, mapping the next generation if it names it; that it announces
    /// the same total; that the pieces do not add up to more), copies the piece out,
    /// releases the frame and publishes our head at once (the sender reclaims its region
    /// by it, and may wait for it). Returns the piece's length.
    pub(super) fn take_piece(
        &mut self,
        frame: &Frame,
        total: usize,
        buf: &mut Vec<u8>,
    ) -> Result<usize, Error> {
        let payload = self.piece_payload(frame)?;
        let mut announced = None;
        let (offset, len) = self.locate(|view| {
            let (checked, total) = view.check_piece(&payload)?;
            announced = Some(total);
            Ok(checked)
        })?;
        if announced != Some(total) {
            return Err(Error::Corrupted {
                detail: "the pieces of a message disagree on its length",
            });
        }
        if buf.len() + len > total {
            return Err(Error::Corrupted {
                detail: "the pieces of a message add up to more than its length",
            });
        }
        super::receive::grow_for_chunk(buf, len, total)?;
        self.copy_out(offset, len, buf)?;
        self.rx.release(frame);
        self.publish_received();
        Ok(len)
    }

    fn piece_payload(&self, frame: &Frame) -> Result<[u8; PIECE_REF_LEN], Error> {
        let mut payload = [0u8; PIECE_REF_LEN];
        if frame.payload_len() != PIECE_REF_LEN {
            return Err(Error::Corrupted {
                detail: "a piece frame has the wrong length",
            });
        }
        self.rx.copy_payload(frame, 0, &mut payload);
        Ok(payload)
    }

    /// Where in the peer's region the bytes a frame names lie, by `check` (one of
    /// `Incoming`'s checks of that frame): maps the region of the next generation first if
    /// the frame names it, and checks the frame again against it.
    fn locate(
        &mut self,
        mut check: impl FnMut(&Incoming) -> Result<FrameCheck, &'static str>,
    ) -> Result<(usize, usize), Error> {
        match check(&self.incoming_view()) {
            Ok(FrameCheck::Mapped { offset, len }) => Ok((offset, len)),
            Ok(FrameCheck::NextGeneration) => {
                self.map_next_region()?;
                match check(&self.incoming_view()) {
                    Ok(FrameCheck::Mapped { offset, len }) => Ok((offset, len)),
                    Ok(FrameCheck::NextGeneration) => unreachable!("a generation was just mapped"),
                    Err(detail) => Err(Error::Corrupted { detail }),
                }
            }
            Err(detail) => Err(Error::Corrupted { detail }),
        }
    }

    /// Appends `len` bytes from `offset` in the peer's region (checked by `locate`) to `buf`.
    fn copy_out(&self, offset: usize, len: usize, buf: &mut Vec<u8>) -> Result<(), Error> {
        let Some(incoming) = self.rx_large.as_ref() else {
            unreachable!("a frame checked as mapped has a region");
        };
        incoming.append(offset, len, buf)
    }

    /// What the checks of `core/large.rs` need to know of the peer's region.
    fn incoming_view(&self) -> Incoming {
        Incoming {
            mapped: self
                .rx_large
                .as_ref()
                .map(|incoming| (incoming.generation, incoming.region.len() as u64)),
            limit: self.receive_limit(),
        }
    }

    /// Takes the grant of the peer's next region from the control channel within a short
    /// deadline (the peer sent it before it published the frame that names it, so it is
    /// there, or the peer broke the protocol), checks it, and maps the region in place of
    /// the old one.
    fn map_next_region(&mut self) -> Result<(), Error> {
        let (bytes, mut grants) = self.read_region_grant()?;
        let view = self.incoming_view();
        let capacity = view
            .check_grant(&bytes)
            .map_err(|detail| Error::Corrupted { detail })?;
        debug_assert!(capacity <= region_bound(view.limit));
        let generation = view.next_generation().ok_or(Error::Corrupted {
            detail: "the peer's regions ran out of generations",
        })?;
        let grant = match (grants.pop(), grants.is_empty()) {
            (Some(grant), true) => grant,
            _ => {
                return Err(Error::Corrupted {
                    detail: "a region grant came with other than one handle",
                })
            }
        };
        let owner = self
            .control
            .peer_user()
            .map_err(|error| control_error("identifying the peer of a region", error))?;
        // The old mapping goes first: nothing in it is unread (frames arrive in order).
        self.rx_large = None;
        let region = SharedRegion::adopt(grant, capacity, owner).map_err(|error| {
            tracing::debug!("ringbell: refusing the peer's large-message region: {error}");
            Error::Corrupted {
                detail: "the peer's large-message region failed its checks",
            }
        })?;
        self.rx_large = Some(IncomingRegion { region, generation });
        Ok(())
    }

    /// Reads one region grant message, and the handles that came with it, off the control
    /// channel, waiting at most [`GRANT_PATIENCE`]. The peer wrote it before it published
    /// the frame that names it, so it is there: on Unix at once; on Windows a read issued
    /// ahead on the pipe (for readiness) may not have reported it yet, which is why this is
    /// a short wait rather than none (seen under Wine: a non-blocking read found nothing).
    /// A grant still missing then is the peer's fault, so a hostile peer holds us (and a
    /// sweeper, all its connections) for at most that long, once: its connection ends.
    fn read_region_grant(&self) -> Result<([u8; REGION_GRANT_LEN], Vec<crate::sys::Grant>), Error> {
        let mut bytes = [0u8; REGION_GRANT_LEN];
        let deadline = Instant::now() + GRANT_PATIENCE;
        let read = self
            .control
            .set_deadline(Some(deadline))
            .and_then(|()| self.control.recv_with_grants(&mut bytes));
        // The deadline must not outlive this read, whatever it gave: the channel's other
        // uses wait as long as they need.
        let unbounded = self.control.set_deadline(None);
        let grants = match read {
            Ok(grants) => grants,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return Err(Error::Corrupted {
                    detail: "a large message names a region whose grant never arrived",
                })
            }
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                tracing::debug!("ringbell: refusing the handles of a region grant: {error}");
                return Err(Error::Corrupted {
                    detail: "a region grant came with handles that cannot be taken",
                });
            }
            Err(error) => return Err(control_error("reading a large-message region", error)),
        };
        unbounded.map_err(|error| control_error("reading a large-message region", error))?;
        Ok((bytes, grants))
    }
}

/// An error of the control channel: its end is the peer's, anything else an IO error.
fn control_error(what: &str, error: io::Error) -> Error {
    match error.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => Error::PeerDied,
        _ => Error::io(what, error),
    }
}
