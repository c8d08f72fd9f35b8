//! What `bench` reports: the machine, a row per figure ([`Report`], also written as
//! JSON), the tables printed at the end with the targets met or missed, and the machine's
//! description read from `/proc` and `/sys`.

use std::path::Path;

use serde::Serialize;

use super::measure::{MEMCPY_PLACEMENTS, MEMCPY_ROUNDS};
use super::placed::{PlacedRow, PLACED_RINGBELL, PLACED_SIZE, PLACED_SOCKET};
use super::plan::{
    BATCH, BATCHED_SIZE, LARGEST_MESSAGE, LATENCY_SIZES, LOAD_PROCESSES, LOAD_SIZE,
    THROUGHPUT_SIZES,
};
use super::plot;
use crate::affinity;
use crate::error::CliError;
use crate::peers;
use crate::stats::{compare, format_count, print_table, Better, LatencyRun, ThroughputRun};
use crate::stream::StreamKind;
use crate::streamed::{StreamedTransport, ITEM_SIZE};

/// The machine the figures come from.
#[derive(Debug, Serialize)]
pub(super) struct Machine {
    pub(super) cpu: String,
    /// CPUs this process may run on.
    pub(super) cpus: usize,
    pub(super) kernel: String,
    /// Whether the CPU reports a hypervisor (`hypervisor` in /proc/cpuinfo's flags).
    pub(super) virtual_machine: bool,
    /// The hypervisor's vendor, from DMI, when it says.
    pub(super) vendor: Option<String>,
    /// The ringbell platform backend measured (`ringbell::backend()`): "linux", "macos" or "posix".
    pub(super) backend: &'static str,
}

/// One latency figure.
#[derive(Debug, Clone, Serialize)]
pub(super) struct LatencyRow {
    pub(super) name: String,
    pub(super) size: usize,
    round_trips: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// (quantile, microseconds) for the plots.
    pub(super) percentiles: Vec<(f64, f64)>,
}

/// One throughput figure.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ThroughputRow {
    pub(super) name: String,
    pub(super) size: usize,
    messages: u64,
    messages_per_second: f64,
    pub(super) gigabytes_per_second: f64,
}

/// One request/response figure.
#[derive(Debug, Clone, Serialize)]
pub(super) struct LoadRow {
    pub(super) name: String,
    pub(super) clients: u64,
    pub(super) processes: u64,
    pub(super) calls: u64,
    pub(super) requests_per_second: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    /// Growth of the server's resident memory from before the clients connected to its
    /// peak while they called, per connection.
    pub(super) server_kib_per_connection: f64,
}

/// One transport's streamed-call figures, 64-byte items.
#[derive(Debug, Clone, Serialize)]
pub(super) struct StreamedRow {
    pub(super) name: String,
    /// One stream.
    pub(super) items_per_second: f64,
    pub(super) first_item_p50_us: f64,
    /// A unary call on the same server (5 bytes in, 8 out).
    pub(super) unary_p50_us: f64,
    /// Many streams at once, items per second over all.
    pub(super) concurrent_streams: u32,
    pub(super) concurrent_items_per_second: f64,
    /// From the client's cancel to the handler's observation, while the server is busy.
    pub(super) cancel_p50_us: f64,
    pub(super) cancel_p99_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct IdleRow {
    pub(super) seconds: f64,
    pub(super) server_percent_of_a_core: f64,
    pub(super) client_percent_of_a_core: f64,
    pub(super) resolution_percent: f64,
}

/// A measurement that could not run, and why.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Skipped {
    pub(super) name: String,
    pub(super) why: String,
}

/// Everything `bench` measured.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) command: String,
    pub(super) quick: bool,
    pub(super) machine: Machine,
    pub(super) latency: Vec<LatencyRow>,
    pub(super) throughput: Vec<ThroughputRow>,
    pub(super) load: Vec<LoadRow>,
    pub(super) streamed: Vec<StreamedRow>,
    /// Paced round trips, and round trips of processes not pinned apart.
    pub(super) placed: Vec<PlacedRow>,
    pub(super) idle: Option<IdleRow>,
    pub(super) skipped: Vec<Skipped>,
    /// How each peer library is used.
    pub(super) peers: Vec<peers::PeerNote>,
}

