//! The frames of the Windows control channel: how bytes and handle values share one byte
//! stream. Platform-free (the grants are a type parameter), so that the parsing of
//! whatever a peer writes is tested on every OS.
//!
//! A Unix socket carries fds beside the bytes (`SCM_RIGHTS`); a named pipe carries bytes
//! only, so every write on the pipe is a frame:
//!
//! ```text
//! offset  size  field
//! 0       1     tag, 0xB1 (a frame of version 1)
//! 1       1     flags: bit 0, the sender's process handle comes first among the values
//! 2       1     grants: how many handle values follow (at most MAX_GRANTS)
//! 3       1     reserved, 0
//! 4       4     payload length, little-endian: 1 ..= MAX_PAYLOAD
//! 8       8·n   the values, u64 little-endian: the process handle if flagged, then the
//!               grants
//! …       len   the payload: the bytes the caller wrote
//! ```
//!
//! The contract's byte stream is the payloads in order; a frame's grants come with its
//! first payload byte, as fds come with the first byte of a `sendmsg` on Unix (so a frame
//! has at least one). A write larger than `MAX_PAYLOAD` is several frames, the grants on
//! the first. Every field a peer wrote is checked before it is used: a bad tag, flags or
//! reserved byte, too many grants, an empty or oversized payload is an `InvalidData`
//! error, never a panic or an allocation of the peer's choosing. What a value *means* (a
//! handle pushed into us, or one of the client's to pull) is the stream's business, not
//! the frame's: see `pipe.rs`.

use std::collections::VecDeque;
use std::io;

use super::invalid;

/// The most grants one message may carry, as on Unix.
pub(crate) const MAX_GRANTS: usize = 4;

/// The most payload bytes one frame carries. Handshake messages are tens of bytes; a
/// bound keeps what a peer can make us buffer small.
pub(super) const MAX_PAYLOAD: usize = 16 * 1024;

/// The fixed part of a frame.
pub(super) const HEADER_LEN: usize = 8;

const TAG: u8 = 0xB1;
const CARRIES_PROCESS: u8 = 1;

/// The longest frame there can be.
// The bound the inbox keeps to (see `Inbox`); only the tests need its value.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) const MAX_FRAME: usize = HEADER_LEN + 8 * (MAX_GRANTS + 1) + MAX_PAYLOAD;

/// A frame's header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    /// Whether the sender's process handle is the first value.
    pub(super) carries_process: bool,
    /// How many grants follow it.
    pub(super) grants: usize,
    /// How many payload bytes follow the values.
    pub(super) payload: usize,
}

impl Header {
    fn values(&self) -> usize {
        self.grants + usize::from(self.carries_process)
    }

    /// The length of the whole frame.
    pub(super) fn frame_len(&self) -> usize {
        HEADER_LEN + 8 * self.values() + self.payload
    }

    /// Checks the fixed part of a frame, as the peer wrote it.
    pub(super) fn parse(bytes: &[u8; HEADER_LEN]) -> io::Result<Header> {
        if bytes[0] != TAG {
            return Err(invalid(format!(
                "the peer wrote {:#04x} where a frame begins (not a ringbell control channel, \
                 or out of step)",
                bytes[0]
            )));
        }
        if bytes[1] & !CARRIES_PROCESS != 0 || bytes[3] != 0 {
            return Err(invalid(
                "the peer's frame has flags this version does not know",
            ));
        }
        let grants = usize::from(bytes[2]);
        if grants > MAX_GRANTS {
            return Err(invalid(format!(
                "the peer's frame carries {grants} grants, more than {MAX_GRANTS}"
            )));
        }
        let payload = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        if payload == 0 || payload > MAX_PAYLOAD {
            return Err(invalid(format!(
                "the peer's frame announces {payload} bytes, outside 1..={MAX_PAYLOAD}"
            )));
        }
        Ok(Header {
            carries_process: bytes[1] & CARRIES_PROCESS != 0,
            grants,
            payload,
        })
    }
}

/// One frame's bytes: `process` first among the values if given, then `grants`, then
/// `payload`. The caller keeps within the limits (at most `MAX_GRANTS`, 1 to
/// `MAX_PAYLOAD` bytes); outside them this is an `InvalidInput` error.
pub(super) fn encode(process: Option<u64>, grants: &[u64], payload: &[u8]) -> io::Result<Vec<u8>> {
    if grants.len() > MAX_GRANTS || payload.is_empty() || payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a frame carries 1 to MAX_PAYLOAD bytes and at most MAX_GRANTS grants",
        ));
    }
    let header = Header {
        carries_process: process.is_some(),
        grants: grants.len(),
        payload: payload.len(),
    };
    let mut frame = Vec::with_capacity(header.frame_len());
    frame.extend_from_slice(&[
        TAG,
        if process.is_some() {
            CARRIES_PROCESS
        } else {
            0
        },
        grants.len() as u8,
        0,
    ]);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    for value in process.iter().chain(grants) {
        frame.extend_from_slice(&value.to_le_bytes());
    }
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// A frame read whole: its values, which the stream turns into grants, and its payload.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Frame {
    /// The sender's process handle, if the frame carries one.
    pub(super) process: Option<u64>,
    pub(super) grants: Vec<u64>,
    pub(super) payload: Vec<u8>,
}

