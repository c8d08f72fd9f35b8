//! Clients that connect and never finish the handshake, and the connection limit.
//!
//! A flood of stalled handshakes must not stop honest clients: every handshake runs at
//! once, each bounded by the handshake timeout, and the stalled ones are dropped at their
//! deadline with their fds. Past `ServerConfig::max_connections` (handshakes in progress
//! included) clients are refused with `Error::ServerBusy`. The server, the flood and the
//! honest clients are separate processes (children of this test binary, see
//! `common::ChildProcess`); every test has a watchdog.

// On Windows (under Wine 8) the stallers are raw pipe clients (`common::windows`), the
// server's handles are counted in the system handle table instead of its fds in /proc
// (each connection holds several handles there, at least one), and the flood is smaller
// (`STALLED`). On macOS the tests are ignored: they read /proc (`common::LINUX_ONLY`).
#![cfg(feature = "tokio")]

#[allow(dead_code)]
mod common;

#[cfg(unix)]
use std::io::Write;
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{
    number_param, param, report, shared_test, sleep_until_killed, ChildProcess, SocketPath,
    XorShift64, PATIENCE,
};
use ringbell::tokio::{AsyncServer, Client};
use ringbell::{ClientConfig, Error, Server, ServerConfig};

#[test]
fn child_entry() {
    common::run_child_entry(run_role);
}

fn run_role(role: &str) -> Result<(), String> {
    match role {
        "server" => role_server(),
        "staller" => role_staller(),
        "honest" => {
            let runtime = tokio::runtime::Runtime::new().map_err(|error| error.to_string())?;
            runtime.block_on(role_honest())
        }
        other => Err(format!("unknown role {other}")),
    }
}

/// An echo server, async (`RB_KIND=async`, `AsyncServer::serve`) or blocking
/// (`RB_KIND=blocking`, `Server::serve`), with `RB_MAX_CONNECTIONS` and
/// `RB_HANDSHAKE_MS`. Reports `listening <pid>`, then serves until killed.
fn role_server() -> Result<(), String> {
    let config = ServerConfig::default()
        .max_connections(number_param("RB_MAX_CONNECTIONS"))
        .handshake_timeout(Duration::from_millis(number_param("RB_HANDSHAKE_MS")));
    let echo = |request: Vec<u8>| Ok::<_, String>(request);
    match param("RB_KIND").as_str() {
        "async" => {
            let runtime = tokio::runtime::Runtime::new().map_err(|error| error.to_string())?;
            runtime.block_on(async {
                let server = AsyncServer::bind(param("RB_SOCKET"), config)
                    .map_err(|error| error.to_string())?;
                report(&format!("listening {}", std::process::id()));
                server
                    .serve(move |request: Vec<u8>| async move { echo(request) })
                    .await;
                Ok(())
            })
        }
        "blocking" => {
            let server =
                Server::bind(param("RB_SOCKET"), config).map_err(|error| error.to_string())?;
            report(&format!("listening {}", std::process::id()));
            server.serve(echo)
        }
        other => Err(format!("unknown server kind {other}")),
    }
}

/// Opens `RB_STALLED` connections and never completes a handshake: even ones send
/// nothing, odd ones half a Hello. Reports `stalled`, then holds them until killed.
fn role_staller() -> Result<(), String> {
    let stalled: usize = number_param("RB_STALLED");
    #[cfg(unix)]
    raise_open_files_limit(stalled + 64)?;
    let half_hello = &common::hello(common::PROTOCOL_VERSION)[..8];
    let mut streams = Vec::with_capacity(stalled);
    for index in 0..stalled {
        let mut stream = stall(&param("RB_SOCKET"), index)?;
        if index % 2 == 1 {
            stream
                .write_all_raw(half_hello)
                .map_err(|error| format!("half a hello on connection {index}: {error}"))?;
        }
        streams.push(stream);
    }
    report("stalled");
    sleep_until_killed()
}

