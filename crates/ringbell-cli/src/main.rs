//! `ringbell`: the command-line tool of the ringbell IPC library.
//!
//! * `serve` runs an echo or sink server; `ping` measures round-trip latency against it.
//! * `demo` needs no set-up: it starts its own servers and peers as child processes and
//!   prints ringbell's latency and throughput beside the baselines (raw spin, raw futex,
//!   Unix socket), all measured in the same run.
//! * `stress` starts a server and many client processes, makes every client call it many
//!   times with checked random payloads, and compares ringbell with Unix sockets.
//! * The hidden `__shm-peer` and `__stream-peer` are the baseline peers of `demo` and
//!   `bench`;
//!   `__stress-server` and `__stress-client` are the stress test's processes.
//!
//! `main` parses the command line and prints errors; each module does one command.

#![deny(unsafe_code)]

mod affinity;
mod baseline;
mod bench;
mod child;
mod demo;
mod error;
mod idle;
mod measure;
mod peers;
mod ping;
mod serve;
mod shm;
mod stats;
mod stream;
mod stress;
mod temp_dir;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ringbell::{ServerConfig, WaitStrategy};

use crate::baseline::ShmMode;
use crate::child::ParentWatch;
use crate::error::CliError;
use crate::serve::ServeMode;

/// Fast shared-memory IPC between processes on Linux: servers, latency probes and a
/// self-contained benchmark.
#[derive(Debug, Parser)]
#[command(name = "ringbell", version, propagate_version = true)]
#[command(
    after_help = "Start with `ringbell demo`: it needs no set-up and measures \
                        ringbell against raw shared memory and Unix sockets on this machine."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve ringbell connections on a socket path, each on its own thread: echo every
    /// message back, or count them.
    ///
    /// Prints `listening on <PATH>` once it accepts clients, and runs until stopped. A
    /// client whose handshake fails is reported on stderr; the server carries on.
    Serve(ServeArgs),
    /// Measure round-trip latency against a `ringbell serve --mode echo` server.
    ///
    /// Runs warm-up round trips, then times each of COUNT round trips (send, receive, and
    /// a byte-for-byte check of the echo) and prints p50, p99, p99.9 and max in
    /// microseconds, and round trips per second.
    Ping(PingArgs),
    /// Measure ringbell against its baselines on this machine, with no set-up.
    ///
    /// Starts its own servers and peers as child processes (pinned to a second CPU core,
    /// this process to the first) and measures, with 64-byte messages: ringbell's round
    /// trip with each wait strategy, ringbell's one-way throughput, and the same for a raw
    /// spin on shared memory, a raw shared futex and a Unix socket. Prints one table, with
    /// each result as a ratio to the baselines. Takes about a minute; --quick, seconds.
    Demo(DemoArgs),
    /// Stress a server with many clients in many processes, ringbell against Unix sockets.
    ///
    /// Starts one server process and --processes client processes (children of this one,
    /// killed on every path). The --clients connections are spread over the client
    /// processes; each connection makes --requests request/response calls with random
    /// payloads, and every reply is checked. Prints completed/failed/corrupted/lost counts,
    /// requests per second, latency p50/p99/p99.9, and the server's RSS and fd count
    /// before, during and after. Without --transport, runs ringbell and then the same load
    /// over Unix sockets, and prints their ratios. Exits non-zero if any request failed,
    /// was lost, duplicated or corrupted.
    Stress(stress::StressArgs),
    /// Measure ringbell against raw baselines and peer libraries (iceoryx2, ipc-channel,
    /// tokio), all in this run.
    ///
    /// Round-trip latency at 64 B to 1 MiB with each wait strategy, one-way throughput,
    /// request/response with 1 to 1,000 clients, idle CPU and memory per connection, each
    /// beside the floors (shared-memory spin, futex, eventfd), the byte streams (Unix
    /// socket, pipe, TCP loopback), memcpy, and the peers, with ratios and the targets met
    /// or missed. Sides run as separate processes pinned to two CPUs. Takes several
    /// minutes; --quick, well under one.
    Bench(bench::BenchArgs),
    /// Server process of `stress`.
    #[command(name = "__stress-server", hide = true)]
    StressServer(StressServerArgs),
    /// Client process of `stress`.
    #[command(name = "__stress-client", hide = true)]
    StressClient(StressClientArgs),
    /// Baseline peer of `demo`: answers a raw ping-pong on an inherited memfd.
    #[command(name = "__shm-peer", hide = true)]
    ShmPeer(ShmPeerArgs),
    /// Peer-library end of a `bench` channel (iceoryx2, ipc-channel, tokio).
    #[command(name = "__peer-lib", hide = true)]
    PeerLib(PeerLibArgs),
    /// Baseline peer of `bench`: answers wake-ups on two inherited eventfds.
    #[command(name = "__eventfd-peer", hide = true)]
    EventfdPeer(EventfdPeerArgs),
    /// Baseline peer of `demo` and `bench`: an echo or sink server on one byte stream (a
    /// Unix socket, pipes or TCP).
    #[command(name = "__stream-peer", hide = true)]
    StreamPeer(StreamPeerArgs),
}

