//! `ringbell stress`: one server process answering many client connections spread over
//! many client processes, every request random and every reply checked; over ringbell, or
//! over Unix sockets with the same protocol as the baseline, or both side by side.
//!
//! Three kinds of process, all started from this executable:
//! - this one, the parent: it starts the others, tells the clients when to start calling,
//!   samples the server's RSS and fd count from `/proc`, shows a progress bar, gathers
//!   the clients' reports, and prints the result;
//! - `__stress-server` ([`server`]): a tokio server that answers each request with the
//!   request reversed and its checksum ([`protocol`]), and reports how many it handled;
//! - `__stress-client` ([`client`]), `--processes` of them: each opens its share of the
//!   `--clients` connections, waits for `go`, makes `--requests` calls on each, checks
//!   every reply, and prints its counts and latency histogram as one line.
//!
//! Every child is a [`PeerProcess`], killed and reaped however the run ends, and tied to
//! this process with `--parent-pid`, so that even a killed parent leaves nothing behind.
//! `--timeout` bounds the whole run.

mod client;
mod protocol;
mod server;

use std::fs;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ringbell::ServerConfig;

pub use self::client::{run as run_client, ClientArgs};
use self::protocol::{ClientReport, SizeRange, DONE_PREFIX};
use self::server::Fault;
pub use self::server::{run as run_server, ServerArgs};
use crate::child::{ChildOutput, PeerLauncher, PeerProcess, LISTENING_PREFIX};
use crate::error::{CliError, Context};
use crate::idle::cpu_ticks;
use crate::stats::{format_count, format_ratio, print_table};
use crate::temp_dir::TempDir;

/// Bytes per ring and direction of the stress server's connections, unless
/// `--ring-capacity` says otherwise: an eighth of the library's default, so that ten
/// thousand connections need about 350 MiB of shared memory rather than 2.5 GiB, while
/// small requests still never wait for room.
const STRESS_RING_CAPACITY: usize = 16 << 10;

/// How long the server may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the server's RSS and fd count are sampled while clients run.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// How long the server may take to answer `report`, and clients to exit after reporting.
const CHILD_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server may take to close the connections of clients that exited.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// If the parent itself hangs past `--timeout` by this much, a watchdog thread ends the
/// process (and, through their parent-death signal, every child).
const BACKSTOP_GRACE: Duration = Duration::from_secs(15);

/// The transport under stress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// ringbell: a ring pair in shared memory per connection, `AsyncServer::serve` and
    /// `tokio::Client`.
    Ringbell,
    /// The baseline: tokio `UnixStream`s carrying the same requests and replies, framed
    /// with a length and a correlation id.
    Uds,
}

impl Transport {
    /// The name on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            Transport::Ringbell => "ringbell",
            Transport::Uds => "uds",
        }
    }
}

/// `ringbell stress`'s options.
#[derive(Debug, Args)]
#[command(after_long_help = STRESS_NOTES)]
pub struct StressArgs {
    /// Client connections in all.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    clients: u64,
    /// Client processes the connections are spread over, as evenly as possible.
    #[arg(long, value_name = "P", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    processes: u64,
    /// Request/response calls per client connection.
    #[arg(long, value_name = "R", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Bytes of random payload in every request.
    #[arg(
        long,
        value_name = "BYTES",
        default_value = "64",
        conflicts_with = "size_range"
    )]
    size: SizeRange,
    /// Draw each request's payload size at random from A to B bytes, both included.
    #[arg(long, value_name = "A..B")]
    size_range: Option<SizeRange>,
    /// Stress only this transport. Without it, both run, ringbell then uds, and are
    /// compared (as with --compare).
    #[arg(long, value_enum, conflicts_with = "compare")]
    transport: Option<Transport>,
    /// Run ringbell, then uds, in this invocation, and print both with their ratios (the
    /// default when --transport is not given).
    #[arg(long)]
    compare: bool,
    /// Calls in flight at once on each connection; also how many requests of one
    /// connection the server handles at once.
    #[arg(long, value_name = "C", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Bytes per ring and direction of each ringbell connection: a power of two, at least
    /// 256. Each connection's shared memory is about twice this, mapped by the server and
    /// its client: smaller than the library's 128 KiB default so that 10,000 clients fit.
    #[arg(long, value_name = "BYTES", default_value_t = STRESS_RING_CAPACITY)]
    ring_capacity: usize,
    /// Run the clients this many times against the same server, with fresh processes and
    /// connections each time, and show the server's RSS and fd count after each round.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Before the first round's calls, leave every client connected and idle for this
    /// many seconds, and report the server's CPU use meanwhile.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    idle: u64,
    /// A call with no reply after this many seconds counts as lost.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    call_timeout: u64,
    /// Kill every process and fail if the whole run takes longer than this.
    #[arg(long, value_name = "SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Seed of the random payloads; each client connection derives its own stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Make the server inject this fault, to check that the run then fails.
    #[arg(long, value_enum, hide = true)]
    fault: Option<Fault>,
    /// Inject the fault on every N-th request the server handles.
    #[arg(long, value_name = "N", default_value_t = 100, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    fault_every: u64,
}

