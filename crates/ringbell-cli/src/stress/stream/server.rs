//! `ringbell __stress-stream-server`: the stream pattern's server process.
//!
//! A tokio runtime (a worker per CPU) serves every connection with
//! `AsyncServer::serve_calls`: each call names a stream, whose items the handler sends
//! under the window's credit ([`handle`]), counting the cancels it observes.
//!
//! It talks to the parent over its stdio: it prints `listening on <path>` once it accepts
//! clients; to the line `report` on stdin it answers `cancels <observed>`. It exits when
//! its stdin closes (or, through `--parent-pid`, when the parent dies).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use clap::Args;
use ringbell::tokio::{AsyncServer, Call};
use ringbell::{Error, ServerConfig};

use super::wire::{expected_item, StreamSpec};
use super::StreamFault;
use crate::error::{CliError, Context};
use crate::serve::announce_listening;

/// How the server's answer to `report` begins.
pub(super) const CANCELS_PREFIX: &str = "cancels ";

/// The stream server's options, passed by `ringbell stress --pattern stream`.
#[derive(Debug, Clone, Args)]
pub struct StreamServerArgs {
    /// Socket path to listen on.
    pub path: PathBuf,
    /// Skip, duplicate or stall at item 1 of stream 0 (for the tests of the stress test
    /// itself).
    #[arg(long, value_enum)]
    pub stream_fault: Option<StreamFault>,
}

/// Runs the stream server until stdin closes.
pub fn run(args: &StreamServerArgs) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stress-stream-server")
        .build()
        .context("starting the tokio runtime")?;
    let cancels_seen = Arc::new(AtomicU64::new(0));
    let fault = args.stream_fault;
    runtime.block_on(async {
        let server = AsyncServer::bind(&args.path, ServerConfig::default())?;
        announce_listening(&args.path)?;
        answer_parent(Arc::clone(&cancels_seen))?;
        server
            .serve_calls(move |call| handle(call, Arc::clone(&cancels_seen), fault))
            .await;
        Ok::<(), CliError>(())
    })
}

/// The handler: streams the request's items, and counts the cancel if one stops it.
async fn handle(
    mut call: Call,
    cancels_seen: Arc<AtomicU64>,
    fault: Option<StreamFault>,
) -> Result<Vec<u8>, String> {
    let (stream, count, item_size) =
        StreamSpec::decode(call.request()).ok_or("malformed stream request")?;
    for index in 0..count {
        let faulty = stream == 0 && index == 1;
        if faulty && fault == Some(StreamFault::Skip) {
            continue;
        }
        if faulty && fault == Some(StreamFault::Stall) {
            // Hung: nothing more until the run gives up and the client goes.
            call.cancelled().await;
            return Err("stalled".into());
        }
        let item = expected_item(stream, index, item_size);
        let sends = if faulty && fault == Some(StreamFault::Duplicate) {
            2
        } else {
            1
        };
        for _ in 0..sends {
            match call.send(&item).await {
                Ok(()) => {}
                Err(Error::Cancelled) => {
                    cancels_seen.fetch_add(1, Ordering::SeqCst);
                    return Err("cancelled".into());
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    }
    Ok(format!("done {count}").into_bytes())
}

/// Starts the thread that answers the parent's `report` with the cancels observed so
/// far, and ends the process when the parent closes our stdin.
fn answer_parent(cancels_seen: Arc<AtomicU64>) -> Result<(), CliError> {
    thread::Builder::new()
        .name("stress-commands".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line.trim() == "report" {
                    let now = cancels_seen.load(Ordering::SeqCst);
                    let mut stdout = std::io::stdout().lock();
                    if writeln!(stdout, "{CANCELS_PREFIX}{now}")
                        .and_then(|()| stdout.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            }
            // The parent closed our stdin: it is done with us.
            std::process::exit(0);
        })
        .map(drop)
        .context("starting the command thread")
}
