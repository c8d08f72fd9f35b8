//! The raw shared-memory baselines: a ping-pong on bare atomic words in a shared page, with
//! no ring, no framing and no checks. They bound what any shared-memory IPC can reach:
//!
//! * **raw spin**: each side spins on the other's word. The cost of moving a cache line
//!   between two cores and back: the physical floor.
//! * **raw futex**: each side sleeps on a shared futex at once and is woken by the other.
//!   The cost of two cross-process kernel wake-ups: the floor for any wait that sleeps.
//!
//! The demo maps a sealed memfd ([`SharedPage`]), passes it to a `ringbell __shm-peer`
//! child, and times every round trip; the child answers a fixed number of rounds and exits.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rustix::io::{fcntl_setfd, Errno, FdFlags};
use rustix::thread::futex;

use crate::child::{ParentWatch, PeerLauncher, PeerProcess};
use crate::error::{CliError, Context};
use crate::shm::{PingPongWords, SharedPage};
use crate::stats::{new_histogram, record, LatencyRun};

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

/// The longest a futex wait sleeps before checking that the other side still lives.
const FUTEX_WAIT_SLICE: futex::Timespec = futex::Timespec {
    tv_sec: 0,
    tv_nsec: 100_000_000,
};

/// How long the peer may take to exit once it answered every round.
const PEER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a `__shm-peer` in `mode` and times `count` round trips after `warmup`.
pub fn raw_ping_pong(
    launcher: &PeerLauncher,
    mode: ShmMode,
    warmup: u64,
    count: u64,
) -> Result<LatencyRun, CliError> {
    let (page, memfd) = SharedPage::create()?;
    // Let exactly this fd cross `exec`: clear close-on-exec for this one spawn, then close
    // our copy (the mapping keeps the memory). No other thread of ours starts processes,
    // so no other child can inherit it meanwhile.
    fcntl_setfd(&memfd, FdFlags::empty()).context("letting the peer inherit the memfd")?;
    let command = launcher.command(&[
        "__shm-peer".into(),
        "--fd".into(),
        memfd.as_raw_fd().to_string().into(),
        "--mode".into(),
        mode.arg().into(),
        "--count".into(),
        (warmup + count).to_string().into(),
    ]);
    let spawned = PeerProcess::spawn(&format!("raw {} peer", mode.arg()), command);
    drop(memfd);
    let mut peer = spawned?;
    let run = time_round_trips(page.words(), mode, warmup, count, &mut || {
        peer.check_alive()
    })?;
    peer.finish(PEER_EXIT_TIMEOUT)?;
    Ok(run)
}

