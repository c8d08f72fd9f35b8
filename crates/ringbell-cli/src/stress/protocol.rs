//! What the stress test sends and checks, shared by its three processes: the random
//! payloads, the reply a server builds from each request and the client's check of it, the
//! framing of the baseline (Unix sockets; named pipes on Windows), and the line a client process reports with.
//!
//! A reply is the request reversed, followed by the request's 64-bit checksum (FNV-1a,
//! little-endian). A client keeps its request and checks the reply byte for byte, so a
//! reply that was corrupted, truncated, or routed to the wrong call (every payload is
//! random) is caught.

use std::fmt;
use std::io;
use std::str::FromStr;

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::stats::new_histogram;

/// Bytes a reply adds to its request: the checksum.
pub const CHECKSUM_LEN: usize = 8;

/// The largest payload the stress test sends: the reply (payload, checksum and ringbell's
/// status byte) must stay within both transports' 16 MiB maximum message size.
pub const MAX_PAYLOAD: usize = (16 << 20) - 64;

/// The 64-bit FNV-1a hash of `bytes`.
pub fn checksum(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The server's answer to `request`: the request reversed, then its checksum.
pub fn reply_to(request: &[u8]) -> Vec<u8> {
    let mut reply = Vec::with_capacity(request.len() + CHECKSUM_LEN);
    reply.extend(request.iter().rev());
    reply.extend_from_slice(&checksum(request).to_le_bytes());
    reply
}

/// Checks that `reply` is the server's answer to `request`; if not, says what is wrong.
pub fn verify_reply(request: &[u8], reply: &[u8]) -> Result<(), String> {
    if reply.len() != request.len() + CHECKSUM_LEN {
        return Err(format!(
            "a reply of {} bytes to a request of {} bytes (expected {})",
            reply.len(),
            request.len(),
            request.len() + CHECKSUM_LEN
        ));
    }
    let (reversed, sum) = reply.split_at(request.len());
    if !reversed.iter().eq(request.iter().rev()) {
        return Err(format!(
            "the reply to a {}-byte request does not hold the request reversed",
            request.len()
        ));
    }
    if sum != checksum(request).to_le_bytes() {
        return Err(format!(
            "the reply to a {}-byte request carries a wrong checksum",
            request.len()
        ));
    }
    Ok(())
}

/// A small, fast, seedable random generator (SplitMix64): the payloads need to be
/// unpredictable to the transport, not to an attacker.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The stream for one client connection's lane of calls: every (seed, client, lane)
    /// gets its own sequence.
    pub fn for_lane(seed: u64, client: u64, lane: u64) -> Rng {
        let mut mixer = Rng { state: seed };
        let state = mixer.next_u64()
            ^ client.wrapping_mul(0xd1b5_4a32_d192_ed03)
            ^ lane.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7);
        Rng { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A size drawn uniformly from `range`.
    pub fn size_in(&mut self, range: SizeRange) -> usize {
        let span = (range.max - range.min) as u64 + 1;
        // The modulo bias is at most span / 2^64: irrelevant here.
        range.min + (self.next_u64() % span) as usize
    }

    /// Fills `bytes` with random bytes.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        let mut chunks = bytes.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// Payload sizes: from `min` to `max` bytes, both included. Written `B` or `A..B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    pub min: usize,
    pub max: usize,
}

impl SizeRange {
    /// Every payload `size` bytes.
    pub fn exactly(size: usize) -> SizeRange {
        SizeRange {
            min: size,
            max: size,
        }
    }
}

impl FromStr for SizeRange {
    type Err = String;

    fn from_str(text: &str) -> Result<SizeRange, String> {
        let parse = |part: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| format!("{part:?} is not a byte count"))
        };
        let range = match text.split_once("..") {
            Some((min, max)) => SizeRange {
                min: parse(min)?,
                max: parse(max.strip_prefix('=').unwrap_or(max))?,
            },
            None => SizeRange::exactly(parse(text)?),
        };
        if range.min > range.max {
            return Err(format!(
                "the range {text} is empty: write the smaller size first"
            ));
        }
        if range.max > MAX_PAYLOAD {
            return Err(format!(
                "{} bytes is more than the largest payload, {MAX_PAYLOAD} bytes",
                range.max
            ));
        }
        Ok(range)
    }
}

impl fmt::Display for SizeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

/// The name of the named pipe that stands for the baseline's socket `path` on Windows:
/// `\\.\pipe\ringbell-stress-` and the path with every character other than a letter, a
/// digit, `.` or `-` made `-`. The server and its clients derive it alike.
#[cfg(windows)]
pub fn baseline_pipe_name(path: &std::path::Path) -> String {
    let text: String = path
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(r"\\.\pipe\ringbell-stress-{text}")
}

/// Baseline frame header: payload length (u32 LE), then correlation id (u64 LE).
pub const FRAME_HEADER_LEN: usize = 12;

