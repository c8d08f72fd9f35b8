//! Helpers for the cross-process suites: child processes that are this very test binary,
//! a per-test watchdog, a process-wide turn lock, unique socket paths, write access to a
//! connection's shared segment for hostile children, and deterministic test data. See the
//! module docs of `cross_process.rs` for how they fit together.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ringbell::{Connection, Server, WaitStrategy};
#[cfg(unix)]
use rustix::io::Errno;
#[cfg(unix)]
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

#[cfg(windows)]
pub mod windows;

/// Why a test is ignored outside Linux (and Windows, which has its own tools: see
/// `windows.rs`): it reads `/proc` (a process's fds, mappings or memory), or scribbles over
/// a segment it finds there ([`Scribbler`]). macOS has neither `/proc` nor `mremap`; those
/// tests need its own tools (`proc_pidinfo`, a second mapping of the region) before they
/// can run there. The tests' `ignore` attributes repeat it.
#[cfg(not(any(target_os = "linux", windows)))]
const LINUX_ONLY: &str = "reads /proc or remaps a segment found there: Linux only so far";

/// The flags for a test's own `send` on a socket whose peer may be gone: no `SIGPIPE` on
/// Linux. macOS has no `MSG_NOSIGNAL` (the library sets `SO_NOSIGPIPE` instead); there a
/// SIGPIPE would end the child that sends, which such tests only ever do from a child.
#[cfg(target_os = "linux")]
pub const SEND_NO_SIGNAL: rustix::net::SendFlags = rustix::net::SendFlags::NOSIGNAL;
/// See above.
#[cfg(all(unix, not(target_os = "linux")))]
pub const SEND_NO_SIGNAL: rustix::net::SendFlags = rustix::net::SendFlags::empty();

/// The environment variable that turns the test binary into a child: its value is the role.
pub const CHILD_ROLE_ENV: &str = "RINGBELL_TEST_CHILD";
/// Children prefix the lines meant for the parent with this, because libtest writes its own
/// lines ("running 1 test", ...) to the same stdout.
const CHILD_LINE_PREFIX: &str = "ringbell-child: ";
/// How long one test may run before the watchdog kills every child and aborts the process.
pub const WATCHDOG_LIMIT: Duration = Duration::from_secs(120);
/// How long a child may live at all, in case its parent died without killing it: longer
/// than any test's watchdog limit.
const CHILD_LIFETIME_LIMIT: Duration = Duration::from_secs(330);
/// How long a step that should succeed may take before it is reported as a failure.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Pids of children spawned and not yet reaped: the ones the watchdog kills. A pid stays
/// here until its child is a zombie that we are about to reap, so it can never name an
/// unrelated process when the watchdog signals it.
static LIVE_CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Tests take this shared, except those that count the process's fds and mappings or need
/// both cores to themselves (the 100,000-message echoes): those take it exclusively.
static PROCESS_TURN: RwLock<()> = RwLock::new(());

