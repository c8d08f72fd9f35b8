//! Who a process runs as on Windows: the SID of its token's user
//! (`GetTokenInformation(TokenUser)`). Two SIDs are the same user when their bytes are
//! equal, which is what `EqualSid` compares. A peer's SID is read the same way from its
//! process (`OpenProcess` → `OpenProcessToken`): see `pipe.rs` for whose process that is.
//!
//! See GetTokenInformation, TOKEN_USER, SID (learn.microsoft.com).

#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::ptr;

use windows_sys::Win32::Foundation::{LocalFree, FALSE};
use windows_sys::Win32::Security::Authorization::ConvertStringSidToSidW;
use windows_sys::Win32::Security::{
    GetLengthSid, GetTokenInformation, IsValidSid, TokenUser, PSID, SECURITY_MAX_SID_SIZE,
    TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};

/// The SID of `LocalSystem` (S-1-5-18), the account services run as: the administrator a
/// client may trust, as root on Unix.
const LOCAL_SYSTEM: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];

/// A user as the OS identifies it: a SID here, kept by value (at most 68 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct User {
    sid: [u8; SECURITY_MAX_SID_SIZE as usize],
    len: u8,
}

impl User {
    /// The uid: none on Windows, which has SIDs instead.
    pub(crate) fn uid(&self) -> Option<u32> {
        None
    }

    /// Whether this is `LocalSystem`, whom a client may trust as it trusts root on Unix.
    pub(crate) fn is_administrator(&self) -> bool {
        self.bytes() == LOCAL_SYSTEM
    }

    fn bytes(&self) -> &[u8] {
        &self.sid[..usize::from(self.len)]
    }

    /// The user whose SID is written `text`, in the usual form `S-1-5-21-…`
    /// (`ConvertStringSidToSidW`), for the settings that admit or trust users by SID
    /// (`os::windows`). An `InvalidInput` error that says why for anything else: text the
    /// call refuses, and text it accepts but that is not the SID's usual form, such as
    /// SDDL's abbreviations (`BA`, `WD`: groups mostly, which never match a token's user)
    /// or hexadecimal numbers, so that what is admitted is always what was written.
    pub(crate) fn from_sid_text(text: &str) -> io::Result<User> {
        let refused = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{text:?} is not a SID in its usual form S-1-5-21-…: {why}"),
            )
        };
        if text.contains('\0') {
            return Err(refused("it holds a NUL"));
        }
        let wide: Vec<u16> = text.encode_utf16().chain(Some(0)).collect();
        let mut sid: PSID = ptr::null_mut();
        // SAFETY: the text is NUL-terminated UTF-16, alive for the call; the out-pointer
        // points at a live local, which receives memory we free with LocalFree below.
        if unsafe { ConvertStringSidToSidW(wide.as_ptr(), &mut sid) } == 0 {
            return Err(refused(&io::Error::last_os_error().to_string()));
        }
        let mut user = User {
            sid: [0; SECURITY_MAX_SID_SIZE as usize],
            len: 0,
        };
        // SAFETY: `sid` is the SID the call made, alive until the LocalFree below.
        let len = if unsafe { IsValidSid(sid) } == 0 {
            0
        } else {
            // SAFETY: as above, and valid (checked).
            unsafe { GetLengthSid(sid) as usize }
        };
        if (1..=user.sid.len()).contains(&len) {
            // SAFETY: `len` bytes at `sid` are the SID, and `user.sid` has room for them.
            unsafe { ptr::copy_nonoverlapping(sid.cast::<u8>(), user.sid.as_mut_ptr(), len) };
            user.len = len as u8;
        }
        // SAFETY: the memory came from ConvertStringSidToSidW, which says to free it with
        // LocalFree, and is not used after.
        unsafe { LocalFree(sid) };
        if user.len == 0 {
            return Err(refused("the system made an invalid SID of it"));
        }
        if !user.to_string().eq_ignore_ascii_case(text) {
            return Err(refused(&format!("it reads as {user}")));
        }
        Ok(user)
    }
}

impl fmt::Display for User {
    /// The SID's usual text form, `S-1-5-21-…`: revision, authority, sub-authorities.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.bytes();
        let Some((header, rest)) = bytes.split_first_chunk::<8>() else {
            return write!(f, "SID {bytes:02x?}");
        };
        let mut authority = [0u8; 8];
        authority[2..].copy_from_slice(&header[2..8]);
        write!(f, "S-{}-{}", header[0], u64::from_be_bytes(authority))?;
        for sub in rest.chunks_exact(4) {
            write!(
                f,
                "-{}",
                u32::from_le_bytes([sub[0], sub[1], sub[2], sub[3]])
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "User({self})")
    }
}

