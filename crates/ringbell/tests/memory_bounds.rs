//! A server's memory stays bounded whatever its clients announce or withhold:
//!
//! - what it holds follows what clients actually sent, not what they announced: a client
//!   that announces a maximal chunked message and stalls costs one chunk, not the maximum
//!   (the receiver used to reserve the whole announced length at once, so 64 such clients
//!   made the server commit 1 GiB);
//! - one memory budget bounds the messages in transit across all connections: a thousand
//!   such announcements get at most `budget / announced` reservations, the rest wait in
//!   their rings, and honest calls go on;
//! - clients that together exceed the budget get backpressure, never an error or an
//!   out-of-memory;
//! - a client that stalls in the middle of a message is closed at the stall timeout, which
//!   gives its reservation back; a client that stops answering (its waiter word erased) is
//!   closed at the idle timeout; either way its fds and mapping come back.
//!
//! Real processes: the server (`AsyncServer::serve`) and each hostile client are this test
//! binary run again as children (see `cross_process.rs` for the machinery), and the server
//! is measured from outside through `/proc/<pid>`, so that this process's own threads do
//! not count. No assertion looks at a time.
//!
//! On Windows (under Wine 8 in CI, never yet on real Windows) the server is measured from
//! outside too (`common::windows::ProcessProbe`): its handles in the system handle table
//! for its fds, its views that start with the segment's magic for its segment mappings,
//! its committed private memory (a `VirtualQueryEx` walk summing `MEM_PRIVATE` regions in
//! `MEM_COMMIT`, which counts memory committed and never touched, as `VmData` does) for
//! `VmData`, and its `WorkingSetSize` for `VmRSS`. A hostile client wakes the server after
//! writing its ring by hand by setting the ringers it holds, not with a byte on the control
//! pipe (which wakes no Windows server after the handshake). The thousand stalled
//! announcements are [`STALLERS`] there: fewer, still far more than the budget takes.

// On macOS the tests that read /proc are ignored (`common::LINUX_ONLY`).
#![cfg(all(feature = "tokio", feature = "__test-api"))]

#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    exclusive_test, frame_header, number_param, param, random_bytes, report, segment_mappings,
    sleep_until_killed, ChildProcess, Context, Scribbler, SocketPath, CLIENT_TO_SERVER,
    DATA_OFFSET, PATIENCE, RINGS_OFFSET, RING_CONTROL_LEN, SERVER_TO_CLIENT, WATCHDOG_LIMIT,
};
#[cfg(unix)]
use ringbell::os::unix::ConnectionExt;
use ringbell::tokio::{AsyncServer, Client};
use ringbell::{ClientConfig, Connection, Error, ServerConfig};

/// Frame kinds (see `src/core/ring.rs`).
const KIND_MESSAGE: u8 = 1;
const KIND_FIRST: u8 = 2;
/// A ring's tail and head, and its reader's waiter cell, within its control block (see
/// `src/core/layout.rs`): the cell's announcement word is its second.
const TAIL: usize = 0;
const HEAD: usize = 128;
const READABLE_SLEEPING: usize = 256 + 4;
/// Requests above this size make the test server's handler wait a little, so that calls
/// would overlap if the budget let them.
const SLOW_REQUEST: usize = 64 << 10;
/// The request that asks the test server how many handlers it ever ran at once.
const STATS: &[u8] = b"stats";

#[test]
fn child_entry() {
    common::run_child_entry(|role| match role {
        "server" => role_server(),
        "stalling_announcer" => role_stalling_announcer(),
        "silent_caller" => role_silent_caller(),
        "plain_sender" => role_plain_sender(),
        other => Err(format!("unknown role {other:?}")),
    });
}

/// An echo server of calls (`AsyncServer::serve`) at `RB_PATH`, on a runtime of one
/// worker, configured by `RB_CONFIG` (see [`server_config`]); reports "listening" and
/// serves until killed. Requests above [`SLOW_REQUEST`] are answered after 20 ms; the
/// request [`STATS`] is answered with the most handlers it ever ran at once.
fn role_server() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let config = server_config(&param("RB_CONFIG"));
    let server = runtime
        .block_on(async { AsyncServer::bind(param("RB_PATH"), config) })
        .context("binding")?;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    runtime.spawn(server.serve(move |request: Vec<u8>| {
        let (running, most) = (running.clone(), most.clone());
        async move {
            if request == STATS {
                return Ok::<_, String>(most.load(Ordering::SeqCst).to_string().into_bytes());
            }
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            if request.len() > SLOW_REQUEST {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(request)
        }
    }));
    report("listening");
    sleep_until_killed()
}

