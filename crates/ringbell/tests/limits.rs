//! Limits, across real processes: a ring filled by a stalled reader, messages above
//! `max_message_size` (request/response included), and a client out of file descriptors.
//! Each must give a defined, documented error and lose no data.
//!
//! What other suites already prove is not repeated here: `cross_process.rs` covers
//! `TooLarge` on both sides of a blocking connection (a large message one byte over the
//! maximum, and one of exactly the maximum) and a send timing out with the large-message
//! region full; `fd_limit.rs` covers a server out of fds (clients refused and told why, the
//! connected ones served on).
//!
//! Children are this test binary run again (see `common::ChildProcess`); every test holds a
//! watchdog, waits that should succeed are bounded by a minute, and no test asserts on how
//! long anything took.

// On Windows (under Wine 8 in CI) the blocking and the async tests run; the fd-exhaustion
// ones are Unix-only (Windows has no per-process handle limit to exhaust).

#[allow(dead_code)]
mod common;

#[cfg(unix)]
use std::path::Path;
#[cfg(unix)]
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    accept_from, expect_parent_line, number_param, param, random_bytes, report, shared_test,
    wait_from_name, wait_name, ChildProcess, Context, SocketPath, PATIENCE,
};
use ringbell::{ClientConfig, Connection, Error, Server, ServerConfig, WaitStrategy};

// =======================================================================================
// The child side.

#[test]
fn child_entry() {
    common::run_child_entry(run_role);
}

fn run_role(role: &str) -> Result<(), String> {
    match role {
        "stalled_reader" => role_stalled_reader(),
        #[cfg(unix)]
        "fd_starved_client" => role_fd_starved_client(),
        "echo_client" => role_echo_client(),
        #[cfg(ringbell_async)]
        "rpc_server" => rpc::role_rpc_server(),
        other => Err(format!("unknown role {other:?}")),
    }
}

// =======================================================================================
// 1. A ring filled by a stalled reader.

/// The message with index `index`: the index (u64 LE), then bytes seeded by it, `len` in
/// all. The reader can thus check each message on its own and report which arrived.
fn indexed_message(index: u64, len: usize) -> Vec<u8> {
    assert!(len >= 8);
    let mut message = index.to_le_bytes().to_vec();
    message.extend_from_slice(&random_bytes(index, len - 8));
    message
}

/// The message that tells the reader that nothing follows.
const END: &[u8] = b"end";

