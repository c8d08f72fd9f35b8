//! The single-producer single-consumer byte ring and its framing: pure algorithm over a
//! raw region, with no syscalls.
//!
//! The algorithm is the classic Lamport ring with free-running indices, as in rtrb and
//! the Linux `io_uring` queues:
//!
//! * `tail` and `head` are `u64` byte counters that only grow; a byte's position is
//!   `counter & (capacity - 1)`, occupancy is `tail - head`.
//! * The producer copies a frame into the free space, then publishes it by storing the
//!   new `tail` with `Release`. The consumer loads `tail` with `Acquire` before it reads
//!   the bytes, copies them out, then stores the new `head` with `Release`, which hands
//!   the space back. Each side keeps a cached copy of the other's index and reloads it
//!   only when the ring looks empty (consumer) or full (producer).
//! * The consumer hands space back lazily: it publishes `head` once an eighth of the ring
//!   is free to return, and whenever its caller is about to wait ([`Consumer::publish`]).
//!   Publishing after every frame made the head's cache line, and the fence that follows
//!   each publication, the bottleneck of one-way streaming (measured: 4 M instead of
//!   14–16 M 64-byte messages/s). A producer never waits for space that a *waiting*
//!   consumer has freed. While the consumer is busy elsewhere, at most an eighth of the
//!   ring is consumed but not handed back; a producer that blocks then has more than
//!   3/8 of the ring still unread ahead of the consumer (a frame and its padding need
//!   less than half the ring), so it waits for the consumer, as it would on any full
//!   buffer, never for that eighth alone.
//! * Each side keeps its *own* index in private memory and only ever writes it to the
//!   segment: the peer may scribble over the shared copy, but can never make us read or
//!   write outside our bounds.
//! * Tried and not kept: publishing each frame by its own header word (with a zeroed
//!   terminator word after it) instead of a shared tail, so that the consumer polls the
//!   frame's line rather than a separate tail line. Measured side by side on the 2-core
//!   development VM, 64-byte round trips stayed at about 2× a raw cache-line spin either
//!   way (a 16-byte header plus 64 bytes of payload spans two cache lines, and the second
//!   is fetched after the first), and streaming stayed at 13–17 M messages/s; the shared
//!   tail is simpler to validate, so it stayed.
//! * Also tried and not kept (issue 14, 2026-12-07): a consumer that, while it spins on an
//!   empty ring, also reads the byte where the next frame will start, so that the frame's
//!   line would travel with the tail's. Spinning 64-byte round trips got slower, not
//!   faster: p50 0.91–0.94 µs against 0.78–0.82 µs for a build without it (of 12-02; main
//!   without it measured 0.81–0.82 µs beside it before), four interleaved pairs of
//!   `ringbell serve`/`ping --wait spin` pinned to the two cores (the reads pull the line
//!   away from the producer while it writes the frame).
//!
//! # Frames
//!
//! A frame is a 16-byte header followed by the payload, padded to a multiple of 8 bytes:
//!
//! ```text
//! 0..4   payload length, u32 little-endian
//! 4      kind (FrameKind)
//! 5      flags (zero for now)
//! 6..8   reserved (zero)
//! 8..16  correlation id, u64 little-endian (0 unless request/response uses it)
//! ```
//!
//! Frames never wrap. When a frame does not fit before the end of the ring, the producer
//! fills the rest with a padding frame (or, when fewer than 16 bytes are left, with
//! nothing: both sides skip a tail shorter than a header) and writes the frame at
//! position 0. A frame is at most a quarter of the ring, so it always fits once the
//! consumer has caught up.
//!
//! The kinds ([`FrameKind`]): `Message`, a whole message; `Pack`, several whole messages
//! of up to `PACKED_MAX_LEN` (`conn/send.rs`) bytes each, as `len u32 | bytes` one after the
//! other ([`pack_entry`]), which `feed` and `send_batch` write so that a batch of small
//! messages costs one header and one frame to check (a pack is closed when it is
//! published, or when the next message does not fit it; a pack of one becomes a
//! `Message`); `Large`, a message larger than
//! a frame, which lies in the sender's large-message region while its 20-byte frame says
//! where (`core/large.rs`; the receiver publishes its head as soon as it has copied one
//! out, because the sender reclaims the region by it); `Piece`, a piece of such a message
//! in the same region, the message whole once its pieces add up to the length each
//! announces (protocol 6: a side that spins sends large messages in pieces, one that
//! blocks whole, `conn/send.rs` says why); `First`, `Middle`, `Last`, a large message in
//! chunks, which an `Adaptive` side sends, and any where it has no region
//! (`conn/large.rs` says when);
//! `Abort`, which withdraws a message sent in part, in chunks or in pieces; and
//! `Padding`.
//!
//! # Trust
//!
//! The consumer validates everything it reads from the segment: the published `tail` must
//! lie within `[head, head + capacity]` and never move backwards, a header's kind must be
//! known, and its length must fit in what was published and before the ring's end. Any
//! violation is a [`RingError`], never a panic or an out-of-bounds access. Payload bytes
//! are copied out through raw pointers; no reference to peer-writable memory is created.

#![allow(unsafe_code)]

use std::ptr;

use crate::core::hints::{self, CACHE_LINE};
use crate::core::layout::RingControl;
use crate::core::sync::Ordering;

/// Bytes in a frame header.
pub(crate) const FRAME_HEADER_LEN: usize = 16;
/// Every frame starts on a multiple of this.
pub(crate) const FRAME_ALIGN: usize = 8;
/// The smallest ring: small enough for tests, large enough for a header and a payload.
pub(crate) const MIN_CAPACITY: usize = 256;
/// How many bytes [`Consumer::take_messages`] copies out of the ring at a time: large
/// enough that a run of small frames is copied in a few long copies (which the CPU
/// streams, instead of stopping at each header to learn where the payload ends), small
/// enough that what it copies past the last frame it takes (a chunk it leaves to `peek`)
/// costs little.
pub(crate) const COPY_STEP: usize = 4 << 10;
/// The largest ring: 1 GiB, far beyond any sane use, and safely inside a u32 frame length.
pub(crate) const MAX_CAPACITY: usize = 1 << 30;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// A whole message.
    Message,
    /// The first chunk of a message larger than one frame; the payload starts with the
    /// message's total length as a u64 little-endian.
    First,
    /// A middle chunk.
    Middle,
    /// The final chunk; the message is complete after it.
    Last,
    /// The sender gave up on a message sent in part, in chunks or in pieces (its send timed
    /// out, or was cancelled): discard what came of it.
    Abort,
    /// A message larger than one frame, in the sender's large-message region: the payload
    /// says which region and where (`core::large::LargeRef`).
    Large,
    /// Several whole messages in one frame, each as `len u32 | bytes` ([`pack_entry`]),
    /// all with the frame's correlation id: what `feed` and `send_batch` write.
    Pack,
    /// A piece of a message larger than one frame, in the sender's large-message region:
    /// the payload says where, and the whole message's length
    /// (`core::large::PieceRef`). The message is whole once its pieces add up to it.
    Piece,
    /// Filler up to the end of the ring.
    Padding,
}

impl FrameKind {
    fn to_byte(self) -> u8 {
        match self {
            FrameKind::Message => 1,
            FrameKind::First => 2,
            FrameKind::Middle => 3,
            FrameKind::Last => 4,
            FrameKind::Abort => 5,
            FrameKind::Large => 6,
            FrameKind::Pack => 7,
            FrameKind::Piece => 8,
            FrameKind::Padding => 0xff,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => FrameKind::Message,
            2 => FrameKind::First,
            3 => FrameKind::Middle,
            4 => FrameKind::Last,
            5 => FrameKind::Abort,
            6 => FrameKind::Large,
            7 => FrameKind::Pack,
            8 => FrameKind::Piece,
            0xff => FrameKind::Padding,
            _ => return None,
        })
    }
}

/// A frame header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) len: u32,
    pub(crate) kind: FrameKind,
    pub(crate) correlation: u64,
}

impl FrameHeader {
    pub(crate) fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut bytes = [0u8; FRAME_HEADER_LEN];
        bytes[0..4].copy_from_slice(&self.len.to_le_bytes());
        bytes[4] = self.kind.to_byte();
        bytes[8..16].copy_from_slice(&self.correlation.to_le_bytes());
        bytes
    }

    /// Decodes a header; `None` if the kind is unknown or a reserved byte is set.
    pub(crate) fn decode(bytes: &[u8; FRAME_HEADER_LEN]) -> Option<Self> {
        let kind = FrameKind::from_byte(bytes[4])?;
        if bytes[5..8] != [0, 0, 0] {
            return None;
        }
        let len = u32::from_le_bytes(bytes[0..4].try_into().ok()?);
        let correlation = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
        Some(FrameHeader {
            len,
            kind,
            correlation,
        })
    }
}

/// How the peer broke the ring's invariants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingError(pub(crate) &'static str);

/// How far ahead of where it writes [`Producer::write_packed_run`] asks for the ring's
/// lines (see [`hints::prefetch_for_write`]): 8 lines, about 7 messages of 64 bytes.
/// 256 B and 1 KiB measured the same, 2 KiB a little less (examples/batches.rs,
/// interleaved).
const PREFETCH_AHEAD: usize = 512;

/// The largest publication whose lines [`Producer::prepare_to_wait`] demotes: a few
/// lines, a frame of a small message (the round trips that wait on each line), not a
/// batch, whose consumer is busy with its earlier lines anyway.
const DEMOTE_BEFORE_WAIT_MAX: usize = 4 * CACHE_LINE;

/// How much of where the next message goes [`Producer::prepare_to_wait`] asks for: a
/// frame's header and a small message. Three lines measured the same as two.
const PREFETCH_BEFORE_WAIT: usize = 2 * CACHE_LINE;

/// Bytes before each message in a [`FrameKind::Pack`] frame: its length.
pub(crate) const PACK_ENTRY_HEADER_LEN: usize = 4;

