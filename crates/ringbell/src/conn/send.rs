//! Sending: a message into the ring as one frame, or, when it is larger than a frame may
//! be, through the large-message region (`large.rs`): in pieces, a `Piece` frame each, or
//! whole with a `Large` frame; or as full chunks and a last one where no region can be
//! had; waiting for room; withdrawing a message half sent, in chunks or in pieces.

use std::time::Instant;

use super::large::{room_for, LargePush, LargeRoute};
use super::wake::{peer_alive, peer_closed, rings, wait_on};
use super::{corrupted, Connection};
use crate::core::ring::{max_frame_payload, FrameKind, PACK_ENTRY_HEADER_LEN};
use crate::core::wait::{self, Waited};
use crate::error::Error;

/// The largest message that [`feed`](Connection::feed) (and so `send_batch`) writes into
/// a pack, a frame shared with the messages fed before and after it (up to a frame's
/// worth, all published at once), rather than into a frame of its own. A packed message
/// costs 4 bytes of length instead of a 16-byte header and the frame's alignment, and the
/// receiver checks one frame for the lot: one-way 64 B batches of 64 went from ~17-19 M
/// to the figures in docs/BENCHMARKS.md ("Packed batches"). Larger messages gain little
/// from sharing a frame, so they keep their own: a pack of one is turned back into a
/// plain frame when it is closed, by moving its bytes, which stays cheap at this size.
pub(crate) const PACKED_MAX_LEN: usize = 1024;

/// How far a send has got: payload bytes of a message already in the ring, in chunks or
/// in pieces (`pieces`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendProgress {
    pub(super) bytes: usize,
    pub(super) pieces: bool,
}

/// When the frames a send writes are shown to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publish {
    /// At once, each with a wake-up if the peer sleeps: `send`.
    Now,
    /// At the next [`publish_sent`](Connection::publish_sent): `feed`, then `flush`.
    Later,
}

/// What [`Connection::push_some`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The whole message is in the ring.
    Done,
    /// No room for the next frame, of `payload` bytes; or, when `payload` is larger than
    /// a frame, for that large message in the region or for its frame in the ring
    /// (`large::room_for` tells when there is).
    Full { payload: usize },
}

impl Connection {
    /// Sends one message tagged with `correlation` (request/response matching).
    pub(crate) fn send_with_correlation(
        &mut self,
        msg: &[u8],
        correlation: u64,
    ) -> Result<(), Error> {
        self.send_framed(msg, correlation, Publish::Now)
    }

    /// Writes one message tagged with `correlation`, waiting for room, and shows it to the
    /// peer as `publish` says.
    pub(crate) fn send_framed(
        &mut self,
        msg: &[u8],
        correlation: u64,
        publish: Publish,
    ) -> Result<(), Error> {
        self.check_sendable(msg)?;
        let deadline = self.settings.send_timeout.and_then(wait::deadline_after);
        let mut sent = SendProgress::default();
        let result = loop {
            match self.push_some(msg, correlation, &mut sent, publish) {
                Ok(Pushed::Done) => break Ok(()),
                Ok(Pushed::Full { payload }) => match self.wait_for_room(payload, deadline) {
                    Ok(Waited::Ready) => continue,
                    Ok(Waited::TimedOut) => break Err(Error::Timeout),
                    Err(error) => break Err(error),
                },
                Err(error) => break Err(error),
            }
        };
        if let Err(error) = &result {
            self.abandon_send(&sent);
            self.broken = error.terminal_copy();
        }
        result
    }

    /// Writes `msgs` as [`feed`](Self::feed) does each: the run of them that
    /// [`feed_ready`](Self::feed_ready) can pack at once, then the next one the ordinary
    /// way (which waits for room), and so on.
    pub(crate) fn feed_all(&mut self, mut msgs: &[&[u8]]) -> Result<(), Error> {
        loop {
            msgs = &msgs[self.feed_ready(msgs)?..];
            let Some((next, rest)) = msgs.split_first() else {
                return Ok(());
            };
            self.send_framed(next, 0, Publish::Later)?;
            msgs = rest;
        }
    }

