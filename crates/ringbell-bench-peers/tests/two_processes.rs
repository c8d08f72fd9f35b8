//! Every peer library, through a real second process, as `ringbell bench` uses them: the
//! parent `listen`s, starts a child that `connect_child`s and echoes or counts, then
//! `accept`s.
//!
//! The child is this very test binary, re-executed with `--exact child_entry` and its
//! role in [`CHILD_ROLE_ENV`]; run normally, `child_entry` is an empty test. Besides the
//! messages, the tests check that a child leaves by itself once the parent hangs up, and
//! that the parent learns of a killed child.
//!
//! Nothing can hang: the parent's receives have a timeout (or end when the child is
//! gone), and each test holds a watchdog that aborts the process (whose children then see
//! their parent gone and exit) if it overruns. The tests take turns, so that at most two
//! processes busy-poll on a two-core machine.

use std::io;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringbell_bench_peers::{connect_child, listen, Channel, PeerKind};
use rustix::io::{fcntl_setfd, FdFlags};

/// Turns the test binary into a child: `<peer arg> <echo|sink>`.
const CHILD_ROLE_ENV: &str = "RINGBELL_PEERS_TEST_CHILD";
/// The child's `connect_child` arguments, one per line.
const CHILD_ARGS_ENV: &str = "RINGBELL_PEERS_TEST_ARGS";

/// The largest message, as in `ringbell bench`.
const MAX_MESSAGE: usize = 1 << 20;
/// How long a step that should succeed may take before the test fails saying so.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long one test may run before the watchdog aborts the process.
const WATCHDOG_LIMIT: Duration = Duration::from_secs(120);

/// One test at a time.
static TURN: Mutex<()> = Mutex::new(());

/// Runs a child's role when this binary was started as a child; an empty test otherwise.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(CHILD_ROLE_ENV) else {
        return;
    };
    let code = match serve(&role) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("child {role}: {error}");
            1
        }
    };
    std::process::exit(code);
}

#[test]
fn every_peer_echoes_0_b_64_b_and_1_mib_byte_for_byte() {
    let _turn = Turn::take("echo");
    for kind in PeerKind::ALL {
        let mut peer = Peer::start(kind, "echo");
        let mut reply = Vec::new();
        for round in 0..3u64 {
            for size in [0, 64, MAX_MESSAGE] {
                let message = stamped_message(size, round);
                peer.channel
                    .send(&message)
                    .unwrap_or_else(|error| panic!("{}: send {size} B: {error}", kind.name()));
                let len = peer.recv(&mut reply);
                assert_eq!(len, size, "{}: echo length", kind.name());
                assert!(
                    reply == message,
                    "{}: the {size} B echo of round {round} differs from what was sent",
                    kind.name()
                );
            }
        }
        peer.hang_up();
    }
}

#[test]
fn every_streaming_peer_delivers_every_message_of_a_stream() {
    let _turn = Turn::take("stream");
    for kind in PeerKind::ALL.into_iter().filter(|kind| kind.streams()) {
        let mut peer = Peer::start(kind, "sink");
        // Far more than any buffer of the libraries holds: senders must wait, not drop.
        let (small, large) = (2_000u64, 10u64);
        for round in 0..small {
            peer.send(&stamped_message(64, round));
        }
        for round in 0..large {
            peer.send(&stamped_message(MAX_MESSAGE, round));
        }
        peer.send(&[]);
        let mut reply = Vec::new();
        let len = peer.recv(&mut reply);
        assert_eq!(len, 8, "{}: the sink's count is a u64", kind.name());
        let counted = u64::from_le_bytes(reply[..8].try_into().unwrap());
        assert_eq!(counted, small + large, "{}: messages counted", kind.name());
    }
}

#[test]
fn every_peer_reports_a_killed_child() {
    let _turn = Turn::take("killed child");
    for kind in PeerKind::ALL {
        let mut peer = Peer::start(kind, "echo");
        peer.send(b"ping");
        peer.recv(&mut Vec::new());
        peer.child.0.kill().expect("killing the child");
        peer.child.0.wait().expect("reaping the child");
        // A send may still succeed (into the dead side's buffer); the receive may not.
        let outcome = peer
            .channel
            .send(b"anyone?")
            .and_then(|()| peer.channel.recv(&mut Vec::new(), None));
        match outcome {
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                ) => {}
            other => panic!(
                "{}: after the child was killed, got {other:?} instead of an error saying \
                 it is gone",
                kind.name()
            ),
        }
    }
}

/// The parent's end of a peer channel and the child at the other end. Fields drop in
/// order: the channel says goodbye (the child leaves by itself), then the child is killed
/// in any case, and reaped.
struct Peer {
    channel: Box<dyn Channel>,
    child: ChildProcess,
    kind: PeerKind,
}

