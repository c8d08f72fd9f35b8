//! Entry points for the criterion micro-benchmarks in `benches/`.
//!
//! **Not a stable API.** This module is hidden from the docs and may change or go away in
//! any release; it exists only so that `benches/ring.rs` can time the `pub(crate)` ring
//! and frame code without a socket, a segment or a second thread.
//!
//! Nothing here is tuned to the benchmark: [`HeapRing::push`] and [`HeapRing::pop_into`]
//! go through the same `Producer::try_push` and `Consumer::peek` (in `ring.rs`) as a
//! [`Connection`](crate::Connection), with every index and header check, copy every
//! payload byte into the ring and out again, and hand space back to the producer as
//! lazily as a connection does. What they leave out is the connection's own work around
//! the ring: waking a sleeping peer, checking that the peer is alive, and chunking
//! messages larger than one frame.

#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::core::layout::{RingControl, DATA_OFFSET};
use crate::core::ring::{
    self, max_frame_payload, valid_capacity, Consumer, FrameHeader, Producer, RawRing,
    FRAME_HEADER_LEN,
};

/// A ring over heap memory, with its producer and its consumer, both driven by the
/// caller's thread.
#[derive(Debug)]
pub struct HeapRing {
    producer: Producer,
    consumer: Consumer,
    /// Owned (from `Box::into_raw`), freed in `Drop`. Held as a raw pointer, not a `Box`,
    /// because `producer` and `consumer` point into it while `self` moves around.
    control: NonNull<RingControl>,
    /// Owned, `data_layout.size()` bytes from `alloc_zeroed`, freed in `Drop`.
    data: NonNull<u8>,
    data_layout: Layout,
}

impl HeapRing {
    /// A fresh, empty ring of `capacity` bytes. Its data is page-aligned, as it is in a
    /// connection's segment, so that frames fall on the same cache lines.
    ///
    /// # Panics
    ///
    /// If `capacity` is not a power of two between 256 bytes and 1 GiB.
    pub fn new(capacity: usize) -> Self {
        assert!(
            valid_capacity(capacity),
            "a ring's capacity is a power of two between 256 bytes and 1 GiB, not {capacity}"
        );
        let data_layout =
            Layout::from_size_align(capacity, DATA_OFFSET).expect("at most 1 GiB, page-aligned");
        // SAFETY: `data_layout` has a non-zero size (at least 256 bytes).
        let data = unsafe { alloc::alloc_zeroed(data_layout) };
        let Some(data) = NonNull::new(data) else {
            alloc::handle_alloc_error(data_layout)
        };
        let control = NonNull::from(Box::leak(RingControl::new_boxed()));
        // SAFETY: `control` and the `capacity` bytes at `data` are heap allocations that
        // `Drop` frees only after the last use of the producer and consumer made here (they
        // are fields of `self` and have no drop code of their own). Only their atomics and
        // raw copies touch either allocation, and `capacity` was checked above.
        let raw = unsafe { RawRing::new(control.as_ptr(), data.as_ptr(), capacity) };
        HeapRing {
            producer: Producer::new(raw),
            consumer: Consumer::new(raw),
            control,
            data,
            data_layout,
        }
    }

    /// The largest payload [`push`](Self::push) accepts: a quarter of the ring, less a
    /// frame header. A connection sends larger messages in several frames.
    pub fn max_payload(&self) -> usize {
        max_frame_payload(self.data_layout.size())
    }

    /// Copies `payload` into the ring as one message frame and publishes it, as
    /// `Connection::send` does for a message that fits one frame. Returns `false`, writing
    /// nothing, if the ring has no room for it yet.
    ///
    /// # Panics
    ///
    /// If `payload` is longer than [`max_payload`](Self::max_payload).
    pub fn push(&mut self, payload: &[u8], correlation: u64) -> bool {
        assert!(
            payload.len() <= self.max_payload(),
            "a {}-byte payload does not fit one frame of a {}-byte ring",
            payload.len(),
            self.data_layout.size()
        );
        self.producer
            .try_push(ring::FrameKind::Message, correlation, &[payload])
            .expect("a ring written only by this value keeps its invariants")
    }

    /// Replaces `out`'s contents with the oldest message's payload and returns its length;
    /// `None` if the ring is empty. Like `Connection::recv`, it hands the space it consumed
    /// back to the producer lazily: once an eighth of the ring is waiting, and whenever it
    /// finds the ring empty (where a connection would go on to wait).
    pub fn pop_into(&mut self, out: &mut Vec<u8>) -> Option<usize> {
        out.clear();
        let peeked = self
            .consumer
            .peek()
            .expect("a ring written only by this value keeps its invariants");
        let Some(frame) = peeked else {
            self.consumer.publish();
            return None;
        };
        self.consumer.append_payload(&frame, 0, out);
        self.consumer.release(&frame);
        Some(frame.payload_len())
    }
}

