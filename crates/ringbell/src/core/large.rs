//! Large messages: the pure part of the per-connection, per-direction *large-message
//! region* (issue 14), with no syscall and no pointer, so that it can be unit-tested,
//! property-tested and fuzzed on its own. The mapping itself and the copies live in
//! `conn/large.rs`.
//!
//! # Why a region
//!
//! A message larger than one frame (a quarter of the ring) used to travel in chunks: a
//! 1 MiB message in a 128 KiB ring took 32 frames and, in blocking mode, a kernel wake-up
//! for every ring-full of them. Instead the sender copies such a message into a shared
//! region of its own, and pushes small frames into the ring that say where it lies. The
//! receiver copies it out, once, and hands the ring space (and with it the region space)
//! back at once.
//!
//! # Whole, or in pieces
//!
//! A side that blocks (`WaitStrategy::Block`) sends a message whole, with one
//! [`FrameKind::Large`] frame ([`LargeRef`]): one hand-off, one wake-up. Whole, it is
//! written before the receiver starts to read it, two serial copies, through a region of
//! twice the message that leaves the cache once messages are large, which made it slower
//! than chunks for a side that spins. A side that spins or waits `Adaptive` (the default)
//! sends it in pieces instead (protocol 6; [`piece_len`]: growing from
//! [`FIRST_PIECE_LEN`] to even pieces of at most [`PIECE_LEN`], at least two), each
//! announced by its own [`FrameKind::Piece`] frame ([`PieceRef`]: where the piece lies,
//! and the whole message's length) as soon as the piece is in, so that the receiver
//! copies piece k out while the sender writes piece k+1, as it does with chunks in the
//! ring; a 1 MiB message is 11 hand-offs, where it was 32 chunks. The receiver puts
//! the pieces together as it does chunks (`conn/receive.rs`), checks each frame as a
//! `Large` one, and that the pieces agree on their message's length and add up to no more
//! ([`Incoming::check_piece`], and the reassembly); a message that ends part-way is
//! withdrawn with an `Abort` frame, as chunks are. (`conn/send.rs` says why each wait
//! strategy takes its way, measured.)
//!
//! # The region is a byte ring of whole messages, or of pieces
//!
//! So that the sender can write message (or piece) N+1 while the receiver copies N out,
//! the region holds several ([`RegionRing`]): each is placed whole at the region's next
//! free offset, or at offset 0 when it does not fit before the end (the skipped tail is
//! lost until the wrap, like a ring's padding). The sender reclaims its bytes once the
//! consumer's published `head` has passed the ring position just after its frame: the
//! receiver copies it out before it releases that frame, and publishes its head at once.
//!
//! # Sizes, and the memory bound
//!
//! A region for whole messages holds at least two of the largest message placed so far:
//! its capacity is `2 × len` rounded up to a power of two, at least [`REGION_GRAIN`], and
//! never more than [`region_bound`]`(limit)`, which is `2 × limit` rounded up to
//! [`REGION_GRAIN`] (`limit` being the connection's message limit in that direction). A
//! larger message later makes a new, larger region (the next *generation*), once
//! everything in the old one has been read. A region for pieces is
//! [`pieces_region_capacity`]`(limit)`: [`PIECES_REGION`] (four pieces), or less for a
//! small limit, made once and kept, so that it stays in the cache. Each side holds at
//! most one region per direction: its own outgoing one, and the peer's incoming one, each
//! at most `region_bound(limit)` bytes (a receiver cannot know how its peer sends).
//!
//! # Handing a region over
//!
//! Before the first `Large` frame of a generation, the sender writes a [`RegionGrant`]
//! message (16 bytes) with the region's grant on the control channel, which stays open
//! after the handshake. The receiver, meeting a `Large` frame of the next generation,
//! reads it from there within a short deadline (it was sent before the frame was published),
//! checks it against the frame and its own bound ([`Incoming::check_grant`]), and maps the
//! region; every frame is then checked against the region it names
//! ([`Incoming::check_frame`]).
//!
//! [`FrameKind::Large`]: crate::core::ring::FrameKind::Large
//! [`FrameKind::Piece`]: crate::core::ring::FrameKind::Piece

