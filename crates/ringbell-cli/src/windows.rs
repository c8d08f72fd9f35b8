//! The tool's own Windows calls, each wrapped safely here so that the rest of the tool, like
//! its Unix half (which calls rustix's safe wrappers), needs no `unsafe`: pinning, the
//! processes the demo and `stress` watch (alive, CPU time, memory, handles), inheritable
//! handles for the raw baselines' peers, auto-reset events, anonymous pipes, and Wine's
//! version where the tool runs under Wine.
//!
//! The library's own backend (`ringbell::sys::windows`) is private to it; the few calls both
//! need are small enough to have twice rather than to widen the library's public API for a
//! benchmark tool.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::ptr::null_mut;
use std::time::Duration;

use windows_sys::Wdk::System::SystemInformation::NtQuerySystemInformation;
use windows_sys::Win32::Foundation::{
    GetHandleInformation, SetHandleInformation, FILETIME, HANDLE, HANDLE_FLAG_INHERIT,
    STATUS_INFO_LENGTH_MISMATCH, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::System::Console::{
    GetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
};
use windows_sys::Win32::System::Pipes::{CreatePipe, PeekNamedPipe};
use windows_sys::Win32::System::ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
use windows_sys::Win32::System::Threading::{
    CreateEventW, GetCurrentProcess, GetProcessAffinityMask, GetProcessHandleCount,
    GetProcessTimes, OpenProcess, SetEvent, SetProcessAffinityMask, TerminateProcess,
    WaitForMultipleObjects, WaitForSingleObject, INFINITE, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_SYNCHRONIZE, PROCESS_VM_READ,
};

/// `timeout` in whole milliseconds for a Win32 wait, rounded up (so that a wait of less
/// than a millisecond still waits, and a caller that loops until its deadline never spins
/// on zero-length waits), and below `INFINITE`.
fn timeout_ms(timeout: Duration) -> u32 {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).map_or(INFINITE - 1, |ms| ms.min(INFINITE - 1))
}

/// Ends this process at once with `code`, as SIGKILL would: no exit handlers, no DLL
/// detach (`TerminateProcess` on our own process).
pub fn terminate_this_process(code: u32) -> ! {
    // SAFETY: the pseudo-handle of this process; the call does not return on success.
    unsafe { TerminateProcess(GetCurrentProcess(), code) };
    // Only if it failed, which it should not for our own process.
    std::process::exit(code as i32)
}