impl Peer {
    fn start(kind: PeerKind, mode: &str) -> Peer {
        let name = kind.name();
        let (setup, pending) =
            listen(kind, MAX_MESSAGE).unwrap_or_else(|error| panic!("{name}: listen: {error}"));
        for fd in &setup.inherited {
            fcntl_setfd(fd, FdFlags::empty()).expect("letting the child inherit an fd");
        }
        let exe = std::env::current_exe().expect("the path of the test binary");
        let child = Command::new(exe)
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ROLE_ENV, format!("{} {mode}", kind.arg()))
            .env(CHILD_ARGS_ENV, setup.args.join("\n"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("{name}: spawning the child: {error}"));
        let child = ChildProcess(child);
        // Our copies of the child's fds close here.
        drop(setup);
        let channel = pending
            .accept(PATIENCE)
            .unwrap_or_else(|error| panic!("{name}: accept: {error}"));
        Peer {
            channel,
            child,
            kind,
        }
    }

    fn send(&mut self, message: &[u8]) {
        let name = self.kind.name();
        self.channel
            .send(message)
            .unwrap_or_else(|error| panic!("{name}: send {} B: {error}", message.len()));
    }

    /// Drops our end, and checks that the child notices and leaves by itself, with
    /// success, within [`PATIENCE`].
    fn hang_up(self) {
        let Peer {
            channel,
            mut child,
            kind,
        } = self;
        drop(channel);
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.0.try_wait().expect("waiting for the child") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the child still runs {PATIENCE:?} after we hung up",
                kind.name()
            );
            thread::sleep(Duration::from_millis(5));
        };
        assert!(
            status.success(),
            "{}: the child failed: {status}",
            kind.name()
        );
    }

    /// The next message, which must come within [`PATIENCE`].
    fn recv(&mut self, buffer: &mut Vec<u8>) -> usize {
        let name = self.kind.name();
        match self.channel.recv(buffer, Some(PATIENCE)) {
            Ok(Some(len)) => len,
            Ok(None) => panic!("{name}: no message within {PATIENCE:?}"),
            Err(error) => panic!("{name}: recv: {error}"),
        }
    }
}

/// A child process, killed (if it still runs) and reaped when dropped.
struct ChildProcess(Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child: connects through its peer and echoes or counts, as `ringbell serve` does,
/// until the parent is gone.
fn serve(role: &str) -> io::Result<()> {
    let (peer, mode) = role
        .split_once(' ')
        .ok_or_else(|| io::Error::other("the role is `<peer> <mode>`"))?;
    let kind = PeerKind::from_arg(peer).ok_or_else(|| io::Error::other("unknown peer"))?;
    let args: Vec<String> = std::env::var(CHILD_ARGS_ENV)
        .map_err(io::Error::other)?
        .split('\n')
        .map(str::to_owned)
        .collect();
    let mut channel = connect_child(kind, &args)?;
    let mut message = Vec::new();
    let mut counted: u64 = 0;
    loop {
        // No timeout: the parent's goodbye, or its death, ends the wait.
        let len = match channel.recv(&mut message, None) {
            Ok(Some(len)) => len,
            Ok(None) => unreachable!("a receive without a timeout returned"),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        };
        match mode {
            "echo" => channel.send(&message[..len])?,
            "sink" if len == 0 => {
                channel.send(&counted.to_le_bytes())?;
                counted = 0;
            }
            "sink" => counted += 1,
            other => return Err(io::Error::other(format!("unknown mode {other}"))),
        }
    }
}

/// A message whose bytes differ from one position to the next, stamped with its round.
fn stamped_message(size: usize, round: u64) -> Vec<u8> {
    let mut message: Vec<u8> = (0..size).map(|index| (index * 31 + 7) as u8).collect();
    let stamp = round.to_le_bytes();
    let len = size.min(stamp.len());
    message[..len].copy_from_slice(&stamp[..len]);
    message
}

/// A test's turn, and its watchdog.
struct Turn {
    cancel: Option<mpsc::Sender<()>>,
    watchdog: Option<JoinHandle<()>>,
    _turn: MutexGuard<'static, ()>,
}

impl Turn {
    fn take(test: &'static str) -> Turn {
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (cancel, cancelled) = mpsc::channel::<()>();
        let watchdog = thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = cancelled.recv_timeout(WATCHDOG_LIMIT) {
                eprintln!("WATCHDOG: the {test} test still runs after {WATCHDOG_LIMIT:?}");
                std::process::abort();
            }
        });
        Turn {
            cancel: Some(cancel),
            watchdog: Some(watchdog),
            _turn: turn,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}
