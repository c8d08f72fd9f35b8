//! Shared memory on Linux: a sealed memfd. It has no name in any file system, dies with
//! its last fd and mapping, and its size is sealed, so the peer can never shrink it under
//! our mapping (which would make our next access a `SIGBUS`).
//!
//! See memfd_create(2), fcntl(2) "File Sealing".

use std::io;

use rustix::fs::{self, MemfdFlags, SealFlags};

use super::super::posix::{check_received, invalid, Grant, SharedRegion, User};
use super::io_error;

/// The seals both sides insist on: the size can never change, and no seal can be removed
/// or added later.
fn required_seals() -> SealFlags {
    SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL
}

impl SharedRegion {
    /// Creates a zeroed memfd of `len` bytes, seals its size, and maps it. Returns the
    /// mapping and the grant to pass to the peer (drop it once passed).
    pub(crate) fn create(len: usize) -> io::Result<(SharedRegion, Grant)> {
        SharedRegion::create_named(len, "ringbell")
    }

    /// [`create`](Self::create) for a large-message region: the same object under another
    /// name (`/memfd:ringbell-messages` in `/proc/<pid>/maps`), so that a reader of the
    /// maps tells segments and regions apart.
    pub(crate) fn create_for_messages(len: usize) -> io::Result<(SharedRegion, Grant)> {
        SharedRegion::create_named(len, "ringbell-messages")
    }

    fn create_named(len: usize, name: &str) -> io::Result<(SharedRegion, Grant)> {
        let fd = fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(io_error)?;
        fs::ftruncate(&fd, len as u64).map_err(io_error)?;
        fs::fcntl_add_seals(&fd, required_seals()).map_err(io_error)?;
        let region = SharedRegion::map(&fd, len)?;
        Ok((region, Grant::from_fd(fd)))
    }

    /// Maps a memfd received from the peer, after checking that it is sealed against
    /// resizing, a regular file, and exactly `expected_len` bytes long. A failed check
    /// gives an `InvalidData` error that says which. `_owner` is not checked: the seals
    /// already make the object safe to map whoever owns it (and a server that binds as
    /// root, then drops privileges, owns its memfds as another user than its socket says).
    pub(crate) fn adopt(
        grant: Grant,
        expected_len: usize,
        _owner: User,
    ) -> io::Result<SharedRegion> {
        let fd = grant.into_fd();
        let seals = fs::fcntl_get_seals(&fd).map_err(|_| {
            invalid(
                "the shared-memory fd is not a sealable memfd (is the peer using another backend?)",
            )
        })?;
        if !seals.contains(required_seals()) {
            return Err(invalid(
                "the shared-memory fd is not sealed against resizing (is the peer using another backend?)",
            ));
        }
        check_received(&fd, expected_len)?;
        SharedRegion::map(&fd, expected_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    /// An fd a hostile server might pass instead of a proper segment.
    fn memfd(len: u64, seals: SealFlags) -> Grant {
        let fd = fs::memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        fs::ftruncate(&fd, len).unwrap();
        if !seals.is_empty() {
            fs::fcntl_add_seals(&fd, seals).unwrap();
        }
        Grant::from_fd(fd)
    }

    fn refusal(grant: Grant, len: usize) -> String {
        match SharedRegion::adopt(grant, len, crate::sys::current_user()) {
            Ok(_) => panic!("a bad segment was mapped"),
            Err(error) => {
                assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
                error.to_string()
            }
        }
    }

    #[test]
    fn a_proper_segment_opens() {
        let (_region, grant) = SharedRegion::create(8192).unwrap();
        let copy = Grant::from_fd(grant.as_fd().try_clone_to_owned().unwrap());
        assert_eq!(
            SharedRegion::adopt(copy, 8192, crate::sys::current_user())
                .unwrap()
                .len(),
            8192
        );
    }

    /// A peer that could shrink the object after we mapped it would turn our reads into
    /// `SIGBUS`: unsealed, partly sealed, wrongly sized and non-memfd objects are refused
    /// before mapping.
    #[test]
    fn unsafe_segments_are_refused_before_mapping() {
        assert!(refusal(memfd(8192, SealFlags::empty()), 8192).contains("not sealed"));
        let grow_only = SealFlags::GROW | SealFlags::SEAL;
        assert!(refusal(memfd(8192, grow_only), 8192).contains("not sealed"));
        assert!(refusal(memfd(4096, required_seals()), 8192).contains("size differs"));
        let dev_null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(refusal(Grant::from_fd(dev_null), 8192).contains("not a sealable memfd"));
    }
}
