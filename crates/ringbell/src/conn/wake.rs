//! Waking and being woken: the waker's half of the protocol of `core/wait.rs` after every
//! publish, the sleeper a blocking side uses (the backend's shared-memory wait, or the
//! doorbell where there is none), the event-loop side (arming the doorbell, deferred
//! rings), and noticing that the peer is gone.

#[cfg(ringbell_async)]
use std::time::Duration;
use std::time::Instant;

#[cfg(ringbell_async)]
use super::large::room_for;
use super::{corrupted, Connection, Segment, Side};
use crate::config::WaitStrategy;
use crate::core::layout::{RingControl, SegmentHeader, WaitCell};
use crate::core::sync::{AtomicU32, Ordering};
use crate::core::wait::{self, Sleeper, SpinLearner, Waited, Woke};
use crate::error::Error;
use crate::sys::{self, ControlStream, Doorbell, DoorbellRinger};

impl Connection {
    /// Registers this side's doorbell and control channel with the current tokio runtime,
    /// for [`wait_for_ring`](Self::wait_for_ring).
    #[cfg(ringbell_async)]
    pub(crate) fn register_with_runtime(&mut self) -> Result<(), Error> {
        let io = |error| Error::io("registering a connection with the tokio runtime", error);
        self.own_doorbell.register().map_err(io)?;
        self.control.register().map_err(io)
    }

    /// Undoes [`register_with_runtime`](Self::register_with_runtime).
    #[cfg(ringbell_async)]
    pub(crate) fn deregister_from_runtime(&mut self) {
        self.own_doorbell.deregister();
        self.control.deregister();
    }

    /// Waits, in the runtime this connection is registered with, until the doorbell rings
    /// or the control channel reports something (usually the peer's death). The caller
    /// then looks at the rings, and at the peer. `&mut`: a `Connection` is `Send` but not
    /// `Sync` (its ring ends are one producer and one consumer), and the future holds it.
    #[cfg(ringbell_async)]
    pub(crate) async fn wait_for_ring(&mut self) -> Result<(), Error> {
        let io = |error| Error::io("waiting for the doorbell", error);
        ::tokio::select! {
            // If the doorbell's other end hung up, the doorbell now says so, and the
            // caller's next look at the peer (after taking what is in the ring) ends the
            // connection instead of waiting on it again.
            rung = self.own_doorbell.rung() => rung.map_err(io)?,
            stirred = self.control.stirred() => stirred.map_err(io)?,
        }
        Ok(())
    }

    /// Announces that this side is about to wait for a message in an event loop of your
    /// own, on its doorbell (and on its control channel, which reports the peer's death).
    /// Returns `false` if a message arrived meanwhile: call [`try_recv`](Self::try_recv)
    /// instead of waiting. The handles to wait on come from the per-OS extension traits:
    /// on Unix, [`ConnectionExt`](crate::os::unix::ConnectionExt), whose docs show the
    /// whole loop; on Windows, `os::windows::ConnectionExt` (the doorbell's event and the
    /// peer's process).
    ///
    /// While armed, the peer's next `send` rings the doorbell (one syscall); otherwise
    /// sends make no syscall at all. The next `try_recv` or `recv` disarms it, and so does
    /// a `send` that has to wait for room, because it may sleep on the same doorbell (it
    /// does on a backend without a shared-memory wait, see [`crate::backend`]). So arm
    /// again before every wait, as the loop in `ConnectionExt`'s docs does.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] if the peer broke the ring's invariants, or the error that
    /// ended the connection earlier.
    pub fn arm_doorbell(&mut self) -> Result<bool, Error> {
        self.usable()?;
        // Before any wait: what we fed, the peer must see (see `feed`).
        self.publish_sent();
        self.publish_received();
        let (rx, header, side) = (&mut self.rx, self.segment.header(), self.side);
        let mut ready = || -> Result<bool, Error> {
            Ok(rx.has_data().map_err(corrupted)? || peer_closed(header, side))
        };
        let armed = !wait::announce(
            rx_readable(&self.segment, self.side),
            wait::SLEEP_DOORBELL,
            &mut ready,
        )
        .inspect_err(|error| self.broken = error.terminal_copy())?;
        self.doorbell_armed = armed;
        Ok(armed)
    }