/// The test server's configurations, by name.
fn server_config(name: &str) -> ServerConfig {
    let small = || {
        ServerConfig::default()
            .max_message_size(1 << 20)
            .memory_budget(2 << 20)
    };
    match name {
        "default" => ServerConfig::default(),
        // Room for two 1 MiB messages at once.
        "small-budget" => small(),
        "small-budget-stall" => small().stall_timeout(Some(Duration::from_secs(1))),
        "idle" => ServerConfig::default().idle_timeout(Some(Duration::from_secs(1))),
        other => panic!("no server configuration {other:?}"),
    }
}

/// A first chunk of a request (correlation 1) announcing `announced` bytes, as a frame
/// ready for the ring.
fn first_chunk(full_chunk: usize, announced: u64) -> Vec<u8> {
    let mut frame = frame_header(full_chunk as u32, KIND_FIRST).to_vec();
    // A request's correlation id, as a client's would be: never 0.
    frame[8..16].copy_from_slice(&1u64.to_le_bytes());
    frame.extend_from_slice(&announced.to_le_bytes());
    frame.resize(16 + full_chunk, 0x5a);
    frame.resize(frame.len().next_multiple_of(8), 0);
    frame
}

/// Puts `frame` at the start of a connection's client-to-server ring, by hand, and stirs
/// the server ([`wake_server`]).
fn write_by_hand(conn: &Connection, segment: &Scribbler, frame: &[u8]) -> Result<(), String> {
    let ring = RINGS_OFFSET + CLIENT_TO_SERVER * RING_CONTROL_LEN;
    segment.write_bytes(DATA_OFFSET, frame);
    segment.store_word(ring + TAIL, frame.len() as u64);
    wake_server(conn)
}

/// Wakes the server of `conn`: a byte on the control socket wakes its sweeper, which
/// sweeps our ring.
#[cfg(unix)]
fn wake_server(conn: &Connection) -> Result<(), String> {
    rustix::net::send(
        conn.control_fd(),
        b"!",
        rustix::net::SendFlags::DONTWAIT | common::SEND_NO_SIGNAL,
    )
    .context("waking the server")?;
    Ok(())
}

/// On Windows: by setting every ringer this process holds, this connection's server's
/// doorbell among them (`common::windows::ring_every_ringer`); the others only make the
/// server look at rings of ours that did not change.
#[cfg(windows)]
fn wake_server(_conn: &Connection) -> Result<(), String> {
    match common::windows::ring_every_ringer() {
        0 => Err("waking the server: this process holds no ringer".into()),
        _ => Ok(()),
    }
}

/// Whether the server has taken the first `len` bytes of our ring.
fn taken(segment: &Scribbler, len: usize) -> bool {
    let ring = RINGS_OFFSET + CLIENT_TO_SERVER * RING_CONTROL_LEN;
    // SYNC: Acquire pairs with the server's Release store of its head.
    segment
        .header_word::<AtomicU64>(ring + HEAD)
        .load(Ordering::Acquire)
        >= len as u64
}

/// Opens `RB_CONNECTIONS` connections for calls; on each, writes by hand one full first
/// chunk of a request that announces the connection's maximum message size. Waits until
/// the server has taken all of them, or until the number taken has not changed for a
/// second (the others wait in their rings for the server's memory budget), and reports
/// "taken N". Then, if `RB_EXPECT_CLOSE` is 1, waits until the server has closed every
/// connection whose chunk it took (the stall timeout) and reports "closed N". Stalls
/// until killed.
fn role_stalling_announcer() -> Result<(), String> {
    let count: usize = number_param("RB_CONNECTIONS");
    let mut stalled = Vec::with_capacity(count);
    for _ in 0..count {
        let before = segment_mappings()?;
        let conn = ringbell::test_api::connect_for_calls(param("RB_PATH"), ClientConfig::default())
            .context("connecting")?;
        let segment = Scribbler::find_new(&conn, &before)?;
        let frame = first_chunk(
            conn.ring_capacity() / 4 - 16,
            conn.max_message_size() as u64,
        );
        write_by_hand(&conn, &segment, &frame)?;
        stalled.push((conn, segment, frame.len()));
    }
    let deadline = Instant::now() + PATIENCE;
    let (mut last, mut steady_since) = (usize::MAX, Instant::now());
    let taken_count = loop {
        let now_taken = stalled
            .iter()
            .filter(|(_, segment, len)| taken(segment, *len))
            .count();
        if now_taken != last {
            (last, steady_since) = (now_taken, Instant::now());
        }
        if now_taken == count || steady_since.elapsed() >= Duration::from_secs(1) {
            break now_taken;
        }
        if Instant::now() > deadline {
            return Err("the server's sweeper never settled".into());
        }
        thread::sleep(Duration::from_millis(5));
    };
    report(&format!("taken {taken_count}"));
    if param("RB_EXPECT_CLOSE") == "1" {
        let mut closed = 0;
        for (conn, segment, len) in &mut stalled {
            if !taken(segment, *len) {
                continue;
            }
            wait_for_close(conn)?;
            closed += 1;
        }
        report(&format!("closed {closed}"));
    }
    let _keep_open = stalled;
    sleep_until_killed()
}