fn live_children() -> MutexGuard<'static, Vec<u32>> {
    LIVE_CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Kills every registered child (the watchdog's last act).
#[cfg(unix)]
fn kill_all_children() {
    for &pid in live_children().iter() {
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
}

/// See above. On Windows a pid stays the child's while its `Child` holds the process
/// handle, so it cannot name another process here either.
#[cfg(windows)]
fn kill_all_children() {
    for &pid in live_children().iter() {
        windows::terminate(pid);
    }
}

/// Aborts the whole test process, after killing every child, if it is not dropped within
/// its limit. A hang in the library thus fails CI loudly instead of stalling it.
#[derive(Debug)]
pub struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(test: &str, limit: Duration) -> Watchdog {
        let (cancel, cancelled) = mpsc::channel::<()>();
        let test = test.to_owned();
        let thread = thread::Builder::new()
            .name(format!("watchdog-{test}"))
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = cancelled.recv_timeout(limit) {
                    eprintln!(
                        "WATCHDOG: test `{test}` still runs after {limit:?}: something hangs. \
                         Killing every child process and aborting."
                    );
                    kill_all_children();
                    std::process::abort();
                }
            })
            .expect("spawning the watchdog thread");
        Watchdog {
            cancel: Some(cancel),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What every test holds for its whole run: its turn (shared or exclusive) and its
/// watchdog, started once the turn is granted, so that waiting for a turn never counts.
#[derive(Debug)]
pub struct TestGuard {
    // Dropped in this order: the watchdog first, then the turn.
    _watchdog: Watchdog,
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _exclusive: Option<RwLockWriteGuard<'static, ()>>,
}

/// Starts a test that may run beside others, with a watchdog of [`WATCHDOG_LIMIT`].
pub fn shared_test(test: &str) -> TestGuard {
    let shared = PROCESS_TURN
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    TestGuard {
        _watchdog: Watchdog::start(test, WATCHDOG_LIMIT),
        _shared: Some(shared),
        _exclusive: None,
    }
}

/// Starts a test that must run alone in this process, with a watchdog of `limit`.
pub fn exclusive_test(test: &str, limit: Duration) -> TestGuard {
    let exclusive = PROCESS_TURN
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    TestGuard {
        _watchdog: Watchdog::start(test, limit),
        _shared: None,
        _exclusive: Some(exclusive),
    }
}

/// A socket path unique to this process and test, removed before use and on drop.
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
}

impl SocketPath {
    /// On Windows the address is a pipe name given in full (`\\.\pipe\…`), which a
    /// test's raw clients open as it is; nothing is made in the file system.
    pub fn new(test: &str) -> SocketPath {
        #[cfg(unix)]
        let path =
            std::env::temp_dir().join(format!("ringbell-xp-{}-{test}.sock", std::process::id()));
        #[cfg(windows)]
        let path = PathBuf::from(format!(
            r"\\.\pipe\ringbell-xp-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        SocketPath { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a child's parameter.
    pub fn param(&self) -> String {
        self.path
            .to_str()
            .expect("temp paths are UTF-8 here")
            .to_owned()
    }
}

impl AsRef<Path> for SocketPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whom [`ChildProcess::spawn_as`] runs a child as, and the copy of the test binary it
/// executes.
#[allow(dead_code)] // Only the credentials suite runs children as another user.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// A copy of this test binary that `uid` may execute, in directories it may search.
    pub exe: PathBuf,
}

/// A child process running one role of this test binary. Dropping it kills (SIGKILL) and
/// reaps the child if it still runs.
#[derive(Debug)]
pub struct ChildProcess {
    role: String,
    pid: u32,
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr_reader: Option<JoinHandle<String>>,
    stderr: String,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// The child's process id.
    #[allow(dead_code)] // Only the suites that read a child's `/proc/<pid>` use it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Re-executes this test binary to run only `child_entry`, which runs `role` with
    /// `params` as environment variables. stdin and stdout are pipes for the line protocol
    /// ([`next_line`](Self::next_line), [`send_line`](Self::send_line)); stderr is
    /// collected for failure messages.
    pub fn spawn(role: &str, params: &[(&str, String)]) -> ChildProcess {
        let exe = std::env::current_exe().expect("the path of the test binary");
        ChildProcess::launch(role, params, Command::new(exe))
    }

    /// Like [`spawn`](Self::spawn), but the child runs as `user.uid` / `user.gid` (with no
    /// supplementary groups) and executes `user.exe`, a copy of this test binary that the
    /// user can reach: the build directory may not be. Dropping privileges needs root (or
    /// `CAP_SETUID` and `CAP_SETGID`); without them this panics saying so.
    #[allow(dead_code)] // Only the credentials suite runs children as another user.
    #[cfg(unix)]
    pub fn spawn_as(role: &str, params: &[(&str, String)], user: &RunAs) -> ChildProcess {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(&user.exe);
        // Setting the uid also clears the supplementary groups (`setgroups(0, NULL)`).
        command.uid(user.uid).gid(user.gid);
        ChildProcess::launch(role, params, command)
    }

    /// Starts `command` (this test binary or a copy) as the child running `role`.
    fn launch(role: &str, params: &[(&str, String)], mut command: Command) -> ChildProcess {
        command
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in params {
            command.env(name, value);
        }
        // Register under the lock, so that a watchdog firing meanwhile cannot miss it.
        let mut live = live_children();
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("spawning child `{role}`: {error}"));
        let pid = child.id();
        live.push(pid);
        drop(live);
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr_reader = thread::Builder::new()
            .name(format!("stderr-{role}"))
            .spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
            .expect("spawning a stderr reader");
        ChildProcess {
            role: role.to_owned(),
            pid,
            child,
            stdin,
            stdout,
            stderr_reader: Some(stderr_reader),
            stderr: String::new(),
            status: None,
        }
    }

    /// The next line the child reported (without the prefix). Panics, with the child's
    /// status and stderr, if it exits first.
    pub fn next_line(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            match self.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let diagnostics = self.diagnostics();
                    panic!("child ended before reporting a line: {diagnostics}");
                }
                Ok(_) => {
                    // Not necessarily at the line's start: libtest prints "test child_entry
                    // ... " without a newline before the role runs.
                    if let Some(at) = line.find(CHILD_LINE_PREFIX) {
                        return line[at + CHILD_LINE_PREFIX.len()..].trim_end().to_owned();
                    }
                }
            }
        }
    }

    /// Waits for the child's next line and checks that it is `expected`.
    pub fn expect_line(&mut self, expected: &str) {
        let line = self.next_line();
        if line != expected {
            let diagnostics = self.diagnostics();
            panic!("child reported {line:?}, expected {expected:?}: {diagnostics}");
        }
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        if let Err(error) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            let diagnostics = self.diagnostics();
            panic!("telling the child {line:?}: {error}: {diagnostics}");
        }
    }

    /// Whether the child still runs (it has not exited and was not killed).
    pub fn is_running(&mut self) -> bool {
        self.status.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill(&mut self) -> ExitStatus {
        if self.status.is_none() {
            // The child is not reaped yet, so its pid is still ours to signal.
            let _ = self.child.kill();
        }
        self.reap()
    }

    /// Waits for the child to exit by itself, and reaps it.
    pub fn wait(&mut self) -> ExitStatus {
        self.reap()
    }

    /// Waits for the child and panics, with its stderr, unless it exited with status 0.
    pub fn assert_success(&mut self) {
        let status = self.wait();
        if !status.success() {
            let diagnostics = self.diagnostics();
            panic!("child failed: {diagnostics}");
        }
    }

    /// Role, pid, exit status and stderr, for a failure message. A child that still runs
    /// gets a few seconds to finish (it may be about to report its own failure), then is
    /// killed, so that its stderr is complete (a failing test ends it anyway).
    pub fn diagnostics(&mut self) -> String {
        for _ in 0..500 {
            if !self.is_running() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let status = self.kill();
        if let Some(reader) = self.stderr_reader.take() {
            self.stderr = reader.join().unwrap_or_default();
        }
        format!(
            "child `{}` (pid {}) {status}; its stderr:\n{}",
            self.role, self.pid, self.stderr
        )
    }

    fn reap(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // Wait until the child has exited but leave it a zombie (WNOWAIT): its pid cannot be
        // reused until it is reaped, so the watchdog may still signal it safely. Then
        // unregister it, then reap it. (On Windows the pid stays the child's while
        // `self.child` holds its process handle, whatever it did.)
        #[cfg(unix)]
        {
            let pid = Pid::from_child(&self.child);
            let exited = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
            while let Err(Errno::INTR) = rustix::process::waitid(WaitId::Pid(pid), exited) {}
        }
        live_children().retain(|&live| live != self.pid);
        let status = self.child.wait().expect("reaping a child process");
        self.status = Some(status);
        status
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        self.kill();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
    }
}

/// Accepts the next client, which should be `client`; panics with its diagnostics if not.
pub fn accept_from(server: &Server, client: &mut ChildProcess) -> Connection {
    match server.accept() {
        Ok(conn) => conn,
        Err(error) => {
            let diagnostics = client.diagnostics();
            panic!("accept failed: {error}; {diagnostics}")
        }
    }
}

// ---------------------------------------------------------------------------------------
// The child's side.

/// `.context("what")?` turns any error into the child's failure message.
pub trait Context<T> {
    fn context(self, what: &str) -> Result<T, String>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T, String> {
        self.map_err(|error| format!("{what}: {error}"))
    }
}

/// The body of each test binary's `#[test] fn child_entry`: in an ordinary test run it
/// does nothing (after taking its turn, so that it does not finish while an exclusive
/// test counts the process's mappings); in a child spawned by a test it runs the role
/// named in the environment and exits with 0 on success, 1 on failure.
pub fn run_child_entry(run_role: fn(&str) -> Result<(), String>) {
    let Some(role) = child_role() else {
        let _test = shared_test("child_entry");
        return;
    };
    bound_child_lifetime();
    let code = match run_role(&role) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("child role `{role}` failed: {message}");
            1
        }
    };
    std::process::exit(code);
}

