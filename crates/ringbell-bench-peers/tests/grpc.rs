//! The tonic service of the streamed-call rows, server and client in one process over a
//! real Unix socket: a unary call, a finite stream (every item counted and sized), and a
//! cancelled endless stream whose cancel the handler notes.
//!
//! Nothing can hang: the whole test runs under a timeout that fails it, saying where it
//! was; nothing is timed.

use std::path::PathBuf;
use std::time::Duration;

use ringbell_bench_peers::grpc::{self, GrpcClient};

const ITEM_SIZE: usize = 64;
const PATIENCE: Duration = Duration::from_secs(60);

/// A socket path of this test's own, removed on drop.
struct SocketPath(PathBuf);

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn unary_finite_stream_and_cancel() {
    let socket = SocketPath(
        std::env::temp_dir().join(format!("ringbell-peers-grpc-{}.sock", std::process::id())),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let path = socket.0.clone();
        let server = tokio::spawn(async move { grpc::serve(&path, ITEM_SIZE).await });
        let checks = async {
            let mut client = loop {
                match GrpcClient::connect(&socket.0).await {
                    Ok(client) => break client,
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            assert_eq!(client.last_cancel().await.unwrap(), 0, "no cancel yet");

            let mut items = client.items(1_000).await.unwrap();
            let mut count = 0;
            while let Some(item) = items.next().await {
                assert_eq!(item.unwrap(), ITEM_SIZE);
                count += 1;
            }
            assert_eq!(count, 1_000);

            let before = grpc::monotonic_ns();
            let mut endless = client.items(0).await.unwrap();
            assert_eq!(endless.next().await.unwrap().unwrap(), ITEM_SIZE);
            drop(endless);
            // The handler learns of the drop when its next send fails.
            while client.last_cancel().await.unwrap() < before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(PATIENCE, checks)
            .await
            .expect("the gRPC checks did not finish within a minute");
        server.abort();
    });
}
