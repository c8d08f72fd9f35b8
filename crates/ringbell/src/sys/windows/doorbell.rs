//! Doorbells on Windows: one auto-reset event per doorbell. The waiter waits on it
//! ([`Doorbell`]); the other side sets it ([`DoorbellRinger`]) when the waiter announced
//! that it sleeps. A set event stays set until a wait consumes it, so a ring that comes
//! before the wait is not lost; a stray `SetEvent` from a hostile peer is only a spurious
//! wake, as a ring without pause would be.
//!
//! Rights: the waiter's handle needs `SYNCHRONIZE`, the ringer's `EVENT_MODIFY_STATE`, and
//! each is pushed with no more, beside `EVENT_QUERY_STATE`, which the receiver's check of
//! the reset mode needs (below). The ringer gets no `SYNCHRONIZE` (the design first gave it
//! one): a wait on an auto-reset event consumes the ring, so a ringer that could wait
//! could swallow the rings meant for the waiter, and with a doorbell shared by several
//! connections, rings from other peers too. The event's DACL stops a holder from
//! duplicating itself a handle with more rights than it was pushed (`security.rs`).
//!
//! `EVENT_QUERY_STATE` is harmless to give: it reads whether the event is set and how it
//! resets (`NtQueryEvent`), and nothing else. It cannot set, reset or wait on the event,
//! so it neither rings nor swallows a ring; and whether a doorbell is set at a given
//! moment tells a peer no more than the ring protocol in shared memory already shows it.
//!
//! A received event must reset itself (auto-reset): a manual-reset event stays set after
//! a wait, so every sleep on it would end at once, and a hostile peer could hand us one to
//! turn our sleeps into a spin. `adopt` reads the type with `NtQueryEvent`
//! (`EventBasicInformation`), which windows-sys does not declare, and refuses a
//! manual-reset event with `InvalidData`.
//!
//! Two differences from the Unix doorbell, which the conformance suite states per backend:
//! a wait that ends because the event was set also resets it (auto-reset), where a Unix
//! doorbell stays readable until drained; the contract's users drain after every wake and
//! then look at their condition again, so both behave the same for them, and only a test
//! that expects a second wait to return at once without a drain tells them apart. And an
//! event has no other end that hangs up: a dropped ringer is not seen here
//! ([`Doorbell::closed`] is always `false`), the peer's death is, through its process.
//!
//! See CreateEventW, SetEvent, WaitForMultipleObjects (learn.microsoft.com).

#![allow(unsafe_code)]

use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::ptr;
use std::time::Instant;

use windows_sys::Win32::Foundation::{
    DuplicateHandle, FALSE, HANDLE, NTSTATUS, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, GetCurrentProcess, SetEvent, WaitForMultipleObjects, WaitForSingleObject,
    EVENT_MODIFY_STATE, INFINITE, SYNCHRONIZATION_SYNCHRONIZE,
};

use super::handle::{check_object, nt_error};
use super::security::SecurityDescriptor;
use super::{invalid, Grant, PeerProcess};

/// The right to read an event's state and type (`NtQueryEvent`), which the receiver's
/// check of the reset mode needs; windows-sys does not declare it.
pub(super) const EVENT_QUERY_STATE: u32 = 0x0001;
/// What the waiter's handle needs, and all a pushed one gets: to wait, and to show that
/// the event resets itself.
pub(super) const WAITER_ACCESS: u32 = SYNCHRONIZATION_SYNCHRONIZE | EVENT_QUERY_STATE;
/// What the ringer's handle needs, and all a pushed one gets: to set the event, and to
/// show that it resets itself.
pub(super) const RINGER_ACCESS: u32 = EVENT_MODIFY_STATE | EVENT_QUERY_STATE;

/// `EVENT_BASIC_INFORMATION`, what `NtQueryEvent` tells of an event.
#[repr(C)]
#[derive(Debug, Default)]
struct EventBasicInformation {
    /// `EVENT_TYPE`: [`NOTIFICATION_EVENT`] (manual reset) or [`SYNCHRONIZATION_EVENT`]
    /// (auto reset).
    event_type: i32,
    /// Non-zero if the event is set.
    event_state: i32,
}

/// `EventBasicInformation`, the information class of `NtQueryEvent`.
const EVENT_BASIC_INFORMATION: i32 = 0;
/// `NotificationEvent`: a manual-reset event.
const NOTIFICATION_EVENT: i32 = 0;
/// `SynchronizationEvent`: an auto-reset event.
const SYNCHRONIZATION_EVENT: i32 = 1;

