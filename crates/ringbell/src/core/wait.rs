//! How a side waits for its condition (data to read, room to write): the sleep/wake
//! protocol over a [`WaitCell`], and the [`WaitStrategy`] loop around it.
//!
//! # The protocol (no lost wake-ups)
//!
//! Waiter, about to sleep until `ready()`:
//!
//! 1. `seen = seq.load(Acquire)`
//! 2. `sleeping.store(SLEEP_FUTEX, SeqCst)`; `fence(SeqCst)` — "I am going to sleep"
//! 3. re-check `ready()`; if it is now true, withdraw the announcement and return
//! 4. sleep: `futex_wait(seq, seen)`, which returns at once if `seq` moved since step 1;
//!    or, on a backend without a shared-memory wait, a poll of the doorbell, which the
//!    waker rings and which stays rung until drained, so that no wake-up is lost either
//!
//! Waker, after publishing (the Release store of a ring index):
//!
//! 1. `fence(SeqCst)`, then `sleeping.load(Acquire)`; if 0, nobody sleeps: no syscall
//! 2. otherwise `sleeping.swap(0)`, `seq.fetch_add(1, Release)`, then `futex_wake(seq)`
//!    and/or ring the doorbell, as the announcement asked
//!
//! The two SeqCst fences forbid the store-buffering outcome in which the waiter misses the
//! new index *and* the waker misses the announcement: at least one side sees the other.
//! If the waker sees the announcement, it bumps `seq` after the waiter read `seen` (the
//! Acquire load of `sleeping` orders it), so the waiter's `futex_wait` either sees the
//! changed value and returns, or is already queued and gets the wake. The swap makes a
//! burst of sends wake a sleeper once, not once per message. This is the scheme of
//! Drepper's "Futexes Are Tricky" with the waiter count replaced by a flag, since each
//! cell has one waiter; `tests/loom.rs`-style models in this module check it with loom.
//!
//! Futex waits may return early (`EINTR`, `EAGAIN`, spurious wakes), so every caller loops
//! on its real condition with an absolute deadline.
//!
//! How a side sleeps is a [`Sleeper`]: the shared futex of `sys` where the OS has one,
//! otherwise the connection's doorbell (`conn/wake.rs`). The announcement it makes tells
//! the waker which wake-up to make.

use std::time::{Duration, Instant};

use crate::config::WaitStrategy;
use crate::core::layout::WaitCell;
use crate::core::sync::{fence, spin_loop, AtomicU32, Ordering};

/// Announcement bit: the waiter sleeps on the futex word.
pub(crate) const SLEEP_FUTEX: u32 = 1;
/// Announcement bit: the waiter sleeps in an event loop, polling its doorbell.
pub(crate) const SLEEP_DOORBELL: u32 = 2;

/// How often a sleeping or spinning side checks that its peer is still alive: the bound on
/// how late a side notices a peer killed without a chance to say goodbye.
pub(crate) const PEER_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Spins between two looks at the clock in a spin loop.
const SPINS_PER_CLOCK_READ: u32 = 64;

/// How long a spin goes on without its condition before each further look also gives the
/// CPU away (`sched_yield`). Longer than any round trip that spinning is for (a fraction of
/// a microsecond between two cores), so those never pay for a syscall; short enough that
/// a peer waiting for this very CPU (both sides on one core, unpinned) runs at once rather
/// than after the whole budget, since there a spin that does not yield only delays the
/// peer it waits for.
const YIELD_AFTER: Duration = Duration::from_micros(2);

/// How far the peer's progress can stretch a spin (see [`wait_until`]): its budget counts
/// from the last progress seen, but only progress seen within this many budgets of the
/// wait's start counts. The peer's unread share of what we sent is bounded (our ring and
/// our region's few pieces: well under a millisecond of copying), so an honest peer's
/// progress ends long before; a peer that crawls through our data a few bytes at a time
/// holds us spinning for at most one budget more than this many, then we sleep.
const PROGRESS_SPIN_CAP: u32 = 4;

/// Of the recent waits, the share that ended within the spin budget is kept in units of
/// `1 / QUICK_SCALE`.
const QUICK_SCALE: u32 = 1024;
/// Each wait moves the share this fraction (`1 / QUICK_WEIGHT`) of the way towards its
/// outcome: about the last 8 waits count.
const QUICK_WEIGHT: u32 = 8;
/// While spinning does not pay, a wait spins its whole budget once in this many waits to
/// find out whether it pays again (a probe), and one in up to [`PROBE_EVERY_MAX`] after
/// probes that found nothing, each doubling the interval.
const PROBE_EVERY_MIN: u16 = 8;
const PROBE_EVERY_MAX: u16 = 64;

