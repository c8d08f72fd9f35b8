//! `ringbell bench`: ringbell beside the raw baselines and the peer libraries, every figure
//! measured in this one run, on this machine.
//!
//! Every measurement is cross-process, as in `demo`: this process is one side, pinned to
//! the first allowed CPU; the other side is a child process started from this executable,
//! pinned to the second (where the OS can pin: see [`crate::affinity`]). What is measured:
//!
//! * **Round-trip latency** (HDR histograms of every round trip, each echo checked byte
//!   for byte) at 64 B, 1 KiB, 64 KiB, 1 MiB, 4 MiB and 16 MiB: ringbell with each wait
//!   strategy, the byte streams (Unix socket, pipe, TCP loopback) and the peer libraries;
//!   at 64 B also the payload-free floors (a spin on one shared cache line, a shared
//!   futex, an eventfd).
//! * **One-way throughput** at 64 B, 4 KiB, 64 KiB, 1 MiB, 4 MiB and 16 MiB, each stream
//!   confirmed by the receiver's count: ringbell (default wait), the byte streams, the
//!   peers, and `memcpy` in this process as the ceiling (the best of several rounds and
//!   buffer placements).
//! * ringbell's servers allow messages of the largest size (16 MiB) and keep the default
//!   ring, so the 64 KiB to 16 MiB messages go through the sender's large-message region
//!   (issue 14; before it, in chunks through the ring).
//! * **Request/response with many clients** (1, 10, 100, 1,000 connections over up to 10
//!   client processes, unpinned): ringbell's `AsyncServer::serve` and `Client` against the
//!   same protocol over tokio `UnixStream`s (the `stress` machinery, every reply checked).
//! * **Streamed calls** of 64-byte items ([`crate::streamed`]): one stream's items per
//!   second and time to first item, 100 concurrent streams, and cancel latency while the
//!   server is busy, and a unary call's p50, for `serve_calls` against the same
//!   protocol framed on tokio `UnixStream`s and (a peer) tonic gRPC on a Unix socket,
//!   the server a child pinned to the second CPU.
//! * **Paced and unpinned round trips** ([`placed`]): 64 B round trips one every
//!   millisecond, with the CPU each costs both processes, and back to back with the two
//!   processes unpinned or on one core; ringbell's default wait against a Unix socket.
//! * **Idle CPU** of a connected pair, and the server's **memory per connection**.
//!
//! The peers are in the `ringbell-bench-peers` crate, behind the CLI's `peers` feature
//! (see [`crate::peers`]); without it the run says how to get them.
//!
//! This module starts the run and holds the driver ([`Bench`]) that steps through the
//! measurements under a progress bar; [`plan`] says what to measure, [`measure`] measures
//! it, [`report`] holds and prints the figures, and [`plot`] draws them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use self::plan::Plan;
use self::report::{describe_machine, Skipped};
use crate::affinity::{self, Placement};
use crate::child::PeerLauncher;
use crate::error::{CliError, Context};
use crate::peers;
use crate::temp_dir::TempDir;

mod measure;
mod placed;
mod plan;
mod plot;
mod report;

/// `ringbell bench`'s options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A smoke run of every measurement, with counts cut to a few seconds' worth (CI runs
    /// it). The figures are too noisy to compare.
    #[arg(long)]
    pub quick: bool,
    /// Also write every figure, and the machine's description, to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also draw SVG plots into this directory (created if missing): latency percentiles
    /// at each size, and throughput against message size.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Leave out the peer libraries (iceoryx2, ipc-channel, tokio, tonic).
    #[arg(long)]
    pub no_peers: bool,
}

