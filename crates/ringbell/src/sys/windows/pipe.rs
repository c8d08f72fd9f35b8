//! The control channel on Windows: a named pipe, carrying the handshake and its grants,
//! kept open for the connection's life so that its end means "the peer is gone".
//!
//! # The pipe
//!
//! - **Its name** comes from the listener's address by the rule in `pipe_name.rs`: a full
//!   `\\.\pipe\NAME` as it is, any other path mapped to `\\.\pipe\ringbell-…`.
//! - **Its security descriptor** is explicit and owner-only (a protected DACL with one
//!   entry, all rights for our SID; `pipe_name.rs` writes it), where the default one lets
//!   Everyone and Anonymous read. `PIPE_REJECT_REMOTE_CLIENTS` keeps it on this machine.
//! - **A live server's name is refused** with `AddrInUse`: the first instance is created
//!   with `FILE_FLAG_FIRST_PIPE_INSTANCE`, which Windows refuses where the name exists
//!   (`ERROR_ACCESS_DENIED`); Wine 8 ignores the flag, so `bind` first connects to the name,
//!   as the Unix backend does to a socket path, and a server that answers (or whose
//!   instances are all busy) is live. A dead server's name needs no replacing: a pipe goes
//!   with its last server handle, so a server that exited left nothing behind. (Unlike a
//!   Unix socket file, a dropped listener's name lives on while connections it accepted
//!   stay open, and a new `bind` there is refused.)
//! - **Byte mode**, not message mode. The contract is a byte stream, which the handshake
//!   reads in pieces as they arrive (`try_read_with_grants`), and grants need framing
//!   inside the bytes anyway (`frame.rs`), so message boundaries would add nothing but a
//!   second way to be out of step (`ERROR_MORE_DATA` on a short read). In byte mode
//!   `PeekNamedPipe`'s count of waiting bytes is exactly what a read can take without
//!   waiting, which is how a non-blocking read is made without `PIPE_NOWAIT` (deprecated).
//! - **Overlapped handles** (`FILE_FLAG_OVERLAPPED`), on both ends. Every read, write and
//!   connect is issued with an `OVERLAPPED` and an event of its own and waited for with
//!   the time left before the stream's deadline (`CancelIoEx` when it passes, then a wait
//!   for the cancelled operation to end, so no `OVERLAPPED` outlives its call). That gives
//!   deadlines, which a synchronous pipe handle has no way to bound, and the handles are
//!   the kind mio's and tokio's named pipes take, and what a read issued ahead for readiness
//!   needs (step 3: see [`ControlStream::stirred`]).
//!
//! # Accepting
//!
//! The listener keeps one pending instance, on which an overlapped `ConnectNamedPipe` is
//! in flight; its event is set when a client connects (set by us too when the client came
//! before the call, `ERROR_PIPE_CONNECTED`). `accept` waits for that event (blocking; after
//! [`set_nonblocking`](ControlListener::set_nonblocking) it only looks, and says
//! `WouldBlock`), creates the next instance, and only then hands out the connected one:
//! so there is always an instance to connect to while the listener lives, and an instance
//! that could not be made is an error of this `accept`, with the connected client kept for
//! the next. The event is one per listener, reset for each instance, and is what
//! [`wait_readable`] waits on (and `acceptable`, with a one-shot registered wait); the
//! rest is already non-blocking. Windows cancels the I/O a thread issued when that thread
//! exits, so a
//! connect issued by a thread that has gone since (the one that bound the listener, or
//! made the last `accept`) ends with `ERROR_OPERATION_ABORTED`, with no client: the
//! instance then listens again, issued by the thread that looks.
//!
//! # Grants: the server pushes, the client offers and the server pulls
//!
//! A handle value names a slot of its receiver's table, whoever sent it, so a receiver
//! that adopts values trusts its sender not to name one of the receiver's own handles
//! (`handle.rs`). Which side a stream is comes from how it was made, never from what the
//! peer writes:
//!
//! - **The server** (an accepted stream) opens its client's process by the pid the pipe
//!   recorded (`GetNamedPipeClientProcessId`), with `PROCESS_DUP_HANDLE | SYNCHRONIZE |
//!   PROCESS_QUERY_LIMITED_INFORMATION`, and reads the client's user from *that* handle
//!   ([`peer_user`](ControlStream::peer_user)), so the user checked is the process pushed
//!   into. `send_with_grants` pushes each grant into it (`Grant::push_to`) and writes the
//!   values in the frame; with its first grants it also pushes its own process handle,
//!   `SYNCHRONIZE` only, so that the client can wait on its death. A push that fails, or a
//!   frame that is not written whole, retracts every handle pushed for it. What the
//!   server *receives* it never adopts: the client's values name handles in the client's
//!   own table, which the server pulls (`Grant::pull_from`, a fresh handle of its own).
//! - **The client** (a connected stream) adopts the values the server pushed
//!   (`Grant::from_peer_value`; the process handle as the stream's
//!   [`peer_process`](ControlStream::peer_process)). Its own grants it *offers*: it
//!   duplicates each within its own process with the peer's rights and sends those
//!   values, for the server to pull. It cannot know when the server has pulled them, so
//!   it keeps the offered handles until the stream is dropped (the handshake offers one,
//!   a shared doorbell's ringer, per connection).
//!
//! So a client never adopts anything but what a server wrote, after it read the server's
//! user (the handshake checks it before it reads), and a server adopts nothing at all.
//!
//! # The peer
//!
//! `peer_pid` is the pid the pipe recorded (`GetNamedPipe{Client,Server}ProcessId`): a
//! hint, as the pid may be reused once that process ends. `peer_user` opens the process by
//! it and, once its token is read, checks that the pipe is still connected: had the peer
//! died before the open, its end would have closed. `peer_gone` is `PeekNamedPipe` failing
//! (`ERROR_BROKEN_PIPE`), or the peer's process, where the stream has it, having ended;
//! it never blocks.
//!
//! # Readiness (step 3)
//!
//! The stream is not handed to tokio's named pipes: that would bind the handle to tokio's
//! completion port, and the completions of our own overlapped reads and writes (the
//! blocking API's, each waited for on its event with a deadline) would be queued there
//! too. And a byte-mode pipe signals nothing without a read in flight. So
//! [`stirred`](ControlStream::stirred) issues a read *ahead*, of up to 4 KiB into a buffer
//! of the stream's, and awaits the event of its `OVERLAPPED` with a one-shot wait
//! registered with the thread pool (`readiness.rs`); [`wait_readable`], the blocking
//! server's wait, waits on the same reads' events. The read ends when bytes arrive or the
//! peer hangs up (or dies: its end closes with it). What it brought is kept, and every
//! read of the stream takes it first, so the byte order and the frames are the same as
//! without it. This was chosen over registering a wait on the peer's process alone (which
//! misses the handshake's bytes) and over a zero-byte read (whose behaviour on pipes,
//! under Wine in particular, is not documented). Each read's end is reported once; a
//! hang-up every time; past 64 KiB unread (a peer writing what nobody asked for) nothing
//! more is read ahead and only the peer's process ending stirs the stream. A read issued
//! ahead is cancelled and waited for when its stream drops, and one cancelled because the
//! thread that issued it exited (Windows does that) is issued again by the next await.
//!
//! See CreateNamedPipeW, ConnectNamedPipe, CreateFileW (`SECURITY_SQOS_PRESENT`),
//! WaitNamedPipeW, PeekNamedPipe, GetOverlappedResult, CancelIoEx (learn.microsoft.com).

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    GetLastError, SetLastError, ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS, ERROR_BROKEN_PIPE,
    ERROR_IO_INCOMPLETE, ERROR_IO_PENDING, ERROR_NO_DATA, ERROR_OPERATION_ABORTED, ERROR_PIPE_BUSY,
    ERROR_PIPE_CONNECTED, ERROR_PIPE_NOT_CONNECTED, ERROR_SEM_TIMEOUT, FALSE, GENERIC_READ,
    GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE, TRUE, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, ReadFile, WriteFile, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED,
    OPEN_EXISTING, PIPE_ACCESS_DUPLEX, SECURITY_IDENTIFICATION, SECURITY_SQOS_PRESENT,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, GetNamedPipeClientProcessId, GetNamedPipeServerProcessId,
    PeekNamedPipe, WaitNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE,
    PIPE_UNLIMITED_INSTANCES, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, ResetEvent, SetEvent, WaitForMultipleObjects, WaitForSingleObject, INFINITE,
};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use super::frame::{self, Inbox, MAX_GRANTS, MAX_PAYLOAD};
use super::pipe_name::{pipe_name, security_descriptor_text};
#[cfg(feature = "tokio")]
use super::readiness::{in_runtime, Readiness};
use super::security::SecurityDescriptor;
use super::user::user_of_pid;
use super::{current_user, Grant, PeerProcess, PushedHandle, User};

