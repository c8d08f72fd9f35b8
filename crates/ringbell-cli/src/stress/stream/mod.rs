//! `ringbell stress --pattern stream`: many concurrent streamed calls, a seeded random
//! subset of them cancelled part-way by dropping the stream, every item of every other
//! stream checked, and the server's handlers counted as they observe their cancels.
//!
//! Three kinds of process, all started from this executable, as in the echo pattern:
//! - this one, the parent: it starts the others, tells the clients when to start, gathers
//!   their reports, checks them against the streams it expects, asks the server how many
//!   cancels its handlers observed, and prints the result;
//! - `__stress-stream-server` ([`server`]): `AsyncServer::serve_calls`, whose handler sends
//!   the items a request names and counts the cancels it observes, and answers the
//!   parent's `report` with that count;
//! - `__stress-stream-client` ([`client`]), `--processes` of them (4 unless told, at most
//!   one per connection): each opens its share of the connections, waits for `go`, runs
//!   the streams that fall on them, and prints one [`StreamReport`] line.
//!
//! Every child is a [`PeerProcess`], killed and reaped however the run ends, and tied to
//! this process with `--parent-pid`; every wait here ends at `--timeout`. A client process
//! that dies before it reports fails the run, naming it and how it ended.
//!
//! A stream's request names the stream, its item count and item size; its items are
//! derived from those alone ([`wire::expected_item`]), so the client can check each one
//! byte for byte, and the reply says `done <count>`. Stream `s` goes on connection
//! `s % connections`, whichever process holds it, so a seed draws the same streams,
//! cancels and connections however many processes share them.

mod client;
mod server;
mod wire;

use std::ffi::OsString;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use clap::ValueEnum;

pub use self::client::{run as run_client, StreamClientArgs};
use self::server::CANCELS_PREFIX;
pub use self::server::{run as run_server, StreamServerArgs};
use self::wire::{StreamReport, StreamSet, REPORT_PREFIX, WINDOW};
use super::plan::share;
use crate::child::{ChildOutput, PeerLauncher, PeerProcess, LISTENING_PREFIX};
use crate::error::CliError;
use crate::temp_dir::TempDir;

/// How long the server has, after the last stream, to observe every cancel.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// How long a child may take to answer the parent, or to exit once told to.
const CHILD_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for a client process whose output ended, to learn how it ended.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(2);

/// Client processes when `--processes` is not given.
const DEFAULT_PROCESSES: u64 = 4;

/// A fault injected on purpose, to show that the run then fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamFault {
    /// The server leaves out item 1 of stream 0.
    Skip,
    /// The server sends item 1 of stream 0 twice.
    Duplicate,
    /// The client process holding stream 0 exits part-way through it, as a crash would.
    ExitClient,
    /// The server sends stream 0's first item and then nothing more, as a hung handler
    /// would: only `--timeout` ends the run.
    Stall,
}

/// What one stream run does.
#[derive(Debug, Clone)]
pub(super) struct StreamPlan {
    pub(super) streams: u64,
    pub(super) connections: u64,
    pub(super) processes: u64,
    /// `--processes` as given, when more than the connections.
    pub(super) processes_asked: Option<u64>,
    pub(super) item_size: u32,
    pub(super) seed: u64,
    pub(super) fault: Option<StreamFault>,
    pub(super) timeout: Duration,
    pub(super) deadline: Instant,
}

impl StreamPlan {
    pub(super) fn new(
        quick: bool,
        processes: Option<u64>,
        seed: u64,
        fault: Option<StreamFault>,
        timeout: Duration,
    ) -> Self {
        let connections = if quick { 4 } else { 16 };
        let asked = processes.unwrap_or(DEFAULT_PROCESSES);
        StreamPlan {
            streams: if quick { 64 } else { 400 },
            connections,
            processes: asked.min(connections),
            processes_asked: (asked > connections).then_some(asked),
            item_size: 64,
            seed,
            fault,
            timeout,
            deadline: Instant::now() + timeout,
        }
    }

    fn set(&self) -> StreamSet {
        StreamSet {
            seed: self.seed,
            item_size: self.item_size,
            fault: self.fault,
        }
    }
}

/// Who printed a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Server,
    Client(usize),
}

type Event = ChildOutput<Source>;