/// The stalled reader, on the side `RB_SIDE` (`client` or `server`) of a connection with
/// `RB_WAIT`: it connects (reporting `connected`) or binds a server with a ring of
/// `RB_RING` bytes and accepts (reporting `bound`, then `accepted`), reads nothing until the
/// parent says `go`, then reads until [`END`], checking that every message is an intact
/// [`indexed_message`], and reports `received <indices, in arrival order>`.
fn role_stalled_reader() -> Result<(), String> {
    let wait = wait_from_name(&param("RB_WAIT"));
    let mut conn = match param("RB_SIDE").as_str() {
        "client" => {
            let config = ClientConfig::default().wait(wait);
            let conn = Connection::connect(param("RB_PATH"), config).context("connecting")?;
            report("connected");
            conn
        }
        "server" => {
            let config = ServerConfig::default()
                .wait(wait)
                .ring_capacity(number_param("RB_RING"));
            let server = Server::bind(param("RB_PATH"), config).context("binding")?;
            report("bound");
            let conn = server.accept().context("accepting")?;
            report("accepted");
            conn
        }
        other => return Err(format!("unknown side {other:?}")),
    };
    expect_parent_line("go")?;
    let mut received = Vec::new();
    let mut buf = Vec::new();
    loop {
        let len = conn
            .recv(&mut buf, Some(PATIENCE))
            .map_err(|error| format!("receiving after {received:?}: {error}"))?;
        if buf == END {
            break;
        }
        let index = buf
            .get(..8)
            .map(|bytes| u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
            .ok_or_else(|| format!("a {len}-byte message after {received:?}"))?;
        if len != buf.len() || buf != indexed_message(index, len.max(8)) {
            return Err(format!(
                "a {len}-byte message claiming index {index}, after {received:?}, is not intact"
            ));
        }
        received.push(index);
    }
    let list: Vec<String> = received.iter().map(u64::to_string).collect();
    report(&format!("received {}", list.join(",")));
    Ok(())
}

/// Sends `message`, retrying after `Timeout`s: the reader reads again, but a short send
/// timeout may still expire on a loaded machine. A timed-out attempt delivers nothing, so
/// the reader still receives `message` exactly once.
fn send_retrying_timeouts(conn: &mut Connection, message: &[u8], reader: &mut ChildProcess) {
    for _ in 0..100 {
        match conn.send(message) {
            Ok(()) => return,
            Err(Error::Timeout) => continue,
            Err(error) => {
                let diagnostics = reader.diagnostics();
                panic!("send failed: {error}; {diagnostics}");
            }
        }
    }
    let diagnostics = reader.diagnostics();
    panic!("send timed out 100 times in a row although the reader reads; {diagnostics}");
}

/// Fills the ring of `conn` (whose reader, `reader`, is stalled), checking that the sends
/// that do not fit time out, lets the reader go, sends a little more and checks that the
/// reader received exactly the messages whose send succeeded, intact and in order.
fn fill_stall_and_resume(conn: &mut Connection, reader: &mut ChildProcess, what: &str) {
    let ring = conn.ring_capacity();
    let mut sent = Vec::new();
    let mut timed_out = Vec::new();
    let mut index = 0u64;
    let mut send = |conn: &mut Connection, len: usize, sent: &mut Vec<u64>| {
        let result = conn.send(&indexed_message(index, len));
        match result {
            Ok(()) => sent.push(index),
            Err(Error::Timeout) => timed_out.push(index),
            Err(ref error) => panic!("{what}: sending {len} bytes into a stalled ring: {error}"),
        }
        index += 1;
        result.is_ok()
    };
    // Small messages that surely fit, then messages of five rings until one times out: each
    // goes through the sender's large-message region (a dozen fit in its 64 KiB) with a
    // small frame in the ring, and the one that finds the region full times out leaving
    // nothing for the reader to see. (A Windows client has no region, `conn/large.rs`: its
    // first such message goes in chunks and times out part-way.) Then small messages until
    // one times out too (the ring is full, or the withdrawal of a half-sent message does
    // not fit yet).
    for _ in 0..3 {
        assert!(
            send(conn, 100, &mut sent),
            "{what}: 300 bytes did not fit an empty {ring}-byte ring"
        );
    }
    let mut larges = 0;
    while send(conn, 5 * ring, &mut sent) {
        larges += 1;
        assert!(
            larges < 1000,
            "{what}: 1,000 messages of five rings went through although nobody reads"
        );
    }
    let mut smalls = 0;
    while send(conn, 100, &mut sent) {
        smalls += 1;
        assert!(
            smalls < 1000,
            "{what}: 1,000 small sends went into a {ring}-byte ring nobody reads"
        );
    }
    println!(
        "{what}: sent {sent:?} before the ring filled; timed out: {timed_out:?} (Display: {})",
        Error::Timeout
    );

    reader.send_line("go");
    // The connection goes on: a large message and a small one, then the end.
    for len in [3 * ring, 100] {
        send_retrying_timeouts(conn, &indexed_message(index, len), reader);
        sent.push(index);
        index += 1;
    }
    send_retrying_timeouts(conn, END, reader);
    let expected: Vec<String> = sent.iter().map(u64::to_string).collect();
    let line = reader.next_line();
    if line != format!("received {}", expected.join(",")) {
        let diagnostics = reader.diagnostics();
        panic!(
            "{what}: the reader reported {line:?}; sent {sent:?}, timed out {timed_out:?}; \
             {diagnostics}"
        );
    }
    reader.assert_success();
}

/// The server (this process, `ServerConfig::send_timeout` of 200 ms) sends to a client
/// child that reads nothing until told: each send that finds the ring full returns
/// `Error::Timeout` (including a large message that found the region full), and once the
/// reader resumes it receives exactly the messages whose sends succeeded, intact and in
/// order, none of the timed-out ones, and the messages sent afterwards. Once per wait
/// strategy.
#[test]
fn a_server_sending_to_a_stalled_client_times_out_and_loses_nothing() {
    let _test = shared_test("stalled_client");
    for wait in common::ALL_WAITS {
        let socket = SocketPath::new("stalled_client");
        let config = ServerConfig::default()
            .wait(wait)
            .ring_capacity(1024)
            .send_timeout(Some(Duration::from_millis(200)));
        let server = Server::bind(&socket, config).expect("binding");
        let mut reader = ChildProcess::spawn(
            "stalled_reader",
            &[
                ("RB_PATH", socket.param()),
                ("RB_SIDE", "client".into()),
                ("RB_WAIT", wait_name(wait).into()),
            ],
        );
        let mut conn = accept_from(&server, &mut reader);
        reader.expect_line("connected");
        fill_stall_and_resume(&mut conn, &mut reader, &format!("server, {wait:?}"));
    }
}

/// The same with the roles swapped: the client (this process, `ClientConfig::send_timeout`
/// of 200 ms) sends to a server child that reads nothing until told.
#[test]
fn a_client_sending_to_a_stalled_server_times_out_and_loses_nothing() {
    let _test = shared_test("stalled_server");
    for wait in common::ALL_WAITS {
        let socket = SocketPath::new("stalled_server");
        let mut reader = ChildProcess::spawn(
            "stalled_reader",
            &[
                ("RB_PATH", socket.param()),
                ("RB_SIDE", "server".into()),
                ("RB_WAIT", wait_name(wait).into()),
                ("RB_RING", "1024".into()),
            ],
        );
        reader.expect_line("bound");
        let config = ClientConfig::default()
            .wait(wait)
            .send_timeout(Some(Duration::from_millis(200)));
        let mut conn = Connection::connect(&socket, config).expect("connecting");
        reader.expect_line("accepted");
        fill_stall_and_resume(&mut conn, &mut reader, &format!("client, {wait:?}"));
    }
}

// =======================================================================================
// 2. Messages above the maximum size on the async and typed APIs.

/// Connects to `RB_PATH`, reports `connected`, echoes every message until the server hangs
/// up, and reports `echoed <messages>`.
fn role_echo_client() -> Result<(), String> {
    let mut conn = Connection::connect(
        param("RB_PATH"),
        ClientConfig::default().connect_timeout(PATIENCE),
    )
    .context("connecting")?;
    report("connected");
    let mut buf = Vec::new();
    let mut count = 0u64;
    loop {
        match conn.recv(&mut buf, Some(PATIENCE)) {
            Ok(_) => {
                conn.send(&buf).context("echoing")?;
                count += 1;
            }
            Err(Error::PeerDied) => break,
            Err(error) => return Err(format!("receiving after {count} messages: {error}")),
        }
    }
    report(&format!("echoed {count}"));
    Ok(())
}

/// A server with the smallest memory budget allowed (the maximum message and a call's
/// 4,112 bytes) sends and receives large messages (issue 14), of the maximum and below,
/// every one intact both ways. Regression: a first design charged the server's own region
/// to the budget for as long as it lived, so once it had sent a 100 KB message (a region
/// of 256 KiB) no room was left to receive the echo, and the server waited for ever.
#[test]
fn a_server_with_the_smallest_budget_echoes_large_messages() {
    let _test = shared_test("smallest_budget_large");
    let socket = SocketPath::new("smallest_budget_large");
    let max = 256 << 10;
    // Blocking, so that the server's large messages go through its region.
    let config = ServerConfig::default()
        .max_message_size(max)
        .memory_budget(max + 4112)
        .wait(WaitStrategy::Block);
    let server = Server::bind(&socket, config).expect("binding");
    let mut client = ChildProcess::spawn("echo_client", &[("RB_PATH", socket.param())]);
    let mut conn = accept_from(&server, &mut client);
    client.expect_line("connected");
    let mut buf = Vec::new();
    let sizes = [max, 100_000, 40_000, 9, max - 1, 33_000];
    for (index, &len) in sizes.iter().enumerate() {
        let message = indexed_message(index as u64, len);
        conn.send(&message).expect("sending");
        conn.recv(&mut buf, Some(PATIENCE))
            .expect("receiving the echo");
        assert!(buf == message, "the echo of {len} bytes differs");
    }
    drop(conn);
    client.expect_line(&format!("echoed {}", sizes.len()));
    client.assert_success();
}

/// An `AsyncConnection` (the server's side here, an `AsyncServer` in this process; the
/// client is a child process) refuses a message one byte above the maximum with
/// `Error::TooLarge { len, max }`, and with the `codec` feature a value whose encoding is
/// above it; nothing of either reaches the peer, and the connection goes on: a message of
/// exactly the maximum and a small one are echoed back, in order, and nothing else.
#[cfg(ringbell_async)]
#[test]
fn the_async_api_refuses_messages_above_the_maximum_and_goes_on() {
    let _test = shared_test("async_too_large");
    let socket = SocketPath::new("async_too_large");
    let max = 2000;
    let config = ServerConfig::default()
        .ring_capacity(1024)
        .max_message_size(max);
    let runtime = tokio::runtime::Runtime::new().expect("starting tokio");
    runtime.block_on(async {
        let mut server =
            ringbell::tokio::AsyncServer::bind(socket.path(), config).expect("binding");
        let mut client = ChildProcess::spawn("echo_client", &[("RB_PATH", socket.param())]);
        let accepted = tokio::time::timeout(PATIENCE, server.accept()).await;
        let Ok(Ok(mut conn)) = accepted else {
            let diagnostics = client.diagnostics();
            panic!("accept gave {accepted:?}; {diagnostics}");
        };
        client.expect_line("connected");
        match conn.send(&vec![1u8; max + 1]).await {
            Err(error @ Error::TooLarge { .. }) => {
                assert!(
                    matches!(error, Error::TooLarge { len, max: limit } if (len, limit) == (max + 1, max)),
                    "{error:?}"
                );
                println!("AsyncConnection::send: {error}");
            }
            other => panic!("sending {} bytes gave {other:?}", max + 1),
        }
        #[cfg(feature = "codec")]
        match conn.send_value(&vec![2u8; max]).await {
            Err(error @ Error::TooLarge { .. }) => {
                assert!(
                    matches!(error, Error::TooLarge { len, max: limit } if len > max && limit == max),
                    "{error:?}"
                );
                println!("AsyncConnection::send_value: {error}");
            }
            other => panic!("sending a value encoded in more than {max} bytes gave {other:?}"),
        }
        let largest = random_bytes(7, max);
        let mut buf = Vec::new();
        for message in [&largest[..], b"still usable"] {
            conn.send(message).await.expect("sending after TooLarge");
            tokio::time::timeout(PATIENCE, conn.recv(&mut buf))
                .await
                .expect("the echo within a minute")
                .expect("receiving the echo");
            assert!(buf == message, "the echo of a {}-byte message was {} bytes", message.len(), buf.len());
        }
        drop(conn);
        client.expect_line("echoed 2");
        client.assert_success();
    });
}

// =======================================================================================
// 3. A client out of file descriptors.

/// Opens `/dev/null` until the process has no fd left; returns them.
#[cfg(unix)]
fn exhaust_fds() -> Result<Vec<std::os::fd::OwnedFd>, String> {
    use rustix::fs::{open, Mode, OFlags};
    let mut held = Vec::new();
    loop {
        match open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => held.push(fd),
            Err(rustix::io::Errno::MFILE) => return Ok(held),
            Err(error) => return Err(format!("opening /dev/null: {error}")),
        }
        if held.len() > 100_000 {
            return Err("100,000 fds and no EMFILE: is RLIMIT_NOFILE in force?".into());
        }
    }
}

