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
//! `--pattern stream` has a server and clients of its own, `__stress-stream-server` and
//! `__stress-stream-client`, and a parent's side of its own: [`stream`].
//!
//! Every child is a [`PeerProcess`](crate::child::PeerProcess), killed and reaped however
//! the run ends, and tied to this process with `--parent-pid`, so that even a killed
//! parent leaves nothing behind. `--timeout` bounds the whole run.
//!
//! The parent's side is split by concern: [`plan`] turns the options into a [`Plan`] and
//! prints it, [`rounds`] drives a server and its rounds of clients, [`sample`] reads the
//! server's resources from `/proc`, [`report`] holds and prints the results, [`limits`]
//! bounds the run and raises the fd limit, and [`load`] is the quiet round `bench` uses.
//!
//! On Windows the server's working set and handle count are read with `GetProcessMemoryInfo`
//! and the system handle table instead of `/proc`, and the baseline runs on tokio's named
//! pipes (tokio has no Unix sockets there), under the name `pipe`. macOS, without `/proc` or a wrapper for `proc_pidinfo`,
//! cannot run it yet: [`NOT_ON_THIS_OS`].

mod baseline_client;
mod client;
mod limits;
#[cfg(unix)]
mod load;
mod plan;
mod protocol;
mod report;
mod rounds;
mod sample;
mod server;
mod stream;

use std::time::Instant;

use clap::{Args, ValueEnum};

pub use self::client::{run as run_client, ClientArgs};
use self::limits::{Backstop, BACKSTOP_GRACE};
#[cfg(unix)]
pub use self::load::measure_load;
use self::plan::{print_plan, Plan};
use self::protocol::SizeRange;
use self::report::{print_comparison, TransportResult};
use self::rounds::TransportRun;
pub use self::sample::NOT_ON_THIS_OS;
use self::server::Fault;
pub use self::server::{run as run_server, ServerArgs};
pub use self::stream::{
    run_client as run_stream_client, run_server as run_stream_server, StreamClientArgs,
    StreamServerArgs,
};
use crate::child::PeerLauncher;
use crate::error::CliError;
use crate::temp_dir::TempDir;

/// Bytes per ring and direction of the stress server's connections, unless
/// `--ring-capacity` says otherwise: an eighth of the library's default, so that ten
/// thousand connections need about 350 MiB of shared memory rather than 2.5 GiB, while
/// small requests still never wait for room.
const STRESS_RING_CAPACITY: usize = 16 << 10;

/// Client processes of the echo pattern when `--processes` is not given.
const DEFAULT_PROCESSES: u64 = 10;

/// The transport under stress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// ringbell: a ring pair in shared memory per connection, `AsyncServer::serve` and
    /// `tokio::Client`.
    Ringbell,
    /// The baseline: tokio `UnixStream`s carrying the same requests and replies, framed
    /// with a length and a correlation id. On Windows, where tokio has no Unix sockets,
    /// tokio named pipes instead, and the name is `pipe`.
    #[cfg_attr(windows, value(name = "pipe"))]
    Uds,
}

impl Transport {
    /// The name on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            Transport::Ringbell => "ringbell",
            Transport::Uds if cfg!(windows) => "pipe",
            Transport::Uds => "uds",
        }
    }
}

/// What the stress clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pattern {
    /// Request/response calls, each reply checked.
    Echo,
    /// Many concurrent streamed calls, some cancelled at random, every item checked.
    Stream,
}

/// `ringbell stress`'s options.
#[derive(Debug, Args)]
#[command(after_long_help = STRESS_NOTES)]
pub struct StressArgs {
    /// Client connections in all.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    clients: u64,
    /// Client processes the connections are spread over, as evenly as possible: 10 unless
    /// told (with --pattern stream, 4, and at most one per connection).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    processes: Option<u64>,
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
    /// Stress only this transport. Without it, both run, ringbell then the baseline, in this
    /// invocation, and are printed with their ratios.
    #[arg(long, value_enum)]
    transport: Option<Transport>,
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
    /// What to stress: `echo` calls, or `stream`ed calls with random cancels (which
    /// takes only --quick, --processes, --seed and --timeout of the other options).
    #[arg(long, value_enum, default_value = "echo")]
    pattern: Pattern,
    /// With --pattern stream: 64 streams over 4 connections instead of 400 over 16.
    #[arg(long)]
    quick: bool,
    /// With --pattern stream: make the server skip or duplicate an item, or a client
    /// process exit part-way.
    #[arg(long, value_enum, hide = true)]
    stream_fault: Option<self::stream::StreamFault>,
    /// Make the server inject this fault, to check that the run then fails.
    #[arg(long, value_enum, hide = true)]
    fault: Option<Fault>,
    /// Inject the fault on every N-th request the server handles.
    #[arg(long, value_name = "N", default_value_t = 100, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    fault_every: u64,
}

#[cfg(windows)]
const STRESS_NOTES: &str = "\
Limits: a ringbell connection holds a few handles in the server and in its client process \
(the control pipe, the section, the doorbell events, the peer's process); Windows has no \
per-process handle limit to raise (a process may hold about 16 million). Each ringbell \
connection's shared memory is 2 × --ring-capacity plus 4 KiB, one view in the server and \
one in its client, committed from the pagefile. The baseline (`pipe`) is tokio's named \
pipes, one instance per connection.

Exits non-zero if any request failed, was lost, duplicated or corrupted, or if a \
process could not start, connect or finish in time.";

#[cfg(not(windows))]
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

/// Runs `ringbell stress` and prints its report.
pub fn run(args: &StressArgs) -> Result<(), CliError> {
    if args.pattern == Pattern::Stream {
        let plan = self::stream::StreamPlan::new(
            args.quick,
            args.processes,
            args.seed,
            args.stream_fault,
            std::time::Duration::from_secs(args.timeout),
        );
        let _backstop = Backstop::arm(plan.timeout + BACKSTOP_GRACE);
        return self::stream::run(&plan);
    }
    let started = Instant::now();
    // Options first, so that a bad one gets its own message on every OS.
    let plan = Plan::from_args(args)?;
    if let Some(why) = NOT_ON_THIS_OS {
        return Err(CliError::new(format!(
            "ringbell stress is left out on this OS: {why}"
        )));
    }
    let transports = match args.transport {
        Some(transport) => vec![transport],
        None => vec![Transport::Ringbell, Transport::Uds],
    };
    let _backstop = Backstop::arm(plan.timeout + BACKSTOP_GRACE);
    print_plan(&plan, args.processes.unwrap_or(DEFAULT_PROCESSES));

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
