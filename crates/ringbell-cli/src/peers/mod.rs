//! The peer libraries `ringbell bench` compares ringbell with (iceoryx2, ipc-channel and a
//! tokio `UnixStream`), as [`ringbell::IpcTransport`]s, so that they are timed and checked
//! by the same loops as ringbell; and `__peer-lib`, the child process at their other end.
//!
//! They are behind the CLI's `peers` feature, off by default. Why: they come from the
//! `ringbell-bench-peers` crate, whose iceoryx2 brings bindgen and clang-sys, and that is
//! most of a cold build of the CLI: the README's demo and the everyday commands need none
//! of it. They are also Linux-only for now (iceoryx2's bindgen step does not build for the
//! Apple targets here).
//!
//! Without the feature, [`PeerKind`] is an enum with no variants (see `absent.rs`), so
//! `bench` has no peer to list and every peer code path is statically unreachable; `bench`
//! then says how to get them ([`MISSING`]).

use serde::Serialize;

#[cfg(not(feature = "peers"))]
mod absent;
#[cfg(feature = "peers")]
mod linked;

#[cfg(not(feature = "peers"))]
pub use absent::{run_child, start, PeerKind};
#[cfg(feature = "peers")]
pub use linked::{run_child, start, PeerKind};

/// Why `bench` has no peer rows in a build without the `peers` feature, and how to get them.
pub const MISSING: &str = "the peer libraries (iceoryx2, ipc-channel, tokio UnixStream, tonic \
     gRPC) are left out: this ringbell was built without the CLI's `peers` feature. For them, run \
     `cargo run --release -p ringbell-cli --features peers -- bench` (Linux only; the \
     first build takes a few minutes)";

/// How a peer is used, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct PeerNote {
    pub name: String,
    pub how: String,
    /// The ringbell row its round trip is held against, if the targets name one.
    pub compare_with: Option<&'static str>,
    /// Whether it has one-way throughput rows.
    pub streams: bool,
}

/// What the report says about each peer.
pub trait Describe {
    fn note(self) -> PeerNote;
}

impl Describe for PeerKind {
    fn note(self) -> PeerNote {
        PeerNote {
            name: self.name().into(),
            how: self.how().into(),
            compare_with: self.compare_with(),
            streams: self.streams(),
        }
    }
}
