//! End-to-end runs of `ringbell stress`: real server and client processes, every reply
//! checked by the tool itself, which must report every request completed and exit 0.
//!
//! No assertion looks at a measured time or rate. Every run has two watchdogs: the tool's
//! own `--timeout`, and a test-side one that kills the tool if even that fails.

#[cfg(target_os = "linux")]
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::kill_pid;

const RINGBELL: &str = env!("CARGO_BIN_EXE_ringbell");

/// The baseline transport's name: Unix sockets, or on Windows tokio's named pipes.
#[cfg(unix)]
const BASELINE: &str = "uds";
#[cfg(windows)]
const BASELINE: &str = "pipe";

/// How the server's sampled memory and open objects are labelled: Linux's RSS and fds, or
/// Windows's working set and handles.
#[cfg(unix)]
const SERVER_MEMORY: &str = "RSS ";
#[cfg(unix)]
const SERVER_HANDLES: &str = "fds ";
#[cfg(windows)]
const SERVER_MEMORY: &str = "working set ";
#[cfg(windows)]
const SERVER_HANDLES: &str = "handles ";

/// The tool's own limit for each run: far more than any of these runs needs, even on a
/// loaded 2-core machine in a debug build.
const TOOL_TIMEOUT_SECONDS: u64 = 240;

/// The test-side limit: the tool's, plus time for it to clean up.
const WATCHDOG_LIMIT: Duration = Duration::from_secs(TOOL_TIMEOUT_SECONDS + 60);

/// Runs `ringbell stress <args…> --timeout …` to the end, killing it (and, through their
/// parent-death signal, its children) if it outlives [`WATCHDOG_LIMIT`].
fn stress(args: &[&str]) -> Output {
    stress_with_pid(args).0
}

/// [`stress`], and the tool's process id, which names its workspace.
fn stress_with_pid(args: &[&str]) -> (Output, u32) {
    stress_within(args, TOOL_TIMEOUT_SECONDS)
}

/// [`stress_with_pid`] with the tool's own `--timeout` of `timeout` seconds.
fn stress_within(args: &[&str], timeout: u64) -> (Output, u32) {
    let timeout = timeout.to_string();
    let child = Command::new(RINGBELL)
        .arg("stress")
        .args(args)
        .args(["--timeout", &timeout])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (finished_tx, finished_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if finished_rx.recv_timeout(WATCHDOG_LIMIT) == Err(RecvTimeoutError::Timeout) {
            eprintln!("watchdog: `ringbell stress` ran longer than {WATCHDOG_LIMIT:?}; killing it");
            kill_pid(pid);
        }
    });
    let output = child.wait_with_output().unwrap();
    drop(finished_tx);
    watchdog.join().unwrap();
    (output, pid)
}

fn describe(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts a successful run whose every request of `transport` completed correctly.
fn assert_all_completed(output: &Output, transport: &str, calls: u64) {
    assert!(output.status.success(), "{}", describe(output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = format!(
        "result {transport}: completed={calls} failed=0 corrupted=0 lost=0 duplicated=0 \
         (expected {calls}, server handled {calls})"
    );
    assert!(
        stdout.lines().any(|line| line == expected),
        "no line {expected:?}\n{}",
        describe(output)
    );
    for label in [
        "requests/s",
        "p50 ",
        "p99 ",
        "p99.9 ",
        SERVER_MEMORY,
        SERVER_HANDLES,
    ] {
        assert!(stdout.contains(label), "no {label:?}\n{}", describe(output));
    }
    assert!(stdout.contains("PASS"), "{}", describe(output));
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "ringbell stress runs only on Linux and Windows so far: it samples the server \
              from /proc or with Windows's calls"
)]
fn ringbell_100_clients_over_4_processes() {
    let output = stress(&[
        "--clients",
        "100",
        "--processes",
        "4",
        "--requests",
        "20",
        "--transport",
        "ringbell",
    ]);
    assert_all_completed(&output, "ringbell", 2_000);
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "ringbell stress runs only on Linux and Windows so far: it samples the server \
              from /proc or with Windows's calls"
)]
fn unix_sockets_100_clients_over_4_processes() {
    let output = stress(&[
        "--clients",
        "100",
        "--processes",
        "4",
        "--requests",
        "20",
        "--transport",
        BASELINE,
    ]);
    assert_all_completed(&output, BASELINE, 2_000);
}

/// The bounded CI run: 1,000 ringbell clients over 10 processes, 20 calls each.
#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "ringbell stress runs only on Linux and Windows so far: it samples the server \
              from /proc or with Windows's calls"
)]
fn ringbell_1000_clients_over_10_processes() {
    let output = stress(&[
        "--clients",
        "1000",
        "--processes",
        "10",
        "--requests",
        "20",
        "--transport",
        "ringbell",
    ]);
    assert_all_completed(&output, "ringbell", 20_000);
}