/// The role this process was started for, if it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE_ENV).ok()
}

/// Bounds a child's life even if its parent dies without killing it: on Linux the kernel
/// kills it with its parent (`PR_SET_PDEATHSIG`, which macOS lacks), and a timer thread
/// ends it after [`CHILD_LIFETIME_LIMIT`] in any case.
pub fn bound_child_lifetime() {
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    thread::spawn(|| {
        thread::sleep(CHILD_LIFETIME_LIMIT);
        eprintln!("child lived longer than {CHILD_LIFETIME_LIMIT:?}; exiting");
        std::process::exit(97);
    });
}

/// A field of process `pid`'s `/proc/<pid>/status` in KiB (`VmData`, `VmRSS`, `VmHWM`...).
#[allow(dead_code)] // Only the suites that measure a server from outside use it.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|error| panic!("reading /proc/{pid}/status: {error}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A required parameter of the child's role.
pub fn param(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child parameter {name} is missing"))
}

/// A required numeric parameter of the child's role.
pub fn number_param<T: std::str::FromStr>(name: &str) -> T {
    param(name)
        .parse()
        .unwrap_or_else(|_| panic!("child parameter {name} is not a number"))
}

/// Reports one line to the parent.
pub fn report(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{CHILD_LINE_PREFIX}{line}");
    let _ = stdout.flush();
}

