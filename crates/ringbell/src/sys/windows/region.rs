//! Shared memory on Windows: an unnamed section backed by the paging file, created with
//! `SEC_COMMIT`, so that every page is committed (charged against the commit limit) at
//! creation and none can fault later, and zeroed by the OS. Its size is fixed at creation
//! and a section never shrinks, so a peer that holds it cannot turn our accesses into
//! faults, which is what the memfd seals buy on Linux. It has no name, so nothing can open
//! it but a holder of a handle, and it goes with its last handle and view: a crash leaves
//! nothing behind.
//!
//! The peer's handle has `FILE_MAP_READ | FILE_MAP_WRITE | SECTION_QUERY` only (never
//! `SECTION_EXTEND_SIZE`), and the section's DACL stops the peer from duplicating itself
//! a handle with more (`security.rs`). A received section is checked before it is trusted: its type
//! and rights, then its size, read from a view of the whole section (`VirtualQuery`:
//! committed, and exactly the announced size rounded up to whole pages). windows-sys does
//! not declare `NtQuerySection`, which would tell the size without mapping.
//!
//! See CreateFileMappingW, MapViewOfFile, VirtualQuery (learn.microsoft.com).

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::windows::io::{AsHandle, AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr::{self, NonNull};

use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, MapViewOfFile, UnmapViewOfFile, VirtualQuery, FILE_MAP_READ,
    FILE_MAP_WRITE, MEMORY_BASIC_INFORMATION, MEMORY_MAPPED_VIEW_ADDRESS, MEM_COMMIT,
    PAGE_READWRITE, SECTION_QUERY, SEC_COMMIT,
};
use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};

use super::handle::check_object;
use super::security::SecurityDescriptor;
use super::{invalid, Grant, User};

/// The rights of the peer's handle to a section: map it read-write, and ask its size.
const PEER_ACCESS: u32 = FILE_MAP_READ | FILE_MAP_WRITE | SECTION_QUERY;

/// A shared, read-write view of a section, `len` bytes of which are ours to use.
#[derive(Debug)]
pub(crate) struct SharedRegion {
    /// The view's first byte, which `UnmapViewOfFile` takes back.
    view: NonNull<u8>,
    len: usize,
}

