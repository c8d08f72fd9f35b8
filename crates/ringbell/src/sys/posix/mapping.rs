//! The mapping of a shared-memory object, whichever way the object was made (a memfd on
//! Linux, `shm_open` here), and the checks every backend makes of an object received from
//! the peer before mapping it. See mmap(2), munmap(2), fstat(2).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsFd;
use std::ptr::{self, NonNull};

use rustix::fs::{fstat, Stat};
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
/// it, as far as `fstat` tells: its kind (a regular file on Linux; on macOS a shm object,
/// which `fstat` reports with no file-type bits at all, so that a regular file a peer
/// could truncate later, a socket or a device is refused), and its size (see
/// [`size_matches`]). Returns its `fstat`.
pub(in crate::sys) fn check_received(object: impl AsFd, expected_len: usize) -> io::Result<Stat> {
    let stat = fstat(object).map_err(io_error)?;
    #[cfg(target_os = "linux")]
    let (kind_ok, not_that) = (
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile,
        "the shared-memory object is not a regular file",
    );
    #[cfg(not(target_os = "linux"))]
    let (kind_ok, not_that) = (
        u32::from(stat.st_mode) & 0o17_0000 == 0,
        "the shared-memory fd is not a POSIX shm object (a file, socket or device instead)",
    );
    if !kind_ok {
        return Err(invalid(not_that));
    }
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    if !size_matches(size, expected_len as u64, SIZE_ROUNDING) {
        return Err(invalid(
            "the shared-memory object's size differs from the announced size",
        ));
    }
    Ok(stat)
}

/// The unit to which the OS may round a shm object's reported size: none on Linux; the
/// creator's page size on macOS (16 KiB on arm64, 4 KiB under Rosetta: WebKit#6313), so
/// creators size objects in multiples of 16 KiB there (`object_size` in `shm.rs`).
#[cfg(target_os = "linux")]
pub(in crate::sys) const SIZE_ROUNDING: u64 = 1;
#[cfg(not(target_os = "linux"))]
pub(in crate::sys) const SIZE_ROUNDING: u64 = 16 * 1024;

/// Whether an object that reports `size` bytes holds the `expected` ones and no more than
/// rounding to `rounding` explains: exactly `expected` where the OS does not round, at least
/// `expected` and at most `expected` rounded up otherwise.
fn size_matches(size: u64, expected: u64, rounding: u64) -> bool {
    size >= expected && size <= expected.div_ceil(rounding) * rounding
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_match_exactly_where_the_os_does_not_round() {
        assert!(size_matches(266_240, 266_240, 1));
        assert!(!size_matches(266_241, 266_240, 1));
        assert!(!size_matches(266_239, 266_240, 1));
    }

    /// macOS rounds a shm object's `st_size` to the creator's page: 16 KiB on arm64,
    /// 4 KiB under Rosetta. The default segment (4 KiB + 2 × 128 KiB) is no multiple of
    /// either, so creators round it up to 16 KiB, and receivers accept that much more.
    #[test]
    fn sizes_may_be_rounded_up_to_16_kib_and_no_further() {
        let segment = 4096 + 2 * 128 * 1024;
        let rounded = 278_528; // 17 × 16 KiB
        assert!(size_matches(rounded, segment, 16 * 1024));
        assert!(size_matches(segment, segment, 16 * 1024));
        assert!(!size_matches(rounded + 16 * 1024, segment, 16 * 1024));
        assert!(!size_matches(segment - 1, segment, 16 * 1024));
        assert_eq!(segment.div_ceil(16 * 1024) * 16 * 1024, rounded);
    }
}
