//! The results of a stress run: each round's counts and server samples ([`RoundResult`]),
//! a transport's rounds together ([`TransportResult`]) with its verdict and printed
//! summary, the ringbell-against-uds comparison table, and the number formats they use.

use std::time::Duration;

use super::plan::Plan;
use super::protocol::ClientReport;
use super::sample::{ServerSample, HANDLES, MEMORY};
use super::Transport;
use crate::stats::{compare, format_count, print_table, Better};

/// CPU used by the idle server while every client was connected.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdleCpu {
    pub(super) connections: u64,
    pub(super) elapsed: Duration,
    pub(super) percent: f64,
    pub(super) resolution_percent: f64,
}

/// One round: every client process started, connected, called, reported and reaped.
#[derive(Debug, Clone)]
pub(super) struct RoundResult {
    pub(super) connected_in: Duration,
    pub(super) calls_in: Duration,
    pub(super) expected: u64,
    pub(super) report: ClientReport,
    pub(super) server_handled: u64,
    pub(super) during: ServerSample,
    pub(super) after: ServerSample,
    pub(super) idle: Option<IdleCpu>,
}

impl RoundResult {
    /// Calls that had no reply: timed out, or never reported.
    fn lost(&self) -> u64 {
        let accounted = self.report.completed + self.report.failed + self.report.corrupted;
        self.expected
            .saturating_sub(accounted)
            .max(self.report.lost)
    }

    /// Replies to no call, and requests the server handled more than once.
    fn duplicated(&self) -> u64 {
        self.report.duplicated + self.server_handled.saturating_sub(self.expected)
    }
}

/// Everything measured for one transport.
#[derive(Debug)]
pub(super) struct TransportResult {
    pub(super) transport: Transport,
    pub(super) before: ServerSample,
    pub(super) rounds: Vec<RoundResult>,
}

impl TransportResult {
    pub(super) fn total(&self) -> ClientReport {
        let mut total = ClientReport::default();
        for round in &self.rounds {
            total.merge(&round.report);
        }
        total
    }

    pub(super) fn requests_per_second(&self) -> f64 {
        let calls_in: Duration = self.rounds.iter().map(|round| round.calls_in).sum();
        self.total().completed as f64 / calls_in.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    pub(super) fn peak(&self) -> ServerSample {
        self.rounds
            .iter()
            .fold(self.before, |peak, round| peak.max(round.during))
    }

    fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for round in &self.rounds {
            counts.expected += round.expected;
            counts.completed += round.report.completed;
            counts.failed += round.report.failed;
            counts.corrupted += round.report.corrupted;
            counts.lost += round.lost();
            counts.duplicated += round.duplicated();
            counts.server_handled += round.server_handled;
        }
        counts
    }

    /// Why this transport's run failed, if it did.
    pub(super) fn failure(&self) -> Option<String> {
        let counts = self.counts();
        let ok = counts.completed == counts.expected
            && counts.failed + counts.corrupted + counts.lost + counts.duplicated == 0
            && counts.server_handled == counts.expected;
        if ok {
            return None;
        }
        let mut why = format!(
            "{}: {} of {} calls completed correctly; failed={} corrupted={} lost={} duplicated={}; \
             the server handled {} requests",
            self.transport.arg(),
            counts.completed,
            counts.expected,
            counts.failed,
            counts.corrupted,
            counts.lost,
            counts.duplicated,
            counts.server_handled
        );
        if let Some(error) = self.total().first_error {
            why.push_str(&format!("; first error: {error}"));
        }
        Some(why)
    }

