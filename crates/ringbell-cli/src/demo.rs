//! `ringbell demo`: ringbell beside its baselines, all measured in one run on this machine,
//! with nothing to set up.
//!
//! Every measurement is cross-process: this process is the client, pinned to one core, and
//! each peer is a child process started from this executable (`ringbell serve`,
//! `ringbell __shm-peer`, `ringbell __uds-peer`), pinned to another core, in a fresh
//! temporary directory. (Where the OS cannot pin, as on macOS, nothing is pinned and the
//! demo says so: see [`crate::affinity`].) Each child is killed and reaped when its
//! measurement ends, on every path, and the directory is removed at the end.
//!
//! Absolute times drift between runs on shared machines; the ratios to the baselines
//! measured side by side are what to compare.

#[cfg(unix)]
use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use ringbell::{Connection, WaitStrategy};

use crate::affinity::{self, Placement};
use crate::args::WaitKind;
use crate::baseline::{self, ShmMode};
use crate::child::{PeerLauncher, PeerProcess};
use crate::error::{CliError, Context};
use crate::idle::{self, IdleRun};
use crate::measure;
use crate::serve::ServeMode;
use crate::stats::{
    compare, format_count, print_table, Better, LatencyRun, LatencySummary, ThroughputRun,
};
use crate::stream::{self, StreamChannel, StreamKind};
use crate::temp_dir::TempDir;

/// Bytes per message in every measurement.
const MESSAGE_SIZE: usize = 64;

/// Row names: one per measurement.
const RINGBELL_SPIN: &str = "ringbell spin";
const RINGBELL_ADAPTIVE: &str = "ringbell adaptive";
const RINGBELL_BLOCK: &str = "ringbell block";
const RAW_SPIN: &str = "raw spin";
/// The kernel's floor for a wait that sleeps: a shared futex on Unix (where it runs: see
/// `baseline::NOT_ON_THIS_OS`), a pair of auto-reset events on Windows, the objects
/// ringbell's Windows doorbells are.
#[cfg(unix)]
const KERNEL_FLOOR: &str = "raw futex";
#[cfg(windows)]
const KERNEL_FLOOR: &str = baseline::RAW_EVENT;
/// The byte stream this OS's programs use instead of shared memory, the demo's baseline: a
/// Unix socket, or on Windows (whose Rust std has no local socket) anonymous pipes, which
/// Windows makes named pipes.
#[cfg(unix)]
const STREAM: (StreamKind, &str) = (StreamKind::Uds, "unix socket");
#[cfg(windows)]
const STREAM: (StreamKind, &str) = (StreamKind::Pipe, "pipe");
const STREAM_ROW: &str = STREAM.1;
/// The throughput rows that send [`BATCH`] messages at a time (`send_batch`; for the
/// socket, one write of them all).
const RINGBELL_BATCHED: &str = "ringbell, batches";
#[cfg(unix)]
const STREAM_BATCHED_ROW: &str = "unix socket, batches";
#[cfg(windows)]
const STREAM_BATCHED_ROW: &str = "pipe, batches";
/// Messages per batch in the batched rows: enough to show what one publish and one
/// wake-up per batch saves, few enough to fit the rings many times over.
const BATCH: usize = 64;

/// How many messages each measurement uses.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Round trips where both sides spin (ringbell spin and adaptive, raw spin): well
    /// under a microsecond to a few microseconds each.
    spin_warmup: u64,
    spin_round_trips: u64,
    /// Round trips where both sides sleep in the kernel every time (ringbell block, the
    /// kernel floor, the byte stream): tens of microseconds each on a VM.
    sleep_warmup: u64,
    sleep_round_trips: u64,
    /// One-way messages, for each throughput measurement.
    stream_warmup: u64,
    stream_messages: u64,
    /// How long the connected pair stays idle while its CPU use is measured.
    idle: Duration,
}

impl Plan {
    /// Half a minute to a minute on a 2-core VM, where a sleeping round trip costs 35 to
    /// 80 µs: the three sleeping runs take most of it.
    const FULL: Plan = Plan {
        spin_warmup: 20_000,
        spin_round_trips: 2_000_000,
        sleep_warmup: 2_000,
        sleep_round_trips: 150_000,
        stream_warmup: 100_000,
        stream_messages: 3_000_000,
        idle: Duration::from_secs(5),
    };

    /// A few seconds: enough to run every path, too few for stable tails.
    const QUICK: Plan = Plan {
        spin_warmup: 1_000,
        spin_round_trips: 20_000,
        sleep_warmup: 100,
        sleep_round_trips: 2_000,
        stream_warmup: 10_000,
        stream_messages: 200_000,
        idle: Duration::from_secs(1),
    };