/// What a side has learnt of how soon its waits end, which sets how long its next wait
/// spins before it sleeps (issue 14's "wait that learns").
///
/// Spinning pays when the condition comes sooner than a wake-up through the kernel would
/// take (15–80 µs on our VMs): the waiter gets it at memory speed. It is waste when the
/// peer answers later, as an editor that sends a message every few milliseconds does:
/// then every wait burns the whole budget on each side. So under
/// [`WaitStrategy::Adaptive`], whose `spin` is the ceiling, a side spins its whole budget
/// while at least half of its recent waits (an average over about the last 8) ended
/// within that budget, and otherwise sleeps at once, but for an occasional probe that
/// spins again to notice when the peer has become quick. A wait that ends at its
/// timeout teaches nothing. `Spin` and `Block` learn nothing: they are the user's fixed choice.
///
/// A wait that slept at once teaches nothing: its time includes the wake-up's own
/// latency, so it cannot tell whether spinning would have paid (counted as slow, such
/// waits outvoted the probes, and a side whose peer mostly answered within the ceiling
/// stayed asleep). While it sleeps, only its probes teach it.
///
/// The cost while spinning does not pay is one probe's budget per 8 to 64 waits: at most
/// 6 µs a wait with the default 50 µs, against 50 µs for a fixed spin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpinLearner {
    /// Of the recent waits, the share that ended within the budget, in `1 / QUICK_SCALE`.
    quick: u32,
    /// Waits since the last probe, while spinning does not pay.
    since_probe: u16,
    /// Waits between two probes.
    probe_every: u16,
    /// The current wait is a probe.
    probing: bool,
    /// The current wait sleeps at once (no spin, and not a probe).
    sleeping_at_once: bool,
}

impl Default for SpinLearner {
    /// Starts out spinning: a new connection's first messages usually come in a burst.
    fn default() -> Self {
        SpinLearner {
            quick: QUICK_SCALE,
            since_probe: 0,
            probe_every: PROBE_EVERY_MIN,
            probing: false,
            sleeping_at_once: false,
        }
    }
}

impl SpinLearner {
    /// How long the next wait under `strategy` spins before it sleeps: `None` for as long
    /// as it takes (`Spin`), zero to sleep at once.
    pub(crate) fn budget(&mut self, strategy: &WaitStrategy) -> Option<Duration> {
        let ceiling = match *strategy {
            WaitStrategy::Spin => return None,
            WaitStrategy::Block => return Some(Duration::ZERO),
            WaitStrategy::Adaptive { spin } => spin,
        };
        self.sleeping_at_once = false;
        if ceiling.is_zero() || self.spinning_pays() {
            return Some(ceiling);
        }
        self.since_probe += 1;
        if self.since_probe >= self.probe_every {
            self.since_probe = 0;
            self.probing = true;
            return Some(ceiling);
        }
        self.sleeping_at_once = true;
        Some(Duration::ZERO)
    }

    /// Learns from a wait under `strategy` that took `waited` until its condition held.
    pub(crate) fn learn(&mut self, strategy: &WaitStrategy, waited: Duration) {
        let WaitStrategy::Adaptive { spin: ceiling } = *strategy else {
            return;
        };
        // A wait that slept at once teaches nothing: its time includes the wake-up's own
        // latency (15-80 µs here), so it cannot tell whether the condition came within
        // the ceiling. Counted as slow, such waits kept a side asleep for a peer that
        // mostly answered in time (the probes alone could not outvote them); counted when
        // quick only, they would pull one way. The probes decide.
        if std::mem::take(&mut self.sleeping_at_once) {
            return;
        }
        let quick = waited <= ceiling;
        let target = if quick { QUICK_SCALE } else { 0 };
        // Rounded towards the target, so that a run of one outcome reaches it.
        self.quick = if target >= self.quick {
            self.quick + (target - self.quick).div_ceil(QUICK_WEIGHT)
        } else {
            self.quick - (self.quick - target).div_ceil(QUICK_WEIGHT)
        };
        if std::mem::take(&mut self.probing) {
            if quick {
                // Probe again at the next wait: a run of quick probes climbs back to
                // spinning within a few waits.
                self.probe_every = PROBE_EVERY_MIN;
                self.since_probe = PROBE_EVERY_MIN - 1;
            } else {
                self.probe_every = (self.probe_every * 2).min(PROBE_EVERY_MAX);
            }
        }
    }

    /// Whether at least half of the recent waits ended within the budget.
    fn spinning_pays(&self) -> bool {
        self.quick >= QUICK_SCALE / 2
    }
}

