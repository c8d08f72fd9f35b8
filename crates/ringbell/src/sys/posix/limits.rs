//! Running out of fds: how a server raises its limit, and how it recognises the error.
//! See getrlimit(2).

use std::io;

use rustix::io::Errno;

/// What ran out, in the words of an error message.
pub(crate) const OUT_OF_HANDLES: &str = "out of file descriptors (RLIMIT_NOFILE)";

/// How to get more, in the words of an error message or a log line.
pub(crate) const RAISE_LIMIT_HINT: &str =
    "raise RLIMIT_NOFILE (`ulimit -n`, or LimitNOFILE= in a systemd unit) to serve more";

/// Raises this process's soft limit on open files (`RLIMIT_NOFILE`) to its hard limit, and
/// returns the limit now in force (`None`: unlimited). A server holds three fds per
/// connection, and the usual soft limit of 1,024 would stop it near 300 clients.
pub(crate) fn raise_resource_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// Whether `error` says the process or the system ran out of fds.
pub(crate) fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(code) if code == Errno::MFILE.raw_os_error() || code == Errno::NFILE.raw_os_error())
}