/// The message of a pack whose entry starts `offset` bytes into a pack's payload of
/// `payload_len` bytes: where its bytes lie in the payload. `read_len` reads the entry's
/// length field (the 4 bytes at `offset`), once the field is known to lie in the payload.
/// The entry must lie inside the payload, and the message be at most `max_len` bytes.
/// The callers read the field once, check it here, and copy what it says, so a peer that
/// rewrites the pack meanwhile can only garble its own messages.
pub(crate) fn pack_entry(
    offset: usize,
    payload_len: usize,
    max_len: usize,
    read_len: impl FnOnce(usize) -> [u8; PACK_ENTRY_HEADER_LEN],
) -> Result<std::ops::Range<usize>, RingError> {
    let start = offset + PACK_ENTRY_HEADER_LEN;
    if start > payload_len {
        return Err(RingError("a pack ends inside a message's length"));
    }
    let len = u32::from_le_bytes(read_len(offset)) as usize;
    if len > max_len {
        return Err(RingError(
            "a packed message exceeds the connection's maximum size",
        ));
    }
    match start.checked_add(len) {
        Some(end) if end <= payload_len => Ok(start..end),
        _ => Err(RingError("a packed message runs past its pack")),
    }
}

/// Bytes a frame with `payload` bytes occupies in the ring.
pub(crate) fn frame_size(payload: usize) -> usize {
    (FRAME_HEADER_LEN + payload).next_multiple_of(FRAME_ALIGN)
}

/// The largest payload one frame may carry in a ring of `capacity` bytes.
pub(crate) fn max_frame_payload(capacity: usize) -> usize {
    capacity / 4 - FRAME_HEADER_LEN
}

/// Whether `capacity` is usable as a ring size.
pub(crate) fn valid_capacity(capacity: usize) -> bool {
    capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity)
}

/// The raw parts of one ring: its control block and its data bytes.
///
/// Copyable so that a producer and a consumer can be made over the same ring in tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawRing {
    control: *const RingControl,
    data: *mut u8,
    capacity: usize,
}

impl RawRing {
    /// # Safety
    ///
    /// `control` must point to a `RingControl` and `data` to `capacity` bytes, both valid
    /// for reads and writes (by this and other processes, through atomics and raw copies
    /// only) for as long as any `Producer` or `Consumer` made from this value is used.
    /// `capacity` must satisfy [`valid_capacity`].
    pub(crate) unsafe fn new(control: *const RingControl, data: *mut u8, capacity: usize) -> Self {
        debug_assert!(valid_capacity(capacity));
        RawRing {
            control,
            data,
            capacity,
        }
    }

    fn control(&self) -> &RingControl {
        // SAFETY: `new`'s contract keeps the control block valid while we are used; it holds
        // only atomics, so a shared reference is sound even while the peer writes to it.
        unsafe { &*self.control }
    }

    fn position(&self, counter: u64) -> usize {
        (counter & (self.capacity as u64 - 1)) as usize
    }

    /// Copies `src` into the ring at `pos`.
    ///
    /// # Safety
    ///
    /// `pos + src.len() <= capacity`.
    unsafe fn write_at(&self, pos: usize, src: &[u8]) {
        debug_assert!(pos + src.len() <= self.capacity);
        // SAFETY: in bounds by the caller's promise; `data` is valid by `new`'s contract;
        // `src` is private memory, so the ranges cannot overlap.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(pos), src.len()) }
    }

    /// Copies `dst.len()` bytes out of the ring at `pos`.
    ///
    /// # Safety
    ///
    /// `pos + dst.len() <= capacity`.
    unsafe fn read_at(&self, pos: usize, dst: &mut [u8]) {
        debug_assert!(pos + dst.len() <= self.capacity);
        // SAFETY: as in `write_at`; the peer may write these bytes concurrently, which can
        // only garble the copy, and the copy is what we validate and parse.
        unsafe { ptr::copy_nonoverlapping(self.data.add(pos), dst.as_mut_ptr(), dst.len()) }
    }
}

/// The writing end of a ring.
#[derive(Debug)]
pub(crate) struct Producer {
    ring: RawRing,
    /// Our own count of bytes written; the shared `tail` is a copy we never read back.
    tail: u64,
    /// How much of `tail` the consumer has been shown: less than `tail` while frames
    /// written with [`try_write`](Producer::try_write) wait for [`publish`](Producer::publish).
    published: u64,
    /// The consumer's `head` as last loaded and validated.
    cached_head: u64,
    /// The pack being written by [`try_write_packed`](Producer::try_write_packed), whose
    /// header is written when it is closed: by the next frame of another kind, by a
    /// message that does not fit it, or by [`publish`](Producer::publish).
    pack: Option<OpenPack>,
    /// The last publication, while it is small and not yet demoted (see
    /// [`prepare_to_wait`](Producer::prepare_to_wait)).
    to_demote: Option<std::ops::Range<u64>>,
}

/// A [`FrameKind::Pack`] frame still growing: its entries are in the ring (and counted in
/// the producer's `tail`), its header not yet.
#[derive(Debug, Clone, Copy)]
struct OpenPack {
    /// Ring position of its header.
    pos: usize,
    /// Payload bytes so far: the entries.
    len: usize,
    /// How many entries.
    entries: usize,
    correlation: u64,
}

// SAFETY: a `Producer` only holds pointers into a mapping that stays valid while it lives
// (RawRing's contract) and is the only writer of the producer-side words; moving it to
// another thread moves that role with it.
unsafe impl Send for Producer {}

impl Producer {
    /// A producer at the start of a fresh ring (both indices zero).
    pub(crate) fn new(ring: RawRing) -> Self {
        Producer {
            ring,
            tail: 0,
            published: 0,
            cached_head: 0,
            pack: None,
            to_demote: None,
        }
    }

    /// Bytes needed to publish a frame of `payload` bytes from the current position,
    /// counting the padding to the ring's end if the frame does not fit before it.
    fn bytes_needed(&self, payload: usize) -> usize {
        let size = frame_size(payload);
        let to_end = self.ring.capacity - self.ring.position(self.tail);
        if size <= to_end {
            size
        } else {
            to_end + size
        }
    }

    fn free_with(&self, head: u64) -> usize {
        self.ring.capacity - (self.tail - head) as usize
    }

    /// Loads the consumer's `head` and checks it: it may only move forwards, and never past
    /// what we published.
    fn reload_head(&mut self) -> Result<(), RingError> {
        // SYNC: pairs with the Release store of `head` in `Consumer::release`: the consumer
        // has finished copying out the bytes before we may overwrite them.
        let head = self.ring.control().head.load(Ordering::Acquire);
        // Never past what we published: frames written and not yet published are ours.
        if head < self.cached_head || head > self.published {
            return Err(RingError(
                "the consumer's head index moved backwards or past the tail",
            ));
        }
        self.cached_head = head;
        Ok(())
    }

    /// The consumer's published `head`, loaded now and checked: everything before it has
    /// been read. The large-message region reclaims by it (`core/large.rs`).
    pub(crate) fn consumer_head(&mut self) -> Result<u64, RingError> {
        self.reload_head()?;
        Ok(self.cached_head)
    }

    /// Asks for the lines of the next `bytes` to be written, with
    /// [`hints::prefetch_for_write`]: the tail's line (which may hold the end of what was
    /// just published; `prepare_to_wait` demotes it right after) and those after it, each
    /// only if it ends within the free space (by the cached head), so that no line of
    /// older frames the consumer has yet to read is taken from it.
    fn prefetch_next(&self, bytes: usize) {
        let free_end = self.tail + self.free_with(self.cached_head) as u64;
        // A line that starts before this ends within the free space.
        let whole_lines_end = (free_end + 1).saturating_sub(CACHE_LINE as u64);
        let end = (self.tail + bytes as u64).min(whole_lines_end);
        for line in self.lines(self.tail, end) {
            hints::prefetch_for_write(line);
        }
    }

