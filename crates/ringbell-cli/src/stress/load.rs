//! `bench`'s use of the stress machinery: one quiet round of many clients over one
//! transport, failed like `ringbell stress` if any call went wrong, and reduced to the
//! figures the benchmark reports ([`LoadFigures`]).

use std::time::{Duration, Instant};

use super::plan::Plan;
use super::protocol::SizeRange;
use super::rounds::TransportRun;
use super::{Transport, STRESS_RING_CAPACITY};
use crate::child::PeerLauncher;
use crate::error::CliError;
use crate::temp_dir::TempDir;

/// What `ringbell bench` takes from one stress round on one transport.
#[derive(Debug, Clone, Copy)]
pub struct LoadFigures {
    /// Calls completed correctly per second, over all clients.
    pub requests_per_second: f64,
    /// Round-trip time of the calls, in microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    /// The server's resident memory before the clients connected, and its peak while
    /// they called, in KiB.
    pub server_rss_before_kib: u64,
    pub server_peak_rss_kib: u64,
}

/// Runs one round of `clients` connections spread over `processes` client processes,
/// each making `requests` calls of `size` random bytes one at a time, over `transport`,
/// with no output. Fails, like `ringbell stress`, if any call failed or went wrong.
pub fn measure_load(
    transport: Transport,
    clients: u64,
    processes: u64,
    requests: u64,
    size: usize,
) -> Result<LoadFigures, CliError> {
    let timeout = Duration::from_secs(600);
    let plan = Plan {
        clients,
        processes: processes.min(clients).max(1),
        requests,
        sizes: SizeRange {
            min: size,
            max: size,
        },
        concurrency: 1,
        ring_capacity: STRESS_RING_CAPACITY,
        rounds: 1,
        idle: Duration::ZERO,
        call_timeout: Duration::from_secs(30),
        seed: 1,
        fault: None,
        timeout,
        deadline: Instant::now() + timeout,
        progress: false,
    };
    let workspace = TempDir::create("ringbell-bench-load")?;
    let launcher = PeerLauncher::new(None)?;
    let mut run = TransportRun::start(&plan, transport, &launcher, &workspace)?;
    let result = run.run_rounds()?;
    drop(run);
    if let Some(failure) = result.failure() {
        return Err(CliError::new(failure));
    }
    let latency = &result.total().latency;
    let micros = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1_000.0;
    Ok(LoadFigures {
        requests_per_second: result.requests_per_second(),
        p50_us: micros(0.5),
        p99_us: micros(0.99),
        server_rss_before_kib: result.before.rss_kib,
        server_peak_rss_kib: result.peak().rss_kib,
    })
}
