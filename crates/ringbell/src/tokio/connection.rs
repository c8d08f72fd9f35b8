//! [`AsyncConnection`]: a [`Connection`] whose waits are tokio futures.

use std::path::Path;

use std::time::Instant;

use super::{spin, waited_since};
use crate::config::ClientConfig;
use crate::conn::{Batch, Connection, Publish, Pushed, SendProgress, WaitFor};
use crate::core::ring::max_frame_payload;
use crate::core::wait::PEER_CHECK_INTERVAL;
use crate::error::Error;

/// A message connection whose waits are tokio futures. See the [module docs](crate::tokio).
///
/// Made by [`AsyncConnection::connect`] or [`AsyncServer::accept`](super::AsyncServer::accept). Both must be called
/// from within a tokio runtime with IO enabled.
///
/// # Cancellation
///
/// [`recv`](Self::recv) is cancellation-safe: if its future is dropped before it completes,
/// no message is lost, and a message that had arrived in part is completed by the next
/// `recv`. Dropping a [`send`](Self::send) future before it completes sends nothing of a
/// message that fits one frame, and withdraws a larger message that was partly sent (the
/// receiver discards the part), so the peer never sees half a message. Hence
/// `tokio::time::timeout` works on both.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), ringbell::Error> {
/// use ringbell::tokio::AsyncConnection;
/// use ringbell::ClientConfig;
///
/// let mut conn = AsyncConnection::connect("/tmp/app.sock", ClientConfig::default()).await?;
/// conn.send(b"ping").await?;
/// let mut reply = Vec::new();
/// conn.recv(&mut reply).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncConnection {
    /// Registered with the runtime (its doorbell and control channel) while it is here.
    inner: Connection,
}

