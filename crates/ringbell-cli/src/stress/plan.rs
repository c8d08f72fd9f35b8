//! What a stress run does: the [`Plan`] made from `ringbell stress`'s options (or by
//! `bench`), how the clients are shared among the processes, the time left before
//! `--timeout`, and the plan as printed before the run.

use std::thread;
use std::time::{Duration, Instant};

use ringbell::ServerConfig;

use super::protocol::SizeRange;
use super::report::format_kib;
use super::server::Fault;
use super::{StressArgs, DEFAULT_PROCESSES};
use crate::error::CliError;
use crate::stats::format_count;

/// What a run does, from the options.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) clients: u64,
    pub(super) processes: u64,
    pub(super) requests: u64,
    pub(super) sizes: SizeRange,
    pub(super) concurrency: u64,
    pub(super) ring_capacity: usize,
    pub(super) rounds: u32,
    pub(super) idle: Duration,
    pub(super) call_timeout: Duration,
    pub(super) seed: u64,
    pub(super) fault: Option<(Fault, u64)>,
    pub(super) timeout: Duration,
    pub(super) deadline: Instant,
    /// Whether to draw a progress bar per round (not when `bench` draws its own).
    pub(super) progress: bool,
}

impl Plan {
    pub(super) fn from_args(args: &StressArgs) -> Result<Plan, CliError> {
        let ring_capacity = args.ring_capacity;
        if !ring_capacity.is_power_of_two() || !(256..=1 << 30).contains(&ring_capacity) {
            return Err(CliError::new(format!(
                "--ring-capacity {ring_capacity} is not a power of two from 256 to 1073741824"
            )));
        }
        let timeout = Duration::from_secs(args.timeout);
        Ok(Plan {
            clients: args.clients,
            processes: args
                .processes
                .unwrap_or(DEFAULT_PROCESSES)
                .min(args.clients),
            requests: args.requests,
            sizes: args.size_range.unwrap_or(args.size),
            concurrency: args.concurrency,
            ring_capacity,
            rounds: args.rounds,
            idle: Duration::from_secs(args.idle),
            call_timeout: Duration::from_secs(args.call_timeout),
            seed: args.seed,
            fault: args.fault.map(|fault| (fault, args.fault_every)),
            timeout,
            deadline: Instant::now() + timeout,
            progress: true,
        })
    }

    pub(super) fn calls_per_round(&self) -> u64 {
        self.clients * self.requests
    }

    /// How many connections client process `index` opens, and the index of its first.
    pub(super) fn share_of(&self, index: u64) -> (u64, u64) {
        share(self.clients, self.processes, index)
    }

    /// Time left before `--timeout`, at most `limit`.
    pub(super) fn time_left(&self, limit: Duration) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .min(limit)
    }
}

/// Part `index` of `total` things dealt over `parts` as evenly as possible: how many it
/// gets, and the index of its first. The stream pattern deals its connections so too.
pub(super) fn share(total: u64, parts: u64, index: u64) -> (u64, u64) {
    let (base, extra) = (total / parts, total % parts);
    let count = base + u64::from(index < extra);
    let first = index * base + index.min(extra);
    (count, first)
}

pub(super) fn print_plan(plan: &Plan, processes_asked: u64) {
    let sizes = if plan.sizes.min == plan.sizes.max {
        format!("{}-byte", plan.sizes.min)
    } else {
        format!("{}..{}-byte", plan.sizes.min, plan.sizes.max)
    };
    println!(
        "ringbell stress: {} clients over {} processes, {} calls each ({} per round{}), \
         {sizes} random payloads, {} call{} in flight per client",
        format_count(plan.clients as f64),
        plan.processes,
        format_count(plan.requests as f64),
        format_count(plan.calls_per_round() as f64),
        if plan.rounds > 1 {
            format!(", {} rounds", plan.rounds)
        } else {
            String::new()
        },
        plan.concurrency,
        if plan.concurrency == 1 { "" } else { "s" }
    );
    if plan.processes < processes_asked {
        println!("note:   only {} processes, one per client", plan.processes);
    }
    println!(
        "server: one process, a tokio runtime with a worker per CPU ({}); ringbell: \
         AsyncServer::serve, one sweeper task for every connection, rings of {} per \
         direction (the library's default: {}); {}: a task per connection; up to {} \
         request{} of a connection handled at once",
        thread::available_parallelism().map_or(1, |cpus| cpus.get()),
        format_kib(plan.ring_capacity as u64 / 1024),
        format_kib(ServerConfig::DEFAULT_RING_CAPACITY as u64 / 1024),
        super::Transport::Uds.arg(),
        plan.concurrency,
        if plan.concurrency == 1 { "" } else { "s" }
    );
    println!(
        "clients: single-threaded tokio runtimes; nothing pinned; each reply checked byte \
         for byte (the request reversed, then its FNV-1a checksum); seed {}",
        plan.seed
    );
    println!(
        "latency: each call's round trip as its client sees it, queueing behind the other \
         {} calls in flight included (a closed loop: mean latency ≈ calls in flight ÷ requests/s)",
        format_count((plan.clients * plan.concurrency - 1) as f64)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stress::STRESS_RING_CAPACITY;

    fn plan(clients: u64, processes: u64) -> Plan {
        let args = StressArgs {
            clients,
            processes: Some(processes),
            requests: 1,
            size: SizeRange::exactly(64),
            size_range: None,
            transport: None,
            concurrency: 1,
            ring_capacity: STRESS_RING_CAPACITY,
            rounds: 1,
            idle: 0,
            call_timeout: 1,
            timeout: 1,
            seed: 1,
            fault: None,
            fault_every: 1,
            pattern: crate::stress::Pattern::Echo,
            quick: false,
            stream_fault: None,
        };
        Plan::from_args(&args).unwrap()
    }

    #[test]
    fn clients_are_spread_evenly_and_completely() {
        for (clients, processes) in [(1000, 10), (1003, 10), (7, 3), (3, 10), (1, 1)] {
            let plan = plan(clients, processes);
            let mut next_first = 0;
            let mut shares = Vec::new();
            for index in 0..plan.processes {
                let (connections, first) = plan.share_of(index);
                assert_eq!(first, next_first, "{clients} over {processes}");
                next_first += connections;
                shares.push(connections);
            }
            assert_eq!(next_first, clients);
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1 && *min >= 1, "{shares:?}");
        }
    }
}
