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
//! OPEN    request | metadata | metadata_len u16 | deadline_us u64 | window u32 | flags u8 | 0x01
//! DATA    message | 0x02        one message of a two-way call's request stream
//! END     0x03                  the request stream is finished
//! CANCEL  0x04                  the client gave up: stop the work, send nothing more
//! CREDIT  n u32 | 0x05          the client takes n more bytes of streamed responses (costs)
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
//! ITEMS   (len u16 | item)… | count u16 | 0x05
//!                               several streamed responses of one call, in order, each
//!                               under 64 KiB: what its handler sent before the sweeper
//!                               took the previous batch
//! ```
//!
//! `ITEMS` is how small streamed responses travel: `Call::send` packs each item into its
//! call's pending pack, where the handler runs (up to [`PACK_LIMIT`] bytes, or less on a
//! small ring or message limit: `tokio/serve.rs`), and the sweeper takes the packs whole,
//! so that a stream of tokens costs one frame, one publication and one hand-off to the
//! stream per pack, not per token. An item that does not fit an empty pack goes alone as
//! an `ITEM`.
//!
//! Every call the server starts ends with exactly one of `REPLY`, `FAILED` or `ENDED`,
//! even a cancelled one, and the client counts a call as under way until then. So the
//! client's in-flight bound and the server's `concurrent_requests` count the same calls,
//! and a client never opens a call the server has no room for: a handler that takes its
//! grace to notice a cancel still holds its slot, on both sides.
//!
//! Integers are little-endian. `deadline_us` is the time the call may take, in
//! microseconds, relative (so the two clocks never need to agree); `u64::MAX` is none.
//! `window` is how many bytes of streamed responses the client takes before it grants
//! more (`CREDIT`), counted as [`item_cost`]: an item's length plus [`ITEM_OVERHEAD`], at
//! most the window; a unary call's is 0. `flags`: bit 0, the client takes streamed responses;
//! bit 1, it streams requests (two-way). Metadata: one byte of entry count, then per entry
//! `key_len u8 | key (UTF-8) | value_len u16 | value`.
//!
//! Flow control: the server may send a call items costing at most `window` before the
//! client's first `CREDIT`, and never more than the client granted in all; the client may
//! send a two-way call [`REQUEST_WINDOW`] messages before the server's first `CREDIT`. A
//! peer that goes past its credit breaks the protocol. Costs differ from item to item, so
//! a client must not keep back credit for items it has taken while it waits for more:
//! it grants what it has taken each half window, and all of it before it waits (else
//! an item costing more than what the server has left would never come). The window is in bytes, not items,
//! so that what a stream nobody reads holds is bounded in memory whatever its items'
//! sizes: at most the window's bytes of small items, or one item larger than the window
//! (which costs the whole window). What the server holds of a call is bounded by these
//! windows and by [`MAX_STREAM_WINDOW`], whatever a client asks.
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
const ITEMS: u8 = 0x05;

/// OPEN's flags.
const TAKES_STREAM: u8 = 1 << 0;
const SENDS_STREAM: u8 = 1 << 1;

/// An OPEN's fixed trailer: metadata length, deadline, window, flags and kind.
const OPEN_TRAILER_LEN: usize = 2 + 8 + 4 + 1 + 1;

/// At most this many metadata entries per call.
pub const MAX_METADATA_ENTRIES: usize = 16;
/// A metadata key is at most this many bytes of UTF-8.
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// A call's metadata, encoded, is at most this many bytes: for each entry its key and
/// value and 3 bytes of lengths, plus 1.
pub const MAX_METADATA_LEN: usize = 4096;

/// The largest window a server grants one call, whatever its client asks for: 1 MiB of
/// streamed responses unacknowledged (each item counting its length plus
/// [`ITEM_OVERHEAD`], at most the window). What a call may hold of the server's memory
/// for its stream is this, or one item of up to `max_message_size` when an item is
/// larger.
pub const MAX_STREAM_WINDOW: u32 = 1 << 20;

/// What each streamed response costs against its call's window beside its bytes: so that
/// a window bounds the bookkeeping of many tiny (or empty) items too, not only their
/// bytes.
pub const ITEM_OVERHEAD: u32 = 16;

/// The most bytes the sweeper packs into one `ITEMS` message: enough that a stream of
/// tokens takes one frame per pack of hundreds, small enough to fit one frame of the
/// default ring (a quarter of 128 KiB), so that a pack is never chunked there.
pub(crate) const PACK_LIMIT: usize = 16 << 10;

/// The largest item a pack carries: its length is a u16.
const PACK_ITEM_MAX: usize = u16::MAX as usize;

/// The bytes `ITEMS` adds to a pack: its count and its kind.
const PACK_TRAILER_LEN: usize = 2 + 1;

