//! Regression tests, each named after what broke. Review found these bugs and they were
//! fixed ("Fix what review found: doorbells that a peer cannot block, deadlines that a
//! peer cannot stretch"); every test here fails if its bug comes back.
//!
//! They use the machinery of `cross_process.rs` (see its module docs): a peer process is
//! this test binary re-executed with `RINGBELL_TEST_CHILD=<role>`, which runs one of the
//! `role_*` functions below; every test holds a watchdog that kills the children and
//! aborts the process if the test hangs (a hang is how some of these bugs show); and no
//! test asserts on how long anything took.

// On Windows (under Wine 8 in CI) the portable regressions run; the two about Unix
// doorbells (a peer that fills or shuts down a socket doorbell, through `os::unix`) are
// Unix-only, each saying so.

// Each test binary uses its own part of the shared helpers.
#[allow(dead_code)]
mod common;

#[cfg(unix)]
use std::io::{Read, Write};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::path::Path;
#[cfg(unix)]
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    accept_from, expect_parent_line, frame_header, hello, number_param, param, random_bytes,
    report, shared_test, sleep_until_killed, ChildProcess, Context, Scribbler, SocketPath,
    CLIENT_TO_SERVER, DATA_OFFSET, PATIENCE, RINGS_OFFSET, RING_CONTROL_LEN,
};
#[cfg(unix)]
use common::{exclusive_test, SERVER_TO_CLIENT, WATCHDOG_LIMIT};
#[cfg(unix)]
use ringbell::os::unix::ConnectionExt;
use ringbell::{ClientConfig, Connection, Error, Server, ServerConfig};
#[cfg(unix)]
use rustix::fs::OFlags;
#[cfg(unix)]
use rustix::net::Shutdown;

/// Where a ring's readable cell (its consumer's wait cell) sits in the ring's control
/// block, and the announcement word in a wait cell (see `src/core/layout.rs`).
#[cfg(unix)]
const READABLE_IN_CONTROL: usize = 2 * 128;
#[cfg(unix)]
const SLEEPING_IN_CELL: usize = 4;
/// The announcement "I wait in an event loop: ring my doorbell" (`SLEEP_DOORBELL` in
/// `src/core/wait.rs`).
#[cfg(unix)]
const SLEEP_DOORBELL: u32 = 2;
/// Frame kinds (see `src/core/ring.rs`).
const KIND_FIRST: u8 = 2;
const KIND_MIDDLE: u8 = 3;
const KIND_LAST: u8 = 4;

// =======================================================================================
// The child side.

/// Runs a child role when this binary was started as a child; an empty test otherwise.
#[test]
fn child_entry() {
    common::run_child_entry(run_role);
}

fn run_role(role: &str) -> Result<(), String> {
    match role {
        #[cfg(unix)]
        "doorbell_ignoring_client" => role_doorbell_ignoring_client(),
        "idle_client" => role_idle_client(),
        "last_words_client" => role_last_words_client(),
        "chunk_forging_client" => role_chunk_forging_client(),
        #[cfg(unix)]
        "doorbell_closing_client" => role_doorbell_closing_client(),
        other => Err(format!("unknown role {other:?}")),
    }
}

/// Message `index` of the stream `regress_doorbell_ring_never_blocks` sends.
#[cfg(unix)]
fn flood_message(index: u64) -> Vec<u8> {
    format!("flood-{index}").into_bytes()
}

/// How many probes `doorbell_ignoring_client` makes at most before it concludes that its
/// doorbell never fills (a socket buffer holds a few hundred rings).
#[cfg(unix)]
const MAX_DOORBELL_PROBES: u32 = 100_000;

