//! Shared memory from `shm_open`: an object with a random name, made with `O_EXCL` and
//! mode 0600, unlinked at once, then sized once with `ftruncate`. Once unlinked, nothing
//! names it: it lives while an fd or a mapping of it does, and a crash leaves nothing
//! behind. See shm_open(3), shm_unlink(3), ftruncate(2).
//!
//! The receiver checks the fd before mapping it: it must be a regular file where the OS
//! says so, owned by the peer's user (or ours), and the announced size (rounded up to 16 KiB
//! on macOS, where the size a shm object reports is page-rounded).
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

use std::os::fd::OwnedFd;

use rustix::fs::{ftruncate, Mode};
use rustix::io::Errno;
use rustix::shm;

use super::mapping::{check_received, invalid, SIZE_ROUNDING};
use super::{io_error, Grant, SharedRegion, User};

/// Names tried before giving up: a clash needs another object of the same random name.
const NAME_ATTEMPTS: usize = 16;

/// The name prefix, so that a stray object (there should never be one) says whose it is.
const NAME_PREFIX: &str = "/ringbell-";

/// The name prefix of a large-message region's object, which tells it from a segment.
const MESSAGES_PREFIX: &str = "/ringbell-msg-";

/// A fresh name: `prefix` and 16 hex digits, at most 30 bytes, below macOS's limit of 31.
fn random_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded from the OS's random source once per process (and then
    // varied per instance), which is enough to make names unguessable to a squatter;
    // `O_EXCL` makes a clash an error, never a shared object.
    let mut hasher = RandomState::new().build_hasher();
    // SYNC: Relaxed: a count that only makes each name differ; nothing is published by it.
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("{prefix}{:016x}", hasher.finish())
}

/// The size to give a new shm object that must hold `len` bytes: `len` rounded up to the
/// unit in which the OS may round what it reports (16 KiB on macOS), so that the receiver
/// finds exactly what it expects.
fn object_size(len: usize) -> u64 {
    (len as u64).div_ceil(SIZE_ROUNDING) * SIZE_ROUNDING
}

impl SharedRegion {
    /// Creates a zeroed shm object of `len` bytes, unlinks it, sizes it and maps it.
    /// Returns the mapping and the grant to pass to the peer (drop it once passed).
    pub(crate) fn create(len: usize) -> io::Result<(SharedRegion, Grant)> {
        SharedRegion::create_named(len, NAME_PREFIX)
    }

    /// [`create`](Self::create) for a large-message region: the same object under names
    /// of another prefix, so that a reader of `/proc/<pid>/maps` tells segments and
    /// regions apart.
    pub(crate) fn create_for_messages(len: usize) -> io::Result<(SharedRegion, Grant)> {
        SharedRegion::create_named(len, MESSAGES_PREFIX)
    }

    fn create_named(len: usize, prefix: &str) -> io::Result<(SharedRegion, Grant)> {
        let mut attempts = 0;
        let fd = loop {
            match open_unlinked(&random_name(prefix)) {
                Err(error)
                    if error.raw_os_error() == Some(Errno::EXIST.raw_os_error())
                        && attempts < NAME_ATTEMPTS =>
                {
                    attempts += 1
                }
                other => break other?,
            }
        };
        // Once: macOS refuses a second `ftruncate` of a shm object. In whole 16 KiB there,
        // where the size is rounded to the creator's page (see `mapping::object_size`).
        ftruncate(&fd, object_size(len)).map_err(io_error)?;
        // On Linux the object's pages come from /dev/shm, whose size is limited (64 MiB
        // in a default container): allocate them now, so that running out is an error
        // here rather than a `SIGBUS` when a page is first touched.
        #[cfg(target_os = "linux")]
        rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, len as u64)
            .map_err(io_error)?;
        let region = SharedRegion::map(&fd, len)?;
        Ok((region, Grant::from_fd(fd)))
    }

    /// Maps a shm object received from a peer that runs as `owner`, after checking what
    /// it is (a regular file on a tmpfs on Linux, and not another backend's sealed
    /// memfd), that `owner` (or we) own it, and that it is exactly `expected_len` bytes
    /// long. A failed check gives an `InvalidData` error that says which.
    ///
    /// The owner is checked because whoever owns the object could resize it: it must be
    /// the peer itself, or us. A server that binds as root and drops its privileges
    /// afterwards owns its objects as a user its socket does not show; it should bind
    /// after dropping them.
    pub(crate) fn adopt(
        grant: Grant,
        expected_len: usize,
        owner: User,
    ) -> io::Result<SharedRegion> {
        let fd = grant.into_fd();
        let stat = check_received(&fd, expected_len)?;
        #[cfg(target_os = "linux")]
        check_linux_shm(&fd)?;
        let ours = super::current_user();
        if Some(stat.st_uid) != owner.uid() && Some(stat.st_uid) != ours.uid() {
            return Err(invalid(
                "the shared-memory object belongs to neither the peer's user nor ours",
            ));
        }
        SharedRegion::map(&fd, expected_len)
    }
}

