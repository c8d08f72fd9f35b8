//! The `#[repr(C)]` layout of a connection's shared segment.
//!
//! ```text
//! offset 0            SegmentHeader: magic, version, ring capacity, closed flags,
//!                     and one RingControl per direction (indices + waiter words)
//! offset DATA_OFFSET  ring 0 data (client → server), `capacity` bytes
//! DATA_OFFSET + cap   ring 1 data (server → client), `capacity` bytes
//! ```
//!
//! Every field is a fixed-width atomic: the peer can write any byte of the segment at any
//! time, so nothing here is ever read as a plain value, and nothing read from it is trusted
//! without a check (see `ring.rs`). The producer-owned and consumer-owned words of a ring
//! sit on different 128-byte lines (two 64-byte lines, because adjacent-line prefetch
//! pairs them on x86), so the two sides do not false-share.

use crate::core::sync::{AtomicU32, AtomicU64};

/// "RINGBEL1" in little-endian: the first word of a segment, stored last by its creator.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"RINGBEL1");
/// Bumped whenever this layout or the frame format changes.
pub(crate) const LAYOUT_VERSION: u32 = 1;
/// Where the first ring's bytes start: one page, so the data is page-aligned.
pub(crate) const DATA_OFFSET: usize = 4096;

/// Index of the client → server ring in [`SegmentHeader::rings`].
pub(crate) const CLIENT_TO_SERVER: usize = 0;
/// Index of the server → client ring in [`SegmentHeader::rings`].
pub(crate) const SERVER_TO_CLIENT: usize = 1;

/// Aligns (and so pads) a value to its own 128-byte line.
#[derive(Debug)]
#[repr(C, align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The words one waiter and its waker share (see `wait.rs` for the protocol).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct WaitCell {
    /// The futex word: bumped by the waker whenever it finds a sleeper announced.
    pub(crate) seq: AtomicU32,
    /// The waiter's announcement: a set of `wait::SLEEP_*` bits, 0 when awake.
    pub(crate) sleeping: AtomicU32,
}

/// The control block of one single-producer single-consumer byte ring.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct RingControl {
    /// Bytes ever published by the producer. Written only by the producer.
    pub(crate) tail: CachePadded<AtomicU64>,
    /// Bytes ever released by the consumer. Written only by the consumer.
    pub(crate) head: CachePadded<AtomicU64>,
    /// The consumer sleeps here while the ring is empty; the producer wakes it.
    pub(crate) readable: CachePadded<WaitCell>,
    /// The producer sleeps here while the ring is full; the consumer wakes it.
    pub(crate) writable: CachePadded<WaitCell>,
}

/// The header at offset 0 of every segment.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct SegmentHeader {
    /// [`MAGIC`] once the creator has initialised everything else.
    pub(crate) magic: CachePadded<AtomicU64>,
    /// [`LAYOUT_VERSION`] of the creator.
    pub(crate) version: AtomicU32,
    /// Reserved, zero.
    pub(crate) reserved: AtomicU32,
    /// Bytes per ring (a power of two).
    pub(crate) ring_capacity: AtomicU64,
    /// Set to 1 by a side (`CLIENT_TO_SERVER` = client, `SERVER_TO_CLIENT` = server, i.e.
    /// the index of the ring it produces into) when it closes the connection.
    pub(crate) closed: [AtomicU32; 2],
    /// One control block per direction.
    pub(crate) rings: [RingControl; 2],
}

impl RingControl {
    /// A zeroed control block on the heap, for in-process tests, loom models and the fuzz
    /// targets (`fuzz_api`), which drive a ring over heap memory.
    #[cfg(any(test, loom, feature = "__test-api"))]
    pub(crate) fn new_boxed() -> Box<Self> {
        let cell = || {
            CachePadded(WaitCell {
                seq: AtomicU32::new(0),
                sleeping: AtomicU32::new(0),
            })
        };
        Box::new(RingControl {
            tail: CachePadded(AtomicU64::new(0)),
            head: CachePadded(AtomicU64::new(0)),
            readable: cell(),
            writable: cell(),
        })
    }
}

/// Total segment length for rings of `capacity` bytes each.
pub(crate) fn segment_len(capacity: usize) -> Option<usize> {
    capacity.checked_mul(2)?.checked_add(DATA_OFFSET)
}

/// Offset of the data of ring `index`.
pub(crate) fn ring_data_offset(index: usize, capacity: usize) -> usize {
    DATA_OFFSET + index * capacity
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<SegmentHeader>() <= DATA_OFFSET);
    assert!(align_of::<SegmentHeader>() <= 4096);
    assert!(offset_of!(SegmentHeader, magic) == 0);
    assert!(offset_of!(SegmentHeader, version) == 128);
    assert!(offset_of!(SegmentHeader, ring_capacity) == 136);
    assert!(offset_of!(SegmentHeader, rings) == 256);
    assert!(size_of::<RingControl>() == 4 * 128);
    assert!(offset_of!(RingControl, head) - offset_of!(RingControl, tail) == 128);
    assert!(size_of::<AtomicU64>() == 8 && size_of::<AtomicU32>() == 4);
};
