//! The parent's run of one transport ([`TransportRun`]): it starts the server process,
//! then for each round starts the client processes, waits until they connect, tells them
//! to call, gathers their reports and reaps them, with every wait bounded and the server
//! sampled meanwhile; and the progress bar of a round.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};

use super::plan::Plan;
use super::protocol::{ClientReport, DONE_PREFIX};
use super::report::{IdleCpu, RoundResult, TransportResult};
use super::sample::{server_limits, ServerSample};
use super::Transport;
use crate::child::{ChildOutput, PeerLauncher, PeerProcess, LISTENING_PREFIX};
use crate::error::CliError;
use crate::idle::{cpu_tick_resolution, cpu_ticks, cpu_ticks_per_second};
use crate::stats::format_count;
use crate::temp_dir::TempDir;

/// How long the server may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the server's RSS and fd count are sampled while clients run.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// How long the server may take to answer `report`, and clients to exit after reporting.
const CHILD_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server may take to close the connections of clients that exited.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who printed a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Server,
    Client { round: u32, index: usize },
}

type Event = ChildOutput<Source>;

/// A server process and the rounds of clients run against it.
pub(super) struct TransportRun<'a> {
    plan: &'a Plan,
    transport: Transport,
    launcher: &'a PeerLauncher,
    socket: std::path::PathBuf,
    server: PeerProcess,
    server_pid: u32,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    /// The server's last `progress` count.
    handled: u64,
    /// The server's answer to the last `report`, once it came.
    reported: Option<u64>,
    /// The largest sample seen since the round began.
    peak: ServerSample,
    next_sample: Instant,
    /// What we are waiting for, for a timeout message.
    phase: String,
}

