//! The async API (`ringbell::tokio`): an `AsyncServer` and `AsyncConnection`s in one tokio
//! runtime, then a client in a child process. Every test has a watchdog timeout.

#![cfg(feature = "tokio")]

use std::time::Duration;

use ringbell::tokio::{AsyncConnection, AsyncServer};
use ringbell::{Batch, ClientConfig, Error, ServerConfig, WaitStrategy};

/// Far beyond what any of these tests needs: only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(120);

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ringbell-tokio-{}-{name}.sock", std::process::id()))
}

fn message(index: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ index) as u8)
        .collect()
}

/// An echo server task that serves every connection on its own task.
fn spawn_echo_server(mut server: AsyncServer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok(mut conn) = server.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while conn.recv(&mut buf).await.is_ok() {
                    if conn.send(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// `AsyncConnection::send_batch` delivers every message whole and in order, small and
/// chunked ones mixed, each batch fitting both rings (the server echoes as it reads, and
/// the client reads only after each batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_batches_arrive_whole_and_in_order() {
    let path = socket_path("async-batches");
    let config = ServerConfig::default().ring_capacity(16 << 10);
    let server = spawn_echo_server(AsyncServer::bind(&path, config).unwrap());
    let check = async {
        let mut conn = AsyncConnection::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        let mut buf = Vec::new();
        for batch in 0..200usize {
            let messages: Vec<Vec<u8>> = (0..1 + batch % 17)
                .map(|i| message(batch * 100 + i, if i == 3 { 5_000 } else { i * 7 }))
                .collect();
            let parts: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            conn.send_batch(&parts).await.unwrap();
            for (i, expected) in messages.iter().enumerate() {
                conn.recv(&mut buf).await.unwrap();
                assert_eq!(&buf, expected, "batch {batch}, message {i}");
            }
        }
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog");
    server.abort();
}

/// `AsyncConnection::recv_batch` and `send_with`: a server task echoes each batch it
/// takes with one `send_batch`; the client sends in place (small messages, and ones larger
/// than a frame, which go through a buffer) and takes the echoes in batches. A closure
/// that fails sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_recv_batch_and_send_with_echo_in_order() {
    let path = socket_path("async-recv-batch");
    let config = ServerConfig::default().ring_capacity(16 << 10);
    let mut server = AsyncServer::bind(&path, config).unwrap();
    let echo = tokio::spawn(async move {
        let mut conn = server.accept().await.unwrap();
        let mut batch = Batch::new();
        while let Ok(taken) = conn.recv_batch(&mut batch, 32).await {
            assert!((1..=32).contains(&taken) && taken == batch.len());
            let parts: Vec<&[u8]> = batch.iter().collect();
            if conn.send_batch(&parts).await.is_err() {
                break;
            }
        }
    });
    let check = async {
        let mut conn = AsyncConnection::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        let mut batch = Batch::new();
        for round in 0..100usize {
            let messages: Vec<Vec<u8>> = (0..1 + round % 13)
                .map(|i| message(round * 100 + i, if i == 5 { 6_000 } else { i * 9 }))
                .collect();
            for sent in &messages {
                let failed = conn
                    .send_with(sent.len(), |buf| {
                        buf.fill(0xee);
                        Err::<(), _>(Error::Timeout)
                    })
                    .await;
                assert!(matches!(failed, Err(Error::Timeout)));
                conn.send_with(sent.len(), |buf| {
                    buf.copy_from_slice(sent);
                    Ok::<(), Error>(())
                })
                .await
                .unwrap();
            }
            let mut echoed = 0;
            while echoed < messages.len() {
                conn.recv_batch(&mut batch, usize::MAX).await.unwrap();
                for got in &batch {
                    assert_eq!(got, messages[echoed], "round {round}, message {echoed}");
                    echoed += 1;
                }
            }
        }
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog");
    echo.await.unwrap();
}

/// Batch receives cut short by a deadline lose nothing: a message in chunks that a
/// cancelled receive had begun is completed by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_recv_batch_loses_no_message() {
    let path = socket_path("cancel-batch");
    let mut server = AsyncServer::bind(&path, ServerConfig::default().ring_capacity(4096)).unwrap();
    let client = tokio::spawn({
        let path = path.clone();
        async move {
            let mut conn = AsyncConnection::connect(&path, ClientConfig::default())
                .await
                .unwrap();
            let mut batch = Batch::new();
            let mut received = Vec::new();
            while received.len() < 60 {
                let taking = conn.recv_batch(&mut batch, 8);
                match tokio::time::timeout(Duration::from_micros(200), taking).await {
                    Ok(result) => {
                        result.unwrap();
                        received.extend(batch.iter().map(<[u8]>::to_vec));
                    }
                    Err(_elapsed) => continue,
                }
            }
            received
        }
    });
    let mut conn = server.accept().await.unwrap();
    let sent: Vec<Vec<u8>> = (0..60)
        .map(|i| message(i, if i % 6 == 0 { 10_000 } else { 30 + i }))
        .collect();
    // In groups of one to three, each group shown to the peer at once.
    for group in sent
        .chunks(3)
        .enumerate()
        .flat_map(|(i, three)| three.chunks(1 + i % 3))
    {
        let parts: Vec<&[u8]> = group.iter().map(Vec::as_slice).collect();
        conn.send_batch(&parts).await.unwrap();
        tokio::time::sleep(Duration::from_micros(150)).await;
    }
    let received = tokio::time::timeout(WATCHDOG, client)
        .await
        .expect("watchdog")
        .unwrap();
    assert_eq!(received, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_async_clients_echo_small_and_chunked_messages() {
    for wait in [WaitStrategy::Block, WaitStrategy::default()] {
        let path = socket_path(&format!("echo-{wait:?}").replace([' ', '{', '}', ':'], ""));
        let config = ServerConfig::default().ring_capacity(4096).wait(wait);
        let server = spawn_echo_server(AsyncServer::bind(&path, config).unwrap());
        let clients: Vec<_> = (0..20)
            .map(|client| {
                let path = path.clone();
                tokio::spawn(async move {
                    let config = ClientConfig::default().wait(wait);
                    let mut conn = AsyncConnection::connect(&path, config).await.unwrap();
                    let mut buf = Vec::new();
                    for round in 0..200 {
                        // Mostly small, every 17th larger than the 4 KiB ring.
                        let len = if round % 17 == 0 {
                            9_000 + round
                        } else {
                            round % 300
                        };
                        let sent = message(client * 1000 + round, len);
                        conn.send(&sent).await.unwrap();
                        let got = conn.recv(&mut buf).await.unwrap();
                        assert_eq!(got, len);
                        assert_eq!(buf, sent, "client {client} round {round}");
                    }
                })
            })
            .collect();
        let all = async {
            for client in clients {
                client.await.unwrap();
            }
        };
        tokio::time::timeout(WATCHDOG, all)
            .await
            .expect("watchdog: clients hung");
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_recv_loses_no_message() {
    let path = socket_path("cancel");
    let mut server = AsyncServer::bind(&path, ServerConfig::default().ring_capacity(4096)).unwrap();
    let client = tokio::spawn({
        let path = path.clone();
        async move {
            let mut conn = AsyncConnection::connect(&path, ClientConfig::default())
                .await
                .unwrap();
            let mut buf = Vec::new();
            let mut received = Vec::new();
            while received.len() < 50 {
                // A deadline so short that many receives are cancelled mid-wait, and some
                // in the middle of a chunked message.
                match tokio::time::timeout(Duration::from_micros(200), conn.recv(&mut buf)).await {
                    Ok(result) => {
                        result.unwrap();
                        received.push(buf.clone());
                    }
                    Err(_elapsed) => continue,
                }
            }
            received
        }
    });
    let mut conn = server.accept().await.unwrap();
    let sent: Vec<Vec<u8>> = (0..50)
        .map(|i| message(i, if i % 5 == 0 { 10_000 } else { 40 + i }))
        .collect();
    for msg in &sent {
        conn.send(msg).await.unwrap();
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    let received = tokio::time::timeout(WATCHDOG, client)
        .await
        .expect("watchdog")
        .unwrap();
    assert_eq!(received, sent);
}

/// A send of a large message cancelled while it waits for room in the sender's region
/// delivers nothing of it: the message is written into the region before its frame is
/// pushed, so a cancelled send left no frame. (Before issue 14 this cancelled a chunked
/// send part-way; chunks are now the fallback where no region can be had.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_large_send_delivers_nothing_of_it() {
    let path = socket_path("cancel-send");
    let mut server = AsyncServer::bind(&path, ServerConfig::default().ring_capacity(4096)).unwrap();
    // The handshake needs both sides at once. A blocking client, whose large messages go
    // through its region (`conn/send.rs`).
    let (client, conn) = tokio::join!(
        AsyncConnection::connect(&path, ClientConfig::default().wait(WaitStrategy::Block)),
        server.accept()
    );
    let (mut client, mut conn) = (client.unwrap(), conn.unwrap());
    // Nobody reads yet: messages of 20 KB go through the client's region (64 KiB: three
    // fit), and the fourth waits for room until it is cut off. A Windows client has no
    // region (`conn/large.rs`): its first one goes in chunks and is cut off part-way, and
    // the abort frame goes out with the next send.
    let fitting = if cfg!(windows) { 0 } else { 3 };
    let sent: Vec<Vec<u8>> = (0..fitting).map(|index| message(index, 20_000)).collect();
    for big in &sent {
        tokio::time::timeout(WATCHDOG, client.send(big))
            .await
            .expect("watchdog")
            .unwrap();
    }
    let big = message(9, 20_000);
    let cut = tokio::time::timeout(Duration::from_millis(50), client.send(&big)).await;
    assert!(cut.is_err(), "the send should not have completed");
    // The server must see the three, then "after", and nothing of the cancelled message.
    let mut buf = Vec::new();
    let sent_after = client.send(b"after");
    let received = async {
        let mut all = Vec::new();
        for _ in 0..=fitting {
            conn.recv(&mut buf).await.unwrap();
            all.push(buf.clone());
        }
        all
    };
    let (after, all) = tokio::time::timeout(WATCHDOG, async { tokio::join!(sent_after, received) })
        .await
        .expect("watchdog");
    after.unwrap();
    assert!(
        all[..fitting] == sent[..],
        "those sent before the cancelled one"
    );
    assert_eq!(all[fitting], b"after");
}

/// Large messages (issue 14) of several sizes, up to 16 MiB, small ones between them,
/// echo byte for byte through `AsyncConnection`s: between blocking sides whole through
/// their regions, two at a time; between spinning or adaptive ones in pieces through
/// them, one at a time (a region of a few pieces, smaller than a message, cannot hold a
/// second while the first's echo waits to be taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_large_messages_echo_byte_exact() {
    for (wait, in_flight) in [
        (WaitStrategy::Block, 2),
        (WaitStrategy::Spin, 1),
        (
            WaitStrategy::Adaptive {
                spin: WaitStrategy::DEFAULT_SPIN,
            },
            1,
        ),
    ] {
        large_echo(wait, in_flight).await;
    }
}

async fn large_echo(wait: WaitStrategy, in_flight: usize) {
    let name = match wait {
        WaitStrategy::Block => "block",
        WaitStrategy::Spin => "spin",
        _ => "adaptive",
    };
    let path = socket_path(&format!("large-echo-{name}"));
    let config = ServerConfig::default()
        .max_message_size(16 << 20)
        .wait(wait);
    let server = spawn_echo_server(AsyncServer::bind(&path, config).unwrap());
    let mut client = AsyncConnection::connect(&path, ClientConfig::default().wait(wait))
        .await
        .unwrap();
    let frame = ServerConfig::DEFAULT_RING_CAPACITY / 4 - 16;
    let sizes = [
        frame + 1,
        1 << 20,
        4 << 20,
        16 << 20,
        3,
        frame + 8,
        0,
        300_000,
        9,
        3 << 20,
        1,
        16 << 20,
    ];
    let messages: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| message(i, len))
        .collect();
    let all = async {
        let mut buf = Vec::new();
        for two in messages.chunks(in_flight) {
            for sent in two {
                client.send(sent).await.unwrap();
            }
            for sent in two {
                client.recv(&mut buf).await.unwrap();
                assert!(
                    buf == *sent,
                    "an echo of {} bytes, {} sent",
                    buf.len(),
                    sent.len()
                );
            }
        }
    };
    tokio::time::timeout(WATCHDOG, all).await.expect("watchdog");
    server.abort();
}

/// Large requests and replies through the sweeper (`serve`) and the client's driver:
/// several calls at once of up to 4 MiB, each reply checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_calls_through_the_sweeper() {
    let path = socket_path("rpc-large");
    let server = spawn_rpc_server(&path, 8);
    let client = Client::connect(&path, ClientConfig::default())
        .await
        .unwrap();
    let calls: Vec<_> = (0..24usize)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let len = [5_000, 1 << 20, 40, 4 << 20, 100_000, 2][i % 6] + i;
                let request = message(i, len);
                let reply = client.call(&request).await.unwrap();
                assert!(reply == reversed(&request), "call {i} of {len} bytes");
            })
        })
        .collect();
    let all = async {
        for call in calls {
            call.await.unwrap();
        }
    };
    tokio::time::timeout(WATCHDOG, all)
        .await
        .expect("watchdog: calls hung");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_peer_is_reported_to_an_async_receiver() {
    let path = socket_path("peer-died");
    let mut server = AsyncServer::bind(&path, ServerConfig::default()).unwrap();
    let (client, conn) = tokio::join!(
        AsyncConnection::connect(&path, ClientConfig::default()),
        server.accept()
    );
    let (client, mut conn) = (client.unwrap(), conn.unwrap());
    let mut buf = Vec::new();
    let waiting = tokio::spawn(async move { conn.recv(&mut buf).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(client);
    let result = tokio::time::timeout(WATCHDOG, waiting)
        .await
        .expect("watchdog")
        .unwrap();
    assert!(matches!(result, Err(Error::PeerDied)), "{result:?}");
}

// ---------------------------------------------------------------------------------------
// Request/response: `Client::call` and `AsyncServer::serve`.

use ringbell::tokio::Client;

/// A server whose handler answers `reverse(request)` after a delay chosen by the request's
/// first byte (so replies complete out of order), fails on "fail" and panics on "panic".
fn spawn_rpc_server(path: &std::path::Path, concurrent: usize) -> tokio::task::JoinHandle<()> {
    let config = ServerConfig::default()
        .ring_capacity(4096)
        .concurrent_requests(concurrent);
    let server = AsyncServer::bind(path, config).unwrap();
    tokio::spawn(server.serve(|request: Vec<u8>| async move {
        match request.as_slice() {
            b"fail" => return Err("asked to fail".to_owned()),
            // In the handler's first poll, which the server runs within its sweep.
            b"panic" => panic!("asked to panic"),
            // After an await, once the handler runs as a task of its own.
            b"panic later" => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                panic!("asked to panic later");
            }
            _ => {}
        }
        let delay = request.first().copied().unwrap_or(0) % 8;
        tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
        Ok(request.into_iter().rev().collect::<Vec<u8>>())
    }))
}

fn reversed(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().rev().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_connection_get_their_own_replies() {
    let path = socket_path("rpc-concurrent");
    let server = spawn_rpc_server(&path, 16);
    let client = Client::connect(&path, ClientConfig::default())
        .await
        .unwrap();
    let calls: Vec<_> = (0..400usize)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                // Sizes from a few bytes to beyond the 4 KiB ring; the first byte sets the
                // handler's delay, so replies come back out of order.
                let request = message(i, if i % 25 == 0 { 6_000 } else { 1 + i % 200 });
                let reply = client.call(&request).await.unwrap();
                assert_eq!(reply, reversed(&request), "call {i}");
            })
        })
        .collect();
    let all = async {
        for call in calls {
            call.await.unwrap();
        }
    };
    tokio::time::timeout(WATCHDOG, all)
        .await
        .expect("watchdog: calls hung");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_handler_fails_only_its_own_request() {
    let path = socket_path("rpc-failures");
    let server = spawn_rpc_server(&path, 4);
    let client = Client::connect(&path, ClientConfig::default())
        .await
        .unwrap();
    let check = async {
        let failed = client.call(b"fail").await;
        assert!(
            matches!(&failed, Err(Error::Handler { message }) if message.contains("asked to fail")),
            "{failed:?}"
        );
        for request in [&b"panic"[..], b"panic later"] {
            let panicked = client.call(request).await;
            assert!(
                matches!(&panicked, Err(Error::Handler { message }) if message.contains("panicked")),
                "{panicked:?}"
            );
        }
        assert_eq!(client.call(b"\x01abc").await.unwrap(), b"cba\x01");
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_does_not_misroute_later_replies() {
    let path = socket_path("rpc-timeout");
    let server = spawn_rpc_server(&path, 8);
    let client = Client::connect(&path, ClientConfig::default())
        .await
        .unwrap();
    let check = async {
        for round in 0..50u8 {
            // Delay 7 ms against a 1 ms deadline: usually times out, and its reply then
            // arrives while the next call waits. (On a loaded machine the reply may win;
            // either way it must be this call's own reply.)
            match client
                .call_timeout(&[7, round], Duration::from_millis(1))
                .await
            {
                Err(Error::Timeout) => {}
                Ok(reply) => assert_eq!(reply, [round, 7]),
                Err(other) => panic!("{other:?}"),
            }
            let request = [0, round, 42];
            assert_eq!(client.call(&request).await.unwrap(), reversed(&request));
        }
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_with_peer_died_when_the_server_goes() {
    let path = socket_path("rpc-server-gone");
    let server = spawn_rpc_server(&path, 8);
    let client = Client::connect(&path, ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(client.call(b"\x00ok").await.unwrap(), b"ko\x00");
    // Dropping the server task drops every connection it drives. Aborting a task takes
    // effect at its next await, so a call racing with the abort may still be answered;
    // soon every call must fail with PeerDied, and never with anything else.
    server.abort();
    let _ = server.await;
    let check = async {
        for attempt in 0..1_000u32 {
            match client.call(b"\x00again").await {
                Ok(reply) => assert_eq!(reply, b"niaga\x00", "attempt {attempt}"),
                Err(Error::PeerDied) => return,
                Err(other) => panic!("attempt {attempt}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("calls still succeed long after the server was dropped");
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog");
}

/// Typed calls (feature `codec`): a request and a reply as serde types, and a reply that
/// does not decode as the expected type.
#[cfg(feature = "codec")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_round_trip_and_bad_replies_are_codec_errors() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Open {
        path: String,
        line: u32,
    }
    let path = socket_path("rpc-typed");
    let server = AsyncServer::bind(&path, ServerConfig::default()).unwrap();
    // The handler echoes the request's bytes: a typed request comes back as itself.
    let server =
        tokio::spawn(server.serve(|request: Vec<u8>| async move { Ok::<_, String>(request) }));
    let client = Client::connect(&path, ClientConfig::default())
        .await
        .unwrap();
    let check = async {
        let request = Open {
            path: "src/main.rs".into(),
            line: 42,
        };
        let reply: Open = client.call_value(&request).await.unwrap();
        assert_eq!(reply, request);
        // The same bytes do not decode as a u8 followed by nothing.
        let wrong: Result<u8, Error> = client.call_value(&request).await;
        assert!(matches!(wrong, Err(Error::Codec { .. })), "{wrong:?}");
        // The connection goes on.
        let again: Open = client.call_value(&request).await.unwrap();
        assert_eq!(again, request);
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_calls_under_way_then_closes() {
    let path = socket_path("rpc-shutdown");
    let server = AsyncServer::bind(&path, ServerConfig::default()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, mut started) = tokio::sync::mpsc::channel::<()>(8);
    let serving = tokio::spawn(server.serve_until(
        move |request: Vec<u8>| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, String>(request)
            }
        },
        async move {
            let _ = stopped.await;
        },
        WATCHDOG,
    ));
    let client = Client::connect(&path, ClientConfig::default())
        .await
        .unwrap();
    let check = async {
        let calls: Vec<_> = (0..3u8)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { client.call(&[i]).await })
            })
            .collect();
        // All three handlers are running: now shut down.
        for _ in 0..3 {
            started.recv().await.unwrap();
        }
        stop.send(()).unwrap();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(
                call.await.unwrap().unwrap(),
                [i as u8],
                "call {i} under way must finish"
            );
        }
        serving.await.unwrap();
        let after = client.call(b"late").await;
        assert!(matches!(after, Err(Error::PeerDied)), "{after:?}");
        assert!(!path.exists(), "the socket file should be gone");
        let refused = AsyncConnection::connect(&path, ClientConfig::default()).await;
        assert!(refused.is_err(), "a new client must be refused");
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog");
}

/// The blocking server (`Server::serve`, worker pool) answers the async client, including
/// for a failing and a panicking handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_server_serves_async_clients() {
    let path = socket_path("blocking-serve");
    let server =
        ringbell::Server::bind(&path, ServerConfig::default().ring_capacity(4096)).unwrap();
    std::thread::spawn(move || {
        server.serve(|request: Vec<u8>| match request.as_slice() {
            b"fail" => Err("asked to fail".to_owned()),
            b"panic" => panic!("asked to panic"),
            _ => Ok(reversed(&request)),
        })
    });
    let check = async {
        let clients: Vec<_> = (0..4usize)
            .map(|c| {
                let path = path.clone();
                tokio::spawn(async move {
                    let client = Client::connect(&path, ClientConfig::default())
                        .await
                        .unwrap();
                    let calls: Vec<_> = (0..50usize)
                        .map(|i| {
                            let client = client.clone();
                            tokio::spawn(async move {
                                let request = message(c * 100 + i, 1 + (i * 97) % 6000);
                                assert_eq!(
                                    client.call(&request).await.unwrap(),
                                    reversed(&request)
                                );
                            })
                        })
                        .collect();
                    for call in calls {
                        call.await.unwrap();
                    }
                    let failed = client.call(b"fail").await;
                    assert!(matches!(failed, Err(Error::Handler { .. })), "{failed:?}");
                    let panicked = client.call(b"panic").await;
                    assert!(
                        matches!(panicked, Err(Error::Handler { .. })),
                        "{panicked:?}"
                    );
                    assert_eq!(client.call(b"ok").await.unwrap(), b"ko");
                })
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
    };
    let checked = tokio::time::timeout(WATCHDOG, check).await;
    // `Server::serve` never returns, so its server is never dropped and would leave the
    // socket file behind in the temporary directory when this process exits.
    let _ = std::fs::remove_file(&path);
    checked.expect("watchdog");
}

/// The server's sweeper sleeps whenever a sweep finds nothing (`WaitStrategy::Block`: no
/// spinning), so here it sleeps and is woken between nearly every pair of calls, by a
/// different client each time: a lost wake-up, or an armed connection skipped after it
/// rang, hangs a call until the watchdog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_wakes_for_each_of_many_intermittent_clients() {
    let path = socket_path("sweeper-intermittent");
    let config = ServerConfig::default()
        .ring_capacity(4096)
        .wait(WaitStrategy::Block);
    let server = AsyncServer::bind(&path, config).unwrap();
    let serving = tokio::spawn(
        server.serve(|request: Vec<u8>| async move { Ok::<_, String>(reversed(&request)) }),
    );
    let check = async {
        let mut clients = Vec::new();
        for _ in 0..64 {
            let config = ClientConfig::default().wait(WaitStrategy::Block);
            clients.push(Client::connect(&path, config).await.unwrap());
        }
        let callers: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(index, client)| {
                tokio::spawn(async move {
                    for call in 0..20usize {
                        // Pauses of 0 to 3 ms, different per client, so the sweeper
                        // often finds every ring empty and sleeps.
                        let pause = (index * 7 + call * 13) % 4;
                        tokio::time::sleep(Duration::from_millis(pause as u64)).await;
                        let request = message(index * 100 + call, 1 + (index + call) % 300);
                        let reply = client.call(&request).await.unwrap();
                        assert_eq!(reply, reversed(&request), "client {index}, call {call}");
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog: a call hung");
    serving.abort();
}

/// A client that sends requests and never reads the replies fills its own ring; the
/// sweeper stops taking its requests at the bound and keeps serving everyone else. Once
/// it goes, its place under the connection limit comes back. (The stuck client drives a
/// connection for calls by hand, which only `test_api` makes: a `Client` reads every reply.)
#[cfg(feature = "__test-api")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_replies_holds_up_only_itself() {
    let path = socket_path("sweeper-stuck-reader");
    let config = ServerConfig::default()
        .ring_capacity(4096)
        .concurrent_requests(4)
        .max_connections(2);
    let server = AsyncServer::bind(&path, config).unwrap();
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = handled.clone();
    let serving = tokio::spawn(server.serve(move |request: Vec<u8>| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move { Ok::<_, String>(request) }
    }));
    let check = async {
        let mut stuck = AsyncConnection::from_connection(
            ringbell::test_api::connect_for_calls(&path, ClientConfig::default()).unwrap(),
        )
        .unwrap();
        // Far more than its ring, the server's bound and the reply ring hold together:
        // its sends stall once all three are full.
        let flood = async {
            for i in 0..10_000usize {
                let correlation = i as u64 + 1;
                ringbell::test_api::send_request_async(&mut stuck, correlation, &message(i, 1000))
                    .await
                    .unwrap();
            }
        };
        let sent_everything = tokio::time::timeout(Duration::from_millis(300), flood).await;
        assert!(
            sent_everything.is_err(),
            "the server took 10,000 requests from a client that reads no replies"
        );
        let taken = handled.load(std::sync::atomic::Ordering::Relaxed);
        assert!(taken < 100, "{taken} requests taken past the bound");

        let client = Client::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        for call in 0..200usize {
            let request = message(call, 1 + call % 500);
            assert_eq!(client.call(&request).await.unwrap(), request, "call {call}");
        }

        // The limit of two is full; once the stuck client goes, its place comes back.
        drop(stuck);
        loop {
            match Client::connect(&path, ClientConfig::default()).await {
                Ok(third) => {
                    assert_eq!(third.call(b"after").await.unwrap(), b"after");
                    break;
                }
                Err(Error::ServerBusy { .. }) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(other) => panic!("connecting after the stuck client left: {other}"),
            }
        }
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog");
    serving.abort();
}

/// One `ClientGroup` drives connections to two servers through one task and one
/// doorbell: every call gets its own reply; when one server goes, only its clients' calls
/// fail, with `PeerDied`; and clients that are dropped close their connections, which the
/// server then counts no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_group_serves_two_servers_and_outlives_one() {
    use ringbell::tokio::ClientGroup;
    let (first_path, second_path) = (socket_path("group-first"), socket_path("group-second"));
    let config = ServerConfig::default()
        .ring_capacity(4096)
        .wait(WaitStrategy::Block)
        .max_connections(20);
    let reverse = |request: Vec<u8>| async move { Ok::<_, String>(reversed(&request)) };
    let first = tokio::spawn(
        AsyncServer::bind(&first_path, config.clone())
            .unwrap()
            .serve(reverse),
    );
    let second = tokio::spawn(
        AsyncServer::bind(&second_path, config)
            .unwrap()
            .serve(reverse),
    );
    let check = async {
        let group = ClientGroup::new().unwrap();
        let client_config = ClientConfig::default().wait(WaitStrategy::Block);
        let mut firsts = Vec::new();
        let mut seconds = Vec::new();
        for _ in 0..20 {
            firsts.push(
                group
                    .connect(&first_path, client_config.clone())
                    .await
                    .unwrap(),
            );
            seconds.push(
                group
                    .connect_bounded(&second_path, client_config.clone(), 4)
                    .await
                    .unwrap(),
            );
        }
        // Calls on all 40 at once, with pauses that let the driver and the servers sleep.
        let callers: Vec<_> = firsts
            .iter()
            .chain(&seconds)
            .cloned()
            .enumerate()
            .map(|(index, client)| {
                tokio::spawn(async move {
                    for call in 0..30usize {
                        if (index + call) % 3 == 0 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        let request = message(index * 1000 + call, 1 + (index * 31 + call) % 900);
                        let reply = client.call(&request).await.unwrap();
                        assert_eq!(reply, reversed(&request), "client {index}, call {call}");
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }

        // The second server goes: its clients' calls fail; the first's go on.
        second.abort();
        for (index, client) in seconds.iter().enumerate() {
            let failed = loop {
                match client.call(b"still there?").await {
                    Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(error) => break error,
                }
            };
            assert!(
                matches!(failed, Error::PeerDied),
                "client {index}: {failed:?}"
            );
        }
        for (index, client) in firsts.iter().enumerate() {
            assert_eq!(client.call(b"abc").await.unwrap(), b"cba", "client {index}");
        }

        // The first server is at its limit of 20; dropping the clients frees it.
        drop(firsts);
        loop {
            match group.connect(&first_path, client_config.clone()).await {
                Ok(late) => {
                    assert_eq!(late.call(b"late").await.unwrap(), b"etal");
                    break;
                }
                Err(Error::ServerBusy { .. }) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(other) => panic!("connecting after the clients were dropped: {other}"),
            }
        }
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog");
    first.abort();
}

/// A sweeper that never sleeps (`WaitStrategy::Spin`) still notices the shutdown: it
/// used to look only when it slept, so `serve_until` ran to the end of its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regress_a_spinning_sweeper_shuts_down_when_asked() {
    let path = socket_path("sweeper-spin-shutdown");
    let config = ServerConfig::default().wait(WaitStrategy::Spin);
    let server = AsyncServer::bind(&path, config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // A grace period far beyond the watchdog: only a sweeper that drains and ends can
    // finish in time.
    let serving = tokio::spawn(server.serve_until(
        |request: Vec<u8>| async move { Ok::<_, String>(request) },
        async move {
            let _ = stopped.await;
        },
        WATCHDOG * 10,
    ));
    let check = async {
        let client = Client::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        assert_eq!(client.call(b"ping").await.unwrap(), b"ping");
        stop.send(()).unwrap();
        serving.await.unwrap();
        let after = client.call(b"late").await;
        assert!(matches!(after, Err(Error::PeerDied)), "{after:?}");
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog: the sweeper did not shut down");
}

/// Outside a tokio runtime, `AsyncServer::bind`, `AsyncConnection::from_connection` and
/// `ClientGroup::new` return an error that says so (tokio itself would panic: "there is no reactor running"),
/// and the server's socket file does not outlive the failed bind.
#[test]
fn outside_a_runtime_the_async_api_errs_instead_of_panicking() {
    let path = socket_path("no-runtime");
    let error = AsyncServer::bind(&path, ServerConfig::default()).unwrap_err();
    assert!(error.to_string().contains("tokio runtime"), "{error}");
    assert!(!path.exists(), "the failed bind left its socket file");

    // A blocking connection, made without a runtime, cannot be wrapped without one.
    let server = ringbell::Server::bind(&path, ServerConfig::default()).unwrap();
    let serving = std::thread::spawn(move || server.accept().map(drop));
    let conn = ringbell::Connection::connect(&path, ClientConfig::default()).unwrap();
    serving.join().unwrap().unwrap();
    let error = AsyncConnection::from_connection(conn).unwrap_err();
    assert!(error.to_string().contains("tokio runtime"), "{error}");

    // Nor can a client group start its driver task.
    let error = ringbell::tokio::ClientGroup::new().unwrap_err();
    assert!(error.to_string().contains("tokio runtime"), "{error}");
}

/// `serve_service` takes a tower service with tower's own layers: a timeout layer ends a
/// slow call with an error reply that says so, the others are answered; and the `Client`
/// is a tower service too, called through tower's `ServiceExt`.
#[cfg(feature = "tower")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_service_with_layers_serves_calls_and_the_client_is_one() {
    use ringbell::tokio::Call;
    use tower::{ServiceBuilder, ServiceExt};

    let path = socket_path("tower");
    let server = AsyncServer::bind(&path, ServerConfig::default()).unwrap();
    let service = ServiceBuilder::new()
        .concurrency_limit(4)
        .timeout(Duration::from_millis(200))
        .service_fn(|call: Call| async move {
            if call.request() == b"slow" {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok::<_, tower::BoxError>(call.into_request().to_ascii_uppercase())
        });
    let serving = tokio::spawn(server.serve_service(service));
    let check = async {
        let client = Client::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        assert_eq!(client.call(b"ring").await.unwrap(), b"RING");
        match client.call(b"slow").await {
            Err(Error::Handler { message }) => assert!(message.contains("timed out"), "{message}"),
            other => panic!("expected the timeout layer's error, got {other:?}"),
        }
        let reply = client.clone().oneshot(b"bell".to_vec()).await.unwrap();
        assert_eq!(reply, b"BELL");
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog");
    serving.abort();
}

/// A call dropped before its driver sent its opening (the future polled once, then
/// dropped, on a runtime of one thread: the driver takes the call and its cancel in one
/// pass) gives its slot back at once: the server never heard of it, so no word of its end
/// will come. Three such drops against a bound of two, then a call that must succeed.
#[tokio::test]
async fn a_call_dropped_before_it_was_sent_gives_its_slot_back() {
    use std::future::Future;

    let path = socket_path("dropped-unsent");
    let config = ServerConfig::default().concurrent_requests(2);
    let server = AsyncServer::bind(&path, config).unwrap();
    let serving =
        tokio::spawn(server.serve(|request: Vec<u8>| async move { Ok::<_, String>(request) }));
    let check = async {
        let client = Client::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        for _ in 0..3 {
            // Polled once, then dropped.
            let mut call = Box::pin(client.call(b"dropped"));
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(call.as_mut().poll(&mut context).is_pending());
            drop(call);
        }
        assert_eq!(client.call(b"after").await.unwrap(), b"after");
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog: a dropped call kept its slot");
    serving.abort();
}

/// While one stream's large request holds the whole memory budget, a second call's
/// opening must wait for it; the server reads on past that opening, so the first
/// stream's credit, which the client sends after it, still arrives and both finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_opening_does_not_hide_the_credit_behind_it() {
    use ringbell::tokio::{Call, CallOptions};

    let path = socket_path("parked-credit");
    let config = ServerConfig::default()
        .max_message_size(1 << 20)
        .memory_budget((1 << 20) + 8192);
    let server = AsyncServer::bind(&path, config).unwrap();
    let serving = tokio::spawn(server.serve_calls(|mut call: Call| async move {
        // As many items as the request has kilobytes, then the count.
        let items = call.request().len() / 1024 + 1;
        for index in 0..items {
            call.send(&index.to_le_bytes()).await?;
        }
        Ok::<_, Error>(items.to_le_bytes().to_vec())
    }));
    let check = async {
        let client = Client::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        let window = CallOptions::default().window_bytes(2 * (8 + ringbell::tokio::ITEM_OVERHEAD));
        let mut large = client
            .call_stream_with(&vec![7u8; 1 << 20], window.clone())
            .await
            .unwrap();
        // Its handler runs (and holds the budget) once its first item is here.
        large.next().await.unwrap().unwrap();
        let mut small = client.call_stream_with(b"small", window).await.unwrap();
        let mut taken = 1;
        while let Some(item) = large.next().await {
            item.unwrap();
            taken += 1;
        }
        assert_eq!(taken, 1025);
        assert_eq!(large.reply().await.unwrap(), 1025usize.to_le_bytes());
        assert_eq!(small.next().await.unwrap().unwrap(), 0usize.to_le_bytes());
        assert!(small.next().await.is_none());
        assert_eq!(small.reply().await.unwrap(), 1usize.to_le_bytes());
    };
    tokio::time::timeout(WATCHDOG, check)
        .await
        .expect("watchdog: the first stream's credit never arrived");
    serving.abort();
}
