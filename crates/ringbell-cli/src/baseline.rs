//! The raw shared-memory baselines: a ping-pong on bare atomic words in a shared page, with
//! no ring, no framing and no checks. They bound what any shared-memory IPC can reach:
//!
//! * **raw spin**: each side spins on the other's word. The cost of moving a cache line
//!   between two cores and back: the physical floor.
//! * **raw futex**: each side sleeps on a shared futex at once and is woken by the other.
//!   The cost of two cross-process kernel wake-ups: the floor for any wait that sleeps.
//!
//! The demo maps a shared page ([`SharedPage`]), passes it to a `ringbell __shm-peer`
//! child, and times every round trip; the child answers a fixed number of rounds and exits.
//!
//! The futex floor, and `bench`'s eventfd floor, are Linux's own calls: elsewhere they are
//! left out ([`NOT_ON_THIS_OS`] says why). Windows has a kernel floor of its own in their
//! place, a ping-pong on two auto-reset events (`event`); macOS runs only the spin floor.

#[cfg(unix)]
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
#[cfg(unix)]
use rustix::io::{fcntl_setfd, FdFlags};

#[cfg(windows)]
pub use self::event::{event_ping_pong, run_event_peer, RAW_EVENT};
pub use self::kernel::NOT_ON_THIS_OS;
#[cfg(unix)]
pub use self::kernel::{eventfd_ping_pong, run_eventfd_peer};
#[cfg(unix)]
use crate::child::PeerProcess;
use crate::child::{ParentWatch, PeerLauncher};
use crate::error::CliError;
#[cfg(unix)]
use crate::error::Context;
use crate::shm::{PingPongWords, SharedPage};
use crate::stats::{new_histogram, record, LatencyRun};

/// The floors that sleep in the kernel, a shared futex and a pair of eventfds: Linux's
/// futex(2) and eventfd(2), which other OSes lack. There a stub takes their place, whose
/// calls fail, and [`NOT_ON_THIS_OS`] says why, so that `demo` and `bench` leave those
/// rows out and say so.
#[cfg_attr(target_os = "linux", path = "baseline/linux.rs")]
#[cfg_attr(not(target_os = "linux"), path = "baseline/unsupported.rs")]
mod kernel;

/// Windows's kernel floor in their place: a ping-pong on two auto-reset events, the kind of
/// object ringbell's Windows doorbells are.
#[cfg(windows)]
mod event;

/// How the two sides of the raw baseline wait for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShmMode {
    /// Spin on the shared word.
    Spin,
    /// Sleep on a shared futex, woken by the other side after each store.
    Futex,
}

impl ShmMode {
    /// The name on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            ShmMode::Spin => "spin",
            ShmMode::Futex => "futex",
        }
    }
}

/// Spins between two checks that the other side still lives (a few hundred µs of spinning).
const SPINS_PER_LIVENESS_CHECK: u32 = 1 << 16;

/// How long the peer may take to exit once it answered every round.
const PEER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a `__shm-peer` in `mode` and times `count` round trips after `warmup`.
pub fn raw_ping_pong(
    launcher: &PeerLauncher,
    mode: ShmMode,
    warmup: u64,
    count: u64,
) -> Result<LatencyRun, CliError> {
    #[cfg(windows)]
    let spawned = {
        let (page, section) = SharedPage::create()?;
        let args = peer_args(
            crate::windows::handle_value(std::os::windows::io::AsHandle::as_handle(&section)),
            mode,
            warmup + count,
        );
        let name = format!("raw {} peer", mode.arg());
        crate::child::spawn_inheriting_handles(
            launcher,
            &name,
            &args,
            &[std::os::windows::io::AsHandle::as_handle(&section)],
        )
        .map(|peer| (page, peer))
    };
    #[cfg(unix)]
    let spawned = {
        let (page, memfd) = SharedPage::create()?;
        // Let exactly this fd cross `exec`: clear close-on-exec for this one spawn, then
        // close our copy (the mapping keeps the memory). No other thread of ours starts
        // processes, so no other child can inherit it meanwhile.
        fcntl_setfd(&memfd, FdFlags::empty()).context("letting the peer inherit the memfd")?;
        let args = peer_args(i64::from(memfd.as_raw_fd()), mode, warmup + count);
        let spawned =
            PeerProcess::spawn(&format!("raw {} peer", mode.arg()), launcher.command(&args));
        drop(memfd);
        spawned.map(|peer| (page, peer))
    };
    let (page, mut peer) = spawned?;
    let run = time_round_trips(page.words(), mode, warmup, count, &mut || {
        peer.check_alive()
    })?;
    peer.finish(PEER_EXIT_TIMEOUT)?;
    Ok(run)
}

