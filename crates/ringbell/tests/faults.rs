//! Fault injection with real processes: the "crash matrix", "server crash" and "hostile
//! peer" suites of the adversarial-hardening issue.
//!
//! * [`crash_matrix`]: client processes are SIGKILLed (on Windows: terminated) at random
//!   points (connecting, in the middle of a chunked frame, while the server writes them a
//!   reply, blocked in `recv` or `call`) while other clients make checked calls; the server
//!   must serve those without an error and give back every fd (handle) and mapping (view)
//!   of each dead connection.
//! * [`server_crash`]: the server is SIGKILLed (terminated) under clients blocked in every
//!   kind of wait; each gets `PeerDied`, and reconnects once a new server binds the same
//!   path.
//! * [`hostile_peer_with_honest_clients`]: a client scribbles random values into the
//!   indices, frame headers and waiter words of its segment beside 100 honest clients; the
//!   honest ones see no error, the hostile connection is dropped, and the server neither
//!   dies nor grows past a bound derived from its configuration.
//!
//! # Processes
//!
//! Every process is this test binary run again (see `common::ChildProcess` and the module
//! docs of `cross_process.rs`). The server is a child too, running
//! `AsyncServer::serve_until` (what `serve` runs, with a way to stop it), so that the test
//! can read its `/proc/<pid>` (fds, mappings, memory) from outside and kill it. Its socket
//! lives in a directory of its own, so that a stray file left there is seen.
//!
//! # Windows
//!
//! Under Wine 8 (never yet on real Windows) the same three tests run, in a reduced form
//! (see [`Form`]; a wake-up goes through `wineserver` there), with what Windows has in
//! place of `/proc` (`common::windows::ProcessProbe`):
//!
//! * for `/proc/<pid>/fd`, the server's handles, counted in the system handle table
//!   (`NtQuerySystemInformation` class 16: Wine's `GetProcessHandleCount` always answers
//!   0);
//! * for its segment lines in `/proc/<pid>/maps`, its views that start with the segment's
//!   magic (`VirtualQueryEx` for `MEM_MAPPED`, then `ReadProcessMemory`);
//! * for `VmHWM`, `VmRSS` and `VmPeak` in `/proc/<pid>/status`, its `VM_COUNTERS`
//!   (`NtQueryInformationProcess`): `PeakWorkingSetSize`, `WorkingSetSize` and
//!   `PeakVirtualSize` (Wine 8 keeps the peaks; its `PeakPagefileUsage` is no peak, so
//!   nothing reads it).
//!
//! A kill is `TerminateProcess` with exit code 9, which tells it from a child's own failure
//! (exit code 1). There is nothing to check in `/dev/shm` (a section is unnamed), nor a
//! socket file in the directory (the address is a pipe name, which goes with its server).
//! The hostile client scribbles through its connection's own view and calls through that
//! connection itself, not a `Client` ([`OwnCalls`]), and wakes the server in its last step
//! by setting the doorbell it was given a ringer for ([`ServerWaker`]).
//!
//! # Randomness and size
//!
//! Random choices (which phase, how long before a kill, what to scribble where) come from a
//! seeded [`XorShift64`]. The seed is printed; `RINGBELL_FAULTS_SEED=<n>` replays a run.
//! CI runs a reduced form (40 kills, 40 hostile connections; under Wine 20 and 20, see
//! [`Form`]); `RINGBELL_FULL_FAULTS=1` runs the count of 200 kills, and 200 hostile
//! connections.
//!
//! # Time
//!
//! No test asserts on how long anything took. Latencies are printed. The bounds below
//! (how long a dead connection's resources may take to be released, when a call counts as
//! stuck) only turn a hang into a clear failure, and every test has a watchdog.

// On macOS the tests are ignored: they read /proc or remap a segment found there
// (`common::LINUX_ONLY`). On Windows they run with the helpers named under "Windows" above.
// The hostile client reaches inside its connection through `ringbell::test_api`.
#![cfg(all(feature = "tokio", feature = "__test-api"))]

#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::BufRead;
#[cfg(unix)]
use std::os::fd::OwnedFd;
#[cfg(unix)]
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    exclusive_test, number_param, param, random_bytes, report, sleep_until_killed, ChildProcess,
    Context, Scribbler, XorShift64, CLIENT_TO_SERVER, DATA_OFFSET, PATIENCE, RINGS_OFFSET,
    RING_CONTROL_LEN, SERVER_TO_CLIENT,
};
#[cfg(unix)]
use ringbell::os::unix::ConnectionExt;
use ringbell::test_api::{reply_of, request, send_request, send_request_async};
use ringbell::tokio::{AsyncConnection, AsyncServer, Client};
use ringbell::{ClientConfig, Connection, Error, ServerConfig, WaitStrategy};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// Set to `1` for the full counts instead of CI's reduced ones.
const FULL_ENV: &str = "RINGBELL_FULL_FAULTS";
/// Set to a number to replay a run's random choices.
const SEED_ENV: &str = "RINGBELL_FAULTS_SEED";

/// Ring size of the servers here: small, so that messages of a few KiB go in chunks and a
/// reply of 256 KiB fills the ring and makes the server wait.
const RING: usize = 16 << 10;
/// A message that streams through [`RING`] in 64 chunks.
const BIG: usize = 256 << 10;
/// A request that starts with this is never answered (the handler waits for ever): what a
/// client blocked in `call` waits for.
const NEVER_ANSWER: &[u8] = b"ringbell-faults: never answer";
/// How long an honest call may take before it counts as an error: a stall, not a timing.
const CALL_PATIENCE: Duration = Duration::from_secs(20);
/// How long the server may take to release a dead connection's fds and mappings before
/// the test fails: it normally takes milliseconds (a handshake killed half-way holds them
/// at most the 2 s handshake timeout).
const RELEASE_BOUND: Duration = Duration::from_secs(10);
/// How long after the server's death a blocked client may stay blocked before it reports
/// itself stuck: the generous bound on "about 100 ms".
const PEER_DIED_BOUND: Duration = Duration::from_secs(10);

// Where things are in a segment (see `src/core/layout.rs`; `common` has the ring offsets).
/// A ring's tail (producer's index) within its control block.
const TAIL: usize = 0;
/// A ring's head (consumer's index) within its control block.
const HEAD: usize = 128;
/// The consumer's wait cell (futex word `seq`, then the `sleeping` announcement).
const READABLE_CELL: usize = 256;
/// The producer's wait cell.
const WRITABLE_CELL: usize = 384;
/// `closed[SERVER_TO_CLIENT]`: set by the server's side when it drops the connection.
const SERVER_CLOSED_FLAG: usize = 148;

fn control_block(ring: usize) -> usize {
    RINGS_OFFSET + ring * RING_CONTROL_LEN
}

// =======================================================================================
// The children.

#[test]
fn child_entry() {
    common::run_child_entry(run_role);
}

fn run_role(role: &str) -> Result<(), String> {
    let runtime = Runtime::new().context("starting tokio")?;
    match role {
        "server" => runtime.block_on(role_server()),
        "honest" => runtime.block_on(role_honest()),
        "victim" => role_victim(&runtime),
        "blocked" => role_blocked(&runtime),
        "hostile" => role_hostile(&runtime),
        other => Err(format!("unknown role {other:?}")),
    }
}

/// The server: `AsyncServer::serve_until` with [`echo_or_hang`], ring `RB_RING`, maximum
/// message `RB_MAX_MESSAGE`, `RB_CONCURRENT` handlers per connection. Reports `listening
/// <pid>`; stops gracefully when the parent says "stop" (or closes stdin), then reports
/// "stopped". A panic anywhere in the process aborts it, so that a panic the runtime would
/// catch in a task is not missed: the parent sees a dead server.
async fn role_server() -> Result<(), String> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let config = ServerConfig::default()
        .ring_capacity(number_param("RB_RING"))
        .max_message_size(number_param("RB_MAX_MESSAGE"))
        .concurrent_requests(number_param("RB_CONCURRENT"));
    let server = AsyncServer::bind(param("RB_SOCKET"), config).context("binding")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    thread::spawn(move || {
        let _ = parent_line();
        let _ = stop.send(());
    });
    report(&format!("listening {}", std::process::id()));
    let shutdown = async {
        let _ = stopped.await;
    };
    server
        .serve_until(echo_or_hang, shutdown, Duration::from_secs(1))
        .await;
    report("stopped");
    Ok(())
}

/// The handler: echoes, except requests starting with [`NEVER_ANSWER`].
async fn echo_or_hang(request: Vec<u8>) -> Result<Vec<u8>, String> {
    if request.starts_with(NEVER_ANSWER) {
        std::future::pending::<()>().await;
    }
    Ok(request)
}