/// Row names.
pub(super) const RINGBELL_SPIN: &str = "ringbell spin";
pub(super) const RINGBELL_ADAPTIVE: &str = "ringbell adaptive";
pub(super) const RINGBELL_BLOCK: &str = "ringbell block";
pub(super) const RAW_SPIN: &str = "raw spin (floor)";
pub(super) const RAW_FUTEX: &str = "raw futex (floor)";
pub(super) const EVENTFD: &str = "eventfd (floor)";
pub(super) const MEMCPY: &str = "memcpy (ceiling)";
pub(super) const RINGBELL_BATCHES: &str = "ringbell adaptive, batches of 64";
pub(super) const UDS_BATCHES: &str = "unix socket, batches of 64";
pub(super) const RINGBELL_LOAD: &str = "ringbell AsyncServer";
pub(super) const TOKIO_UDS_LOAD: &str = "tokio UnixStream";
pub(super) const TONIC_STREAMED: &str = crate::streamed::TONIC_NAME;
/// The targets for streamed calls: against tonic, and the cancel's p99.
const STREAMED_VS_TONIC: f64 = 20.0;
const FIRST_ITEM_VS_TONIC: f64 = 0.1;
const CANCEL_P99_US: f64 = 1_000.0;

pub(super) fn latency_row(name: String, size: usize, run: &LatencyRun) -> LatencyRow {
    let micros = |quantile: f64| run.histogram.value_at_quantile(quantile) as f64 / 1_000.0;
    LatencyRow {
        name,
        size,
        round_trips: run.histogram.len(),
        p50_us: micros(0.5),
        p90_us: micros(0.9),
        p99_us: micros(0.99),
        p999_us: micros(0.999),
        max_us: run.histogram.max() as f64 / 1_000.0,
        percentiles: plot::QUANTILES
            .iter()
            .map(|&quantile| (quantile, micros(quantile)))
            .collect(),
    }
}

pub(super) fn throughput_row(name: String, run: &ThroughputRun) -> ThroughputRow {
    ThroughputRow {
        name,
        size: run.message_size,
        messages: run.messages,
        messages_per_second: run.messages_per_second(),
        gigabytes_per_second: run.megabytes_per_second() / 1_000.0,
    }
}

/// `64 B`, `4 KiB`, `1 MiB`.
pub(super) fn format_size(size: usize) -> String {
    match size {
        size if size >= 1 << 20 && size % (1 << 20) == 0 => format!("{} MiB", size >> 20),
        size if size >= 1 << 10 && size % (1 << 10) == 0 => format!("{} KiB", size >> 10),
        size => format!("{size} B"),
    }
}

impl Report {
    fn latency(&self, name: &str, size: usize) -> Option<&LatencyRow> {
        self.latency
            .iter()
            .find(|row| row.name == name && row.size == size)
    }

    fn throughput(&self, name: &str, size: usize) -> Option<&ThroughputRow> {
        self.throughput
            .iter()
            .find(|row| row.name == name && row.size == size)
    }

    fn load(&self, name: &str, clients: u64) -> Option<&LoadRow> {
        self.load
            .iter()
            .find(|row| row.name == name && row.clients == clients)
    }