/// What has been read from the pipe and not yet handed to the caller: the frame being
/// read, and the payload of the last complete frame with the grants that came with it.
///
/// The stream reads only what the current frame still lacks ([`wanted`](Self::wanted))
/// and only once the last frame's payload has been taken, so it never holds more than one
/// frame: at most [`MAX_FRAME`] bytes, whatever the peer writes.
#[derive(Debug)]
pub(super) struct Inbox<G> {
    /// The bytes of the frame being read, header first.
    partial: Vec<u8>,
    /// Its header, once all of it has arrived and passed the checks.
    header: Option<Header>,
    /// The payload not yet taken.
    ready: VecDeque<u8>,
    /// The grants of that payload, given with its first byte.
    grants: Vec<G>,
    /// Set once a frame failed its checks: the stream is out of step for good.
    broken: Option<String>,
}

impl<G> Default for Inbox<G> {
    fn default() -> Self {
        Inbox {
            partial: Vec::new(),
            header: None,
            ready: VecDeque::new(),
            grants: Vec::new(),
            broken: None,
        }
    }
}

impl<G> Inbox<G> {
    /// How many bytes to read from the pipe next: 0 while payload is ready to be taken,
    /// else what the current frame lacks (never past its end, so the next frame stays in
    /// the pipe). An error once a frame has failed its checks.
    pub(super) fn wanted(&self) -> io::Result<usize> {
        if let Some(why) = &self.broken {
            return Err(invalid(why.clone()));
        }
        if !self.ready.is_empty() {
            return Ok(0);
        }
        Ok(match self.header {
            None => HEADER_LEN - self.partial.len(),
            Some(header) => header.frame_len() - self.partial.len(),
        })
    }