/// What a streamed response of `len` bytes costs against a `window`: its length plus
/// [`ITEM_OVERHEAD`], at most the whole window (so an item larger than the window is sent
/// alone, once nothing else is in flight). Never 0 for a window of at least 1.
pub(crate) fn item_cost(len: usize, window: u32) -> u32 {
    u32::try_from(len)
        .unwrap_or(u32::MAX)
        .saturating_add(ITEM_OVERHEAD)
        .min(window)
}

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
    /// How many bytes of streamed responses (as [`item_cost`] counts them) the client
    /// takes before it grants more, at most [`MAX_STREAM_WINDOW`]; 0 for a unary call.
    pub(crate) window: u32,
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
    /// Several items, packed: `count` of them in the body's `len` bytes, already checked
    /// (read them with [`Pack`]).
    Items {
        count: u16,
        len: usize,
    },
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
    window: u32,
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

/// Whether an item of `len` bytes travels in a pack of at most `limit` bytes; if not, it
/// goes alone as an `ITEM`.
pub(crate) fn packable(len: usize, limit: usize) -> bool {
    len <= PACK_ITEM_MAX && 2 + len + PACK_TRAILER_LEN <= limit
}

/// A new pack (an `ITEMS` message) holding `item`, which must be [`packable`].
///
/// A pack is kept a whole, sealed message between appends (an append moves its trailer),
/// so that it can be sent at any moment.
pub(crate) fn start_pack(item: &[u8], limit: usize) -> Vec<u8> {
    debug_assert!(packable(item.len(), limit));
    let mut pack = Vec::with_capacity(limit.min(8 * (2 + item.len()) + PACK_TRAILER_LEN));
    push_packed(&mut pack, item, 1);
    pack
}

/// Adds `item` to `pack` if the pack stays within `limit` bytes; returns whether it did.
pub(crate) fn add_to_pack(pack: &mut Vec<u8>, item: &[u8], limit: usize) -> bool {
    let count = pack_count(pack);
    if count == u16::MAX || item.len() > PACK_ITEM_MAX || pack.len() + 2 + item.len() > limit {
        return false;
    }
    pack.truncate(pack.len() - PACK_TRAILER_LEN);
    push_packed(pack, item, count + 1);
    true
}

/// Whether `message`, one of a server's, is a pack (`ITEMS`).
pub(crate) fn is_pack(message: &[u8]) -> bool {
    message.last() == Some(&ITEMS)
}

fn pack_count(pack: &[u8]) -> u16 {
    let at = pack.len() - PACK_TRAILER_LEN;
    u16::from_le_bytes([pack[at], pack[at + 1]])
}

fn push_packed(pack: &mut Vec<u8>, item: &[u8], count: u16) {
    pack.extend_from_slice(&(item.len() as u16).to_le_bytes());
    pack.extend_from_slice(item);
    pack.extend_from_slice(&count.to_le_bytes());
    pack.push(ITEMS);
}

/// The items of a pack's body, in order. Made from a body that [`decode_from_server`]
/// accepted, so every length it reads lies inside; it still stops at a length that does
/// not, rather than trust that.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pack {
    body: Vec<u8>,
    at: usize,
}

impl Pack {
    /// The pack whose checked body is `body` (the message truncated to its body).
    pub(crate) fn new(body: Vec<u8>) -> Pack {
        Pack { body, at: 0 }
    }

    /// The next item, copied out.
    pub(crate) fn next_item(&mut self) -> Option<Vec<u8>> {
        let (len, rest) = split_packed(self.body.get(self.at..)?)?;
        self.at += 2 + len;
        Some(rest[..len].to_vec())
    }
}

/// An item's length at the front of `bytes`, and what follows it, if the item lies
/// inside.
fn split_packed(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let len = usize::from(u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]));
    let rest = &bytes[2..];
    (rest.len() >= len).then_some((len, rest))
}

