//! `ringbell bench --plot DIR`: SVG plots of a [`Report`], drawn with plotters.
//!
//! * `latency-<size>.svg`: round-trip time against percentile for every subject at that
//!   message size, both axes logarithmic (the percentile axis in "nines": 50, 90, 99,
//!   99.9, 99.99), so that the tail is as readable as the median.
//! * `latency-p50.svg`: the median round trip against message size, one line per subject.
//!   The floors carry no payload and are measured once, so each is a level line.
//! * `throughput.svg`: one-way GB/s against message size, one line per subject.
//!
//! A dozen series share each plot, so what a series *is* decides how it is drawn
//! ([`Role`]): ringbell thick and in warm, saturated colours, drawn last so that it lies on
//! top; the floors and the ceiling dashed and dark; the peers and the byte streams thin, in
//! cooler colours. The legend sits in a column right of the data, grouped the same way, so
//! it never covers a line.

use std::path::{Path, PathBuf};

use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::plan::LATENCY_SIZES;
use super::report::{format_size, Report};
use crate::error::{CliError, Context};

/// The quantiles recorded for the percentile curves.
pub const QUANTILES: [f64; 7] = [0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 0.99999];

/// The whole picture, and the legend's column at its right.
const SIZE: (u32, u32) = (1200, 640);
const LEGEND_WIDTH: u32 = 270;

/// Draws every plot into `dir` and returns the files written.
pub fn draw(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    std::fs::create_dir_all(dir).context(format_args!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut plot = |name: String, draw: &dyn Fn(&Path) -> DrawResult| {
        let path = dir.join(name);
        draw(&path)
            .map_err(|error| CliError::new(format!("drawing {}: {error}", path.display())))?;
        written.push(path);
        Ok::<_, CliError>(())
    };
    for size in LATENCY_SIZES {
        plot(
            format!("latency-{}.svg", format_size(size).replace(' ', "")),
            &|path| latency_percentiles(report, size, path),
        )?;
    }
    plot("latency-p50.svg".into(), &|path| {
        median_by_size(report, path)
    })?;
    if !report.throughput.is_empty() {
        plot("throughput.svg".into(), &|path| {
            throughput_by_size(report, path)
        })?;
    }
    Ok(written)
}

/// "Nines" of a quantile: 0.9 → 1, 0.99 → 2, 0.5 → 0.3.
fn nines(quantile: f64) -> f64 {
    -(1.0 - quantile).log10()
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// What a series is, which decides how it is drawn and where its legend entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Ringbell,
    /// A floor or a ceiling: a bound on what any transport can do, not a transport.
    Bound,
    /// A peer library or a byte stream.
    Peer,
}

impl Role {
    const ALL: [Role; 3] = [Role::Ringbell, Role::Bound, Role::Peer];

    fn of(name: &str) -> Role {
        if name.starts_with("ringbell") {
            Role::Ringbell
        } else if name.ends_with("(floor)") || name.ends_with("(ceiling)") {
            Role::Bound
        } else {
            Role::Peer
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Role::Ringbell => "ringbell",
            Role::Bound => "floors and ceiling",
            Role::Peer => "peers and streams",
        }
    }

    /// The colours of the series of this role, in the order they appear; they repeat past
    /// the end, which only a much longer list of peers would reach.
    fn palette(self) -> &'static [RGBColor] {
        match self {
            // Warm and saturated: nothing else on the plot is red or orange.
            Role::Ringbell => &[
                RGBColor(214, 25, 28),
                RGBColor(245, 130, 20),
                RGBColor(128, 0, 38),
            ],
            Role::Bound => &[
                RGBColor(0, 0, 0),
                RGBColor(120, 120, 120),
                RGBColor(40, 80, 160),
            ],
            // Cool and muted.
            Role::Peer => &[
                RGBColor(31, 119, 180),
                RGBColor(44, 160, 44),
                RGBColor(148, 103, 189),
                RGBColor(140, 86, 75),
                RGBColor(23, 190, 207),
                RGBColor(188, 189, 34),
                RGBColor(127, 127, 127),
                RGBColor(57, 59, 121),
                RGBColor(0, 128, 128),
                RGBColor(227, 119, 194),
            ],
        }
    }
}

