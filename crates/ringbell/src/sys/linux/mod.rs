//! The Linux backend: memfd + seals, shared futexes, socket-pair doorbells, and a Unix stream
//! socket with `SCM_RIGHTS` and `SO_PEERCRED`, all through rustix.

#![allow(unsafe_code)]

mod doorbell;
mod futex;
mod shm;
mod socket;

pub(crate) use doorbell::{doorbell_pair, Doorbell, DoorbellRinger};
pub(crate) use futex::OsFutex;
pub(crate) use shm::SharedRegion;
pub(crate) use socket::{ControlListener, ControlStream};

/// The real user id of this process (`getuid(2)`).
pub(crate) fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Turns a rustix errno into a std error.
fn io_error(errno: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(errno)
}
