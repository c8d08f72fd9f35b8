//! Both ends in one process (threads): the quickest check that the pieces fit. The
//! cross-process suites are in `cross_process.rs`.

use ringbell::{ClientConfig, Connection, Error, Server, ServerConfig, WaitStrategy};
use std::time::Duration;

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ringbell-smoke-{}-{name}.sock", std::process::id()))
}

#[test]
fn echo_small_and_chunked_messages_in_process() {
    for wait in [
        WaitStrategy::Spin,
        WaitStrategy::default(),
        WaitStrategy::Block,
    ] {
        let path = socket_path("echo");
        let server = Server::bind(
            &path,
            ServerConfig::default().ring_capacity(1024).wait(wait),
        )
        .unwrap();
        let echo = std::thread::spawn(move || {
            let mut conn = server.accept().unwrap();
            let mut buf = Vec::new();
            loop {
                match conn.recv(&mut buf, None) {
                    Ok(_) => conn.send(&buf).unwrap(),
                    Err(Error::PeerDied) => break,
                    Err(other) => panic!("server: {other}"),
                }
            }
        });
        let mut conn = Connection::connect(&path, ClientConfig::default().wait(wait)).unwrap();
        let mut buf = Vec::new();
        for len in [0usize, 1, 7, 100, 239, 240, 241, 1000, 5000, 3, 70_000] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            conn.send(&msg).unwrap();
            let n = conn.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
            assert_eq!(n, len);
            assert_eq!(buf, msg);
        }
        drop(conn);
        echo.join().unwrap();
    }
}

/// `send_value` encodes straight into the ring (values that fit a frame) or through a
/// buffer, in chunks (larger ones); both arrive as the value that was sent, and a value
/// that cannot be encoded sends nothing.
#[cfg(feature = "codec")]
#[test]
fn typed_values_small_and_chunked_arrive_as_sent() {
    let path = socket_path("values");
    let server = Server::bind(&path, ServerConfig::default().ring_capacity(1024)).unwrap();
    let echo = std::thread::spawn(move || {
        let mut conn = server.accept().unwrap();
        let mut buf = Vec::new();
        loop {
            match conn.recv(&mut buf, None) {
                Ok(_) => conn.send(&buf).unwrap(),
                Err(Error::PeerDied) => break,
                Err(other) => panic!("server: {other}"),
            }
        }
    });
    let mut conn = Connection::connect(&path, ClientConfig::default()).unwrap();
    let mut buf = Vec::new();
    for len in [0usize, 3, 200, 239, 1000, 5000] {
        let value: (String, Vec<u32>) = ("x".repeat(len % 7), (0..len as u32).collect());
        conn.send_value(&value).unwrap();
        let back: (String, Vec<u32>) = conn
            .recv_value(&mut buf, Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(back, value);
    }
    // postcard refuses a sequence of unknown length, which a hand-written `Serialize`
    // can ask for: nothing is sent, and the connection goes on.
    struct Unsized;
    impl serde::Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            serializer.serialize_seq(None)?.end()
        }
    }
    assert!(matches!(
        conn.send_value(&Unsized),
        Err(Error::Codec { .. })
    ));
    conn.send_value(&7u8).unwrap();
    assert_eq!(
        conn.recv_value::<u8>(&mut buf, Some(Duration::from_secs(10)))
            .unwrap(),
        7
    );
    drop(conn);
    echo.join().unwrap();
}