    /// Packs the messages at the start of `msgs` while each is small enough to pack and
    /// fits in the ring now, with the checks of [`send_framed`](Self::send_framed) made
    /// once for all of them: that loop is what a batch of small messages costs the
    /// sender, so it holds only the copy. Returns how many it wrote; the caller sends the
    /// next the ordinary way. Never waits.
    pub(crate) fn feed_ready(&mut self, msgs: &[&[u8]]) -> Result<usize, Error> {
        if msgs.is_empty() {
            return Ok(0);
        }
        self.check_sendable_len(0)?;
        if self.tx_abort_pending {
            return Ok(0);
        }
        let limit = self.send_limit();
        let max_payload = max_frame_payload(self.segment.capacity());
        let largest = PACKED_MAX_LEN
            .min(limit)
            .min(max_payload.saturating_sub(PACK_ENTRY_HEADER_LEN));
        self.tx
            .write_packed_run(msgs, largest, max_payload)
            .map_err(|error| self.fail_send(corrupted(error)))
    }

    /// The checks before a send: the connection is usable, the message fits the limit
    /// ([`send_limit`](Self::send_limit)), and the peer has not said goodbye.
    pub(crate) fn check_sendable(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.check_sendable_len(msg.len())
    }

    /// [`check_sendable`](Self::check_sendable) for a message of `len` bytes.
    pub(crate) fn check_sendable_len(&mut self, len: usize) -> Result<(), Error> {
        self.usable()?;
        let max = self.send_limit();
        if len > max {
            return Err(Error::TooLarge { len, max });
        }
        if peer_closed(self.header(), self.side) {
            self.broken = Some(Error::PeerDied);
            return Err(Error::PeerDied);
        }
        Ok(())
    }