/// The client of `regress_doorbell_ring_never_blocks`. It does to its doorbell what a
/// hostile peer can: writes to it (to the old eventfd, the largest count it can hold, so
/// that one more ring could not complete), clears its `O_NONBLOCK`, and never drains it.
/// A thread keeps announcing "ring my doorbell" in the readable cell of the server's ring,
/// so that the server rings on nearly every send, while the main thread receives
/// `RB_COUNT` messages with plain `recv`, which drains the doorbell only after
/// `arm_doorbell`, never called here.
///
/// Then it makes sure a ring has met a full doorbell: it announces once more, reports
/// "announced", and after the parent's "sent" checks that the server took the
/// announcement (so it rang) while the doorbell holds no more bytes than before (so that
/// ring found the buffer full); it repeats until that happens and reports "full: ...".
#[cfg(unix)]
fn role_doorbell_ignoring_client() -> Result<(), String> {
    let count: u64 = number_param("RB_COUNT");
    let mut conn =
        Connection::connect(param("RB_PATH"), ClientConfig::default()).context("connecting")?;
    let segment = Scribbler::find(&conn)?;
    let doorbell = conn.doorbell_fd();
    // u64::MAX - 1 is the largest count an eventfd holds; to a socket it is 8 bytes.
    let fill = (u64::MAX - 1).to_ne_bytes();
    let written = rustix::io::write(doorbell, &fill).context("writing to the doorbell")?;
    if written != fill.len() {
        return Err(format!("wrote {written} of 8 bytes to the doorbell"));
    }
    let flags = rustix::fs::fcntl_getfl(doorbell).context("reading the doorbell's flags")?;
    rustix::fs::fcntl_setfl(doorbell, flags.difference(OFlags::NONBLOCK))
        .context("making the doorbell blocking")?;

    let sleeping: &AtomicU32 = segment.header_word(
        RINGS_OFFSET + SERVER_TO_CLIENT * RING_CONTROL_LEN + READABLE_IN_CONTROL + SLEEPING_IN_CELL,
    );
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                sleeping.store(SLEEP_DOORBELL, Ordering::SeqCst);
                thread::yield_now();
            }
        });
        report("announcing");
        let received = receive_flood(&mut conn, count);
        stop.store(true, Ordering::Relaxed);
        received
    })?;

    let doorbell_bytes = |conn: &Connection| {
        rustix::io::ioctl_fionread(conn.doorbell_fd()).context("counting the doorbell's bytes")
    };
    let mut held = doorbell_bytes(&conn)?;
    let mut buf = Vec::new();
    for probe in 0..MAX_DOORBELL_PROBES {
        sleeping.store(SLEEP_DOORBELL, Ordering::SeqCst);
        report("announced");
        expect_parent_line("sent")?;
        if sleeping.load(Ordering::SeqCst) != 0 {
            return Err("the server's send left the announcement in place: it did not ring".into());
        }
        conn.recv(&mut buf, Some(PATIENCE))
            .context("receiving a probe")?;
        if buf != b"probe" {
            return Err(format!("expected \"probe\", got {} bytes", buf.len()));
        }
        let now = doorbell_bytes(&conn)?;
        if now == held {
            report(&format!(
                "full: {held} bytes, after {probe} probes that found room"
            ));
            return Ok(());
        }
        held = now;
    }
    Err(format!(
        "{MAX_DOORBELL_PROBES} rings all found room in the doorbell, which holds {held} bytes: \
         this test never reached a full doorbell"
    ))
}

