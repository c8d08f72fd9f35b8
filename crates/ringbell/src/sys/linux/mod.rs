//! The Linux backend: the POSIX backend (`sys/posix/`) with its two weakest parts
//! replaced by what Linux does better: a sealed memfd instead of a POSIX shm object, whose
//! size a peer cannot change ([`memfd`]), and the shared futex, so that a blocking side
//! sleeps on the ring's own word instead of on a socket ([`futex`]).

mod futex;
mod memfd;

pub(crate) use super::posix::SharedRegion;
pub(crate) use futex::shared_wait;

/// This backend's name, for reports.
pub(crate) const BACKEND: &str = "linux";

/// Turns a rustix errno into a std error.
fn io_error(errno: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(errno)
}
