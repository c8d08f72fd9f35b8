//! One connection's shared segment: a [`SharedRegion`] laid out as in `layout.rs`.
//!
//! This is the only place that turns the mapping's address into references and ring
//! pointers; it checks the layout before anyone uses it.

#![allow(unsafe_code)]

use crate::core::layout::{self, SegmentHeader, LAYOUT_VERSION, MAGIC};
use crate::core::ring::{self, RawRing};
use crate::core::sync::Ordering;
use crate::sys::SharedRegion;

/// A mapped segment whose layout has been checked.
#[derive(Debug)]
pub(crate) struct Segment {
    region: SharedRegion,
    capacity: usize,
}

impl Segment {
    /// Lays out a fresh (zeroed) region for rings of `capacity` bytes and publishes it by
    /// storing the magic word last.
    pub(crate) fn initialize(region: SharedRegion, capacity: usize) -> Segment {
        assert!(
            ring::valid_capacity(capacity),
            "ring capacity was validated by the server"
        );
        assert_eq!(
            Some(region.len()),
            layout::segment_len(capacity),
            "segment sized for capacity"
        );
        let segment = Segment { region, capacity };
        let header = segment.header();
        header.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        header
            .ring_capacity
            .store(capacity as u64, Ordering::Relaxed);
        // SYNC: pairs with the Acquire load of `magic` in `Segment::open`: the fields above
        // are visible to whoever sees the magic.
        header.magic.store(MAGIC, Ordering::Release);
        segment
    }

    /// Checks a region received from the server: the magic, version and capacity it
    /// announced in the handshake must be what the header says.
    pub(crate) fn open(region: SharedRegion, capacity: usize) -> Result<Segment, &'static str> {
        if !ring::valid_capacity(capacity) {
            return Err("the announced ring capacity is not a power of two in range");
        }
        if layout::segment_len(capacity) != Some(region.len()) {
            return Err("the segment's size does not match the announced ring capacity");
        }
        let segment = Segment { region, capacity };
        let header = segment.header();
        // SYNC: pairs with the Release store of `magic` in `Segment::initialize`.
        if header.magic.load(Ordering::Acquire) != MAGIC {
            return Err("the segment does not start with the ringbell magic");
        }
        if header.version.load(Ordering::Relaxed) != LAYOUT_VERSION {
            return Err("the segment's layout version differs from ours");
        }
        if header.ring_capacity.load(Ordering::Relaxed) != capacity as u64 {
            return Err("the segment's ring capacity differs from the announced one");
        }
        Ok(segment)
    }

    /// The segment header.
    pub(crate) fn header(&self) -> &SegmentHeader {
        // SAFETY: the region is at least `DATA_OFFSET` bytes (checked when the segment was
        // made), page-aligned, lives as long as `self`, and `SegmentHeader` is made of
        // atomics only, valid for any bit pattern, so the peer's writes cannot break it.
        unsafe { &*self.region.as_ptr().cast::<SegmentHeader>() }
    }

    /// The raw parts of ring `index` (`layout::CLIENT_TO_SERVER` or `SERVER_TO_CLIENT`).
    ///
    /// The returned value points into this segment: it must not be used after the segment
    /// is dropped. `Connection` keeps both in one struct to guarantee that.
    pub(crate) fn raw_ring(&self, index: usize) -> RawRing {
        let control = &self.header().rings[index] as *const _;
        let offset = layout::ring_data_offset(index, self.capacity);
        // SAFETY: `offset + capacity <= region.len()` by `segment_len`; the pointers are
        // valid while the region is mapped, which the caller ensures (see above).
        unsafe { RawRing::new(control, self.region.as_ptr().add(offset), self.capacity) }
    }

    /// Bytes per ring.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}