/// Receives and checks messages 0..`count` of the flood.
#[cfg(unix)]
fn receive_flood(conn: &mut Connection, count: u64) -> Result<(), String> {
    let mut buf = Vec::new();
    for index in 0..count {
        conn.recv(&mut buf, Some(PATIENCE))
            .map_err(|error| format!("receiving message {index}: {error}"))?;
        if buf != flood_message(index) {
            return Err(format!(
                "message {index} arrived as {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
    }
    Ok(())
}

/// Connects, sends "hello", reports "ready", then stays alive doing nothing.
fn role_idle_client() -> Result<(), String> {
    let mut conn =
        Connection::connect(param("RB_PATH"), ClientConfig::default()).context("connecting")?;
    conn.send(b"hello").context("sending hello")?;
    report("ready");
    let _keep_open = conn;
    sleep_until_killed()
}

/// The message of round `round` of `regress_try_recv_delivers_the_last_message_before_peer_died`.
fn last_words(round: u64) -> Vec<u8> {
    format!("last-{round}").into_bytes()
}

/// For each of `RB_COUNT` rounds, on the parent's "go": connects, spins a few
/// microseconds (more each round, to spread the send over the server's polling loop),
/// sends [`last_words`], and goes away at once. Even rounds drop the connection (which
/// sets its goodbye flag); odd rounds first shut the control socket down, which is what
/// the kernel does when a process dies, only within a microsecond of the send.
fn role_last_words_client() -> Result<(), String> {
    let path = param("RB_PATH");
    let rounds: u64 = number_param("RB_COUNT");
    for round in 0..rounds {
        expect_parent_line("go")?;
        let mut conn = Connection::connect(&path, ClientConfig::default())
            .map_err(|error| format!("round {round}: connecting: {error}"))?;
        let send_at = Instant::now() + Duration::from_micros(round % 20);
        while Instant::now() < send_at {
            std::hint::spin_loop();
        }
        conn.send(&last_words(round))
            .map_err(|error| format!("round {round}: sending: {error}"))?;
        // (Windows: a pipe is not shut down without closing it, so every round drops.)
        #[cfg(unix)]
        if round % 2 == 1 {
            rustix::net::shutdown(conn.control_fd(), Shutdown::Both)
                .map_err(|error| format!("round {round}: shutting down: {error}"))?;
        }
        drop(conn);
    }
    Ok(())
}

/// Connects, sends "hello", then shuts down its end of the server's doorbell (the ringer:
/// the one socket of the connection that is neither its own doorbell nor its control
/// socket), reports "shut", and stays alive with its control socket open: a peer that
/// has made itself impossible to wake.
#[cfg(unix)]
fn role_doorbell_closing_client() -> Result<(), String> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    let mut conn =
        Connection::connect(param("RB_PATH"), ClientConfig::default()).context("connecting")?;
    conn.send(b"hello").context("sending hello")?;
    let ours = [
        conn.doorbell_fd().as_raw_fd(),
        conn.control_fd().as_raw_fd(),
    ];
    let mut ringers = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").context("listing fds")? {
        let entry = entry.context("listing fds")?;
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if is_socket && !ours.contains(&fd) {
            ringers.push(fd);
        }
    }
    let [ringer] = ringers[..] else {
        return Err(format!(
            "expected one other socket (the ringer), found {ringers:?}"
        ));
    };
    // SAFETY: `ringer` is an fd of the connection, which is alive for the whole borrow.
    let ringer = unsafe { BorrowedFd::borrow_raw(ringer) };
    rustix::net::shutdown(ringer, Shutdown::Both).context("shutting the ringer down")?;
    report("shut");
    let _keep_open = conn;
    sleep_until_killed()
}

/// Ring size for `regress_zero_length_middle_chunk_is_corruption`: full chunks of 1008 B.
const FORGED_RING: usize = 4096;

/// The well-formed chunked message `chunk_forging_client` writes first: a full chunk and
/// 100 bytes.
fn forged_message(full_chunk: usize) -> Vec<u8> {
    random_bytes(5, full_chunk - 8 + 100)
}

/// Appends a frame of `kind` carrying `parts`, padded to 8 bytes as the ring pads it.
fn push_frame(ring: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let len = u32::try_from(len).expect("a frame's length fits in u32");
    ring.extend_from_slice(&frame_header(len, kind));
    for part in parts {
        ring.extend_from_slice(part);
    }
    ring.resize(ring.len().next_multiple_of(8), 0);
}

/// Connects honestly, then writes frames by hand into its ring to the server and publishes
/// them. First a well-formed chunked message, [`forged_message`] (a full first chunk and a
/// last one), which the server must receive intact: that shows the hand-made frames are
/// right. Then a full first chunk announcing two chunks' worth, followed by a middle chunk
/// of zero bytes. Reports "forged" and stays alive, so that the server sees corruption,
/// not death.
fn role_chunk_forging_client() -> Result<(), String> {
    let conn =
        Connection::connect(param("RB_PATH"), ClientConfig::default()).context("connecting")?;
    let segment = Scribbler::find(&conn)?;
    let full_chunk = conn.ring_capacity() / 4 - 16;
    let message = forged_message(full_chunk);
    let (first, last) = message.split_at(full_chunk - 8);
    let mut frames = Vec::new();
    let total = message.len() as u64;
    push_frame(&mut frames, KIND_FIRST, &[&total.to_le_bytes(), first]);
    push_frame(&mut frames, KIND_LAST, &[last]);
    let total = 2 * full_chunk as u64;
    let filler = vec![0x5a; full_chunk - 8];
    push_frame(&mut frames, KIND_FIRST, &[&total.to_le_bytes(), &filler]);
    push_frame(&mut frames, KIND_MIDDLE, &[]);
    if frames.len() > conn.ring_capacity() {
        return Err(format!(
            "{} bytes of frames overflow the ring",
            frames.len()
        ));
    }
    segment.write_bytes(DATA_OFFSET, &frames);
    segment.store_word(
        RINGS_OFFSET + CLIENT_TO_SERVER * RING_CONTROL_LEN,
        frames.len() as u64,
    );
    report("forged");
    let _keep_open = conn;
    sleep_until_killed()
}

// =======================================================================================
// Parent-side helpers.

/// Proves that `server` still serves: an honest client (a thread of this process) connects
/// and gets three messages echoed, the last one chunked in rings of up to 8 KiB.
fn assert_serves_an_honest_client(server: &Server, socket: &SocketPath) {
    let messages = [Vec::new(), random_bytes(7, 100), random_bytes(8, 10 * 1024)];
    let path = socket.path().to_path_buf();
    let client = thread::spawn(move || {
        let mut conn = Connection::connect(&path, ClientConfig::default())
            .expect("an honest client connecting");
        let mut buf = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            conn.send(message).expect("an honest client sending");
            conn.recv(&mut buf, Some(PATIENCE))
                .expect("an honest client receiving its echo");
            assert!(buf == *message, "the echo of message {index} differs");
        }
    });
    let mut conn = server.accept().expect("accepting an honest client");
    let mut buf = Vec::new();
    let mut echoed = 0;
    loop {
        match conn.recv(&mut buf, Some(PATIENCE)) {
            Ok(_) => {
                conn.send(&buf).expect("echoing to the honest client");
                echoed += 1;
            }
            Err(Error::PeerDied) => break,
            Err(error) => panic!("receiving from the honest client: {error}"),
        }
    }
    client.join().expect("the honest client failed");
    assert_eq!(echoed, 3, "the honest client's messages");
}

