//! Receiving in batches: [`Batch`], the messages one [`recv_batch`](Connection::recv_batch)
//! took, and the receive itself: a run of whole-message frames copied out of the ring at
//! once ([`Consumer::take_messages`](crate::core::ring::Consumer::take_messages)), with the
//! ordinary receive path for everything else (a chunked message, a wait, an error).

use std::ops::Range;
use std::time::Duration;

use super::receive::Patience;
use super::Connection;
use crate::core::wait;
use crate::error::Error;

/// The messages taken by one [`Connection::recv_batch`], in the order they were sent.
///
/// Their bytes are the batch's own: copied out of the shared memory, checked, and held in
/// one buffer that the next receive into the same `Batch` reuses, so that a loop of
/// batches allocates nothing once the buffer has grown to its working size.
///
/// ```no_run
/// # use ringbell::{Batch, ClientConfig, Connection};
/// # let mut conn = Connection::connect("/tmp/app.sock", ClientConfig::default())?;
/// let mut batch = Batch::new();
/// loop {
///     conn.recv_batch(&mut batch, 64, None)?;
///     for message in &batch {
///         println!("{} bytes", message.len());
///     }
/// }
/// # Ok::<(), ringbell::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The messages' bytes, with the frame headers between them (a run is copied whole).
    bytes: Vec<u8>,
    /// Where each message lies in `bytes`.
    messages: Vec<Range<usize>>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The `index`th message, if there is one.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.messages
            .get(index)
            .map(|range| &self.bytes[range.clone()])
    }

    /// The messages, in order.
    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            batch: self,
            next: 0,
        }
    }

    /// Empties the batch, keeping its memory for the next receive.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.messages.clear();
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = &'a [u8];
    type IntoIter = BatchIter<'a>;

    fn into_iter(self) -> BatchIter<'a> {
        self.iter()
    }
}

/// The messages of a [`Batch`], in order: [`Batch::iter`].
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    batch: &'a Batch,
    next: usize,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let message = self.batch.get(self.next)?;
        self.next += 1;
        Some(message)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batch.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for BatchIter<'_> {}

impl Connection {
    /// Receives every message already waiting, up to `limit` of them, into `batch`
    /// (replacing its contents), and returns how many. If none is waiting, waits at most
    /// `timeout` (`None`: as long as the peer lives) for the first one, then takes it and
    /// whatever else has arrived by then.
    ///
    /// The batch never waits to fill: it holds what had arrived when it was taken, at
    /// least one message, and a sender's next messages go to the next call. So a batch
    /// adds no latency, and a receiver that keeps up gets batches of one. Taken in one
    /// go, a run of small messages is copied out of the shared memory in a few long copies,
    /// where [`recv`](Self::recv) reads a header and a payload at a time; their space is
    /// handed back to the sender as `recv` hands it back (the ring's head is stored once
    /// an eighth of the ring is free to return, and before this side waits). Every byte is
    /// still copied out and checked before it is handed over.
    ///
    /// A message larger than one frame (a quarter of the ring) is reassembled as `recv`
    /// does; a batch holds at most one such message, and only as its first. So a batch
    /// holds at most a ring's worth of bytes (the messages with their frame headers),
    /// besides that one message, which `max_message_size` bounds.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv). A batch is never cut by an error: messages taken before
    /// one are returned, and the error comes from the next call. `limit` 0 is treated as 1.
    pub fn recv_batch(
        &mut self,
        batch: &mut Batch,
        limit: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, Error> {
        let deadline = timeout.and_then(wait::deadline_after);
        match self.receive_batch(batch, limit, Patience::Until(deadline))? {
            0 => Err(Error::Timeout),
            taken => Ok(taken),
        }
    }

    /// Receives every message already waiting, up to `limit`, into `batch` (replacing its
    /// contents), without waiting; returns how many, 0 if none is. The batch counterpart
    /// of [`try_recv`](Self::try_recv), for event loops.
    ///
    /// # Errors
    ///
    /// As [`try_recv`](Self::try_recv).
    pub fn try_recv_batch(&mut self, batch: &mut Batch, limit: usize) -> Result<usize, Error> {
        self.receive_batch(batch, limit, Patience::NoWait { check_peer: true })
    }

    fn receive_batch(
        &mut self,
        batch: &mut Batch,
        limit: usize,
        patience: Patience,
    ) -> Result<usize, Error> {
        batch.clear();
        let limit = limit.max(1);
        self.usable()?;
        // As `receive` does: what we fed, the peer must see, and a doorbell armed for an
        // event loop is taken down and reset, since we are receiving now.
        self.publish_sent();
        if self.doorbell_armed {
            self.disarm_doorbell();
            self.own_doorbell.drain();
        }
        // A chunked message in progress, or none of the waiting frames fit a run (the
        // ring is empty, or a chunked message or an error is next): one message the
        // ordinary way, waiting as `patience` says, then a run of whatever follows.
        if self.rx_partial.is_some() || self.rx_pack.is_some() || self.take_run(batch, limit) == 0 {
            let Some(first) = self.receive(&mut batch.bytes, patience)? else {
                return Ok(0);
            };
            batch.messages.push(0..first.len);
            self.take_rest_of_pack(batch, limit);
            if batch.len() < limit && self.rx_pack.is_none() {
                self.take_run(batch, limit);
            }
        }
        Ok(batch.len())
    }

    /// Appends to `batch` the messages left in the pack being received, up to `limit` in
    /// the batch. An error after the first message in the batch is kept for the next call
    /// (a batch is never cut by an error): the cursor stays at the entry that is wrong.
    fn take_rest_of_pack(&mut self, batch: &mut Batch, limit: usize) {
        while batch.len() < limit && self.rx_pack.is_some() {
            let start = batch.bytes.len();
            let Ok(received) = self.take_from_pack(&mut batch.bytes) else {
                break;
            };
            batch.messages.push(start..start + received.len);
        }
    }

    /// Appends to `batch` a run of the whole messages waiting in the ring, up to `limit`
    /// in the batch; returns how many the batch holds then. Never fails: whatever is
    /// wrong with the next frame, the ordinary receive reports it.
    fn take_run(&mut self, batch: &mut Batch, limit: usize) -> usize {
        let max_len = self.receive_limit();
        let room = limit - batch.messages.len();
        let Batch { bytes, messages } = batch;
        let run = self
            .rx
            .take_messages(bytes, room, max_len, |_correlation, range| {
                messages.push(range)
            });
        if run.published {
            self.wake_writer();
        }
        self.rx_pack = run.pack;
        batch.messages.len()
    }
}
