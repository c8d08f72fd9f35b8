//! `bench`'s streamed-call rows (issue 13): a server child that answers a request with a
//! stream of 64-byte items, over ringbell's `AsyncServer::serve_calls`, over the same
//! protocol on a tokio `UnixStream`, or (with the `peers` feature) over tonic gRPC on a
//! Unix socket ([`grpc`]), and the client side that times it from the bench process.
//!
//! The protocol, on both transports: the request is 5 bytes, a verb and an item count
//! (`u32`, little-endian); the server sends that many items of [`ITEM_SIZE`] bytes, then
//! an end. [`Verb::Forever`] sends items until the client cancels; the server notes, on
//! CLOCK_MONOTONIC (one clock for every process of the machine), the instant its handler
//! observed the cancel, and that instant is what the cancel latency is measured to.
//!
//! Over ringbell, the end is the call's reply and the cancel is dropping the
//! `ResponseStream`; the client asks for the noted instant with a unary [`Verb::LastCancel`]
//! call. Over the Unix socket every message is a frame (`u32` length, then bytes); the end
//! is an empty frame for a finite stream, or an 8-byte frame holding the noted instant for
//! a cancelled one, and the cancel is a frame from the client that the server checks for
//! between items. A unary call ([`Verb::LastCancel`], 5 bytes in and 8 out) is timed on
//! each transport too.

use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::child::{PeerLauncher, PeerProcess};
use crate::error::{CliError, Context};

#[cfg(feature = "peers")]
mod grpc;

/// Bytes per streamed item.
pub const ITEM_SIZE: usize = 64;

/// The tonic row's name (a constant, so that a build without it can say it is missing).
pub const TONIC_NAME: &str = "tonic gRPC, Unix socket";

/// The transport a streamed-call server child speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamedTransport {
    /// `AsyncServer::serve_calls`, items sent with `Call::send`.
    Ringbell,
    /// The same protocol framed on tokio `UnixStream`s, one call per connection at a time.
    Uds,
    /// tonic gRPC over a Unix socket, from `ringbell-bench-peers` (the `peers` feature).
    #[cfg(feature = "peers")]
    Tonic,
}

impl StreamedTransport {
    /// The transports from the peer libraries (measured unless `--no-peers`).
    #[cfg(feature = "peers")]
    pub const PEERS: &'static [StreamedTransport] = &[StreamedTransport::Tonic];
    /// The transports from the peer libraries: none without the `peers` feature.
    #[cfg(not(feature = "peers"))]
    pub const PEERS: &'static [StreamedTransport] = &[];

    /// How a peer library's transport is used, for the report (`None`: not a peer).
    pub fn how(self) -> Option<&'static str> {
        match self {
            StreamedTransport::Ringbell | StreamedTransport::Uds => None,
            #[cfg(feature = "peers")]
            StreamedTransport::Tonic => Some(ringbell_bench_peers::grpc::HOW),
        }
    }

    /// The row name in reports.
    pub fn name(self) -> &'static str {
        match self {
            StreamedTransport::Ringbell => "ringbell serve_calls",
            StreamedTransport::Uds => "tokio UnixStream, framed",
            #[cfg(feature = "peers")]
            StreamedTransport::Tonic => TONIC_NAME,
        }
    }

    fn arg(self) -> &'static str {
        match self {
            StreamedTransport::Ringbell => "ringbell",
            StreamedTransport::Uds => "uds",
            #[cfg(feature = "peers")]
            StreamedTransport::Tonic => "tonic",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Verb {
    /// `count` items, then the end.
    Count = 1,
    /// Items until cancelled.
    Forever = 2,
    /// Unary: the CLOCK_MONOTONIC instant of the last cancel observed (over the socket,
    /// an end frame of 8 bytes and no items).
    LastCancel = 3,
}

fn request(verb: Verb, count: u32) -> [u8; 5] {
    let mut bytes = [0; 5];
    bytes[0] = verb as u8;
    bytes[1..].copy_from_slice(&count.to_le_bytes());
    bytes
}

fn parse_request(bytes: &[u8]) -> Option<(u8, u32)> {
    let count = u32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?);
    Some((*bytes.first()?, count))
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of this machine.
pub(crate) fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The instant the last cancel was observed by a handler of this process.
static LAST_CANCEL_NS: AtomicU64 = AtomicU64::new(0);

/// Runs a streamed-call server on `path` until killed (the child of `bench`).
pub fn run_server(transport: StreamedTransport, path: &Path) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match transport {
            StreamedTransport::Ringbell => serve_ringbell(path).await,
            StreamedTransport::Uds => serve_uds(path).await,
            #[cfg(feature = "peers")]
            StreamedTransport::Tonic => ringbell_bench_peers::grpc::serve(path, ITEM_SIZE)
                .await
                .context(format_args!("serving gRPC on {}", path.display())),
        }
    })
}