/// Runs the stream pattern and prints its summary.
pub(super) fn run(plan: &StreamPlan) -> Result<(), CliError> {
    println!(
        "ringbell stress --pattern stream: {} streams over {} connections in {}, window \
         of {WINDOW} items, {}-byte items, about a quarter cancelled at random; seed {}",
        plan.streams,
        plan.connections,
        client_processes(plan.processes),
        plan.item_size,
        plan.seed
    );
    if let Some(asked) = plan.processes_asked {
        println!(
            "note:   {} client processes, not {asked}: one per connection at most",
            plan.processes
        );
    }
    println!(
        "server: one process, AsyncServer::serve_calls on a tokio runtime with a worker per \
         CPU ({}); clients: single-threaded tokio runtimes, each opening all its streams at \
         once",
        thread::available_parallelism().map_or(1, |cpus| cpus.get())
    );
    let started = Instant::now();
    let workspace = TempDir::create("ringbell-stress-stream")?;
    let launcher = PeerLauncher::new(None)?;
    let summary = StreamRun::start(plan, &launcher, &workspace)
        .and_then(|mut run| run.drive())
        .map_err(|why| CliError::new(format!("stress test failed: {why}")))?;
    let elapsed = started.elapsed().as_secs_f64();
    let streaming = summary.streaming.as_secs_f64().max(1e-9);
    println!(
        "streams: {} ({} completed, {} cancelled) over {}; items verified: \
         {} of {} expected; cancels requested: {}, observed by the server: {}",
        summary.merged.streams,
        summary.merged.completed,
        summary.merged.cancelled,
        client_processes(plan.processes),
        summary.merged.items,
        summary.expected_items,
        summary.merged.cancelled,
        summary.cancels_observed,
    );
    println!(
        "streaming: {:.3} s from go to the last report, {:.0} items/s, {:.0} streams/s; \
         finished in {elapsed:.2} s (starting and connecting the processes included)",
        streaming,
        summary.merged.items as f64 / streaming,
        summary.merged.streams as f64 / streaming,
    );
    println!("PASS: every item of every stream not cancelled arrived once, in order, intact");
    Ok(())
}

/// What a run that passed saw.
struct StreamSummary {
    merged: StreamReport,
    expected_items: u64,
    cancels_observed: u64,
    streaming: Duration,
}

/// The server process and the client processes of one run, and their output.
struct StreamRun<'a> {
    plan: &'a StreamPlan,
    launcher: &'a PeerLauncher,
    socket: std::path::PathBuf,
    server: PeerProcess,
    /// `None` once reaped.
    clients: Vec<Option<PeerProcess>>,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
}

