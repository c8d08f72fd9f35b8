//! Entry points for the fuzz targets in `fuzz/` and for the stable-toolchain test that
//! replays their corpus (`tests/fuzz_corpus.rs`).
//!
//! **Not a stable API.** This module is hidden from the docs and may change or go away in
//! any release; it exists only so that code outside the crate can reach the `pub(crate)`
//! decoders and the ring's consumer with bytes it does not control.
//!
//! Each function takes arbitrary bytes, must never panic on them, and asserts the
//! invariants it can check from the outside, so that a broken invariant is a crash the
//! fuzzer reports, not a silent wrong answer:
//!
//! * [`frame_header`]: what `ring::FrameHeader::decode` accepts, it reads back byte for byte.
//! * [`handshake`]: the handshake decoders accept only well-formed messages of the
//!   expected kind, and what they accept re-encodes to the same bytes.
//! * [`hostile_ring`]: a `ring::Consumer` over a ring whose indices and bytes a hostile
//!   producer wrote hands out only frames that lie inside the ring and inside what was
//!   published, in order, and runs dry or fails within a bounded number of steps; and
//!   what the receiver's checks of a `Large` frame and its region grant
//!   (`core::large::Incoming`) accept lies inside a region within the bound.
//! * [`call_messages`]: the call protocol's decoders (`core::call`), from either side,
//!   accept only messages within its limits, and what they accept re-encodes to a message
//!   that decodes to the same.
//! * `codec` (feature `codec`): typed decoding fails cleanly or yields a value that
//!   round-trips and is no larger, encoded, than the bytes it came from.

#![allow(unsafe_code)]

use std::ptr;

use crate::core::large::{region_bound, FrameCheck, Incoming, REGION_GRANT_LEN};
use crate::core::layout::RingControl;
use crate::core::ring::{
    frame_size, max_frame_payload, Consumer, Frame, FrameHeader, FrameKind, PackCursor, Producer,
    RawRing, RingError, FRAME_HEADER_LEN, MIN_CAPACITY, PACK_ENTRY_HEADER_LEN,
};
use crate::core::sync::Ordering;
use crate::handshake::wire::{
    decode_hello, decode_prefix, decode_welcome, encode_hello, encode_prefix, encode_welcome, Kind,
    Status, PREFIX_LEN, PROTOCOL_VERSION, WELCOME_LEN,
};

/// Decodes the input as a run of 16-byte frame headers (the last one zero-padded) and
/// checks each verdict against the format in `ring.rs`.
pub fn frame_header(input: &[u8]) {
    for chunk in input.chunks(FRAME_HEADER_LEN) {
        let mut bytes = [0u8; FRAME_HEADER_LEN];
        bytes[..chunk.len()].copy_from_slice(chunk);
        match FrameHeader::decode(&bytes) {
            Some(header) => {
                // Nothing is dropped or invented: the length, kind and correlation id are
                // the bytes' own, and the reserved bytes were zero.
                assert_eq!(
                    header.encode(),
                    bytes,
                    "a decoded header re-encodes unchanged"
                );
                let size = frame_size(header.len as usize);
                assert!(size >= FRAME_HEADER_LEN + header.len as usize);
                assert!(size < FRAME_HEADER_LEN + header.len as usize + 8);
                assert_eq!(size % 8, 0, "frames stay 8-byte aligned");
            }
            None => {
                let known_kind = matches!(bytes[4], 1..=8 | 0xff);
                assert!(
                    !known_kind || bytes[5..8] != [0, 0, 0],
                    "a header with a known kind and zero reserved bytes was refused"
                );
            }
        }
    }
}

