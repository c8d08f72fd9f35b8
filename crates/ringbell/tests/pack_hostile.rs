//! A hostile peer against packed messages (the `Pack` frames that `send_batch` and `feed`
//! write, issue 14), across real processes: a child connects honestly, then writes a pack
//! into its ring by hand, as `RB_VARIANT` says, with one good message before the wrong
//! entry. The server, in this process, must receive the good message, then get
//! `Error::Corrupted` for that connection only (with `recv` and with `recv_batch`), and
//! keep serving others.
//!
//! Linux only, on both of its backends: the child finds its segment through
//! `/proc/self/maps` (`common::Scribbler`). Children, watchdogs and the line protocol are
//! those of `tests/common` (see `cross_process.rs`).

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use common::{
    accept_from, param, report, shared_test, sleep_until_killed, ChildProcess, Context, Scribbler,
    SocketPath, CLIENT_TO_SERVER, DATA_OFFSET, PATIENCE, RINGS_OFFSET, RING_CONTROL_LEN,
};
use std::time::Duration;

use ringbell::{Batch, ClientConfig, Connection, Error, Server, ServerConfig};

/// The server's ring.
const RING: usize = 4096;
/// The server's largest message: less than a frame of its ring (1,008 bytes).
const MAX_MESSAGE: usize = 500;
/// `FrameKind::Pack` on the wire.
const PACK: u8 = 7;
/// The variant whose pack is published `LATE_BY` after the child says "ready", so that
/// the server is (almost always) already waiting in its receive when the pack arrives:
/// `recv_batch` then takes the first message the ordinary way and the rest of the pack
/// after it (`take_rest_of_pack`), which must keep the wrong entry for the next call. If
/// the server were slower than that, the pack would be taken in a run, as in
/// `runs_past_its_pack`, with the same outcome; nothing depends on the timing but which
/// path is exercised.
const LATE: &str = "runs_past_its_pack_late";
const LATE_BY: Duration = Duration::from_millis(300);

#[test]
fn child_entry() {
    common::run_child_entry(|role| match role {
        "hostile_pack_client" => role_hostile_pack_client(),
        other => Err(format!("unknown role {other:?}")),
    });
}