/// Waits until the server has closed `conn`: its receive says `PeerDied`, after any reply
/// that was left in the ring.
fn wait_for_close(conn: &mut Connection) -> Result<(), String> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match conn.recv(&mut buf, Some(Duration::from_millis(100))) {
            Err(Error::PeerDied) => return Ok(()),
            Ok(_) | Err(Error::Timeout) if Instant::now() < deadline => {}
            Ok(_) | Err(Error::Timeout) => return Err("the server never closed it".into()),
            Err(other) => return Err(format!("waiting for the server to close: {other}")),
        }
    }
}

/// Makes one call by hand (a request frame written into its ring), then stops answering:
/// it never reads the reply, and it erases its own waiter word, as a hostile peer can, so
/// that nothing the server does would wake it. Reports "called", waits until the server
/// has closed the connection (its idle timeout), and reports "closed".
fn role_silent_caller() -> Result<(), String> {
    let mut conn = ringbell::test_api::connect_for_calls(param("RB_PATH"), ClientConfig::default())
        .context("connecting")?;
    let segment = Scribbler::find(&conn)?;
    let request = ringbell::test_api::request(b"hello");
    let mut frame = frame_header(request.len() as u32, KIND_MESSAGE).to_vec();
    frame[8..16].copy_from_slice(&1u64.to_le_bytes());
    frame.extend_from_slice(&request);
    frame.resize(frame.len().next_multiple_of(8), 0);
    write_by_hand(&conn, &segment, &frame)?;
    let deadline = Instant::now() + PATIENCE;
    while !taken(&segment, frame.len()) {
        if Instant::now() > deadline {
            return Err("the server never took the request".into());
        }
        thread::sleep(Duration::from_millis(5));
    }
    let waiter = RINGS_OFFSET + SERVER_TO_CLIENT * RING_CONTROL_LEN + READABLE_SLEEPING;
    segment
        .header_word::<AtomicU32>(waiter)
        .store(0, Ordering::SeqCst);
    report("called");
    wait_for_close(&mut conn)?;
    report("closed");
    sleep_until_killed()
}

/// Connects with a plain `Connection`, sends `RB_COUNT` messages of `RB_LEN` random bytes
/// (seeded with `RB_SEED`), reports "sent", then waits until the server closes the
/// connection (for want of anything more, at its idle timeout) and reports "closed".
fn role_plain_sender() -> Result<(), String> {
    let mut conn =
        Connection::connect(param("RB_PATH"), ClientConfig::default()).context("connecting")?;
    let seed: u64 = number_param("RB_SEED");
    for index in 0..number_param::<u64>("RB_COUNT") {
        conn.send(&random_bytes(seed + index, number_param("RB_LEN")))
            .context("sending")?;
    }
    report("sent");
    wait_for_close(&mut conn)?;
    report("closed");
    sleep_until_killed()
}

/// The server's open fds and segment mappings, as `/proc` lists them.
#[cfg(unix)]
fn server_holdings(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("listing the server's fds")
        .count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("reading the server's mappings")
        .lines()
        .filter(|line| common::is_segment_mapping(line))
        .count();
    (fds, maps)
}

/// On Windows: the server's handles (the system handle table) and its views that start
/// with the segment's magic.
#[cfg(windows)]
fn server_holdings(pid: u32) -> (usize, usize) {
    let probe = common::windows::ProcessProbe::open(pid);
    (probe.handles().len(), probe.segment_views().len())
}

/// The server's data (`VmData`: its private, writable memory, touched or not) and resident
/// memory (`VmRSS`), in KiB.
#[cfg(unix)]
fn server_memory_kib(pid: u32) -> (u64, u64) {
    (
        common::status_kib(pid, "VmData"),
        common::status_kib(pid, "VmRSS"),
    )
}