const STRESS_NOTES: &str = "\
Limits: a ringbell connection holds 3 file descriptors in the server and 3 in its client \
process (control socket, own doorbell, the peer's doorbell), and each client process's \
ClientGroup 3 more (its doorbell pair and epoll set); a Unix-socket connection 1 on each \
side. Server and clients raise their soft RLIMIT_NOFILE to the hard limit, so the \
server serves about (hard limit - 10) / 3 ringbell clients: 10,000 clients need a hard \
limit above 30,010. To raise it, as root: `ulimit -Hn 65536; ulimit -Sn 65536` in the \
shell that then runs ringbell, `prlimit --nofile=65536`, LimitNOFILE= for a systemd unit, \
or /etc/security/limits.conf (needs CAP_SYS_RESOURCE; fs.nr_open caps it). Each ringbell \
connection's shared memory is 2 × --ring-capacity plus 4 KiB, one mapping in the server \
and one in its client (vm.max_map_count allows 65,530 per process by default).

Exits non-zero if any request failed, was lost, duplicated or corrupted, or if a \
process could not start, connect or finish in time.";

/// What a run does, from the options.
#[derive(Debug, Clone)]
struct Plan {
    clients: u64,
    processes: u64,
    requests: u64,
    sizes: SizeRange,
    concurrency: u64,
    ring_capacity: usize,
    rounds: u32,
    idle: Duration,
    call_timeout: Duration,
    seed: u64,
    fault: Option<(Fault, u64)>,
    timeout: Duration,
    deadline: Instant,
    /// Whether to draw a progress bar per round (not when `bench` draws its own).
    progress: bool,
}

impl Plan {
    fn from_args(args: &StressArgs) -> Result<Plan, CliError> {
        let ring_capacity = args.ring_capacity;
        if !ring_capacity.is_power_of_two() || !(256..=1 << 30).contains(&ring_capacity) {
            return Err(CliError::new(format!(
                "--ring-capacity {ring_capacity} is not a power of two from 256 to 1073741824"
            )));
        }
        let timeout = Duration::from_secs(args.timeout);
        Ok(Plan {
            clients: args.clients,
            processes: args.processes.min(args.clients),
            requests: args.requests,
            sizes: args.size_range.unwrap_or(args.size),
            concurrency: args.concurrency,
            ring_capacity,
            rounds: args.rounds,
            idle: Duration::from_secs(args.idle),
            call_timeout: Duration::from_secs(args.call_timeout),
            seed: args.seed,
            fault: args.fault.map(|fault| (fault, args.fault_every)),
            timeout,
            deadline: Instant::now() + timeout,
            progress: true,
        })
    }

    fn calls_per_round(&self) -> u64 {
        self.clients * self.requests
    }

    /// How many connections client process `index` opens, and the index of its first.
    fn share_of(&self, index: u64) -> (u64, u64) {
        let (base, extra) = (self.clients / self.processes, self.clients % self.processes);
        let connections = base + u64::from(index < extra);
        let first = index * base + index.min(extra);
        (connections, first)
    }

    /// Time left before `--timeout`, at most `limit`.
    fn time_left(&self, limit: Duration) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .min(limit)
    }
}

/// Runs `ringbell stress` and prints its report.
pub fn run(args: &StressArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let plan = Plan::from_args(args)?;
    let transports = match args.transport {
        Some(transport) => vec![transport],
        None => vec![Transport::Ringbell, Transport::Uds],
    };
    let _backstop = Backstop::arm(plan.timeout + BACKSTOP_GRACE);
    print_plan(&plan, args.processes);

    let workspace = TempDir::create("ringbell-stress")?;
    // Nothing is pinned: many processes share the CPUs, as they would in real use.
    let launcher = PeerLauncher::new(None)?;
    let mut results = Vec::new();
    for transport in transports {
        let mut run = TransportRun::start(&plan, transport, &launcher, &workspace)?;
        let result = run.run_rounds()?;
        drop(run);
        result.print(&plan);
        results.push(result);
    }
    if let [ringbell, uds] = results.as_slice() {
        print_comparison(&plan, ringbell, uds);
    }
    println!();
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
    let failures: Vec<String> = results
        .iter()
        .filter_map(TransportResult::failure)
        .collect();
    if failures.is_empty() {
        println!("PASS: every request of every client completed once, with the right reply");
        Ok(())
    } else {
        Err(CliError::new(format!(
            "stress test failed: {}",
            failures.join("; ")
        )))
    }
}

/// What `ringbell bench` takes from one stress round on one transport.
#[derive(Debug, Clone, Copy)]
pub struct LoadFigures {
    /// Calls completed correctly per second, over all clients.
    pub requests_per_second: f64,
    /// Round-trip time of the calls, in microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    /// The server's resident memory before the clients connected, and its peak while
    /// they called, in KiB.
    pub server_rss_before_kib: u64,
    pub server_peak_rss_kib: u64,
}