use std::collections::VecDeque;

/// Region sizes are whole multiples of this: the allocation granularity of a Windows
/// section view (64 KiB), and a whole number of pages everywhere (16 KiB on macOS).
pub(crate) const REGION_GRAIN: usize = 64 << 10;

/// Bytes of a [`FrameKind::Large`](crate::core::ring::FrameKind::Large) frame's payload.
pub(crate) const LARGE_REF_LEN: usize = 20;

/// Bytes of a [`RegionGrant`] message on the control channel.
pub(crate) const REGION_GRANT_LEN: usize = 16;

/// The first byte of a [`RegionGrant`]: what kind of control message it is. The control
/// channel carried nothing after the handshake before, so this is its first kind; the
/// byte leaves room for others.
const REGION_GRANT_KIND: u8 = 0x4c; // 'L'

/// The largest region a side may create, or map from its peer, for messages of at most
/// `limit` bytes in that direction: two of the largest message, rounded up to
/// [`REGION_GRAIN`]. Saturates instead of overflowing (a limit near `usize::MAX` is
/// refused by the region's creation, not by arithmetic).
pub(crate) fn region_bound(limit: usize) -> usize {
    let doubled = limit.saturating_mul(2).max(REGION_GRAIN);
    doubled
        .checked_next_multiple_of(REGION_GRAIN)
        .unwrap_or(usize::MAX / REGION_GRAIN * REGION_GRAIN)
}

/// The capacity of a new region that must hold a message of `len` bytes, for messages of
/// at most `limit` bytes: two of it, rounded up to a power of two (so that a series of
/// slowly growing messages makes few generations), at least [`REGION_GRAIN`], at most
/// [`region_bound`]`(limit)`. `len` must be at most `limit`.
pub(crate) fn region_capacity_for(len: usize, limit: usize) -> usize {
    debug_assert!(len <= limit);
    let bound = region_bound(limit);
    len.saturating_mul(2)
        .checked_next_power_of_two()
        .unwrap_or(bound)
        .max(REGION_GRAIN)
        .min(bound)
}

/// The longest piece a side that sends in pieces writes before it announces it.
pub(crate) const PIECE_LEN: usize = 128 << 10;

/// The region of a side that sends in pieces: a few pieces long, reused as the receiver
/// reads them, so that it stays in the cache.
pub(crate) const PIECES_REGION: usize = 512 << 10;

/// The capacity of the region of a side that sends in pieces, for messages of at most
/// `limit` bytes: [`PIECES_REGION`], or [`region_bound`]`(limit)` if that is smaller.
pub(crate) fn pieces_region_capacity(limit: usize) -> usize {
    PIECES_REGION.min(region_bound(limit))
}

/// The first piece of a message sent in pieces; each next one is at most as long as all
/// before it and this, so the pieces double (16, 32, 64, 128 KiB) up to their even length
/// (see [`piece_len`]).
///
/// Why small first: the receiver starts to copy out as soon as the first piece is in, and
/// a request's answer can start no sooner than the request's last byte is out; with a
/// 128 KiB first piece each message's first hand-off waited for a whole piece's copy.
/// Measured with `ringbell serve`/`ping` (1 MiB round trips, p50, pinned, 3 interleaved
/// runs each): `Adaptive` 198–224 µs with even pieces, 163–165 µs starting at 16 KiB, and
/// 64 KiB 15.9–18.2 against 15.2–15.5 µs. The echo server's wait for the next request
/// had sat just past its 50 µs spin (the client checks the echo, then writes a first
/// piece): with even pieces it slept through nearly every one, with a small first piece
/// its waits ended within the spin. `Spin` sides measured level (159–171 µs both ways).
pub(crate) const FIRST_PIECE_LEN: usize = 16 << 10;

