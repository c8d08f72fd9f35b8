//! Request/response over one [`AsyncConnection`]: a [`Client`] handle that many tasks can
//! clone and call through at once. The server's side, [`AsyncServer::serve`], is in
//! `tokio_serve.rs`.
//!
//! [`AsyncServer::serve`]: super::AsyncServer::serve
//!
//! On the wire a request is a message tagged with a correlation id (never 0), and its reply
//! is a message with the same id whose first byte says whether the handler succeeded
//! (`0`, the response follows) or failed (`1`, its error message follows). Replies may
//! come in any order.
//!
//! Each client connection is driven by one task that never blocks: it moves queued
//! messages into the ring while they fit, takes whatever has arrived, and otherwise waits
//! on the doorbell together with its own queues. A client has at most `max_in_flight`
//! calls outstanding: more callers wait for a slot.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::AsyncConnection;
use crate::config::ClientConfig;
use crate::conn::Connection;
use crate::conn::{Pushed, SendProgress};
use crate::error::Error;
use crate::in_flight::InFlight;
use crate::reply::decode_reply;

/// Default bound on a [`Client`]'s outstanding calls.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// A copy of a connection-ending error for each of the callers it ends.
fn copy_of(error: &Error) -> Error {
    error.terminal_copy().unwrap_or(Error::PeerDied)
}

/// One call on its way to the driver.
struct Call {
    request: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    /// Held until the reply arrives: the in-flight bound.
    permit: OwnedSemaphorePermit,
}

/// A call sent and waiting for its reply.
struct Pending {
    reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    _permit: OwnedSemaphorePermit,
}

/// A request/response client over one connection. Cheap to clone; every clone calls
/// through the same connection, with up to `max_in_flight` calls outstanding at once.
///
/// ```no_run
/// # async fn run() -> Result<(), ringbell::Error> {
/// use ringbell::tokio::Client;
/// use ringbell::ClientConfig;
///
/// let client = Client::connect("/tmp/app.sock", ClientConfig::default()).await?;
/// let reply = client.call(b"what time is it?").await?;
/// # let _ = reply;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    calls: mpsc::Sender<Call>,
    in_flight: Arc<Semaphore>,
    max_message_size: usize,
}

impl Client {
    /// Connects to the server at `path` and starts the connection's driver task, with the
    /// default bound of outstanding calls.
    ///
    /// # Errors
    ///
    /// As [`AsyncConnection::connect`].
    pub async fn connect(path: impl AsRef<Path>, config: ClientConfig) -> Result<Client, Error> {
        let connection = AsyncConnection::connect(path, config).await?;
        Ok(Client::new(connection, DEFAULT_MAX_IN_FLIGHT))
    }

    /// Starts a driver task for `connection` (on the current tokio runtime) and returns a
    /// client that allows `max_in_flight` outstanding calls (at least 1).
    pub fn new(connection: AsyncConnection, max_in_flight: usize) -> Client {
        let max_in_flight = max_in_flight.max(1);
        let (calls, queue) = mpsc::channel(max_in_flight);
        let max_message_size = connection.get_ref().max_message_size();
        ::tokio::spawn(drive_client(connection, queue));
        Client {
            max_message_size,
            calls,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
        }
    }

    /// Sends `request` and waits for its reply. If all slots are taken, waits for one
    /// first. Dropping the future gives up on the reply (which is then discarded when it
    /// arrives; it never reaches another caller).
    ///
    /// # Errors
    ///
    /// [`Error::Handler`] if the server's handler failed for this request (the connection
    /// goes on); [`Error::PeerDied`] or [`Error::Corrupted`] if the connection ended;
    /// [`Error::TooLarge`] if the request exceeds the connection's maximum.
    pub async fn call(&self, request: &[u8]) -> Result<Vec<u8>, Error> {
        if request.len() > self.max_message_size {
            return Err(Error::TooLarge {
                len: request.len(),
                max: self.max_message_size,
            });
        }
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::PeerDied)?;
        let (reply, answer) = oneshot::channel();
        let call = Call {
            request: request.to_vec(),
            reply,
            permit,
        };
        self.calls.send(call).await.map_err(|_| Error::PeerDied)?;
        answer.await.map_err(|_| Error::PeerDied)?
    }

    /// [`call`](Self::call) with a deadline.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call), and [`Error::Timeout`] when `timeout` passes first.
    pub async fn call_timeout(&self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, Error> {
        ::tokio::time::timeout(timeout, self.call(request))
            .await
            .map_err(|_| Error::Timeout)?
    }
}

