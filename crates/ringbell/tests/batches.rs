//! Batches and in-place sends between two real processes: `send_batch` / `feed` / `flush`
//! and `send_with` on one side, `recv_batch` on the other, every message checked byte for
//! byte. Children are this test binary in a role, as in `cross_process.rs` (whose module
//! docs describe the machinery); no test asserts on timing.

#[allow(dead_code)] // Each suite uses a part of the helpers.
mod common;

use common::{
    param, random_bytes, report, shared_test, wait_from_name, wait_name, Checksum, ChildProcess,
    Context, SocketPath, XorShift64, PATIENCE,
};
use ringbell::{Batch, ClientConfig, Connection, Error, Server, ServerConfig, WaitStrategy};

/// The children's rings: small, so that messages of a few KiB go in chunks and a batch
/// of a few dozen messages outgrows the ring.
const RING: usize = 4096;
/// The largest message, on both ends.
const MAX_MESSAGE: usize = 1 << 20;
/// How many messages a `recv_batch` takes at most, in the children.
const BATCH_LIMIT: usize = 64;

#[test]
fn child_entry() {
    common::run_child_entry(run_role);
}

fn run_role(role: &str) -> Result<(), String> {
    match role {
        "batch_echo_server" => role_batch_echo_server(),
        "checking_sink_server" => role_checking_sink_server(),
        other => Err(format!("unknown role {other:?}")),
    }
}

/// The `index`th message of a stream: its length follows from the index (mostly under
/// 200 bytes, one in six larger than a frame of a `RING`-byte ring, so chunked), its bytes
/// from a generator seeded with it. Both ends compute it, so the receiver checks each one.
fn stream_message(index: u64) -> Vec<u8> {
    let mut rng = XorShift64::new(index.wrapping_mul(0x9e37_79b9) + 1);
    let len = if rng.next_u64() % 6 == 0 {
        RING / 4 + (rng.next_u64() % (3 * RING as u64)) as usize
    } else {
        (rng.next_u64() % 200) as usize
    };
    random_bytes(index + 1_000, len)
}

fn bind(path: &str) -> Result<Server, String> {
    let config = ServerConfig::default()
        .wait(wait_from_name(&param("RB_WAIT")))
        .ring_capacity(RING)
        .max_message_size(MAX_MESSAGE);
    Server::bind(path, config).context("binding")
}

/// Accepts one client and echoes what it sends, a batch at a time: each `recv_batch` is
/// sent back with one `send_batch`. Reports `echoed <messages> in <batches>`.
fn role_batch_echo_server() -> Result<(), String> {
    let server = bind(&param("RB_PATH"))?;
    report("bound");
    let mut conn = server.accept().context("accepting")?;
    let mut batch = Batch::new();
    let (mut messages, mut batches) = (0usize, 0usize);
    loop {
        match conn.recv_batch(&mut batch, BATCH_LIMIT, None) {
            Ok(taken) => {
                if taken != batch.len() || taken == 0 || taken > BATCH_LIMIT {
                    return Err(format!(
                        "recv_batch said {taken}, the batch holds {}",
                        batch.len()
                    ));
                }
                let parts: Vec<&[u8]> = batch.iter().collect();
                conn.send_batch(&parts).context("echoing a batch")?;
                messages += taken;
                batches += 1;
            }
            Err(Error::PeerDied) => break,
            Err(error) => return Err(format!("receiving after {messages} messages: {error}")),
        }
    }
    report(&format!("echoed {messages} in {batches}"));
    Ok(())
}

/// Accepts one client and receives [`stream_message`]s 0, 1, 2..., checking each;
/// reports `received <count> <checksum>` when the client hangs up. With `RB_RECEIVE=mixed`
/// it takes them by turns with `recv`, `try_recv`, and `recv_batch` of limits 1 to 5 and
/// 64, so that packs of messages (what `send_batch` writes) are taken apart at every
/// point; else with `recv_batch` of 64 only.
fn role_checking_sink_server() -> Result<(), String> {
    let server = bind(&param("RB_PATH"))?;
    report("bound");
    let mixed = std::env::var("RB_RECEIVE").is_ok_and(|receive| receive == "mixed");
    let mut conn = server.accept().context("accepting")?;
    let mut batch = Batch::new();
    let mut one = Vec::new();
    let mut checksum = Checksum::default();
    let mut index = 0u64;
    let mut turn = 0usize;
    loop {
        turn += 1;
        let received = match (mixed, turn % 8) {
            (true, 0) => conn.recv(&mut one, Some(PATIENCE)).map(|_| true),
            (true, 1) => conn.try_recv(&mut one).map(|got| got.is_some()),
            (true, limit @ 2..=6) => conn
                .recv_batch(&mut batch, limit - 1, Some(PATIENCE))
                .map(|_| false),
            _ => conn
                .recv_batch(&mut batch, BATCH_LIMIT, Some(PATIENCE))
                .map(|_| false),
        };
        let messages: Vec<&[u8]> = match received {
            Ok(true) => vec![one.as_slice()],
            Ok(false) if turn % 8 == 1 && mixed => Vec::new(),
            Ok(false) => batch.iter().collect(),
            Err(Error::PeerDied) => break,
            Err(error) => return Err(format!("receiving message {index}: {error}")),
        };
        for message in messages {
            let expected = stream_message(index);
            if message != expected.as_slice() {
                return Err(format!(
                    "message {index} differs: {} bytes, expected {}",
                    message.len(),
                    expected.len()
                ));
            }
            checksum.add(message);
            index += 1;
        }
    }
    report(&format!("received {index} {:016x}", checksum.value()));
    Ok(())
}

