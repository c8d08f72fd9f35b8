//! Streamed calls across real processes: `AsyncServer::serve_calls` in a child process,
//! `Client` in this one (and, for a client's death, in another child). Streams in order
//! under a small window, cancellation by drop, by deadline and by the client's death,
//! the grace after which an ignoring handler is dropped, metadata, errors in the middle
//! of a stream, the server's death mid-stream, two-way calls, and a slow stream beside a
//! unary call. Each test has a watchdog; none asserts on timing (the cancel latencies are
//! printed, for the record).

#![cfg(feature = "tokio")]

#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{param, report, shared_test, ChildProcess, SocketPath};
use ringbell::tokio::{AsyncServer, Call, CallOptions, Client};
use ringbell::{ClientConfig, Error, ServerConfig};

const WATCHDOG: Duration = Duration::from_secs(120);

/// The server child's cancel grace: short, so the grace test is quick.
const GRACE: Duration = Duration::from_millis(300);

#[test]
fn child_entry() {
    common::run_child_entry(run_role);
}

fn run_role(role: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|error| error.to_string())?;
    match role {
        "server" => runtime.block_on(role_server()),
        "streaming_client" => runtime.block_on(role_streaming_client()),
        other => Err(format!("unknown role {other}")),
    }
}

#[cfg(unix)]
fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Windows: the wall clock, which both processes read too; it only feeds a printed
/// latency (a step back shows as 0), never an assertion.
#[cfg(windows)]
fn monotonic_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// What the server's handlers saw, for the `stats` call: cancellations observed, when the
/// last was observed (CLOCK_MONOTONIC, shared by the processes of one machine), and
/// handlers dropped by the grace.
static CANCELS_SEEN: AtomicU64 = AtomicU64::new(0);
static LAST_CANCEL_NS: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn saw_cancel() {
    LAST_CANCEL_NS.store(monotonic_ns(), Ordering::SeqCst);
    CANCELS_SEEN.fetch_add(1, Ordering::SeqCst);
}

/// Counts a handler's future dropped before it returned.
struct DropCounter {
    returned: bool,
}

