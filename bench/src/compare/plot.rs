//! `compare --plot FILE.svg`: one picture, a line of two charts per row: each
//! server's throughput second by second, and its latency by percentile, ringkv
//! beside the baseline. Each server's lines come from its median round (by
//! the table's throughput), so the picture shows a typical run, not a blend.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::server::ServerKind;
use super::table::RowResult;
use super::RunRecord;
use crate::report::fmt_count;
use crate::sample::{PercentilePoint, Sample};

pub const WIDTH_PX: u32 = 1400;
pub const ROW_HEIGHT_PX: u32 = 420;
pub const TITLE_HEIGHT_PX: u32 = 40;
const TITLE_FONT_PX: u32 = 20;
const CAPTION_FONT_PX: u32 = 16;
const LINE_WIDTH_PX: u32 = 2;
/// ringkv blue, the baseline red (matplotlib's first two).
const RINGKV_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const BASELINE_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// The latency chart's x axis, `1 / (1 - q)`: p0 to just past p99.999
/// (`sample::percentile_curve`'s last point).
const PERCENTILE_X_MAX: f64 = 1.01e5;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("--plot: drawing: {0}")]
    Draw(String),
    #[error("--plot {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("--plot {}: no such directory to write it in", path.display())]
    NoDirectory { path: PathBuf },
}

fn drawing<E: std::error::Error + Send + Sync>(error: DrawingAreaErrorKind<E>) -> PlotError {
    PlotError::Draw(error.to_string())
}

/// One server's lines in a row.
#[derive(Debug, Clone)]
pub struct Series {
    /// "ringkv", "etcd", "ringkv-ceiling".
    pub server: &'static str,
    /// Which run the lines are: `round 2 of 3`.
    pub run: String,
    pub samples: Vec<Sample>,
    pub percentiles: Vec<PercentilePoint>,
}

/// One row of the picture.
#[derive(Debug, Clone)]
pub struct PlotRow {
    pub name: String,
    pub conns: usize,
    pub clients: usize,
    /// What the per-second samples count: "writes/sec" or "ops/sec".
    pub unit: &'static str,
    /// ringkv's first, then the baseline's; a server without a run has none.
    pub series: Vec<Series>,
}

/// Fails early, before minutes of runs, if `path` cannot be written for want
/// of a directory.
pub fn check_path(path: &Path) -> Result<(), PlotError> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if directory.is_dir() {
        Ok(())
    } else {
        Err(PlotError::NoDirectory {
            path: path.to_path_buf(),
        })
    }
}

/// The picture's rows: per row in `results`, the run of each server's median
/// round among `runs` (by its headline throughput; the lower middle one of an
/// even count).
pub(super) fn plot_rows(
    results: &[RowResult],
    runs: &[RunRecord],
    servers: [ServerKind; 2],
    rounds: usize,
) -> Vec<PlotRow> {
    results
        .iter()
        .map(|result| {
            let series: Vec<Series> = servers
                .iter()
                .filter_map(|server| median_run(runs, &result.name, *server))
                .map(|record| Series {
                    server: record.server.name(),
                    run: format!("round {} of {rounds}", record.round),
                    samples: record.summary.samples.clone(),
                    percentiles: record.summary.latency_percentiles.clone(),
                })
                .collect();
            let unit = runs
                .iter()
                .find(|record| record.row == result.name)
                .map_or("ops/sec", |record| record.summary.throughput_unit);
            PlotRow {
                name: result.name.clone(),
                conns: result.conns,
                clients: result.clients,
                unit,
                series,
            }
        })
        .collect()
}

fn median_run<'a>(runs: &'a [RunRecord], row: &str, server: ServerKind) -> Option<&'a RunRecord> {
    let mut of_server: Vec<&RunRecord> = runs
        .iter()
        .filter(|record| record.row == row && record.server == server)
        .collect();
    of_server.sort_by(|a, b| a.summary.headline().per_sec.total_cmp(&b.summary.headline().per_sec));
    let middle = of_server.len().checked_sub(1)? / 2;
    Some(of_server[middle])
}