    pub(super) fn print(&self) {
        self.print_targets();
        for size in LATENCY_SIZES {
            println!();
            let uds = self
                .latency(StreamKind::Uds.label(), size)
                .map_or(f64::NAN, |row| row.p50_us);
            let spin = self
                .latency(RINGBELL_SPIN, size)
                .map_or(f64::NAN, |row| row.p50_us);
            let rows = self
                .latency
                .iter()
                .filter(|row| row.size == size || (size == 64 && row.name.ends_with("(floor)")))
                .map(|row| {
                    vec![
                        row.name.clone(),
                        format!("{:.2}", row.p50_us),
                        format!("{:.2}", row.p99_us),
                        format!("{:.2}", row.p999_us),
                        compare(row.p50_us, uds, Better::Faster),
                        compare(row.p50_us, spin, Better::Faster),
                    ]
                })
                .collect();
            print_table(
                &[
                    &format!("round trip, {}", format_size(size)),
                    "p50 µs",
                    "p99 µs",
                    "p99.9 µs",
                    "p50 vs unix socket",
                    "p50 vs ringbell spin",
                ],
                rows,
            );
        }
        for size in THROUGHPUT_SIZES {
            println!();
            let uds = self
                .throughput(StreamKind::Uds.label(), size)
                .map_or(f64::NAN, |row| row.messages_per_second);
            let ringbell = self
                .throughput(RINGBELL_ADAPTIVE, size)
                .map_or(f64::NAN, |row| row.messages_per_second);
            let rows = self
                .throughput
                .iter()
                .filter(|row| row.size == size)
                .map(|row| {
                    vec![
                        row.name.clone(),
                        format_count(row.messages_per_second),
                        format!("{:.2}", row.gigabytes_per_second),
                        compare(row.messages_per_second, uds, Better::More),
                        compare(row.messages_per_second, ringbell, Better::More),
                    ]
                })
                .collect();
            print_table(
                &[
                    &format!("one-way, {}", format_size(size)),
                    "msgs/s",
                    "GB/s",
                    "vs unix socket",
                    "vs ringbell",
                ],
                rows,
            );
        }
        // Left out where this OS cannot run it (see `Bench::left_out`), rather than an
        // empty table.
        if !self.load.is_empty() {
            println!();
            let rows = self
                .load
                .iter()
                .map(|row| {
                    let uds = self
                        .load(TOKIO_UDS_LOAD, row.clients)
                        .map_or(f64::NAN, |uds| uds.requests_per_second);
                    vec![
                        row.name.clone(),
                        format_count(row.clients as f64),
                        format_count(row.requests_per_second),
                        format!("{:.1}", row.p50_us),
                        format!("{:.1}", row.p99_us),
                        format!("{:.1}", row.server_kib_per_connection),
                        compare(row.requests_per_second, uds, Better::More),
                    ]
                })
                .collect();
            print_table(
                &[
                    &format!("request/response, {LOAD_SIZE} B"),
                    "clients",
                    "req/s",
                    "p50 µs",
                    "p99 µs",
                    "server KiB/conn",
                    "vs tokio UnixStream",
                ],
                rows,
            );
        }
        if !self.streamed.is_empty() {
            println!();
            self.print_streamed();
        }
        if !self.placed.is_empty() {
            println!();
            print_placed(&self.placed);
        }
        if let Some(idle) = &self.idle {
            println!();
            println!(
                "idle, connected pair ({:.0} s, default wait): server {:.2} %, client {:.2} % of a \
                 core (one clock tick = {:.2} %)",
                idle.seconds,
                idle.server_percent_of_a_core,
                idle.client_percent_of_a_core,
                idle.resolution_percent
            );
        }
        println!();
        println!(
            "floors: a ping-pong on one shared cache line (spin), on a shared futex, and on two \
             eventfds (poll + read, as an event loop does), with no payload. memcpy: one copy \
             in this process, of as many messages of each size as ringbell sends, the best of \
             {} timed rounds over {} placements of the buffers; a message through shared \
             memory is copied twice.",
            MEMCPY_ROUNDS * MEMCPY_PLACEMENTS.len(),
            MEMCPY_PLACEMENTS.len()
        );
        println!(
            "batches of {BATCH}: ringbell's send_batch (one publish and at most one wake-up \
             per batch) into a sink that takes what has arrived with recv_batch; the unix \
             socket writes each batch's {BATCH} length-prefixed frames with one write. \
             Nothing waits for a batch to fill."
        );
        let ring = ringbell::ServerConfig::DEFAULT_RING_CAPACITY;
        println!(
            "ringbell: `ringbell serve` in a child process, the default ServerConfig and \
             ClientConfig but for the wait strategy and --max-message-size {} (the largest \
             message here; the library's default is {}), so that the {} rows are allowed; \
             the default rings of {} each way in every row, so a message above about {} \
             goes through the sender's large-message region with one frame in the ring \
             (protocol 5, issue 14): the 64 KiB to {} rows measure that path.",
            format_size(LARGEST_MESSAGE),
            format_size(ringbell::ServerConfig::DEFAULT_MAX_MESSAGE_SIZE),
            format_size(LARGEST_MESSAGE),
            format_size(ring),
            format_size(ring / 4),
            format_size(LARGEST_MESSAGE),
        );
        println!(
            "streams: a 4-byte length prefix, one write per message, a 128 KiB BufReader on \
             the receiver. Request/response: the `stress` protocol, {LOAD_SIZE} B random \
             payloads, every reply checked, up to {LOAD_PROCESSES} client processes, unpinned."
        );
        for note in &self.peers {
            println!("{}: {}", note.name, note.how);
        }
        for skipped in &self.skipped {
            println!("skipped {}: {}", skipped.name, skipped.why);
        }
    }