    pub(super) fn print(&self, plan: &Plan) {
        let transport = self.transport.arg();
        let total = self.total();
        let counts = self.counts();
        println!();
        println!("{transport}:");
        if self.rounds.len() > 1 {
            self.print_rounds();
        }
        for round in &self.rounds {
            if let Some(idle) = round.idle {
                println!(
                    "  idle:      {} connected, idle clients cost the server {:.2} % of a core \
                     over {:.1} s (one clock tick = {:.2} %)",
                    format_count(idle.connections as f64),
                    idle.percent,
                    idle.elapsed.as_secs_f64(),
                    idle.resolution_percent
                );
            }
        }
        let connected_in: Duration = self.rounds.iter().map(|round| round.connected_in).sum();
        let calls_in: Duration = self.rounds.iter().map(|round| round.calls_in).sum();
        println!(
            "  connect:   {} clients in {:.2} s{}",
            format_count(plan.clients as f64),
            connected_in.as_secs_f64() / self.rounds.len() as f64,
            if self.rounds.len() > 1 {
                " (mean of the rounds)"
            } else {
                ""
            }
        );
        println!(
            "  calls:     {} in {:.2} s: {} requests/s",
            format_count(counts.expected as f64),
            calls_in.as_secs_f64(),
            format_count(self.requests_per_second())
        );
        let micros = |quantile: f64| format_micros(total.latency.value_at_quantile(quantile));
        println!(
            "  latency:   p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            micros(0.50),
            micros(0.99),
            micros(0.999),
            format_micros(total.latency.max())
        );
        let last = self.rounds.last().map_or(self.before, |round| round.after);
        let peak = self.peak();
        println!(
            "  server:    {MEMORY} {} before, {} max during, {} after; {HANDLES} {} before, {} max during, {} after",
            format_kib(self.before.rss_kib),
            format_kib(peak.rss_kib),
            format_kib(last.rss_kib),
            self.before.fds,
            peak.fds,
            last.fds
        );
        println!(
            "result {transport}: completed={} failed={} corrupted={} lost={} duplicated={} \
             (expected {}, server handled {})",
            counts.completed,
            counts.failed,
            counts.corrupted,
            counts.lost,
            counts.duplicated,
            counts.expected,
            counts.server_handled
        );
        if let Some(error) = &total.first_error {
            println!("  first error: {error}");
        }
    }

    fn print_rounds(&self) {
        let rows = self
            .rounds
            .iter()
            .enumerate()
            .map(|(index, round)| {
                let rate = round.report.completed as f64
                    / round.calls_in.as_secs_f64().max(f64::MIN_POSITIVE);
                vec![
                    (index + 1).to_string(),
                    format!("{:.2}", round.connected_in.as_secs_f64()),
                    format!("{:.2}", round.calls_in.as_secs_f64()),
                    format_count(rate),
                    format_micros(round.report.latency.value_at_quantile(0.99)),
                    format_kib(round.during.rss_kib),
                    format_kib(round.after.rss_kib),
                    round.after.fds.to_string(),
                ]
            })
            .collect();
        print_table(
            &[
                "round",
                "connect s",
                "calls s",
                "requests/s",
                "p99 µs",
                &format!("server {MEMORY} max"),
                &format!("{MEMORY} after"),
                &format!("{HANDLES} after"),
            ],
            rows,
        );
        if let [_, second, .., last] = self.rounds.as_slice() {
            let growth =
                |from: u64, to: u64| (to as f64 - from as f64) / (from as f64).max(1.0) * 100.0;
            println!(
                "  server after round 2 → round {}: {MEMORY} {:+.1} %, {HANDLES} {:+.1} %",
                self.rounds.len(),
                growth(second.after.rss_kib, last.after.rss_kib),
                growth(second.after.fds, last.after.fds)
            );
        }
    }
}

/// The counts of a transport's run, over all its rounds.
#[derive(Debug, Default)]
struct Counts {
    expected: u64,
    completed: u64,
    failed: u64,
    corrupted: u64,
    lost: u64,
    duplicated: u64,
    server_handled: u64,
}

/// Nanoseconds as microseconds, to about three significant digits: `3.25`, `48.7`,
/// `1,234`.
fn format_micros(nanos: u64) -> String {
    let micros = nanos as f64 / 1_000.0;
    if micros < 10.0 {
        format!("{micros:.2}")
    } else if micros < 1_000.0 {
        format!("{micros:.1}")
    } else {
        format_count(micros)
    }
}

