//! The kernel floors where they cannot run: Linux's futex(2) and eventfd(2) have no
//! counterpart that would measure the same thing here (macOS has no eventfd, and its
//! `os_sync_wait_on_address` is a different, newer call). Every call fails with
//! [`NOT_ON_THIS_OS`]'s reason; `demo` and `bench` read it and leave the rows out.

use std::sync::atomic::AtomicU32;

#[cfg(unix)]
use crate::child::{ParentWatch, PeerLauncher};
use crate::error::CliError;
#[cfg(unix)]
use crate::stats::LatencyRun;

/// Why the raw futex and eventfd floors are left out on this OS.
pub const NOT_ON_THIS_OS: Option<&str> = Some(
    "the futex and eventfd floors measure Linux's futex(2) and eventfd(2), which this OS \
     does not have",
);

fn left_out(floor: &str) -> CliError {
    let why = NOT_ON_THIS_OS.unwrap_or_default();
    CliError::new(format!("the {floor} floor is left out on this OS: {why}"))
}

pub(super) fn futex_wait_until(
    _word: &AtomicU32,
    _target: u32,
    _other_side_alive: &mut dyn FnMut() -> Result<(), CliError>,
) -> Result<(), CliError> {
    Err(left_out("raw futex"))
}

pub(super) fn futex_wake(_word: &AtomicU32) -> Result<(), CliError> {
    Err(left_out("raw futex"))
}

#[cfg(unix)]
pub fn eventfd_ping_pong(
    _launcher: &PeerLauncher,
    _warmup: u64,
    _count: u64,
) -> Result<LatencyRun, CliError> {
    Err(left_out("eventfd"))
}

#[cfg(unix)]
pub fn run_eventfd_peer(
    _ping_fd: i32,
    _pong_fd: i32,
    _rounds: u64,
    _parent: Option<ParentWatch>,
) -> Result<(), CliError> {
    Err(left_out("eventfd"))
}