async fn serve_ringbell(path: &Path) -> Result<(), CliError> {
    let config = ringbell::ServerConfig::default().max_connections(256);
    let server = ringbell::tokio::AsyncServer::bind(path, config)
        .context(format_args!("binding {}", path.display()))?;
    server.serve_calls(handle_ringbell_call).await;
    Ok(())
}

async fn handle_ringbell_call(mut call: ringbell::tokio::Call) -> Result<Vec<u8>, ringbell::Error> {
    let item = [0xa5u8; ITEM_SIZE];
    let (verb, count) = parse_request(call.request()).unwrap_or((0, 0));
    match verb {
        v if v == Verb::Count as u8 => {
            for _ in 0..count {
                call.send(&item).await?;
            }
            Ok(Vec::new())
        }
        v if v == Verb::Forever as u8 => loop {
            // The send that fails is the observation of the cancel.
            if let Err(error) = call.send(&item).await {
                if matches!(error, ringbell::Error::Cancelled) {
                    LAST_CANCEL_NS.store(monotonic_ns(), Ordering::Relaxed);
                }
                return Err(error);
            }
        },
        v if v == Verb::LastCancel as u8 => Ok(LAST_CANCEL_NS
            .load(Ordering::Relaxed)
            .to_le_bytes()
            .to_vec()),
        _ => Ok(Vec::new()),
    }
}

async fn serve_uds(path: &Path) -> Result<(), CliError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).context(format_args!("binding {}", path.display()))?;
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        tokio::spawn(async move {
            let _ = serve_uds_connection(stream).await;
        });
    }
}