impl<'a> StreamRun<'a> {
    /// Starts the server process and waits until it listens.
    fn start(
        plan: &'a StreamPlan,
        launcher: &'a PeerLauncher,
        workspace: &TempDir,
    ) -> Result<StreamRun<'a>, CliError> {
        let socket = workspace.path().join("stream.sock");
        let (events_tx, events) = mpsc::channel();
        let mut args: Vec<OsString> = vec!["__stress-stream-server".into(), socket.clone().into()];
        // Skipping and duplicating are the server's to do; exiting is a client's.
        if let Some(fault @ (StreamFault::Skip | StreamFault::Duplicate | StreamFault::Stall)) =
            plan.fault
        {
            args.extend(["--stream-fault".into(), fault_name(fault).into()]);
        }
        let server = PeerProcess::spawn_talking(
            "stream server",
            launcher.command(&args),
            Source::Server,
            events_tx.clone(),
        )?;
        let run = StreamRun {
            plan,
            launcher,
            socket,
            server,
            clients: Vec::new(),
            events,
            events_tx,
        };
        loop {
            if let ChildOutput::Line(Source::Server, line) =
                run.next_event("the server to listen")?
            {
                if line.starts_with(LISTENING_PREFIX) {
                    return Ok(run);
                }
            }
        }
    }

    /// The next line or end of output of a child, until `--timeout`. The server's end is
    /// an error whatever we wait for: `phase` says what that was.
    fn next_event(&self, phase: &str) -> Result<Event, CliError> {
        let wait = self.plan.deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(wait) {
            Ok(ChildOutput::Closed(Source::Server)) => Err(CliError::new(format!(
                "the stream server exited while we waited for {phase} (its error, if any, is above)"
            ))),
            Ok(event) => Ok(event),
            Err(RecvTimeoutError::Timeout) => Err(CliError::new(format!(
                "the stream run did not finish within --timeout {} s (waiting for {phase}); \
                 every process was killed",
                self.plan.timeout.as_secs()
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                unreachable!("the run holds a sender of its own channel")
            }
        }
    }

    /// Runs the clients' streams, checks what they report, then the server's cancels.
    fn drive(&mut self) -> Result<StreamSummary, CliError> {
        let plan = self.plan;
        for index in 0..plan.processes {
            let client = self.spawn_client(index)?;
            self.clients.push(Some(client));
        }
        let processes = self.clients.len();

        let mut ready = vec![false; processes];
        while ready.contains(&false) {
            match self.next_event("the client processes to connect")? {
                ChildOutput::Line(Source::Client(index), line) => {
                    if line.starts_with("ready ") {
                        ready[index] = true;
                    } else if let Some(error) = line.strip_prefix("error ") {
                        return Err(self.client_failed(index, error));
                    }
                }
                ChildOutput::Closed(Source::Client(index)) => {
                    return Err(self.client_died(index, "before it was ready"));
                }
                _ => {}
            }
        }

        let go = Instant::now();
        for client in self.clients.iter_mut().flatten() {
            client.write_line("go")?;
        }
        let mut reports: Vec<Option<StreamReport>> = vec![None; processes];
        let mut last_report = go;
        while reports.contains(&None) {
            match self.next_event("the client processes' streams")? {
                ChildOutput::Line(Source::Client(index), line) => {
                    if line.starts_with(REPORT_PREFIX) && reports[index].is_none() {
                        let report = StreamReport::parse(&line).map_err(|error| {
                            CliError::new(format!(
                                "stream client process {} of {processes}: {error}",
                                index + 1
                            ))
                        })?;
                        reports[index] = Some(report);
                        last_report = Instant::now();
                    } else if let Some(error) = line.strip_prefix("error ") {
                        return Err(self.client_failed(index, error));
                    }
                }
                ChildOutput::Closed(Source::Client(index)) if reports[index].is_none() => {
                    return Err(self.client_died(index, "before it reported its streams"));
                }
                _ => {}
            }
        }
        let streaming = last_report - go;
        let reports: Vec<StreamReport> = reports.into_iter().flatten().collect();
        let merged = merge_and_print(&reports);
        self.check_reports(&reports, &merged)?;
        let expected_items = (0..plan.streams)
            .map(|stream| plan.set().spec(stream).items_to_verify())
            .sum();
        if merged.items != expected_items {
            return Err(CliError::new(format!(
                "the client processes verified {} items, but the streams drawn from seed {} \
                 hold {expected_items} before their cancel points",
                merged.items, plan.seed
            )));
        }

        let cancels_observed = self.await_cancels(merged.cancelled)?;
        for client in self.clients.iter_mut().flatten() {
            client.write_line("exit")?;
        }
        for (index, client) in self.clients.iter_mut().enumerate() {
            if let Some(client) = client.take() {
                let left = plan
                    .deadline
                    .saturating_duration_since(Instant::now())
                    .min(CHILD_ANSWER_TIMEOUT);
                client.finish(left).map_err(|error| {
                    CliError::new(format!(
                        "stream client process {} of {processes}, after its report: {error}",
                        index + 1
                    ))
                })?;
            }
        }
        Ok(StreamSummary {
            merged,
            expected_items,
            cancels_observed,
            streaming,
        })
    }

    /// Fails the run if a client process found a bad stream, or ran other streams than
    /// the plan holds.
    fn check_reports(
        &self,
        reports: &[StreamReport],
        merged: &StreamReport,
    ) -> Result<(), CliError> {
        let processes = reports.len();
        let failures: Vec<String> = reports
            .iter()
            .enumerate()
            .filter(|(_, report)| report.failed > 0)
            .map(|(index, report)| {
                format!(
                    "stream client process {} of {processes}: {} of its {} streams failed: {}",
                    index + 1,
                    report.failed,
                    report.streams,
                    report.errors.as_deref().unwrap_or("(no reason given)")
                )
            })
            .collect();
        if !failures.is_empty() {
            return Err(CliError::new(failures.join("; ")));
        }
        if merged.streams != self.plan.streams
            || merged.completed + merged.cancelled != merged.streams
        {
            return Err(CliError::new(format!(
                "the client processes ran {} streams ({} completed, {} cancelled), not {}",
                merged.streams, merged.completed, merged.cancelled, self.plan.streams
            )));
        }
        Ok(())
    }

    /// Asks the server for the cancels its handlers observed until they match the
    /// `requested`, which they do asynchronously, or until [`CANCEL_GRACE`] has passed.
    fn await_cancels(&mut self, requested: u64) -> Result<u64, CliError> {
        let grace_ends = Instant::now() + CANCEL_GRACE;
        loop {
            self.server.write_line("report")?;
            let answer_by = Instant::now() + CHILD_ANSWER_TIMEOUT;
            let observed = loop {
                if Instant::now() >= answer_by {
                    return Err(CliError::new(format!(
                        "the stream server did not report its cancels within {CHILD_ANSWER_TIMEOUT:?}"
                    )));
                }
                if let ChildOutput::Line(Source::Server, line) =
                    self.next_event("the server's count of cancels")?
                {
                    if let Some(count) = line.strip_prefix(CANCELS_PREFIX) {
                        break count.parse::<u64>().map_err(|_| {
                            CliError::new(format!("the stream server answered {line:?}"))
                        })?;
                    }
                }
            };
            if observed == requested {
                return Ok(observed);
            }
            if Instant::now() >= grace_ends {
                return Err(CliError::new(format!(
                    "{requested} cancels requested but the server's handlers observed \
                     {observed} within {} s",
                    CANCEL_GRACE.as_secs()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn_client(&self, index: u64) -> Result<PeerProcess, CliError> {
        let plan = self.plan;
        let (connections, first) = share(plan.connections, plan.processes, index);
        let mut args: Vec<OsString> = vec![
            "__stress-stream-client".into(),
            self.socket.clone().into(),
            "--connections".into(),
            connections.to_string().into(),
            "--first-connection".into(),
            first.to_string().into(),
            "--total-connections".into(),
            plan.connections.to_string().into(),
            "--streams".into(),
            plan.streams.to_string().into(),
            "--item-size".into(),
            plan.item_size.to_string().into(),
            "--seed".into(),
            plan.seed.to_string().into(),
        ];
        if let Some(fault) = plan.fault {
            args.extend(["--stream-fault".into(), fault_name(fault).into()]);
        }
        PeerProcess::spawn_talking(
            &format!("stream client {}", index + 1),
            self.launcher.command(&args),
            Source::Client(index as usize),
            self.events_tx.clone(),
        )
    }

    /// The error for a client process that said it failed.
    fn client_failed(&self, index: usize, error: &str) -> CliError {
        CliError::new(format!(
            "stream client process {} of {}: {error}",
            index + 1,
            self.clients.len()
        ))
    }

    /// The error for a client process whose output ended too soon, with how it ended.
    fn client_died(&mut self, index: usize, when: &str) -> CliError {
        let how = match self.clients[index].take() {
            Some(client) => match client.finish(EXIT_STATUS_WAIT) {
                Ok(()) => "it exited with status 0".to_owned(),
                Err(error) => error.to_string(),
            },
            None => "it was reaped already".to_owned(),
        };
        CliError::new(format!(
            "stream client process {} of {} exited {when}: {how}; its streams went unchecked \
             (its error, if any, is above)",
            index + 1,
            self.clients.len()
        ))
    }
}

/// Prints each client process's counts and returns their sum.
fn merge_and_print(reports: &[StreamReport]) -> StreamReport {
    let mut merged = StreamReport::default();
    for (index, report) in reports.iter().enumerate() {
        println!(
            "client process {}: {} streams ({} completed, {} cancelled, {} failed), {} items \
             verified",
            index + 1,
            report.streams,
            report.completed,
            report.cancelled,
            report.failed,
            report.items
        );
        merged.streams += report.streams;
        merged.completed += report.completed;
        merged.cancelled += report.cancelled;
        merged.items += report.items;
        merged.failed += report.failed;
    }
    merged
}

/// `1 client process`, `4 client processes`.
fn client_processes(count: u64) -> String {
    if count == 1 {
        "1 client process".to_owned()
    } else {
        format!("{count} client processes")
    }
}

/// A fault's name on the command line.
fn fault_name(fault: StreamFault) -> String {
    fault
        .to_possible_value()
        .expect("no fault is skipped")
        .get_name()
        .to_owned()
}