/// The size of each direction's buffer, a hint to the OS: a few frames.
const BUFFER_SIZE: u32 = 64 * 1024;

/// What a pipe name looks like to the calls: UTF-16, NUL-terminated.
fn wide(name: &str) -> Vec<u16> {
    name.encode_utf16().chain(std::iter::once(0)).collect()
}

/// How long an overlapped operation may take.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Until it ends.
    Forever,
    /// Until this instant; then it is cancelled.
    Until(Instant),
}

impl Wait {
    fn of(deadline: Option<Instant>) -> Wait {
        deadline.map_or(Wait::Forever, Wait::Until)
    }

    /// The timeout for one wait: whole milliseconds, rounded up; `None` once passed.
    fn millis(self) -> Option<u32> {
        match self {
            Wait::Forever => Some(INFINITE),
            Wait::Until(deadline) => {
                let left = deadline.checked_duration_since(Instant::now())?;
                let millis = left.as_nanos().div_ceil(1_000_000);
                Some(u32::try_from(millis).unwrap_or(u32::MAX).min(INFINITE - 1))
            }
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("deadline passed {what}"))
}

/// A new manual-reset event, not set: what an `OVERLAPPED` signals its end with.
fn new_event() -> io::Result<OwnedHandle> {
    // SAFETY: no pointer is passed but nulls; a null result is an error, checked below.
    let raw = unsafe { CreateEventW(ptr::null(), TRUE, FALSE, ptr::null()) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `CreateEventW` returned a new handle, which nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
}

/// Runs one overlapped operation on `file` and waits for its end, at most until `wait`
/// says: `start` issues the call with the `OVERLAPPED` it is given (whose event is
/// `event`). Returns the bytes transferred; an operation cut off by the deadline is
/// cancelled and waited for, and gives what it transferred before, or `TimedOut` if
/// nothing. Every path waits for the operation's end before returning, so the
/// `OVERLAPPED` on this stack frame is never touched after it.
fn overlapped(
    file: BorrowedHandle<'_>,
    event: &OwnedHandle,
    wait: Wait,
    what: &str,
    start: impl FnOnce(*mut OVERLAPPED) -> i32,
) -> io::Result<u32> {
    let mut overlapped = OVERLAPPED {
        hEvent: event.as_raw_handle(),
        ..OVERLAPPED::default()
    };
    let finished = start(&mut overlapped) != 0;
    if !finished {
        // SAFETY: reads this thread's last error, set by the call just made.
        let error = unsafe { GetLastError() };
        if error != ERROR_IO_PENDING {
            // Never started: nothing refers to the OVERLAPPED.
            return Err(io::Error::from_raw_os_error(error as i32));
        }
    }
    let result = |block: i32| {
        let mut transferred = 0u32;
        // SAFETY: the OVERLAPPED is the one the operation was issued with, still alive;
        // with `block` the call waits for the operation's end.
        let done = unsafe {
            GetOverlappedResult(file.as_raw_handle(), &overlapped, &mut transferred, block)
        };
        if done == 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(transferred)
        }
    };
    if finished {
        return result(FALSE);
    }
    while let Some(millis) = wait.millis() {
        // SAFETY: a wait on an event handle we own.
        match unsafe { WaitForSingleObject(event.as_raw_handle(), millis) } {
            WAIT_OBJECT_0 => return result(FALSE),
            WAIT_TIMEOUT => continue,
            _ => break,
        }
    }
    // The deadline passed (or the wait failed): cancel, and wait for the operation to end.
    // SAFETY: cancels only the operation issued with this OVERLAPPED, on our handle.
    unsafe { CancelIoEx(file.as_raw_handle(), &overlapped) };
    match result(TRUE) {
        Ok(0) | Err(_) => Err(timed_out(what)),
        Ok(transferred) => Ok(transferred),
    }
}

/// Creates an instance of the pipe `name`: duplex, overlapped, byte mode, local clients
/// only, as many instances as the OS allows. With `first`, the name must be new:
/// `ERROR_ACCESS_DENIED` from Windows, or `ERROR_ALREADY_EXISTS` left by Wine's success,
/// means a live server has it, an `AddrInUse` error.
fn create_instance(
    name: &[u16],
    security: &SecurityDescriptor,
    first: bool,
) -> io::Result<OwnedHandle> {
    let attributes = security.attributes();
    let flags = PIPE_ACCESS_DUPLEX
        | FILE_FLAG_OVERLAPPED
        | if first {
            FILE_FLAG_FIRST_PIPE_INSTANCE
        } else {
            0
        };
    let mode = PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS;
    // SAFETY: sets this thread's last error, which the call may leave alone on success.
    unsafe { SetLastError(0) };
    // SAFETY: the name is NUL-terminated UTF-16 and the attributes point at the
    // descriptor, both alive for the call; an invalid result is an error, checked below.
    let raw = unsafe {
        CreateNamedPipeW(
            name.as_ptr(),
            flags,
            mode,
            PIPE_UNLIMITED_INSTANCES,
            BUFFER_SIZE,
            BUFFER_SIZE,
            0,
            &attributes,
        )
    };
    // SAFETY: reads this thread's last error, set (or cleared above) by the call.
    let error = unsafe { GetLastError() };
    if raw == INVALID_HANDLE_VALUE {
        if first && error == ERROR_ACCESS_DENIED {
            return Err(name_in_use(name));
        }
        return Err(io::Error::from_raw_os_error(error as i32));
    }
    // SAFETY: `CreateNamedPipeW` returned a new handle, which nothing else owns.
    let pipe = unsafe { OwnedHandle::from_raw_handle(raw) };
    if first && error == ERROR_ALREADY_EXISTS {
        return Err(name_in_use(name));
    }
    Ok(pipe)
}

fn name_in_use(name: &[u16]) -> io::Error {
    let name = String::from_utf16_lossy(&name[..name.len() - 1]);
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("a live server listens at {name}"),
    )
}

/// Connects to the pipe `name` as a client: read-write, overlapped, and allowing the
/// server to identify us but not to act as us (`SECURITY_IDENTIFICATION`). The raw error
/// of `CreateFileW` (`ERROR_PIPE_BUSY` when every instance is taken).
fn open_client(name: &[u16]) -> io::Result<OwnedHandle> {
    // SAFETY: the name is NUL-terminated UTF-16, alive for the call; no other pointer is
    // passed; an invalid result is an error, checked below.
    let raw = unsafe {
        CreateFileW(
            name.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            0,
            ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
            ptr::null_mut(),
        )
    };
    if raw == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `CreateFileW` returned a new handle, which nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
}

/// Whether a server answers at `name`: a connection made (and closed at once, which the
/// server sees as a probe), or every instance busy, or a server of another user whose
/// descriptor refuses us. Wine 8 ignores `FILE_FLAG_FIRST_PIPE_INSTANCE`, so this is what
/// keeps a second server off a live name there.
fn server_answers(name: &[u16]) -> io::Result<bool> {
    match open_client(name) {
        Ok(_probe) => Ok(true),
        Err(error) => match error.raw_os_error().map(|code| code as u32) {
            Some(ERROR_PIPE_BUSY) | Some(ERROR_ACCESS_DENIED) => Ok(true),
            _ if error.kind() == io::ErrorKind::NotFound => Ok(false),
            _ => Err(error),
        },
    }
}