fn spawn_server(role: &str, socket: &SocketPath, wait: WaitStrategy) -> ChildProcess {
    spawn_server_with(role, socket, wait, &[])
}

fn spawn_server_with(
    role: &str,
    socket: &SocketPath,
    wait: WaitStrategy,
    extra: &[(&str, String)],
) -> ChildProcess {
    let mut params = vec![
        ("RB_PATH", socket.param()),
        ("RB_WAIT", wait_name(wait).into()),
    ];
    params.extend(extra.iter().cloned());
    let mut child = ChildProcess::spawn(role, &params);
    child.expect_line("bound");
    child
}

fn connect(socket: &SocketPath, wait: WaitStrategy) -> Connection {
    let config = ClientConfig::default().wait(wait);
    Connection::connect(socket.path(), config).expect("connecting")
}

/// Batches of 1 to 40 messages of random sizes, chunked ones among them, sent with
/// `send_batch` (or fed, or written in place with `send_with`) and echoed back a
/// `recv_batch` at a time by another process, whose echoes this side takes with
/// `recv_batch` too: every message comes back whole, in order, byte for byte. Each batch
/// fits in the two rings together, since both sides send before they read.
#[test]
fn batches_of_random_sizes_echo_across_processes_byte_for_byte() {
    let _test = shared_test("batch_echo");
    for wait in common::ALL_WAITS {
        let socket = SocketPath::new("batch_echo");
        let mut server = spawn_server("batch_echo_server", &socket, wait);
        let mut conn = connect(&socket, wait);
        let mut rng = XorShift64::new(23);
        let mut batch = Batch::new();
        let mut sent = 0usize;
        for round in 0..200u64 {
            let count = 1 + (rng.next_u64() % 40) as usize;
            let mut room = RING;
            let mut messages = Vec::new();
            for _ in 0..count {
                let len = if rng.next_u64() % 10 == 0 {
                    RING / 4 + (rng.next_u64() % (RING as u64 / 2)) as usize
                } else {
                    (rng.next_u64() % 150) as usize
                };
                // Room in the ring for the message with its chunks' and frames' headers.
                let cost = len + 16 * (len / (RING / 4 - 16) + 2);
                if cost > room {
                    break;
                }
                room -= cost;
                messages.push(random_bytes(round * 100 + messages.len() as u64, len));
            }
            let parts: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            match round % 3 {
                0 => conn.send_batch(&parts).expect("sending a batch"),
                1 => {
                    // Fed and never flushed: the receive below shows them to the peer.
                    for part in &parts {
                        conn.feed(part).expect("feeding");
                    }
                }
                _ => {
                    for part in &parts {
                        conn.send_with(part.len(), |buf| {
                            buf.copy_from_slice(part);
                            Ok::<(), Error>(())
                        })
                        .expect("sending in place");
                    }
                }
            }
            let mut echoed = 0;
            while echoed < messages.len() {
                let taken = conn
                    .recv_batch(&mut batch, usize::MAX, Some(PATIENCE))
                    .unwrap_or_else(|error| panic!("{wait:?}: round {round}: {error}"));
                assert_eq!(taken, batch.len());
                for message in &batch {
                    assert!(
                        message == messages[echoed].as_slice(),
                        "{wait:?}: round {round}, echo {echoed} differs ({} bytes, expected {})",
                        message.len(),
                        messages[echoed].len()
                    );
                    echoed += 1;
                }
            }
            sent += messages.len();
        }
        drop(conn);
        let line = server.next_line();
        assert!(
            line.starts_with(&format!("echoed {sent} in ")),
            "{wait:?}: the server said {line:?}, {sent} messages were sent"
        );
        server.assert_success();
    }
}

