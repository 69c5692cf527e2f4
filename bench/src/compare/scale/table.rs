//! The scale row's own table: one line per metric, ringkv and etcd side by
//! side with the ratio and the product's target, medians over the rounds;
//! then each run on one line.

use std::fmt::Write as _;

use serde::Serialize;

use super::{ScaleRecord, ScaleRun, PACED_RATE_PER_SEC, VAL_SIZE};
use crate::compare::server::ServerKind;
use crate::compare::table::{markdown, median};
use crate::report::{fmt_count, fmt_ms, fmt_rate};

/// RSS and restart time: ringkv at most this fraction of etcd's.
pub const RINGKV_OVER_ETCD_MAX: f64 = 0.5;
/// Put p99 during compaction: at most this multiple of ringkv's quiet p99.
pub const DURING_OVER_QUIET_MAX: f64 = 2.0;

const KIB_PER_MIB: f64 = 1024.0;

/// One server's scale runs, each metric's median over the runs that have it;
/// errors summed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScaleMedians {
    pub runs: usize,
    pub load_writes_per_sec: f64,
    pub vm_rss_mib: f64,
    pub rss_anon_mib: f64,
    pub rss_file_mib: f64,
    pub restart_first_read_sec: Option<f64>,
    pub quiet_p50_ms: Option<f64>,
    pub quiet_p99_ms: Option<f64>,
    pub quiet_max_ms: Option<f64>,
    pub during_compaction_p50_ms: Option<f64>,
    pub during_compaction_p99_ms: Option<f64>,
    pub during_compaction_max_ms: Option<f64>,
    pub compaction_sec: Option<f64>,
    pub errors: u64,
}

impl ScaleMedians {
    /// None if `kind` has no run.
    pub fn of(records: &[ScaleRecord], kind: ServerKind) -> Option<ScaleMedians> {
        let runs: Vec<&ScaleRun> = records.iter().filter(|r| r.server == kind).map(|r| &r.run).collect();
        let of = |metric: &dyn Fn(&ScaleRun) -> Option<f64>| -> Option<f64> {
            median(&runs.iter().filter_map(|run| metric(run)).collect::<Vec<_>>())
        };
        let mib = |kib: u64| kib as f64 / KIB_PER_MIB;
        Some(ScaleMedians {
            runs: runs.len(),
            load_writes_per_sec: of(&|r| Some(r.load.throughput_per_sec))?,
            vm_rss_mib: of(&|r| Some(mib(r.memory_after_load.vm_rss_kib)))?,
            rss_anon_mib: of(&|r| Some(mib(r.memory_after_load.rss_anon_kib)))?,
            rss_file_mib: of(&|r| Some(mib(r.memory_after_load.rss_file_kib)))?,
            restart_first_read_sec: of(&|r| r.restart.first_read_sec),
            quiet_p50_ms: of(&|r| r.quiet.latency_ms.map(|l| l.p50)),
            quiet_p99_ms: of(&|r| r.quiet.latency_ms.map(|l| l.p99)),
            quiet_max_ms: of(&|r| r.quiet.latency_ms.map(|l| l.max)),
            during_compaction_p50_ms: of(&|r| r.during_compaction.latency_ms.map(|l| l.p50)),
            during_compaction_p99_ms: of(&|r| r.during_compaction.latency_ms.map(|l| l.p99)),
            during_compaction_max_ms: of(&|r| r.during_compaction.latency_ms.map(|l| l.max)),
            compaction_sec: of(&|r| r.compaction.duration_sec),
            errors: runs.iter().map(|run| run.errors()).sum(),
        })
    }

    /// Median p99 during compaction over median quiet p99.
    pub fn during_over_quiet(&self) -> Option<f64> {
        ratio(self.during_compaction_p99_ms, self.quiet_p99_ms)
    }
}

/// `a / b`; None if either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b > 0.0).then(|| a / b)
}

/// `<= 0.5x: met`, `<= 0.5x: not met`, or just the target without a value.
fn target(max: f64, value: Option<f64>, prefix: &str) -> String {
    let target = format!("{prefix}<= {max}x");
    match value {
        Some(value) if value <= max => format!("{target}: met"),
        Some(_) => format!("{target}: not met"),
        None => target,
    }
}