// =======================================================================================
// 1. A peer that never drains its doorbell could block our rings.

/// Messages the server streams at a client that never drains its doorbell: far more rings
/// than a doorbell's socket buffer holds (a few hundred).
#[cfg(unix)]
const FLOOD_MESSAGES: u64 = 20_000;

/// The doorbell used to be one eventfd shared by both processes: the peer could make it
/// blocking and fill its counter, and our next ring (a `write`) blocked for ever. Now it
/// is a socket pair whose ends are private and rung with `MSG_DONTWAIT`. Here a hostile
/// client does all it can to its doorbell and never drains it, while it announces that
/// it waits on it so that the server rings on nearly every send: every one of the
/// server's 20,000 sends (and the probes after them, made once the client's doorbell is
/// known to be full) must return `Ok`. A ring that blocks hangs the server; the watchdog
/// then fails the test.
// Unix only: the doorbell it fills is a socket, reached through `os::unix`; a Windows
// doorbell is an event, which a peer cannot fill (`SetEvent` on a set event is a no-op).
#[cfg(unix)]
#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn regress_doorbell_ring_never_blocks() {
    // Alone: the client's announcing thread and the stream keep both cores busy.
    let _test = exclusive_test("regress_doorbell_ring_never_blocks", WATCHDOG_LIMIT);
    let socket = SocketPath::new("doorbell_ring");
    let server = Server::bind(&socket, ServerConfig::default()).expect("binding");
    let mut client = ChildProcess::spawn(
        "doorbell_ignoring_client",
        &[
            ("RB_PATH", socket.param()),
            ("RB_COUNT", FLOOD_MESSAGES.to_string()),
        ],
    );
    let mut conn = accept_from(&server, &mut client);
    client.expect_line("announcing");
    for index in 0..FLOOD_MESSAGES {
        if let Err(error) = conn.send(&flood_message(index)) {
            let diagnostics = client.diagnostics();
            panic!("send {index} of {FLOOD_MESSAGES} failed: {error}; {diagnostics}");
        }
    }
    loop {
        let line = client.next_line();
        if line == "announced" {
            if let Err(error) = conn.send(b"probe") {
                let diagnostics = client.diagnostics();
                panic!("sending a probe failed: {error}; {diagnostics}");
            }
            client.send_line("sent");
        } else if line.starts_with("full: ") {
            break;
        } else {
            let diagnostics = client.diagnostics();
            panic!("the client reported {line:?}; {diagnostics}");
        }
    }
    client.assert_success();
}

