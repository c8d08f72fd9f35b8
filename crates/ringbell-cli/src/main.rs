//! `ringbell`: the command-line tool of the ringbell IPC library.
//!
//! * `serve` runs an echo or sink server; `ping` measures round-trip latency against it.
//! * `demo` needs no set-up: it starts its own servers and peers as child processes and
//!   prints ringbell's latency and throughput beside the baselines (raw spin, raw futex,
//!   Unix socket; on Windows raw spin, raw event, anonymous pipes), all measured in the
//!   same run.
//! * `stress` starts a server and many client processes, makes every client call it many
//!   times with checked random payloads, and compares ringbell with Unix sockets (named
//!   pipes on Windows).
//! * The hidden `__shm-peer` and `__stream-peer` are the baseline peers of `demo` and
//!   `bench`;
//!   `__stress-server` and `__stress-client` are the stress test's processes,
//!   `__stress-stream-server` and `__stress-stream-client` those of its stream pattern.
//!
//! `main` parses the command line, dispatches and prints errors; [`args`] holds the
//! commands' options (`stress` and `bench` keep theirs); each other module does one command.

#![deny(unsafe_code)]

mod affinity;
mod args;
mod baseline;
// `bench` and what only it uses are Unix's for now: its floors and byte streams (futex,
// eventfd, Unix sockets, pipes, schedstat) and its peer libraries are Unix calls and
// Unix-socket transports. On Windows `ringbell bench` says so and points at `demo`, which
// measures ringbell beside Windows's own floors.
#[cfg(unix)]
mod bench;
mod child;
mod demo;
mod error;
mod idle;
mod measure;
#[cfg(unix)]
mod peers;
mod ping;
mod serve;
mod shm;
mod stats;
mod stream;
#[cfg(unix)]
mod streamed;
mod stress;
mod temp_dir;
#[cfg(windows)]
mod windows;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringbell::ServerConfig;

use crate::args::{
    DemoArgs, EventfdPeerArgs, PingArgs, ServeArgs, ShmPeerArgs, StreamPeerArgs, StressClientArgs,
    StressServerArgs, StressStreamClientArgs, StressStreamServerArgs,
};
#[cfg(unix)]
use crate::args::{PeerLibArgs, StreamedServerArgs};
use crate::error::CliError;

