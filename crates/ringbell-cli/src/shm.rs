//! The shared page behind the raw baselines, mapped shared by the demo and by its
//! `__shm-peer` child, holding nothing but the atomic words they ping-pong on. The child
//! inherits it as an fd across `exec`: a sealed memfd on Linux; elsewhere (macOS) a POSIX
//! shm object, unlinked at once, which needs no seals because it accepts only one
//! `ftruncate` (see [`object`]).
//!
//! This is the only module of the tool that needs `unsafe`: mapping memory, turning the
//! mapping into a reference, and taking ownership of an inherited file descriptor.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{null_mut, NonNull};
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::fs::fstat;
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

use crate::error::{CliError, Context};

/// One word alone on 128 bytes: two 64-byte cache lines, because x86's adjacent-line
/// prefetcher moves lines in pairs, and a neighbour on the pair would bounce with it.
#[derive(Debug)]
#[repr(C, align(128))]
pub struct CacheLine<T> {
    pub value: T,
}

/// The words of the raw ping-pong. Each is written by one side only: "ping" by the demo,
/// "pong" by the peer. The spin words count round trips in 64 bits; the futex words are
/// 32 bits because that is what a futex is.
#[derive(Debug)]
#[repr(C)]
pub struct PingPongWords {
    pub spin_ping: CacheLine<AtomicU64>,
    pub spin_pong: CacheLine<AtomicU64>,
    pub futex_ping: CacheLine<AtomicU32>,
    pub futex_pong: CacheLine<AtomicU32>,
}

/// Bytes mapped: one page on every Linux target. (The object may be larger: see
/// [`object`].)
const SEGMENT_LEN: usize = 4096;

const _: () = assert!(size_of::<PingPongWords>() == 4 * 128);
const _: () = assert!(align_of::<PingPongWords>() == 128);
const _: () = assert!(size_of::<PingPongWords>() <= SEGMENT_LEN);

/// How the shared object is made and checked, per OS; the mapping is the same everywhere.
#[cfg(target_os = "linux")]
mod object {
    use std::os::fd::OwnedFd;

    use rustix::fs::{fcntl_add_seals, fcntl_get_seals, ftruncate, memfd_create};
    use rustix::fs::{MemfdFlags, SealFlags};

    use super::SEGMENT_LEN;
    use crate::error::{CliError, Context};

    /// What the object is called in messages.
    pub(super) const NAME: &str = "memfd";

    /// The seals that make the mapping safe to touch: a file that cannot shrink cannot make
    /// an access within `SEGMENT_LEN` fault with SIGBUS.
    fn required_seals() -> SealFlags {
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL
    }

    /// A fresh memfd, close-on-exec, of `SEGMENT_LEN` bytes, sealed against resizing.
    pub(super) fn create() -> Result<OwnedFd, CliError> {
        let fd = memfd_create(
            "ringbell-baseline",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .context("creating the baseline memfd")?;
        ftruncate(&fd, SEGMENT_LEN as u64).context("sizing the baseline memfd")?;
        fcntl_add_seals(&fd, required_seals()).context("sealing the baseline memfd")?;
        Ok(fd)
    }

    /// Checks that the inherited fd number `raw_fd` is a memfd sealed against resizing
    /// (its size is checked by the caller).
    pub(super) fn check_inherited(fd: &OwnedFd, raw_fd: i32) -> Result<(), CliError> {
        let seals = fcntl_get_seals(fd).context(format_args!("fd {raw_fd} is not a memfd"))?;
        if !seals.contains(required_seals()) {
            return Err(CliError::new(format!(
                "fd {raw_fd} is not sealed against resizing ({seals:?}); refusing to map it"
            )));
        }
        Ok(())
    }
}

/// How the shared object is made and checked, per OS; the mapping is the same everywhere.
///
/// macOS has no memfd and no seals. A POSIX shm object is its equivalent: made with a
/// random name and `O_EXCL`, unlinked at once (so nothing can open it by name, and a crash
/// leaves nothing behind), and inherited as an fd like the memfd. It needs no seals: a shm
/// object accepts only one `ftruncate` (xnu `pshm_truncate`), so once sized it can neither
/// shrink nor grow, and `mmap` past its size fails with `EINVAL` instead of leaving a
/// `SIGBUS` trap. See shm_open(2), shm_unlink(2).
#[cfg(not(target_os = "linux"))]
mod object {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::os::fd::OwnedFd;

