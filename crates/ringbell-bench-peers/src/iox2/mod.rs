//! iceoryx2 0.10: zero-copy shared memory, in the three set-ups its documentation offers
//! for two processes that talk both ways.
//!
//! * [`Pattern::PubSubSpin`]: a publish-subscribe service each way, receivers
//!   busy-polling `Subscriber::receive`, as iceoryx2's own latency benchmark does.
//! * [`Pattern::RequestResponseSpin`]: one request-response service, the parent the
//!   client and the child the server, both busy-polling.
//! * [`Pattern::PubSubEvent`]: the same publish-subscribe services plus an event service
//!   each way; a sender publishes then notifies, a receiver sleeps on its listener (a Unix
//!   datagram socket underneath) until notified, as in iceoryx2's event-based example.
//!
//! Both processes build the services with the same settings: the parent creates them
//! and its ports before the child starts, the child opens them, and the parent's
//! `accept` waits until the child's ports appear in the services' dynamic configuration
//! (a message sent earlier would reach nobody: iceoryx2 delivers to the receivers
//! connected when it is sent, and keeps no history here).
//!
//! Resources: service names carry this process's id and a counter, so that runs never
//! meet; files carry the prefix `ringbell_bench_` (in `/dev/shm` and `/tmp/iceoryx2`),
//! so that the dead-node clean-up iceoryx2 runs when a node is created or dropped (left
//! on, and said so below) removes the leftovers of our own killed processes and of nobody
//! else's. The benchmark SIGKILLs each child once measured; a [`PeerLink`] goodbye lets
//! the child remove its resources itself first.

mod pubsub;
mod request_response;

use std::cell::Cell;
use std::fmt::Debug;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iceoryx2::port::{BackpressureAction, BackpressureInfo};
use iceoryx2::prelude::*;

use crate::peer_link::PeerLink;
use crate::{bad_args, inherited_fd, Channel, ChildSetup, Pending};

/// How a pair of processes uses iceoryx2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pattern {
    PubSubSpin,
    RequestResponseSpin,
    PubSubEvent,
}

pub(crate) const HOW_PUBSUB: &str = "iceoryx2 0.10, ipc::Service (single-threaded ports): a \
    publish-subscribe service of [u8] slices each way, 1 publisher and 1 subscriber, no \
    history, subscriber buffer 64 samples, safe overflow off and backpressure strategy \
    RetryUntilDelivered (a full buffer makes the publisher wait; nothing is dropped); slices \
    preallocated for 1 MiB, or for the row's size above it (initial_max_slice_len, \
    AllocationStrategy::Static); send = \
    loan_slice_uninit + write_from_slice + send, recv = copy the sample's payload out; the \
    receiver busy-polls Subscriber::receive with spin_loop(), and every 65,536 polls reads \
    a socket pair that only tells whether the other process lives";

pub(crate) const HOW_REQUEST_RESPONSE: &str = "iceoryx2 0.10, ipc::Service (single-threaded \
    ports): one request-response service of [u8] slices, the parent the client and the \
    child the server, up to 4 active requests per client, response buffer 1, safe overflow \
    off both ways, RetryUntilDelivered; slices preallocated for 1 MiB, or \
    the row's size above it; the client sends a \
    request and busy-polls its PendingResponse::receive, the server busy-polls \
    Server::receive, answers on the ActiveRequest and drops it (one copy in and one out each \
    way); liveness checked as in the pub-sub row; no one-way row, as a client keeps only a \
    few requests in flight";

pub(crate) const HOW_EVENT: &str = "iceoryx2 0.10, ipc::Service (single-threaded ports): the \
    publish-subscribe services of the spinning row (buffer 64, no overflow, \
    RetryUntilDelivered, slices of 1 MiB or the row's size) plus an event service each way; send = publish, then \
    Notifier::notify; recv = take a sample if there is one, else sleep in \
    Listener::timed_wait (a Unix datagram socket underneath, written only when the listener \
    is not already notified) and look again; a 20 ms nap without a notification checks that \
    the other process lives";

/// Slices the ports preallocate: the largest message, which is known (iceoryx2's growing
/// strategies are for a maximum that is not), so that no data segment is replaced and
/// remapped during a run. Only the pages a message touches are ever allocated.
const ALLOCATION: AllocationStrategy = AllocationStrategy::Static;

/// Samples a subscriber may hold before the publisher waits: room for a stream to run
/// ahead of its reader. Not more: each sample is a `max_message` slot, and with 256 of
/// them 64 B streams ran about three times slower here (more slots a megabyte apart mean
/// more pages and TLB entries, and cache lines that share a set).
const SUBSCRIBER_BUFFER: usize = 64;

/// Requests a client may have in flight (the sink's stream through a client would wait on
/// the server's verdict for each of these).
const MAX_ACTIVE_REQUESTS: usize = 4;

/// Busy-poll iterations between two clock reads (for a `recv` timeout).
const SPINS_PER_CLOCK_CHECK: u32 = 1 << 10;

/// Busy-poll iterations between two liveness checks (the `HOW_*` texts say 65,536): a few
/// milliseconds, so that a read syscall lands in well under one round trip in a thousand.
const SPINS_PER_LIVENESS_CHECK: u32 = 1 << 16;

/// How long a sleeping receiver, or a sender held back by a full buffer, goes without
/// checking that the other process lives.
const LIVENESS_PERIOD: Duration = Duration::from_millis(20);

/// Runs of this process so far, for unique service names.
static RUNS: AtomicU64 = AtomicU64::new(0);

