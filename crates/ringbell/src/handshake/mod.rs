//! The handshake over the control channel.
//!
//! - [`wire`]: the messages, as bytes (pure encoding, no I/O);
//! - [`server`]: the server's side, a state machine that never blocks, so that one thread
//!   or task carries any number of handshakes;
//! - [`client`]: the client's side, which blocks until done or its deadline.
//!
//! The OS objects of a connection (its shared region and doorbell ends) travel as grants
//! (`sys::Grant`) beside the bytes: as fds with `SCM_RIGHTS` on Unix; on Windows as handle
//! values in the pipe's frames, the server's pushed into the client with `DuplicateHandle`
//! (its own process handle with them, so that the client's waits see it die) and the
//! client's offered for the server to pull. The handshake does not know what they are.
//!
//! A failed handshake retracts what it pushed, where that is safe: on Windows a welcome
//! whose frame is not written whole takes its pushed handles back from the client (the
//! client cannot know their values), and on Unix fds never sent are closed here. Once the
//! welcome is written whole its handles are the client's, as received fds are on Unix:
//! taking them back then could close a handle of the client's that reused the value after
//! the client dropped its own, so a handshake that fails later (no ack, a bad ack, a
//! timeout) leaves them to the client, which closes them as its connect fails, or holds
//! them until it exits.
//!
//! ```text
//! client                                   server
//!   connect ───────────────────────────────▶ accept; SO_PEERCRED → uid
//!   Hello  {magic, version, carries} ──────▶ check magic, version, carries, uid
//!                                            create memfd segment (sealed), 2 doorbells
//!          ◀─────────────── Welcome {status, capacity, max message, segment size}
//!                           + SCM_RIGHTS [memfd, server's doorbell ringer, client's doorbell]
//!   check seals + size, map, check header
//!   Ack ───────────────────────────────────▶ connection ready on both sides
//!          [+ SCM_RIGHTS [client's own doorbell ringer]]
//! ```
//!
//! A client whose connections to one server share one doorbell (a
//! [`ClientGroup`](crate::tokio::ClientGroup)) attaches that doorbell's ringer to its Ack;
//! the server then rings it instead of the doorbell it made, so that one wake-up of the
//! group's task serves all its connections, and a server that replies to many of them in
//! one sweep rings it once (see `tokio/serve.rs`).
//!
//! Every message starts with the same 16-byte prefix, little-endian:
//! `magic "RINGBELL" (8) | version u16 | kind u16 | status u32`, so that a peer of another
//! version can still read a refusal. In the Hello, the last field says what the client
//! will carry, plain messages or calls (`wire::Carries`); a server that serves the other
//! kind refuses it, and both sides get an error that says which is which. The Welcome adds
//! three u64: ring capacity, maximum message size, segment length. The whole exchange runs
//! under a deadline on both sides.

mod client;
mod server;
pub(crate) mod wire;

use std::time::{Duration, Instant};

use crate::error::Error;

pub(crate) use client::connect;
#[cfg(feature = "__test-api")]
pub(crate) use client::connect_for_calls;
#[cfg(ringbell_async)]
pub(crate) use client::{connect_sharing, SharedDoorbell};
pub(crate) use server::{refuse_busy, ServerHandshake, Step};
pub(crate) use wire::Carries;

pub(crate) fn handshake_error(detail: impl Into<String>) -> Error {
    Error::Handshake {
        detail: detail.into(),
    }
}

/// The deadline of a handshake that may take `timeout` (a year if that overflows).
pub(crate) fn handshake_deadline(timeout: Duration) -> Instant {
    crate::core::wait::deadline_after(timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600))
}

pub(crate) fn handshake_timeout(step: &str) -> Error {
    handshake_error(format!("timed out {step}"))
}

/// Maps a socket error during the handshake to a clear error.
pub(crate) fn socket_error(step: &str, error: std::io::Error) -> Error {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => handshake_timeout(step),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            handshake_error(format!("the peer hung up {step}"))
        }
        ErrorKind::InvalidData => handshake_error(format!("{step}: {error}")),
        _ => Error::io(step, error),
    }
}
