//! What the cross-process suites need on Windows that std does not give: ending a child by
//! pid (the watchdog), the segment views and handles of this process (the hostile child,
//! the leak test), another process's handles, views and memory seen from outside (the
//! fault suite's server), and a raw client of the control pipe that speaks its frames by
//! hand (the bad handshakes). Run under Wine 8 in CI, never on real Windows yet.

// Each suite uses a part.
#![allow(dead_code)]

use std::ffi::c_void;
use std::fs::File;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::Path;
use std::time::Instant;

use windows_sys::Wdk::System::SystemInformation::NtQuerySystemInformation;
use windows_sys::Wdk::System::Threading::{NtQueryInformationProcess, ProcessVmCounters};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, STATUS_INFO_LENGTH_MISMATCH};
use windows_sys::Win32::System::Diagnostics::Debug::ReadProcessMemory;
use windows_sys::Win32::System::Memory::{
    VirtualQuery, VirtualQueryEx, MEMORY_BASIC_INFORMATION, MEM_COMMIT, MEM_MAPPED, MEM_PRIVATE,
    PAGE_READWRITE,
};
use windows_sys::Win32::System::Performance::{QueryPerformanceCounter, QueryPerformanceFrequency};
use windows_sys::Win32::System::Threading::{
    OpenProcess, SetEvent, TerminateProcess, PROCESS_QUERY_INFORMATION, PROCESS_TERMINATE,
    PROCESS_VM_READ,
};

use super::PATIENCE;

/// Ends the process `pid` at once, as SIGKILL would (the watchdog's last act).
pub fn terminate(pid: u32) {
    // SAFETY: no pointer is involved; a null handle is checked before use.
    let process = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
    if process.is_null() {
        return;
    }
    // SAFETY: a process handle we just opened, closed once after.
    unsafe {
        TerminateProcess(process, 9);
        CloseHandle(process);
    }
}

/// The exit code [`terminate`] gives: what a test checks to know that its kill, not an
/// error of the child's own (exit code 1), ended the child. Wine keeps the low 8 bits of
/// an exit code, and 9 fits in them.
pub const TERMINATED: i32 = 9;

/// The system-wide monotonic clock in nanoseconds (`QueryPerformanceCounter`, one counter
/// for every process of the machine): a child can measure from a time its parent took.
pub fn monotonic_ns() -> u64 {
    let (mut count, mut frequency) = (0i64, 0i64);
    // SAFETY: both write one i64 into a live local; they cannot fail since Windows XP.
    unsafe {
        QueryPerformanceCounter(&mut count);
        QueryPerformanceFrequency(&mut frequency);
    }
    (count as u128 * 1_000_000_000 / frequency.max(1) as u128) as u64
}

/// The segment's magic (`MAGIC` in `src/core/layout.rs`), its first word once set up.
const SEGMENT_MAGIC: [u8; 8] = *b"RINGBEL1";

