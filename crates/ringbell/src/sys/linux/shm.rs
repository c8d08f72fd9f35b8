//! Shared memory: a sealed memfd, mapped shared.
//!
//! See memfd_create(2), fcntl(2) "File Sealing", mmap(2).

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::{self, NonNull};

use rustix::fs::{self, MemfdFlags, SealFlags};
use rustix::mm::{self, MapFlags, ProtFlags};

use super::io_error;

/// The seals both sides insist on: the size can never change, and no seal can be removed
/// or added later.
fn required_seals() -> SealFlags {
    SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL
}

/// A shared, read-write mapping of a whole memfd.
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
    /// Creates a zeroed memfd of `len` bytes, seals its size, and maps it. Returns the
    /// mapping and the fd to pass to the peer (drop it once passed).
    pub(crate) fn create(len: usize) -> io::Result<(SharedRegion, OwnedFd)> {
        let fd = fs::memfd_create("ringbell", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(io_error)?;
        fs::ftruncate(&fd, len as u64).map_err(io_error)?;
        fs::fcntl_add_seals(&fd, required_seals()).map_err(io_error)?;
        let region = Self::map(&fd, len)?;
        Ok((region, fd))
    }

    /// Maps a memfd received from a peer, after checking that it is a regular file sealed
    /// against resizing and exactly `expected_len` bytes long. A check failing gives an
    /// `InvalidData` error that says which.
    pub(crate) fn open(fd: &OwnedFd, expected_len: usize) -> io::Result<SharedRegion> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let seals = fs::fcntl_get_seals(fd)
            .map_err(|_| invalid("the shared-memory fd is not a sealable memfd"))?;
        if !seals.contains(required_seals()) {
            return Err(invalid(
                "the shared-memory fd is not sealed against resizing",
            ));
        }
        let stat = fs::fstat(fd).map_err(io_error)?;
        if fs::FileType::from_raw_mode(stat.st_mode) != fs::FileType::RegularFile {
            return Err(invalid("the shared-memory fd is not a regular file"));
        }
        if u64::try_from(stat.st_size).ok() != Some(expected_len as u64) {
            return Err(invalid(
                "the shared-memory object's size differs from the announced size",
            ));
        }
        Self::map(fd, expected_len)
    }

    fn map(fd: &OwnedFd, len: usize) -> io::Result<SharedRegion> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty shared region",
            ));
        }
        // SAFETY: a fresh mapping at an address the kernel picks cannot alias any Rust
        // object; the fd's size is sealed at `len`, so every byte stays backed.
        let ptr = unsafe {
            mm::mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
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

    /// An fd a hostile server might pass instead of a proper segment.
    fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
        let fd = fs::memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        fs::ftruncate(&fd, len).unwrap();
        if !seals.is_empty() {
            fs::fcntl_add_seals(&fd, seals).unwrap();
        }
        fd
    }

    fn refusal(fd: &OwnedFd, len: usize) -> String {
        match SharedRegion::open(fd, len) {
            Ok(_) => panic!("a bad segment was mapped"),
            Err(error) => {
                assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
                error.to_string()
            }
        }
    }

    #[test]
    fn a_proper_segment_opens() {
        let (_region, fd) = SharedRegion::create(8192).unwrap();
        assert_eq!(SharedRegion::open(&fd, 8192).unwrap().len(), 8192);
    }

    /// A peer that could shrink the object after we mapped it would turn our reads into
    /// `SIGBUS`: unsealed, partly sealed, wrongly sized and non-memfd objects are refused
    /// before mapping.
    #[test]
    fn unsafe_segments_are_refused_before_mapping() {
        assert!(refusal(&memfd(8192, SealFlags::empty()), 8192).contains("not sealed"));
        let grow_only = SealFlags::GROW | SealFlags::SEAL;
        assert!(refusal(&memfd(8192, grow_only), 8192).contains("not sealed"));
        assert!(refusal(&memfd(4096, required_seals()), 8192).contains("size differs"));
        let dev_null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(refusal(&dev_null, 8192).contains("not a sealable memfd"));
    }
}