// =======================================================================================
// 2. Short timeouts hid a killed peer.

/// The timeout of each `recv` in `regress_short_timeouts_still_notice_a_killed_peer`:
/// shorter than the 50 ms between two syscall checks of the peer.
const SHORT_TIMEOUT: Duration = Duration::from_millis(10);
/// How many such `recv`s may time out before the killed peer must have been noticed.
const MAX_SHORT_WAITS: u32 = 2_000;

/// A peer killed without a word is noticed by a syscall that a wait makes every 50 ms.
/// That check used to fall due 50 ms after the start of each wait, so a loop of `recv`s
/// with shorter timeouts never made it and saw `Timeout` for ever. Now it falls due per
/// connection: within 2,000 `recv`s of 10 ms, one must return `PeerDied`.
#[test]
fn regress_short_timeouts_still_notice_a_killed_peer() {
    let _test = shared_test("regress_short_timeouts");
    for wait in common::ALL_WAITS {
        let socket = SocketPath::new("short_timeouts");
        let server = Server::bind(&socket, ServerConfig::default().wait(wait)).expect("binding");
        let mut client = ChildProcess::spawn("idle_client", &[("RB_PATH", socket.param())]);
        let mut conn = accept_from(&server, &mut client);
        let mut buf = Vec::new();
        conn.recv(&mut buf, Some(PATIENCE))
            .expect("receiving hello");
        assert_eq!(buf, b"hello");
        client.expect_line("ready");
        client.kill();

        let mut outcome = None;
        for call in 1..=MAX_SHORT_WAITS {
            match conn.recv(&mut buf, Some(SHORT_TIMEOUT)) {
                Err(Error::Timeout) => continue,
                other => {
                    outcome = Some((call, other));
                    break;
                }
            }
        }
        match outcome {
            Some((_, Err(Error::PeerDied))) => {}
            Some((call, other)) => panic!("{wait:?}: recv {call} gave {other:?}"),
            None => panic!(
                "{wait:?}: {MAX_SHORT_WAITS} recvs of {SHORT_TIMEOUT:?} all timed out: \
                 the killed client was never noticed"
            ),
        }
    }
}

// =======================================================================================
// 3. try_recv could report PeerDied before the last message.

/// Connections in `regress_try_recv_delivers_the_last_message_before_peer_died`. Before
/// the fix, the lost message showed up about once in a hundred connections (measured on
/// the 2-core VM, mostly when the client shut its control socket down): 2,000 catch it
/// all but surely, in about a second.
/// (Under Wine 8 the 2,000 take about 15 s.)
const LAST_WORDS_ROUNDS: u64 = 2_000;

