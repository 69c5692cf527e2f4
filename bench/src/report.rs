//! What a run measured: latency histograms, outcome counts and errors while it
//! runs ([`Recorder`]), and the summary printed at the end ([`Summary`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::Code;

use crate::errors::{ErrorTally, ErrorsByCode};
use crate::sample::{PercentilePoint, Sample};

/// Largest latency the histograms hold: 1 hour, in microseconds. Larger values
/// are recorded as this (they cannot occur without `--rate`: requests time out).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Histogram precision: 3 significant digits (0.1% relative error).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram (microseconds) with the report's bounds.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

/// Latencies (microseconds), outcome counts and errors of some of a run's requests.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    /// Per outcome kind, for workloads that tell kinds apart (txn-put: success and
    /// conflict); each kind's latencies are also in `latency_us`.
    outcomes_us: BTreeMap<&'static str, Histogram<u64>>,
    errors: ErrorTally,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder {
            latency_us: latency_histogram(),
            outcomes_us: BTreeMap::new(),
            errors: ErrorTally::default(),
        }
    }
}

impl Recorder {
    /// A request that succeeded after `latency_us`.
    pub fn record_ok(&mut self, kind: Option<&'static str>, latency_us: u64) {
        self.latency_us.saturating_record(latency_us);
        if let Some(kind) = kind {
            self.outcomes_us
                .entry(kind)
                .or_insert_with(latency_histogram)
                .saturating_record(latency_us);
        }
    }

    /// A request that failed. Its latency is not recorded: a fast failure would
    /// make the latency look better.
    pub fn record_error(&mut self, code: Code, message: &str) {
        self.errors.record(code, message);
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with equal bounds");
        for (kind, histogram) in &other.outcomes_us {
            self.outcomes_us
                .entry(kind)
                .or_insert_with(latency_histogram)
                .add(histogram)
                .expect("histograms with equal bounds");
        }
        self.errors.merge(&other.errors);
    }

    pub fn ops(&self) -> u64 {
        self.latency_us.len()
    }

    /// Latencies of every successful request.
    pub fn latency_us(&self) -> &Histogram<u64> {
        &self.latency_us
    }

    pub fn errors(&self) -> u64 {
        self.errors.total()
    }