/// One `send_batch` of 16 rings' worth of messages, chunked ones among them, to a process
/// that checks each: the batch waits for room as the receiver frees it (it does not fail,
/// and nothing is lost or reordered); then the same with `feed` and one `flush`.
#[test]
fn a_batch_larger_than_the_ring_waits_for_room_and_loses_nothing() {
    let _test = shared_test("batch_larger_than_ring");
    for wait in common::ALL_WAITS {
        let socket = SocketPath::new("batch_larger");
        let mut server = spawn_server("checking_sink_server", &socket, wait);
        let mut conn = connect(&socket, wait);
        let mut checksum = Checksum::default();
        let mut index = 0u64;
        for feeding in [false, true] {
            let mut messages = Vec::new();
            let mut bytes = 0;
            while bytes < 16 * RING {
                let message = stream_message(index);
                bytes += message.len();
                checksum.add(&message);
                messages.push(message);
                index += 1;
            }
            assert!(messages.iter().any(|message| message.len() > RING / 4));
            let parts: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            if feeding {
                for part in &parts {
                    conn.feed(part).expect("feeding");
                }
                conn.flush().expect("flushing");
            } else {
                conn.send_batch(&parts)
                    .expect("sending a batch larger than the ring");
            }
        }
        drop(conn);
        server.expect_line(&format!("received {index} {:016x}", checksum.value()));
        server.assert_success();
    }
}

/// Batches of small messages, which travel packed several to a frame, taken apart by a
/// receiver that takes them by turns one at a time (`recv`, `try_recv`) and in batches of
/// 1 to 5 and 64: every message arrives once, in order, byte for byte, wherever a receive
/// begins or ends inside a pack. Batches of 1 to 70 of [`stream_message`]s, so chunked
/// messages come between the packs, and some batches are larger than the ring.
#[test]
fn packed_batches_arrive_whole_whatever_the_receiver_takes_at_a_time() {
    let _test = shared_test("packed_batches");
    for wait in common::ALL_WAITS {
        let socket = SocketPath::new("packed");
        let mut server = spawn_server_with(
            "checking_sink_server",
            &socket,
            wait,
            &[("RB_RECEIVE", "mixed".into())],
        );
        let mut conn = connect(&socket, wait);
        let mut rng = XorShift64::new(41);
        let mut checksum = Checksum::default();
        let mut index = 0u64;
        for _ in 0..300 {
            let count = 1 + rng.next_u64() % 70;
            let messages: Vec<Vec<u8>> = (index..index + count).map(stream_message).collect();
            for message in &messages {
                checksum.add(message);
            }
            index += count;
            let parts: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            conn.send_batch(&parts).expect("sending a batch");
        }
        drop(conn);
        server.expect_line(&format!("received {index} {:016x}", checksum.value()));
        server.assert_success();
    }
}

/// `send_with` to a process that checks every message: a closure that fills the whole
/// length, one that writes only the start (the rest arrives as zeroes), messages larger
/// than a frame (which go through a buffer, in chunks), and closures that fail or panic,
/// which send nothing: the receiver, which checks the stream's order, would see a gap.
#[test]
fn send_with_delivers_what_the_closure_wrote_and_nothing_when_it_fails() {
    let _test = shared_test("send_with");
    let socket = SocketPath::new("send_with");
    let mut server = spawn_server("checking_sink_server", &socket, WaitStrategy::default());
    let mut conn = connect(&socket, WaitStrategy::default());
    let mut checksum = Checksum::default();
    for index in 0..500u64 {
        let message = stream_message(index);
        checksum.add(&message);
        if index % 5 == 1 {
            let failed = conn.send_with(message.len(), |buf| {
                buf.fill(0xee);
                Err::<(), _>(Error::Timeout)
            });
            assert!(matches!(failed, Err(Error::Timeout)), "{failed:?}");
        }
        if index % 7 == 2 {
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                conn.send_with(message.len(), |buf| -> Result<(), Error> {
                    buf.fill(0xdd);
                    panic!("the serializer gave up")
                })
            }));
            assert!(panicked.is_err());
        }
        conn.send_with(message.len(), |buf| {
            if index % 3 == 0 {
                // Leave the zero bytes unwritten: they arrive as zero all the same.
                for (to, &from) in buf.iter_mut().zip(&message) {
                    if from != 0 {
                        *to = from;
                    }
                }
            } else {
                buf.copy_from_slice(&message);
            }
            Ok::<(), Error>(())
        })
        .unwrap_or_else(|error| panic!("message {index}: {error}"));
    }
    drop(conn);
    server.expect_line(&format!("received 500 {:016x}", checksum.value()));
    server.assert_success();
}