/// The length of the next piece of a message of `total` bytes, `sent` of them sent, in a
/// region of `capacity` bytes: even pieces (to whole cache lines, the last one shorter),
/// as few as are at most [`PIECE_LEN`] and at most half the region long, and at least
/// two, so that the receiver copies one piece out while the sender writes the next (a
/// message in one piece would be two serial copies); but the first pieces shorter,
/// growing from [`FIRST_PIECE_LEN`] (each at most `sent + FIRST_PIECE_LEN`), so that the
/// receiver starts early. A 1 MiB message is 11 pieces: 16, 32, 64, seven of 128 and
/// one of 16 KiB.
pub(crate) fn piece_len(total: usize, sent: usize, capacity: usize) -> usize {
    debug_assert!(sent < total);
    let longest = PIECE_LEN.min(capacity / 2).max(1);
    let pieces = total.div_ceil(longest).max(2);
    let even = total.div_ceil(pieces).next_multiple_of(64).min(longest);
    let growing = sent.saturating_add(FIRST_PIECE_LEN);
    even.min(growing).min(total - sent)
}

/// What a `Large` frame says: which region (by generation), and where in it the message
/// lies. Fixed-width little-endian, like every length on the wire:
///
/// ```text
/// 0..4    generation, u32
/// 4..12   offset in the region, u64
/// 12..20  length of the message, u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LargeRef {
    pub(crate) generation: u32,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl LargeRef {
    pub(crate) fn encode(&self) -> [u8; LARGE_REF_LEN] {
        let mut bytes = [0u8; LARGE_REF_LEN];
        bytes[0..4].copy_from_slice(&self.generation.to_le_bytes());
        bytes[4..12].copy_from_slice(&self.offset.to_le_bytes());
        bytes[12..20].copy_from_slice(&self.len.to_le_bytes());
        bytes
    }

    /// Decodes a frame's payload; `None` unless it is exactly [`LARGE_REF_LEN`] bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Option<LargeRef> {
        let bytes: &[u8; LARGE_REF_LEN] = bytes.try_into().ok()?;
        Some(LargeRef {
            generation: u32::from_le_bytes(bytes[0..4].try_into().ok()?),
            offset: u64::from_le_bytes(bytes[4..12].try_into().ok()?),
            len: u64::from_le_bytes(bytes[12..20].try_into().ok()?),
        })
    }
}

/// Bytes of a [`FrameKind::Piece`](crate::core::ring::FrameKind::Piece) frame's payload.
pub(crate) const PIECE_REF_LEN: usize = LARGE_REF_LEN + 8;

/// What a `Piece` frame says: where one piece of a message lies in the sender's region
/// (as a [`LargeRef`] says of a whole message), and the whole message's length, which
/// every piece repeats so that each is checked against the first:
///
/// ```text
/// 0..20   the piece, as a LargeRef: generation, offset, length
/// 20..28  length of the whole message, u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PieceRef {
    pub(crate) piece: LargeRef,
    pub(crate) total: u64,
}

impl PieceRef {
    pub(crate) fn encode(&self) -> [u8; PIECE_REF_LEN] {
        let mut bytes = [0u8; PIECE_REF_LEN];
        bytes[..LARGE_REF_LEN].copy_from_slice(&self.piece.encode());
        bytes[LARGE_REF_LEN..].copy_from_slice(&self.total.to_le_bytes());
        bytes
    }

    /// Decodes a frame's payload; `None` unless it is exactly [`PIECE_REF_LEN`] bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Option<PieceRef> {
        let bytes: &[u8; PIECE_REF_LEN] = bytes.try_into().ok()?;
        Some(PieceRef {
            piece: LargeRef::decode(&bytes[..LARGE_REF_LEN])?,
            total: u64::from_le_bytes(bytes[LARGE_REF_LEN..].try_into().ok()?),
        })
    }
}