// SAFETY: the view belongs to the process, not to a thread; all access to its contents
// goes through atomics or raw copies made by the owner of the `SharedRegion`.
unsafe impl Send for SharedRegion {}
// SAFETY: as above; `&SharedRegion` exposes only the pointer and the length.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// [`create`](Self::create) for a large-message region: sections have no name, so
    /// the same.
    pub(crate) fn create_for_messages(len: usize) -> io::Result<(SharedRegion, Grant)> {
        SharedRegion::create(len)
    }

    /// Creates a zeroed section of `len` bytes and maps it. Returns the mapping and the
    /// grant to push to the peer (drop it once pushed).
    pub(crate) fn create(len: usize) -> io::Result<(SharedRegion, Grant)> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty shared region",
            ));
        }
        let size = len as u64;
        // A DACL that stops a holder from widening its handle (`security.rs`); our own
        // handle gets every right regardless, as the section's creator.
        let security = SecurityDescriptor::for_shared_object()?;
        let attributes = security.attributes();
        // SAFETY: the attributes and the descriptor they point at are alive for the call;
        // no name; a null result is an error, checked below.
        let raw = unsafe {
            CreateFileMappingW(
                INVALID_HANDLE_VALUE,
                &attributes,
                PAGE_READWRITE | SEC_COMMIT,
                (size >> 32) as u32,
                size as u32,
                ptr::null(),
            )
        };
        if raw.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `CreateFileMappingW` returned a new handle, which nothing else owns.
        let section = unsafe { OwnedHandle::from_raw_handle(raw) };
        let view = map(&section, len)?;
        Ok((SharedRegion { view, len }, Grant::new(section, PEER_ACCESS)))
    }

    /// Maps a section received from the peer, after checking that it is a section this
    /// handle may map read-write, and that it is exactly `expected_len` bytes long
    /// (rounded up to whole pages) and committed throughout. A failed check gives an
    /// `InvalidData` error that says which. `_owner` is not checked: a section cannot
    /// shrink, so whoever owns it cannot fault our view, and a pushed handle comes from a
    /// server the client has identified already.
    pub(crate) fn adopt(
        grant: Grant,
        expected_len: usize,
        _owner: User,
    ) -> io::Result<SharedRegion> {
        if expected_len == 0 {
            return Err(invalid("the announced shared region is empty"));
        }
        let section = grant.into_handle();
        check_object(
            section.as_handle(),
            "Section",
            FILE_MAP_READ | FILE_MAP_WRITE,
            "the shared region",
        )?;
        // The whole section (length 0), so that what the view spans is the section's size.
        // A section too large to map is no region of ours either.
        let view = map(&section, 0).map_err(|error| {
            invalid(format!(
                "the shared-memory section cannot be mapped whole: {error}"
            ))
        })?;
        // From here `region` owns the view, and unmaps it if a check fails.
        let region = SharedRegion {
            view,
            len: expected_len,
        };
        let span = committed_span(view)?;
        let expected_span = expected_len.div_ceil(page_size()) * page_size();
        if span != expected_span {
            return Err(invalid(format!(
                "the shared-memory section's size differs from the announced size \
                 ({span} bytes committed, {expected_len} announced)"
            )));
        }
        Ok(region)
    }

    /// The first byte of the mapping (page-aligned).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.view.as_ptr()
    }

    /// The mapping's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: we own this view, made by `map`; everything that points into it is owned
        // by the same connection and dropped with it.
        let _ = unsafe {
            UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS {
                Value: self.view.as_ptr().cast(),
            })
        };
    }
}

/// Maps `len` bytes of `section` read-write (0: all of it), at an address the OS picks.
fn map(section: &OwnedHandle, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh view at an address the OS picks cannot alias any Rust object, and is
    // unmapped only by `SharedRegion::drop` (the caller makes one at once).
    let view = unsafe {
        MapViewOfFile(
            section.as_raw_handle(),
            FILE_MAP_READ | FILE_MAP_WRITE,
            0,
            0,
            len,
        )
    };
    NonNull::new(view.Value.cast::<u8>()).ok_or_else(io::Error::last_os_error)
}

/// How many bytes from `view` on are committed, in one run: for a view of a whole
/// `SEC_COMMIT` section, the section's size rounded up to whole pages.
fn committed_span(view: NonNull<u8>) -> io::Result<usize> {
    let mut info = MaybeUninit::<MEMORY_BASIC_INFORMATION>::zeroed();
    // SAFETY: the buffer is a live, writable `MEMORY_BASIC_INFORMATION` of the size
    // passed; the address is only looked up.
    let written = unsafe {
        VirtualQuery(
            view.as_ptr().cast_const().cast(),
            info.as_mut_ptr(),
            size_of::<MEMORY_BASIC_INFORMATION>(),
        )
    };
    if written == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised plain data, filled by the successful call.
    let info = unsafe { info.assume_init() };
    if info.BaseAddress != view.as_ptr().cast() || info.State != MEM_COMMIT {
        return Err(invalid(
            "the shared-memory section is not committed (was it made with SEC_RESERVE?)",
        ));
    }
    Ok(info.RegionSize)
}

/// The page size, to which a view's size is rounded.
fn page_size() -> usize {
    let mut info = MaybeUninit::<SYSTEM_INFO>::zeroed();
    // SAFETY: the buffer is a live, writable `SYSTEM_INFO`; the call cannot fail.
    let info = unsafe {
        GetSystemInfo(info.as_mut_ptr());
        info.assume_init()
    };
    info.dwPageSize as usize
}
