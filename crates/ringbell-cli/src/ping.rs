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
    // The library's own error would say to raise `ServerConfig::max_message_size`, which a
    // user of the command line cannot do: name the flag instead.
    let max = connection.max_message_size();
    if plan.size > max {
        return Err(CliError::new(format!(
            "a ping of {} bytes does not fit the server's maximum message size of {max} bytes: \
             start the server with `ringbell serve {} --max-message-size {}` (or more), or \
             ping with a smaller --size",
            plan.size,
            path.display(),
            plan.size
        )));
    }
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