    fn streamed(&self, name: &str) -> Option<&StreamedRow> {
        self.streamed.iter().find(|row| row.name == name)
    }

    /// The streamed-call table, each row against the framed socket and, where it was
    /// measured, tonic.
    fn print_streamed(&self) {
        let uds = self.streamed(StreamedTransport::Uds.name());
        let tonic = self.streamed(TONIC_STREAMED);
        let against = |row: &StreamedRow,
                       baseline: Option<&StreamedRow>,
                       figure: fn(&StreamedRow) -> f64,
                       better: Better| {
            compare(figure(row), baseline.map_or(f64::NAN, figure), better)
        };
        let rows = self
            .streamed
            .iter()
            .map(|row| {
                let mut cells = vec![
                    row.name.clone(),
                    format_count(row.items_per_second),
                    against(row, uds, |row| row.items_per_second, Better::More),
                ];
                if tonic.is_some() {
                    cells.push(against(
                        row,
                        tonic,
                        |row| row.items_per_second,
                        Better::More,
                    ));
                }
                cells.push(format!("{:.1}", row.first_item_p50_us));
                cells.push(against(
                    row,
                    uds,
                    |row| row.first_item_p50_us,
                    Better::Faster,
                ));
                if tonic.is_some() {
                    cells.push(against(
                        row,
                        tonic,
                        |row| row.first_item_p50_us,
                        Better::Faster,
                    ));
                }
                cells.push(format!("{:.1}", row.unary_p50_us));
                if tonic.is_some() {
                    cells.push(against(row, tonic, |row| row.unary_p50_us, Better::Faster));
                }
                cells.push(format_count(row.concurrent_items_per_second));
                cells.push(format!("{:.1}", row.cancel_p50_us));
                cells.push(format!("{:.1}", row.cancel_p99_us));
                cells
            })
            .collect();
        let concurrent = format!(
            "items/s, {} streams",
            self.streamed
                .first()
                .map_or(0, |row| row.concurrent_streams)
        );
        let title = format!("streamed calls, {ITEM_SIZE} B items");
        let mut header = vec![title.as_str(), "items/s, 1 stream", "vs tokio UnixStream"];
        if tonic.is_some() {
            header.push("vs tonic");
        }
        header.extend(["first item p50 µs", "vs tokio UnixStream"]);
        if tonic.is_some() {
            header.push("vs tonic");
        }
        header.push("unary p50 µs");
        if tonic.is_some() {
            header.push("vs tonic");
        }
        header.extend([concurrent.as_str(), "cancel p50 µs", "cancel p99 µs"]);
        print_table(&header, rows);
        for transport in StreamedTransport::PEERS {
            if let (Some(_), Some(how)) = (self.streamed(transport.name()), transport.how()) {
                println!("{}: {how}", transport.name());
            }
        }
        if tonic.is_none() {
            println!(
                "{TONIC_STREAMED}: not measured in this run (a peer library: it needs the \
                 `peers` feature, and is left out by --no-peers)"
            );
        }
    }

