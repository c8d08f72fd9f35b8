//! The async API (`ringbell::tokio`): an `AsyncServer` and `AsyncConnection`s in one tokio
//! runtime, then a client in a child process. Every test has a watchdog timeout.

#![cfg(feature = "tokio")]

use std::time::Duration;

use ringbell::tokio::{AsyncConnection, AsyncServer};
use ringbell::{ClientConfig, Error, ServerConfig, WaitStrategy};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_chunked_send_delivers_nothing_of_it() {
    let path = socket_path("cancel-send");
    let mut server = AsyncServer::bind(&path, ServerConfig::default().ring_capacity(4096)).unwrap();
    // The handshake needs both sides at once.
    let (client, conn) = tokio::join!(
        AsyncConnection::connect(&path, ClientConfig::default()),
        server.accept()
    );
    let (mut client, mut conn) = (client.unwrap(), conn.unwrap());
    // Nobody reads yet: a 20 KB message cannot fit a 4 KiB ring, so the send is cut off
    // after its first chunks.
    let big = message(1, 20_000);
    let cut = tokio::time::timeout(Duration::from_millis(50), client.send(&big)).await;
    assert!(cut.is_err(), "the send should not have completed");
    // The abort frame goes out with the next send, which waits for room: the server reads
    // at the same time, and must see "after" and nothing of the cancelled message.
    let mut buf = Vec::new();
    let both = async { tokio::join!(client.send(b"after"), conn.recv(&mut buf)) };
    let (sent, got) = tokio::time::timeout(WATCHDOG, both)
        .await
        .expect("watchdog");
    sent.unwrap();
    assert_eq!(got.unwrap(), 5);
    assert_eq!(buf, b"after");
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