/// Checks a pack's body against its count, and gives each item's length to `each` (for
/// the client's credit). The count must be at least 1 and say exactly how many items
/// fill the body.
pub(crate) fn check_pack(
    body: &[u8],
    count: u16,
    mut each: impl FnMut(usize),
) -> Result<(), &'static str> {
    if count == 0 {
        return Err("a pack of streamed responses with no items");
    }
    let mut rest = body;
    for _ in 0..count {
        let (len, after) = split_packed(rest).ok_or("a packed item runs past its pack")?;
        each(len);
        rest = &after[len..];
    }
    if !rest.is_empty() {
        return Err("a pack of streamed responses has bytes after its last item");
    }
    Ok(())
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
    let window = u32::from_le_bytes(trailer[10..14].try_into().expect("4 bytes"));
    let mode = Mode::from_flags(trailer[14]).ok_or("a call's opening has unknown flags")?;
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
        ITEMS => {
            let fixed = body
                .len()
                .checked_sub(2)
                .ok_or("a pack of streamed responses is too short")?;
            let count = u16::from_le_bytes([body[fixed], body[fixed + 1]]);
            check_pack(&body[..fixed], count, |_| {})?;
            Ok(FromServer::Items { count, len: fixed })
        }
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
        let message = encode_open(b"x", Mode::TwoWay, u32::MAX, None, &Metadata::default(), 0);
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
        assert_eq!(REQUEST_ROOM, 4112);
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

    /// Packs `items` as the sweeper does, under `limit`: the messages it would send.
    fn packed(items: &[&[u8]], limit: usize) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for item in items {
            if !packable(item.len(), limit) {
                out.push(encode_item(item));
                continue;
            }
            let joined = out
                .last_mut()
                .filter(|last| last.last() == Some(&ITEMS))
                .is_some_and(|last| add_to_pack(last, item, limit));
            if !joined {
                out.push(start_pack(item, limit));
            }
        }
        out
    }

    /// The items the client takes out of `messages`.
    fn unpacked(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut items = Vec::new();
        for message in messages {
            match decode_from_server(message).unwrap() {
                FromServer::Item(len) => items.push(message[..len].to_vec()),
                FromServer::Items { count, len } => {
                    let mut pack = Pack::new(message[..len].to_vec());
                    let before = items.len();
                    while let Some(item) = pack.next_item() {
                        items.push(item);
                    }
                    assert_eq!(items.len() - before, usize::from(count));
                }
                other => panic!("not items: {other:?}"),
            }
        }
        items
    }

    #[test]
    fn items_travel_packed_under_the_limit_and_alone_when_too_large() {
        let big = vec![9u8; 70_000];
        let items: Vec<&[u8]> = vec![b"a", b"", b"tok", &big, b"after"];
        let messages = packed(&items, PACK_LIMIT);
        // The three small ones in one pack, the large one alone, then a new pack.
        assert_eq!(messages.len(), 3);
        assert_eq!(
            decode_from_server(&messages[0]),
            Ok(FromServer::Items {
                count: 3,
                len: 2 + 1 + 2 + 2 + 3
            })
        );
        assert_eq!(
            decode_from_server(&messages[1]),
            Ok(FromServer::Item(70_000))
        );
        let expected: Vec<Vec<u8>> = items.iter().map(|item| item.to_vec()).collect();
        assert_eq!(unpacked(&messages), expected);
        // A pack never grows past its limit.
        let many: Vec<&[u8]> = vec![&[1u8; 10][..]; 100];
        let messages = packed(&many, 64);
        assert!(messages.iter().all(|message| message.len() <= 64));
        assert_eq!(unpacked(&messages).len(), 100);
    }

    #[test]
    fn a_malformed_pack_is_refused() {
        let pack = start_pack(b"abc", PACK_LIMIT);
        let mut wrong_count = pack.clone();
        let at = wrong_count.len() - 3;
        wrong_count[at] = 2;
        assert!(decode_from_server(&wrong_count).is_err());
        let mut zero = pack.clone();
        zero[at] = 0;
        assert!(decode_from_server(&zero).is_err());
        let mut long_item = pack.clone();
        long_item[0] = 200;
        assert!(decode_from_server(&long_item).is_err());
        let mut trailing = pack[..pack.len() - 3].to_vec();
        trailing.push(0);
        trailing.extend_from_slice(&1u16.to_le_bytes());
        trailing.push(ITEMS);
        assert!(decode_from_server(&trailing).is_err());
        assert!(decode_from_server(&[ITEMS]).is_err());
        assert!(decode_from_server(&[1, ITEMS]).is_err());
    }

    #[test]
    fn an_item_costs_its_length_and_the_overhead_at_most_the_window() {
        assert_eq!(item_cost(64, 1 << 16), 80);
        assert_eq!(item_cost(0, 1 << 16), ITEM_OVERHEAD);
        assert_eq!(item_cost(1 << 20, 1 << 16), 1 << 16);
        assert_eq!(item_cost(5, 1), 1);
        assert_eq!(item_cost(usize::MAX, MAX_STREAM_WINDOW), MAX_STREAM_WINDOW);
    }

    proptest! {
        /// Whatever the items and the limit, the client takes out what the server put in,
        /// in order, and no message is over the limit but a lone item.
        #[test]
        fn packing_round_trips(
            items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..60),
            limit in 8usize..2048,
        ) {
            let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
            let messages = packed(&refs, limit);
            for message in &messages {
                if let Ok(FromServer::Items { .. }) = decode_from_server(message) {
                    prop_assert!(message.len() <= limit);
                }
            }
            prop_assert_eq!(unpacked(&messages), items);
        }

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
            window in 1u32..=MAX_STREAM_WINDOW,
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