/// The prefix of every file iceoryx2 creates for us.
const FILE_PREFIX: &[u8] = b"ringbell_bench_";

pub(crate) fn listen(pattern: Pattern, max_message: usize) -> io::Result<(ChildSetup, Pending)> {
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let services = format!("ringbell-bench/{}-{run}", std::process::id());
    let (link, theirs) = PeerLink::pair()?;
    let node = node("ringbell-bench-parent")?;
    let pending = match pattern {
        Pattern::PubSubSpin | Pattern::PubSubEvent => {
            pubsub::listen(node, &services, pattern, max_message, link)?
        }
        Pattern::RequestResponseSpin => {
            request_response::listen(node, &services, max_message, link)?
        }
    };
    let setup = ChildSetup {
        args: vec![
            services,
            theirs.as_raw_fd().to_string(),
            max_message.to_string(),
        ],
        inherited: vec![theirs],
    };
    Ok((setup, pending))
}

pub(crate) fn connect_child(pattern: Pattern, args: &[String]) -> io::Result<Box<dyn Channel>> {
    let [services, link, max_message] = args else {
        return Err(bad_args(
            "expected: <service name prefix> <liveness socket fd> <max message>",
        ));
    };
    let max_message = max_message
        .parse()
        .map_err(|_| bad_args("the maximum message size is not a number"))?;
    let link = PeerLink::inherited(inherited_fd(link)?)?;
    let node = node("ringbell-bench-child")?;
    match pattern {
        Pattern::PubSubSpin | Pattern::PubSubEvent => {
            pubsub::connect_child(node, services, pattern, max_message, link)
        }
        Pattern::RequestResponseSpin => {
            request_response::connect_child(node, services, max_message, link)
        }
    }
}

/// A node with our file prefix, its dead-node clean-up on, and no signal handlers (the
/// benchmark handles its signals). iceoryx2 logs only fatal errors unless
/// `IOX2_LOG_LEVEL` says otherwise: every failure reaches the caller as an `io::Error`.
fn node(name: &str) -> io::Result<Node<ipc::Service>> {
    set_log_level_from_env_or(LogLevel::Fatal);
    let mut config = Config::default();
    config.global.prefix = FileName::new(FILE_PREFIX).map_err(failed("naming our files"))?;
    config.global.node.cleanup_dead_nodes_on_creation = true;
    config.global.node.cleanup_dead_nodes_on_destruction = true;
    NodeBuilder::new()
        .config(&config)
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .name(&NodeName::new(name).map_err(failed("naming the node"))?)
        .create::<ipc::Service>()
        .map_err(failed("creating a node"))
}

/// The service `services/suffix`.
fn service_name(services: &str, suffix: &str) -> io::Result<ServiceName> {
    ServiceName::new(&format!("{services}/{suffix}")).map_err(failed("naming a service"))
}

/// Turns an iceoryx2 error into an `io::Error` that says what we were doing.
fn failed<E: Debug>(doing: &'static str) -> impl FnOnce(E) -> io::Error {
    move |error| io::Error::other(format!("iceoryx2: {doing}: {error:?}"))
}

/// Waits until `connected` says the child's ports are there, checking every millisecond
/// that the child lives, for up to `timeout`.
fn await_child(
    link: &PeerLink,
    timeout: Duration,
    mut connected: impl FnMut() -> bool,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !connected() {
        link.check().map_err(|_| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the child exited before it opened the iceoryx2 services",
            )
        })?;
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the child did not open the iceoryx2 services within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Busy-polls `poll` (a `spin_loop` hint between tries) until it yields a value
/// (`Some`), `timeout` passes (`None`), or the other process is gone (`UnexpectedEof`).
/// The clock and the liveness socket are looked at only every so many spins.
fn spin<T>(
    link: &PeerLink,
    timeout: Option<Duration>,
    mut poll: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    let started = Instant::now();
    let mut spins: u32 = 0;
    loop {
        if let Some(value) = poll()? {
            return Ok(Some(value));
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(SPINS_PER_CLOCK_CHECK) {
            continue;
        }
        if timeout.is_some_and(|timeout| started.elapsed() >= timeout) {
            return Ok(None);
        }
        if spins.is_multiple_of(SPINS_PER_LIVENESS_CHECK) {
            if let Err(gone) = link.check() {
                // A last look: its final message may have come just before it left.
                return poll()?.map(Some).ok_or(gone);
            }
        }
    }
}

/// A backpressure handler for senders (`RetryUntilDelivered` retries while the
/// receiver's buffer is full): keeps retrying, but gives up, failing the send, once the
/// other process is gone, checked every [`LIVENESS_PERIOD`] of waiting. Without it a
/// sender facing a killed receiver's full buffer would wait for ever.
fn give_up_when_gone(
    link: PeerLink,
) -> impl Fn(&BackpressureInfo) -> BackpressureAction + Send + 'static {
    let next_check = Cell::new(Duration::ZERO);
    move |info| {
        if info.retries == 0 {
            // A new delivery: its clock starts at zero.
            next_check.set(Duration::ZERO);
        }
        if info.elapsed_time >= next_check.get() {
            next_check.set(info.elapsed_time + LIVENESS_PERIOD);
            if link.check().is_err() {
                return BackpressureAction::DiscardDataAndFail;
            }
        }
        BackpressureAction::Retry
    }
}

/// Replaces `buffer`'s contents with `payload`, and returns its length.
fn copy_out(payload: &[u8], buffer: &mut Vec<u8>) -> usize {
    buffer.clear();
    buffer.extend_from_slice(payload);
    payload.len()
}