/// Without --transport both run and are compared; also varied sizes, several calls in
/// flight per connection (replies out of order), and rounds against one server.
#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "ringbell stress runs only on Linux and Windows so far: it samples the server \
              from /proc or with Windows's calls"
)]
fn default_compares_both_transports_with_varied_sizes_concurrency_and_rounds() {
    let output = stress(&[
        "--clients",
        "30",
        "--processes",
        "3",
        "--requests",
        "40",
        "--size-range",
        "0..5000",
        "--concurrency",
        "4",
        "--rounds",
        "3",
        "--idle",
        "1",
    ]);
    assert_all_completed(&output, "ringbell", 3_600);
    assert_all_completed(&output, BASELINE, 3_600);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for label in [
        &format!("| ringbell vs {BASELINE} ")[..],
        "server after round 2 → round 3",
        "idle clients cost the server",
    ] {
        assert!(
            stdout.contains(label),
            "no {label:?}\n{}",
            describe(&output)
        );
    }
}

/// A payload larger than a ring goes through the large-message region (in chunks from a
/// Windows client), and is checked like any other.
#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "ringbell stress runs only on Linux and Windows so far: it samples the server \
              from /proc or with Windows's calls"
)]
fn payloads_larger_than_the_ring_are_delivered_and_checked() {
    let output = stress(&[
        "--clients",
        "4",
        "--processes",
        "2",
        "--requests",
        "5",
        "--size",
        "100000",
        "--ring-capacity",
        "4096",
        "--transport",
        "ringbell",
    ]);
    assert_all_completed(&output, "ringbell", 20);
}

/// `--timeout` stops a run that cannot finish: non-zero exit, a clear message, and no
/// process or socket directory left behind.
#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "ringbell stress runs only on Linux and Windows so far: it samples the server \
              from /proc or with Windows's calls"
)]
fn timeout_kills_everything_and_fails() {
    let started = Instant::now();
    let child = Command::new(RINGBELL)
        .args([
            "stress",
            "--clients",
            "20",
            "--processes",
            "2",
            "--requests",
            "100000000",
            "--transport",
            BASELINE,
            "--timeout",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stress_pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the run was not stopped"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--timeout 2 s"),
        "no timeout message\n{}",
        describe(&output)
    );
    let workspace = std::env::temp_dir().join(format!("ringbell-stress-{stress_pid}"));
    assert!(
        !workspace.exists(),
        "{} was left behind",
        workspace.display()
    );
    // The children were killed and reaped before the parent exited.
    let leftovers = leftover_children(stress_pid, &workspace);
    assert!(leftovers.is_empty(), "left running: {leftovers:?}");
}

/// The processes the tool `tool_pid` started that still run after it: on Linux those whose
/// command line mentions its `workspace` (every child's does), from /proc; on Windows
/// those whose parent is `tool_pid`, from a process snapshot (Windows never re-parents, so
/// an orphan still names its dead parent). macOS has neither view here: none are found.
fn leftover_children(tool_pid: u32, workspace: &std::path::Path) -> Vec<String> {
    #[cfg(target_os = "linux")]
    {
        let _ = tool_pid;
        processes_mentioning(workspace)
    }
    #[cfg(windows)]
    {
        let _ = workspace;
        children_of(tool_pid)
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = (tool_pid, workspace);
        Vec::new()
    }
}