/// The listener's next instance, with a `ConnectNamedPipe` in flight on it (or done).
struct Pending {
    /// `None` only once handed out by [`into_pipe`](Self::into_pipe).
    pipe: Option<OwnedHandle>,
    /// Set when a client has connected: the readiness to wait on. The listener's one
    /// event, reset for each instance, so that a wait can hold it without the lock.
    event: Arc<OwnedHandle>,
    /// The connect's `OVERLAPPED`, at a fixed address while the call is in flight.
    overlapped: Box<OVERLAPPED>,
    /// Whether the connect has ended (a client is there, or came and went).
    connected: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("pipe", &self.pipe)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

// SAFETY: the OVERLAPPED's raw pointers are the event (owned by this value) and the OS's
// own; the OS may write it from any thread while the call is in flight, and this value
// touches it only through the calls below, under the listener's mutex.
unsafe impl Send for Pending {}

impl Pending {
    /// Starts waiting for a client on the instance `pipe`, signalling `event` when one
    /// connects.
    fn listen(pipe: OwnedHandle, event: &Arc<OwnedHandle>) -> io::Result<Pending> {
        let event = event.clone();
        let mut pending = Pending {
            overlapped: Box::new(OVERLAPPED {
                hEvent: event.as_raw_handle(),
                ..OVERLAPPED::default()
            }),
            pipe: Some(pipe),
            event,
            connected: false,
        };
        pending.connect()?;
        Ok(pending)
    }

    /// Issues the overlapped `ConnectNamedPipe` on the instance (again, after a cancelled
    /// one), with the event reset first.
    fn connect(&mut self) -> io::Result<()> {
        // SAFETY: resets an event we own; no operation in flight signals it (the
        // instance it was set for has been handed out, failed, or ended its connect).
        unsafe { ResetEvent(self.event.as_raw_handle()) };
        *self.overlapped = OVERLAPPED {
            hEvent: self.event.as_raw_handle(),
            ..OVERLAPPED::default()
        };
        self.connected = false;
        // SAFETY: the pipe handle is ours and the OVERLAPPED lives in a box that this
        // value keeps (and does not free before the call has ended, see Drop).
        let started = unsafe { ConnectNamedPipe(self.raw_pipe(), &mut *self.overlapped) } != 0;
        // SAFETY: reads this thread's last error, set by the call just made.
        let error = unsafe { GetLastError() };
        match (started, error) {
            (true, _) => self.connected = true,
            (false, ERROR_IO_PENDING) => {}
            // A client connected before the call (and perhaps closed again): connected,
            // but the OS sets no event for it, so we do, for whoever waits on it.
            (false, ERROR_PIPE_CONNECTED | ERROR_NO_DATA) => {
                self.connected = true;
                // SAFETY: sets an event we own.
                unsafe { SetEvent(self.event.as_raw_handle()) };
            }
            (false, error) => {
                self.connected = true; // nothing in flight to cancel on drop
                return Err(io::Error::from_raw_os_error(error as i32));
            }
        }
        Ok(())
    }

    fn raw_pipe(&self) -> HANDLE {
        self.pipe
            .as_ref()
            .expect("the pipe is there until handed out")
            .as_raw_handle()
    }

    /// Whether a client has connected, waiting for one if `block`.
    fn ready(&mut self, block: bool) -> io::Result<bool> {
        if self.connected {
            return Ok(true);
        }
        let millis = if block { INFINITE } else { 0 };
        // SAFETY: a wait on an event we own.
        match unsafe { WaitForSingleObject(self.event.as_raw_handle(), millis) } {
            WAIT_OBJECT_0 => {}
            WAIT_TIMEOUT => return Ok(false),
            _ => return Err(io::Error::last_os_error()),
        }
        let mut transferred = 0u32;
        // SAFETY: the OVERLAPPED the connect was issued with, alive in its box; the event
        // is set, so the call has ended and this does not wait.
        let done = unsafe {
            GetOverlappedResult(self.raw_pipe(), &*self.overlapped, &mut transferred, FALSE)
        };
        self.connected = true;
        if done == 0 {
            let error = io::Error::last_os_error();
            match error.raw_os_error().map(|code| code as u32) {
                // A client that came and went before we looked: a connection all the
                // same, whose first read says it has gone (as a Unix probe does).
                Some(ERROR_NO_DATA) => {}
                // Windows cancels the I/O a thread issued when that thread exits: the
                // thread that made this instance (a `bind`, or the `accept` before) has
                // gone. No client came through it; listen again.
                Some(ERROR_OPERATION_ABORTED) => {
                    self.connect()?;
                    return if self.connected || block {
                        self.ready(block)
                    } else {
                        Ok(false)
                    };
                }
                _ => return Err(error),
            }
        }
        Ok(true)
    }