/// On Windows: its committed private memory (touched or not) and its working set, in KiB.
#[cfg(windows)]
fn server_memory_kib(pid: u32) -> (u64, u64) {
    let probe = common::windows::ProcessProbe::open(pid);
    (
        probe.committed_private() >> 10,
        probe.memory().working_set >> 10,
    )
}

/// The names of [`server_memory_kib`]'s figures, as printed.
#[cfg(unix)]
const MEMORY_NAMES: (&str, &str) = ("VmData", "VmRSS");
#[cfg(windows)]
const MEMORY_NAMES: (&str, &str) = ("committed private memory", "working set");

/// Waits until the server holds no more fds and exactly the segment mappings it held at
/// `before`, and fails if that does not happen. Fewer fds is fine: the baseline may have
/// caught one the runtime held for a moment; a connection kept would show as three more,
/// and as a mapping.
fn expect_holdings_back(pid: u32, before: (usize, usize)) {
    let back = |(fds, maps): (usize, usize)| fds <= before.0 && maps == before.1;
    let deadline = Instant::now() + PATIENCE;
    let mut after = server_holdings(pid);
    while !back(after) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        after = server_holdings(pid);
    }
    assert!(
        back(after),
        "the server's (fds, segment mappings): {before:?} before, {after:?} after"
    );
}