/// A frame of the baseline: header, then payload.
pub fn encode_frame(id: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payloads are limited to MAX_PAYLOAD");
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Reads the next frame into `payload` and returns its id; `None` at a clean end of the
/// stream (between frames). A frame longer than the largest reply is an error, so that a
/// corrupt length cannot size an allocation.
pub async fn read_frame<R>(reader: &mut R, payload: &mut Vec<u8>) -> io::Result<Option<u64>>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    if reader.fill_buf().await?.is_empty() {
        return Ok(None);
    }
    let mut header = [0u8; FRAME_HEADER_LEN];
    reader.read_exact(&mut header).await?;
    let (len, id) = header.split_at(4);
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD + CHECKSUM_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is longer than any request or reply"),
        ));
    }
    payload.resize(len, 0);
    reader.read_exact(payload).await?;
    Ok(Some(id))
}

/// What one client process tells the parent at the end, as one line of text.
#[derive(Debug, Clone)]
pub struct ClientReport {
    /// Calls answered with the right reply.
    pub completed: u64,
    /// Calls that ended in an error (the handler failed, the connection broke, ...).
    pub failed: u64,
    /// Calls answered with a wrong reply, or whose reply the library found corrupt.
    pub corrupted: u64,
    /// Calls with no reply within the call timeout.
    pub lost: u64,
    /// Replies to no outstanding call (a duplicate, or a misrouted id).
    pub duplicated: u64,
    /// Round-trip time of every answered call, in nanoseconds.
    pub latency: Histogram<u64>,
    /// The first error seen, if any, for the user.
    pub first_error: Option<String>,
}

/// The first word of a [`ClientReport`] line.
pub const DONE_PREFIX: &str = "done ";

impl Default for ClientReport {
    fn default() -> Self {
        ClientReport {
            completed: 0,
            failed: 0,
            corrupted: 0,
            lost: 0,
            duplicated: 0,
            latency: new_histogram(),
            first_error: None,
        }
    }
}

impl ClientReport {
    /// Adds `other`'s counts and latencies to ours.
    pub fn merge(&mut self, other: &ClientReport) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.corrupted += other.corrupted;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        // Both histograms have the same bounds, so this cannot fail.
        let _ = self.latency.add(&other.latency);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Keeps `error` if it is the first.
    pub fn note_error(&mut self, error: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(error());
        }
    }

    /// `done completed=… failed=… corrupted=… lost=… duplicated=… latency=v:n,v:n… [error=…]`.
    ///
    /// The latency histogram travels as its recorded buckets, each as the bucket's highest
    /// value (ns) and its count: recording those again into a histogram of the same
    /// precision fills the very same buckets, so nothing is lost in transit.
    pub fn to_line(&self) -> String {
        let buckets: Vec<String> = self
            .latency
            .iter_recorded()
            .map(|bucket| format!("{}:{}", bucket.value_iterated_to(), bucket.count_at_value()))
            .collect();
        let mut line = format!(
            "{DONE_PREFIX}completed={} failed={} corrupted={} lost={} duplicated={} latency={}",
            self.completed,
            self.failed,
            self.corrupted,
            self.lost,
            self.duplicated,
            buckets.join(",")
        );
        if let Some(error) = &self.first_error {
            // Last, because it may hold spaces; never a line break.
            line.push_str(" error=");
            line.extend(error.chars().map(|c| if c.is_control() { ' ' } else { c }));
        }
        line
    }

    /// Parses a line made by [`to_line`](Self::to_line).
    pub fn parse(line: &str) -> Result<ClientReport, String> {
        let body = line
            .strip_prefix(DONE_PREFIX)
            .ok_or_else(|| format!("not a report: {line:?}"))?;
        let (fields, error) = match body.split_once(" error=") {
            Some((fields, error)) => (fields, Some(error.to_owned())),
            None => (body, None),
        };
        let mut report = ClientReport {
            first_error: error,
            ..ClientReport::default()
        };
        let number = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{value:?} is not a count in the report {line:?}"))
        };
        for field in fields.split(' ') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("no '=' in {field:?}"))?;
            match key {
                "completed" => report.completed = number(value)?,
                "failed" => report.failed = number(value)?,
                "corrupted" => report.corrupted = number(value)?,
                "lost" => report.lost = number(value)?,
                "duplicated" => report.duplicated = number(value)?,
                "latency" => {
                    for bucket in value.split(',').filter(|bucket| !bucket.is_empty()) {
                        let (nanos, count) = bucket
                            .split_once(':')
                            .ok_or_else(|| format!("bad latency bucket {bucket:?}"))?;
                        report
                            .latency
                            .record_n(number(nanos)?, number(count)?)
                            .map_err(|error| format!("bad latency bucket {bucket:?}: {error}"))?;
                    }
                }
                _ => return Err(format!("unknown field {key:?} in the report")),
            }
        }
        Ok(report)
    }
}