/// Runs one round of `clients` connections spread over `processes` client processes,
/// each making `requests` calls of `size` random bytes one at a time, over `transport`,
/// with no output. Fails, like `ringbell stress`, if any call failed or went wrong.
pub fn measure_load(
    transport: Transport,
    clients: u64,
    processes: u64,
    requests: u64,
    size: usize,
) -> Result<LoadFigures, CliError> {
    let timeout = Duration::from_secs(600);
    let plan = Plan {
        clients,
        processes: processes.min(clients).max(1),
        requests,
        sizes: SizeRange {
            min: size,
            max: size,
        },
        concurrency: 1,
        ring_capacity: STRESS_RING_CAPACITY,
        rounds: 1,
        idle: Duration::ZERO,
        call_timeout: Duration::from_secs(30),
        seed: 1,
        fault: None,
        timeout,
        deadline: Instant::now() + timeout,
        progress: false,
    };
    let workspace = TempDir::create("ringbell-bench-load")?;
    let launcher = PeerLauncher::new(None)?;
    let mut run = TransportRun::start(&plan, transport, &launcher, &workspace)?;
    let result = run.run_rounds()?;
    drop(run);
    if let Some(failure) = result.failure() {
        return Err(CliError::new(failure));
    }
    let latency = &result.total().latency;
    let micros = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1_000.0;
    Ok(LoadFigures {
        requests_per_second: result.requests_per_second(),
        p50_us: micros(0.5),
        p99_us: micros(0.99),
        server_rss_before_kib: result.before.rss_kib,
        server_peak_rss_kib: result.peak().rss_kib,
    })
}

/// Who printed a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Server,
    Client { round: u32, index: usize },
}

type Event = ChildOutput<Source>;

/// The server's memory and fds at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ServerSample {
    rss_kib: u64,
    fds: u64,
}

impl ServerSample {
    fn read(pid: u32) -> Result<ServerSample, CliError> {
        let status = proc_status(pid)?;
        let rss_kib = status_field(&status, "VmRSS:")
            .ok_or_else(|| CliError::new(format!("/proc/{pid}/status has no VmRSS")))?;
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .context(format_args!("listing /proc/{pid}/fd"))?
            .count() as u64;
        Ok(ServerSample { rss_kib, fds })
    }

    fn max(self, other: ServerSample) -> ServerSample {
        ServerSample {
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
        }
    }
}

fn proc_status(pid: u32) -> Result<String, CliError> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .context(format_args!("reading /proc/{pid}/status"))
}

/// The number after `key` in a /proc/<pid>/status text (`VmRSS:   1234 kB` → 1234).
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// CPU used by the idle server while every client was connected.
#[derive(Debug, Clone, Copy)]
struct IdleCpu {
    connections: u64,
    elapsed: Duration,
    percent: f64,
    resolution_percent: f64,
}

/// One round: every client process started, connected, called, reported and reaped.
#[derive(Debug, Clone)]
struct RoundResult {
    connected_in: Duration,
    calls_in: Duration,
    expected: u64,
    report: ClientReport,
    server_handled: u64,
    during: ServerSample,
    after: ServerSample,
    idle: Option<IdleCpu>,
}

impl RoundResult {
    /// Calls that had no reply: timed out, or never reported.
    fn lost(&self) -> u64 {
        let accounted = self.report.completed + self.report.failed + self.report.corrupted;
        self.expected
            .saturating_sub(accounted)
            .max(self.report.lost)
    }

    /// Replies to no call, and requests the server handled more than once.
    fn duplicated(&self) -> u64 {
        self.report.duplicated + self.server_handled.saturating_sub(self.expected)
    }
}

/// Everything measured for one transport.
#[derive(Debug)]
struct TransportResult {
    transport: Transport,
    before: ServerSample,
    rounds: Vec<RoundResult>,
}

impl TransportResult {
    fn total(&self) -> ClientReport {
        let mut total = ClientReport::default();
        for round in &self.rounds {
            total.merge(&round.report);
        }
        total
    }

    fn requests_per_second(&self) -> f64 {
        let calls_in: Duration = self.rounds.iter().map(|round| round.calls_in).sum();
        self.total().completed as f64 / calls_in.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn peak(&self) -> ServerSample {
        self.rounds
            .iter()
            .fold(self.before, |peak, round| peak.max(round.during))
    }

    fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for round in &self.rounds {
            counts.expected += round.expected;
            counts.completed += round.report.completed;
            counts.failed += round.report.failed;
            counts.corrupted += round.report.corrupted;
            counts.lost += round.lost();
            counts.duplicated += round.duplicated();
            counts.server_handled += round.server_handled;
        }
        counts
    }

    /// Why this transport's run failed, if it did.
    fn failure(&self) -> Option<String> {
        let counts = self.counts();
        let ok = counts.completed == counts.expected
            && counts.failed + counts.corrupted + counts.lost + counts.duplicated == 0
            && counts.server_handled == counts.expected;
        if ok {
            return None;
        }
        let mut why = format!(
            "{}: {} of {} calls completed correctly; failed={} corrupted={} lost={} duplicated={}; \
             the server handled {} requests",
            self.transport.arg(),
            counts.completed,
            counts.expected,
            counts.failed,
            counts.corrupted,
            counts.lost,
            counts.duplicated,
            counts.server_handled
        );
        if let Some(error) = self.total().first_error {
            why.push_str(&format!("; first error: {error}"));
        }
        Some(why)
    }