/// One pack entry: the message's length, then its bytes.
fn entry(message: &[u8]) -> Vec<u8> {
    let mut bytes = (message.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(message);
    bytes
}

/// Connects, writes a pack of "first" and the wrong entry `RB_VARIANT` names at the start
/// of its ring, publishes it, reports "forged", and stays alive.
fn role_hostile_pack_client() -> Result<(), String> {
    let conn =
        Connection::connect(param("RB_PATH"), ClientConfig::default()).context("connecting")?;
    let segment = Scribbler::find(&conn)?;
    let first = entry(b"first");
    let variant = param("RB_VARIANT");
    let payload: Vec<u8> = match variant.as_str() {
        // The second entry says 200 bytes; 2 follow. Published at once, or a moment after
        // the parent was told to start receiving (see `LATE`).
        "runs_past_its_pack" | LATE => {
            [first, 200u32.to_le_bytes().to_vec(), b"xy".to_vec()].concat()
        }
        // Two bytes left: not even a length.
        "cut_inside_a_length" => [first, vec![1, 0]].concat(),
        // A second message larger than the server's limit.
        "beyond_the_limit" => [first, entry(&[7; MAX_MESSAGE + 1])].concat(),
        // No message at all (the good one is left out).
        "empty" => Vec::new(),
        other => return Err(format!("unknown variant {other:?}")),
    };
    let mut frame = common::frame_header(payload.len() as u32, PACK).to_vec();
    frame.extend_from_slice(&payload);
    frame.resize(frame.len().next_multiple_of(8), 0);
    segment.write_bytes(DATA_OFFSET, &frame);
    if variant == LATE {
        report("ready");
        std::thread::sleep(LATE_BY);
    }
    let tail_word = RINGS_OFFSET + CLIENT_TO_SERVER * RING_CONTROL_LEN;
    segment.store_word(tail_word, frame.len() as u64);
    report("forged");
    let _keep_open = conn;
    sleep_until_killed()
}

fn server(socket: &SocketPath) -> Server {
    let config = ServerConfig::default()
        .ring_capacity(RING)
        .max_message_size(MAX_MESSAGE);
    Server::bind(socket, config).expect("binding")
}

/// The child forges `variant`; the server receives "first" (unless the pack is empty),
/// then `Corrupted` with `expected_detail`, and again on the next call; the child still
/// lives; the server still serves. Done once receiving with `recv`, once with
/// `recv_batch`.
fn is_reported_as_corrupted(variant: &str, expected_detail: &str) {
    for batched in [false, true] {
        let test = format!("pack_hostile_{variant}_{batched}");
        let _test = shared_test(&test);
        let socket = SocketPath::new(&test);
        let server = server(&socket);
        let mut hostile = ChildProcess::spawn(
            "hostile_pack_client",
            &[("RB_PATH", socket.param()), ("RB_VARIANT", variant.into())],
        );
        let mut conn = accept_from(&server, &mut hostile);
        hostile.expect_line(if variant == LATE { "ready" } else { "forged" });
        let mut buf = Vec::new();
        let mut batch = Batch::new();
        let mut receive = |conn: &mut Connection| -> Result<Vec<Vec<u8>>, Error> {
            if batched {
                conn.recv_batch(&mut batch, 64, Some(PATIENCE))?;
                Ok(batch.iter().map(<[u8]>::to_vec).collect())
            } else {
                conn.recv(&mut buf, Some(PATIENCE))?;
                Ok(vec![buf.clone()])
            }
        };
        if variant != "empty" {
            let got = receive(&mut conn);
            assert!(
                matches!(&got, Ok(messages) if *messages == [b"first".to_vec()]),
                "{variant}, batched {batched}: the message before the wrong entry: {got:?}"
            );
        }
        let result = receive(&mut conn);
        match &result {
            Err(Error::Corrupted { detail }) if detail.contains(expected_detail) => {}
            _ => panic!(
                "{variant}, batched {batched}: expected Corrupted ({expected_detail}), got \
                 {result:?}; {}",
                hostile.diagnostics()
            ),
        }
        let again = receive(&mut conn);
        assert!(
            matches!(again, Err(Error::Corrupted { .. })),
            "{variant}: the connection must stay closed, the next receive gave {again:?}"
        );
        assert!(hostile.is_running(), "{variant}: {}", hostile.diagnostics());
        drop(conn);
        hostile.kill();
        still_serves(&server, &socket);
    }
}

/// An honest client in this process sends a batch through `server` and gets it back.
fn still_serves(server: &Server, socket: &SocketPath) {
    let messages: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i)]).collect();
    let echoed = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            let mut conn =
                Connection::connect(socket, ClientConfig::default()).expect("connecting");
            let parts: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            conn.send_batch(&parts).expect("sending");
            let mut echoed = Vec::new();
            let mut buf = Vec::new();
            while echoed.len() < messages.len() {
                conn.recv(&mut buf, Some(PATIENCE))
                    .expect("receiving the echo");
                echoed.push(buf.clone());
            }
            echoed
        });
        let mut conn = server.accept().expect("accepting an honest client");
        let mut batch = Batch::new();
        let mut count = 0;
        while count < messages.len() {
            conn.recv_batch(&mut batch, 64, Some(PATIENCE))
                .expect("receiving");
            let parts: Vec<&[u8]> = batch.iter().collect();
            conn.send_batch(&parts).expect("echoing");
            count += batch.len();
        }
        client.join().expect("the honest client panicked")
    });
    assert_eq!(echoed, messages, "the honest echo differs");
}

#[test]
fn a_packed_message_running_past_its_pack_is_corruption() {
    is_reported_as_corrupted("runs_past_its_pack", "runs past its pack");
}

#[test]
fn a_packed_message_running_past_its_pack_while_the_server_waits_is_corruption() {
    is_reported_as_corrupted(LATE, "runs past its pack");
}

#[test]
fn a_pack_cut_inside_a_length_is_corruption() {
    is_reported_as_corrupted("cut_inside_a_length", "ends inside a message's length");
}

#[test]
fn a_packed_message_beyond_the_limit_is_corruption() {
    is_reported_as_corrupted("beyond_the_limit", "exceeds the connection's maximum size");
}

#[test]
fn an_empty_pack_is_corruption() {
    is_reported_as_corrupted("empty", "holds no message");
}
