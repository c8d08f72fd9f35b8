//! # ringbell
//!
//! Fast, safe inter-process communication on one machine. A [`Connection`] is a pair of
//! lock-free single-producer single-consumer rings in a shared-memory segment; a side
//! waiting for a message spins briefly, then sleeps on a shared futex (or, in an event
//! loop, on a doorbell fd); a Unix-socket handshake passes the segment and the
//! doorbells as file descriptors and stays open to report a peer's death.
//!
//! ```no_run
//! use ringbell::{ClientConfig, Connection, Server, ServerConfig};
//! use std::time::Duration;
//!
//! // In the server process:
//! let server = Server::bind("/tmp/app.sock", ServerConfig::default())?;
//! let mut conn = server.accept()?;
//! let mut buf = Vec::new();
//! let n = conn.recv(&mut buf, Some(Duration::from_millis(500)))?;
//! conn.send(&buf[..n])?;
//!
//! // In the client process:
//! let mut conn = Connection::connect("/tmp/app.sock", ClientConfig::default())?;
//! conn.send(b"hello")?;
//! # Ok::<(), ringbell::Error>(())
//! ```
//!
//! ## Guarantees
//!
//! * Messages arrive whole and in order, from 0 bytes to the server's
//!   [`max_message_size`](ServerConfig::max_message_size); `send` waits while the ring is
//!   full and never drops or overwrites a message.
//! * Everything the peer can write is checked before use: a peer that corrupts the
//!   segment gets its connection closed with [`Error::Corrupted`], never a panic, an
//!   out-of-bounds access or a hang on this side.
//! * A peer that closes or dies is reported as [`Error::PeerDied`] within about 50 ms,
//!   after the messages it sent before.
//! * Nothing outlives the connection: the memory is an anonymous memfd, and every fd is
//!   closed when the [`Connection`] drops.
//!
//! ## Layout of the crate
//!
//! `ring` is the byte ring and framing (pure algorithm, no syscalls), `layout` the shared
//! header, `wait` the sleep/wake protocol and the [`WaitStrategy`] loop, `conn` the
//! [`Connection`], `handshake` and `server` the set-up, and `sys` everything that names an
//! OS call.

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod config;
#[cfg(any(feature = "tokio", loom))]
mod in_flight;
mod layout;
mod ring;
mod sync;
mod wait;

#[cfg(all(feature = "codec", not(loom)))]
mod codec;
#[cfg(not(loom))]
mod conn;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod handshake;
#[cfg(not(loom))]
mod reply;
#[cfg(not(loom))]
mod segment;
#[cfg(not(loom))]
mod server;
#[cfg(not(loom))]
mod sys;
#[cfg(all(feature = "tokio", not(loom)))]
pub mod tokio;

// Not a stable API: entry points for the fuzz targets and their corpus replay test.
#[cfg(not(loom))]
#[doc(hidden)]
pub mod fuzz_api;

// Not a stable API: the ring and the frame header, wrapped for the criterion benchmarks in
// `benches/`. Always compiled, so that `cargo bench` needs no feature.
#[doc(hidden)]
pub mod bench_api;

pub use config::{ClientConfig, ServerConfig, WaitStrategy};
#[cfg(not(loom))]
pub use conn::{Connection, IpcTransport};
#[cfg(not(loom))]
pub use error::Error;
#[cfg(not(loom))]
pub use server::Server;

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