/// Fast shared-memory IPC between processes on Linux, macOS and Windows: servers, latency
/// probes and a self-contained benchmark.
#[derive(Debug, Parser)]
#[command(name = "ringbell", version, propagate_version = true)]
#[command(
    after_help = "Start with `ringbell demo`: it needs no set-up and measures \
                        ringbell against raw shared memory, the kernel's wake-ups and the \
                        byte streams programs use instead (Unix sockets; pipes on Windows) on \
                        this machine."
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
    /// Prints `listening on <PATH>` once it accepts clients, and runs until stopped: Ctrl-C
    /// or SIGTERM (on Windows Ctrl-C, Ctrl-Break or the console's close; the path is
    /// mapped to a pipe name there, which goes with the server) removes the socket file
    /// and exits with status 0, and its clients get
    /// `PeerDied`. A client whose handshake fails is reported on stderr; the server
    /// carries on.
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
    /// spin on shared memory, a raw shared futex and a Unix socket (on Windows, a raw event
    /// ping-pong and anonymous pipes in place of the last two). Prints one table, with
    /// each result as a ratio to the baselines. Takes under a minute (45 s on a 2-vCPU
    /// VM; about 4 minutes under Wine); --quick, seconds.
    Demo(DemoArgs),
    /// Stress a server with many clients in many processes, ringbell against Unix sockets
    /// (tokio named pipes on Windows).
    ///
    /// Starts one server process and --processes client processes (children of this one,
    /// killed on every path). The --clients connections are spread over the client
    /// processes; each connection makes --requests request/response calls with random
    /// payloads, and every reply is checked. Prints completed/failed/corrupted/lost counts,
    /// requests per second, latency p50/p99/p99.9, and the server's RSS and fd count (on
    /// Windows, working set and handles) before, during and after. Without --transport,
    /// runs ringbell and then the same load over Unix sockets (`uds`; on Windows named
    /// pipes, `pipe`), and prints their ratios. Exits non-zero if any request failed,
    /// was lost, duplicated or corrupted.
    Stress(stress::StressArgs),
    /// Measure ringbell against raw baselines and peer libraries (iceoryx2, ipc-channel,
    /// tokio, tonic; built with `--features peers`), all in this run.
    ///
    /// Round-trip latency at 64 B to 16 MiB with each wait strategy, one-way throughput,
    /// request/response with 1 to 1,000 clients, idle CPU and memory per connection, each
    /// beside the floors (shared-memory spin, futex, eventfd), the byte streams (Unix
    /// socket, pipe, TCP loopback), memcpy, and the peers, with ratios and the targets met
    /// or missed. Sides run as separate processes pinned to two CPUs. Takes several
    /// minutes; --quick, well under one.
    #[cfg(unix)]
    Bench(bench::BenchArgs),
    /// Not on Windows yet: says so, and what to run instead.
    #[cfg(windows)]
    Bench(args::UnavailableArgs),
    /// Server process of `stress`.
    #[command(name = "__stress-server", hide = true)]
    StressServer(StressServerArgs),
    /// Client process of `stress`.
    #[command(name = "__stress-client", hide = true)]
    StressClient(StressClientArgs),
    /// Server process of `stress --pattern stream`.
    #[command(name = "__stress-stream-server", hide = true)]
    StressStreamServer(StressStreamServerArgs),
    /// Client process of `stress --pattern stream`.
    #[command(name = "__stress-stream-client", hide = true)]
    StressStreamClient(StressStreamClientArgs),
    /// Baseline peer of `demo`: answers a raw ping-pong on an inherited memfd.
    #[command(name = "__shm-peer", hide = true)]
    ShmPeer(ShmPeerArgs),
    /// Peer-library end of a `bench` channel (iceoryx2, ipc-channel, tokio).
    #[cfg(unix)]
    #[command(name = "__peer-lib", hide = true)]
    PeerLib(PeerLibArgs),
    /// Baseline peer of `bench`: answers wake-ups on two inherited eventfds.
    #[cfg(unix)]
    #[command(name = "__eventfd-peer", hide = true)]
    EventfdPeer(EventfdPeerArgs),
    /// Baseline peer of `demo` on Windows: answers wake-ups on two inherited auto-reset
    /// events.
    #[cfg(windows)]
    #[command(name = "__event-peer", hide = true)]
    EventPeer(EventfdPeerArgs),
    /// Baseline peer of `demo` and `bench`: an echo or sink server on one byte stream (a
    /// Unix socket, pipes or TCP).
    #[command(name = "__stream-peer", hide = true)]
    StreamPeer(StreamPeerArgs),
    /// Server of `bench`'s streamed-call rows: 64-byte items over ringbell, a Unix socket
    /// or (with the `peers` feature) tonic gRPC on a Unix socket.
    #[cfg(unix)]
    #[command(name = "__streamed-server", hide = true)]
    StreamedServer(StreamedServerArgs),
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
            // Users are uids on Unix and SIDs on Windows, where a uid would admit nobody:
            // each OS has only its own flag.
            #[cfg(unix)]
            let config = args
                .allow_uids
                .iter()
                .fold(config, |config, &uid| config.allow_uid(uid));
            #[cfg(windows)]
            let config = {
                use ringbell::os::windows::ServerConfigExt;
                args.allow_sids
                    .iter()
                    .try_fold(config, |config, sid| config.allow_sid(sid))?
            };
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
        #[cfg(unix)]
        Command::Bench(args) => bench::run(&args),
        #[cfg(windows)]
        Command::Bench(_) => Err(CliError::new(
            "ringbell bench is not available on Windows yet: its floors, byte streams and peer \
             libraries (futex, eventfd, Unix sockets, schedstat, iceoryx2) are Unix's. \
             `ringbell demo` measures ringbell beside Windows's own floors (a raw spin, a raw \
             event ping-pong, anonymous pipes)",
        )),
        #[cfg(unix)]
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
        Command::StressStreamServer(args) => {
            args.process.apply()?;
            stress::run_stream_server(&args.server)
        }
        Command::StressStreamClient(args) => {
            args.process.apply()?;
            stress::run_stream_client(&args.client)
        }
        Command::ShmPeer(args) => {
            let parent = args.process.apply()?;
            baseline::run_peer(args.fd, args.mode, args.count, parent)
        }
        #[cfg(unix)]
        Command::EventfdPeer(args) => {
            let parent = args.process.apply()?;
            baseline::run_eventfd_peer(args.ping_fd, args.pong_fd, args.count, parent)
        }
        #[cfg(windows)]
        Command::EventPeer(args) => {
            let parent = args.process.apply()?;
            baseline::run_event_peer(args.ping_fd, args.pong_fd, args.count, parent)
        }
        Command::StreamPeer(args) => {
            args.process.apply()?;
            stream::run_peer(args.end()?, args.mode)
        }
        #[cfg(unix)]
        Command::StreamedServer(args) => {
            args.process.apply()?;
            streamed::run_server(args.transport, &args.path)
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
}
