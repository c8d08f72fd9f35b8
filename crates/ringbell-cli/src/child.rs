//! Peer processes: the demo's children, started from this same executable and killed and
//! reaped on every path, and the children's side of that bargain (exit with the parent).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

#[cfg(unix)]
use rustix::process::{getppid, Pid};

use crate::error::{CliError, Context};

/// What a server or peer prints to stdout once it accepts connections.
pub const LISTENING_PREFIX: &str = "listening on ";

/// A running child process. Dropping it kills the child (if it still runs) and reaps it,
/// so no path out of the demo, error or panic, leaves a process behind.
#[derive(Debug)]
pub struct PeerProcess {
    name: String,
    child: Child,
    /// Our end of the child's stdin, for children that take commands (see `spawn_talking`).
    stdin: Option<ChildStdin>,
    /// Reads the child's stdout to the end, so that the child never blocks on a full pipe.
    stdout_drain: Option<JoinHandle<()>>,
}

/// What a child started with [`PeerProcess::spawn_talking`] printed: a line, then, once, the
/// end of its output (it exited, or closed its stdout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildOutput<T> {
    /// One line of the child's stdout, without its line ending.
    Line(T, String),
    /// The child's stdout reached its end.
    Closed(T),
}

/// Starts peers from this same executable, each pinned to the peer CPU (if any) and tied
/// to this process's life with `--parent-pid`.
#[derive(Debug, Clone)]
pub struct PeerLauncher {
    exe: PathBuf,
    peer_cpu: Option<usize>,
}

impl PeerLauncher {
    /// Peers run `std::env::current_exe()`, on `peer_cpu` if given.
    pub fn new(peer_cpu: Option<usize>) -> Result<PeerLauncher, CliError> {
        let exe = std::env::current_exe()
            .context("finding the ringbell executable to start peers from")?;
        Ok(PeerLauncher { exe, peer_cpu })
    }

    /// The same launcher, its peers pinned to `peer_cpu` instead (`None`: not pinned,
    /// so each peer inherits the CPU mask of the thread that starts it).
    #[cfg_attr(
        windows,
        allow(dead_code, reason = "only `bench`, Unix's for now, uses it")
    )]
    pub fn on_cpu(&self, peer_cpu: Option<usize>) -> PeerLauncher {
        PeerLauncher {
            exe: self.exe.clone(),
            peer_cpu,
        }
    }

    /// `ringbell <args…> --parent-pid <ours> [--cpu <peer cpu>]`, with stdin closed and
    /// stderr shared with ours (so that a peer's error reaches the user).
    pub fn command(&self, args: &[OsString]) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .arg("--parent-pid")
            .arg(std::process::id().to_string());
        if let Some(cpu) = self.peer_cpu {
            command.arg("--cpu").arg(cpu.to_string());
        }
        command.stdin(Stdio::null()).stderr(Stdio::inherit());
        command
    }
}

impl PeerProcess {
    /// Starts `command` with stdout discarded.
    pub fn spawn(name: &str, mut command: Command) -> Result<PeerProcess, CliError> {
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .context(format_args!("starting the {name} process"))?;
        Ok(PeerProcess {
            name: name.to_owned(),
            child,
            stdin: None,
            stdout_drain: None,
        })
    }