    /// The lines (their first bytes' addresses in the ring) that start in `from..to`, the
    /// first rounded down to a line: ring counters, mapped to positions.
    fn lines(&self, from: u64, to: u64) -> impl Iterator<Item = *const u8> + '_ {
        let first = from & !(CACHE_LINE as u64 - 1);
        (first..to).step_by(CACHE_LINE).map(|line| {
            self.ring
                .data
                .wrapping_add(self.ring.position(line))
                .cast_const()
        })
    }

    /// Bytes in the ring.
    pub(crate) fn capacity(&self) -> usize {
        self.ring.capacity
    }

    /// Bytes written so far, published or not.
    pub(crate) fn tail(&self) -> u64 {
        self.tail
    }

    /// Whether a frame of `payload` bytes fits now. Reloads the consumer's index if the
    /// cached one says no.
    pub(crate) fn has_room(&mut self, payload: usize) -> Result<bool, RingError> {
        let needed = self.bytes_needed(payload);
        if self.free_with(self.cached_head) >= needed {
            return Ok(true);
        }
        self.reload_head()?;
        Ok(self.free_with(self.cached_head) >= needed)
    }

    /// Writes one frame whose payload is the concatenation of `parts`, and publishes it
    /// (with every frame written before it). Returns `false`, writing nothing, if there is
    /// no room yet.
    ///
    /// The total payload must be at most [`max_frame_payload`] (checked by the caller;
    /// a debug assertion here).
    pub(crate) fn try_push(
        &mut self,
        kind: FrameKind,
        correlation: u64,
        parts: &[&[u8]],
    ) -> Result<bool, RingError> {
        let written = self.try_write(kind, correlation, parts)?;
        if written {
            self.publish();
        }
        Ok(written)
    }

    /// [`try_push`](Self::try_push) without publishing: the frame is in the ring but the
    /// consumer cannot see it until [`publish`](Self::publish), so that many frames cost
    /// one store of the shared tail (one cache line handed to the consumer) instead of one
    /// each. The room the frame takes is taken, whether published or not.
    pub(crate) fn try_write(
        &mut self,
        kind: FrameKind,
        correlation: u64,
        parts: &[&[u8]],
    ) -> Result<bool, RingError> {
        self.close_pack();
        let payload: usize = parts.iter().map(|part| part.len()).sum();
        debug_assert!(payload <= max_frame_payload(self.ring.capacity));
        if !self.has_room(payload)? {
            return Ok(false);
        }
        let (pos, mut tail) = self.place(payload);
        let header = FrameHeader {
            len: payload as u32,
            kind,
            correlation,
        };
        // SAFETY: `has_room` guaranteed `frame_size(payload)` free bytes at `pos`, and a
        // frame never crosses the end (we wrapped to 0 above if it would).
        unsafe { self.ring.write_at(pos, &header.encode()) };
        let mut offset = pos + FRAME_HEADER_LEN;
        for part in parts {
            // SAFETY: the parts add up to `payload`, inside the frame checked above.
            unsafe { self.ring.write_at(offset, part) };
            offset += part.len();
        }
        tail += frame_size(payload) as u64;
        self.tail = tail;
        Ok(true)
    }

    /// Writes one frame of exactly `len` payload bytes that `fill` writes in place, in the
    /// ring, without publishing it (as [`try_write`](Self::try_write)). `fill` gets the
    /// payload's bytes zeroed, so what it leaves unwritten is zero.
    ///
    /// Returns `None`, without calling `fill`, if there is no room yet. If `fill` fails,
    /// or panics, nothing is written: the tail does not move, so the bytes it wrote lie in
    /// free space that the next frame overwrites.
    ///
    /// `len` must be at most [`max_frame_payload`] (checked by the caller; a debug
    /// assertion here).
    pub(crate) fn try_write_with<E>(
        &mut self,
        kind: FrameKind,
        correlation: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Option<Result<(), E>>, RingError> {
        debug_assert!(len <= max_frame_payload(self.ring.capacity));
        self.close_pack();
        if !self.has_room(len)? {
            return Ok(None);
        }
        let mut pos = self.ring.position(self.tail);
        let mut tail = self.tail;
        let to_end = self.ring.capacity - pos;
        let wraps = frame_size(len) > to_end;
        if wraps {
            tail += to_end as u64;
            pos = 0;
        }
        let payload_pos = pos + FRAME_HEADER_LEN;
        // SAFETY: `has_room` guaranteed `frame_size(len)` free bytes at `pos`, and the frame
        // does not cross the ring's end (we wrapped to 0 if it would). The bytes between our
        // tail and the consumer's head are the producer's by the protocol, and nothing in
        // this process refers to them: the consumer here reads the other ring, and every
        // other access to this one is a raw copy made by this producer, which `&mut self`
        // holds. A hostile peer may still write them meanwhile; that can only change the
        // bytes of the message it receives (the slice is `u8`s, valid whatever they hold),
        // which is why the caller's docs say not to read back from it.
        let payload = unsafe {
            let start = self.ring.data.add(payload_pos);
            ptr::write_bytes(start, 0, len);
            std::slice::from_raw_parts_mut(start, len)
        };
        if let Err(error) = fill(payload) {
            return Ok(Some(Err(error)));
        }
        if wraps && to_end >= FRAME_HEADER_LEN {
            let padding = FrameHeader {
                len: (to_end - FRAME_HEADER_LEN) as u32,
                kind: FrameKind::Padding,
                correlation: 0,
            };
            // SAFETY: `to_end >= FRAME_HEADER_LEN` bytes remain before the end, free (they
            // are counted in the room `has_room` found).
            unsafe {
                self.ring
                    .write_at(self.ring.capacity - to_end, &padding.encode())
            };
        }
        let header = FrameHeader {
            len: len as u32,
            kind,
            correlation,
        };
        // SAFETY: the header's 16 bytes at `pos` are inside the frame checked above.
        unsafe { self.ring.write_at(pos, &header.encode()) };
        self.tail = tail + frame_size(len) as u64;
        Ok(Some(Ok(())))
    }

    /// Where a frame of `payload` bytes goes, which `has_room` found room for: its ring
    /// position, and the counter value there. When it does not fit before the ring's end,
    /// the rest is filled with padding and the frame goes at position 0.
    fn place(&mut self, payload: usize) -> (usize, u64) {
        let pos = self.ring.position(self.tail);
        let to_end = self.ring.capacity - pos;
        if frame_size(payload) <= to_end {
            return (pos, self.tail);
        }
        if to_end >= FRAME_HEADER_LEN {
            let padding = FrameHeader {
                len: (to_end - FRAME_HEADER_LEN) as u32,
                kind: FrameKind::Padding,
                correlation: 0,
            };
            // SAFETY: `to_end >= FRAME_HEADER_LEN` bytes remain before the end, free (the
            // room `has_room` found counts them).
            unsafe { self.ring.write_at(pos, &padding.encode()) };
        }
        (0, self.tail + to_end as u64)
    }

    /// Writes `msg` into the pack being written, or into a new one, without publishing it
    /// (as [`try_write`](Self::try_write)); each message is a [`pack_entry`] of the pack's
    /// payload. A pack holds messages of one `correlation` id, and at most `pack_limit`
    /// payload bytes (at most [`max_frame_payload`]); one that would grow past it, or past
    /// the ring's end, is closed and the message starts the next. Returns `false`,
    /// writing nothing, if there is no room yet.
    ///
    /// Many small messages then cost one header and one frame for the consumer to check,
    /// and 4 bytes each, instead of a 16-byte header and a frame each.
    pub(crate) fn try_write_packed(
        &mut self,
        correlation: u64,
        msg: &[u8],
        pack_limit: usize,
    ) -> Result<bool, RingError> {
        let entry = PACK_ENTRY_HEADER_LEN + msg.len();
        debug_assert!(entry <= pack_limit && pack_limit <= max_frame_payload(self.ring.capacity));
        if let Some(pack) = self.pack {
            let grown = pack.len + entry;
            if pack.correlation == correlation
                && grown <= pack_limit
                && pack.pos + frame_size(grown) <= self.ring.capacity
            {
                let extra = frame_size(grown) - frame_size(pack.len);
                if self.free_with(self.cached_head) < extra {
                    self.reload_head()?;
                    if self.free_with(self.cached_head) < extra {
                        return Ok(false);
                    }
                }
                self.write_entry(pack.pos + FRAME_HEADER_LEN + pack.len, msg);
                self.tail += extra as u64;
                self.pack = Some(OpenPack {
                    len: grown,
                    entries: pack.entries + 1,
                    ..pack
                });
                return Ok(true);
            }
            self.close_pack();
        }
        if !self.has_room(entry)? {
            return Ok(false);
        }
        let (pos, tail) = self.place(entry);
        self.write_entry(pos + FRAME_HEADER_LEN, msg);
        self.tail = tail + frame_size(entry) as u64;
        self.pack = Some(OpenPack {
            pos,
            len: entry,
            entries: 1,
            correlation,
        });
        Ok(true)
    }

    /// Packs the messages at the start of `msgs` (each at most `largest` bytes, and
    /// `largest + PACK_ENTRY_HEADER_LEN <= pack_limit`) as [`try_write_packed`] with
    /// correlation 0 would, one after the other, until one is larger than `largest` or
    /// finds no room; returns how many it wrote.
    ///
    /// The same frames as calling `try_write_packed` for each, written faster: while the
    /// open pack grows, its state stays in locals and only the entries are stored, so a
    /// message costs the stores of its length and its bytes. Those go to lines that the
    /// consumer last read, which the CPU must take back from the other core before the
    /// stores leave its store buffer (in order): fewer stores of our own between them
    /// means more messages' lines fetched at once, and the lines a few messages ahead are
    /// asked for before they are written ([`hints::prefetch_for_write`]). Measured:
    /// docs/BENCHMARKS.md, "Packed batches".
    ///
    /// [`try_write_packed`]: Self::try_write_packed
    pub(crate) fn write_packed_run(
        &mut self,
        msgs: &[&[u8]],
        largest: usize,
        pack_limit: usize,
    ) -> Result<usize, RingError> {
        debug_assert!(largest + PACK_ENTRY_HEADER_LEN <= pack_limit);
        let mut written = 0;
        while let Some(msg) = msgs.get(written) {
            if msg.len() > largest {
                break;
            }
            if let Some(mut pack) = self.pack.filter(|pack| pack.correlation == 0) {
                let mut free = self.free_with(self.cached_head);
                let mut tail = self.tail;
                let frame_room = self.ring.capacity - pack.pos;
                while let Some(msg) = msgs.get(written) {
                    let grown = pack.len + PACK_ENTRY_HEADER_LEN + msg.len();
                    if msg.len() > largest || grown > pack_limit || frame_size(grown) > frame_room {
                        break;
                    }
                    let extra = frame_size(grown) - frame_size(pack.len);
                    if extra > free {
                        break;
                    }
                    let at = pack.pos + FRAME_HEADER_LEN + pack.len;
                    // Only into free space: a line the consumer still reads stays with it.
                    if free > extra + PREFETCH_AHEAD {
                        let ahead = (at + PREFETCH_AHEAD) & (self.ring.capacity - 1);
                        hints::prefetch_for_write(self.ring.data.wrapping_add(ahead));
                    }
                    self.write_entry(at, msg);
                    free -= extra;
                    tail += extra as u64;
                    pack.len = grown;
                    pack.entries += 1;
                    written += 1;
                }
                self.tail = tail;
                self.pack = Some(pack);
                let Some(msg) = msgs.get(written) else {
                    break;
                };
                if msg.len() > largest {
                    break;
                }
            }
            // The open pack is full or is none: the general path closes it, opens the
            // next, or reloads the consumer's head.
            if !self.try_write_packed(0, msgs[written], pack_limit)? {
                break;
            }
            written += 1;
        }
        Ok(written)
    }

    /// Writes one pack entry, `msg`'s length and bytes, at ring position `pos`, inside
    /// room the caller found.
    fn write_entry(&self, pos: usize, msg: &[u8]) {
        let len = (msg.len() as u32).to_le_bytes();
        // SAFETY: the callers found room for the entry at `pos`, inside the pack's frame,
        // which does not cross the ring's end.
        unsafe {
            self.ring.write_at(pos, &len);
            self.ring.write_at(pos + PACK_ENTRY_HEADER_LEN, msg);
        }
    }

    /// Finishes the pack being written, if one is: writes its header. A pack of one
    /// message becomes a plain `Message` frame (its bytes moved 4 down, the room of the
    /// length given back), which the consumer takes more cheaply.
    fn close_pack(&mut self) {
        let Some(pack) = self.pack.take() else {
            return;
        };
        let payload = pack.pos + FRAME_HEADER_LEN;
        let header = if pack.entries == 1 {
            let len = pack.len - PACK_ENTRY_HEADER_LEN;
            // SAFETY: the entry lies inside the pack's frame, which is ours until
            // published (nothing was written after it: a pack is always the last frame
            // written while it is open); `copy` allows the overlap.
            unsafe {
                ptr::copy(
                    self.ring.data.add(payload + PACK_ENTRY_HEADER_LEN),
                    self.ring.data.add(payload),
                    len,
                );
            }
            self.tail -= (frame_size(pack.len) - frame_size(len)) as u64;
            FrameHeader {
                len: len as u32,
                kind: FrameKind::Message,
                correlation: pack.correlation,
            }
        } else {
            FrameHeader {
                len: pack.len as u32,
                kind: FrameKind::Pack,
                correlation: pack.correlation,
            }
        };
        // SAFETY: the header's 16 bytes at `pack.pos` are the start of the pack's frame.
        unsafe { self.ring.write_at(pack.pos, &header.encode()) };
    }

    /// Shows the consumer every frame written so far. Returns whether there was anything
    /// new to show.
    pub(crate) fn publish(&mut self) -> bool {
        self.close_pack();
        if self.published == self.tail {
            return false;
        }
        let from = self.published;
        self.published = self.tail;
        // SYNC: pairs with the Acquire load of `tail` in `Consumer::reload_tail`: the frames'
        // bytes are visible before the consumer can see that they were published.
        self.ring.control().tail.store(self.tail, Ordering::Release);
        self.to_demote =
            (self.tail - from <= DEMOTE_BEFORE_WAIT_MAX as u64).then_some(from..self.tail);
        true
    }

    /// Readies the ring for a wait on the peer's answer to what was just published, by
    /// cache hints ([`hints`]): the lines of that publication (if it was small: a
    /// request, a reply) and the tail's line go towards the cache both cores share,
    /// where the consumer reads them sooner than from this core; and the lines the next
    /// message will go to are asked for, so that they travel during the wait rather than
    /// while it is written. The demotion once per publication, the prefetch at every
    /// wait (a hint for lines already ours costs next to nothing); nothing else changes.
    ///
    /// Not at `publish` itself: a producer that publishes message after message would
    /// write again at once to the lines it had just pushed away (one message at a time
    /// at 64 B, demoting at each publication measured 0.25–0.32 against 0.96–0.97 GB/s).
    /// A side that waits has nothing more to write for now. Measured on 64-byte spinning
    /// round trips (`ringbell serve`/`ping --wait spin`, pinned, the 2-vCPU VM, 4
    /// interleaved runs): p50 0.72–0.75 µs with the prefetch alone, 0.61–0.70 µs with
    /// both; against 0.82–0.86 µs with neither (5 runs, an earlier set).
    pub(crate) fn prepare_to_wait(&mut self) {
        if self.tail != self.published {
            // Frames written and not published: the caller publishes before it waits.
            return;
        }
        self.prefetch_next(PREFETCH_BEFORE_WAIT);
        if let Some(published) = self.to_demote.take() {
            for line in self.lines(published.start, published.end) {
                hints::demote(line);
            }
            hints::demote(std::ptr::from_ref(&self.ring.control().tail).cast());
        }
    }
}

