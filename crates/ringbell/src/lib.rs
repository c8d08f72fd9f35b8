//! # ringbell
//!
//! Fast, safe inter-process communication on one machine. A [`Connection`] is a pair of
//! lock-free single-producer single-consumer rings in a shared-memory segment; a side
//! waiting for a message spins briefly, then sleeps on a shared futex (or, in an event
//! loop or where the OS has no shared futex, on a doorbell); a handshake over a local
//! socket passes the segment and the doorbells to the peer and stays open to report the
//! peer's death.
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
//! * Nothing outlives the connection: the memory has no name in any file system (a memfd
//!   on Linux; an object unlinked as soon as it is made elsewhere), and every fd is closed
//!   when the [`Connection`] drops.
//!
//! ## Platforms
//!
//! Linux, with its own backend (memfd, shared futex, epoll). The POSIX backend, which
//! macOS uses, also runs on Linux with `RUSTFLAGS="--cfg ringbell_force_posix"`, and CI
//! runs every test on both; for macOS, CI only compiles and lints the library (it has not
//! been run on a Mac yet: `docs/MACOS.md`). Windows is being built (`docs/WINDOWS.md`):
//! the blocking API ([`Server`], [`Connection`], [`Server::serve`]) works there, over
//! sections, event doorbells and named pipes, tested under Wine 8 only, not on real
//! Windows; the async API (`ringbell::tokio`, with the `tokio` feature) is not built there
//! yet. The API is the same everywhere; the few OS-specific accessors are in [`os`].
//!
//! ## Cargo features
//!
//! * `tokio` (default): the async API in [`tokio`]: [`AsyncConnection`](tokio::AsyncConnection),
//!   [`AsyncServer`](tokio::AsyncServer) with its request/response
//!   [`serve`](tokio::AsyncServer::serve), and the [`Client`](tokio::Client) that calls it.
//! * `codec`: typed messages with serde, encoded with postcard:
//!   [`Connection::send_value`] and [`recv_value`](Connection::recv_value), their async
//!   twins, and [`Client::call_value`](tokio::Client::call_value).
//!
//! Items that need a feature say so in these docs ("Available on crate feature ... only").
//!
//! How the crate is built inside is in `ARCHITECTURE.md` at the root of the repository.

#![cfg_attr(docsrs, feature(doc_cfg))]
// `loom` is our model-checking build, not a platform, and `ringbell_async` is the `tokio`
// feature (see `build.rs`): no badge for either.
#![cfg_attr(docsrs, doc(auto_cfg(hide(loom, ringbell_async))))]
#![deny(unsafe_code)]
#![deny(missing_docs)]
// Without the `tokio` feature, the links to its items (`tokio::Client`, ...) have nothing
// to point at; they render as plain text. CI checks every link with all features on.
#![cfg_attr(not(ringbell_async), allow(rustdoc::broken_intra_doc_links))]
#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod config;
// Platform-free: the ring, the layout, the wait protocol (loom-checked).
mod core;

#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
pub mod os;
// The platform contract and its backends: the only place that names an OS call.
#[cfg(not(loom))]
mod sys;

#[cfg(all(feature = "codec", not(loom)))]
mod codec;
#[cfg(not(loom))]
mod conn;
#[cfg(not(loom))]
mod handshake;
#[cfg(not(loom))]
mod server;
// `ringbell_async` is the `tokio` feature on a backend with readiness for the runtime
// (`build.rs`): every backend has it now (Windows since step 3 of docs/WINDOWS.md).
#[cfg(all(ringbell_async, not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;

// Not a stable API: entry points for the fuzz targets and their corpus replay test,
// behind the `__test-api` feature so that nobody comes to depend on them by accident.
#[cfg(all(feature = "__test-api", not(loom)))]
#[doc(hidden)]
pub mod fuzz_api;
#[cfg(all(feature = "__test-api", not(loom)))]
#[doc(hidden)]
pub mod test_api;

#[cfg(not(loom))]
pub use conn::{Batch, BatchIter, Connection, IpcTransport};
#[cfg(not(loom))]
pub use server::Server;

// Not a stable API: the ring and the frame header, wrapped for the criterion benchmarks in
// `benches/` (which require the `__test-api` feature).
#[cfg(feature = "__test-api")]
#[doc(hidden)]
pub mod bench_api;

pub use config::{ClientConfig, ServerConfig, WaitStrategy};
#[cfg(not(loom))]
pub use error::Error;

/// The name of the platform backend this build of the crate uses: `"linux"` (memfd,
/// shared futex, epoll), `"macos"` (`shm_open`, `os_sync_wait_on_address` from macOS 14.4
/// or else doorbell sleeps, kqueue) or `"posix"` (`shm_open`, doorbell sleeps: what
/// Linux runs when built with `RUSTFLAGS="--cfg ringbell_force_posix"`, to test the code
/// macOS shares); `"windows"` for the Windows backend (sections, event doorbells, named
/// pipes; the blocking API only so far, see the Platforms section). Both ends of a connection must use the same backend. For reports
/// and diagnostics.
///
/// ```
/// assert!(["linux", "macos", "posix", "windows"].contains(&ringbell::backend()));
/// ```
#[cfg(not(loom))]
pub fn backend() -> &'static str {
    sys::BACKEND
}

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
