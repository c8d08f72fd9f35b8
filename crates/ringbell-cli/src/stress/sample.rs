//! The server's resources as `/proc` shows them: its resident memory and open fds at one
//! moment ([`ServerSample`]), fields of its status file, and its fds, mappings and threads
//! beside their limits for an error message.
//!
//! Only Linux has `/proc/<pid>/`. macOS would need `proc_pidinfo` (`PROC_PIDTASKINFO`,
//! `PROC_PIDLISTFDS`), which rustix does not wrap; until then a stress run, whose rounds
//! wait on and report these samples, is left out there ([`NOT_ON_THIS_OS`]).

#[cfg(not(windows))]
use std::fs;

use crate::error::{CliError, Context};

/// Why a stress run is left out on this OS; `None` where it runs.
pub const NOT_ON_THIS_OS: Option<&str> = if cfg!(any(target_os = "linux", windows)) {
    None
} else {
    Some(
        "it samples the server's memory and open fds from /proc/<pid>/, which this OS \
         does not have",
    )
};

/// What the server's memory figure is called here: Linux's resident set, or Windows's
/// working set (the same idea: the pages in RAM now).
#[cfg(not(windows))]
pub(super) const MEMORY: &str = "RSS";
#[cfg(windows)]
pub(super) const MEMORY: &str = "working set";
/// What the server's open objects are called here: fds, or Windows's handles.
#[cfg(not(windows))]
pub(super) const HANDLES: &str = "fds";
#[cfg(windows)]
pub(super) const HANDLES: &str = "handles";

/// The server's memory and fds at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ServerSample {
    pub(super) rss_kib: u64,
    pub(super) fds: u64,
}

impl ServerSample {
    /// On Windows: the working set (`GetProcessMemoryInfo`) and the handles (counted in the
    /// system handle table: Wine answers 0 to `GetProcessHandleCount`); `fds` holds handles.
    #[cfg(windows)]
    pub(super) fn read(pid: u32) -> Result<ServerSample, CliError> {
        let process = crate::windows::Process::open(pid)
            .context(format_args!("opening the server process {pid}"))?;
        let working_set = process
            .working_set()
            .context(format_args!("reading the memory of process {pid}"))?;
        let handles = process
            .handle_count()
            .context(format_args!("counting the handles of process {pid}"))?;
        Ok(ServerSample {
            rss_kib: working_set / 1024,
            fds: handles,
        })
    }

    #[cfg(not(windows))]
    pub(super) fn read(pid: u32) -> Result<ServerSample, CliError> {
        let status = proc_status(pid)?;
        let rss_kib = status_field(&status, "VmRSS:")
            .ok_or_else(|| CliError::new(format!("/proc/{pid}/status has no VmRSS")))?;
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .context(format_args!("listing /proc/{pid}/fd"))?
            .count() as u64;
        Ok(ServerSample { rss_kib, fds })
    }

    pub(super) fn max(self, other: ServerSample) -> ServerSample {
        ServerSample {
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
        }
    }
}

#[cfg(not(windows))]
fn proc_status(pid: u32) -> Result<String, CliError> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .context(format_args!("reading /proc/{pid}/status"))
}

/// The number after `key` in a /proc/<pid>/status text (`VmRSS:   1234 kB` → 1234).
#[cfg_attr(windows, allow(dead_code, reason = "Windows has no /proc"))]
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// The server's handles and memory, as one phrase (Windows has no fd, mapping or thread
/// limits like Linux's to set them beside).
#[cfg(windows)]
pub(super) fn server_limits(pid: u32) -> Option<String> {
    let sample = ServerSample::read(pid).ok()?;
    Some(format!(
        "{} handles open, a working set of {} KiB",
        sample.fds, sample.rss_kib
    ))
}

/// The server's fds, mappings and threads beside their limits, as one phrase.
#[cfg(not(windows))]
pub(super) fn server_limits(pid: u32) -> Option<String> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let fd_limit = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_owned();
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|maps| maps.lines().count())
        .unwrap_or(0);
    let max_maps = fs::read_to_string("/proc/sys/vm/max_map_count")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let threads = proc_status(pid)
        .ok()
        .and_then(|status| status_field(&status, "Threads:"))
        .unwrap_or(0);
    Some(format!(
        "{fds} fds open of its limit of {fd_limit} (3 per ringbell connection; \
         `ringbell stress --help` says how to raise it), {maps} memory mappings of \
         vm.max_map_count {max_maps}, {threads} threads"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        not(target_os = "linux"),
        ignore = "reads /proc/self, which only Linux has"
    )]
    fn status_fields_and_server_samples_read() {
        let status = "Name:\tringbell\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(2048));
        assert_eq!(status_field(status, "Threads:"), Some(3));
        assert_eq!(status_field(status, "VmSwap:"), None);
        let own = ServerSample::read(std::process::id()).unwrap();
        assert!(own.rss_kib > 0 && own.fds >= 3, "{own:?}");
    }

    /// On Windows the same sample comes from the working set and the handles; an event
    /// made here shows as one handle more (under Wine, counted in the system handle table).
    /// Other tests' threads open and close handles meanwhile, so one of a few tries must see
    /// exactly one more.
    #[cfg(windows)]
    #[test]
    fn windows_samples_count_memory_and_handles() {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let before = ServerSample::read(std::process::id()).unwrap();
            assert!(before.rss_kib > 0 && before.fds > 0, "{before:?}");
            let event = crate::windows::auto_reset_event().unwrap();
            let with_event = ServerSample::read(std::process::id()).unwrap();
            drop(event);
            if with_event.fds == before.fds + 1 {
                return;
            }
            seen.push((before.fds, with_event.fds));
        }
        panic!("no try saw the event as one handle more: {seen:?}");
    }
}