/// A frame found by [`Consumer::peek`], not yet released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) header: FrameHeader,
    /// Ring position of the payload's first byte.
    payload_pos: usize,
    /// Bytes the frame occupies, header and alignment included.
    size: usize,
}

impl Frame {
    pub(crate) fn payload_len(&self) -> usize {
        self.header.len as usize
    }
}

/// What [`Consumer::take_messages`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TakenRun {
    /// Messages taken.
    pub(crate) messages: usize,
    /// Whether the head was published.
    pub(crate) published: bool,
    /// A pack the run took only the first messages of (it reached its limit there): the
    /// rest is for [`Consumer::take_packed`].
    pub(crate) pack: Option<PackCursor>,
}

/// A [`FrameKind::Pack`] frame that was peeked, with where its next message's entry
/// starts in its payload. The frame is released with its last message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackCursor {
    frame: Frame,
    offset: usize,
}

impl PackCursor {
    /// At the first message of `frame`, a `Pack` frame that `peek` returned.
    pub(crate) fn new(frame: Frame) -> PackCursor {
        debug_assert_eq!(frame.header.kind, FrameKind::Pack);
        PackCursor { frame, offset: 0 }
    }

    /// The correlation id of the pack's messages.
    pub(crate) fn correlation(&self) -> u64 {
        self.frame.header.correlation
    }
}

/// What [`Consumer::take_packed`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packed {
    /// The message's length (its bytes were appended to the caller's buffer).
    pub(crate) len: usize,
    /// Whether it was the pack's last: the frame is released and the cursor spent.
    pub(crate) last: bool,
    /// Whether releasing the frame published the head.
    pub(crate) published: bool,
}

/// The reading end of a ring. Cloneable only for the fuzz checks, which compare two ways
/// of reading one ring: two consumers of a real ring would hand its space back twice.
#[derive(Debug)]
#[cfg_attr(feature = "__test-api", derive(Clone))]
pub(crate) struct Consumer {
    ring: RawRing,
    /// Our own count of bytes released; the shared `head` is a copy we never read back.
    head: u64,
    /// The value of `head` last stored to the segment.
    published_head: u64,
    /// The producer's `tail` as last loaded and validated.
    cached_tail: u64,
}

// SAFETY: as for `Producer`: the consumer is the only writer of the consumer-side words.
unsafe impl Send for Consumer {}

impl Consumer {
    /// A consumer at the start of a fresh ring (both indices zero).
    pub(crate) fn new(ring: RawRing) -> Self {
        Consumer {
            ring,
            head: 0,
            published_head: 0,
            cached_tail: 0,
        }
    }

    /// Bytes consumed so far: released frames and skipped padding, whether published yet
    /// or not. The fuzz checks (`fuzz_api`) use it to find where each frame came from, and
    /// a connection to see whether anything moved.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Loads the producer's `tail` and checks it: it may only move forwards, and never more
    /// than a ring's worth past our head.
    fn reload_tail(&mut self) -> Result<(), RingError> {
        // SYNC: pairs with the Release store of `tail` in `Producer::try_push`: the bytes up
        // to `tail` are written before we read them.
        let tail = self.ring.control().tail.load(Ordering::Acquire);
        if tail < self.cached_tail || tail.wrapping_sub(self.head) > self.ring.capacity as u64 {
            return Err(RingError(
                "the producer's tail index moved backwards or overran the ring",
            ));
        }
        self.cached_tail = tail;
        Ok(())
    }

    /// Whether a frame (or padding) is waiting. Reloads the producer's index if needed.
    pub(crate) fn has_data(&mut self) -> Result<bool, RingError> {
        if self.cached_tail != self.head {
            return Ok(true);
        }
        self.reload_tail()?;
        Ok(self.cached_tail != self.head)
    }

    /// Moves our head forward; publishes it once enough space is waiting to be handed
    /// back. Returns whether it published (the caller then wakes a waiting producer).
    fn advance(&mut self, bytes: usize) -> bool {
        self.head += bytes as u64;
        if self.head - self.published_head >= (self.ring.capacity / 8) as u64 {
            self.publish()
        } else {
            false
        }
    }

    /// Hands every released byte back to the producer. Call before waiting for anything,
    /// so that a producer never waits for space we have already freed. Returns whether
    /// there was anything to publish (the caller then wakes a waiting producer).
    pub(crate) fn publish(&mut self) -> bool {
        if self.head == self.published_head {
            return false;
        }
        self.published_head = self.head;
        // SYNC: pairs with the Acquire load of `head` in `Producer::reload_head`: we have
        // finished reading these bytes before the producer may reuse them.
        self.ring.control().head.store(self.head, Ordering::Release);
        true
    }

    /// The next frame, after skipping any padding; `None` if the ring is empty.
    pub(crate) fn peek(&mut self) -> Result<Option<Frame>, RingError> {
        // Each pass either returns or skips to the ring's end, so two passes suffice; the
        // bound makes termination obvious even if the peer lies.
        for _ in 0..3 {
            if !self.has_data()? {
                return Ok(None);
            }
            let available = (self.cached_tail - self.head) as usize;
            let pos = self.ring.position(self.head);
            let to_end = self.ring.capacity - pos;
            if to_end < FRAME_HEADER_LEN {
                if available < to_end {
                    return Err(RingError(
                        "the producer published part of the skipped ring end",
                    ));
                }
                // Published with the next frame or before the next wait, which also wakes
                // a producer waiting for this space.
                self.head += to_end as u64;
                continue;
            }
            if available < FRAME_HEADER_LEN {
                return Err(RingError("the producer published part of a frame header"));
            }
            let mut bytes = [0u8; FRAME_HEADER_LEN];
            // SAFETY: `to_end >= FRAME_HEADER_LEN`, so the header lies inside the ring.
            unsafe { self.ring.read_at(pos, &mut bytes) };
            let header = FrameHeader::decode(&bytes).ok_or(RingError(
                "a frame header has an unknown kind or reserved bits set",
            ))?;
            let size = frame_size(header.len as usize);
            if header.kind == FrameKind::Padding {
                if size != to_end || available < to_end {
                    return Err(RingError("a padding frame does not end at the ring's end"));
                }
                // Published with the next frame or before the next wait, which also wakes
                // a producer waiting for this space.
                self.head += to_end as u64;
                continue;
            }
            if size > to_end || size > available {
                return Err(RingError(
                    "a frame is longer than the bytes published for it",
                ));
            }
            if header.len as usize > max_frame_payload(self.ring.capacity) {
                return Err(RingError(
                    "a frame is longer than the largest frame allowed",
                ));
            }
            return Ok(Some(Frame {
                header,
                payload_pos: pos + FRAME_HEADER_LEN,
                size,
            }));
        }
        Err(RingError("padding frames follow one another"))
    }