/// The user of this process's token.
///
/// # Panics
///
/// If the OS will not tell a process its own token's user, which needs no privilege and
/// cannot fail on a working system (without it, no admission check could be made).
pub(crate) fn current_user() -> User {
    token_user().unwrap_or_else(|error| panic!("the process's own user cannot be read: {error}"))
}

fn token_user() -> io::Result<User> {
    // SAFETY: the current-process pseudo-handle is always valid in this process.
    user_of_process(unsafe { BorrowedHandle::borrow_raw(GetCurrentProcess()) })
}

/// The user of the process `pid` (`PROCESS_QUERY_LIMITED_INFORMATION`, which any user may
/// have on most processes). A pid is a hint: the caller makes sure the process it meant
/// is still there (see `pipe.rs`).
pub(super) fn user_of_pid(pid: u32) -> io::Result<User> {
    // SAFETY: no pointer is involved; a null result is an error, checked below.
    let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `OpenProcess` returned a new handle, which nothing else owns.
    let process = unsafe { OwnedHandle::from_raw_handle(raw) };
    user_of_process(process.as_handle())
}

/// The user of the token of `process`, a handle with `PROCESS_QUERY_LIMITED_INFORMATION`.
pub(super) fn user_of_process(process: BorrowedHandle<'_>) -> io::Result<User> {
    let mut raw = ptr::null_mut();
    // SAFETY: the process handle is borrowed for the call, and the out-pointer points at
    // a live local.
    if unsafe { OpenProcessToken(process.as_raw_handle(), TOKEN_QUERY, &mut raw) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `OpenProcessToken` returned a new handle, which nothing else owns.
    let token = unsafe { OwnedHandle::from_raw_handle(raw) };
    // A TOKEN_USER (a SID pointer and attributes) followed by the SID it points at: 16 +
    // 68 bytes at most. u64s for the pointer's alignment.
    let mut buffer = [0u64; 16];
    let size = size_of_val(&buffer) as u32;
    let mut needed = 0u32;
    // SAFETY: the buffer is live, writable and `size` bytes long; the token handle is ours.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buffer.as_mut_ptr().cast(),
            size,
            &mut needed,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call filled the buffer, which starts with a TOKEN_USER (8-aligned).
    let sid = unsafe { buffer.as_ptr().cast::<TOKEN_USER>().read() }
        .User
        .Sid;
    // SAFETY: `sid` points at a valid SID the call wrote into `buffer`, still alive.
    let len = unsafe { GetLengthSid(sid) } as usize;
    let mut user = User {
        sid: [0; SECURITY_MAX_SID_SIZE as usize],
        len: 0,
    };
    if len == 0 || len > user.sid.len() {
        return Err(io::Error::other("the token's SID has an impossible length"));
    }
    // SAFETY: `len` bytes at `sid` are the SID, inside `buffer` (GetLengthSid read its
    // sub-authority count from it), and `user.sid` has room for them.
    unsafe { ptr::copy_nonoverlapping(sid.cast::<u8>(), user.sid.as_mut_ptr(), len) };
    user.len = len as u8;
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_print_in_their_usual_form() {
        let mut system = User {
            sid: [0; SECURITY_MAX_SID_SIZE as usize],
            len: LOCAL_SYSTEM.len() as u8,
        };
        system.sid[..LOCAL_SYSTEM.len()].copy_from_slice(&LOCAL_SYSTEM);
        assert_eq!(system.to_string(), "S-1-5-18");
        assert!(system.is_administrator());
        let own = current_user();
        assert!(own.to_string().starts_with("S-1-5-"), "{own}");
        assert_eq!(own, current_user());
        assert_eq!(own.uid(), None);
    }

    #[test]
    fn sids_are_read_from_their_usual_form_and_nothing_else() {
        let own = current_user();
        assert_eq!(User::from_sid_text(&own.to_string()).unwrap(), own);
        let system = User::from_sid_text("S-1-5-18").unwrap();
        assert!(system.is_administrator());
        assert_eq!(User::from_sid_text("s-1-5-18").unwrap(), system);
        let other = User::from_sid_text("S-1-5-21-1004336348-1177238915-682003330-1001").unwrap();
        assert_eq!(
            other.to_string(),
            "S-1-5-21-1004336348-1177238915-682003330-1001"
        );
        assert_ne!(other, own);
        for garbage in [
            "",
            "S-1",
            "S-1-",
            "S-1-5-",
            "S-1-5-21-x",
            "S-X-5-18",
            "5-18",
            "hello",
            "BA",
            "WD",
            "SY",
            " S-1-5-18",
            "S-1-5-18 ",
            "S-1-5-18\0",
            "S-1-5-18-1-2-3-4-5-6-7-8-9-10-11-12-13-14-15-16",
        ] {
            let error = User::from_sid_text(garbage).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{garbage:?}");
            assert!(error.to_string().contains("S-1-5-21"), "{error}");
        }
    }
}
