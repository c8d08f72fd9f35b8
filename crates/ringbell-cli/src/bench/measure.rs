//! The measurements of `bench`, in the order of the report: the floors, round trips and
//! one-way streams against each subject (its other side started in the mode the timed loop
//! needs), `memcpy`, request/response with many clients (through [`crate::stress`]) and
//! the idle CPU of a connected pair.

use std::time::{Duration, Instant};

use super::plan::{
    Subject, BATCH, BATCHED_SIZE, LARGEST_MESSAGE, LATENCY_SIZES, LOAD_PROCESSES, LOAD_SIZE,
    THROUGHPUT_SIZES,
};
use super::report::{
    format_size, latency_row, throughput_row, IdleRow, LatencyRow, LoadRow, Machine, Report,
    StreamedRow, EVENTFD, MEMCPY, RAW_FUTEX, RAW_SPIN, RINGBELL_BATCHES, RINGBELL_LOAD,
    TOKIO_UDS_LOAD, UDS_BATCHES,
};
use super::Bench;
use crate::args::WaitKind;
use crate::baseline::{self, ShmMode};
use crate::error::CliError;
use crate::peers::{self, Describe};
use crate::serve::ServeMode;
use crate::stats::{LatencyRun, ThroughputRun};
use crate::stream::{self, StreamKind};
use crate::streamed::{self, StreamedTransport};
use crate::stress::{self, Transport};
use crate::{idle, measure};

impl Bench {
    pub(super) fn measure_all(&self, machine: Machine) -> Result<Report, CliError> {
        let mut latency = self.floors()?;
        for size in LATENCY_SIZES {
            for subject in self.latency_subjects() {
                let (warmup, count) = self.plan.round_trips(size, subject.sleeps());
                let what = format!("{} round trips, {}", subject.name(), format_size(size));
                let run = match subject {
                    Subject::Peer(_) => {
                        self.peer_step(what, || self.latency_of(subject, size, warmup, count))
                    }
                    _ => Some(self.step(&what, || self.latency_of(subject, size, warmup, count))?),
                };
                if let Some(run) = run {
                    latency.push(latency_row(subject.name(), size, &run));
                }
            }
        }

        let mut throughput = Vec::new();
        for size in THROUGHPUT_SIZES {
            let (warmup, count) = self.plan.messages(size);
            let what = format!("memcpy, {}", format_size(size));
            let run = self.step(&what, || Ok(memcpy_bandwidth(size, count)))?;
            throughput.push(throughput_row(MEMCPY.into(), &run));
            for subject in self.throughput_subjects() {
                let what = format!("{} one-way, {}", subject.name(), format_size(size));
                let run = match subject {
                    Subject::Peer(_) => {
                        self.peer_step(what, || self.throughput_of(subject, size, warmup, count))
                    }
                    _ => {
                        Some(self.step(&what, || self.throughput_of(subject, size, warmup, count))?)
                    }
                };
                if let Some(run) = run {
                    throughput.push(throughput_row(subject.name(), &run));
                }
            }
        }

        // Batched one-way at 64 B: ringbell's `send_batch` into a `recv_batch` sink, and
        // the Unix socket with one `write` per batch, in the 64 B table beside the rows of
        // one message at a time.
        let (warmup, count) = self.plan.messages(BATCHED_SIZE);
        for (name, subject) in [
            (RINGBELL_BATCHES, Subject::Ringbell(WaitKind::Adaptive)),
            (UDS_BATCHES, Subject::Stream(StreamKind::Uds)),
        ] {
            let what = format!("{name} one-way, {}", format_size(BATCHED_SIZE));
            let run = self.step(&what, || {
                self.against(
                    subject,
                    OneWayBatched {
                        size: BATCHED_SIZE,
                        warmup,
                        count,
                        batch: BATCH,
                    },
                )
            })?;
            throughput.push(throughput_row(name.into(), &run));
        }

        let load = match stress::NOT_ON_THIS_OS {
            None => self.load()?,
            Some(why) => {
                let steps = self.plan.load_clients.len() as u64 * 2;
                self.left_out("request/response with many clients", steps, why);
                Vec::new()
            }
        };

        let mut streamed = Vec::new();
        let measure_streamed = |transport: StreamedTransport| {
            streamed::measure(
                transport,
                self.plan.streamed,
                &self.launcher,
                self.workspace.path(),
            )
            .map(|figures| StreamedRow {
                name: transport.name().into(),
                items_per_second: figures.items_per_second,
                first_item_p50_us: figures.first_item_p50_us,
                unary_p50_us: figures.unary_p50_us,
                concurrent_streams: self.plan.streamed.concurrent,
                concurrent_items_per_second: figures.concurrent_items_per_second,
                cancel_p50_us: figures.cancel_p50_us,
                cancel_p99_us: figures.cancel_p99_us,
            })
        };
        for transport in [StreamedTransport::Ringbell, StreamedTransport::Uds] {
            let what = format!("{} streamed calls", transport.name());
            streamed.push(self.step(&what, || measure_streamed(transport))?);
        }
        // tonic, like the other peers, is left out by `--no-peers` and skipped (with why)
        // if it fails.
        for &transport in self.streamed_peers() {
            let what = format!("{} streamed calls", transport.name());
            streamed.extend(self.peer_step(what, || measure_streamed(transport)));
        }

        let placed = self.placed(self.placement)?;

        let idle = match idle::NOT_ON_THIS_OS {
            None => Some(self.step("idle CPU of a connected pair", || self.idle())?),
            Some(why) => {
                self.left_out("idle CPU of a connected pair", 1, why);
                None
            }
        };
        Ok(Report {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            quick: self.quick,
            machine,
            latency,
            throughput,
            load,
            streamed,
            placed,
            idle,
            skipped: self.skipped.borrow().clone(),
            peers: self.peers.iter().map(|peer| peer.note()).collect(),
        })
    }