/// `try_recv` that found the ring empty and then the peer gone used to return `PeerDied`
/// at once, losing a message published between the two looks. Now it looks at the ring
/// again. Here a client sends one message and goes away immediately, 2,000 times, while
/// the server polls with `try_recv` as an event loop would: each message must arrive, and
/// only then `PeerDied`.
#[test]
fn regress_try_recv_delivers_the_last_message_before_peer_died() {
    let _test = shared_test("regress_try_recv_last_message");
    let socket = SocketPath::new("last_words");
    let server = Server::bind(&socket, ServerConfig::default()).expect("binding");
    let mut client = ChildProcess::spawn(
        "last_words_client",
        &[
            ("RB_PATH", socket.param()),
            ("RB_COUNT", LAST_WORDS_ROUNDS.to_string()),
        ],
    );
    let mut buf = Vec::new();
    for round in 0..LAST_WORDS_ROUNDS {
        client.send_line("go");
        let mut conn = accept_from(&server, &mut client);
        let expected = last_words(round);
        loop {
            match conn.try_recv(&mut buf) {
                Ok(None) => thread::yield_now(),
                Ok(Some(_)) if buf == expected => break,
                other => {
                    let got = String::from_utf8_lossy(&buf).into_owned();
                    let diagnostics = client.diagnostics();
                    panic!(
                        "round {round}: waiting for {:?}, try_recv gave {other:?} ({got:?}); \
                         {diagnostics}",
                        String::from_utf8_lossy(&expected)
                    );
                }
            }
        }
        loop {
            match conn.try_recv(&mut buf) {
                Ok(None) => thread::yield_now(),
                Err(Error::PeerDied) => break,
                other => panic!(
                    "round {round}: after the last message, try_recv gave {other:?} instead \
                     of PeerDied"
                ),
            }
        }
    }
    client.assert_success();
}

// =======================================================================================
// 4. A client trickling its hello stretched the handshake's deadline.

/// The pause between two bytes of the trickled hello.
const TRICKLE_PAUSE: Duration = Duration::from_millis(100);

/// Writes a valid hello to the server at `path` one byte at a time, pausing between bytes,
/// until the hello is complete or a write fails because the server hung up. Returns how
/// many bytes it wrote.
/// On Windows, a frame of one byte at a time on a raw pipe client.
#[cfg(windows)]
fn trickle_hello(path: &Path) -> usize {
    let mut pipe = common::windows::RawPipeClient::connect(path);
    let mut written = 0;
    for byte in hello(common::PROTOCOL_VERSION) {
        if written > 0 {
            thread::sleep(TRICKLE_PAUSE);
        }
        match pipe.write_frame(&[byte], &[]) {
            Ok(()) => written += 1,
            Err(_) => break,
        }
    }
    pipe.read_to_end();
    written
}

#[cfg(unix)]
fn trickle_hello(path: &Path) -> usize {
    let mut stream = UnixStream::connect(path).expect("connecting a raw stream");
    let mut written = 0;
    for byte in hello(common::PROTOCOL_VERSION) {
        if written > 0 {
            thread::sleep(TRICKLE_PAUSE);
        }
        match stream.write(&[byte]) {
            Ok(1) => written += 1,
            _ => break,
        }
    }
    // Hold the connection until the server gives up on it, which it does even after a
    // whole hello: the handshake is past its deadline by then.
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("setting a read timeout");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    written
}

