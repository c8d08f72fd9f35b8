//! The call protocol: what the messages of a connection of calls say. Pure encoding and
//! checking, with no runtime, so that the fuzz targets and the property tests reach it.
//!
//! Every message of a connection of calls is tagged with its call's correlation id (the
//! ring's frame header carries it) and ends with a *trailer* whose last byte says what the
//! message is. The trailer goes at the end, not the front, so that a receiver hands the
//! body on by truncating its buffer, never by moving the bytes (a 1 MiB request is not
//! copied again to strip a header).
//!
//! From the client:
//!
//! ```text
//! OPEN    request | metadata | metadata_len u16 | deadline_us u64 | window u16 | flags u8 | 0x01
//! DATA    message | 0x02        one message of a two-way call's request stream
//! END     0x03                  the request stream is finished
//! CANCEL  0x04                  the client gave up: stop the work, send nothing more
//! CREDIT  n u32 | 0x05          the client takes n more streamed responses
//! ```
//!
//! From the server:
//!
//! ```text
//! REPLY   response | 0x00       the final reply: the call is over
//! FAILED  message | 0x01        the handler failed (its message, UTF-8): the call is over
//! ITEM    message | 0x02        one streamed response
//! CREDIT  n u32 | 0x03          the server takes n more request-stream messages
//! ENDED   0x04                  the call was cancelled and its handler has ended: the call is over
//! ```
//!
//! Every call the server starts ends with exactly one of `REPLY`, `FAILED` or `ENDED`,
//! even a cancelled one, and the client counts a call as under way until then. So the
//! client's in-flight bound and the server's `concurrent_requests` count the same calls,
//! and a client never opens a call the server has no room for: a handler that takes its
//! grace to notice a cancel still holds its slot, on both sides.
//!
//! Integers are little-endian. `deadline_us` is the time the call may take, in
//! microseconds, relative (so the two clocks never need to agree); `u64::MAX` is none.
//! `window` is how many streamed responses the client takes before it grants more
//! (`CREDIT`); a unary call's is 0. `flags`: bit 0, the client takes streamed responses;
//! bit 1, it streams requests (two-way). Metadata: one byte of entry count, then per entry
//! `key_len u8 | key (UTF-8) | value_len u16 | value`.
//!
//! Flow control: the server may send a call at most `window` items before the client's
//! first `CREDIT`, and never more than the client granted in all; the client may send a
//! two-way call [`REQUEST_WINDOW`] messages before the server's first `CREDIT`. A peer
//! that goes past its credit breaks the protocol. What the server holds of a call is
//! bounded by these windows and by [`MAX_STREAM_WINDOW`], whatever a client asks.
//!
//! The handshake's protocol version covers this format: a change here bumps it.

// Without the async API (the `tokio` feature off) the blocking server reads only a call's
// opening: the streams, credit and metadata accessors belong to the async API.
#![cfg_attr(not(ringbell_async), allow(dead_code))]

use std::time::Duration;

/// What a client's message of a call is.
const OPEN: u8 = 0x01;
const DATA: u8 = 0x02;
const END: u8 = 0x03;
const CANCEL: u8 = 0x04;
const CLIENT_CREDIT: u8 = 0x05;

/// What a server's message of a call is.
const REPLY_OK: u8 = 0x00;
const REPLY_FAILED: u8 = 0x01;
const ITEM: u8 = 0x02;
const SERVER_CREDIT: u8 = 0x03;
const ENDED: u8 = 0x04;

/// OPEN's flags.
const TAKES_STREAM: u8 = 1 << 0;
const SENDS_STREAM: u8 = 1 << 1;

/// An OPEN's fixed trailer: metadata length, deadline, window, flags and kind.
const OPEN_TRAILER_LEN: usize = 2 + 8 + 2 + 1 + 1;

/// At most this many metadata entries per call.
pub const MAX_METADATA_ENTRIES: usize = 16;
/// A metadata key is at most this many bytes of UTF-8.
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// A call's metadata, encoded, is at most this many bytes: for each entry its key and
/// value and 3 bytes of lengths, plus 1.
pub const MAX_METADATA_LEN: usize = 4096;