    /// The connected instance. Only once [`ready`](Self::ready) said so.
    fn into_pipe(mut self) -> OwnedHandle {
        debug_assert!(self.connected);
        self.pipe.take().expect("handed out once")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(pipe) = &self.pipe else {
            return;
        };
        if !self.connected {
            let mut transferred = 0u32;
            // SAFETY: cancels the connect issued with this OVERLAPPED, then waits for it
            // to end, so that the OS is done with the box before it is freed.
            unsafe {
                CancelIoEx(pipe.as_raw_handle(), &*self.overlapped);
                GetOverlappedResult(
                    pipe.as_raw_handle(),
                    &*self.overlapped,
                    &mut transferred,
                    TRUE,
                );
            }
        }
    }
}

/// A named pipe's listening end: one instance awaiting a client at any time. The pipe's
/// name goes with its last instance.
#[derive(Debug)]
pub(crate) struct ControlListener {
    /// The wait registered for [`acceptable`](Self::acceptable), on `connected`; declared
    /// first, so that it is unregistered before the event's handle closes.
    #[cfg(feature = "tokio")]
    readiness: Readiness,
    path: PathBuf,
    /// The pipe's name, UTF-16 and NUL-terminated.
    name: Vec<u16>,
    security: SecurityDescriptor,
    /// The next instance; `None` after an instance failed, until the next `accept`.
    pending: Mutex<Option<Pending>>,
    /// Set when a client has connected to the pending instance (each instance's connect
    /// signals it): what `wait_readable` waits on.
    connected: Arc<OwnedHandle>,
    nonblocking: std::sync::atomic::AtomicBool,
}

impl ControlListener {
    /// Binds the pipe that `path` names (the rule in `pipe_name.rs`), owner-only, or open
    /// to Authenticated Users too if `other_users`. A live server's name is an `AddrInUse`
    /// error.
    pub(crate) fn bind(path: &Path, other_users: bool) -> io::Result<ControlListener> {
        let name = wide(&pipe_name(&path.to_string_lossy())?);
        if server_answers(&name)? {
            return Err(name_in_use(&name));
        }
        // Owner-only (`pipe_name.rs` says what it holds), made once per listener and given
        // to every instance it creates.
        let security = SecurityDescriptor::from_sddl(&security_descriptor_text(
            &current_user().to_string(),
            other_users,
        ))?;
        let first = create_instance(&name, &security, true)?;
        let connected = Arc::new(new_event()?);
        let pending = Pending::listen(first, &connected)?;
        Ok(ControlListener {
            #[cfg(feature = "tokio")]
            readiness: Readiness::default(),
            path: path.to_path_buf(),
            name,
            security,
            pending: Mutex::new(Some(pending)),
            connected,
            nonblocking: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Makes [`accept`](Self::accept) return `WouldBlock` instead of waiting.
    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        self.nonblocking
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The next client: waits for one to connect (after `set_nonblocking`, `WouldBlock` if
    /// none has), makes the next instance, and returns the connected one as the server's
    /// end of a stream.
    pub(crate) fn accept(&self) -> io::Result<ControlStream> {
        let block = !self.nonblocking.load(std::sync::atomic::Ordering::Relaxed);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let current = match pending.as_mut() {
            Some(current) => current,
            None => pending.insert(Pending::listen(
                create_instance(&self.name, &self.security, false)?,
                &self.connected,
            )?),
        };
        match current.ready(block) {
            Ok(true) => {}
            Ok(false) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(error) => {
                // That instance is dead; the next accept makes another.
                *pending = None;
                return Err(error);
            }
        }
        let instance = create_instance(&self.name, &self.security, false)?;
        // Handed out before the next instance resets the shared event: its connect is
        // over, so nothing signals the event for it any more.
        let connected = pending.take().expect("checked above").into_pipe();
        match Pending::listen(instance, &self.connected) {
            Ok(next) => *pending = Some(next),
            // The next accept makes another; this client is served all the same.
            Err(error) => tracing::debug!("a pipe instance could not listen: {error}"),
        }
        ControlStream::new(connected, Side::Server)
    }

    /// Out of resources, the Unix listener spends a spare fd to tell one waiting client
    /// why it is refused. Here there is no handle limit to hit, and an `accept` that fails
    /// keeps its connected client for the next one, so nobody is left to refuse: `false`.
    pub(crate) fn refuse_one(&self, _refusal: &[u8]) -> bool {
        false
    }

    /// The address the listener was bound to.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that there is a tokio runtime to await [`acceptable`](Self::acceptable) in;
    /// each await registers its own wait (`readiness.rs`).
    #[cfg(feature = "tokio")]
    pub(crate) fn register(&mut self) -> io::Result<()> {
        in_runtime()
    }

    /// Waits until a client may be waiting to be accepted: the pending instance's connect
    /// event is set (a one-shot registered wait on it). The event stays set until the
    /// next instance listens, so the caller accepts until `WouldBlock`, as on Unix.
    #[cfg(feature = "tokio")]
    pub(crate) async fn acceptable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            if self.ready_now() {
                return std::task::Poll::Ready(Ok(()));
            }
            // SAFETY: always the listener's one connect event, which outlives `readiness`
            // (field order).
            unsafe {
                self.readiness
                    .poll_signalled(self.connected.as_handle(), cx)
            }
        })
        .await
    }

    /// The pipe's name, which the address maps to.
    #[cfg(test)]
    pub(crate) fn pipe_name(&self) -> String {
        String::from_utf16_lossy(&self.name[..self.name.len() - 1])
    }

    /// The instance awaiting a client, for a test to read its security descriptor.
    #[cfg(test)]
    pub(super) fn with_pending_pipe<T>(&self, f: impl FnOnce(BorrowedHandle<'_>) -> T) -> T {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let pipe = pending
            .as_ref()
            .and_then(|p| p.pipe.as_ref())
            .expect("a pending instance");
        f(pipe.as_handle())
    }
}

/// Which end of the pipe a stream is: decided by how it was made, never by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Accepted: pushes grants into its client, pulls what the client offers.
    Server,
    /// Connected: adopts what its server pushed, offers its own for the server to pull.
    Client,
}

/// The reading half's state: what has arrived and not been taken, and the event reads
/// wait on.
#[derive(Debug)]
struct Reader {
    inbox: Inbox<Grant>,
    event: OwnedHandle,
    /// The read issued ahead for readiness, and what it brought.
    ahead: Ahead,
}

/// How much a read issued ahead asks for: a handshake message and its frame's header.
const AHEAD_LEN: usize = 4096;
/// Bytes read ahead and not read by the stream's owner beyond which no more are read
/// ahead: a peer that wrote this much unasked is misbehaving, and from then on only its
/// process's end stirs the stream (see [`ControlStream::stirred`]).
const AHEAD_MAX: usize = 64 * 1024;

/// A read issued ahead on the pipe, so that the bytes or the hang-up that end it can be
/// awaited (a byte-mode pipe signals nothing without a read in flight; its `OVERLAPPED`'s
/// event is what a registered wait, or [`wait_readable`], watches). Only
/// [`ControlStream::stirred`] and [`wait_readable`] issue one;
/// every read of the stream takes what it brought first, so no byte is lost or reordered.
#[derive(Debug, Default)]
struct Ahead {
    /// The read in flight (or ended, not yet looked at).
    flight: Option<InFlight>,
    /// The event of its `OVERLAPPED` (manual-reset), made with the first.
    event: Option<OwnedHandle>,
    /// What it brought, not yet read.
    bytes: VecDeque<u8>,
    /// It ended with the peer's hang-up: every later read says so (once `bytes` are read).
    ended: bool,
    /// It failed otherwise: the next read returns the error.
    failed: Option<io::Error>,
}

/// The buffer and `OVERLAPPED` of a read in flight, at fixed addresses until it ends.
struct InFlight {
    buf: Box<[u8; AHEAD_LEN]>,
    overlapped: Box<OVERLAPPED>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

// SAFETY: the OVERLAPPED's raw pointer is the event, owned by the `Ahead` beside it; the
// OS writes the buffer and the OVERLAPPED while the read is in flight, and this value
// touches them only through the calls below, under the reader's mutex.
unsafe impl Send for InFlight {}

/// How a look at the read issued ahead ended.
enum Harvest {
    /// No read in flight (any more): what it brought is in `Ahead`.
    Done,
    /// Still in flight.
    InFlight,
    /// The deadline passed first; the read was cancelled and brought nothing.
    TimedOut,
}

/// The writing half's state.
#[derive(Debug)]
struct Writer {
    event: OwnedHandle,
    /// Set once a write stopped inside a frame: the peer is out of step, so no later
    /// write may pretend otherwise.
    cut_off: bool,
    /// Whether our process handle has reached the client (server side).
    process_sent: bool,
    /// The handles offered to the server, kept until the stream goes (client side).
    offered: Vec<OwnedHandle>,
}

/// One end of a connected control pipe.
#[derive(Debug)]
pub(crate) struct ControlStream {
    /// The wait registered for [`stirred`](Self::stirred) on the read issued ahead, and
    /// the one on the peer's process once too much was read ahead; unregistered in `Drop`
    /// before anything they watch closes.
    #[cfg(feature = "tokio")]
    readiness: Readiness,
    #[cfg(feature = "tokio")]
    death: Readiness,
    pipe: OwnedHandle,
    side: Side,
    reader: Mutex<Reader>,
    writer: Mutex<Writer>,
    /// While set, every read and write must complete by then (the handshake's deadline).
    deadline: Mutex<Option<Instant>>,
    /// The peer's process: the server opens its client's; the client adopts the one its
    /// server pushed.
    peer: OnceLock<PeerProcess>,
}

/// How a read that may not wait ended.
enum Filled {
    /// A frame's payload is ready.
    Ready,
    /// Nothing more has arrived.
    Nothing,
    /// The peer hung up, between frames.
    End,
}

impl ControlStream {
    fn new(pipe: OwnedHandle, side: Side) -> io::Result<ControlStream> {
        Ok(ControlStream {
            #[cfg(feature = "tokio")]
            readiness: Readiness::default(),
            #[cfg(feature = "tokio")]
            death: Readiness::default(),
            pipe,
            side,
            reader: Mutex::new(Reader {
                inbox: Inbox::default(),
                event: new_event()?,
                ahead: Ahead::default(),
            }),
            writer: Mutex::new(Writer {
                event: new_event()?,
                cut_off: false,
                process_sent: false,
                offered: Vec::new(),
            }),
            deadline: Mutex::new(None),
            peer: OnceLock::new(),
        })
    }

    /// Connects to the listener that `path` names, giving up at `deadline`. Every instance
    /// busy (a server between two accepts, or with a queue of clients) is waited out with
    /// `WaitNamedPipeW`; no pipe of that name is a `NotFound` error.
    pub(crate) fn connect(path: &Path, deadline: Instant) -> io::Result<ControlStream> {
        let name = wide(&pipe_name(&path.to_string_lossy())?);
        let wait = Wait::Until(deadline);
        loop {
            let Some(millis) = wait.millis() else {
                return Err(timed_out("while every instance of the pipe was busy"));
            };
            match open_client(&name) {
                Ok(pipe) => return ControlStream::new(pipe, Side::Client),
                Err(error) if error.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) => {}
                Err(error) => return Err(error),
            }
            // SAFETY: the name is NUL-terminated UTF-16, alive for the call. A zero
            // timeout would mean the server's default, so at least 1 ms.
            if unsafe { WaitNamedPipeW(name.as_ptr(), millis.max(1)) } == 0 {
                let error = io::Error::last_os_error();
                if error.raw_os_error() != Some(ERROR_SEM_TIMEOUT as i32) {
                    return Err(error);
                }
            }
        }
    }

