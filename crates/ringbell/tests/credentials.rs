//! Credentials: clients running under another uid, across real processes.
//!
//! The server runs in this test process (for `root_is_not_special_to_a_server_of_another_uid`,
//! in a child running as `nobody`); the other-uid client is a child that runs as `nobody`
//! (uid and gid 65534), started with [`common::ChildProcess::spawn_as`]. Children run a copy
//! of this test binary kept with the socket in a directory every user can search
//! ([`SharedDir`]), because the build directory need not be reachable by `nobody`.
//!
//! What is proved, test by test, is said in each test's doc comment: how a server refuses a
//! client of another uid with its default configuration (the socket file's mode) and with an
//! allow-list (its `SO_PEERCRED` check), that each refusal is
//! [`Error::PermissionDenied`] on both sides, that the server keeps serving afterwards, and
//! that an allow-listed uid gets a working shared-memory connection.
//!
//! # Who can run these tests
//!
//! Starting a child under another uid needs root (`CAP_SETUID` and `CAP_SETGID`). Run by
//! another user, each test runs itself again inside a user namespace in which it is root and
//! uids 1–65535 map to the user's subordinate uids (`unshare --map-auto --map-root-user`:
//! util-linux 2.38 or later, `newuidmap` and `newgidmap`, and entries in `/etc/subuid` and
//! `/etc/subgid`), and reports the outcome of that run. An unprivileged user namespace
//! without subordinate uids maps a single uid, and with a single uid there is no other
//! user to refuse. If the namespace cannot be made either, the test fails and says why,
//! unless `RINGBELL_SKIP_CREDENTIALS=1` is set: then it writes "SKIPPED" and the reason to
//! stderr, past libtest's output capture, and passes.
//!
//! Each test holds the process's turn exclusively: it writes a copy of the test binary and
//! then executes it, and a child forked meanwhile by a concurrent test would inherit the
//! open copy, making the exec fail with `ETXTBSY`.

// Unix only: its children run as other uids (setuid) and it checks SO_PEERCRED and socket
// file modes; Windows users are SIDs, and the pipe's DACL is tested in sys/windows/tests.rs.
#![cfg(not(windows))]

#[allow(dead_code)]
mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    accept_from, echo_message, exclusive_test, number_param, param, report, Checksum, ChildProcess,
    Context, RunAs, PATIENCE, WATCHDOG_LIMIT,
};
use ringbell::{ClientConfig, Connection, Error, Server, ServerConfig};

/// The uid and gid of `nobody` (and `nogroup`) on Linux.
const NOBODY: u32 = 65534;
/// An allow-listed uid that is neither ours nor `nobody`'s.
const SOME_OTHER_UID: u32 = 12345;
/// Set to `1` to let the tests pass, saying so on stderr, where no child can be started
/// under another uid.
const SKIP_ENV: &str = "RINGBELL_SKIP_CREDENTIALS";
/// Set in a test run again inside a user namespace.
const IN_NAMESPACE_ENV: &str = "RINGBELL_CREDENTIALS_IN_USERNS";
/// What a test run again in a user namespace prints first, so that the outer run can tell
/// a failing test from a namespace that could not be made.
const IN_NAMESPACE_MARKER: &str = "ringbell-credentials: running as root in a user namespace";
/// Ring size for the echoes: small, so that the larger messages go through in chunks.
const RING: usize = 4096;
/// Messages per echo, and the largest: two and a half rings.
const ECHO_MESSAGES: u64 = 200;
const ECHO_MAX_LEN: usize = 10 * 1024;

// =======================================================================================
// The child side.

#[test]
fn child_entry() {
    common::run_child_entry(run_role);
}

fn run_role(role: &str) -> Result<(), String> {
    match role {
        "client" => role_client(),
        "server" => role_server(),
        other => Err(format!("unknown role {other:?}")),
    }
}

