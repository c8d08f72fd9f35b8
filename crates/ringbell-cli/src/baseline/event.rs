//! The kernel floor on Windows: a ping-pong on two unnamed auto-reset events, each round a
//! `SetEvent` that wakes the other process blocked in `WaitForMultipleObjects`, and its
//! `SetEvent` back. No payload and no shared memory: the cost of a cross-process wake-up
//! through the kernel, which is what ringbell's Windows backend pays when a side sleeps
//! (its doorbells are such events). Under Wine each wake-up also goes through
//! `wineserver`, so the figure is Wine's, not Windows's.
//!
//! Each wait also watches the other process, so that neither side can sleep for ever on a
//! peer that died; see `crate::windows::wait_event_or_exit`.

use std::os::windows::io::AsHandle;
use std::time::Duration;

use super::PEER_EXIT_TIMEOUT;
use crate::child::{spawn_inheriting_handles, ParentWatch, PeerLauncher};
use crate::error::{CliError, Context};
use crate::stats::LatencyRun;
use crate::windows::{
    auto_reset_event, handle_value, set_event, take_inherited_handle, wait_event_or_exit, Woken,
};

/// The longest a wait sleeps before it looks again (the other process's end ends it at
/// once; this only bounds a wait on a process handle that never fires).
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// What the row is called.
pub const RAW_EVENT: &str = "raw event";

/// Starts an `__event-peer` and times `count` round trips after `warmup`.
pub fn event_ping_pong(
    launcher: &PeerLauncher,
    warmup: u64,
    count: u64,
) -> Result<LatencyRun, CliError> {
    let ping = auto_reset_event().context("creating an event")?;
    let pong = auto_reset_event().context("creating an event")?;
    let args = [
        "__event-peer".into(),
        "--ping-fd".into(),
        handle_value(ping.as_handle()).to_string().into(),
        "--pong-fd".into(),
        handle_value(pong.as_handle()).to_string().into(),
        "--count".into(),
        (warmup + count).to_string().into(),
    ];
    let peer = spawn_inheriting_handles(
        launcher,
        "raw event peer",
        &args,
        &[ping.as_handle(), pong.as_handle()],
    )?;
    let round_trip = || -> Result<(), CliError> {
        set_event(ping.as_handle()).context("setting the ping event")?;
        loop {
            match wait_event_or_exit(pong.as_handle(), peer.process_handle(), WAIT_SLICE)
                .context("waiting for the pong event")?
            {
                Woken::Event => return Ok(()),
                Woken::Exited => {
                    return Err(CliError::new(
                        "the raw event peer exited before it answered",
                    ))
                }
                Woken::TimedOut => {}
            }
        }
    };
    let run = super::time_each(warmup, count, |_| round_trip())?;
    peer.finish(PEER_EXIT_TIMEOUT)?;
    Ok(run)
}

/// `ringbell __event-peer`: answers `rounds` pings on the inherited events.
pub fn run_event_peer(
    ping: i32,
    pong: i32,
    rounds: u64,
    parent: Option<ParentWatch>,
) -> Result<(), CliError> {
    // Owning one handle twice would close it twice.
    if ping == pong {
        return Err(CliError::new(format!(
            "--ping-fd and --pong-fd are both {ping}: the two events differ"
        )));
    }
    let ping = take_inherited_handle(i64::from(ping), "the ping event").map_err(CliError::new)?;
    let pong = take_inherited_handle(i64::from(pong), "the pong event").map_err(CliError::new)?;
    let parent = parent.ok_or_else(|| CliError::new("__event-peer needs --parent-pid"))?;
    let parent_process = parent.process();
    for _ in 0..rounds {
        loop {
            match wait_event_or_exit(ping.as_handle(), parent_process.handle(), WAIT_SLICE)
                .context("waiting for the ping event")?
            {
                Woken::Event => break,
                Woken::Exited => return Err(CliError::new("the parent process exited; stopping")),
                Woken::TimedOut => {}
            }
        }
        set_event(pong.as_handle()).context("setting the pong event")?;
    }
    Ok(())
}