/// Waits for the next line from the parent; `Err` if the parent closed stdin.
fn read_parent_line() -> Result<String, String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) => Err("the parent closed stdin".into()),
        Ok(_) => Ok(line.trim_end().to_owned()),
        Err(error) => Err(format!("reading stdin: {error}")),
    }
}

/// Waits for the parent to send `expected`.
pub fn expect_parent_line(expected: &str) -> Result<(), String> {
    let line = read_parent_line()?;
    if line == expected {
        Ok(())
    } else {
        Err(format!("the parent said {line:?}, expected {expected:?}"))
    }
}

/// Stays alive (doing nothing) until killed; the lifetime bound ends it at the latest.
pub fn sleep_until_killed() -> ! {
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------------------
// The shared segment, as a hostile peer sees it.

/// Offsets in the shared segment (see `src/core/layout.rs`): the ring control blocks start at
/// 256, each is four 128-byte lines (tail, head, readable cell, writable cell), ring 0
/// (client → server) is first, and ring data starts at one page.
pub const RINGS_OFFSET: usize = 256;
pub const RING_CONTROL_LEN: usize = 4 * 128;
pub const DATA_OFFSET: usize = 4096;
pub const CLIENT_TO_SERVER: usize = 0;
pub const SERVER_TO_CLIENT: usize = 1;

/// An atomic type that [`Scribbler::header_word`] can hand out.
pub trait HeaderAtomic {
    /// # Safety
    ///
    /// `ptr` must be aligned for `Self` and valid for atomic accesses for `'a`.
    unsafe fn at<'a>(ptr: *mut u8) -> &'a Self;
}

impl HeaderAtomic for AtomicU32 {
    unsafe fn at<'a>(ptr: *mut u8) -> &'a Self {
        // SAFETY: forwarded from the caller.
        unsafe { AtomicU32::from_ptr(ptr.cast()) }
    }
}

impl HeaderAtomic for AtomicU64 {
    unsafe fn at<'a>(ptr: *mut u8) -> &'a Self {
        // SAFETY: forwarded from the caller.
        unsafe { AtomicU64::from_ptr(ptr.cast()) }
    }
}

/// This process's ringbell segment mappings, as lines of `/proc/self/maps`.
#[cfg(unix)]
#[allow(dead_code)] // Only the suites whose hostile children hold several connections use it.
pub fn segment_mappings() -> Result<Vec<String>, String> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    Ok(maps
        .lines()
        .filter(|line| is_segment_mapping(line))
        .map(str::to_owned)
        .collect())
}