    fn print(&self, plan: &Plan) {
        let transport = self.transport.arg();
        let total = self.total();
        let counts = self.counts();
        println!();
        println!("{transport}:");
        if self.rounds.len() > 1 {
            self.print_rounds();
        }
        for round in &self.rounds {
            if let Some(idle) = round.idle {
                println!(
                    "  idle:      {} connected, idle clients cost the server {:.2} % of a core \
                     over {:.1} s (one clock tick = {:.2} %)",
                    format_count(idle.connections as f64),
                    idle.percent,
                    idle.elapsed.as_secs_f64(),
                    idle.resolution_percent
                );
            }
        }
        let connected_in: Duration = self.rounds.iter().map(|round| round.connected_in).sum();
        let calls_in: Duration = self.rounds.iter().map(|round| round.calls_in).sum();
        println!(
            "  connect:   {} clients in {:.2} s{}",
            format_count(plan.clients as f64),
            connected_in.as_secs_f64() / self.rounds.len() as f64,
            if self.rounds.len() > 1 {
                " (mean of the rounds)"
            } else {
                ""
            }
        );
        println!(
            "  calls:     {} in {:.2} s: {} requests/s",
            format_count(counts.expected as f64),
            calls_in.as_secs_f64(),
            format_count(self.requests_per_second())
        );
        let micros = |quantile: f64| format_micros(total.latency.value_at_quantile(quantile));
        println!(
            "  latency:   p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            micros(0.50),
            micros(0.99),
            micros(0.999),
            format_micros(total.latency.max())
        );
        let last = self.rounds.last().map_or(self.before, |round| round.after);
        let peak = self.peak();
        println!(
            "  server:    RSS {} before, {} max during, {} after; fds {} before, {} max during, {} after",
            format_kib(self.before.rss_kib),
            format_kib(peak.rss_kib),
            format_kib(last.rss_kib),
            self.before.fds,
            peak.fds,
            last.fds
        );
        println!(
            "result {transport}: completed={} failed={} corrupted={} lost={} duplicated={} \
             (expected {}, server handled {})",
            counts.completed,
            counts.failed,
            counts.corrupted,
            counts.lost,
            counts.duplicated,
            counts.expected,
            counts.server_handled
        );
        if let Some(error) = &total.first_error {
            println!("  first error: {error}");
        }
    }

    fn print_rounds(&self) {
        let rows = self
            .rounds
            .iter()
            .enumerate()
            .map(|(index, round)| {
                let rate = round.report.completed as f64
                    / round.calls_in.as_secs_f64().max(f64::MIN_POSITIVE);
                vec![
                    (index + 1).to_string(),
                    format!("{:.2}", round.connected_in.as_secs_f64()),
                    format!("{:.2}", round.calls_in.as_secs_f64()),
                    format_count(rate),
                    format_micros(round.report.latency.value_at_quantile(0.99)),
                    format_kib(round.during.rss_kib),
                    format_kib(round.after.rss_kib),
                    round.after.fds.to_string(),
                ]
            })
            .collect();
        print_table(
            &[
                "round",
                "connect s",
                "calls s",
                "requests/s",
                "p99 µs",
                "server RSS max",
                "RSS after",
                "fds after",
            ],
            rows,
        );
        if let [_, second, .., last] = self.rounds.as_slice() {
            let growth =
                |from: u64, to: u64| (to as f64 - from as f64) / (from as f64).max(1.0) * 100.0;
            println!(
                "  server after round 2 → round {}: RSS {:+.1} %, fds {:+.1} %",
                self.rounds.len(),
                growth(second.after.rss_kib, last.after.rss_kib),
                growth(second.after.fds, last.after.fds)
            );
        }
    }
}

/// The counts of a transport's run, over all its rounds.
#[derive(Debug, Default)]
struct Counts {
    expected: u64,
    completed: u64,
    failed: u64,
    corrupted: u64,
    lost: u64,
    duplicated: u64,
    server_handled: u64,
}

/// A server process and the rounds of clients run against it.
struct TransportRun<'a> {
    plan: &'a Plan,
    transport: Transport,
    launcher: &'a PeerLauncher,
    socket: std::path::PathBuf,
    server: PeerProcess,
    server_pid: u32,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    /// The server's last `progress` count.
    handled: u64,
    /// The server's answer to the last `report`, once it came.
    reported: Option<u64>,
    /// The largest sample seen since the round began.
    peak: ServerSample,
    next_sample: Instant,
    /// What we are waiting for, for a timeout message.
    phase: String,
}

