//! `ringbell __stress-server`: the stress test's server process.
//!
//! One tokio runtime (a worker thread per CPU) answers every client connection with
//! [`reply_to`]: over ringbell through [`AsyncServer::serve`], or over the baseline (Unix
//! sockets; tokio named pipes on Windows) with the same protocol, a request and its reply
//! matched by a correlation id and each connection's requests handled concurrently up to
//! the same bound.
//!
//! It talks to the parent over its stdio: it prints `listening on <path>` once it accepts
//! clients, then `progress <handled>` ten times a second; to the line `report` on stdin it
//! answers `report <handled>`, counting every request handled so far. It exits when its
//! stdin closes (or, through `--parent-pid`, when the parent dies).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ringbell::tokio::AsyncServer;
use ringbell::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
#[cfg(unix)]
use tokio::net::UnixListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::limits::raise_fd_limit;
use super::protocol::{encode_frame, read_frame, reply_to, write_frames};
use super::Transport;
use crate::error::{CliError, Context};
use crate::serve::announce_listening;

/// How often the server prints its progress line.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How long to back off when accepting fails (out of fds, say), so as not to spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// A fault the server injects on purpose, to show that the stress test catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// Flip a byte of the reply.
    Corrupt,
    /// Answer with a handler error (ringbell) or not at all (the baseline: then the call is lost).
    Fail,
    /// Send the reply twice (the baseline only: ringbell's `serve` cannot).
    Duplicate,
}

/// When to inject a fault: on every `every`-th request, counted over the whole server.
#[derive(Debug, Clone, Copy)]
struct FaultPlan {
    fault: Option<Fault>,
    every: u64,
}

impl FaultPlan {
    /// The fault to inject on the request that is the server's `count`-th (from 0).
    fn for_request(self, count: u64) -> Option<Fault> {
        self.fault.filter(|_| count % self.every == self.every - 1)
    }
}

/// The server's options, passed by `ringbell stress`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Socket path to listen on.
    pub path: PathBuf,
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// Bytes per ring and direction (ringbell only).
    #[arg(long, value_name = "BYTES")]
    pub ring_capacity: usize,
    /// Requests of one connection handled at once.
    #[arg(long, value_name = "C")]
    pub concurrency: usize,
    /// Connections (and handshakes in progress) held at once (ringbell only).
    #[arg(long, value_name = "N")]
    pub max_connections: usize,
    /// Inject this fault (for the tests of the stress test itself).
    #[arg(long, value_enum)]
    pub fault: Option<Fault>,
    /// Inject it on every N-th request.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub fault_every: u64,
}

/// Runs the server until stdin closes.
pub fn run(args: &ServerArgs) -> Result<(), CliError> {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stress-server")
        .build()
        .context("starting the tokio runtime")?;
    let handled = Arc::new(AtomicU64::new(0));
    let faults = FaultPlan {
        fault: args.fault,
        every: args.fault_every,
    };
    if args.transport == Transport::Ringbell && args.fault == Some(Fault::Duplicate) {
        return Err(CliError::new(
            "ringbell's serve sends one reply per request: --fault duplicate is for the baseline only",
        ));
    }
    runtime.block_on(async {
        match args.transport {
            Transport::Ringbell => serve_ringbell(args, handled, faults).await,
            Transport::Uds => serve_baseline(args, handled, faults).await,
        }
    })
}

/// How long the stress server gives each handshake: 30 s, not the library's 2 s. A stress
/// run's clients all connect at once, by design, and the run measures their calls, not
/// how fast a herd of handshakes is let in. On a loaded machine the last of a thousand
/// handshakes can wait its turn longer than 2 s: under Wine on the 2-vCPU VM, with other
/// runs beside it, some did, and the server hung up on them (seen as "the peer hung up
/// sending the ack"). The clients' own connect timeout is longer still.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

async fn serve_ringbell(
    args: &ServerArgs,
    handled: Arc<AtomicU64>,
    faults: FaultPlan,
) -> Result<(), CliError> {
    let config = ServerConfig::default()
        .ring_capacity(args.ring_capacity)
        .concurrent_requests(args.concurrency)
        .max_connections(args.max_connections)
        .handshake_timeout(HANDSHAKE_TIMEOUT);
    let server = AsyncServer::bind(&args.path, config)?;
    talk_to_parent(&args.path, &handled)?;
    server
        .serve(move |request: Vec<u8>| {
            let fault = faults.for_request(handled.fetch_add(1, Ordering::Relaxed));
            async move {
                match fault {
                    None => Ok(reply_to(&request)),
                    Some(Fault::Corrupt) => Ok(corrupted(reply_to(&request))),
                    Some(_) => Err("a failure injected with --fault"),
                }
            }
        })
        .await;
    Ok(())
}