    /// Bounds every later read and write by `deadline` (`None`: no bound). A deadline that
    /// passes surfaces as a `TimedOut` error.
    pub(crate) fn set_deadline(&self, deadline: Option<Instant>) -> io::Result<()> {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = deadline;
        Ok(())
    }

    fn wait(&self) -> Wait {
        Wait::of(*self.deadline.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn reader(&self) -> MutexGuard<'_, Reader> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // -----------------------------------------------------------------------------------
    // The peer.

    /// The peer's process. The server's end opens its client's by the pid the pipe
    /// recorded, once (and checks that the pipe is still connected after, so that the
    /// process opened is not a later one with a reused pid); the client's end has its
    /// server's once the server pushed it, with its first grants.
    pub(crate) fn peer_process(&self) -> io::Result<&PeerProcess> {
        if let Some(peer) = self.peer.get() {
            return Ok(peer);
        }
        match self.side {
            Side::Client => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the server has not sent its process handle yet (it comes with its first grants)",
            )),
            Side::Server => {
                let opened = PeerProcess::open(self.peer_pid()?)?;
                self.still_connected()?;
                // A racing caller may have set it first: then ours is closed here.
                let _ = self.peer.set(opened);
                Ok(self.peer.get().expect("set above"))
            }
        }
    }

    /// The user of the process at the other end: the server reads it from its client's
    /// process handle (the one it pushes into), the client from the process of the pid its
    /// server's pipe recorded.
    pub(crate) fn peer_user(&self) -> io::Result<User> {
        let user = match self.side {
            Side::Server => self.peer_process()?.user()?,
            Side::Client => user_of_pid(self.peer_pid()?)?,
        };
        self.still_connected()?;
        Ok(user)
    }

    /// The pid of the process at the other end, as the pipe recorded it: a hint.
    pub(crate) fn peer_pid(&self) -> io::Result<u32> {
        let mut pid = 0u32;
        // SAFETY: the pipe handle is ours, and the out-pointer points at a live local.
        let ok = unsafe {
            match self.side {
                Side::Server => GetNamedPipeClientProcessId(self.pipe.as_raw_handle(), &mut pid),
                Side::Client => GetNamedPipeServerProcessId(self.pipe.as_raw_handle(), &mut pid),
            }
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(pid)
    }

    /// Whether a grant this end sends stays receivable if this process ends before the
    /// peer reads it: yes from the server, which pushes its handles into the client's
    /// table; no from the client, whose handles the server pulls from the client's table,
    /// which goes with the client's process. (The large-message region of a client is
    /// therefore not used on Windows: `conn/large.rs`.)
    pub(crate) fn grants_outlive_sender(&self) -> bool {
        matches!(self.side, Side::Server)
    }

    /// Whether the peer has closed its end (or its process died): the pipe is broken, or
    /// the peer's process, where this end has it, has ended (which a peer cannot hide by
    /// writing before it dies). Never blocks.
    pub(crate) fn peer_gone(&self) -> bool {
        let broken = self.bytes_waiting().is_err();
        broken || self.peer.get().is_some_and(PeerProcess::has_ended)
    }

    /// The bytes that a read could take now (`PeekNamedPipe`); an error if the pipe is
    /// broken.
    fn bytes_waiting(&self) -> io::Result<u32> {
        let mut available = 0u32;
        // SAFETY: the pipe handle is ours; no buffer is passed, only the count's out-pointer,
        // which points at a live local.
        let ok = unsafe {
            PeekNamedPipe(
                self.pipe.as_raw_handle(),
                ptr::null_mut(),
                0,
                ptr::null_mut(),
                &mut available,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(available)
    }

    fn still_connected(&self) -> io::Result<()> {
        match self.bytes_waiting() {
            Ok(_) => Ok(()),
            Err(error) if is_hang_up(&error) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the peer hung up before its process could be identified",
            )),
            Err(error) => Err(error),
        }
    }

    // -----------------------------------------------------------------------------------
    // Writing.

    /// Writes all of `bytes` (nothing if empty).
    pub(crate) fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let mut writer = self.writer();
        self.write_frames(&mut writer, None, &[], bytes, self.wait())
    }

    /// Writes `bytes` if the pipe takes them at once, without waiting, and reports whether
    /// it did. For a refusal to a client that may already be gone.
    pub(crate) fn try_send(&self, bytes: &[u8]) -> bool {
        let mut writer = self.writer();
        self.write_frames(&mut writer, None, &[], bytes, Wait::Until(Instant::now()))
            .is_ok()
    }

    /// Writes all of `bytes` with `grants` attached to the first byte. The server's end
    /// pushes each grant into its client (with its own process handle, the first time),
    /// and takes every one back if the frame is not written whole; the client's end offers
    /// a copy of each for the server to pull. More than [`MAX_GRANTS`], or grants without a
    /// byte to come with, is an `InvalidInput` error, as on Unix.
    pub(crate) fn send_with_grants(&self, bytes: &[u8], grants: &[&Grant]) -> io::Result<()> {
        if grants.len() > MAX_GRANTS || (bytes.is_empty() && !grants.is_empty()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at most MAX_GRANTS grants a message, and at least one byte to carry them",
            ));
        }
        if grants.is_empty() {
            return self.write_all(bytes);
        }
        let wait = self.wait();
        let mut writer = self.writer();
        match self.side {
            Side::Server => {
                let peer = self.peer_process()?;
                let mut pushed = Pushed::new(peer);
                let process = if writer.process_sent {
                    None
                } else {
                    Some(pushed.push(&PeerProcess::grant_of_this_process()?)?)
                };
                let mut values = Vec::with_capacity(grants.len());
                for grant in grants {
                    values.push(pushed.push(grant)?);
                }
                self.write_frames(&mut writer, process, &values, bytes, wait)?;
                pushed.delivered();
                writer.process_sent = true;
            }
            Side::Client => {
                let offers = grants
                    .iter()
                    .map(|grant| grant.offer())
                    .collect::<io::Result<Vec<OwnedHandle>>>()?;
                let values: Vec<u64> = offers
                    .iter()
                    .map(|offer| offer.as_raw_handle() as u64)
                    .collect();
                // Not written whole, the frame is never complete at the server, which
                // therefore never pulls them: they close here.
                self.write_frames(&mut writer, None, &values, bytes, wait)?;
                writer.offered.extend(offers);
            }
        }
        Ok(())
    }