#[link(name = "ntdll")]
extern "system" {
    /// `NtQueryEvent` (ntdll): in neither windows-sys nor Microsoft's documentation; the
    /// declaration follows Wine's `winternl.h` and the phnt headers. Needs
    /// `EVENT_QUERY_STATE` on the handle. Checked under Wine 8, which implements it.
    fn NtQueryEvent(
        event: HANDLE,
        class: i32,
        information: *mut EventBasicInformation,
        length: u32,
        returned: *mut u32,
    ) -> NTSTATUS;
}

/// Checks that `event` is an auto-reset event (see the module's docs); otherwise an
/// `InvalidData` error naming `what`.
fn check_auto_reset(event: BorrowedHandle<'_>, what: &str) -> io::Result<()> {
    let mut info = EventBasicInformation::default();
    let mut returned = 0u32;
    // SAFETY: the handle is borrowed for the call; the buffer is a live, writable
    // `EventBasicInformation` of the size passed, and `returned` a live local.
    let status = unsafe {
        NtQueryEvent(
            event.as_raw_handle(),
            EVENT_BASIC_INFORMATION,
            &mut info,
            size_of::<EventBasicInformation>() as u32,
            &mut returned,
        )
    };
    if status < 0 {
        let error = nt_error("NtQueryEvent(EventBasicInformation)", status);
        return Err(invalid(format!(
            "the event the peer sent for {what} cannot be queried: {error}"
        )));
    }
    match info.event_type {
        SYNCHRONIZATION_EVENT => Ok(()),
        NOTIFICATION_EVENT => Err(invalid(format!(
            "the event the peer sent for {what} is a manual-reset event, which would end \
             every sleep at once; a doorbell resets itself"
        ))),
        other => Err(invalid(format!(
            "the event the peer sent for {what} has an unknown type ({other})"
        ))),
    }
}

/// The end a waiter waits on: set by a ring, reset by the wait that sees it.
#[derive(Debug)]
pub(crate) struct Doorbell {
    /// The wait registered for [`rung`](Self::rung); declared before `event`, so that it
    /// is unregistered before the event's handle closes.
    #[cfg(feature = "tokio")]
    readiness: super::readiness::Readiness,
    event: OwnedHandle,
}

/// The end the other side rings: a handle to the same event that can only set it.
#[derive(Debug)]
pub(crate) struct DoorbellRinger {
    event: OwnedHandle,
}

/// How a [`sleep_until_rung`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rang {
    /// The doorbell was rung (before the sleep or during it); the wait reset it.
    Rung,
    /// The deadline passed.
    TimedOut,
    /// The peer's process has ended (and the doorbell was not rung).
    PeerEnded,
}