    /// The ops whose outcome is one of `kinds`, together.
    pub fn group(&self, kinds: &[&'static str], duration_sec: f64) -> GroupSummary {
        let mut histogram = latency_histogram();
        for kind in kinds {
            if let Some(of_kind) = self.outcomes_us.get(kind) {
                histogram.add(of_kind).expect("histograms with equal bounds");
            }
        }
        GroupSummary {
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            count: histogram.len(),
            per_sec: per_sec(histogram.len(), duration_sec),
            latency_ms: LatencyMs::of(&histogram),
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencyMs {
    /// None for an empty histogram.
    pub fn of(histogram_us: &Histogram<u64>) -> Option<LatencyMs> {
        if histogram_us.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(LatencyMs {
            p50: ms(histogram_us.value_at_quantile(0.50)),
            p90: ms(histogram_us.value_at_quantile(0.90)),
            p99: ms(histogram_us.value_at_quantile(0.99)),
            p99_9: ms(histogram_us.value_at_quantile(0.999)),
            max: ms(histogram_us.max()),
            mean: histogram_us.mean() / 1000.0,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeSummary {
    pub count: u64,
    /// `count / duration_sec` of the run.
    pub per_sec: f64,
    pub latency_ms: Option<LatencyMs>,
}

/// Ops of several outcome kinds taken together: kube's writes (update, create,
/// delete), which share a run with its lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSummary {
    pub kinds: Vec<String>,
    pub count: u64,
    pub per_sec: f64,
    pub latency_ms: Option<LatencyMs>,
}

/// What a workload's watchers received during a run (watch-latency, kube).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchSummary {
    pub watchers: usize,
    pub streams: usize,
    /// Events received, over all watchers.
    pub events: u64,
    /// From the run's start to the last event's arrival.
    pub duration_sec: f64,
    pub events_per_sec: f64,
    /// watch-latency only: from each Put's send (intended send under --rate)
    /// to its event's arrival at a watcher, one sample per watcher per Put.
    pub latency_ms: Option<LatencyMs>,
    /// Responses without events (progress notifications).
    pub progress_notifies: u64,
    /// Wrong or missing events, by what was wrong: empty when every check passed.
    pub problems: BTreeMap<String, u64>,
    /// Watchers the server canceled and streams that failed.
    pub errors: u64,
    pub errors_by_code: Vec<ErrorsByCode>,
}

impl WatchSummary {
    fn text(&self, latency_from: &str) -> String {
        let mut out = format!(
            "  watch: {} watchers on {} streams: {} events in {:.2} s: {} events/sec, {} progress notifies\n",
            self.watchers,
            self.streams,
            fmt_count(self.events),
            self.duration_sec,
            fmt_rate(self.events_per_sec),
            fmt_count(self.progress_notifies)
        );
        if let Some(latency) = &self.latency_ms {
            let _ = writeln!(out, "  event latency ms: {}", fmt_latency(latency));
            let _ = writeln!(
                out,
                "  event latency measured from the put's {latency_from} to the event's arrival, \
                 one sample per watcher per put"
            );
        }
        if self.problems.is_empty() {
            out.push_str("  watch checks: passed\n");
        } else {
            let _ = writeln!(out, "  watch problems: {}", fmt_count(self.problems.values().sum()));
            for (problem, count) in &self.problems {
                let _ = writeln!(out, "    {} x {problem}", fmt_count(*count));
            }
        }
        out.push_str(&errors_text("watch errors", self.errors, &self.errors_by_code));
        out
    }
}

/// The one throughput and latency that stand for a run in `compare`'s table:
/// events delivered when the workload times events (watch-latency), its writes
/// when it mixes reads and writes (kube), else all its ops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Headline {
    pub per_sec: f64,
    pub unit: &'static str,
    pub latency_ms: Option<LatencyMs>,
}

/// How a run was set up, for its summary.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub workload: String,
    pub settings: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub rate_limit_per_sec: Option<u64>,
    /// Every op writes: the throughput is "writes/sec".
    pub writes: bool,
    /// Outcome kinds that wrote, when not every op does (kube).
    pub write_kinds: &'static [&'static str],
}

/// Where latency is measured from (see `pacing`).
pub const FROM_SEND: &str = "send";
pub const FROM_INTENDED_SEND: &str = "intended send time (--rate; coordinated omission corrected)";

/// The result of one run, as printed (text) or emitted (`--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub workload: String,
    pub settings: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub rate_limit_ops_per_sec: Option<u64>,
    pub latency_measured_from: &'static str,
    /// Requests that succeeded.
    pub ops: u64,
    /// Requests that failed.
    pub errors: u64,
    /// From the first send to the last reply.
    pub duration_sec: f64,
    /// `ops / duration_sec`: successful requests only.
    pub throughput_per_sec: f64,
    /// "writes/sec" when every op writes, else "ops/sec".
    pub throughput_unit: &'static str,
    /// Of successful requests.
    pub latency_ms: Option<LatencyMs>,
    pub outcomes: BTreeMap<String, OutcomeSummary>,
    pub errors_by_code: Vec<ErrorsByCode>,
    /// Why the run ended before its --total or --duration, if it did.
    pub stopped_early: Option<String>,
    /// The ops of RunInfo::write_kinds together, if the workload has them.
    pub writes: Option<GroupSummary>,
    /// What the workload's watchers received, if it has any.
    pub watch: Option<WatchSummary>,
    /// What else the workload reports (lease revocation, list sizes).
    pub notes: Vec<String>,
    /// CPU seconds (user + system) the server used over the timed part of
    /// the run, when its process id was known (`--server-pid`, `compare`).
    pub server_cpu_sec: Option<f64>,
    /// Each second of the run, when sampled (`--sample`, `compare --plot`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
    /// The latency curve of the successful requests, when sampled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency_percentiles: Vec<PercentilePoint>,
}

impl Summary {
    pub fn new(info: RunInfo, recorder: &Recorder, duration_sec: f64, stopped_early: Option<String>) -> Summary {
        let ops = recorder.ops();
        let throughput_per_sec = per_sec(ops, duration_sec);
        let outcomes = recorder
            .outcomes_us
            .iter()
            .map(|(kind, histogram)| {
                let summary = OutcomeSummary {
                    count: histogram.len(),
                    per_sec: per_sec(histogram.len(), duration_sec),
                    latency_ms: LatencyMs::of(histogram),
                };
                (kind.to_string(), summary)
            })
            .collect();
        let writes = (!info.write_kinds.is_empty()).then(|| recorder.group(info.write_kinds, duration_sec));
        Summary {
            server_cpu_sec: None,
            samples: Vec::new(),
            latency_percentiles: Vec::new(),
            workload: info.workload,
            settings: info.settings,
            endpoints: info.endpoints,
            conns: info.conns,
            clients: info.clients,
            rate_limit_ops_per_sec: info.rate_limit_per_sec,
            latency_measured_from: if info.rate_limit_per_sec.is_some() {
                FROM_INTENDED_SEND
            } else {
                FROM_SEND
            },
            ops,
            errors: recorder.errors(),
            duration_sec,
            throughput_per_sec,
            throughput_unit: if info.writes { "writes/sec" } else { "ops/sec" },
            latency_ms: LatencyMs::of(&recorder.latency_us),
            outcomes,
            errors_by_code: recorder.errors.by_code(),
            stopped_early,
            writes,
            watch: None,
            notes: Vec::new(),
        }
    }

    /// See [`Headline`].
    pub fn headline(&self) -> Headline {
        if let Some(watch) = self.watch.as_ref().filter(|w| w.latency_ms.is_some()) {
            return Headline {
                per_sec: watch.events_per_sec,
                unit: "events/sec",
                latency_ms: watch.latency_ms,
            };
        }
        if let Some(writes) = &self.writes {
            return Headline {
                per_sec: writes.per_sec,
                unit: "writes/sec",
                latency_ms: writes.latency_ms,
            };
        }
        Headline {
            per_sec: self.throughput_per_sec,
            unit: self.throughput_unit,
            latency_ms: self.latency_ms,
        }
    }

    /// The headline's count per CPU-second the server used; None without
    /// the server's CPU time or when it used none.
    pub fn per_server_cpu_sec(&self) -> Option<f64> {
        let cpu_sec = self.server_cpu_sec.filter(|cpu| *cpu > 0.0)?;
        Some(self.headline().per_sec * self.duration_sec / cpu_sec)
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let rate = match self.rate_limit_ops_per_sec {
            Some(rate) => format!(", rate limit {} ops/s", fmt_count(rate)),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{}: {} | {} | {} conns, {} clients{}",
            self.workload,
            self.settings,
            self.endpoints.join(","),
            self.conns,
            self.clients,
            rate
        );
        let _ = writeln!(
            out,
            "  {} ops in {:.2} s: {} {}",
            fmt_count(self.ops),
            self.duration_sec,
            fmt_rate(self.throughput_per_sec),
            self.throughput_unit
        );
        match &self.latency_ms {
            Some(latency) => {
                let _ = writeln!(out, "  latency ms: {}", fmt_latency(latency));
                let _ = writeln!(out, "  latency measured from {} to reply", self.latency_measured_from);
            }
            None => out.push_str("  latency: no successful requests\n"),
        }
        if let (Some(cpu_sec), Some(per_cpu_sec)) = (self.server_cpu_sec, self.per_server_cpu_sec()) {
            let headline = self.headline();
            let _ = writeln!(
                out,
                "  server CPU: {cpu_sec:.2} s, {} {} per server CPU-second",
                fmt_rate(per_cpu_sec),
                headline.unit.trim_end_matches("/sec")
            );
        }
        for (kind, outcome) in &self.outcomes {
            let latency = outcome
                .latency_ms
                .map(|l| format!(", p50 {} ms, p99 {} ms", fmt_ms(l.p50), fmt_ms(l.p99)));
            let _ = writeln!(
                out,
                "  {kind}: {} ({}/s{})",
                fmt_count(outcome.count),
                fmt_rate(outcome.per_sec),
                latency.unwrap_or_default()
            );
        }
        if let Some(writes) = &self.writes {
            let latency = writes.latency_ms.as_ref().map_or("-".to_string(), fmt_latency);
            let _ = writeln!(
                out,
                "  writes ({}): {}, {} writes/sec, latency ms: {latency}",
                writes.kinds.join(", "),
                fmt_count(writes.count),
                fmt_rate(writes.per_sec)
            );
        }
        if let Some(watch) = &self.watch {
            out.push_str(&watch.text(self.latency_measured_from));
        }
        out.push_str(&errors_text("errors", self.errors, &self.errors_by_code));
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        if let Some(reason) = &self.stopped_early {
            let _ = writeln!(out, "  stopped early: {reason}");
        }
        out
    }
}

/// `count / duration_sec`, 0 for an empty duration.
pub fn per_sec(count: u64, duration_sec: f64) -> f64 {
    if duration_sec > 0.0 {
        count as f64 / duration_sec
    } else {
        0.0
    }
}

fn errors_text(label: &str, total: u64, by_code: &[ErrorsByCode]) -> String {
    if total == 0 {
        return format!("  {label}: none\n");
    }
    let mut out = format!("  {label}: {}\n", fmt_count(total));
    for code in by_code {
        let _ = writeln!(out, "    {} x {}", code.code, fmt_count(code.count));
        for message in &code.messages {
            let _ = writeln!(out, "      {} x \"{}\"", fmt_count(message.count), message.message);
        }
        if code.distinct_messages > code.messages.len() {
            let _ = writeln!(
                out,
                "      ({} more distinct messages)",
                code.distinct_messages - code.messages.len()
            );
        }
    }
    out
}

/// `p50 0.412  p90 0.615  p99 1.20  p99.9 3.05  max 10.1`
pub fn fmt_latency(latency: &LatencyMs) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        fmt_ms(latency.p50),
        fmt_ms(latency.p90),
        fmt_ms(latency.p99),
        fmt_ms(latency.p99_9),
        fmt_ms(latency.max)
    )
}

