//! Measured results and how they are printed: round-trip latency from an HDR histogram
//! (every round trip recorded, in nanoseconds) and one-way throughput.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The longest round trip a histogram records exactly; longer ones are clamped to it.
const HIGHEST_TRACKABLE_NS: u64 = 60_000_000_000;

/// A histogram of round-trip times in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_NS, 3)
        .expect("constant histogram bounds are valid")
}

/// Records one round trip.
pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    // A round trip under 1 ns is below the histogram's floor: count it as 1 ns.
    histogram.saturating_record(nanos.max(1));
}

/// The timed part of a latency run: every round trip, and how long they took in all.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    /// Every timed round trip, in nanoseconds.
    pub histogram: Histogram<u64>,
    /// Wall time of the timed loop, checks included.
    pub elapsed: Duration,
}

impl LatencyRun {
    /// The percentiles we report.
    pub fn summary(&self) -> LatencySummary {
        let micros = |nanos: u64| nanos as f64 / 1_000.0;
        LatencySummary {
            p50_us: micros(self.histogram.value_at_quantile(0.50)),
            p99_us: micros(self.histogram.value_at_quantile(0.99)),
            p999_us: micros(self.histogram.value_at_quantile(0.999)),
            max_us: micros(self.histogram.max()),
        }
    }

    /// Round trips completed per second of the timed loop.
    pub fn round_trips_per_second(&self) -> f64 {
        per_second(self.histogram.len(), self.elapsed)
    }
}

/// Round-trip percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// A one-way stream of `messages` messages of `message_size` bytes, delivered and
/// acknowledged in `elapsed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThroughputRun {
    pub messages: u64,
    pub message_size: usize,
    pub elapsed: Duration,
}

impl ThroughputRun {
    /// Messages delivered per second.
    pub fn messages_per_second(&self) -> f64 {
        per_second(self.messages, self.elapsed)
    }

    /// Payload megabytes (10^6 bytes) delivered per second; framing is not counted.
    pub fn megabytes_per_second(&self) -> f64 {
        self.messages_per_second() * self.message_size as f64 / 1e6
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Which way a figure is better, and so the words that compare two of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// A time: less is better ("42× faster", "1.3× slower").
    Faster,
    /// A rate: more is better ("42× more", "1.3× less").
    More,
    /// A cost, such as memory or fds: less is better ("2.0× less", "1.3× more").
    Less,
}

/// How `ours` compares with `baseline`, in words for a terminal table: "42× faster",
/// "1.3× slower", "≈ same" (within 5 %). A factor below one, such as `0.024×` for a time,
/// reads badly as "faster"; the JSON reports keep the plain numbers.
pub fn compare(ours: f64, baseline: f64, better: Better) -> String {
    if !(baseline > 0.0 && ours > 0.0 && baseline.is_finite() && ours.is_finite()) {
        return "n/a".to_owned();
    }
    let ratio = ours / baseline;
    let (factor, word) = match better {
        Better::Faster if ratio <= 1.0 => (1.0 / ratio, "faster"),
        Better::Faster => (ratio, "slower"),
        Better::More if ratio >= 1.0 => (ratio, "more"),
        Better::More => (1.0 / ratio, "less"),
        Better::Less if ratio <= 1.0 => (1.0 / ratio, "less"),
        Better::Less => (ratio, "more"),
    };
    if factor < 1.05 {
        "≈ same".to_owned()
    } else if factor >= 10.0 {
        format!("{factor:.0}× {word}")
    } else {
        format!("{factor:.1}× {word}")
    }
}

/// A count with thousands separators: `12,345,678`.
pub fn format_count(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// Prints a Markdown table, padded for the terminal: first column left, the rest right.
pub fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let format_row = |cells: &[&str]| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, &width))| {
                if column == 0 {
                    format!(" {cell:<width$} ")
                } else {
                    format!(" {cell:>width$} ")
                }
            })
            .collect();
        format!("|{}|", cells.join("|"))
    };
    println!("{}", format_row(header));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(column, &width)| {
            if column == 0 {
                format!(":{}", "-".repeat(width + 1))
            } else {
                format!("{}:", "-".repeat(width + 1))
            }
        })
        .collect();
    println!("|{}|", rule.join("|"));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        println!("{}", format_row(&cells));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(format_count(0.0), "0");
        assert_eq!(format_count(999.0), "999");
        assert_eq!(format_count(1000.0), "1,000");
        assert_eq!(format_count(12_345_678.4), "12,345,678");
    }

    #[test]
    fn comparisons_say_which_way_in_words() {
        // Times: a 0.024× latency is 42× faster.
        assert_eq!(compare(1.0, 42.0, Better::Faster), "42× faster");
        assert_eq!(compare(1.3, 1.0, Better::Faster), "1.3× slower");
        // Rates.
        assert_eq!(compare(420.0, 10.0, Better::More), "42× more");
        assert_eq!(compare(1.0, 3.12, Better::More), "3.1× less");
        // Costs.
        assert_eq!(compare(50.0, 100.0, Better::Less), "2.0× less");
        assert_eq!(compare(130.0, 100.0, Better::Less), "1.3× more");
        // Close, or nothing to compare with.
        assert_eq!(compare(1.02, 1.0, Better::Faster), "≈ same");
        assert_eq!(compare(1.0, 0.0, Better::More), "n/a");
        assert_eq!(compare(0.0, 1.0, Better::More), "n/a");
        assert_eq!(compare(1.0, f64::NAN, Better::More), "n/a");
    }

    #[test]
    fn summary_reads_the_histogram_in_microseconds() {
        let mut histogram = new_histogram();
        for _ in 0..1000 {
            record(&mut histogram, Duration::from_micros(2));
        }
        let run = LatencyRun {
            histogram,
            elapsed: Duration::from_millis(2),
        };
        let summary = run.summary();
        assert!((summary.p50_us - 2.0).abs() < 0.01, "{summary:?}");
        assert!((run.round_trips_per_second() - 500_000.0).abs() < 1.0);
    }
}
