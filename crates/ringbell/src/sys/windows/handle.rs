//! Handles: what a grant is on Windows, how one reaches the peer, and the checks of a
//! handle value received from it.
//!
//! A handle is an index into its process's handle table, so it cannot travel over a pipe
//! as an fd travels over a Unix socket. The sender *pushes* it instead: `DuplicateHandle`
//! into the peer's process (which needs `PROCESS_DUP_HANDLE` on it) makes the peer a handle
//! of its own, with only the rights the peer needs ([`Grant::push_to`]), and the sender
//! then tells the peer that handle's value, as an integer. The receiver turns the value
//! back into a handle it owns ([`Grant::from_peer_value`]), after refusing values that
//! cannot be a pushed handle (null, the pseudo-handles −1 … −12, which would name our own
//! process, thread or token), and each adopting type checks the object's kind and the
//! rights the handle carries before using it (`check_object`).
//!
//! The trust this rests on: a value names a slot of *our* table, whoever sent it, so a
//! peer could name a handle that we own elsewhere, and no check can tell a pushed handle
//! from one of ours of the same kind. So only the server, which the client has identified
//! (its SID), pushes; the server never adopts a value a client sends, but pulls what it
//! needs from the client ([`Grant::pull_from`], `DuplicateHandle` *from* the client's
//! process), which always makes a fresh handle. The control pipe (`pipe.rs`) holds to
//! this by which end a stream is, never by what the peer writes. The checks here are the defence
//! in depth behind that rule: a confused or hostile server cannot make a client map a
//! region of the wrong size, wait on a section, or ring a process.
//!
//! See DuplicateHandle, OpenProcess, NtQueryObject (learn.microsoft.com).

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::ptr;

use windows_sys::Wdk::Foundation::{NtQueryObject, ObjectBasicInformation, ObjectTypeInformation};
use windows_sys::Win32::Foundation::{
    DuplicateHandle, DUPLICATE_CLOSE_SOURCE, DUPLICATE_SAME_ACCESS, FALSE, HANDLE, UNICODE_STRING,
    WAIT_OBJECT_0,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, WaitForSingleObject, PROCESS_DUP_HANDLE,
    PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE,
};
use windows_sys::Win32::System::WindowsProgramming::PUBLIC_OBJECT_BASIC_INFORMATION;

use super::user::user_of_process;
use super::{invalid, User};

/// An OS object on its way to the peer, or just received from it: here, a handle of this
/// process, and the rights a copy pushed to the peer is to have.
#[derive(Debug)]
pub(crate) struct Grant {
    handle: OwnedHandle,
    /// The access mask of the peer's copy: no more than the peer's use of the object needs
    /// (never `SECTION_EXTEND_SIZE`, say). `None` for a grant received from the peer:
    /// passed on, it keeps the rights it came with, which cannot widen them.
    peer_access: Option<u32>,
}

/// A handle pushed into the peer's process: its value there, which the sender tells the
/// peer. The peer owns the handle; if the peer will never hear of it (the handshake failed
/// after the push), the sender takes it back with [`retract`](Self::retract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PushedHandle {
    value: u64,
}

/// The largest value a real handle can have: handle values are multiples of 4 below 2^24
/// on every Windows so far, and are defined to fit in 32 bits (sign-extended) so that 32-
/// and 64-bit processes can exchange them. Anything above 2^31 is refused.
const MAX_HANDLE_VALUE: i64 = 0x7FFF_FFFC;

/// The pseudo-handles: `GetCurrentProcess()` is −1, `GetCurrentThread()` −2, then the
/// current-session, process-token, thread-token and effective-token pseudo-handles and
/// others down to −12. Each names one of the receiver's own objects, whatever process
/// sent the value.
const PSEUDO_HANDLES: std::ops::RangeInclusive<i64> = -12..=-1;

impl Grant {
    pub(in crate::sys) fn new(handle: OwnedHandle, peer_access: u32) -> Grant {
        Grant {
            handle,
            peer_access: Some(peer_access),
        }
    }

    pub(in crate::sys) fn into_handle(self) -> OwnedHandle {
        self.handle
    }