fn time_round_trips(
    words: &PingPongWords,
    mode: ShmMode,
    warmup: u64,
    count: u64,
    peer_alive: &mut dyn FnMut() -> Result<(), CliError>,
) -> Result<LatencyRun, CliError> {
    // Rounds are numbered from 1: the words start at 0, which is no round's answer.
    for round in 1..=warmup {
        round_trip(words, mode, round, peer_alive)?;
    }
    let mut histogram = new_histogram();
    let started = Instant::now();
    for round in warmup + 1..=warmup + count {
        let round_trip_start = Instant::now();
        round_trip(words, mode, round, peer_alive)?;
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
            wake(&words.futex_ping.value)?;
            futex_wait_until(&words.futex_pong.value, round, peer_alive)
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
    let mut parent_alive = || parent.map_or(Ok(()), |parent| parent.check());
    for round in 1..=rounds {
        match mode {
            ShmMode::Spin => {
                spin_until(&words.spin_ping.value, round, &mut parent_alive)?;
                // SYNC: pairs with the demo's Acquire load of `spin_pong` in `spin_until`.
                words.spin_pong.value.store(round, Ordering::Release);
            }
            ShmMode::Futex => {
                let round = round as u32;
                futex_wait_until(&words.futex_ping.value, round, &mut parent_alive)?;
                // SYNC: pairs with the demo's Acquire load of `futex_pong` in
                // `futex_wait_until`.
                words.futex_pong.value.store(round, Ordering::Release);
                wake(&words.futex_pong.value)?;
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

/// Sleeps on `word` until it holds `target`.
///
/// No wake-up can be lost: the kernel compares the word with `seen` under its own lock
/// before it queues us, so a store that came after our load makes the wait return at
/// once (`EAGAIN`), and a store before the load is seen by the load. The wait may also
/// return with the word unchanged (a signal, a timeout, a stray wake), so we always loop
/// on the real condition.
fn futex_wait_until(
    word: &AtomicU32,
    target: u32,
    other_side_alive: &mut dyn FnMut() -> Result<(), CliError>,
) -> Result<(), CliError> {
    loop {
        // SYNC: pairs with the other side's Release store of this word before its wake
        // (`futex_ping` in `round_trip`, `futex_pong` in `run_peer`).
        let seen = word.load(Ordering::Acquire);
        if seen == target {
            return Ok(());
        }
        // `Flags::empty()`: a shared futex, keyed on the memfd page. With
        // `FUTEX_PRIVATE_FLAG` it would be keyed on our address space, and the other
        // process's wake would never find us.
        match futex::wait(word, futex::Flags::empty(), seen, Some(&FUTEX_WAIT_SLICE)) {
            Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => {}
            Err(Errno::TIMEDOUT) => other_side_alive()?,
            Err(error) => return Err(CliError::new(format!("futex wait failed: {error}"))),
        }
    }
}

/// Wakes the other side if it sleeps on `word`. It always makes the syscall: the other
/// side sleeps at once, so there nearly always is a sleeper, and the floor we measure is
/// the kernel's, without the "is anybody asleep?" flag that lets ringbell skip it.
fn wake(word: &AtomicU32) -> Result<(), CliError> {
    futex::wake(word, futex::Flags::empty(), 1)
        .map(drop)
        .context("futex wake failed")
}

/// Starts an `__eventfd-peer` and times `count` round trips after `warmup`, each a write
/// to one eventfd that wakes the peer blocked in `read(2)`, and its write to another that
/// wakes us: the cost of the kernel's wake-up through an fd, which an event loop pays for
/// each message, without any payload.
pub fn eventfd_ping_pong(
    launcher: &PeerLauncher,
    warmup: u64,
    count: u64,
) -> Result<LatencyRun, CliError> {
    use rustix::event::{eventfd, EventfdFlags};
    let ping = eventfd(0, EventfdFlags::CLOEXEC).context("creating an eventfd")?;
    let pong = eventfd(0, EventfdFlags::CLOEXEC).context("creating an eventfd")?;
    // As in `raw_ping_pong`: exactly these fds cross `exec`, for this spawn only.
    fcntl_setfd(&ping, FdFlags::empty()).context("letting the peer inherit an eventfd")?;
    fcntl_setfd(&pong, FdFlags::empty()).context("letting the peer inherit an eventfd")?;
    let command = launcher.command(&[
        "__eventfd-peer".into(),
        "--ping-fd".into(),
        ping.as_raw_fd().to_string().into(),
        "--pong-fd".into(),
        pong.as_raw_fd().to_string().into(),
        "--count".into(),
        (warmup + count).to_string().into(),
    ]);
    let spawned = PeerProcess::spawn("eventfd peer", command);
    fcntl_setfd(&ping, FdFlags::CLOEXEC).context("closing an eventfd to later children")?;
    fcntl_setfd(&pong, FdFlags::CLOEXEC).context("closing an eventfd to later children")?;
    let mut peer = spawned?;
    let mut alive = || peer.check_alive();
    for _ in 0..warmup {
        eventfd_signal(&ping)?;
        eventfd_wait(&pong, &mut alive)?;
    }
    let mut histogram = new_histogram();
    let started = Instant::now();
    for _ in 0..count {
        let round_trip_start = Instant::now();
        eventfd_signal(&ping)?;
        eventfd_wait(&pong, &mut alive)?;
        record(&mut histogram, round_trip_start.elapsed());
    }
    let run = LatencyRun {
        histogram,
        elapsed: started.elapsed(),
    };
    peer.finish(PEER_EXIT_TIMEOUT)?;
    Ok(run)
}

/// `ringbell __eventfd-peer`: answers `rounds` wake-ups on the inherited eventfds.
pub fn run_eventfd_peer(
    ping_fd: i32,
    pong_fd: i32,
    rounds: u64,
    parent: Option<ParentWatch>,
) -> Result<(), CliError> {
    let ping = crate::shm::take_inherited_fd(ping_fd, "the ping eventfd")?;
    let pong = crate::shm::take_inherited_fd(pong_fd, "the pong eventfd")?;
    let mut parent_alive = || parent.map_or(Ok(()), |parent| parent.check());
    for _ in 0..rounds {
        eventfd_wait(&ping, &mut parent_alive)?;
        eventfd_signal(&pong)?;
    }
    Ok(())
}

/// Adds 1 to the eventfd's counter, waking a reader.
fn eventfd_signal(fd: &impl std::os::fd::AsFd) -> Result<(), CliError> {
    loop {
        match rustix::io::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(error) => return Err(CliError::new(format!("eventfd write failed: {error}"))),
        }
    }
}

/// Blocks in `read(2)` until the eventfd's counter is non-zero, and resets it. Waits in
/// slices, checking that the other side lives between them.
fn eventfd_wait(
    fd: &impl std::os::fd::AsFd,
    other_side_alive: &mut dyn FnMut() -> Result<(), CliError>,
) -> Result<(), CliError> {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut counter = [0u8; 8];
    loop {
        // A blocking read is the fast path (what an event loop's read after a wake costs is
        // the same); poll only to bound the wait when nothing comes.
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&FUTEX_WAIT_SLICE)) {
            Ok(0) => {
                other_side_alive()?;
                continue;
            }
            Ok(_) | Err(Errno::INTR) => {}
            Err(error) => return Err(CliError::new(format!("eventfd poll failed: {error}"))),
        }
        match rustix::io::read(fd, &mut counter) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            Err(error) => return Err(CliError::new(format!("eventfd read failed: {error}"))),
        }
    }
}
