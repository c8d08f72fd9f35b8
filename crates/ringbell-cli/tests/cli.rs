//! End-to-end runs of the `ringbell` binary: the demo, and `serve` with `ping`.
//!
//! No assertion looks at a measured time: these machines are shared and timings drift.
//! Every test has a watchdog, so that a hung child can never hang the suite.

use std::io::{BufRead, BufReader, Write};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[cfg(unix)]
use rustix::process::{kill_process, Pid, Signal};

mod common;

use common::kill_pid;

const RINGBELL: &str = env!("CARGO_BIN_EXE_ringbell");

/// Far longer than any of these tests takes, even on a loaded 2-core machine.
const WATCHDOG_LIMIT: Duration = Duration::from_secs(240);

/// Kills the test's children and aborts the test binary if the test outlives
/// [`WATCHDOG_LIMIT`]. Dropping it (the test finished) stops it.
struct Watchdog {
    children: Arc<Mutex<Vec<u32>>>,
    _finished: mpsc::Sender<()>,
}

impl Watchdog {
    fn start(test: &'static str) -> Watchdog {
        let children = Arc::new(Mutex::new(Vec::<u32>::new()));
        let (finished_tx, finished_rx) = mpsc::channel::<()>();
        let watched = Arc::clone(&children);
        thread::spawn(move || {
            if finished_rx.recv_timeout(WATCHDOG_LIMIT) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            let pids = watched.lock().map(|pids| pids.clone()).unwrap_or_default();
            for pid in pids {
                kill_pid(pid);
            }
            eprintln!("watchdog: `{test}` ran longer than {WATCHDOG_LIMIT:?}; killed its children");
            // Give the test a moment to fail on its own now that its children are gone;
            // if it is stuck elsewhere, stop everything rather than hang.
            thread::sleep(Duration::from_secs(5));
            eprintln!("watchdog: `{test}` is still stuck; aborting");
            std::process::abort();
        });
        Watchdog {
            children,
            _finished: finished_tx,
        }
    }

    fn watch(&self, child: &Child) {
        self.children.lock().unwrap().push(child.id());
    }
}

/// A child that is killed and reaped when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory of the test's own, removed at the end.
struct TestDir(PathBuf);

