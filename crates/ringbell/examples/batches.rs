//! Batches: a sender hands the library 64 small messages at a time with `send_batch`, and
//! a receiver takes whatever has arrived with `recv_batch`, reusing one `Batch`. Both ends
//! run in this process, on two threads, over a real connection (shared memory and its
//! socket); it prints how many messages per second went through.
//!
//! ```sh
//! cargo run --release -p ringbell --example batches            # 20 million messages
//! cargo run --release -p ringbell --example batches -- 1000000  # fewer
//! ```
//!
//! Messages of up to 1 KiB travel packed several to a frame of the ring (see
//! `Connection::send_batch`); the receiver still gets them one by one.

use std::time::Instant;

use ringbell::{Batch, ClientConfig, Connection, Error, Server, ServerConfig};

/// Messages per `send_batch`.
const BATCH: usize = 64;
/// Bytes per message.
const SIZE: usize = 64;

fn main() -> Result<(), Error> {
    let total: u64 = match std::env::args().nth(1) {
        Some(count) => count.parse().expect("the message count is a number"),
        None => 20_000_000,
    };
    let path = std::env::temp_dir().join(format!("ringbell-batches-{}.sock", std::process::id()));
    let server = Server::bind(&path, ServerConfig::default())?;
    let receiver = std::thread::spawn(move || -> Result<u64, Error> {
        let mut conn = server.accept()?;
        let mut batch = Batch::new();
        let mut received = 0u64;
        while received < total {
            received += conn.recv_batch(&mut batch, 1024, None)? as u64;
            for message in &batch {
                assert_eq!(message.len(), SIZE, "a message arrived altered");
            }
        }
        Ok(received)
    });

    let mut conn = Connection::connect(&path, ClientConfig::default())?;
    let message = [7u8; SIZE];
    let batch: Vec<&[u8]> = vec![&message; BATCH];
    let started = Instant::now();
    let mut left = total;
    while left > 0 {
        let now = left.min(BATCH as u64) as usize;
        conn.send_batch(&batch[..now])?;
        left -= now as u64;
    }
    let received = receiver.join().expect("the receiver panicked")?;
    let elapsed = started.elapsed();
    println!(
        "{received} messages of {SIZE} B in batches of {BATCH}: {:.2} s, {:.1} M messages/s",
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64() / 1e6
    );
    Ok(())
}