/// Every mapped view in this process's address space, as (start, size), found by walking
/// it with `VirtualQuery`.
pub fn mapped_views() -> Vec<(usize, usize)> {
    walk_views(|address, info| {
        // SAFETY: a query of our own address space into a live, writable struct of the
        // size passed; any address may be asked about.
        unsafe {
            VirtualQuery(
                address as *const c_void,
                info,
                size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        }
    })
}

/// The views a `VirtualQuery`-like `query(address, info) -> bytes written` finds in a walk
/// of an address space: the regions of type `MEM_MAPPED` that start a view.
fn walk_views(
    mut query: impl FnMut(usize, *mut MEMORY_BASIC_INFORMATION) -> usize,
) -> Vec<(usize, usize)> {
    let mut views = Vec::new();
    let mut address = 0usize;
    loop {
        let mut info = MaybeUninit::<MEMORY_BASIC_INFORMATION>::zeroed();
        if query(address, info.as_mut_ptr()) == 0 {
            return views;
        }
        // SAFETY: zeroed, plain data valid for any bits, and filled by the call.
        let info = unsafe { info.assume_init() };
        if info.Type == MEM_MAPPED && info.BaseAddress == info.AllocationBase {
            views.push((info.BaseAddress as usize, info.RegionSize));
        }
        let next = (info.BaseAddress as usize).saturating_add(info.RegionSize);
        if next <= address {
            return views;
        }
        address = next;
    }
}

/// Another process seen from outside, as a test reads `/proc/<pid>` on Linux: its handles
/// (the system handle table), its mapped views (`VirtualQueryEx`, the first bytes of each
/// read with `ReadProcessMemory`) and its memory counters (`NtQueryInformationProcess`,
/// `ProcessVmCounters`).
#[derive(Debug)]
pub struct ProcessProbe {
    pid: u32,
    process: OwnedHandle,
}

/// A process's memory counters (`VM_COUNTERS`), in bytes.
///
/// Seen under Wine 8 (a process that touched 200 MiB and freed them): `PeakWorkingSetSize`
/// and `PeakVirtualSize` keep their peaks, but `PeakPagefileUsage` fell back with
/// `PagefileUsage`: it is no peak there, so the tests do not rely on it.
#[derive(Debug, Clone, Copy)]
pub struct MemoryCounters {
    /// `WorkingSetSize`: resident memory.
    pub working_set: u64,
    /// `PeakWorkingSetSize`: the most it ever had resident.
    pub peak_working_set: u64,
    /// `VirtualSize`: its address space, reserved or committed.
    pub virtual_size: u64,
    /// `PeakVirtualSize`: the most address space it ever had.
    pub peak_virtual_size: u64,
    /// `PagefileUsage`: committed private memory.
    pub committed: u64,
    /// `PeakPagefileUsage` (no peak under Wine 8: see above).
    pub peak_committed: u64,
}

/// `VM_COUNTERS` (winternl.h), what `NtQueryInformationProcess(ProcessVmCounters)` fills.
#[repr(C)]
#[derive(Clone, Copy)]
struct VmCounters {
    peak_virtual_size: usize,
    virtual_size: usize,
    page_fault_count: u32,
    peak_working_set_size: usize,
    working_set_size: usize,
    quota_peak_paged_pool_usage: usize,
    quota_paged_pool_usage: usize,
    quota_peak_non_paged_pool_usage: usize,
    quota_non_paged_pool_usage: usize,
    pagefile_usage: usize,
    peak_pagefile_usage: usize,
}

impl ProcessProbe {
    /// Opens process `pid` for queries and reads. The caller keeps the process from being
    /// reaped meanwhile (a `ChildProcess` holds its handle), so the pid cannot name another.
    pub fn open(pid: u32) -> ProcessProbe {
        // SAFETY: no pointer is involved; a null handle is checked before use.
        let process = unsafe { OpenProcess(PROCESS_QUERY_INFORMATION | PROCESS_VM_READ, 0, pid) };
        assert!(
            !process.is_null(),
            "opening process {pid}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a handle we just opened and nothing else owns.
        let process = unsafe { OwnedHandle::from_raw_handle(process) };
        ProcessProbe { pid, process }
    }

    fn raw(&self) -> HANDLE {
        self.process.as_raw_handle()
    }

    /// The values of the handles the process holds ([`handles_of`]).
    pub fn handles(&self) -> Vec<u64> {
        handles_of(self.pid)
    }

    /// The process's mapped views, as (start, size).
    pub fn mapped_views(&self) -> Vec<(usize, usize)> {
        walk_views(|address, info| {
            // SAFETY: a query of another process's address space (our handle has
            // PROCESS_QUERY_INFORMATION) into a live, writable struct of the size passed.
            unsafe {
                VirtualQueryEx(
                    self.raw(),
                    address as *const c_void,
                    info,
                    size_of::<MEMORY_BASIC_INFORMATION>(),
                )
            }
        })
    }

    /// The process's committed private memory, in bytes: the sum of its `MEM_PRIVATE`
    /// regions in state `MEM_COMMIT` (a `VirtualQueryEx` walk). Memory committed and never
    /// touched counts (as in `VmData` on Linux), which `PagefileUsage` under Wine 8 misses.
    pub fn committed_private(&self) -> u64 {
        let mut total = 0u64;
        let mut address = 0usize;
        loop {
            let mut info = MaybeUninit::<MEMORY_BASIC_INFORMATION>::zeroed();
            // SAFETY: as in `mapped_views`.
            let written = unsafe {
                VirtualQueryEx(
                    self.raw(),
                    address as *const c_void,
                    info.as_mut_ptr(),
                    size_of::<MEMORY_BASIC_INFORMATION>(),
                )
            };
            if written == 0 {
                return total;
            }
            // SAFETY: zeroed, plain data valid for any bits, and filled by the call.
            let info = unsafe { info.assume_init() };
            if info.State == MEM_COMMIT && info.Type == MEM_PRIVATE {
                total += info.RegionSize as u64;
            }
            let next = (info.BaseAddress as usize).saturating_add(info.RegionSize);
            if next <= address {
                return total;
            }
            address = next;
        }
    }

    /// The process's views that begin with the segment's magic: the ringbell segments it
    /// has mapped, as (start, size).
    pub fn segment_views(&self) -> Vec<(usize, usize)> {
        self.mapped_views()
            .into_iter()
            .filter(|&(start, _)| {
                let mut first = [0u8; 8];
                let mut read = 0usize;
                // SAFETY: reads into a live local buffer of the size passed; the address is
                // the other process's, checked by the call (a view unmapped meanwhile fails).
                let ok = unsafe {
                    ReadProcessMemory(
                        self.raw(),
                        start as *const c_void,
                        first.as_mut_ptr().cast(),
                        first.len(),
                        &mut read,
                    )
                };
                ok != 0 && read == first.len() && first == SEGMENT_MAGIC
            })
            .collect()
    }

    /// The process's memory counters. `NtQueryInformationProcess` rather than
    /// `GetProcessMemoryInfo`, whose `PROCESS_MEMORY_COUNTERS` lacks the peak of the
    /// address space.
    pub fn memory(&self) -> MemoryCounters {
        let mut counters = MaybeUninit::<VmCounters>::zeroed();
        let size = size_of::<VmCounters>() as u32;
        let mut returned = 0u32;
        // SAFETY: a live, writable struct of the size passed; our handle has
        // PROCESS_QUERY_INFORMATION, as the call needs.
        let status = unsafe {
            NtQueryInformationProcess(
                self.raw(),
                ProcessVmCounters,
                counters.as_mut_ptr().cast(),
                size,
                &mut returned,
            )
        };
        assert!(
            status >= 0,
            "NtQueryInformationProcess(ProcessVmCounters) of process {}: {status:#x}",
            self.pid
        );
        // SAFETY: zeroed, plain data valid for any bits, and filled by the call.
        let counters = unsafe { counters.assume_init() };
        MemoryCounters {
            working_set: counters.working_set_size as u64,
            peak_working_set: counters.peak_working_set_size as u64,
            virtual_size: counters.virtual_size as u64,
            peak_virtual_size: counters.peak_virtual_size as u64,
            committed: counters.pagefile_usage as u64,
            peak_committed: counters.peak_pagefile_usage as u64,
        }
    }
}

/// The starts of this process's committed read-write views of at least `len` bytes that
/// begin with the segment's magic: the ringbell segments it has mapped.
pub fn segment_views(len: usize) -> Vec<usize> {
    mapped_views()
        .into_iter()
        .filter(|&(start, size)| {
            if size < len {
                return false;
            }
            let mut info = MaybeUninit::<MEMORY_BASIC_INFORMATION>::zeroed();
            // SAFETY: as in `mapped_views`.
            let written = unsafe {
                VirtualQuery(
                    start as *const c_void,
                    info.as_mut_ptr(),
                    size_of::<MEMORY_BASIC_INFORMATION>(),
                )
            };
            // SAFETY: as in `mapped_views`.
            let info = unsafe { info.assume_init() };
            if written == 0 || info.State != MEM_COMMIT || info.Protect != PAGE_READWRITE {
                return false;
            }
            // SAFETY: the first 8 bytes of a committed read-write view of this process
            // (checked above), read as bytes; the view's owner only ever writes them once.
            let first = unsafe { (start as *const [u8; 8]).read_volatile() };
            first == SEGMENT_MAGIC
        })
        .map(|(start, _)| start)
        .collect()
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

/// The values of the handles this process holds, sorted, from the system handle table:
/// Wine 8's `GetProcessHandleCount` succeeds and always answers 0. The table gives 16 bits
/// of each owner's pid and each value, enough under Wine, whose pids and values are small.
pub fn own_handles() -> Vec<u64> {
    handles_of(std::process::id())
}

/// The values of the handles the process `pid` holds, sorted, as [`own_handles`].
pub fn handles_of(pid: u32) -> Vec<u64> {
    handle_entries_of(pid)
        .into_iter()
        .map(|(value, _)| value)
        .collect()
}

/// The values of the handles this process holds with exactly the rights `access`, sorted.
pub fn own_handles_with_access(access: u32) -> Vec<u64> {
    handle_entries_of(std::process::id())
        .into_iter()
        .filter(|&(_, granted)| granted == access)
        .map(|(value, _)| value)
        .collect()
}

/// A ringer's rights (`EVENT_MODIFY_STATE | EVENT_QUERY_STATE`, the backend's
/// `RINGER_ACCESS`): what the server pushes into a client for its doorbell, and what a
/// client offers of its own. The query right lets the receiver check the event's reset mode.
pub const RINGER_RIGHTS: u32 = 0x0002 | 0x0001;

/// Sets every event this process holds with a ringer's rights ([`RINGER_RIGHTS`]), as a
/// peer may ring whenever it likes: the server's doorbell of each of its connections
/// among them (a connection's server sleeps on its doorbell, not on the pipe, whose bytes
/// after the handshake wake no Windows server), and any ringer a client offered of its own
/// doorbell (only a spurious wake-up of this process). Returns how many it set.
pub fn ring_every_ringer() -> usize {
    own_handles_with_access(RINGER_RIGHTS)
        .into_iter()
        .filter(|&value| set_event(value))
        .count()
}

/// Sets the event `value` names in this process, as a peer rings a doorbell it was given
/// a ringer for; `false` if the handle is not an event we may set. `value` comes from the
/// system handle table, 16 bits wide: enough under Wine (see [`own_handles`]).
pub fn set_event(value: u64) -> bool {
    // SAFETY: no memory is passed; a value that names no event makes the call fail.
    unsafe { SetEvent(value as usize as HANDLE) != 0 }
}

/// The (value, granted access) of each handle the process `pid` holds, sorted by value.
fn handle_entries_of(pid: u32) -> Vec<(u64, u32)> {
    let mut buffer: Vec<u64> = vec![0; 64 * 1024];
    loop {
        let size = buffer.len() * 8;
        let mut returned = 0u32;
        // SAFETY: the buffer is live, writable and `size` bytes long.
        let status = unsafe {
            NtQuerySystemInformation(
                SYSTEM_HANDLE_INFORMATION,
                buffer.as_mut_ptr().cast(),
                size as u32,
                &mut returned,
            )
        };
        if status == STATUS_INFO_LENGTH_MISMATCH {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        assert!(status >= 0, "NtQuerySystemInformation: {status:#x}");
        // The count (a u32, padded to 8 bytes), then the entries.
        let count = buffer[0] as u32 as usize;
        let room = (size - 8) / size_of::<HandleEntry>();
        assert!(count <= room, "the handle table overflows its buffer");
        // SAFETY: `count` entries follow the count, inside the buffer (checked above),
        // 8-aligned; the struct is plain data, valid for any bits.
        let entries = unsafe {
            std::slice::from_raw_parts(buffer.as_ptr().add(1).cast::<HandleEntry>(), count)
        };
        let mut values: Vec<(u64, u32)> = entries
            .iter()
            .filter(|entry| entry.owner_pid == pid as u16)
            .map(|entry| (u64::from(entry.value), entry.granted_access))
            .collect();
        values.sort_unstable();
        return values;
    }
}

/// A client of the control pipe that is not a ringbell client: it writes the pipe's frames
/// by hand (`src/sys/windows/frame.rs`: tag 0xB1, flags, grant count, a reserved byte, the
/// payload length u32 LE, the values u64 LE, the payload), or garbage.
#[derive(Debug)]
pub struct RawPipeClient {
    pipe: File,
}

/// A frame read back from the server.
#[derive(Debug)]
pub struct RawFrame {
    /// The handle values it carried (the server's process first, if flagged), which the
    /// server pushed into this process: [`RawPipeClient::read_frame`] closes them.
    pub values: usize,
    pub payload: Vec<u8>,
}

impl RawPipeClient {
    /// Opens the pipe named `path` (a full `\\.\pipe\…` name), waiting while every instance
    /// is busy.
    pub fn connect(path: &Path) -> RawPipeClient {
        let until = Instant::now() + PATIENCE;
        loop {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
            {
                Ok(pipe) => return RawPipeClient { pipe },
                // ERROR_PIPE_BUSY: the server is between two accepts.
                Err(error) if error.raw_os_error() == Some(231) && Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(error) => panic!("opening {} as a raw client: {error}", path.display()),
            }
        }
    }

    /// Writes bytes as they are (garbage, to the server).
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.pipe.write_all(bytes)
    }

    /// Writes `payload` in one frame, with `values` as the grants it offers.
    pub fn write_frame(&mut self, payload: &[u8], values: &[u64]) -> std::io::Result<()> {
        let mut frame = vec![0xB1, 0, values.len() as u8, 0];
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        for value in values {
            frame.extend_from_slice(&value.to_le_bytes());
        }
        frame.extend_from_slice(payload);
        self.pipe.write_all(&frame)
    }

    /// Reads one frame, and closes every handle value it carried: the server pushed them
    /// into this process, and a raw client adopts nothing.
    pub fn read_frame(&mut self) -> std::io::Result<RawFrame> {
        let mut header = [0u8; 8];
        self.pipe.read_exact(&mut header)?;
        assert_eq!(header[0], 0xB1, "a frame's tag");
        let values = usize::from(header[2]) + usize::from(header[1] & 1);
        let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let mut rest = vec![0u8; 8 * values + len];
        self.pipe.read_exact(&mut rest)?;
        for value in rest[..8 * values].chunks_exact(8) {
            let value = u64::from_le_bytes(value.try_into().expect("8 bytes"));
            // SAFETY: a handle the server pushed into this process for us, which nothing
            // here owns: closed once.
            unsafe { CloseHandle(value as usize as *mut c_void) };
        }
        Ok(RawFrame {
            values,
            payload: rest[8 * values..].to_vec(),
        })
    }

    /// A handle of this process for the server to pull: the value of our own pipe's
    /// handle, kept open by `self` (a file, where a doorbell should be).
    pub fn own_file_value(&self) -> u64 {
        self.pipe.as_raw_handle() as usize as u64
    }

    /// Reads until the server hangs up (what a stalling client does).
    pub fn read_to_end(&mut self) {
        let mut rest = Vec::new();
        let _ = self.pipe.read_to_end(&mut rest);
    }
}

/// A manual-reset event with every right (default security, no name): what a hostile
/// client may offer as its doorbell's ringer.
pub fn manual_reset_event() -> std::os::windows::io::OwnedHandle {
    use std::os::windows::io::FromRawHandle;
    // SAFETY: no pointer is passed but nulls; a null result is checked below.
    let raw = unsafe {
        windows_sys::Win32::System::Threading::CreateEventW(
            std::ptr::null(),
            1,
            0,
            std::ptr::null(),
        )
    };
    assert!(!raw.is_null(), "CreateEventW");
    // SAFETY: a new handle, which nothing else owns.
    unsafe { std::os::windows::io::OwnedHandle::from_raw_handle(raw) }
}
