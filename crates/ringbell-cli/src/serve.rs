//! `ringbell serve`: a ringbell server that echoes or counts messages, one thread per
//! connection; and the per-connection loop, shared with the byte-stream baseline peer.

use std::io::Write;
use std::path::Path;
use std::thread;
use std::time::Duration;

use clap::ValueEnum;
use ringbell::{Batch, Connection, Error, IpcTransport, Server, ServerConfig};

use crate::args::{WaitArgs, WaitKind};
use crate::child::{PeerLauncher, PeerProcess, LISTENING_PREFIX};
use crate::error::{CliError, Context};

/// How long a server started by `demo` or `bench` may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a `ringbell serve` child in `mode` at `dir/<name>.sock`, both sides waiting with
/// `kind`, messages of up to `max_message_size` bytes allowed (the ring stays the
/// default), and connects to it. The server is killed when the returned process is
/// dropped; drop the connection first, so that the server sees a clean goodbye.
pub fn start_local(
    launcher: &PeerLauncher,
    dir: &Path,
    kind: WaitKind,
    mode: ServeMode,
    max_message_size: usize,
) -> Result<(PeerProcess, ringbell::Connection), CliError> {
    let socket = dir.join(format!("ringbell-{}-{}.sock", kind.arg(), mode.arg()));
    let server = PeerProcess::spawn_listening(
        &format!("ringbell serve --wait {}", kind.arg()),
        launcher.command(&[
            "serve".into(),
            socket.clone().into(),
            "--wait".into(),
            kind.arg().into(),
            "--mode".into(),
            mode.arg().into(),
            "--max-message-size".into(),
            max_message_size.to_string().into(),
        ]),
        LISTEN_TIMEOUT,
    )?;
    let config = ringbell::ClientConfig::default().wait(WaitArgs::of_kind(kind).strategy());
    // The library's errors name the path already.
    let connection = ringbell::Connection::connect(&socket, config)?;
    Ok((server, connection))
}

/// What a server does with the messages it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServeMode {
    /// Send every message back unchanged (for round-trip latency).
    Echo,
    /// Count messages; on an empty message, reply with the count as a u64 little-endian
    /// and start counting again (for one-way throughput).
    Sink,
    /// As `sink`, but a ringbell server takes the messages a batch at a time
    /// (`recv_batch`, up to 1,024 at once); other transports receive one at a time.
    SinkBatches,
}

impl ServeMode {
    /// The name on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            ServeMode::Echo => "echo",
            ServeMode::Sink => "sink",
            ServeMode::SinkBatches => "sink-batches",
        }
    }
}

/// How long to back off after the listening socket itself fails (for example, when the
/// process is out of file descriptors), so that a persistent failure does not spin.
const LISTENER_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `path`, announces `listening on <path>` on stdout, and serves every client on
/// its own thread until the process is stopped. Ctrl-C (SIGINT) and SIGTERM stop it
/// cleanly ([`stop_on_signal`]).
pub fn run(path: &Path, config: ServerConfig, mode: ServeMode) -> Result<(), CliError> {
    let server = Server::bind(path, config)?;
    // Before the announcement, so that a signal sent as soon as it is seen is caught.
    stop_on_signal(path)?;
    announce_listening(path)?;
    let mut connection_id: u64 = 0;
    loop {
        connection_id += 1;
        match server.accept() {
            Ok(mut connection) => {
                let spawned = thread::Builder::new()
                    .name(format!("connection-{connection_id}"))
                    .spawn(move || {
                        if let Err(error) = serve_ringbell_connection(&mut connection, mode) {
                            eprintln!("ringbell serve: connection {connection_id}: {error}");
                        }
                    });
                if let Err(error) = spawned {
                    eprintln!(
                        "ringbell serve: no thread for connection {connection_id}, closing it: {error}"
                    );
                }
            }
            // One client's failed handshake leaves the server usable.
            Err(error @ Error::Io(_)) => {
                eprintln!("ringbell serve: accepting a client failed: {error}");
                thread::sleep(LISTENER_ERROR_BACKOFF);
            }
            Err(error) => eprintln!("ringbell serve: refused a client: {error}"),
        }
    }
}

