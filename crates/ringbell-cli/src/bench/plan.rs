//! What `bench` measures: the message sizes and client counts, how many round trips,
//! messages and calls a full or a `--quick` run makes ([`Plan`]), the subjects of the
//! latency and throughput runs, and how many steps that makes for the progress bar.

use std::time::Duration;

use super::placed::PLACED_STEPS;
use super::report::{RINGBELL_ADAPTIVE, RINGBELL_BLOCK, RINGBELL_SPIN};
use super::Bench;
use crate::args::WaitKind;
use crate::peers;
use crate::stream::StreamKind;
use crate::streamed::{StreamedPlan, StreamedTransport};

/// Message sizes of the latency runs. 4 and 16 MiB are many times the ring (128 KiB each
/// way by default); ringbell sends them, as every message above a quarter of the ring,
/// through the sender's large-message region (issue 14; before it, in chunks).
pub(super) const LATENCY_SIZES: [usize; 6] = [64, 1 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20];
/// Message sizes of the throughput runs.
pub(super) const THROUGHPUT_SIZES: [usize; 6] = [64, 4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20];
/// The largest message of any run: ringbell's servers are started allowing it, and the
/// peers are set up for each row's size.
pub(super) const LARGEST_MESSAGE: usize = largest(&LATENCY_SIZES, &THROUGHPUT_SIZES);
// The byte streams' receivers refuse frames above this.
const _: () = assert!(LARGEST_MESSAGE <= crate::stream::MAX_MESSAGE_SIZE);
/// Round trips and messages of a row at the least, for messages up to 1 MiB (see
/// [`Plan::large_row_bytes`] for larger ones): enough for a p99.
const MIN_COUNT: u64 = 200;
/// Messages per batch of the batched one-way runs.
pub(super) const BATCH: usize = 64;
/// Message size of the batched one-way runs.
pub(super) const BATCHED_SIZE: usize = 64;
/// Client counts of the request/response runs.
const LOAD_CLIENTS: [u64; 4] = [1, 10, 100, 1000];
/// Client processes of the request/response runs, at most.
pub(super) const LOAD_PROCESSES: u64 = 10;
/// Bytes per request of the request/response runs.
pub(super) const LOAD_SIZE: usize = 64;

/// How much of everything to measure.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// Round trips at 64 B where both sides spin; fewer for larger messages (see
    /// [`Plan::round_trips`]).
    spin_round_trips: u64,
    /// Round trips at 64 B where a side sleeps in the kernel every time.
    sleep_round_trips: u64,
    /// Bytes streamed in each throughput run (at least a few messages).
    stream_bytes: u64,
    /// The most bytes a row of messages above 1 MiB sends each way: it lowers the floor
    /// of [`MIN_COUNT`] round trips or messages where that floor would send more, so that the
    /// 4 and 16 MiB rows take seconds, not minutes: a 16 MiB round trip over a pipe takes
    /// about 90 ms here, and CI's `--quick` runs a debug build, several times slower at
    /// these sizes.
    large_row_bytes: u64,
    /// Calls made over all clients in each request/response run.
    pub(super) load_calls: u64,
    pub(super) load_clients: &'static [u64],
    pub(super) idle: Duration,
    /// The streamed-call rows (see [`crate::streamed`]).
    pub(super) streamed: StreamedPlan,
    /// Round trips of each paced row (one per millisecond) and each back-to-back row of
    /// [`super::placed`].
    paced_round_trips: u64,
    placed_round_trips: u64,
}

impl Plan {
    pub(super) const FULL: Plan = Plan {
        spin_round_trips: 200_000,
        sleep_round_trips: 20_000,
        stream_bytes: 2 << 30,
        large_row_bytes: 2 << 30,
        load_calls: 200_000,
        load_clients: &LOAD_CLIENTS,
        idle: Duration::from_secs(5),
        streamed: StreamedPlan {
            items: 1_000_000,
            first_item_calls: 1_000,
            concurrent: 100,
            concurrent_items: 10_000,
            cancels: 1_000,
            busy_streams: 4,
        },
        paced_round_trips: 2_000,
        placed_round_trips: 50_000,
    };

    pub(super) const QUICK: Plan = Plan {
        spin_round_trips: 5_000,
        sleep_round_trips: 500,
        stream_bytes: 32 << 20,
        large_row_bytes: 128 << 20,
        load_calls: 2_000,
        load_clients: &[1, 10, 100],
        idle: Duration::from_secs(1),
        streamed: StreamedPlan {
            items: 20_000,
            first_item_calls: 50,
            concurrent: 100,
            concurrent_items: 200,
            cancels: 50,
            busy_streams: 4,
        },
        paced_round_trips: 200,
        placed_round_trips: 2_000,
    };

    /// Warm-up and timed round trips at `size` for a wait that spins or sleeps: the count
    /// shrinks with the bytes moved, so that each run takes about as long.
    /// Round trips of a row of [`super::placed`]: a paced one, or one back to back.
    pub(super) fn placed_round_trips(&self, paced: bool) -> u64 {
        if paced {
            self.paced_round_trips
        } else {
            self.placed_round_trips
        }
    }

    pub(super) fn round_trips(&self, size: usize, sleeps: bool) -> (u64, u64) {
        let base = if sleeps {
            self.sleep_round_trips
        } else {
            self.spin_round_trips
        };
        // 64 B and 1 KiB cost about the same; from there on, time grows with size.
        let scale = (size as u64 / (4 << 10)).max(1);
        let count = (base / scale).max(self.floor(size));
        (count / 10, count)
    }