/// How this side waits for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaitKind {
    /// Poll the ring without ever sleeping: the lowest latency, and a core burned while
    /// waiting.
    Spin,
    /// Spin for --spin-us, then sleep on a futex (the library's default).
    Adaptive,
    /// Sleep at once: no CPU while waiting, a kernel wake-up for every message.
    Block,
}

impl WaitKind {
    /// The name on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            WaitKind::Spin => "spin",
            WaitKind::Adaptive => "adaptive",
            WaitKind::Block => "block",
        }
    }
}

/// The wait strategy options shared by `serve` and `ping`.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// How this side waits for a message.
    #[arg(long, value_enum, default_value_t = WaitKind::Adaptive)]
    pub wait: WaitKind,
    /// With --wait adaptive: how long to spin before sleeping, in microseconds.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = WaitStrategy::DEFAULT_SPIN.as_micros() as u64)]
    pub spin_us: u64,
}

impl WaitArgs {
    /// The default wait options with another kind.
    pub fn of_kind(wait: WaitKind) -> WaitArgs {
        WaitArgs {
            wait,
            spin_us: WaitStrategy::DEFAULT_SPIN.as_micros() as u64,
        }
    }

    /// The library's strategy.
    pub fn strategy(&self) -> WaitStrategy {
        match self.wait {
            WaitKind::Spin => WaitStrategy::Spin,
            WaitKind::Adaptive => WaitStrategy::Adaptive {
                spin: Duration::from_micros(self.spin_us),
            },
            WaitKind::Block => WaitStrategy::Block,
        }
    }

    /// `spin`, `adaptive (spin 50 µs, then sleep)`, `block`.
    pub fn describe(&self) -> String {
        match self.wait {
            WaitKind::Adaptive => format!("adaptive (spin {} µs, then sleep)", self.spin_us),
            other => other.arg().to_owned(),
        }
    }
}

/// Process placement options shared by the commands that run as a peer.
#[derive(Debug, Clone, Args)]
struct ProcessArgs {
    /// Pin the whole process (every thread) to this CPU core.
    #[arg(long, value_name = "N")]
    cpu: Option<usize>,
    /// Exit when the process with this id exits (the demo ties its children to itself).
    #[arg(long, value_name = "PID", hide = true)]
    parent_pid: Option<u32>,
}

impl ProcessArgs {
    /// Ties this process to its parent, then pins it. Call it before starting any thread,
    /// so that every thread inherits the pinning.
    fn apply(&self) -> Result<Option<ParentWatch>, CliError> {
        let parent = self.parent_pid.map(ParentWatch::arm).transpose()?;
        if let Some(cpu) = self.cpu {
            affinity::pin_to_cpu(cpu)?;
        }
        Ok(parent)
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Socket path to listen on (created owner-only; replaced if a dead server left it).
    path: PathBuf,
    #[command(flatten)]
    wait: WaitArgs,
    /// Bytes per ring and direction: a power of two from 256 B to 1 GiB.
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::DEFAULT_RING_CAPACITY)]
    ring_capacity: usize,
    /// The largest message either side may send, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// Connections held at once, handshakes in progress included; clients past it are
    /// refused as busy.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// What to do with each message.
    #[arg(long, value_enum, default_value_t = ServeMode::Echo)]
    mode: ServeMode,
    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(Debug, Args)]
struct PingArgs {
    /// Socket path of a `ringbell serve --mode echo` server.
    path: PathBuf,
    /// Timed round trips.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Bytes per message.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    size: usize,
    /// Untimed round trips first, to warm caches, branch predictors and CPU clocks.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    warmup: u64,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Small counts: finishes in a few seconds, with noisier percentiles (for CI).
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, Args)]
struct ShmPeerArgs {
    /// The inherited memfd's number.
    #[arg(long, value_name = "N")]
    fd: i32,
    /// How to wait for each ping.
    #[arg(long, value_enum)]
    mode: ShmMode,
    /// Pings to answer before exiting (warm-up included).
    #[arg(long, value_name = "K")]
    count: u64,
    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(Debug, Args)]
