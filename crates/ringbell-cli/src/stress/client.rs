//! `ringbell __stress-client`: one of the stress test's client processes.
//!
//! On a single-threaded tokio runtime it opens its share of the client connections (a
//! ringbell [`Client`] each, or a Unix socket with a small pipelined client of the same
//! protocol), prints `ready <connections>`, and waits for `go` on stdin. Then every
//! connection makes its calls, `--concurrency` at a time, each with a fresh random payload
//! whose reply is checked byte for byte; every round trip is timed. At the end it prints
//! one [`ClientReport`] line. If it cannot get ready, it prints `error <what>` instead and
//! exits non-zero.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use ringbell::tokio::{Client, ClientGroup};
use ringbell::{ClientConfig, Error};
use tokio::task::JoinSet;

use super::baseline_client::BaselineClient;
use super::limits::raise_fd_limit;
use super::protocol::{verify_reply, ClientReport, Rng, SizeRange};
use super::Transport;
use crate::error::{CliError, Context};
use crate::stats::record;

/// Connections a client process sets up at once. The server runs up to 64 handshakes at
/// once; ten client processes keeping this many under way each keep it busy without
/// filling its listen queue.
const CONCURRENT_CONNECTS: usize = 32;

/// How long one connection may take to set up, queueing at a busy server included.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A baseline connect finding the listen queue full (every pipe instance busy, on Windows)
/// is retried after this pause.
pub(super) const CONNECT_RETRY: Duration = Duration::from_millis(5);

/// The client process's options, passed by `ringbell stress`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Socket path of the stress server.
    pub path: PathBuf,
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// Connections this process opens.
    #[arg(long, value_name = "N")]
    pub connections: u64,
    /// The index of this process's first connection among all the clients (for seeding).
    #[arg(long, value_name = "INDEX")]
    pub first_client: u64,
    /// Calls per connection.
    #[arg(long, value_name = "R")]
    pub requests: u64,
    /// Payload sizes.
    #[arg(long, value_name = "A..B")]
    pub size_range: SizeRange,
    /// Calls in flight at once on each connection.
    #[arg(long, value_name = "C")]
    pub concurrency: u64,
    /// Seed of the payloads.
    #[arg(long)]
    pub seed: u64,
    /// A call without a reply after this many milliseconds is lost.
    #[arg(long, value_name = "MILLISECONDS")]
    pub call_timeout_ms: u64,
}

/// Runs the client process.
pub fn run(args: &ClientArgs) -> Result<(), CliError> {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(CONCURRENT_CONNECTS)
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(run_calls(args));
    if let Err(error) = &result {
        say(&format!("error {error}"));
    }
    // Tear down without waiting for the connections' tasks: the process ends here.
    runtime.shutdown_background();
    result
}

/// Prints one line for the parent and makes sure it leaves now.
pub(super) fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

async fn run_calls(args: &ClientArgs) -> Result<(), CliError> {
    let duplicated = Arc::new(AtomicU64::new(0));
    let connections = connect_all(args, &duplicated).await?;
    say(&format!("ready {}", connections.len()));
    wait_for_go().await?;

    let report = Arc::new(Mutex::new(ClientReport::default()));
    let call_timeout = Duration::from_millis(args.call_timeout_ms);
    let mut lanes = JoinSet::new();
    for (offset, connection) in connections.into_iter().enumerate() {
        let connection = Arc::new(connection);
        let client = args.first_client + offset as u64;
        for lane in 0..args.concurrency.min(args.requests) {
            let plan = Lane {
                connection: connection.clone(),
                rng: Rng::for_lane(args.seed, client, lane),
                // Lane k makes calls k, k + C, k + 2C, … of the connection's R.
                calls: (args.requests - lane).div_ceil(args.concurrency),
                sizes: args.size_range,
                call_timeout,
                report: report.clone(),
            };
            lanes.spawn(plan.run());
        }
    }
    while let Some(joined) = lanes.join_next().await {
        joined.context("a client task panicked")?;
    }
    let mut report = report
        .lock()
        .expect("no task holds the report any more")
        .clone();
    report.duplicated += duplicated.load(Ordering::Relaxed);
    say(&report.to_line());
    Ok(())
}

