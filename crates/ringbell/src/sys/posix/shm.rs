//! Shared memory from `shm_open`: an object with a random name, made with `O_EXCL` and
//! mode 0600, unlinked at once, then sized once with `ftruncate`. Once unlinked, nothing
//! names it: it lives while an fd or a mapping of it does, and a crash leaves nothing
//! behind. See shm_open(3), shm_unlink(3), ftruncate(2).
//!
//! The receiver checks the fd before mapping it: it must be a regular file where the OS
//! says so, owned by the peer's user (or ours), and exactly the announced size.
//!
//! The weakness of this backend on Linux, which its own backend does not have: a POSIX shm
//! object there is a tmpfs file that anyone holding an fd to it may `ftruncate`, so a peer
//! of our uid could shrink the region under our mapping and turn our next access into a
//! `SIGBUS`. Nothing short of the memfd seals (`sys/linux/memfd.rs`) prevents that. On
//! macOS the object accepts only one `ftruncate` [xnu `bsd/kern/posix_shm.c`,
//! `pshm_truncate`], which is the seal this needs. The test of the `SIGBUS` defence is
//! therefore gated off for this backend on Linux, and says why.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{fstat, ftruncate, FileType, Mode};
use rustix::io::Errno;
use rustix::shm;

use super::{io_error, Grant, SharedRegion, User};

/// Names tried before giving up: a clash needs another object of the same random name.
const NAME_ATTEMPTS: usize = 16;

/// The name prefix, so that a stray object (there should never be one) says whose it is.
const NAME_PREFIX: &str = "/ringbell-";

/// A fresh name: the prefix and 16 hex digits, 26 bytes, below macOS's limit of 31.
fn random_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded from the OS's random source once per process (and then
    // varied per instance), which is enough to make names unguessable to a squatter;
    // `O_EXCL` makes a clash an error, never a shared object.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("{NAME_PREFIX}{:016x}", hasher.finish())
}

impl SharedRegion {
    /// Creates a zeroed shm object of `len` bytes, unlinks it, sizes it and maps it.
    /// Returns the mapping and the grant to pass to the peer (drop it once passed).
    pub(crate) fn create(len: usize) -> io::Result<(SharedRegion, Grant)> {
        let mut attempts = 0;
        let fd = loop {
            let name = random_name();
            let flags = shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR;
            match shm::open(name.as_str(), flags, Mode::RUSR | Mode::WUSR) {
                Ok(fd) => {
                    // At once: from here on, nothing can open it by name, and nothing is
                    // left if we crash. If the name cannot go, neither can the object.
                    shm::unlink(name.as_str()).map_err(io_error)?;
                    break fd;
                }
                Err(Errno::EXIST) if attempts < NAME_ATTEMPTS => attempts += 1,
                Err(errno) => return Err(io_error(errno)),
            }
        };
        // Once: macOS refuses a second `ftruncate` of a shm object.
        ftruncate(&fd, len as u64).map_err(io_error)?;
        let region = SharedRegion::map(&fd, len)?;
        Ok((region, Grant::from_fd(fd)))
    }

    /// Maps a shm object received from a peer that runs as `owner`, after checking that it
    /// is a regular file, that `owner` (or we) own it, and that it is exactly
    /// `expected_len` bytes long. A failed check gives an `InvalidData` error that says
    /// which.
    pub(crate) fn adopt(
        grant: Grant,
        expected_len: usize,
        owner: User,
    ) -> io::Result<SharedRegion> {
        let fd = grant.into_fd();
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let stat = fstat(&fd).map_err(io_error)?;
        // On Linux a shm object is a tmpfs file; macOS reports no type bits for one (the
        // macOS backend checks it with `proc_pidfdinfo` instead).
        #[cfg(target_os = "linux")]
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(invalid(
                "the shared-memory object is not a regular file (is the peer using another backend?)",
            ));
        }
        let ours = super::current_user();
        if Some(stat.st_uid) != owner.uid() && Some(stat.st_uid) != ours.uid() {
            return Err(invalid(
                "the shared-memory object belongs to neither the peer's user nor ours",
            ));
        }
        if u64::try_from(stat.st_size).ok() != Some(expected_len as u64) {
            return Err(invalid(
                "the shared-memory object's size differs from the announced size",
            ));
        }
        SharedRegion::map(&fd, expected_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(grant: Grant, len: usize) -> String {
        match SharedRegion::adopt(grant, len, crate::sys::current_user()) {
            Ok(_) => panic!("a bad segment was mapped"),
            Err(error) => {
                assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
                error.to_string()
            }
        }
    }

    fn dup(grant: &Grant) -> Grant {
        use std::os::fd::AsFd;
        Grant::from_fd(grant.as_fd().try_clone_to_owned().unwrap())
    }

    #[test]
    fn names_are_short_unique_and_leave_nothing_behind() {
        let names: std::collections::HashSet<String> = (0..1000).map(|_| random_name()).collect();
        assert_eq!(names.len(), 1000);
        assert!(names
            .iter()
            .all(|name| name.len() <= 30 && name.starts_with(NAME_PREFIX)));
        let (region, grant) = SharedRegion::create(8192).unwrap();
        let listed: Vec<_> = std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("ringbell-"))
            .collect();
        assert!(listed.is_empty(), "a name was left in /dev/shm: {listed:?}");
        drop((region, grant));
    }

    #[test]
    fn a_proper_segment_opens_and_is_shared() {
        let (region, grant) = SharedRegion::create(8192).unwrap();
        let other = SharedRegion::adopt(dup(&grant), 8192, crate::sys::current_user()).unwrap();
        assert_eq!(other.len(), 8192);
        // SAFETY: both mappings are ours, 8192 bytes long, and nothing else uses them.
        unsafe {
            region.as_ptr().add(100).write(42);
            assert_eq!(other.as_ptr().add(100).read(), 42);
        }
    }

    #[test]
    fn wrong_sizes_and_kinds_are_refused_before_mapping() {
        let (_region, grant) = SharedRegion::create(8192).unwrap();
        assert!(refusal(dup(&grant), 4096).contains("size differs"));
        assert!(refusal(dup(&grant), 16384).contains("size differs"));
        let dev_null: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(refusal(Grant::from_fd(dev_null), 8192).contains("not a regular file"));
    }
}