    /// Request/response with many clients, over ringbell and tokio `UnixStream`s.
    fn load(&self) -> Result<Vec<LoadRow>, CliError> {
        let mut load = Vec::new();
        for &clients in self.plan.load_clients {
            let processes = clients.min(LOAD_PROCESSES);
            let requests = (self.plan.load_calls / clients).max(5);
            for (name, transport) in [
                (RINGBELL_LOAD, Transport::Ringbell),
                (TOKIO_UDS_LOAD, Transport::Uds),
            ] {
                let what = format!("{name}, {clients} clients");
                let figures = self.step(&what, || {
                    stress::measure_load(transport, clients, processes, requests, LOAD_SIZE)
                })?;
                load.push(LoadRow {
                    name: name.into(),
                    clients,
                    processes,
                    calls: clients * requests,
                    requests_per_second: figures.requests_per_second,
                    p50_us: figures.p50_us,
                    p99_us: figures.p99_us,
                    server_kib_per_connection: figures
                        .server_peak_rss_kib
                        .saturating_sub(figures.server_rss_before_kib)
                        as f64
                        / clients as f64,
                });
            }
        }
        Ok(load)
    }

    /// The payload-free floors, at 64 B in the tables.
    fn floors(&self) -> Result<Vec<LatencyRow>, CliError> {
        let (spin_warmup, spin_count) = self.plan.round_trips(64, false);
        let (sleep_warmup, sleep_count) = self.plan.round_trips(64, true);
        let launcher = &self.launcher;
        let spin = self.step("raw spin round trips", || {
            baseline::raw_ping_pong(launcher, ShmMode::Spin, spin_warmup, spin_count)
        })?;
        if let Some(why) = baseline::NOT_ON_THIS_OS {
            self.left_out("raw futex round trips", 1, why);
            self.left_out("eventfd round trips", 1, why);
            return Ok(vec![latency_row(RAW_SPIN.into(), 64, &spin)]);
        }
        let futex = self.step("raw futex round trips", || {
            baseline::raw_ping_pong(launcher, ShmMode::Futex, sleep_warmup, sleep_count)
        })?;
        let eventfd = self.step("eventfd round trips", || {
            baseline::eventfd_ping_pong(launcher, sleep_warmup, sleep_count)
        })?;
        Ok(vec![
            latency_row(RAW_SPIN.into(), 64, &spin),
            latency_row(RAW_FUTEX.into(), 64, &futex),
            latency_row(EVENTFD.into(), 64, &eventfd),
        ])
    }

