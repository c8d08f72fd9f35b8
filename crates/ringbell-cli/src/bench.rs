//! `ringbell bench`: ringbell beside the raw baselines and the peer libraries, every figure
//! measured in this one run, on this machine.
//!
//! Every measurement is cross-process, as in `demo`: this process is one side, pinned to
//! the first allowed CPU; the other side is a child process started from this executable,
//! pinned to the second. What is measured:
//!
//! * **Round-trip latency** (HDR histograms of every round trip, each echo checked byte
//!   for byte) at 64 B, 1 KiB, 64 KiB and 1 MiB: ringbell with each wait strategy, the
//!   byte streams (Unix socket, pipe, TCP loopback) and the peer libraries; at 64 B also
//!   the payload-free floors (a spin on one shared cache line, a shared futex, an eventfd).
//! * **One-way throughput** at 64 B, 4 KiB, 64 KiB and 1 MiB, each stream confirmed by the
//!   receiver's count: ringbell (default wait), the byte streams, the peers, and `memcpy`
//!   in this process as the ceiling for large messages.
//! * **Request/response with many clients** (1, 10, 100, 1,000 connections over up to 10
//!   client processes, unpinned): ringbell's `AsyncServer::serve` and `Client` against the
//!   same protocol over tokio `UnixStream`s (the `stress` machinery, every reply checked).
//! * **Idle CPU** of a connected pair, and the server's **memory per connection**.
//!
//! The peers are in the `ringbell-bench-peers` crate (see [`crate::peers`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::affinity::{allowed_cpus, pin_to_cpu};
use crate::baseline::{self, ShmMode};
use crate::child::PeerLauncher;
use crate::error::{CliError, Context};
use crate::peers::{self, Describe};
use crate::serve::ServeMode;
use crate::stats::{format_count, format_ratio, print_table, LatencyRun, ThroughputRun};
use crate::stream::{self, StreamKind};
use crate::stress::{self, Transport};
use crate::temp_dir::TempDir;
use crate::{idle, measure, WaitKind};

mod plot;

/// `ringbell bench`'s options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A smoke run of every measurement, with counts cut to a few seconds' worth (CI runs
    /// it). The figures are too noisy to compare.
    #[arg(long)]
    pub quick: bool,
    /// Also write every figure, and the machine's description, to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also draw SVG plots into this directory (created if missing): latency percentiles
    /// at each size, and throughput against message size.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Leave out the peer libraries (iceoryx2, ipc-channel, tokio).
    #[arg(long)]
    pub no_peers: bool,
}

/// Message sizes of the latency runs.
const LATENCY_SIZES: [usize; 4] = [64, 1 << 10, 64 << 10, 1 << 20];
/// Message sizes of the throughput runs.
const THROUGHPUT_SIZES: [usize; 4] = [64, 4 << 10, 64 << 10, 1 << 20];
/// Client counts of the request/response runs.
const LOAD_CLIENTS: [u64; 4] = [1, 10, 100, 1000];
/// Client processes of the request/response runs, at most.
const LOAD_PROCESSES: u64 = 10;
/// Bytes per request of the request/response runs.
const LOAD_SIZE: usize = 64;

/// How much of everything to measure.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Round trips at 64 B where both sides spin; fewer for larger messages (see
    /// [`Plan::round_trips`]).
    spin_round_trips: u64,
    /// Round trips at 64 B where a side sleeps in the kernel every time.
    sleep_round_trips: u64,
    /// Bytes streamed in each throughput run (at least a few messages).
    stream_bytes: u64,
    /// Calls made over all clients in each request/response run.
    load_calls: u64,
    load_clients: &'static [u64],
    idle: Duration,
}

impl Plan {
    const FULL: Plan = Plan {
        spin_round_trips: 200_000,
        sleep_round_trips: 20_000,
        stream_bytes: 2 << 30,
        load_calls: 200_000,
        load_clients: &LOAD_CLIENTS,
        idle: Duration::from_secs(5),
    };

    const QUICK: Plan = Plan {
        spin_round_trips: 5_000,
        sleep_round_trips: 500,
        stream_bytes: 32 << 20,
        load_calls: 2_000,
        load_clients: &[1, 10, 100],
        idle: Duration::from_secs(1),
    };