    /// The targets, met or not, from this run's figures.
    fn print_targets(&self) {
        let mut rows = Vec::new();
        let mut latency_target =
            |what: &str, ours: &str, theirs: &str, size: usize, target: f64| {
                let (Some(ours), Some(theirs)) =
                    (self.latency(ours, size), self.latency(theirs, size))
                else {
                    return;
                };
                let ratio = ours.p50_us / theirs.p50_us;
                rows.push(vec![
                    what.to_owned(),
                    format!("{:.2} µs", ours.p50_us),
                    theirs.name.clone(),
                    format!("{:.2} µs", theirs.p50_us),
                    format!("{ratio:.2}×"),
                    format!("≤ {target}×"),
                    yes_no(ratio <= target),
                ]);
            };
        latency_target(
            "spin round trip p50, 64 B",
            RINGBELL_SPIN,
            RAW_SPIN,
            64,
            1.5,
        );
        latency_target(
            "block round trip p50, 64 B",
            RINGBELL_BLOCK,
            RAW_FUTEX,
            64,
            1.1,
        );
        for peer in &self.peers {
            if let Some(compare_with) = peer.compare_with {
                latency_target(
                    &format!("{compare_with} round trip p50, 64 B"),
                    compare_with,
                    &peer.name,
                    64,
                    1.0,
                );
            }
        }
        let mut throughput_target = |what: &str, ours: &str, theirs: &str, size, target: f64| {
            let (Some(ours), Some(theirs)) =
                (self.throughput(ours, size), self.throughput(theirs, size))
            else {
                return;
            };
            let ratio = ours.gigabytes_per_second / theirs.gigabytes_per_second;
            rows.push(vec![
                what.to_owned(),
                format!("{:.2} GB/s", ours.gigabytes_per_second),
                theirs.name.clone(),
                format!("{:.2} GB/s", theirs.gigabytes_per_second),
                format!("{ratio:.2}×"),
                format!("≥ {target}×"),
                yes_no(ratio >= target),
            ]);
        };
        throughput_target(
            "one-way, 64 B",
            RINGBELL_ADAPTIVE,
            StreamKind::Uds.label(),
            64,
            50.0,
        );
        for peer in self.peers.iter().filter(|peer| peer.streams) {
            throughput_target("one-way, 64 B", RINGBELL_ADAPTIVE, &peer.name, 64, 1.0);
        }
        throughput_target(
            "one-way, 64 B, batched",
            RINGBELL_BATCHES,
            StreamKind::Uds.label(),
            BATCHED_SIZE,
            50.0,
        );
        for peer in self.peers.iter().filter(|peer| peer.streams) {
            let target = if peer.name.starts_with("iceoryx2 pub-sub") {
                10.0
            } else {
                1.0
            };
            throughput_target(
                "one-way, 64 B, batched",
                RINGBELL_BATCHES,
                &peer.name,
                BATCHED_SIZE,
                target,
            );
        }
        throughput_target(
            "one-way, 64 B, batched",
            RINGBELL_BATCHES,
            UDS_BATCHES,
            BATCHED_SIZE,
            1.0,
        );
        throughput_target("one-way, 1 MiB", RINGBELL_ADAPTIVE, MEMCPY, 1 << 20, 0.5);
        if let Some(clients) = self.load.iter().map(|row| row.clients).max() {
            if let (Some(ours), Some(theirs)) = (
                self.load(RINGBELL_LOAD, clients),
                self.load(TOKIO_UDS_LOAD, clients),
            ) {
                let ratio = ours.requests_per_second / theirs.requests_per_second;
                rows.push(vec![
                    format!("{clients} clients, req/s"),
                    format_count(ours.requests_per_second),
                    TOKIO_UDS_LOAD.into(),
                    format_count(theirs.requests_per_second),
                    format!("{ratio:.2}×"),
                    "≥ 5×".into(),
                    yes_no(ratio >= 5.0),
                ]);
            }
        }
        if let Some(ours) = self.streamed(StreamedTransport::Ringbell.name()) {
            if let Some(tonic) = self.streamed(TONIC_STREAMED) {
                let ratio = ours.items_per_second / tonic.items_per_second;
                rows.push(vec![
                    "streamed items/s, 1 stream".into(),
                    format_count(ours.items_per_second),
                    tonic.name.clone(),
                    format_count(tonic.items_per_second),
                    format!("{ratio:.2}×"),
                    format!("≥ {STREAMED_VS_TONIC}×"),
                    yes_no(ratio >= STREAMED_VS_TONIC),
                ]);
                let ratio = ours.first_item_p50_us / tonic.first_item_p50_us;
                rows.push(vec![
                    "streamed first item p50".into(),
                    format!("{:.1} µs", ours.first_item_p50_us),
                    tonic.name.clone(),
                    format!("{:.1} µs", tonic.first_item_p50_us),
                    format!("{ratio:.2}×"),
                    format!("≤ {FIRST_ITEM_VS_TONIC}×"),
                    yes_no(ratio <= FIRST_ITEM_VS_TONIC),
                ]);
            }
            rows.push(vec![
                "cancel seen by the handler p99, server busy".into(),
                format!("{:.1} µs", ours.cancel_p99_us),
                "(a bound)".into(),
                "-".into(),
                "-".into(),
                format!("< {CANCEL_P99_US} µs"),
                yes_no(ours.cancel_p99_us < CANCEL_P99_US),
            ]);
        }
        // Paced round trips, pinned apart: the editor's case.
        let paced = |name: &str| {
            self.placed
                .iter()
                .find(|row| row.name == name && row.pace_us.is_some() && row.pinned_apart())
        };
        if let (Some(ours), Some(theirs)) = (paced(PLACED_RINGBELL), paced(PLACED_SOCKET)) {
            let pace = ours.pace_us.unwrap_or_default();
            rows.push(vec![
                format!("paced round trip p50, every {pace} µs"),
                format!("{:.2} µs", ours.p50_us),
                PLACED_SOCKET.into(),
                format!("{:.2} µs", theirs.p50_us),
                format!("{:.2}×", ours.p50_us / theirs.p50_us),
                "≤ 1×".into(),
                yes_no(ours.p50_us <= theirs.p50_us),
            ]);
            let cpu = |row: &PlacedRow| row.server_cpu_us + row.client_cpu_us;
            let ratio = cpu(ours) / cpu(theirs);
            rows.push(vec![
                "paced round trip, CPU of both sides".into(),
                format!("{:.2} µs", cpu(ours)),
                PLACED_SOCKET.into(),
                format!("{:.2} µs", cpu(theirs)),
                format!("{ratio:.2}×"),
                "≤ 1.5×".into(),
                yes_no(ratio <= 1.5),
            ]);
        }
        print_table(
            &[
                "target", "ringbell", "against", "theirs", "ratio", "target", "met?",
            ],
            rows,
        );
    }
}

