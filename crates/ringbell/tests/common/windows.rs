//! What the cross-process suites need on Windows that std does not give: ending a child by
//! pid (the watchdog), the segment views and handles of this process (the hostile child,
//! the leak test), and a raw client of the control pipe that speaks its frames by hand
//! (the bad handshakes). Run under Wine 8 in CI, never on real Windows yet.

// Each suite uses a part.
#![allow(dead_code)]

use std::ffi::c_void;
use std::fs::File;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::windows::io::AsRawHandle;
use std::path::Path;
use std::time::Instant;

use windows_sys::Wdk::System::SystemInformation::NtQuerySystemInformation;
use windows_sys::Win32::Foundation::{CloseHandle, STATUS_INFO_LENGTH_MISMATCH};
use windows_sys::Win32::System::Memory::{
    VirtualQuery, MEMORY_BASIC_INFORMATION, MEM_COMMIT, MEM_MAPPED, PAGE_READWRITE,
};
use windows_sys::Win32::System::Threading::{OpenProcess, TerminateProcess, PROCESS_TERMINATE};

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

/// The segment's magic (`MAGIC` in `src/core/layout.rs`), its first word once set up.
const SEGMENT_MAGIC: [u8; 8] = *b"RINGBEL1";

/// Every mapped view in this process's address space, as (start, size), found by walking
/// it with `VirtualQuery`.
pub fn mapped_views() -> Vec<(usize, usize)> {
    let mut views = Vec::new();
    let mut address = 0usize;
    loop {
        let mut info = MaybeUninit::<MEMORY_BASIC_INFORMATION>::zeroed();
        // SAFETY: a query of our own address space into a live, writable struct of the
        // size passed; any address may be asked about.
        let written = unsafe {
            VirtualQuery(
                address as *const c_void,
                info.as_mut_ptr(),
                size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        };
        if written == 0 {
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
        let mut values: Vec<u64> = entries
            .iter()
            .filter(|entry| entry.owner_pid == pid as u16)
            .map(|entry| u64::from(entry.value))
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
