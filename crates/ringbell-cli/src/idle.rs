//! CPU used by an idle, connected pair, read before and after a quiet period: on Linux from
//! `/proc/<pid>/stat` (user + system time, in clock ticks), on Windows from
//! `GetProcessTimes` (in 100 ns units, advanced by the clock interrupt).
//!
//! macOS would need `proc_pidinfo` (`PROC_PIDTASKINFO`), which rustix does not wrap; until
//! then the figure is left out there, and [`NOT_ON_THIS_OS`] says why.

use std::time::{Duration, Instant};

use ringbell::{Connection, Error};

use crate::error::CliError;

/// Why the idle-CPU figures are left out on this OS; `None` where they are measured.
pub const NOT_ON_THIS_OS: Option<&str> = if cfg!(any(target_os = "linux", windows)) {
    None
} else {
    Some("it reads each process's CPU time from /proc/<pid>/stat, which this OS does not have")
};

/// What an idle period cost each side.
#[derive(Debug, Clone, Copy)]
pub struct IdleRun {
    pub elapsed: Duration,
    /// CPU time of the server process, as a percentage of one core.
    pub server_percent: f64,
    /// CPU time of this (client) process, as a percentage of one core.
    pub client_percent: f64,
    /// The resolution of both figures: one clock tick, as a percentage of one core.
    pub resolution_percent: f64,
}

/// How many of [`cpu_ticks`]'s units make a second: the kernel's clock ticks on Linux
/// (sysconf(_SC_CLK_TCK)), 10,000,000 on Windows (100 ns units).
pub fn cpu_ticks_per_second() -> f64 {
    #[cfg(unix)]
    return rustix::param::clock_ticks_per_second() as f64;
    #[cfg(windows)]
    return 1e7;
}

/// How many of [`cpu_ticks`]'s units the figure moves by at least, which bounds what a
/// short measurement can see: one tick on Linux; on Windows, whose times count in 100 ns
/// units, the clock tick (`crate::windows::cpu_time_resolution`).
pub fn cpu_tick_resolution() -> u64 {
    #[cfg(unix)]
    return 1;
    #[cfg(windows)]
    return crate::windows::cpu_time_resolution().as_nanos() as u64 / 100;
}

/// User plus kernel CPU time of process `pid` so far, in 100 ns units.
#[cfg(windows)]
pub fn cpu_ticks(pid: u32) -> Result<u64, CliError> {
    use crate::error::Context;
    let time = crate::windows::Process::open(pid)
        .and_then(|process| process.cpu_time())
        .context(format_args!("reading the CPU time of process {pid}"))?;
    Ok((time.as_nanos() / 100) as u64)
}

/// User plus system CPU time of process `pid` so far, in clock ticks.
#[cfg(unix)]
pub fn cpu_ticks(pid: u32) -> Result<u64, CliError> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .map_err(|error| CliError::new(format!("reading {path}: {error}")))?;
    // The command name (field 2) may contain spaces; the fields after it are plain.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| CliError::new(format!("{path} has no command name")))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime and stime are fields 14 and 15.
    let field = |index: usize| -> Result<u64, CliError> {
        fields
            .get(index)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| CliError::new(format!("{path}: field {} is missing", index + 3)))
    };
    Ok(field(11)? + field(12)?)
}

/// CPU time that every thread of process `pid` has run so far, in nanoseconds (the first
/// field of each `/proc/<pid>/task/<tid>/schedstat`): fine enough to charge a single
/// message, where `/proc/<pid>/stat` counts clock ticks of 10 ms.
#[cfg(unix)]
pub fn cpu_ns_of_process(pid: u32) -> Result<u64, CliError> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir)
        .map_err(|error| CliError::new(format!("reading {dir}: {error}")))?;
    let mut total = 0;
    for task in tasks.flatten() {
        // A thread that ended meanwhile has taken its time with it; skip it.
        if let Ok(ns) = schedstat_ns(&task.path().join("schedstat")) {
            total += ns;
        }
    }
    Ok(total)
}

/// CPU time the calling thread has run so far, in nanoseconds.
#[cfg(unix)]
pub fn cpu_ns_of_this_thread() -> Result<u64, CliError> {
    schedstat_ns(std::path::Path::new("/proc/thread-self/schedstat"))
}

#[cfg(unix)]
fn schedstat_ns(path: &std::path::Path) -> Result<u64, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::new(format!("reading {}: {error}", path.display())))?;
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .ok_or_else(|| CliError::new(format!("{} has no run time", path.display())))
}

/// Leaves `connection` idle for `period`: this process waits in `recv` for a message that
/// never comes, while the server at `server_pid` waits for the next request. Both use the
/// connection's configured wait strategy.
pub fn measure(
    connection: &mut Connection,
    server_pid: u32,
    period: Duration,
) -> Result<IdleRun, CliError> {
    let client_pid = std::process::id();
    let (server_before, client_before) = (cpu_ticks(server_pid)?, cpu_ticks(client_pid)?);
    let started = Instant::now();
    let mut buf = Vec::new();
    match connection.recv(&mut buf, Some(period)) {
        Err(Error::Timeout) => {}
        Ok(len) => {
            return Err(CliError::new(format!(
                "the idle server sent {len} unexpected bytes"
            )))
        }
        Err(error) => return Err(error.into()),
    }
    let elapsed = started.elapsed();
    let (server_after, client_after) = (cpu_ticks(server_pid)?, cpu_ticks(client_pid)?);
    let ticks_per_second = cpu_ticks_per_second();
    let percent = |ticks: u64| ticks as f64 / ticks_per_second / elapsed.as_secs_f64() * 100.0;
    Ok(IdleRun {
        elapsed,
        server_percent: percent(server_after - server_before),
        client_percent: percent(client_after - client_before),
        resolution_percent: percent(cpu_tick_resolution()),
    })
}
