//! The Linux backend: memfd + seals, shared futexes, socket-pair doorbells, and a Unix stream
//! socket with `SCM_RIGHTS` and `SO_PEERCRED`, all through rustix.

#![allow(unsafe_code)]

mod doorbell;
mod futex;
#[cfg(feature = "tokio")]
mod poller;
mod shm;
mod socket;

pub(crate) use doorbell::{doorbell_pair, Doorbell, DoorbellRinger};
pub(crate) use futex::OsFutex;
#[cfg(feature = "tokio")]
pub(crate) use poller::{Poller, Stirred};
pub(crate) use shm::SharedRegion;
pub(crate) use socket::{is_out_of_fds, poll_readable, ControlListener, ControlStream};

/// The real user id of this process (`getuid(2)`).
pub(crate) fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Raises this process's soft limit on open files (`RLIMIT_NOFILE`) to its hard limit, and
/// returns the limit now in force (`None`: unlimited). A server holds three fds per
/// connection, and the usual soft limit of 1,024 would stop it near 300 clients. See
/// getrlimit(2).
pub(crate) fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// Turns a rustix errno into a std error.
fn io_error(errno: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(errno)
}