/// Gives the CPU to any other thread that waits for it, once a spin has gone on for
/// [`YIELD_AFTER`] since `started`.
#[inline]
pub(crate) fn yield_if_spinning_long(started: Instant, now: Instant) {
    if now.duration_since(started) >= YIELD_AFTER {
        #[cfg(not(loom))]
        std::thread::yield_now();
    }
}

/// A way to sleep until the waker's wake-up: a futex word, as the kernel (or a test model)
/// provides it, or a doorbell.
pub(crate) trait Sleeper {
    /// What a waiter that is about to sleep this way announces ([`SLEEP_FUTEX`] or
    /// [`SLEEP_DOORBELL`]), which tells the waker how to wake it. Asked before every
    /// sleep, so a sleeper that falls back to another way after [`Woke::Unavailable`]
    /// announces the new way from its next sleep on.
    fn announcement(&self) -> u32;
    /// Sleeps while `*word == expected` (a doorbell sleeper: until rung), until woken or
    /// `deadline`. May return early.
    fn sleep(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> Woke;
}

/// What ended a sleep, as far as the sleeper knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// Woken, timed out, or early: look at the condition again.
    Maybe,
    /// The sleeper saw the peer hang up (a doorbell sleeper watches the peer's ends):
    /// check the peer now, not at the next periodic check.
    PeerHungUp,
    /// The sleeper could not sleep on this word at all: the OS refused the wait (macOS's
    /// `os_sync_wait_on_address` fails with `EDOM` when the peer waits on the same word in
    /// another mode). Nothing slept; look again, and sleep another way.
    Unavailable,
}

/// A sleeper that sleeps the `first` way until that refuses the word
/// ([`Woke::Unavailable`]), and the `then` way for the rest of the wait. Since the
/// announcement is asked before every sleep, the waker learns of the switch from the next
/// sleep on, so no wake-up goes to the way nobody sleeps on.
#[derive(Debug)]
pub(crate) struct Fallback<A, B> {
    first: A,
    then: B,
    refused: std::cell::Cell<bool>,
}

impl<A, B> Fallback<A, B> {
    pub(crate) fn new(first: A, then: B) -> Self {
        Fallback {
            first,
            then,
            refused: std::cell::Cell::new(false),
        }
    }
}

impl<A: Sleeper, B: Sleeper> Sleeper for Fallback<A, B> {
    fn announcement(&self) -> u32 {
        if self.refused.get() {
            self.then.announcement()
        } else {
            self.first.announcement()
        }
    }

    fn sleep(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> Woke {
        if self.refused.get() {
            return self.then.sleep(word, expected, deadline);
        }
        let woke = self.first.sleep(word, expected, deadline);
        if woke == Woke::Unavailable {
            self.refused.set(true);
        }
        woke
    }
}

/// What a waker must do after [`notify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Wake {
    pub(crate) futex: bool,
    pub(crate) doorbell: bool,
}

/// The waker's half of the protocol: call after publishing. Costs a fence and a load when
/// nobody sleeps; the caller performs the returned wake-ups (syscalls) only when needed.
#[inline]
pub(crate) fn notify(cell: &WaitCell) -> Wake {
    // SYNC: pairs with the fence in `announce`: either the waiter's re-check sees what we
    // published before this call, or we see its announcement below.
    fence(Ordering::SeqCst);
    if cell.sleeping.load(Ordering::Acquire) == 0 {
        return Wake::default();
    }
    // SYNC: Acquire pairs with the SeqCst store in `announce`, so the bump below is ordered
    // after the waiter's load of `seen`.
    let sleeping = cell.sleeping.swap(0, Ordering::AcqRel);
    if sleeping == 0 {
        return Wake::default();
    }
    // SYNC: pairs with the Acquire load of `seq` in `sleep`; the value change is what makes a
    // waiter that has not reached `futex_wait` yet return from it at once.
    cell.seq.fetch_add(1, Ordering::Release);
    Wake {
        // Unknown bits come from a confused or hostile peer: waking costs us nothing wrong.
        futex: sleeping & SLEEP_DOORBELL == 0 || sleeping & SLEEP_FUTEX != 0,
        doorbell: sleeping & SLEEP_DOORBELL != 0,
    }
}

/// The waiter's announcement (steps 2–3). Returns whether `ready()` became true meanwhile,
/// in which case the announcement is withdrawn and the caller must not sleep.
pub(crate) fn announce<E>(
    cell: &WaitCell,
    how: u32,
    ready: &mut impl FnMut() -> Result<bool, E>,
) -> Result<bool, E> {
    cell.sleeping.store(how, Ordering::SeqCst);
    // SYNC: pairs with the fence in `notify` (see the module docs).
    fence(Ordering::SeqCst);
    match ready() {
        Ok(false) => Ok(false),
        other => {
            cell.sleeping.store(0, Ordering::Relaxed);
            other
        }
    }
}

