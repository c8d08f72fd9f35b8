//! Readiness for the tokio runtime on Windows: tokio cannot await an event, a process or a
//! pipe's overlapped read, so an object is watched by the system thread pool instead
//! (`RegisterWaitForSingleObject`), whose callback wakes a tokio waker, the way tokio
//! itself waits for a child process.
//!
//! Every registered wait here is **one-shot** (`WT_EXECUTEONLYONCE`) and re-armed by the
//! next await. A wait on an auto-reset event (a doorbell) *consumes* the ring that ends
//! it, so a wait left armed between awaits would swallow rings meant for a blocking sleep
//! or a `drain`, and a wait on an object that stays signalled (a process that has ended,
//! a manual-reset event) would fire again and again if it were not one-shot. What a
//! fired wait saw is kept (`fired`) until the next await takes it, so nothing is lost:
//!
//! - a ring that came before the wait was armed left the event set, and the new wait ends
//!   at once;
//! - a ring that the armed wait consumed is `fired`, which the next await returns at once
//!   (even if the await that armed it was cancelled: then it is only an early wake-up, and
//!   the caller looks at its rings, as after every wake-up).
//!
//! The callback runs on the pool's wait thread (`WT_EXECUTEINWAITTHREAD`: it only sets a
//! flag and wakes a waker). A wait is unregistered with `UnregisterWaitEx(wait,
//! INVALID_HANDLE_VALUE)`, which returns only once a callback under way has finished, so
//! that no callback runs after what it points at is freed; and always before the watched
//! object's handle is closed (each owner's field order or `Drop` says how). Never with a
//! lock held that the callback takes.
//!
//! See RegisterWaitForSingleObject, UnregisterWaitEx (learn.microsoft.com).

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::windows::io::{AsRawHandle, BorrowedHandle};
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Threading::{
    RegisterWaitForSingleObject, UnregisterWaitEx, INFINITE, WT_EXECUTEINWAITTHREAD,
    WT_EXECUTEONLYONCE,
};

/// What a fired wait tells. Called on the thread pool's wait thread: it must be short and
/// must not block.
pub(super) trait Notify: Send + Sync {
    fn notify(&self);
}

/// One registered, one-shot wait on an object; unregistered (waiting for a callback under
/// way) on drop.
pub(super) struct Watch {
    wait: HANDLE,
    /// What the callback's context points at: boxed, so that its address stays put, and
    /// freed only after the wait is unregistered (in `Drop`, then the field's own drop).
    #[allow(dead_code)]
    target: Box<Arc<dyn Notify>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("wait", &self.wait).finish()
    }
}

// SAFETY: the wait handle is only passed to `UnregisterWaitEx`, from whichever thread
// drops the value; the target is `Send + Sync`.
unsafe impl Send for Watch {}
// SAFETY: as above; `&Watch` gives access to nothing.
unsafe impl Sync for Watch {}

impl Watch {
    /// Registers a one-shot wait on `object`, which calls `target.notify()` once the
    /// object is signalled.
    ///
    /// # Safety
    ///
    /// `object` must stay open until this value is dropped.
    pub(super) unsafe fn new(
        object: BorrowedHandle<'_>,
        target: Arc<dyn Notify>,
    ) -> io::Result<Watch> {
        let target = Box::new(target);
        let context: *const Arc<dyn Notify> = &*target;
        let mut wait: HANDLE = ptr::null_mut();
        // SAFETY: the out-pointer points at a live local; the context points into the box,
        // which this value keeps until the wait is unregistered (Drop); the object stays
        // open as long (this function's contract).
        let registered = unsafe {
            RegisterWaitForSingleObject(
                &mut wait,
                object.as_raw_handle(),
                Some(fired),
                context.cast::<c_void>(),
                INFINITE,
                WT_EXECUTEONLYONCE | WT_EXECUTEINWAITTHREAD,
            )
        };
        if registered == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watch { wait, target })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: our registered wait, unregistered once; `INVALID_HANDLE_VALUE` makes the
        // call wait for a callback under way, so none runs after `target` is freed below.
        unsafe { UnregisterWaitEx(self.wait, INVALID_HANDLE_VALUE) };
    }
}

/// The callback of every registered wait here.
unsafe extern "system" fn fired(context: *mut c_void, _timed_out: bool) {
    // SAFETY: the context is the `Arc<dyn Notify>` boxed in the `Watch`, which is freed
    // only after `UnregisterWaitEx` has waited for this callback to finish.
    let target = unsafe { &*context.cast::<Arc<dyn Notify>>() };
    target.notify();
}

/// A flag set by a fired wait, and the waker to wake then.
#[derive(Debug, Default)]
struct Signal {
    state: Mutex<SignalState>,
}

#[derive(Debug, Default)]
struct SignalState {
    fired: bool,
    waker: Option<Waker>,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, SignalState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Notify for Signal {
    fn notify(&self) {
        let waker = {
            let mut state = self.lock();
            state.fired = true;
            state.waker.take()
        };
        // Woken without the lock held: a waker may run code of its own.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The wait armed for the next await, with its flag.
#[derive(Debug)]
struct Armed {
    /// Held for its `Drop`, which unregisters it; declared first, so that it goes before
    /// the flag it notifies could.
    #[allow(dead_code)]
    watch: Watch,
    signal: Arc<Signal>,
}

/// Awaiting one object's signal, one one-shot registered wait at a time (see the module
/// docs). Its owner must [`clear`](Self::clear) it, or drop it, before the object's handle
/// closes.
#[derive(Debug, Default)]
pub(super) struct Readiness {
    armed: Mutex<Option<Armed>>,
}

impl Readiness {
    /// Ready once `object` has been signalled since the last time this said so; arms a wait
    /// on it (waking `cx`) otherwise.
    ///
    /// # Errors
    ///
    /// If the wait cannot be registered.
    ///
    /// # Safety
    ///
    /// `object` must be the same object on every call, and stay open until this value is
    /// cleared or dropped.
    pub(super) unsafe fn poll_signalled(
        &self,
        object: BorrowedHandle<'_>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = armed.as_ref() {
            let mut state = current.signal.lock();
            if !state.fired {
                state.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            drop(state);
            // Spent: unregistered here (its callback has run, or is finishing, and takes
            // no lock of ours but the flag's, released above). The next await arms anew.
            *armed = None;
            return Poll::Ready(Ok(()));
        }
        // The waker is in place before the wait can fire.
        let signal = Arc::new(Signal {
            state: Mutex::new(SignalState {
                fired: false,
                waker: Some(cx.waker().clone()),
            }),
        });
        // SAFETY: forwarded from this function's contract.
        let watch = unsafe { Watch::new(object, signal.clone()) }?;
        *armed = Some(Armed { watch, signal });
        Poll::Pending
    }

    /// Unregisters the armed wait, if any (waiting for its callback, if under way).
    pub(super) fn clear(&self) {
        let armed = self
            .armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(armed);
    }
}

/// An error if there is no tokio runtime to await in (tokio itself would panic later).
pub(super) fn in_runtime() -> io::Result<()> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Ok(()),
        Err(_) => Err(io::Error::other(
            "not within a tokio runtime: call this from inside one (#[tokio::main])",
        )),
    }
}