    /// The blocking [`send_with`](Self::send_with), for a message that fits one frame
    /// (the caller checked `len` with [`check_sendable_len`](Self::check_sendable_len)).
    pub(crate) fn send_in_place<E: From<Error>>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let deadline = self.settings.send_timeout.and_then(wait::deadline_after);
        let mut fill = Some(fill);
        loop {
            match self.try_push_in_place(len, &mut fill) {
                Ok(Some(filled)) => return filled,
                Ok(None) => {}
                Err(error) => return Err(self.fail_send(error).into()),
            }
            match self.wait_for_room(len, deadline) {
                Ok(Waited::Ready) => {}
                // Nothing of the message was written: there is nothing to withdraw.
                Ok(Waited::TimedOut) => return Err(Error::Timeout.into()),
                Err(error) => return Err(self.fail_send(error).into()),
            }
        }
    }

    /// Writes the frame of a [`send_with`](Self::send_with) in place if it fits now (after
    /// a pending abort), calling the closure in `fill` then, publishes it and wakes the
    /// peer. `Ok(None)`: no room yet, and `fill` is untouched. `Ok(Some(Err))`: the
    /// closure failed and nothing was sent.
    pub(crate) fn try_push_in_place<E>(
        &mut self,
        len: usize,
        fill: &mut Option<impl FnOnce(&mut [u8]) -> Result<(), E>>,
    ) -> Result<Option<Result<(), E>>, Error> {
        debug_assert!(len <= max_frame_payload(self.segment.capacity()));
        if self.tx_abort_pending {
            if !self.try_push_frame(FrameKind::Abort, 0, &[], Publish::Now)? {
                return Ok(None);
            }
            self.tx_abort_pending = false;
        }
        let written = self
            .tx
            .try_write_with(FrameKind::Message, 0, len, |buf| match fill.take() {
                Some(fill) => fill(buf),
                None => unreachable!("a send's closure is called once"),
            })
            .map_err(corrupted)?;
        if let Some(Ok(())) = written {
            self.publish_sent();
        }
        Ok(written)
    }

    /// Records a terminal error of a send as the end of the connection, and returns it.
    fn fail_send(&mut self, error: Error) -> Error {
        self.broken = error.terminal_copy();
        error
    }

    /// Pushes as many frames of `msg` as fit now, without waiting, continuing from `sent`.
    /// A message that fits one frame is pushed whole or not at all. A larger one goes
    /// through the large-message region in pieces, as many as fit now (from a side that
    /// spins or waits `Adaptive`), or whole or not at all (from one that blocks); where
    /// no region can be had, in full chunks. A pending abort (see
    /// [`abandon_send`](Self::abandon_send)) goes first.
    pub(crate) fn push_some(
        &mut self,
        msg: &[u8],
        correlation: u64,
        sent: &mut SendProgress,
        publish: Publish,
    ) -> Result<Pushed, Error> {
        if self.tx_abort_pending {
            if !self.try_push_frame(FrameKind::Abort, 0, &[], publish)? {
                return Ok(Pushed::Full { payload: 0 });
            }
            self.tx_abort_pending = false;
        }
        let max_payload = max_frame_payload(self.segment.capacity());
        // Fed plain messages (`feed`, `send_batch`) share frames: see `PACKED_MAX_LEN`.
        if publish == Publish::Later
            && correlation == 0
            && msg.len() <= PACKED_MAX_LEN
            && msg.len() + PACK_ENTRY_HEADER_LEN <= max_payload
        {
            let entry = msg.len() + PACK_ENTRY_HEADER_LEN;
            return Ok(
                if self
                    .tx
                    .try_write_packed(0, msg, max_payload)
                    .map_err(corrupted)?
                {
                    Pushed::Done
                } else {
                    Pushed::Full { payload: entry }
                },
            );
        }
        if msg.len() <= max_payload {
            return Ok(
                if self.try_push_frame(FrameKind::Message, correlation, &[msg], publish)? {
                    Pushed::Done
                } else {
                    Pushed::Full { payload: msg.len() }
                },
            );
        }
        // A message begun goes on as it began. A new one goes through the region in pieces
        // from a side that spins or waits `Adaptive`, whole from one that blocks
        // (`Block`), and in chunks only where no region can be had. Round trips measured
        // (docs/BENCHMARKS.md, "The region in pieces" and "Adaptive sides in pieces"):
        // spinning, in pieces against chunks, 64 KiB 19.6 -> 15.4 µs, 1 MiB 186 -> 159 µs,
        // 4 MiB 761 -> 722 µs, 16 MiB level: the receiver copies piece k out while we
        // write piece k+1, in a region of a few pieces that stays in the cache, where
        // whole the two copies were serial and went through memory (1 MiB 207 -> 277 µs,
        // 16 MiB 3.8 -> 9.3 ms). Adaptive, in pieces that start small (`FIRST_PIECE_LEN`):
        // 1 MiB 181-189 -> 158-169 µs against chunks; in even pieces it had been 1.2x
        // slower (the echo server's wait outlasted its spin). Blocking: whole, a message
        // is one wake-up (1 MiB 1,080 -> 370 µs against chunks); pieces were faster still
        // on a quiet machine (1 MiB 390 -> 297 µs, 16 MiB 7.7 -> 4.1 ms) but up to 1.8x
        // slower at 4 MiB with another engineer's load on the two cores (a sleep and a
        // wake-up per piece), so whole.
        self.tx_large.waiting_piece = None;
        if sent.bytes == 0 || sent.pieces {
            let pushed = match self.large_route() {
                LargeRoute::Pieces => self.try_push_pieces(msg, correlation, sent, publish)?,
                LargeRoute::Whole if sent.bytes == 0 => {
                    self.try_push_large(msg, correlation, publish)?
                }
                // `sent.pieces`: only the pieces route sets it, and a side's route does not
                // change (it follows the wait strategy, fixed at connect).
                LargeRoute::Whole => {
                    unreachable!("a message begun in pieces from a side that sends whole")
                }
            };
            match pushed {
                LargePush::Done => return Ok(Pushed::Done),
                LargePush::Full => return Ok(Pushed::Full { payload: msg.len() }),
                LargePush::Chunks => {}
            }
        }
        // Chunked: the first frame carries the total length, so the receiver can check the
        // chunks against it and allocate once. Every chunk but the last is a full frame.
        if sent.bytes == 0 {
            let first = max_payload - 8;
            let total = (msg.len() as u64).to_le_bytes();
            if !self.try_push_frame(
                FrameKind::First,
                correlation,
                &[&total, &msg[..first]],
                publish,
            )? {
                return Ok(Pushed::Full {
                    payload: max_payload,
                });
            }
            sent.bytes = first;
        }
        while sent.bytes < msg.len() {
            let rest = &msg[sent.bytes..];
            let len = rest.len().min(max_payload);
            let kind = if len == rest.len() {
                FrameKind::Last
            } else {
                FrameKind::Middle
            };
            if !self.try_push_frame(kind, correlation, &[&rest[..len]], publish)? {
                return Ok(Pushed::Full { payload: len });
            }
            sent.bytes += len;
        }
        Ok(Pushed::Done)
    }

    /// Gives up on a send after `sent`: if part of a message (chunks, or pieces) is in the
    /// ring, the next send withdraws it with an abort frame, so the receiver never sees
    /// half a message.
    pub(crate) fn abandon_send(&mut self, sent: &SendProgress) {
        if sent.bytes > 0 {
            self.tx_abort_pending = true;
        }
    }

    /// Pushes one frame if it fits now, and wakes the peer if it sleeps; with
    /// `Publish::Later`, only writes it (see [`publish_sent`](Self::publish_sent)).
    pub(super) fn try_push_frame(
        &mut self,
        kind: FrameKind,
        correlation: u64,
        parts: &[&[u8]],
        publish: Publish,
    ) -> Result<bool, Error> {
        if publish == Publish::Later {
            return self
                .tx
                .try_write(kind, correlation, parts)
                .map_err(corrupted);
        }
        if !self
            .tx
            .try_push(kind, correlation, parts)
            .map_err(corrupted)?
        {
            return Ok(false);
        }
        self.wake_peer(&rings(&self.segment, self.side).tx.readable);
        Ok(true)
    }

    /// Shows the peer the frames written and not yet published (by [`feed`](Self::feed)),
    /// and wakes it if it sleeps. Called before every wait and every receive, so that no
    /// side ever waits on messages that only it can see.
    pub(crate) fn publish_sent(&mut self) {
        if self.tx.publish() {
            self.wake_peer(&rings(&self.segment, self.side).tx.readable);
        }
    }

    /// Waits under the configured strategy until a frame of `payload` bytes fits (or, for
    /// a large message, until it can go on: see [`Pushed::Full`]).
    fn wait_for_room(
        &mut self,
        payload: usize,
        deadline: Option<Instant>,
    ) -> Result<Waited, Error> {
        // The room we wait for is taken by what we wrote: the peer must see it to free it.
        self.publish_sent();
        self.publish_received();
        if peer_closed(self.header(), self.side) {
            return Err(Error::PeerDied);
        }
        // This wait may sleep on the doorbell and drain it (always on a backend without a
        // shared-memory wait; on macOS when the OS refuses the word), which would swallow
        // a ring meant for the caller's event loop: disarm instead (see `arm_doorbell`).
        self.disarm_doorbell();
        let limit = self.send_limit();
        let (tx, header, side) = (&mut self.tx, self.segment.header(), self.side);
        let outgoing = &mut self.tx_large;
        wait_on(
            &self.settings.wait,
            &mut self.learned.room,
            &rings(&self.segment, side).tx.writable,
            &self.own_doorbell,
            &self.control,
            deadline,
            &mut self.peer_check_due,
            || {
                Ok(room_for(tx, outgoing, payload, limit).map_err(corrupted)?
                    || peer_closed(header, side))
            },
            |thorough| peer_alive(&self.control, &self.own_doorbell, header, side, thorough),
            // The peer's progress is this wait's very condition: nothing more to watch.
            || None,
        )
    }
}