/// `812 KiB`, `35.2 MiB`, `1.25 GiB`.
pub(super) fn format_kib(kib: u64) -> String {
    let kib = kib as f64;
    if kib < 1024.0 {
        format!("{kib:.0} KiB")
    } else if kib < 1024.0 * 1024.0 {
        format!("{:.1} MiB", kib / 1024.0)
    } else {
        format!("{:.2} GiB", kib / 1024.0 / 1024.0)
    }
}

pub(super) fn print_comparison(plan: &Plan, ringbell: &TransportResult, uds: &TransportResult) {
    let (ringbell_total, uds_total) = (ringbell.total(), uds.total());
    let micros = |report: &ClientReport, quantile: f64| {
        report.latency.value_at_quantile(quantile) as f64 / 1_000.0
    };
    let row = |result: &TransportResult, total: &ClientReport| {
        let peak = result.peak();
        vec![
            result.transport.arg().to_owned(),
            format_count(result.requests_per_second()),
            format_micros(total.latency.value_at_quantile(0.50)),
            format_micros(total.latency.value_at_quantile(0.99)),
            format_micros(total.latency.value_at_quantile(0.999)),
            format_kib(peak.rss_kib),
            format_count(peak.fds as f64),
        ]
    };
    let (ringbell_peak, uds_peak) = (ringbell.peak(), uds.peak());
    let latency_vs_uds = |quantile: f64| {
        compare(
            micros(&ringbell_total, quantile),
            micros(&uds_total, quantile),
            Better::Faster,
        )
    };
    let ratios = vec![
        format!("ringbell vs {}", uds.transport.arg()),
        compare(
            ringbell.requests_per_second(),
            uds.requests_per_second(),
            Better::More,
        ),
        latency_vs_uds(0.50),
        latency_vs_uds(0.99),
        latency_vs_uds(0.999),
        compare(
            ringbell_peak.rss_kib as f64,
            uds_peak.rss_kib as f64,
            Better::Less,
        ),
        compare(ringbell_peak.fds as f64, uds_peak.fds as f64, Better::Less),
    ];
    println!();
    let sizes = if plan.sizes.min == plan.sizes.max {
        format!("{} B", plan.sizes.min)
    } else {
        format!("{}..{} B", plan.sizes.min, plan.sizes.max)
    };
    print_table(
        &[
            &format!(
                "{} clients × {} calls, {sizes}",
                format_count(plan.clients as f64),
                format_count(plan.requests as f64)
            ),
            "requests/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            &format!("server {MEMORY} max"),
            &format!("server {HANDLES} max"),
        ],
        vec![row(ringbell, &ringbell_total), row(uds, &uds_total), ratios],
    );
    println!(
        "the last row: ringbell against the baseline, in words (\"5.0× more\" requests/s, \"20× faster\" \
         latency, \"2.0× less\" {MEMORY} or {HANDLES}). Both measured now, in this run, on this machine."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_latencies_print() {
        assert_eq!(format_kib(812), "812 KiB");
        assert_eq!(format_micros(3_254), "3.25");
        assert_eq!(format_micros(48_740), "48.7");
        assert_eq!(format_micros(48_726_000), "48,726");
        assert_eq!(format_kib(2048), "2.0 MiB");
        assert_eq!(format_kib(3 << 20), "3.00 GiB");
    }

    #[test]
    fn lost_and_duplicated_count_what_is_missing_or_extra() {
        let mut round = RoundResult {
            connected_in: Duration::ZERO,
            calls_in: Duration::from_secs(1),
            expected: 10,
            report: ClientReport {
                completed: 7,
                failed: 1,
                ..ClientReport::default()
            },
            server_handled: 12,
            during: ServerSample::default(),
            after: ServerSample::default(),
            idle: None,
        };
        assert_eq!(round.lost(), 2);
        assert_eq!(round.duplicated(), 2);
        round.report.lost = 2;
        round.report.duplicated = 1;
        assert_eq!(round.lost(), 2);
        assert_eq!(round.duplicated(), 3);
    }
}