struct PeerLibArgs {
    /// Which peer library.
    #[arg(long, value_parser = parse_peer)]
    peer: peers::PeerKind,
    /// What to do with each message.
    #[arg(long, value_enum)]
    mode: ServeMode,
    #[command(flatten)]
    process: ProcessArgs,
    /// The library's own connection arguments, from the parent.
    #[arg(last = true)]
    setup: Vec<String>,
}

fn parse_peer(arg: &str) -> Result<peers::PeerKind, String> {
    peers::PeerKind::from_arg(arg).ok_or_else(|| format!("unknown peer library {arg}"))
}

#[derive(Debug, Args)]
struct EventfdPeerArgs {
    /// The inherited eventfd to wait on.
    #[arg(long, value_name = "N")]
    ping_fd: i32,
    /// The inherited eventfd to answer on.
    #[arg(long, value_name = "N")]
    pong_fd: i32,
    /// Wake-ups to answer before exiting (warm-up included).
    #[arg(long, value_name = "K")]
    count: u64,
    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(Debug, Args)]
struct StreamPeerArgs {
    /// Which stream it is.
    #[arg(long, value_enum)]
    kind: stream::StreamKind,
    /// What to do with each message.
    #[arg(long, value_enum)]
    mode: ServeMode,
    /// The inherited socket-pair end (uds), or the pipe to read from (pipe).
    #[arg(long, value_name = "N")]
    fd: Option<i32>,
    /// The inherited pipe to write to (pipe).
    #[arg(long, value_name = "N")]
    write_fd: Option<i32>,
    /// The address to connect to (tcp).
    #[arg(long, value_name = "ADDRESS")]
    connect: Option<std::net::SocketAddr>,
    #[command(flatten)]
    process: ProcessArgs,
}

impl StreamPeerArgs {
    fn end(&self) -> Result<stream::PeerEnd, CliError> {
        use stream::{PeerEnd, StreamKind};
        let missing = |what: &str| CliError::new(format!("__stream-peer needs {what}"));
        Ok(match self.kind {
            StreamKind::Uds => PeerEnd::Unix(self.fd.ok_or_else(|| missing("--fd"))?),
            StreamKind::Pipe => PeerEnd::Pipes(
                self.fd.ok_or_else(|| missing("--fd"))?,
                self.write_fd.ok_or_else(|| missing("--write-fd"))?,
            ),
            StreamKind::Tcp => PeerEnd::Tcp(self.connect.ok_or_else(|| missing("--connect"))?),
        })
    }
}

#[derive(Debug, Args)]
struct StressServerArgs {
    #[command(flatten)]
    server: stress::ServerArgs,
    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(Debug, Args)]
struct StressClientArgs {
    #[command(flatten)]
    client: stress::ClientArgs,
    #[command(flatten)]
    process: ProcessArgs,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringbell: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => {
            args.process.apply()?;
            let config = ServerConfig::default()
                .wait(args.wait.strategy())
                .ring_capacity(args.ring_capacity)
                .max_message_size(args.max_message_size)
                .max_connections(args.max_connections);
            serve::run(&args.path, config, args.mode)
        }
        Command::Ping(args) => {
            args.process.apply()?;
            let plan = ping::PingPlan {
                count: args.count,
                size: args.size,
                warmup: args.warmup,
            };
            ping::run(&args.path, &plan, &args.wait)
        }
        Command::Demo(args) => demo::run(args.quick),
        Command::Stress(args) => stress::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::PeerLib(args) => {
            args.process.apply()?;
            peers::run_child(args.peer, args.mode, &args.setup)
        }
        Command::StressServer(args) => {
            args.process.apply()?;
            stress::run_server(&args.server)
        }
        Command::StressClient(args) => {
            args.process.apply()?;
            stress::run_client(&args.client)
        }
        Command::ShmPeer(args) => {
            let parent = args.process.apply()?;
            baseline::run_peer(args.fd, args.mode, args.count, parent)
        }
        Command::EventfdPeer(args) => {
            let parent = args.process.apply()?;
            baseline::run_eventfd_peer(args.ping_fd, args.pong_fd, args.count, parent)
        }
        Command::StreamPeer(args) => {
            args.process.apply()?;
            stream::run_peer(args.end()?, args.mode)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn wait_args_map_to_strategies() {
        assert_eq!(
            WaitArgs::of_kind(WaitKind::Spin).strategy(),
            WaitStrategy::Spin
        );
        assert_eq!(
            WaitArgs::of_kind(WaitKind::Block).strategy(),
            WaitStrategy::Block
        );
        assert_eq!(
            WaitArgs::of_kind(WaitKind::Adaptive).strategy(),
            WaitStrategy::default()
        );
    }
}
