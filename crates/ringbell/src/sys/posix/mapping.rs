//! The mapping of a shared-memory object, whichever way the object was made (a memfd on
//! Linux, `shm_open` here). See mmap(2), munmap(2).

use std::io;
use std::os::fd::AsFd;
use std::ptr::{self, NonNull};

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

impl SharedRegion {
    /// Maps the first `len` bytes of `object`, which the caller has checked are there and
    /// will stay there.
    pub(crate) fn map(object: impl AsFd, len: usize) -> io::Result<SharedRegion> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty shared region",
            ));
        }
        // SAFETY: a fresh mapping at an address the kernel picks cannot alias any Rust
        // object; the caller checked that the object has `len` bytes and cannot lose
        // them (see this function's docs).
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