/// Opens `args.connections` connections, a few at a time, in order.
async fn connect_all(
    args: &ClientArgs,
    duplicated: &Arc<AtomicU64>,
) -> Result<Vec<StressConnection>, CliError> {
    // All of this process's ringbell connections share one driver task and doorbell.
    let group = match args.transport {
        Transport::Ringbell => Some(ClientGroup::new().context("starting the client group")?),
        Transport::Uds => None,
    };
    let mut under_way = JoinSet::new();
    let mut connected = Vec::with_capacity(args.connections as usize);
    let mut next: u64 = 0;
    while connected.len() < args.connections as usize {
        while next < args.connections && under_way.len() < CONCURRENT_CONNECTS {
            let (path, transport, duplicated, group) = (
                args.path.clone(),
                args.transport,
                duplicated.clone(),
                group.clone(),
            );
            let concurrency = args.concurrency as usize;
            let index = next;
            under_way.spawn(async move {
                let connection =
                    StressConnection::connect(&path, transport, concurrency, duplicated, group)
                        .await;
                (index, connection)
            });
            next += 1;
        }
        let joined = under_way
            .join_next()
            .await
            .expect("connections are under way while some are missing");
        let (index, connection) = joined.context("a connecting task panicked")?;
        let connection = connection.map_err(|error| {
            CliError::new(format!(
                "connecting client {} (this process's connection {} of {}, {} connected so far): {error}",
                args.first_client + index,
                index + 1,
                args.connections,
                connected.len()
            ))
        })?;
        connected.push(connection);
    }
    Ok(connected)
}

/// Waits for the parent's `go` line.
pub(super) async fn wait_for_go() -> Result<(), CliError> {
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await
    .context("waiting for the parent")?
    .context("reading stdin")?;
    match line.trim() {
        "go" => Ok(()),
        "" => Err(CliError::new("the parent closed stdin before saying go")),
        other => Err(CliError::new(format!("the parent said {other:?}, not go"))),
    }
}

/// One sequence of calls on a connection, one call at a time.
struct Lane {
    connection: Arc<StressConnection>,
    rng: Rng,
    calls: u64,
    sizes: SizeRange,
    call_timeout: Duration,
    report: Arc<Mutex<ClientReport>>,
}

impl Lane {
    async fn run(mut self) {
        let mut request = Vec::new();
        for _ in 0..self.calls {
            let size = self.rng.size_in(self.sizes);
            request.resize(size, 0);
            self.rng.fill(&mut request);
            let started = Instant::now();
            let outcome =
                tokio::time::timeout(self.call_timeout, self.connection.call(&request)).await;
            let elapsed = started.elapsed();
            // Uncontended: the runtime has one thread.
            let mut report = self
                .report
                .lock()
                .expect("a lane panicked holding the report");
            match outcome {
                Ok(Ok(reply)) => {
                    record(&mut report.latency, elapsed);
                    match verify_reply(&request, &reply) {
                        Ok(()) => report.completed += 1,
                        Err(problem) => {
                            report.corrupted += 1;
                            report.note_error(|| problem);
                        }
                    }
                }
                Ok(Err(CallError::Corrupted(problem))) => {
                    report.corrupted += 1;
                    report.note_error(|| problem);
                }
                Ok(Err(CallError::Failed(problem))) => {
                    report.failed += 1;
                    report.note_error(|| problem);
                }
                Err(_elapsed) => {
                    report.lost += 1;
                    let timeout = self.call_timeout;
                    report.note_error(|| format!("a call had no reply within {timeout:?}"));
                }
            }
        }
    }
}

/// Why a call did not return a reply.
enum CallError {
    /// The transport reported corrupt data.
    Corrupted(String),
    /// Anything else: the handler failed, the connection broke.
    Failed(String),
}

/// A client connection of either transport.
enum StressConnection {
    Ringbell(Client),
    Uds(BaselineClient),
}

impl StressConnection {
    async fn connect(
        path: &Path,
        transport: Transport,
        concurrency: usize,
        duplicated: Arc<AtomicU64>,
        group: Option<ClientGroup>,
    ) -> Result<StressConnection, String> {
        match (transport, group) {
            (Transport::Ringbell, Some(group)) => {
                let config = ClientConfig::default().connect_timeout(CONNECT_TIMEOUT);
                group
                    .connect_bounded(path, config, concurrency)
                    .await
                    .map(StressConnection::Ringbell)
                    .map_err(|error| error.to_string())
            }
            (Transport::Ringbell, None) => unreachable!("ringbell clients have a group"),
            (Transport::Uds, _) => BaselineClient::connect(path, duplicated)
                .await
                .map(StressConnection::Uds)
                .map_err(|error| format!("connecting to {}: {error}", path.display())),
        }
    }

    async fn call(&self, request: &[u8]) -> Result<Vec<u8>, CallError> {
        match self {
            StressConnection::Ringbell(client) => {
                client.call(request).await.map_err(|error| match error {
                    Error::Corrupted { .. } => CallError::Corrupted(error.to_string()),
                    other => CallError::Failed(other.to_string()),
                })
            }
            StressConnection::Uds(client) => client.call(request).await.map_err(CallError::Failed),
        }
    }
}