/// A connection that never completes its handshake: a raw socket on Unix, a raw pipe
/// client on Windows, which `stalled` writes to as it pleases.
#[cfg(unix)]
type Stalled = UnixStream;
#[cfg(windows)]
type Stalled = common::windows::RawPipeClient;

#[cfg(unix)]
fn stall(path: &str, index: usize) -> Result<Stalled, String> {
    UnixStream::connect(path).map_err(|error| format!("stalled connection {index}: {error}"))
}

#[cfg(windows)]
fn stall(path: &str, _index: usize) -> Result<Stalled, String> {
    Ok(common::windows::RawPipeClient::connect(
        std::path::Path::new(path),
    ))
}

/// Writes raw bytes on a stalled connection (half a hello, or half a frame's header on
/// the pipe: the handshake waits for the rest either way).
trait WriteRaw {
    fn write_all_raw(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

#[cfg(unix)]
impl WriteRaw for UnixStream {
    fn write_all_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)
    }
}

#[cfg(windows)]
impl WriteRaw for common::windows::RawPipeClient {
    fn write_all_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_raw(bytes)
    }
}

/// `RB_CLIENTS` clients make `RB_CALLS` calls each with random payloads, all at once, and
/// check every reply. Reports `connected` once all have connected, then `ok <calls>`, or
/// fails with the first error.
async fn role_honest() -> Result<(), String> {
    let clients: usize = number_param("RB_CLIENTS");
    let calls: usize = number_param("RB_CALLS");
    let mut connected = Vec::with_capacity(clients);
    for index in 0..clients {
        let client = Client::connect(param("RB_SOCKET"), ClientConfig::default())
            .await
            .map_err(|error| format!("client {index} connecting: {error}"))?;
        connected.push(client);
    }
    report("connected");
    let mut tasks = tokio::task::JoinSet::new();
    for (index, client) in connected.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut random = XorShift64::new(index as u64 + 1);
            for call in 0..calls {
                let len = (random.next_u64() % 4096) as usize;
                let request: Vec<u8> = (0..len).map(|_| random.next_u64() as u8).collect();
                let reply = client
                    .call(&request)
                    .await
                    .map_err(|error| format!("client {index}, call {call}: {error}"))?;
                if reply != request {
                    return Err(format!("client {index}, call {call}: wrong reply"));
                }
            }
            Ok::<_, String>(calls)
        });
    }
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        done += joined.map_err(|error| error.to_string())??;
    }
    report(&format!("ok {done}"));
    Ok(())
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `needed`, within the hard limit.
#[cfg(unix)]
fn raise_open_files_limit(needed: usize) -> Result<(), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let maximum = limit.maximum.unwrap_or(u64::MAX);
    if (maximum as usize) < needed {
        return Err(format!(
            "need {needed} fds but the hard RLIMIT_NOFILE is {maximum}; raise it (ulimit -Hn)"
        ));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(maximum),
            maximum: limit.maximum,
        },
    )
    .map_err(|error| format!("raising RLIMIT_NOFILE: {error}"))
}

/// A server child of `kind`, and its pid.
fn spawn_server(
    socket: &SocketPath,
    kind: &str,
    max_connections: usize,
    handshake: Duration,
) -> (ChildProcess, u32) {
    let mut server = ChildProcess::spawn(
        "server",
        &[
            ("RB_SOCKET", socket.param()),
            ("RB_KIND", kind.into()),
            ("RB_MAX_CONNECTIONS", max_connections.to_string()),
            ("RB_HANDSHAKE_MS", handshake.as_millis().to_string()),
        ],
    );
    let line = server.next_line();
    let pid = line
        .strip_prefix("listening ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("server reported {line:?}"));
    (server, pid)
}

/// How many fds process `pid` has open.
#[cfg(unix)]
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or_else(|error| panic!("reading /proc/{pid}/fd: {error}"))
}

/// How many handles process `pid` has open (the system handle table: Wine's
/// `GetProcessHandleCount` always answers 0). Each connection holds several, at least one.
#[cfg(windows)]
fn open_fds(pid: u32) -> usize {
    common::windows::handles_of(pid).len()
}

