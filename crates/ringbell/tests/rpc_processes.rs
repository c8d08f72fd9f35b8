//! Request/response across real processes: a client process killed in the middle of its
//! calls, and a server process killed while calls wait. Children are this test binary run
//! again (see `common::ChildProcess`); every test has a watchdog.

#![cfg(feature = "tokio")]

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use common::{
    exclusive_test, number_param, param, report, shared_test, sleep_until_killed, ChildProcess,
    SocketPath,
};
use ringbell::tokio::{AsyncServer, Client, ClientGroup};
use ringbell::{ClientConfig, Error, ServerConfig, WaitStrategy};

const WATCHDOG: Duration = Duration::from_secs(120);

#[test]
fn child_entry() {
    common::run_child_entry(run_role);
}

fn run_role(role: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|error| error.to_string())?;
    match role {
        "rpc_caller" => runtime.block_on(role_rpc_caller()),
        "rpc_server" => runtime.block_on(role_rpc_server()),
        "group_lifecycle" => runtime.block_on(role_group_lifecycle()),
        other => Err(format!("unknown role {other}")),
    }
}

/// Calls without pause, several at once, until killed.
async fn role_rpc_caller() -> Result<(), String> {
    let client = Client::connect(param("RB_SOCKET"), ClientConfig::default())
        .await
        .map_err(|error| error.to_string())?;
    for worker in 0..8u8 {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let _ = client.call(&[worker; 100]).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    report("calling");
    sleep_until_killed()
}

/// Serves with a handler that takes `RB_HANDLER_MS` per request, until killed.
async fn role_rpc_server() -> Result<(), String> {
    let delay = Duration::from_millis(number_param("RB_HANDLER_MS"));
    let server = AsyncServer::bind(param("RB_SOCKET"), ServerConfig::default())
        .map_err(|error| error.to_string())?;
    report("listening");
    server
        .serve(move |request: Vec<u8>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, String>(request)
        })
        .await;
    Ok(())
}

/// In a process of its own, so that its fd count is its own: a server, then a client
/// group of 10 connections and a lone client that make calls and are dropped. Reports
/// `settled` once the process holds exactly the fds it held before the clients came (the
/// group's task gone with its doorbell and epoll set, the server's sweeper has dropped
/// every connection), or fails after 20 s with both counts.
async fn role_group_lifecycle() -> Result<(), String> {
    let path = param("RB_SOCKET");
    let config = ServerConfig::default()
        .ring_capacity(4096)
        .wait(WaitStrategy::Block);
    let server = AsyncServer::bind(&path, config).map_err(|error| error.to_string())?;
    let serving =
        tokio::spawn(server.serve(|request: Vec<u8>| async move { Ok::<_, String>(request) }));
    // The sweeper's epoll set exists once it has started.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // And a thread of tokio's blocking pool, which the clients' handshakes use: on Windows
    // each holds a thread handle while it lives, and the pool keeps the handle of the last
    // one to exit (to join it at shutdown), so that one handle is there before and after.
    tokio::task::spawn_blocking(|| ())
        .await
        .map_err(|error| error.to_string())?;
    let before = open_fds();
    {
        let group = ClientGroup::new().map_err(|error| error.to_string())?;
        let mut clients = Vec::new();
        for _ in 0..10 {
            clients.push(
                group
                    .connect(&path, ClientConfig::default())
                    .await
                    .map_err(|error| error.to_string())?,
            );
        }
        clients.push(
            Client::connect(&path, ClientConfig::default())
                .await
                .map_err(|error| error.to_string())?,
        );
        for (index, client) in clients.iter().enumerate() {
            for call in 0..20u8 {
                let request = [index as u8, call];
                let reply = client
                    .call(&request)
                    .await
                    .map_err(|error| error.to_string())?;
                if reply != request {
                    return Err(format!(
                        "client {index}, call {call}: wrong reply {reply:?}"
                    ));
                }
            }
        }
        if open_fds() <= before {
            return Err("the clients hold no fds: the count is not measuring them".into());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = open_fds();
        if now == before {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{now} fds open 20 s after the clients went, {before} before"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report("settled");
    serving.abort();
    Ok(())
}

/// Dropping a client group and its clients closes everything they held, on both sides.
#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn a_dropped_client_group_leaves_no_fds_behind() {
    let _test = shared_test("dropped_client_group");
    let socket = SocketPath::new("rpc-group-lifecycle");
    let mut child = ChildProcess::spawn("group_lifecycle", &[("RB_SOCKET", socket.param())]);
    child.expect_line("settled");
    child.assert_success();
}

/// A client killed while the server's sweeper never sleeps (`WaitStrategy::Spin`) is
/// still dropped, and its place under `max_connections` comes back: the sweeper used to
/// read its epoll set, where the control socket reports the death, only when it slept.
#[test]
fn regress_a_busy_sweeper_drops_a_killed_client() {
    let _test = shared_test("busy_sweeper_killed_client");
    let socket = SocketPath::new("rpc-busy-sweeper");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = ServerConfig::default()
            .wait(WaitStrategy::Spin)
            .max_connections(1);
        let server = AsyncServer::bind(socket.path(), config).unwrap();
        let serving =
            tokio::spawn(server.serve(|request: Vec<u8>| async move { Ok::<_, String>(request) }));
        let mut caller = ChildProcess::spawn("rpc_caller", &[("RB_SOCKET", socket.param())]);
        tokio::task::block_in_place(|| caller.expect_line("calling"));
        tokio::task::block_in_place(|| caller.kill());
        let reconnect = async {
            loop {
                match Client::connect(socket.path(), ClientConfig::default()).await {
                    Ok(client) => {
                        assert_eq!(client.call(b"after").await.unwrap(), b"after");
                        break;
                    }
                    Err(Error::ServerBusy { .. }) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(other) => panic!("connecting after the kill: {other}"),
                }
            }
        };
        tokio::time::timeout(WATCHDOG, reconnect)
            .await
            .expect("watchdog: the killed client's place never came back");
        serving.abort();
    });
}