/// How one series is drawn.
#[derive(Debug, Clone, Copy)]
struct Look {
    role: Role,
    color: RGBColor,
    /// The series' place among those of its role, which varies its width or its dashes.
    rank: usize,
}

impl Look {
    fn width(self) -> u32 {
        match self.role {
            // The second (adaptive, where there are three) is wider, and drawn first: where
            // it and spin lie on one another, as they often do, both still show.
            Role::Ringbell if self.rank % 3 == 1 => 8,
            Role::Ringbell => 5,
            Role::Bound | Role::Peer => 2,
        }
    }

    fn style(self) -> ShapeStyle {
        self.color.stroke_width(self.width())
    }

    /// Dash and gap lengths of a bound, different for each.
    fn dashes(self) -> (i32, i32) {
        [(10, 6), (3, 4), (16, 5)][self.rank % 3]
    }
}

/// A drawing area in pixel coordinates.
type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// The series of one plot: names with their points, in the report's order.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Assigns each series its look: colours in order within each role.
fn looks(series: &[Series]) -> Vec<Look> {
    let mut used = [0usize; 3];
    series
        .iter()
        .map(|series| {
            let role = Role::of(&series.name);
            let slot = Role::ALL.iter().position(|&r| r == role).unwrap_or(0);
            let palette = role.palette();
            let rank = used[slot];
            used[slot] += 1;
            Look {
                role,
                color: palette[rank % palette.len()],
                rank,
            }
        })
        .collect()
}

/// The smallest and largest of `values`, or `None` if there are none.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |range, value| match range {
        None => Some((value, value)),
        Some((low, high)) => Some((low.min(value), high.max(value))),
    })
}

/// The horizontal axis of a chart: its range, what it measures, and how many labels it
/// has and how they read.
struct XAxis<'a, R> {
    range: R,
    description: &'a str,
    labels: usize,
    label: &'a dyn Fn(&f64) -> String,
}

/// Draws `series` on a chart with the given axes, and the legend right of it.
fn draw_chart<X, Y>(
    path: &Path,
    caption: &str,
    x: XAxis<'_, X>,
    (y_range, y_desc): (Y, &str),
    series: &[Series],
) -> DrawResult
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(caption, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x.range, y_range)?;
    chart
        .configure_mesh()
        .x_desc(x.description)
        .y_desc(y_desc)
        .x_labels(x.labels)
        .x_label_formatter(x.label)
        .y_label_formatter(&|value| axis_number(*value))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(205, 205, 205))
        .draw()?;

    let looks = looks(series);
    // Peers first, ringbell last, so that the thick lines lie on top of the thin ones; and
    // within a role the wider lines first.
    let mut order: Vec<usize> = (0..series.len()).collect();
    let layer = |look: &Look| match look.role {
        Role::Peer => 0,
        Role::Bound => 1,
        Role::Ringbell => 2,
    };
    order.sort_by_key(|&index| {
        (
            layer(&looks[index]),
            std::cmp::Reverse(looks[index].width()),
        )
    });
    for index in order {
        let (series, look) = (&series[index], looks[index]);
        let points = series.points.iter().copied();
        if look.role == Role::Bound {
            let (dash, gap) = look.dashes();
            chart.draw_series(DashedLineSeries::new(points, dash, gap, look.style()))?;
        } else {
            chart.draw_series(LineSeries::new(points, look.style()))?;
        }
        // A marker on every measured point, so that a line with few points reads as
        // measurements rather than a curve.
        let radius = if look.role == Role::Ringbell { 4 } else { 3 };
        chart.draw_series(
            series
                .points
                .iter()
                .map(|&point| Circle::new(point, radius, look.color.filled())),
        )?;
    }
    draw_legend(&legend_area, series, &looks)?;
    root.present()?;
    Ok(())
}