impl TestDir {
    fn new(test: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!("ringbell-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_to_end(watchdog: &Watchdog, command: &mut Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    watchdog.watch(&child);
    child.wait_with_output().unwrap()
}

fn describe(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Table rows are `| name | value | …`.
fn table_rows_named<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("| {name} ");
    stdout
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .collect()
}

/// The rows of the kernel's floor and of the byte-stream baseline: a futex and a Unix
/// socket on Linux, an event pair and anonymous pipes on Windows.
#[cfg(unix)]
const DEMO_BASELINES: [&str; 2] = ["raw futex", "unix socket"];
#[cfg(windows)]
const DEMO_BASELINES: [&str; 2] = ["raw event", "pipe"];

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "expects the kernel floor's and idle-CPU rows, which macOS lacks so far"
)]
fn demo_quick_reports_every_measurement_and_cleans_up() {
    let watchdog = Watchdog::start("ringbell demo --quick");
    let child = Command::new(RINGBELL)
        .args(["demo", "--quick"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    watchdog.watch(&child);
    let demo_pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);

    for header in [
        "machine:",
        "nproc",
        "counts:",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "msgs/s",
        "MB/s",
        "idle, connected pair",
        "% of a core",
    ] {
        assert!(
            stdout.contains(header),
            "no {header:?}\n{}",
            describe(&output)
        );
    }
    // Latency only.
    for name in [
        "ringbell spin",
        "ringbell block",
        "raw spin",
        DEMO_BASELINES[0],
    ] {
        let rows = table_rows_named(&stdout, name);
        assert_eq!(
            rows.len(),
            1,
            "rows for {name:?}: {rows:?}\n{}",
            describe(&output)
        );
    }
    // Latency and throughput; ringbell adaptive also has the idle row.
    for (name, expected) in [("ringbell adaptive", 3), (DEMO_BASELINES[1], 2)] {
        let rows = table_rows_named(&stdout, name);
        assert_eq!(
            rows.len(),
            expected,
            "rows for {name:?}: {rows:?}\n{}",
            describe(&output)
        );
    }

    let workspace = std::env::temp_dir().join(format!("ringbell-demo-{demo_pid}"));
    assert!(
        !workspace.exists(),
        "the demo left {} behind",
        workspace.display()
    );
}

#[test]
fn ping_measures_against_serve_which_survives_a_bad_client() {
    let watchdog = Watchdog::start("ringbell serve + ping");
    #[cfg_attr(
        windows,
        allow(unused_variables, reason = "the address is a pipe name")
    )]
    let dir = TestDir::new("ping");
    // On Windows a full pipe name, which the garbage client below opens as a file.
    #[cfg(windows)]
    let socket = PathBuf::from(format!(
        r"\\.\pipe\ringbell-cli-test-{}",
        std::process::id()
    ));
    #[cfg(unix)]
    let socket = dir.0.join("s.sock");
    let mut server = KillOnDrop(
        Command::new(RINGBELL)
            .arg("serve")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    watchdog.watch(&server.0);
    let mut server_stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    server_stdout.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim_end(),
        format!("listening on {}", socket.display())
    );

    // A client that speaks garbage is refused; the server keeps serving.
    #[cfg(unix)]
    let mut bad_client = UnixStream::connect(&socket).unwrap();
    #[cfg(windows)]
    let mut bad_client = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&socket)
        .unwrap();
    let _ = bad_client.write_all(&[0xAB; 256]);
    drop(bad_client);

    let output = run_to_end(
        &watchdog,
        Command::new(RINGBELL)
            .arg("ping")
            .arg(&socket)
            .args(["--count", "200", "--warmup", "10"]),
    );
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for label in ["p50 ", "p99 ", "p99.9 ", "max ", "round trips per second"] {
        assert!(
            stdout.lines().any(|line| line.starts_with(label)),
            "no {label:?} line\n{}",
            describe(&output)
        );
    }

    // A ping above the server's limit is refused with the flag that raises it, not with
    // the library's advice (`ServerConfig::max_message_size`), which a CLI user cannot take.
    let output = run_to_end(
        &watchdog,
        Command::new(RINGBELL)
            .arg("ping")
            .arg(&socket)
            .args(["--size", "20000000", "--count", "1"]),
    );
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--max-message-size 20000000") && !stderr.contains("ServerConfig"),
        "{}",
        describe(&output)
    );
    assert_server_alive(&mut server);
}

/// `ringbell serve` stopped with SIGTERM or Ctrl-C (SIGINT) exits with status 0 and
/// removes its socket file, and its connected client gets `PeerDied`.
///
/// Unix only: Windows has no signals to send a process. Its Ctrl-C reaches only the
/// processes of the sender's console (`GenerateConsoleCtrlEvent`), which the test's own
/// would share, and `serve` stops there on Ctrl-C, Ctrl-Break or the console's close,
/// with nothing to remove (the address is a pipe name, gone with the server).
#[cfg(unix)]
#[test]
fn serve_stops_cleanly_on_sigterm_and_sigint() {
    for (signal, name) in [(Signal::TERM, "SIGTERM"), (Signal::INT, "SIGINT")] {
        let watchdog = Watchdog::start("ringbell serve, stopped by a signal");
        let dir = TestDir::new(&format!("stop-{name}"));
        let socket = dir.0.join("s.sock");
        let mut server = Command::new(RINGBELL)
            .arg("serve")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        watchdog.watch(&server);
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening on "), "{line:?}");
        let mut client =
            ringbell::Connection::connect(&socket, ringbell::ClientConfig::default()).unwrap();
        let mut buf = Vec::new();
        client.send(b"hello").unwrap();
        client
            .recv(&mut buf, Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(buf, b"hello");

        let pid = Pid::from_raw(server.id() as i32).unwrap();
        kill_process(pid, signal).unwrap();
        let status = server.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(status.success(), "{name}: {status}, stderr: {stderr}");
        assert!(
            stderr.contains(&format!("stopped by {name}")),
            "{name}: {stderr}"
        );
        assert!(!socket.exists(), "{name}: the socket file is left behind");
        let after = client.recv(&mut buf, Some(Duration::from_secs(30)));
        assert!(
            matches!(after, Err(ringbell::Error::PeerDied)),
            "{name}: {after:?}"
        );
    }
}

fn assert_server_alive(server: &mut KillOnDrop) {
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server exited during the test"
    );
}