    /// Writes `bytes` as frames of at most `MAX_PAYLOAD` bytes, `process` and `values` with
    /// the first.
    fn write_frames(
        &self,
        writer: &mut Writer,
        mut process: Option<u64>,
        mut values: &[u64],
        bytes: &[u8],
        wait: Wait,
    ) -> io::Result<()> {
        if writer.cut_off {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier write stopped inside a frame; the stream is out of step",
            ));
        }
        for chunk in bytes.chunks(MAX_PAYLOAD) {
            let frame = frame::encode(process.take(), values, chunk)?;
            values = &[];
            self.write_raw_locked(writer, &frame, wait)?;
        }
        Ok(())
    }

    /// Writes `bytes` as they are (a frame, or a test's garbage).
    fn write_raw_locked(
        &self,
        writer: &mut Writer,
        mut bytes: &[u8],
        wait: Wait,
    ) -> io::Result<()> {
        let mut started = false;
        while !bytes.is_empty() {
            let len = bytes.len().min(u32::MAX as usize) as u32;
            let written = overlapped(
                self.pipe.as_handle(),
                &writer.event,
                wait,
                "while writing to the control pipe",
                // SAFETY: the buffer is alive and `len` bytes long until the operation
                // ends, which `overlapped` waits for; the OVERLAPPED is its own.
                |overlapped| unsafe {
                    WriteFile(
                        self.pipe.as_raw_handle(),
                        bytes.as_ptr(),
                        len,
                        ptr::null_mut(),
                        overlapped,
                    )
                },
            );
            match written {
                Ok(0) => {
                    writer.cut_off |= started;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(written) => {
                    started = true;
                    bytes = &bytes[written as usize..];
                }
                Err(error) => {
                    writer.cut_off |= started;
                    return Err(if is_hang_up(&error) {
                        io::Error::new(io::ErrorKind::BrokenPipe, error)
                    } else {
                        error
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes raw bytes, bypassing the framing: a hostile peer, for tests.
    #[cfg(test)]
    pub(super) fn write_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let mut writer = self.writer();
        self.write_raw_locked(&mut writer, bytes, self.wait())
    }

    // -----------------------------------------------------------------------------------
    // Reading.

    /// Reads exactly `buf.len()` bytes, closing any grants that came with them. (The
    /// handshake reads with grants; the tests read without.)
    #[cfg(test)]
    pub(crate) fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        self.recv_with_grants(buf).map(drop)
    }

    /// Reads exactly `buf.len()` bytes and returns the grants that came with them. More
    /// than [`MAX_GRANTS`] is an `InvalidData` error (and they are closed).
    pub(crate) fn recv_with_grants(&self, buf: &mut [u8]) -> io::Result<Vec<Grant>> {
        let mut reader = self.reader();
        let mut grants = Vec::new();
        let mut filled = 0;
        while filled < buf.len() {
            let (taken, mut came) = reader.inbox.take(&mut buf[filled..]);
            filled += taken;
            grants.append(&mut came);
            if filled == buf.len() {
                break;
            }
            match self.fill(&mut reader, false)? {
                Filled::Ready => {}
                Filled::Nothing => unreachable!("a blocking read waits"),
                Filled::End => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
        if grants.len() > MAX_GRANTS {
            return Err(too_many_grants());
        }
        Ok(grants)
    }

    /// Reads what has arrived, without waiting (`None`: no byte has), with the grants that
    /// came with the bytes read; `Some((0, _))` once the peer has hung up.
    pub(crate) fn try_read_with_grants(
        &self,
        buf: &mut [u8],
    ) -> io::Result<Option<(usize, Vec<Grant>)>> {
        let mut reader = self.reader();
        let (taken, grants) = reader.inbox.take(buf);
        if taken > 0 || buf.is_empty() {
            return Ok(Some((taken, grants)));
        }
        match self.fill(&mut reader, true)? {
            Filled::Ready => Ok(Some(reader.inbox.take(buf))),
            Filled::Nothing => Ok(None),
            Filled::End => Ok(Some((0, Vec::new()))),
        }
    }

    /// Reads from the pipe until a frame is complete (its grants made ours), or, if
    /// `poll`, until nothing more has arrived.
    fn fill(&self, reader: &mut Reader, poll: bool) -> io::Result<Filled> {
        let wait = self.wait();
        let mut buf = [0u8; 4096];
        loop {
            let mut wanted = reader.inbox.wanted()?.min(buf.len());
            if wanted == 0 {
                return Ok(Filled::Ready);
            }
            // What a read issued ahead brought comes first: the bytes already taken from
            // one, then, once they are used up, the one in flight. Not the other way round:
            // `stirred` issues a new read ahead while the bytes of the last one may still
            // be unread (a large-message region's grant, which arrives after the
            // handshake while the connection awaits its doorbell), and waiting for that
            // read, which only more bytes would end, left them unread behind it (seen
            // under Wine: the grant "never arrived").
            if reader.ahead.bytes.is_empty() {
                match self.harvest(&mut reader.ahead, (!poll).then_some(wait)) {
                    Harvest::Done => {}
                    Harvest::InFlight => return Ok(Filled::Nothing),
                    Harvest::TimedOut => {
                        return Err(timed_out("while reading from the control pipe"))
                    }
                }
            }
            if !reader.ahead.bytes.is_empty() {
                let taken = wanted.min(reader.ahead.bytes.len());
                for (slot, byte) in buf.iter_mut().zip(reader.ahead.bytes.drain(..taken)) {
                    *slot = byte;
                }
                if self.received(reader, &buf[..taken])? {
                    return Ok(Filled::Ready);
                }
                continue;
            }
            if reader.ahead.ended {
                return self.ended(reader);
            }
            if let Some(error) = reader.ahead.failed.take() {
                return Err(error);
            }
            if poll {
                match self.bytes_waiting() {
                    Ok(0) => return Ok(Filled::Nothing),
                    Ok(available) => wanted = wanted.min(available as usize),
                    Err(error) if is_hang_up(&error) => return self.ended(reader),
                    Err(error) => return Err(error),
                }
            }
            let read = overlapped(
                self.pipe.as_handle(),
                &reader.event,
                wait,
                "while reading from the control pipe",
                // SAFETY: the buffer is alive and `wanted` bytes long until the operation
                // ends, which `overlapped` waits for; the OVERLAPPED is its own.
                |overlapped| unsafe {
                    ReadFile(
                        self.pipe.as_raw_handle(),
                        buf.as_mut_ptr(),
                        wanted as u32,
                        ptr::null_mut(),
                        overlapped,
                    )
                },
            );
            let read = match read {
                Ok(0) => return self.ended(reader),
                Ok(read) => read as usize,
                Err(error) if is_hang_up(&error) => return self.ended(reader),
                Err(error) => return Err(error),
            };
            if self.received(reader, &buf[..read])? {
                return Ok(Filled::Ready);
            }
        }
    }

    /// Adds bytes read to the inbox; whether they complete a frame (its grants made ours).
    fn received(&self, reader: &mut Reader, bytes: &[u8]) -> io::Result<bool> {
        let Some(frame) = reader.inbox.received(bytes)? else {
            return Ok(false);
        };
        match self.grants_of(frame.process, &frame.grants) {
            Ok(grants) => reader.inbox.deliver(frame.payload, grants),
            Err(error) => {
                reader.inbox.break_with(&error);
                return Err(error);
            }
        }
        Ok(true)
    }

    // -----------------------------------------------------------------------------------
    // Reading ahead, for readiness.

    /// Issues a read ahead of `AHEAD_LEN` bytes. One that fails at once is recorded as its
    /// end (a hang-up, or the error for the next read).
    fn issue_ahead(&self, ahead: &mut Ahead) -> io::Result<()> {
        debug_assert!(ahead.flight.is_none());
        if ahead.event.is_none() {
            ahead.event = Some(new_event()?);
        }
        let event = ahead.event.as_ref().expect("made above").as_raw_handle();
        // SAFETY: resets an event we own; no read is in flight to signal it.
        unsafe { ResetEvent(event) };
        let mut flight = InFlight {
            buf: Box::new([0u8; AHEAD_LEN]),
            overlapped: Box::new(OVERLAPPED {
                hEvent: event,
                ..OVERLAPPED::default()
            }),
        };
        // SAFETY: the buffer and the OVERLAPPED are boxed, and kept in `ahead.flight`
        // until the read has ended (`harvest`, or the stream's Drop, which waits for it).
        let started = unsafe {
            ReadFile(
                self.pipe.as_raw_handle(),
                flight.buf.as_mut_ptr(),
                AHEAD_LEN as u32,
                ptr::null_mut(),
                &mut *flight.overlapped,
            )
        } != 0;
        if !started {
            // SAFETY: reads this thread's last error, set by the call just made.
            let error = unsafe { GetLastError() };
            if error != ERROR_IO_PENDING {
                let error = io::Error::from_raw_os_error(error as i32);
                if is_hang_up(&error) {
                    ahead.ended = true;
                } else {
                    ahead.failed = Some(error);
                }
                return Ok(());
            }
        }
        // Done at once or pending: either way `harvest` takes its result.
        ahead.flight = Some(flight);
        Ok(())
    }

    /// Takes the end of the read issued ahead, if one is in flight: with `wait`, waits for
    /// it until the deadline (then cancels it, and waits for that); without, only looks.
    fn harvest(&self, ahead: &mut Ahead, wait: Option<Wait>) -> Harvest {
        let Some(flight) = ahead.flight.as_ref() else {
            return Harvest::Done;
        };
        let pipe = self.pipe.as_raw_handle();
        let mut cancelled = false;
        if let Some(wait) = wait {
            let event = ahead
                .event
                .as_ref()
                .expect("made with the read")
                .as_raw_handle();
            let mut ended = false;
            while let Some(millis) = wait.millis() {
                // SAFETY: a wait on an event we own.
                match unsafe { WaitForSingleObject(event, millis) } {
                    WAIT_OBJECT_0 => {
                        ended = true;
                        break;
                    }
                    WAIT_TIMEOUT => continue,
                    _ => break,
                }
            }
            if !ended {
                // SAFETY: cancels only the read issued with this OVERLAPPED, on our pipe;
                // the blocking look below waits for its end.
                unsafe { CancelIoEx(pipe, &*flight.overlapped) };
                cancelled = true;
            }
        }
        let mut transferred = 0u32;
        // SAFETY: the OVERLAPPED the read was issued with, alive in its box; blocking only
        // when a wait was asked for, and then the read has ended or been cancelled.
        let done = unsafe {
            GetOverlappedResult(
                pipe,
                &*flight.overlapped,
                &mut transferred,
                if wait.is_some() { TRUE } else { FALSE },
            )
        } != 0;
        if !done {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(ERROR_IO_INCOMPLETE as i32) {
                return Harvest::InFlight;
            }
            ahead.flight = None;
            if is_hang_up(&error) {
                ahead.ended = true;
            } else if error.raw_os_error() == Some(ERROR_OPERATION_ABORTED as i32) {
                // Cancelled: by our deadline, or because the thread that issued it has
                // exited (Windows cancels a thread's I/O then). Nothing came.
                if cancelled {
                    return Harvest::TimedOut;
                }
            } else {
                ahead.failed = Some(error);
            }
            return Harvest::Done;
        }
        if transferred == 0 {
            ahead.ended = true;
        } else {
            ahead.bytes.extend(&flight.buf[..transferred as usize]);
        }
        ahead.flight = None;
        Harvest::Done
    }

    /// Whether a read issued ahead is in flight (its end, if it has come, taken), for the
    /// backend's tests.
    #[cfg(all(test, feature = "tokio"))]
    pub(super) fn read_ahead_in_flight(&self) -> bool {
        let mut reader = self.reader();
        matches!(self.harvest(&mut reader.ahead, None), Harvest::InFlight)
    }

    /// Checks that there is a tokio runtime to await [`stirred`](Self::stirred) in; each
    /// await registers its own wait (`readiness.rs`).
    #[cfg(feature = "tokio")]
    pub(crate) fn register(&mut self) -> io::Result<()> {
        in_runtime()
    }

    /// Unregisters the waits an await left armed. A read issued ahead stays in flight;
    /// the next read of the stream takes what it brings.
    #[cfg(feature = "tokio")]
    pub(crate) fn deregister(&mut self) {
        self.readiness.clear();
        self.death.clear();
    }

    /// Waits until the stream reports something: bytes arrived (during the handshake, the
    /// peer's next message; after it, bytes a misbehaving peer wrote) or the peer hung up
    /// (closed its end, or died). The caller finds out which by reading, or with
    /// [`peer_gone`](Self::peer_gone).
    ///
    /// A read is issued ahead (a byte-mode pipe signals nothing otherwise) and a one-shot
    /// registered wait set on its event. Each read's end is reported once, as an edge, so
    /// bytes nobody reads do not make every wait return at once; a hang-up is reported
    /// every time. Once `AHEAD_MAX` bytes lie unread, nothing more is read ahead and only
    /// the peer's process ending (where the stream has it) stirs the stream.
    #[cfg(feature = "tokio")]
    pub(crate) async fn stirred(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_stirred(cx)).await
    }

    #[cfg(feature = "tokio")]
    fn poll_stirred(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        loop {
            let mut guard = self.reader();
            let reader = &mut *guard;
            if reader.ahead.flight.is_some() {
                match self.harvest(&mut reader.ahead, None) {
                    Harvest::InFlight => {}
                    // One read's end, reported once.
                    Harvest::Done | Harvest::TimedOut => return Poll::Ready(Ok(())),
                }
                let event = reader.ahead.event.as_ref().expect("made with the read");
                // SAFETY: always the stream's one read-ahead event, which lives in the
                // reader until the stream drops, and `Drop` clears `readiness` first.
                match unsafe { self.readiness.poll_signalled(event.as_handle(), cx) } {
                    // Fired: look at the read again.
                    Poll::Ready(Ok(())) => continue,
                    other => return other,
                }
            }
            let payload_ready = !matches!(reader.inbox.wanted(), Ok(wanted) if wanted > 0);
            if reader.ahead.ended || reader.ahead.failed.is_some() || payload_ready {
                return Poll::Ready(Ok(()));
            }
            if reader.ahead.bytes.len() >= AHEAD_MAX {
                drop(guard);
                let Some(peer) = self.peer.get() else {
                    return Poll::Pending;
                };
                // SAFETY: the peer's process, set once in `peer` and never replaced; it
                // lives as long as the stream, and `Drop` clears `death` first.
                return unsafe { self.death.poll_signalled(peer.as_handle(), cx) };
            }
            if let Err(error) = self.issue_ahead(&mut reader.ahead) {
                return Poll::Ready(Err(error));
            }
        }
    }

    /// The peer hung up: between frames, the end of the stream; inside one, an error.
    fn ended(&self, reader: &Reader) -> io::Result<Filled> {
        if reader.inbox.mid_frame() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer hung up inside a frame",
            ));
        }
        Ok(Filled::End)
    }

    /// The grants for a frame's values: adopted on the client's end (the server pushed
    /// them), pulled from the client on the server's end. All or none: if one is refused,
    /// those already made are closed.
    fn grants_of(&self, process: Option<u64>, values: &[u64]) -> io::Result<Vec<Grant>> {
        match self.side {
            Side::Client => {
                let adopted: Vec<io::Result<Grant>> = process
                    .iter()
                    .chain(values)
                    .map(|&value| Grant::from_peer_value(value))
                    .collect();
                let mut adopted = adopted.into_iter().collect::<io::Result<Vec<Grant>>>()?;
                if process.is_some() {
                    let peer = PeerProcess::adopt(adopted.remove(0))?;
                    // A second one (a confused server) is closed here.
                    let _ = self.peer.set(peer);
                }
                Ok(adopted)
            }
            Side::Server => {
                if process.is_some() {
                    return Err(super::invalid(
                        "the client sent a process handle, which only a server sends",
                    ));
                }
                if values.is_empty() {
                    return Ok(Vec::new());
                }
                let peer = self.peer_process()?;
                values
                    .iter()
                    .map(|&value| Grant::pull_from(peer, value))
                    .collect()
            }
        }
    }
}

impl Drop for ControlStream {
    fn drop(&mut self) {
        // The registered waits first: they watch the read-ahead event and the peer's
        // process, which close with the fields below.
        #[cfg(feature = "tokio")]
        {
            self.readiness.clear();
            self.death.clear();
        }
        let reader = self
            .reader
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = reader.ahead.flight.take() {
            let mut transferred = 0u32;
            // SAFETY: cancels the read issued with this OVERLAPPED, then waits for it to
            // end, so that the OS is done with the boxes before they are freed.
            unsafe {
                CancelIoEx(self.pipe.as_raw_handle(), &*flight.overlapped);
                GetOverlappedResult(
                    self.pipe.as_raw_handle(),
                    &*flight.overlapped,
                    &mut transferred,
                    TRUE,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Waiting for several at once.

/// Something a thread can wait on with [`wait_readable`]: a listener or a control stream.
pub(crate) trait Source {
    /// Whether a wait would end now: a client to accept, or bytes (or a hang-up) to read.
    /// Never blocks.
    fn ready_now(&self) -> bool;
    /// An event that will be set when this becomes ready, armed for one wait, where there
    /// can be one: the listener's connect event; for a stream, the event of a read issued
    /// ahead (issued now if none is in flight). Valid as long as the source. Called only
    /// after [`ready_now`](Self::ready_now) said no.
    fn arm_readiness(&self) -> Option<HANDLE>;
    /// What a [`Poller`](super::Poller) watches for this source, and what its signal
    /// means.
    #[cfg(feature = "tokio")]
    fn watched(&self) -> io::Result<Watched<'_>>;
}

/// The object a poller watches for a source.
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watched<'a> {
    pub(crate) object: BorrowedHandle<'a>,
    /// Its signal is the peer's end, for good (a process): reported as a hang-up, and not
    /// watched again. Otherwise it is a ring of an auto-reset event, watched again after
    /// each.
    pub(crate) ends: bool,
}

/// The longest pause between two looks at the streams among a wait's sources.
const LOOK_AGAIN_AT_MOST: Duration = Duration::from_millis(16);

/// Waits until one of `sources` is readable (or hung up, or a client waits to be accepted)
/// or `timeout` passes (`None`: no bound), and returns which are: `ready[i]` is about
/// `sources[i]`.
///
/// One `WaitForMultipleObjects` on the listener's event and, for each stream, the event
/// of a read issued ahead (a byte-mode pipe signals nothing without a read in flight; see
/// [`ControlStream::stirred`], whose reads these are, and whose bytes every read of the
/// stream takes first). A wait holds at most 64 objects: past that (a blocking server
/// with more than 63 handshakes in progress) the wait is cut into pauses of 1 ms,
/// doubling up to 16 ms, with a look at each source after each.
pub(crate) fn wait_readable(
    sources: &[&dyn Source],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
    let mut pause = Duration::from_millis(1);
    loop {
        let ready: Vec<bool> = sources.iter().map(|source| source.ready_now()).collect();
        let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        if ready.contains(&true) || left == Some(Duration::ZERO) {
            return Ok(ready);
        }
        // At most 64 objects a wait.
        let events: Vec<HANDLE> = sources
            .iter()
            .take(64)
            .filter_map(|source| source.arm_readiness())
            .collect();
        let wait = if events.len() == sources.len() {
            left
        } else {
            Some(left.map_or(pause, |left| left.min(pause)))
        };
        pause = (pause * 2).min(LOOK_AGAIN_AT_MOST);
        if events.is_empty() {
            std::thread::sleep(wait.unwrap_or(LOOK_AGAIN_AT_MOST));
            continue;
        }
        let millis = wait.map_or(INFINITE, |wait| {
            u32::try_from(wait.as_nanos().div_ceil(1_000_000))
                .unwrap_or(u32::MAX)
                .min(INFINITE - 1)
        });
        // SAFETY: the events belong to the sources, which outlive the call (`arm_readiness`);
        // the array and its length match.
        let status =
            unsafe { WaitForMultipleObjects(events.len() as u32, events.as_ptr(), FALSE, millis) };
        if status == WAIT_FAILED {
            return Err(io::Error::last_os_error());
        }
    }
}

impl Source for ControlListener {
    fn ready_now(&self) -> bool {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.as_ref() {
            // The next accept makes an instance, or says why it cannot.
            None => true,
            // A look at the event only: `accept` takes the connect's result.
            Some(pending) => {
                pending.connected
                    // SAFETY: a zero-timeout wait on an event we own.
                    || unsafe { WaitForSingleObject(pending.event.as_raw_handle(), 0) }
                        != WAIT_TIMEOUT
            }
        }
    }

    fn arm_readiness(&self) -> Option<HANDLE> {
        Some(self.connected.as_raw_handle())
    }

    /// The listener is awaited with `acceptable`, never put in a poller: its manual-reset
    /// event stays set until the next accept, which a poller's re-armed wait would report
    /// without end.
    #[cfg(feature = "tokio")]
    fn watched(&self) -> io::Result<Watched<'_>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a listener is awaited with acceptable(), not watched by a poller",
        ))
    }
}

impl Source for ControlStream {
    fn ready_now(&self) -> bool {
        let mut reader = self.reader();
        // Payload already taken off the pipe, or a stream out of step (whose next read
        // says so), is ready as much as bytes in the pipe are; so is what a read issued
        // ahead brought.
        if !matches!(reader.inbox.wanted(), Ok(wanted) if wanted > 0) {
            return true;
        }
        match self.harvest(&mut reader.ahead, None) {
            Harvest::InFlight => {
                return self.peer.get().is_some_and(PeerProcess::has_ended);
            }
            Harvest::Done | Harvest::TimedOut => {}
        }
        if !reader.ahead.bytes.is_empty() || reader.ahead.ended || reader.ahead.failed.is_some() {
            return true;
        }
        drop(reader);
        !matches!(self.bytes_waiting(), Ok(0))
            || self.peer.get().is_some_and(PeerProcess::has_ended)
    }

    fn arm_readiness(&self) -> Option<HANDLE> {
        let mut reader = self.reader();
        let ahead = &mut reader.ahead;
        let idle = ahead.flight.is_none() && !ahead.ended && ahead.failed.is_none();
        // Past `AHEAD_MAX` unread bytes nothing more is read ahead: the pauses look.
        if idle && ahead.bytes.len() < AHEAD_MAX && self.issue_ahead(ahead).is_err() {
            return None;
        }
        // The event is made with the first read and kept until the stream drops.
        ahead
            .flight
            .is_some()
            .then(|| ahead.event.as_ref().map(|event| event.as_raw_handle()))
            .flatten()
    }

    /// The peer's process: in a poller (the sweeper's, a client group's), after the
    /// handshake, the stream matters only for the peer's end, which its process's end
    /// gives for certain (a peer that closes its connection first rings its doorbell with
    /// the goodbye flag set, which the doorbell's watch sees).
    #[cfg(feature = "tokio")]
    fn watched(&self) -> io::Result<Watched<'_>> {
        Ok(Watched {
            object: self.peer_process()?.as_handle(),
            ends: true,
        })
    }
}

/// Whether an error says the pipe's other end has gone: `ERROR_BROKEN_PIPE`, or a pipe
/// being closed or no longer connected.
fn is_hang_up(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error().map(|code| code as u32),
        Some(ERROR_BROKEN_PIPE | ERROR_NO_DATA | ERROR_PIPE_NOT_CONNECTED)
    )
}

fn too_many_grants() -> io::Error {
    super::invalid(format!("the peer sent more than {MAX_GRANTS} grants"))
}

/// The handles pushed for one frame: taken back from the peer on drop unless
/// [`delivered`](Self::delivered).
struct Pushed<'a> {
    peer: &'a PeerProcess,
    handles: Vec<PushedHandle>,
}

