//! `ringbell stress --pattern stream`: many concurrent streamed calls, a seeded random
//! subset of them cancelled part-way by dropping the stream, every item of every other
//! stream checked, and the server's handlers counted as they observe their cancels.
//!
//! First step: the server (`AsyncServer::serve_calls`) and the clients run in this one
//! process, on one tokio runtime, over real ringbell connections; moving them into
//! `__stress-server` / `__stress-client` processes as the echo pattern does is still to
//! do.
//!
//! A stream's request names the stream, its item count and item size; its items are
//! derived from those alone ([`expected_item`]), so the client can check each one byte
//! for byte, and the reply says `done <count>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use ringbell::tokio::{AsyncServer, Call, CallOptions, Client};
use ringbell::{ClientConfig, Error, ServerConfig};
use tokio::task::JoinSet;

use crate::error::CliError;
use crate::temp_dir::TempDir;

/// Items a stream may have in flight: small, so that a cancelled stream's handler is
/// still blocked in `send` when the cancel arrives, and must observe it.
const WINDOW: u16 = 4;

/// How long the server has, after the last stream, to observe every cancel.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// The request asking the server for the cancels its handlers observed.
const STATS_REQUEST: &[u8] = b"stats";

/// A fault the stream server injects on purpose, to show that the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamFault {
    /// Leave out item 1 of stream 0.
    Skip,
    /// Send item 1 of stream 0 twice.
    Duplicate,
}

/// What one stream run does.
#[derive(Debug, Clone)]
pub(super) struct StreamPlan {
    pub(super) streams: u64,
    pub(super) connections: u64,
    pub(super) item_size: usize,
    pub(super) seed: u64,
    pub(super) fault: Option<StreamFault>,
    pub(super) timeout: Duration,
}

impl StreamPlan {
    pub(super) fn new(
        quick: bool,
        seed: u64,
        fault: Option<StreamFault>,
        timeout: Duration,
    ) -> Self {
        StreamPlan {
            streams: if quick { 64 } else { 400 },
            connections: if quick { 4 } else { 16 },
            item_size: 64,
            seed,
            fault,
            timeout,
        }
    }
}

/// One stream's request, and what its client does with it.
#[derive(Debug, Clone, Copy)]
struct StreamSpec {
    stream: u64,
    count: u32,
    item_size: u32,
    /// Drop the stream after this many items, if set.
    cancel_after: Option<u32>,
}

