//! The shared page behind the raw baselines: one sealed memfd, mapped shared by the demo
//! and by its `__shm-peer` child, holding nothing but the atomic words they ping-pong on.
//!
//! This is the only module of the tool that needs `unsafe`: mapping memory, turning the
//! mapping into a reference, and taking ownership of an inherited file descriptor.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{null_mut, NonNull};
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::fs::{fcntl_add_seals, fcntl_get_seals, fstat, ftruncate, memfd_create};
use rustix::fs::{MemfdFlags, SealFlags};
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

/// Bytes in the memfd: one page on every Linux target.
const SEGMENT_LEN: usize = 4096;

const _: () = assert!(size_of::<PingPongWords>() == 4 * 128);
const _: () = assert!(align_of::<PingPongWords>() == 128);
const _: () = assert!(size_of::<PingPongWords>() <= SEGMENT_LEN);

/// The seals that make the mapping safe to touch: a file that cannot shrink cannot make
/// an access within `SEGMENT_LEN` fault with SIGBUS.
fn required_seals() -> SealFlags {
    SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL
}

/// A shared, read-write mapping of the baseline memfd.
#[derive(Debug)]
pub struct SharedPage {
    base: NonNull<PingPongWords>,
}

impl SharedPage {
    /// Creates, sizes, seals and maps a fresh memfd. Returns the mapping and the fd (still
    /// close-on-exec) to hand to the peer.
    pub fn create() -> Result<(SharedPage, OwnedFd), CliError> {
        let fd = memfd_create(
            "ringbell-baseline",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .context("creating the baseline memfd")?;
        ftruncate(&fd, SEGMENT_LEN as u64).context("sizing the baseline memfd")?;
        fcntl_add_seals(&fd, required_seals()).context("sealing the baseline memfd")?;
        let page = SharedPage::map(fd.as_fd())?;
        Ok((page, fd))
    }

    /// Maps the memfd the parent left open for this process as fd number `raw_fd`, after
    /// checking that it is sealed and large enough, and closes the fd.
    pub fn open_inherited(raw_fd: RawFd) -> Result<SharedPage, CliError> {
        let fd = take_inherited_fd(raw_fd, "the baseline memfd")?;
        let seals = fcntl_get_seals(&fd).context(format_args!("fd {raw_fd} is not a memfd"))?;
        if !seals.contains(required_seals()) {
            return Err(CliError::new(format!(
                "fd {raw_fd} is not sealed against resizing ({seals:?}); refusing to map it"
            )));
        }
        let size = fstat(&fd).context("checking the memfd's size")?.st_size;
        if u64::try_from(size).map_or(true, |size| size < SEGMENT_LEN as u64) {
            return Err(CliError::new(format!(
                "the memfd holds {size} bytes, fewer than the {SEGMENT_LEN} needed"
            )));
        }
        // The mapping keeps the memory alive; the fd itself is not needed any more.
        SharedPage::map(fd.as_fd())
    }

    fn map(fd: BorrowedFd<'_>) -> Result<SharedPage, CliError> {
        // SAFETY: a null address lets the kernel pick an unused range, so no memory that
        // Rust knows about is replaced; the file is sealed at `SEGMENT_LEN` bytes or more,
        // so every access inside the mapping is backed and cannot raise SIGBUS.
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
        .context("mapping the baseline memfd")?;
        let base = NonNull::new(base.cast::<PingPongWords>())
            .ok_or_else(|| CliError::new("mmap returned a null mapping"))?;
        Ok(SharedPage { base })
    }

    /// The shared words.
    pub fn words(&self) -> &PingPongWords {
        // SAFETY: `base` points to `SEGMENT_LEN` bytes mapped read-write until `self` drops,
        // and the reference borrows `self`. The address is page-aligned, which satisfies the
        // 128-byte alignment. A memfd starts zero-filled and zero is a valid value of every
        // atomic, and both processes touch these bytes only through the atomics, whose
        // interior mutability makes a shared reference sound while the peer writes.
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