/// `RB_CONNECTIONS` clients with `RB_TASKS` tasks each, calling without end (pausing
/// `RB_PAUSE_MS` between calls) and checking every reply byte for byte. Reports
/// "connected" once every connection has answered a call; when the parent says "stop",
/// reports `done <calls> <errors> <first error or ->`.
async fn role_honest() -> Result<(), String> {
    let path = param("RB_SOCKET");
    let connections: usize = number_param("RB_CONNECTIONS");
    let tasks: u64 = number_param("RB_TASKS");
    let max_len: usize = number_param("RB_MAX_LEN");
    let pause = Duration::from_millis(number_param("RB_PAUSE_MS"));
    let seed: u64 = number_param("RB_SEED");
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = JoinSet::new();
    for connection in 0..connections {
        let client = Client::connect(&path, ClientConfig::default())
            .await
            .context("connecting")?;
        let reply = client.call(b"hello").await.context("the first call")?;
        if reply != b"hello" {
            return Err(format!("the first call's reply was {reply:?}"));
        }
        for task in 0..tasks {
            let (client, tally, stop) = (client.clone(), tally.clone(), stop.clone());
            let mut rng = XorShift64::new(seed ^ ((connection as u64) << 32) ^ task);
            callers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = honest_message(&mut rng, max_len);
                    match client.call_timeout(&request, CALL_PATIENCE).await {
                        Ok(reply) if reply == request => {
                            tally.calls.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(reply) => {
                            let what = format!(
                                "a reply of {} bytes differs from its request of {} bytes",
                                reply.len(),
                                request.len()
                            );
                            tally.error(what);
                        }
                        Err(error) => {
                            // A broken connection fails every later call: stop here.
                            tally.error(format!("call: {error} ({error:?})"));
                            return;
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
    }
    report("connected");
    let _ = tokio::task::spawn_blocking(parent_line).await;
    stop.store(true, Ordering::Relaxed);
    while callers.join_next().await.is_some() {}
    let first = tally.first_error.lock().unwrap().clone();
    report(&format!(
        "done {} {} {}",
        tally.calls.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        first.unwrap_or_else(|| "-".into())
    ));
    Ok(())
}

/// Calls made and errors seen by an honest client process.
#[derive(Debug, Default)]
struct Tally {
    calls: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(what);
    }
}

/// An honest request: mostly small, some a few frames, a few up to `max_len` (chunked).
fn honest_message(rng: &mut XorShift64, max_len: usize) -> Vec<u8> {
    let len = match rng.next_u64() % 100 {
        0..70 => rng.next_u64() % 257,
        70..95 => 257 + rng.next_u64() % 4096,
        _ => rng.next_u64() % (max_len as u64 + 1),
    };
    let mut message = vec![0u8; len as usize];
    rng.fill(&mut message);
    message
}

/// A client that the parent kills in phase `RB_PHASE`. It reports a line once it has
/// reached the phase, then stays in it until killed.
fn role_victim(runtime: &Runtime) -> Result<(), String> {
    let path = param("RB_SOCKET");
    let seed: u64 = number_param("RB_SEED");
    match param("RB_PHASE").as_str() {
        // Connect and hang up, again and again: a kill lands in a handshake, or between.
        "connecting" => {
            report("connecting");
            loop {
                let _ = connect_raw(&path, ClientConfig::default());
            }
        }
        // Requests of 256 KiB, three at a time, each going through the large-message
        // regions both ways: a kill leaves the server mid-copy or mid-reply.
        "mid_frame" => runtime.block_on(async {
            let client = Client::connect(&path, ClientConfig::default())
                .await
                .context("connecting")?;
            let message = Arc::new(random_bytes(seed, BIG));
            let reply = client.call(&message).await.context("the first call")?;
            if reply != *message {
                return Err("the first echo differs".into());
            }
            for _ in 0..3 {
                let (client, message) = (client.clone(), message.clone());
                tokio::spawn(async move { while client.call(&message).await.is_ok() {} });
            }
            report("streaming");
            std::future::pending::<Result<(), String>>().await
        }),
        // Four requests of 256 KiB, then never a read: the server's replies go through its
        // large-message region (512 KiB: two fit), and the server waits for room for the
        // third. Reported once the first two replies' frames are in the ring. (Before
        // issue 14 one reply, in chunks, filled the ring.)
        "server_writing" => {
            let mut conn = connect_raw(&path, ClientConfig::default()).context("connecting")?;
            let segment = Scribbler::find(&conn)?;
            let message = random_bytes(seed, BIG);
            for correlation in 1..=4 {
                send_request(&mut conn, correlation, &message).context("sending a request")?;
            }
            let tail = segment.header_word::<AtomicU64>(control_block(SERVER_TO_CLIENT) + TAIL);
            let give_up = Instant::now() + PATIENCE;
            // Two `Large` frames: a 16-byte header and a 20-byte payload, padded to 40.
            while tail.load(Ordering::Acquire) < 2 * 40 {
                if Instant::now() > give_up {
                    return Err("the server never sent two replies".into());
                }
                thread::sleep(Duration::from_millis(1));
            }
            report("server_blocked");
            sleep_until_killed()
        }
        // Waiting for something that never comes, in the way `RB_WAY` names: blocking
        // `recv` (adaptive, then futex only), async `recv`, or a `call`.
        "blocked" => {
            let mut buf = Vec::new();
            let way: usize = number_param("RB_WAY");
            match way % BLOCKED_WAYS {
                0 | 1 => {
                    let wait = if way % BLOCKED_WAYS == 0 {
                        WaitStrategy::default()
                    } else {
                        WaitStrategy::Block
                    };
                    let mut conn = connect_raw(&path, ClientConfig::default().wait(wait))
                        .context("connecting")?;
                    report("blocking");
                    let result = conn.recv(&mut buf, None);
                    Err(format!("recv returned {result:?}"))
                }
                2 => runtime.block_on(async {
                    let mut conn = connect_raw_async(&path, ClientConfig::default())
                        .await
                        .context("connecting")?;
                    report("blocking");
                    let result = conn.recv(&mut buf).await;
                    Err(format!("recv returned {result:?}"))
                }),
                _ => runtime.block_on(async {
                    let client = Client::connect(&path, ClientConfig::default())
                        .await
                        .context("connecting")?;
                    report("blocking");
                    let result = client.call(NEVER_ANSWER).await;
                    Err(format!("call returned {result:?}"))
                }),
            }
        }
        other => Err(format!("unknown phase {other:?}")),
    }
}

/// A client blocked, in the way `RB_VARIANT` names, when the parent kills the server.
/// Reports "blocked" before it blocks. When its wait ends it notes the time on the
/// monotonic clock, reads the time of the kill from the parent's line `killed <ns>`, and
/// reports `died <error> <microseconds after the kill>`. Then it reconnects with
/// [`connect_with_retry`] (the README's recipe), checks an echo, and reports `reconnected
/// <attempts>`. If it is still blocked [`PEER_DIED_BOUND`] after the kill, it reports
/// "stuck" and fails.
fn role_blocked(runtime: &Runtime) -> Result<(), String> {
    let path = PathBuf::from(param("RB_SOCKET"));
    let variant = param("RB_VARIANT");
    let unblocked = Arc::new(AtomicBool::new(false));
    let (kill_time, killed_at) = mpsc::channel::<u64>();
    {
        let unblocked = unblocked.clone();
        thread::spawn(move || {
            let Some(line) = parent_line() else { return };
            let Some(at) = line.strip_prefix("killed ").and_then(|ns| ns.parse().ok()) else {
                return;
            };
            let _ = kill_time.send(at);
            thread::sleep(PEER_DIED_BOUND);
            if !unblocked.load(Ordering::SeqCst) {
                report(&format!("stuck {PEER_DIED_BOUND:?} after the kill"));
                std::process::exit(1);
            }
        });
    }
    let blocking = wait_named(&variant);
    let (error, ended_at) = if variant.starts_with("async") || variant.starts_with("call") {
        runtime.block_on(blocked_async(&path, &variant))?
    } else {
        blocked_sync(&path, &variant, blocking)?
    };
    unblocked.store(true, Ordering::SeqCst);
    let killed_at = killed_at
        .recv_timeout(PATIENCE)
        .context("waiting for the time of the kill")?;
    let after_us = ended_at.saturating_sub(killed_at) / 1_000;
    report(&format!("died {} {after_us}", error_name(&error)));

    let give_up = PATIENCE;
    let attempts = if variant.starts_with("async") || variant.starts_with("call") {
        runtime.block_on(async {
            let (client, attempts) = client_with_retry(&path, give_up).await?;
            let reply = client
                .call(b"again")
                .await
                .context("calling after reconnecting")?;
            if reply != b"again" {
                return Err(format!("the echo after reconnecting was {reply:?}"));
            }
            Ok::<_, String>(attempts)
        })?
    } else {
        let mut attempts = 0;
        let mut conn = connect_with_retry(&path, ClientConfig::default(), give_up, &mut attempts)
            .context("reconnecting")?;
        conn.send(&request(b"again"))
            .context("sending after reconnecting")?;
        let mut reply = Vec::new();
        conn.recv(&mut reply, Some(PATIENCE))
            .context("receiving after reconnecting")?;
        // A reply of `AsyncServer::serve` ends with the byte that says it is one.
        if reply_of(&reply) != Some(Ok(&b"again"[..])) {
            return Err(format!("the echo after reconnecting was {reply:?}"));
        }
        attempts
    };
    report(&format!("reconnected {attempts}"));
    Ok(())
}

/// The wait strategy a blocking variant uses.
fn wait_named(variant: &str) -> WaitStrategy {
    if variant.ends_with("_block") {
        WaitStrategy::Block
    } else {
        WaitStrategy::default()
    }
}

/// The blocking API's waits: in `recv`, or in `send` on a ring the server stopped reading
/// (its handlers are all busy with requests it never answers).
fn blocked_sync(path: &Path, variant: &str, wait: WaitStrategy) -> Result<(Error, u64), String> {
    let mut conn = connect_raw(path, ClientConfig::default().wait(wait)).context("connecting")?;
    let mut buf = Vec::new();
    let result = match variant {
        "recv_adaptive" | "recv_block" => {
            report("blocked");
            conn.recv(&mut buf, None).map(drop)
        }
        "recv_timeout" => {
            report("blocked");
            conn.recv(&mut buf, Some(Duration::from_secs(3600)))
                .map(drop)
        }
        "send_full_block" => {
            for call in 1..=SERVER_CRASH_CONCURRENT as u64 {
                send_request(&mut conn, call, NEVER_ANSWER).context("sending")?;
            }
            report("blocked");
            let filler = request(&[7u8; 4000]);
            (0..100_000).try_for_each(|_| conn.send(&filler))
        }
        other => return Err(format!("unknown variant {other:?}")),
    };
    let ended_at = monotonic_ns();
    match result {
        Err(error) => Ok((error, ended_at)),
        Ok(()) => Err(format!("{variant}: the wait ended without an error")),
    }
}

/// The async API's waits: `AsyncConnection::recv`, `AsyncConnection::send` on a full ring,
/// one `Client::call` never answered, and many at once.
async fn blocked_async(path: &Path, variant: &str) -> Result<(Error, u64), String> {
    let result = match variant {
        "async_recv" | "async_send_full" => {
            let mut conn = connect_raw_async(path, ClientConfig::default())
                .await
                .context("connecting")?;
            if variant == "async_recv" {
                report("blocked");
                conn.recv(&mut Vec::new()).await.map(drop)
            } else {
                for call in 1..=SERVER_CRASH_CONCURRENT as u64 {
                    send_request_async(&mut conn, call, NEVER_ANSWER)
                        .await
                        .context("sending")?;
                }
                report("blocked");
                let filler = request(&[7u8; 4000]);
                let mut result = Ok(());
                for _ in 0..100_000 {
                    result = conn.send(&filler).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        }
        "call" | "calls_many" => {
            let client = Client::connect(path, ClientConfig::default())
                .await
                .context("connecting")?;
            let calls = if variant == "call" { 1 } else { 20 };
            let mut waiting = JoinSet::new();
            for _ in 0..calls {
                let client = client.clone();
                waiting.spawn(async move { client.call(NEVER_ANSWER).await });
            }
            report("blocked");
            // Every call must fail; the last one to fail sets the time.
            let mut first_error = None;
            while let Some(joined) = waiting.join_next().await {
                match joined.context("joining a call")? {
                    Ok(reply) => return Err(format!("a call was answered: {reply:?}")),
                    Err(error) => {
                        if first_error.is_none() || !matches!(error, Error::PeerDied) {
                            first_error = Some(error);
                        }
                    }
                }
            }
            first_error.map_or(Ok(()), Err)
        }
        other => return Err(format!("unknown variant {other:?}")),
    };
    let ended_at = monotonic_ns();
    match result {
        Err(error) => Ok((error, ended_at)),
        Ok(()) => Err(format!("{variant}: the wait ended without an error")),
    }
}

/// A connection for calls, made by hand: every server in this suite serves calls, which it
/// refuses to a plain `Connection`, and these clients drive their rings themselves.
fn connect_raw(path: impl AsRef<Path>, config: ClientConfig) -> Result<Connection, Error> {
    ringbell::test_api::connect_for_calls(path, config)
}

/// [`connect_raw`], as an `AsyncConnection` (the handshake blocks this task's thread, as
/// a test child may).
async fn connect_raw_async(
    path: impl AsRef<Path>,
    config: ClientConfig,
) -> Result<AsyncConnection, Error> {
    AsyncConnection::from_connection(connect_raw(path, config)?)
}

/// The README's reconnect recipe ("Reconnecting after `PeerDied`"), as the tests run it:
/// retries while no server answers at `path` yet, with a growing pause, for at most
/// `give_up`. Counts the attempts in `attempts`.
fn connect_with_retry(
    path: &Path,
    config: ClientConfig,
    give_up: Duration,
    attempts: &mut u32,
) -> Result<Connection, Error> {
    let deadline = Instant::now() + give_up;
    let mut pause = Duration::from_millis(10);
    loop {
        *attempts += 1;
        match connect_raw(path, config.clone()) {
            Ok(conn) => return Ok(conn),
            // No server yet (no socket file, or a stale one: connection refused), or one
            // that died or was busy in the handshake: worth another try.
            Err(
                Error::Io(_)
                | Error::Timeout
                | Error::Handshake { .. }
                | Error::PeerDied
                | Error::ServerBusy { .. },
            ) if Instant::now() + pause < deadline => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            // Refused credentials or a bad configuration: retrying will not help.
            Err(error) => return Err(error),
        }
    }
}

/// [`connect_with_retry`] for `Client`; returns the client and the attempts it took.
async fn client_with_retry(path: &Path, give_up: Duration) -> Result<(Client, u32), String> {
    let deadline = Instant::now() + give_up;
    let mut pause = Duration::from_millis(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match Client::connect(path, ClientConfig::default()).await {
            Ok(client) => return Ok((client, attempts)),
            Err(
                Error::Io(_)
                | Error::Timeout
                | Error::Handshake { .. }
                | Error::PeerDied
                | Error::ServerBusy { .. },
            ) if Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(error) => return Err(format!("reconnecting after {attempts} attempts: {error}")),
        }
    }
}

/// The variant's name, for the report line.
fn error_name(error: &Error) -> &'static str {
    match error {
        Error::PeerDied => "PeerDied",
        Error::Corrupted { .. } => "Corrupted",
        Error::Timeout => "Timeout",
        Error::Io(_) => "Io",
        Error::Handler { .. } => "Handler",
        _ => "other",
    }
}

/// The system-wide monotonic clock in nanoseconds: the same clock in every process, so a
/// child can measure from a time the parent took.
#[cfg(unix)]
fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// See above: `QueryPerformanceCounter`, one counter for the whole machine.
#[cfg(windows)]
fn monotonic_ns() -> u64 {
    common::windows::monotonic_ns()
}

/// The next line from the parent, or `None` once it closed stdin.
fn parent_line() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
    }
}

// ---------------------------------------------------------------------------------------
// The hostile client.

/// Connects with a `Client` and calls from four tasks, while this thread writes random
/// values at random times (every 0–2 ms, after 0–200 ms of honest traffic) into the
/// segment's indices, frame headers and waiter words, for `RB_SCRIBBLE_MS` or until the
/// connection breaks. If the server has not dropped the connection by then, it stops
/// calling and forces the issue: a tail far past the ring, and a wake-up for the server
/// ([`ServerWaker`]). (Some scribbles only stall the connection: erasing or garbling its
/// own client's "I sleep on my doorbell" announcement means the server's reply rings
/// nobody, and the two sides then wait for each other. No side can tell a lost wake-up
/// from a quiet peer; only this connection is affected.) Reports `hostile
/// server_dropped=<bool> ...`, then stays alive (holding its end) until killed, so that what
/// the server released, it released because of what it saw, not because the process died.
///
/// The scribbles go through a mapping of its own (see `Scribbler`) while this process's
/// own connection writes to the same pages through its mapping: the same situation as two
/// processes writing one segment, which is what ringbell is built to survive (it reads the
/// shared bytes only through atomics and raw copies, never references). On Windows they go
/// through the connection's own view, and its calls are made differently (see
/// [`OwnCalls`]).
fn role_hostile(runtime: &Runtime) -> Result<(), String> {
    let path = param("RB_SOCKET");
    let seed: u64 = number_param("RB_SEED");
    let scribble_for = Duration::from_millis(number_param("RB_SCRIBBLE_MS"));
    let max_message: usize = number_param("RB_MAX_MESSAGE");
    let mut rng = XorShift64::new(seed);
    // A connection for calls, reached before a client drives it (no public API hands out
    // a client's connection).
    let conn = ringbell::test_api::connect_for_calls(&path, ClientConfig::default())
        .context("connecting")?;
    let segment = Scribbler::find(&conn)?;
    let capacity = conn.ring_capacity();
    // What wakes the server in the last step, taken while the connection is still ours.
    let waker = ServerWaker::new(&conn)?;
    let _entered = runtime.enter();
    let outcome = Arc::new(HostileOutcome::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut own_calls = OwnCalls::start(conn, seed, &outcome, &stop);
    report("connected");

    let server_dropped = || {
        segment
            .header_word::<AtomicU32>(SERVER_CLOSED_FLAG)
            .load(Ordering::Acquire)
            != 0
    };
    thread::sleep(Duration::from_micros(rng.next_u64() % 200_000));
    let deadline = Instant::now() + scribble_for;
    let mut scribbles = 0u32;
    let mut targets = BTreeSet::new();
    while Instant::now() < deadline && !outcome.is_broken() && !server_dropped() {
        targets.insert(scribble(&segment, &mut rng, capacity, max_message));
        scribbles += 1;
        thread::sleep(Duration::from_micros(rng.next_u64() % 2_000));
    }
    if server_dropped() {
        outcome.broke("the server dropped the connection".into());
    }

    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        let _ = tokio::time::timeout(PATIENCE, async {
            while own_calls.callers.join_next().await.is_some() {}
        })
        .await;
    });
    let forced = Instant::now();
    let mut forcing = false;
    while !server_dropped() && forced.elapsed() < RELEASE_BOUND {
        // The server may already be on its way to dropping the connection.
        if forced.elapsed() > Duration::from_millis(100) {
            forcing = true;
            segment.store_word(control_block(CLIENT_TO_SERVER) + TAIL, 1 << 40);
            waker.wake();
        }
        thread::sleep(Duration::from_millis(20));
    }
    let first = outcome.first.lock().unwrap().clone();
    report(&format!(
        "hostile server_dropped={} forced={forcing} scribbles={scribbles} answered={} \
         altered={} stalled={} odd={} targets={} first={}",
        server_dropped(),
        outcome.answered.load(Ordering::Relaxed),
        outcome.altered.load(Ordering::Relaxed),
        outcome.stalled.load(Ordering::Relaxed),
        outcome.odd.load(Ordering::Relaxed),
        targets.into_iter().collect::<Vec<_>>().join(","),
        first.unwrap_or_else(|| "nothing broke before the last step".into()),
    ));
    let _keep = (own_calls, waker, segment);
    sleep_until_killed()
}

/// The hostile client's own calls, made beside its scribbles until `stop`, what they see
/// counted in a [`HostileOutcome`]. Holds what must outlive every scribble.
struct OwnCalls {
    callers: JoinSet<()>,
    /// On Unix the client (the scribbles go through a mapping of their own there).
    #[cfg(unix)]
    _client: Client,
    /// On Windows the connection, which its task puts here when it ends: the scribbles go
    /// through the connection's own view (see `common::Scribbler::find`).
    #[cfg(windows)]
    _connection: Arc<Mutex<Option<AsyncConnection>>>,
}

impl OwnCalls {
    /// On Unix: a `Client` driving `conn`, called from four tasks.
    #[cfg(unix)]
    fn start(
        conn: Connection,
        seed: u64,
        outcome: &Arc<HostileOutcome>,
        stop: &Arc<AtomicBool>,
    ) -> OwnCalls {
        let client = ringbell::test_api::client_from(conn, 16).expect("starting the client driver");
        let mut callers = JoinSet::new();
        for task in 0..4u64 {
            let (client, outcome, stop) = (client.clone(), outcome.clone(), stop.clone());
            let mut rng = XorShift64::new(seed ^ ((task + 1) << 40));
            callers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = honest_message(&mut rng, 8 << 10);
                    let call = match client.call_timeout(&request, Duration::from_secs(2)).await {
                        Ok(reply) => OwnCall::Replied(reply),
                        Err(Error::Timeout) => OwnCall::Stalled,
                        Err(error) => OwnCall::failed(error),
                    };
                    if !outcome.count(&request, call) {
                        return;
                    }
                }
            });
        }
        OwnCalls {
            callers,
            _client: client,
        }
    }

    /// On Windows: one task calling through `conn` as an `AsyncConnection`, one call at a
    /// time, each step given two seconds, as the `Client`'s calls are on Unix. Not a
    /// `Client`: its group drops the connection, and so unmaps the view the scribbles go
    /// through, as soon as it sees the corruption; and no handle to the section is left
    /// to map a view of our own (the library closes it once mapped). A reply after a
    /// stall may answer the previous call: it counts as altered, which is only printed.
    #[cfg(windows)]
    fn start(
        conn: Connection,
        seed: u64,
        outcome: &Arc<HostileOutcome>,
        stop: &Arc<AtomicBool>,
    ) -> OwnCalls {
        let connection = Arc::new(Mutex::new(None));
        let (keep, outcome, stop) = (connection.clone(), outcome.clone(), stop.clone());
        let mut rng = XorShift64::new(seed ^ (1 << 40));
        let mut callers = JoinSet::new();
        callers.spawn(async move {
            let mut conn = AsyncConnection::from_connection(conn).expect("an async connection");
            let patience = Duration::from_secs(2);
            let mut reply = Vec::new();
            let mut correlation = 0;
            while !stop.load(Ordering::Relaxed) {
                correlation += 1;
                let request = honest_message(&mut rng, 8 << 10);
                let sent = send_request_async(&mut conn, correlation, &request);
                let result = match tokio::time::timeout(patience, sent).await {
                    Ok(Ok(())) => tokio::time::timeout(patience, conn.recv(&mut reply)).await,
                    Ok(Err(error)) => Ok(Err(error)),
                    Err(elapsed) => Err(elapsed),
                };
                let call = match result {
                    Ok(Ok(_)) => match reply_of(&reply) {
                        Some(Ok(body)) => OwnCall::Replied(body.to_vec()),
                        Some(Err(_)) | None => OwnCall::Odd,
                    },
                    Err(_) => OwnCall::Stalled,
                    Ok(Err(error)) => OwnCall::failed(error),
                };
                if !outcome.count(&request, call) {
                    break;
                }
            }
            *keep.lock().unwrap() = Some(conn);
        });
        OwnCalls {
            callers,
            _connection: connection,
        }
    }
}

