//! The reply format of request/response, shared by the async client and both servers: a
//! reply is a message tagged with its request's correlation id, whose first byte says
//! whether the handler succeeded (its response follows) or failed (its error message
//! follows).

#[cfg(any(ringbell_async, feature = "__test-api"))]
use crate::error::Error;

/// Reply status byte: the handler's response follows.
const REPLY_OK: u8 = 0;
/// Reply status byte: the handler failed; its message follows.
const REPLY_FAILED: u8 = 1;

/// What the reply format adds to a response: its status byte. A reply may carry this much
/// more than `max_message_size` on the wire, so that the limit a user sets is the
/// payload's: a handler may answer with as many bytes as a request may hold (see
/// `wire_limit` in `conn/mod.rs`).
pub(crate) const REPLY_ROOM: usize = 1;

#[cfg(any(ringbell_async, feature = "__test-api"))]
pub(crate) fn decode_reply(reply: &[u8]) -> Result<Vec<u8>, Error> {
    match reply.split_first() {
        Some((&REPLY_OK, response)) => Ok(response.to_vec()),
        Some((&REPLY_FAILED, message)) => Err(Error::Handler {
            message: String::from_utf8_lossy(message).into_owned(),
        }),
        _ => Err(Error::Corrupted {
            detail: "a reply has no valid status byte",
        }),
    }
}

pub(crate) fn encode_reply(result: Result<Vec<u8>, String>) -> Vec<u8> {
    let (status, body) = match result {
        Ok(response) => (REPLY_OK, response),
        Err(message) => (REPLY_FAILED, message.into_bytes()),
    };
    let mut reply = Vec::with_capacity(body.len() + 1);
    reply.push(status);
    reply.extend_from_slice(&body);
    reply
}

/// [`encode_reply`], but a response (or error message) above `max` bytes, the
/// connection's `max_message_size`, becomes an error reply that says so (its message cut
/// to `max`): one oversized response fails its own call, not the connection.
pub(crate) fn encode_reply_within(result: Result<Vec<u8>, String>, max: usize) -> Vec<u8> {
    let mut reply = encode_reply(result);
    if reply.len() > max + REPLY_ROOM {
        let len = reply.len() - REPLY_ROOM;
        reply = encode_reply(Err(format!(
            "the handler's response of {len} bytes does not fit the connection's maximum message size of {max} bytes"
        )));
        reply.truncate(max + REPLY_ROOM);
    }
    reply
}