/// Withdraws an announcement after waking up.
pub(crate) fn withdraw(cell: &WaitCell) {
    cell.sleeping.store(0, Ordering::Relaxed);
}

/// One sleep: returns when woken, at `deadline`, or spuriously; or at once if `ready()`
/// was already true before sleeping.
fn sleep<S: Sleeper, E>(
    cell: &WaitCell,
    sleeper: &S,
    deadline: Option<Instant>,
    ready: &mut impl FnMut() -> Result<bool, E>,
) -> Result<Slept, E> {
    // SYNC: pairs with the Release `fetch_add` in `notify`.
    let seen = cell.seq.load(Ordering::Acquire);
    if announce(cell, sleeper.announcement(), ready)? {
        return Ok(Slept::Ready);
    }
    let woke = sleeper.sleep(&cell.seq, seen, deadline);
    withdraw(cell);
    Ok(Slept::Woke(woke))
}

/// How one [`sleep`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slept {
    /// `ready()` was true before it slept.
    Ready,
    /// It slept, and woke.
    Woke(Woke),
}

/// How a wait ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    Ready,
    TimedOut,
}

/// Checks the peer (thoroughly if `*due` has passed, then moving it on); `Some` ends the
/// wait: with `Ready` if something arrived before the peer went, else with its error.
fn check_peer<E>(
    now: Instant,
    due: &mut Option<Instant>,
    peer_alive: &mut impl FnMut(bool) -> Result<(), E>,
    ready: &mut impl FnMut() -> Result<bool, E>,
) -> Option<Result<Waited, E>> {
    let thorough = now >= *due.get_or_insert(now + PEER_CHECK_INTERVAL);
    if thorough {
        *due = Some(now + PEER_CHECK_INTERVAL);
    }
    let gone = peer_alive(thorough).err()?;
    Some(match ready() {
        Ok(true) => Ok(Waited::Ready),
        Ok(false) => Err(gone),
        Err(error) => Err(error),
    })
}

/// The deadline `timeout` from now, or `None` (no deadline) if that is beyond what the
/// clock can represent.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Waits under `strategy` until `ready()` is true or `deadline` passes, spinning first for
/// as long as `learner` says (see [`SpinLearner`]), and teaching it how long this wait took.
///
/// `peer_alive(thorough)` is called with `false` after every wake-up (a cheap look at a
/// goodbye flag in shared memory) and with `true` whenever `*peer_check_due` has passed
/// (a syscall that notices a peer that died without saying goodbye), which then moves
/// [`PEER_CHECK_INTERVAL`] ahead. The caller keeps `peer_check_due` across waits, so that
/// even a loop of waits shorter than the interval checks the peer that often. When the
/// peer is gone, `ready()` is asked once more (it may have published and then gone) and
/// the failure is returned only if nothing is ready.
///
/// `peer_progress()` is a value that moves while the peer works through what this side
/// sent it (the consumer's index of our outgoing ring), or `None` where there is nothing
/// to watch. While it moves, the peer is busy with our last message and its answer cannot
/// come before it is done, so the spin's budget (and the time the learner is taught)
/// counts from the last move seen, not from the start of the wait; see
/// [`PROGRESS_SPIN_CAP`] for the bound.
#[allow(clippy::too_many_arguments)]
pub(crate) fn wait_until<E>(
    strategy: &WaitStrategy,
    learner: &mut SpinLearner,
    cell: &WaitCell,
    sleeper: &impl Sleeper,
    deadline: Option<Instant>,
    peer_check_due: &mut Option<Instant>,
    ready: impl FnMut() -> Result<bool, E>,
    peer_alive: impl FnMut(bool) -> Result<(), E>,
    peer_progress: impl FnMut() -> Option<u64>,
) -> Result<Waited, E> {
    // The wait's first look at the clock (if it got so far: a wait that ends within its
    // first spins took no time worth a clock read), moved on to the peer's last progress.
    let mut started = None;
    let spin_budget = learner.budget(strategy);
    let waited = wait_inner(
        spin_budget,
        cell,
        sleeper,
        deadline,
        peer_check_due,
        &mut started,
        ready,
        peer_alive,
        peer_progress,
    );
    if let Ok(Waited::Ready) = waited {
        let took = started.map_or(Duration::ZERO, |started: Instant| started.elapsed());
        learner.learn(strategy, took);
    }
    waited
}