/// The peer's command line: `__shm-peer --fd <inherited fd or handle> --mode … --count …`.
fn peer_args(inherited: i64, mode: ShmMode, rounds: u64) -> Vec<std::ffi::OsString> {
    vec![
        "__shm-peer".into(),
        "--fd".into(),
        inherited.to_string().into(),
        "--mode".into(),
        mode.arg().into(),
        "--count".into(),
        rounds.to_string().into(),
    ]
}

fn time_round_trips(
    words: &PingPongWords,
    mode: ShmMode,
    warmup: u64,
    count: u64,
    peer_alive: &mut dyn FnMut() -> Result<(), CliError>,
) -> Result<LatencyRun, CliError> {
    time_each(warmup, count, |round| {
        round_trip(words, mode, round, peer_alive)
    })
}

/// The measurement loop of every raw floor: `warmup` untimed round trips, then `count`
/// each timed into the histogram. Rounds are numbered from 1 (the shared words start at 0,
/// which is no round's answer).
pub(super) fn time_each(
    warmup: u64,
    count: u64,
    mut round_trip: impl FnMut(u64) -> Result<(), CliError>,
) -> Result<LatencyRun, CliError> {
    for round in 1..=warmup {
        round_trip(round)?;
    }
    let mut histogram = new_histogram();
    let started = Instant::now();
    for round in warmup + 1..=warmup + count {
        let round_trip_start = Instant::now();
        round_trip(round)?;
        record(&mut histogram, round_trip_start.elapsed());
    }
    Ok(LatencyRun {
        histogram,
        elapsed: started.elapsed(),
    })
}

/// Publishes `round` on the ping word and waits until the peer echoes it on the pong word.
fn round_trip(
    words: &PingPongWords,
    mode: ShmMode,
    round: u64,
    peer_alive: &mut dyn FnMut() -> Result<(), CliError>,
) -> Result<(), CliError> {
    match mode {
        ShmMode::Spin => {
            // SYNC: pairs with the peer's Acquire load of `spin_ping` in `spin_until`: as in
            // a real queue, whatever we wrote before the ping is visible once it is seen.
            words.spin_ping.value.store(round, Ordering::Release);
            spin_until(&words.spin_pong.value, round, peer_alive)
        }
        ShmMode::Futex => {
            // The futex words are 32 bits and wrap: the previous round's value still differs
            // from the current one, which is all that equality needs.
            let round = round as u32;
            // SYNC: pairs with the peer's Acquire load of `futex_ping` in `futex_wait_until`.
            words.futex_ping.value.store(round, Ordering::Release);
            kernel::futex_wake(&words.futex_ping.value)?;
            kernel::futex_wait_until(&words.futex_pong.value, round, peer_alive)
        }
    }
}

/// `ringbell __shm-peer`: maps the inherited memfd and answers `rounds` pings in `mode`.
pub fn run_peer(
    memfd: i32,
    mode: ShmMode,
    rounds: u64,
    parent: Option<ParentWatch>,
) -> Result<(), CliError> {
    let page = SharedPage::open_inherited(memfd)?;
    let words = page.words();
    let mut parent_alive = || parent.as_ref().map_or(Ok(()), ParentWatch::check);
    for round in 1..=rounds {
        match mode {
            ShmMode::Spin => {
                spin_until(&words.spin_ping.value, round, &mut parent_alive)?;
                // SYNC: pairs with the demo's Acquire load of `spin_pong` in `spin_until`.
                words.spin_pong.value.store(round, Ordering::Release);
            }
            ShmMode::Futex => {
                let round = round as u32;
                kernel::futex_wait_until(&words.futex_ping.value, round, &mut parent_alive)?;
                // SYNC: pairs with the demo's Acquire load of `futex_pong` in
                // `futex_wait_until`.
                words.futex_pong.value.store(round, Ordering::Release);
                kernel::futex_wake(&words.futex_pong.value)?;
            }
        }
    }
    Ok(())
}

/// Spins until `word` holds `target`, checking now and then that the other side lives.
fn spin_until(
    word: &AtomicU64,
    target: u64,
    other_side_alive: &mut dyn FnMut() -> Result<(), CliError>,
) -> Result<(), CliError> {
    let mut spins: u32 = 0;
    // SYNC: pairs with the other side's Release store of this word (`spin_ping` in
    // `round_trip`, `spin_pong` in `run_peer`).
    while word.load(Ordering::Acquire) != target {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(SPINS_PER_LIVENESS_CHECK) {
            other_side_alive()?;
        }
    }
    Ok(())
}