/// A client whose process runs out of fds, with a hard limit of 64: it connects and echoes
/// once, exhausts its fds, then, with 0 to 4 fds free (a connection needs one for its
/// socket and three more for the fds of the server's welcome), tries to connect and reports
/// `free <n>: <Variant>: <Display text>` or `free <n>: connected` (and echoes once). With
/// every fd freed again it connects and echoes, its first connection still echoes, and it
/// reports `done`.
#[cfg(unix)]
fn role_fd_starved_client() -> Result<(), String> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(64),
            maximum: Some(64),
        },
    )
    .context("lowering RLIMIT_NOFILE")?;
    let path = param("RB_PATH");
    let config = ClientConfig::default().connect_timeout(PATIENCE);
    let echo = |conn: &mut Connection, message: &[u8]| -> Result<(), String> {
        conn.send(message).context("sending")?;
        let mut buf = Vec::new();
        conn.recv(&mut buf, Some(PATIENCE)).context("receiving")?;
        if buf != message {
            return Err(format!("the echo of {message:?} was {buf:?}"));
        }
        Ok(())
    };
    let mut first = Connection::connect(&path, config.clone()).context("connecting first")?;
    echo(&mut first, b"before")?;
    let mut held = exhaust_fds()?;
    for free in 0..=STARVED_ATTEMPTS {
        if free > 0 {
            held.pop();
        }
        match Connection::connect(&path, config.clone()) {
            Ok(mut conn) => {
                report(&format!("free {free}: connected"));
                echo(&mut conn, b"with few fds")?;
            }
            Err(error) => {
                let variant = format!("{error:?}");
                let variant = variant.split([' ', '(', '{']).next().unwrap_or_default();
                report(&format!("free {free}: {variant}: {error}"));
            }
        }
    }
    drop(held);
    let mut last = Connection::connect(&path, config).context("connecting with fds again")?;
    echo(&mut last, b"fds again")?;
    echo(&mut first, b"after")?;
    report("done");
    Ok(())
}