async fn serve_uds_connection(stream: UnixStream) -> std::io::Result<()> {
    let (mut read, mut write) = stream.into_split();
    let (requests, mut next_request) = tokio::sync::mpsc::unbounded_channel();
    let cancelled = Arc::new(AtomicBool::new(false));
    // The reader takes frames as they come: a request goes to the writer, a cancel (an
    // empty frame) raises the flag the writer checks between items.
    let reader_cancelled = cancelled.clone();
    tokio::spawn(async move {
        let mut frame = Vec::new();
        while read_frame(&mut read, &mut frame).await.is_ok() {
            if frame.is_empty() {
                reader_cancelled.store(true, Ordering::Relaxed);
            } else if requests.send(frame.clone()).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::with_capacity(64 << 10);
    while let Some(frame) = next_request.recv().await {
        let (verb, count) = parse_request(&frame).unwrap_or((0, 0));
        if verb == Verb::LastCancel as u8 {
            let last = LAST_CANCEL_NS.load(Ordering::Relaxed);
            write_frame(&mut write, &last.to_le_bytes()).await?;
            continue;
        }
        cancelled.store(false, Ordering::Relaxed);
        let forever = verb == Verb::Forever as u8;
        let mut sent = 0u32;
        let end = loop {
            if cancelled.load(Ordering::Relaxed) {
                let observed = monotonic_ns();
                LAST_CANCEL_NS.store(observed, Ordering::Relaxed);
                break observed.to_le_bytes().to_vec();
            }
            if !forever && sent == count {
                break Vec::new();
            }
            // A few items per write, as a buffered writer would; the cancel check stays
            // between items' writes.
            out.clear();
            let batch = if forever { 16 } else { (count - sent).min(16) };
            for _ in 0..batch {
                out.extend_from_slice(&(ITEM_SIZE as u32).to_le_bytes());
                out.extend_from_slice(&[0xa5u8; ITEM_SIZE]);
            }
            write.write_all(&out).await?;
            sent += batch;
            // Lets the reader see a cancel on a busy single-threaded runtime.
            tokio::task::yield_now().await;
        };
        write_frame(&mut write, &end).await?;
    }
    Ok(())
}

async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    frame: &mut Vec<u8>,
) -> std::io::Result<()> {
    let len = reader.read_u32_le().await? as usize;
    frame.resize(len, 0);
    reader.read_exact(frame).await?;
    Ok(())
}

async fn write_frame<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    frame.extend_from_slice(bytes);
    writer.write_all(&frame).await
}

/// What `bench` reports of one transport's streamed calls.
#[derive(Debug, Clone, Copy)]
pub struct StreamedFigures {
    /// One stream: items per second, and the p50 time from the request to the first item.
    pub items_per_second: f64,
    pub first_item_p50_us: f64,
    /// The p50 of a unary call ([`Verb::LastCancel`]), over as many calls as first items.
    pub unary_p50_us: f64,
    /// `concurrent` streams at once: items per second over all of them.
    pub concurrent_items_per_second: f64,
    /// From the client's cancel to the handler's observation of it, while other streams
    /// keep the server busy.
    pub cancel_p50_us: f64,
    pub cancel_p99_us: f64,
}

/// How much a streamed-call measurement does.
#[derive(Debug, Clone, Copy)]
pub struct StreamedPlan {
    /// Items in the one-stream run.
    pub items: u32,
    /// Calls whose first item is timed.
    pub first_item_calls: u32,
    /// Streams at once, and items each, in the concurrent run.
    pub concurrent: u32,
    pub concurrent_items: u32,
    /// Cancels timed, and the streams that keep the server busy meanwhile.
    pub cancels: u32,
    pub busy_streams: u32,
}

/// Starts a server child for `transport` on `launcher`'s peer CPU and measures it from
/// this process.
pub fn measure(
    transport: StreamedTransport,
    plan: StreamedPlan,
    launcher: &PeerLauncher,
    dir: &Path,
) -> Result<StreamedFigures, CliError> {
    let path = dir.join(format!("streamed-{}.sock", transport.arg()));
    let args: Vec<OsString> = vec![
        "__streamed-server".into(),
        "--transport".into(),
        transport.arg().into(),
        path.clone().into(),
    ];
    let mut server = PeerProcess::spawn("streamed-call server", launcher.command(&args))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // The streams are drained by local tasks of this one thread, pinned beside the server.
    let figures = tokio::task::LocalSet::new().block_on(&runtime, async {
        match transport {
            StreamedTransport::Ringbell => measure_ringbell(&path, plan).await,
            StreamedTransport::Uds => measure_uds(&path, plan).await,
            #[cfg(feature = "peers")]
            StreamedTransport::Tonic => grpc::measure(&path, plan).await,
        }
    });
    server.check_alive()?;
    figures
}

pub(crate) async fn wait_for_socket(path: &Path) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(CliError::new(format!(
                "the streamed-call server did not listen on {} within 10 s",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

pub(crate) fn percentile_us(samples: &mut [u64], quantile: f64) -> f64 {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * quantile).round() as usize;
    samples
        .get(index)
        .map_or(f64::NAN, |&ns| ns as f64 / 1_000.0)
}

async fn ringbell_client(path: &Path) -> Result<ringbell::tokio::Client, CliError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ringbell::tokio::Client::connect(path, ringbell::ClientConfig::default()).await {
            Ok(client) => return Ok(client),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(error) => return Err(CliError::new(format!("connecting: {error}"))),
        }
    }
}

async fn ringbell_stream(
    client: &ringbell::tokio::Client,
    verb: Verb,
    count: u32,
) -> Result<ringbell::tokio::ResponseStream, CliError> {
    client
        .call_stream(&request(verb, count))
        .await
        .map_err(|error| CliError::new(format!("starting a streamed call: {error}")))
}

async fn drain_ringbell(mut stream: ringbell::tokio::ResponseStream) -> Result<u64, CliError> {
    let mut items = 0;
    while let Some(item) = stream.next().await {
        item.map_err(|error| CliError::new(format!("streamed item: {error}")))?;
        items += 1;
    }
    stream
        .reply()
        .await
        .map_err(|error| CliError::new(format!("streamed reply: {error}")))?;
    Ok(items)
}

async fn measure_ringbell(path: &Path, plan: StreamedPlan) -> Result<StreamedFigures, CliError> {
    let client = ringbell_client(path).await?;
    let mut first_items = Vec::new();
    for _ in 0..plan.first_item_calls {
        let started = Instant::now();
        let mut stream = ringbell_stream(&client, Verb::Count, 1).await?;
        stream.next().await;
        first_items.push(started.elapsed().as_nanos() as u64);
        drain_ringbell(stream).await?;
    }
    let mut unary = Vec::new();
    for _ in 0..plan.first_item_calls {
        let started = Instant::now();
        client
            .call(&request(Verb::LastCancel, 0))
            .await
            .map_err(|error| CliError::new(format!("a unary call: {error}")))?;
        unary.push(started.elapsed().as_nanos() as u64);
    }
    let started = Instant::now();
    let stream = ringbell_stream(&client, Verb::Count, plan.items).await?;
    let items = drain_ringbell(stream).await?;
    let items_per_second = items as f64 / started.elapsed().as_secs_f64();

    let mut clients = Vec::new();
    for _ in 0..plan.concurrent {
        clients.push(ringbell_client(path).await?);
    }
    let started = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    for client in &clients {
        let stream = ringbell_stream(client, Verb::Count, plan.concurrent_items).await?;
        streams.spawn_local(drain_ringbell(stream));
    }
    let mut total = 0;
    while let Some(items) = streams.join_next().await {
        total += items.map_err(|error| CliError::new(error.to_string()))??;
    }
    let concurrent_items_per_second = total as f64 / started.elapsed().as_secs_f64();

    // The busy streams run on their own connections, drained by tasks of this runtime.
    let mut busy = tokio::task::JoinSet::new();
    for client in clients.iter().take(plan.busy_streams as usize) {
        let mut stream = ringbell_stream(client, Verb::Forever, 0).await?;
        busy.spawn_local(async move { while let Some(Ok(_)) = stream.next().await {} });
    }
    let mut cancels = Vec::new();
    for _ in 0..plan.cancels {
        let mut stream = ringbell_stream(&client, Verb::Forever, 0).await?;
        stream.next().await;
        let cancelled_at = monotonic_ns();
        drop(stream);
        let observed = loop {
            let reply = client
                .call(&request(Verb::LastCancel, 0))
                .await
                .map_err(|error| CliError::new(format!("asking for the cancel: {error}")))?;
            let observed = u64::from_le_bytes(reply[..8].try_into().unwrap_or([0; 8]));
            if observed >= cancelled_at {
                break observed;
            }
            tokio::task::yield_now().await;
        };
        cancels.push(observed - cancelled_at);
    }
    busy.abort_all();
    Ok(StreamedFigures {
        items_per_second,
        first_item_p50_us: percentile_us(&mut first_items, 0.5),
        unary_p50_us: percentile_us(&mut unary, 0.5),
        concurrent_items_per_second,
        cancel_p50_us: percentile_us(&mut cancels, 0.5),
        cancel_p99_us: percentile_us(&mut cancels, 0.99),
    })
}

/// One Unix-socket connection, one call at a time.
struct UdsCall {
    stream: UnixStream,
    frame: Vec<u8>,
}

impl UdsCall {
    async fn connect(path: &Path) -> Result<UdsCall, CliError> {
        let stream = UnixStream::connect(path)
            .await
            .context(format_args!("connecting to {}", path.display()))?;
        Ok(UdsCall {
            stream,
            frame: Vec::new(),
        })
    }

    async fn start(&mut self, verb: Verb, count: u32) -> Result<(), CliError> {
        write_frame(&mut self.stream, &request(verb, count))
            .await
            .context("sending a request")
    }

    /// The next item, or `None` at the end (whose frame is left in `self.frame`).
    async fn next(&mut self) -> Result<Option<()>, CliError> {
        read_frame(&mut self.stream, &mut self.frame)
            .await
            .context("reading an item")?;
        Ok((self.frame.len() == ITEM_SIZE).then_some(()))
    }

    async fn drain(&mut self) -> Result<u64, CliError> {
        let mut items = 0;
        while self.next().await?.is_some() {
            items += 1;
        }
        Ok(items)
    }

    /// Cancels the call in flight and returns the instant the server observed it.
    async fn cancel(&mut self) -> Result<u64, CliError> {
        write_frame(&mut self.stream, &[])
            .await
            .context("sending a cancel")?;
        self.drain().await?;
        Ok(u64::from_le_bytes(
            self.frame
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 8]),
        ))
    }
}

