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
