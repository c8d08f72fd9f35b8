//! The options of `serve`, `ping`, `demo` and the hidden peer and stress processes, and
//! the wait and process-placement options they share (`stress` and `bench` keep theirs
//! beside their code).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ringbell::{ServerConfig, WaitStrategy};

use crate::baseline::ShmMode;
use crate::child::ParentWatch;
use crate::error::CliError;
#[cfg(unix)]
use crate::peers;
use crate::serve::ServeMode;
use crate::{affinity, stream, stress};

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
pub(crate) struct ProcessArgs {
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
    pub(crate) fn apply(&self) -> Result<Option<ParentWatch>, CliError> {
        let parent = self.parent_pid.map(ParentWatch::arm).transpose()?;
        if let Some(cpu) = self.cpu {
            affinity::pin_to_cpu(cpu)?;
        }
        Ok(parent)
    }
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Socket path to listen on (created owner-only; replaced if a dead server left it).
    pub(crate) path: PathBuf,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    /// Bytes per ring and direction: a power of two from 256 B to 1 GiB.
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::DEFAULT_RING_CAPACITY)]
    pub(crate) ring_capacity: usize,
    /// The largest message either side may send, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::DEFAULT_MAX_MESSAGE_SIZE)]
    pub(crate) max_message_size: usize,
    /// Connections held at once, handshakes in progress included; clients past it are
    /// refused as busy.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::DEFAULT_MAX_CONNECTIONS)]
    pub(crate) max_connections: usize,
    /// Also admit clients running as this user id (repeat for more). As
    /// `ServerConfig::allow_uid`: the socket file then lets anyone connect (mode 0666), and
    /// the server admits or refuses each client by the uid the kernel reports for it.
    #[cfg(unix)]
    #[arg(long = "allow-uid", value_name = "UID")]
    pub(crate) allow_uids: Vec<u32>,
    /// Also admit clients running as this Windows user, given as its SID, `S-1-5-21-…`
    /// (`whoami /user` prints it; repeat for more). As
    /// `ringbell::os::windows::ServerConfigExt::allow_sid`: the pipe then lets
    /// Authenticated Users connect, and the server admits or refuses each client by the
    /// user of its process.
    #[cfg(windows)]
    #[arg(long = "allow-sid", value_name = "SID")]
    pub(crate) allow_sids: Vec<String>,
    /// What to do with each message.
    #[arg(long, value_enum, default_value_t = ServeMode::Echo)]
    pub(crate) mode: ServeMode,
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    /// Socket path of a `ringbell serve --mode echo` server.
    pub(crate) path: PathBuf,
    /// Timed round trips.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: u64,
    /// Bytes per message.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub(crate) size: usize,
    /// Untimed round trips first, to warm caches, branch predictors and CPU clocks.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub(crate) warmup: u64,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Small counts: finishes in a few seconds, with noisier percentiles (for CI).
    #[arg(long)]
    pub(crate) quick: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ShmPeerArgs {
    /// The inherited memfd's number (on Windows, the inherited section's handle value).
    #[arg(long, value_name = "N")]
    pub(crate) fd: i32,
    /// How to wait for each ping.
    #[arg(long, value_enum)]
    pub(crate) mode: ShmMode,
    /// Pings to answer before exiting (warm-up included).
    #[arg(long, value_name = "K")]
    pub(crate) count: u64,
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

/// The options of a command that is not available on this OS: taken whatever they are,
/// so that the command can say why it cannot run rather than fail on an option.
#[cfg(windows)]
#[derive(Debug, Args)]
pub(crate) struct UnavailableArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _rest: Vec<String>,
}

#[cfg(unix)]
#[derive(Debug, Args)]
pub(crate) struct PeerLibArgs {
    /// Which peer library.
    #[arg(long, value_parser = parse_peer)]
    pub(crate) peer: peers::PeerKind,
    /// What to do with each message.
    #[arg(long, value_enum)]
    pub(crate) mode: ServeMode,
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
    /// The library's own connection arguments, from the parent.
    #[arg(last = true)]
    pub(crate) setup: Vec<String>,
}

#[cfg(unix)]
fn parse_peer(arg: &str) -> Result<peers::PeerKind, String> {
    peers::PeerKind::from_arg(arg).ok_or_else(|| {
        if peers::PeerKind::ALL.is_empty() {
            peers::MISSING.to_owned()
        } else {
            format!("unknown peer library {arg}")
        }
    })
}

#[derive(Debug, Args)]
pub(crate) struct EventfdPeerArgs {
    /// The inherited eventfd to wait on (on Windows, the handle value of an event).
    #[arg(long, value_name = "N")]
    pub(crate) ping_fd: i32,
    /// The inherited eventfd to answer on (on Windows, the handle value of an event).
    #[arg(long, value_name = "N")]
    pub(crate) pong_fd: i32,
    /// Wake-ups to answer before exiting (warm-up included).
    #[arg(long, value_name = "K")]
    pub(crate) count: u64,
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StreamPeerArgs {
    /// Which stream it is.
    #[arg(long, value_enum)]
    kind: stream::StreamKind,
    /// What to do with each message.
    #[arg(long, value_enum)]
    pub(crate) mode: ServeMode,
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
    pub(crate) process: ProcessArgs,
}

impl StreamPeerArgs {
    pub(crate) fn end(&self) -> Result<stream::PeerEnd, CliError> {
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

#[cfg(unix)]
#[derive(Debug, Args)]
pub(crate) struct StreamedServerArgs {
    #[arg(long, value_enum)]
    pub(crate) transport: crate::streamed::StreamedTransport,
    /// Socket path to listen on.
    pub(crate) path: PathBuf,
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StressServerArgs {
    #[command(flatten)]
    pub(crate) server: stress::ServerArgs,
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StressClientArgs {
    #[command(flatten)]
    pub(crate) client: stress::ClientArgs,
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StressStreamServerArgs {
    #[command(flatten)]
    pub(crate) server: stress::StreamServerArgs,
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StressStreamClientArgs {
    #[command(flatten)]
    pub(crate) client: stress::StreamClientArgs,
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

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