/// The paced and unpinned rows, each ringbell row beside the Unix socket's of the same
/// placement and pacing.
fn print_placed(placed: &[PlacedRow]) {
    let socket_of = |row: &PlacedRow| {
        placed
            .iter()
            .find(|other| {
                other.name == PLACED_SOCKET
                    && other.placement == row.placement
                    && other.pace_us == row.pace_us
            })
            .filter(|other| other.name != row.name)
    };
    let rows = placed
        .iter()
        .map(|row| {
            let socket = socket_of(row);
            let cpu = row.server_cpu_us + row.client_cpu_us;
            vec![
                row.name.clone(),
                row.placement_label().into(),
                row.pace_us
                    .map_or("back to back".into(), |us| format!("every {us} µs")),
                format_count(row.round_trips_per_second),
                format!("{:.1}", row.p50_us),
                format!("{:.1}", row.p99_us),
                socket.map_or("".into(), |socket| {
                    compare(row.p50_us, socket.p50_us, Better::Faster)
                }),
                format!("{:.2}", row.server_cpu_us),
                format!("{:.2}", row.client_cpu_us),
                socket.map_or("".into(), |socket| {
                    format!(
                        "{:.2}×",
                        cpu / (socket.server_cpu_us + socket.client_cpu_us)
                    )
                }),
            ]
        })
        .collect();
    print_table(
        &[
            &format!("round trips, {PLACED_SIZE} B"),
            "placement",
            "pace",
            "round trips/s",
            "p50 µs",
            "p99 µs",
            "p50 vs unix socket",
            "server CPU µs/rt",
            "client CPU µs/rt",
            "CPU vs unix socket",
        ],
        rows,
    );
}

fn yes_no(met: bool) -> String {
    if met { "yes" } else { "no" }.into()
}

/// What the machine is, for the report.
pub(super) fn describe_machine() -> Result<Machine, CliError> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == key).then(|| value.trim().to_owned())
        })
    };
    let uname = rustix::system::uname();
    let read_trimmed = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    };
    let vendor = [
        "/sys/class/dmi/id/sys_vendor",
        "/sys/class/dmi/id/product_name",
    ]
    .iter()
    .filter_map(|path| read_trimmed(Path::new(path)))
    .collect::<Vec<_>>();
    Ok(Machine {
        cpu: field("model name").unwrap_or_else(|| "unknown CPU".into()),
        cpus: affinity::cpu_count()?,
        kernel: format!(
            "{} {} {}",
            uname.sysname().to_string_lossy(),
            uname.release().to_string_lossy(),
            uname.machine().to_string_lossy()
        ),
        virtual_machine: field("flags")
            .is_some_and(|flags| flags.split_whitespace().any(|flag| flag == "hypervisor")),
        vendor: (!vendor.is_empty()).then(|| vendor.join(" ")),
        backend: ringbell::backend(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_named_in_binary_units() {
        assert_eq!(format_size(64), "64 B");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(64 << 10), "64 KiB");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(16 << 20), "16 MiB");
        assert_eq!(format_size(1000), "1000 B");
    }
}
