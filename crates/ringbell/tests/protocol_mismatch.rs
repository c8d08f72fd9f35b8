//! Both ends of a connection agree in the handshake on what it carries: plain messages
//! (`Connection`, `AsyncConnection`, the servers' `accept`) or calls (`tokio::Client`, the
//! servers' `serve`). A mismatch used to go unnoticed: a `Client` pointed at a plain echo
//! server waited forever for replies it dropped, and a plain `Connection` talking to
//! `serve` read each reply's status byte as data. Now it fails at connect, on both sides,
//! with an error that names the cause and the fix; and the server goes on serving.
//!
//! In one process, over the real socket, memory and doorbells: the mismatch is in the
//! handshake, and one process sees both sides' errors.

#![cfg(feature = "tokio")]

use std::time::Duration;

use ringbell::tokio::{AsyncConnection, AsyncServer, Client};
use ringbell::{ClientConfig, Connection, Error, Server, ServerConfig};

/// Far beyond what any of these tests needs: only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(60);

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "ringbell-mismatch-{}-{name}.sock",
        std::process::id()
    ))
}

/// The detail of a handshake error, or a failure that says what came instead.
fn handshake_detail<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::Handshake { detail }) => detail,
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pointed_at_a_plain_server_fails_at_connect_on_both_sides() {
    tokio::time::timeout(WATCHDOG, async {
        let path = socket_path("client-to-plain");
        let mut server = AsyncServer::bind(&path, ServerConfig::default()).unwrap();
        let accepting = tokio::spawn(async move {
            let refused = server.accept().await;
            let accepted = server.accept().await;
            (refused.map(drop), accepted.map(drop))
        });

        let client = handshake_detail(Client::connect(&path, ClientConfig::default()).await);
        assert!(
            client.contains("serves plain messages, not calls")
                && client.contains(&path.display().to_string())
                && client.contains("AsyncServer::serve"),
            "{client}"
        );
        // The server is still there for a client that speaks its kind.
        let _plain = AsyncConnection::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        let (refused, accepted) = accepting.await.unwrap();
        let server = handshake_detail(refused);
        assert!(
            server.contains("asked for calls") && server.contains("AsyncServer::serve"),
            "{server}"
        );
        accepted.unwrap();
    })
    .await
    .expect("the test hung");
}

#[test]
fn a_client_pointed_at_a_blocking_plain_server_fails_at_connect_on_both_sides() {
    let path = socket_path("client-to-blocking");
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    let accepting = std::thread::spawn(move || server.accept().map(drop));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        tokio::time::timeout(WATCHDOG, Client::connect(&path, ClientConfig::default()))
            .await
            .expect("the client hung")
    });
    let client = handshake_detail(client);
    assert!(
        client.contains("serves plain messages, not calls"),
        "{client}"
    );
    let server = handshake_detail(accepting.join().unwrap());
    assert!(server.contains("asked for calls"), "{server}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_connection_pointed_at_a_call_server_fails_at_connect() {
    tokio::time::timeout(WATCHDOG, async {
        let path = socket_path("plain-to-calls");
        let server = AsyncServer::bind(&path, ServerConfig::default()).unwrap();
        let serving =
            tokio::spawn(server.serve(|request: Vec<u8>| async move { Ok::<_, String>(request) }));

        let blocking = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Connection::connect(&path, ClientConfig::default()))
                .await
                .unwrap()
        };
        let blocking = handshake_detail(blocking);
        assert!(
            blocking.contains("serves calls (request/response), not plain messages")
                && blocking.contains("tokio::Client"),
            "{blocking}"
        );
        let asynchronous =
            handshake_detail(AsyncConnection::connect(&path, ClientConfig::default()).await);
        assert!(asynchronous.contains("serves calls"), "{asynchronous}");
        // The server goes on serving calls. (`serve` logs its side's error through
        // `tracing`; `accept`'s side is asserted in the tests above.)
        let client = Client::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        assert_eq!(client.call(b"ping").await.unwrap(), b"ping");
        serving.abort();
    })
    .await
    .expect("the test hung");
}
