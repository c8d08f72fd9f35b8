//! Windows extensions.

use std::os::windows::io::{AsHandle, BorrowedHandle};

use crate::Connection;

/// The handles of a [`Connection`], for an event loop of your own
/// (`WaitForMultipleObjects`, `RegisterWaitForSingleObject`...). See
/// [`Connection::arm_doorbell`] for the protocol.
///
/// ```no_run
/// use std::os::windows::io::AsRawHandle;
/// use ringbell::os::windows::ConnectionExt;
/// use ringbell::{ClientConfig, Connection};
/// use windows_sys::Win32::System::Threading::{WaitForMultipleObjects, INFINITE};
///
/// let mut conn = Connection::connect(r"\\.\pipe\app", ClientConfig::default())?;
/// let mut buf = Vec::new();
/// loop {
///     if let Some(n) = conn.try_recv(&mut buf)? {
///         println!("got {n} bytes");
///         break;
///     }
///     if conn.arm_doorbell()? {
///         let mut handles = vec![conn.doorbell_handle().as_raw_handle()];
///         // The peer's process: signalled when it ends.
///         handles.extend(conn.peer_process_handle().map(|process| process.as_raw_handle()));
///         // SAFETY: the handles are borrowed from `conn`, alive for the call.
///         unsafe { WaitForMultipleObjects(handles.len() as u32, handles.as_ptr(), 0, INFINITE) };
///     }
/// }
/// # Ok::<(), ringbell::Error>(())
/// ```
///
/// # Platform-specific behaviour
///
/// The doorbell is an auto-reset event: the wait that sees a ring also resets it (where a
/// Unix doorbell stays readable until drained), so only one waiter may wait on it. The
/// peer's death is seen through its process, not through the control pipe.
pub trait ConnectionExt {
    /// The doorbell: an auto-reset event (with `SYNCHRONIZE` only) that the peer sets
    /// after it sent, when this side is armed (see [`Connection::arm_doorbell`]). Wait on
    /// it; never set it yourself.
    fn doorbell_handle(&self) -> BorrowedHandle<'_>;
    /// The peer's process (with `SYNCHRONIZE`), signalled when it ends: the peer's death.
    /// `None` only if the handshake did not give it (a server that sent it no process
    /// handle); the connection then notices the death at its next look at the pipe.
    fn peer_process_handle(&self) -> Option<BorrowedHandle<'_>>;
}

impl ConnectionExt for Connection {
    fn doorbell_handle(&self) -> BorrowedHandle<'_> {
        self.doorbell().as_handle()
    }

    fn peer_process_handle(&self) -> Option<BorrowedHandle<'_>> {
        self.control()
            .peer_process()
            .ok()
            .map(|process| process.as_handle())
    }
}