/// On Windows: this process's views that begin with the segment's magic, by start.
#[cfg(windows)]
#[allow(dead_code)] // As above.
pub fn segment_mappings() -> Result<Vec<String>, String> {
    Ok(windows::segment_views(0)
        .into_iter()
        .map(|start| format!("view {start:#x}"))
        .collect())
}

/// Write access to a connection's shared segment, as a hostile peer would use it: a
/// mapping of its own of the same pages, so that it stays valid whatever the connection
/// does (the connection can be used, even mutably, meanwhile).
#[derive(Debug)]
pub struct Scribbler {
    base: NonNull<u8>,
    len: usize,
}

impl Scribbler {
    /// Finds the segment of `conn` (this process's only connection) in `/proc/self/maps`
    /// and maps its pages a second time: mremap(2) with an old size of 0 does that for a
    /// shared mapping. Linux and Windows only: the tests that scribble are marked so
    /// (`LINUX_ONLY`).
    #[cfg(not(any(target_os = "linux", windows)))]
    pub fn find(_conn: &Connection) -> Result<Scribbler, String> {
        Err(LINUX_ONLY.to_owned())
    }

    /// See above.
    #[cfg(target_os = "linux")]
    pub fn find(conn: &Connection) -> Result<Scribbler, String> {
        Self::find_new(conn, &[])
    }

    /// On Windows: the connection's own view of the segment, found by walking this
    /// process's address space (`VirtualQuery`) for the one read-write mapped view that
    /// starts with the segment's magic. No second view: the section's handle is the
    /// library's. The view lives as long as `conn`, which a hostile role keeps open for as
    /// long as it scribbles.
    #[cfg(windows)]
    pub fn find(conn: &Connection) -> Result<Scribbler, String> {
        Self::find_new(conn, &[])
    }

    /// Like [`find`](Self::find), for a process with several connections: the segment of
    /// `conn` is the one mapping not in `before` ([`segment_mappings`] taken just before
    /// `conn` connected).
    #[cfg(not(any(target_os = "linux", windows)))]
    #[allow(dead_code)] // As `segment_mappings`.
    pub fn find_new(_conn: &Connection, _before: &[String]) -> Result<Scribbler, String> {
        Err(LINUX_ONLY.to_owned())
    }

    /// See above.
    #[cfg(target_os = "linux")]
    #[allow(dead_code)] // As `segment_mappings`.
    pub fn find_new(conn: &Connection, before: &[String]) -> Result<Scribbler, String> {
        use rustix::mm::MremapFlags;
        let expected_len = DATA_OFFSET + 2 * conn.ring_capacity();
        let mappings = segment_mappings()?;
        let lines: Vec<&str> = mappings
            .iter()
            .filter(|line| !before.contains(line))
            .map(String::as_str)
            .collect();
        let [line] = lines[..] else {
            return Err(format!(
                "expected one ringbell segment mapping, found {lines:?}"
            ));
        };
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap_or_default();
        let permissions = fields.next().unwrap_or_default();
        let (start, end) = range.split_once('-').ok_or("no address range")?;
        let start = usize::from_str_radix(start, 16).context("parsing the mapping's start")?;
        let end = usize::from_str_radix(end, 16).context("parsing the mapping's end")?;
        if end - start != expected_len || !permissions.starts_with("rw-s") {
            return Err(format!(
                "the segment mapping is not {expected_len} writable shared bytes: {line}"
            ));
        }
        // SAFETY: `start` is the page-aligned start of a live shared mapping (the borrowed
        // connection keeps it mapped during the call). An old size of 0 leaves it alone and
        // makes a new mapping of the same pages, which only this value unmaps.
        let base = unsafe {
            rustix::mm::mremap(
                start as *mut std::ffi::c_void,
                0,
                expected_len,
                MremapFlags::MAYMOVE,
            )
        }
        .context("mapping the segment a second time")?;
        let base = NonNull::new(base.cast::<u8>()).ok_or("mremap returned a null mapping")?;
        Ok(Scribbler {
            base,
            len: expected_len,
        })
    }

