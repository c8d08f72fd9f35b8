//! What a server holds for its clients follows what they actually sent, not what they
//! announced: a client that announces a maximal chunked message and then stalls costs the
//! server one chunk, not the maximum. The receiver used to reserve the whole announced
//! length at once, so 64 such clients made the server commit 1 GiB.
//!
//! Real processes: the server (`AsyncServer::serve`) and each hostile client are this test
//! binary run again as children (see `cross_process.rs` for the machinery), and the server
//! is measured from outside through `/proc/<pid>/status`, so that this process's own
//! threads (one per child, reading its stderr) do not count. No assertion looks at a time.

// Windows: step 1 of docs/WINDOWS.md; these tests need the control channel, which comes next.
#![cfg(not(windows))]
#![cfg(all(feature = "tokio", feature = "__test-api"))]

#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    exclusive_test, frame_header, param, report, sleep_until_killed, status_kib, ChildProcess,
    Context, Scribbler, SocketPath, CLIENT_TO_SERVER, DATA_OFFSET, PATIENCE, RINGS_OFFSET,
    RING_CONTROL_LEN, SEND_NO_SIGNAL, WATCHDOG_LIMIT,
};
use ringbell::os::unix::ConnectionExt;
use ringbell::tokio::{AsyncServer, Client};
use ringbell::{ClientConfig, ServerConfig};

/// Frame kind of a first chunk (see `src/core/ring.rs`).
const KIND_FIRST: u8 = 2;
/// A ring's tail and head within its control block (see `src/core/layout.rs`).
const TAIL: usize = 0;
const HEAD: usize = 128;
/// How many clients announce a maximal message and stall.
const STALLERS: usize = 64;

#[test]
fn child_entry() {
    common::run_child_entry(|role| match role {
        "server" => role_server(),
        "stalling_announcer" => role_stalling_announcer(),
        other => Err(format!("unknown role {other:?}")),
    });
}

/// An echo server of calls (`AsyncServer::serve`, the default configuration) at `RB_PATH`
/// on a runtime of one worker; reports "listening" and serves until killed.
fn role_server() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let server = runtime
        .block_on(async { AsyncServer::bind(param("RB_PATH"), ServerConfig::default()) })
        .context("binding")?;
    runtime.spawn(server.serve(|request: Vec<u8>| async move { Ok::<_, String>(request) }));
    report("listening");
    sleep_until_killed()
}

/// Connects for calls, writes by hand into its ring one full first chunk of a request that
/// announces the connection's maximum message size, wakes the server, waits until the
/// server has taken the chunk (its head moved past it), reports "taken", and stalls.
fn role_stalling_announcer() -> Result<(), String> {
    let conn = ringbell::test_api::connect_for_calls(param("RB_PATH"), ClientConfig::default())
        .context("connecting")?;
    let segment = Scribbler::find(&conn)?;
    let full_chunk = conn.ring_capacity() / 4 - 16;
    let announced = conn.max_message_size() as u64;
    let mut frame = frame_header(full_chunk as u32, KIND_FIRST).to_vec();
    // A request's correlation id, as a client's would be: never 0.
    frame[8..16].copy_from_slice(&1u64.to_le_bytes());
    frame.extend_from_slice(&announced.to_le_bytes());
    frame.resize(16 + full_chunk, 0x5a);
    frame.resize(frame.len().next_multiple_of(8), 0);
    let ring = RINGS_OFFSET + CLIENT_TO_SERVER * RING_CONTROL_LEN;
    segment.write_bytes(DATA_OFFSET, &frame);
    segment.store_word(ring + TAIL, frame.len() as u64);
    // The server's sweeper sleeps on its clients' doorbells and control sockets: a byte on
    // the control socket stirs it, and it sweeps our ring.
    rustix::net::send(
        conn.control_fd(),
        b"!",
        rustix::net::SendFlags::DONTWAIT | SEND_NO_SIGNAL,
    )
    .context("waking the server")?;
    let deadline = Instant::now() + PATIENCE;
    // SYNC: Acquire pairs with the server's Release store of its head.
    while segment
        .header_word::<AtomicU64>(ring + HEAD)
        .load(Ordering::Acquire)
        < frame.len() as u64
    {
        if Instant::now() > deadline {
            return Err("the server never took the first chunk".into());
        }
        thread::sleep(Duration::from_millis(5));
    }
    report("taken");
    let _keep_open = conn;
    sleep_until_killed()
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn stalled_announcements_cost_what_was_sent_not_what_was_announced() {
    let _test = exclusive_test("stalled_announcements", WATCHDOG_LIMIT);
    let socket = SocketPath::new("stalled_announcements");
    let mut server = ChildProcess::spawn("server", &[("RB_PATH", socket.param())]);
    server.expect_line("listening");
    let announced_each = ServerConfig::DEFAULT_MAX_MESSAGE_SIZE as u64;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // One honest call first, so that what the server sets up once exists before the
    // baseline is taken.
    let honest_call = || {
        runtime.block_on(async {
            let client = Client::connect(socket.path(), ClientConfig::default())
                .await
                .expect("an honest client connecting");
            let reply = client.call(b"still serving").await.expect("an honest call");
            assert_eq!(reply, b"still serving");
        })
    };
    honest_call();
    let pid = server.pid();
    let (data_before, rss_before) = (status_kib(pid, "VmData"), status_kib(pid, "VmRSS"));

    let mut stallers: Vec<ChildProcess> = (0..STALLERS)
        .map(|_| ChildProcess::spawn("stalling_announcer", &[("RB_PATH", socket.param())]))
        .collect();
    for staller in &mut stallers {
        staller.expect_line("taken");
    }
    let (data_after, rss_after) = (status_kib(pid, "VmData"), status_kib(pid, "VmRSS"));
    let announced_kib = STALLERS as u64 * announced_each / 1024;
    let grown_kib = data_after.saturating_sub(data_before);
    println!(
        "{STALLERS} clients announced {announced_kib} KiB in all and sent one chunk each: \
         the server's VmData grew by {grown_kib} KiB ({data_before} -> {data_after}), its \
         VmRSS by {} KiB ({rss_before} -> {rss_after})",
        rss_after.saturating_sub(rss_before)
    );
    assert!(
        grown_kib < announced_kib / 100,
        "the server committed {grown_kib} KiB for {announced_kib} KiB announced: more than 1 %"
    );
    // And it still serves an honest client.
    honest_call();
    assert!(server.is_running(), "the server died");
    for staller in &mut stallers {
        staller.kill();
    }
    server.kill();
}