/// How the hostile client wakes its server when it forces the end.
///
/// On Unix: a byte on a second handle of the control socket, which the server's poller
/// watches.
#[cfg(unix)]
#[derive(Debug)]
struct ServerWaker {
    control: OwnedFd,
}

#[cfg(unix)]
impl ServerWaker {
    fn new(conn: &Connection) -> Result<ServerWaker, String> {
        let control = conn
            .control_fd()
            .try_clone_to_owned()
            .context("duplicating the control socket")?;
        Ok(ServerWaker { control })
    }

    fn wake(&self) {
        let _ = rustix::net::send(
            &self.control,
            b"!",
            rustix::net::SendFlags::DONTWAIT | common::SEND_NO_SIGNAL,
        );
    }
}

/// On Windows: bytes on the control pipe after the handshake wake no server (its poller
/// watches a stream through its peer's process), so the client sets the server's doorbell,
/// as a peer may whenever it likes: the ringer the server pushed into this process, found
/// in the system handle table as a handle with a ringer's rights (`EVENT_MODIFY_STATE` and
/// `EVENT_QUERY_STATE`, nothing more). Any other handle with those rights (a ringer of its own doorbell that a client
/// offers) is set too: only a spurious wake-up of this client.
#[cfg(windows)]
#[derive(Debug)]
struct ServerWaker {
    ringers: Vec<u64>,
}

