//! The shared page behind the raw baselines, mapped shared by the demo and by its
//! `__shm-peer` child, holding nothing but the atomic words they ping-pong on. The child
//! inherits it across `exec`: as an fd of a sealed memfd on Linux; elsewhere on Unix
//! (macOS) of a POSIX shm object, unlinked at once, which needs no seals because it accepts
//! only one `ftruncate` (see [`object`]); on Windows as a handle of an unnamed,
//! pagefile-backed section, whose size is fixed for good at creation (see [`windows`]).
//!
//! With `crate::windows`, the only modules of the tool that need `unsafe`: mapping memory,
//! turning the mapping into a reference, and taking ownership of an inherited file
//! descriptor.

#![allow(unsafe_code)]

#[cfg(unix)]
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
#[cfg(unix)]
use std::ptr::null_mut;
#[cfg(unix)]
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

#[cfg(unix)]
use rustix::fs::fstat;
#[cfg(unix)]
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

#[cfg(windows)]
pub use self::windows::SharedPage;
#[cfg(unix)]
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

/// Bytes mapped: one page on every Linux and Windows target. (The object may be larger:
/// see [`object`].)
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
#[cfg(all(unix, not(target_os = "linux")))]
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
#[cfg(unix)]
#[derive(Debug)]
pub struct SharedPage {
    base: NonNull<PingPongWords>,
}

#[cfg(unix)]
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

#[cfg(unix)]
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
#[cfg(unix)]
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

/// The shared page on Windows: an unnamed section backed by the pagefile
/// (`CreateFileMappingW(INVALID_HANDLE_VALUE, …, PAGE_READWRITE | SEC_COMMIT, …)`), which
/// nobody can open by name, which goes with its last handle and view, and whose size is
/// fixed at creation: no call shrinks a section, so a view can never lose its backing, and
/// a view larger than the section cannot be made (`MapViewOfFile` fails). The child
/// inherits the handle (see `crate::child::spawn_inheriting_handles`).
#[cfg(windows)]
mod windows {
    use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
    use std::ptr::NonNull;

    use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
    use windows_sys::Win32::System::Memory::{
        CreateFileMappingW, MapViewOfFile, UnmapViewOfFile, VirtualQuery, FILE_MAP_READ,
        FILE_MAP_WRITE, MEMORY_BASIC_INFORMATION, MEMORY_MAPPED_VIEW_ADDRESS, MEM_COMMIT,
        PAGE_READWRITE, SEC_COMMIT,
    };

    use super::{PingPongWords, SEGMENT_LEN};
    use crate::error::{CliError, Context};

    /// A shared, read-write view of the baseline section.
    #[derive(Debug)]
    pub struct SharedPage {
        base: NonNull<PingPongWords>,
    }

    impl SharedPage {
        /// Creates and maps a fresh section of `SEGMENT_LEN` bytes. Returns the view and
        /// the handle (not inheritable) to hand to the peer.
        pub fn create() -> Result<(SharedPage, OwnedHandle), CliError> {
            // SAFETY: no security attributes (not inheritable) and no name; the size is
            // given in two 32-bit halves. A null result is checked.
            let raw = unsafe {
                CreateFileMappingW(
                    INVALID_HANDLE_VALUE,
                    std::ptr::null(),
                    PAGE_READWRITE | SEC_COMMIT,
                    0,
                    SEGMENT_LEN as u32,
                    std::ptr::null(),
                )
            };
            if raw.is_null() {
                return Err(std::io::Error::last_os_error())
                    .context("creating the baseline section");
            }
            // SAFETY: a fresh handle that nothing else owns.
            let section = unsafe { OwnedHandle::from_raw_handle(raw) };
            let page = SharedPage::map(&section)?;
            Ok((page, section))
        }

        /// Maps the section the parent left for this process to inherit as handle `value`,
        /// and closes the handle (the view keeps the section). A handle that is not a
        /// section, or a section smaller than `SEGMENT_LEN`, cannot be mapped.
        pub fn open_inherited(value: i32) -> Result<SharedPage, CliError> {
            let section =
                crate::windows::take_inherited_handle(i64::from(value), "the baseline section")
                    .map_err(CliError::new)?;
            SharedPage::map(&section)
        }

        fn map(section: &OwnedHandle) -> Result<SharedPage, CliError> {
            // SAFETY: the handle is live; the system picks an unused range for the view, so
            // no memory Rust knows of is replaced. A view of `SEGMENT_LEN` bytes of a
            // smaller section, or of an object that is not a section, fails.
            let view = unsafe {
                MapViewOfFile(
                    section.as_raw_handle(),
                    FILE_MAP_READ | FILE_MAP_WRITE,
                    0,
                    0,
                    SEGMENT_LEN,
                )
            };
            let base = NonNull::new(view.Value.cast::<PingPongWords>())
                .ok_or_else(std::io::Error::last_os_error)
                .context("mapping the baseline section")?;
            // From here on, dropping `page` unmaps the view.
            let page = SharedPage { base };
            // Committed, or touching it would fault: a `SEC_RESERVE` section maps, but its
            // pages are reserved only. (Ours is `SEC_COMMIT`; this checks what was passed.)
            // SAFETY: plain data, valid when zeroed; the query reads our own view.
            let mut info: MEMORY_BASIC_INFORMATION = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is live and its size is given; the address is our view's.
            let filled = unsafe {
                VirtualQuery(
                    base.as_ptr().cast(),
                    &mut info,
                    size_of::<MEMORY_BASIC_INFORMATION>(),
                )
            };
            if filled == 0 || info.State != MEM_COMMIT || info.RegionSize < SEGMENT_LEN {
                return Err(CliError::new(
                    "the baseline section is not committed memory of a page or more; \
                     refusing to use it",
                ));
            }
            Ok(page)
        }

        /// The shared words.
        pub fn words(&self) -> &PingPongWords {
            // SAFETY: `base` points to `SEGMENT_LEN` bytes mapped read-write until `self`
            // drops, and the reference borrows `self`. A view starts on an allocation
            // boundary (64 KiB), which satisfies the 128-byte alignment. A new section is
            // zero-filled, zero is a valid value of every atomic, and both processes touch
            // these bytes only through the atomics.
            unsafe { self.base.as_ref() }
        }
    }

    impl Drop for SharedPage {
        fn drop(&mut self) {
            let view = MEMORY_MAPPED_VIEW_ADDRESS {
                Value: self.base.as_ptr().cast(),
            };
            // SAFETY: the view was made by `map` and is unmapped only here; no reference
            // into it outlives `self`, since `words` borrows `self`. A failure would only
            // leak address space.
            let _ = unsafe { UnmapViewOfFile(view) };
        }
    }
}