    /// Pushes a copy of this grant's handle into `peer`'s process, with the rights the
    /// peer's end needs, and returns its value there. This grant keeps its own handle
    /// (drop it once the peer has the value).
    pub(crate) fn push_to(&self, peer: &PeerProcess) -> io::Result<PushedHandle> {
        let (access, options) = match self.peer_access {
            Some(access) => (access, 0),
            None => (0, DUPLICATE_SAME_ACCESS),
        };
        let mut value: HANDLE = ptr::null_mut();
        // SAFETY: both process handles are valid for the call (ours is the pseudo-handle,
        // the peer's is owned by `peer`), the source handle is owned by `self`, and the
        // out-pointer points at a live local. The new handle lives in the peer's table,
        // not ours, so nothing here owns or closes it.
        let pushed = unsafe {
            DuplicateHandle(
                GetCurrentProcess(),
                self.handle.as_raw_handle(),
                peer.handle.as_raw_handle(),
                &mut value,
                access,
                FALSE,
                options,
            )
        };
        if pushed == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PushedHandle {
            value: value as isize as i64 as u64,
        })
    }

    /// Takes ownership of the handle whose value the peer says it pushed into this
    /// process, after refusing what cannot be a pushed handle: null, a pseudo-handle
    /// (−1 … −12), anything that is not a multiple of 4 in the range of handle values, and
    /// a value that names no open handle here. What the object is, and whether the handle
    /// has the rights its use needs, the adopting type checks (`check_object`).
    pub(crate) fn from_peer_value(value: u64) -> io::Result<Grant> {
        let raw = handle_of_value(value)?;
        // Whether it names an open handle, before anything takes ownership of it (closing
        // a value that names nothing would be an error, and under a debugger an exception).
        // SAFETY: the value is only passed to a query that checks it; no handle is created
        // or closed.
        let borrowed = unsafe { BorrowedHandle::borrow_raw(raw) };
        if basic_information(borrowed).is_err() {
            return Err(invalid(format!(
                "the peer sent {value:#x}, which names no open handle of this process"
            )));
        }
        // SAFETY: the value names an open handle of this process, which the peer pushed
        // for us to own (see the module's note on trust); from here on only this grant
        // closes it.
        let handle = unsafe { OwnedHandle::from_raw_handle(raw) };
        Ok(Grant {
            handle,
            peer_access: None,
        })
    }
}

/// The handle a value a peer sent may stand for: not null, not a pseudo-handle (−1 …
/// −12, which would name the receiver's own process, thread or token), and a multiple of 4
/// in the range of handle values. Whether it names an open handle, and in whose table, is
/// the caller's to check.
fn handle_of_value(value: u64) -> io::Result<HANDLE> {
    let signed = value as i64;
    if signed == 0 {
        return Err(invalid("the peer sent a null handle"));
    }
    if PSEUDO_HANDLES.contains(&signed) {
        return Err(invalid(format!(
            "the peer sent a pseudo-handle ({signed}), which would name one of this \
             process's own objects"
        )));
    }
    if !(4..=MAX_HANDLE_VALUE).contains(&signed) || signed % 4 != 0 {
        return Err(invalid(format!(
            "the peer sent {value:#x}, which is not a handle value"
        )));
    }
    Ok(signed as isize as HANDLE)
}

impl Grant {
    /// A new handle of this process to this grant's object, with the rights a peer's copy
    /// is to have: what a client offers its server to pull ([`pull_from`](Self::pull_from)),
    /// since a client never pushes. The caller keeps it open until the server has pulled
    /// it.
    pub(in crate::sys) fn offer(&self) -> io::Result<OwnedHandle> {
        let (access, options) = match self.peer_access {
            Some(access) => (access, 0),
            None => (0, DUPLICATE_SAME_ACCESS),
        };
        let mut raw: HANDLE = ptr::null_mut();
        // SAFETY: the source handle is owned by `self`, the process pseudo-handle is always
        // valid, and the out-pointer points at a live local, which receives a new handle
        // that nothing else owns.
        let made = unsafe {
            DuplicateHandle(
                GetCurrentProcess(),
                self.handle.as_raw_handle(),
                GetCurrentProcess(),
                &mut raw,
                access,
                FALSE,
                options,
            )
        };
        if made == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `DuplicateHandle` made a new handle, which nothing else owns.
        Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
    }

    /// Pulls the handle `value` of `peer`'s table into ours (`DuplicateHandle` *from* the
    /// peer, with the rights it has there): how a server takes what its client offers.
    /// Unlike adopting a value, this always makes a fresh handle of our own, so a client
    /// can name only objects it holds itself, never one of ours. The pseudo-handles are
    /// refused (they would name the client's own process or thread); the adopting type
    /// checks the object's kind and rights as for any grant.
    pub(in crate::sys) fn pull_from(peer: &PeerProcess, value: u64) -> io::Result<Grant> {
        let source = handle_of_value(value)?;
        let mut raw: HANDLE = ptr::null_mut();
        // SAFETY: the peer's process handle is owned by `peer` (opened with
        // PROCESS_DUP_HANDLE) and `source` is only a value in its table, which the call
        // checks; the out-pointer points at a live local, which receives a new handle of
        // ours that nothing else owns.
        let pulled = unsafe {
            DuplicateHandle(
                peer.handle.as_raw_handle(),
                source,
                GetCurrentProcess(),
                &mut raw,
                0,
                FALSE,
                DUPLICATE_SAME_ACCESS,
            )
        };
        if pulled == 0 {
            let error = io::Error::last_os_error();
            return Err(invalid(format!(
                "the peer offered {value:#x}, which cannot be taken from it: {error}"
            )));
        }
        // SAFETY: as above: a new handle, owned from here on by the grant alone.
        let handle = unsafe { OwnedHandle::from_raw_handle(raw) };
        Ok(Grant {
            handle,
            peer_access: None,
        })
    }
}