impl<'a> TransportRun<'a> {
    pub(super) fn start(
        plan: &'a Plan,
        transport: Transport,
        launcher: &'a PeerLauncher,
        workspace: &TempDir,
    ) -> Result<TransportRun<'a>, CliError> {
        let socket = workspace.path().join(format!("{}.sock", transport.arg()));
        let (events_tx, events) = mpsc::channel();
        let mut args: Vec<std::ffi::OsString> = vec![
            "__stress-server".into(),
            socket.clone().into(),
            "--transport".into(),
            transport.arg().into(),
            "--ring-capacity".into(),
            plan.ring_capacity.to_string().into(),
            "--concurrency".into(),
            plan.concurrency.to_string().into(),
            // Every client at once, with room for a round's stragglers.
            "--max-connections".into(),
            (plan.clients + 64).to_string().into(),
        ];
        if let Some((fault, every)) = plan.fault {
            let fault = fault.to_possible_value().expect("no fault is skipped");
            args.extend([
                "--fault".into(),
                fault.get_name().into(),
                "--fault-every".into(),
                every.to_string().into(),
            ]);
        }
        let server = PeerProcess::spawn_talking(
            &format!("{} stress server", transport.arg()),
            launcher.command(&args),
            Source::Server,
            events_tx.clone(),
        )?;
        let server_pid = server.pid();
        let run = TransportRun {
            plan,
            transport,
            launcher,
            socket,
            server,
            server_pid,
            events,
            events_tx,
            handled: 0,
            reported: None,
            peak: ServerSample::default(),
            next_sample: Instant::now(),
            phase: format!("the {} server to start listening", transport.arg()),
        };
        let listen_by = Instant::now() + LISTEN_TIMEOUT;
        loop {
            match run
                .events
                .recv_timeout(listen_by.saturating_duration_since(Instant::now()))
            {
                Ok(ChildOutput::Line(_, line)) if line.starts_with(LISTENING_PREFIX) => break,
                Ok(ChildOutput::Line(..)) => {}
                Ok(ChildOutput::Closed(_)) => {
                    return Err(CliError::new(format!(
                        "the {} stress server exited before it listened (its error is above)",
                        transport.arg()
                    )))
                }
                Err(_) => {
                    return Err(CliError::new(format!(
                        "the {} stress server did not listen within {LISTEN_TIMEOUT:?}",
                        transport.arg()
                    )))
                }
            }
        }
        Ok(run)
    }

    pub(super) fn run_rounds(&mut self) -> Result<TransportResult, CliError> {
        let before = ServerSample::read(self.server_pid)?;
        let mut rounds = Vec::new();
        for round in 1..=self.plan.rounds {
            rounds.push(self.run_round(round)?);
        }
        Ok(TransportResult {
            transport: self.transport,
            before,
            rounds,
        })
    }

    /// The next line from a client, or `None` after at most one sampling interval. Lines
    /// from the server are taken in here. Fails past `--timeout` and if the server is gone.
    fn next_event(&mut self) -> Result<Option<Event>, CliError> {
        let now = Instant::now();
        if now >= self.plan.deadline {
            return Err(CliError::new(format!(
                "the run did not finish within --timeout {} s (waiting for {}); \
                 every process was killed",
                self.plan.timeout.as_secs(),
                self.phase
            )));
        }
        if now >= self.next_sample {
            // The server may exit between two looks: its end is reported below.
            if let Ok(sample) = ServerSample::read(self.server_pid) {
                self.peak = self.peak.max(sample);
            }
            self.next_sample = now + SAMPLE_INTERVAL;
        }
        let wait = self
            .next_sample
            .min(self.plan.deadline)
            .saturating_duration_since(now);
        match self.events.recv_timeout(wait) {
            Ok(ChildOutput::Line(Source::Server, line)) => {
                if let Some(count) = line.strip_prefix("progress ") {
                    self.handled = count.parse().unwrap_or(self.handled);
                } else if let Some(count) = line.strip_prefix("report ") {
                    self.reported = count.parse().ok();
                }
                Ok(None)
            }
            Ok(ChildOutput::Closed(Source::Server)) => Err(CliError::new(format!(
                "the {} stress server exited while we waited for {} (its error, if any, is above)",
                self.transport.arg(),
                self.phase
            ))),
            Ok(event) => Ok(Some(event)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                unreachable!("the run holds a sender of its own channel")
            }
        }
    }

    /// Asks the server how many requests it has handled so far.
    fn query_handled(&mut self) -> Result<u64, CliError> {
        self.reported = None;
        self.server.write_line("report")?;
        let by = Instant::now() + CHILD_ANSWER_TIMEOUT;
        self.phase = "the server's count of handled requests".to_owned();
        loop {
            self.next_event()?;
            if let Some(count) = self.reported {
                return Ok(count);
            }
            if Instant::now() >= by {
                return Err(CliError::new(format!(
                    "the {} stress server did not report its count within {CHILD_ANSWER_TIMEOUT:?}",
                    self.transport.arg()
                )));
            }
        }
    }

    fn run_round(&mut self, round: u32) -> Result<RoundResult, CliError> {
        let plan = self.plan;
        let handled_before = self.query_handled()?;
        let fds_before = ServerSample::read(self.server_pid)?.fds;
        self.peak = ServerSample::read(self.server_pid)?;
        let progress = if plan.progress {
            progress_bar(plan.calls_per_round(), self.transport, round, plan.rounds)
        } else {
            ProgressBar::hidden()
        };

        // Start the clients, then wait until every one has connected.
        let connect_started = Instant::now();
        let mut clients = Vec::with_capacity(plan.processes as usize);
        for index in 0..plan.processes {
            clients.push(self.spawn_client(round, index)?);
        }
        let mut ready = vec![false; clients.len()];
        let mut ready_count = 0;
        let mut connected: u64 = 0;
        self.phase = "the clients to connect".to_owned();
        while ready_count < clients.len() {
            progress.set_message(format!("connecting {ready_count}/{}", clients.len()));
            let Some(event) = self.next_event()? else {
                continue;
            };
            match event {
                ChildOutput::Line(Source::Client { round: r, index }, line) if r == round => {
                    if let Some(count) = line.strip_prefix("ready ") {
                        if !ready[index] {
                            ready[index] = true;
                            ready_count += 1;
                            connected += count.parse::<u64>().unwrap_or(0);
                        }
                    } else if let Some(error) = line.strip_prefix("error ") {
                        return Err(self.client_failed(index, error, connected));
                    }
                }
                ChildOutput::Closed(Source::Client { round: r, index }) if r == round => {
                    return Err(self.client_failed(
                        index,
                        "it exited before it was ready",
                        connected,
                    ));
                }
                _ => {}
            }
        }
        let connected_in = connect_started.elapsed();

        let idle = if round == 1 && !plan.idle.is_zero() {
            progress.set_message(format!("idle {} s", plan.idle.as_secs()));
            Some(self.measure_idle(connected)?)
        } else {
            None
        };

        // Go: every client calls, and reports when done.
        self.peak = self.peak.max(ServerSample::read(self.server_pid)?);
        progress.set_message("calling");
        progress.reset_elapsed();
        let calls_started = Instant::now();
        for client in &mut clients {
            client.write_line("go")?;
        }
        let mut report = ClientReport::default();
        let mut done = vec![false; clients.len()];
        let mut done_count = 0;
        let mut last_done = calls_started;
        self.phase = "the clients' calls".to_owned();
        while done_count < clients.len() {
            let event = self.next_event()?;
            progress.set_position(self.handled.saturating_sub(handled_before));
            let Some(event) = event else { continue };
            match event {
                ChildOutput::Line(Source::Client { round: r, index }, line) if r == round => {
                    if line.starts_with(DONE_PREFIX) && !done[index] {
                        let client_report = ClientReport::parse(&line).map_err(|error| {
                            CliError::new(format!("client process {}: {error}", index + 1))
                        })?;
                        report.merge(&client_report);
                        done[index] = true;
                        done_count += 1;
                        last_done = Instant::now();
                    } else if let Some(error) = line.strip_prefix("error ") {
                        return Err(self.client_failed(index, error, connected));
                    }
                }
                ChildOutput::Closed(Source::Client { round: r, index })
                    if r == round && !done[index] =>
                {
                    return Err(CliError::new(format!(
                        "client process {} of {} exited before reporting (its error, if any, is above)",
                        index + 1,
                        clients.len()
                    )));
                }
                _ => {}
            }
        }
        let calls_in = last_done - calls_started;
        progress.finish_and_clear();
        let during = self.peak;

        // Reap the clients, count the server's requests, and let it close the connections.
        self.phase = "the client processes to exit".to_owned();
        for client in clients {
            client.finish(plan.time_left(CHILD_ANSWER_TIMEOUT))?;
        }
        let server_handled = self.query_handled()? - handled_before;
        let after = self.settle(fds_before)?;
        Ok(RoundResult {
            connected_in,
            calls_in,
            expected: plan.calls_per_round(),
            report,
            server_handled,
            during,
            after,
            idle,
        })
    }

    fn spawn_client(&self, round: u32, index: u64) -> Result<PeerProcess, CliError> {
        let plan = self.plan;
        let (connections, first) = plan.share_of(index);
        let command = self.launcher.command(&[
            "__stress-client".into(),
            self.socket.clone().into(),
            "--transport".into(),
            self.transport.arg().into(),
            "--connections".into(),
            connections.to_string().into(),
            "--first-client".into(),
            first.to_string().into(),
            "--requests".into(),
            plan.requests.to_string().into(),
            "--size-range".into(),
            format!("{}..{}", plan.sizes.min, plan.sizes.max).into(),
            "--concurrency".into(),
            plan.concurrency.to_string().into(),
            "--seed".into(),
            plan.seed.to_string().into(),
            "--call-timeout-ms".into(),
            plan.call_timeout.as_millis().to_string().into(),
        ]);
        PeerProcess::spawn_talking(
            &format!("stress client {}", index + 1),
            command,
            Source::Client {
                round,
                index: index as usize,
            },
            self.events_tx.clone(),
        )
    }

    /// The error for a client process that could not get ready or failed, with the
    /// server's resources beside their limits, since those are what usually stop a run.
    fn client_failed(&self, index: usize, error: &str, connected: u64) -> CliError {
        let mut message = format!(
            "{} client process {} of {}: {error}",
            self.transport.arg(),
            index + 1,
            self.plan.processes
        );
        message.push_str(&format!(
            "; the client processes ready by then held {} connections",
            format_count(connected as f64)
        ));
        if let Some(limits) = server_limits(self.server_pid) {
            message.push_str(&format!("; the server: {limits}"));
        }
        CliError::new(message)
    }

    /// Measures the server's CPU use while every client is connected and idle.
    fn measure_idle(&mut self, connections: u64) -> Result<IdleCpu, CliError> {
        self.phase = "the idle period to end".to_owned();
        let before = cpu_ticks(self.server_pid)?;
        let started = Instant::now();
        let until = started + self.plan.idle;
        while Instant::now() < until {
            if let Some(ChildOutput::Line(Source::Client { index, .. }, line)) =
                self.next_event()?
            {
                if let Some(error) = line.strip_prefix("error ") {
                    return Err(self.client_failed(index, error, connections));
                }
            }
        }
        let elapsed = started.elapsed();
        let ticks = cpu_ticks(self.server_pid)? - before;
        let ticks_per_second = cpu_ticks_per_second();
        let percent = |ticks: u64| ticks as f64 / ticks_per_second / elapsed.as_secs_f64() * 100.0;
        Ok(IdleCpu {
            connections,
            elapsed,
            percent: percent(ticks),
            resolution_percent: percent(cpu_tick_resolution()),
        })
    }

    /// Waits until the server has closed this round's connections (its fd count is back
    /// to `fds_before`), or for a few seconds, then samples it.
    fn settle(&mut self, fds_before: u64) -> Result<ServerSample, CliError> {
        self.phase = "the server to close the connections".to_owned();
        let by = Instant::now() + self.plan.time_left(SETTLE_TIMEOUT);
        loop {
            let sample = ServerSample::read(self.server_pid)?;
            if sample.fds <= fds_before || Instant::now() >= by {
                return Ok(sample);
            }
            self.next_event()?;
        }
    }
}

fn progress_bar(calls: u64, transport: Transport, round: u32, rounds: u32) -> ProgressBar {
    let prefix = if rounds > 1 {
        format!("{} {round}/{rounds}", transport.arg())
    } else {
        transport.arg().to_owned()
    };
    let style = ProgressStyle::with_template(
        "{prefix} {msg:<16} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} calls ({per_sec:0})",
    )
    .expect("the template is valid");
    // Style, label and message before anything draws: setting them one by one on a bar
    // that already shows drew a first frame in indicatif's default style, with no label
    // and no thousands separators.
    let bar = ProgressBar::hidden()
        .with_style(style)
        .with_prefix(prefix)
        .with_message("starting");
    bar.set_length(calls);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