    /// See above. On Windows, as [`find`](Self::find) does, the connection's own view.
    #[cfg(windows)]
    #[allow(dead_code)] // As `segment_mappings`.
    pub fn find_new(conn: &Connection, before: &[String]) -> Result<Scribbler, String> {
        let len = DATA_OFFSET + 2 * conn.ring_capacity();
        let views: Vec<usize> = windows::segment_views(len)
            .into_iter()
            .filter(|start| !before.contains(&format!("view {start:#x}")))
            .collect();
        let [base] = views[..] else {
            return Err(format!(
                "expected one new ringbell segment view, found {views:x?}"
            ));
        };
        let base = NonNull::new(base as *mut u8).ok_or("a null view")?;
        Ok(Scribbler { base, len })
    }

    /// The atomic word of type `A` at `offset` in the segment header.
    pub fn header_word<A: HeaderAtomic>(&self, offset: usize) -> &A {
        let size = std::mem::size_of::<A>();
        assert!(
            offset % size == 0 && offset + size <= DATA_OFFSET,
            "a header word"
        );
        // SAFETY: `base..base + len` is our own live, writable shared mapping, unmapped only
        // when `self` is dropped; the word is aligned (the mapping is page-aligned and the
        // offset a multiple of the word's size) and inside the header, whose words everyone
        // accesses only atomically.
        unsafe { A::at(self.base.as_ptr().add(offset)) }
    }

    /// Stores `value` into the 8-byte word at `offset`, as the peer would.
    pub fn store_word(&self, offset: usize, value: u64) {
        // Release, like an honest producer: the bytes written before are visible first.
        self.header_word::<AtomicU64>(offset)
            .store(value, Ordering::Release);
    }

    /// Copies `bytes` into ring data at `offset`.
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert!(
            offset >= DATA_OFFSET && offset + bytes.len() <= self.len,
            "ring data"
        );
        // SAFETY: in bounds of our mapping (see `header_word`). Nobody holds a reference to
        // ring data (the library copies it through raw pointers), and this process's own
        // producer never writes while a hostile role scribbles, so the copy races with
        // nothing here.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.as_ptr().add(offset), bytes.len())
        };
    }
}

// On Windows the view is the connection's (see `find`): nothing to unmap.
#[cfg(unix)]
impl Drop for Scribbler {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is the mapping `find` made, and every reference
        // `header_word` handed out borrowed `self`, so none outlives it.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A frame header as the ring writes it (see `src/core/ring.rs`): length u32 LE, kind byte,
/// flags, two reserved bytes, correlation id u64 LE.
pub fn frame_header(len: u32, kind: u8) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4] = kind;
    header
}

/// The handshake protocol version of this build (`PROTOCOL_VERSION` in
/// `src/handshake/wire.rs`).
pub const PROTOCOL_VERSION: u16 = 6;

/// A hello of protocol `version`, as `src/handshake/wire.rs` encodes it: magic, version u16 LE,
/// kind 1 (hello) u16 LE, then what the client carries as a u32 LE: 0, plain messages.
pub fn hello(version: u16) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0..8].copy_from_slice(b"RINGBELL");
    bytes[8..10].copy_from_slice(&version.to_le_bytes());
    bytes[10..12].copy_from_slice(&1u16.to_le_bytes());
    bytes
}

// ---------------------------------------------------------------------------------------
// Deterministic test data.

pub fn wait_name(wait: WaitStrategy) -> &'static str {
    match wait {
        WaitStrategy::Spin => "spin",
        WaitStrategy::Block => "block",
        _ => "adaptive",
    }
}