/// The control message that comes with a region's grant:
///
/// ```text
/// 0       kind, REGION_GRANT_KIND
/// 1..4    reserved, zero
/// 4..8    generation, u32 little-endian
/// 8..16   capacity in bytes, u64 little-endian
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegionGrant {
    pub(crate) generation: u32,
    pub(crate) capacity: u64,
}

impl RegionGrant {
    pub(crate) fn encode(&self) -> [u8; REGION_GRANT_LEN] {
        let mut bytes = [0u8; REGION_GRANT_LEN];
        bytes[0] = REGION_GRANT_KIND;
        bytes[4..8].copy_from_slice(&self.generation.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.capacity.to_le_bytes());
        bytes
    }

    /// Decodes a control message; `None` if its kind is not ours or a reserved byte is set.
    pub(crate) fn decode(bytes: &[u8; REGION_GRANT_LEN]) -> Option<RegionGrant> {
        if bytes[0] != REGION_GRANT_KIND || bytes[1..4] != [0, 0, 0] {
            return None;
        }
        Some(RegionGrant {
            generation: u32::from_le_bytes(bytes[4..8].try_into().ok()?),
            capacity: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
        })
    }
}

/// Where [`RegionRing::place`] put a message: at `offset`, and the ring's write counter
/// once it is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) offset: usize,
    end: u64,
}

/// The sender's bookkeeping of its region as a byte ring of whole messages: free-running
/// counters (as the main ring's), a message never wraps, and a FIFO of what the receiver
/// has not yet read.
#[derive(Debug, Clone)]
pub(crate) struct RegionRing {
    capacity: usize,
    /// Bytes placed so far, skipped tails included.
    written: u64,
    /// Bytes handed back so far: everything before this counter is free again.
    reclaimed: u64,
    /// For each message not yet known to be read, in order: the main ring's position just
    /// after its `Large` frame, and the value of `written` after it.
    unread: VecDeque<(u64, u64)>,
}

impl RegionRing {
    pub(crate) fn new(capacity: usize) -> RegionRing {
        debug_assert!(capacity > 0);
        RegionRing {
            capacity,
            written: 0,
            reclaimed: 0,
            unread: VecDeque::new(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether every message placed has been read (so the region may be replaced).
    pub(crate) fn is_drained(&self) -> bool {
        self.unread.is_empty()
    }

    /// Where a message of `len` bytes (at most the capacity) would go now: the next free
    /// offset, or 0 if it does not fit before the end. `None` if that space is not free
    /// yet (the receiver has not read far enough).
    pub(crate) fn place(&self, len: usize) -> Option<Placement> {
        debug_assert!(len > 0 && len <= self.capacity);
        let capacity = self.capacity as u64;
        let position = self.written % capacity;
        let start = if position + len as u64 > capacity {
            self.written + (capacity - position)
        } else {
            self.written
        };
        let end = start + len as u64;
        if end - self.reclaimed > capacity {
            return None;
        }
        Some(Placement {
            offset: (start % capacity) as usize,
            end,
        })
    }

    /// Records that the message placed at `placement` was published, its `Large` frame
    /// ending at `ring_after` in the main ring.
    pub(crate) fn commit(&mut self, placement: Placement, ring_after: u64) {
        self.written = placement.end;
        self.unread.push_back((ring_after, placement.end));
    }

    /// Hands back the space of every message whose frame the consumer has released: the
    /// main ring's published `head` is at or past the end of its frame. Once everything
    /// is read, the next message starts at offset 0 again, so that a region always has
    /// room for its whole capacity when it is empty (and the pages used stay the first).
    pub(crate) fn reclaim(&mut self, head: u64) {
        while let Some(&(ring_after, end)) = self.unread.front() {
            if ring_after > head {
                break;
            }
            self.reclaimed = end;
            self.unread.pop_front();
        }
        if self.unread.is_empty() {
            self.written = 0;
            self.reclaimed = 0;
        }
    }
}

/// The receiver's view of the peer's region: which generation it has mapped, and how
/// large it is. Pure, so that the connection and the fuzz target check frames alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// The generation mapped, with its capacity; `None` before the first.
    pub(crate) mapped: Option<(u32, u64)>,
    /// The message limit in this direction.
    pub(crate) limit: usize,
}

/// What a checked `Large` frame asks of the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameCheck {
    /// The message lies in the region mapped now, at `offset`, `len` bytes.
    Mapped { offset: usize, len: usize },
    /// It names the next generation: take its grant from the control channel first, check
    /// it with [`Incoming::check_grant`], then check the frame again.
    NextGeneration,
}

impl Incoming {
    /// The generation the next region must have.
    pub(crate) fn next_generation(&self) -> Option<u32> {
        match self.mapped {
            None => Some(1),
            Some((generation, _)) => generation.checked_add(1),
        }
    }

