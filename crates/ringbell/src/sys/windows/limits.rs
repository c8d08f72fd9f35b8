//! Running out of resources on Windows. There is no per-process handle limit to raise (a
//! process may hold about 16 million handles); what runs out is the system's: kernel
//! memory for the objects (`ERROR_NO_SYSTEM_RESOURCES`), or memory and the commit limit
//! for the sections (`ERROR_NOT_ENOUGH_MEMORY`, `ERROR_OUTOFMEMORY`,
//! `ERROR_COMMITMENT_LIMIT`).

use std::io;

use windows_sys::Win32::Foundation::{
    ERROR_COMMITMENT_LIMIT, ERROR_NOT_ENOUGH_MEMORY, ERROR_NO_SYSTEM_RESOURCES, ERROR_OUTOFMEMORY,
    ERROR_TOO_MANY_OPEN_FILES,
};

/// What ran out, in the words of an error message.
pub(crate) const OUT_OF_HANDLES: &str =
    "out of system resources (kernel memory for handles, or commit for shared memory)";

/// How to get more, in the words of an error message or a log line.
pub(crate) const RAISE_LIMIT_HINT: &str =
    "close other connections or programs, or enlarge the paging file, to serve more";

/// There is no handle limit to raise on Windows: `None`, as for an unlimited one.
pub(crate) fn raise_resource_limit() -> Option<u64> {
    None
}

/// Whether `error` says the system ran out of what a connection needs.
pub(crate) fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error().map(|code| code as u32),
        Some(
            ERROR_NO_SYSTEM_RESOURCES
                | ERROR_NOT_ENOUGH_MEMORY
                | ERROR_OUTOFMEMORY
                | ERROR_COMMITMENT_LIMIT
                | ERROR_TOO_MANY_OPEN_FILES
        )
    )
}