impl<'a> TransportRun<'a> {
    fn start(
        plan: &'a Plan,
        transport: Transport,
        launcher: &'a PeerLauncher,
        workspace: &TempDir,
    ) -> Result<TransportRun<'a>, CliError> {
        let socket = workspace.path().join(format!("{}.sock", transport.arg()));
        let (events_tx, events) = mpsc::channel();
        let mut args: Vec<std::ffi::OsString> = vec![
            "__stress-server".into(),
            socket.clone().into(),
            "--transport".into(),
            transport.arg().into(),
            "--ring-capacity".into(),
            plan.ring_capacity.to_string().into(),
            "--concurrency".into(),
            plan.concurrency.to_string().into(),
            // Every client at once, with room for a round's stragglers.
            "--max-connections".into(),
            (plan.clients + 64).to_string().into(),
        ];
        if let Some((fault, every)) = plan.fault {
            let fault = fault.to_possible_value().expect("no fault is skipped");
            args.extend([
                "--fault".into(),
                fault.get_name().into(),
                "--fault-every".into(),
                every.to_string().into(),
            ]);
        }
        let server = PeerProcess::spawn_talking(
            &format!("{} stress server", transport.arg()),
            launcher.command(&args),
            Source::Server,
            events_tx.clone(),
        )?;
        let server_pid = server.pid();
        let run = TransportRun {
            plan,
            transport,
            launcher,
            socket,
            server,
            server_pid,
            events,
            events_tx,
            handled: 0,
            reported: None,
            peak: ServerSample::default(),
            next_sample: Instant::now(),
            phase: format!("the {} server to start listening", transport.arg()),
        };
        let listen_by = Instant::now() + LISTEN_TIMEOUT;
        loop {
            match run
                .events
                .recv_timeout(listen_by.saturating_duration_since(Instant::now()))
            {
                Ok(ChildOutput::Line(_, line)) if line.starts_with(LISTENING_PREFIX) => break,
                Ok(ChildOutput::Line(..)) => {}
                Ok(ChildOutput::Closed(_)) => {
                    return Err(CliError::new(format!(
                        "the {} stress server exited before it listened (its error is above)",
                        transport.arg()
                    )))
                }
                Err(_) => {
                    return Err(CliError::new(format!(
                        "the {} stress server did not listen within {LISTEN_TIMEOUT:?}",
                        transport.arg()
                    )))
                }
            }
        }
        Ok(run)
    }

    fn run_rounds(&mut self) -> Result<TransportResult, CliError> {
        let before = ServerSample::read(self.server_pid)?;
        let mut rounds = Vec::new();
        for round in 1..=self.plan.rounds {
            rounds.push(self.run_round(round)?);
        }
        Ok(TransportResult {
            transport: self.transport,
            before,
            rounds,
        })
    }

    /// The next line from a client, or `None` after at most one sampling interval. Lines
    /// from the server are taken in here. Fails past `--timeout` and if the server is gone.
    fn next_event(&mut self) -> Result<Option<Event>, CliError> {
        let now = Instant::now();
        if now >= self.plan.deadline {
            return Err(CliError::new(format!(
                "the run did not finish within --timeout {} s (waiting for {}); \
                 every process was killed",
                self.plan.timeout.as_secs(),
                self.phase
            )));
        }
        if now >= self.next_sample {
            // The server may exit between two looks: its end is reported below.
            if let Ok(sample) = ServerSample::read(self.server_pid) {
                self.peak = self.peak.max(sample);
            }
            self.next_sample = now + SAMPLE_INTERVAL;
        }
        let wait = self
            .next_sample
            .min(self.plan.deadline)
            .saturating_duration_since(now);
        match self.events.recv_timeout(wait) {
            Ok(ChildOutput::Line(Source::Server, line)) => {
                if let Some(count) = line.strip_prefix("progress ") {
                    self.handled = count.parse().unwrap_or(self.handled);
                } else if let Some(count) = line.strip_prefix("report ") {
                    self.reported = count.parse().ok();
                }
                Ok(None)
            }
            Ok(ChildOutput::Closed(Source::Server)) => Err(CliError::new(format!(
                "the {} stress server exited while we waited for {} (its error, if any, is above)",
                self.transport.arg(),
                self.phase
            ))),
            Ok(event) => Ok(Some(event)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                unreachable!("the run holds a sender of its own channel")
            }
        }
    }

    /// Asks the server how many requests it has handled so far.
    fn query_handled(&mut self) -> Result<u64, CliError> {
        self.reported = None;
        self.server.write_line("report")?;
        let by = Instant::now() + CHILD_ANSWER_TIMEOUT;
        self.phase = "the server's count of handled requests".to_owned();
        loop {
            self.next_event()?;
            if let Some(count) = self.reported {
                return Ok(count);
            }
            if Instant::now() >= by {
                return Err(CliError::new(format!(
                    "the {} stress server did not report its count within {CHILD_ANSWER_TIMEOUT:?}",
                    self.transport.arg()
                )));
            }
        }
    }

    fn run_round(&mut self, round: u32) -> Result<RoundResult, CliError> {
        let plan = self.plan;
        let handled_before = self.query_handled()?;
        let fds_before = ServerSample::read(self.server_pid)?.fds;
        self.peak = ServerSample::read(self.server_pid)?;
        let progress = if plan.progress {
            progress_bar(plan.calls_per_round(), self.transport, round, plan.rounds)
        } else {
            ProgressBar::hidden()
        };

        // Start the clients, then wait until every one has connected.
        let connect_started = Instant::now();
        let mut clients = Vec::with_capacity(plan.processes as usize);
        for index in 0..plan.processes {
            clients.push(self.spawn_client(round, index)?);
        }
        let mut ready = vec![false; clients.len()];
        let mut ready_count = 0;
        let mut connected: u64 = 0;
        self.phase = "the clients to connect".to_owned();
        while ready_count < clients.len() {
            progress.set_message(format!("connecting {ready_count}/{}", clients.len()));
            let Some(event) = self.next_event()? else {
                continue;
            };
            match event {
                ChildOutput::Line(Source::Client { round: r, index }, line) if r == round => {
                    if let Some(count) = line.strip_prefix("ready ") {
                        if !ready[index] {
                            ready[index] = true;
                            ready_count += 1;
                            connected += count.parse::<u64>().unwrap_or(0);
                        }
                    } else if let Some(error) = line.strip_prefix("error ") {
                        return Err(self.client_failed(index, error, connected));
                    }
                }
                ChildOutput::Closed(Source::Client { round: r, index }) if r == round => {
                    return Err(self.client_failed(
                        index,
                        "it exited before it was ready",
                        connected,
                    ));
                }
                _ => {}
            }
        }
        let connected_in = connect_started.elapsed();

        let idle = if round == 1 && !plan.idle.is_zero() {
            progress.set_message(format!("idle {} s", plan.idle.as_secs()));
            Some(self.measure_idle(connected)?)
        } else {
            None
        };

        // Go: every client calls, and reports when done.
        self.peak = self.peak.max(ServerSample::read(self.server_pid)?);
        progress.set_message("calling");
        progress.reset_elapsed();
        let calls_started = Instant::now();
        for client in &mut clients {
            client.write_line("go")?;
        }
        let mut report = ClientReport::default();
        let mut done = vec![false; clients.len()];
        let mut done_count = 0;
        let mut last_done = calls_started;
        self.phase = "the clients' calls".to_owned();
        while done_count < clients.len() {
            let event = self.next_event()?;
            progress.set_position(self.handled.saturating_sub(handled_before));
            let Some(event) = event else { continue };
            match event {
                ChildOutput::Line(Source::Client { round: r, index }, line) if r == round => {
                    if line.starts_with(DONE_PREFIX) && !done[index] {
                        let client_report = ClientReport::parse(&line).map_err(|error| {
                            CliError::new(format!("client process {}: {error}", index + 1))
                        })?;
                        report.merge(&client_report);
                        done[index] = true;
                        done_count += 1;
                        last_done = Instant::now();
                    } else if let Some(error) = line.strip_prefix("error ") {
                        return Err(self.client_failed(index, error, connected));
                    }
                }
                ChildOutput::Closed(Source::Client { round: r, index })
                    if r == round && !done[index] =>
                {
                    return Err(CliError::new(format!(
                        "client process {} of {} exited before reporting (its error, if any, is above)",
                        index + 1,
                        clients.len()
                    )));
                }
                _ => {}
            }
        }
        let calls_in = last_done - calls_started;
        progress.finish_and_clear();
        let during = self.peak;

        // Reap the clients, count the server's requests, and let it close the connections.
        self.phase = "the client processes to exit".to_owned();
        for client in clients {
            client.finish(plan.time_left(CHILD_ANSWER_TIMEOUT))?;
        }
        let server_handled = self.query_handled()? - handled_before;
        let after = self.settle(fds_before)?;
        Ok(RoundResult {
            connected_in,
            calls_in,
            expected: plan.calls_per_round(),
            report,
            server_handled,
            during,
            after,
            idle,
        })
    }

    fn spawn_client(&self, round: u32, index: u64) -> Result<PeerProcess, CliError> {
        let plan = self.plan;
        let (connections, first) = plan.share_of(index);
        let command = self.launcher.command(&[
            "__stress-client".into(),
            self.socket.clone().into(),
            "--transport".into(),
            self.transport.arg().into(),
            "--connections".into(),
            connections.to_string().into(),
            "--first-client".into(),
            first.to_string().into(),
            "--requests".into(),
            plan.requests.to_string().into(),
            "--size-range".into(),
            format!("{}..{}", plan.sizes.min, plan.sizes.max).into(),
            "--concurrency".into(),
            plan.concurrency.to_string().into(),
            "--seed".into(),
            plan.seed.to_string().into(),
            "--call-timeout-ms".into(),
            plan.call_timeout.as_millis().to_string().into(),
        ]);
        PeerProcess::spawn_talking(
            &format!("stress client {}", index + 1),
            command,
            Source::Client {
                round,
                index: index as usize,
            },
            self.events_tx.clone(),
        )
    }

    /// The error for a client process that could not get ready or failed, with the
    /// server's resources beside their limits, since those are what usually stop a run.
    fn client_failed(&self, index: usize, error: &str, connected: u64) -> CliError {
        let mut message = format!(
            "{} client process {} of {}: {error}",
            self.transport.arg(),
            index + 1,
            self.plan.processes
        );
        message.push_str(&format!(
            "; the client processes ready by then held {} connections",
            format_count(connected as f64)
        ));
        if let Some(limits) = server_limits(self.server_pid) {
            message.push_str(&format!("; the server: {limits}"));
        }
        CliError::new(message)
    }

    /// Measures the server's CPU use while every client is connected and idle.
    fn measure_idle(&mut self, connections: u64) -> Result<IdleCpu, CliError> {
        self.phase = "the idle period to end".to_owned();
        let before = cpu_ticks(self.server_pid)?;
        let started = Instant::now();
        let until = started + self.plan.idle;
        while Instant::now() < until {
            if let Some(ChildOutput::Line(Source::Client { index, .. }, line)) =
                self.next_event()?
            {
                if let Some(error) = line.strip_prefix("error ") {
                    return Err(self.client_failed(index, error, connections));
                }
            }
        }
        let elapsed = started.elapsed();
        let ticks = cpu_ticks(self.server_pid)? - before;
        let ticks_per_second = rustix::param::clock_ticks_per_second() as f64;
        let percent = |ticks: u64| ticks as f64 / ticks_per_second / elapsed.as_secs_f64() * 100.0;
        Ok(IdleCpu {
            connections,
            elapsed,
            percent: percent(ticks),
            resolution_percent: percent(1),
        })
    }

    /// Waits until the server has closed this round's connections (its fd count is back
    /// to `fds_before`), or for a few seconds, then samples it.
    fn settle(&mut self, fds_before: u64) -> Result<ServerSample, CliError> {
        self.phase = "the server to close the connections".to_owned();
        let by = Instant::now() + self.plan.time_left(SETTLE_TIMEOUT);
        loop {
            let sample = ServerSample::read(self.server_pid)?;
            if sample.fds <= fds_before || Instant::now() >= by {
                return Ok(sample);
            }
            self.next_event()?;
        }
    }
}

