//! The compare table: medians over rounds per server, and the ratios of ringkv
//! against the baseline (etcd for `compare`, ringkv-ceiling for `ceiling`),
//! each one > 1 where ringkv does better.

use std::fmt::Write as _;

use serde::Serialize;

use crate::report::{fmt_count, fmt_ms, fmt_rate, Summary};

/// What one run contributes to its row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measured {
    pub throughput_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
    /// Server CPU milliseconds (user + system, every member together) per
    /// 1,000 of the headline's count.
    pub server_cpu_ms_per_1000: Option<f64>,
}

impl Measured {
    /// The run's headline throughput and latency (see `Summary::headline`);
    /// errors of its ops and of its watchers.
    pub fn of(summary: &Summary) -> Measured {
        let headline = summary.headline();
        Measured {
            throughput_per_sec: headline.per_sec,
            p50_ms: headline.latency_ms.map(|l| l.p50),
            p99_ms: headline.latency_ms.map(|l| l.p99),
            errors: summary.errors + summary.watch.as_ref().map_or(0, |w| w.errors),
            server_cpu_ms_per_1000: summary.per_server_cpu_sec().and_then(cpu_ms_per_1000),
        }
    }
}

/// One server's runs of a row, summarized: each metric's median over the runs
/// (the mean of the middle two for an even count), errors summed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Medians {
    pub runs: usize,
    pub throughput_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
    pub server_cpu_ms_per_1000: Option<f64>,
}

