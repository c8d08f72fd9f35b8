//! Not a stable API (the `__test-api` feature): what the fault suites need to reach
//! inside a request/response client, which no public way of making one allows; and a
//! blocking call, for the suites that call `Server::serve` where the async `Client` is not
//! built (Windows, until step 3 of docs/WINDOWS.md).

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
    connection.send_with_correlation(request, correlation)?;
    let mut buf = Vec::new();
    loop {
        let received = connection.recv_tagged(&mut buf, timeout)?;
        if received.correlation == correlation {
            return crate::core::reply::decode_reply(&buf[..received.len]);
        }
    }
}