/// The server's fds, mappings and threads beside their limits, as one phrase.
fn server_limits(pid: u32) -> Option<String> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let fd_limit = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_owned();
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|maps| maps.lines().count())
        .unwrap_or(0);
    let max_maps = fs::read_to_string("/proc/sys/vm/max_map_count")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let threads = proc_status(pid)
        .ok()
        .and_then(|status| status_field(&status, "Threads:"))
        .unwrap_or(0);
    Some(format!(
        "{fds} fds open of its limit of {fd_limit} (3 per ringbell connection; \
         `ringbell stress --help` says how to raise it), {maps} memory mappings of \
         vm.max_map_count {max_maps}, {threads} threads"
    ))
}

/// Nanoseconds as microseconds, to about three significant digits: `3.25`, `48.7`,
/// `1,234`.
fn format_micros(nanos: u64) -> String {
    let micros = nanos as f64 / 1_000.0;
    if micros < 10.0 {
        format!("{micros:.2}")
    } else if micros < 1_000.0 {
        format!("{micros:.1}")
    } else {
        format_count(micros)
    }
}

/// `812 KiB`, `35.2 MiB`, `1.25 GiB`.
fn format_kib(kib: u64) -> String {
    let kib = kib as f64;
    if kib < 1024.0 {
        format!("{kib:.0} KiB")
    } else if kib < 1024.0 * 1024.0 {
        format!("{:.1} MiB", kib / 1024.0)
    } else {
        format!("{:.2} GiB", kib / 1024.0 / 1024.0)
    }
}