/// Milliseconds with three significant digits (at least one decimal below 1000).
pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

/// `1234567` -> `1,234,567`.
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A per-second rate: whole numbers with separators, one decimal below 100.
pub fn fmt_rate(per_sec: f64) -> String {
    if per_sec < 100.0 {
        format!("{per_sec:.1}")
    } else {
        fmt_count(per_sec.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(writes: bool, rate: Option<u64>) -> RunInfo {
        RunInfo {
            workload: "put".into(),
            settings: "key-size 8 B".into(),
            endpoints: vec!["http://127.0.0.1:2379".into()],
            conns: 1,
            clients: 2,
            rate_limit_per_sec: rate,
            writes,
            write_kinds: &[],
        }
    }

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1,000");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
    }

    #[test]
    fn rates_and_milliseconds_keep_three_significant_digits() {
        assert_eq!(fmt_rate(12.34), "12.3");
        assert_eq!(fmt_rate(44341.4), "44,341");
        assert_eq!(fmt_ms(0.4123), "0.412");
        assert_eq!(fmt_ms(22.049), "22.05");
        assert_eq!(fmt_ms(1234.5), "1234.5");
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let mut recorder = Recorder::default();
        for micros in 1..=1000 {
            recorder.record_ok(None, micros * 10);
        }
        let latency = LatencyMs::of(&recorder.latency_us).unwrap();
        // 3 significant digits: within 0.1% of the exact value.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001;
        assert!(close(latency.p50, 5.0), "{latency:?}");
        assert!(close(latency.p90, 9.0), "{latency:?}");
        assert!(close(latency.p99, 9.9), "{latency:?}");
        assert!(close(latency.p99_9, 9.99), "{latency:?}");
        assert!(close(latency.max, 10.0), "{latency:?}");
    }

    #[test]
    fn latencies_beyond_an_hour_saturate() {
        let mut recorder = Recorder::default();
        recorder.record_ok(None, u64::MAX);
        assert_eq!(recorder.ops(), 1);
    }

    #[test]
    fn throughput_counts_successful_requests_only() {
        let mut recorder = Recorder::default();
        for _ in 0..100 {
            recorder.record_ok(None, 1000);
        }
        recorder.record_error(Code::Unavailable, "etcdserver: request timed out");
        let summary = Summary::new(info(true, None), &recorder, 2.0, None);
        assert_eq!(summary.ops, 100);
        assert_eq!(summary.errors, 1);
        assert_eq!(summary.throughput_per_sec, 50.0);
        assert_eq!(summary.throughput_unit, "writes/sec");
    }

    #[test]
    fn reads_are_reported_as_ops_per_sec() {
        let summary = Summary::new(info(false, None), &Recorder::default(), 1.0, None);
        assert_eq!(summary.throughput_unit, "ops/sec");
        assert_eq!(summary.latency_ms, None);
        assert!(summary.text().contains("no successful requests"));
    }

    #[test]
    fn text_names_the_unit_percentiles_and_errors() {
        let mut recorder = Recorder::default();
        recorder.record_ok(Some("success"), 2000);
        recorder.record_ok(Some("conflict"), 4000);
        recorder.record_error(Code::Unavailable, "etcdserver: leader changed");
        let text = Summary::new(info(true, None), &recorder, 1.0, None).text();
        assert!(text.contains("2 ops in 1.00 s: 2.0 writes/sec"), "{text}");
        // Three significant digits: 4000 us shares a bucket with 4001 us, and a
        // histogram reports the bucket's highest value.
        assert!(
            text.contains("latency ms: p50 2.000  p90 4.001  p99 4.001  p99.9 4.001  max 4.001"),
            "{text}"
        );
        assert!(text.contains("latency measured from send to reply"), "{text}");
        assert!(text.contains("success: 1 (1.0/s, p50 2.000 ms"), "{text}");
        assert!(text.contains("conflict: 1 (1.0/s, p50 4.001 ms"), "{text}");
        assert!(text.contains("Unavailable x 1"), "{text}");
        assert!(text.contains("1 x \"etcdserver: leader changed\""), "{text}");
    }

    #[test]
    fn a_rate_limit_says_latency_is_corrected_for_coordinated_omission() {
        let mut recorder = Recorder::default();
        recorder.record_ok(None, 1000);
        let summary = Summary::new(info(true, Some(500)), &recorder, 1.0, None);
        assert_eq!(summary.latency_measured_from, FROM_INTENDED_SEND);
        let text = summary.text();
        assert!(text.contains("rate limit 500 ops/s"), "{text}");
        assert!(text.contains("coordinated omission corrected"), "{text}");
    }

    #[test]
    fn merged_recorders_keep_every_sample() {
        let mut a = Recorder::default();
        a.record_ok(Some("read"), 10);
        let mut b = Recorder::default();
        b.record_ok(Some("read"), 20);
        b.record_ok(Some("write"), 30);
        b.record_error(Code::Internal, "boom");
        a.merge(&b);
        assert_eq!(a.ops(), 3);
        assert_eq!(a.errors(), 1);
        assert_eq!(a.outcomes_us["read"].len(), 2);
        assert_eq!(a.outcomes_us["write"].len(), 1);
    }

    #[test]
    fn write_kinds_are_reported_together_as_writes_per_sec() {
        let mut recorder = Recorder::default();
        recorder.record_ok(Some("update"), 1000);
        recorder.record_ok(Some("create"), 3000);
        recorder.record_ok(Some("list"), 50_000);
        let mut run = info(false, None);
        run.write_kinds = &["update", "create", "delete"];
        let summary = Summary::new(run, &recorder, 2.0, None);
        let writes = summary.writes.as_ref().unwrap();
        assert_eq!((writes.count, writes.per_sec), (2, 1.0));
        assert_eq!(writes.latency_ms.unwrap().max, 3.001);
        assert_eq!(summary.outcomes["list"].per_sec, 0.5);
        let headline = summary.headline();
        assert_eq!((headline.per_sec, headline.unit), (1.0, "writes/sec"));
        assert!(summary
            .text()
            .contains("writes (update, create, delete): 2, 1.0 writes/sec"));
    }

    #[test]
    fn timed_events_are_the_headline_and_watch_problems_are_listed() {
        let mut recorder = Recorder::default();
        recorder.record_ok(None, 1000);
        let mut summary = Summary::new(info(true, None), &recorder, 1.0, None);
        assert_eq!(summary.headline().unit, "writes/sec");
        let mut events_us = latency_histogram();
        events_us.record(2000).unwrap();
        summary.watch = Some(WatchSummary {
            watchers: 2,
            streams: 1,
            events: 2,
            duration_sec: 1.0,
            events_per_sec: 2.0,
            latency_ms: LatencyMs::of(&events_us),
            progress_notifies: 0,
            problems: BTreeMap::from([("missed".to_string(), 1)]),
            errors: 0,
            errors_by_code: Vec::new(),
        });
        let headline = summary.headline();
        assert_eq!((headline.per_sec, headline.unit), (2.0, "events/sec"));
        assert_eq!(headline.latency_ms.unwrap().p50, 2.0);
        let text = summary.text();
        assert!(text.contains("watch: 2 watchers on 1 streams: 2 events"), "{text}");
        assert!(text.contains("event latency ms: p50 2.000"), "{text}");
        assert!(text.contains("watch problems: 1\n    1 x missed"), "{text}");
        assert!(text.contains("watch errors: none"), "{text}");
    }

    #[test]
    fn json_has_stable_field_names() {
        let mut recorder = Recorder::default();
        recorder.record_ok(None, 1000);
        let json = serde_json::to_value(Summary::new(info(true, None), &recorder, 1.0, None)).unwrap();
        assert_eq!(json["ops"], 1);
        assert_eq!(json["errors"], 0);
        assert_eq!(json["throughput_unit"], "writes/sec");
        assert_eq!(json["latency_ms"]["p99_9"], 1.0);
        assert!(json["errors_by_code"].as_array().unwrap().is_empty());
    }
}