/// The most streamed responses a server lets one call have unacknowledged, whatever
/// window its client asks for: what a call may hold of the server's memory is this many
/// messages.
pub const MAX_STREAM_WINDOW: u16 = 256;

/// The request-stream messages a client may send a two-way call before the server's
/// first credit, and the most it may have unacknowledged.
pub const REQUEST_WINDOW: u32 = 16;

/// What the call protocol adds to a message a client sends: an OPEN's trailer and its
/// largest metadata. A request may be `max_message_size` bytes with this on top (see
/// `wire_limit` in `conn/mod.rs`), so that the limit a user sets is the payload's.
pub(crate) const REQUEST_ROOM: usize = OPEN_TRAILER_LEN + MAX_METADATA_LEN;

/// What the call protocol adds to a message a server sends: its kind byte.
pub(crate) const REPLY_ROOM: usize = 1;

/// What a client expects of a call's responses and requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One request, one reply.
    Unary,
    /// One request; streamed responses, then the reply.
    ServerStream,
    /// Streamed requests and responses, then the reply.
    TwoWay,
}

impl Mode {
    fn flags(self) -> u8 {
        match self {
            Mode::Unary => 0,
            Mode::ServerStream => TAKES_STREAM,
            Mode::TwoWay => TAKES_STREAM | SENDS_STREAM,
        }
    }

    fn from_flags(flags: u8) -> Option<Mode> {
        match flags {
            0 => Some(Mode::Unary),
            TAKES_STREAM => Some(Mode::ServerStream),
            f if f == TAKES_STREAM | SENDS_STREAM => Some(Mode::TwoWay),
            _ => None,
        }
    }

    /// Whether the client takes streamed responses.
    pub(crate) fn takes_stream(self) -> bool {
        self != Mode::Unary
    }

    /// Whether the client streams requests.
    pub(crate) fn sends_stream(self) -> bool {
        self == Mode::TwoWay
    }
}

/// A call's metadata: a few small key/value pairs that travel with its request (a request
/// id, a trace id, an auth token). Keys are UTF-8 and may repeat; [`get`](Self::get)
/// gives the first value of a key.
///
/// Limits, checked when a call is made (a larger set fails that call with
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig), before anything is sent) and
/// again by the server: at most [`MAX_METADATA_ENTRIES`] entries, keys of at most
/// [`MAX_METADATA_KEY_LEN`] bytes, and [`MAX_METADATA_LEN`] bytes in all, encoded (each
/// entry's key and value plus 3 bytes, plus 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, Vec<u8>)>,
}

impl Metadata {
    /// The first value of `key`, if there is one.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_slice())
    }

    /// Every entry, in the order the client added them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_slice()))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn push(&mut self, key: String, value: Vec<u8>) {
        self.entries.push((key, value));
    }

    /// The encoded length, or why this set is over the limits.
    pub(crate) fn encoded_len(&self) -> Result<usize, String> {
        if self.entries.is_empty() {
            return Ok(0);
        }
        if self.entries.len() > MAX_METADATA_ENTRIES {
            return Err(format!(
                "call metadata has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
                self.entries.len()
            ));
        }
        let mut len = 1;
        for (key, value) in &self.entries {
            if key.len() > MAX_METADATA_KEY_LEN {
                return Err(format!(
                    "call metadata key {key:?} has {} bytes; at most {MAX_METADATA_KEY_LEN} are allowed",
                    key.len()
                ));
            }
            len += 3 + key.len() + value.len();
        }
        if len > MAX_METADATA_LEN {
            return Err(format!(
                "call metadata takes {len} bytes encoded; at most {MAX_METADATA_LEN} are allowed"
            ));
        }
        Ok(len)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        if self.entries.is_empty() {
            return;
        }
        out.push(self.entries.len() as u8);
        for (key, value) in &self.entries {
            out.push(key.len() as u8);
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(value);
        }
    }

    fn decode(mut bytes: &[u8]) -> Result<Metadata, &'static str> {
        let mut metadata = Metadata::default();
        if bytes.is_empty() {
            return Ok(metadata);
        }
        if bytes.len() > MAX_METADATA_LEN {
            return Err("a call's metadata is over the size limit");
        }
        let count = usize::from(bytes[0]);
        bytes = &bytes[1..];
        if count == 0 || count > MAX_METADATA_ENTRIES {
            return Err("a call's metadata has a bad entry count");
        }
        for _ in 0..count {
            let (&key_len, rest) = bytes
                .split_first()
                .ok_or("a call's metadata ends inside an entry")?;
            let key_len = usize::from(key_len);
            if key_len > MAX_METADATA_KEY_LEN || rest.len() < key_len + 2 {
                return Err("a call's metadata has a bad key length");
            }
            let key = std::str::from_utf8(&rest[..key_len])
                .map_err(|_| "a call's metadata has a key that is not UTF-8")?;
            let value_len = usize::from(u16::from_le_bytes([rest[key_len], rest[key_len + 1]]));
            let rest = &rest[key_len + 2..];
            if rest.len() < value_len {
                return Err("a call's metadata has a bad value length");
            }
            metadata.push(key.to_owned(), rest[..value_len].to_vec());
            bytes = &rest[value_len..];
        }
        if !bytes.is_empty() {
            return Err("a call's metadata has bytes after its last entry");
        }
        Ok(metadata)
    }
}