#[cfg(windows)]
impl ServerWaker {
    fn new(_conn: &Connection) -> Result<ServerWaker, String> {
        let ringers = common::windows::own_handles_with_access(common::windows::RINGER_RIGHTS);
        if ringers.is_empty() {
            return Err("no handle with a ringer's rights in this process".into());
        }
        Ok(ServerWaker { ringers })
    }

    fn wake(&self) {
        for &ringer in &self.ringers {
            common::windows::set_event(ringer);
        }
    }
}

/// What the hostile client's own calls saw.
#[derive(Debug, Default)]
struct HostileOutcome {
    answered: AtomicU64,
    altered: AtomicU64,
    stalled: AtomicU64,
    odd: AtomicU64,
    first: Mutex<Option<String>>,
}

/// How one of the hostile client's own calls ended, on either OS.
enum OwnCall {
    /// A reply came: its body.
    Replied(Vec<u8>),
    /// No reply within the call's patience.
    Stalled,
    /// The connection broke under the call (`PeerDied`, `Corrupted`).
    Broke(Error),
    /// Anything else: a scribbled reply can decode as a handler's error, or as no reply at
    /// all; not ours to judge.
    Odd,
}

impl OwnCall {
    /// A call that failed with `error`.
    fn failed(error: Error) -> OwnCall {
        match error {
            Error::PeerDied | Error::Corrupted { .. } => OwnCall::Broke(error),
            _ => OwnCall::Odd,
        }
    }
}