/// The CPUs this process may run on and the CPUs the system has, as bit masks
/// (`GetProcessAffinityMask`).
pub fn affinity_masks() -> io::Result<(usize, usize)> {
    let (mut process, mut system) = (0usize, 0usize);
    // SAFETY: the pseudo-handle of this process needs no closing; both out-pointers are
    // live locals.
    let ok = unsafe { GetProcessAffinityMask(GetCurrentProcess(), &mut process, &mut system) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((process, system))
}

/// Lets every thread of this process, present and future, run only on the CPUs of `mask`
/// (`SetProcessAffinityMask`). Processes started afterwards inherit it.
pub fn set_affinity_mask(mask: usize) -> io::Result<()> {
    // SAFETY: the pseudo-handle of this process needs no closing.
    if unsafe { SetProcessAffinityMask(GetCurrentProcess(), mask) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Another process, opened by its id to watch it: whether it runs, its CPU time, its
/// memory and, through the system handle table, its handles.
#[derive(Debug)]
pub struct Process {
    handle: OwnedHandle,
    pid: u32,
}

impl Process {
    /// Opens process `pid` with `SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION |
    /// PROCESS_VM_READ`: enough to wait for it and to read its times, handle count and
    /// memory (`GetProcessMemoryInfo` is documented to need `PROCESS_VM_READ` too, which
    /// Wine does not check), nothing that could change it. The processes opened are the
    /// tool's own children and parent, of the same user.
    pub fn open(pid: u32) -> io::Result<Process> {
        // SAFETY: plain call; a null result is checked.
        let raw = unsafe {
            OpenProcess(
                PROCESS_SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_VM_READ,
                0,
                pid,
            )
        };
        if raw.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh handle that nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(raw) };
        Ok(Process { handle, pid })
    }

    /// Waits up to `timeout` (`None`: for ever) for the process to exit; `true` if it has.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let ms = timeout.map_or(INFINITE, timeout_ms);
        // SAFETY: our handle is live and has SYNCHRONIZE.
        match unsafe { WaitForSingleObject(self.raw(), ms) } {
            WAIT_OBJECT_0 => Ok(true),
            WAIT_TIMEOUT => Ok(false),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// User plus kernel CPU time the process has used so far (`GetProcessTimes`). Counted in
    /// 100 ns units, but advanced by clock ticks: see [`cpu_time_resolution`].
    pub fn cpu_time(&self) -> io::Result<Duration> {
        let times = process_times(self.raw())?;
        Ok(Duration::from_nanos(
            (times.kernel + times.user).saturating_mul(100),
        ))
    }

    /// When the process was created, in 100 ns units since 1601 (`GetProcessTimes`): what
    /// tells a process from a later one that reused its pid.
    pub fn created(&self) -> io::Result<u64> {
        Ok(process_times(self.raw())?.created)
    }

    /// The process's working set, in bytes (`GetProcessMemoryInfo`): what Windows calls
    /// resident, the counterpart of Linux's RSS.
    pub fn working_set(&self) -> io::Result<u64> {
        // SAFETY: plain data, valid when zeroed.
        let mut counters: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
        counters.cb = size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
        // SAFETY: our handle is live and has PROCESS_QUERY_LIMITED_INFORMATION; the struct
        // is live and its size is given.
        let ok = unsafe { K32GetProcessMemoryInfo(self.raw(), &mut counters, counters.cb) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(counters.WorkingSetSize as u64)
    }

    /// How many handles the process holds: `GetProcessHandleCount` on Windows; under Wine,
    /// whose `GetProcessHandleCount` succeeds and always answers 0, from the system handle
    /// table (see [`handle_count_of`]).
    pub fn handle_count(&self) -> io::Result<u64> {
        if wine_version().is_some() {
            return handle_count_of(self.pid);
        }
        let mut count = 0u32;
        // SAFETY: our handle is live and has PROCESS_QUERY_LIMITED_INFORMATION; the
        // out-pointer is a live local.
        if unsafe { GetProcessHandleCount(self.raw(), &mut count) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u64::from(count))
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle()
    }
}

/// A process's times from `GetProcessTimes`, each in 100 ns units.
struct ProcessTimes {
    created: u64,
    kernel: u64,
    user: u64,
}

/// `GetProcessTimes` of `process` (a handle with PROCESS_QUERY_LIMITED_INFORMATION, or the
/// pseudo-handle of this process).
fn process_times(process: HANDLE) -> io::Result<ProcessTimes> {
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: the caller's handle is live with the right access; the four out-pointers are
    // live locals.
    let ok = unsafe { GetProcessTimes(process, &mut created, &mut exited, &mut kernel, &mut user) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let units =
        |time: FILETIME| u64::from(time.dwHighDateTime) << 32 | u64::from(time.dwLowDateTime);
    Ok(ProcessTimes {
        created: units(created),
        kernel: units(kernel),
        user: units(user),
    })
}

/// When this process was created, as [`Process::created`].
pub fn this_process_created() -> io::Result<u64> {
    // SAFETY: the pseudo-handle of this process needs no closing.
    Ok(process_times(unsafe { GetCurrentProcess() })?.created)
}

/// How finely [`Process::cpu_time`] moves, although it counts in 100 ns units: Windows
/// advances a process's times by the clock interrupt, 15.625 ms by default; Wine takes
/// them from Linux, in its 10 ms clock ticks.
pub fn cpu_time_resolution() -> Duration {
    if wine_version().is_some() {
        Duration::from_millis(10)
    } else {
        Duration::from_micros(15_625)
    }
}

/// One entry of the system handle table (`SYSTEM_HANDLE_TABLE_ENTRY_INFO`, for
/// `NtQuerySystemInformation` class 16), whose owner's pid is cut to 16 bits.
#[repr(C)]
#[derive(Clone, Copy)]
struct HandleEntry {
    owner_pid: u16,
    creator_back_trace_index: u16,
    object_type_index: u8,
    attributes: u8,
    value: u16,
    object: *mut c_void,
    granted_access: u32,
}

/// `SystemHandleInformation`.
const SYSTEM_HANDLE_INFORMATION: i32 = 16;

// The table's layout as read below: the count padded to 8 bytes, then entries of 24 bytes,
// as on 64-bit Windows (the only Windows target the tool is built for).
const _: () = assert!(size_of::<HandleEntry>() == 24 && size_of::<usize>() == 8);

/// How many handles process `pid` holds, counted in the system handle table: Wine 8's
/// `GetProcessHandleCount` succeeds and always answers 0, so a figure from it would say
/// nothing there. The table cuts each owner's pid to 16 bits, which is exact under Wine and
/// on a Windows whose pids stay below 65,536; a larger pid may count another process's
/// handles too, so read the figure as an upper bound there.
pub fn handle_count_of(pid: u32) -> io::Result<u64> {
    let mut buffer: Vec<u64> = vec![0; 64 * 1024];
    loop {
        let size = buffer.len() * 8;
        let mut returned = 0u32;
        // SAFETY: the buffer is live, writable and `size` bytes long.
        let status = unsafe {
            NtQuerySystemInformation(
                SYSTEM_HANDLE_INFORMATION,
                buffer.as_mut_ptr().cast(),
                u32::try_from(size).unwrap_or(u32::MAX),
                &mut returned,
            )
        };
        if status == STATUS_INFO_LENGTH_MISMATCH && buffer.len() < 1 << 26 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if status < 0 {
            return Err(io::Error::other(format!(
                "NtQuerySystemInformation(SystemHandleInformation) failed: {status:#x}"
            )));
        }
        // The count (a u32, padded to 8 bytes), then the entries.
        let count = buffer[0] as u32 as usize;
        let room = (size - 8) / size_of::<HandleEntry>();
        if count > room {
            return Err(io::Error::other(
                "the system handle table overflows its buffer",
            ));
        }
        // SAFETY: `count` entries follow the count, inside the buffer (checked above),
        // 8-aligned; the struct is plain data, valid for any bits.
        let entries = unsafe {
            std::slice::from_raw_parts(buffer.as_ptr().add(1).cast::<HandleEntry>(), count)
        };
        return Ok(entries
            .iter()
            .filter(|entry| entry.owner_pid == pid as u16)
            .count() as u64);
    }
}

/// Lets `handle` be inherited by the processes started from now on (`true`), or not.
pub fn set_inheritable(handle: BorrowedHandle<'_>, inheritable: bool) -> io::Result<()> {
    let flags = if inheritable { HANDLE_FLAG_INHERIT } else { 0 };
    // SAFETY: the handle is live for the borrow.
    if unsafe { SetHandleInformation(handle.as_raw_handle(), HANDLE_FLAG_INHERIT, flags) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of the handle value `value`, which the parent process left for this one
/// to inherit and passed on the command line; `what` names it in errors. A value that is
/// not an open handle here, or is one of this process's standard streams (which std owns),
/// is refused rather than owned (and later closed). Callers taking several values refuse
/// a value given twice.
pub fn take_inherited_handle(value: i64, what: &str) -> Result<OwnedHandle, String> {
    // Pseudo-handles are small negative numbers, real ones positive multiples of 4.
    if value <= 0 || value % 4 != 0 {
        return Err(format!("{value} is not a handle value ({what})"));
    }
    let raw = value as usize as RawHandle;
    for stream in [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE] {
        // SAFETY: only reads this process's standard handle values.
        if unsafe { GetStdHandle(stream) } == raw {
            return Err(format!("handle {value} is a standard stream, not {what}"));
        }
    }
    let mut flags = 0u32;
    // SAFETY: only asks whether the value names an open handle of this process.
    if unsafe { GetHandleInformation(raw, &mut flags) } == 0 {
        return Err(format!(
            "handle {value} ({what}) is not open in this process"
        ));
    }
    // SAFETY: the parent passed this value for this process alone, and it is open (checked
    // above); nothing else in this process knows it, so this is its only owner.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
}

/// The number to pass on a command line for an inherited `handle`.
pub fn handle_value(handle: BorrowedHandle<'_>) -> i64 {
    handle.as_raw_handle() as isize as i64
}

/// A new unnamed auto-reset event, not set, not inheritable.
pub fn auto_reset_event() -> io::Result<OwnedHandle> {
    // SAFETY: no security attributes, no name: plain call, a null result is checked.
    let raw = unsafe { CreateEventW(null_mut(), 0, 0, std::ptr::null()) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle that nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
}

/// Sets `event` (`SetEvent`).
pub fn set_event(event: BorrowedHandle<'_>) -> io::Result<()> {
    // SAFETY: the handle is live for the borrow.
    if unsafe { SetEvent(event.as_raw_handle()) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What ended a [`wait_event_or_exit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The event was set (and, being auto-reset, is reset again).
    Event,
    /// The other process exited.
    Exited,
    /// Neither, within the timeout.
    TimedOut,
}

/// Waits up to `timeout` for `event` to be set or `process` to end
/// (`WaitForMultipleObjects`, the event first, so that a set event wins).
pub fn wait_event_or_exit(
    event: BorrowedHandle<'_>,
    process: BorrowedHandle<'_>,
    timeout: Duration,
) -> io::Result<Woken> {
    let handles = [event.as_raw_handle(), process.as_raw_handle()];
    // SAFETY: both handles are live for the borrows and the array is live for the call.
    match unsafe { WaitForMultipleObjects(2, handles.as_ptr(), 0, timeout_ms(timeout)) } {
        WAIT_OBJECT_0 => Ok(Woken::Event),
        code if code == WAIT_OBJECT_0 + 1 => Ok(Woken::Exited),
        WAIT_TIMEOUT => Ok(Woken::TimedOut),
        WAIT_FAILED => Err(io::Error::last_os_error()),
        other => Err(io::Error::other(format!(
            "WaitForMultipleObjects returned {other}"
        ))),
    }
}

impl Process {
    /// The process handle, for [`wait_event_or_exit`].
    pub fn handle(&self) -> BorrowedHandle<'_> {
        // SAFETY: the handle is ours and lives as long as the borrow of `self`.
        unsafe { BorrowedHandle::borrow_raw(self.raw()) }
    }
}

/// An anonymous pipe (`CreatePipe`, which Windows makes a named pipe of a unique name): the
/// read end, then the write end, neither inheritable, both for synchronous I/O.
pub fn anonymous_pipe() -> io::Result<(OwnedHandle, OwnedHandle)> {
    let (mut read, mut write): (HANDLE, HANDLE) = (null_mut(), null_mut());
    // SAFETY: both out-pointers are live locals; no security attributes (not inheritable);
    // 0 asks for the default buffer size.
    if unsafe { CreatePipe(&mut read, &mut write, null_mut(), 0) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh handles that nothing else owns.
    Ok(unsafe {
        (
            OwnedHandle::from_raw_handle(read),
            OwnedHandle::from_raw_handle(write),
        )
    })
}

/// How many bytes wait to be read in the pipe (`PeekNamedPipe`); an error once the writer
/// has gone and everything it wrote was read (`ERROR_BROKEN_PIPE`).
pub fn pipe_bytes_available(pipe: BorrowedHandle<'_>) -> io::Result<u32> {
    let mut available = 0u32;
    // SAFETY: the handle is live for the borrow; no buffer is read into, and the count's
    // out-pointer is a live local.
    let ok = unsafe {
        PeekNamedPipe(
            pipe.as_raw_handle(),
            null_mut(),
            0,
            null_mut(),
            &mut available,
            null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(available)
}

/// Wine's version (`wine_get_version`, which Wine's ntdll exports and Windows's does not),
/// or `None` on Windows itself: so that figures measured under Wine say so.
pub fn wine_version() -> Option<String> {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: ntdll is loaded in every process; both names are NUL-terminated literals.
    let function = unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        if ntdll.is_null() {
            return None;
        }
        GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast())?
    };
    // SAFETY: Wine's `const char *wine_get_version(void)`, which returns a static
    // NUL-terminated string. It takes no arguments, and on x86_64 Windows the "C" and
    // "system" calling conventions are one and the same, so calling the address
    // `GetProcAddress` gave as this function type is sound.
    let version = unsafe {
        let get: unsafe extern "C" fn() -> *const std::ffi::c_char = std::mem::transmute(function);
        let text = get();
        if text.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(text)
    };
    Some(version.to_string_lossy().into_owned())
}