/// A call's opening, decoded: everything but the request, which stays at the front of
/// the message (`request_len` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Open {
    pub(crate) mode: Mode,
    /// How many streamed responses the client takes before it grants more, at most
    /// [`MAX_STREAM_WINDOW`]; 0 for a unary call.
    pub(crate) window: u16,
    pub(crate) deadline: Option<Duration>,
    pub(crate) metadata: Metadata,
    pub(crate) request_len: usize,
}

/// A client's message of a call, decoded. `Data` is the length of the message at the
/// front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FromClient {
    Open(Open),
    Data(usize),
    End,
    Cancel,
    Credit(u32),
}

/// A server's message of a call, decoded. Lengths are of the body at the front of the
/// buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FromServer {
    Reply(usize),
    Failed(usize),
    Item(usize),
    Credit(u32),
    /// A cancelled call's end: its handler is done (or was dropped).
    Ended,
}

/// Appends `kind` and the message is whole: the body is already at the front of `out`.
fn seal(mut out: Vec<u8>, kind: u8) -> Vec<u8> {
    out.push(kind);
    out
}

fn with_body(body: &[u8], trailer: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + trailer);
    out.extend_from_slice(body);
    out
}

/// An OPEN: `request` and the call's terms. The metadata must have been checked
/// ([`Metadata::encoded_len`]).
pub(crate) fn encode_open(
    request: &[u8],
    mode: Mode,
    window: u16,
    deadline: Option<Duration>,
    metadata: &Metadata,
    metadata_len: usize,
) -> Vec<u8> {
    let mut out = with_body(request, metadata_len + OPEN_TRAILER_LEN);
    metadata.encode_into(&mut out);
    debug_assert_eq!(out.len(), request.len() + metadata_len);
    out.extend_from_slice(&(metadata_len as u16).to_le_bytes());
    let micros = deadline.map_or(u64::MAX, |deadline| {
        u64::try_from(deadline.as_micros()).unwrap_or(u64::MAX - 1)
    });
    out.extend_from_slice(&micros.to_le_bytes());
    let window = if mode.takes_stream() {
        window.max(1)
    } else {
        0
    };
    out.extend_from_slice(&window.to_le_bytes());
    out.push(mode.flags());
    seal(out, OPEN)
}

pub(crate) fn encode_data(message: &[u8]) -> Vec<u8> {
    seal(with_body(message, 1), DATA)
}

pub(crate) fn encode_end() -> Vec<u8> {
    vec![END]
}

pub(crate) fn encode_cancel() -> Vec<u8> {
    vec![CANCEL]
}

pub(crate) fn encode_client_credit(n: u32) -> Vec<u8> {
    let mut out = n.to_le_bytes().to_vec();
    out.push(CLIENT_CREDIT);
    out
}

