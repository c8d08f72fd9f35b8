//! Open-file limits. Each test runs its body in a child process (this test binary, run
//! again with `RINGBELL_FD_LIMIT_CHILD` set), because limits are per process.

// Unix only: it lowers RLIMIT_NOFILE; Windows has no per-process handle limit to hit.
#![cfg(not(windows))]

use std::process::Command;
use std::time::Duration;

use ringbell::{ClientConfig, Connection, Error, Server, ServerConfig};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

const CHILD: &str = "RINGBELL_FD_LIMIT_CHILD";

fn run_in_child(test: &str) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn in_child(test: &str) -> bool {
    std::env::var(CHILD).as_deref() == Ok(test)
}

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "ringbell-fdlimit-{}-{name}.sock",
        std::process::id()
    ))
}

#[test]
fn bind_raises_the_soft_open_files_limit_to_the_hard_limit() {
    let test = "bind_raises_the_soft_open_files_limit_to_the_hard_limit";
    if !in_child(test) {
        return run_in_child(test);
    }
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(64),
            maximum: hard,
        },
    )
    .unwrap();
    let _server = Server::bind(socket_path("raise"), ServerConfig::default()).unwrap();
    assert_eq!(getrlimit(Resource::Nofile).current, hard);
}

#[test]
fn out_of_fds_refuses_new_clients_and_keeps_serving_the_others() {
    let test = "out_of_fds_refuses_new_clients_and_keeps_serving_the_others";
    if !in_child(test) {
        return run_in_child(test);
    }
    // A hard limit this low cannot be raised: the server must run out.
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(48),
            maximum: Some(48),
        },
    )
    .unwrap();
    let path = socket_path("exhaust");
    let server = Server::bind(&path, ServerConfig::default().ring_capacity(4096)).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // Clients in threads of this same process share the limit, so they connect until
    // either side runs out; the server keeps what it accepted.
    let client_path = path.clone();
    let clients = std::thread::spawn(move || {
        let mut connections = Vec::new();
        for _ in 0..40 {
            match Connection::connect(
                &client_path,
                ClientConfig::default().connect_timeout(Duration::from_secs(2)),
            ) {
                Ok(connection) => connections.push(connection),
                Err(_) => break,
            }
        }
        let _ = done_rx.recv();
        connections
    });
    let mut served = Vec::new();
    let refusal = loop {
        match server.accept() {
            Ok(connection) => served.push(connection),
            Err(error) => break error,
        }
    };
    let message = refusal.to_string();
    assert!(
        matches!(&refusal, Error::Io(_) | Error::Handshake { .. }),
        "running out of fds should be an Io or Handshake error: {refusal:?}"
    );
    assert!(
        !served.is_empty(),
        "no client was served before the fds ran out"
    );
    eprintln!("served {} clients, then: {message}", served.len());
    done_tx.send(()).unwrap();
    let mut clients = clients.join().unwrap();
    // Every connection accepted before the limit still works.
    for (server_side, client_side) in served.iter_mut().zip(clients.iter_mut()) {
        client_side.send(b"still here").unwrap();
        let mut buf = Vec::new();
        server_side
            .recv(&mut buf, Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(buf, b"still here");
    }
}

/// The server process runs out of fds; a client in another process (with fds to spare)
/// is told so in the handshake instead of waiting for its connect to time out, and the
/// clients connected before still get their echoes.
#[test]
fn a_client_refused_for_lack_of_fds_is_told_why() {
    let test = "a_client_refused_for_lack_of_fds_is_told_why";
    if in_child(test) {
        // The server: an echo thread per connection, a hard limit it cannot raise.
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(40),
                maximum: Some(40),
            },
        )
        .unwrap();
        let server = Server::bind(
            std::env::var("RB_SOCKET").unwrap(),
            ServerConfig::default().ring_capacity(4096),
        )
        .unwrap();
        println!("listening");
        loop {
            if let Ok(mut connection) = server.accept() {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    while connection.recv(&mut buf, None).is_ok() {
                        if connection.send(&buf).is_err() {
                            break;
                        }
                    }
                });
            }
        }
    }
    let path = socket_path("refused");
    let mut server = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .env("RB_SOCKET", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(server.stdout.take().unwrap()));
    assert!(lines.any(|line| line.unwrap().contains("listening")));
    let mut connected = Vec::new();
    let mut refusal = None;
    for _ in 0..60 {
        let config = ClientConfig::default().connect_timeout(Duration::from_secs(10));
        match Connection::connect(&path, config) {
            Ok(connection) => connected.push(connection),
            Err(error) => {
                refusal = Some(error);
                break;
            }
        }
    }
    let outcome = refusal.map(|error| error.to_string());
    for connection in &mut connected {
        connection.send(b"echo?").unwrap();
        let mut buf = Vec::new();
        connection
            .recv(&mut buf, Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(buf, b"echo?");
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&path);
    let message = outcome.expect("60 clients fit a server with 40 fds?");
    assert!(!connected.is_empty(), "nobody was served");
    assert!(
        message.contains("out of file descriptors"),
        "refused with: {message}"
    );
}