impl<'a> Pushed<'a> {
    fn new(peer: &'a PeerProcess) -> Pushed<'a> {
        Pushed {
            peer,
            handles: Vec::new(),
        }
    }

    /// Pushes `grant` into the peer and returns its value there.
    fn push(&mut self, grant: &Grant) -> io::Result<u64> {
        #[cfg(test)]
        test_hooks::before_push()?;
        let pushed = grant.push_to(self.peer)?;
        #[cfg(test)]
        test_hooks::pushed(pushed.value());
        self.handles.push(pushed);
        Ok(pushed.value())
    }

    /// The peer has the frame that names them: they are its now.
    fn delivered(mut self) {
        self.handles.clear();
    }
}

impl Drop for Pushed<'_> {
    fn drop(&mut self) {
        for pushed in self.handles.drain(..) {
            // If the peer is gone, so are its handles.
            let _ = pushed.retract(self.peer);
        }
    }
}

/// A way for tests to make a push fail part-way, and to see what was pushed.
#[cfg(test)]
pub(super) mod test_hooks {
    use std::cell::{Cell, RefCell};
    use std::io;

    thread_local! {
        static PUSHES_LEFT: Cell<Option<usize>> = const { Cell::new(None) };
        static PUSHED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }

    /// Makes this thread's pushes fail after `pushes` more succeed.
    pub(in crate::sys::windows) fn fail_after(pushes: usize) {
        PUSHES_LEFT.with(|left| left.set(Some(pushes)));
    }

    /// The values this thread pushed since the last call.
    pub(in crate::sys::windows) fn take_pushed() -> Vec<u64> {
        PUSHED.with(|pushed| std::mem::take(&mut *pushed.borrow_mut()))
    }

    pub(super) fn before_push() -> io::Result<()> {
        PUSHES_LEFT.with(|left| match left.get() {
            Some(0) => {
                left.set(None);
                Err(io::Error::other("a push made to fail by a test"))
            }
            Some(n) => {
                left.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        })
    }

    pub(super) fn pushed(value: u64) {
        PUSHED.with(|pushed| pushed.borrow_mut().push(value));
    }
}