/// Messages waiting for room in the ring, in order, and how far the first one has got.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) queue: VecDeque<(u64, Vec<u8>)>,
    progress: SendProgress,
}

impl Outbox {
    /// Moves messages into the ring while they fit. Returns whether any went, and the size
    /// of the frame that did not fit, if one is waiting.
    pub(super) fn flush(
        &mut self,
        connection: &mut Connection,
    ) -> Result<(bool, Option<usize>), Error> {
        let mut moved = false;
        while let Some((id, message)) = self.queue.front() {
            match connection.push_some(message, *id, &mut self.progress) {
                Ok(Pushed::Done) => {
                    self.queue.pop_front();
                    self.progress = SendProgress::default();
                    moved = true;
                }
                Ok(Pushed::Full { payload }) => return Ok((moved, Some(payload))),
                Err(error) => return Err(connection.fail(error)),
            }
        }
        Ok((moved, None))
    }
}

/// Arms the doorbell for incoming messages (if `receiving`) and for room (if `blocked`).
/// Returns `false` if either condition already holds: do not wait, look again.
fn arm(
    connection: &mut AsyncConnection,
    receiving: bool,
    blocked: Option<usize>,
) -> Result<bool, Error> {
    if receiving && !connection.inner.arm_doorbell()? {
        return Ok(false);
    }
    if let Some(payload) = blocked {
        if !connection.inner.arm_send_doorbell(payload)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What a driver does after its wait ended on `rung`: resets the doorbell if it rang, and
/// returns whether the control socket stirred, so that the next receive checks the peer.
/// (That receive reports the peer's end after every message it sent before it; but a peer
/// that is gone will never make room for what we still have to send, so a blocked sender
/// checks at once.)
fn after_ring(
    connection: &mut AsyncConnection,
    rung: super::Rung,
    blocked: Option<usize>,
) -> Result<bool, Error> {
    connection
        .inner
        .settle_doorbell(rung == super::Rung::Doorbell);
    if rung == super::Rung::Doorbell {
        return Ok(false);
    }
    if blocked.is_some() {
        connection.inner.ensure_peer_alive()?;
    }
    Ok(true)
}

/// The client's driver: one task per connection.
async fn drive_client(mut connection: AsyncConnection, mut calls: mpsc::Receiver<Call>) {
    let mut pending: InFlight<Pending> = InFlight::default();
    let mut outbox = Outbox::default();
    let mut buf = Vec::new();
    let mut callers_left = true;
    let mut peer_stirred = false;
    let accept = |call: Call, pending: &mut InFlight<Pending>, outbox: &mut Outbox| {
        let id = pending.admit(Pending {
            reply: call.reply,
            _permit: call.permit,
        });
        outbox.queue.push_back((id, call.request));
    };
    let ended: Result<(), Error> = async {
        loop {
            let mut progressed = false;
            while let Ok(call) = calls.try_recv() {
                accept(call, &mut pending, &mut outbox);
                progressed = true;
            }
            let (moved, blocked) = outbox.flush(&mut connection.inner)?;
            progressed |= moved;
            // A syscall to check the peer only after its control socket stirred; the check
            // runs when the ring is found empty, so the flag stays up until that happens.
            while let Some(received) = connection.inner.try_recv_tagged(&mut buf, peer_stirred)? {
                if let Some(waiting) = pending.complete(received.correlation) {
                    let _ = waiting.reply.send(decode_reply(&buf));
                }
                progressed = true;
            }
            peer_stirred = false;
            if progressed {
                continue;
            }
            if !callers_left && pending.is_empty() && outbox.queue.is_empty() {
                return Ok(());
            }
            if !arm(&mut connection, true, blocked)? {
                continue;
            }
            ::tokio::select! {
                rung = super::wait_for_ring(&connection.doorbell, &connection.control) => {
                    peer_stirred |= after_ring(&mut connection, rung?, blocked)?;
                }
                call = calls.recv(), if callers_left => {
                    connection.inner.settle_doorbell(false);
                    match call {
                        Some(call) => accept(call, &mut pending, &mut outbox),
                        None => callers_left = false,
                    }
                }
            }
        }
    }
    .await;
    if let Err(error) = ended {
        for waiting in pending.drain() {
            let _ = waiting.reply.send(Err(copy_of(&error)));
        }
        calls.close();
        while let Ok(call) = calls.try_recv() {
            let _ = call.reply.send(Err(copy_of(&error)));
        }
    }
}