/// Opens a new shm object named `name`, owner-only, and unlinks the name at once: from
/// then on nothing can open it by name, and nothing is left if we crash.
fn open_unlinked(name: &str) -> io::Result<OwnedFd> {
    let flags = shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR;
    let fd = shm::open(name, flags, Mode::RUSR | Mode::WUSR).map_err(io_error)?;
    match shm::unlink(name) {
        // ENOENT: someone of our uid unlinked it first, which leaves nothing behind either.
        Ok(()) | Err(Errno::NOENT) => Ok(fd),
        // The name stays, and there is nothing more to do about it than to say so.
        Err(errno) => Err(io_error(errno)),
    }
}

/// On Linux, what `fstat` cannot tell: the object is on a tmpfs (as `shm_open` makes
/// them), so its pages are memory, not a file system whose reads could hang; and it is
/// not a sealed memfd, which would mean that the peer runs the Linux backend, whose
/// futex wake-ups this backend cannot make (both ends must use the same backend).
#[cfg(target_os = "linux")]
fn check_linux_shm(fd: &OwnedFd) -> io::Result<()> {
    /// `TMPFS_MAGIC` of statfs(2).
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    let fs = rustix::fs::fstatfs(fd).map_err(io_error)?;
    if fs.f_type as u64 != TMPFS_MAGIC {
        return Err(invalid(
            "the shared-memory object is not on a tmpfs (not a POSIX shm object)",
        ));
    }
    let seals = rustix::fs::fcntl_get_seals(fd).unwrap_or(rustix::fs::SealFlags::empty());
    if seals.intersects(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW) {
        return Err(invalid(
            "the shared-memory object is a sealed memfd: the peer uses the Linux backend, \
             and both ends of a connection must use the same backend",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(unsafe_code)]

    use super::*;

    #[cfg(target_os = "linux")]
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
        let names: std::collections::HashSet<String> =
            (0..1000).map(|_| random_name(NAME_PREFIX)).collect();
        assert_eq!(names.len(), 1000);
        assert!(names
            .iter()
            .all(|name| name.len() <= 30 && name.starts_with(NAME_PREFIX)));
        let name = random_name(NAME_PREFIX);
        let _object = open_unlinked(&name).unwrap();
        let reopened = shm::open(name.as_str(), shm::OFlags::RDWR, Mode::empty());
        assert_eq!(
            reopened.unwrap_err(),
            Errno::NOENT,
            "{name} was left behind"
        );
    }

    #[test]
    fn new_objects_are_sized_in_whole_rounding_units() {
        let segment = 4096 + 2 * 128 * 1024;
        #[cfg(target_os = "linux")]
        assert_eq!(object_size(segment), 266_240);
        #[cfg(not(target_os = "linux"))]
        assert_eq!(object_size(segment), 278_528); // 17 × 16 KiB
        assert_eq!(object_size(0), 0);
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

    /// Linux only: what is refused there is a regular file not on a tmpfs, and the Linux
    /// backend's memfd; on macOS, `mapping::check_received` refuses any regular file.
    #[cfg(target_os = "linux")]
    #[test]
    fn wrong_sizes_and_kinds_are_refused_before_mapping() {
        let (_region, grant) = SharedRegion::create(8192).unwrap();
        assert!(refusal(dup(&grant), 4096).contains("size differs"));
        assert!(refusal(dup(&grant), 16384).contains("size differs"));
        let dev_null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(refusal(Grant::from_fd(dev_null), 8192).contains("not a regular file"));
        // A regular file elsewhere than on a tmpfs (the build's target directory).
        let path = std::env::current_exe()
            .unwrap()
            .with_extension("region-test");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(8192).unwrap();
        let on_tmpfs = rustix::fs::fstatfs(&file).unwrap().f_type as u64 == 0x0102_1994;
        let on_disk = refusal(Grant::from_fd(file.into()), 8192);
        let _ = std::fs::remove_file(&path);
        if on_tmpfs {
            eprintln!("note: the build directory is on a tmpfs: the non-tmpfs refusal is not checked here");
        } else {
            assert!(on_disk.contains("not on a tmpfs"), "{on_disk}");
        }
        // The Linux backend's sealed memfd.
        let memfd = rustix::fs::memfd_create(
            "ringbell",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        ftruncate(&memfd, 8192).unwrap();
        rustix::fs::fcntl_add_seals(
            &memfd,
            rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW,
        )
        .unwrap();
        assert!(refusal(Grant::from_fd(memfd), 8192).contains("Linux backend"));
    }
}