    /// Warm-up and timed round trips at `size` for a wait that spins or sleeps: the count
    /// shrinks with the bytes moved, so that each run takes about as long.
    fn round_trips(&self, size: usize, sleeps: bool) -> (u64, u64) {
        let base = if sleeps {
            self.sleep_round_trips
        } else {
            self.spin_round_trips
        };
        // 64 B and 1 KiB cost about the same; from there on, time grows with size.
        let scale = (size as u64 / (4 << 10)).max(1);
        let count = (base / scale).max(200);
        (count / 10, count)
    }

    /// Warm-up and timed messages of `size` bytes for a throughput run.
    fn messages(&self, size: usize) -> (u64, u64) {
        let count = (self.stream_bytes / size as u64).clamp(200, 3_000_000);
        (count / 20, count)
    }
}

/// The machine the figures come from.
#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    /// CPUs this process may run on.
    cpus: usize,
    kernel: String,
    /// Whether the CPU reports a hypervisor (`hypervisor` in /proc/cpuinfo's flags).
    virtual_machine: bool,
    /// The hypervisor's vendor, from DMI, when it says.
    vendor: Option<String>,
}

/// One latency figure.
#[derive(Debug, Clone, Serialize)]
struct LatencyRow {
    name: String,
    size: usize,
    round_trips: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// (quantile, microseconds) for the plots.
    percentiles: Vec<(f64, f64)>,
}

/// One throughput figure.
#[derive(Debug, Clone, Serialize)]
struct ThroughputRow {
    name: String,
    size: usize,
    messages: u64,
    messages_per_second: f64,
    gigabytes_per_second: f64,
}

/// One request/response figure.
#[derive(Debug, Clone, Serialize)]
struct LoadRow {
    name: String,
    clients: u64,
    processes: u64,
    calls: u64,
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
    /// Growth of the server's resident memory from before the clients connected to its
    /// peak while they called, per connection.
    server_kib_per_connection: f64,
}

#[derive(Debug, Clone, Serialize)]
struct IdleRow {
    seconds: f64,
    server_percent_of_a_core: f64,
    client_percent_of_a_core: f64,
    resolution_percent: f64,
}

/// A measurement that could not run, and why.
#[derive(Debug, Clone, Serialize)]
struct Skipped {
    name: String,
    why: String,
}

/// Everything `bench` measured.
#[derive(Debug, Serialize)]
struct Report {
    command: String,
    quick: bool,
    machine: Machine,
    latency: Vec<LatencyRow>,
    throughput: Vec<ThroughputRow>,
    load: Vec<LoadRow>,
    idle: Option<IdleRow>,
    skipped: Vec<Skipped>,
    /// How each peer library is used.
    peers: Vec<peers::PeerNote>,
}

/// Row names.
const RINGBELL_SPIN: &str = "ringbell spin";
const RINGBELL_ADAPTIVE: &str = "ringbell adaptive";
const RINGBELL_BLOCK: &str = "ringbell block";
const RAW_SPIN: &str = "raw spin (floor)";
const RAW_FUTEX: &str = "raw futex (floor)";
const EVENTFD: &str = "eventfd (floor)";
const MEMCPY: &str = "memcpy (ceiling)";
const RINGBELL_LOAD: &str = "ringbell AsyncServer";
const TOKIO_UDS_LOAD: &str = "tokio UnixStream";