    /// Checks a `Large` frame's payload against the region mapped and the limit.
    pub(crate) fn check_frame(&self, payload: &[u8]) -> Result<FrameCheck, &'static str> {
        let large =
            LargeRef::decode(payload).ok_or("a large-message frame has the wrong length")?;
        if large.len > self.limit as u64 {
            return Err("a large message exceeds the connection's maximum size");
        }
        if large.len == 0 {
            return Err("a large message is empty");
        }
        match self.mapped {
            Some((generation, capacity)) if generation == large.generation => {
                let end = large
                    .offset
                    .checked_add(large.len)
                    .ok_or("a large message lies outside its region")?;
                if end > capacity {
                    return Err("a large message lies outside its region");
                }
                // Both fit in the capacity, which fit in a usize when it was mapped.
                Ok(FrameCheck::Mapped {
                    offset: large.offset as usize,
                    len: large.len as usize,
                })
            }
            _ if Some(large.generation) == self.next_generation() => Ok(FrameCheck::NextGeneration),
            _ => Err("a large message names a region that was never granted"),
        }
    }

    /// Checks a `Piece` frame's payload: the piece as [`check_frame`](Self::check_frame)
    /// checks a whole message, and the message's length it announces (at most the limit,
    /// at least the piece). Returns the check of the piece, and that length. Whether the
    /// pieces of a message agree with each other is the reassembly's check.
    pub(crate) fn check_piece(&self, payload: &[u8]) -> Result<(FrameCheck, usize), &'static str> {
        let piece = PieceRef::decode(payload).ok_or("a piece frame has the wrong length")?;
        if piece.total > self.limit as u64 {
            return Err("a message in pieces exceeds the connection's maximum size");
        }
        if piece.total < piece.piece.len {
            return Err("a piece is longer than its message");
        }
        let checked = self.check_frame(&payload[..LARGE_REF_LEN])?;
        // At most the limit, which is a usize.
        Ok((checked, piece.total as usize))
    }

    /// Checks the grant message read for the next generation: its kind, that it is the
    /// generation the frame named, and that the region is no larger than
    /// [`region_bound`] of our limit (so a peer cannot make us map more). Returns the
    /// capacity to map.
    pub(crate) fn check_grant(
        &self,
        bytes: &[u8; REGION_GRANT_LEN],
    ) -> Result<usize, &'static str> {
        let grant = RegionGrant::decode(bytes).ok_or("a control message is not a region grant")?;
        if Some(grant.generation) != self.next_generation() {
            return Err("a region grant is not for the generation its frame names");
        }
        usize::try_from(grant.capacity)
            .ok()
            .filter(|&capacity| capacity > 0 && capacity <= region_bound(self.limit))
            .ok_or("a region grant is larger than this connection's bound")
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_double_the_message_within_the_bound() {
        let limit = 16 << 20;
        assert_eq!(region_bound(limit), 32 << 20);
        // Rounded up to the grain, for a limit that is not a power of two (a call's reply
        // carries a kind byte more).
        assert_eq!(region_bound(limit + 1), (32 << 20) + REGION_GRAIN);
        assert_eq!(region_bound(0), REGION_GRAIN);
        assert_eq!(region_bound(usize::MAX) % REGION_GRAIN, 0);
        assert_eq!(region_capacity_for(40 << 10, limit), 128 << 10);
        assert_eq!(region_capacity_for(1 << 20, limit), 2 << 20);
        assert_eq!(region_capacity_for(1, limit), REGION_GRAIN);
        // The largest message gets the bound, which holds two of it.
        assert_eq!(region_capacity_for(limit, limit), 32 << 20);
        assert_eq!(
            region_capacity_for(limit + 1, limit + 1),
            region_bound(limit + 1)
        );
        assert!(region_capacity_for(12 << 20, limit) <= region_bound(limit));
    }

    #[test]
    fn codecs_round_trip_and_refuse_what_is_not_theirs() {
        let large = LargeRef {
            generation: 7,
            offset: 1 << 40,
            len: 12345,
        };
        assert_eq!(LargeRef::decode(&large.encode()), Some(large));
        assert_eq!(LargeRef::decode(&large.encode()[..19]), None);
        assert_eq!(LargeRef::decode(&[0; 21]), None);
        let grant = RegionGrant {
            generation: 3,
            capacity: 2 << 20,
        };
        assert_eq!(RegionGrant::decode(&grant.encode()), Some(grant));
        let mut bytes = grant.encode();
        bytes[2] = 1;
        assert_eq!(RegionGrant::decode(&bytes), None, "a reserved byte set");
        bytes = grant.encode();
        bytes[0] = 0;
        assert_eq!(RegionGrant::decode(&bytes), None, "another kind");
    }

    #[test]
    fn a_message_that_does_not_fit_before_the_end_goes_to_offset_zero() {
        let mut ring = RegionRing::new(100);
        let first = ring.place(40).unwrap();
        assert_eq!(first.offset, 0);
        ring.commit(first, 10);
        let second = ring.place(40).unwrap();
        assert_eq!(second.offset, 40);
        ring.commit(second, 20);
        // 20 bytes are left before the end: a third of 40 needs offset 0, still unread.
        assert_eq!(ring.place(40), None);
        ring.reclaim(9);
        assert_eq!(
            ring.place(40),
            None,
            "the head has not passed the first frame"
        );
        ring.reclaim(10);
        let third = ring.place(40).unwrap();
        assert_eq!(third.offset, 0);
        ring.commit(third, 30);
        // The skipped tail (80..100) is behind the third's start now: the next message
        // goes after the third, at 40, once the second has been read.
        assert_eq!(ring.place(20), None);
        ring.reclaim(20);
        assert_eq!(ring.place(20).unwrap().offset, 40);
        assert!(!ring.is_drained());
        ring.reclaim(30);
        assert!(ring.is_drained());
        // The whole capacity fits once everything is read.
        assert_eq!(ring.place(100).unwrap().offset, 0);
    }

    #[test]
    fn messages_are_cut_in_growing_then_even_pieces_at_least_two_within_half_the_region() {
        let pieces = |total: usize, capacity: usize| {
            let mut lens = Vec::new();
            let mut sent = 0;
            while sent < total {
                let len = piece_len(total, sent, capacity);
                assert!(len > 0 && len <= PIECE_LEN && len <= capacity / 2);
                lens.push(len);
                sent += len;
            }
            assert_eq!(sent, total);
            lens
        };
        const K: usize = 1 << 10;
        // Growing from 16 KiB to the even length, the last one shorter.
        let mut mib = vec![16 * K, 32 * K, 64 * K];
        mib.extend([128 * K; 7]);
        mib.push(16 * K);
        assert_eq!(pieces(1 << 20, 512 << 10), mib);
        assert_eq!(pieces(64 << 10, 512 << 10), vec![16 * K, 32 * K, 16 * K]);
        // To whole cache lines.
        assert_eq!(pieces(40_001, 512 << 10), vec![16 * K, 20_032, 3_585]);
        assert_eq!(pieces((1 << 20) + 1, 512 << 10).len(), 12);
        // A small region (a small limit): pieces of at most half of it.
        assert_eq!(
            pieces(100 << 10, 64 << 10),
            vec![16 * K, 25_600, 25_600, 25_600, 9_216]
        );
        assert_eq!(pieces(16 << 20, PIECES_REGION).len(), 131);
        assert_eq!(pieces_region_capacity(16 << 20), PIECES_REGION);
        assert_eq!(pieces_region_capacity(40 << 10), REGION_GRAIN * 2);
    }

    #[test]
    fn pieces_are_checked_against_their_region_and_their_message() {
        let piece = |offset, len, total| {
            PieceRef {
                piece: LargeRef {
                    generation: 1,
                    offset,
                    len,
                },
                total,
            }
            .encode()
        };
        let encoded = piece(4, 5, 6);
        assert_eq!(
            PieceRef::decode(&encoded).map(|piece| (piece.piece.len, piece.total)),
            Some((5, 6))
        );
        assert_eq!(PieceRef::decode(&encoded[..LARGE_REF_LEN]), None);
        let mapped = incoming(Some((1, 4096)));
        assert_eq!(
            mapped.check_piece(&piece(96, 4000, 100_000)),
            Ok((
                FrameCheck::Mapped {
                    offset: 96,
                    len: 4000
                },
                100_000
            ))
        );
        assert!(
            mapped.check_piece(&piece(97, 4000, 100_000)).is_err(),
            "past the end"
        );
        assert!(
            mapped.check_piece(&piece(0, 4000, 3999)).is_err(),
            "longer than its message"
        );
        assert!(
            mapped.check_piece(&piece(0, 10, (1 << 20) + 1)).is_err(),
            "over the limit"
        );
        assert!(mapped.check_piece(&piece(0, 0, 10)).is_err(), "empty");
        assert!(
            mapped.check_piece(&encoded[..LARGE_REF_LEN]).is_err(),
            "a Large frame's payload"
        );
        assert_eq!(
            incoming(None).check_piece(&piece(0, 10, 20)),
            Ok((FrameCheck::NextGeneration, 20))
        );
    }

    fn incoming(mapped: Option<(u32, u64)>) -> Incoming {
        Incoming {
            mapped,
            limit: 1 << 20,
        }
    }

    fn frame(generation: u32, offset: u64, len: u64) -> [u8; LARGE_REF_LEN] {
        LargeRef {
            generation,
            offset,
            len,
        }
        .encode()
    }

    #[test]
    fn frames_are_checked_against_the_region_they_name() {
        let none = incoming(None);
        assert_eq!(
            none.check_frame(&frame(1, 0, 100)),
            Ok(FrameCheck::NextGeneration)
        );
        assert!(
            none.check_frame(&frame(2, 0, 100)).is_err(),
            "never granted"
        );
        assert!(
            none.check_frame(&frame(0, 0, 100)).is_err(),
            "never granted"
        );
        let mapped = incoming(Some((1, 4096)));
        assert_eq!(
            mapped.check_frame(&frame(1, 96, 4000)),
            Ok(FrameCheck::Mapped {
                offset: 96,
                len: 4000
            })
        );
        assert!(
            mapped.check_frame(&frame(1, 97, 4000)).is_err(),
            "past the end"
        );
        assert!(
            mapped.check_frame(&frame(1, u64::MAX, 2)).is_err(),
            "overflow"
        );
        assert!(mapped.check_frame(&frame(1, 0, 0)).is_err(), "empty");
        assert!(
            mapped.check_frame(&frame(1, 0, (1 << 20) + 1)).is_err(),
            "over the limit"
        );
        assert!(
            mapped.check_frame(&frame(3, 0, 10)).is_err(),
            "skips a generation"
        );
        assert!(
            mapped.check_frame(&frame(0, 0, 10)).is_err(),
            "an old generation"
        );
        assert_eq!(
            mapped.check_frame(&frame(2, 0, 10)),
            Ok(FrameCheck::NextGeneration)
        );
        assert!(mapped.check_frame(&[0; 19]).is_err());
        let last = incoming(Some((u32::MAX, 4096)));
        assert!(
            last.check_frame(&frame(0, 0, 10)).is_err(),
            "no wrap-around"
        );
    }

    #[test]
    fn grants_are_checked_against_the_frame_and_the_bound() {
        let mapped = incoming(Some((1, 4096)));
        let grant = |generation, capacity| {
            RegionGrant {
                generation,
                capacity,
            }
            .encode()
        };
        assert_eq!(mapped.check_grant(&grant(2, 2 << 20)), Ok(2 << 20));
        assert!(
            mapped.check_grant(&grant(2, (2 << 20) + 1)).is_err(),
            "over the bound"
        );
        assert!(
            mapped.check_grant(&grant(2, u64::MAX)).is_err(),
            "over the bound"
        );
        assert!(mapped.check_grant(&grant(2, 0)).is_err(), "empty");
        assert!(
            mapped.check_grant(&grant(3, 4096)).is_err(),
            "another generation"
        );
        assert!(
            mapped.check_grant(&[0; REGION_GRANT_LEN]).is_err(),
            "not a grant"
        );
    }

    proptest! {
        /// Whatever the sizes and however late the receiver reads, placed messages never
        /// overlap a message not yet read, never cross the region's end, and a drained
        /// region always has room for its whole capacity.
        #[test]
        fn placements_never_overlap_unread_messages(
            capacity in 1usize..4096,
            ops in proptest::collection::vec((1usize..4096, any::<bool>()), 1..200),
        ) {
            let mut ring = RegionRing::new(capacity);
            // The model: (ring position after the frame, offset, len) of unread messages.
            let mut unread: VecDeque<(u64, usize, usize)> = VecDeque::new();
            let mut ring_pos = 0u64;
            for (len, read_one) in ops {
                let len = len.min(capacity);
                if read_one {
                    if let Some((after, _, _)) = unread.pop_front() {
                        ring.reclaim(after);
                    }
                }
                match ring.place(len) {
                    Some(placement) => {
                        prop_assert!(placement.offset + len <= capacity);
                        for &(_, offset, other) in &unread {
                            let apart = placement.offset + len <= offset
                                || offset + other <= placement.offset;
                            prop_assert!(apart, "{:?} overlaps {}..{}", placement, offset, offset + other);
                        }
                        ring_pos += 40;
                        ring.commit(placement, ring_pos);
                        unread.push_back((ring_pos, placement.offset, len));
                    }
                    None => prop_assert!(!unread.is_empty(), "an empty region refused {}", len),
                }
            }
            ring.reclaim(ring_pos);
            prop_assert!(ring.is_drained());
            prop_assert!(ring.place(capacity).is_some());
        }

        /// Whatever a hostile peer writes in a frame and a grant, what the checks accept
        /// lies inside a region no larger than the bound.
        #[test]
        fn what_the_checks_accept_is_in_bounds(
            payload in proptest::collection::vec(any::<u8>(), 0..24),
            grant in any::<[u8; REGION_GRANT_LEN]>(),
            mapped in proptest::option::of((any::<u32>(), 1u64..(4 << 20))),
            limit in 0usize..(2 << 20),
        ) {
            let view = Incoming { mapped, limit };
            match view.check_frame(&payload) {
                Ok(FrameCheck::Mapped { offset, len }) => {
                    let (_, capacity) = mapped.expect("a mapped region");
                    prop_assert!(len > 0 && len <= limit);
                    prop_assert!((offset + len) as u64 <= capacity);
                }
                Ok(FrameCheck::NextGeneration) | Err(_) => {}
            }
            if let Ok(capacity) = view.check_grant(&grant) {
                prop_assert!(capacity > 0 && capacity <= region_bound(limit));
            }
        }
    }
}