/// A new doorbell and its ringer, not rung.
pub(crate) fn doorbell_pair() -> io::Result<(Doorbell, DoorbellRinger)> {
    // A DACL that stops a holder from widening its handle (`security.rs`); our own handle
    // gets every right regardless, as the event's creator.
    let security = SecurityDescriptor::for_shared_object()?;
    let attributes = security.attributes();
    // SAFETY: the attributes and the descriptor they point at are alive for the call; no
    // name; a null result is an error, checked below.
    let raw = unsafe { CreateEventW(&attributes, FALSE, FALSE, ptr::null()) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `CreateEventW` returned a new handle, which nothing else owns.
    let event = unsafe { OwnedHandle::from_raw_handle(raw) };
    let ringer = duplicate_here(&event, RINGER_ACCESS)?;
    Ok((Doorbell::new(event), DoorbellRinger { event: ringer }))
}

/// Another handle of this process to the object of `handle`, with `access` only.
fn duplicate_here(handle: &OwnedHandle, access: u32) -> io::Result<OwnedHandle> {
    let mut raw: HANDLE = ptr::null_mut();
    // SAFETY: the source handle is owned by the caller and the process pseudo-handle is
    // always valid; the out-pointer points at a live local, which receives a new handle
    // that nothing else owns.
    let made = unsafe {
        DuplicateHandle(
            GetCurrentProcess(),
            handle.as_raw_handle(),
            GetCurrentProcess(),
            &mut raw,
            access,
            FALSE,
            0,
        )
    };
    if made == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above: a new handle, owned from here on by the result alone.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
}

impl Doorbell {
    fn new(event: OwnedHandle) -> Doorbell {
        Doorbell {
            #[cfg(feature = "tokio")]
            readiness: super::readiness::Readiness::default(),
            event,
        }
    }

    /// Adopts a doorbell end received from the peer, after checking that it is an event
    /// this handle may wait on (and query), and that it resets itself.
    pub(crate) fn adopt(grant: Grant) -> io::Result<Doorbell> {
        let event = grant.into_handle();
        check_object(event.as_handle(), "Event", WAITER_ACCESS, "a doorbell")?;
        check_auto_reset(event.as_handle(), "a doorbell")?;
        Ok(Doorbell::new(event))
    }

    /// This end, to push to the peer (which will wait on it): `SYNCHRONIZE` and
    /// `EVENT_QUERY_STATE` only.
    pub(crate) fn into_grant(self) -> Grant {
        Grant::new(self.event, WAITER_ACCESS)
    }

    /// Whether no ring can come any more. Never, here: an event has no other end to hang
    /// up, and the peer's death ends a sleep through its process instead (see
    /// [`sleep_until_rung_or_ended`]).
    pub(crate) fn closed(&self) -> bool {
        false
    }

    /// Another handle to the same event (`SYNCHRONIZE` and `EVENT_QUERY_STATE`), for a connection that shares
    /// the doorbell. Only one of them may be awaited at a time: a wait consumes the ring.
    #[cfg(feature = "tokio")]
    pub(crate) fn try_clone(&self) -> io::Result<Doorbell> {
        Ok(Doorbell::new(duplicate_here(&self.event, WAITER_ACCESS)?))
    }

    /// Checks that there is a tokio runtime to await [`rung`](Self::rung) in. The wait
    /// itself is registered by each await (see `readiness.rs`), so nothing else is done.
    #[cfg(feature = "tokio")]
    pub(crate) fn register(&mut self) -> io::Result<()> {
        super::readiness::in_runtime()
    }

    /// Undoes [`register`](Self::register): unregisters a wait left armed by an await
    /// that was cancelled, so that it swallows no ring meant for a blocking sleep.
    #[cfg(feature = "tokio")]
    pub(crate) fn deregister(&mut self) {
        self.readiness.clear();
    }

    /// Waits until the doorbell is rung (since the last such wait, or before it). The
    /// registered wait that sees the ring consumes it, as any wait on the event does; the
    /// caller then [`drain`](Self::drain)s and looks at its condition, as on Unix.
    #[cfg(feature = "tokio")]
    pub(crate) async fn rung(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            // SAFETY: always this doorbell's event, which outlives `readiness` (field
            // order; `into_grant` moves the event out only with `self`, dropping both).
            unsafe { self.readiness.poll_signalled(self.event.as_handle(), cx) }
        })
        .await
    }

    /// Records that the other end hung up, for an owner that learnt it from a poller. An
    /// event has no other end, and this backend's poller never reports a doorbell hung
    /// up, so nothing calls it here; [`closed`](Self::closed) stays `false`.
    #[cfg(feature = "tokio")]
    pub(crate) fn mark_closed(&self) {}

    /// Resets the doorbell after a wake-up: a zero-timeout wait, which consumes a ring
    /// that came since. Never blocks.
    pub(crate) fn drain(&self) {
        // SAFETY: a zero-timeout wait on an event handle we own.
        let _ = unsafe { WaitForSingleObject(self.event.as_raw_handle(), 0) };
    }
}

impl DoorbellRinger {
    /// Adopts a ringer end received from the peer, after checking that it is an event
    /// this handle may set (and query), and that it resets itself. A manual-reset event
    /// here would make only the peer's own waits spin, but it is not the doorbell the
    /// protocol speaks of, and is refused like any other malformed grant.
    pub(crate) fn adopt(grant: Grant) -> io::Result<DoorbellRinger> {
        let event = grant.into_handle();
        check_object(
            event.as_handle(),
            "Event",
            RINGER_ACCESS,
            "a doorbell's ringer",
        )?;
        check_auto_reset(event.as_handle(), "a doorbell's ringer")?;
        Ok(DoorbellRinger { event })
    }

    /// This end, to push to the peer (which will ring it): `EVENT_MODIFY_STATE` and
    /// `EVENT_QUERY_STATE` only.
    pub(crate) fn into_grant(self) -> Grant {
        Grant::new(self.event, RINGER_ACCESS)
    }

    /// A grant of another handle for this end (`EVENT_MODIFY_STATE` and
    /// `EVENT_QUERY_STATE`), for a peer that
    /// rings a doorbell which others ring too.
    #[cfg(feature = "tokio")]
    pub(crate) fn grant(&self) -> io::Result<Grant> {
        Ok(Grant::new(
            duplicate_here(&self.event, RINGER_ACCESS)?,
            RINGER_ACCESS,
        ))
    }