#[test]
fn errors_exit_non_zero_with_a_message() {
    let watchdog = Watchdog::start("ringbell ping <nowhere>");
    let nowhere = Path::new("/nonexistent-ringbell-dir/s.sock");
    let output = run_to_end(&watchdog, Command::new(RINGBELL).arg("ping").arg(nowhere));
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ringbell: error:") && stderr.contains("/nonexistent-ringbell-dir"),
        "{}",
        describe(&output)
    );
}

/// A malformed SID given to `serve --allow-sid` is refused before anything listens.
#[cfg(windows)]
#[test]
fn serve_refuses_a_malformed_sid() {
    let watchdog = Watchdog::start("ringbell serve --allow-sid garbage");
    for sid in ["garbage", "BA", "S-1-5-21-x"] {
        let output = run_to_end(
            &watchdog,
            Command::new(RINGBELL).args(["serve", "never-listens.sock", "--allow-sid", sid]),
        );
        assert!(!output.status.success(), "{sid}: {}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("invalid configuration") && stderr.contains(sid),
            "{sid}: {}",
            describe(&output)
        );
        assert!(output.stdout.is_empty(), "{sid}: {}", describe(&output));
    }
}

/// Windows has no `bench` yet: it says so, and fails.
#[cfg(windows)]
#[test]
fn bench_says_it_is_not_on_windows() {
    let watchdog = Watchdog::start("ringbell bench on Windows");
    let output = run_to_end(&watchdog, Command::new(RINGBELL).args(["bench", "--quick"]));
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not available on Windows yet") && stderr.contains("ringbell demo"),
        "{}",
        describe(&output)
    );
}