/// The running processes whose parent is `parent` (`CreateToolhelp32Snapshot`).
#[cfg(windows)]
fn children_of(parent: u32) -> Vec<String> {
    use windows_sys::Win32::Foundation::{CloseHandle, INVALID_HANDLE_VALUE};
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W,
        TH32CS_SNAPPROCESS,
    };
    let mut found = Vec::new();
    // SAFETY: a snapshot handle checked for failure and closed here; the entry is plain
    // data, valid zeroed, with its size set as the calls require.
    unsafe {
        let snapshot = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
        assert_ne!(
            snapshot, INVALID_HANDLE_VALUE,
            "CreateToolhelp32Snapshot failed"
        );
        let mut entry: PROCESSENTRY32W = std::mem::zeroed();
        entry.dwSize = size_of::<PROCESSENTRY32W>() as u32;
        let mut more = Process32FirstW(snapshot, &mut entry) != 0;
        while more {
            if entry.th32ParentProcessID == parent {
                let len = entry.szExeFile.iter().position(|&c| c == 0).unwrap_or(0);
                let name = String::from_utf16_lossy(&entry.szExeFile[..len]);
                found.push(format!("{}: {name}", entry.th32ProcessID));
            }
            more = Process32NextW(snapshot, &mut entry) != 0;
        }
        CloseHandle(snapshot);
    }
    found
}

/// Processes whose command line mentions `path`.
#[cfg(target_os = "linux")]
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
fn bad_options_are_refused_with_a_message() {
    for args in [
        &["--size-range", "10..2"][..],
        &["--ring-capacity", "1000"],
        &["--clients", "0"],
    ] {
        let output = stress(args);
        assert!(!output.status.success(), "{args:?}: {}", describe(&output));
        assert!(!output.stderr.is_empty(), "{args:?}: {}", describe(&output));
    }
    // The comparison is the default; the flag that asked for it is gone, not ignored.
    let output = stress(&["--compare"]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unexpected argument '--compare'"),
        "{}",
        describe(&output)
    );
}

/// Runs a small stress with a fault the server injects on every 7th request, and checks
/// that the run fails, counting the fault where it belongs.
fn assert_fault_is_caught(transport: &str, fault: &str, expected_count: &str) {
    assert_fault_result(
        transport,
        fault,
        |result| result.contains(expected_count),
        expected_count,
    );
}

/// Like [`assert_fault_is_caught`], with a predicate on the `result …` line.
fn assert_fault_result(
    transport: &str,
    fault: &str,
    accept: impl Fn(&str) -> bool,
    expected: &str,
) {
    let output = stress(&[
        "--clients",
        "4",
        "--processes",
        "2",
        "--requests",
        "10",
        "--transport",
        transport,
        "--call-timeout",
        "1",
        "--fault",
        fault,
        "--fault-every",
        "7",
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = stdout
        .lines()
        .find(|line| line.starts_with(&format!("result {transport}: ")))
        .unwrap_or_else(|| panic!("no result line\n{}", describe(&output)));
    // 40 calls, every 7th faulty: 5 faults.
    assert!(
        accept(result),
        "expected {expected:?} in {result:?}\n{}",
        describe(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("stress test failed") && !stdout.contains("PASS"),
        "{}",
        describe(&output)
    );
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "ringbell stress runs only on Linux and Windows so far: it samples the server \
              from /proc or with Windows's calls"
)]
fn corrupted_replies_fail_the_run() {
    assert_fault_is_caught("ringbell", "corrupt", "completed=35 failed=0 corrupted=5");
    assert_fault_is_caught(BASELINE, "corrupt", "completed=35 failed=0 corrupted=5");
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "ringbell stress runs only on Linux and Windows so far: it samples the server \
              from /proc or with Windows's calls"
)]
fn failed_calls_fail_the_run() {
    assert_fault_is_caught(
        "ringbell",
        "fail",
        "completed=35 failed=5 corrupted=0 lost=0",
    );
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "ringbell stress runs only on Linux and Windows so far: it samples the server \
              from /proc or with Windows's calls"
)]
fn lost_replies_fail_the_run() {
    assert_fault_is_caught(BASELINE, "fail", "completed=35 failed=0 corrupted=0 lost=5");
}

