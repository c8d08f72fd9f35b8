//! `ringbell __stress-stream-client`: one of the stream pattern's client processes.
//!
//! On a single-threaded tokio runtime it opens its share of the run's connections, prints
//! `ready <connections>`, and waits for `go` on stdin. Then it opens every stream that
//! falls on those connections (stream `s` goes on connection `s % --total-connections`,
//! as when one process ran them all), all at once, reads and checks each item byte for
//! byte, or drops the stream at its cancel point, and prints one [`StreamReport`] line.
//! It then stays connected, so that its cancels reach the server, until the parent says
//! `exit` or closes its stdin. If it cannot get ready, it prints `error <what>` and exits
//! non-zero.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use ringbell::tokio::{CallOptions, Client};
use ringbell::ClientConfig;
use tokio::task::JoinSet;

use super::wire::{expected_item, window_bytes, StreamReport, StreamSet, StreamSpec};
use super::StreamFault;
use crate::error::{CliError, Context};
use crate::stress::client::{say, wait_for_go, CONNECT_TIMEOUT};

/// The status a client process leaves with under `--stream-fault exit-client`.
pub(super) const EXIT_PART_WAY: i32 = 3;

/// The stream client's options, passed by `ringbell stress --pattern stream`.
#[derive(Debug, Clone, Args)]
pub struct StreamClientArgs {
    /// Socket path of the stream server.
    pub path: PathBuf,
    /// Connections this process opens.
    #[arg(long, value_name = "N")]
    pub connections: u64,
    /// The index of this process's first connection among all the run's.
    #[arg(long, value_name = "INDEX")]
    pub first_connection: u64,
    /// Connections of the whole run, over every client process.
    #[arg(long, value_name = "N")]
    pub total_connections: u64,
    /// Streams of the whole run; this process opens those on its connections.
    #[arg(long, value_name = "N")]
    pub streams: u64,
    /// Bytes of payload in every item, after its stream id and index.
    #[arg(long, value_name = "BYTES")]
    pub item_size: u32,
    /// Seed of the streams' lengths and cancel points.
    #[arg(long)]
    pub seed: u64,
    /// The run's injected fault: its stream is never cancelled, and `exit-client` makes
    /// the process holding stream 0 exit part-way through it.
    #[arg(long, value_enum)]
    pub stream_fault: Option<StreamFault>,
}

/// Runs the client process.
pub fn run(args: &StreamClientArgs) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(run_streams(args));
    if let Err(error) = &result {
        say(&format!("error {error}"));
    }
    // Tear down without waiting for the connections' tasks: the process ends here.
    runtime.shutdown_background();
    result
}

async fn run_streams(args: &StreamClientArgs) -> Result<(), CliError> {
    let mut clients = Vec::with_capacity(args.connections as usize);
    for offset in 0..args.connections {
        let config = ClientConfig::default().connect_timeout(CONNECT_TIMEOUT);
        let client = Client::connect(&args.path, config).await.map_err(|error| {
            CliError::new(format!(
                "connecting connection {} to the stream server: {error}",
                args.first_connection + offset
            ))
        })?;
        clients.push(Arc::new(client));
    }
    say(&format!("ready {}", clients.len()));
    wait_for_go().await?;

    let set = StreamSet {
        seed: args.seed,
        item_size: args.item_size,
        fault: args.stream_fault,
    };
    let mine = args.first_connection..args.first_connection + args.connections;
    let mut streams = JoinSet::new();
    for stream in (0..args.streams).filter(|s| mine.contains(&(s % args.total_connections))) {
        let connection = (stream % args.total_connections - args.first_connection) as usize;
        let exit_part_way = stream == 0 && args.stream_fault == Some(StreamFault::ExitClient);
        streams.spawn(run_stream(
            Arc::clone(&clients[connection]),
            set.spec(stream),
            exit_part_way,
        ));
    }
    let mut report = StreamReport::default();
    let mut failures = Vec::new();
    while let Some(joined) = streams.join_next().await {
        report.streams += 1;
        match joined {
            Ok(Ok(outcome)) => {
                report.items += outcome.items;
                if outcome.cancelled {
                    report.cancelled += 1;
                } else {
                    report.completed += 1;
                }
            }
            Ok(Err(why)) => failures.push(why),
            Err(error) => failures.push(format!("a stream task panicked: {error}")),
        }
    }
    report.failed = failures.len() as u64;
    if !failures.is_empty() {
        failures.sort();
        report.errors = Some(failures.join("; "));
    }
    say(&report.to_line());
    // Stay connected until the parent has asked the server for its cancels: a process
    // that left now could take a cancel still queued for the server with it.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)
    })
    .await
    .context("waiting for the parent")?
    .context("reading stdin")?;
    Ok(())
}

/// What one stream's client saw.
#[derive(Debug, Default)]
struct StreamOutcome {
    items: u64,
    cancelled: bool,
}

/// Reads and checks every item of one stream, and its reply, or drops it at its cancel
/// point. With `exit_part_way`, ends the whole process after the stream's second item, as
/// a crash would.
async fn run_stream(
    client: Arc<Client>,
    spec: StreamSpec,
    exit_part_way: bool,
) -> Result<StreamOutcome, String> {
    let name = format!("stream {}", spec.stream);
    let mut stream = client
        .call_stream_with(
            &spec.encode(),
            CallOptions::default().window_bytes(window_bytes(spec.item_size)),
        )
        .await
        .map_err(|error| format!("{name}: opening failed: {error}"))?;
    let mut outcome = StreamOutcome::default();
    let mut expected = 0u32;
    loop {
        if spec.cancel_after == Some(expected) {
            drop(stream);
            outcome.cancelled = true;
            return Ok(outcome);
        }
        if exit_part_way && expected == 2 {
            std::process::exit(EXIT_PART_WAY);
        }
        let Some(item) = stream.next().await else {
            break;
        };
        let item = item.map_err(|error| format!("{name}: item {expected} failed: {error}"))?;
        if item.len() < 12 {
            return Err(format!(
                "{name}: item {expected} is {} bytes, too short",
                item.len()
            ));
        }
        let id = u64::from_le_bytes(item[0..8].try_into().expect("8 bytes"));
        let index = u32::from_le_bytes(item[8..12].try_into().expect("4 bytes"));
        if id != spec.stream {
            return Err(format!(
                "{name}: item {expected} is misrouted, from stream {id}"
            ));
        }
        if index < expected {
            return Err(format!("{name}: item {index} duplicated"));
        }
        if index > expected {
            return Err(format!("{name}: item {expected} lost (got {index} next)"));
        }
        if item != expected_item(spec.stream, index, spec.item_size) {
            return Err(format!("{name}: item {index} corrupted"));
        }
        expected += 1;
        outcome.items += 1;
    }
    if expected != spec.count {
        return Err(format!(
            "{name}: ended after {expected} of {} items; item {expected} lost",
            spec.count
        ));
    }
    let reply = stream
        .reply()
        .await
        .map_err(|error| format!("{name}: reply missing: {error}"))?;
    let want = format!("done {}", spec.count);
    if reply != want.as_bytes() {
        return Err(format!(
            "{name}: reply {:?}, expected {want:?}",
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(outcome)
}