/// Runs the benchmark and prints its report.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let plan = if args.quick { Plan::QUICK } else { Plan::FULL };
    let machine = describe_machine()?;
    println!(
        "ringbell bench{}: every figure measured now, in this run, on this machine",
        if args.quick { " --quick" } else { "" }
    );
    println!(
        "machine: {}; {} CPUs; kernel {}{}",
        machine.cpu,
        machine.cpus,
        machine.kernel,
        if machine.virtual_machine {
            format!(
                "; a virtual machine{}",
                machine
                    .vendor
                    .as_deref()
                    .map(|vendor| format!(" ({vendor})"))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        }
    );
    let cpus = allowed_cpus()?;
    let [first, second, ..] = cpus.as_slice() else {
        return Err(CliError::new(
            "ringbell bench needs two CPUs: each side of every measurement gets its own",
        ));
    };
    // Before any child or thread exists, so that all of ours stay on this core.
    pin_to_cpu(*first)?;
    println!("pinning: this process on CPU {first}, each peer process on CPU {second}");
    let mut bench = Bench {
        plan,
        quick: args.quick,
        launcher: PeerLauncher::new(Some(*second))?,
        workspace: TempDir::create("ringbell-bench")?,
        peers: if args.no_peers {
            Vec::new()
        } else {
            peers::PeerKind::ALL.to_vec()
        },
        // Drawn once the number of steps is known, which depends on the rest.
        progress: ProgressBar::hidden(),
        skipped: std::cell::RefCell::new(Vec::new()),
    };
    bench.progress = progress_bar(bench.steps());
    let report = bench.measure_all(machine)?;
    bench.progress.finish_and_clear();
    println!();
    report.print();
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, json + "\n").context(format_args!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(dir) = &args.plot {
        for path in plot::draw(&report, dir)? {
            println!("wrote {}", path.display());
        }
    }
    println!("finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn progress_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

struct Bench {
    plan: Plan,
    quick: bool,
    launcher: PeerLauncher,
    workspace: TempDir,
    peers: Vec<peers::PeerKind>,
    progress: ProgressBar,
    skipped: std::cell::RefCell<Vec<Skipped>>,
}

/// A subject of the latency and throughput runs.
#[derive(Debug, Clone, Copy)]
enum Subject {
    Ringbell(WaitKind),
    Stream(StreamKind),
    Peer(peers::PeerKind),
}

impl Subject {
    fn name(self) -> String {
        match self {
            Subject::Ringbell(WaitKind::Spin) => RINGBELL_SPIN.into(),
            Subject::Ringbell(WaitKind::Adaptive) => RINGBELL_ADAPTIVE.into(),
            Subject::Ringbell(WaitKind::Block) => RINGBELL_BLOCK.into(),
            Subject::Stream(kind) => kind.label().into(),
            Subject::Peer(peer) => peer.name().into(),
        }
    }

    /// Whether a waiting side sleeps in the kernel (so round trips cost tens of µs).
    fn sleeps(self) -> bool {
        match self {
            Subject::Ringbell(kind) => kind == WaitKind::Block,
            Subject::Stream(_) => true,
            Subject::Peer(peer) => peer.sleeps(),
        }
    }
}

impl Bench {
    fn latency_subjects(&self) -> Vec<Subject> {
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

    fn throughput_subjects(&self) -> Vec<Subject> {
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
    fn steps(&self) -> u64 {
        let latency = 3 + LATENCY_SIZES.len() * self.latency_subjects().len();
        let throughput = THROUGHPUT_SIZES.len() * (self.throughput_subjects().len() + 1);
        let load = self.plan.load_clients.len() * 2;
        (latency + throughput + load + 1) as u64
    }

    /// Runs one measurement under the progress bar; a failure is fatal.
    fn step<T>(
        &self,
        what: &str,
        measurement: impl FnOnce() -> Result<T, CliError>,
    ) -> Result<T, CliError> {
        self.progress.set_message(what.to_owned());
        let result = measurement().context(format_args!("measuring {what}"));
        self.progress.inc(1);
        result
    }

    /// Runs one measurement of a peer library; a failure is reported and skipped, since a
    /// peer's trouble on this machine says nothing about ringbell.
    fn peer_step<T>(
        &self,
        what: String,
        measurement: impl FnOnce() -> Result<T, CliError>,
    ) -> Option<T> {
        self.progress.set_message(what.clone());
        let result = measurement();
        self.progress.inc(1);
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.progress.println(format!("skipped {what}: {error}"));
                self.skipped.borrow_mut().push(Skipped {
                    name: what,
                    why: error.to_string(),
                });
                None
            }
        }
    }

    fn measure_all(&self, machine: Machine) -> Result<Report, CliError> {
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

        let idle = self.step("idle CPU of a connected pair", || self.idle())?;
        Ok(Report {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            quick: self.quick,
            machine,
            latency,
            throughput,
            load,
            idle: Some(idle),
            skipped: self.skipped.borrow().clone(),
            peers: self.peers.iter().map(|peer| peer.note()).collect(),
        })
    }

    /// The payload-free floors, at 64 B in the tables.
    fn floors(&self) -> Result<Vec<LatencyRow>, CliError> {
        let (spin_warmup, spin_count) = self.plan.round_trips(64, false);
        let (sleep_warmup, sleep_count) = self.plan.round_trips(64, true);
        let launcher = &self.launcher;
        let spin = self.step("raw spin round trips", || {
            baseline::raw_ping_pong(launcher, ShmMode::Spin, spin_warmup, spin_count)
        })?;
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
                let (server, mut connection) =
                    crate::serve::start_local(&self.launcher, self.workspace.path(), kind, mode)?;
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
                let (_process, mut transport) = peers::start(peer, &self.launcher, mode)?;
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
    fn run<T: ringbell::IpcTransport>(self, transport: &mut T) -> Result<ThroughputRun, CliError> {
        measure::one_way(transport, self.size, self.warmup, self.count)
    }
}

/// Copies `count` buffers of `size` bytes from one heap buffer to another: the bandwidth
/// of one copy in this process, which a message through shared memory pays twice (into
/// the ring, out of it).
fn memcpy_bandwidth(size: usize, count: u64) -> ThroughputRun {
    let source: Vec<u8> = (0..size).map(|index| index as u8).collect();
    let mut destination = vec![0u8; size];
    for _ in 0..count / 20 + 1 {
        destination.copy_from_slice(std::hint::black_box(&source));
    }
    let started = Instant::now();
    for _ in 0..count {
        destination.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&mut destination);
    }
    ThroughputRun {
        messages: count,
        message_size: size,
        elapsed: started.elapsed(),
    }
}

fn latency_row(name: String, size: usize, run: &LatencyRun) -> LatencyRow {
    let micros = |quantile: f64| run.histogram.value_at_quantile(quantile) as f64 / 1_000.0;
    LatencyRow {
        name,
        size,
        round_trips: run.histogram.len(),
        p50_us: micros(0.5),
        p90_us: micros(0.9),
        p99_us: micros(0.99),
        p999_us: micros(0.999),
        max_us: run.histogram.max() as f64 / 1_000.0,
        percentiles: plot::QUANTILES
            .iter()
            .map(|&quantile| (quantile, micros(quantile)))
            .collect(),
    }
}

fn throughput_row(name: String, run: &ThroughputRun) -> ThroughputRow {
    ThroughputRow {
        name,
        size: run.message_size,
        messages: run.messages,
        messages_per_second: run.messages_per_second(),
        gigabytes_per_second: run.megabytes_per_second() / 1_000.0,
    }
}

/// `64 B`, `4 KiB`, `1 MiB`.
fn format_size(size: usize) -> String {
    match size {
        size if size >= 1 << 20 && size % (1 << 20) == 0 => format!("{} MiB", size >> 20),
        size if size >= 1 << 10 && size % (1 << 10) == 0 => format!("{} KiB", size >> 10),
        size => format!("{size} B"),
    }
}

impl Report {
    fn latency(&self, name: &str, size: usize) -> Option<&LatencyRow> {
        self.latency
            .iter()
            .find(|row| row.name == name && row.size == size)
    }

    fn throughput(&self, name: &str, size: usize) -> Option<&ThroughputRow> {
        self.throughput
            .iter()
            .find(|row| row.name == name && row.size == size)
    }

    fn load(&self, name: &str, clients: u64) -> Option<&LoadRow> {
        self.load
            .iter()
            .find(|row| row.name == name && row.clients == clients)
    }

    fn print(&self) {
        self.print_targets();
        for size in LATENCY_SIZES {
            println!();
            let uds = self
                .latency(StreamKind::Uds.label(), size)
                .map_or(f64::NAN, |row| row.p50_us);
            let spin = self
                .latency(RINGBELL_SPIN, size)
                .map_or(f64::NAN, |row| row.p50_us);
            let rows = self
                .latency
                .iter()
                .filter(|row| row.size == size || (size == 64 && row.name.ends_with("(floor)")))
                .map(|row| {
                    vec![
                        row.name.clone(),
                        format!("{:.2}", row.p50_us),
                        format!("{:.2}", row.p99_us),
                        format!("{:.2}", row.p999_us),
                        format_ratio(row.p50_us, uds),
                        format_ratio(row.p50_us, spin),
                    ]
                })
                .collect();
            print_table(
                &[
                    &format!("round trip, {}", format_size(size)),
                    "p50 µs",
                    "p99 µs",
                    "p99.9 µs",
                    "p50 vs unix socket",
                    "p50 vs ringbell spin",
                ],
                rows,
            );
        }
        for size in THROUGHPUT_SIZES {
            println!();
            let uds = self
                .throughput(StreamKind::Uds.label(), size)
                .map_or(f64::NAN, |row| row.messages_per_second);
            let ringbell = self
                .throughput(RINGBELL_ADAPTIVE, size)
                .map_or(f64::NAN, |row| row.messages_per_second);
            let rows = self
                .throughput
                .iter()
                .filter(|row| row.size == size)
                .map(|row| {
                    vec![
                        row.name.clone(),
                        format_count(row.messages_per_second),
                        format!("{:.2}", row.gigabytes_per_second),
                        format_ratio(row.messages_per_second, uds),
                        format_ratio(row.messages_per_second, ringbell),
                    ]
                })
                .collect();
            print_table(
                &[
                    &format!("one-way, {}", format_size(size)),
                    "msgs/s",
                    "GB/s",
                    "vs unix socket",
                    "vs ringbell",
                ],
                rows,
            );
        }
        println!();
        let rows = self
            .load
            .iter()
            .map(|row| {
                let uds = self
                    .load(TOKIO_UDS_LOAD, row.clients)
                    .map_or(f64::NAN, |uds| uds.requests_per_second);
                vec![
                    row.name.clone(),
                    format_count(row.clients as f64),
                    format_count(row.requests_per_second),
                    format!("{:.1}", row.p50_us),
                    format!("{:.1}", row.p99_us),
                    format!("{:.1}", row.server_kib_per_connection),
                    format_ratio(row.requests_per_second, uds),
                ]
            })
            .collect();
        print_table(
            &[
                &format!("request/response, {LOAD_SIZE} B"),
                "clients",
                "req/s",
                "p50 µs",
                "p99 µs",
                "server KiB/conn",
                "vs tokio UnixStream",
            ],
            rows,
        );
        if let Some(idle) = &self.idle {
            println!();
            println!(
                "idle, connected pair ({:.0} s, default wait): server {:.2} %, client {:.2} % of a \
                 core (one clock tick = {:.2} %)",
                idle.seconds,
                idle.server_percent_of_a_core,
                idle.client_percent_of_a_core,
                idle.resolution_percent
            );
        }
        println!();
        println!(
            "floors: a ping-pong on one shared cache line (spin), on a shared futex, and on two \
             eventfds (poll + read, as an event loop does), with no payload. memcpy: one copy \
             in this process; a message through shared memory is copied twice."
        );
        println!(
            "streams: a 4-byte length prefix, one write per message, a 128 KiB BufReader on \
             the receiver. Request/response: the `stress` protocol, {LOAD_SIZE} B random \
             payloads, every reply checked, up to {LOAD_PROCESSES} client processes, unpinned."
        );
        for note in &self.peers {
            println!("{}: {}", note.name, note.how);
        }
        for skipped in &self.skipped {
            println!("skipped {}: {}", skipped.name, skipped.why);
        }
    }

    /// The targets, met or not, from this run's figures.
    fn print_targets(&self) {
        let mut rows = Vec::new();
        let mut latency_target =
            |what: &str, ours: &str, theirs: &str, size: usize, target: f64| {
                let (Some(ours), Some(theirs)) =
                    (self.latency(ours, size), self.latency(theirs, size))
                else {
                    return;
                };
                let ratio = ours.p50_us / theirs.p50_us;
                rows.push(vec![
                    what.to_owned(),
                    format!("{:.2} µs", ours.p50_us),
                    theirs.name.clone(),
                    format!("{:.2} µs", theirs.p50_us),
                    format!("{ratio:.2}×"),
                    format!("≤ {target}×"),
                    yes_no(ratio <= target),
                ]);
            };
        latency_target(
            "spin round trip p50, 64 B",
            RINGBELL_SPIN,
            RAW_SPIN,
            64,
            1.5,
        );
        latency_target(
            "block round trip p50, 64 B",
            RINGBELL_BLOCK,
            RAW_FUTEX,
            64,
            1.1,
        );
        for peer in &self.peers {
            if let Some(compare_with) = peer.compare_with {
                latency_target(
                    &format!("{compare_with} round trip p50, 64 B"),
                    compare_with,
                    &peer.name,
                    64,
                    1.0,
                );
            }
        }
        let mut throughput_target = |what: &str, ours: &str, theirs: &str, size, target: f64| {
            let (Some(ours), Some(theirs)) =
                (self.throughput(ours, size), self.throughput(theirs, size))
            else {
                return;
            };
            let ratio = ours.gigabytes_per_second / theirs.gigabytes_per_second;
            rows.push(vec![
                what.to_owned(),
                format!("{:.2} GB/s", ours.gigabytes_per_second),
                theirs.name.clone(),
                format!("{:.2} GB/s", theirs.gigabytes_per_second),
                format!("{ratio:.2}×"),
                format!("≥ {target}×"),
                yes_no(ratio >= target),
            ]);
        };
        throughput_target(
            "one-way, 64 B",
            RINGBELL_ADAPTIVE,
            StreamKind::Uds.label(),
            64,
            50.0,
        );
        for peer in self.peers.iter().filter(|peer| peer.streams) {
            throughput_target("one-way, 64 B", RINGBELL_ADAPTIVE, &peer.name, 64, 1.0);
        }
        throughput_target("one-way, 1 MiB", RINGBELL_ADAPTIVE, MEMCPY, 1 << 20, 0.5);
        if let Some(clients) = self.load.iter().map(|row| row.clients).max() {
            if let (Some(ours), Some(theirs)) = (
                self.load(RINGBELL_LOAD, clients),
                self.load(TOKIO_UDS_LOAD, clients),
            ) {
                let ratio = ours.requests_per_second / theirs.requests_per_second;
                rows.push(vec![
                    format!("{clients} clients, req/s"),
                    format_count(ours.requests_per_second),
                    TOKIO_UDS_LOAD.into(),
                    format_count(theirs.requests_per_second),
                    format!("{ratio:.2}×"),
                    "≥ 5×".into(),
                    yes_no(ratio >= 5.0),
                ]);
            }
        }
        print_table(
            &[
                "target", "ringbell", "against", "theirs", "ratio", "target", "met?",
            ],
            rows,
        );
    }
}

fn yes_no(met: bool) -> String {
    if met { "yes" } else { "no" }.into()
}

/// What the machine is, for the report.
fn describe_machine() -> Result<Machine, CliError> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == key).then(|| value.trim().to_owned())
        })
    };
    let uname = rustix::system::uname();
    let read_trimmed = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    };
    let vendor = [
        "/sys/class/dmi/id/sys_vendor",
        "/sys/class/dmi/id/product_name",
    ]
    .iter()
    .filter_map(|path| read_trimmed(Path::new(path)))
    .collect::<Vec<_>>();
    Ok(Machine {
        cpu: field("model name").unwrap_or_else(|| "unknown CPU".into()),
        cpus: allowed_cpus()?.len(),
        kernel: format!(
            "{} {} {}",
            uname.sysname().to_string_lossy(),
            uname.release().to_string_lossy(),
            uname.machine().to_string_lossy()
        ),
        virtual_machine: field("flags")
            .is_some_and(|flags| flags.split_whitespace().any(|flag| flag == "hypervisor")),
        vendor: (!vendor.is_empty()).then(|| vendor.join(" ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_named_in_binary_units() {
        assert_eq!(format_size(64), "64 B");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(64 << 10), "64 KiB");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(1000), "1000 B");
    }

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
    fn memcpy_moves_what_it_counts() {
        let run = memcpy_bandwidth(4096, 100);
        assert_eq!((run.messages, run.message_size), (100, 4096));
    }
}