/// Renders the picture to `path`.
pub fn write(path: &Path, title: &str, rows: &[PlotRow]) -> Result<(), PlotError> {
    let svg = render(title, rows)?;
    std::fs::write(path, svg).map_err(|source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The picture as SVG text: `title` on top, then one line per row.
pub fn render(title: &str, rows: &[PlotRow]) -> Result<String, PlotError> {
    let height = TITLE_HEIGHT_PX + ROW_HEIGHT_PX * u32::try_from(rows.len().max(1)).unwrap_or(u32::MAX);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH_PX, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (top, body) = root.split_vertically(TITLE_HEIGHT_PX);
        top.titled(title, ("sans-serif", TITLE_FONT_PX)).map_err(drawing)?;
        for (row, area) in rows.iter().zip(body.split_evenly((rows.len().max(1), 1))) {
            let halves = area.split_evenly((1, 2));
            draw_throughput(&halves[0], row)?;
            draw_latency(&halves[1], row)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

fn color_of(series: &Series) -> RGBColor {
    if series.server == ServerKind::Ringkv.name() {
        RINGKV_COLOR
    } else {
        BASELINE_COLOR
    }
}

fn label_of(series: &Series) -> String {
    format!("{} ({})", series.server, series.run)
}

/// Who is compared: `ringkv vs etcd`.
fn versus(row: &PlotRow) -> String {
    let baseline = row
        .series
        .iter()
        .map(|s| s.server)
        .find(|server| *server != ServerKind::Ringkv.name())
        .unwrap_or("(no baseline run)");
    format!("{} vs {baseline}", ServerKind::Ringkv.name())
}

/// Throughput of each whole second, at the middle of the second. A run's
/// last, partial second is left out: it holds the replies still on their way
/// at the deadline, a drain rather than the server's pace.
fn draw_throughput(area: &DrawingArea<SVGBackend, plotters::coord::Shift>, row: &PlotRow) -> Result<(), PlotError> {
    let points = |series: &Series| -> Vec<(f64, f64)> {
        series
            .samples
            .iter()
            .filter(|s| s.length_sec >= 1.0)
            .map(|s| (s.second as f64 + 0.5, s.per_sec))
            .collect()
    };
    let all: Vec<(f64, f64)> = row.series.iter().flat_map(points).collect();
    let x_max = all.iter().map(|p| p.0 + 0.5).fold(1.0, f64::max);
    // Headroom above the highest second for the legend, so it covers no line.
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.4;
    let unit = row.unit.replace("/sec", "/s");
    let caption = format!(
        "{} ({} conns / {} clients): {}, {unit} each second",
        row.name,
        row.conns,
        row.clients,
        versus(row)
    );
    let mut chart = chart(area, caption, 0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the run's start (whole seconds)")
        .y_desc(unit)
        .x_label_formatter(&|seconds| axis_number(*seconds))
        .y_label_formatter(&|rate| axis_number(*rate))
        .max_light_lines(4)
        .draw()
        .map_err(drawing)?;
    for series in &row.series {
        draw_line(&mut chart, series, points(series))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Latency by percentile on a log scale of `1 / (1 - q)`, so p90, p99,
/// p99.9... are equally far apart.
fn draw_latency(area: &DrawingArea<SVGBackend, plotters::coord::Shift>, row: &PlotRow) -> Result<(), PlotError> {
    let points = |series: &Series| -> Vec<(f64, f64)> {
        series
            .percentiles
            .iter()
            .map(|p| (1.0 / (1.0 - p.percentile / 100.0), p.ms))
            .collect()
    };
    let all: Vec<(f64, f64)> = row.series.iter().flat_map(points).collect();
    let (y_min, y_max) = match all.iter().map(|p| p.1).reduce(f64::min) {
        Some(low) => (low / 1.5, all.iter().map(|p| p.1).fold(low, f64::max) * 1.5),
        None => (0.1, 10.0),
    };
    let caption = format!(
        "{}: {}, latency by percentile (successful requests)",
        row.name,
        versus(row)
    );
    let mut chart = chart(
        area,
        caption,
        (1.0..PERCENTILE_X_MAX).log_scale(),
        (y_min..y_max).log_scale(),
    )?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms (log scale)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|ms| log_axis_label(*ms))
        .y_max_light_lines(0)
        .draw()
        .map_err(drawing)?;
    for series in &row.series {
        draw_line(&mut chart, series, points(series))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

type Chart<'a, X, Y> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>;

fn chart<'a, X: AsRangedCoord<Value = f64>, Y: AsRangedCoord<Value = f64>>(
    area: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    caption: String,
    x: X,
    y: Y,
) -> Result<Chart<'a, X::CoordDescType, Y::CoordDescType>, PlotError> {
    ChartBuilder::on(area)
        .caption(caption, ("sans-serif", CAPTION_FONT_PX))
        .margin(12)
        .margin_right(36)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(drawing)
}

fn draw_line<'a, X, Y>(chart: &mut Chart<'a, X, Y>, series: &Series, points: Vec<(f64, f64)>) -> Result<(), PlotError>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let color = color_of(series);
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(LINE_WIDTH_PX)))
        .map_err(drawing)?
        .label(label_of(series))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(LINE_WIDTH_PX)));
    Ok(())
}