#[allow(clippy::too_many_arguments)]
fn wait_inner<E>(
    spin_budget: Option<Duration>,
    cell: &WaitCell,
    sleeper: &impl Sleeper,
    deadline: Option<Instant>,
    peer_check_due: &mut Option<Instant>,
    started: &mut Option<Instant>,
    mut ready: impl FnMut() -> Result<bool, E>,
    mut peer_alive: impl FnMut(bool) -> Result<(), E>,
    mut peer_progress: impl FnMut() -> Option<u64>,
) -> Result<Waited, E> {
    // Spin phase. The clock is first read after a round of spins, not on entry: a peer
    // that answers within nanoseconds (streaming) should not pay for a clock read per
    // message.
    if spin_budget != Some(Duration::ZERO) {
        let mut first_look: Option<Instant> = None;
        let mut progress = if spin_budget.is_some() {
            peer_progress()
        } else {
            None
        };
        loop {
            for _ in 0..SPINS_PER_CLOCK_READ {
                if ready()? {
                    return Ok(Waited::Ready);
                }
                spin_loop();
            }
            let now = Instant::now();
            let first = *first_look.get_or_insert(now);
            // (A `Spin` wait has no budget to stretch, so it does not look.)
            if let Some(budget) = spin_budget {
                let moved = peer_progress();
                if moved.is_some() && moved != progress {
                    progress = moved;
                    // Saturating: a user may ask for a spin near `Duration::MAX`.
                    if now.duration_since(first) < budget.saturating_mul(PROGRESS_SPIN_CAP) {
                        *started = Some(now);
                    }
                }
            }
            let since = *started.get_or_insert(now);
            if let Some(end) = check_peer(now, peer_check_due, &mut peer_alive, &mut ready) {
                return end;
            }
            if deadline.is_some_and(|deadline| now >= deadline) {
                return Ok(Waited::TimedOut);
            }
            if spin_budget.is_some_and(|budget| now.duration_since(since) >= budget) {
                break;
            }
            yield_if_spinning_long(first, now);
        }
    }
    // Sleep phase: in slices that end when the next thorough peer check is due, so that a
    // peer that died without a word is noticed even though nobody will ever wake us.
    loop {
        if ready()? {
            return Ok(Waited::Ready);
        }
        let now = Instant::now();
        started.get_or_insert(now);
        if let Some(end) = check_peer(now, peer_check_due, &mut peer_alive, &mut ready) {
            return end;
        }
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Ok(Waited::TimedOut);
        }
        let check_at = peer_check_due.unwrap_or(now + PEER_CHECK_INTERVAL);
        let wake_by = deadline.map_or(check_at, |deadline| deadline.min(check_at));
        match sleep(cell, sleeper, Some(wake_by), &mut ready)? {
            Slept::Ready => return Ok(Waited::Ready),
            // The next pass checks the peer thoroughly, at once.
            Slept::Woke(Woke::PeerHungUp) => *peer_check_due = Some(Instant::now()),
            // A sleeper that cannot sleep on the word is the first part of a [`Fallback`],
            // which sleeps the other way from the next pass on.
            Slept::Woke(Woke::Maybe | Woke::Unavailable) => {}
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A sleeper that records what was announced when it was asked to sleep, and answers
    /// with `woke`.
    struct Recording<'a> {
        announcement: u32,
        woke: Woke,
        cell: &'a WaitCell,
        seen: &'a RefCell<Vec<u32>>,
    }

    impl Sleeper for Recording<'_> {
        fn announcement(&self) -> u32 {
            self.announcement
        }

        fn sleep(&self, _word: &AtomicU32, _expected: u32, _deadline: Option<Instant>) -> Woke {
            self.seen
                .borrow_mut()
                .push(self.cell.sleeping.load(Ordering::SeqCst));
            self.woke
        }
    }

    #[test]
    fn a_refused_shared_wait_falls_back_and_the_waker_rings_instead() {
        let cell = WaitCell {
            seq: AtomicU32::new(0),
            sleeping: AtomicU32::new(0),
        };
        let (futex_sleeps, doorbell_sleeps) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
        let refusing = Recording {
            announcement: SLEEP_FUTEX,
            woke: Woke::Unavailable,
            cell: &cell,
            seen: &futex_sleeps,
        };
        let doorbell = Recording {
            announcement: SLEEP_DOORBELL,
            woke: Woke::Maybe,
            cell: &cell,
            seen: &doorbell_sleeps,
        };
        let sleeper = Fallback::new(refusing, doorbell);
        let mut never = || Ok::<bool, ()>(false);
        for _ in 0..3 {
            sleep(&cell, &sleeper, None, &mut never).unwrap();
        }
        // The shared wait was tried once, announced as such; the doorbell took the rest.
        assert_eq!(*futex_sleeps.borrow(), [SLEEP_FUTEX]);
        assert_eq!(*doorbell_sleeps.borrow(), [SLEEP_DOORBELL, SLEEP_DOORBELL]);
        // A waker that finds the fallen-back announcement rings the doorbell only.
        cell.sleeping
            .store(sleeper.announcement(), Ordering::SeqCst);
        assert_eq!(
            notify(&cell),
            Wake {
                futex: false,
                doorbell: true
            }
        );
    }

    const CEILING: Duration = Duration::from_micros(50);
    const ADAPTIVE: WaitStrategy = WaitStrategy::Adaptive { spin: CEILING };
    /// A peer that answers after a millisecond, as an editor's paced messages come.
    const SLOW: Duration = Duration::from_millis(1);
    /// A peer that answers at memory speed.
    const QUICK: Duration = Duration::from_micros(1);

    /// Runs `waits` waits that each take `took`, and returns the budgets they were given.
    fn waits(learner: &mut SpinLearner, waits: usize, took: Duration) -> Vec<Duration> {
        (0..waits)
            .map(|_| {
                let budget = learner.budget(&ADAPTIVE).expect("Adaptive has a budget");
                learner.learn(&ADAPTIVE, took);
                budget
            })
            .collect()
    }

    fn spins(budgets: &[Duration]) -> usize {
        budgets.iter().filter(|budget| !budget.is_zero()).count()
    }

    #[test]
    fn a_learner_spins_while_its_peer_answers_within_the_budget() {
        let mut learner = SpinLearner::default();
        let budgets = waits(&mut learner, 1_000, QUICK);
        assert!(
            budgets.iter().all(|&budget| budget == CEILING),
            "{budgets:?}"
        );
    }

    #[test]
    fn a_learner_stops_spinning_for_a_slow_peer_but_for_rarer_and_rarer_probes() {
        let mut learner = SpinLearner::default();
        // It starts out spinning, and gives up after a few slow waits.
        let first = waits(&mut learner, 8, SLOW);
        assert!(first[0] == CEILING && first[7].is_zero(), "{first:?}");
        // Then it probes, each probe that finds nothing doubling the interval, up to one
        // in 64 waits.
        let next = waits(&mut learner, 8 + 16 + 32 + 64, SLOW);
        let probes: Vec<usize> = next
            .iter()
            .enumerate()
            .filter(|(_, budget)| !budget.is_zero())
            .map(|(index, _)| index)
            .collect();
        assert_eq!(probes.len(), 4, "{next:?}");
        let gaps: Vec<usize> = probes.windows(2).map(|pair| pair[1] - pair[0]).collect();
        assert_eq!(gaps, [16, 32, 64], "probes at {probes:?}");
        let later = waits(&mut learner, 64 * 10, SLOW);
        assert_eq!(spins(&later), 10, "one probe in 64 waits at most");
    }

    #[test]
    fn a_learner_that_had_stopped_spins_again_once_its_peer_is_quick() {
        let mut learner = SpinLearner::default();
        waits(&mut learner, 200, SLOW);
        // The peer turns quick: within a probe interval and a few waits it spins again,
        // and stays spinning.
        let budgets = waits(&mut learner, 64 + 16, QUICK);
        let resumed = budgets.len() - budgets.iter().rev().take_while(|b| **b == CEILING).count();
        assert!(
            resumed <= 64 + 8,
            "spinning again only from wait {resumed}: {budgets:?}"
        );
        assert!(spins(&waits(&mut learner, 100, QUICK)) == 100);
    }

    #[test]
    fn a_wait_that_slept_at_once_teaches_nothing_whatever_it_took() {
        let mut learner = SpinLearner::default();
        waits(&mut learner, 200, SLOW);
        let asleep = learner.quick;
        // Waits that sleep at once, quick or slow as the wake-up made them: the average
        // does not move. Only the probes (budgets that are not zero) teach.
        for took in [QUICK, CEILING - Duration::from_micros(10), SLOW].repeat(10) {
            let budget = learner.budget(&ADAPTIVE).expect("Adaptive has a budget");
            let before = learner.quick;
            learner.learn(&ADAPTIVE, took);
            if budget.is_zero() {
                assert_eq!(learner.quick, before, "a sleep of {took:?} taught");
            }
        }
        assert!(asleep < QUICK_SCALE / 2, "{asleep}");
    }

    #[test]
    fn a_learner_asleep_is_not_kept_asleep_by_its_own_wake_up_latency() {
        // A peer that answers within the budget four times in five, as a spinning wait
        // sees it; a wait that slept at once sees every answer late, by the wake-up's own
        // latency. Those late sleeps must not outvote the probes: the learner, put to
        // sleep by a slow spell, spins again.
        let mut learner = SpinLearner::default();
        waits(&mut learner, 200, SLOW);
        let mut budgets = Vec::new();
        for wait in 0..600 {
            let budget = learner.budget(&ADAPTIVE).expect("Adaptive has a budget");
            let took = if budget.is_zero() {
                CEILING + Duration::from_micros(60)
            } else if wait % 5 == 4 {
                CEILING + Duration::from_micros(20)
            } else {
                CEILING - Duration::from_micros(5)
            };
            learner.learn(&ADAPTIVE, took);
            budgets.push(budget);
        }
        let spun = spins(&budgets[500..]);
        assert!(spun >= 90, "spun in {spun} of the last 100 waits");
    }

    #[test]
    fn a_learner_obeys_spin_and_block_and_learns_nothing_from_them() {
        let mut learner = SpinLearner::default();
        for _ in 0..100 {
            assert_eq!(learner.budget(&WaitStrategy::Spin), None);
            learner.learn(&WaitStrategy::Spin, SLOW);
            assert_eq!(learner.budget(&WaitStrategy::Block), Some(Duration::ZERO));
            learner.learn(&WaitStrategy::Block, SLOW);
        }
        assert_eq!(learner, SpinLearner::default());
    }

    /// Waits under [`ADAPTIVE`], with a sleeper that returns at once and counts its
    /// sleeps, until `ready(started, sleeps)` (or a 5 s deadline), the peer's progress
    /// reading as `progress()`. Returns how the wait ended and how often it slept.
    fn wait_watching_progress(
        ready: impl FnMut(Instant, usize) -> bool,
        progress: impl FnMut() -> Option<u64>,
    ) -> (Waited, usize) {
        wait_watching_progress_under(&ADAPTIVE, ready, progress)
    }

    fn wait_watching_progress_under(
        strategy: &WaitStrategy,
        mut ready: impl FnMut(Instant, usize) -> bool,
        progress: impl FnMut() -> Option<u64>,
    ) -> (Waited, usize) {
        let cell = WaitCell {
            seq: AtomicU32::new(0),
            sleeping: AtomicU32::new(0),
        };
        let slept = RefCell::new(Vec::new());
        let sleeper = Recording {
            announcement: SLEEP_FUTEX,
            woke: Woke::Maybe,
            cell: &cell,
            seen: &slept,
        };
        let started = Instant::now();
        let waited = wait_until(
            strategy,
            &mut SpinLearner::default(),
            &cell,
            &sleeper,
            deadline_after(Duration::from_secs(5)),
            &mut None,
            || Ok::<bool, ()>(ready(started, slept.borrow().len())),
            |_thorough| Ok(()),
            progress,
        )
        .unwrap();
        let sleeps = slept.borrow().len();
        (waited, sleeps)
    }

    /// A progress reading that moves at every look.
    fn moving() -> impl FnMut() -> Option<u64> {
        let mut index = 0;
        move || {
            index += 1;
            Some(index)
        }
    }

    #[test]
    fn a_peer_at_work_on_what_we_sent_keeps_the_spin_going_past_its_budget() {
        // Ready after three budgets, within the cap: the peer was busy all along, so the
        // wait spins through and never sleeps. (If the thread is descheduled past the cap,
        // the condition holds by the time it runs again, which ends the wait at once.)
        let (waited, sleeps) =
            wait_watching_progress(|started, _| started.elapsed() >= CEILING * 3, moving());
        assert_eq!((waited, sleeps), (Waited::Ready, 0));
        // The same wait with a still peer sleeps once its budget is spent (ready only
        // then, so that no time measured here decides the outcome).
        let (waited, sleeps) = wait_watching_progress(|_, sleeps| sleeps > 0, || Some(7));
        assert_eq!((waited, sleeps), (Waited::Ready, 1));
    }

    #[test]
    fn progress_under_the_longest_spin_there_is_does_not_overflow() {
        // `spin` is the user's: the cap on progress multiplies it, saturating.
        let longest = WaitStrategy::Adaptive {
            spin: Duration::MAX,
        };
        let mut looks = 0;
        let (waited, sleeps) = wait_watching_progress_under(
            &longest,
            |_, _| {
                looks += 1;
                looks > 1_000
            },
            moving(),
        );
        assert_eq!((waited, sleeps), (Waited::Ready, 0));
    }

    #[test]
    fn a_peer_crawling_through_what_we_sent_stretches_the_spin_only_so_far() {
        // Progress at every look, for ever, and ready only once the wait has slept: the
        // cap must end the spin, or the wait runs into its deadline.
        let (waited, sleeps) = wait_watching_progress(|_, sleeps| sleeps > 0, moving());
        assert_eq!((waited, sleeps), (Waited::Ready, 1));
    }
}