    /// Which doorbell this rings, for a sweep that rings each shared doorbell once. Here
    /// it is this handle's value, distinct for every ringer, even two of one event: the
    /// kernel object's identity is not to be had from windows-sys (`CompareObjectHandles`
    /// compares two handles, it names none), so rings to one shared event are not merged,
    /// only repeated; an auto-reset event coalesces them, and no wake-up is lost.
    #[cfg(feature = "tokio")]
    pub(crate) fn id(&self) -> u64 {
        self.event.as_raw_handle() as u64
    }

    /// Wakes whoever waits on the other end. Never blocks; a doorbell rung already stays
    /// rung once, and a peer that has gone will be noticed elsewhere.
    pub(crate) fn ring(&self) {
        // SAFETY: sets an event through a handle we own; no memory is involved.
        let _ = unsafe { SetEvent(self.event.as_raw_handle()) };
    }
}

/// Sleeps until `doorbell` is rung, `peer`'s process ends, or `deadline` passes (`None`:
/// no bound), and says which; a ring wins over the peer's end when both happened, so that
/// a ring is never lost. One `WaitForMultipleObjects` on the event and the process, whose
/// timeout is recomputed from the deadline on every pass (a wait's timeout may end early,
/// and does not count time the machine slept). Without `peer`, the event alone.
///
/// The contract's `sleep_until_rung` (`wait.rs`) is this with the peer's process taken
/// from the connection's `ControlStream`, and the result as the platform-free `Woke`. The
/// named pipe itself need not be watched: the process handle ends the wait at once.
pub(crate) fn sleep_until_rung_or_ended(
    doorbell: &Doorbell,
    peer: Option<&PeerProcess>,
    deadline: Option<Instant>,
) -> io::Result<Rang> {
    // No allocation per sleep: the process, if any, in the second slot.
    let handles = [
        doorbell.event.as_raw_handle(),
        peer.map_or(ptr::null_mut(), |peer| peer.as_handle().as_raw_handle()),
    ];
    let count: u32 = if peer.is_some() { 2 } else { 1 };
    loop {
        let timeout = match deadline {
            None => INFINITE,
            Some(deadline) => wait_millis(deadline.saturating_duration_since(Instant::now())),
        };
        // SAFETY: the first `count` handles are owned by the callers' values, borrowed
        // for the call; the array holds at least `count`.
        let status = unsafe { WaitForMultipleObjects(count, handles.as_ptr(), FALSE, timeout) };
        match status {
            WAIT_OBJECT_0 => return Ok(Rang::Rung),
            status if status == WAIT_OBJECT_0 + 1 => return Ok(Rang::PeerEnded),
            WAIT_TIMEOUT => {
                // Early, or cut short by the longest timeout a wait takes: wait again for
                // what is left, if anything is.
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    return Ok(Rang::TimedOut);
                }
            }
            WAIT_FAILED => return Err(io::Error::last_os_error()),
            other => {
                return Err(io::Error::other(format!(
                    "WaitForMultipleObjects returned {other:#x}"
                )))
            }
        }
    }
}

/// A wait's timeout for `left`: whole milliseconds, rounded up so that a wait does not end
/// before the deadline, and below `INFINITE`, which would never end.
fn wait_millis(left: std::time::Duration) -> u32 {
    let millis = left.as_nanos().div_ceil(1_000_000);
    u32::try_from(millis).unwrap_or(u32::MAX).min(INFINITE - 1)
}

/// A doorbell is a source for a poller only. The blocking server never waits on one with
/// `wait_readable`, and a look at an auto-reset event would consume its ring, so it offers
/// neither a look nor an event for that wait.
impl super::pipe::Source for Doorbell {
    fn ready_now(&self) -> bool {
        false
    }

    fn arm_readiness(&self) -> Option<windows_sys::Win32::Foundation::HANDLE> {
        None
    }

    #[cfg(feature = "tokio")]
    fn watched(&self) -> io::Result<super::pipe::Watched<'_>> {
        Ok(super::pipe::Watched {
            object: self.event.as_handle(),
            ends: false,
        })
    }
}

impl AsHandle for Doorbell {
    fn as_handle(&self) -> BorrowedHandle<'_> {
        self.event.as_handle()
    }
}

impl AsHandle for DoorbellRinger {
    fn as_handle(&self) -> BorrowedHandle<'_> {
        self.event.as_handle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wait_timeouts_round_up_and_stay_finite() {
        assert_eq!(wait_millis(Duration::ZERO), 0);
        assert_eq!(wait_millis(Duration::from_nanos(1)), 1);
        assert_eq!(wait_millis(Duration::from_millis(5)), 5);
        assert_eq!(wait_millis(Duration::from_micros(5_001)), 6);
        assert_eq!(wait_millis(Duration::from_secs(u64::MAX)), INFINITE - 1);
    }
}
