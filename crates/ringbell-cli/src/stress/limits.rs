//! Limits of a stress run's processes: the backstop that ends a parent hung well past
//! `--timeout`, and the soft limit on open files that the server and client processes
//! raise to the hard limit.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

/// If the parent itself hangs past `--timeout` by this much, a watchdog thread ends the
/// process (and, through their parent-death signal, every child).
pub(super) const BACKSTOP_GRACE: Duration = Duration::from_secs(15);

/// Ends the process if the run hangs well past `--timeout` despite every wait being
/// bounded; the children, tied to us by their parent-death signal, go with it.
pub(super) struct Backstop {
    _disarm: mpsc::Sender<()>,
}

impl Backstop {
    pub(super) fn arm(limit: Duration) -> Backstop {
        let (disarm, armed) = mpsc::channel::<()>();
        let spawned = thread::Builder::new()
            .name("stress-backstop".into())
            .spawn(move || {
                if armed.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
                    eprintln!(
                        "ringbell: error: the stress run hung for {limit:?}; stopping every process"
                    );
                    std::process::exit(2);
                }
            });
        // Without the thread, the bounded waits still end the run.
        drop(spawned);
        Backstop { _disarm: disarm }
    }
}

/// Raises this process's soft limit on open files to its hard limit (as the library's
/// servers do at bind), for the client processes' many connections and the Unix-socket
/// server. Failing that, the limit stays, and the error that hits it says so.
///
/// Windows has no such limit on handles: there this does nothing.
pub fn raise_fd_limit() {
    #[cfg(unix)]
    raise_nofile();
}

#[cfg(unix)]
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}