/// The most fds an `fd_starved_client` frees before it tries to connect.
#[cfg(unix)]
const STARVED_ATTEMPTS: usize = 4;

/// Stops the acceptor of [`run_fd_starved_client`] when dropped, even while a failed
/// assertion unwinds (the scope would otherwise wait for it forever): raises the flag,
/// then connects, so that its `accept` returns and it sees the flag.
#[cfg(unix)]
struct StopAcceptor<'a> {
    socket: &'a Path,
    stop: &'a AtomicBool,
}

#[cfg(unix)]
impl Drop for StopAcceptor<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let config = ClientConfig::default().connect_timeout(Duration::from_secs(10));
        let _ = Connection::connect(self.socket, config);
    }
}

/// Runs an `fd_starved_client` against a server in this process that echoes every
/// connection it accepts, each in a thread of its own, and takes failed handshakes in its
/// stride. Checks that the client lost no connection and exited with success; returns its
/// report for each number of free fds, and the server's failed handshakes.
#[cfg(unix)]
fn run_fd_starved_client(test: &str) -> (Vec<String>, Vec<String>) {
    let socket = SocketPath::new(test);
    let config = ServerConfig::default()
        .ring_capacity(4096)
        .handshake_timeout(Duration::from_secs(10));
    let server = Server::bind(&socket, config).expect("binding");
    let stop = AtomicBool::new(false);
    let mut client = ChildProcess::spawn("fd_starved_client", &[("RB_PATH", socket.param())]);
    std::thread::scope(|scope| {
        let (server, stop_flag) = (&server, &stop);
        let acceptor = scope.spawn(move || {
            let mut failed = Vec::new();
            loop {
                let accepted = server.accept();
                if stop_flag.load(Ordering::SeqCst) {
                    return failed;
                }
                match accepted {
                    Ok(mut conn) => {
                        scope.spawn(move || {
                            let mut buf = Vec::new();
                            while conn.recv(&mut buf, Some(PATIENCE)).is_ok() {
                                if conn.send(&buf).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(error) => failed.push(error.to_string()),
                }
            }
        });
        let stop_acceptor = StopAcceptor {
            socket: socket.path(),
            stop: &stop,
        };
        let mut outcomes = Vec::new();
        for free in 0..=STARVED_ATTEMPTS {
            let line = client.next_line();
            println!("{line}");
            if !line.starts_with(&format!("free {free}: ")) {
                let diagnostics = client.diagnostics();
                panic!("unexpected report {line:?}; {diagnostics}");
            }
            outcomes.push(line);
        }
        client.expect_line("done");
        client.assert_success();
        drop(stop_acceptor);
        let failed = acceptor.join().expect("the acceptor panicked");
        println!("the server's failed handshakes: {failed:?}");
        (outcomes, failed)
    })
}

/// A client process out of fds (hard limit 64, all taken) gets an error from `connect`,
/// whether it cannot even create its socket (0 free: `Error::Io`, "Too many open files")
/// or cannot take the three fds of the server's welcome (1 to 3 free); nothing hangs, it
/// keeps the connection it had (which still echoes), and it connects again once it frees
/// fds. The server meanwhile sees only failed handshakes (`Error::Handshake`) and keeps
/// serving.
#[cfg(unix)]
#[test]
fn a_client_out_of_fds_fails_to_connect_and_keeps_its_connections() {
    let _test = shared_test("client_out_of_fds");
    let (outcomes, failed) = run_fd_starved_client("client_out_of_fds");
    assert!(
        outcomes[0].starts_with("free 0: Io: ") && outcomes[0].contains("Too many open files"),
        "without an fd for its socket, connect should fail with Io saying so: {}",
        outcomes[0]
    );
    for line in &outcomes[1..STARVED_ATTEMPTS] {
        assert!(
            line.contains(": Io: ") || line.contains(": Handshake: "),
            "without room for the welcome's fds, connect should fail with Io or Handshake: \
             {line}"
        );
    }
    assert!(
        failed
            .iter()
            .all(|error| error.starts_with("handshake failed")),
        "the server should see failed handshakes only: {failed:?}"
    );
}

/// A client that cannot take the fds of the server's welcome because its own process is
/// out of fds is told so: the error says it is out of file descriptors, not that the
/// server misbehaved.
///
/// The kernel sets `MSG_CTRUNC` both when a peer attaches more fds
/// than the control buffer holds and when it cannot install them in this process
/// (`EMFILE`); `recv_with_fds` gives room for `MAX_FDS`, so `MSG_CTRUNC` with fewer than
/// `MAX_FDS` fds received means the latter.
#[cfg(unix)]
#[test]
fn a_client_out_of_fds_is_told_it_is_out_of_fds() {
    let _test = shared_test("client_out_of_fds_told");
    let (outcomes, _) = run_fd_starved_client("client_out_of_fds_told");
    for line in &outcomes[..STARVED_ATTEMPTS] {
        assert!(
            line.contains("Too many open files") || line.contains("out of file descriptors"),
            "the error should say that this process is out of fds: {line}"
        );
        assert!(
            !line.contains("peer"),
            "the error blames the server for this process's lack of fds: {line}"
        );
    }
}

// =======================================================================================
// 4. Messages above the maximum size in request/response.

#[cfg(ringbell_async)]
mod rpc {
    use super::*;
    use ringbell::tokio::{AsyncServer, Client};

    /// The connection's maximum message size in these tests.
    pub const MAX: usize = 1000;

    /// A request for a response of `len` bytes.
    pub fn request_for(len: usize) -> Vec<u8> {
        (len as u32).to_le_bytes().to_vec()
    }

    /// What the handler answers to `request`: as many bytes as a 4-byte request asks for;
    /// any other request, echoed.
    fn respond(request: &[u8]) -> Result<Vec<u8>, String> {
        match <[u8; 4]>::try_from(request) {
            Ok(len) => Ok(vec![0xa5; u32::from_le_bytes(len) as usize]),
            Err(_) => Ok(request.to_vec()),
        }
    }

    /// A request/response server of `RB_KIND` (`async`: `AsyncServer::serve`; `blocking`:
    /// `Server::serve`) at `RB_PATH` with a maximum message size of [`MAX`], whose handler
    /// answers with as many bytes as each request asks for. Reports `listening`; serves
    /// until killed.
    pub fn role_rpc_server() -> Result<(), String> {
        let config = ServerConfig::default().max_message_size(MAX);
        match param("RB_KIND").as_str() {
            "async" => {
                let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
                runtime.block_on(async {
                    let server = AsyncServer::bind(param("RB_PATH"), config).context("binding")?;
                    report("listening");
                    server
                        .serve(|request: Vec<u8>| async move { respond(&request) })
                        .await;
                    Ok(())
                })
            }
            "blocking" => {
                let server = Server::bind(param("RB_PATH"), config).context("binding")?;
                report("listening");
                server.serve(|request: Vec<u8>| respond(&request))
            }
            other => Err(format!("unknown server kind {other:?}")),
        }
    }

    /// Starts a server of `kind` and connects a client to it.
    pub fn start(
        kind: &str,
        socket: &SocketPath,
    ) -> (ChildProcess, tokio::runtime::Runtime, Client) {
        let mut server = ChildProcess::spawn(
            "rpc_server",
            &[("RB_PATH", socket.param()), ("RB_KIND", kind.into())],
        );
        server.expect_line("listening");
        let runtime = tokio::runtime::Runtime::new().expect("starting tokio");
        let client = runtime
            .block_on(Client::connect(socket.path(), ClientConfig::default()))
            .expect("connecting");
        (server, runtime, client)
    }

    /// A call's outcome, in short: the response's length or the error.
    pub fn outcome(result: &Result<Vec<u8>, Error>) -> String {
        match result {
            Ok(response) => format!("Ok({} bytes)", response.len()),
            Err(error) => format!("{error:?}"),
        }
    }
}

/// A request/response client (`ringbell::tokio::Client`) whose request exceeds the
/// connection's maximum gets `Error::TooLarge { len, max }` for that call (as `call`
/// documents), and the connection goes on: calls made before and after it, and one in
/// flight at the same time, are answered. Against both servers.
///
/// (The client's driver pushes requests with `push_some`, which does not check the size, so
/// `call` checks it before queueing.)
#[cfg(ringbell_async)]
#[test]
fn a_request_above_the_maximum_fails_only_its_call() {
    let _test = shared_test("rpc_request_too_large");
    let mut failures = Vec::new();
    for kind in ["async", "blocking"] {
        let socket = SocketPath::new("rpc_request_too_large");
        let (mut server, runtime, client) = rpc::start(kind, &socket);
        let too_large = vec![1u8; rpc::MAX + 1];
        let small = rpc::request_for(20);
        let (before, refused, in_flight, after) = runtime.block_on(async {
            let before = client.call(&rpc::request_for(10)).await;
            let (refused, in_flight) = tokio::join!(client.call(&too_large), client.call(&small));
            let after = client.call(&rpc::request_for(30)).await;
            (before, refused, in_flight, after)
        });
        let summary = format!(
            "{kind}: before {}, too large {}, in flight {}, after {}",
            rpc::outcome(&before),
            rpc::outcome(&refused),
            rpc::outcome(&in_flight),
            rpc::outcome(&after)
        );
        println!("{summary}");
        if let Err(error @ Error::TooLarge { .. }) = &refused {
            println!("{kind}: {error}");
        }
        let refused_right = matches!(
            &refused,
            Err(Error::TooLarge { len, max }) if (*len, *max) == (rpc::MAX + 1, rpc::MAX)
        );
        let lengths =
            [&before, &in_flight, &after].map(|result| result.as_ref().map(Vec::len).ok());
        if !refused_right || lengths != [Some(10), Some(20), Some(30)] || !server.is_running() {
            failures.push(summary);
        }
    }
    assert!(
        failures.is_empty(),
        "expected TooLarge for the large request and answers to the others:\n{}",
        failures.join("\n")
    );
}

/// The limit is the payload's: a request of exactly the maximum is answered, and so is a
/// response of exactly the maximum (the reply's status byte does not count: it used to,
/// and the echo of a maximal request failed). A handler whose response is larger fails
/// that call only, with `Error::Handler` (as the servers document for a failing handler),
/// and the connection goes on: the next call is answered. Against both servers.
#[cfg(ringbell_async)]
#[test]
fn a_response_above_the_maximum_fails_only_its_call() {
    let _test = shared_test("rpc_response_too_large");
    let mut failures = Vec::new();
    for kind in ["async", "blocking"] {
        for len in [rpc::MAX + 1, 5 * rpc::MAX] {
            let socket = SocketPath::new("rpc_response_too_large");
            let (mut server, runtime, client) = rpc::start(kind, &socket);
            let maximal = vec![0x3c; rpc::MAX];
            let (largest, echo, too_large, after) = runtime.block_on(async {
                let largest = client.call(&rpc::request_for(rpc::MAX)).await;
                let echo = client.call(&maximal).await;
                let too_large = client.call(&rpc::request_for(len)).await;
                let after = client.call(&rpc::request_for(10)).await;
                (largest, echo, too_large, after)
            });
            let summary = format!(
                "{kind}, a response of {len} bytes (maximum {}): largest that fits {}, \
                 echo of a maximal request {}, too large {}, after {}",
                rpc::MAX,
                rpc::outcome(&largest),
                rpc::outcome(&echo),
                rpc::outcome(&too_large),
                rpc::outcome(&after)
            );
            println!("{summary}");
            if let Err(error @ Error::Handler { .. }) = &too_large {
                println!("{kind}: {error}");
            }
            let lengths = [&largest, &after].map(|result| result.as_ref().map(Vec::len).ok());
            if !matches!(&too_large, Err(Error::Handler { .. }))
                || lengths != [Some(rpc::MAX), Some(10)]
                || echo.as_ref().ok() != Some(&maximal)
                || !server.is_running()
            {
                failures.push(summary);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "expected Handler for the too large response and answers to the others:\n{}",
        failures.join("\n")
    );
}
