//! Round trips the way real programs make them (issue 14): paced, one every millisecond
//! as an editor sends, with the CPU each message costs both processes; and back to back
//! with the two processes not pinned apart, where a spinning side may hold the very CPU
//! its peer needs. ringbell with its default wait against a Unix socket, in each case.
//!
//! The placements:
//!
//! * **pinned apart**: as every other row of the bench, this process on one CPU and the
//!   peer on the other;
//! * **unpinned**: both may run on every CPU, and the scheduler places them (so a run may
//!   find them apart or together, and moves them);
//! * **one core**: both pinned to the same CPU, the worst an unpinned run can be dealt.
//!
//! CPU time is what each process's threads ran during the timed loop, from
//! `/proc/<pid>/task/*/schedstat` for the peer and `/proc/thread-self/schedstat` for this
//! side (nanoseconds), divided by the round trips.

use std::time::Duration;

use serde::Serialize;

use super::plan::LARGEST_MESSAGE;
use super::Bench;
use crate::affinity::{self, Placement};
use crate::args::WaitKind;
use crate::child::PeerLauncher;
use crate::error::CliError;
use crate::idle;
use crate::measure;
use crate::serve::ServeMode;
use crate::stats::LatencyRun;
use crate::stream::{self, StreamKind};

/// The size of every message of these rows.
pub(super) const PLACED_SIZE: usize = 64;
/// The pace of the paced rows: one round trip every millisecond.
pub(super) const PACE: Duration = Duration::from_millis(1);

/// Where the two processes of a row run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Where {
    PinnedApart,
    Unpinned,
    OneCore,
}

impl Where {
    fn label(self) -> &'static str {
        match self {
            Where::PinnedApart => "pinned apart",
            Where::Unpinned => "unpinned",
            Where::OneCore => "one core",
        }
    }
}

/// The rows: paced where pinned apart and unpinned, back to back unpinned and on one core.
pub(super) const PLACED_RUNS: [(Where, bool); 4] = [
    (Where::PinnedApart, true),
    (Where::Unpinned, true),
    (Where::Unpinned, false),
    (Where::OneCore, false),
];

/// The two subjects of every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Ringbell,
    UnixSocket,
}

const SUBJECTS: [Subject; 2] = [Subject::Ringbell, Subject::UnixSocket];

/// Row names.
pub(super) const PLACED_RINGBELL: &str = "ringbell, default wait";
pub(super) const PLACED_SOCKET: &str = "unix socket";

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Ringbell => PLACED_RINGBELL,
            Subject::UnixSocket => PLACED_SOCKET,
        }
    }
}

/// One row's figures.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PlacedRow {
    pub(super) name: String,
    pub(super) placement: Where,
    /// The pace, if the round trips were paced; back to back otherwise.
    pub(super) pace_us: Option<u64>,
    pub(super) round_trips: u64,
    pub(super) round_trips_per_second: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    /// CPU time per round trip, µs, of the peer process (the echo server) and of this one.
    pub(super) server_cpu_us: f64,
    pub(super) client_cpu_us: f64,
}

impl PlacedRow {
    pub(super) fn placement_label(&self) -> &'static str {
        self.placement.label()
    }

    pub(super) fn pinned_apart(&self) -> bool {
        self.placement == Where::PinnedApart
    }
}

/// How many steps [`Bench::placed`] makes, for the progress bar.
pub(super) const PLACED_STEPS: u64 = (PLACED_RUNS.len() * SUBJECTS.len()) as u64;