/// The legend, in its own column: one group per role, in the order of [`Role::ALL`].
fn draw_legend(area: &Area<'_>, series: &[Series], looks: &[Look]) -> DrawResult {
    let heading = TextStyle::from(("sans-serif", 16).into_font().style(FontStyle::Bold));
    let label = TextStyle::from(("sans-serif", 15).into_font());
    let (left, sample) = (6, 34);
    let mut y = 64;
    for role in Role::ALL {
        let members: Vec<_> = series
            .iter()
            .zip(looks)
            .filter(|(_, look)| look.role == role)
            .collect();
        if members.is_empty() {
            continue;
        }
        area.draw(&Text::new(role.heading(), (left, y), heading.clone()))?;
        y += 24;
        for (series, look) in members {
            let middle = y + 8;
            let line = vec![(left, middle), (left + sample, middle)];
            if look.role == Role::Bound {
                let (dash, gap) = look.dashes();
                area.draw(&DashedPathElement::new(line, dash, gap, look.style()))?;
            } else {
                area.draw(&PathElement::new(line, look.style()))?;
            }
            area.draw(&Text::new(
                series.name.as_str(),
                (left + sample + 8, y),
                label.clone(),
            ))?;
            y += 22;
        }
        y += 12;
    }
    Ok(())
}

/// A value on a logarithmic axis, to three significant digits and no trailing zeros:
/// 100, 2.5, 0.01.
fn axis_number(value: f64) -> String {
    if value <= 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let digits = (2 - value.log10().floor() as i32).max(0) as usize;
    let text = format!("{value:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A range for a logarithmic axis around `low..high`, with some room either side.
fn log_room((low, high): (f64, f64)) -> std::ops::Range<f64> {
    low.max(1e-4) / 1.6..high * 1.6
}

/// A logarithmic value axis over `range`, labelled at 1, 2 and 5 times each power of ten,
/// so that a range of less than a decade still has labels to read values by.
fn log_axis(range: std::ops::Range<f64>) -> WithKeyPoints<LogCoord<f64>> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(range.start.log10().floor());
    while decade <= range.end {
        for step in [1.0, 2.0, 5.0] {
            let tick = decade * step;
            if range.contains(&tick) {
                ticks.push(tick);
            }
        }
        decade *= 10.0;
    }
    range.log_scale().with_key_points(ticks)
}

fn latency_percentiles(report: &Report, size: usize, path: &Path) -> DrawResult {
    let series: Vec<Series> = report
        .latency
        .iter()
        .filter(|row| row.size == size || (size == 64 && Role::of(&row.name) == Role::Bound))
        .map(|row| Series {
            name: row.name.clone(),
            points: row
                .percentiles
                .iter()
                .map(|&(quantile, micros)| (nines(quantile), micros))
                .collect(),
        })
        .collect();
    let y_range = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)))
        .map(log_room)
        .unwrap_or(0.1..10.0);
    let x_max = nines(*QUANTILES.last().expect("quantiles")) + 0.2;
    let x_range: RangedCoordf64 = (0.0..x_max).into();
    draw_chart(
        path,
        &format!("round-trip latency, {} messages", format_size(size)),
        XAxis {
            range: x_range,
            description: "percentile",
            // Whole "nines": 0 %, 90 %, 99 %, 99.9 %, ...
            labels: x_max.ceil() as usize + 1,
            label: &|nines| {
                let percent = 100.0 * (1.0 - 10f64.powf(-nines));
                format!("{}", (percent * 1000.0).round() / 1000.0)
            },
        },
        (log_axis(y_range), "round trip, µs"),
        &series,
    )
}