/// The variant's name of `error`, for a report line that the parent matches exactly.
fn variant(error: &Error) -> String {
    let debug = format!("{error:?}");
    debug
        .split([' ', '(', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Reports `uid <uid> gid <gid>`, so that the parent knows whom the child runs as.
fn report_credentials() {
    report(&format!(
        "uid {} gid {}",
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    ));
}

/// Reports its credentials, connects to `RB_PATH` within `RB_CONNECT_MS`, and reports
/// `refused <Variant>: <Display text>` (and succeeds: the parent judges the refusal) or
/// `connected`. Connected, it sends [`echo_message`]s 0..`RB_COUNT`, checks each echo byte
/// for byte, and reports `echoed <count> <checksum of the echoes>`.
fn role_client() -> Result<(), String> {
    report_credentials();
    let count: u64 = number_param("RB_COUNT");
    let config = ClientConfig::default()
        .connect_timeout(Duration::from_millis(number_param("RB_CONNECT_MS")));
    let mut conn = match Connection::connect(param("RB_PATH"), config) {
        Ok(conn) => conn,
        Err(error) => {
            report(&format!("refused {}: {error}", variant(&error)));
            return Ok(());
        }
    };
    report("connected");
    let mut echoed = Checksum::default();
    let mut buf = Vec::new();
    for index in 0..count {
        let message = echo_message(index, ECHO_MAX_LEN);
        conn.send(&message)
            .map_err(|error| format!("sending message {index}: {error}"))?;
        conn.recv(&mut buf, Some(PATIENCE))
            .map_err(|error| format!("receiving the echo of message {index}: {error}"))?;
        if buf != message {
            return Err(format!(
                "the echo of message {index} differs: {} bytes sent, {} back",
                message.len(),
                buf.len()
            ));
        }
        echoed.add(&buf);
    }
    report(&format!("echoed {count} {:016x}", echoed.value()));
    Ok(())
}

/// Reports its credentials, binds `RB_PATH` with the default configuration, reports
/// `bound`, then accepts until killed: a refused client is reported as
/// `refused <Variant>: <Display text>`, an accepted one is echoed until it hangs up and
/// reported as `echoed <messages>`.
fn role_server() -> Result<(), String> {
    report_credentials();
    let config = ServerConfig::default().ring_capacity(RING);
    let server = Server::bind(param("RB_PATH"), config).context("binding")?;
    report("bound");
    loop {
        let mut conn = match server.accept() {
            Ok(conn) => conn,
            Err(error) => {
                report(&format!("refused {}: {error}", variant(&error)));
                continue;
            }
        };
        let mut buf = Vec::new();
        let mut count = 0u64;
        loop {
            match conn.recv(&mut buf, None) {
                Ok(_) => {
                    conn.send(&buf).context("echoing")?;
                    count += 1;
                }
                Err(Error::PeerDied) => break,
                Err(error) => return Err(format!("receiving after {count} messages: {error}")),
            }
        }
        report(&format!("echoed {count}"));
    }
}

// =======================================================================================
// Parent-side helpers.

/// A directory every user can search, holding a copy of this test binary that every user
/// can execute and the server's socket. Removed with everything in it on drop.
#[derive(Debug)]
struct SharedDir {
    path: PathBuf,
    exe: PathBuf,
}

impl SharedDir {
    fn new(test: &str) -> SharedDir {
        let temp = std::env::temp_dir();
        for dir in temp.ancestors() {
            let mode = fs::metadata(dir)
                .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
                .mode();
            assert!(
                mode & 0o001 != 0,
                "{} (mode {mode:o}) is not searchable by other users, so `nobody` cannot reach \
                 a socket under it; point TMPDIR at a directory they can reach, such as /tmp",
                dir.display()
            );
        }
        let path = temp.join(format!("ringbell-cred-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        // Explicitly: the umask may have taken bits away.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        let exe = path.join("credentials-test");
        let own = std::env::current_exe().expect("the path of the test binary");
        fs::copy(&own, &exe).unwrap_or_else(|error| {
            panic!("copying {} to {}: {error}", own.display(), exe.display())
        });
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        SharedDir { path, exe }
    }

    /// The server's socket path.
    fn socket(&self) -> PathBuf {
        self.path.join("server.sock")
    }

    /// The path as a child's parameter.
    fn socket_param(&self) -> String {
        self.socket()
            .to_str()
            .expect("temp paths are UTF-8 here")
            .to_owned()
    }

    /// How to run a child as `nobody`.
    fn nobody(&self) -> RunAs {
        RunAs {
            uid: NOBODY,
            gid: NOBODY,
            exe: self.exe.clone(),
        }
    }

    /// A subdirectory that `nobody` owns (mode 0755), for a server running as `nobody` to
    /// bind its socket in; returns the socket path in it.
    fn nobody_socket(&self) -> PathBuf {
        let dir = self.path.join("nobody");
        fs::create_dir(&dir).expect("creating nobody's directory");
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        dir.join("server.sock")
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Writes `line` to stderr past libtest's output capture (which takes only `print!`'s and
/// `eprint!`'s output), so that a skip is never silent.
fn tell(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

/// Why `test` could not run in a user namespace, or how it ended there.
enum InNamespace {
    /// The namespace could not be made (the reason, with `unshare`'s own words).
    Unavailable(String),
    /// The test ran there; its exit status and output.
    Ran(std::process::Output),
}

/// Runs `test` (this binary, `--exact test`) again in a new user namespace where this user
/// is root and uids and gids 1–65535 map to its subordinate ids.
fn run_in_user_namespace(test: &str) -> InNamespace {
    let exe = std::env::current_exe().expect("the path of the test binary");
    let output = Command::new("unshare")
        .args(["--map-auto", "--map-root-user", "--"])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(IN_NAMESPACE_ENV, "1")
        .output();
    match output {
        Err(error) => InNamespace::Unavailable(format!("cannot run `unshare`: {error}")),
        Ok(output) if !String::from_utf8_lossy(&output.stdout).contains(IN_NAMESPACE_MARKER) => {
            InNamespace::Unavailable(format!(
                "`unshare --map-auto --map-root-user` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
        Ok(output) => InNamespace::Ran(output),
    }
}

/// Whether `test` should run its body here: true when this process is root (really, or in
/// the user namespace of a run like this one). Otherwise `test` runs again in a user
/// namespace and its outcome is asserted here; where no namespace can be made, it fails
/// saying why, or with `RINGBELL_SKIP_CREDENTIALS=1` says on stderr that it was skipped.
/// `false` means the test has been dealt with.
fn runs_here_as_root(test: &str) -> bool {
    let euid = rustix::process::geteuid();
    let in_namespace = std::env::var_os(IN_NAMESPACE_ENV).is_some();
    if euid.is_root() {
        if in_namespace {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{IN_NAMESPACE_MARKER}");
            let _ = stdout.flush();
        }
        return true;
    }
    assert!(
        !in_namespace,
        "`unshare --map-root-user` should have made this process root in its user namespace; \
         its euid is {}",
        euid.as_raw()
    );
    let reason = match run_in_user_namespace(test) {
        InNamespace::Ran(output) => {
            assert!(
                output.status.success(),
                "{test} failed in a user namespace ({}):\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            print!("{}", String::from_utf8_lossy(&output.stdout));
            return false;
        }
        InNamespace::Unavailable(reason) => reason,
    };
    let why = format!(
        "{test} needs a child running under another uid, which takes root (CAP_SETUID), or a \
         user namespace with subordinate uids (util-linux 2.38+ `unshare`, `newuidmap`, \
         /etc/subuid and /etc/subgid entries for uid {}). Not root, and {reason}",
        euid.as_raw()
    );
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        tell(&format!("SKIPPED ({SKIP_ENV}=1), NOT PASSED: {why}"));
        return false;
    }
    panic!("{why}\nSet {SKIP_ENV}=1 to skip the credentials tests instead.");
}

/// The permission bits and owner of the socket file at `path`.
fn socket_mode_and_owner(path: &Path) -> (u32, u32) {
    let metadata = fs::symlink_metadata(path).expect("the socket file exists");
    assert!(
        std::os::unix::fs::FileTypeExt::is_socket(&metadata.file_type()),
        "{} is not a socket",
        path.display()
    );
    (metadata.mode() & 0o777, metadata.uid())
}

/// Checks that `child` reports running as `uid` (with gid `uid` too).
fn expect_credentials(child: &mut ChildProcess, uid: u32) {
    child.expect_line(&format!("uid {uid} gid {uid}"));
}

/// Reads `child`'s outcome line and checks that it was refused with
/// `Error::PermissionDenied`; returns the error's Display text.
fn expect_permission_denied(child: &mut ChildProcess) -> String {
    let line = child.next_line();
    match line.strip_prefix("refused PermissionDenied: ") {
        Some(text) => text.to_owned(),
        None => {
            let diagnostics = child.diagnostics();
            panic!("expected the child to be refused with PermissionDenied, it reported {line:?}; {diagnostics}")
        }
    }
}

/// Spawns a client child of `RB_COUNT` echo messages, as `user` or (with `None`) as this
/// process's own user, and checks whom it runs as.
fn spawn_client(
    socket: &str,
    user: Option<&RunAs>,
    count: u64,
    connect_timeout: Duration,
) -> ChildProcess {
    let params = [
        ("RB_PATH", socket.to_owned()),
        ("RB_COUNT", count.to_string()),
        ("RB_CONNECT_MS", connect_timeout.as_millis().to_string()),
    ];
    let mut child = match user {
        Some(user) => ChildProcess::spawn_as("client", &params, user),
        None => ChildProcess::spawn("client", &params),
    };
    let uid = user.map_or_else(|| rustix::process::getuid().as_raw(), |user| user.uid);
    expect_credentials(&mut child, uid);
    child
}

/// Accepts `client` (a `client` child of `messages` echo messages) and echoes for it until
/// it hangs up, checking every message as it arrives, the count, the checksum the child
/// reports, and its exit status.
fn serve_echo(server: &Server, client: &mut ChildProcess, messages: u64) {
    let mut conn = accept_from(server, client);
    client.expect_line("connected");
    let mut buf = Vec::new();
    let mut received = 0u64;
    let mut checksum = Checksum::default();
    loop {
        match conn.recv(&mut buf, Some(PATIENCE)) {
            Ok(_) => {
                if buf != echo_message(received, ECHO_MAX_LEN) {
                    let diagnostics = client.diagnostics();
                    panic!("message {received} arrived altered; {diagnostics}");
                }
                checksum.add(&buf);
                conn.send(&buf).expect("echoing");
                received += 1;
            }
            Err(Error::PeerDied) => break,
            Err(error) => {
                let diagnostics = client.diagnostics();
                panic!("server recv after {received} messages: {error}; {diagnostics}");
            }
        }
    }
    assert_eq!(received, messages, "messages received");
    client.expect_line(&format!("echoed {messages} {:016x}", checksum.value()));
    client.assert_success();
}

// =======================================================================================
// The tests.

/// Default configuration: the socket file is 0600 and owned by the server's uid, so a
/// client running as `nobody` is refused by the file system: `connect` returns
/// `Error::PermissionDenied` without the server accepting anything (no `accept` runs
/// meanwhile, and the next connection the server accepts is a same-uid client's, which it
/// serves through shared memory).
#[test]
fn default_config_refuses_another_uid_at_the_socket_file() {
    let test = "default_config_refuses_another_uid_at_the_socket_file";
    let _test = exclusive_test(test, WATCHDOG_LIMIT);
    if !runs_here_as_root(test) {
        return;
    }
    let dir = SharedDir::new("default");
    let server =
        Server::bind(dir.socket(), ServerConfig::default().ring_capacity(RING)).expect("binding");
    let own_uid = rustix::process::getuid().as_raw();
    assert_eq!(
        socket_mode_and_owner(&dir.socket()),
        (0o600, own_uid),
        "without an allow-list the socket file must be 0600 and the server's"
    );

    // Refused by the file's mode: the answer comes at once, so a short timeout suffices
    // (a client that got through would wait for a welcome and time out instead).
    let mut nobody = spawn_client(
        &dir.socket_param(),
        Some(&dir.nobody()),
        0,
        Duration::from_secs(10),
    );
    let text = expect_permission_denied(&mut nobody);
    println!("nobody's connect: {text}");
    nobody.assert_success();

    let mut own = spawn_client(&dir.socket_param(), None, ECHO_MESSAGES, PATIENCE);
    serve_echo(&server, &mut own, ECHO_MESSAGES);
}

/// An allow-list that does not name `nobody` (`allow_uid(12345)`): the socket file is 0666,
/// so `nobody` reaches the server, whose `SO_PEERCRED` check refuses it: the server's
/// `accept` returns `Error::PermissionDenied` naming uid 65534, the client's `connect`
/// returns `Error::PermissionDenied`, and the server then serves a same-uid client (its own
/// uid stays admitted with an allow-list).
#[test]
fn an_allow_list_without_the_uid_refuses_it_in_the_handshake() {
    let test = "an_allow_list_without_the_uid_refuses_it_in_the_handshake";
    let _test = exclusive_test(test, WATCHDOG_LIMIT);
    if !runs_here_as_root(test) {
        return;
    }
    let dir = SharedDir::new("not_listed");
    let config = ServerConfig::default()
        .ring_capacity(RING)
        .allow_uid(SOME_OTHER_UID);
    let server = Server::bind(dir.socket(), config).expect("binding");
    let own_uid = rustix::process::getuid().as_raw();
    assert_eq!(
        socket_mode_and_owner(&dir.socket()),
        (0o666, own_uid),
        "with an allow-list the socket file must be 0666, so that the server decides"
    );

    let mut nobody = spawn_client(&dir.socket_param(), Some(&dir.nobody()), 0, PATIENCE);
    match server.accept() {
        Err(Error::PermissionDenied { detail }) => {
            assert!(
                detail.contains(&NOBODY.to_string()),
                "the server's refusal should name uid {NOBODY}: {detail}"
            );
            println!("server's accept: {}", Error::PermissionDenied { detail });
        }
        other => {
            let diagnostics = nobody.diagnostics();
            panic!(
                "accept should refuse nobody with PermissionDenied, gave {other:?}; {diagnostics}"
            )
        }
    }
    let text = expect_permission_denied(&mut nobody);
    println!("nobody's connect: {text}");
    nobody.assert_success();

    let mut own = spawn_client(&dir.socket_param(), None, ECHO_MESSAGES, PATIENCE);
    serve_echo(&server, &mut own, ECHO_MESSAGES);
}

/// `allow_uid(12345).allow_uid(65534)`: the uids accumulate, and a client running as
/// `nobody` is admitted and echoes 200 messages of 0 B to 10 KiB (chunked in a 4 KiB ring)
/// through the shared memory, every byte checked on both sides.
#[test]
fn an_allow_listed_uid_is_served_through_shared_memory() {
    let test = "an_allow_listed_uid_is_served_through_shared_memory";
    let _test = exclusive_test(test, WATCHDOG_LIMIT);
    if !runs_here_as_root(test) {
        return;
    }
    let dir = SharedDir::new("listed");
    let config = ServerConfig::default()
        .ring_capacity(RING)
        .allow_uid(SOME_OTHER_UID)
        .allow_uid(NOBODY);
    let server = Server::bind(dir.socket(), config).expect("binding");
    assert_eq!(socket_mode_and_owner(&dir.socket()).0, 0o666);

    let mut nobody = spawn_client(
        &dir.socket_param(),
        Some(&dir.nobody()),
        ECHO_MESSAGES,
        PATIENCE,
    );
    serve_echo(&server, &mut nobody, ECHO_MESSAGES);
}

/// Starts a `server` child running as `nobody` in a directory of its own, and checks that
/// its socket file is 0600 and `nobody`'s; returns it and the socket path.
fn spawn_nobody_server(dir: &SharedDir) -> (ChildProcess, PathBuf) {
    let socket = dir.nobody_socket();
    let socket_param = socket.to_str().expect("UTF-8").to_owned();
    let mut server = ChildProcess::spawn_as("server", &[("RB_PATH", socket_param)], &dir.nobody());
    expect_credentials(&mut server, NOBODY);
    server.expect_line("bound");
    assert_eq!(
        socket_mode_and_owner(&socket),
        (0o600, NOBODY),
        "the socket file must be 0600 and nobody's"
    );
    (server, socket)
}

/// Checks that `server` (a `server` child running as `nobody`) serves a client of its own
/// uid: the next thing it reports is that client's echo, so it reported no refusal before.
fn assert_nobody_server_still_serves(dir: &SharedDir, server: &mut ChildProcess, socket: &Path) {
    let socket = socket.to_str().expect("UTF-8");
    let mut client = spawn_client(socket, Some(&dir.nobody()), ECHO_MESSAGES, PATIENCE);
    client.expect_line("connected");
    let line = client.next_line();
    assert!(
        line.starts_with(&format!("echoed {ECHO_MESSAGES} ")),
        "the client reported {line:?}"
    );
    client.assert_success();
    server.expect_line(&format!("echoed {ECHO_MESSAGES}"));
}

/// Root is not special: a server running as `nobody` with the default configuration has a
/// 0600 socket file that root can connect to anyway (`CAP_DAC_OVERRIDE`), and its
/// `SO_PEERCRED` check refuses root (a client that trusts the server's uid with
/// `ClientConfig::trust_server_uid`): root's `connect` gets `Error::PermissionDenied` and
/// the server's `accept` returns `Error::PermissionDenied`; the server then serves a client
/// of its own uid.
#[test]
fn root_is_not_special_to_a_server_of_another_uid() {
    let test = "root_is_not_special_to_a_server_of_another_uid";
    let _test = exclusive_test(test, WATCHDOG_LIMIT);
    if !runs_here_as_root(test) {
        return;
    }
    let dir = SharedDir::new("root");
    let (mut server, socket) = spawn_nobody_server(&dir);
    let config = ClientConfig::default()
        .connect_timeout(PATIENCE)
        .trust_server_uid(NOBODY);
    match Connection::connect(&socket, config) {
        Err(error @ Error::PermissionDenied { .. }) => println!("root's connect: {error}"),
        other => {
            let diagnostics = server.diagnostics();
            panic!("root's connect should give PermissionDenied, gave {other:?}; {diagnostics}")
        }
    }
    // The server's own check refused root, not the file system.
    let text = expect_permission_denied(&mut server);
    println!("server's accept: {text}");
    assert_nobody_server_still_serves(&dir, &mut server, &socket);
}

/// A client checks the server's uid before it sends a byte: root's client, with the default
/// configuration (which trusts only its own uid and root), refuses a server running as
/// `nobody` with `Error::PermissionDenied` naming uid 65534. The server sees a connection
/// closed without a byte, which it passes over without an error, and serves on.
#[test]
fn a_client_refuses_a_server_running_as_an_untrusted_uid() {
    let test = "a_client_refuses_a_server_running_as_an_untrusted_uid";
    let _test = exclusive_test(test, WATCHDOG_LIMIT);
    if !runs_here_as_root(test) {
        return;
    }
    let dir = SharedDir::new("untrusted");
    let (mut server, socket) = spawn_nobody_server(&dir);
    let config = ClientConfig::default().connect_timeout(PATIENCE);
    match Connection::connect(&socket, config) {
        Err(Error::PermissionDenied { detail }) => {
            assert!(
                detail.contains(&NOBODY.to_string()),
                "the refusal should name the server's uid {NOBODY}: {detail}"
            );
            println!("root's connect: {}", Error::PermissionDenied { detail });
        }
        other => {
            let diagnostics = server.diagnostics();
            panic!("root's connect should give PermissionDenied, gave {other:?}; {diagnostics}")
        }
    }
    assert_nobody_server_still_serves(&dir, &mut server, &socket);
}