/// The handshake's timeout used to apply to each `read`, so a client sending its 16-byte
/// hello a byte at a time, each within the timeout, held `accept` for 16 times as long.
/// Now one deadline bounds the whole handshake: with 300 ms for the handshake and 100 ms
/// between bytes, the server must hang up before the hello is complete, with a timeout
/// error, and then serve an honest client.
#[test]
fn regress_trickled_hello_cannot_stretch_the_handshake() {
    let _test = shared_test("regress_trickled_hello");
    let socket = SocketPath::new("trickled_hello");
    let config = ServerConfig::default().handshake_timeout(Duration::from_millis(300));
    let server = Server::bind(&socket, config).expect("binding");
    let path = socket.path().to_path_buf();
    let trickler = thread::spawn(move || trickle_hello(&path));
    let result = server.accept();
    match &result {
        Err(Error::Handshake { detail }) => assert!(
            detail.contains("timed out"),
            "the handshake error should be a timeout, is: {detail}"
        ),
        other => panic!("accept should fail with Error::Handshake, gave {other:?}"),
    }
    drop(result);
    let written = trickler.join().expect("the trickling thread panicked");
    assert!(
        written < hello(common::PROTOCOL_VERSION).len(),
        "the trickler wrote all {written} bytes of its hello before the server hung up: \
         each byte gave the handshake more time"
    );
    assert_serves_an_honest_client(&server, &socket);
}

// =======================================================================================
// 5. Empty chunks could keep a receiver busy.

/// A middle chunk of zero bytes used to be accepted, so a hostile sender could make one
/// message take any number of frames. Now every chunk but the last must be a full frame.
/// A hostile child writes a well-formed chunked message by hand (which must arrive intact:
/// the hand-made frames are right), then a full first chunk and a zero-length middle one:
/// `recv` must return `Corrupted`, and the server must then serve an honest client.
#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn regress_zero_length_middle_chunk_is_corruption() {
    let _test = shared_test("regress_zero_length_middle");
    let socket = SocketPath::new("zero_length_middle");
    let config = ServerConfig::default().ring_capacity(FORGED_RING);
    let server = Server::bind(&socket, config).expect("binding");
    let mut forger = ChildProcess::spawn("chunk_forging_client", &[("RB_PATH", socket.param())]);
    let mut conn = accept_from(&server, &mut forger);
    forger.expect_line("forged");
    let mut buf = Vec::new();
    let expected = forged_message(FORGED_RING / 4 - 16);
    let result = conn.recv(&mut buf, Some(PATIENCE));
    if !matches!(result, Ok(len) if len == expected.len()) || buf != expected {
        let diagnostics = forger.diagnostics();
        panic!(
            "the well-formed hand-made message did not arrive intact (recv gave {result:?}): \
             the test's frames are wrong; {diagnostics}"
        );
    }
    // Every frame is published already. A receiver that took the empty chunk would wait
    // for the rest of the message, so there is no point in letting it wait.
    let result = conn.recv(&mut buf, Some(Duration::ZERO));
    if !matches!(result, Err(Error::Corrupted { .. })) {
        let diagnostics = forger.diagnostics();
        panic!("after a zero-length middle chunk, recv gave {result:?}; {diagnostics}");
    }
    assert!(
        forger.is_running(),
        "the forger should still be alive (corruption, not death): {}",
        forger.diagnostics()
    );
    drop(conn);
    forger.kill();
    assert_serves_an_honest_client(&server, &socket);
}

// =======================================================================================
// 6. Timeouts too large for the clock panicked.