/// From now on, SIGINT (Ctrl-C) or SIGTERM ends this process cleanly: it removes the
/// socket file at `path` if it is still the one the server made (someone may have
/// unlinked it and another server bound the path since: that one is left alone, as the
/// library's own listener does on drop), says so on stderr, and exits with status 0. Its clients see `PeerDied` at once:
/// the kernel closes every control socket with the process, and each client watches its
/// own. Nothing else needs undoing, since the shared memory has no name anywhere.
///
/// Why not drop the server and its connections instead: the connection threads are
/// blocked in `recv` with no deadline, and unwinding them would change nothing the client
/// can see. Signals are awaited with tokio's `signal` module on a thread of their own,
/// rather than with a handler of our own: async-signal safety is tokio's to get right.
#[cfg(unix)]
fn stop_on_signal(path: &Path) -> Result<(), CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the signal watcher")?;
    // Registered here, before returning, so that no signal slips through at start-up.
    let (mut interrupt, mut terminate) = {
        let _context = runtime.enter();
        let interrupt = signal(SignalKind::interrupt()).context("watching for SIGINT")?;
        let terminate = signal(SignalKind::terminate()).context("watching for SIGTERM")?;
        (interrupt, terminate)
    };
    let path = path.to_owned();
    // Which file is ours: the one the server just bound.
    let ours = file_identity(&path).context("looking at the socket file")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                }
            });
            let removed = match file_identity(&path) {
                Ok(now) if now == ours => match std::fs::remove_file(&path) {
                    Ok(()) => format!("removed {}", path.display()),
                    Err(error) => format!("could not remove {}: {error}", path.display()),
                },
                Ok(_) => format!("left {}: another server's socket now", path.display()),
                Err(_) => format!("{} was already gone", path.display()),
            };
            eprintln!("ringbell serve: stopped by {name}; {removed}");
            std::process::exit(0);
        })
        .context("starting the signal watcher")?;
    Ok(())
}

/// The device and inode of the file at `path` (not following a symlink): what tells one
/// socket file from another bound at the same path later.
#[cfg(unix)]
fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::symlink_metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

/// From now on, Ctrl-C, Ctrl-Break or closing the console ends this process cleanly: it
/// says so on stderr and exits with status 0. Its clients see `PeerDied` at once: each
/// watches the server's process. Nothing is left to remove: the address is a pipe name,
/// which goes with the server's last pipe handle, and the shared memory is unnamed.
/// (Windows has no SIGTERM; `taskkill /F` and `TerminateProcess` end a process without a
/// word, which leaves nothing behind either.)
#[cfg(windows)]
fn stop_on_signal(_path: &Path) -> Result<(), CliError> {
    use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the console-event watcher")?;
    // Registered here, before returning, so that no event slips through at start-up.
    let (mut interrupt, mut brk, mut close) = {
        let _context = runtime.enter();
        (
            ctrl_c().context("watching for Ctrl-C")?,
            ctrl_break().context("watching for Ctrl-Break")?,
            ctrl_close().context("watching for the console's close")?,
        )
    };
    thread::Builder::new()
        .name("console-events".into())
        .spawn(move || {
            let name = runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => "Ctrl-C",
                    _ = brk.recv() => "Ctrl-Break",
                    _ = close.recv() => "the console's close",
                }
            });
            eprintln!("ringbell serve: stopped by {name}");
            std::process::exit(0);
        })
        .context("starting the console-event watcher")?;
    Ok(())
}

/// Prints the line a parent process waits for, and makes sure it leaves the process now.
pub fn announce_listening(path: &Path) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{LISTENING_PREFIX}{}", path.display())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// Serves one connection until the peer goes away (which is not an error).
pub fn serve_connection<T: IpcTransport>(transport: &mut T, mode: ServeMode) -> Result<(), Error> {
    match serve_until_error(transport, mode) {
        Err(Error::PeerDied) => Ok(()),
        other => other,
    }
}

/// [`serve_connection`] for a ringbell connection, which in [`ServeMode::SinkBatches`]
/// takes its messages with `recv_batch`.
fn serve_ringbell_connection(connection: &mut Connection, mode: ServeMode) -> Result<(), Error> {
    if mode != ServeMode::SinkBatches {
        return serve_connection(connection, mode);
    }
    let mut batch = Batch::new();
    let mut received_since_marker: u64 = 0;
    loop {
        match connection.recv_batch(&mut batch, SINK_BATCH_LIMIT, None) {
            Ok(_) => {}
            Err(Error::PeerDied) => return Ok(()),
            Err(error) => return Err(error),
        }
        for message in &batch {
            if message.is_empty() {
                connection.send(&received_since_marker.to_le_bytes())?;
                received_since_marker = 0;
            } else {
                received_since_marker += 1;
            }
        }
    }
}

/// The most messages a [`ServeMode::SinkBatches`] server takes in one `recv_batch`.
const SINK_BATCH_LIMIT: usize = 1024;

fn serve_until_error<T: IpcTransport>(transport: &mut T, mode: ServeMode) -> Result<(), Error> {
    let mut message = Vec::new();
    let mut received_since_marker: u64 = 0;
    loop {
        let len = transport.recv(&mut message, None)?;
        match mode {
            ServeMode::Echo => transport.send(&message[..len])?,
            ServeMode::Sink | ServeMode::SinkBatches if len == 0 => {
                transport.send(&received_since_marker.to_le_bytes())?;
                received_since_marker = 0;
            }
            ServeMode::Sink | ServeMode::SinkBatches => received_since_marker += 1,
        }
    }
}