#[cfg(unix)]
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count())
}

/// Windows: this process's handles, from the system handle table (Wine's
/// `GetProcessHandleCount` always answers 0).
#[cfg(windows)]
fn open_fds() -> usize {
    common::windows::own_handles().len()
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn a_client_killed_mid_call_is_dropped_and_the_server_serves_the_others() {
    // Alone in this process: it counts the process's fds.
    let _test = exclusive_test("a_client_killed_mid_call", WATCHDOG);
    let socket = SocketPath::new("rpc-killed-client");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = AsyncServer::bind(socket.path(), ServerConfig::default()).unwrap();
        let serving = tokio::spawn(server.serve(|request: Vec<u8>| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, String>(request)
        }));
        let honest = Client::connect(socket.path(), ClientConfig::default())
            .await
            .unwrap();
        assert_eq!(honest.call(b"before").await.unwrap(), b"before");
        let baseline = open_fds();

        let mut caller = ChildProcess::spawn("rpc_caller", &[("RB_SOCKET", socket.param())]);
        tokio::task::block_in_place(|| caller.expect_line("calling"));
        assert!(
            open_fds() > baseline,
            "the caller's connection should hold fds here"
        );
        caller.kill();
        // Its pipes to us go too: what remains above the baseline is the server's.
        drop(caller);

        // The server notices the death, drops the connection and frees its fds; meanwhile
        // and afterwards the honest client is served.
        let mut freed = false;
        for round in 0..2_000u32 {
            let request = round.to_le_bytes();
            assert_eq!(honest.call(&request).await.unwrap(), request);
            if open_fds() == baseline {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            freed,
            "the dead client's fds were never released: {} open, {baseline} before",
            open_fds()
        );
        serving.abort();
    });
}

#[test]
fn calls_waiting_on_a_killed_server_fail_with_peer_died() {
    let _test = shared_test("calls_waiting_on_a_killed_server");
    let socket = SocketPath::new("rpc-killed-server");
    // Handlers take a minute: the calls are still waiting when the server dies.
    let mut server = ChildProcess::spawn(
        "rpc_server",
        &[
            ("RB_SOCKET", socket.param()),
            ("RB_HANDLER_MS", "60000".into()),
        ],
    );
    server.expect_line("listening");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::connect(socket.path(), ClientConfig::default())
            .await
            .unwrap();
        let calls: Vec<_> = (0..10u8)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { client.call(&[i]).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let killed_at = Instant::now();
        tokio::task::block_in_place(|| server.kill());
        for call in calls {
            let result = call.await.unwrap();
            assert!(matches!(result, Err(Error::PeerDied)), "{result:?}");
        }
        // Reported, not asserted: timing belongs to benchmarks.
        eprintln!("all calls failed {:?} after the kill", killed_at.elapsed());
        let after = client.call(b"after").await;
        assert!(matches!(after, Err(Error::PeerDied)), "{after:?}");
    });
}
