//! The kernel floors on Linux: a ping-pong on a shared futex, and on two eventfds. See
//! futex(2), eventfd(2).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::io::{fcntl_setfd, Errno, FdFlags};
use rustix::thread::futex;

use super::PEER_EXIT_TIMEOUT;
use crate::child::{ParentWatch, PeerLauncher, PeerProcess};
use crate::error::{CliError, Context};
use crate::stats::LatencyRun;

/// Where both kernel floors run.
pub const NOT_ON_THIS_OS: Option<&str> = None;

/// The longest a futex wait sleeps before checking that the other side still lives.
const FUTEX_WAIT_SLICE: futex::Timespec = futex::Timespec {
    tv_sec: 0,
    tv_nsec: 100_000_000,
};

/// Sleeps on `word` until it holds `target`.
///
/// No wake-up can be lost: the kernel compares the word with `seen` under its own lock
/// before it queues us, so a store that came after our load makes the wait return at
/// once (`EAGAIN`), and a store before the load is seen by the load. The wait may also
/// return with the word unchanged (a signal, a timeout, a stray wake), so we always loop
/// on the real condition.
pub(super) fn futex_wait_until(
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
pub(super) fn futex_wake(word: &AtomicU32) -> Result<(), CliError> {
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
    let run = super::time_each(warmup, count, |_| {
        eventfd_signal(&ping)?;
        eventfd_wait(&pong, &mut alive)
    })?;
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
    // Owning one fd twice would close it twice.
    if ping_fd == pong_fd {
        return Err(CliError::new(format!(
            "--ping-fd and --pong-fd are both {ping_fd}: the two eventfds differ"
        )));
    }
    let ping = crate::shm::take_inherited_fd(ping_fd, "the ping eventfd")?;
    let pong = crate::shm::take_inherited_fd(pong_fd, "the pong eventfd")?;
    let mut parent_alive = || parent.as_ref().map_or(Ok(()), ParentWatch::check);
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