/// Decodes the input (zero-padded or cut to 48 bytes) as a Welcome, and its first 16
/// bytes as the prefix of each kind of handshake message.
pub fn handshake(input: &[u8]) {
    let mut welcome = [0u8; WELCOME_LEN];
    let used = input.len().min(WELCOME_LEN);
    welcome[..used].copy_from_slice(&input[..used]);
    let mut prefix = [0u8; PREFIX_LEN];
    prefix.copy_from_slice(&welcome[..PREFIX_LEN]);

    for expected in [Kind::Hello, Kind::Welcome, Kind::Ack] {
        match decode_prefix(&prefix, expected) {
            Ok(decoded) => {
                assert_eq!(
                    decoded.kind, expected,
                    "a prefix of another kind was accepted"
                );
                assert_eq!(decoded.version, u16::from_le_bytes([prefix[8], prefix[9]]));
                // The version is returned, not checked; every other byte must be exactly
                // what we would send for this kind and status.
                let reencoded = encode_prefix(decoded.kind, decoded.status);
                assert_eq!(reencoded[..8], prefix[..8], "the magic was not checked");
                assert_eq!(reencoded[10..], prefix[10..], "kind or status misread");
            }
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }

    match decode_hello(&prefix) {
        // A Hello of our version that says what it carries re-encodes unchanged.
        Ok((version, Some(carries))) => {
            assert_eq!(version, PROTOCOL_VERSION);
            assert_eq!(
                encode_hello(carries),
                prefix,
                "a decoded Hello re-encodes unchanged"
            );
        }
        Ok((version, None)) => assert_ne!(version, PROTOCOL_VERSION),
        Err(error) => assert!(!error.to_string().is_empty()),
    }

    match decode_welcome(&welcome, std::path::Path::new("fuzz.sock")) {
        // An accepted Welcome has our version and the Accepted status, so encoding it
        // again must reproduce all 48 bytes.
        Ok(decoded) => assert_eq!(
            encode_welcome(Status::Accepted, &decoded),
            welcome,
            "a decoded Welcome re-encodes unchanged"
        ),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

/// Decodes the input as a message of a call from the client and as one from the server,
/// and checks each verdict against the format in `core/call.rs`: an opening's request,
/// metadata and window within the limits, and every accepted message re-encoded to one
/// that decodes to the same (byte for byte, for all but the opening, whose window the
/// decoder clamps).
pub fn call_messages(input: &[u8]) {
    use crate::core::call::{
        add_to_pack, decode_from_client, decode_from_server, encode_cancel, encode_client_credit,
        encode_data, encode_end, encode_ended, encode_item, encode_open, encode_reply,
        encode_server_credit, start_pack, FromClient, FromServer, Pack, MAX_METADATA_ENTRIES,
        MAX_METADATA_LEN, MAX_STREAM_WINDOW,
    };

    match decode_from_client(input) {
        Ok(FromClient::Open(open)) => {
            assert!(
                open.request_len < input.len(),
                "the request lies inside the message"
            );
            assert!(open.window <= MAX_STREAM_WINDOW, "the window is clamped");
            assert!(open.metadata.len() <= MAX_METADATA_ENTRIES);
            let metadata_len = open
                .metadata
                .encoded_len()
                .expect("decoded metadata is within the limits a client checks");
            assert!(metadata_len <= MAX_METADATA_LEN);
            let again = encode_open(
                &input[..open.request_len],
                open.mode,
                open.window,
                open.deadline,
                &open.metadata,
                metadata_len,
            );
            assert_eq!(decode_from_client(&again), Ok(FromClient::Open(open)));
        }
        Ok(FromClient::Data(len)) => assert_eq!(encode_data(&input[..len]), input),
        Ok(FromClient::End) => assert_eq!(encode_end(), input),
        Ok(FromClient::Cancel) => assert_eq!(encode_cancel(), input),
        Ok(FromClient::Credit(n)) => assert_eq!(encode_client_credit(n), input),
        Err(detail) => assert!(!detail.is_empty()),
    }
    match decode_from_server(input) {
        Ok(FromServer::Reply(len)) => assert_eq!(encode_reply(Ok(input[..len].to_vec())), input),
        // An error message need not be UTF-8 on the wire (the client reads it lossily).
        Ok(FromServer::Failed(len)) => assert_eq!(len + 1, input.len()),
        Ok(FromServer::Item(len)) => assert_eq!(encode_item(&input[..len]), input),
        Ok(FromServer::Items { count, len }) => {
            // The items the pack yields, packed again, are the pack.
            let mut pack = Pack::new(input[..len].to_vec());
            let first = pack.next_item().expect("a pack has an item");
            let mut again = start_pack(&first, usize::MAX);
            let mut taken = 1;
            while let Some(item) = pack.next_item() {
                assert!(add_to_pack(&mut again, &item, usize::MAX));
                taken += 1;
            }
            assert_eq!(taken, count);
            assert_eq!(again, input);
        }
        Ok(FromServer::Credit(n)) => assert_eq!(encode_server_credit(n), input),
        Ok(FromServer::Ended) => assert_eq!(encode_ended(), input),
        Err(detail) => assert!(!detail.is_empty()),
    }
}

/// Decodes the input as several typed messages, as `recv_value` would, and checks that
/// every success round-trips.
#[cfg(feature = "codec")]
pub fn codec(input: &[u8]) {
    use std::collections::BTreeMap;

    codec_round_trip::<(String, Vec<u64>, Option<(u32, String)>)>(input);
    codec_round_trip::<Vec<Vec<u8>>>(input);
    codec_round_trip::<BTreeMap<String, (i64, bool)>>(input);
    codec_round_trip::<(u128, i16, char, Option<()>, Result<u8, String>)>(input);
}

#[cfg(feature = "codec")]
fn codec_round_trip<T>(input: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(value) = crate::codec::decode::<T>(input) else {
        return;
    };
    let encoded = crate::codec::encode(&value).expect("a decoded value encodes");
    // postcard accepts over-long varints but writes the shortest form, so a value is never
    // larger encoded than the bytes it was decoded from: the input bounds what it holds.
    assert!(
        encoded.len() <= input.len(),
        "a value decoded from {} bytes encodes to {}",
        input.len(),
        encoded.len()
    );
    assert_eq!(crate::codec::decode::<T>(&encoded).ok(), Some(value));
}

/// Runs a `ring::Consumer` against a hostile producer scripted by the input.
///
/// The script, in fixed-width little-endian fields (reading as zero past the input's end,
/// so that every input is a whole script):
///
/// ```text
/// u8    ring capacity: 256 << (byte % 9), so 256 B ..= 64 KiB
/// u8    honest warm-up frames (byte % 8), then for each a u16 payload length
///       (modulo the largest frame + 1): moves the consumer to any position in the ring
/// then, up to 8 hostile rounds while input remains:
/// u8    how the tail is chosen, then its field:
///         0: u16, the consumer's head + (value % (capacity + 1))   (a plausible tail)
///         1: u32, the consumer's head + value                       (may overrun the ring)
///         2: u64, taken as it is                                    (anything)
///         3: u8,  the previous tail - value                         (moves backwards)
/// u16   how many bytes follow (modulo capacity + 1); they are copied into the ring from
///       the consumer's position on, wrapping at the end, so they are what it reads next
/// ```
///
/// After each round the consumer reads until it runs dry or reports an error, which ends
/// the run (a real connection is closed then).
pub fn hostile_ring(input: &[u8]) {
    let mut script = Script { rest: input };
    let capacity = MIN_CAPACITY << (script.u8() % 9);
    let ring = HeapRing::new(capacity);
    let mut consumer = Consumer::new(ring.raw());
    let mut checker = ConsumerChecker {
        ring: &ring,
        highest_tail: 0,
    };

    if let Err(error) = checker.warm_up(&mut script, &mut consumer) {
        panic!("an honest producer's frames were refused: {error:?}");
    }

    let mut tail = checker.highest_tail;
    for _ in 0..8 {
        if script.rest.is_empty() {
            break;
        }
        let head = consumer.head();
        tail = match script.u8() % 4 {
            0 => head + u64::from(script.u16()) % (capacity as u64 + 1),
            1 => head + u64::from(script.u32()),
            2 => script.u64(),
            _ => tail.wrapping_sub(u64::from(script.u8())),
        };
        let fill_len = usize::from(script.u16()) % (capacity + 1);
        let fill = script.take(fill_len);
        ring.write_wrapping(ring.position(head), fill);
        // SYNC: pairs with the Acquire load of `tail` in `Consumer::reload_tail`, as an
        // honest producer's store does (here everything runs on one thread anyway).
        ring.control.tail.store(tail, Ordering::Release);
        checker.highest_tail = checker.highest_tail.max(tail);
        if checker.drain(&mut consumer).is_err() {
            return;
        }
    }
}

/// Reads fixed-width little-endian fields off the front of the fuzzer's input; past its
/// end every field is zero.
struct Script<'a> {
    rest: &'a [u8],
}

impl<'a> Script<'a> {
    /// Up to `len` bytes, fewer if the input runs out.
    fn take(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.rest.split_at(len.min(self.rest.len()));
        self.rest = rest;
        taken
    }

    fn field<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0u8; N];
        let taken = self.take(N);
        bytes[..taken.len()].copy_from_slice(taken);
        bytes
    }

    fn u8(&mut self) -> u8 {
        self.field::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.field())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.field())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.field())
    }
}