    fn latency_of(
        &self,
        subject: Subject,
        size: usize,
        warmup: u64,
        count: u64,
    ) -> Result<LatencyRun, CliError> {
        self.against(
            subject,
            RoundTrips {
                size,
                warmup,
                count,
            },
        )
    }

    fn throughput_of(
        &self,
        subject: Subject,
        size: usize,
        warmup: u64,
        count: u64,
    ) -> Result<ThroughputRun, CliError> {
        self.against(
            subject,
            OneWay {
                size,
                warmup,
                count,
            },
        )
    }

    /// Starts `subject`'s other side in the mode `measurement` needs, and runs it there.
    fn against<M: Measurement>(
        &self,
        subject: Subject,
        measurement: M,
    ) -> Result<M::Run, CliError> {
        let mode = M::MODE;
        match subject {
            Subject::Ringbell(kind) => {
                let (server, mut connection) = crate::serve::start_local(
                    &self.launcher,
                    self.workspace.path(),
                    kind,
                    mode,
                    LARGEST_MESSAGE,
                )?;
                let run = measurement.run(&mut connection);
                // Hang up first, so that the server sees a clean goodbye before it is killed.
                drop(connection);
                drop(server);
                run
            }
            Subject::Stream(kind) => {
                let (_peer, mut channel) = stream::start_peer(&self.launcher, kind, mode)?;
                measurement.run(&mut channel)
            }
            Subject::Peer(peer) => {
                let (_process, mut transport) =
                    peers::start(peer, &self.launcher, mode, measurement.size())?;
                measurement.run(&mut transport)
            }
        }
    }

    fn idle(&self) -> Result<IdleRow, CliError> {
        let (server, mut connection) = crate::serve::start_local(
            &self.launcher,
            self.workspace.path(),
            WaitKind::Adaptive,
            ServeMode::Echo,
            LARGEST_MESSAGE,
        )?;
        // One round trip first, so both sides have been through a full wait cycle.
        measure::round_trips(&mut connection, 64, 0, 1)?;
        let run = idle::measure(&mut connection, server.pid(), self.plan.idle)?;
        drop(connection);
        drop(server);
        Ok(IdleRow {
            seconds: run.elapsed.as_secs_f64(),
            server_percent_of_a_core: run.server_percent,
            client_percent_of_a_core: run.client_percent,
            resolution_percent: run.resolution_percent,
        })
    }
}

/// A timed loop over any transport (statically dispatched: the loop is what is timed), and
/// the mode its other side must serve.
trait Measurement {
    const MODE: ServeMode;
    type Run;
    /// The size of its messages, which a peer library is set up for.
    fn size(&self) -> usize;
    fn run<T: ringbell::IpcTransport>(self, transport: &mut T) -> Result<Self::Run, CliError>;
}

/// Round trips against an echo.
struct RoundTrips {
    size: usize,
    warmup: u64,
    count: u64,
}

impl Measurement for RoundTrips {
    const MODE: ServeMode = ServeMode::Echo;
    type Run = LatencyRun;
    fn size(&self) -> usize {
        self.size
    }
    fn run<T: ringbell::IpcTransport>(self, transport: &mut T) -> Result<LatencyRun, CliError> {
        measure::round_trips(transport, self.size, self.warmup, self.count)
    }
}

/// A one-way stream to a sink.
struct OneWay {
    size: usize,
    warmup: u64,
    count: u64,
}

impl Measurement for OneWay {
    const MODE: ServeMode = ServeMode::Sink;
    type Run = ThroughputRun;
    fn size(&self) -> usize {
        self.size
    }
    fn run<T: ringbell::IpcTransport>(self, transport: &mut T) -> Result<ThroughputRun, CliError> {
        measure::one_way(transport, self.size, self.warmup, self.count)
    }
}

