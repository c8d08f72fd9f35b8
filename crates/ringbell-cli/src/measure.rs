//! The timed loops shared by `ping` and `demo`, over any [`IpcTransport`]: a ringbell
//! [`Connection`](ringbell::Connection) or a byte-stream baseline, measured the same way.
//!
//! * Latency: ping-pong against an echo server. Each message carries its round number,
//!   every echo is compared byte for byte, and every round trip goes into the histogram.
//! * Throughput: a stream of messages to a sink server, closed by an empty message that
//!   the sink answers with the number of messages it counted, which must match.

use std::time::{Duration, Instant};

use ringbell::IpcTransport;

use crate::error::CliError;
use crate::stats::{new_histogram, record, LatencyRun, ThroughputRun};

/// How long the first echo, or a sink's count, may take. It bounds the wait for a server
/// that is up but does not answer (wrong mode). Other echoes are awaited without a
/// deadline: the transports report a dead peer themselves, and a deadline would add a
/// clock read to every timed round trip.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// `warmup` untimed round trips, then `count` timed ones, of `size`-byte messages.
pub fn round_trips<T: IpcTransport>(
    transport: &mut T,
    size: usize,
    warmup: u64,
    count: u64,
) -> Result<LatencyRun, CliError> {
    let mut message = patterned_message(size);
    let mut reply = Vec::with_capacity(size);
    for round in 0..warmup {
        stamp_round(&mut message, round);
        transport.send(&message)?;
        let len = transport.recv(&mut reply, first_reply_timeout(round))?;
        verify_echo(&message, &reply[..len], round)?;
    }
    let mut histogram = new_histogram();
    let started = Instant::now();
    for round in warmup..warmup + count {
        stamp_round(&mut message, round);
        let round_trip_start = Instant::now();
        transport.send(&message)?;
        let len = transport.recv(&mut reply, first_reply_timeout(round))?;
        let round_trip = round_trip_start.elapsed();
        verify_echo(&message, &reply[..len], round)?;
        record(&mut histogram, round_trip);
    }
    Ok(LatencyRun {
        histogram,
        elapsed: started.elapsed(),
    })
}

/// `count` timed round trips of `size`-byte messages, one starting every `interval` (on
/// a fixed schedule: a late one does not push the next back), as an editor sends: the
/// wait for each reply starts from a side that has slept for most of the interval. Two
/// untimed ones first.
#[cfg_attr(
    windows,
    allow(dead_code, reason = "only `bench`, Unix's for now, uses it")
)]
pub fn paced_round_trips<T: IpcTransport>(
    transport: &mut T,
    size: usize,
    count: u64,
    interval: Duration,
) -> Result<LatencyRun, CliError> {
    let mut message = patterned_message(size);
    let mut reply = Vec::with_capacity(size);
    let mut histogram = new_histogram();
    let started = Instant::now();
    let mut next = started;
    for round in 0..count + 2 {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += interval;
        stamp_round(&mut message, round);
        let round_trip_start = Instant::now();
        transport.send(&message)?;
        let len = transport.recv(&mut reply, Some(REPLY_TIMEOUT))?;
        let round_trip = round_trip_start.elapsed();
        verify_echo(&message, &reply[..len], round)?;
        if round >= 2 {
            record(&mut histogram, round_trip);
        }
    }
    Ok(LatencyRun {
        histogram,
        elapsed: started.elapsed(),
    })
}

/// `warmup` untimed messages, then `count` timed ones, of `size` bytes each, one way.
/// The clock stops when the sink confirms it received all of them.
pub fn one_way<T: IpcTransport>(
    transport: &mut T,
    size: usize,
    warmup: u64,
    count: u64,
) -> Result<ThroughputRun, CliError> {
    one_way_in(transport, size, warmup, count, Sending::OneByOne)
}

/// [`one_way`], the messages sent `batch` at a time with
/// [`send_batch`](IpcTransport::send_batch) (the last batch may be shorter).
pub fn one_way_batched<T: IpcTransport>(
    transport: &mut T,
    size: usize,
    warmup: u64,
    count: u64,
    batch: usize,
) -> Result<ThroughputRun, CliError> {
    if batch == 0 {
        return Err(CliError::new("a batch needs at least one message"));
    }
    one_way_in(transport, size, warmup, count, Sending::Batches(batch))
}

/// How [`one_way_in`] sends.
#[derive(Debug, Clone, Copy)]
enum Sending {
    OneByOne,
    Batches(usize),
}