#[cfg(all(test, loom))]
#[allow(unsafe_code)]
mod loom_tests {
    //! Model checks of the sleep/wake protocol: run with
    //! `RUSTFLAGS="--cfg loom" cargo test -p ringbell --release --lib loom`.

    use super::*;
    use crate::core::layout::RingControl;
    use crate::core::ring::{Consumer, FrameKind, Producer, RawRing};
    use crate::core::sync::AtomicU64;
    use loom::sync::{Arc, Condvar, Mutex};

    /// A futex as the kernel defines it: the value check and the enqueue happen under the
    /// same lock that `wake` takes, so a wake between them cannot be missed.
    #[derive(Default)]
    struct ModelFutex {
        lock: Mutex<()>,
        queue: Condvar,
    }

    impl Sleeper for ModelFutex {
        fn announcement(&self) -> u32 {
            SLEEP_FUTEX
        }

        fn sleep(&self, word: &AtomicU32, expected: u32, _deadline: Option<Instant>) -> Woke {
            let guard = self.lock.lock().unwrap();
            if word.load(Ordering::SeqCst) == expected {
                drop(self.queue.wait(guard).unwrap());
            }
            Woke::Maybe
        }
    }

    impl ModelFutex {
        fn wake(&self, _word: &AtomicU32) {
            let _guard = self.lock.lock().unwrap();
            self.queue.notify_all();
        }
    }