    /// Like [`arm_doorbell`](Self::arm_doorbell), for a sender waiting for room for a
    /// frame of `payload` bytes (or for a large message: see `Pushed::Full`): returns
    /// `false` if it fits already (or the peer has gone).
    #[cfg(ringbell_async)]
    pub(crate) fn arm_send_doorbell(&mut self, payload: usize) -> Result<bool, Error> {
        self.usable()?;
        self.publish_sent();
        self.publish_received();
        let limit = self.send_limit();
        let (tx, header, side) = (&mut self.tx, self.segment.header(), self.side);
        let outgoing = &mut self.tx_large;
        let mut ready = || -> Result<bool, Error> {
            Ok(room_for(tx, outgoing, payload, limit).map_err(corrupted)?
                || peer_closed(header, side))
        };
        let cell = &rings(&self.segment, side).tx.writable;
        let armed = !wait::announce(cell, wait::SLEEP_DOORBELL, &mut ready)
            .inspect_err(|error| self.broken = error.terminal_copy())?;
        Ok(armed)
    }

    /// Takes down the announcement of [`arm_doorbell`](Self::arm_doorbell), if it stands.
    pub(super) fn disarm_doorbell(&mut self) {
        if self.doorbell_armed {
            self.doorbell_armed = false;
            wait::withdraw(rx_readable(&self.segment, self.side));
        }
    }

    /// Records that a poller saw this side's doorbell hang up: the peer can no longer wake
    /// us, and its next look at the peer (once the ring is empty) ends the connection.
    #[cfg(ringbell_async)]
    pub(crate) fn doorbell_hung_up(&self) {
        self.own_doorbell.mark_closed();
    }

    /// Whether a frame of `payload` bytes fits in the ring now, or a large message of
    /// `payload` bytes can go on (a spin-phase check).
    #[cfg(ringbell_async)]
    pub(crate) fn has_room(&mut self, payload: usize) -> Result<bool, Error> {
        let limit = self.send_limit();
        room_for(&mut self.tx, &mut self.tx_large, payload, limit).map_err(corrupted)
    }

    /// Whether a frame is waiting to be received (a spin-phase check).
    #[cfg(ringbell_async)]
    pub(crate) fn has_data(&mut self) -> Result<bool, Error> {
        self.rx.has_data().map_err(corrupted)
    }

    /// `Err(PeerDied)` if the peer closed or died (one non-blocking syscall).
    #[cfg(ringbell_async)]
    pub(crate) fn ensure_peer_alive(&mut self) -> Result<(), Error> {
        self.usable()?;
        peer_alive(
            &self.control,
            &self.own_doorbell,
            self.header(),
            self.side,
            true,
        )
        .inspect_err(|error| self.broken = error.terminal_copy())
    }

    /// Records `error` as the end of the connection if it is terminal, and returns it.
    #[cfg(ringbell_async)]
    pub(crate) fn fail(&mut self, error: Error) -> Error {
        if self.broken.is_none() {
            self.broken = error.terminal_copy();
        }
        error
    }

    /// Withdraws any announcement still standing, so the peer stops ringing until we arm
    /// again, and, if the doorbell rang (`drain`), resets it. A doorbell left rung makes
    /// the next wait return at once, which then drains it: cheaper than a read that finds
    /// nothing after every wake-up for another reason.
    #[cfg(ringbell_async)]
    pub(crate) fn settle_doorbell(&mut self, drain: bool) {
        let rings = rings(&self.segment, self.side);
        wait::withdraw(&rings.rx.readable);
        wait::withdraw(&rings.tx.writable);
        self.doorbell_armed = false;
        if drain {
            self.own_doorbell.drain();
        }
    }

    /// Whether the announcement made by [`arm_doorbell`](Self::arm_doorbell) still stands:
    /// `false` once the peer took it down to ring (or we withdrew it). One load.
    #[cfg(ringbell_async)]
    pub(crate) fn doorbell_armed(&self) -> bool {
        // SYNC: Relaxed: a stale `true` only delays the sweep that follows the ring, which
        // the doorbell's wake-up then triggers; nothing is read on the strength of it.
        // The peer can write this word: one that keeps it set only goes unswept until its
        // control socket stirs, which affects its own connection alone.
        rx_readable(&self.segment, self.side)
            .sleeping
            .load(Ordering::Relaxed)
            != 0
    }

