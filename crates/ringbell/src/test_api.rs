//! Not a stable API (the `__test-api` feature): what the fault suites need to reach
//! inside a request/response client, which no public way of making one allows.

use std::path::Path;

use crate::config::ClientConfig;
use crate::conn::Connection;
use crate::error::Error;
use crate::tokio::Client;

/// Connects to the server at `path` for calls, as a [`Client`] would, but returns the
/// connection itself, so that a test can reach its fds and its shared memory before
/// [`client_from`] drives it. Blocks for the handshake.
pub fn connect_for_calls(
    path: impl AsRef<Path>,
    config: ClientConfig,
) -> Result<Connection, Error> {
    crate::handshake::connect_for_calls(path.as_ref(), &config)
}

/// A client driving `connection` (made by [`connect_for_calls`]) from a task of its own on
/// the current tokio runtime, with up to `max_in_flight` outstanding calls.
pub fn client_from(connection: Connection, max_in_flight: usize) -> Result<Client, Error> {
    Client::from_connection(connection, max_in_flight)
}