/// How many fds process `pid` has open once the count stops moving: a server that has just
/// started may still have a file open for a moment (the blocking server reads cgroup files
/// to size its worker pool).
fn settled_fds(pid: u32) -> usize {
    let mut last = open_fds(pid);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = open_fds(pid);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Polls until process `pid` has at most `target` fds open; panics after [`PATIENCE`].
fn wait_for_fds_at_most(pid: u32, target: usize, what: &str) {
    let start = Instant::now();
    loop {
        let open = open_fds(pid);
        if open <= target {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: the server still has {open} fds open, expected at most {target}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
const STALLED: usize = 5_000;
/// Fewer under Wine, where each pipe instance and each wait goes through `wineserver`.
#[cfg(windows)]
const STALLED: usize = 500;
const HONEST_PROCESSES: usize = 4;
const HONEST_CLIENTS_EACH: usize = 25;
const HONEST_CALLS: usize = 200;

/// 5,000 stalled handshakes and 100 honest clients at once; then the stalled ones time out
/// and their fds are freed while the flooding process still holds its ends.
fn flood(kind: &str) {
    let _test = shared_test(&format!("flood_{kind}"));
    let socket = SocketPath::new(&format!("flood-{kind}"));
    // Long enough that the honest clients are served while every stalled handshake is
    // still in progress, which the fd count below checks.
    let handshake = Duration::from_secs(20);
    let (_server, pid) = spawn_server(&socket, kind, STALLED + 1_000, handshake);
    let baseline = settled_fds(pid);

    let mut staller = ChildProcess::spawn(
        "staller",
        &[
            ("RB_SOCKET", socket.param()),
            ("RB_STALLED", STALLED.to_string()),
        ],
    );
    staller.expect_line("stalled");
    let flooded_at = Instant::now();
    // Every stalled connection holds one fd on the server once accepted.
    wait_for_fds_at_least(pid, baseline + STALLED);

    let mut honest: Vec<ChildProcess> = (0..HONEST_PROCESSES)
        .map(|_| {
            ChildProcess::spawn(
                "honest",
                &[
                    ("RB_SOCKET", socket.param()),
                    ("RB_CLIENTS", HONEST_CLIENTS_EACH.to_string()),
                    ("RB_CALLS", HONEST_CALLS.to_string()),
                ],
            )
        })
        .collect();
    for client in &mut honest {
        client.expect_line("connected");
    }
    // The honest clients got in while the flood was still pending: had the stalled
    // handshakes blocked the way, the honest `connect`s would have failed (5 s timeout).
    let pending_fds = open_fds(pid);
    let connected_after = flooded_at.elapsed();
    for client in &mut honest {
        client.expect_line(&format!("ok {}", HONEST_CLIENTS_EACH * HONEST_CALLS));
        client.assert_success();
    }
    eprintln!(
        "{kind}: {STALLED} stalled handshakes; {} honest clients connected {connected_after:?} \
         after the flood, server fds: {baseline} before, {pending_fds} with the flood pending",
        HONEST_PROCESSES * HONEST_CLIENTS_EACH
    );
    assert!(
        connected_after >= handshake || pending_fds >= baseline + STALLED,
        "the stalled handshakes were dropped before their deadline: {pending_fds} fds"
    );

    // The flood's handshakes time out and free their fds, though the flooding process
    // keeps its ends open. The honest clients have gone too.
    wait_for_fds_at_most(pid, baseline, "after the stalled handshakes' deadline");
    assert!(staller.is_running());
    eprintln!(
        "{kind}: fds back to {baseline} {:?} after the flood",
        flooded_at.elapsed()
    );
}

/// Polls until process `pid` has at least `target` fds open; panics after [`PATIENCE`].
fn wait_for_fds_at_least(pid: u32, target: usize) {
    let start = Instant::now();
    loop {
        let open = open_fds(pid);
        if open >= target {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the server has {open} fds open, not the {target} expected with every stalled \
             connection accepted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn a_flood_of_stalled_handshakes_does_not_stop_the_async_server() {
    flood("async");
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn a_flood_of_stalled_handshakes_does_not_stop_the_blocking_server() {
    flood("blocking");
}

/// Connects until refused; returns the clients that got in and the refusal.
async fn connect_until_refused(socket: &SocketPath, most: usize) -> (Vec<Client>, Error) {
    let mut clients = Vec::new();
    for _ in 0..most {
        match Client::connect(socket.path(), ClientConfig::default()).await {
            Ok(client) => clients.push(client),
            Err(error) => return (clients, error),
        }
    }
    panic!("{most} clients connected; the limit should have refused one");
}

/// Connects, retrying while refused as busy, until [`PATIENCE`] runs out.
async fn connect_when_room(socket: &SocketPath) -> Client {
    let start = Instant::now();
    loop {
        match Client::connect(socket.path(), ClientConfig::default()).await {
            Ok(client) => return client,
            Err(Error::ServerBusy { .. }) if start.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("connecting once there is room: {error}"),
        }
    }
}

/// Clients that `connection_limit` has connect at once past the limit.
const REFUSED_AT_ONCE: usize = 20;

fn connection_limit(kind: &str) {
    let _test = shared_test(&format!("connection_limit_{kind}"));
    const LIMIT: usize = 10;
    let socket = SocketPath::new(&format!("limit-{kind}"));
    let (_server, pid) = spawn_server(&socket, kind, LIMIT, Duration::from_millis(500));
    let baseline = settled_fds(pid);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Established connections fill the limit; the next client is told why it is
        // refused, and the others still work.
        let (mut clients, refusal) = connect_until_refused(&socket, LIMIT + 1).await;
        eprintln!("{kind}: client {} refused: {refusal}", clients.len() + 1);
        assert_eq!(clients.len(), LIMIT);
        assert!(matches!(refusal, Error::ServerBusy { .. }), "{refusal:?}");
        for client in &clients {
            assert_eq!(client.call(b"still served").await.unwrap(), b"still served");
        }
        // Many refused at once: each is told so, none is left waiting in the server's
        // queue (an accept loop that stopped at the first refusal left the rest there
        // until their handshakes timed out, as `Error::Handshake`).
        let at_once: Vec<_> = (0..REFUSED_AT_ONCE)
            .map(|_| {
                let path = socket.path().to_path_buf();
                tokio::spawn(async move {
                    Client::connect(&path, ClientConfig::default())
                        .await
                        .map(|_| ())
                })
            })
            .collect();
        for refused in at_once {
            let refused = refused.await.unwrap();
            assert!(
                matches!(refused, Err(Error::ServerBusy { .. })),
                "{kind}: a client among {REFUSED_AT_ONCE} at once got {refused:?}"
            );
        }
        // A closed connection gives its place back.
        clients.pop();
        clients.push(connect_when_room(&socket).await);
        assert_eq!(clients.last().unwrap().call(b"x").await.unwrap(), b"x");

        // Handshakes in progress count too. With every connection closed and freed,
        // stalled connections take all the places until their handshakes time out.
        drop(clients);
        wait_for_fds_at_most(pid, baseline, "after the clients closed");
        // Counted again: the first count may have caught a file the server had open for a
        // moment while starting (the blocking server reads cgroup files to size its pool).
        let idle = open_fds(pid);
        let stalled: Vec<Stalled> = (0..LIMIT)
            .map(|index| stall(&socket.path().to_string_lossy(), index).unwrap())
            .collect();
        wait_for_fds_at_least(pid, idle + LIMIT);
        let refusal = Client::connect(socket.path(), ClientConfig::default())
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(refusal, Error::ServerBusy { .. }), "{refusal:?}");
        // The stalled handshakes time out and their places come back.
        let late = connect_when_room(&socket).await;
        assert_eq!(late.call(b"late").await.unwrap(), b"late");
        drop(stalled);
    });
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn past_the_connection_limit_the_async_server_refuses_with_server_busy() {
    connection_limit("async");
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn past_the_connection_limit_the_blocking_server_refuses_with_server_busy() {
    connection_limit("blocking");
}
