//! Not a stable API (the `__test-api` feature): what the fault suites need to reach
//! inside a request/response client, which no public way of making one allows; and a
//! blocking call, for the suites that call `Server::serve` without a runtime (and where the
//! async `Client` is not built: with the `tokio` feature off).

use std::path::Path;
use std::time::Duration;

use crate::config::ClientConfig;
use crate::conn::Connection;
use crate::error::Error;
#[cfg(ringbell_async)]
use crate::tokio::Client;

/// Connects to the server at `path` for calls, as a [`Client`](crate::tokio::Client) would,
/// but returns the connection itself, so that a test can reach its fds and its shared
/// memory before `client_from` drives it, or make calls with [`call_blocking`]. Blocks for
/// the handshake.
pub fn connect_for_calls(
    path: impl AsRef<Path>,
    config: ClientConfig,
) -> Result<Connection, Error> {
    crate::handshake::connect_for_calls(path.as_ref(), &config)
}

/// A client driving `connection` (made by [`connect_for_calls`]) from a task of its own on
/// the current tokio runtime, with up to `max_in_flight` outstanding calls.
#[cfg(ringbell_async)]
pub fn client_from(connection: Connection, max_in_flight: usize) -> Result<Client, Error> {
    Client::from_connection(connection, max_in_flight)
}

/// `request` as a connection of calls carries it: the opening of a unary call with no
/// deadline and no metadata (`core/call.rs`), for a test that sends calls by hand through
/// a connection from [`connect_for_calls`].
pub fn request(request: &[u8]) -> Vec<u8> {
    use crate::core::call::{encode_open, Metadata, Mode};
    encode_open(request, Mode::Unary, 0, None, &Metadata::default(), 0)
}

/// The handler's response in a reply received by hand, or its error message; `None` if
/// the message is not a final reply.
pub fn reply_of(message: &[u8]) -> Option<Result<&[u8], String>> {
    use crate::core::call::{decode_from_server, FromServer};
    match decode_from_server(message).ok()? {
        FromServer::Reply(len) => Some(Ok(&message[..len])),
        FromServer::Failed(len) => Some(Err(String::from_utf8_lossy(&message[..len]).into_owned())),
        _ => None,
    }
}

/// Sends a call's opening of `request` (see [`request`]) tagged with `correlation`, which
/// must differ from every other call under way on the connection: the server refuses a
/// second call with the id of one it is handling.
pub fn send_request(conn: &mut Connection, correlation: u64, body: &[u8]) -> Result<(), Error> {
    conn.send_with_correlation(&request(body), correlation)
}

/// [`send_request`] on an [`AsyncConnection`](crate::tokio::AsyncConnection).
#[cfg(ringbell_async)]
pub async fn send_request_async(
    conn: &mut crate::tokio::AsyncConnection,
    correlation: u64,
    body: &[u8],
) -> Result<(), Error> {
    conn.send_with_correlation(&request(body), correlation)
        .await
}

/// One call on `connection` (made by [`connect_for_calls`]) without a runtime: sends
/// `request` tagged with `correlation`, waits at most `timeout` for the reply with that tag
/// (replies to other tags are skipped), and decodes it: the handler's response, or
/// [`Error::Handler`] with its message.
pub fn call_blocking(
    connection: &mut Connection,
    correlation: u64,
    request: &[u8],
    timeout: Option<Duration>,
) -> Result<Vec<u8>, Error> {
    connection.send_with_correlation(&self::request(request), correlation)?;
    let mut buf = Vec::new();
    loop {
        let received = connection.recv_tagged(&mut buf, timeout)?;
        if received.correlation != correlation {
            continue;
        }
        match reply_of(&buf[..received.len]) {
            Some(Ok(response)) => return Ok(response.to_vec()),
            Some(Err(message)) => return Err(Error::Handler { message }),
            // A unary call is answered by its final reply alone.
            None => {
                return Err(Error::Corrupted {
                    detail: "a unary call's answer is not a final reply",
                })
            }
        }
    }
}

/// Accepts a client that makes calls, as [`Server::serve`](crate::Server::serve) would,
/// but returns the connection itself: for a test that plays a server by hand (a hostile
/// one, say). Blocks for the handshake.
pub fn accept_for_calls(server: &crate::Server) -> Result<Connection, Error> {
    server.accept_carrying(crate::handshake::Carries::Calls)
}

/// The window a call's opening (received by hand) asks for, in bytes: `None` if the
/// message is not an opening of a streamed call.
pub fn window_of(message: &[u8]) -> Option<u32> {
    use crate::core::call::{decode_from_client, FromClient};
    match decode_from_client(message).ok()? {
        FromClient::Open(open) if open.window > 0 => Some(open.window),
        _ => None,
    }
}

/// `items` as one packed message of streamed responses (`ITEMS`, `core/call.rs`), each
/// under 64 KiB: what a server sends a streamed call.
pub fn pack_of(items: &[&[u8]]) -> Vec<u8> {
    use crate::core::call::{add_to_pack, start_pack};
    let (first, rest) = items.split_first().expect("a pack has an item");
    let mut pack = start_pack(first, usize::MAX);
    for item in rest {
        assert!(
            add_to_pack(&mut pack, item, usize::MAX),
            "an item under 64 KiB"
        );
    }
    pack
}

/// What a streamed response of `len` bytes costs against a call's window of `window`
/// bytes (`core::call::item_cost`).
pub fn item_cost(len: usize, window: u32) -> u32 {
    crate::core::call::item_cost(len, window)
}

/// Sends `message` tagged with `correlation`, as a call's messages travel: for a test
/// that plays a peer by hand.
pub fn send_tagged(conn: &mut Connection, correlation: u64, message: &[u8]) -> Result<(), Error> {
    conn.send_with_correlation(message, correlation)
}

/// Receives one message into `buf`, waiting at most `timeout`: its correlation id and
/// length.
pub fn recv_tagged(
    conn: &mut Connection,
    buf: &mut Vec<u8>,
    timeout: Option<Duration>,
) -> Result<(u64, usize), Error> {
    let received = conn.recv_tagged(buf, timeout)?;
    Ok((received.correlation, received.len))
}