/// Writes queued frames to the socket, as many as are queued per flush (what a careful
/// socket program does), until the queue or the stream closes.
pub async fn write_frames(
    write: impl tokio::io::AsyncWrite + Unpin,
    mut queue: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    let mut writer = tokio::io::BufWriter::new(write);
    while let Some(frame) = queue.recv().await {
        if writer.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(frame) = queue.try_recv() {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_verifies_and_any_change_is_caught() {
        let request = b"hello, stress".to_vec();
        let reply = reply_to(&request);
        assert_eq!(reply.len(), request.len() + CHECKSUM_LEN);
        assert_eq!(verify_reply(&request, &reply), Ok(()));
        for index in 0..reply.len() {
            let mut bad = reply.clone();
            bad[index] ^= 0x01;
            assert!(verify_reply(&request, &bad).is_err(), "flip at {index}");
        }
        assert!(verify_reply(&request, &reply[1..]).is_err());
        assert!(verify_reply(b"hello, strest", &reply).is_err());
        assert_eq!(verify_reply(b"", &reply_to(b"")), Ok(()));
    }

    #[test]
    fn checksum_is_fnv1a() {
        assert_eq!(checksum(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(checksum(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn lanes_get_different_streams_and_sizes_stay_in_range() {
        let mut a = Rng::for_lane(1, 0, 0);
        let mut b = Rng::for_lane(1, 1, 0);
        let mut c = Rng::for_lane(1, 0, 1);
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert!(x != y && x != z && y != z);
        let range = SizeRange { min: 3, max: 9 };
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let size = a.size_in(range);
            assert!((3..=9).contains(&size));
            seen[size] = true;
        }
        assert!(seen[3] && seen[9]);
        let mut bytes = [0u8; 13];
        a.fill(&mut bytes);
        assert!(bytes.iter().any(|&byte| byte != 0));
    }

    #[test]
    fn size_ranges_parse() {
        assert_eq!("64".parse(), Ok(SizeRange::exactly(64)));
        assert_eq!("16..4096".parse(), Ok(SizeRange { min: 16, max: 4096 }));
        assert_eq!("16..=4096".parse(), Ok(SizeRange { min: 16, max: 4096 }));
        assert!("10..2".parse::<SizeRange>().is_err());
        assert!("a..2".parse::<SizeRange>().is_err());
        assert!(format!("0..{}", MAX_PAYLOAD + 1)
            .parse::<SizeRange>()
            .is_err());
        assert_eq!(SizeRange { min: 1, max: 2 }.to_string(), "1..2");
    }

    #[test]
    fn reports_survive_the_trip_through_a_line() {
        let mut report = ClientReport {
            completed: 10,
            failed: 1,
            corrupted: 2,
            lost: 3,
            duplicated: 4,
            ..ClientReport::default()
        };
        for micros in [5u64, 5, 7, 1_000, 123_456] {
            report.latency.record(micros * 1_000).unwrap();
        }
        report.note_error(|| "the peer died\nbadly".to_owned());
        report.note_error(|| "second".to_owned());
        let line = report.to_line();
        assert!(!line.contains('\n'));
        let parsed = ClientReport::parse(&line).unwrap();
        assert_eq!(
            (parsed.completed, parsed.failed, parsed.corrupted),
            (10, 1, 2)
        );
        assert_eq!((parsed.lost, parsed.duplicated), (3, 4));
        assert_eq!(parsed.latency.len(), 5);
        for quantile in [0.0, 0.5, 0.9, 1.0] {
            assert_eq!(
                parsed.latency.value_at_quantile(quantile),
                report.latency.value_at_quantile(quantile)
            );
        }
        assert_eq!(parsed.first_error.as_deref(), Some("the peer died badly"));

        let empty = ClientReport::parse(&ClientReport::default().to_line()).unwrap();
        assert_eq!(empty.latency.len(), 0);
        assert!(empty.first_error.is_none());
        assert!(ClientReport::parse("ready 3").is_err());
    }

    #[tokio::test]
    async fn frames_round_trip_and_lengths_are_bounded() {
        let mut bytes = encode_frame(7, b"abc");
        bytes.extend(encode_frame(u64::MAX, b""));
        let mut reader = tokio::io::BufReader::new(&bytes[..]);
        let mut payload = Vec::new();
        assert_eq!(
            read_frame(&mut reader, &mut payload).await.unwrap(),
            Some(7)
        );
        assert_eq!(payload, b"abc");
        assert_eq!(
            read_frame(&mut reader, &mut payload).await.unwrap(),
            Some(u64::MAX)
        );
        assert!(payload.is_empty());
        assert_eq!(read_frame(&mut reader, &mut payload).await.unwrap(), None);

        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&1u64.to_le_bytes());
        let mut reader = tokio::io::BufReader::new(&huge[..]);
        assert!(read_frame(&mut reader, &mut payload).await.is_err());

        let cut = &encode_frame(1, b"abcdef")[..15];
        let mut reader = tokio::io::BufReader::new(cut);
        assert!(read_frame(&mut reader, &mut payload).await.is_err());
    }
}