impl AsHandle for Grant {
    fn as_handle(&self) -> BorrowedHandle<'_> {
        self.handle.as_handle()
    }
}

impl PushedHandle {
    /// The handle's value in the peer's process, to tell the peer.
    pub(crate) fn value(self) -> u64 {
        self.value
    }

    /// Closes the pushed handle in the peer's process (`DUPLICATE_CLOSE_SOURCE`), for a
    /// push the peer will never hear of. Needs the `PROCESS_DUP_HANDLE` right on `peer`
    /// that the push needed.
    ///
    /// The handle comes back into this process on its way out, and is closed here too:
    /// Windows also takes a null target process for a plain close, but Wine 8 refuses one
    /// (`ERROR_INVALID_HANDLE`), and this way works on both.
    pub(crate) fn retract(self, peer: &PeerProcess) -> io::Result<()> {
        let mut ours: HANDLE = ptr::null_mut();
        // SAFETY: this closes a handle in the peer's table, which `self` says we put
        // there, and makes one in ours (the out-pointer points at a live local), which
        // nothing else owns.
        let closed = unsafe {
            DuplicateHandle(
                peer.handle.as_raw_handle(),
                self.value as i64 as isize as HANDLE,
                GetCurrentProcess(),
                &mut ours,
                0,
                FALSE,
                DUPLICATE_CLOSE_SOURCE | DUPLICATE_SAME_ACCESS,
            )
        };
        if closed == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the handle just made, owned here alone; dropping it closes it.
        drop(unsafe { OwnedHandle::from_raw_handle(ours) });
        Ok(())
    }
}

/// The peer's process: what handles are pushed into, and what a wait watches so that the
/// peer's death ends it.
#[derive(Debug)]
pub(crate) struct PeerProcess {
    handle: OwnedHandle,
}

impl PeerProcess {
    /// Opens the process `pid` with the rights a server needs on its client: to push
    /// handles into it and pull them from it (`PROCESS_DUP_HANDLE`), to wait for its end
    /// (`SYNCHRONIZE`), and to read its token's user (`PROCESS_QUERY_LIMITED_INFORMATION`),
    /// so that the user checked and the process pushed into are one object. A pid may have
    /// been reused by the time it is opened: the server checks the opened process's user
    /// ([`user`](Self::user)) before pushing anything.
    pub(crate) fn open(pid: u32) -> io::Result<PeerProcess> {
        let access = PROCESS_DUP_HANDLE | PROCESS_SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION;
        // SAFETY: no pointer is involved; a null result is an error, checked below.
        let raw = unsafe { OpenProcess(access, FALSE, pid) };
        if raw.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `OpenProcess` returned a new handle, which nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(raw) };
        Ok(PeerProcess { handle })
    }

    /// Adopts the handle of the peer's process that the peer pushed (the server's own, for
    /// its client to wait on), after checking that it is a process handle one can wait on.
    pub(crate) fn adopt(grant: Grant) -> io::Result<PeerProcess> {
        let handle = grant.into_handle();
        check_object(
            handle.as_handle(),
            "Process",
            PROCESS_SYNCHRONIZE,
            "the peer's process",
        )?;
        Ok(PeerProcess { handle })
    }

    /// A grant of this process's own handle, to push to the peer so that it can wait for
    /// our end: `SYNCHRONIZE` only, which lets it do nothing else to us.
    pub(crate) fn grant_of_this_process() -> io::Result<Grant> {
        let mut raw: HANDLE = ptr::null_mut();
        // SAFETY: the current-process pseudo-handle is valid in this process, and the
        // out-pointer points at a live local, which receives a real handle that nothing
        // else owns.
        let made = unsafe {
            DuplicateHandle(
                GetCurrentProcess(),
                GetCurrentProcess(),
                GetCurrentProcess(),
                &mut raw,
                0,
                FALSE,
                DUPLICATE_SAME_ACCESS,
            )
        };
        if made == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `DuplicateHandle` made a new handle, which nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(raw) };
        Ok(Grant::new(handle, PROCESS_SYNCHRONIZE))
    }

    /// The user of the process's token. Needs a process [`open`](Self::open)ed here (an
    /// adopted one has `SYNCHRONIZE` only).
    pub(crate) fn user(&self) -> io::Result<User> {
        user_of_process(self.handle.as_handle())
    }

    /// Whether the process has ended. Never blocks.
    pub(crate) fn has_ended(&self) -> bool {
        // SAFETY: a zero-timeout wait on a process handle we own.
        unsafe { WaitForSingleObject(self.handle.as_raw_handle(), 0) == WAIT_OBJECT_0 }
    }
}

