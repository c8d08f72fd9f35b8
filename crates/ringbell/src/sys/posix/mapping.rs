//! The mapping of a shared-memory object, whichever way the object was made (a memfd on
//! Linux, `shm_open` here), and the checks every backend makes of an object received from
//! the peer before mapping it. See mmap(2), munmap(2), fstat(2).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsFd;
use std::ptr::{self, NonNull};

use rustix::fs::{fstat, FileType, Stat};
use rustix::mm::{self, MapFlags, ProtFlags};

use super::io_error;

/// A shared, read-write mapping of the first `len` bytes of a shared-memory object. How
/// the object is made, and checked when it comes from the peer, is the backend's
/// (`SharedRegion::create` and `SharedRegion::adopt` in `posix/shm.rs` and
/// `linux/memfd.rs`).
#[derive(Debug)]
pub(crate) struct SharedRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping belongs to the process, not to a thread; all access to its contents
// goes through atomics or raw copies made by the owner of the `SharedRegion`.
unsafe impl Send for SharedRegion {}
// SAFETY: as above; `&SharedRegion` exposes only the pointer and the length.
unsafe impl Sync for SharedRegion {}

/// An `InvalidData` error about a received object.
pub(in crate::sys) fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The checks every backend makes of an object received from the peer, before it maps
/// it: a regular file (on Linux; macOS reports no type for a shm object, and its backend
/// checks the kind otherwise), exactly `expected_len` bytes long. Returns its `fstat`.
pub(in crate::sys) fn check_received(object: impl AsFd, expected_len: usize) -> io::Result<Stat> {
    let stat = fstat(object).map_err(io_error)?;
    #[cfg(target_os = "linux")]
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(invalid("the shared-memory object is not a regular file"));
    }
    if u64::try_from(stat.st_size).ok() != Some(expected_len as u64) {
        return Err(invalid(
            "the shared-memory object's size differs from the announced size",
        ));
    }
    Ok(stat)
}

impl SharedRegion {
    /// Maps the first `len` bytes of `object`.
    ///
    /// Sound whatever `object` is: the mapping is new, at an address the kernel picks. But
    /// an access past the end of the object raises `SIGBUS`, which kills the process, so
    /// the callers make sure first that the object has `len` bytes and that nobody can
    /// shrink it (the seals of `linux/memfd.rs`; macOS's one `ftruncate`); the one place
    /// where a peer still can is the POSIX backend on Linux (see `posix/shm.rs`).
    pub(in crate::sys) fn map(object: impl AsFd, len: usize) -> io::Result<SharedRegion> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty shared region",
            ));
        }
        // SAFETY: a fresh mapping at an address the kernel picks cannot alias any Rust
        // object, and is unmapped only by `drop`.
        let ptr = unsafe {
            mm::mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                object,
                0,
            )
        }
        .map_err(io_error)?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(SharedRegion { ptr, len })
    }

    /// The first byte of the mapping (page-aligned).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The mapping's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: we own this mapping, made by `map` with this length; everything that
        // points into it is owned by the same connection and dropped with it.
        let _ = unsafe { mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
