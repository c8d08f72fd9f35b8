//! The peers in a build without the `peers` feature: none. [`PeerKind`] has no variants,
//! so there is never a value to pass to [`start`] or [`run_child`], and the compiler checks
//! that the bench handles the peer subjects without the crate that implements them.

use std::time::Duration;

use ringbell::{Error, IpcTransport};

use crate::child::{PeerLauncher, PeerProcess};
use crate::error::CliError;
use crate::serve::ServeMode;

/// A peer library; none in this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {}

impl PeerKind {
    /// Every peer: none in this build.
    pub const ALL: [PeerKind; 0] = [];

    pub fn name(self) -> &'static str {
        match self {}
    }

    pub fn how(self) -> &'static str {
        match self {}
    }

    /// No name on the command line is a peer in this build.
    pub fn from_arg(_arg: &str) -> Option<PeerKind> {
        None
    }

    pub fn sleeps(self) -> bool {
        match self {}
    }

    pub fn streams(self) -> bool {
        match self {}
    }

    pub fn compare_with(self) -> Option<&'static str> {
        match self {}
    }
}

/// A peer's channel end; none in this build.
#[derive(Debug)]
pub enum PeerTransport {}

impl IpcTransport for PeerTransport {
    fn send(&mut self, _msg: &[u8]) -> Result<(), Error> {
        match *self {}
    }

    fn recv(&mut self, _buf: &mut Vec<u8>, _timeout: Option<Duration>) -> Result<usize, Error> {
        match *self {}
    }
}

pub fn start(
    peer: PeerKind,
    _launcher: &PeerLauncher,
    _mode: ServeMode,
    _size: usize,
) -> Result<(PeerProcess, PeerTransport), CliError> {
    match peer {}
}

pub fn run_child(peer: PeerKind, _mode: ServeMode, _args: &[String]) -> Result<(), CliError> {
    match peer {}
}