    /// Copies `dst.len()` bytes of `frame`'s payload, starting `skip` bytes in.
    ///
    /// # Panics
    ///
    /// If `skip + dst.len()` exceeds the payload: a bug in the caller, not the peer.
    pub(crate) fn copy_payload(&self, frame: &Frame, skip: usize, dst: &mut [u8]) {
        assert!(
            skip + dst.len() <= frame.payload_len(),
            "copy past the frame's payload"
        );
        // SAFETY: `peek` checked that the whole payload lies inside the ring.
        unsafe { self.ring.read_at(frame.payload_pos + skip, dst) }
    }

    /// Appends `frame`'s payload from `skip` onwards to `out`, copying straight from the
    /// ring into `out`'s spare capacity (no zero-fill first: large messages are copied once).
    ///
    /// # Panics
    ///
    /// If `skip` exceeds the payload: a bug in the caller, not the peer.
    pub(crate) fn append_payload(&self, frame: &Frame, skip: usize, out: &mut Vec<u8>) {
        assert!(skip <= frame.payload_len(), "skip past the frame's payload");
        let len = frame.payload_len() - skip;
        out.reserve(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        // SAFETY: `peek` checked that the whole payload lies inside the ring, and `spare`
        // has room for `len` bytes; `u8` has no invalid bit patterns.
        unsafe {
            ptr::copy_nonoverlapping(
                self.ring.data.add(frame.payload_pos + skip),
                spare.as_mut_ptr().cast::<u8>(),
                len,
            );
            // SAFETY: the `len` bytes after the current length were initialised just above.
            out.set_len(out.len() + len);
        }
    }

    /// Takes a run of whole messages at once: copies their frames out of the ring into
    /// `out` (appended) in a few large copies rather than a header and a payload at a
    /// time, releases them (the head is published as `release` publishes it: once an
    /// eighth of the ring is waiting to be handed back), and calls `each` with each
    /// message's correlation id and where its bytes now lie in `out`. Returns how many it
    /// took, whether it published the head (the caller then wakes a waiting producer), and
    /// the pack it stopped inside, if it did.
    ///
    /// It takes `Message` frames of at most `max_len` bytes, and the messages of `Pack`
    /// frames, only what [`peek`](Self::peek) and [`take_packed`](Self::take_packed)
    /// would hand out, and less: it stops, taking nothing more, before the first frame of
    /// another kind, or that `peek` would refuse, before a packed message that
    /// `take_packed` would refuse, after `max_messages` messages, and at the end of what
    /// was published. The caller then reads on with `take_packed` (if it stopped inside a
    /// pack) or `peek`, which report what was wrong, if anything. The bytes are checked in
    /// the private copy, so the peer cannot change a header or a length between its check
    /// and its use. At most [`COPY_STEP`] bytes are copied beyond the last frame taken. It
    /// never fails: a tail index the peer broke is left for `peek` to report too, so the
    /// messages taken before it are not lost with the error.
    ///
    /// Padding and the short tail of the ring are skipped as `peek` skips them, so a run
    /// may continue from the ring's start.
    pub(crate) fn take_messages(
        &mut self,
        out: &mut Vec<u8>,
        max_messages: usize,
        max_len: usize,
        mut each: impl FnMut(u64, std::ops::Range<usize>),
    ) -> TakenRun {
        let mut taken = 0;
        let mut published = false;
        let mut pack = None;
        // A pass ends at the ring's end or at the end of what was published; the second
        // pass can only start at position 0, so two passes take everything there is.
        for _ in 0..2 {
            if taken == max_messages || !matches!(self.has_data(), Ok(true)) {
                break;
            }
            let available = (self.cached_tail - self.head) as usize;
            let pos = self.ring.position(self.head);
            let to_end = self.ring.capacity - pos;
            let run = available.min(to_end);
            let start = out.len();
            // Bytes of the run copied to `out[start..]`, and consumed (taken or skipped).
            let mut copied = 0;
            let mut consumed = 0;
            // Where the last frame taken ends, in the run.
            let mut kept = 0;
            let reached_end = loop {
                if consumed == to_end {
                    break true;
                }
                if taken == max_messages || consumed == run {
                    break false;
                }
                let left = run - consumed;
                if to_end - consumed < FRAME_HEADER_LEN {
                    // The short tail of the ring, as `peek` skips it: only once all of it
                    // was published.
                    if available < to_end {
                        break false;
                    }
                    published |= self.advance(to_end - consumed);
                    consumed = to_end;
                    continue;
                }
                if left < FRAME_HEADER_LEN {
                    break false;
                }
                self.copy_run(
                    out,
                    start,
                    pos,
                    run,
                    &mut copied,
                    consumed + FRAME_HEADER_LEN,
                );
                let at = start + consumed;
                let mut bytes = [0u8; FRAME_HEADER_LEN];
                bytes.copy_from_slice(&out[at..at + FRAME_HEADER_LEN]);
                let Some(header) = FrameHeader::decode(&bytes) else {
                    break false;
                };
                let len = header.len as usize;
                let size = frame_size(len);
                match header.kind {
                    FrameKind::Padding if size == to_end - consumed && available >= to_end => {
                        published |= self.advance(to_end - consumed);
                        consumed = to_end;
                    }
                    FrameKind::Message
                        if size <= left
                            && len <= max_frame_payload(self.ring.capacity)
                            && len <= max_len =>
                    {
                        self.copy_run(out, start, pos, run, &mut copied, consumed + size);
                        each(
                            header.correlation,
                            at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + len,
                        );
                        // Released frame by frame, as `release` does, so that the head is
                        // handed back every eighth of the ring while a long run is copied
                        // (the producer keeps writing meanwhile), not once at its end.
                        published |= self.advance(size);
                        consumed += size;
                        kept = consumed;
                        taken += 1;
                    }
                    FrameKind::Pack
                        if size <= left
                            && len > 0
                            && len <= max_frame_payload(self.ring.capacity) =>
                    {
                        self.copy_run(out, start, pos, run, &mut copied, consumed + size);
                        let payload = at + FRAME_HEADER_LEN;
                        let mut offset = 0;
                        while offset < len && taken < max_messages {
                            let read_len = |at: usize| {
                                let mut bytes = [0u8; PACK_ENTRY_HEADER_LEN];
                                bytes.copy_from_slice(
                                    &out[payload + at..payload + at + PACK_ENTRY_HEADER_LEN],
                                );
                                bytes
                            };
                            let Ok(message) = pack_entry(offset, len, max_len, read_len) else {
                                break;
                            };
                            each(
                                header.correlation,
                                payload + message.start..payload + message.end,
                            );
                            offset = message.end;
                            taken += 1;
                        }
                        if offset == len {
                            published |= self.advance(size);
                            consumed += size;
                            kept = consumed;
                            continue;
                        }
                        // Stopped inside the pack: at the limit, or at an entry that is
                        // wrong, which `take_packed` then reports. The messages before it
                        // are taken, the frame stays in the ring.
                        if offset > 0 {
                            kept = consumed + FRAME_HEADER_LEN + offset;
                            pack = Some(PackCursor {
                                frame: Frame {
                                    header,
                                    payload_pos: pos + consumed + FRAME_HEADER_LEN,
                                    size,
                                },
                                offset,
                            });
                        }
                        break false;
                    }
                    _ => break false,
                }
            };
            out.truncate(start + kept);
            if !reached_end {
                break;
            }
        }
        TakenRun {
            messages: taken,
            published,
            pack,
        }
    }

    /// Copies more of the run of [`take_messages`](Self::take_messages) out of the ring,
    /// so that at least `needed` of its `run` bytes (from ring position `pos`) are in
    /// `out[start..]`: [`COPY_STEP`] at a time, or more when a frame needs it.
    fn copy_run(
        &self,
        out: &mut Vec<u8>,
        start: usize,
        pos: usize,
        run: usize,
        copied: &mut usize,
        needed: usize,
    ) {
        debug_assert!(needed <= run && out.len() == start + *copied);
        if needed <= *copied {
            return;
        }
        let upto = needed.max(*copied + COPY_STEP).min(run);
        let len = upto - *copied;
        out.reserve(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        // SAFETY: `run` bytes from `pos` lie inside the ring (the caller made `run` at
        // most the bytes to its end), and `spare` has room for `len` bytes; `u8` has no
        // invalid bit patterns.
        unsafe {
            ptr::copy_nonoverlapping(
                self.ring.data.add(pos + *copied),
                spare.as_mut_ptr().cast::<u8>(),
                len,
            );
            // SAFETY: the `len` bytes after the current length were initialised just above.
            out.set_len(out.len() + len);
        }
        *copied = upto;
    }

    /// Takes the next message of the pack `cursor` is in, appending its bytes to `out`,
    /// and releases the frame after its last message. A message longer than `max_len`,
    /// or an entry that does not lie inside the pack, is an error; the messages before it
    /// were taken.
    pub(crate) fn take_packed(
        &mut self,
        cursor: &mut PackCursor,
        max_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<Packed, RingError> {
        let frame = cursor.frame;
        let payload_len = frame.payload_len();
        let message = pack_entry(cursor.offset, payload_len, max_len, |at| {
            let mut bytes = [0u8; PACK_ENTRY_HEADER_LEN];
            self.copy_payload(&frame, at, &mut bytes);
            bytes
        })?;
        let len = message.len();
        out.reserve(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        // SAFETY: `peek` checked that the frame's payload lies inside the ring, and
        // `pack_entry` that the message lies inside the payload; `spare` has room for
        // `len` bytes; `u8` has no invalid bit patterns.
        unsafe {
            ptr::copy_nonoverlapping(
                self.ring.data.add(frame.payload_pos + message.start),
                spare.as_mut_ptr().cast::<u8>(),
                len,
            );
            // SAFETY: the `len` bytes after the current length were initialised just above.
            out.set_len(out.len() + len);
        }
        cursor.offset = message.end;
        let last = message.end == payload_len;
        let published = last && self.release(&frame);
        Ok(Packed {
            len,
            last,
            published,
        })
    }

    /// Releases `frame`, which must be the one `peek` returned last. Returns whether the
    /// head was published (see [`publish`](Self::publish)).
    pub(crate) fn release(&mut self, frame: &Frame) -> bool {
        self.advance(frame.size)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A ring over heap memory, with its control block.
    struct HeapRing {
        control: Box<RingControl>,
        data: Vec<u64>,
    }

    impl HeapRing {
        fn new(capacity: usize) -> Self {
            HeapRing {
                control: RingControl::new_boxed(),
                data: vec![0; capacity / 8],
            }
        }

        fn raw(&mut self) -> RawRing {
            let capacity = self.data.len() * 8;
            // SAFETY: both allocations outlive every use in the test that owns `self`.
            unsafe { RawRing::new(&*self.control, self.data.as_mut_ptr().cast(), capacity) }
        }
    }

    fn pop(consumer: &mut Consumer) -> Option<(FrameKind, Vec<u8>)> {
        let frame = consumer.peek().unwrap()?;
        let mut out = Vec::new();
        consumer.append_payload(&frame, 0, &mut out);
        consumer.release(&frame);
        consumer.publish();
        Some((frame.header.kind, out))
    }

    /// The next message, packed or not: through `cursor` while a pack is being read, else
    /// the next frame (a pack's first message, if it is a pack). Packed messages come back
    /// as `Message`s.
    fn read_one(
        consumer: &mut Consumer,
        cursor: &mut Option<PackCursor>,
    ) -> Option<(FrameKind, Vec<u8>)> {
        let mut current = match cursor.take() {
            Some(current) => current,
            None => {
                let frame = consumer.peek().unwrap()?;
                if frame.header.kind != FrameKind::Pack {
                    return pop(consumer);
                }
                PackCursor::new(frame)
            }
        };
        let mut out = Vec::new();
        let packed = consumer
            .take_packed(&mut current, usize::MAX, &mut out)
            .unwrap();
        assert_eq!(packed.len, out.len());
        if !packed.last {
            *cursor = Some(current);
        }
        consumer.publish();
        Some((FrameKind::Message, out))
    }

    /// Writes a `Pack` frame by hand, of these raw entry bytes, and publishes it.
    fn push_raw_pack(producer: &mut Producer, entries: &[u8]) {
        assert!(producer.try_push(FrameKind::Pack, 0, &[entries]).unwrap());
    }

    fn entry(msg: &[u8]) -> Vec<u8> {
        let mut bytes = (msg.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(msg);
        bytes
    }

    #[test]
    fn fed_messages_share_a_pack_and_a_pack_of_one_is_a_plain_frame() {
        let mut heap = HeapRing::new(1024);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        let limit = max_frame_payload(1024);
        for msg in [&b"one"[..], b"", b"three"] {
            assert!(producer.try_write_packed(0, msg, limit).unwrap());
        }
        assert!(producer.publish());
        let frame = consumer.peek().unwrap().unwrap();
        assert_eq!(frame.header.kind, FrameKind::Pack);
        assert_eq!(frame.payload_len(), 3 * PACK_ENTRY_HEADER_LEN + 8);
        let mut cursor = None;
        for expected in [&b"one"[..], b"", b"three"] {
            let (kind, bytes) = read_one(&mut consumer, &mut cursor).unwrap();
            assert_eq!((kind, bytes.as_slice()), (FrameKind::Message, expected));
        }
        assert!(cursor.is_none() && read_one(&mut consumer, &mut cursor).is_none());

        // One message alone: a `Message` frame, no bigger than a plain write's.
        let before = producer.tail;
        assert!(producer.try_write_packed(7, b"alone", limit).unwrap());
        producer.publish();
        assert_eq!(producer.tail - before, frame_size(5) as u64);
        let frame = consumer.peek().unwrap().unwrap();
        assert_eq!(
            (
                frame.header.kind,
                frame.header.correlation,
                frame.payload_len()
            ),
            (FrameKind::Message, 7, 5)
        );
        assert_eq!(pop(&mut consumer).unwrap().1, b"alone");
    }

    #[test]
    fn a_pack_ends_at_its_limit_at_another_correlation_at_another_frame_and_at_the_ring_end() {
        let mut heap = HeapRing::new(1024);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        let msg = [9u8; 20]; // 24-byte entries
        let mut kinds = Vec::new();
        let drain = |consumer: &mut Consumer, kinds: &mut Vec<(FrameKind, usize)>| {
            while let Some(frame) = consumer.peek().unwrap() {
                kinds.push((frame.header.kind, frame.payload_len()));
                consumer.release(&frame);
            }
            consumer.publish();
        };
        // Limit 48: two entries a pack.
        for _ in 0..5 {
            assert!(producer.try_write_packed(0, &msg, 48).unwrap());
        }
        producer.publish();
        drain(&mut consumer, &mut kinds);
        assert_eq!(
            kinds,
            [
                (FrameKind::Pack, 48),
                (FrameKind::Pack, 48),
                (FrameKind::Message, 20)
            ]
        );
        kinds.clear();
        // Another correlation id, or another frame between, starts a new pack.
        let limit = max_frame_payload(1024);
        for correlation in [0, 0, 1, 1] {
            assert!(producer.try_write_packed(correlation, &msg, limit).unwrap());
        }
        assert!(producer.try_write(FrameKind::Message, 0, &[b"x"]).unwrap());
        assert!(producer.try_write_packed(1, &msg, limit).unwrap());
        assert!(producer.try_write_packed(1, &msg, limit).unwrap());
        producer.publish();
        drain(&mut consumer, &mut kinds);
        assert_eq!(
            kinds,
            [
                (FrameKind::Pack, 48),
                (FrameKind::Pack, 48),
                (FrameKind::Message, 1),
                (FrameKind::Pack, 48)
            ]
        );
        // Packs never cross the ring's end: fill past it, all messages come back.
        let mut cursor = None;
        for round in 0..200u8 {
            let msg = [round; 20];
            if !producer.try_write_packed(0, &msg, limit).unwrap() {
                producer.publish();
                while read_one(&mut consumer, &mut cursor).is_some() {}
                assert!(producer.try_write_packed(0, &msg, limit).unwrap());
            }
        }
        producer.publish();
        while read_one(&mut consumer, &mut cursor).is_some() {}
        assert_eq!(consumer.head(), producer.tail);
    }

    #[test]
    fn a_failed_write_in_place_after_a_pack_leaves_the_pack_whole() {
        let mut heap = HeapRing::new(1024);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        let limit = max_frame_payload(1024);
        assert!(producer.try_write_packed(0, b"one", limit).unwrap());
        assert!(producer.try_write_packed(0, b"two", limit).unwrap());
        // Closes the pack, then writes nothing.
        let failed = producer
            .try_write_with(FrameKind::Message, 0, 40, |_| Err::<(), ()>(()))
            .unwrap();
        assert_eq!(failed, Some(Err(())));
        assert!(producer.try_write_packed(0, b"three", limit).unwrap());
        producer.publish();
        let mut cursor = None;
        let mut got = Vec::new();
        while let Some((kind, bytes)) = read_one(&mut consumer, &mut cursor) {
            assert_eq!(kind, FrameKind::Message);
            got.push(bytes);
        }
        assert_eq!(got, [&b"one"[..], b"two", b"three"]);
        assert_eq!(consumer.head(), producer.tail);
    }

    #[test]
    fn a_run_takes_packs_and_stops_inside_one_at_its_limit() {
        let mut heap = HeapRing::new(1024);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        let limit = max_frame_payload(1024);
        let messages: Vec<Vec<u8>> = (0..7u8).map(|i| vec![i; usize::from(i) * 3]).collect();
        for msg in &messages[..5] {
            assert!(producer.try_write_packed(0, msg, limit).unwrap());
        }
        assert!(producer
            .try_write(FrameKind::Message, 0, &[&messages[5]])
            .unwrap());
        assert!(producer.try_write_packed(0, &messages[6], limit).unwrap());
        producer.publish();
        let (found, run) = take_all(&mut consumer, 3, usize::MAX);
        let found: Vec<Vec<u8>> = found.into_iter().map(|(_, bytes)| bytes).collect();
        assert_eq!(found, messages[..3]);
        let mut cursor = run.pack;
        assert!(cursor.is_some(), "the run stopped inside the pack");
        // The rest of the pack through the cursor, then a run from the next frame on.
        for expected in &messages[3..5] {
            assert_eq!(&read_one(&mut consumer, &mut cursor).unwrap().1, expected);
        }
        assert!(cursor.is_none());
        let (found, run) = take_all(&mut consumer, usize::MAX, usize::MAX);
        let found: Vec<Vec<u8>> = found.into_iter().map(|(_, bytes)| bytes).collect();
        assert_eq!(found, messages[5..]);
        assert!(run.pack.is_none());
    }

    #[test]
    fn a_wrong_pack_is_refused_after_the_messages_before_it() {
        let refused = |entries: &[u8], max_len: usize, detail: &str| {
            let mut heap = HeapRing::new(1024);
            let mut producer = Producer::new(heap.raw());
            let mut consumer = Consumer::new(heap.raw());
            push_raw_pack(&mut producer, entries);
            let (found, run) = take_all(&mut consumer, usize::MAX, max_len);
            assert_eq!(found, vec![(0, b"ok".to_vec())], "{detail}");
            let mut cursor = run.pack.expect("stopped at the wrong entry");
            let error = consumer
                .take_packed(&mut cursor, max_len, &mut Vec::new())
                .unwrap_err();
            assert_eq!(error.0, detail);
            // The peek path refuses it at the same entry.
            let mut consumer = Consumer::new(heap.raw());
            let mut cursor = PackCursor::new(consumer.peek().unwrap().unwrap());
            let mut out = Vec::new();
            consumer
                .take_packed(&mut cursor, max_len, &mut out)
                .unwrap();
            assert_eq!(out, b"ok");
            assert!(consumer
                .take_packed(&mut cursor, max_len, &mut out)
                .is_err());
        };
        let ok = entry(b"ok");
        refused(
            &[ok.clone(), vec![9, 0]].concat(),
            100,
            "a pack ends inside a message's length",
        );
        refused(
            &[ok.clone(), entry(b"abc")[..6].to_vec()].concat(),
            100,
            "a packed message runs past its pack",
        );
        refused(
            &[ok.clone(), (u32::MAX).to_le_bytes().to_vec()].concat(),
            usize::MAX,
            "a packed message runs past its pack",
        );
        refused(
            &[ok, entry(&[1; 50])].concat(),
            49,
            "a packed message exceeds the connection's maximum size",
        );
        // A pack with no message is left to the receive path, which refuses it.
        let mut heap = HeapRing::new(1024);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        push_raw_pack(&mut producer, &[]);
        let (found, run) = take_all(&mut consumer, usize::MAX, usize::MAX);
        assert!(found.is_empty() && run.pack.is_none());
        assert_eq!(
            consumer.peek().unwrap().unwrap().header.kind,
            FrameKind::Pack
        );
    }

    #[test]
    fn header_round_trips_and_rejects_unknown_kinds() {
        let header = FrameHeader {
            len: 77,
            kind: FrameKind::Last,
            correlation: 0xdead_beef_0123,
        };
        assert_eq!(FrameHeader::decode(&header.encode()), Some(header));
        let mut bytes = header.encode();
        bytes[4] = 0;
        assert_eq!(FrameHeader::decode(&bytes), None);
        bytes[4] = 1;
        bytes[6] = 1;
        assert_eq!(FrameHeader::decode(&bytes), None);
    }

    #[test]
    fn full_ring_refuses_then_accepts_after_release() {
        let mut heap = HeapRing::new(256);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        let payload = [7u8; 48]; // 64-byte frames: four fill the ring
        for _ in 0..4 {
            assert!(producer
                .try_push(FrameKind::Message, 0, &[&payload])
                .unwrap());
        }
        assert!(!producer
            .try_push(FrameKind::Message, 0, &[&payload])
            .unwrap());
        assert_eq!(pop(&mut consumer).unwrap().1, payload);
        assert!(producer
            .try_push(FrameKind::Message, 0, &[&payload])
            .unwrap());
    }

    #[test]
    fn written_frames_are_unseen_until_published_and_take_their_room() {
        let mut heap = HeapRing::new(256);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        // 48-byte payloads make 64-byte frames: four fill the ring.
        for byte in 0..4u8 {
            assert!(producer
                .try_write(FrameKind::Message, byte.into(), &[&[byte; 48]])
                .unwrap());
        }
        // Written, not published: the consumer sees nothing, and the room is taken.
        assert_eq!(consumer.peek().unwrap(), None);
        assert!(!producer.has_room(48).unwrap());
        // A consumer claiming to have released what it could not see is refused.
        heap.control.head.store(64, Ordering::Release);
        assert!(producer.has_room(48).is_err());
        heap.control.head.store(0, Ordering::Release);
        let mut producer = Producer::new(heap.raw());
        for byte in 0..4u8 {
            assert!(producer
                .try_write(FrameKind::Message, byte.into(), &[&[byte; 48]])
                .unwrap());
        }
        // One publish shows all four, in order.
        assert!(producer.publish());
        assert!(!producer.publish(), "nothing new to publish");
        for byte in 0..4u8 {
            let frame = consumer.peek().unwrap().expect("a published frame");
            assert_eq!(frame.header.correlation, u64::from(byte));
            let mut out = Vec::new();
            consumer.append_payload(&frame, 0, &mut out);
            assert_eq!(out, [byte; 48]);
            consumer.release(&frame);
        }
        assert_eq!(consumer.peek().unwrap(), None);
    }

    #[test]
    fn padding_fills_the_end_and_short_tails_are_skipped() {
        let mut heap = HeapRing::new(256);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        // 24 + 16 = 40 bytes per frame: positions 0, 40, ... 200, then 240 leaves 16 bytes:
        // a bare padding header. Then 8-byte leftovers exercise the implicit skip.
        for round in 0..200u32 {
            let len = [24usize, 32, 8, 0, 40][round as usize % 5];
            let payload = vec![round as u8; len];
            assert!(producer
                .try_push(FrameKind::Message, round.into(), &[&payload])
                .unwrap());
            let frame = consumer.peek().unwrap().unwrap();
            assert_eq!(frame.header.correlation, u64::from(round));
            let mut out = Vec::new();
            consumer.append_payload(&frame, 0, &mut out);
            consumer.release(&frame);
            assert_eq!(out, payload);
        }
        assert!(consumer.peek().unwrap().is_none());
    }

    #[test]
    fn corrupt_tail_is_an_error_not_a_panic() {
        let mut heap = HeapRing::new(256);
        let mut consumer = Consumer::new(heap.raw());
        heap.control.tail.store(10_000, Ordering::Relaxed);
        assert!(consumer.peek().is_err());

        let mut heap = HeapRing::new(256);
        let mut consumer = Consumer::new(heap.raw());
        heap.control.tail.store(64, Ordering::Relaxed); // garbage header: kind 0
        assert!(consumer.peek().is_err());

        let mut heap = HeapRing::new(256);
        let mut producer = Producer::new(heap.raw());
        for _ in 0..4 {
            assert!(producer
                .try_push(FrameKind::Message, 0, &[&[0u8; 48]])
                .unwrap());
        }
        heap.control.head.store(999, Ordering::Relaxed); // head past our tail
        assert!(producer
            .try_push(FrameKind::Message, 0, &[&[0u8; 48]])
            .is_err());
    }

    #[test]
    fn oversized_length_in_a_header_is_rejected() {
        let mut heap = HeapRing::new(256);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        assert!(producer
            .try_push(FrameKind::Message, 0, &[&[1u8; 8]])
            .unwrap());
        // Rewrite the length to claim more than was published.
        let header = FrameHeader {
            len: 200,
            kind: FrameKind::Message,
            correlation: 0,
        };
        let bytes = header.encode();
        // SAFETY: 16 bytes at offset 0 of a 256-byte buffer.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), heap.data.as_mut_ptr().cast(), 16) };
        assert!(consumer.peek().is_err());
    }

    /// Everything `take_messages` takes: (correlation, payload) in order.
    fn take_all(
        consumer: &mut Consumer,
        max_frames: usize,
        max_len: usize,
    ) -> (Vec<(u64, Vec<u8>)>, TakenRun) {
        let mut out = vec![0xaa; 3]; // appended to, not replaced
        let mut found = Vec::new();
        let run = consumer.take_messages(&mut out, max_frames, max_len, |correlation, range| {
            found.push((correlation, range))
        });
        assert_eq!(&out[..3], &[0xaa; 3], "what was in `out` stays");
        let found = found
            .into_iter()
            .map(|(correlation, range)| (correlation, out[range].to_vec()))
            .collect();
        (found, run)
    }

    #[test]
    fn a_run_is_taken_whole_across_the_ring_end_and_stops_at_a_chunk() {
        let mut heap = HeapRing::new(1024);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        // Move to near the end, so that the run wraps: 13 frames of 64 bytes (832).
        for _ in 0..13 {
            assert!(producer
                .try_push(FrameKind::Message, 0, &[&[0; 48]])
                .unwrap());
        }
        assert_eq!(take_all(&mut consumer, usize::MAX, usize::MAX).0.len(), 13);
        consumer.publish();
        let mut expected = Vec::new();
        for index in 0..6u64 {
            let payload: Vec<u8> = (0..index as usize * 11).map(|i| i as u8).collect();
            assert!(producer
                .try_write(FrameKind::Message, index, &[&payload])
                .unwrap());
            expected.push((index, payload));
        }
        assert!(producer
            .try_write(FrameKind::First, 9, &[&[1; 100]])
            .unwrap());
        producer.publish();
        let (found, run) = take_all(&mut consumer, usize::MAX, usize::MAX);
        assert_eq!(found, expected, "all six, in order, through the padding");
        assert!(
            run.published,
            "more than an eighth of the ring was handed back"
        );
        // The chunk is left for `peek`.
        let frame = consumer.peek().unwrap().unwrap();
        assert_eq!(frame.header.kind, FrameKind::First);
    }

    #[test]
    fn a_run_respects_its_limits() {
        let mut heap = HeapRing::new(1024);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        for (index, len) in [3usize, 5, 200, 7].into_iter().enumerate() {
            assert!(producer
                .try_push(FrameKind::Message, index as u64, &[&vec![index as u8; len]])
                .unwrap());
        }
        let (found, _) = take_all(&mut consumer, 1, usize::MAX);
        assert_eq!(found, vec![(0, vec![0; 3])]);
        // A message over the length limit stops the run before it; `peek` then has it.
        let (found, _) = take_all(&mut consumer, usize::MAX, 100);
        assert_eq!(found, vec![(1, vec![1; 5])]);
        assert_eq!(consumer.peek().unwrap().unwrap().payload_len(), 200);
        assert_eq!(take_all(&mut consumer, 0, usize::MAX).0, vec![]);
    }

    #[test]
    fn a_broken_tail_leaves_the_run_empty_and_peek_reports_it() {
        let mut heap = HeapRing::new(256);
        let mut consumer = Consumer::new(heap.raw());
        heap.control.tail.store(10_000, Ordering::Relaxed);
        let (found, run) = take_all(&mut consumer, usize::MAX, usize::MAX);
        assert!(found.is_empty() && !run.published);
        assert!(consumer.peek().is_err());
    }

    #[test]
    fn writing_in_place_zeroes_calls_once_and_commits_only_on_success() {
        let mut heap = HeapRing::new(256);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        // Dirty the ring, then read it dry, so that zeroes come from the fill, not the ring.
        assert!(producer
            .try_push(FrameKind::Message, 0, &[&[0xff; 48]])
            .unwrap());
        assert_eq!(pop(&mut consumer).unwrap().1, [0xff; 48]);
        // A closure that writes part: the rest is zero.
        let written = producer
            .try_write_with(FrameKind::Message, 5, 10, |buf| {
                assert_eq!(buf, [0; 10]);
                buf[..3].copy_from_slice(b"abc");
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(written, Some(Ok(())));
        assert_eq!(consumer.peek().unwrap(), None, "written, not published");
        producer.publish();
        assert_eq!(pop(&mut consumer).unwrap().1, b"abc\0\0\0\0\0\0\0");
        // A failing closure: nothing written, the tail did not move.
        let tail = producer.tail();
        let failed = producer
            .try_write_with(FrameKind::Message, 0, 10, |buf| {
                buf.fill(9);
                Err::<(), _>("no")
            })
            .unwrap();
        assert_eq!(failed, Some(Err("no")));
        assert_eq!(producer.tail(), tail);
        // A panicking one: the same.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            producer.try_write_with(FrameKind::Message, 0, 10, |_| -> Result<(), ()> {
                panic!("the serializer gave up")
            })
        }));
        assert!(result.is_err());
        assert_eq!(producer.tail(), tail);
        assert!(!producer.publish(), "nothing to publish");
        assert_eq!(consumer.peek().unwrap(), None);
        // No room: the closure is not called.
        for _ in 0..3 {
            assert!(producer
                .try_push(FrameKind::Message, 0, &[&[1; 48]])
                .unwrap());
        }
        let no_room = producer
            .try_write_with(FrameKind::Message, 0, 48, |_| -> Result<(), ()> {
                panic!("called without room")
            })
            .unwrap();
        assert_eq!(no_room, None);
    }

    #[test]
    fn writing_in_place_pads_the_ring_end_like_a_push() {
        let mut heap = HeapRing::new(256);
        let mut producer = Producer::new(heap.raw());
        let mut consumer = Consumer::new(heap.raw());
        for round in 0..100u32 {
            let len = [24usize, 40, 8, 0, 33][round as usize % 5];
            let byte = round as u8;
            let written = producer
                .try_write_with(FrameKind::Message, round.into(), len, |buf| {
                    buf.fill(byte);
                    Ok::<(), ()>(())
                })
                .unwrap();
            assert_eq!(written, Some(Ok(())));
            producer.publish();
            let (found, _) = take_all(&mut consumer, usize::MAX, usize::MAX);
            assert_eq!(found, vec![(u64::from(round), vec![byte; len])]);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Pop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0usize..=80).prop_map(Op::Push), Just(Op::Pop)]
    }

    proptest! {
        /// The ring behaves like a bounded FIFO of byte strings: pushes succeed exactly when
        /// the model's byte accounting says they fit, and pops return what was pushed.
        #[test]
        fn ring_matches_a_vecdeque_model(
            capacity_log in 8u32..=10,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let capacity = 1usize << capacity_log;
            let mut heap = HeapRing::new(capacity);
            let mut producer = Producer::new(heap.raw());
            let mut consumer = Consumer::new(heap.raw());
            let mut model: VecDeque<Vec<u8>> = VecDeque::new();
            let mut next = 0u8;
            for op in ops {
                match op {
                    Op::Push(len) => {
                        let len = len.min(max_frame_payload(capacity));
                        let payload: Vec<u8> = (0..len).map(|i| next.wrapping_add(i as u8)).collect();
                        next = next.wrapping_add(1);
                        let needed = producer.bytes_needed(len);
                        let used = (producer.tail - consumer.head) as usize;
                        let pushed = producer.try_push(FrameKind::Message, 0, &[&payload]).unwrap();
                        prop_assert_eq!(pushed, capacity - used >= needed);
                        if pushed {
                            model.push_back(payload);
                        }
                    }
                    Op::Pop => {
                        let got = pop(&mut consumer).map(|(_, bytes)| bytes);
                        prop_assert_eq!(got, model.pop_front());
                    }
                }
            }
            while let Some(expected) = model.pop_front() {
                prop_assert_eq!(pop(&mut consumer).map(|(_, bytes)| bytes), Some(expected));
            }
            prop_assert!(pop(&mut consumer).is_none());
        }

        /// A consumer that takes runs (`take_messages`, with random limits) and reads the
        /// other frames with `peek` (and packs' messages with `take_packed`) delivers what
        /// was pushed, in order: small messages, chunk frames among them, written now and
        /// then in place or into packs of two correlation ids, published in groups.
        #[test]
        fn runs_and_peeks_deliver_what_was_pushed(
            capacity_log in 8u32..=11,
            ops in proptest::collection::vec((0usize..=300, 0u8..8, 1usize..20), 1..300),
        ) {
            let capacity = 1usize << capacity_log;
            let mut heap = HeapRing::new(capacity);
            let mut producer = Producer::new(heap.raw());
            let mut consumer = Consumer::new(heap.raw());
            let mut model: VecDeque<(FrameKind, Vec<u8>)> = VecDeque::new();
            let mut cursor = None;
            for (index, (len, what, max_frames)) in ops.into_iter().enumerate() {
                let largest = max_frame_payload(capacity);
                let packed = what == 2 || what == 3;
                let len = len.min(largest - if packed { PACK_ENTRY_HEADER_LEN } else { 0 });
                let payload: Vec<u8> = (0..len).map(|i| (i + index) as u8).collect();
                let kind = if what == 0 { FrameKind::Middle } else { FrameKind::Message };
                let pushed = if packed {
                    // Two correlation ids, so that packs also end where the id changes.
                    producer.try_write_packed(u64::from(what), &payload, largest).unwrap()
                } else if what == 4 {
                    // A run of three (correlation 0): the message, its first half, and
                    // its last byte, as far as they fit.
                    let len = len.min(largest - PACK_ENTRY_HEADER_LEN);
                    let run = [&payload[..len], &payload[..len / 2], &payload[len - len.min(1)..len]];
                    let written = producer
                        .write_packed_run(&run, largest - PACK_ENTRY_HEADER_LEN, largest)
                        .unwrap();
                    for message in &run[..written] {
                        model.push_back((FrameKind::Message, message.to_vec()));
                    }
                    // Pushed as far as the model goes; a short run means the ring is full.
                    if written < run.len() {
                        producer.publish();
                    }
                    continue;
                } else if what == 1 {
                    producer
                        .try_write_with(kind, 0, len, |buf| {
                            buf.copy_from_slice(&payload);
                            Ok::<(), ()>(())
                        })
                        .unwrap()
                        .is_some()
                } else {
                    producer.try_write(kind, 0, &[&payload]).unwrap()
                };
                if pushed {
                    model.push_back((kind, payload));
                }
                if what >= 6 || !pushed {
                    producer.publish();
                    // Read: a run (unless a pack is being read), then one message with
                    // `peek` or the pack's cursor.
                    if cursor.is_none() {
                        let (found, run) = take_all(&mut consumer, max_frames, usize::MAX);
                        for (_, bytes) in found {
                            let (kind, expected) = model.pop_front().expect("a frame in the model");
                            prop_assert_eq!(kind, FrameKind::Message);
                            prop_assert_eq!(bytes, expected);
                        }
                        cursor = run.pack;
                    }
                    if let Some((kind, bytes)) = read_one(&mut consumer, &mut cursor) {
                        let (model_kind, expected) = model.pop_front().expect("a frame in the model");
                        prop_assert_eq!(kind, model_kind);
                        prop_assert_eq!(bytes, expected);
                    }
                }
            }
            producer.publish();
            while let Some((kind, expected)) = model.pop_front() {
                prop_assert_eq!(read_one(&mut consumer, &mut cursor), Some((kind, expected)));
            }
            prop_assert!(read_one(&mut consumer, &mut cursor).is_none());
        }

        /// Whatever bytes a hostile producer leaves in the ring and its tail, the consumer
        /// returns frames inside the ring or an error; it never panics or loops.
        #[test]
        fn hostile_bytes_never_panic(
            garbage in proptest::collection::vec(any::<u8>(), 256),
            tail in any::<u64>(),
            head_start in 0u64..256,
        ) {
            let mut heap = HeapRing::new(256);
            // SAFETY: 256 bytes into a 256-byte buffer.
            unsafe { ptr::copy_nonoverlapping(garbage.as_ptr(), heap.data.as_mut_ptr().cast(), 256) };
            let mut consumer = Consumer::new(heap.raw());
            consumer.head = head_start;
            consumer.cached_tail = head_start;
            heap.control.tail.store(tail, Ordering::Relaxed);
            for _ in 0..8 {
                match consumer.peek() {
                    Ok(Some(frame)) => {
                        let mut out = Vec::new();
                        consumer.append_payload(&frame, 0, &mut out);
                        consumer.release(&frame);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