fn cell(value: Option<f64>, format: fn(f64) -> String) -> String {
    value.map_or("-".to_string(), format)
}

fn times(value: f64) -> String {
    format!("{value:.2}x")
}

fn secs(value: f64) -> String {
    format!("{value:.3}")
}

fn mib(value: f64) -> String {
    format!("{value:.1}")
}

/// The table: medians of ringkv and etcd over `rounds` rounds at `keys` keys.
pub fn render(records: &[ScaleRecord], keys: u64, rounds: usize) -> String {
    let ringkv = ScaleMedians::of(records, ServerKind::Ringkv);
    let etcd = ScaleMedians::of(records, ServerKind::Etcd);
    let (r, e) = (ringkv.as_ref(), etcd.as_ref());
    let both = |metric: fn(&ScaleMedians) -> Option<f64>, format: fn(f64) -> String| {
        [cell(r.and_then(metric), format), cell(e.and_then(metric), format)]
    };
    let over = |metric: fn(&ScaleMedians) -> Option<f64>| ratio(r.and_then(metric), e.and_then(metric));
    let rss = |m: Option<&ScaleMedians>| {
        m.map_or("-".to_string(), |m| {
            format!(
                "{} ({} / {})",
                mib(m.vm_rss_mib),
                mib(m.rss_anon_mib),
                mib(m.rss_file_mib)
            )
        })
    };
    let runs = |m: Option<&ScaleMedians>| format!("{} of {rounds}", m.map_or(0, |m| m.runs));
    let errors = |m: Option<&ScaleMedians>| m.map_or("-".to_string(), |m| fmt_count(m.errors));
    let rate = fmt_count(PACED_RATE_PER_SEC);
    let load: fn(&ScaleMedians) -> Option<f64> = |m| Some(m.load_writes_per_sec);
    let vm_rss: fn(&ScaleMedians) -> Option<f64> = |m| Some(m.vm_rss_mib);
    let restart: fn(&ScaleMedians) -> Option<f64> = |m| m.restart_first_read_sec;
    let p99s = |p99: fn(&ScaleMedians) -> Option<f64>,
                p50: fn(&ScaleMedians) -> Option<f64>,
                max: fn(&ScaleMedians) -> Option<f64>| {
        let line = |m: Option<&ScaleMedians>| match m {
            Some(m) => format!(
                "{} (p50 {}, max {})",
                cell(p99(m), fmt_ms),
                cell(p50(m), fmt_ms),
                cell(max(m), fmt_ms)
            ),
            None => "-".to_string(),
        };
        [line(r), line(e)]
    };
    let row = |metric: String, values: [String; 2], ratio: String, target: String| -> Vec<String> {
        let [ringkv, etcd] = values;
        vec![metric, ringkv, etcd, ratio, target]
    };
    let during = r.and_then(ScaleMedians::during_over_quiet);
    let lines = vec![
        vec![
            "metric".to_string(),
            "ringkv".to_string(),
            "etcd".to_string(),
            "ringkv / etcd".to_string(),
            "target".to_string(),
        ],
        row("runs".into(), [runs(r), runs(e)], String::new(), String::new()),
        row(
            "load, writes/sec".into(),
            both(load, fmt_rate),
            cell(over(load), times),
            String::new(),
        ),
        row(
            "RSS after load, MiB (anon / file)".into(),
            [rss(r), rss(e)],
            cell(over(vm_rss), times),
            target(RINGKV_OVER_ETCD_MAX, over(vm_rss), ""),
        ),
        row(
            "restart to first read, s".into(),
            both(restart, secs),
            cell(over(restart), times),
            target(RINGKV_OVER_ETCD_MAX, over(restart), ""),
        ),
        row(
            format!("put p99 at {rate}/s, quiet, ms"),
            p99s(|m| m.quiet_p99_ms, |m| m.quiet_p50_ms, |m| m.quiet_max_ms),
            String::new(),
            String::new(),
        ),
        row(
            format!("put p99 at {rate}/s, during compaction, ms"),
            p99s(
                |m| m.during_compaction_p99_ms,
                |m| m.during_compaction_p50_ms,
                |m| m.during_compaction_max_ms,
            ),
            String::new(),
            String::new(),
        ),
        row(
            "  during / quiet p99".into(),
            both(ScaleMedians::during_over_quiet, times),
            String::new(),
            target(DURING_OVER_QUIET_MAX, during, "ringkv "),
        ),
        row(
            format!("compaction of {} revisions, s", fmt_count(keys)),
            both(|m| m.compaction_sec, secs),
            String::new(),
            String::new(),
        ),
        row(
            "errors, all phases".into(),
            [errors(r), errors(e)],
            String::new(),
            String::new(),
        ),
    ];
    let rounds_word = if rounds == 1 { "round" } else { "rounds" };
    format!(
        "scale: {} keys x {VAL_SIZE} B (medians over {rounds} {rounds_word})\n{}",
        fmt_count(keys),
        markdown(&lines)
    )
}