/// Every wait strategy, with the default spin budget for `Adaptive`.
pub const ALL_WAITS: [WaitStrategy; 3] = [
    WaitStrategy::Spin,
    WaitStrategy::Adaptive {
        spin: WaitStrategy::DEFAULT_SPIN,
    },
    WaitStrategy::Block,
];

/// Whether a line of `/proc/<pid>/maps` is a ringbell segment's mapping: a memfd named
/// "ringbell" on the Linux backend (`src/sys/linux/memfd.rs`), shown as
/// `/memfd:ringbell (deleted)`; an unlinked shm object named `ringbell-…` on the POSIX
/// backend (`src/sys/posix/shm.rs`), shown as `/dev/shm/ringbell-… (deleted)`. Not a
/// large-message region's (`memfd:ringbell-messages`, `/dev/shm/ringbell-msg-…`): see
/// [`is_region_mapping`].
#[cfg(unix)]
pub fn is_segment_mapping(line: &str) -> bool {
    (line.contains("memfd:ringbell") || line.contains("/dev/shm/ringbell-"))
        && !is_region_mapping(line)
}

/// Whether a line of `/proc/<pid>/maps` is a large-message region's mapping
/// (`src/conn/large.rs`), made on a connection's first message larger than a frame.
#[cfg(unix)]
#[allow(dead_code)] // Only the suites that count regions use it.
pub fn is_region_mapping(line: &str) -> bool {
    line.contains("memfd:ringbell-messages") || line.contains("/dev/shm/ringbell-msg-")
}

/// Lines only in `before` (-) or only in `after` (+): what changed in a list of fds or
/// mappings, for a failure message.
pub fn difference(before: &[String], after: &[String]) -> String {
    let removed = before
        .iter()
        .filter(|line| !after.contains(line))
        .map(|line| format!("- {line}\n"));
    let added = after
        .iter()
        .filter(|line| !before.contains(line))
        .map(|line| format!("+ {line}\n"));
    removed.chain(added).collect()
}

pub fn wait_from_name(name: &str) -> WaitStrategy {
    match name {
        "spin" => WaitStrategy::Spin,
        "block" => WaitStrategy::Block,
        "adaptive" => WaitStrategy::default(),
        other => panic!("unknown wait strategy {other:?}"),
    }
}

/// Marsaglia's xorshift64, seeded through splitmix64 so that consecutive seeds give
/// unrelated streams (and the state is never zero, which xorshift cannot leave).
#[derive(Debug, Clone)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    pub fn new(seed: u64) -> XorShift64 {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift64 { state: z | 1 }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    XorShift64::new(seed).fill(&mut bytes);
    bytes
}

/// Lengths every echo run starts with: empty, tiny, around the largest frame payload of a
/// 4 KiB ring (1008 B), around the ring's size, and the maximum.
const EDGE_LENGTHS: [usize; 17] = [
    0,
    1,
    7,
    8,
    9,
    255,
    256,
    1000,
    1007,
    1008,
    1009,
    2017,
    4095,
    4096,
    4097,
    8192,
    usize::MAX,
];

/// Message `index` of an echo run: after the edge lengths, 90% are 0–256 bytes and 10% are
/// 257 bytes to `max_len`, filled with bytes seeded by the index. The parent regenerates
/// the same sequence to check what its server receives.
pub fn echo_message(index: u64, max_len: usize) -> Vec<u8> {
    let mut rng = XorShift64::new(index);
    let len = match EDGE_LENGTHS.get(index as usize) {
        Some(&len) => len.min(max_len),
        None if rng.next_u64() % 10 == 0 => {
            257 + (rng.next_u64() % (max_len as u64 - 256)) as usize
        }
        None => (rng.next_u64() % 257) as usize,
    };
    let mut message = vec![0u8; len];
    rng.fill(&mut message);
    message
}

/// FNV-1a over a sequence of messages, each preceded by its length, so that moving a byte
/// across a message boundary changes the sum too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    pub fn add(&mut self, message: &[u8]) {
        for &byte in (message.len() as u64).to_le_bytes().iter().chain(message) {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn value(self) -> u64 {
        self.0
    }
}