    /// The settings this connection waits with.
    #[cfg(ringbell_async)]
    pub(crate) fn wait_strategy(&self) -> WaitStrategy {
        self.settings.wait
    }

    /// Wakes the peer if it sleeps waiting for room in the ring we consume.
    pub(super) fn wake_writer(&self) {
        self.wake_peer(&rings(&self.segment, self.side).rx.writable);
    }

    /// The waker's half of the protocol on `cell`, then the wake-up it asks for: a futex
    /// wake at once, a doorbell ring at once or, if rings are deferred, owed.
    pub(super) fn wake_peer(&self, cell: &WaitCell) {
        let wake = wait::notify(cell);
        if wake.futex {
            wake_shared_wait(&cell.seq);
        }
        if wake.doorbell {
            if self.defer_rings {
                self.ring_owed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            } else {
                self.peer_doorbell.ring();
            }
        }
    }

    /// From now on, a doorbell ring this connection's sends and receives would make is
    /// only recorded, for the caller to make with [`ring_owed`](Self::ring_owed) and
    /// [`ring_peer`](Self::ring_peer): a server that replies to many connections of one
    /// client in a sweep rings that client's shared doorbell once.
    #[cfg(ringbell_async)]
    pub(crate) fn defer_doorbell_rings(&mut self) {
        self.defer_rings = true;
    }

    /// Takes the ring owed since the last call: `Some(doorbell id)` if there is one.
    /// Connections whose peers share a doorbell return the same id.
    #[cfg(ringbell_async)]
    pub(crate) fn ring_owed(&self) -> Option<u64> {
        self.ring_owed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
            .then(|| self.peer_doorbell.id())
    }

    /// Rings the peer's doorbell.
    #[cfg(ringbell_async)]
    pub(crate) fn ring_peer(&self) {
        self.peer_doorbell.ring();
    }
}

/// This side's two ring control blocks, borrowed from the segment (not from the ring
/// ends), so that a ring end can be borrowed mutably while we wait on a cell.
pub(super) struct Rings<'a> {
    pub(super) tx: &'a RingControl,
    pub(super) rx: &'a RingControl,
}

pub(super) fn rings(segment: &Segment, side: Side) -> Rings<'_> {
    let header = segment.header();
    Rings {
        tx: &header.rings[side.tx_index()],
        rx: &header.rings[side.rx_index()],
    }
}

/// The cell that this side's consumer sleeps on.
pub(super) fn rx_readable(segment: &Segment, side: Side) -> &WaitCell {
    &rings(segment, side).rx.readable
}

/// The waker's half of the protocol, followed by the syscalls it asks for, at once.
pub(super) fn wake(cell: &WaitCell, peer_doorbell: &DoorbellRinger) {
    let wake = wait::notify(cell);
    if wake.futex {
        wake_shared_wait(&cell.seq);
    }
    if wake.doorbell {
        peer_doorbell.ring();
    }
}

/// Whether the peer said goodbye (set its closed flag). One load, no syscall.
pub(super) fn peer_closed(header: &SegmentHeader, side: Side) -> bool {
    // SYNC: pairs with the Release store in `Drop`: the peer's frames published before the
    // goodbye are visible once we see it.
    header.closed[side.rx_index()].load(Ordering::Acquire) != 0
}

/// `Err(PeerDied)` if the peer said goodbye (a flag in shared memory, no syscall), if a
/// wait saw the other end of our doorbell hang up (nobody can wake us any more: the peer
/// died, or made itself impossible to wait for), or, when `thorough`, if its control
/// socket shows end-of-file (one non-blocking syscall). Callers ask only once the ring is
/// empty, so whatever the peer sent before is received first.
pub(super) fn peer_alive(
    control: &ControlStream,
    doorbell: &Doorbell,
    header: &SegmentHeader,
    side: Side,
    thorough: bool,
) -> Result<(), Error> {
    if peer_closed(header, side) || doorbell.closed() || (thorough && control.peer_gone()) {
        return Err(Error::PeerDied);
    }
    Ok(())
}