fn median_by_size(report: &Report, path: &Path) -> DrawResult {
    let (min_size, max_size) = (
        *LATENCY_SIZES.first().expect("sizes") as f64,
        *LATENCY_SIZES.last().expect("sizes") as f64,
    );
    let mut series: Vec<Series> = Vec::new();
    for row in &report.latency {
        let p50 = row
            .percentiles
            .iter()
            .find(|&&(quantile, _)| quantile == 0.5)
            .map(|&(_, micros)| micros);
        let Some(p50) = p50 else { continue };
        if Role::of(&row.name) == Role::Bound {
            // Payload-free and measured once: the same floor at every size.
            series.push(Series {
                name: row.name.clone(),
                points: vec![(min_size, p50), (max_size, p50)],
            });
            continue;
        }
        match series.iter_mut().find(|series| series.name == row.name) {
            Some(series) => series.points.push((row.size as f64, p50)),
            None => series.push(Series {
                name: row.name.clone(),
                points: vec![(row.size as f64, p50)],
            }),
        }
    }
    let y_range = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)))
        .map(log_room)
        .unwrap_or(0.1..10.0);
    let sizes: Vec<f64> = LATENCY_SIZES.iter().map(|&size| size as f64).collect();
    draw_chart(
        path,
        "median round trip against message size",
        XAxis {
            range: (min_size / 1.6..max_size * 1.6)
                .log_scale()
                .with_key_points(sizes.clone()),
            description: "message size",
            labels: sizes.len(),
            label: &|size| format_size(*size as usize),
        },
        (log_axis(y_range), "p50 round trip, µs"),
        &series,
    )
}

fn throughput_by_size(report: &Report, path: &Path) -> DrawResult {
    let mut series: Vec<Series> = Vec::new();
    for row in &report.throughput {
        let point = (row.size as f64, row.gigabytes_per_second);
        match series.iter_mut().find(|series| series.name == row.name) {
            Some(series) => series.points.push(point),
            None => series.push(Series {
                name: row.name.clone(),
                points: vec![point],
            }),
        }
    }
    let sizes: Vec<f64> = {
        let mut sizes: Vec<f64> = report
            .throughput
            .iter()
            .map(|row| row.size as f64)
            .collect();
        sizes.sort_by(f64::total_cmp);
        sizes.dedup();
        sizes
    };
    let x_range = bounds(sizes.iter().copied())
        .map(log_room)
        .unwrap_or(1.0..10.0);
    let y_range = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)))
        .map(log_room)
        .unwrap_or(0.1..10.0);
    draw_chart(
        path,
        "one-way throughput",
        XAxis {
            range: x_range.log_scale().with_key_points(sizes.clone()),
            description: "message size",
            labels: sizes.len(),
            label: &|size| format_size(*size as usize),
        },
        (log_axis(y_range), "GB/s (payload)"),
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_series_is_drawn_by_what_it_is() {
        assert_eq!(Role::of("ringbell adaptive"), Role::Ringbell);
        assert_eq!(Role::of("raw spin (floor)"), Role::Bound);
        assert_eq!(Role::of("memcpy (ceiling)"), Role::Bound);
        assert_eq!(Role::of("iceoryx2 pub-sub (spin)"), Role::Peer);
        assert_eq!(Role::of("unix socket"), Role::Peer);
    }

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(axis_number(100.0), "100");
        assert_eq!(axis_number(1000.0), "1000");
        assert_eq!(axis_number(2.5), "2.5");
        assert_eq!(axis_number(0.1), "0.1");
        assert_eq!(axis_number(0.30000000000000004), "0.3");
    }

    #[test]
    fn colours_are_distinct_within_a_role() {
        let series: Vec<Series> = ["ringbell spin", "unix socket", "ringbell block", "pipe"]
            .iter()
            .map(|name| Series {
                name: (*name).into(),
                points: Vec::new(),
            })
            .collect();
        let looks = looks(&series);
        assert_ne!(looks[0].color, looks[2].color);
        assert_ne!(looks[1].color, looks[3].color);
    }
}