fn legend<'a, X, Y>(chart: &mut Chart<'a, X, Y>, position: SeriesLabelPosition) -> Result<(), PlotError>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)
}

/// An axis value as short as it can be said: `12,000`, `250`, `0.5`.
fn axis_number(value: f64) -> String {
    if value >= 1000.0 {
        fmt_count(value.round() as u64)
    } else {
        format!("{}", (value * 1000.0).round() / 1000.0)
    }
}

/// A log axis labels 1, 2 and 5 of each decade (its lines are at every
/// digit, too close to label all).
fn log_axis_label(value: f64) -> String {
    let digit = value / 10f64.powf(value.log10().floor());
    if [1.0, 2.0, 5.0].iter().any(|d| (digit - d).abs() < 1e-6) {
        axis_number(value)
    } else {
        String::new()
    }
}

/// `x = 1 / (1 - q)` as a percentile: 1 -> `0%`, 10 -> `90%`, 1000 ->
/// `99.9%`, with as many decimals as the decade needs.
pub fn percentile_label(x: f64) -> String {
    let percentile = 100.0 * (1.0 - 1.0 / x);
    let decimals = usize::try_from((x.log10().round() as i64 - 2).max(0)).unwrap_or(0);
    format!("{percentile:.decimals$}%")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::LatencyMs;

    fn series(server: &'static str, per_sec: &[f64], p50_ms: f64) -> Series {
        let samples = per_sec
            .iter()
            .enumerate()
            .map(|(second, rate)| Sample {
                second: second as u64,
                length_sec: 1.0,
                ops: *rate as u64,
                errors: 0,
                per_sec: *rate,
                latency_ms: None::<LatencyMs>,
                write_ops: 0,
                write_latency_ms: None,
            })
            .collect();
        let percentiles = [0.0, 50.0, 90.0, 99.0, 99.9, 99.999]
            .iter()
            .enumerate()
            .map(|(i, percentile)| PercentilePoint {
                percentile: *percentile,
                ms: p50_ms * (1.0 + i as f64),
            })
            .collect();
        Series {
            server,
            run: "round 1 of 1".into(),
            samples,
            percentiles,
        }
    }

    fn row(name: &str) -> PlotRow {
        PlotRow {
            name: name.into(),
            conns: 100,
            clients: 1000,
            unit: "writes/sec",
            series: vec![
                series("ringkv", &[20_000.0, 21_000.0, 19_500.0], 2.0),
                series("etcd", &[9_000.0, 9_500.0, 9_100.0], 5.0),
            ],
        }
    }

    /// The texts of every `<text>` element.
    fn texts(document: &roxmltree::Document) -> Vec<String> {
        document
            .descendants()
            .filter(|node| node.has_tag_name("text"))
            .map(|node| node.text().unwrap_or_default().trim().to_string())
            .collect()
    }

    #[test]
    fn the_svg_parses_and_names_each_row_and_both_servers() {
        let svg = render("ringkv vs etcd", &[row("put"), row("put-1")]).unwrap();
        let document = roxmltree::Document::parse(&svg).expect("well-formed XML");
        assert!(document.root_element().has_tag_name("svg"));
        let texts = texts(&document);
        for name in ["put", "put-1"] {
            let prefix = format!("{name} (100 conns / 1000 clients): ringkv vs etcd");
            assert!(texts.iter().any(|t| t.starts_with(&prefix)), "{prefix}: {texts:?}");
            let latency = format!("{name}: ringkv vs etcd, latency by percentile");
            assert!(texts.iter().any(|t| t.starts_with(&latency)), "{latency}: {texts:?}");
        }
        let legends = texts.iter().filter(|t| *t == "ringkv (round 1 of 1)").count();
        assert_eq!(legends, 4, "one per chart: {texts:?}");
        assert_eq!(texts.iter().filter(|t| *t == "etcd (round 1 of 1)").count(), 4);
        assert!(texts.iter().any(|t| t == "99.9%"), "{texts:?}");
        assert!(texts.iter().any(|t| t == "writes/s"), "{texts:?}");
    }

    #[test]
    fn each_server_has_a_line_in_each_chart_in_its_own_color() {
        let mut put = row("put");
        // A partial last second is not drawn: the line keeps its three points.
        put.series[0].samples.push(Sample {
            second: 3,
            length_sec: 0.01,
            ops: 1,
            errors: 0,
            per_sec: 100.0,
            latency_ms: None,
            write_ops: 0,
            write_latency_ms: None,
        });
        let svg = render("t", &[put]).unwrap();
        let document = roxmltree::Document::parse(&svg).unwrap();
        let lines_of = |color: RGBColor| {
            let stroke = format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2);
            document
                .descendants()
                .filter(|node| node.has_tag_name("polyline"))
                .filter(|node| node.attribute("stroke") == Some(stroke.as_str()))
                .map(|node| node.attribute("points").unwrap_or_default().split_whitespace().count())
                .filter(|points| *points > 2) // legend samples have two
                .collect::<Vec<usize>>()
        };
        // Throughput: 3 whole seconds; latency: 6 percentiles.
        assert_eq!(lines_of(RINGKV_COLOR), vec![3, 6], "{svg}");
        assert_eq!(lines_of(BASELINE_COLOR), vec![3, 6], "{svg}");
    }

    #[test]
    fn a_row_without_runs_still_draws() {
        let mut empty = row("delete");
        empty.series.clear();
        let svg = render("t", &[empty]).unwrap();
        let document = roxmltree::Document::parse(&svg).unwrap();
        assert!(texts(&document).iter().any(|t| t.contains("delete")));
    }

    fn record(server: ServerKind, round: usize, ops: u64) -> RunRecord {
        let mut recorder = crate::report::Recorder::default();
        for _ in 0..ops {
            recorder.record_ok(None, 1000);
        }
        let info = crate::report::RunInfo {
            workload: "put".into(),
            settings: String::new(),
            endpoints: Vec::new(),
            conns: 1,
            clients: 1,
            rate_limit_per_sec: None,
            writes: true,
            write_kinds: &[],
        };
        let mut summary = crate::report::Summary::new(info, &recorder, 1.0, None);
        summary.samples = series("x", &[ops as f64], 1.0).samples;
        RunRecord {
            row: "put",
            round,
            server,
            summary,
        }
    }

    #[test]
    fn each_server_is_drawn_from_its_median_round() {
        let runs = vec![
            record(ServerKind::Ringkv, 1, 300),
            record(ServerKind::Etcd, 1, 10),
            record(ServerKind::Ringkv, 2, 100),
            record(ServerKind::Etcd, 2, 30),
            record(ServerKind::Ringkv, 3, 200),
            record(ServerKind::Etcd, 3, 20),
            record(ServerKind::Etcd, 4, 40),
        ];
        let result = RowResult {
            name: "put".into(),
            conns: 1,
            clients: 1,
            unit: "writes/sec",
            ringkv: Vec::new(),
            baseline: Vec::new(),
        };
        let rows = plot_rows(&[result], &runs, [ServerKind::Ringkv, ServerKind::Etcd], 4);
        let drawn: Vec<(&str, &str, f64)> = rows[0]
            .series
            .iter()
            .map(|s| (s.server, s.run.as_str(), s.samples[0].per_sec))
            .collect();
        assert_eq!(
            drawn,
            vec![("ringkv", "round 3 of 4", 200.0), ("etcd", "round 3 of 4", 20.0)],
            "the middle of three; the lower middle of four"
        );
        assert_eq!(rows[0].unit, "writes/sec");
    }

    #[test]
    fn axis_labels_are_short_and_a_log_axis_labels_1_2_and_5() {
        assert_eq!(axis_number(12_000.0), "12,000");
        assert_eq!(axis_number(250.0), "250");
        assert_eq!(axis_number(0.5), "0.5");
        assert_eq!(axis_number(0.0), "0");
        let labels: Vec<String> = [0.2, 0.3, 1.0, 5.0, 7.0, 10.0, 200.0].map(log_axis_label).to_vec();
        assert_eq!(labels, ["0.2", "", "1", "5", "", "10", "200"]);
    }

    #[test]
    fn percentile_labels_follow_the_decades() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
    }

    #[test]
    fn a_missing_directory_is_refused_before_any_run() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_path(&dir.path().join("plot.svg")).is_ok());
        assert!(check_path(Path::new("plot.svg")).is_ok());
        let error = check_path(&dir.path().join("none/plot.svg")).unwrap_err();
        assert!(error.to_string().contains("no such directory"), "{error}");
    }
}