/// Messages streamed in batches of [`BATCH`], at this size.
struct OneWayBatched {
    size: usize,
    warmup: u64,
    count: u64,
    batch: usize,
}

impl Measurement for OneWayBatched {
    /// A ringbell sink takes its messages with `recv_batch`; a stream's reads them one at
    /// a time from its `BufReader`, which the kernel fills in bulk.
    const MODE: ServeMode = ServeMode::SinkBatches;
    type Run = ThroughputRun;
    fn size(&self) -> usize {
        self.size
    }
    fn run<T: ringbell::IpcTransport>(self, transport: &mut T) -> Result<ThroughputRun, CliError> {
        measure::one_way_batched(transport, self.size, self.warmup, self.count, self.batch)
    }
}

/// Where `memcpy`'s destination starts, in bytes past a 4 KiB boundary; the source starts on
/// one. Each is cache-line aligned, and 0 is the placement of two page-aligned buffers.
///
/// Several, because a copy's speed can hang on where the two buffers sit relative to each
/// other. glibc copies most of the sizes measured here with `rep movsb`, which on some CPUs
/// is many times slower at some relative placements (AMD Zen 3 and 4: glibc bug 30994, a
/// 10-20x slowdown), and on others pays for stores that cross a page. Left to `malloc`, the
/// placement changes with the size and the run. 4 KiB is the granularity at which x86 CPUs
/// compare load and store addresses, whatever the OS's page size.
pub(super) const MEMCPY_PLACEMENTS: [usize; 4] = [0, 1024, 2048, 3072];
/// Timed rounds at each placement: the ceiling is the best of them all.
pub(super) const MEMCPY_ROUNDS: usize = 3;

/// The ceiling of one-way throughput: the bandwidth of one copy of `size` bytes in this
/// process, which a message through shared memory pays twice (into the ring, out of it).
///
/// Measured as ringbell's rows are, at the same size and over the same number of messages
/// (`count`, each copied from the same warmed source, as `one_way` sends the same
/// message), but as the best of [`MEMCPY_ROUNDS`] rounds at each of [`MEMCPY_PLACEMENTS`]:
/// a ceiling is what one copy *can* cost here, and noise (another task on this CPU, a
/// vCPU descheduled, an unlucky placement) only ever makes a copy slower. That makes the
/// ratios against it conservative.
fn memcpy_bandwidth(size: usize, count: u64) -> ThroughputRun {
    const ALIGNMENT: usize = 4096;
    let mut source_buffer = vec![0u8; size + ALIGNMENT];
    let source_start = source_buffer.as_ptr().align_offset(ALIGNMENT);
    let source = &mut source_buffer[source_start..source_start + size];
    for (index, byte) in source.iter_mut().enumerate() {
        *byte = index as u8;
    }
    let source = &*source;
    let mut destination_buffer = vec![0u8; size + 2 * ALIGNMENT];
    let destination_base = destination_buffer.as_ptr().align_offset(ALIGNMENT);
    let mut best = Duration::MAX;
    for _ in 0..MEMCPY_ROUNDS {
        for offset in MEMCPY_PLACEMENTS {
            let start = destination_base + offset;
            let destination = &mut destination_buffer[start..start + size];
            // Warm: the pages faulted in, both buffers in the caches they fit in.
            for _ in 0..count / 20 + 1 {
                destination.copy_from_slice(std::hint::black_box(source));
            }
            let started = Instant::now();
            for _ in 0..count {
                destination.copy_from_slice(std::hint::black_box(source));
                std::hint::black_box(&mut *destination);
            }
            best = best.min(started.elapsed());
        }
    }
    ThroughputRun {
        messages: count,
        message_size: size,
        elapsed: best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memcpy_moves_what_it_counts() {
        let run = memcpy_bandwidth(4096, 100);
        assert_eq!((run.messages, run.message_size), (100, 4096));
    }
}