/// A ring's control block and data bytes on the heap.
struct HeapRing {
    control: Box<RingControl>,
    /// Owns the data (as `u64`s, for the alignment a mapping would have). Once the ring
    /// exists, the bytes are reached only through `data`, like memory a peer shares.
    _storage: Vec<u64>,
    data: *mut u8,
    capacity: usize,
}

impl HeapRing {
    fn new(capacity: usize) -> Self {
        let mut storage = vec![0u64; capacity / 8];
        let data = storage.as_mut_ptr().cast::<u8>();
        HeapRing {
            control: RingControl::new_boxed(),
            _storage: storage,
            data,
            capacity,
        }
    }

    fn raw(&self) -> RawRing {
        // SAFETY: `control` and the `capacity` bytes at `data` are heap allocations that
        // live as long as `self`, and every consumer made here is dropped before it
        // (`hostile_ring` owns both). Only atomics and raw copies touch them.
        unsafe { RawRing::new(&*self.control, self.data, self.capacity) }
    }

    fn position(&self, counter: u64) -> usize {
        (counter % self.capacity as u64) as usize
    }

    /// Copies `bytes` (at most `capacity` of them) into the ring from `pos` on, wrapping
    /// at the end, as the hostile producer.
    fn write_wrapping(&self, pos: usize, bytes: &[u8]) {
        assert!(pos < self.capacity && bytes.len() <= self.capacity);
        let (first, second) = bytes.split_at(bytes.len().min(self.capacity - pos));
        // SAFETY: `first` fits between `pos` and the end and `second` (what is left of at
        // most `capacity` bytes) from 0; `bytes` is the fuzzer's input, never the ring.
        unsafe {
            ptr::copy_nonoverlapping(first.as_ptr(), self.data.add(pos), first.len());
            ptr::copy_nonoverlapping(second.as_ptr(), self.data, second.len());
        }
    }

