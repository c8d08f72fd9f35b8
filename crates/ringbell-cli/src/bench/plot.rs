//! `ringbell bench --plot DIR`: SVG plots of a [`Report`], drawn with plotters.
//!
//! * `latency-<size>.svg`: round-trip time against percentile for every subject at that
//!   message size, both axes logarithmic (the percentile axis in "nines": 50, 90, 99,
//!   99.9, 99.99), so that the tail is as readable as the median.
//! * `throughput.svg`: one-way GB/s against message size, one line per subject.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::plan::LATENCY_SIZES;
use super::report::{format_size, Report};
use crate::error::{CliError, Context};

/// The quantiles recorded for the percentile curves.
pub const QUANTILES: [f64; 7] = [0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 0.99999];

const SIZE: (u32, u32) = (960, 600);

/// Draws every plot into `dir` and returns the files written.
pub fn draw(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    std::fs::create_dir_all(dir).context(format_args!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for size in LATENCY_SIZES {
        let path = dir.join(format!(
            "latency-{}.svg",
            format_size(size).replace(' ', "")
        ));
        latency_percentiles(report, size, &path)
            .map_err(|error| CliError::new(format!("drawing {}: {error}", path.display())))?;
        written.push(path);
    }
    let path = dir.join("throughput.svg");
    throughput_by_size(report, &path)
        .map_err(|error| CliError::new(format!("drawing {}: {error}", path.display())))?;
    written.push(path);
    Ok(written)
}

/// "Nines" of a quantile: 0.9 → 1, 0.99 → 2, 0.5 → 0.3.
fn nines(quantile: f64) -> f64 {
    -(1.0 - quantile).log10()
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn latency_percentiles(report: &Report, size: usize, path: &Path) -> DrawResult {
    let rows: Vec<_> = report
        .latency
        .iter()
        .filter(|row| row.size == size || (size == 64 && row.name.ends_with("(floor)")))
        .collect();
    let values = rows
        .iter()
        .flat_map(|row| row.percentiles.iter().map(|&(_, micros)| micros));
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(low, high), value| {
        (low.min(value), high.max(value))
    });
    let (low, high) = if low <= high {
        (low.max(0.01) / 1.5, high * 1.5)
    } else {
        (0.1, 10.0)
    };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = nines(*QUANTILES.last().expect("quantiles")) + 0.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("round-trip latency, {} messages", format_size(size)),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, (low..high).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        // Whole "nines": 0 %, 90 %, 99 %, 99.9 %, ...
        .x_labels(x_max.ceil() as usize + 1)
        .y_desc("µs")
        .x_label_formatter(&|nines| {
            let percent = 100.0 * (1.0 - 10f64.powf(-nines));
            format!("{}", (percent * 1000.0).round() / 1000.0)
        })
        .draw()?;
    for (index, row) in rows.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                row.percentiles
                    .iter()
                    .map(|&(quantile, micros)| (nines(quantile), micros)),
                color.stroke_width(2),
            ))?
            .label(row.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn throughput_by_size(report: &Report, path: &Path) -> DrawResult {
    let mut names: Vec<&str> = Vec::new();
    for row in &report.throughput {
        if !names.contains(&row.name.as_str()) {
            names.push(&row.name);
        }
    }
    let sizes = report.throughput.iter().map(|row| row.size as f64);
    let (min_size, max_size) = sizes.fold((f64::MAX, f64::MIN), |(low, high), size| {
        (low.min(size), high.max(size))
    });
    let rates = report.throughput.iter().map(|row| row.gigabytes_per_second);
    let (low, high) = rates.fold((f64::MAX, f64::MIN), |(low, high), rate| {
        (low.min(rate), high.max(rate))
    });
    if report.throughput.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("one-way throughput", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (min_size / 1.5..max_size * 1.5)
                .log_scale()
                .with_key_points(
                    report
                        .throughput
                        .iter()
                        .map(|row| row.size as f64)
                        .collect(),
                ),
            (low.max(1e-4) / 1.5..high * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("message size")
        .y_desc("GB/s (payload)")
        .x_label_formatter(&|size| format_size(*size as usize))
        .draw()?;
    for (index, name) in names.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                report
                    .throughput
                    .iter()
                    .filter(|row| row.name == *name)
                    .map(|row| (row.size as f64, row.gigabytes_per_second)),
                color.stroke_width(2),
            ))?
            .label(name.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