fn progress_bar(calls: u64, transport: Transport, round: u32, rounds: u32) -> ProgressBar {
    let bar = ProgressBar::new(calls);
    let prefix = if rounds > 1 {
        format!("{} {round}/{rounds}", transport.arg())
    } else {
        transport.arg().to_owned()
    };
    bar.set_prefix(prefix);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} {msg:<16} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} calls ({per_sec:0})",
        )
        .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn print_plan(plan: &Plan, processes_asked: u64) {
    let sizes = if plan.sizes.min == plan.sizes.max {
        format!("{}-byte", plan.sizes.min)
    } else {
        format!("{}..{}-byte", plan.sizes.min, plan.sizes.max)
    };
    println!(
        "ringbell stress: {} clients over {} processes, {} calls each ({} per round{}), \
         {sizes} random payloads, {} call{} in flight per client",
        format_count(plan.clients as f64),
        plan.processes,
        format_count(plan.requests as f64),
        format_count(plan.calls_per_round() as f64),
        if plan.rounds > 1 {
            format!(", {} rounds", plan.rounds)
        } else {
            String::new()
        },
        plan.concurrency,
        if plan.concurrency == 1 { "" } else { "s" }
    );
    if plan.processes < processes_asked {
        println!("note:   only {} processes, one per client", plan.processes);
    }
    println!(
        "server: one process, a tokio runtime with a worker per CPU ({}); ringbell: \
         AsyncServer::serve, one sweeper task for every connection, rings of {} per \
         direction (the library's default: {}); uds: a task per connection; up to {} \
         request{} of a connection handled at once",
        thread::available_parallelism().map_or(1, |cpus| cpus.get()),
        format_kib(plan.ring_capacity as u64 / 1024),
        format_kib(ServerConfig::DEFAULT_RING_CAPACITY as u64 / 1024),
        plan.concurrency,
        if plan.concurrency == 1 { "" } else { "s" }
    );
    println!(
        "clients: single-threaded tokio runtimes; nothing pinned; each reply checked byte \
         for byte (the request reversed, then its FNV-1a checksum); seed {}",
        plan.seed
    );
    println!(
        "latency: each call's round trip as its client sees it, queueing behind the other \
         {} calls in flight included (a closed loop: mean latency ≈ calls in flight ÷ requests/s)",
        format_count((plan.clients * plan.concurrency - 1) as f64)
    );
}