#[cfg(unix)]
async fn serve_baseline(
    args: &ServerArgs,
    handled: Arc<AtomicU64>,
    faults: FaultPlan,
) -> Result<(), CliError> {
    // A socket file left by a killed server of ours; the directory is private.
    let _ = std::fs::remove_file(&args.path);
    let listener = UnixListener::bind(&args.path)
        .context(format_args!("listening on {}", args.path.display()))?;
    talk_to_parent(&args.path, &handled)?;
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_baseline_connection(stream, args.concurrency, handled.clone(), faults));
                }
                Err(error) => {
                    refused += 1;
                    if refused.is_power_of_two() {
                        eprintln!("ringbell __stress-server: accepting a client failed ({refused} so far): {error}");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(_finished) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The baseline on Windows: tokio named pipes under the name the clients derive from the
/// same path (`protocol::baseline_pipe_name`). The server keeps one instance waiting: as
/// soon as a client takes it, the next is made, and the taken one is served (the way
/// tokio's docs serve a named pipe). Clients that find every instance busy retry.
#[cfg(windows)]
async fn serve_baseline(
    args: &ServerArgs,
    handled: Arc<AtomicU64>,
    faults: FaultPlan,
) -> Result<(), CliError> {
    use tokio::net::windows::named_pipe::ServerOptions;
    let name = super::protocol::baseline_pipe_name(&args.path);
    let mut waiting = ServerOptions::new()
        .first_pipe_instance(true)
        .reject_remote_clients(true)
        .create(&name)
        .context(format_args!("making the named pipe {name}"))?;
    talk_to_parent(&args.path, &handled)?;
    let mut connections = JoinSet::new();
    let mut failures: u64 = 0;
    let mut report = |what: &str, error: &std::io::Error| {
        failures += 1;
        if failures.is_power_of_two() {
            eprintln!("ringbell __stress-server: {what} failed ({failures} so far): {error}");
        }
    };
    loop {
        let connected = waiting.connect().await;
        // The next instance before anything else, so that the next client finds one; a
        // failure to make it is retried, never the end of the server.
        let next = loop {
            match ServerOptions::new()
                .reject_remote_clients(true)
                .create(&name)
            {
                Ok(next) => break next,
                Err(error) => {
                    report("making another instance of the pipe", &error);
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        };
        let client = std::mem::replace(&mut waiting, next);
        match connected {
            Ok(()) => {
                connections.spawn(serve_baseline_connection(
                    client,
                    args.concurrency,
                    handled.clone(),
                    faults,
                ));
            }
            Err(error) => {
                report("accepting a client", &error);
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
        // Reap the connections that ended, so the set stays as small as those open.
        while connections.try_join_next().is_some() {}
    }
}

/// Serves one baseline connection like ringbell's `serve` does: requests are read while
/// fewer than `limit` are being handled, each is handled on a task of its own, and the
/// replies go back in whatever order they finish, through one writer that flushes once
/// per batch.
async fn serve_baseline_connection(
    stream: impl AsyncRead + AsyncWrite + Send + 'static,
    limit: usize,
    handled: Arc<AtomicU64>,
    faults: FaultPlan,
) {
    let (read, write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    let (replies, queue) = mpsc::channel::<Vec<u8>>(limit);
    let writer = tokio::spawn(write_frames(write, queue));
    let slots = Arc::new(Semaphore::new(limit));
    let mut handlers = JoinSet::new();
    let mut request = Vec::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        // Past the bound we stop reading: the socket buffer fills and the client waits.
        let id = match read_frame(&mut reader, &mut request).await {
            Ok(Some(id)) => id,
            Ok(None) => break,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::ConnectionReset {
                    eprintln!("ringbell __stress-server: dropping a baseline client: {error}");
                }
                break;
            }
        };
        let request = std::mem::take(&mut request);
        let replies = replies.clone();
        let handled = handled.clone();
        handlers.spawn(async move {
            let fault = faults.for_request(handled.fetch_add(1, Ordering::Relaxed));
            let reply = reply_to(&request);
            let frame = match fault {
                None | Some(Fault::Duplicate) => encode_frame(id, &reply),
                Some(Fault::Corrupt) => encode_frame(id, &corrupted(reply)),
                Some(Fault::Fail) => return,
            };
            if fault == Some(Fault::Duplicate) {
                let _ = replies.send(frame.clone()).await;
            }
            let _ = replies.send(frame).await;
            drop(slot);
        });
        // Reap the finished handlers as we go, so the set stays as small as the bound.
        while handlers.try_join_next().is_some() {}
    }
    // Finish the requests in flight, then let the writer drain and close.
    while handlers.join_next().await.is_some() {}
    drop(replies);
    let _ = writer.await;
}

/// `reply` with its last byte flipped.
fn corrupted(mut reply: Vec<u8>) -> Vec<u8> {
    if let Some(last) = reply.last_mut() {
        *last ^= 0x20;
    }
    reply
}

/// Announces that the server listens, then starts the threads that print its progress and
/// answer the parent's `report` (and end the process when the parent closes our stdin).
fn talk_to_parent(path: &Path, handled: &Arc<AtomicU64>) -> Result<(), CliError> {
    announce_listening(path)?;
    let progress = handled.clone();
    thread::Builder::new()
        .name("stress-progress".into())
        .spawn(move || {
            let mut last = u64::MAX;
            loop {
                let now = progress.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    if writeln!(std::io::stdout(), "progress {now}").is_err() {
                        return;
                    }
                }
                thread::sleep(PROGRESS_INTERVAL);
            }
        })
        .context("starting the progress thread")?;
    let reported = handled.clone();
    thread::Builder::new()
        .name("stress-commands".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line.trim() == "report" {
                    let now = reported.load(Ordering::Relaxed);
                    if writeln!(std::io::stdout(), "report {now}").is_err() {
                        break;
                    }
                }
            }
            // The parent closed our stdin: it is done with us.
            std::process::exit(0);
        })
        .context("starting the command thread")?;
    Ok(())
}