    /// Warm-up and timed messages of `size` bytes for a throughput run.
    pub(super) fn messages(&self, size: usize) -> (u64, u64) {
        let count = (self.stream_bytes / size as u64).clamp(self.floor(size), 3_000_000);
        (count / 20, count)
    }

    /// The fewest round trips or messages of `size` bytes a row makes: [`MIN_COUNT`], or
    /// for messages above 1 MiB fewer, where that would send more than
    /// [`Plan::large_row_bytes`].
    fn floor(&self, size: usize) -> u64 {
        if size <= 1 << 20 {
            return MIN_COUNT;
        }
        (self.large_row_bytes / size as u64).clamp(1, MIN_COUNT)
    }
}

/// A subject of the latency and throughput runs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Subject {
    Ringbell(WaitKind),
    Stream(StreamKind),
    Peer(peers::PeerKind),
}

impl Subject {
    pub(super) fn name(self) -> String {
        match self {
            Subject::Ringbell(WaitKind::Spin) => RINGBELL_SPIN.into(),
            Subject::Ringbell(WaitKind::Adaptive) => RINGBELL_ADAPTIVE.into(),
            Subject::Ringbell(WaitKind::Block) => RINGBELL_BLOCK.into(),
            Subject::Stream(kind) => kind.label().into(),
            Subject::Peer(peer) => peer.name().into(),
        }
    }

    /// Whether a waiting side sleeps in the kernel (so round trips cost tens of µs).
    pub(super) fn sleeps(self) -> bool {
        match self {
            Subject::Ringbell(kind) => kind == WaitKind::Block,
            Subject::Stream(_) => true,
            Subject::Peer(peer) => peer.sleeps(),
        }
    }
}

impl Bench {
    pub(super) fn latency_subjects(&self) -> Vec<Subject> {
        let mut subjects = vec![
            Subject::Ringbell(WaitKind::Spin),
            Subject::Ringbell(WaitKind::Adaptive),
            Subject::Ringbell(WaitKind::Block),
            Subject::Stream(StreamKind::Uds),
            Subject::Stream(StreamKind::Pipe),
            Subject::Stream(StreamKind::Tcp),
        ];
        subjects.extend(self.peers.iter().map(|&peer| Subject::Peer(peer)));
        subjects
    }

    pub(super) fn throughput_subjects(&self) -> Vec<Subject> {
        let mut subjects = vec![
            Subject::Ringbell(WaitKind::Adaptive),
            Subject::Stream(StreamKind::Uds),
            Subject::Stream(StreamKind::Pipe),
            Subject::Stream(StreamKind::Tcp),
        ];
        subjects.extend(
            self.peers
                .iter()
                .filter(|peer| peer.streams())
                .map(|&peer| Subject::Peer(peer)),
        );
        subjects
    }

    /// How many measurements there are, for the progress bar.
    pub(super) fn steps(&self) -> u64 {
        let latency = 3 + LATENCY_SIZES.len() * self.latency_subjects().len();
        // Each size's subjects and memcpy, then ringbell's and the socket's batches.
        let throughput = THROUGHPUT_SIZES.len() * (self.throughput_subjects().len() + 1) + 2;
        let load = self.plan.load_clients.len() * 2;
        // One step per streamed-call transport, the idle pair, the paced and unpinned rows.
        let streamed = 2 + self.streamed_peers().len();
        (latency + throughput + load + 1 + streamed) as u64 + PLACED_STEPS
    }

    /// The streamed-call transports of the peer libraries this run measures.
    pub(super) fn streamed_peers(&self) -> &'static [StreamedTransport] {
        if self.peers.is_empty() {
            &[]
        } else {
            StreamedTransport::PEERS
        }
    }
}

/// The largest of two lists of sizes, at compile time.
const fn largest(first: &[usize], second: &[usize]) -> usize {
    let mut largest = 0;
    let mut index = 0;
    while index < first.len() {
        if first[index] > largest {
            largest = first[index];
        }
        index += 1;
    }
    index = 0;
    while index < second.len() {
        if second[index] > largest {
            largest = second[index];
        }
        index += 1;
    }
    largest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_shrink_with_size_but_never_vanish() {
        let plan = Plan::FULL;
        let (_, small) = plan.round_trips(64, false);
        let (_, large) = plan.round_trips(1 << 20, false);
        assert!(small > large && large >= 200, "{small} {large}");
        let (_, messages) = plan.messages(1 << 20);
        assert!((200..=3_000_000).contains(&messages));
    }

    #[test]
    fn large_rows_are_bounded_in_bytes() {
        assert_eq!(LARGEST_MESSAGE, 16 << 20);
        // Up to 1 MiB, the floor is what it always was.
        assert_eq!(Plan::QUICK.round_trips(1 << 20, true).1, 200);
        assert_eq!(Plan::QUICK.messages(1 << 20).1, 200);
        // A quick run's 4 and 16 MiB rows send 128 MiB each way; a full run's 2 GiB at most.
        for sleeps in [false, true] {
            assert_eq!(Plan::QUICK.round_trips(4 << 20, sleeps).1, 32);
            assert_eq!(Plan::QUICK.round_trips(16 << 20, sleeps).1, 8);
            assert_eq!(Plan::FULL.round_trips(4 << 20, sleeps).1, 200);
            assert_eq!(Plan::FULL.round_trips(16 << 20, sleeps).1, 128);
        }
        assert_eq!(Plan::QUICK.messages(16 << 20).1, 8);
        assert_eq!(Plan::FULL.messages(4 << 20).1, 512);
        assert_eq!(Plan::FULL.messages(16 << 20).1, 128);
    }
}