fn print_comparison(plan: &Plan, ringbell: &TransportResult, uds: &TransportResult) {
    let (ringbell_total, uds_total) = (ringbell.total(), uds.total());
    let micros = |report: &ClientReport, quantile: f64| {
        report.latency.value_at_quantile(quantile) as f64 / 1_000.0
    };
    let row = |result: &TransportResult, total: &ClientReport| {
        let peak = result.peak();
        vec![
            result.transport.arg().to_owned(),
            format_count(result.requests_per_second()),
            format_micros(total.latency.value_at_quantile(0.50)),
            format_micros(total.latency.value_at_quantile(0.99)),
            format_micros(total.latency.value_at_quantile(0.999)),
            format_kib(peak.rss_kib),
            format_count(peak.fds as f64),
        ]
    };
    let (ringbell_peak, uds_peak) = (ringbell.peak(), uds.peak());
    let ratios = vec![
        "ringbell ÷ uds".to_owned(),
        format_ratio(ringbell.requests_per_second(), uds.requests_per_second()),
        format_ratio(micros(&ringbell_total, 0.50), micros(&uds_total, 0.50)),
        format_ratio(micros(&ringbell_total, 0.99), micros(&uds_total, 0.99)),
        format_ratio(micros(&ringbell_total, 0.999), micros(&uds_total, 0.999)),
        format_ratio(ringbell_peak.rss_kib as f64, uds_peak.rss_kib as f64),
        format_ratio(ringbell_peak.fds as f64, uds_peak.fds as f64),
    ];
    println!();
    let sizes = if plan.sizes.min == plan.sizes.max {
        format!("{} B", plan.sizes.min)
    } else {
        format!("{}..{} B", plan.sizes.min, plan.sizes.max)
    };
    print_table(
        &[
            &format!(
                "{} clients × {} calls, {sizes}",
                format_count(plan.clients as f64),
                format_count(plan.requests as f64)
            ),
            "requests/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "server RSS max",
            "server fds max",
        ],
        vec![row(ringbell, &ringbell_total), row(uds, &uds_total), ratios],
    );
    println!(
        "ratios: requests/s above 1× means ringbell serves more; latency, RSS and fds below 1× \
         mean ringbell needs less. Both measured now, in this run, on this machine."
    );
}

/// Ends the process if the run hangs well past `--timeout` despite every wait being
/// bounded; the children, tied to us by their parent-death signal, go with it.
struct Backstop {
    _disarm: mpsc::Sender<()>,
}

impl Backstop {
    fn arm(limit: Duration) -> Backstop {
        let (disarm, armed) = mpsc::channel::<()>();
        let spawned = thread::Builder::new()
            .name("stress-backstop".into())
            .spawn(move || {
                if armed.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
                    eprintln!(
                        "ringbell: error: the stress run hung for {limit:?}; stopping every process"
                    );
                    std::process::exit(2);
                }
            });
        // Without the thread, the bounded waits still end the run.
        drop(spawned);
        Backstop { _disarm: disarm }
    }
}

/// Raises this process's soft limit on open files to its hard limit (as the library's
/// servers do at bind), for the client processes' many connections and the Unix-socket
/// server. Failing that, the limit stays, and the error that hits it says so.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(clients: u64, processes: u64) -> Plan {
        let args = StressArgs {
            clients,
            processes,
            requests: 1,
            size: SizeRange::exactly(64),
            size_range: None,
            transport: None,
            compare: false,
            concurrency: 1,
            ring_capacity: STRESS_RING_CAPACITY,
            rounds: 1,
            idle: 0,
            call_timeout: 1,
            timeout: 1,
            seed: 1,
            fault: None,
            fault_every: 1,
        };
        Plan::from_args(&args).unwrap()
    }

    #[test]
    fn clients_are_spread_evenly_and_completely() {
        for (clients, processes) in [(1000, 10), (1003, 10), (7, 3), (3, 10), (1, 1)] {
            let plan = plan(clients, processes);
            let mut next_first = 0;
            let mut shares = Vec::new();
            for index in 0..plan.processes {
                let (connections, first) = plan.share_of(index);
                assert_eq!(first, next_first, "{clients} over {processes}");
                next_first += connections;
                shares.push(connections);
            }
            assert_eq!(next_first, clients);
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1 && *min >= 1, "{shares:?}");
        }
    }

    #[test]
    fn status_fields_and_sizes_read_and_print() {
        let status = "Name:\tringbell\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(2048));
        assert_eq!(status_field(status, "Threads:"), Some(3));
        assert_eq!(status_field(status, "VmSwap:"), None);
        assert_eq!(format_kib(812), "812 KiB");
        assert_eq!(format_micros(3_254), "3.25");
        assert_eq!(format_micros(48_740), "48.7");
        assert_eq!(format_micros(48_726_000), "48,726");
        assert_eq!(format_kib(2048), "2.0 MiB");
        assert_eq!(format_kib(3 << 20), "3.00 GiB");
        let own = ServerSample::read(std::process::id()).unwrap();
        assert!(own.rss_kib > 0 && own.fds >= 3, "{own:?}");
    }

    #[test]
    fn lost_and_duplicated_count_what_is_missing_or_extra() {
        let mut round = RoundResult {
            connected_in: Duration::ZERO,
            calls_in: Duration::from_secs(1),
            expected: 10,
            report: ClientReport {
                completed: 7,
                failed: 1,
                ..ClientReport::default()
            },
            server_handled: 12,
            during: ServerSample::default(),
            after: ServerSample::default(),
            idle: None,
        };
        assert_eq!(round.lost(), 2);
        assert_eq!(round.duplicated(), 2);
        round.report.lost = 2;
        round.report.duplicated = 1;
        assert_eq!(round.lost(), 2);
        assert_eq!(round.duplicated(), 3);
    }
}