    use rustix::fs::{fstat, ftruncate, Mode};
    use rustix::io::{fcntl_setfd, Errno, FdFlags};
    use rustix::shm;

    use super::SEGMENT_LEN;
    use crate::error::{CliError, Context};

    /// What the object is called in messages.
    pub(super) const NAME: &str = "shm object";

    /// macOS reports a shm object's size rounded up to its creator's page size (16 KiB on
    /// arm64, 4 KiB under Rosetta): the object is made that large, and checked with ≥.
    const OBJECT_LEN: u64 = 16 * 1024;

    const _: () = assert!(SEGMENT_LEN as u64 <= OBJECT_LEN);

    /// Names tried before giving up: a clash needs another object of the same random name.
    const NAME_ATTEMPTS: usize = 16;

    /// `/ringbell-cli-` and 16 hex digits: 30 bytes, within macOS's limit of 31.
    fn random_name() -> String {
        // `RandomState` is seeded from the OS's random source, which makes the name
        // unguessable enough; `O_EXCL` turns a clash into a retry, never a shared object.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        format!("/ringbell-cli-{:016x}", hasher.finish())
    }

    /// A fresh, unlinked shm object, close-on-exec, sized once to `OBJECT_LEN` bytes.
    pub(super) fn create() -> Result<OwnedFd, CliError> {
        let flags = shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR;
        let mut attempts = 0;
        let (fd, name) = loop {
            let name = random_name();
            match shm::open(name.as_str(), flags, Mode::RUSR | Mode::WUSR) {
                Ok(fd) => break (fd, name),
                Err(Errno::EXIST) if attempts < NAME_ATTEMPTS => attempts += 1,
                Err(error) => return Err(error).context("creating the baseline shm object"),
            }
        };
        match shm::unlink(name.as_str()) {
            // ENOENT: someone of our uid unlinked it first, which leaves nothing either.
            Ok(()) | Err(Errno::NOENT) => {}
            Err(error) => {
                return Err(error).context(format_args!("unlinking the baseline shm object {name}"))
            }
        }
        // POSIX has shm_open set FD_CLOEXEC; set it anyway, since the caller relies on it.
        fcntl_setfd(&fd, FdFlags::CLOEXEC).context("closing the shm object to children")?;
        // Once: a second `ftruncate` of a shm object fails on macOS.
        ftruncate(&fd, OBJECT_LEN).context("sizing the baseline shm object")?;
        Ok(fd)
    }

    /// Checks that the inherited fd number `raw_fd` is a POSIX shm object (its size is
    /// checked by the caller): macOS's `fstat` gives a shm object no file-type bits at all,
    /// so a regular file (which could be truncated under the mapping), a socket or a device
    /// is refused.
    pub(super) fn check_inherited(fd: &OwnedFd, raw_fd: i32) -> Result<(), CliError> {
        let stat = fstat(fd).context(format_args!("checking what fd {raw_fd} is"))?;
        /// `S_IFMT`: the file-type bits of `st_mode`.
        const FILE_TYPE_BITS: u32 = 0o17_0000;
        if u32::from(stat.st_mode) & FILE_TYPE_BITS != 0 {
            return Err(CliError::new(format!(
                "fd {raw_fd} is not a POSIX shm object; refusing to map it"
            )));
        }
        Ok(())
    }
}

/// A shared, read-write mapping of the baseline memfd.
#[derive(Debug)]
pub struct SharedPage {
    base: NonNull<PingPongWords>,
}

impl SharedPage {
    /// Creates, sizes, seals (where needed) and maps a fresh shared object. Returns the
    /// mapping and the fd (still close-on-exec) to hand to the peer.
    pub fn create() -> Result<(SharedPage, OwnedFd), CliError> {
        let fd = object::create()?;
        let page = SharedPage::map(fd.as_fd())?;
        Ok((page, fd))
    }