    /// Starts `command` with its stdin and stdout piped: every line it prints arrives on
    /// `output` as [`ChildOutput::Line`] tagged with `tag`, then [`ChildOutput::Closed`];
    /// [`write_line`](Self::write_line) talks to it. Many children can share one channel,
    /// so that a parent waits for all of them in one place.
    pub fn spawn_talking<T: Clone + Send + 'static>(
        name: &str,
        mut command: Command,
        tag: T,
        output: mpsc::Sender<ChildOutput<T>>,
    ) -> Result<PeerProcess, CliError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context(format_args!("starting the {name} process"))?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        // From here on, `process` kills the child if we return early.
        let mut process = PeerProcess {
            name: name.to_owned(),
            child,
            stdin,
            stdout_drain: None,
        };
        let stdout = stdout.ok_or_else(|| CliError::new("the child's stdout was not piped"))?;
        let drain = thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if output.send(ChildOutput::Line(tag.clone(), line)).is_err() {
                        // Nobody listens any more: the parent is cleaning up, and the
                        // child is about to be killed.
                        return;
                    }
                }
                let _ = output.send(ChildOutput::Closed(tag));
            })
            .context("starting a thread to read a child's output")?;
        process.stdout_drain = Some(drain);
        Ok(process)
    }

    /// Writes `line` and a newline to the child's stdin (of a child from `spawn_talking`).
    pub fn write_line(&mut self, line: &str) -> Result<(), CliError> {
        let name = &self.name;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| CliError::new(format!("the {name} process takes no input")))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .context(format_args!("writing to the {name} process"))
    }

    /// Starts `command` and waits until it prints its `listening on …` line.
    pub fn spawn_listening(
        name: &str,
        mut command: Command,
        timeout: Duration,
    ) -> Result<PeerProcess, CliError> {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .context(format_args!("starting the {name} process"))?;
        let stdout = child.stdout.take();
        // From here on, `process` kills the child if we return early.
        let mut process = PeerProcess {
            name: name.to_owned(),
            child,
            stdin: None,
            stdout_drain: None,
        };
        let stdout = stdout.ok_or_else(|| CliError::new("the child's stdout was not piped"))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let drain = thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                let mut ready_tx = Some(ready_tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with(LISTENING_PREFIX) {
                        if let Some(ready_tx) = ready_tx.take() {
                            let _ = ready_tx.send(());
                        }
                    }
                }
            })
            .context("starting a thread to read a child's output")?;
        process.stdout_drain = Some(drain);
        match ready_rx.recv_timeout(timeout) {
            Ok(()) => Ok(process),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(CliError::new(format!(
                "the {name} process did not start listening within {timeout:?}"
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = process.child.wait().context("waiting for a child")?;
                Err(CliError::new(format!(
                    "the {name} process exited before it started listening ({})",
                    status
                )))
            }
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's process handle, to wait on beside something else.
    #[cfg(windows)]
    pub fn process_handle(&self) -> std::os::windows::io::BorrowedHandle<'_> {
        std::os::windows::io::AsHandle::as_handle(&self.child)
    }

    /// `Err` if the child has exited: a caller waiting for it to answer should give up.
    pub fn check_alive(&mut self) -> Result<(), CliError> {
        match self.child.try_wait().context("checking a child")? {
            None => Ok(()),
            Some(status) => Err(CliError::new(format!(
                "the {} process exited while we waited for it ({})",
                self.name, status
            ))),
        }
    }

    /// Waits up to `timeout` for the child to exit by itself, and checks that it succeeded.
    pub fn finish(mut self, timeout: Duration) -> Result<(), CliError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for a child")? {
                if status.success() {
                    return Ok(());
                }
                return Err(CliError::new(format!(
                    "the {} process failed ({})",
                    self.name, status
                )));
            }
            if Instant::now() >= deadline {
                return Err(CliError::new(format!(
                    "the {} process did not exit within {timeout:?}",
                    self.name
                )));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        // Killing a child that has exited but is not reaped yet is harmless, and `wait`
        // then reaps it. Errors here cannot be handled better than by moving on.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.stdout_drain.take() {
            // The pipe is closed now that the child is gone, so the thread ends.
            let _ = drain.join();
        }
    }
}

/// A child's view of its parent, for peers that must not outlive the demo.
#[derive(Debug, Clone)]
pub struct ParentWatch {
    /// Unix: the parent's pid, compared with `getppid` (a re-parented child sees another).
    #[cfg(unix)]
    parent: i32,
    /// Windows: the parent process itself, opened to wait on (a process has no parent to
    /// lose there: Windows never re-parents, so the parent's own handle is what tells).
    #[cfg(windows)]
    parent: std::sync::Arc<crate::windows::Process>,
}

impl ParentWatch {
    /// Arranges for this process to be killed when its parent dies (see
    /// [`exit_with_parent`]), then checks that `parent_pid` is still the parent (it may
    /// have died before we asked).
    pub fn arm(parent_pid: u32) -> Result<ParentWatch, CliError> {
        #[cfg(unix)]
        let watch = ParentWatch {
            parent: i32::try_from(parent_pid)
                .map_err(|_| CliError::new(format!("{parent_pid} is not a process id")))?,
        };
        #[cfg(windows)]
        let watch = {
            let parent = crate::windows::Process::open(parent_pid)
                .context(format_args!("opening the parent process {parent_pid}"))?;
            // A parent that died before we looked may have left its pid to a newer process,
            // which `getppid` would tell on Unix; here its creation time does: our parent
            // was created before us.
            let (theirs, ours) = (
                parent
                    .created()
                    .context("reading the parent's creation time")?,
                crate::windows::this_process_created().context("reading our creation time")?,
            );
            if theirs > ours {
                return Err(CliError::new(format!(
                    "the parent process {parent_pid} has already exited (its pid is another \
                     process's now)"
                )));
            }
            ParentWatch {
                parent: std::sync::Arc::new(parent),
            }
        };
        exit_with_parent(watch.clone())?;
        if !watch.parent_alive() {
            return Err(CliError::new(format!(
                "the parent process {parent_pid} has already exited"
            )));
        }
        Ok(watch)
    }

    /// Whether the parent still runs (if it died, we were re-parented).
    #[cfg(unix)]
    pub fn parent_alive(&self) -> bool {
        Pid::as_raw(getppid()) == self.parent
    }

    /// Whether the parent still runs. A failed look counts as alive: the watch thread
    /// (see [`exit_with_parent`]) still ends this process when the parent goes.
    #[cfg(windows)]
    pub fn parent_alive(&self) -> bool {
        !matches!(self.parent.wait_exit(Some(Duration::ZERO)), Ok(true))
    }

    /// The parent process, to wait on beside something else.
    #[cfg(windows)]
    pub fn process(&self) -> &crate::windows::Process {
        &self.parent
    }