fn one_way_in<T: IpcTransport>(
    transport: &mut T,
    size: usize,
    warmup: u64,
    count: u64,
    sending: Sending,
) -> Result<ThroughputRun, CliError> {
    if size == 0 {
        return Err(CliError::new(
            "one-way messages need at least 1 byte: an empty message asks the sink for its count",
        ));
    }
    let message = patterned_message(size);
    let mut reply = Vec::with_capacity(8);
    if warmup > 0 {
        stream_and_confirm(transport, &message, warmup, sending, &mut reply)?;
    }
    let started = Instant::now();
    stream_and_confirm(transport, &message, count, sending, &mut reply)?;
    Ok(ThroughputRun {
        messages: count,
        message_size: size,
        elapsed: started.elapsed(),
    })
}

fn stream_and_confirm<T: IpcTransport>(
    transport: &mut T,
    message: &[u8],
    count: u64,
    sending: Sending,
    reply: &mut Vec<u8>,
) -> Result<(), CliError> {
    match sending {
        Sending::OneByOne => {
            for _ in 0..count {
                transport.send(message)?;
            }
        }
        Sending::Batches(batch) => {
            let full: Vec<&[u8]> = vec![message; batch];
            let mut left = count;
            while left > 0 {
                let now = left.min(batch as u64) as usize;
                transport.send_batch(&full[..now])?;
                left -= now as u64;
            }
        }
    }
    confirm_count(transport, count, reply)
}

/// Asks the sink for its count (an empty message) and checks it is `count`.
fn confirm_count<T: IpcTransport>(
    transport: &mut T,
    count: u64,
    reply: &mut Vec<u8>,
) -> Result<(), CliError> {
    transport.send(&[])?;
    // The sink has at most a ring (or socket buffer) full left to count when the last send
    // returns, so a bounded wait costs nothing and catches a server in the wrong mode.
    let len = transport.recv(reply, Some(REPLY_TIMEOUT))?;
    let counted = <[u8; 8]>::try_from(&reply[..len])
        .map(u64::from_le_bytes)
        .map_err(|_| {
            CliError::new(format!(
                "the sink answered with {len} bytes instead of an 8-byte count; \
                 is the server in --mode sink?"
            ))
        })?;
    if counted != count {
        return Err(CliError::new(format!(
            "the sink counted {counted} messages, but {count} were sent"
        )));
    }
    Ok(())
}

fn first_reply_timeout(round: u64) -> Option<Duration> {
    (round == 0).then_some(REPLY_TIMEOUT)
}

/// A message whose bytes differ from one position to the next, so that an echo that
/// shifts, truncates or mixes up bytes does not compare equal.
fn patterned_message(size: usize) -> Vec<u8> {
    (0..size).map(|index| (index * 31 + 7) as u8).collect()
}

/// Writes the round number into the first (up to 8) bytes, so that a stale or repeated
/// echo does not pass for the current one.
fn stamp_round(message: &mut [u8], round: u64) {
    let stamp = round.to_le_bytes();
    let len = message.len().min(stamp.len());
    message[..len].copy_from_slice(&stamp[..len]);
}

fn verify_echo(sent: &[u8], echoed: &[u8], round: u64) -> Result<(), CliError> {
    if sent == echoed {
        return Ok(());
    }
    let first_difference = sent
        .iter()
        .zip(echoed)
        .position(|(sent, echoed)| sent != echoed)
        .unwrap_or(sent.len().min(echoed.len()));
    Err(CliError::new(format!(
        "round trip {round}: sent {} bytes, got {} bytes back, first difference at byte \
         {first_difference}; is the server in --mode echo?",
        sent.len(),
        echoed.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_fit_short_messages() {
        let mut short = vec![0u8; 3];
        stamp_round(&mut short, 0x0102_0304_0506);
        assert_eq!(short, [0x06, 0x05, 0x04]);
        let mut empty: Vec<u8> = Vec::new();
        stamp_round(&mut empty, 7);
        assert!(empty.is_empty());
    }

    #[test]
    fn echo_check_reports_where_bytes_differ() {
        assert!(verify_echo(b"abc", b"abc", 1).is_ok());
        let error = verify_echo(b"abc", b"abd", 1).unwrap_err().to_string();
        assert!(error.contains("byte 2"), "{error}");
        let error = verify_echo(b"abc", b"ab", 1).unwrap_err().to_string();
        assert!(error.contains("got 2 bytes"), "{error}");
    }
}