#[cfg(unix)]
#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "expects the futex and eventfd floors, request/response and idle-CPU rows, \
              which only Linux has so far"
)]
fn bench_quick_measures_every_subject_and_writes_json_and_plots() {
    let watchdog = Watchdog::start("ringbell bench --quick");
    let dir = TestDir::new("bench");
    let json = dir.0.join("bench.json");
    let plots = dir.0.join("plots");
    let child = Command::new(RINGBELL)
        .args(["bench", "--quick", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&plots)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    watchdog.watch(&child);
    let bench_pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("met?"),
        "no target table\n{}",
        describe(&output)
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 2);
    assert!(!report["machine"]["kernel"].as_str().unwrap().is_empty());
    let skipped = report["skipped"].as_array().unwrap();
    assert!(skipped.is_empty(), "measurements were skipped: {skipped:?}");
    let peers: Vec<(String, bool)> = report["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|peer| {
            (
                peer["name"].as_str().unwrap().to_owned(),
                peer["streams"].as_bool().unwrap(),
            )
        })
        .collect();
    // The peers are there exactly when the `peers` feature is (scripts/test.sh turns it on).
    if cfg!(feature = "peers") {
        assert!(!peers.is_empty(), "no peer library was measured");
    } else {
        assert!(
            peers.is_empty(),
            "peers measured without the feature: {peers:?}"
        );
        assert!(
            stdout.contains("--features peers"),
            "no hint about the peers feature\n{}",
            describe(&output)
        );
    }

    // Every subject at every size, with figures that are numbers above zero.
    let rows = |section: &str| report[section].as_array().unwrap().clone();
    let has = |section: &str, name: &str, size: u64, figure: &str| {
        rows(section).iter().any(|row| {
            row["name"] == name
                && row["size"].as_u64() == Some(size)
                && row[figure].as_f64().is_some_and(|value| value > 0.0)
        })
    };
    for floor in ["raw spin (floor)", "raw futex (floor)", "eventfd (floor)"] {
        assert!(has("latency", floor, 64, "p50_us"), "no {floor}");
    }
    // 4 and 16 MiB: the large messages, through the senders' large-message regions.
    for size in [64, 1 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20] {
        let mut names: Vec<String> = [
            "ringbell spin",
            "ringbell adaptive",
            "ringbell block",
            "unix socket",
            "pipe",
            "tcp loopback",
        ]
        .map(String::from)
        .to_vec();
        names.extend(peers.iter().map(|(name, _)| name.clone()));
        for name in names {
            assert!(
                has("latency", &name, size, "p99_us"),
                "no latency for {name} at {size} B"
            );
        }
    }
    for size in [64, 4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20] {
        let mut names: Vec<String> = [
            "memcpy (ceiling)",
            "ringbell adaptive",
            "unix socket",
            "pipe",
            "tcp loopback",
        ]
        .map(String::from)
        .to_vec();
        names.extend(
            peers
                .iter()
                .filter(|(_, streams)| *streams)
                .map(|(name, _)| name.clone()),
        );
        for name in names {
            assert!(
                has("throughput", &name, size, "messages_per_second"),
                "no throughput for {name} at {size} B"
            );
        }
    }
    // The batched rows, at 64 B only, with the batched targets.
    for name in [
        "ringbell adaptive, batches of 64",
        "unix socket, batches of 64",
    ] {
        assert!(
            has("throughput", name, 64, "messages_per_second"),
            "no batched throughput for {name}"
        );
    }
    // The large rows' tables, and the word that ringbell's servers allow them.
    for table in [
        "round trip, 16 MiB",
        "one-way, 16 MiB",
        "--max-message-size 16 MiB",
    ] {
        assert!(
            stdout.contains(table),
            "no {table:?}\n{}",
            describe(&output)
        );
    }
    assert!(
        stdout.contains("one-way, 64 B, batched"),
        "no batched target\n{}",
        describe(&output)
    );
    for clients in [1, 10, 100] {
        for name in ["ringbell AsyncServer", "tokio UnixStream"] {
            assert!(
                rows("load").iter().any(|row| row["name"] == name
                    && row["clients"].as_u64() == Some(clients)
                    && row["requests_per_second"]
                        .as_f64()
                        .is_some_and(|rate| rate > 0.0)),
                "no request/response figure for {name} with {clients} clients"
            );
        }
    }
    let mut streamed = vec!["ringbell serve_calls", "tokio UnixStream, framed"];
    // tonic is a peer: there exactly when the `peers` feature is.
    if cfg!(feature = "peers") {
        streamed.push("tonic gRPC, Unix socket");
    } else {
        assert!(
            stdout.contains("tonic gRPC, Unix socket: not measured"),
            "no word that tonic was not measured\n{}",
            describe(&output)
        );
    }
    for name in streamed {
        assert!(
            rows("streamed").iter().any(|row| row["name"] == name
                && row["items_per_second"]
                    .as_f64()
                    .is_some_and(|rate| rate > 0.0)
                && row["unary_p50_us"].as_f64().is_some_and(|us| us > 0.0)
                && row["cancel_p99_us"].as_f64().is_some()),
            "no streamed-call figures for {name}"
        );
    }
    assert!(
        stdout.contains("streamed calls, 64 B items"),
        "no streamed-call table\n{}",
        describe(&output)
    );
    // The paced and unpinned round trips, each with CPU figures, and their targets.
    for placement in ["pinned_apart", "unpinned", "one_core"] {
        for name in ["ringbell, default wait", "unix socket"] {
            assert!(
                rows("placed").iter().any(|row| row["name"] == name
                    && row["placement"] == placement
                    && row["p50_us"].as_f64().is_some_and(|us| us > 0.0)
                    && row["server_cpu_us"].as_f64().is_some_and(|us| us > 0.0)
                    && row["client_cpu_us"].as_f64().is_some_and(|us| us > 0.0)),
                "no {placement} round trips for {name}"
            );
        }
    }
    assert!(
        rows("placed")
            .iter()
            .any(|row| row["pace_us"].as_u64() == Some(1_000)),
        "no paced rows"
    );
    assert!(
        stdout.contains("paced round trip p50") && stdout.contains("paced round trip, CPU"),
        "no paced targets\n{}",
        describe(&output)
    );
    assert!(report["idle"]["seconds"].as_f64().unwrap() > 0.0);

    for plot in [
        "latency-64B.svg",
        "latency-1KiB.svg",
        "latency-64KiB.svg",
        "latency-1MiB.svg",
        "latency-4MiB.svg",
        "latency-16MiB.svg",
        "latency-p50.svg",
        "throughput.svg",
    ] {
        let svg = std::fs::read_to_string(plots.join(plot)).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("ringbell"),
            "{plot} is not a plot"
        );
    }
    // The plots against size reach the largest messages.
    for plot in ["latency-p50.svg", "throughput.svg"] {
        let svg = std::fs::read_to_string(plots.join(plot)).unwrap();
        assert!(svg.contains("16 MiB"), "{plot} has no 16 MiB point");
    }
    let workspace = std::env::temp_dir().join(format!("ringbell-bench-{bench_pid}"));
    assert!(
        !workspace.exists(),
        "bench left {} behind",
        workspace.display()
    );
}
