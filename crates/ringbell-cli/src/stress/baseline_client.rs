//! The baseline's client of `stress`: the same request/response protocol as ringbell's,
//! framed on a tokio `UnixStream`, or on Windows (where tokio has no Unix sockets) on a
//! tokio named pipe, what a Windows program would use instead.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::client::{CONNECT_RETRY, CONNECT_TIMEOUT};
use super::protocol::{encode_frame, read_frame, write_frames};

/// The calls of a baseline connection waiting for their replies, by correlation id.
type PendingCalls = Arc<Mutex<HashMap<u64, Pending>>>;

/// A call sent on the baseline's stream, with no reply yet.
enum Pending {
    /// Its caller waits.
    Waiting(oneshot::Sender<Vec<u8>>),
    /// Its caller gave up (the call timed out): a late reply is expected, and dropped.
    Abandoned,
}

/// Connects to the Unix socket at `path`, retrying while its listen queue is full.
#[cfg(unix)]
async fn connect_stream(path: &Path) -> std::io::Result<impl AsyncRead + AsyncWrite> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            // The listen queue is full: a non-blocking connect says so at once.
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
            {
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Opens the named pipe the server made for `path` (see `protocol::baseline_pipe_name`),
/// retrying while every instance is busy (`ERROR_PIPE_BUSY`: the server makes the next one
/// as it takes each client).
#[cfg(windows)]
async fn connect_stream(path: &Path) -> std::io::Result<impl AsyncRead + AsyncWrite> {
    /// `ERROR_PIPE_BUSY`.
    const PIPE_BUSY: i32 = 231;
    let name = super::protocol::baseline_pipe_name(path);
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match tokio::net::windows::named_pipe::ClientOptions::new().open(&name) {
            Ok(pipe) => return Ok(pipe),
            Err(error) if error.raw_os_error() == Some(PIPE_BUSY) && Instant::now() < deadline => {
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The baseline's request/response client, built like ringbell's [`Client`]: callers hand
/// their frames to one writer task, which flushes once per batch, and one reader task
/// routes each reply to its caller by correlation id.
pub(super) struct BaselineClient {
    frames: mpsc::Sender<Vec<u8>>,
    pending: PendingCalls,
    next_id: AtomicU64,
}

impl BaselineClient {
    pub(super) async fn connect(
        path: &Path,
        duplicated: Arc<AtomicU64>,
    ) -> std::io::Result<BaselineClient> {
        let stream = connect_stream(path).await?;
        let (read, write) = tokio::io::split(stream);
        let (frames, queue) = mpsc::channel(64);
        let pending = PendingCalls::default();
        tokio::spawn(write_frames(write, queue));
        tokio::spawn(route_replies(read, pending.clone(), duplicated));
        Ok(BaselineClient {
            frames,
            pending,
            next_id: AtomicU64::new(1),
        })
    }

    pub(super) async fn call(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.lock_pending().insert(id, Pending::Waiting(reply));
        // If this future is dropped (the call timed out), its reply is expected still, but
        // nobody waits for it.
        let _abandon = AbandonOnDrop {
            pending: &self.pending,
            id,
        };
        self.frames
            .send(encode_frame(id, request))
            .await
            .map_err(|_| "the baseline's connection is closed".to_owned())?;
        answer
            .await
            .map_err(|_| "the server closed the baseline's connection".to_owned())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending
            .lock()
            .expect("no task panics holding the pending calls")
    }
}

/// Marks a call abandoned if its future is dropped before the reply came.
struct AbandonOnDrop<'a> {
    pending: &'a PendingCalls,
    id: u64,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            if let Some(call) = pending.get_mut(&self.id) {
                *call = Pending::Abandoned;
            }
        }
    }
}

/// Hands each reply to the call with its id; a reply to no call counts as duplicated.
/// When the stream ends, the calls still waiting fail (their senders are dropped).
async fn route_replies(
    read: impl AsyncRead + Unpin,
    pending: PendingCalls,
    duplicated: Arc<AtomicU64>,
) {
    let mut reader = BufReader::new(read);
    let mut reply = Vec::new();
    while let Ok(Some(id)) = read_frame(&mut reader, &mut reply).await {
        let call = pending
            .lock()
            .ok()
            .and_then(|mut pending| pending.remove(&id));
        match call {
            Some(Pending::Waiting(caller)) => {
                let _ = caller.send(std::mem::take(&mut reply));
            }
            Some(Pending::Abandoned) => {}
            None => {
                duplicated.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Ok(mut pending) = pending.lock() {
        pending.clear();
    }
}