    /// Whether part of a frame has arrived, and not all of it: a hang-up now cut it off.
    pub(super) fn mid_frame(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Adds bytes read from the pipe (no more than [`wanted`](Self::wanted) said), and
    /// returns the frame they complete, if they do. The caller turns its values into
    /// grants and hands them back with [`deliver`](Self::deliver).
    pub(super) fn received(&mut self, bytes: &[u8]) -> io::Result<Option<Frame>> {
        let wanted = self.wanted()?;
        assert!(
            bytes.len() <= wanted,
            "read past the frame: a bug in the stream"
        );
        self.partial.extend_from_slice(bytes);
        if self.header.is_none() {
            let Ok(fixed) = <&[u8; HEADER_LEN]>::try_from(&self.partial[..]) else {
                return Ok(None);
            };
            match Header::parse(fixed) {
                Ok(header) => self.header = Some(header),
                Err(error) => {
                    self.broken = Some(error.to_string());
                    return Err(error);
                }
            }
        }
        let header = self.header.expect("parsed above");
        if self.partial.len() < header.frame_len() {
            return Ok(None);
        }
        let mut values = self.partial[HEADER_LEN..HEADER_LEN + 8 * header.values()]
            .chunks_exact(8)
            .map(|value| u64::from_le_bytes(value.try_into().expect("chunks of 8")));
        let process = if header.carries_process {
            values.next()
        } else {
            None
        };
        let grants = values.collect();
        let payload = self.partial[HEADER_LEN + 8 * header.values()..].to_vec();
        self.partial.clear();
        self.header = None;
        Ok(Some(Frame {
            process,
            grants,
            payload,
        }))
    }

    /// Makes a complete frame's payload ready to be taken, its grants with its first byte.
    pub(super) fn deliver(&mut self, payload: Vec<u8>, grants: Vec<G>) {
        debug_assert!(self.ready.is_empty() && !payload.is_empty());
        self.ready.extend(payload);
        self.grants = grants;
    }

    /// Marks the stream out of step (a frame's values were refused): every later read is
    /// an `InvalidData` error.
    pub(super) fn break_with(&mut self, error: &io::Error) {
        self.broken = Some(error.to_string());
    }

    /// Moves ready payload into `buf`, and returns how much, with the grants that came
    /// with the first of those bytes (if it was a frame's first).
    pub(super) fn take(&mut self, buf: &mut [u8]) -> (usize, Vec<G>) {
        let n = buf.len().min(self.ready.len());
        if n == 0 {
            return (0, Vec::new());
        }
        for (slot, byte) in buf.iter_mut().zip(self.ready.drain(..n)) {
            *slot = byte;
        }
        (n, std::mem::take(&mut self.grants))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `stream` to an inbox the way the pipe reader does (no more than wanted at a
    /// time, at most `step` bytes a read), taking payloads as they come; returns the bytes
    /// and the grants in order, or the first error.
    fn read_all(stream: &[u8], step: usize) -> io::Result<(Vec<u8>, Vec<u64>)> {
        let mut inbox = Inbox::<u64>::default();
        let mut at = 0;
        let mut bytes = Vec::new();
        let mut grants = Vec::new();
        loop {
            let mut buf = [0u8; 7];
            let (n, mut got) = inbox.take(&mut buf);
            bytes.extend_from_slice(&buf[..n]);
            grants.append(&mut got);
            let wanted = inbox.wanted()?;
            if wanted == 0 {
                continue;
            }
            if at == stream.len() {
                if inbox.mid_frame() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                return Ok((bytes, grants));
            }
            let read = wanted.min(step).min(stream.len() - at);
            if let Some(frame) = inbox.received(&stream[at..at + read])? {
                let values = frame.process.into_iter().chain(frame.grants).collect();
                inbox.deliver(frame.payload, values);
            }
            at += read;
        }
    }

    #[test]
    fn frames_carry_bytes_and_values_in_order() {
        let mut stream = encode(Some(0x40), &[0x44, 0x48], b"hello").unwrap();
        stream.extend(encode(None, &[], b", world").unwrap());
        stream.extend(encode(None, &[0x4c; MAX_GRANTS], &[7; MAX_PAYLOAD]).unwrap());
        for step in [1, 3, 8, 100, MAX_FRAME] {
            let (bytes, grants) = read_all(&stream, step).unwrap();
            assert_eq!(&bytes[..12], b"hello, world");
            assert_eq!(bytes.len(), 12 + MAX_PAYLOAD);
            assert_eq!(grants, [0x40, 0x44, 0x48, 0x4c, 0x4c, 0x4c, 0x4c]);
        }
    }

    #[test]
    fn grants_come_with_the_first_byte_of_their_frame() {
        let stream = encode(None, &[0x44], b"abc").unwrap();
        let mut inbox = Inbox::<u64>::default();
        let frame = inbox.received(&stream[..HEADER_LEN]).unwrap();
        assert!(frame.is_none() && inbox.mid_frame());
        let frame = inbox.received(&stream[HEADER_LEN..]).unwrap().unwrap();
        assert_eq!(frame.grants, [0x44]);
        inbox.deliver(frame.payload, frame.grants);
        let mut one = [0u8; 1];
        assert_eq!(inbox.take(&mut one), (1, vec![0x44]));
        assert_eq!(inbox.take(&mut one), (1, vec![]));
        assert_eq!(inbox.wanted().unwrap(), 0);
        assert_eq!(inbox.take(&mut [0u8; 4]), (1, vec![]));
        assert_eq!(inbox.wanted().unwrap(), HEADER_LEN);
    }

    #[test]
    fn what_a_frame_may_not_be_is_refused() {
        let good = encode(None, &[0x44], b"x").unwrap();
        let refused = |bytes: &[u8]| {
            let error = read_all(bytes, MAX_FRAME).expect_err("a bad frame was accepted");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
            error.to_string()
        };
        let mut bad = good.clone();
        bad[0] = b'G';
        assert!(refused(&bad).contains("where a frame begins"));
        let mut bad = good.clone();
        bad[1] = 2;
        assert!(refused(&bad).contains("flags"));
        let mut bad = good.clone();
        bad[3] = 1;
        assert!(refused(&bad).contains("flags"));
        let mut bad = good.clone();
        bad[2] = MAX_GRANTS as u8 + 1;
        assert!(refused(&bad).contains("more than"));
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(refused(&bad).contains("outside"));
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(refused(&bad).contains("outside"));
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(refused(&bad).contains("outside"));

        // A frame cut off by a hang-up.
        let error = read_all(&good[..good.len() - 1], 1).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);

        // And the stream stays refused after a bad frame.
        let mut inbox = Inbox::<u64>::default();
        assert!(inbox.received(b"garbage!").is_err());
        assert_eq!(
            inbox.wanted().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_sender_cannot_make_a_frame_outside_the_limits() {
        assert!(encode(None, &[1; MAX_GRANTS + 1], b"x").is_err());
        assert!(encode(None, &[], b"").is_err());
        assert!(encode(None, &[], &[0; MAX_PAYLOAD + 1]).is_err());
        assert_eq!(
            encode(None, &[], &[0; MAX_PAYLOAD]).unwrap().len(),
            HEADER_LEN + MAX_PAYLOAD
        );
        assert_eq!(
            encode(Some(1), &[1; MAX_GRANTS], &[0; MAX_PAYLOAD])
                .unwrap()
                .len(),
            MAX_FRAME
        );
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_never_a_panic(
            stream in proptest::collection::vec(any::<u8>(), 0..200),
            step in 1usize..40,
        ) {
            let _ = read_all(&stream, step);
        }

        #[test]
        fn a_valid_header_with_any_tail_never_panics(
            grants in 0u8..=4,
            process in any::<bool>(),
            len in 1u32..64,
            tail in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut stream = vec![TAG, u8::from(process), grants, 0];
            stream.extend_from_slice(&len.to_le_bytes());
            stream.extend(tail);
            let _ = read_all(&stream, 5);
        }
    }
}