/// Runs the benchmark and prints its report.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let plan = if args.quick { Plan::QUICK } else { Plan::FULL };
    let machine = describe_machine()?;
    println!(
        "ringbell bench{}: every figure measured now, in this run, on this machine",
        if args.quick { " --quick" } else { "" }
    );
    println!("ringbell backend: {}", machine.backend);
    println!(
        "machine: {}; {} CPUs; kernel {}{}",
        machine.cpu,
        machine.cpus,
        machine.kernel,
        if machine.virtual_machine {
            format!(
                "; a virtual machine{}",
                machine
                    .vendor
                    .as_deref()
                    .map(|vendor| format!(" ({vendor})"))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        }
    );
    // Before any child or thread exists, so that all of ours stay on this core.
    let placement = affinity::place_beside_peer()?;
    match placement {
        Placement::Pinned { own, peer } => {
            println!("pinning: this process on CPU {own}, each peer process on CPU {peer}");
        }
        Placement::OneCpu => {
            return Err(CliError::new(
                "ringbell bench needs two CPUs: each side of every measurement gets its own",
            ));
        }
        Placement::NotPinnable(why) => {
            println!(
                "pinning: none ({why}): the scheduler places this process and each peer \
                 process, and may move them"
            );
        }
    }
    let peers_missing = !args.no_peers && peers::PeerKind::ALL.is_empty();
    if peers_missing {
        println!("{}", peers::MISSING);
    }
    let mut bench = Bench {
        plan,
        quick: args.quick,
        launcher: PeerLauncher::new(placement.peer_cpu())?,
        placement,
        workspace: TempDir::create("ringbell-bench")?,
        peers: if args.no_peers {
            Vec::new()
        } else {
            peers::PeerKind::ALL.to_vec()
        },
        // Drawn once the number of steps is known, which depends on the rest.
        progress: ProgressBar::hidden(),
        skipped: std::cell::RefCell::new(Vec::new()),
    };
    bench.progress = progress_bar(bench.steps());
    let report = bench.measure_all(machine)?;
    bench.progress.finish_and_clear();
    println!();
    report.print();
    if peers_missing {
        println!("\n{}", peers::MISSING);
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, json + "\n").context(format_args!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(dir) = &args.plot {
        for path in plot::draw(&report, dir)? {
            println!("wrote {}", path.display());
        }
    }
    println!("finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn progress_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

struct Bench {
    plan: Plan,
    quick: bool,
    launcher: PeerLauncher,
    /// Where this process and the peers run (the paced and unpinned rows change it for
    /// their runs, and put it back).
    placement: Placement,
    workspace: TempDir,
    peers: Vec<peers::PeerKind>,
    progress: ProgressBar,
    skipped: std::cell::RefCell<Vec<Skipped>>,
}

impl Bench {
    /// Runs one measurement under the progress bar; a failure is fatal.
    fn step<T>(
        &self,
        what: &str,
        measurement: impl FnOnce() -> Result<T, CliError>,
    ) -> Result<T, CliError> {
        self.progress.set_message(what.to_owned());
        let result = measurement().context(format_args!("measuring {what}"));
        self.progress.inc(1);
        result
    }

    /// Accounts for a measurement, of `steps` steps, that this OS cannot make: its steps
    /// pass, and it is reported as skipped, with why, as a failed peer is.
    fn left_out(&self, what: &str, steps: u64, why: &str) {
        self.progress.inc(steps);
        let why = format!("left out on this OS: {why}");
        self.progress.println(format!("skipped {what}: {why}"));
        self.skipped.borrow_mut().push(Skipped {
            name: what.to_owned(),
            why,
        });
    }

    /// Runs one measurement of a peer library; a failure is reported and skipped, since a
    /// peer's trouble on this machine says nothing about ringbell.
    fn peer_step<T>(
        &self,
        what: String,
        measurement: impl FnOnce() -> Result<T, CliError>,
    ) -> Option<T> {
        self.progress.set_message(what.clone());
        let result = measurement();
        self.progress.inc(1);
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.progress.println(format!("skipped {what}: {error}"));
                self.skipped.borrow_mut().push(Skipped {
                    name: what,
                    why: error.to_string(),
                });
                None
            }
        }
    }
}