    /// `Err` if the parent is gone: a peer waiting for it should stop.
    pub fn check(&self) -> Result<(), CliError> {
        if self.parent_alive() {
            Ok(())
        } else {
            Err(CliError::new("the parent process exited; stopping"))
        }
    }
}

/// Asks the kernel to SIGKILL this process when its parent dies (`PR_SET_PDEATHSIG`, see
/// prctl(2)).
///
/// The kernel fires the signal when the parent *thread* that spawned us exits; the demo
/// spawns every child from its main thread, which lives as long as the demo.
#[cfg(target_os = "linux")]
fn exit_with_parent(_watch: ParentWatch) -> Result<(), CliError> {
    use rustix::process::{set_parent_process_death_signal, Signal};
    set_parent_process_death_signal(Some(Signal::KILL))
        .context("asking to be stopped when the parent exits")
}

/// How often the stand-in for the parent-death signal looks for the parent.
#[cfg(all(unix, not(target_os = "linux")))]
const PARENT_POLL: Duration = Duration::from_millis(100);

/// Stops this process, as `SIGKILL` would, soon after its parent dies.
///
/// macOS has no parent-death signal, so a thread stands in for it: every
/// [`PARENT_POLL`] it checks whether we were re-parented, and if so kills this process.
/// The child thus outlives its parent by at most that long, and wakes ten times a second
/// meanwhile: too little to show in a measurement, and the idle-CPU figures that could
/// see it are left out on this OS anyway (see `crate::idle`). A kqueue `EVFILT_PROC`
/// `NOTE_EXIT` watch on the parent would wake only once, but rustix's `kevent` is
/// `unsafe`, and this crate keeps `unsafe` to `shm.rs` (and, on Windows, `windows.rs`).
///
/// The thread starts before `ProcessArgs::apply` would pin this process, which would
/// leave it unpinned; but nothing is pinned where this runs (see `crate::affinity`).
#[cfg(all(unix, not(target_os = "linux")))]
fn exit_with_parent(watch: ParentWatch) -> Result<(), CliError> {
    use rustix::process::{getpid, kill_process, Signal};
    thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || loop {
            thread::sleep(PARENT_POLL);
            if !watch.parent_alive() {
                // Like the signal Linux would send: no destructors, no exit handlers. If
                // the kill fails there is nothing better than to exit.
                let _ = kill_process(getpid(), Signal::KILL);
                std::process::exit(1);
            }
        })
        .map(drop)
        .context("starting the thread that stops this process with its parent")
}

/// Stops this process soon after its parent dies, as Linux's parent-death signal would.
///
/// Windows has no such signal (a job object that kills its processes when its last handle
/// closes would do it, but the parent would have to make one, and a job cannot be left
/// once joined). A thread waits on the parent's process handle instead, asleep until the
/// parent ends, so it costs nothing meanwhile; then it exits this process at once. The
/// thread starts before `ProcessArgs::apply` pins this process, but Windows pins a
/// process's every thread (`SetProcessAffinityMask`), this one too.
#[cfg(windows)]
fn exit_with_parent(watch: ParentWatch) -> Result<(), CliError> {
    thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            // Only an ended parent ends the wait; a failed wait leaves this process to the
            // parent's own cleanup (it kills its children on every path).
            if let Ok(true) = watch.parent.wait_exit(None) {
                // As SIGKILL would: no exit handlers, no DLL detach.
                crate::windows::terminate_this_process(1);
            }
        })
        .map(drop)
        .context("starting the thread that stops this process with its parent")
}

/// Spawns the peer with exactly `inherited` handed down: each is made inheritable for this
/// spawn only, then not again, on every path (our copies are closed by the caller's drop).
/// Windows hands a new process every inheritable handle of ours, and std's own lock around
/// `CreateProcess` does not cover this window, so no other thread of ours may start
/// processes meanwhile; none does: every child of the tool is started from its main thread
/// (the invariant the Unix `spawn_inheriting` relies on too).
#[cfg(windows)]
pub fn spawn_inheriting_handles(
    launcher: &PeerLauncher,
    name: &str,
    args: &[OsString],
    inherited: &[std::os::windows::io::BorrowedHandle<'_>],
) -> Result<PeerProcess, CliError> {
    /// Clears the inherit flag of every handle it set, however the spawn went.
    struct Inheriting<'a>(Vec<std::os::windows::io::BorrowedHandle<'a>>);
    impl Drop for Inheriting<'_> {
        fn drop(&mut self) {
            for handle in &self.0 {
                // A failure leaves one handle inheritable until the caller closes it, which
                // it does at once; nothing better can be done here.
                let _ = crate::windows::set_inheritable(*handle, false);
            }
        }
    }
    let mut inheriting = Inheriting(Vec::with_capacity(inherited.len()));
    for handle in inherited {
        crate::windows::set_inheritable(*handle, true)
            .context("letting the peer inherit its handles")?;
        inheriting.0.push(*handle);
    }
    let spawned = PeerProcess::spawn(name, launcher.command(args));
    drop(inheriting);
    spawned
}