async fn measure_uds(path: &Path, plan: StreamedPlan) -> Result<StreamedFigures, CliError> {
    wait_for_socket(path).await?;
    let mut call = UdsCall::connect(path).await?;
    let mut first_items = Vec::new();
    for _ in 0..plan.first_item_calls {
        let started = Instant::now();
        call.start(Verb::Count, 1).await?;
        call.next().await?;
        first_items.push(started.elapsed().as_nanos() as u64);
        call.drain().await?;
    }
    let mut unary = Vec::new();
    for _ in 0..plan.first_item_calls {
        let started = Instant::now();
        call.start(Verb::LastCancel, 0).await?;
        call.drain().await?;
        unary.push(started.elapsed().as_nanos() as u64);
    }
    let started = Instant::now();
    call.start(Verb::Count, plan.items).await?;
    let items = call.drain().await?;
    let items_per_second = items as f64 / started.elapsed().as_secs_f64();

    let mut calls = Vec::new();
    for _ in 0..plan.concurrent {
        calls.push(UdsCall::connect(path).await?);
    }
    let started = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    for mut concurrent in calls.drain(..) {
        concurrent.start(Verb::Count, plan.concurrent_items).await?;
        streams.spawn_local(async move {
            let items = concurrent.drain().await;
            (concurrent, items)
        });
    }
    let mut total = 0;
    while let Some(joined) = streams.join_next().await {
        let (concurrent, items) = joined.map_err(|error| CliError::new(error.to_string()))?;
        total += items?;
        calls.push(concurrent);
    }
    let concurrent_items_per_second = total as f64 / started.elapsed().as_secs_f64();

    let mut busy = tokio::task::JoinSet::new();
    for mut busy_call in calls.drain(..).take(plan.busy_streams as usize) {
        busy_call.start(Verb::Forever, 0).await?;
        busy.spawn_local(async move { while let Ok(Some(())) = busy_call.next().await {} });
    }
    let mut cancels = Vec::new();
    for _ in 0..plan.cancels {
        call.start(Verb::Forever, 0).await?;
        call.next().await?;
        let cancelled_at = monotonic_ns();
        let observed = call.cancel().await?;
        cancels.push(observed.saturating_sub(cancelled_at));
    }
    busy.abort_all();
    Ok(StreamedFigures {
        items_per_second,
        first_item_p50_us: percentile_us(&mut first_items, 0.5),
        unary_p50_us: percentile_us(&mut unary, 0.5),
        concurrent_items_per_second,
        cancel_p50_us: percentile_us(&mut cancels, 0.5),
        cancel_p99_us: percentile_us(&mut cancels, 0.99),
    })
}