/// What a connection has learnt of its waits, one [`SpinLearner`] per kind: for data to
/// receive (how soon its peer answers or sends), and for room to send (how soon its peer
/// takes what we wrote). They differ: a peer may answer late but always read at once.
#[derive(Debug, Default)]
pub(super) struct Learned {
    pub(super) data: SpinLearner,
    pub(super) room: SpinLearner,
}

/// What a wait of the async API waits for, for its [`SpinLearner`].
#[cfg(ringbell_async)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitFor {
    Data,
    Room,
}

#[cfg(ringbell_async)]
impl Connection {
    /// How long the async API's next wait for `what` spins before it awaits the doorbell
    /// (`None`: until ready), as this connection's strategy and its recent waits say.
    pub(crate) fn spin_budget(&mut self, what: WaitFor) -> Option<Duration> {
        let strategy = self.settings.wait;
        self.learner(what).budget(&strategy)
    }

    /// Teaches this connection that a wait of the async API for `what` took `waited`.
    pub(crate) fn learn_wait(&mut self, what: WaitFor, waited: Duration) {
        let strategy = self.settings.wait;
        self.learner(what).learn(&strategy, waited);
    }

    fn learner(&mut self, what: WaitFor) -> &mut SpinLearner {
        match what {
            WaitFor::Data => &mut self.learned.data,
            WaitFor::Room => &mut self.learned.room,
        }
    }
}

/// Wakes whoever sleeps on `word` through the backend's shared-memory wait. A backend
/// without one has no such sleeper (its waiters announce `SLEEP_DOORBELL`); a peer that
/// announces otherwise anyway is a confused or hostile one, whose own waits end by its
/// peer checks.
fn wake_shared_wait(word: &AtomicU32) {
    if let Some(shared) = sys::shared_wait() {
        shared.wake(word);
    }
}

/// The sleep of a backend without a shared-memory wait: on this side's doorbell, which the
/// peer rings when it finds the `SLEEP_DOORBELL` announcement, and which stays rung until
/// drained, so that a ring that comes before the sleep is not lost. The control channel is
/// watched too, so that the peer's death ends the sleep at once.
struct DoorbellSleeper<'a> {
    doorbell: &'a Doorbell,
    control: &'a ControlStream,
}

impl Sleeper for DoorbellSleeper<'_> {
    fn announcement(&self) -> u32 {
        wait::SLEEP_DOORBELL
    }

    fn sleep(&self, _word: &AtomicU32, _expected: u32, deadline: Option<Instant>) -> Woke {
        let woke = sys::sleep_until_rung(self.doorbell, self.control, deadline);
        self.doorbell.drain();
        woke
    }
}

/// [`wait::wait_until`] with the sleeper this backend has: its shared-memory wait (falling
/// back to the doorbell if the OS refuses it), or the doorbell.
#[allow(clippy::too_many_arguments)]
pub(super) fn wait_on<E>(
    strategy: &WaitStrategy,
    learner: &mut SpinLearner,
    cell: &WaitCell,
    doorbell: &Doorbell,
    control: &ControlStream,
    deadline: Option<Instant>,
    peer_check_due: &mut Option<Instant>,
    ready: impl FnMut() -> Result<bool, E>,
    peer_alive: impl FnMut(bool) -> Result<(), E>,
    peer_progress: impl FnMut() -> Option<u64>,
) -> Result<Waited, E> {
    match sys::shared_wait() {
        Some(shared) => wait::wait_until(
            strategy,
            learner,
            cell,
            // Only a confused or hostile peer makes the OS refuse the shared wait (on
            // macOS, by waiting on our word in another mode, which fails ours with `EDOM`);
            // the doorbell then carries this connection's wake-ups, for this wait.
            &wait::Fallback::new(shared, DoorbellSleeper { doorbell, control }),
            deadline,
            peer_check_due,
            ready,
            peer_alive,
            peer_progress,
        ),
        None => wait::wait_until(
            strategy,
            learner,
            cell,
            &DoorbellSleeper { doorbell, control },
            deadline,
            peer_check_due,
            ready,
            peer_alive,
            peer_progress,
        ),
    }
}