#[test]
#[cfg_attr(
    not(any(target_os = "linux", windows)),
    ignore = "ringbell stress runs only on Linux and Windows so far: it samples the server \
              from /proc or with Windows's calls"
)]
fn duplicated_replies_fail_the_run() {
    // A duplicate of a client's last reply may arrive after that client has stopped
    // reading, and go unseen: 4 or 5 of the 5 are counted, never none.
    assert_fault_result(
        BASELINE,
        "duplicate",
        |result| {
            result.contains("completed=40 failed=0 corrupted=0 lost=0 duplicated=5")
                || result.contains("completed=40 failed=0 corrupted=0 lost=0 duplicated=4")
        },
        "completed=40 failed=0 corrupted=0 lost=0 duplicated=4 or 5",
    );
}

/// The quick stream run: 64 streams over 4 connections, one per client process, each
/// process's report printed, and the merged count matching what the seed draws.
#[test]
fn streams_with_random_cancels_are_all_checked() {
    let output = stress(&["--pattern", "stream", "--quick", "--seed", "5"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(stdout.contains("seed 5"), "{}", describe(&output));
    for process in 1..=4 {
        let line = format!("client process {process}: 16 streams (");
        assert!(stdout.contains(&line), "no {line:?}\n{}", describe(&output));
    }
    assert!(
        stdout.contains("streams: 64 (") && stdout.contains("over 4 client processes"),
        "{}",
        describe(&output)
    );
    let verified = stdout
        .lines()
        .find_map(|line| line.split_once("items verified: "))
        .and_then(|(_, rest)| rest.split_once(" expected"))
        .map(|(counts, _)| counts.to_owned())
        .unwrap_or_else(|| panic!("no items verified\n{}", describe(&output)));
    let (got, of) = verified
        .split_once(" of ")
        .unwrap_or_else(|| panic!("{verified:?}\n{}", describe(&output)));
    assert_eq!(got, of, "{}", describe(&output));
    assert!(stdout.contains("PASS"), "{}", describe(&output));
}

/// A client process that dies part-way (the hidden fault makes the one holding stream 0
/// exit after its second item) fails the run, naming the process, instead of hanging or
/// passing on the others' streams; and nothing is left running.
#[test]
fn a_stream_client_process_that_dies_fails_the_run() {
    let (output, pid) = stress_with_pid(&[
        "--pattern",
        "stream",
        "--quick",
        "--processes",
        "2",
        "--stream-fault",
        "exit-client",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr.contains("stream client process 1 of 2 exited before it reported its streams"),
        "{}",
        describe(&output)
    );
    assert!(!stdout.contains("PASS"), "{}", describe(&output));
    let workspace = std::env::temp_dir().join(format!("ringbell-stress-stream-{pid}"));
    assert!(
        !workspace.exists(),
        "{} was left behind",
        workspace.display()
    );
    let leftovers = leftover_children(pid, &workspace);
    assert!(leftovers.is_empty(), "left running: {leftovers:?}");
}

/// A server that skips or duplicates one item of stream 0 must fail the run, naming it.
#[test]
fn a_skipped_or_duplicated_stream_item_fails_the_run() {
    for (fault, wanted) in [
        ("skip", "stream 0: item 1 lost"),
        ("duplicate", "stream 0: item 1 duplicated"),
    ] {
        let output = stress(&["--pattern", "stream", "--quick", "--stream-fault", fault]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{}", describe(&output));
        assert!(stderr.contains(wanted), "{fault}: {}", describe(&output));
    }
}

/// A stream that stops part-way, its handler hung, is ended by `--timeout`: the run fails
/// and says so, and leaves nothing running and no workspace behind.
#[test]
fn a_hung_stream_is_ended_by_the_timeout() {
    let (output, pid) = stress_within(
        &["--pattern", "stream", "--quick", "--stream-fault", "stall"],
        5,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr.contains("did not finish within --timeout 5 s"),
        "{}",
        describe(&output)
    );
    assert!(!stdout.contains("PASS"), "{}", describe(&output));
    let workspace = std::env::temp_dir().join(format!("ringbell-stress-stream-{pid}"));
    assert!(
        !workspace.exists(),
        "{} was left behind",
        workspace.display()
    );
    let leftovers = leftover_children(pid, &workspace);
    assert!(leftovers.is_empty(), "left running: {leftovers:?}");
}
