//! A poller on Windows: one queue of stirred keys, fed by a one-shot registered wait
//! (`readiness.rs`) per watched object, and one waker, so that a sweeper sleeps on one
//! future for any number of connections (`WaitForMultipleObjects` stops at 64 handles,
//! and the system thread pool's wait threads have no such bound).
//!
//! What is watched (each source's [`Watched`](super::pipe::Watched)): a doorbell's
//! auto-reset event, whose wait is registered again as soon as its ring is reported, so
//! each ring (or each batch of rings that coalesced in the latched event) is reported once,
//! as an edge; and a control stream's peer process, whose end is reported once, as a
//! hang-up, and not watched again. The poller holds its own duplicate of each object's
//! handle, so a wait never outlives the handle it waits on, whatever the order in which
//! the owner drops the source and removes it.
//!
//! A ring is reported once its wait's callback has run on the thread pool, which may be
//! a moment after `SetEvent` returns: [`drain`](Poller::drain) never waits, so a caller
//! that must see a ring awaits [`stirred`](Poller::stirred) first (the sweeper and the
//! client groups always do).

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use windows_sys::Win32::Foundation::{DuplicateHandle, DUPLICATE_SAME_ACCESS, FALSE, HANDLE};
use windows_sys::Win32::System::Threading::GetCurrentProcess;

use super::readiness::{in_runtime, Notify, Watch};
use super::Source;

/// What a watched source reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stirred {
    /// The key the source was added with.
    pub(crate) key: usize,
    /// It was rung, or its peer is gone.
    pub(crate) readable: bool,
    /// Its peer is gone (the peer's process ended).
    pub(crate) hung_up: bool,
}

/// The stirred entries, and the waker of the task awaiting them.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Entries (by the source's handle value) whose wait fired, in order.
    stirred: Vec<usize>,
    waker: Option<Waker>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one entry's fired wait does: queue the entry, wake the poller's task.
struct Stir {
    entry: usize,
    queue: Arc<Queue>,
}

impl Notify for Stir {
    fn notify(&self) {
        let waker = {
            let mut state = self.queue.lock();
            state.stirred.push(self.entry);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// One watched source.
struct Entry {
    key: usize,
    ends: bool,
    /// Declared before `object`: unregistered before the handle it waits on closes.
    /// `None` once a process's end was reported.
    watch: Option<Watch>,
    object: OwnedHandle,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("ends", &self.ends)
            .field("armed", &self.watch.is_some())
            .finish_non_exhaustive()
    }
}

/// A poller. Dropping it unregisters every wait (waiting for callbacks under way) and
/// closes its handles.
#[derive(Debug)]
pub(crate) struct Poller {
    /// By the source's handle value (its event, or its peer's process), which is how
    /// `remove` finds an entry: unique among the handles open in this process.
    entries: Mutex<HashMap<usize, Entry>>,
    queue: Arc<Queue>,
}

impl Poller {
    /// A new poller with nothing watched. Within a tokio runtime only, as on Unix (its
    /// [`stirred`](Self::stirred) is awaited there).
    pub(crate) fn new() -> io::Result<Poller> {
        in_runtime()?;
        Ok(Poller {
            entries: Mutex::new(HashMap::new()),
            queue: Arc::new(Queue::default()),
        })
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<usize, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches `source`, reported with `key`: a doorbell's rings, a control stream's
    /// peer's end. Adding a source again replaces its entry.
    pub(crate) fn add(&self, source: &dyn Source, key: usize) -> io::Result<()> {
        let watched = source.watched()?;
        let id = watched.object.as_raw_handle() as usize;
        let object = duplicate(watched.object)?;
        let mut entry = Entry {
            key,
            ends: watched.ends,
            watch: None,
            object,
        };
        entry.watch = Some(self.arm(id, &entry.object)?);
        let replaced = self.entries().insert(id, entry);
        // Dropped without the entries' lock (its wait's callback takes only the queue's).
        drop(replaced);
        Ok(())
    }

    /// A one-shot wait on `object` that queues `id`.
    fn arm(&self, id: usize, object: &OwnedHandle) -> io::Result<Watch> {
        let stir = Arc::new(Stir {
            entry: id,
            queue: self.queue.clone(),
        });
        // SAFETY: `object` is the entry's own handle, closed only after its `watch` field
        // (field order, and every replacement of `watch` drops the old wait first).
        unsafe { Watch::new(object_of(object), stir) }
    }

    /// Stops watching `source`; nothing it did is reported after this returns.
    pub(crate) fn remove(&self, source: &dyn Source) {
        let Ok(watched) = source.watched() else {
            return;
        };
        let id = watched.object.as_raw_handle() as usize;
        let removed = self.entries().remove(&id);
        // Unregistered here, waiting for a callback under way: after it, nothing queues
        // `id`, and what it queued before is taken out.
        drop(removed);
        self.queue.lock().stirred.retain(|&entry| entry != id);
    }

    /// Waits until a watched source has stirred; [`drain`](Self::drain) then says which.
    pub(crate) async fn stirred(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut state = self.queue.lock();
            if state.stirred.is_empty() {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        })
        .await
    }

    /// Takes every source that stirred since the last call, without waiting, passes each
    /// to `each`, and watches each doorbell again.
    pub(crate) fn drain(&mut self, mut each: impl FnMut(Stirred)) -> io::Result<()> {
        // Taken out first: no lock of the queue is held while a wait is unregistered.
        let stirred = std::mem::take(&mut self.queue.lock().stirred);
        let entries = self
            .entries
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let mut failed = None;
        for id in stirred {
            let Some(entry) = entries.get_mut(&id) else {
                continue;
            };
            // The spent wait goes first (its callback has run, or is finishing).
            entry.watch = None;
            each(Stirred {
                key: entry.key,
                readable: true,
                hung_up: entry.ends,
            });
            if entry.ends {
                continue;
            }
            let stir = Arc::new(Stir {
                entry: id,
                queue: self.queue.clone(),
            });
            // SAFETY: as in `arm`.
            match unsafe { Watch::new(object_of(&entry.object), stir) } {
                Ok(watch) => entry.watch = Some(watch),
                // Kept for the caller; the other entries are still reported and re-armed.
                Err(error) => failed = Some(error),
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

fn object_of(handle: &OwnedHandle) -> BorrowedHandle<'_> {
    use std::os::windows::io::AsHandle;
    handle.as_handle()
}

/// Another handle of this process to `object`, with the same rights.
fn duplicate(object: BorrowedHandle<'_>) -> io::Result<OwnedHandle> {
    let mut raw: HANDLE = ptr::null_mut();
    // SAFETY: the source handle is borrowed from its owner, the process pseudo-handle is
    // always valid, and the out-pointer points at a live local, which receives a new
    // handle that nothing else owns.
    let made = unsafe {
        DuplicateHandle(
            GetCurrentProcess(),
            object.as_raw_handle(),
            GetCurrentProcess(),
            &mut raw,
            0,
            FALSE,
            DUPLICATE_SAME_ACCESS,
        )
    };
    if made == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above: a new handle, owned from here on by the result alone.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
}