    /// The ring's bytes `pos..pos + len`, which must not cross its end.
    fn read(&self, pos: usize, len: usize) -> Vec<u8> {
        assert!(pos <= self.capacity && len <= self.capacity - pos);
        let mut bytes = vec![0u8; len];
        // SAFETY: in bounds by the assertion; `bytes` is a fresh allocation.
        unsafe { ptr::copy_nonoverlapping(self.data.add(pos), bytes.as_mut_ptr(), len) };
        bytes
    }

    fn header_at(&self, pos: usize) -> Option<FrameHeader> {
        let bytes = self.read(pos, FRAME_HEADER_LEN);
        FrameHeader::decode(&bytes.try_into().expect("16 bytes"))
    }
}

/// Drives a consumer and checks each of its answers against the ring's actual bytes.
struct ConsumerChecker<'a> {
    ring: &'a HeapRing,
    /// The highest tail ever stored: nothing past it was ever published.
    highest_tail: u64,
}

impl ConsumerChecker<'_> {
    /// Pushes the script's honest frames one at a time, each read back at once, so that
    /// the hostile rounds start from any position in the ring.
    fn warm_up(
        &mut self,
        script: &mut Script<'_>,
        consumer: &mut Consumer,
    ) -> Result<(), RingError> {
        let mut producer = Producer::new(self.ring.raw());
        let frames = script.u8() % 8;
        for correlation in 0..u64::from(frames) {
            let len = usize::from(script.u16()) % (max_frame_payload(self.ring.capacity) + 1);
            let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ (correlation as u8)).collect();
            assert!(
                producer.try_push(FrameKind::Message, correlation, &[&payload])?,
                "an empty ring had no room for one frame"
            );
            self.highest_tail = self.ring.control.tail.load(Ordering::Relaxed);
            let frame = self.next_frame(consumer)?.expect("the frame just pushed");
            assert_eq!(frame.header.correlation, correlation);
            let mut out = Vec::new();
            consumer.append_payload(&frame, 0, &mut out);
            assert_eq!(out, payload, "an honest frame came back altered");
            consumer.release(&frame);
            assert_eq!(self.next_frame(consumer)?, None, "one frame was pushed");
        }
        Ok(())
    }

    /// Reads frames until the consumer runs dry (`Ok`) or refuses the ring (`Err`).
    ///
    /// A twin of the consumer first takes the ring in a run (`take_messages`, the batch
    /// receive), which must hand out exactly the messages that `peek` hands out before the
    /// first frame of another kind, the first one refused, or the end; and must stop
    /// between the end of the last of them and where `peek` found the next frame.
    fn drain(&mut self, consumer: &mut Consumer) -> Result<(), RingError> {
        let mut twin = consumer.clone();
        let mut run_bytes = b"kept".to_vec();
        let mut ranges = Vec::new();
        let taken = twin.take_messages(&mut run_bytes, usize::MAX, usize::MAX, |id, range| {
            ranges.push((id, range))
        });
        assert_eq!(taken.messages, ranges.len());
        assert_eq!(
            run_bytes[..4],
            *b"kept",
            "a run overwrote what was in its buffer"
        );
        let run: Vec<(u64, Vec<u8>)> = ranges
            .into_iter()
            .map(|(id, range)| (id, run_bytes[range].to_vec()))
            .collect();
        // The same ring in runs of at most a few messages, as `recv_batch` takes it with a
        // small limit, must hand out exactly those messages too.
        let limit = 1 + (consumer.head() % 4) as usize;
        // Each message takes at least a pack entry's length of the ring.
        let most = self.ring.capacity / PACK_ENTRY_HEADER_LEN + 1;
        assert!(
            take_in_limited_runs(consumer.clone(), limit, most) == run,
            "runs of at most {limit} messages differ from one unlimited run"
        );
        let (result, low, high) = self.drain_peeking(consumer, &run);
        assert!(
            (low..=high).contains(&twin.head()),
            "a run stopped at {}, outside {low}..={high}",
            twin.head()
        );
        result
    }

    /// The reading of [`drain`](Self::drain) with `peek`, checked against `run`. Returns
    /// the outcome, the consumer's head after the messages of the run, and where it found
    /// the frame after them (or ran dry, or failed).
    fn drain_peeking(
        &mut self,
        consumer: &mut Consumer,
        run: &[(u64, Vec<u8>)],
    ) -> (Result<(), RingError>, u64, u64) {
        let data_before = self.ring.read(0, self.ring.capacity);
        let tail_before = self.ring.control.tail.load(Ordering::Relaxed);
        // Between two stores of the tail the consumer can read at most one ring's worth,
        // and every frame takes at least a header's worth of it: more frames than that
        // would mean it reads something twice or never stops.
        let bound = self.ring.capacity / FRAME_HEADER_LEN + 1;
        let mut low = consumer.head();
        let mut high = None;
        let mut matched = 0;
        let mut ran_dry = false;
        for _ in 0..bound {
            let frame = match self.next_frame(consumer) {
                Ok(Some(frame)) => frame,
                other => {
                    assert_eq!(
                        matched,
                        run.len(),
                        "a run took frames peek did not hand out"
                    );
                    let high = *high.get_or_insert(consumer.head());
                    if let Err(error) = other {
                        return (Err(error), low, high);
                    }
                    ran_dry = true;
                    break;
                }
            };
            if frame.header.kind == FrameKind::Pack {
                // Its messages, as `take_packed` hands them out. Unless the run stopped
                // before this frame, it must have taken each one that `take_packed` hands
                // out, in order, and stopped where it refuses one.
                let run_goes_on = high.is_none();
                let mut cursor = PackCursor::new(frame);
                loop {
                    let mut bytes = Vec::new();
                    match consumer.take_packed(&mut cursor, usize::MAX, &mut bytes) {
                        Ok(packed) => {
                            assert_eq!(packed.len, bytes.len());
                            if run_goes_on {
                                assert!(
                                    matched < run.len(),
                                    "a run stopped before a packed message that take_packed handed out"
                                );
                                assert!(
                                    (frame.header.correlation, bytes) == run[matched],
                                    "a run's message {matched} differs from the pack's"
                                );
                                matched += 1;
                            }
                            if packed.last {
                                break;
                            }
                        }
                        Err(error) => {
                            assert_eq!(
                                matched,
                                run.len(),
                                "a run took packed messages take_packed refused"
                            );
                            let high = *high.get_or_insert(consumer.head());
                            return (Err(error), low, high);
                        }
                    }
                }
                if run_goes_on {
                    low = consumer.head();
                }
                continue;
            }
            let in_run = matched < run.len();
            if in_run {
                let mut payload = Vec::new();
                consumer.append_payload(&frame, 0, &mut payload);
                assert_eq!(
                    frame.header.kind,
                    FrameKind::Message,
                    "a run took a non-message"
                );
                assert!(
                    (frame.header.correlation, payload) == run[matched],
                    "a run's message {matched} differs from peek's"
                );
                matched += 1;
            } else if high.is_none() {
                high = Some(consumer.head());
                assert_ne!(
                    frame.header.kind,
                    FrameKind::Message,
                    "a run stopped before a message that peek handed out"
                );
            }
            self.check_payload(consumer, &frame);
            if matches!(frame.header.kind, FrameKind::Large | FrameKind::Piece) {
                self.check_large(consumer, &frame);
            }
            consumer.release(&frame);
            if in_run {
                low = consumer.head();
            }
        }
        assert!(
            ran_dry,
            "the consumer returned more frames than fit in the ring"
        );

        consumer.publish();
        assert_eq!(
            self.ring.control.head.load(Ordering::Relaxed),
            consumer.head(),
            "publish stores the consumer's head"
        );
        // The consumer only ever writes its own index: never the producer's, nor the data.
        assert_eq!(self.ring.control.tail.load(Ordering::Relaxed), tail_before);
        assert!(self.ring.read(0, self.ring.capacity) == data_before);
        (Ok(()), low, high.unwrap_or(low))
    }

    /// `consumer.peek()`, with every answer checked against the ring's bytes.
    fn next_frame(&mut self, consumer: &mut Consumer) -> Result<Option<Frame>, RingError> {
        let before = consumer.head();
        let said_data = consumer.has_data();
        let peeked = consumer.peek();
        if let (Ok(false), Ok(Some(_))) = (&said_data, &peeked) {
            panic!("has_data said the ring was empty, then peek found a frame");
        }
        let frame = peeked?;
        let start = consumer.head();
        assert!(
            start <= self.highest_tail,
            "the consumer skipped past the tail"
        );
        self.check_skipped(before, start);
        let Some(frame) = frame else {
            return Ok(None);
        };

        let len = frame.payload_len();
        let pos = self.ring.position(start);
        assert_ne!(
            frame.header.kind,
            FrameKind::Padding,
            "padding is never handed out"
        );
        assert!(
            len <= max_frame_payload(self.ring.capacity),
            "an oversized frame"
        );
        assert!(
            pos + frame_size(len) <= self.ring.capacity,
            "a frame crosses the ring's end"
        );
        assert!(
            start + frame_size(len) as u64 <= self.highest_tail,
            "a frame extends past what was published"
        );
        assert_eq!(
            self.ring.header_at(pos),
            Some(frame.header),
            "the frame is not the one at the consumer's position"
        );
        Ok(Some(frame))
    }

    /// Checks that the consumer moved from `from` to `to` only over the end of the ring:
    /// a padding frame that reaches it, or a tail too short for a header.
    fn check_skipped(&self, from: u64, to: u64) {
        assert!(from <= to, "the consumer's head moved backwards");
        let mut at = from;
        // Frames never wrap, so the end of the ring is skipped at most once per peek.
        for _ in 0..2 {
            if at == to {
                return;
            }
            let pos = self.ring.position(at);
            let to_end = self.ring.capacity - pos;
            if to_end >= FRAME_HEADER_LEN {
                let header = self.ring.header_at(pos);
                assert!(
                    matches!(header, Some(h) if h.kind == FrameKind::Padding
                        && frame_size(h.len as usize) == to_end),
                    "the consumer skipped bytes that were not padding"
                );
            }
            at += to_end as u64;
        }
        assert_eq!(at, to, "the consumer skipped more than the ring's end");
    }

    /// Runs the receiver's checks of a `Large` or `Piece` frame (`core::large::Incoming`,
    /// as `conn/large.rs` runs them) as a receiver that has mapped nothing yet, and as one
    /// that has mapped generation 1 of 1 MiB, both with a limit of 256 KiB; when the frame
    /// names the next generation, the 16 ring bytes after it stand for the grant message.
    /// Whatever they accept must lie inside a region no larger than the bound; a piece
    /// accepted must also be no longer than the message it announces, which is within the
    /// limit.
    fn check_large(&self, consumer: &Consumer, frame: &Frame) {
        let mut payload = vec![0u8; frame.payload_len()];
        consumer.copy_payload(frame, 0, &mut payload);
        let grant_pos = self
            .ring
            .position(consumer.head() + frame_size(frame.payload_len()) as u64);
        let mut grant = [0u8; REGION_GRANT_LEN];
        let (first, second) =
            grant.split_at_mut((self.ring.capacity - grant_pos).min(REGION_GRANT_LEN));
        first.copy_from_slice(&self.ring.read(grant_pos, first.len()));
        second.copy_from_slice(&self.ring.read(0, second.len()));
        let limit = 256 << 10;
        let piece = frame.header.kind == FrameKind::Piece;
        let check = |view: &Incoming| {
            if piece {
                let (checked, total) = view.check_piece(&payload)?;
                assert!(total <= limit, "a message in pieces of {total} bytes");
                if let FrameCheck::Mapped { len, .. } = checked {
                    assert!(
                        len <= total,
                        "a piece of {len} bytes of a message of {total}"
                    );
                }
                Ok(checked)
            } else {
                view.check_frame(&payload)
            }
        };
        for mapped in [None, Some((1, 1 << 20))] {
            let mut view = Incoming { mapped, limit };
            let mut checked = check(&view);
            if checked == Ok(FrameCheck::NextGeneration) {
                let Ok(capacity) = view.check_grant(&grant) else {
                    continue;
                };
                assert!(capacity > 0 && capacity <= region_bound(limit));
                let generation = view.next_generation().expect("a next generation");
                view.mapped = Some((generation, capacity as u64));
                checked = check(&view);
                assert_ne!(
                    checked,
                    Ok(FrameCheck::NextGeneration),
                    "a frame names the generation after the one just mapped"
                );
            }
            if let Ok(FrameCheck::Mapped { offset, len }) = checked {
                let (_, capacity) = view.mapped.expect("a mapped region");
                assert!(len > 0 && len <= limit, "a large message of {len} bytes");
                assert!(
                    offset
                        .checked_add(len)
                        .is_some_and(|end| end as u64 <= capacity),
                    "a large message at {offset}+{len} outside a region of {capacity}"
                );
            }
        }
    }

    fn check_payload(&self, consumer: &Consumer, frame: &Frame) {
        let len = frame.payload_len();
        let pos = self.ring.position(consumer.head()) + FRAME_HEADER_LEN;
        let expected = self.ring.read(pos, len);

        let mut copied = vec![0u8; len];
        consumer.copy_payload(frame, 0, &mut copied);
        assert_eq!(
            copied, expected,
            "copy_payload read other bytes than the payload"
        );

        let skip = len / 2;
        let mut appended = b"kept".to_vec();
        consumer.append_payload(frame, skip, &mut appended);
        assert_eq!(
            appended[..4],
            *b"kept",
            "append_payload overwrote what was there"
        );
        assert_eq!(
            appended[4..],
            expected[skip..],
            "append_payload read other bytes"
        );
    }
}