impl Drop for HeapRing {
    fn drop(&mut self) {
        // SAFETY: `data` came from `alloc_zeroed(data_layout)` in `new` and is freed only
        // here; the producer and consumer that point into it are never used again.
        unsafe { alloc::dealloc(self.data.as_ptr(), self.data_layout) };
        // SAFETY: `control` came from `Box::leak` in `new` and is freed only here, after
        // the last use of the producer and consumer that point to it.
        drop(unsafe { Box::from_raw(self.control.as_ptr()) });
    }
}

/// What a frame carries, as written into its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A whole message.
    Message,
    /// The first chunk of a message larger than one frame.
    First,
    /// A middle chunk.
    Middle,
    /// The final chunk.
    Last,
    /// The sender gave up on a chunked message.
    Abort,
    /// A message in the sender's large-message region.
    Large,
    /// Filler up to the end of the ring.
    Padding,
}

impl From<FrameKind> for ring::FrameKind {
    fn from(kind: FrameKind) -> Self {
        match kind {
            FrameKind::Message => ring::FrameKind::Message,
            FrameKind::First => ring::FrameKind::First,
            FrameKind::Middle => ring::FrameKind::Middle,
            FrameKind::Last => ring::FrameKind::Last,
            FrameKind::Abort => ring::FrameKind::Abort,
            FrameKind::Large => ring::FrameKind::Large,
            FrameKind::Padding => ring::FrameKind::Padding,
        }
    }
}

/// The 16 bytes of a frame header, as the producer writes them.
pub fn encode_frame_header(len: u32, kind: FrameKind, correlation: u64) -> [u8; FRAME_HEADER_LEN] {
    FrameHeader {
        len,
        kind: kind.into(),
        correlation,
    }
    .encode()
}

/// The payload length and correlation id of a frame header, as the consumer reads them;
/// `None` if the kind is unknown or a reserved byte is set.
pub fn decode_frame_header(bytes: &[u8; FRAME_HEADER_LEN]) -> Option<(u32, u64)> {
    FrameHeader::decode(bytes).map(|header| (header.len, header.correlation))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn messages_come_back_whole_and_in_order_across_the_ring_end() {
        let mut ring = HeapRing::new(1024);
        let mut out = Vec::new();
        // 1024 is not a multiple of any of these frame sizes, so the ring's end is padded
        // and skipped many times over.
        for round in 0..200u64 {
            let len = (round as usize * 37) % (ring.max_payload() + 1);
            let payload: Vec<u8> = (0..len).map(|i| (i as u64 ^ round) as u8).collect();
            assert!(ring.push(&payload, round), "an empty ring has room");
            assert_eq!(ring.pop_into(&mut out), Some(len));
            assert_eq!(out, payload);
            assert_eq!(ring.pop_into(&mut out), None);
            assert!(out.is_empty(), "pop_into replaces what `out` held");
        }
    }

    #[test]
    fn a_full_ring_refuses_then_takes_more_once_drained() {
        let mut ring = HeapRing::new(256);
        let mut out = Vec::new();
        let mut pushed = 0;
        while ring.push(&[7; 24], pushed) {
            pushed += 1;
        }
        // 40-byte frames: six fit in 256 bytes, a seventh does not.
        assert_eq!(pushed, 6);
        for _ in 0..pushed {
            assert_eq!(ring.pop_into(&mut out), Some(24));
        }
        assert_eq!(ring.pop_into(&mut out), None);
        assert!(ring.push(&[7; 24], pushed), "a drained ring has room again");
    }

    #[test]
    #[should_panic(expected = "does not fit one frame")]
    fn an_oversized_payload_panics_instead_of_corrupting_the_ring() {
        let mut ring = HeapRing::new(256);
        let payload = vec![0; ring.max_payload() + 1];
        ring.push(&payload, 0);
    }

    #[test]
    fn frame_headers_round_trip() {
        let bytes = encode_frame_header(1234, FrameKind::Message, 0xfeed_beef);
        assert_eq!(decode_frame_header(&bytes), Some((1234, 0xfeed_beef)));
        let mut reserved_set = bytes;
        reserved_set[6] = 1;
        assert_eq!(decode_frame_header(&reserved_set), None);
    }
}