impl StreamSpec {
    /// Draws stream `stream`'s count and cancel point from the run's seed: the same seed
    /// gives the same streams and cancels.
    fn draw(stream: u64, plan: &StreamPlan) -> Self {
        let mut random = mix(plan.seed ^ mix(stream));
        let count = 16 + (random % 49) as u32;
        random = mix(random);
        // About a quarter cancelled, at a point that leaves more than a window of items
        // unsent, so that the handler is still sending when the cancel arrives.
        // The stream a fault targets is never cancelled, so the fault always shows.
        let faulted = plan.fault.is_some() && stream == 0;
        // And not before its first item: a call cancelled before a handler takes it
        // never reaches one, so could not be observed.
        let cancel_after = (random.is_multiple_of(4) && !faulted)
            .then(|| 1 + (mix(random) % u64::from(count - u32::from(WINDOW) - 3)) as u32);
        StreamSpec {
            stream,
            count,
            item_size: plan.item_size as u32,
            cancel_after,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut request = Vec::with_capacity(16);
        request.extend_from_slice(&self.stream.to_le_bytes());
        request.extend_from_slice(&self.count.to_le_bytes());
        request.extend_from_slice(&self.item_size.to_le_bytes());
        request
    }

    fn decode(request: &[u8]) -> Option<(u64, u32, u32)> {
        if request.len() != 16 {
            return None;
        }
        let stream = u64::from_le_bytes(request[0..8].try_into().ok()?);
        let count = u32::from_le_bytes(request[8..12].try_into().ok()?);
        let item_size = u32::from_le_bytes(request[12..16].try_into().ok()?);
        (count <= 1 << 16 && item_size <= 1 << 16).then_some((stream, count, item_size))
    }
}

/// SplitMix64's finaliser: a cheap, well-spread hash of one word.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Item `index` of stream `stream`: the stream id, the index, then a payload that
/// depends on both, so that a misrouted or shifted item cannot pass.
fn expected_item(stream: u64, index: u32, item_size: u32) -> Vec<u8> {
    let mut item = Vec::with_capacity(12 + item_size as usize);
    item.extend_from_slice(&stream.to_le_bytes());
    item.extend_from_slice(&index.to_le_bytes());
    let mut word = mix(stream ^ (u64::from(index) << 40));
    for byte in 0..item_size {
        if byte % 8 == 0 {
            word = mix(word);
        }
        item.push((word >> ((byte % 8) * 8)) as u8);
    }
    item
}

/// The server's handler: streams the request's items, or answers `stats`.
async fn handle(
    mut call: Call,
    cancels_seen: Arc<AtomicU64>,
    fault: Option<StreamFault>,
) -> Result<Vec<u8>, String> {
    if call.request() == STATS_REQUEST {
        return Ok(cancels_seen.load(Ordering::SeqCst).to_string().into_bytes());
    }
    let (stream, count, item_size) =
        StreamSpec::decode(call.request()).ok_or("malformed stream request")?;
    for index in 0..count {
        let faulty = stream == 0 && index == 1;
        if faulty && fault == Some(StreamFault::Skip) {
            continue;
        }
        let item = expected_item(stream, index, item_size);
        let sends = if faulty && fault == Some(StreamFault::Duplicate) {
            2
        } else {
            1
        };
        for _ in 0..sends {
            match call.send(&item).await {
                Ok(()) => {}
                Err(Error::Cancelled) => {
                    cancels_seen.fetch_add(1, Ordering::SeqCst);
                    return Err("cancelled".into());
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    }
    Ok(format!("done {count}").into_bytes())
}

/// What one stream's client saw.
#[derive(Debug, Default)]
struct StreamOutcome {
    items: u64,
    cancelled: bool,
}

/// Reads and checks every item of one stream, and its reply, or drops it at its cancel
/// point.
async fn run_stream(client: Arc<Client>, spec: StreamSpec) -> Result<StreamOutcome, String> {
    let name = format!("stream {}", spec.stream);
    let mut stream = client
        .call_stream_with(&spec.encode(), CallOptions::default().window(WINDOW))
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

/// Runs the stream pattern and prints its summary.
pub(super) fn run(plan: &StreamPlan) -> Result<(), CliError> {
    println!(
        "ringbell stress --pattern stream: {} streams over {} connections, window {WINDOW}, \
         {}-byte items, about a quarter cancelled at random; seed {}",
        plan.streams, plan.connections, plan.item_size, plan.seed
    );
    let workspace = TempDir::create("ringbell-stress-stream")?;
    let path = workspace.path().join("stream.sock");
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|error| CliError::new(format!("starting a tokio runtime failed: {error}")))?;
    let started = Instant::now();
    let result = runtime.block_on(async {
        tokio::time::timeout(plan.timeout, drive(plan, &path))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the stream run did not finish within --timeout {} s",
                    plan.timeout.as_secs()
                ))
            })
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let summary = result.map_err(|why| CliError::new(format!("stress test failed: {why}")))?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "streams: {} ({} completed, {} cancelled); items verified: {}; cancels requested: \
         {}, observed by the server: {}; {:.0} items/s; finished in {elapsed:.1} s",
        plan.streams,
        plan.streams - summary.cancels_requested,
        summary.cancels_requested,
        summary.items,
        summary.cancels_requested,
        summary.cancels_observed,
        summary.items as f64 / elapsed.max(1e-9),
    );
    println!("PASS: every item of every stream not cancelled arrived once, in order, intact");
    Ok(())
}

struct StreamSummary {
    items: u64,
    cancels_requested: u64,
    cancels_observed: u64,
}

async fn drive(plan: &StreamPlan, path: &std::path::Path) -> Result<StreamSummary, String> {
    let server = AsyncServer::bind(path, ServerConfig::default())
        .map_err(|error| format!("binding the stream server failed: {error}"))?;
    let cancels_seen = Arc::new(AtomicU64::new(0));
    let fault = plan.fault;
    let seen = Arc::clone(&cancels_seen);
    let serving =
        tokio::spawn(server.serve_calls(move |call| handle(call, Arc::clone(&seen), fault)));

    let mut clients = Vec::new();
    for _ in 0..plan.connections {
        let client = Client::connect(path, ClientConfig::default())
            .await
            .map_err(|error| format!("connecting to the stream server failed: {error}"))?;
        clients.push(Arc::new(client));
    }
    let mut streams = JoinSet::new();
    for stream in 0..plan.streams {
        let spec = StreamSpec::draw(stream, plan);
        let client = Arc::clone(&clients[(stream % plan.connections) as usize]);
        streams.spawn(run_stream(client, spec));
    }
    let mut summary = StreamSummary {
        items: 0,
        cancels_requested: 0,
        cancels_observed: 0,
    };
    let mut failures = Vec::new();
    while let Some(joined) = streams.join_next().await {
        match joined {
            Ok(Ok(outcome)) => {
                summary.items += outcome.items;
                summary.cancels_requested += u64::from(outcome.cancelled);
            }
            Ok(Err(why)) => failures.push(why),
            Err(error) => failures.push(format!("a stream task panicked: {error}")),
        }
    }
    if !failures.is_empty() {
        failures.sort();
        serving.abort();
        return Err(failures.join("; "));
    }
    // The server's handlers observe their cancels asynchronously: ask until they all have.
    let grace_ends = Instant::now() + CANCEL_GRACE;
    loop {
        let reply = clients[0]
            .call(STATS_REQUEST)
            .await
            .map_err(|error| format!("the stats call failed: {error}"))?;
        summary.cancels_observed = String::from_utf8_lossy(&reply).parse().unwrap_or(u64::MAX);
        if summary.cancels_observed == summary.cancels_requested || Instant::now() >= grace_ends {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    serving.abort();
    if summary.cancels_observed != summary.cancels_requested {
        return Err(format!(
            "{} cancels requested but the server's handlers observed {} within {} s",
            summary.cancels_requested,
            summary.cancels_observed,
            CANCEL_GRACE.as_secs()
        ));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_differ_by_stream_and_index() {
        assert_ne!(expected_item(0, 1, 16), expected_item(1, 1, 16));
        assert_ne!(expected_item(0, 1, 16)[12..], expected_item(0, 2, 16)[12..]);
    }

    #[test]
    fn cancel_points_leave_more_than_a_window_unsent() {
        let plan = StreamPlan::new(false, 7, None, Duration::from_secs(1));
        for stream in 0..plan.streams {
            let spec = StreamSpec::draw(stream, &plan);
            if let Some(at) = spec.cancel_after {
                assert!(
                    at >= 1 && at + u32::from(WINDOW) + 2 <= spec.count,
                    "{spec:?}"
                );
            }
        }
    }
}