    fn cell() -> WaitCell {
        WaitCell {
            seq: AtomicU32::new(0),
            sleeping: AtomicU32::new(0),
        }
    }

    /// A flag published then notified is always seen by a waiter that sleeps with no
    /// timeout: if a wake-up were lost, loom would report a deadlock.
    #[test]
    fn no_lost_wakeup() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let shared = Arc::new((cell(), AtomicU64::new(0), ModelFutex::default()));
            let waker = {
                let shared = shared.clone();
                loom::thread::spawn(move || {
                    let (cell, flag, futex) = &*shared;
                    flag.store(1, Ordering::Release);
                    if notify(cell).futex {
                        futex.wake(&cell.seq);
                    }
                })
            };
            let (cell, flag, futex) = &*shared;
            let mut ready = || Ok::<bool, ()>(flag.load(Ordering::Acquire) == 1);
            while !ready().unwrap() {
                let _ = sleep(cell, futex, None, &mut ready);
            }
            waker.join().unwrap();
        });
    }

    /// Two messages through a four-frame ring with a blocking consumer: both arrive, in
    /// order, with their bytes, and nobody sleeps forever.
    #[test]
    fn ring_with_blocking_consumer() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            struct Shared {
                control: Box<RingControl>,
                data: std::cell::UnsafeCell<[u64; 32]>,
                futex: ModelFutex,
            }
            // SAFETY: the producer and consumer touch disjoint bytes, ordered by the ring's
            // Release/Acquire protocol, which is what this model checks.
            unsafe impl Sync for Shared {}
            // SAFETY: as above; the raw bytes are plain integers.
            unsafe impl Send for Shared {}
            let shared = Arc::new(Shared {
                control: RingControl::new_boxed(),
                data: std::cell::UnsafeCell::new([0; 32]),
                futex: ModelFutex::default(),
            });
            // SAFETY: `shared` outlives both threads' use of the ring.
            let raw = unsafe { RawRing::new(&*shared.control, shared.data.get().cast(), 256) };
            let producer_shared = shared.clone();
            let producer = loom::thread::spawn(move || {
                let shared = producer_shared;
                let mut producer = Producer::new(raw);
                for byte in [1u8, 2] {
                    assert!(producer
                        .try_push(FrameKind::Message, 0, &[&[byte; 8]])
                        .unwrap());
                    if notify(&shared.control.readable).futex {
                        shared.futex.wake(&shared.control.readable.seq);
                    }
                }
            });
            let mut consumer = Consumer::new(raw);
            for expected in [1u8, 2] {
                let frame = loop {
                    if let Some(frame) = consumer.peek().unwrap() {
                        break frame;
                    }
                    let mut ready = || consumer.has_data();
                    let _ = sleep(&shared.control.readable, &shared.futex, None, &mut ready);
                };
                let mut out = Vec::new();
                consumer.append_payload(&frame, 0, &mut out);
                consumer.release(&frame);
                assert_eq!(out, vec![expected; 8]);
            }
            producer.join().unwrap();
        });
    }
}