/// Every run on one line, in round order.
pub fn render_rounds(records: &[ScaleRecord]) -> String {
    records
        .iter()
        .map(|record| {
            format!(
                "round {} {}: {}\n",
                record.round,
                record.server.name(),
                one_line(&record.run)
            )
        })
        .collect()
}

/// `load 12,345 writes/sec, RSS 120.5 MiB (anon 100.1, file 20.4), ...`
pub fn one_line(run: &ScaleRun) -> String {
    let p99 = |summary: &crate::report::Summary| cell(summary.latency_ms.map(|l| l.p99), fmt_ms);
    let memory = &run.memory_after_load;
    let mut line = format!(
        "load {} writes/sec, RSS {} MiB (anon {}, file {}), restart to first read {} s, \
         put p99 quiet {} ms, during compaction {} ms, compaction {} s, {} errors",
        fmt_rate(run.load.throughput_per_sec),
        mib(memory.vm_rss_kib as f64 / KIB_PER_MIB),
        mib(memory.rss_anon_kib as f64 / KIB_PER_MIB),
        mib(memory.rss_file_kib as f64 / KIB_PER_MIB),
        cell(run.restart.first_read_sec, secs),
        p99(&run.quiet),
        p99(&run.during_compaction),
        cell(run.compaction.duration_sec, secs),
        fmt_count(run.errors())
    );
    if let Some(error) = &run.compaction.error {
        let _ = write!(line, "; compaction failed: {error}");
    }
    if run.restart.killed_after_sigterm {
        line.push_str("; still running 30 s after SIGTERM, killed");
    }
    if let Some(error) = &run.restart.error {
        let _ = write!(line, "; restart failed: {error}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::proc_status::Memory;
    use crate::compare::scale::{Compaction, Restart};
    use crate::report::{Recorder, RunInfo, Summary};

    /// A run whose ops all took `latency_us` but one that took `max_us`: p50
    /// and p99 are `latency_us` (100 ops). Below 2048 us the histogram holds
    /// values exactly.
    fn summary(ops_per_sec: f64, latency_us: u64, max_us: u64, errors: u64) -> Summary {
        let mut recorder = Recorder::default();
        for _ in 0..99 {
            recorder.record_ok(None, latency_us);
        }
        recorder.record_ok(None, max_us);
        for _ in 0..errors {
            recorder.record_error(tonic::Code::Unavailable, "down");
        }
        let info = RunInfo {
            workload: "put".into(),
            settings: String::new(),
            endpoints: vec![],
            conns: 1,
            clients: 1,
            rate_limit_per_sec: None,
            writes: true,
            write_kinds: &[],
        };
        Summary::new(info, &recorder, 100.0 / ops_per_sec, None)
    }

    fn record(server: ServerKind, rss_mib: u64, restart_sec: f64, quiet_us: u64, during_us: u64) -> ScaleRecord {
        ScaleRecord {
            round: 1,
            server,
            run: ScaleRun {
                keys: 1000,
                load: summary(5000.0, 1, 2, 0),
                memory_after_load: Memory {
                    vm_rss_kib: rss_mib * 1024,
                    rss_anon_kib: rss_mib * 1024 / 4,
                    rss_file_kib: rss_mib * 1024 * 3 / 4,
                },
                overwrite: summary(5000.0, 1, 2, 0),
                quiet: summary(2000.0, quiet_us, 1500, 0),
                during_compaction: summary(2000.0, during_us, 1900, 0),
                compaction: Compaction {
                    revision: 2001,
                    started_after_sec: 1.0,
                    duration_sec: Some(3.0),
                    error: None,
                },
                restart: Restart {
                    killed_after_sigterm: false,
                    first_read_sec: Some(restart_sec),
                    error: None,
                },
            },
        }
    }

    #[test]
    fn ratios_need_both_sides_and_a_positive_divisor() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(None, Some(4.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }

    #[test]
    fn a_target_is_met_at_or_below_its_bound() {
        assert_eq!(target(0.5, Some(0.5), ""), "<= 0.5x: met");
        assert_eq!(target(0.5, Some(0.51), ""), "<= 0.5x: not met");
        assert_eq!(target(2.0, None, "ringkv "), "ringkv <= 2x");
    }

    #[test]
    fn medians_are_per_metric_and_errors_of_every_phase_add_up() {
        let mut failed = record(ServerKind::Ringkv, 300, 9.0, 900, 900);
        failed.run.quiet = summary(2000.0, 900, 1500, 2);
        failed.run.compaction.duration_sec = None;
        failed.run.compaction.error = Some("no reply within 2m; gave up".into());
        let records = vec![
            record(ServerKind::Ringkv, 100, 1.0, 200, 300),
            record(ServerKind::Etcd, 400, 4.0, 200, 200),
            record(ServerKind::Ringkv, 200, 2.0, 400, 800),
            failed,
        ];
        let ringkv = ScaleMedians::of(&records, ServerKind::Ringkv).unwrap();
        assert_eq!(ringkv.runs, 3);
        assert_eq!(ringkv.vm_rss_mib, 200.0);
        assert_eq!(ringkv.rss_anon_mib, 50.0);
        assert_eq!(ringkv.restart_first_read_sec, Some(2.0));
        assert_eq!(ringkv.quiet_p99_ms, Some(0.4));
        assert_eq!(ringkv.during_compaction_p99_ms, Some(0.8));
        assert_eq!(ringkv.during_over_quiet(), Some(2.0));
        // Only the runs whose compaction replied have a duration.
        assert_eq!(ringkv.compaction_sec, Some(3.0));
        assert_eq!(ringkv.errors, 2 + 1);
        assert_eq!(ScaleMedians::of(&records, ServerKind::Ceiling), None);
    }

    #[test]
    fn table_puts_ringkv_beside_etcd_with_ratios_and_targets() {
        let records = vec![
            record(ServerKind::Ringkv, 100, 1.0, 200, 300),
            record(ServerKind::Etcd, 400, 4.0, 200, 500),
        ];
        let table = render(&records, 1_000_000, 1);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "scale: 1,000,000 keys x 256 B (medians over 1 round)");
        assert!(lines[1..].iter().all(|l| l.len() == lines[1].len()), "{table}");
        let row = |metric: &str| {
            let line = lines.iter().find(|l| l.starts_with(&format!("| {metric} "))).unwrap();
            line.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("RSS after load, MiB (anon / file)"),
            vec![
                "RSS after load, MiB (anon / file)",
                "100.0 (25.0 / 75.0)",
                "400.0 (100.0 / 300.0)",
                "0.25x",
                "<= 0.5x: met"
            ]
        );
        assert_eq!(
            row("restart to first read, s")[1..],
            ["1.000", "4.000", "0.25x", "<= 0.5x: met"]
        );
        assert_eq!(
            row("  during / quiet p99")[1..],
            ["1.50x", "2.50x", "ringkv <= 2x: met"]
        );
        assert_eq!(row("put p99 at 2,000/s, quiet, ms")[1], "0.200 (p50 0.200, max 1.500)");
        assert_eq!(row("compaction of 1,000,000 revisions, s")[1..], ["3.000", "3.000"]);
        assert_eq!(row("errors, all phases")[1..], ["0", "0"]);
    }

    #[test]
    fn a_run_line_says_what_failed() {
        let mut failed = record(ServerKind::Etcd, 100, 1.0, 200, 300).run;
        failed.compaction.duration_sec = None;
        failed.compaction.error = Some("no reply within 2m; gave up".into());
        failed.restart.killed_after_sigterm = true;
        let line = one_line(&failed);
        assert!(line.contains("compaction - s, 1 errors"), "{line}");
        assert!(
            line.contains("compaction failed: no reply within 2m; gave up"),
            "{line}"
        );
        assert!(line.contains("killed"), "{line}");
    }
}