impl Bench {
    /// Every row of [`PLACED_RUNS`], for both subjects.
    pub(super) fn placed(&self, placement: Placement) -> Result<Vec<PlacedRow>, CliError> {
        let Placement::Pinned { own, peer } = placement else {
            self.left_out(
                "paced and unpinned round trips",
                PLACED_STEPS,
                "they compare placements on CPUs, and this machine cannot pin",
            );
            return Ok(Vec::new());
        };
        if let Some(why) = idle::NOT_ON_THIS_OS {
            self.left_out("paced and unpinned round trips", PLACED_STEPS, why);
            return Ok(Vec::new());
        }
        let mut rows = Vec::new();
        for (placement, paced) in PLACED_RUNS {
            let count = self.plan.placed_round_trips(paced);
            let launcher = match placement {
                Where::PinnedApart => self.launcher.on_cpu(Some(peer)),
                Where::Unpinned => self.launcher.on_cpu(None),
                Where::OneCore => self.launcher.on_cpu(Some(own)),
            };
            for subject in SUBJECTS {
                let pacing = if paced { "paced" } else { "back to back" };
                let what = format!(
                    "{} {pacing} round trips, {}",
                    subject.name(),
                    placement.label()
                );
                let (run, cpu) = self.step(&what, || {
                    // Unpinned: this side too, for the loop only (the peer is started from
                    // this thread, so it inherits the wider mask).
                    if placement == Where::Unpinned {
                        affinity::unpin()?;
                    }
                    let measured = round_trips(&launcher, self, subject, paced, count);
                    if placement == Where::Unpinned {
                        affinity::pin_to_cpu(own)?;
                    }
                    measured
                })?;
                let summary = run.summary();
                rows.push(PlacedRow {
                    name: subject.name().into(),
                    placement,
                    pace_us: paced.then_some(PACE.as_micros() as u64),
                    round_trips: count,
                    round_trips_per_second: run.round_trips_per_second(),
                    p50_us: summary.p50_us,
                    p99_us: summary.p99_us,
                    server_cpu_us: cpu.server_ns as f64 / count as f64 / 1_000.0,
                    client_cpu_us: cpu.client_ns as f64 / count as f64 / 1_000.0,
                });
            }
        }
        Ok(rows)
    }
}

/// CPU time both processes spent in a timed loop.
struct Cpu {
    server_ns: u64,
    client_ns: u64,
}

/// Starts `subject`'s echo server with `launcher`, then times `count` round trips.
fn round_trips(
    launcher: &PeerLauncher,
    bench: &Bench,
    subject: Subject,
    paced: bool,
    count: u64,
) -> Result<(LatencyRun, Cpu), CliError> {
    match subject {
        Subject::Ringbell => {
            let (server, mut connection) = crate::serve::start_local(
                launcher,
                bench.workspace.path(),
                WaitKind::Adaptive,
                ServeMode::Echo,
                LARGEST_MESSAGE,
            )?;
            let measured = timed(&mut connection, server.pid(), paced, count);
            drop(connection);
            drop(server);
            measured
        }
        Subject::UnixSocket => {
            let (peer, mut channel) =
                stream::start_peer(launcher, StreamKind::Uds, ServeMode::Echo)?;
            timed(&mut channel, peer.pid(), paced, count)
        }
    }
}

fn timed<T: ringbell::IpcTransport>(
    transport: &mut T,
    server_pid: u32,
    paced: bool,
    count: u64,
) -> Result<(LatencyRun, Cpu), CliError> {
    // Warm both sides up (connection set up, pages touched) outside the timed loop.
    measure::round_trips(transport, PLACED_SIZE, 0, 100)?;
    let (server_before, client_before) = (
        idle::cpu_ns_of_process(server_pid)?,
        idle::cpu_ns_of_this_thread()?,
    );
    let run = if paced {
        measure::paced_round_trips(transport, PLACED_SIZE, count, PACE)?
    } else {
        measure::round_trips(transport, PLACED_SIZE, 0, count)?
    };
    let cpu = Cpu {
        server_ns: idle::cpu_ns_of_process(server_pid)?.saturating_sub(server_before),
        client_ns: idle::cpu_ns_of_this_thread()?.saturating_sub(client_before),
    };
    Ok((run, cpu))
}