fn spawn_server(socket: &SocketPath, config: &str) -> ChildProcess {
    let mut server = ChildProcess::spawn(
        "server",
        &[("RB_PATH", socket.param()), ("RB_CONFIG", config.into())],
    );
    server.expect_line("listening");
    server
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Connects an honest client, makes one checked call, and closes it.
fn honest_call(runtime: &tokio::runtime::Runtime, socket: &SocketPath) {
    runtime.block_on(async {
        let client = Client::connect(socket.path(), ClientConfig::default())
            .await
            .expect("an honest client connecting");
        let reply = client.call(b"still serving").await.expect("an honest call");
        assert_eq!(reply, b"still serving");
    })
}

/// The number in a child's "WORD N" line.
fn counted(child: &mut ChildProcess, word: &str) -> usize {
    let line = child.next_line();
    line.strip_prefix(word)
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected {word:?} and a number, got {line:?}"))
}

/// How many clients announce a maximal message and stall, and over how many processes.
#[cfg(unix)]
const STALLERS: usize = 1000;
#[cfg(unix)]
const STALLER_PROCESSES: usize = 10;
/// Under Wine, where every connection's handshake and wake-ups go through `wineserver`:
/// fewer, still far more than the budget takes (16).
#[cfg(windows)]
const STALLERS: usize = 200;
#[cfg(windows)]
const STALLER_PROCESSES: usize = 4;

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn a_thousand_stalled_announcements_cost_what_was_sent_and_stay_within_the_budget() {
    let _test = exclusive_test("stalled_announcements", WATCHDOG_LIMIT);
    let socket = SocketPath::new("stalled_announcements");
    let mut server = spawn_server(&socket, "default");
    let announced_each = ServerConfig::DEFAULT_MAX_MESSAGE_SIZE as u64;
    let budget = ServerConfig::DEFAULT_MAX_MESSAGE_SIZE * 16;
    let runtime = current_thread_runtime();
    // One honest call first, so that what the server sets up once exists before the
    // baseline is taken.
    honest_call(&runtime, &socket);
    let pid = server.pid();
    let (data_before, rss_before) = server_memory_kib(pid);

    let each = STALLERS / STALLER_PROCESSES;
    let mut stallers: Vec<ChildProcess> = (0..STALLER_PROCESSES)
        .map(|_| {
            ChildProcess::spawn(
                "stalling_announcer",
                &[
                    ("RB_PATH", socket.param()),
                    ("RB_CONNECTIONS", each.to_string()),
                    ("RB_EXPECT_CLOSE", "0".into()),
                ],
            )
        })
        .collect();
    let taken: usize = stallers
        .iter_mut()
        .map(|staller| counted(staller, "taken"))
        .sum();
    let (data_after, rss_after) = server_memory_kib(pid);
    let announced_kib = STALLERS as u64 * announced_each / 1024;
    let grown_kib = data_after.saturating_sub(data_before);
    let (data_name, rss_name) = MEMORY_NAMES;
    println!(
        "{STALLERS} clients announced {announced_kib} KiB in all and sent one chunk each; \
         the server took {taken} first chunks (its budget of {} MiB reserves {} messages), \
         its {data_name} grew by {grown_kib} KiB ({data_before} -> {data_after}), its \
         {rss_name} by {} KiB ({rss_before} -> {rss_after})",
        budget >> 20,
        budget as u64 / announced_each,
        rss_after.saturating_sub(rss_before)
    );
    assert!(
        grown_kib < announced_kib / 100,
        "the server committed {grown_kib} KiB for {announced_kib} KiB announced: more than 1 %"
    );
    assert!(
        (1..=budget / announced_each as usize).contains(&taken),
        "the server began {taken} messages of {announced_each} bytes with a budget of {budget}"
    );
    // And it still serves an honest client, whose small calls need no reservation.
    honest_call(&runtime, &socket);
    assert!(server.is_running(), "the server died");
    for staller in &mut stallers {
        staller.kill();
    }
    server.kill();
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn clients_beyond_the_budget_wait_for_it_and_every_call_succeeds() {
    let _test = exclusive_test("budget_backpressure", WATCHDOG_LIMIT);
    let socket = SocketPath::new("budget_backpressure");
    let mut server = spawn_server(&socket, "small-budget");
    const CLIENTS: usize = 6;
    let runtime = current_thread_runtime();
    let most = runtime.block_on(async {
        let mut calls = tokio::task::JoinSet::new();
        for index in 0..CLIENTS {
            let path = socket.path().to_path_buf();
            calls.spawn(async move {
                let client = Client::connect(&path, ClientConfig::default())
                    .await
                    .expect("connecting");
                // Just under 1 MiB: the largest request this server takes.
                let request = random_bytes(index as u64, (1 << 20) - 64);
                for _ in 0..3 {
                    let reply = client
                        .call(&request)
                        .await
                        .expect("a call under the budget");
                    assert!(reply == request, "a reply that is not the request");
                }
            });
        }
        while let Some(done) = calls.join_next().await {
            done.expect("a client task");
        }
        let client = Client::connect(socket.path(), ClientConfig::default())
            .await
            .expect("connecting");
        let most = client
            .call(STATS)
            .await
            .expect("asking for the server's stats");
        String::from_utf8(most).unwrap().parse::<usize>().unwrap()
    });
    println!(
        "{CLIENTS} clients made 3 calls of 1 MiB each with a budget of 2 MiB: at most {most} \
         handlers ran at once"
    );
    // Each request is reserved before it is taken, and charged while its handler runs
    // and until its reply is in the ring: two fit in 2 MiB.
    assert!(
        most <= 2,
        "{most} 1 MiB requests held at once in a 2 MiB budget"
    );
    assert!(server.is_running(), "the server died");
    server.kill();
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn clients_that_stall_mid_message_are_closed_and_give_their_reservations_back() {
    let _test = exclusive_test("stall_timeout", WATCHDOG_LIMIT);
    let socket = SocketPath::new("stall_timeout");
    let mut server = spawn_server(&socket, "small-budget-stall");
    let runtime = current_thread_runtime();
    let client = runtime
        .block_on(Client::connect(socket.path(), ClientConfig::default()))
        .expect("an honest client connecting");
    runtime
        .block_on(client.call(b"warm"))
        .expect("a first call");
    let pid = server.pid();
    let before = server_holdings(pid);
    // Two stalled messages of 1 MiB take the whole 2 MiB budget.
    let mut staller = ChildProcess::spawn(
        "stalling_announcer",
        &[
            ("RB_PATH", socket.param()),
            ("RB_CONNECTIONS", "2".into()),
            ("RB_EXPECT_CLOSE", "1".into()),
        ],
    );
    assert_eq!(counted(&mut staller, "taken"), 2);
    // An honest large call waits for the budget until the stall timeout closes them.
    let request = random_bytes(7, (1 << 20) - 64);
    let reply = runtime
        .block_on(client.call(&request))
        .expect("a large call once the stalled clients are gone");
    assert!(reply == request, "a reply that is not the request");
    assert_eq!(counted(&mut staller, "closed"), 2);
    // Everything of theirs came back: no more fds or mappings than before they came.
    expect_holdings_back(pid, before);
    staller.kill();
    server.kill();
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn a_client_that_stops_answering_is_closed_at_the_idle_timeout() {
    let _test = exclusive_test("idle_timeout", WATCHDOG_LIMIT);
    let socket = SocketPath::new("idle_timeout");
    let mut server = spawn_server(&socket, "idle");
    let pid = server.pid();
    // One honest call first, so that what the server sets up once (its sweeper's poller)
    // exists before the baseline is taken; then that client goes, and its fds with it.
    honest_call(&current_thread_runtime(), &socket);
    let deadline = Instant::now() + PATIENCE;
    while server_holdings(pid).1 != 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let before = server_holdings(pid);
    let mut silent = ChildProcess::spawn("silent_caller", &[("RB_PATH", socket.param())]);
    silent.expect_line("called");
    silent.expect_line("closed");
    expect_holdings_back(pid, before);
    assert!(server.is_running(), "the server died");
    silent.kill();
    server.kill();
}

#[test]
fn a_blocking_server_waits_for_its_budget_then_closes_idle_connections() {
    let _test = exclusive_test("blocking_budget", WATCHDOG_LIMIT);
    let socket = SocketPath::new("blocking_budget");
    const SENDERS: u64 = 3;
    const COUNT: u64 = 3;
    const LEN: usize = (1 << 20) - 64;
    // Room for two of these messages at once, and three connections receiving.
    let config = ServerConfig::default()
        .max_message_size(1 << 20)
        .memory_budget(2 << 20)
        .idle_timeout(Some(Duration::from_secs(1)));
    let server = ringbell::Server::bind(socket.path(), config).expect("binding");
    let mut senders: Vec<ChildProcess> = (0..SENDERS)
        .map(|sender| {
            ChildProcess::spawn(
                "plain_sender",
                &[
                    ("RB_PATH", socket.param()),
                    ("RB_SEED", (sender * 1000).to_string()),
                    ("RB_COUNT", COUNT.to_string()),
                    ("RB_LEN", LEN.to_string()),
                ],
            )
        })
        .collect();
    let receivers: Vec<_> = (0..SENDERS)
        .map(|_| {
            let mut conn = server.accept().expect("accepting");
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut received = Vec::new();
                loop {
                    match conn.recv(&mut buf, None) {
                        Ok(_) => received.push(std::mem::take(&mut buf)),
                        Err(error) => return (received, error),
                    }
                }
            })
        })
        .collect();
    let mut seeds = Vec::new();
    for receiver in receivers {
        let (received, ended) = receiver.join().expect("a receiving thread");
        assert_eq!(
            received.len(),
            COUNT as usize,
            "messages received on one connection"
        );
        // Whose messages these are: the first one says.
        let seed = (0..SENDERS)
            .map(|sender| sender * 1000)
            .find(|&seed| received[0] == random_bytes(seed, LEN))
            .expect("a message that no sender sent");
        for (index, message) in received.iter().enumerate() {
            assert!(
                *message == random_bytes(seed + index as u64, LEN),
                "a wrong message"
            );
        }
        seeds.push(seed);
        assert!(
            matches!(
                ended,
                Error::Idle {
                    mid_message: false,
                    ..
                }
            ),
            "the receive ended with {ended:?}, not the idle timeout"
        );
    }
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(
        seeds.len(),
        SENDERS as usize,
        "each sender's messages, once"
    );
    for sender in &mut senders {
        sender.expect_line("sent");
        sender.expect_line("closed");
    }
}

#[test]
fn an_async_receive_ends_at_the_idle_timeout() {
    let _test = exclusive_test("async_idle", WATCHDOG_LIMIT);
    let socket = SocketPath::new("async_idle");
    let runtime = current_thread_runtime();
    let config = ServerConfig::default().idle_timeout(Some(Duration::from_secs(1)));
    let mut server = runtime
        .block_on(async { AsyncServer::bind(socket.path(), config) })
        .expect("binding");
    let mut sender = ChildProcess::spawn(
        "plain_sender",
        &[
            ("RB_PATH", socket.param()),
            ("RB_SEED", "5".into()),
            ("RB_COUNT", "1".into()),
            ("RB_LEN", "100".into()),
        ],
    );
    let ended = runtime.block_on(async {
        let mut conn = server.accept().await.expect("accepting");
        let mut buf = Vec::new();
        conn.recv(&mut buf).await.expect("the one message");
        assert_eq!(buf, random_bytes(5, 100));
        conn.recv(&mut buf).await.expect_err("nothing more comes")
    });
    assert!(
        matches!(
            ended,
            Error::Idle {
                mid_message: false,
                ..
            }
        ),
        "the receive ended with {ended:?}, not the idle timeout"
    );
    sender.expect_line("sent");
    sender.expect_line("closed");
}
