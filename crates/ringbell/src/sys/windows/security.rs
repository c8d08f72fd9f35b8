//! The security descriptors of the objects this backend makes: the control pipe's (its
//! SDDL text is in `pipe_name.rs`) and the one every section and doorbell event gets,
//! [`SHARED_OBJECT_SDDL`], which stops a holder of a pushed handle from giving itself more
//! rights than it was pushed.
//!
//! # Why the sections and events need one
//!
//! A handle pushed into the peer has only the rights its use needs (`region.rs`,
//! `doorbell.rs`). But a holder can call `DuplicateHandle` on its own handle asking for
//! more (`SECTION_EXTEND_SIZE` on a section; `SYNCHRONIZE` on a ringer, which would let it
//! wait on the doorbell and swallow its rings). A duplicate asking for rights the source
//! handle lacks is access-checked against the object's DACL, and the default DACL grants
//! the creating user everything: a peer of the same user, the default, would pass.
//!
//! So the backend creates them with a DACL that grants nobody anything worth having, as
//! Chromium does for its sections (`platform_shared_memory_region_win.cc`). The creator's
//! own handle is unaffected (a new object's creator gets the rights it asks for without
//! an access check), and a duplicate with the same rights or fewer is not access-checked
//! either, so pushing and pulling go on working; only widening fails, with
//! `ERROR_ACCESS_DENIED`.
//!
//! Not quite empty, as Chromium's is: a DACL with no entry still leaves the object's
//! owner (the creating user) `READ_CONTROL` and `WRITE_DAC`, which Windows grants an
//! owner whatever the DACL says. A holder of the same user could then duplicate itself
//! `WRITE_DAC`, rewrite the DACL, and widen its handle after all. An entry for OWNER
//! RIGHTS (S-1-3-4) replaces those implicit rights with the ones it names (Windows Vista
//! and later): here `READ_CONTROL` alone, which only lets a holder read the descriptor.
//! The DACL is protected (`P`), although an unnamed object has no parent to inherit from.
//!
//! See ConvertStringSecurityDescriptorToSecurityDescriptorW, DuplicateHandle, "SID
//! strings" and "Owner Rights" (learn.microsoft.com).

#![allow(unsafe_code)]

use std::io;
use std::ptr;

use windows_sys::Win32::Foundation::{LocalFree, FALSE};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};

/// The DACL of every section and doorbell event: protected, with one entry, OWNER RIGHTS
/// allowed `READ_CONTROL`, so that no holder can duplicate its handle to more rights (see
/// the module's docs). The SID is written as a number: older SDDL parsers (Wine's among
/// them) may not know its abbreviation `OW`.
pub(super) const SHARED_OBJECT_SDDL: &str = "D:P(A;;RC;;;S-1-3-4)";

/// A security descriptor made from its SDDL text, freed on drop.
#[derive(Debug)]
pub(super) struct SecurityDescriptor {
    descriptor: PSECURITY_DESCRIPTOR,
}

// SAFETY: the descriptor is written once, by the OS, when it is made, and only read after
// (by the calls that create objects); LocalFree on drop is allowed from any thread.
unsafe impl Send for SecurityDescriptor {}
// SAFETY: as above: shared references only read it.
unsafe impl Sync for SecurityDescriptor {}

impl SecurityDescriptor {
    /// The descriptor that `sddl` describes.
    pub(super) fn from_sddl(sddl: &str) -> io::Result<SecurityDescriptor> {
        let text: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
        let mut descriptor: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: the text is NUL-terminated UTF-16, alive for the call; the out-pointer
        // points at a live local, which receives memory we free with LocalFree.
        let made = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                ptr::null_mut(),
            )
        };
        if made == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SecurityDescriptor { descriptor })
    }

    /// The descriptor of a section or doorbell event: [`SHARED_OBJECT_SDDL`].
    pub(super) fn for_shared_object() -> io::Result<SecurityDescriptor> {
        SecurityDescriptor::from_sddl(SHARED_OBJECT_SDDL)
    }

    /// The attributes for a create call (not inheritable); they borrow the descriptor.
    pub(super) fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.descriptor,
            bInheritHandle: FALSE,
        }
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // SAFETY: the memory came from ConvertStringSecurityDescriptorToSecurityDescriptorW,
        // which says to free it with LocalFree, and nothing uses it any more.
        unsafe { LocalFree(self.descriptor) };
    }
}