/// Takes `reader`'s ring in runs of at most `limit` messages (`take_messages`), as
/// `recv_batch` does with a small limit: a run that stops inside a pack leaves the rest of
/// it to `take_packed` (as `Connection::take_rest_of_pack` does), and the next run starts
/// after it. Stops where a run takes nothing, or a packed message is refused. Returns the
/// messages with their correlation ids; panics past `most` of them (a reader that takes
/// some twice, and would never end).
fn take_in_limited_runs(mut reader: Consumer, limit: usize, most: usize) -> Vec<(u64, Vec<u8>)> {
    let mut taken_all = Vec::new();
    loop {
        assert!(
            taken_all.len() <= most,
            "runs of at most {limit} messages took more than the ring holds"
        );
        let mut bytes = Vec::new();
        let mut ranges = Vec::new();
        let taken = reader.take_messages(&mut bytes, limit, usize::MAX, |id, range| {
            ranges.push((id, range))
        });
        let mut progressed = taken.messages > 0;
        taken_all.extend(
            ranges
                .into_iter()
                .map(|(id, range)| (id, bytes[range].to_vec())),
        );
        if let Some(mut cursor) = taken.pack {
            loop {
                let mut message = Vec::new();
                match reader.take_packed(&mut cursor, usize::MAX, &mut message) {
                    Ok(packed) => {
                        taken_all.push((cursor.correlation(), message));
                        progressed = true;
                        if packed.last {
                            break;
                        }
                    }
                    Err(_) => return taken_all,
                }
            }
        }
        if !progressed {
            return taken_all;
        }
    }
}