/// `Instant::now() + timeout` panics when the sum overflows, which `Duration::MAX` always
/// does; such timeouts now mean "no deadline". Every timeout of both configs and of `recv`
/// is `Duration::MAX` here, and a message larger than the ring (so that `send` waits for
/// room) goes there and back.
#[test]
fn regress_huge_timeout_does_not_panic() {
    let _test = shared_test("regress_huge_timeout");
    let socket = SocketPath::new("huge_timeout");
    let config = ServerConfig::default()
        .ring_capacity(1024)
        .handshake_timeout(Duration::MAX)
        .send_timeout(Some(Duration::MAX));
    let server = Server::bind(&socket, config).expect("binding");
    // The server echoes in a thread and the client is this thread, so that a client that
    // panics before it connects fails the test at once (a server stuck in `accept` does
    // not stop it from ending; a panic in the server shows in the test's output).
    let echo = thread::spawn(move || {
        let mut conn = server.accept().expect("accepting");
        let mut buf = Vec::new();
        conn.recv(&mut buf, Some(Duration::MAX)).expect("receiving");
        conn.send(&buf).expect("echoing");
        let end = conn.recv(&mut buf, Some(Duration::MAX));
        assert!(
            matches!(end, Err(Error::PeerDied)),
            "after the client left, recv gave {end:?}"
        );
    });
    let config = ClientConfig::default()
        .connect_timeout(Duration::MAX)
        .send_timeout(Some(Duration::MAX));
    let message = random_bytes(6, 5000);
    let echoed = Connection::connect(&socket, config).and_then(|mut conn| {
        // Let the server settle into its wait (not needed for the test to be right).
        thread::sleep(Duration::from_millis(50));
        conn.send(&message)?;
        let mut buf = Vec::new();
        conn.recv(&mut buf, Some(Duration::MAX))?;
        Ok(buf)
    });
    match echoed {
        Ok(echo) => assert!(echo == message, "the echo differs from the message"),
        Err(error) => panic!("the client failed: {error}"),
    }
    echo.join().expect("the server thread panicked");
}

// =======================================================================================
// A peer that shuts its end of our doorbell down.

/// A doorbell whose other end hung up polls readable for ever. A side that slept on it
/// (the blocking wait of the POSIX backend, and every async wait) used to return from
/// every sleep at once and sleep again, burning a core for as long as the peer kept its
/// control socket open. Now the hang-up ends the connection with `PeerDied`; a blocking
/// side of the Linux backend, which sleeps on the futex, never looks at the doorbell and
/// times out as usual. Before the fix, the POSIX recv and the async recv below never
/// returned, and the watchdog aborted the test.
// Unix only: it shuts a socket doorbell down (through `os::unix`) and awaits it with the
// async API; a Windows doorbell is an event, with no other end to shut, and the async API
// is step 3 of docs/WINDOWS.md.
#[cfg(unix)]
#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn regress_a_closed_doorbell_ends_the_wait_instead_of_spinning() {
    let _test = shared_test("regress_closed_doorbell");
    let socket = SocketPath::new("closed_doorbell");
    let server = Server::bind(&socket, ServerConfig::default()).expect("binding");
    // A client that said hello, then shut our doorbell's other end down.
    let doorbell_closer = || {
        let mut client =
            ChildProcess::spawn("doorbell_closing_client", &[("RB_PATH", socket.param())]);
        let mut conn = accept_from(&server, &mut client);
        let mut buf = Vec::new();
        conn.recv(&mut buf, Some(PATIENCE))
            .expect("receiving hello");
        assert_eq!(buf, b"hello");
        client.expect_line("shut");
        (conn, client)
    };

    let mut buf = Vec::new();
    let (mut conn, mut client) = doorbell_closer();
    let blocking = conn.recv(&mut buf, Some(Duration::from_millis(300)));
    match ringbell::backend() {
        // It sleeps on its doorbell: the hang-up is the end.
        "posix" => assert!(matches!(blocking, Err(Error::PeerDied)), "{blocking:?}"),
        // It sleeps on the futex, which the client can still wake.
        "linux" => assert!(matches!(blocking, Err(Error::Timeout)), "{blocking:?}"),
        // It sleeps on `os_sync` from macOS 14.4 (a timeout), on the doorbell before.
        _ => assert!(
            matches!(blocking, Err(Error::Timeout | Error::PeerDied)),
            "{blocking:?}"
        ),
    }
    client.kill();

    let (conn, mut client) = doorbell_closer();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let waited = runtime.block_on(async {
        let mut conn = ringbell::tokio::AsyncConnection::from_connection(conn)
            .expect("registering the connection");
        let mut buf = Vec::new();
        tokio::time::timeout(PATIENCE, conn.recv(&mut buf)).await
    });
    assert!(
        matches!(waited, Ok(Err(Error::PeerDied))),
        "the async recv gave {waited:?}"
    );
    client.kill();
}