impl HostileOutcome {
    /// Counts how a call of `request` ended; `false` once the connection broke, when the
    /// caller should stop.
    fn count(&self, request: &[u8], call: OwnCall) -> bool {
        let counter = match call {
            OwnCall::Replied(reply) => {
                if reply != request {
                    self.altered.fetch_add(1, Ordering::Relaxed);
                }
                &self.answered
            }
            OwnCall::Stalled => &self.stalled,
            OwnCall::Broke(error) => {
                self.broke(format!("the client got {error:?}"));
                return false;
            }
            OwnCall::Odd => &self.odd,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn broke(&self, how: String) {
        self.first.lock().unwrap().get_or_insert(how);
    }

    fn is_broken(&self) -> bool {
        self.first.lock().unwrap().is_some()
    }
}

/// Writes one random value somewhere that matters; returns what it hit.
///
/// Most writes aim at what the server reads (the client → server ring's tail and frames,
/// the server → client ring's head, the server's wait cells); some at what the client reads
/// (which breaks the connection from the client's side).
fn scribble(
    segment: &Scribbler,
    rng: &mut XorShift64,
    capacity: usize,
    max: usize,
) -> &'static str {
    let word = |offset: usize| {
        segment
            .header_word::<AtomicU64>(offset)
            .load(Ordering::Acquire)
    };
    match rng.next_u64() % 10 {
        0 | 1 => {
            let at = control_block(CLIENT_TO_SERVER) + TAIL;
            segment.store_word(at, index_value(rng, word(at), capacity));
            "c2s-tail"
        }
        2 => {
            let at = control_block(SERVER_TO_CLIENT) + HEAD;
            segment.store_word(at, index_value(rng, word(at), capacity));
            "s2c-head"
        }
        3 => {
            let at = if rng.next_u64() % 2 == 0 {
                control_block(CLIENT_TO_SERVER) + HEAD
            } else {
                control_block(SERVER_TO_CLIENT) + TAIL
            };
            segment.store_word(at, index_value(rng, word(at), capacity));
            "client-read-index"
        }
        4 | 5 => {
            let ring = (rng.next_u64() % 2) as usize;
            let cell = if rng.next_u64() % 2 == 0 {
                READABLE_CELL
            } else {
                WRITABLE_CELL
            };
            // `seq` (the futex word) or `sleeping` (the announcement).
            let at = control_block(ring) + cell + 4 * (rng.next_u64() % 2) as usize;
            let value = match rng.next_u64() % 6 {
                0 => 0,
                1 => 1,
                2 => 2,
                3 => 3,
                4 => u32::MAX,
                _ => rng.next_u64() as u32,
            };
            segment
                .header_word::<AtomicU32>(at)
                .store(value, Ordering::SeqCst);
            "waiter-word"
        }
        6..=8 => {
            forge_frame(segment, rng, CLIENT_TO_SERVER, capacity, max);
            "c2s-frame"
        }
        _ => {
            forge_frame(segment, rng, SERVER_TO_CLIENT, capacity, max);
            "s2c-frame"
        }
    }
}

/// A new value for a ring index now at `current`.
fn index_value(rng: &mut XorShift64, current: u64, capacity: usize) -> u64 {
    let capacity = capacity as u64;
    match rng.next_u64() % 7 {
        0 => rng.next_u64(),
        1 => current.wrapping_add(8 * (1 + rng.next_u64() % 64)),
        2 => current.wrapping_add(capacity + 8),
        3 => current.wrapping_sub(8 * (1 + rng.next_u64() % 8)),
        4 => 0,
        5 => u64::MAX,
        _ => 1 << 40,
    }
}

/// Writes a forged frame header (and, for a first chunk, its total length) into ring
/// `ring`: where the reader looks next, where the writer writes next, or anywhere; and
/// sometimes publishes it by moving the tail past it.
fn forge_frame(
    segment: &Scribbler,
    rng: &mut XorShift64,
    ring: usize,
    capacity: usize,
    max: usize,
) {
    let load = |offset: usize| {
        segment
            .header_word::<AtomicU64>(offset)
            .load(Ordering::Acquire)
    };
    let tail_at = control_block(ring) + TAIL;
    let anywhere = match rng.next_u64() % 3 {
        0 => load(control_block(ring) + HEAD) as usize,
        1 => load(tail_at) as usize,
        _ => rng.next_u64() as usize,
    };
    let position = (anywhere % capacity) & !7;
    let position = position.min(capacity - 24);
    let full_chunk = (capacity / 4 - 16) as u32;
    let (len, kind) = match rng.next_u64() % 8 {
        0 => (rng.next_u64() as u32, rng.next_u64() as u8),
        1 => (u32::MAX, 1),
        2 => (capacity as u32, 1),
        3 => (full_chunk + 8, 1),
        4 | 5 => (full_chunk, 2),
        6 => (
            rng.next_u64() as u32 % capacity as u32,
            3 + (rng.next_u64() % 3) as u8,
        ),
        _ => (rng.next_u64() as u32 % capacity as u32, 0xff),
    };
    let mut frame = [0u8; 24];
    frame[0..4].copy_from_slice(&len.to_le_bytes());
    frame[4] = kind;
    if rng.next_u64() % 8 == 0 {
        frame[5] = 1 + rng.next_u64() as u8 % 255;
    }
    frame[8..16].copy_from_slice(&rng.next_u64().to_le_bytes());
    // A first chunk's total: beyond any maximum, 4 GiB, just past the maximum, or the
    // maximum itself (legal: the server may hold that much for this connection).
    let total: u64 = match rng.next_u64() % 4 {
        0 => rng.next_u64(),
        1 => 1 << 32,
        2 => max as u64 + 1,
        _ => max as u64,
    };
    frame[16..24].copy_from_slice(&total.to_le_bytes());
    segment.write_bytes(DATA_OFFSET + ring * capacity + position, &frame);
    if rng.next_u64() % 2 == 0 {
        let tail = load(tail_at);
        segment.store_word(tail_at, tail.wrapping_add(24 + 8 * (rng.next_u64() % 4)));
    }
}

// =======================================================================================
// The parent's side.

/// Kills and hostile connections per run.
#[derive(Debug, Clone, Copy)]
struct Form {
    kills: usize,
    hostiles: usize,
}

impl Form {
    /// CI's reduced form, or the full one with `RINGBELL_FULL_FAULTS=1`; printed.
    ///
    /// Under Wine CI's form is halved again: 20 kills (5 in each phase) and 20 hostile
    /// connections, beside as many honest clients as on Linux, so that the suite takes
    /// about half a minute on two cores (a wake-up goes through `wineserver` there, and
    /// every child is a Wine process; Linux's 40 and 40 took 47 s in one run).
    fn from_env(test: &str) -> Form {
        let full = std::env::var(FULL_ENV).is_ok_and(|value| value == "1");
        let reduced = if cfg!(windows) { 20 } else { 40 };
        let form = Form {
            kills: if full { 200 } else { reduced },
            hostiles: if full { 200 } else { reduced },
        };
        println!(
            "{test}: {} kills, {} hostile connections",
            form.kills, form.hostiles
        );
        form
    }
}

/// The run's seed: `RINGBELL_FAULTS_SEED`, or the clock; printed either way.
fn seed(test: &str) -> u64 {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(monotonic_ns);
    println!("{test}: seed {seed} (replay with {SEED_ENV}={seed})");
    seed
}

/// What a live server leaves in its socket directory: its socket file. On Windows the
/// address is a pipe name, and the directory stays empty.
#[cfg(unix)]
const SOCKET_FILE: &[&str] = &["server.sock"];
/// See above.
#[cfg(windows)]
const SOCKET_FILE: &[&str] = &[];

/// A private directory for the server's socket, so that any file left behind is seen.
#[derive(Debug)]
struct SocketDir {
    path: PathBuf,
}

impl SocketDir {
    fn new(test: &str) -> SocketDir {
        let path =
            std::env::temp_dir().join(format!("ringbell-faults-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).expect("creating the socket directory");
        SocketDir { path }
    }

    fn socket(&self) -> PathBuf {
        self.path.join("server.sock")
    }

    fn param(&self) -> String {
        self.socket().to_str().expect("UTF-8 temp path").to_owned()
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.path)
            .expect("listing the socket directory")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Panics unless the directory holds exactly `expected`.
    fn assert_holds(&self, expected: &[&str], when: &str) {
        let entries = self.entries();
        assert_eq!(
            entries,
            expected,
            "{when}: the socket directory {} holds {entries:?}, expected {expected:?}",
            self.path.display()
        );
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The names in `/dev/shm`: ringbell must never add one.
#[cfg(unix)]
fn shm_entries() -> BTreeSet<String> {
    fs::read_dir("/dev/shm")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// On Windows a segment is an unnamed section: nothing names it, so there is nothing to
/// leave behind and nothing to check.
#[cfg(windows)]
fn shm_entries() -> BTreeSet<String> {
    BTreeSet::new()
}

fn assert_no_new_shm(before: &BTreeSet<String>, when: &str) {
    let new: Vec<String> = shm_entries().difference(before).cloned().collect();
    assert!(new.is_empty(), "{when}: new files in /dev/shm: {new:?}");
}

/// The server child, seen from outside through `/proc/<pid>`.
#[cfg(unix)]
#[derive(Debug, Clone, Copy)]
struct ServerProbe {
    pid: u32,
}

/// The server child, seen from outside through a handle on its process (see "Windows" in
/// the module docs).
#[cfg(windows)]
#[derive(Debug)]
struct ServerProbe {
    process: common::windows::ProcessProbe,
}

/// A server's open fds (`number -> target`) and its mappings of ringbell segments (see
/// `common::is_segment_mapping`).
#[derive(Debug, Clone)]
struct Resources {
    fds: Vec<String>,
    segments: Vec<String>,
}

impl Resources {
    fn same_counts(&self, other: &Resources) -> bool {
        self.fds.len() == other.fds.len() && self.segments.len() == other.segments.len()
    }

    fn summary(&self) -> String {
        format!(
            "{} {FDS}, {} {SEGMENT_MAPPINGS}",
            self.fds.len(),
            self.segments.len()
        )
    }
}

/// What [`Resources`] counts, in messages.
#[cfg(unix)]
const FDS: &str = "fds";
#[cfg(unix)]
const SEGMENT_MAPPINGS: &str = "segment mappings";
#[cfg(windows)]
const FDS: &str = "handles";
#[cfg(windows)]
const SEGMENT_MAPPINGS: &str = "segment views";

/// The names of the memory figures that [`ServerProbe`] reads, as printed.
#[cfg(unix)]
const PEAK_RESIDENT: &str = "VmHWM";
#[cfg(unix)]
const PEAK_ADDRESS_SPACE: &str = "VmPeak";
#[cfg(windows)]
const PEAK_RESIDENT: &str = "PeakWorkingSetSize";
#[cfg(windows)]
const PEAK_ADDRESS_SPACE: &str = "PeakVirtualSize";

#[cfg(unix)]
impl ServerProbe {
    fn new(pid: u32) -> ServerProbe {
        ServerProbe { pid }
    }

    /// Resident memory (`VmRSS`), in bytes.
    fn resident(&self) -> u64 {
        common::status_kib(self.pid, "VmRSS") << 10
    }

    /// Peak resident memory (`VmHWM`), in bytes.
    fn peak_resident(&self) -> u64 {
        common::status_kib(self.pid, "VmHWM") << 10
    }

    /// Peak address space (`VmPeak`), in bytes.
    fn peak_address_space(&self) -> u64 {
        common::status_kib(self.pid, "VmPeak") << 10
    }

    fn resources(&self) -> Resources {
        let fd_dir = format!("/proc/{}/fd", self.pid);
        let mut fds: Vec<String> = fs::read_dir(&fd_dir)
            .unwrap_or_else(|error| panic!("listing {fd_dir}: {error}"))
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let target = fs::read_link(entry.path()).ok()?;
                Some(format!(
                    "{} -> {}",
                    entry.file_name().to_string_lossy(),
                    target.display()
                ))
            })
            .collect();
        fds.sort();
        let segments = fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .unwrap_or_default()
            .lines()
            .filter(|line| common::is_segment_mapping(line))
            .map(str::to_owned)
            .collect();
        Resources { fds, segments }
    }
}

/// On Windows: its handles, from the system handle table, and its views of ringbell
/// segments; its memory from its `VM_COUNTERS`.
#[cfg(windows)]
impl ServerProbe {
    fn new(pid: u32) -> ServerProbe {
        ServerProbe {
            process: common::windows::ProcessProbe::open(pid),
        }
    }

    /// Resident memory (`WorkingSetSize`), in bytes.
    fn resident(&self) -> u64 {
        self.process.memory().working_set
    }

    /// Peak resident memory (`PeakWorkingSetSize`), in bytes.
    fn peak_resident(&self) -> u64 {
        self.process.memory().peak_working_set
    }

    /// Peak address space (`PeakVirtualSize`), in bytes. Under Wine 8 it is about 2 GiB
    /// from the start and grew by only 64 MiB when a process allocated and touched 200 MiB:
    /// Wine reserves address space ahead and allocates inside it, which does not show, so
    /// the check is weaker there than on Linux (on Windows every reservation counts). Not
    /// `PeakPagefileUsage`, which Wine 8 does not keep as a peak (see
    /// `common::windows::MemoryCounters`).
    fn peak_address_space(&self) -> u64 {
        self.process.memory().peak_virtual_size
    }

    fn resources(&self) -> Resources {
        let fds = self
            .process
            .handles()
            .into_iter()
            .map(|value| format!("handle {value:#x}"))
            .collect();
        let segments = self
            .process
            .segment_views()
            .into_iter()
            .map(|(start, size)| format!("view {start:#x} +{size:#x}"))
            .collect();
        Resources { fds, segments }
    }
}

impl ServerProbe {
    /// A reading that stays the same over 200 ms: the baseline with only steady clients.
    fn steady_resources(&self) -> Resources {
        let mut last = self.resources();
        let give_up = Instant::now() + RELEASE_BOUND;
        loop {
            thread::sleep(Duration::from_millis(200));
            let now = self.resources();
            if now.fds == last.fds && now.segments == last.segments {
                return now;
            }
            assert!(
                Instant::now() < give_up,
                "the server's {FDS} never settled: {}",
                now.summary()
            );
            last = now;
        }
    }

    /// Waits until the server holds as many fds and segment mappings as in `baseline`;
    /// returns how long that took. Panics, with what differs, after [`RELEASE_BOUND`].
    fn wait_for_release(&self, baseline: &Resources, what: &str) -> Duration {
        let started = Instant::now();
        loop {
            let now = self.resources();
            if now.same_counts(baseline) {
                return started.elapsed();
            }
            if started.elapsed() > RELEASE_BOUND {
                panic!(
                    "{what}: after {RELEASE_BOUND:?} the server holds {}, against {} with only \
                     the steady clients connected.\n{FDS}:\n{}{SEGMENT_MAPPINGS}:\n{}",
                    now.summary(),
                    baseline.summary(),
                    common::difference(&baseline.fds, &now.fds),
                    common::difference(&baseline.segments, &now.segments),
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// How a test's server is configured.
#[derive(Debug, Clone, Copy)]
struct ServerSpec {
    max_message: usize,
    concurrent: usize,
}

/// Starts the server child at `dir`'s socket and waits until it listens.
fn spawn_server(dir: &SocketDir, spec: ServerSpec) -> (ChildProcess, ServerProbe) {
    let mut server = ChildProcess::spawn(
        "server",
        &[
            ("RB_SOCKET", dir.param()),
            ("RB_RING", RING.to_string()),
            ("RB_MAX_MESSAGE", spec.max_message.to_string()),
            ("RB_CONCURRENT", spec.concurrent.to_string()),
        ],
    );
    let line = server.next_line();
    let pid = line
        .strip_prefix("listening ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("the server reported {line:?}: {}", server.diagnostics()));
    (server, ServerProbe::new(pid))
}

/// Stops the server gracefully and checks that it exited cleanly and removed its socket.
fn stop_server(mut server: ChildProcess, dir: &SocketDir) {
    server.send_line("stop");
    server.expect_line("stopped");
    server.assert_success();
    dir.assert_holds(&[], "after the server stopped");
}

/// How the honest clients of a test call.
#[derive(Debug, Clone, Copy)]
struct HonestLoad {
    processes: usize,
    connections: usize,
    tasks: usize,
    max_len: usize,
    pause_ms: u64,
}

/// Starts the honest client processes and waits until every connection has been served.
fn spawn_honest(dir: &SocketDir, load: HonestLoad, seed: u64) -> Vec<ChildProcess> {
    let mut clients: Vec<ChildProcess> = (0..load.processes)
        .map(|process| {
            ChildProcess::spawn(
                "honest",
                &[
                    ("RB_SOCKET", dir.param()),
                    ("RB_CONNECTIONS", load.connections.to_string()),
                    ("RB_TASKS", load.tasks.to_string()),
                    ("RB_MAX_LEN", load.max_len.to_string()),
                    ("RB_PAUSE_MS", load.pause_ms.to_string()),
                    ("RB_SEED", (seed ^ process as u64).to_string()),
                ],
            )
        })
        .collect();
    for client in &mut clients {
        client.expect_line("connected");
    }
    clients
}

/// Stops the honest clients; panics unless every call of every one succeeded. Returns the
/// number of calls.
fn stop_honest(clients: Vec<ChildProcess>) -> u64 {
    let mut calls = 0;
    for mut client in clients {
        assert!(
            client.is_running(),
            "an honest client died: {}",
            client.diagnostics()
        );
        client.send_line("stop");
        let line = client.next_line();
        let mut fields = line.splitn(4, ' ');
        let (Some("done"), Some(made), Some(errors), Some(first)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            panic!(
                "an honest client reported {line:?}: {}",
                client.diagnostics()
            );
        };
        assert_eq!(
            errors,
            "0",
            "an honest client saw {errors} errors in {made} good calls; the first: {first}; {}",
            client.diagnostics()
        );
        client.assert_success();
        calls += made.parse::<u64>().expect("a call count");
    }
    calls
}

/// Kills `victim` (SIGKILL) and says whether the kill ended it, not an error of its own.
#[cfg(unix)]
fn kill_in_phase(victim: &mut ChildProcess) -> bool {
    victim.kill().signal() == Some(9)
}

/// See above: `TerminateProcess` with its own exit code, since a Windows exit status has
/// no signal (a child's own failure exits with 1).
#[cfg(windows)]
fn kill_in_phase(victim: &mut ChildProcess) -> bool {
    common::windows::terminate(victim.pid());
    victim.wait().code() == Some(common::windows::TERMINATED)
}

fn assert_alive(server: &mut ChildProcess, when: &str) {
    if !server.is_running() {
        panic!("{when}: the server died: {}", server.diagnostics());
    }
}

/// Milliseconds, for summaries.
fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

// =======================================================================================
// Crash matrix.

/// Where a victim is when it is killed.
const PHASES: [&str; 4] = ["connecting", "mid_frame", "server_writing", "blocked"];
/// The ways a victim in the "blocked" phase waits.
const BLOCKED_WAYS: usize = 4;

/// SIGKILLs client processes at random points, cycling through [`PHASES`], while honest
/// clients (4 processes × 3 connections × 2 tasks) make checked calls, some of them
/// chunked. After every kill the server must give back the dead connection's fds and
/// segment mappings, with nothing new in `/dev/shm` nor in the socket's directory; at the
/// end, every honest call must have succeeded.
#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn crash_matrix() {
    let form = Form::from_env("crash_matrix");
    let limit = Duration::from_secs(90) + Duration::from_secs(form.kills as u64);
    let _test = exclusive_test("crash_matrix", limit);
    let started = Instant::now();
    let seed = seed("crash_matrix");
    let mut rng = XorShift64::new(seed);
    let dir = SocketDir::new("crash_matrix");
    let shm_before = shm_entries();
    let spec = ServerSpec {
        max_message: 1 << 20,
        concurrent: 16,
    };
    let (mut server, probe) = spawn_server(&dir, spec);
    let load = HonestLoad {
        processes: 4,
        connections: 3,
        tasks: 2,
        max_len: 3 * RING,
        pause_ms: 2,
    };
    let honest = spawn_honest(&dir, load, seed);
    let baseline = probe.steady_resources();

    let mut kills = [0usize; PHASES.len()];
    let mut release_times = Vec::with_capacity(form.kills);
    for kill in 0..form.kills {
        let phase = kill % PHASES.len();
        let victim_seed = rng.next_u64();
        let mut victim = ChildProcess::spawn(
            "victim",
            &[
                ("RB_SOCKET", dir.param()),
                ("RB_PHASE", PHASES[phase].into()),
                ("RB_SEED", victim_seed.to_string()),
                ("RB_WAY", (kill / PHASES.len() % BLOCKED_WAYS).to_string()),
            ],
        );
        victim.expect_line(match PHASES[phase] {
            "connecting" => "connecting",
            "mid_frame" => "streaming",
            "server_writing" => "server_blocked",
            _ => "blocking",
        });
        let delay_us = match PHASES[phase] {
            "connecting" => rng.next_u64() % 20_000,
            "server_writing" => rng.next_u64() % 10_000,
            _ => rng.next_u64() % 30_000,
        };
        thread::sleep(Duration::from_micros(delay_us));
        let what = format!(
            "kill {kill} ({}, victim seed {victim_seed}, after {delay_us} µs)",
            PHASES[phase]
        );
        // Killed in its phase, not ended by an error of its own before.
        if !kill_in_phase(&mut victim) {
            panic!(
                "{what}: the victim was not killed: {}",
                victim.diagnostics()
            );
        }
        drop(victim);
        kills[phase] += 1;
        assert_alive(&mut server, &what);
        release_times.push(probe.wait_for_release(&baseline, &what));
        assert_no_new_shm(&shm_before, &what);
        dir.assert_holds(SOCKET_FILE, &what);
    }

    let calls = stop_honest(honest);
    let hwm = probe.peak_resident() >> 10;
    stop_server(server, &dir);
    assert_no_new_shm(&shm_before, "at the end");

    release_times.sort();
    let summary: Vec<String> = PHASES
        .iter()
        .zip(kills)
        .map(|(phase, count)| format!("{phase} {count}"))
        .collect();
    println!(
        "crash_matrix: {} kills ({}); baseline with {} honest connections: {}; \
         release after a kill: median {}, max {}; {calls} honest calls, 0 errors; \
         server {PEAK_RESIDENT} {hwm} KiB; {:.1} s",
        form.kills,
        summary.join(", "),
        load.processes * load.connections,
        baseline.summary(),
        ms(release_times[release_times.len() / 2]),
        ms(*release_times.last().unwrap()),
        started.elapsed().as_secs_f64(),
    );
}

// =======================================================================================
// Server crash.

/// Handlers per connection on the server-crash server: two requests that are never
/// answered take them all, so that the server stops reading and the client's next sends
/// fill the ring.
const SERVER_CRASH_CONCURRENT: usize = 2;

/// How the clients of [`server_crash`] wait when the server dies: the blocking API in
/// `recv` (adaptive, futex only, with a timeout) and in `send` on a full ring, the async
/// API likewise, one `call` and twenty.
const BLOCKED_VARIANTS: [&str; 8] = [
    "recv_adaptive",
    "recv_block",
    "recv_timeout",
    "send_full_block",
    "async_recv",
    "async_send_full",
    "call",
    "calls_many",
];

/// Eight client processes block in different waits; the server is SIGKILLed. Each must
/// get `PeerDied` (the time it took is printed, not asserted; a client still blocked 10 s
/// after the kill fails). The stale socket file stays; a new server binds the same path,
/// and every client reconnects with the README's retry loop and is served.
#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn server_crash() {
    let _test = exclusive_test("server_crash", Duration::from_secs(120));
    let dir = SocketDir::new("server_crash");
    let spec = ServerSpec {
        max_message: 1 << 20,
        concurrent: SERVER_CRASH_CONCURRENT,
    };
    let (mut server, _) = spawn_server(&dir, spec);
    let mut clients: Vec<ChildProcess> = BLOCKED_VARIANTS
        .iter()
        .map(|variant| {
            ChildProcess::spawn(
                "blocked",
                &[
                    ("RB_SOCKET", dir.param()),
                    ("RB_VARIANT", (*variant).into()),
                ],
            )
        })
        .collect();
    for client in &mut clients {
        client.expect_line("blocked");
    }
    // Most are asleep by now; a client that is not must notice the death all the same.
    thread::sleep(Duration::from_millis(200));
    let killed_at = monotonic_ns();
    server.kill();
    for client in &mut clients {
        client.send_line(&format!("killed {killed_at}"));
    }
    let mut latencies = Vec::new();
    for (variant, client) in BLOCKED_VARIANTS.iter().zip(&mut clients) {
        let line = client.next_line();
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["died", "PeerDied", micros] => {
                latencies.push((*variant, micros.parse::<u64>().expect("microseconds")));
            }
            _ => panic!(
                "{variant}: expected PeerDied, the client reported {line:?}: {}",
                client.diagnostics()
            ),
        }
    }
    // The killed server could not remove its socket file; the new one replaces it. (On
    // Windows its pipe name went with it.)
    dir.assert_holds(SOCKET_FILE, "after the kill");
    thread::sleep(Duration::from_millis(100));
    let (server, _) = spawn_server(&dir, spec);
    let mut attempts = Vec::new();
    for (variant, client) in BLOCKED_VARIANTS.iter().zip(&mut clients) {
        let line = client.next_line();
        let Some(count) = line.strip_prefix("reconnected ") else {
            panic!("{variant}: reported {line:?}: {}", client.diagnostics());
        };
        attempts.push(format!("{variant} {count}"));
        client.assert_success();
    }
    stop_server(server, &dir);
    let figures: Vec<String> = latencies
        .iter()
        .map(|(variant, micros)| format!("{variant} {:.1} ms", *micros as f64 / 1e3))
        .collect();
    println!(
        "server_crash: PeerDied after the kill: {}; reconnect attempts: {}",
        figures.join(", "),
        attempts.join(", ")
    );
}

// =======================================================================================
// Hostile peer.

/// The hostile server's largest message: small enough that the memory bound below is tight.
const HOSTILE_MAX_MESSAGE: usize = 1 << 20;
/// Handlers per connection on the hostile test's server.
const HOSTILE_CONCURRENT: usize = 8;
/// How long each hostile client scribbles before it forces the end.
const SCRIBBLE_MS: u64 = 1_500;
/// What the server's resident memory may exceed its idle footprint by, besides the
/// segments and messages counted in [`hostile_peer_with_honest_clients`]: allocator
/// slack, tokio's tasks and buffers, thread stacks touched by handshakes.
const RSS_SLACK: u64 = 32 << 20;
/// What the server's address space may grow by while the hostile clients run: the malloc
/// arenas new threads may create (glibc allows 8 per core, each reserving 64 MiB), and
/// 256 MiB for new threads' stacks. On two cores that is 1.25 GiB. A reservation sized by
/// a hostile length field (4 GiB, say), which resident memory would not show until
/// touched, is beyond it.
fn address_space_slack() -> u64 {
    let cores = thread::available_parallelism().map_or(2, |cores| cores.get()) as u64;
    cores * 8 * (64 << 20) + (256 << 20)
}

/// 100 honest connections (5 processes × 20) make checked calls while hostile clients, one
/// after another, scribble random values into their segments at random times. The honest
/// calls all succeed; each hostile connection is dropped by the server while its process
/// is still alive (all its fds and mappings released); the server never dies (a panic
/// aborts it), serves a fresh client at the end, and stays within a memory bound derived
/// from its configuration.
#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "reads /proc or remaps a segment found there: Linux only so far (common::LINUX_ONLY)"
)]
fn hostile_peer_with_honest_clients() {
    let form = Form::from_env("hostile_peer_with_honest_clients");
    let limit = Duration::from_secs(90) + Duration::from_secs(4 * form.hostiles as u64);
    let _test = exclusive_test("hostile_peer_with_honest_clients", limit);
    let started = Instant::now();
    let seed = seed("hostile_peer_with_honest_clients");
    let mut rng = XorShift64::new(seed);
    let dir = SocketDir::new("hostile_peer");
    let shm_before = shm_entries();
    let spec = ServerSpec {
        max_message: HOSTILE_MAX_MESSAGE,
        concurrent: HOSTILE_CONCURRENT,
    };
    let (mut server, probe) = spawn_server(&dir, spec);
    let idle_rss = probe.resident();
    let load = HonestLoad {
        processes: 5,
        connections: 20,
        tasks: 1,
        max_len: 8 << 10,
        pause_ms: 10,
    };
    let honest = spawn_honest(&dir, load, seed);
    let baseline = probe.steady_resources();
    let baseline_peak = probe.peak_address_space();

    let mut forced = 0;
    let mut client_saw_first = 0;
    for round in 0..form.hostiles {
        let hostile_seed = rng.next_u64();
        let what = format!("hostile client {round} (seed {hostile_seed})");
        let mut hostile = ChildProcess::spawn(
            "hostile",
            &[
                ("RB_SOCKET", dir.param()),
                ("RB_SEED", hostile_seed.to_string()),
                ("RB_SCRIBBLE_MS", SCRIBBLE_MS.to_string()),
                ("RB_MAX_MESSAGE", HOSTILE_MAX_MESSAGE.to_string()),
            ],
        );
        hostile.expect_line("connected");
        let line = hostile.next_line();
        let Some(outcome) = line.strip_prefix("hostile ") else {
            panic!("{what}: reported {line:?}: {}", hostile.diagnostics());
        };
        assert_alive(&mut server, &what);
        assert!(
            outcome.starts_with("server_dropped=true"),
            "{what}: the server kept a connection it was shown a tail 2^40 bytes past the \
             ring and woken for: {outcome}"
        );
        if outcome.contains("forced=true") {
            forced += 1;
        }
        if outcome.contains("first=the client got Corrupted") {
            client_saw_first += 1;
        }
        // Still alive and holding its end: what the server releases, it releases because
        // it dropped the connection.
        probe.wait_for_release(&baseline, &what);
        assert!(
            hostile.is_running(),
            "{what}: the hostile client died: {}",
            hostile.diagnostics()
        );
        hostile.kill();
        assert_no_new_shm(&shm_before, &what);
        dir.assert_holds(SOCKET_FILE, &what);
        println!("{what}: {outcome}");
    }

    let calls = stop_honest(honest);
    // A fresh client is served.
    let runtime = Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let client = Client::connect(dir.socket(), ClientConfig::default())
            .await
            .expect("a fresh client connects");
        let request = random_bytes(seed, 3 * RING);
        let reply = client
            .call_timeout(&request, CALL_PATIENCE)
            .await
            .expect("a fresh client is served");
        assert_eq!(reply, request, "the fresh client's echo differs");
    });
    drop(runtime);

    // The memory bound. Resident: the idle server, plus every segment mapped at once (the
    // honest connections, a hostile one and the fresh one), plus the messages in flight
    // (an honest connection has one call out; the server holds its request, its reply and
    // the receive buffer: three copies), plus, for the hostile connection, one message of
    // the maximum size announced by a forged first chunk, and its copies, plus slack.
    // Address space: may grow from the baseline by threads and arenas, never by what a
    // length field claims.
    let hwm = probe.peak_resident();
    let peak = probe.peak_address_space();
    let connections = (load.processes * load.connections + 2) as u64;
    let segment = (DATA_OFFSET + 2 * RING) as u64;
    let in_flight = (load.processes * load.connections * load.tasks * load.max_len * 3) as u64;
    let hostile_messages = 3 * HOSTILE_MAX_MESSAGE as u64;
    let rss_bound = idle_rss + connections * segment + in_flight + hostile_messages + RSS_SLACK;
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64);
    assert!(
        hwm <= rss_bound,
        "the server's peak resident memory {} exceeds the bound {} (idle {} + {connections} \
         segments of {} KiB + {} in flight + {} for the hostile connection + {} slack)",
        mib(hwm),
        mib(rss_bound),
        mib(idle_rss),
        segment >> 10,
        mib(in_flight),
        mib(hostile_messages),
        mib(RSS_SLACK),
    );
    assert!(
        peak <= baseline_peak + address_space_slack(),
        "the server's address space peaked at {}, {} past its {} before the hostile clients \
         (allowed: {} for new threads' arenas and stacks)",
        mib(peak),
        mib(peak - baseline_peak),
        mib(baseline_peak),
        mib(address_space_slack()),
    );
    stop_server(server, &dir);
    assert_no_new_shm(&shm_before, "at the end");
    println!(
        "hostile_peer_with_honest_clients: {} hostile connections, all dropped by the server \
         ({client_saw_first} found corrupt by the client first, {forced} only after the \
         forced last step); {calls} honest calls, 0 errors; \
         baseline {}; server {PEAK_RESIDENT} {} (bound {}, idle {}), {PEAK_ADDRESS_SPACE} {} \
         (baseline {}); {:.1} s",
        form.hostiles,
        baseline.summary(),
        mib(hwm),
        mib(rss_bound),
        mib(idle_rss),
        mib(peak),
        mib(baseline_peak),
        started.elapsed().as_secs_f64(),
    );
}