pub(crate) fn encode_item(message: &[u8]) -> Vec<u8> {
    seal(with_body(message, 1), ITEM)
}

pub(crate) fn encode_server_credit(n: u32) -> Vec<u8> {
    let mut out = n.to_le_bytes().to_vec();
    out.push(SERVER_CREDIT);
    out
}

/// A cancelled call's end, sent once its handler has ended.
pub(crate) fn encode_ended() -> Vec<u8> {
    vec![ENDED]
}

/// The final reply: the handler's response, or its error message.
pub(crate) fn encode_reply(result: Result<Vec<u8>, String>) -> Vec<u8> {
    match result {
        Ok(response) => seal(response, REPLY_OK),
        Err(message) => seal(message.into_bytes(), REPLY_FAILED),
    }
}

/// [`encode_reply`], but a response (or error message) above `max` bytes, the
/// connection's `max_message_size`, becomes an error reply that says so (its message cut
/// to `max`): one oversized response fails its own call, not the connection.
pub(crate) fn encode_reply_within(result: Result<Vec<u8>, String>, max: usize) -> Vec<u8> {
    let body_len = match &result {
        Ok(response) => response.len(),
        Err(message) => message.len(),
    };
    if body_len <= max {
        return encode_reply(result);
    }
    let mut message = format!(
        "the handler's response of {body_len} bytes does not fit the connection's maximum message size of {max} bytes"
    );
    if message.len() > max {
        let mut cut = max;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    encode_reply(Err(message))
}

fn u32_before_kind(message: &[u8]) -> Option<u32> {
    let body: [u8; 4] = message
        .get(..message.len().checked_sub(1)?)?
        .try_into()
        .ok()?;
    Some(u32::from_le_bytes(body))
}

/// Decodes a client's message. Everything a peer wrote is checked; a bad message is an
/// error that says what was wrong (the connection then ends as `Corrupted`).
pub(crate) fn decode_from_client(message: &[u8]) -> Result<FromClient, &'static str> {
    let (&kind, body) = message
        .split_last()
        .ok_or("an empty message on a connection of calls")?;
    match kind {
        OPEN => decode_open(body).map(FromClient::Open),
        DATA => Ok(FromClient::Data(body.len())),
        END if body.is_empty() => Ok(FromClient::End),
        CANCEL if body.is_empty() => Ok(FromClient::Cancel),
        CLIENT_CREDIT => u32_before_kind(message)
            .map(FromClient::Credit)
            .ok_or("a malformed credit message"),
        END | CANCEL => Err("an end or cancel message with a body"),
        _ => Err("a message of unknown kind on a connection of calls"),
    }
}

fn decode_open(body: &[u8]) -> Result<Open, &'static str> {
    let fixed = body
        .len()
        .checked_sub(OPEN_TRAILER_LEN - 1)
        .ok_or("a call's opening is too short")?;
    let trailer = &body[fixed..];
    let metadata_len = usize::from(u16::from_le_bytes([trailer[0], trailer[1]]));
    let micros = u64::from_le_bytes(trailer[2..10].try_into().expect("8 bytes"));
    let window = u16::from_le_bytes([trailer[10], trailer[11]]);
    let mode = Mode::from_flags(trailer[12]).ok_or("a call's opening has unknown flags")?;
    let request_len = fixed
        .checked_sub(metadata_len)
        .ok_or("a call's metadata is longer than its message")?;
    let metadata = Metadata::decode(&body[request_len..fixed])?;
    if mode.takes_stream() != (window > 0) {
        return Err("a call's opening has a window that does not match its kind");
    }
    Ok(Open {
        mode,
        window: window.min(MAX_STREAM_WINDOW),
        deadline: (micros != u64::MAX).then(|| Duration::from_micros(micros)),
        metadata,
        request_len,
    })
}