impl Drop for DropCounter {
    fn drop(&mut self) {
        if !self.returned {
            DROPPED.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The server: each call's first word says what to do.
async fn role_server() -> Result<(), String> {
    let config = ServerConfig::default().cancel_grace(GRACE);
    let server =
        AsyncServer::bind(param("RB_SOCKET"), config).map_err(|error| error.to_string())?;
    report("listening");
    server.serve_calls(handle).await;
    Ok(())
}

async fn handle(mut call: Call) -> Result<Vec<u8>, String> {
    let request = String::from_utf8_lossy(call.request()).into_owned();
    let mut words = request.split(' ');
    let verb = words.next().unwrap_or("");
    let number: u32 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    match verb {
        // N numbered messages, then "done N".
        "count" => {
            for i in 0..number {
                call.send(&i.to_le_bytes())
                    .await
                    .map_err(|error| error.to_string())?;
            }
            Ok(format!("done {number}").into_bytes())
        }
        // Items of the sizes listed, item i filled with the byte i; then their count.
        "sizes" => {
            let sizes: Vec<usize> = request
                .split(' ')
                .skip(1)
                .filter_map(|n| n.parse().ok())
                .collect();
            for (i, size) in sizes.iter().enumerate() {
                call.send(&vec![i as u8; *size])
                    .await
                    .map_err(|error| error.to_string())?;
            }
            Ok(format!("sent {}", sizes.len()).into_bytes())
        }
        // Messages until the client goes: the send that fails is the observation.
        "forever" => {
            let mut i = 0u32;
            loop {
                match call.send(&i.to_le_bytes()).await {
                    Ok(()) => i += 1,
                    Err(Error::Cancelled) => {
                        saw_cancel();
                        return Err("cancelled".into());
                    }
                    Err(other) => return Err(other.to_string()),
                }
            }
        }
        // Nothing, until cancelled.
        "wait" => {
            call.cancelled().await;
            saw_cancel();
            assert!(call.is_cancelled());
            Err("cancelled".into())
        }
        // Ignores the cancel: its future is dropped after the grace.
        "ignore" => {
            let mut counter = DropCounter { returned: false };
            tokio::time::sleep(Duration::from_secs(3600)).await;
            counter.returned = true;
            Ok(Vec::new())
        }
        "meta" => Ok(call
            .metadata()
            .get("request-id")
            .map_or(b"none".to_vec(), <[u8]>::to_vec)),
        "deadline" => Ok(match call.deadline() {
            Some(_) => b"has a deadline".to_vec(),
            None => b"none".to_vec(),
        }),
        "fail" => {
            for i in 0..number {
                call.send(&i.to_le_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Err(format!("failed after {number}"))
        }
        "panic" => {
            for i in 0..number {
                call.send(&i.to_le_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            panic!("the handler panics after {number}");
        }
        // Two-way: each message back in upper case, then how many there were.
        "upper" => {
            let mut seen = 0u32;
            while let Some(message) = call.recv().await {
                call.send(&message.to_ascii_uppercase())
                    .await
                    .map_err(|e| e.to_string())?;
                seen += 1;
            }
            Ok(format!("{seen} messages").into_bytes())
        }
        "unary-send" => match call.send(b"x").await {
            Err(error) => Err(error.to_string()),
            Ok(()) => Ok(b"the send went through".to_vec()),
        },
        "stats" => Ok(format!(
            "{} {} {}",
            CANCELS_SEEN.load(Ordering::SeqCst),
            LAST_CANCEL_NS.load(Ordering::SeqCst),
            DROPPED.load(Ordering::SeqCst)
        )
        .into_bytes()),
        other => Err(format!("unknown verb {other:?}")),
    }
}

/// A client that opens an endless stream, reads a little of it, and is then killed.
async fn role_streaming_client() -> Result<(), String> {
    let client = Client::connect(param("RB_SOCKET"), ClientConfig::default())
        .await
        .map_err(|error| error.to_string())?;
    let mut stream = client
        .call_stream(b"forever")
        .await
        .map_err(|error| error.to_string())?;
    for _ in 0..10 {
        stream
            .next()
            .await
            .ok_or("the stream ended")?
            .map_err(|error| error.to_string())?;
    }
    report("streaming");
    common::sleep_until_killed()
}

/// A server child and a runtime to call it from.
struct Fixture {
    server: ChildProcess,
    socket: SocketPath,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let socket = SocketPath::new(name);
        let mut server = ChildProcess::spawn("server", &[("RB_SOCKET", socket.param())]);
        server.expect_line("listening");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Fixture {
            server,
            socket,
            runtime,
        }
    }

    fn run<F: std::future::Future>(&self, work: impl FnOnce(Client) -> F) -> F::Output {
        self.runtime.block_on(async {
            let client = Client::connect(self.socket.path(), ClientConfig::default())
                .await
                .unwrap();
            tokio::time::timeout(WATCHDOG, work(client))
                .await
                .expect("watchdog")
        })
    }
}

/// The server's counters: (cancels seen, when the last was seen, handlers dropped).
async fn stats(client: &Client) -> (u64, u64, u64) {
    let reply = client.call(b"stats").await.unwrap();
    let text = String::from_utf8(reply).unwrap();
    let fields: Vec<u64> = text.split(' ').map(|n| n.parse().unwrap()).collect();
    (fields[0], fields[1], fields[2])
}

/// Polls `stats` until `ready` holds; the watchdog bounds it.
async fn stats_when(client: &Client, ready: impl Fn((u64, u64, u64)) -> bool) -> (u64, u64, u64) {
    loop {
        let now = stats(client).await;
        if ready(now) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A window (in bytes) that lets `items` items of `size` bytes be in flight.
fn items_window(items: u32, size: u32) -> u32 {
    items * (size + ringbell::tokio::ITEM_OVERHEAD)
}

fn as_number(message: &[u8]) -> u32 {
    u32::from_le_bytes(message.try_into().expect("4 bytes"))
}

#[test]
fn streamed_messages_arrive_in_order_then_the_reply_under_any_window() {
    let _test = shared_test("streaming_order");
    let fixture = Fixture::new("stream-order");
    fixture.run(|client| async move {
        for window in [1u32, 2, 32, 256, 64 << 10, 1 << 20] {
            let options = CallOptions::default().window_bytes(window);
            let mut stream = client
                .call_stream_with(b"count 2000", options)
                .await
                .unwrap();
            let mut next = 0;
            while let Some(message) = stream.next().await {
                assert_eq!(as_number(&message.unwrap()), next, "window {window}");
                next += 1;
            }
            assert_eq!(next, 2000, "window {window}: the stream ended early");
            assert_eq!(stream.reply().await.unwrap(), b"done 2000");
        }
        // `reply` alone skips what was not read, and `Stream` works as the trait says.
        let stream = client.call_stream(b"count 100").await.unwrap();
        assert_eq!(stream.reply().await.unwrap(), b"done 100");
        let mut stream = client.call_stream(b"count 3").await.unwrap();
        let mut seen = Vec::new();
        while let Some(message) = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)
        })
        .await
        {
            seen.push(as_number(&message.unwrap()));
        }
        assert_eq!(seen, [0, 1, 2]);
    });
}

/// Items of mixed sizes, some larger than the window, arrive whole and in order: a reader
/// that waits has given back all it took, so an item that needs the whole window is sent
/// once nothing else is in flight (before the fix, a 1-byte item then one larger than the
/// window stalled both sides for ever).
#[test]
fn items_of_mixed_sizes_arrive_under_any_window() {
    let _test = shared_test("streaming_mixed_sizes");
    let fixture = Fixture::new("stream-sizes");
    fixture.run(|client| async move {
        let cases: [&[usize]; 4] = [
            &[1, 70_000, 1],
            &[20_000, 50_000],
            &[0, 65_535, 65_536, 16_379, 16_380, 3, 200_000, 0],
            &[5; 300],
        ];
        for window in [
            1u32,
            1 << 10,
            ringbell::tokio::DEFAULT_STREAM_WINDOW,
            1 << 20,
        ] {
            for sizes in cases {
                let request = sizes.iter().fold(String::from("sizes"), |request, size| {
                    format!("{request} {size}")
                });
                let options = CallOptions::default().window_bytes(window);
                let mut stream = client
                    .call_stream_with(request.as_bytes(), options)
                    .await
                    .unwrap();
                for (i, size) in sizes.iter().enumerate() {
                    let item = stream.next().await.unwrap().unwrap();
                    assert_eq!(item.len(), *size, "window {window}, item {i}'s length");
                    assert!(
                        item.iter().all(|&byte| byte == i as u8),
                        "window {window}, item {i}'s bytes"
                    );
                }
                assert_eq!(
                    stream.reply().await.unwrap(),
                    format!("sent {}", sizes.len()).as_bytes()
                );
            }
        }
    });
}

#[test]
fn many_concurrent_streams_each_get_their_own_messages() {
    let _test = shared_test("streaming_concurrent");
    let fixture = Fixture::new("stream-many");
    fixture.run(|client| async move {
        let mut tasks = Vec::new();
        for task in 0..100u32 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let count = 50 + task;
                let request = format!("count {count}");
                let options = CallOptions::default().window_bytes(items_window(4, 4));
                let mut stream = client
                    .call_stream_with(request.as_bytes(), options)
                    .await
                    .unwrap();
                let mut next = 0;
                while let Some(message) = stream.next().await {
                    assert_eq!(as_number(&message.unwrap()), next);
                    next += 1;
                }
                assert_eq!(next, count);
                assert_eq!(
                    stream.reply().await.unwrap(),
                    format!("done {count}").as_bytes()
                );
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn dropping_a_stream_cancels_its_handler_and_the_connection_goes_on() {
    let _test = shared_test("streaming_drop");
    let fixture = Fixture::new("stream-drop");
    fixture.run(|client| async move {
        let mut latencies = Vec::new();
        for round in 1..=20u64 {
            let mut stream = client.call_stream(b"forever").await.unwrap();
            for _ in 0..5 {
                stream.next().await.unwrap().unwrap();
            }
            let dropped_at = monotonic_ns();
            drop(stream);
            let (seen, at, _) = stats_when(&client, |(seen, _, _)| seen >= round).await;
            assert_eq!(seen, round, "a cancel was seen twice, or not at all");
            latencies.push(at.saturating_sub(dropped_at));
        }
        latencies.sort_unstable();
        println!(
            "drop to handler's observation over 20 cancels: p50 {} µs, max {} µs",
            latencies[10] / 1000,
            latencies[19] / 1000
        );
        // A unary call's future dropped cancels too.
        let before = stats(&client).await.0;
        let waiting = tokio::time::timeout(Duration::from_millis(50), client.call(b"wait")).await;
        assert!(waiting.is_err(), "`wait` answered");
        stats_when(&client, |(seen, _, _)| seen > before).await;
        assert_eq!(client.call(b"meta").await.unwrap(), b"none");
    });
}

#[test]
fn a_deadline_travels_cancels_the_handler_and_times_the_call_out() {
    let _test = shared_test("streaming_deadline");
    let fixture = Fixture::new("stream-deadline");
    fixture.run(|client| async move {
        let options = CallOptions::default().timeout(Duration::from_secs(30));
        assert_eq!(
            client.call_with(b"deadline", options).await.unwrap(),
            b"has a deadline"
        );
        assert_eq!(client.call(b"deadline").await.unwrap(), b"none");
        let before = stats(&client).await.0;
        let options = CallOptions::default().timeout(Duration::from_millis(100));
        let result = client.call_with(b"wait", options.clone()).await;
        assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
        stats_when(&client, |(seen, _, _)| seen > before).await;
        // A stream's timeout ends it with `Timeout` after the messages that came in time.
        let before = stats(&client).await.0;
        let mut stream = client.call_stream_with(b"wait", options).await.unwrap();
        assert!(matches!(stream.next().await, Some(Err(Error::Timeout))));
        assert!(stream.next().await.is_none());
        assert!(matches!(stream.reply().await, Err(Error::Timeout)));
        stats_when(&client, |(seen, _, _)| seen > before).await;
    });
}

#[test]
fn a_handler_that_ignores_its_cancel_is_dropped_after_the_grace() {
    let _test = shared_test("streaming_grace");
    let fixture = Fixture::new("stream-grace");
    fixture.run(|client| async move {
        let before = stats(&client).await.2;
        let ignored = tokio::time::timeout(Duration::from_millis(50), client.call(b"ignore")).await;
        assert!(ignored.is_err());
        // Dropped once the grace (300 ms) has passed; the watchdog bounds the wait.
        stats_when(&client, |(_, _, dropped)| dropped > before).await;
    });
}

#[test]
fn a_dead_clients_streams_are_cancelled_on_the_server() {
    let _test = shared_test("streaming_client_death");
    let fixture = Fixture::new("stream-client-death");
    let mut streamer =
        ChildProcess::spawn("streaming_client", &[("RB_SOCKET", fixture.socket.param())]);
    streamer.expect_line("streaming");
    fixture.run(|client| async move {
        let before = stats(&client).await.0;
        tokio::task::block_in_place(|| streamer.kill());
        stats_when(&client, |(seen, _, _)| seen > before).await;
    });
}

#[test]
fn metadata_reaches_the_handler_and_oversized_sets_are_refused_before_sending() {
    let _test = shared_test("streaming_metadata");
    let fixture = Fixture::new("stream-metadata");
    fixture.run(|client| async move {
        let options = CallOptions::default()
            .metadata("trace", b"abc")
            .metadata("request-id", b"42");
        assert_eq!(client.call_with(b"meta", options).await.unwrap(), b"42");
        let mut options = CallOptions::default();
        for i in 0..=ringbell::tokio::MAX_METADATA_ENTRIES {
            options = options.metadata(format!("k{i}"), b"v");
        }
        let refused = client.call_with(b"meta", options).await;
        assert!(
            matches!(&refused, Err(Error::InvalidConfig { detail }) if detail.contains("entries")),
            "{refused:?}"
        );
        let big = CallOptions::default().metadata("blob", vec![0u8; 5000]);
        assert!(matches!(
            client.call_with(b"meta", big).await,
            Err(Error::InvalidConfig { .. })
        ));
        // The connection is fine.
        assert_eq!(client.call(b"meta").await.unwrap(), b"none");
    });
}

#[test]
fn a_failing_or_panicking_handler_ends_its_stream_with_an_error_after_its_messages() {
    let _test = shared_test("streaming_errors");
    let fixture = Fixture::new("stream-errors");
    fixture.run(|client| async move {
        for (request, text) in [
            (&b"fail 3"[..], "failed after 3"),
            (&b"panic 3"[..], "panicked"),
        ] {
            let mut stream = client.call_stream(request).await.unwrap();
            for expected in 0..3 {
                assert_eq!(as_number(&stream.next().await.unwrap().unwrap()), expected);
            }
            match stream.next().await {
                Some(Err(Error::Handler { message })) => {
                    assert!(message.contains(text), "{message}")
                }
                other => panic!("expected the handler's error, got {other:?}"),
            }
            assert!(stream.next().await.is_none());
            assert!(matches!(stream.reply().await, Err(Error::Handler { .. })));
        }
        // Streaming to a unary call is the handler's error, and says why.
        match client.call(b"unary-send").await {
            Err(Error::Handler { message }) => assert!(message.contains("unary"), "{message}"),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn two_way_calls_stream_both_ways_under_credit() {
    let _test = shared_test("streaming_two_way");
    let fixture = Fixture::new("stream-two-way");
    fixture.run(|client| async move {
        let (mut sender, mut stream) = client
            .open(
                b"upper",
                CallOptions::default().window_bytes(items_window(4, 12)),
            )
            .await
            .unwrap();
        // More than the request window (16) before reading anything back: the sender
        // waits for credit, and the reader task keeps the handler going.
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(message) = stream.next().await {
                seen.push(String::from_utf8(message.unwrap()).unwrap());
            }
            (seen, stream.reply().await.unwrap())
        });
        for i in 0..200 {
            sender
                .send(format!("message {i}").as_bytes())
                .await
                .unwrap();
        }
        sender.finish().await.unwrap();
        let (seen, reply) = reader.await.unwrap();
        let expected: Vec<String> = (0..200).map(|i| format!("MESSAGE {i}")).collect();
        assert_eq!(seen, expected);
        assert_eq!(reply, b"200 messages");
        // A sender whose call has ended is told so.
        let (mut sender, stream) = client
            .open(b"count 0", CallOptions::default())
            .await
            .unwrap();
        assert_eq!(stream.reply().await.unwrap(), b"done 0");
        assert!(matches!(sender.send(b"late").await, Err(Error::Cancelled)));
    });
}

#[test]
fn a_stream_nobody_reads_holds_up_no_other_call() {
    let _test = shared_test("streaming_slow_reader");
    let fixture = Fixture::new("stream-slow-reader");
    fixture.run(|client| async move {
        let options = CallOptions::default().window_bytes(items_window(2, 4));
        let unread = client.call_stream_with(b"forever", options).await.unwrap();
        for i in 0..200 {
            let request = format!("count {}", i % 5);
            let stream = client.call_stream(request.as_bytes()).await.unwrap();
            assert_eq!(
                stream.reply().await.unwrap(),
                format!("done {}", i % 5).as_bytes()
            );
            assert_eq!(client.call(b"meta").await.unwrap(), b"none");
        }
        drop(unread);
    });
}

#[test]
fn the_servers_death_cuts_a_stream_with_peer_died() {
    let _test = shared_test("streaming_server_death");
    let mut fixture = Fixture::new("stream-server-death");
    let client = fixture.runtime.block_on(async {
        Client::connect(fixture.socket.path(), ClientConfig::default())
            .await
            .unwrap()
    });
    let mut stream = fixture
        .runtime
        .block_on(client.call_stream(b"forever"))
        .unwrap();
    fixture.runtime.block_on(async {
        stream.next().await.unwrap().unwrap();
    });
    fixture.server.kill();
    fixture.runtime.block_on(async {
        let cut = tokio::time::timeout(WATCHDOG, async {
            loop {
                match stream.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return error,
                    None => panic!("a cut stream ended as if complete"),
                }
            }
        })
        .await
        .expect("watchdog");
        assert!(matches!(cut, Error::PeerDied), "{cut:?}");
        assert!(matches!(stream.reply().await, Err(Error::PeerDied)));
    });
}
