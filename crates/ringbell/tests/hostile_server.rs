//! A server that breaks the call protocol, played by hand on a real connection (shared
//! memory, doorbells, the control socket): the client's `ResponseStream` must take what
//! the server was allowed to send, then end that call with `Error::Corrupted`, never
//! hand on more than its credit allowed. The server runs on a thread of this process: the
//! test is about what the client accepts, not about a process's death.

#![cfg(feature = "tokio")]

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::SocketPath;
use ringbell::test_api::{
    accept_for_calls, item_cost, pack_of, recv_tagged, send_tagged, window_of,
};
use ringbell::tokio::{CallOptions, Client};
use ringbell::{ClientConfig, Error, Server, ServerConfig};

fn refs(items: &[Vec<u8>]) -> Vec<&[u8]> {
    items.iter().map(Vec::as_slice).collect()
}

const WATCHDOG: Duration = Duration::from_secs(60);

/// A window large enough that the client grants nothing back for the first pack (it
/// grants at half a window taken), so what the client allows is exactly the window.
const WINDOW: u32 = 1000;

#[test]
fn a_server_streaming_past_its_credit_cuts_that_call_after_what_it_was_allowed() {
    let socket = SocketPath::new("hostile-credit");
    let server = Server::bind(&socket, ServerConfig::default()).unwrap();
    let first: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1]).collect();
    let first_cost: u32 = first.iter().map(|item| item_cost(item.len(), WINDOW)).sum();
    // More than what is left of the window: 60 items of 1 byte cost 60 × 17.
    let second: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; 1]).collect();
    let second_cost: u32 = second
        .iter()
        .map(|item| item_cost(item.len(), WINDOW))
        .sum();
    assert!(first_cost < WINDOW / 2 && first_cost + second_cost > WINDOW);

    let (sent_first, sent_second) = (first.clone(), second);
    let hostile = std::thread::spawn(move || {
        let mut conn = accept_for_calls(&server).unwrap();
        let mut buf = Vec::new();
        let (correlation, len) = recv_tagged(&mut conn, &mut buf, Some(WATCHDOG)).unwrap();
        assert_eq!(window_of(&buf[..len]), Some(WINDOW), "the opening's window");
        send_tagged(&mut conn, correlation, &pack_of(&refs(&sent_first))).unwrap();
        send_tagged(&mut conn, correlation, &pack_of(&refs(&sent_second))).unwrap();
        // The client cancels the call it cut; keep the connection until then.
        let (cancelled, _) = recv_tagged(&mut conn, &mut buf, Some(WATCHDOG)).unwrap();
        assert_eq!(cancelled, correlation);
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let check = async {
            let client = Client::connect(&socket, ClientConfig::default())
                .await
                .unwrap();
            let options = CallOptions::default().window_bytes(WINDOW);
            let mut stream = client.call_stream_with(b"go", options).await.unwrap();
            for expected in &first {
                assert_eq!(&stream.next().await.unwrap().unwrap(), expected);
            }
            match stream.next().await {
                Some(Err(Error::Corrupted { detail })) => {
                    assert!(detail.contains("credit"), "{detail}");
                }
                other => panic!("the pack over the credit was not refused: {other:?}"),
            }
            assert!(stream.next().await.is_none());
        };
        tokio::time::timeout(WATCHDOG, check)
            .await
            .expect("watchdog: the client never ended the call");
    });
    hostile.join().unwrap();
}