    /// Maps the shared object the parent left open for this process as fd number `raw_fd`,
    /// after checking that it cannot be resized and is large enough, and closes the fd.
    pub fn open_inherited(raw_fd: RawFd) -> Result<SharedPage, CliError> {
        let name = object::NAME;
        let fd = take_inherited_fd(raw_fd, &format!("the baseline {name}"))?;
        object::check_inherited(&fd, raw_fd)?;
        let size = fstat(&fd)
            .context(format_args!("checking the {name}'s size"))?
            .st_size;
        if u64::try_from(size).map_or(true, |size| size < SEGMENT_LEN as u64) {
            return Err(CliError::new(format!(
                "the {name} holds {size} bytes, fewer than the {SEGMENT_LEN} needed"
            )));
        }
        // The mapping keeps the memory alive; the fd itself is not needed any more.
        SharedPage::map(fd.as_fd())
    }

    fn map(fd: BorrowedFd<'_>) -> Result<SharedPage, CliError> {
        // SAFETY: a null address lets the kernel pick an unused range, so no memory that
        // Rust knows about is replaced; the object holds `SEGMENT_LEN` bytes or more and
        // cannot shrink (sealed on Linux, sized once for good on macOS: see `object`), so
        // every access inside the mapping is backed and cannot raise SIGBUS.
        let base = unsafe {
            mmap(
                null_mut(),
                SEGMENT_LEN,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .context(format_args!("mapping the baseline {}", object::NAME))?;
        let base = NonNull::new(base.cast::<PingPongWords>())
            .ok_or_else(|| CliError::new("mmap returned a null mapping"))?;
        Ok(SharedPage { base })
    }

    /// The shared words.
    pub fn words(&self) -> &PingPongWords {
        // SAFETY: `base` points to `SEGMENT_LEN` bytes mapped read-write until `self` drops,
        // and the reference borrows `self`. The address is page-aligned, which satisfies the
        // 128-byte alignment. A new memfd or shm object is zero-filled and zero is a valid
        // value of every atomic, and both processes touch these bytes only through the
        // atomics, whose interior mutability makes a shared reference sound while the peer
        // writes.
        unsafe { self.base.as_ref() }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `map` with this length and is unmapped only here;
        // no reference into it outlives `self`, since `words` borrows `self`.
        let result = unsafe { munmap(self.base.as_ptr().cast(), SEGMENT_LEN) };
        // Failing to unmap our own mapping would only leak address space.
        let _ = result;
    }
}

/// Takes ownership of fd number `raw_fd`, which the parent process (`ringbell demo` or
/// `ringbell bench`) left open for this child: it clears close-on-exec on exactly that fd
/// for this one spawn and passes its number on the command line. `what` names it in
/// errors.
pub fn take_inherited_fd(raw_fd: RawFd, what: &str) -> Result<OwnedFd, CliError> {
    if raw_fd <= 2 {
        return Err(CliError::new(format!(
            "fd {raw_fd} is a standard stream or invalid, not {what}"
        )));
    }
    // Refuse a number that is not open here, rather than own (and later close) nothing.
    rustix::io::fcntl_getfd(
        // SAFETY: borrowed only for this call, to ask the kernel whether it is open.
        unsafe { BorrowedFd::borrow_raw(raw_fd) },
    )
    .context(format_args!(
        "fd {raw_fd} ({what}) is not open in this process"
    ))?;
    // SAFETY: the parent passed this number for this process alone and it is open (checked
    // above); nothing else in this process knows the number, so this is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw_fd) })
}