impl AsHandle for PeerProcess {
    fn as_handle(&self) -> BorrowedHandle<'_> {
        self.handle.as_handle()
    }
}

/// Checks that `handle`, received from the peer for `what`, is an object of type `kind`
/// (the object manager's type name: `Section`, `Event`, `Process`) and carries at least
/// the rights in `needs`. A failed check is an `InvalidData` error that says which.
pub(in crate::sys) fn check_object(
    handle: BorrowedHandle<'_>,
    kind: &str,
    needs: u32,
    what: &str,
) -> io::Result<()> {
    let found = type_name(handle).map_err(|error| {
        invalid(format!(
            "the handle the peer sent for {what} cannot be queried: {error}"
        ))
    })?;
    if found != kind {
        return Err(invalid(format!(
            "the handle the peer sent for {what} is of type {found}, not {kind}"
        )));
    }
    let granted = basic_information(handle)
        .map_err(|error| {
            invalid(format!(
                "the handle the peer sent for {what} cannot be queried: {error}"
            ))
        })?
        .GrantedAccess;
    if granted & needs != needs {
        return Err(invalid(format!(
            "the handle the peer sent for {what} lacks the rights its use needs \
             (it has {granted:#x}, it needs {needs:#x})"
        )));
    }
    Ok(())
}

/// The rights and counts of a handle (`NtQueryObject`, `ObjectBasicInformation`).
pub(super) fn basic_information(
    handle: BorrowedHandle<'_>,
) -> io::Result<PUBLIC_OBJECT_BASIC_INFORMATION> {
    let mut info = MaybeUninit::<PUBLIC_OBJECT_BASIC_INFORMATION>::zeroed();
    let mut returned = 0u32;
    // SAFETY: the buffer is a live, writable `PUBLIC_OBJECT_BASIC_INFORMATION`, whose size
    // is passed; the handle is only queried.
    let status = unsafe {
        NtQueryObject(
            handle.as_raw_handle(),
            ObjectBasicInformation,
            info.as_mut_ptr().cast(),
            size_of::<PUBLIC_OBJECT_BASIC_INFORMATION>() as u32,
            &mut returned,
        )
    };
    if status < 0 {
        return Err(nt_error("NtQueryObject(ObjectBasicInformation)", status));
    }
    // SAFETY: zero-initialised, and a plain-data struct valid for any bits; the call
    // succeeded and filled it.
    Ok(unsafe { info.assume_init() })
}

/// The object manager's name for the type of the object `handle` refers to (`NtQueryObject`,
/// `ObjectTypeInformation`): `Section`, `Event`, `Process`, `File`...
fn type_name(handle: BorrowedHandle<'_>) -> io::Result<String> {
    // The fixed part (a UNICODE_STRING and counters, about 100 bytes), then the name,
    // which Windows and Wine write into the same buffer. u64s for the alignment.
    let mut buffer = [0u64; 128];
    let size = size_of_val(&buffer);
    let mut returned = 0u32;
    // SAFETY: the buffer is live, writable and `size` bytes long; the handle is only
    // queried.
    let status = unsafe {
        NtQueryObject(
            handle.as_raw_handle(),
            ObjectTypeInformation,
            buffer.as_mut_ptr().cast(),
            size as u32,
            &mut returned,
        )
    };
    if status < 0 {
        return Err(nt_error("NtQueryObject(ObjectTypeInformation)", status));
    }
    // SAFETY: the buffer starts with the UNICODE_STRING the call filled in (8-aligned,
    // and larger than one); reading it as such is reading plain data.
    let name = unsafe { buffer.as_ptr().cast::<UNICODE_STRING>().read() };
    // Read the name only where it lies inside our buffer: it always does, but a pointer
    // from the OS is checked before it is followed.
    let start = buffer.as_ptr() as usize;
    let at = name.Buffer as usize;
    let len = usize::from(name.Length);
    if at < start || at + len > start + size || at % 2 != 0 {
        return Err(io::Error::other(
            "NtQueryObject(ObjectTypeInformation) returned a name outside its buffer",
        ));
    }
    // SAFETY: `len` bytes at `at` lie within `buffer` (checked above), 2-aligned, and
    // were written by the call; u16s are valid for any bits.
    let units = unsafe { std::slice::from_raw_parts(name.Buffer.cast_const(), len / 2) };
    Ok(String::from_utf16_lossy(units))
}

/// An error for a failed native call, with its NTSTATUS.
pub(super) fn nt_error(call: &str, status: i32) -> io::Error {
    io::Error::other(format!(
        "{call} failed with NTSTATUS {:#010x}",
        status as u32
    ))
}
