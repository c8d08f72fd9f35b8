//! Typed calls end to end: `AsyncServer::serve_values` and `Server::serve_values` answer
//! `Client::call_value`, and a request that does not decode as the server's type fails
//! that call alone, with an `Error::Handler` that says so, while the connection goes on.
//!
//! In one process, over the real socket, memory and doorbells: what is tested is the
//! encoding on each side.

#![cfg(all(feature = "tokio", feature = "codec"))]

use std::time::Duration;

use ringbell::tokio::{AsyncServer, Call, Client};
use ringbell::{ClientConfig, Error, Server, ServerConfig};

/// Far beyond what any of these tests needs: only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(60);

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ringbell-typed-{}-{name}.sock", std::process::id()))
}

/// Calls `client` with a good request, a request the server cannot decode, then a good one
/// again; the server adds the two numbers of a `(u64, u64)`.
async fn check_typed_calls(client: &Client) {
    let sum: u64 = client.call_value(&(40u64, 2u64)).await.unwrap();
    assert_eq!(sum, 42);
    // A `(u64, u64)` needs two varints; one byte with its continuation bit set is not one.
    match client.call(&[0xff]).await {
        Err(Error::Handler { message }) => {
            assert!(message.contains("does not decode"), "{message}")
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    // A response of the wrong type is the client's own decoding error.
    let wrong: Result<String, Error> = client.call_value(&(1u64, 2u64)).await;
    assert!(matches!(wrong, Err(Error::Codec { .. })), "{wrong:?}");
    let sum: u64 = client.call_value(&(1u64, 2u64)).await.unwrap();
    assert_eq!(sum, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_server_answers_typed_calls_and_refuses_undecodable_ones() {
    tokio::time::timeout(WATCHDOG, async {
        let path = socket_path("async");
        let server = AsyncServer::bind(&path, ServerConfig::default()).unwrap();
        let serving =
            tokio::spawn(server.serve_values(|(a, b): (u64, u64)| async move {
                a.checked_add(b).ok_or("overflow")
            }));
        let client = Client::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        check_typed_calls(&client).await;
        // The handler's own error reaches the caller as such.
        match client.call_value::<_, u64>(&(u64::MAX, 1u64)).await {
            Err(Error::Handler { message }) => assert_eq!(message, "overflow"),
            other => panic!("expected the handler's error, got {other:?}"),
        }
        serving.abort();
    })
    .await
    .expect("the test hung");
}

#[test]
fn the_blocking_server_answers_typed_calls_and_refuses_undecodable_ones() {
    let path = socket_path("blocking");
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    std::thread::spawn(move || server.serve_values(|(a, b): (u64, u64)| Ok::<_, String>(a + b)));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        tokio::time::timeout(WATCHDOG, async {
            let client = Client::connect(&path, ClientConfig::default())
                .await
                .unwrap();
            check_typed_calls(&client).await;
        })
        .await
        .expect("the test hung");
    });
}

/// A typed stream: `call_stream_value` in, `Call::send_value` items out, decoded by
/// `next_value`; a typed reply through `reply_value`; an item of the wrong type is a codec
/// error for that item alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_streams_carry_typed_items_and_replies() {
    tokio::time::timeout(WATCHDOG, async {
        let path = socket_path("stream");
        let server = AsyncServer::bind(&path, ServerConfig::default()).unwrap();
        let serving = tokio::spawn(server.serve_calls(|mut call: Call| async move {
            let (count, wrong_at): (u32, u32) = call.request_value()?;
            for index in 0..count {
                if index == wrong_at {
                    call.send(&[0xff]).await?;
                } else {
                    call.send_value(&(index, format!("item {index}"))).await?;
                }
            }
            // The reply, typed: the count, as postcard writes a u32 below 128.
            Ok::<_, Error>(vec![count as u8])
        }));
        let client = Client::connect(&path, ClientConfig::default())
            .await
            .unwrap();
        let mut stream = client.call_stream_value(&(5u32, 3u32)).await.unwrap();
        let mut items = Vec::new();
        while let Some(item) = stream.next_value::<(u32, String)>().await {
            items.push(item);
        }
        assert_eq!(items.len(), 5);
        for (index, item) in items.iter().enumerate() {
            match item {
                Err(Error::Codec { .. }) if index == 3 => {}
                Ok((n, text)) if index != 3 => {
                    assert_eq!(*n as usize, index);
                    assert_eq!(text, &format!("item {index}"));
                }
                other => panic!("item {index}: {other:?}"),
            }
        }
        assert_eq!(stream.reply_value::<u32>().await.unwrap(), 5);
        serving.abort();
    })
    .await
    .expect("watchdog");
}