impl AsyncConnection {
    /// Connects to the server at `path`. The handshake runs on tokio's blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect`].
    pub async fn connect(path: impl AsRef<Path>, config: ClientConfig) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let connection = ::tokio::task::spawn_blocking(move || Connection::connect(path, config))
            .await
            .map_err(|error| Error::io("running the handshake", std::io::Error::other(error)))??;
        Self::from_connection(connection)
    }

    /// Wraps a connection made with the blocking API. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the connection's fds cannot be registered with the runtime.
    pub fn from_connection(mut connection: Connection) -> Result<Self, Error> {
        connection.register_with_runtime()?;
        Ok(AsyncConnection { inner: connection })
    }

    /// Sends one message, waiting while the ring is full. See the cancellation notes above.
    ///
    /// # Errors
    ///
    /// As [`Connection::send`], except that there is no send timeout: wrap the future in
    /// `tokio::time::timeout` instead.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.send_with_correlation(msg, 0).await
    }

    pub(crate) async fn send_with_correlation(
        &mut self,
        msg: &[u8],
        correlation: u64,
    ) -> Result<(), Error> {
        self.send_framed(msg, correlation, Publish::Now).await
    }

    /// Sends every message of `msgs`, in order, and shows them to the peer at once, with
    /// one store of the ring's tail and at most one wake-up: [`Connection::send_batch`],
    /// awaiting room instead of blocking. Nothing waits for a batch to fill.
    ///
    /// If the future is dropped, the whole messages it wrote are still sent (the next
    /// operation on the connection, or its drop, shows them to the peer), and a message it
    /// cut in the middle is withdrawn, as with [`send`](Self::send).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), for the first message that fails; the messages before it
    /// are sent.
    pub async fn send_batch(&mut self, msgs: &[&[u8]]) -> Result<(), Error> {
        let fed = self.feed_all(msgs).await;
        self.inner.flush()?;
        fed
    }

    /// [`Connection::feed_all`], awaiting room: the messages that can be packed at once
    /// without a wait, then the next one the ordinary way, and so on.
    async fn feed_all(&mut self, mut msgs: &[&[u8]]) -> Result<(), Error> {
        loop {
            msgs = &msgs[self.inner.feed_ready(msgs)?..];
            let Some((next, rest)) = msgs.split_first() else {
                return Ok(());
            };
            self.send_framed(next, 0, Publish::Later).await?;
            msgs = rest;
        }
    }

    /// Sends one message of exactly `len` bytes that `fill` writes straight into the ring:
    /// [`Connection::send_with`], awaiting room instead of blocking. `fill` is called once
    /// there is room, and runs to its end before the future can be dropped, so a
    /// cancelled send writes nothing.
    ///
    /// # Errors
    ///
    /// As [`Connection::send_with`], without `Timeout`: wrap the future in
    /// `tokio::time::timeout` for a deadline.
    pub async fn send_with<E: From<Error>>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.inner.check_sendable_len(len)?;
        if len > max_frame_payload(self.inner.ring_capacity()) {
            let mut buf = vec![0; len];
            fill(&mut buf)?;
            return Ok(self.send(&buf).await?);
        }
        let mut fill = Some(fill);
        loop {
            match self.inner.try_push_in_place(len, &mut fill) {
                Ok(Some(filled)) => return filled,
                Ok(None) => {}
                Err(error) => return Err(self.inner.fail(error).into()),
            }
            self.wait_for_room(len).await?;
        }
    }

    /// Awaits room for a frame of `payload` bytes: spin, then the doorbell.
    async fn wait_for_room(&mut self, payload: usize) -> Result<(), Error> {
        // The room we wait for is taken by what we wrote: the peer must see it.
        self.inner.publish_sent();
        let connection = &mut self.inner;
        let budget = connection.spin_budget(WaitFor::Room);
        let mut started = None;
        if spin(budget, &mut started, || connection.has_room(payload)).await? {
            connection.learn_wait(WaitFor::Room, waited_since(started));
            return Ok(());
        }
        let started = started.unwrap_or_else(Instant::now);
        if self.inner.arm_send_doorbell(payload)? {
            self.inner.wait_for_ring().await?;
            self.inner.settle_doorbell(true);
            self.inner.ensure_peer_alive()?;
        }
        self.inner.learn_wait(WaitFor::Room, started.elapsed());
        Ok(())
    }

    /// Writes one message with `correlation`, awaiting room, shown to the peer as
    /// `publish` says.
    async fn send_framed(
        &mut self,
        msg: &[u8],
        correlation: u64,
        publish: Publish,
    ) -> Result<(), Error> {
        self.inner.check_sendable(msg)?;
        let mut attempt = SendAttempt {
            connection: &mut self.inner,
            sent: SendProgress::default(),
            finished: false,
        };
        loop {
            let payload =
                match attempt
                    .connection
                    .push_some(msg, correlation, &mut attempt.sent, publish)
                {
                    Ok(Pushed::Done) => {
                        attempt.finished = true;
                        return Ok(());
                    }
                    Ok(Pushed::Full { payload }) => payload,
                    Err(error) => return Err(attempt.connection.fail(error)),
                };
            // The room we wait for is taken by what we wrote: the peer must see it.
            attempt.connection.publish_sent();
            let connection = &mut *attempt.connection;
            let budget = connection.spin_budget(WaitFor::Room);
            let mut started = None;
            if spin(budget, &mut started, || connection.has_room(payload)).await? {
                connection.learn_wait(WaitFor::Room, waited_since(started));
                continue;
            }
            let started = started.unwrap_or_else(Instant::now);
            if attempt.connection.arm_send_doorbell(payload)? {
                attempt.connection.wait_for_ring().await?;
                attempt.connection.settle_doorbell(true);
                attempt.connection.ensure_peer_alive()?;
            }
            attempt
                .connection
                .learn_wait(WaitFor::Room, started.elapsed());
        }
    }

    /// Receives the next message into `buf` (replacing its contents) and returns its length.
    /// Cancellation-safe.
    ///
    /// # Errors
    ///
    /// As [`Connection::recv`], without `Timeout`: wrap the future in
    /// `tokio::time::timeout` for a deadline. [`Error::Idle`] if the connection's idle or
    /// stall timeout passed with nothing moving (see
    /// [`ServerConfig::idle_timeout`](crate::ServerConfig::idle_timeout)).
    pub async fn recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, Error> {
        self.receive_with(|inner| inner.try_recv(buf)).await
    }

    /// Receives every message already waiting, up to `limit`, into `batch` (replacing its
    /// contents), and returns how many: [`Connection::recv_batch`], awaiting the first
    /// message instead of blocking. Nothing waits for the batch to fill. Cancellation-safe,
    /// like [`recv`](Self::recv): a batch is taken whole in one step, or not at all.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn recv_batch(&mut self, batch: &mut Batch, limit: usize) -> Result<usize, Error> {
        self.receive_with(|inner| {
            Ok(Some(inner.try_recv_batch(batch, limit)?).filter(|&taken| taken > 0))
        })
        .await
    }

    /// Tries `attempt` (a receive that does not wait) until it returns something, awaiting
    /// the doorbell between tries. Cancellation-safe if `attempt` is: the future is only
    /// ever dropped between two of them.
    async fn receive_with<T>(
        &mut self,
        mut attempt: impl FnMut(&mut Connection) -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        // When this receive began to wait, once it has: how long it took teaches the
        // connection how long to spin next time.
        let mut waiting: Option<Option<Instant>> = None;
        loop {
            if let Some(received) = attempt(&mut self.inner)? {
                if let Some(started) = waiting {
                    self.inner.learn_wait(WaitFor::Data, waited_since(started));
                }
                return Ok(received);
            }
            if let Some(budget) = self
                .inner
                .budget()
                .filter(|_| self.inner.awaiting_budget())
                .cloned()
            {
                // A chunked message waits in the ring for room in the server's memory
                // budget: wait for the next release. Registered before the retry, so no
                // release is missed; bounded, so that the peer's death is still noticed.
                let notice = budget.notice();
                if let Some(received) = attempt(&mut self.inner)? {
                    return Ok(received);
                }
                if self.inner.awaiting_budget() {
                    let _ = ::tokio::time::timeout(PEER_CHECK_INTERVAL, notice.wait()).await;
                }
                continue;
            }
            let inner = &mut self.inner;
            let started = match waiting {
                // Woken, and nothing yet (or a spurious wake-up): the same wait goes on,
                // asleep.
                Some(started) => started.unwrap_or_else(Instant::now),
                None => {
                    let budget = inner.spin_budget(WaitFor::Data);
                    let mut started = None;
                    let ready = spin(budget, &mut started, || inner.has_data()).await?;
                    waiting = Some(started);
                    if ready {
                        continue;
                    }
                    started.unwrap_or_else(Instant::now)
                }
            };
            waiting = Some(Some(started));
            if !self.inner.arm_doorbell()? {
                continue;
            }
            match self.inner.quiet_deadline_now() {
                None => self.inner.wait_for_ring().await?,
                Some((quiet, idle)) => {
                    let deadline = ::tokio::time::Instant::from_std(quiet);
                    let waited = ::tokio::time::timeout_at(deadline, self.inner.wait_for_ring());
                    if waited.await.is_err() {
                        // Nothing moved for the idle or stall timeout; but a message that
                        // came in just now is still taken first.
                        if let Some(received) = attempt(&mut self.inner)? {
                            return Ok(received);
                        }
                        return Err(self.inner.close_idle(idle));
                    }
                }
            }
            // `try_recv` above resets the doorbell and checks the peer when the ring is empty.
        }
    }

    /// The blocking connection inside, for its accessors (`max_message_size`, ...).
    pub fn get_ref(&self) -> &Connection {
        &self.inner
    }

    /// The blocking connection inside, no longer registered with the runtime.
    pub fn into_inner(mut self) -> Connection {
        self.inner.deregister_from_runtime();
        self.inner
    }
}

/// A send in progress: if its future is dropped before the message is complete, the part
/// already in the ring is withdrawn.
struct SendAttempt<'a> {
    connection: &'a mut Connection,
    sent: SendProgress,
    finished: bool,
}

impl Drop for SendAttempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.connection.abandon_send(&self.sent);
        }
    }
}