    /// On one CPU a spinning side holds the CPU that its peer needs to answer, so each
    /// spinning round trip lasts about a scheduler time slice: keep those runs tiny.
    fn for_single_cpu(self) -> Plan {
        Plan {
            spin_warmup: self.spin_warmup.min(20),
            spin_round_trips: self.spin_round_trips.min(200),
            ..self
        }
    }
}

/// Runs the demo and prints its report.
pub fn run(quick: bool) -> Result<(), CliError> {
    let started = Instant::now();
    let mut plan = if quick { Plan::QUICK } else { Plan::FULL };
    println!(
        "ringbell demo{}: cross-process latency and throughput of ringbell and its baselines, \
         all measured now, in this run",
        if quick { " --quick" } else { "" }
    );
    print_machine(affinity::cpu_count()?);
    println!(
        "backend: {} (ringbell's platform backend in this build)",
        ringbell::backend()
    );
    // Before any child or thread exists, so that all of ours stay on this core.
    let placement = affinity::place_beside_peer()?;
    match placement {
        Placement::Pinned { own, peer } => {
            println!(
                "pinning: this process (the client) on CPU {own}, each peer process on CPU {peer}"
            );
        }
        Placement::OneCpu => {
            plan = plan.for_single_cpu();
            println!(
                "note:    only one CPU is available, so nothing is pinned, and a spinning wait \
                 holds the CPU its peer needs: the spinning runs are cut to {} round trips",
                plan.spin_round_trips
            );
        }
        Placement::NotPinnable(why) => {
            println!(
                "pinning: none ({why}): the scheduler places this process (the client) and \
                 each peer, and may move them"
            );
        }
    }
    print_plan(&plan);
    println!();

    let workspace = TempDir::create("ringbell-demo")?;
    let demo = Demo {
        plan,
        launcher: PeerLauncher::new(placement.peer_cpu())?,
        workspace,
    };
    let report = demo.measure_all()?;
    println!();
    report.print();
    println!();
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

struct Demo {
    plan: Plan,
    launcher: PeerLauncher,
    workspace: TempDir,
}

/// Everything measured.
struct Report {
    latency: Vec<(&'static str, LatencySummary)>,
    throughput: Vec<(&'static str, ThroughputRun)>,
    idle: Option<IdleRun>,
    /// What this OS cannot measure (nothing, on Linux).
    left_out: Vec<LeftOut>,
}

/// A measurement this OS cannot make, and why.
struct LeftOut {
    name: &'static str,
    unit: &'static str,
    why: &'static str,
}

impl Demo {
    fn measure_all(&self) -> Result<Report, CliError> {
        let plan = &self.plan;
        let (spin_warmup, spin_count) = (plan.spin_warmup, plan.spin_round_trips);
        let (sleep_warmup, sleep_count) = (plan.sleep_warmup, plan.sleep_round_trips);
        println!("measuring:");
        let mut latency = Vec::new();
        let mut record_latency = |name, run: LatencyRun| latency.push((name, run.summary()));
        let mut left_out = Vec::new();

        record_latency(
            RINGBELL_SPIN,
            step(RINGBELL_SPIN, "round trips", || {
                self.ringbell_latency(WaitKind::Spin, spin_warmup, spin_count)
            })?,
        );
        record_latency(
            RINGBELL_ADAPTIVE,
            step(RINGBELL_ADAPTIVE, "round trips", || {
                self.ringbell_latency(WaitKind::Adaptive, spin_warmup, spin_count)
            })?,
        );
        record_latency(
            RINGBELL_BLOCK,
            step(RINGBELL_BLOCK, "round trips", || {
                self.ringbell_latency(WaitKind::Block, sleep_warmup, sleep_count)
            })?,
        );
        record_latency(
            RAW_SPIN,
            step(RAW_SPIN, "round trips", || {
                baseline::raw_ping_pong(&self.launcher, ShmMode::Spin, spin_warmup, spin_count)
            })?,
        );
        #[cfg(unix)]
        match baseline::NOT_ON_THIS_OS {
            None => record_latency(
                KERNEL_FLOOR,
                step(KERNEL_FLOOR, "round trips", || {
                    baseline::raw_ping_pong(
                        &self.launcher,
                        ShmMode::Futex,
                        sleep_warmup,
                        sleep_count,
                    )
                })?,
            ),
            Some(why) => left_out.push(skip_step(KERNEL_FLOOR, "round trips", why)),
        }
        #[cfg(windows)]
        record_latency(
            KERNEL_FLOOR,
            step(KERNEL_FLOOR, "round trips", || {
                baseline::event_ping_pong(&self.launcher, sleep_warmup, sleep_count)
            })?,
        );
        record_latency(
            STREAM_ROW,
            step(STREAM_ROW, "round trips", || {
                self.stream_latency(sleep_warmup, sleep_count)
            })?,
        );

        let throughput = vec![
            (
                RINGBELL_ADAPTIVE,
                step(RINGBELL_ADAPTIVE, "one-way messages", || {
                    self.ringbell_throughput(None)
                })?,
            ),
            (
                STREAM_ROW,
                step(STREAM_ROW, "one-way messages", || {
                    self.stream_throughput(None)
                })?,
            ),
            (
                RINGBELL_BATCHED,
                step(RINGBELL_BATCHED, "one-way messages", || {
                    self.ringbell_throughput(Some(BATCH))
                })?,
            ),
            (
                STREAM_BATCHED_ROW,
                step(STREAM_BATCHED_ROW, "one-way messages", || {
                    self.stream_throughput(Some(BATCH))
                })?,
            ),
        ];
        let idle = match idle::NOT_ON_THIS_OS {
            None => Some(step(RINGBELL_ADAPTIVE, "idle CPU", || {
                self.ringbell_idle()
            })?),
            Some(why) => {
                left_out.push(skip_step(RINGBELL_ADAPTIVE, "idle CPU", why));
                None
            }
        };
        Ok(Report {
            latency,
            throughput,
            idle,
            left_out,
        })
    }

    /// Round trips against a `ringbell serve --mode echo`, both sides waiting with `kind`.
    fn ringbell_latency(
        &self,
        kind: WaitKind,
        warmup: u64,
        count: u64,
    ) -> Result<LatencyRun, CliError> {
        let (server, mut connection) = self.ringbell_server(kind, ServeMode::Echo)?;
        let run = measure::round_trips(&mut connection, MESSAGE_SIZE, warmup, count);
        // Hang up first, so that the server sees a clean goodbye before it is killed.
        drop(connection);
        drop(server);
        run
    }

    /// One-way messages to a `ringbell serve --mode sink`, both sides with the default wait,
    /// one `send` each or, with `batch`, that many per `send_batch` into a sink that takes
    /// them with `recv_batch` (`--mode sink-batches`).
    fn ringbell_throughput(&self, batch: Option<usize>) -> Result<ThroughputRun, CliError> {
        let mode = match batch {
            None => ServeMode::Sink,
            Some(_) => ServeMode::SinkBatches,
        };
        let (server, mut connection) = self.ringbell_server(WaitKind::Adaptive, mode)?;
        let run = self.one_way(&mut connection, batch);
        drop(connection);
        drop(server);
        run
    }

    /// The one-way measurement of this plan, one message per send or `batch` per batch.
    fn one_way<T: ringbell::IpcTransport>(
        &self,
        transport: &mut T,
        batch: Option<usize>,
    ) -> Result<ThroughputRun, CliError> {
        let (warmup, count) = (self.plan.stream_warmup, self.plan.stream_messages);
        match batch {
            None => measure::one_way(transport, MESSAGE_SIZE, warmup, count),
            Some(batch) => measure::one_way_batched(transport, MESSAGE_SIZE, warmup, count, batch),
        }
    }

    /// CPU used by a connected, idle pair with the default wait strategy: the server waits
    /// for a request, the client for a message, neither comes.
    fn ringbell_idle(&self) -> Result<IdleRun, CliError> {
        let (server, mut connection) = self.ringbell_server(WaitKind::Adaptive, ServeMode::Echo)?;
        // One round trip first, so both sides have been through a full wait cycle.
        measure::round_trips(&mut connection, MESSAGE_SIZE, 0, 1)?;
        let run = idle::measure(&mut connection, server.pid(), self.plan.idle);
        drop(connection);
        drop(server);
        run
    }

    /// Starts a server and connects to it.
    fn ringbell_server(
        &self,
        kind: WaitKind,
        mode: ServeMode,
    ) -> Result<(PeerProcess, Connection), CliError> {
        crate::serve::start_local(
            &self.launcher,
            self.workspace.path(),
            kind,
            mode,
            ringbell::ServerConfig::DEFAULT_MAX_MESSAGE_SIZE,
        )
    }

    fn stream_latency(&self, warmup: u64, count: u64) -> Result<LatencyRun, CliError> {
        let (_peer, mut channel) = self.stream_peer(ServeMode::Echo)?;
        measure::round_trips(&mut channel, MESSAGE_SIZE, warmup, count)
    }

    fn stream_throughput(&self, batch: Option<usize>) -> Result<ThroughputRun, CliError> {
        let (_peer, mut channel) = self.stream_peer(ServeMode::Sink)?;
        self.one_way(&mut channel, batch)
    }

    fn stream_peer(&self, mode: ServeMode) -> Result<(PeerProcess, StreamChannel), CliError> {
        stream::start_peer(&self.launcher, STREAM.0, mode)
    }
}

/// Runs one measurement with a progress line: `  raw spin  1,000,000 round trips … 0.6 s`.
fn step<T>(
    name: &str,
    unit: &str,
    measurement: impl FnOnce() -> Result<T, CliError>,
) -> Result<T, CliError> {
    print!("  {name:<18} {unit:<17} … ");
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let result = measurement();
    match &result {
        Ok(_) => println!("{:.1} s", started.elapsed().as_secs_f64()),
        Err(_) => println!("failed"),
    }
    result.context(format_args!("measuring {name} ({unit})"))
}

/// The progress line of a measurement this OS cannot make, which the report explains.
fn skip_step(name: &'static str, unit: &'static str, why: &'static str) -> LeftOut {
    println!("  {name:<18} {unit:<17} … left out on this OS");
    LeftOut { name, unit, why }
}

impl Report {
    fn print(&self) {
        let latency_of = |wanted: &str| {
            self.latency
                .iter()
                .find(|(name, _)| *name == wanted)
                .map(|(_, summary)| summary.p50_us)
        };
        let raw_spin_p50 = latency_of(RAW_SPIN).unwrap_or(f64::NAN);
        let stream_p50 = latency_of(STREAM_ROW).unwrap_or(f64::NAN);
        let rows = self
            .latency
            .iter()
            .map(|(name, summary)| {
                vec![
                    (*name).to_owned(),
                    format!("{:.2}", summary.p50_us),
                    format!("{:.2}", summary.p99_us),
                    format!("{:.2}", summary.p999_us),
                    compare(summary.p50_us, raw_spin_p50, Better::Faster),
                    compare(summary.p50_us, stream_p50, Better::Faster),
                ]
            })
            .collect();
        print_table(
            &[
                &format!("round trip, {MESSAGE_SIZE} B"),
                "p50 µs",
                "p99 µs",
                "p99.9 µs",
                "p50 vs raw spin",
                &format!("p50 vs {STREAM_ROW}"),
            ],
            rows,
        );
        println!();

        let rate_of = |wanted: &str| {
            self.throughput
                .iter()
                .find(|(name, _)| *name == wanted)
                .map_or(f64::NAN, |(_, run)| run.messages_per_second())
        };
        let (stream_rate, batched_stream_rate) = (rate_of(STREAM_ROW), rate_of(STREAM_BATCHED_ROW));
        let rows = self
            .throughput
            .iter()
            .map(|(name, run)| {
                vec![
                    (*name).to_owned(),
                    format_count(run.messages_per_second()),
                    format!("{:.1}", run.megabytes_per_second()),
                    compare(run.messages_per_second(), stream_rate, Better::More),
                    compare(run.messages_per_second(), batched_stream_rate, Better::More),
                ]
            })
            .collect();
        print_table(
            &[
                &format!("one-way, {MESSAGE_SIZE} B"),
                "msgs/s",
                "MB/s",
                &format!("vs {STREAM_ROW}"),
                &format!("vs {STREAM_BATCHED_ROW}"),
            ],
            rows,
        );
        if let Some(idle) = &self.idle {
            println!();
            print_table(
                &[
                    "idle, connected pair",
                    "seconds",
                    "server CPU",
                    "client CPU",
                ],
                vec![vec![
                    RINGBELL_ADAPTIVE.to_owned(),
                    format!("{:.1}", idle.elapsed.as_secs_f64()),
                    format!("{:.2} % of a core", idle.server_percent),
                    format!("{:.2} % of a core", idle.client_percent),
                ]],
            );
            #[cfg(unix)]
            let source = "utime + stime from /proc/<pid>/stat, one clock tick";
            #[cfg(windows)]
            let source = "user + kernel time from GetProcessTimes, which moves by clock ticks \
                          (15.6 ms on Windows, 10 ms under Wine): one tick";
            println!(
                "idle CPU: {source} = {:.2} % here.",
                idle.resolution_percent
            );
        }
        if !self.left_out.is_empty() {
            println!();
        }
        for left_out in &self.left_out {
            println!(
                "left out on this OS: {} ({}): {}.",
                left_out.name, left_out.unit, left_out.why
            );
        }
        println!();
        #[cfg(unix)]
        let sleeps_on = "a futex";
        #[cfg(windows)]
        let sleeps_on = "an auto-reset event";
        println!(
            "ringbell spin / adaptive / block: both sides wait with WaitStrategy::Spin, \
             Adaptive (spin up to {} µs, then sleep on {sleeps_on}), Block.",
            WaitStrategy::DEFAULT_SPIN.as_micros()
        );
        #[cfg(unix)]
        println!(
            "raw spin / raw futex: a bare ping-pong on one shared word, spinning or sleeping on \
             a shared futex: the hardware's and the kernel's floors."
        );
        #[cfg(windows)]
        println!(
            "raw spin / raw event: a bare ping-pong spinning on one shared word, or SetEvent to \
             wake the other process asleep on an auto-reset event (WaitForMultipleObjects): \
             the hardware's and the kernel's floors."
        );
        #[cfg(unix)]
        println!(
            "unix socket: std UnixStream, 4-byte length prefix, one write per message, \
             BufReader on the receiver."
        );
        #[cfg(windows)]
        println!(
            "pipe: two anonymous pipes (CreatePipe, named pipes underneath), 4-byte length \
             prefix, one WriteFile per message, BufReader on the receiver."
        );
        println!(
            "batches: {BATCH} messages a time, with send_batch (one publish and at most one \
             wake-up per batch), taken by the server with recv_batch (everything that has \
             arrived, in a few long copies); for the {STREAM_ROW}, one write of all {BATCH} frames. \
             Nothing waits for a batch to fill: each call sends what it is given."
        );
        println!(
            "\"vs\" columns: this row against the baseline, in words (\"42× faster\": a 42nd of \
             its latency; \"3.0× more\": three times its messages per second). MB/s counts \
             payload bytes, 10^6 per MB."
        );
    }
}

/// The CPU and Windows, or Wine: figures measured under Wine are Wine's, and say so.
#[cfg(windows)]
fn print_machine(cpu_count: usize) {
    // Set by Windows (and Wine) for every process.
    let cpu = std::env::var("PROCESSOR_IDENTIFIER").unwrap_or_else(|_| "unknown CPU".into());
    match crate::windows::wine_version() {
        Some(wine) => println!(
            "machine: {cpu}; nproc {cpu_count}; Wine {wine}: Windows calls run by Wine on the \
             host's kernel, so every figure here is Wine's, not Windows's"
        ),
        None => println!("machine: {cpu}; nproc {cpu_count}; Windows"),
    }
}

#[cfg(unix)]
fn print_machine(cpu_count: usize) {
    let uname = rustix::system::uname();
    println!(
        "machine: {}; nproc {cpu_count}; kernel {} {} {}",
        cpu_model(),
        uname.sysname().to_string_lossy(),
        uname.release().to_string_lossy(),
        uname.machine().to_string_lossy()
    );
}

/// The first `model name` in /proc/cpuinfo.
#[cfg(unix)]
fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|cpuinfo| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU model".to_owned())
}

fn print_plan(plan: &Plan) {
    println!("counts:  {MESSAGE_SIZE}-byte messages, warm-up first, then every round trip timed");
    println!(
        "         spinning waits (ringbell spin, adaptive; raw spin): {} warm-up + {} round trips",
        format_count(plan.spin_warmup as f64),
        format_count(plan.spin_round_trips as f64)
    );
    // The futex floor only where it runs (see `baseline::NOT_ON_THIS_OS`); Windows has its
    // event floor.
    let kernel_floor = if cfg!(windows) || baseline::NOT_ON_THIS_OS.is_none() {
        format!("{KERNEL_FLOOR}; ")
    } else {
        String::new()
    };
    println!(
        "         sleeping waits (ringbell block; {kernel_floor}{STREAM_ROW}): {} warm-up + {} round trips",
        format_count(plan.sleep_warmup as f64),
        format_count(plan.sleep_round_trips as f64)
    );
    println!(
        "         one-way throughput: {} warm-up + {} messages",
        format_count(plan.stream_warmup as f64),
        format_count(plan.stream_messages as f64)
    );
    if idle::NOT_ON_THIS_OS.is_none() {
        println!(
            "         idle CPU: a connected pair left idle for {} s",
            plan.idle.as_secs()
        );
    } else {
        println!("         idle CPU: left out on this OS (see below)");
    }
}