/// Decodes a server's message, checked as [`decode_from_client`].
pub(crate) fn decode_from_server(message: &[u8]) -> Result<FromServer, &'static str> {
    let (&kind, body) = message
        .split_last()
        .ok_or("an empty message on a connection of calls")?;
    match kind {
        REPLY_OK => Ok(FromServer::Reply(body.len())),
        REPLY_FAILED => Ok(FromServer::Failed(body.len())),
        ITEM => Ok(FromServer::Item(body.len())),
        SERVER_CREDIT => u32_before_kind(message)
            .map(FromServer::Credit)
            .ok_or("a malformed credit message"),
        ENDED if body.is_empty() => Ok(FromServer::Ended),
        ENDED => Err("an ended message with a body"),
        _ => Err("a message of unknown kind on a connection of calls"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn metadata(entries: &[(&str, &[u8])]) -> Metadata {
        let mut metadata = Metadata::default();
        for (key, value) in entries {
            metadata.push((*key).to_owned(), value.to_vec());
        }
        metadata
    }

    #[test]
    fn an_open_round_trips_with_its_terms() {
        let meta = metadata(&[("request-id", b"42"), ("trace", b""), ("request-id", b"7")]);
        let len = meta.encoded_len().unwrap();
        let message = encode_open(
            b"prompt",
            Mode::ServerStream,
            32,
            Some(Duration::from_millis(1500)),
            &meta,
            len,
        );
        let FromClient::Open(open) = decode_from_client(&message).unwrap() else {
            panic!("not an open");
        };
        assert_eq!(&message[..open.request_len], b"prompt");
        assert_eq!(open.mode, Mode::ServerStream);
        assert_eq!(open.window, 32);
        assert_eq!(open.deadline, Some(Duration::from_millis(1500)));
        assert_eq!(open.metadata.get("request-id"), Some(&b"42"[..]));
        assert_eq!(open.metadata.get("trace"), Some(&b""[..]));
        assert_eq!(open.metadata.get("missing"), None);
        assert_eq!(open.metadata.len(), 3);
    }

    #[test]
    fn a_unary_open_has_no_window_and_no_deadline_unless_given() {
        let message = encode_open(b"", Mode::Unary, 99, None, &Metadata::default(), 0);
        let decoded = decode_from_client(&message).unwrap();
        assert_eq!(
            decoded,
            FromClient::Open(Open {
                mode: Mode::Unary,
                window: 0,
                deadline: None,
                metadata: Metadata::default(),
                request_len: 0,
            })
        );
    }

    #[test]
    fn a_window_above_the_servers_limit_is_clamped() {
        let message = encode_open(b"x", Mode::TwoWay, u16::MAX, None, &Metadata::default(), 0);
        let FromClient::Open(open) = decode_from_client(&message).unwrap() else {
            panic!("not an open");
        };
        assert_eq!(open.window, MAX_STREAM_WINDOW);
        assert_eq!(open.mode, Mode::TwoWay);
    }

    #[test]
    fn metadata_over_the_limits_is_refused_with_the_reason() {
        let many: Vec<(String, Vec<u8>)> = (0..=MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), vec![]))
            .collect();
        let too_many = Metadata { entries: many };
        assert!(too_many.encoded_len().unwrap_err().contains("entries"));
        let long_key = metadata(&[(&"k".repeat(MAX_METADATA_KEY_LEN + 1), b"")]);
        assert!(long_key.encoded_len().unwrap_err().contains("key"));
        let big = metadata(&[("blob", &[0u8; MAX_METADATA_LEN][..])]);
        assert!(big.encoded_len().unwrap_err().contains("bytes encoded"));
        let fits = metadata(&[("blob", &[0u8; MAX_METADATA_LEN - 1 - 3 - 4][..])]);
        assert_eq!(fits.encoded_len().unwrap(), MAX_METADATA_LEN);
    }

    #[test]
    fn the_small_messages_round_trip() {
        assert_eq!(
            decode_from_client(&encode_data(b"abc")),
            Ok(FromClient::Data(3))
        );
        assert_eq!(decode_from_client(&encode_end()), Ok(FromClient::End));
        assert_eq!(decode_from_client(&encode_cancel()), Ok(FromClient::Cancel));
        assert_eq!(
            decode_from_client(&encode_client_credit(7)),
            Ok(FromClient::Credit(7))
        );
        assert_eq!(
            decode_from_server(&encode_item(b"tok")),
            Ok(FromServer::Item(3))
        );
        assert_eq!(
            decode_from_server(&encode_server_credit(16)),
            Ok(FromServer::Credit(16))
        );
        assert_eq!(
            decode_from_server(&encode_reply(Ok(b"done".to_vec()))),
            Ok(FromServer::Reply(4))
        );
        assert_eq!(
            decode_from_server(&encode_reply(Err("no".into()))),
            Ok(FromServer::Failed(2))
        );
        assert_eq!(decode_from_server(&encode_ended()), Ok(FromServer::Ended));
    }

    #[test]
    fn the_room_for_an_opening_is_what_the_docs_say() {
        // `ServerConfig::memory_budget`'s docs name this figure.
        assert_eq!(REQUEST_ROOM, 4110);
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(decode_from_client(&[]).is_err());
        assert!(decode_from_client(&[0x77]).is_err());
        assert!(decode_from_client(&[1, END]).is_err());
        assert!(decode_from_client(&[1, 2, CLIENT_CREDIT]).is_err());
        assert!(decode_from_client(&[OPEN]).is_err());
        assert!(decode_from_server(&[]).is_err());
        assert!(decode_from_server(&[0x09]).is_err());
        assert!(decode_from_server(&[1, ENDED]).is_err());
        // An open whose metadata length is longer than the message.
        let mut open = encode_open(b"", Mode::Unary, 0, None, &Metadata::default(), 0);
        open[0] = 0xff;
        assert!(decode_from_client(&open).is_err());
        // Flags nobody defined, and a stream without a window.
        let mut open = encode_open(b"", Mode::Unary, 0, None, &Metadata::default(), 0);
        let flags = open.len() - 2;
        open[flags] = 0x80;
        assert!(decode_from_client(&open).is_err());
        open[flags] = TAKES_STREAM;
        assert!(decode_from_client(&open).is_err());
    }

    #[test]
    fn an_oversized_response_becomes_an_error_reply_within_the_limit() {
        let reply = encode_reply_within(Ok(vec![0; 100]), 40);
        assert_eq!(decode_from_server(&reply), Ok(FromServer::Failed(40)));
        let reply = encode_reply_within(Ok(vec![0; 40]), 40);
        assert_eq!(decode_from_server(&reply), Ok(FromServer::Reply(40)));
    }

    proptest! {
        /// No input makes the decoders panic, and whatever they accept from a client
        /// keeps its parts inside the message.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_from_server(&bytes);
            if let Ok(FromClient::Open(open)) = decode_from_client(&bytes) {
                prop_assert!(open.request_len < bytes.len());
                prop_assert!(open.window <= MAX_STREAM_WINDOW);
            }
        }

        /// Any open a client can make decodes to what it said.
        #[test]
        fn opens_round_trip(
            request in proptest::collection::vec(any::<u8>(), 0..64),
            entries in proptest::collection::vec(("[a-z-]{0,12}", proptest::collection::vec(any::<u8>(), 0..20)), 0..5),
            mode in prop_oneof![Just(Mode::Unary), Just(Mode::ServerStream), Just(Mode::TwoWay)],
            window in 1u16..=MAX_STREAM_WINDOW,
            deadline in proptest::option::of(0u64..10_000_000),
        ) {
            let mut meta = Metadata::default();
            for (key, value) in entries {
                meta.push(key, value);
            }
            let len = meta.encoded_len().unwrap();
            let deadline = deadline.map(Duration::from_micros);
            let message = encode_open(&request, mode, window, deadline, &meta, len);
            let FromClient::Open(open) = decode_from_client(&message).unwrap() else {
                panic!("not an open");
            };
            prop_assert_eq!(&message[..open.request_len], &request[..]);
            prop_assert_eq!(open.mode, mode);
            prop_assert_eq!(open.window, if mode.takes_stream() { window } else { 0 });
            prop_assert_eq!(open.deadline, deadline);
            prop_assert_eq!(open.metadata, meta);
        }
    }
}