/// Server CPU milliseconds per 1,000 ops from ops per server CPU-second;
/// None when no op was done.
pub fn cpu_ms_per_1000(ops_per_cpu_sec: f64) -> Option<f64> {
    // 1,000 ops take 1000 / rate CPU-seconds, which are 1000 x that in ms.
    (ops_per_cpu_sec > 0.0).then(|| 1_000_000.0 / ops_per_cpu_sec)
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

pub fn medians(runs: &[Measured]) -> Option<Medians> {
    let throughput = median(&runs.iter().map(|r| r.throughput_per_sec).collect::<Vec<_>>())?;
    let p50: Vec<f64> = runs.iter().filter_map(|r| r.p50_ms).collect();
    let p99: Vec<f64> = runs.iter().filter_map(|r| r.p99_ms).collect();
    let cpu: Vec<f64> = runs.iter().filter_map(|r| r.server_cpu_ms_per_1000).collect();
    Some(Medians {
        runs: runs.len(),
        throughput_per_sec: throughput,
        p50_ms: median(&p50),
        p99_ms: median(&p99),
        errors: runs.iter().map(|r| r.errors).sum(),
        server_cpu_ms_per_1000: median(&cpu),
    })
}

/// ringkv's median throughput over the baseline's; None if either has no
/// runs or the baseline did nothing.
pub fn ratio(ringkv: Option<&Medians>, baseline: Option<&Medians>) -> Option<f64> {
    let (ringkv, baseline) = (ringkv?, baseline?);
    (baseline.throughput_per_sec > 0.0).then(|| ringkv.throughput_per_sec / baseline.throughput_per_sec)
}

/// Every run of one row, by server.
#[derive(Debug, Clone, PartialEq)]
pub struct RowResult {
    pub name: String,
    pub conns: usize,
    pub clients: usize,
    /// "writes/sec", "ops/sec" or "events/sec".
    pub unit: &'static str,
    pub ringkv: Vec<Measured>,
    pub baseline: Vec<Measured>,
}

impl RowResult {
    pub fn ringkv_medians(&self) -> Option<Medians> {
        medians(&self.ringkv)
    }

    pub fn baseline_medians(&self) -> Option<Medians> {
        medians(&self.baseline)
    }

    pub fn ratio(&self) -> Option<f64> {
        ratio(self.ringkv_medians().as_ref(), self.baseline_medians().as_ref())
    }

    /// The baseline's median server CPU per op over ringkv's, so > 1 means
    /// ringkv spends less CPU per op (it equals ringkv's ops per CPU-second
    /// over the baseline's).
    pub fn per_cpu_ratio(&self) -> Option<f64> {
        let ringkv = self.ringkv_medians()?.server_cpu_ms_per_1000?;
        let baseline = self.baseline_medians()?.server_cpu_ms_per_1000?;
        (ringkv > 0.0).then(|| baseline / ringkv)
    }
}

/// A Markdown table (readable as is in a terminal), one line per row: median
/// throughput of ringkv and of the `baseline` server, the ratio, median
/// p50/p99 latency, errors, and median server CPU per 1,000 ops with its
/// ratio. A server with fewer runs than `rounds` is marked `(n of rounds runs)`.
pub fn render(rows: &[RowResult], rounds: usize, baseline: &str) -> String {
    let header = [
        "workload".to_string(),
        "conns / clients".to_string(),
        "ringkv".to_string(),
        baseline.to_string(),
        format!("ringkv / {baseline}"),
        "ringkv p50 / p99 ms".to_string(),
        format!("{baseline} p50 / p99 ms"),
        format!("errors ringkv / {baseline}"),
        format!("server CPU ms per 1,000 ringkv / {baseline} (ratio {baseline}'s / ringkv's)"),
    ];
    let mut lines: Vec<[String; 9]> = vec![header];
    for row in rows {
        let ringkv = row.ringkv_medians();
        let other = row.baseline_medians();
        lines.push([
            row.name.clone(),
            format!("{} / {}", row.conns, row.clients),
            throughput_cell(ringkv.as_ref(), row.unit, rounds),
            throughput_cell(other.as_ref(), row.unit, rounds),
            row.ratio().map_or("-".to_string(), |r| format!("{r:.2}x")),
            latency_cell(ringkv.as_ref()),
            latency_cell(other.as_ref()),
            format!("{} / {}", errors_cell(ringkv.as_ref()), errors_cell(other.as_ref())),
            per_cpu_cell(ringkv.as_ref(), other.as_ref(), row.per_cpu_ratio()),
        ]);
    }
    let lines: Vec<Vec<String>> = lines.into_iter().map(Vec::from).collect();
    markdown(&lines)
}

/// `lines` as a Markdown table with aligned columns, the first line as its
/// header; every line has the header's number of cells.
pub fn markdown(lines: &[Vec<String>]) -> String {
    assert!(
        lines.iter().all(|line| line.len() == lines[0].len()),
        "every line has one cell per column"
    );
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|column| lines.iter().map(|line| line[column].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        out.push('|');
        for (cell, width) in line.iter().zip(&widths) {
            let _ = write!(out, " {cell:<width$} |");
        }
        out.push('\n');
        if i == 0 {
            out.push('|');
            for width in &widths {
                let _ = write!(out, "{}|", "-".repeat(width + 2));
            }
            out.push('\n');
        }
    }
    out
}

fn throughput_cell(medians: Option<&Medians>, unit: &str, rounds: usize) -> String {
    let Some(medians) = medians else {
        return "no run".to_string();
    };
    let mut cell = format!("{} {unit}", fmt_rate(medians.throughput_per_sec));
    if medians.runs < rounds {
        let _ = write!(cell, " ({} of {rounds} runs)", medians.runs);
    }
    cell
}

fn latency_cell(medians: Option<&Medians>) -> String {
    let ms = |value: Option<f64>| value.map_or("-".to_string(), fmt_ms);
    match medians {
        Some(m) => format!("{} / {}", ms(m.p50_ms), ms(m.p99_ms)),
        None => "-".to_string(),
    }
}

/// `24.00 / 69.80 = 2.91x`: each server's median CPU ms per 1,000 ops, and
/// the baseline's over ringkv's.
fn per_cpu_cell(ringkv: Option<&Medians>, baseline: Option<&Medians>, ratio: Option<f64>) -> String {
    let cpu = |medians: Option<&Medians>| {
        medians
            .and_then(|m| m.server_cpu_ms_per_1000)
            .map_or("-".to_string(), fmt_ms)
    };
    let ratio = ratio.map_or(String::new(), |r| format!(" = {r:.2}x"));
    format!("{} / {}{ratio}", cpu(ringkv), cpu(baseline))
}

fn errors_cell(medians: Option<&Medians>) -> String {
    medians.map_or("-".to_string(), |m| fmt_count(m.errors))
}

/// Each run's throughput, to show the spread behind the medians:
/// `put  ringkv 12,345 12,100 12,400  etcd 4,000 4,100 3,900`.
pub fn render_rounds(rows: &[RowResult], baseline: &str) -> String {
    let list = |runs: &[Measured]| -> String {
        let values: Vec<String> = runs.iter().map(|r| fmt_rate(r.throughput_per_sec)).collect();
        if values.is_empty() {
            "-".to_string()
        } else {
            values.join(" ")
        }
    };
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    rows.iter()
        .map(|row| {
            format!(
                "{:<width$}  ringkv {}  {baseline} {}\n",
                row.name,
                list(&row.ringkv),
                list(&row.baseline)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(throughput: f64, p50: f64, p99: f64, errors: u64) -> Measured {
        Measured {
            throughput_per_sec: throughput,
            p50_ms: Some(p50),
            p99_ms: Some(p99),
            errors,
            server_cpu_ms_per_1000: Some(1_000_000.0 / throughput),
        }
    }

    fn row(ringkv: Vec<Measured>, baseline: Vec<Measured>) -> RowResult {
        RowResult {
            name: "put".into(),
            conns: 100,
            clients: 1000,
            unit: "writes/sec",
            ringkv,
            baseline,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn each_metric_takes_its_own_median_and_errors_add_up() {
        let medians = medians(&[
            run(100.0, 9.0, 1.0, 1),
            run(300.0, 1.0, 3.0, 0),
            run(200.0, 5.0, 2.0, 2),
        ])
        .unwrap();
        assert_eq!(medians.throughput_per_sec, 200.0);
        assert_eq!(medians.p50_ms, Some(5.0));
        assert_eq!(medians.p99_ms, Some(2.0));
        assert_eq!(medians.errors, 3);
        assert_eq!(medians.runs, 3);
        assert_eq!(medians.server_cpu_ms_per_1000, Some(5000.0));
    }

    #[test]
    fn cpu_per_1000_ops_is_the_inverse_of_ops_per_cpu_second() {
        // 41,666 puts per CPU-second: 1,000 puts take 24 ms of CPU.
        assert!((cpu_ms_per_1000(41_666.0).unwrap() - 24.0).abs() < 0.001);
        assert_eq!(cpu_ms_per_1000(1000.0), Some(1000.0));
        assert_eq!(cpu_ms_per_1000(0.0), None);
    }

    #[test]
    fn the_cpu_ratio_is_etcds_cpu_per_op_over_ringkvs_and_needs_both() {
        let mut ringkv = run(3000.0, 1.0, 2.0, 0);
        ringkv.server_cpu_ms_per_1000 = Some(20.0);
        let mut etcd = run(1000.0, 1.0, 2.0, 0);
        etcd.server_cpu_ms_per_1000 = Some(60.0);
        assert_eq!(
            row(vec![ringkv], vec![etcd]).per_cpu_ratio(),
            Some(3.0),
            "ringkv spending a third of etcd's CPU per op is 3x"
        );
        etcd.server_cpu_ms_per_1000 = None;
        assert_eq!(row(vec![ringkv], vec![etcd]).per_cpu_ratio(), None);
    }

    #[test]
    fn a_runs_cpu_per_1000_ops_comes_from_its_summary() {
        let mut summary = crate::report::Summary::new(
            crate::report::RunInfo {
                workload: "put".into(),
                settings: String::new(),
                endpoints: vec![],
                conns: 1,
                clients: 1,
                rate_limit_per_sec: None,
                writes: true,
                write_kinds: &[],
            },
            &crate::report::Recorder::default(),
            2.0,
            None,
        );
        summary.throughput_per_sec = 5000.0;
        summary.server_cpu_sec = Some(0.5);
        // 10,000 puts in 2 s on 0.5 CPU-seconds: 50 ms per 1,000.
        assert_eq!(Measured::of(&summary).server_cpu_ms_per_1000, Some(50.0));
        summary.server_cpu_sec = None;
        assert_eq!(Measured::of(&summary).server_cpu_ms_per_1000, None);
    }

    #[test]
    fn ratio_is_ringkv_over_etcd() {
        let result = row(vec![run(3000.0, 1.0, 2.0, 0)], vec![run(1000.0, 1.0, 2.0, 0)]);
        assert_eq!(result.ratio(), Some(3.0));
        assert_eq!(row(vec![run(3000.0, 1.0, 2.0, 0)], vec![]).ratio(), None);
        assert_eq!(
            row(vec![run(3000.0, 1.0, 2.0, 0)], vec![run(0.0, 1.0, 2.0, 9)]).ratio(),
            None
        );
    }

    #[test]
    fn table_has_one_aligned_line_per_row() {
        let rows = vec![row(
            vec![run(12_345.0, 1.5, 20.0, 0), run(12_000.0, 1.2, 25.0, 0)],
            vec![run(4_000.0, 3.0, 40.0, 0), run(4_200.0, 2.0, 50.0, 1)],
        )];
        let table = render(&rows, 2, "etcd");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0].starts_with("| workload | conns / clients | ringkv "),
            "{table}"
        );
        assert!(lines[1].starts_with("|----------|"), "{table}");
        assert_eq!(
            lines[2],
            "| put      | 100 / 1000      | 12,173 writes/sec | 4,100 writes/sec | 2.97x         \
             | 1.350 / 22.50       | 2.500 / 45.00     | 0 / 1                | 82.17 / 244.0 = 2.97x                                           |"
        );
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
    }

    #[test]
    fn missing_runs_are_marked() {
        let rows = vec![row(vec![run(10.0, 1.0, 2.0, 0)], vec![])];
        let table = render(&rows, 3, "ringkv-ceiling");
        assert!(table.contains("10.0 writes/sec (1 of 3 runs)"), "{table}");
        assert!(table.contains("no run"), "{table}");
    }

    #[test]
    fn rounds_list_every_run() {
        let rows = vec![row(vec![run(1000.0, 1.0, 2.0, 0), run(1100.0, 1.0, 2.0, 0)], vec![])];
        assert_eq!(render_rounds(&rows, "etcd"), "put  ringkv 1,000 1,100  etcd -\n");
    }
}
