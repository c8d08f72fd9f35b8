//! `ringbell ping`: round-trip latency against a running `ringbell serve --mode echo`.

use std::path::Path;

use ringbell::{ClientConfig, Connection};

use crate::args::WaitArgs;
use crate::error::CliError;
use crate::measure;
use crate::stats::format_count;

/// What to measure.
#[derive(Debug, Clone)]
pub struct PingPlan {
    pub count: u64,
    pub size: usize,
    pub warmup: u64,
}

/// Connects to `path`, runs the plan and prints the percentiles.
pub fn run(path: &Path, plan: &PingPlan, wait: &WaitArgs) -> Result<(), CliError> {
    let config = ClientConfig::default().wait(wait.strategy());
    // The library's errors name the path already.
    let mut connection = Connection::connect(path, config)?;
    let run = measure::round_trips(&mut connection, plan.size, plan.warmup, plan.count)?;
    let summary = run.summary();
    println!(
        "ringbell ping {}: {} round trips of {} B after {} warm-up, wait {}",
        path.display(),
        plan.count,
        plan.size,
        plan.warmup,
        wait.describe()
    );
    println!("p50    {:>10.2} µs", summary.p50_us);
    println!("p99    {:>10.2} µs", summary.p99_us);
    println!("p99.9  {:>10.2} µs", summary.p999_us);
    println!("max    {:>10.2} µs", summary.max_us);
    println!(
        "round trips per second: {}",
        format_count(run.round_trips_per_second())
    );
    Ok(())
}
