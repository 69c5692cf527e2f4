//! Per-second samples of a run (`--sample`, `compare --plot`): the requests
//! completed in each second since the run's start, their rate, latency and
//! errors, taken from the same recording as the run's totals.
//!
//! etcd's benchmark (`--sample`) keeps min/avg/max latency and a count per
//! second of each request's start and prints the table at the end. Here a
//! request counts in the second its reply came, and each line is printed while
//! the run goes. Second `k` holds the replies that came in `(k, k+1]` seconds
//! after the start (a reply at exactly 1.000 s is second 0's), so the last,
//! partial second always has a length above zero.
//!
//! Recording happens in [`Shards`]: each request loop records into one shard
//! under its mutex, the totals and (when sampling) that second's tally. The
//! reply's time is read while holding the lock, so a sampler that locks a shard
//! after an instant has seen every reply of that shard before the instant.
//! The [`Sampler`] closes second `k` only once some shard has recorded a reply
//! after `k + 1` s: the run went on past the second's end, so the second was a
//! whole one (a run that ends inside it gets a partial one from
//! [`Sampler::finish`]). Second `k`'s line is printed at the first tick after
//! that; a second in which nothing completed is printed once something
//! completes later, or at the end.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::pacing::latency_us;
use crate::report::{fmt_count, fmt_ms, fmt_rate, per_sec, LatencyMs, Recorder, LATENCY_US_MAX};

/// Per-second latency histograms keep 2 significant digits (1% relative
/// error): about 26 KiB each instead of the run histogram's 190 KiB, since
/// every shard holds one per open second.
pub const SECOND_LATENCY_SIGNIFICANT_DIGITS: u8 = 2;
/// The sampler looks at the shards this long after each second's end, so that
/// at any rate above a few requests per second a reply of the next second is
/// already recorded and the finished second can be closed at once.
pub const TICK_AFTER_SECOND: Duration = Duration::from_millis(100);
/// Percentiles of a run's latency curve, as `x = 1 / (1 - q)`: five points per
/// decade from p0 (`x = 1`) to p99.999 (`x = 10^5`).
pub const CURVE_POINTS_PER_DECADE: u32 = 5;
pub const CURVE_DECADES: u32 = 5;

/// Whether a run keeps per-second samples, and prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SampleMode {
    Off,
    /// Kept for the summary (`compare --plot`), not printed.
    Record,
    /// Kept, and each second printed on stderr as it closes (`--sample`).
    Print,
}

/// The second a reply `offset` after the run's start belongs to: `(k, k+1]`
/// is second `k`; a reply at the start itself is second 0.
pub fn second_of(offset: Duration) -> u64 {
    let seconds = offset.as_nanos().div_ceil(1_000_000_000).saturating_sub(1);
    u64::try_from(seconds).unwrap_or(u64::MAX)
}

/// An empty per-second latency histogram (microseconds).
fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SECOND_LATENCY_SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

/// The replies of one second (in one shard, or merged over all).
#[derive(Debug, Clone)]
pub struct SecondTally {
    pub ops: u64,
    pub errors: u64,
    /// Of the successful requests, as the run's totals.
    pub latency_us: Histogram<u64>,
    /// Of the successful requests whose outcome is one of the workload's
    /// write kinds (`Workload::write_kinds`; kube's lists are slower than its
    /// writes by orders of magnitude, so the second's p99 is the lists').
    pub writes_us: Histogram<u64>,
}

impl Default for SecondTally {
    fn default() -> SecondTally {
        SecondTally {
            ops: 0,
            errors: 0,
            latency_us: second_histogram(),
            writes_us: second_histogram(),
        }
    }
}

impl SecondTally {
    fn merge(&mut self, other: &SecondTally) {
        self.ops += other.ops;
        self.errors += other.errors;
        for (mine, theirs) in [
            (&mut self.latency_us, &other.latency_us),
            (&mut self.writes_us, &other.writes_us),
        ] {
            mine.add(theirs).expect("histograms with equal bounds");
        }
    }
}

/// One of a run's recording shards: the totals, and each second's tally
/// while sampling (only the seconds the sampler has not taken yet).
#[derive(Debug)]
pub struct Shard {
    totals: Recorder,
    /// None when not sampling.
    seconds: Option<BTreeMap<u64, SecondTally>>,
    /// The outcome kinds a second's `writes_us` holds.
    write_kinds: &'static [&'static str],
}

impl Shard {
    /// Records a request that ended now, a run that started at `start`, timed
    /// from `from`: `Ok(kind)` succeeded (`kind` as `Outcome`), `Err` failed.
    /// Returns the time of the reply, read under the shard's lock (see the
    /// module's doc). Call it holding the lock.
    pub fn record(
        &mut self,
        result: Result<Option<&'static str>, &tonic::Status>,
        start: Instant,
        from: Instant,
    ) -> Instant {
        let done = Instant::now();
        let tally = self.seconds.as_mut().map(|seconds| {
            seconds
                .entry(second_of(done.saturating_duration_since(start)))
                .or_default()
        });
        match result {
            Ok(kind) => {
                let latency = latency_us(from, done);
                self.totals.record_ok(kind, latency);
                if let Some(tally) = tally {
                    tally.ops += 1;
                    tally.latency_us.saturating_record(latency);
                    if kind.is_some_and(|kind| self.write_kinds.contains(&kind)) {
                        tally.writes_us.saturating_record(latency);
                    }
                }
            }
            Err(status) => {
                self.totals.record_error(status.code(), status.message());
                if let Some(tally) = tally {
                    tally.errors += 1;
                }
            }
        }
        done
    }
}

/// A run's recording shards.
#[derive(Debug)]
pub struct Shards(Vec<Mutex<Shard>>);

impl Shards {
    /// `write_kinds` as `Workload::write_kinds`.
    pub fn new(count: usize, mode: SampleMode, write_kinds: &'static [&'static str]) -> Shards {
        let shard = || Shard {
            totals: Recorder::default(),
            seconds: (mode != SampleMode::Off).then(BTreeMap::new),
            write_kinds,
        };
        Shards((0..count).map(|_| Mutex::new(shard())).collect())
    }

    /// The shard request loop `index` records into.
    pub fn shard(&self, index: usize) -> &Mutex<Shard> {
        &self.0[index % self.0.len()]
    }

    /// Every shard's totals, merged.
    pub fn totals(&self) -> Recorder {
        let mut totals = Recorder::default();
        for shard in &self.0 {
            totals.merge(&lock(shard).totals);
        }
        totals
    }

    /// The latest second any shard holds a reply of.
    fn latest_second(&self) -> Option<u64> {
        self.0
            .iter()
            .filter_map(|shard| {
                lock(shard)
                    .seconds
                    .as_ref()?
                    .last_key_value()
                    .map(|(second, _)| *second)
            })
            .max()
    }

    /// Takes every shard's tallies of the seconds before `end`, merged.
    fn take_before(&self, end: u64) -> BTreeMap<u64, SecondTally> {
        let mut merged: BTreeMap<u64, SecondTally> = BTreeMap::new();
        for shard in &self.0 {
            let mut shard = lock(shard);
            let Some(seconds) = shard.seconds.as_mut() else {
                continue;
            };
            let later = seconds.split_off(&end);
            for (second, tally) in std::mem::replace(seconds, later) {
                merged.entry(second).or_default().merge(&tally);
            }
        }
        merged
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard
        .lock()
        .expect("no request loop panicked holding a recording shard")
}

/// One second of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the run's start at which this one begins.
    pub second: u64,
    /// 1, or less for the run's last second.
    pub length_sec: f64,
    /// Requests that succeeded in it.
    pub ops: u64,
    pub errors: u64,
    /// `ops / length_sec`.
    pub per_sec: f64,
    /// Of its successful requests; None when none succeeded.
    pub latency_ms: Option<LatencyMs>,
    /// Of its successful requests, the writes of a workload that tells them
    /// apart (`Workload::write_kinds`), and their latency (None when none).
    pub write_ops: u64,
    pub write_latency_ms: Option<LatencyMs>,
}

impl Sample {
    fn of(second: u64, length_sec: f64, tally: &SecondTally) -> Sample {
        Sample {
            second,
            length_sec,
            ops: tally.ops,
            errors: tally.errors,
            per_sec: per_sec(tally.ops, length_sec),
            latency_ms: LatencyMs::of(&tally.latency_us),
            write_ops: tally.writes_us.len(),
            write_latency_ms: LatencyMs::of(&tally.writes_us),
        }
    }

    /// `put round 1/3 ringkv  4-5 s  12,345 ops  12,345 ops/s  latency ms p50
    /// 1.200  p99 4.500  max 9.100  0 errors`, and for a workload with write
    /// kinds `  writes 812  p99 80.100  max 95.300` before the errors.
    pub fn line(&self, label: &str) -> String {
        let end = self.second as f64 + self.length_sec;
        let end = if self.length_sec < 1.0 {
            format!("{end:.3}")
        } else {
            format!("{end:.0}")
        };
        let latency = self.latency_ms.map_or("-".to_string(), |l| {
            format!("p50 {}  p99 {}  max {}", fmt_ms(l.p50), fmt_ms(l.p99), fmt_ms(l.max))
        });
        let writes = self.write_latency_ms.map_or(String::new(), |w| {
            format!(
                "  writes {}  p99 {}  max {}",
                fmt_count(self.write_ops),
                fmt_ms(w.p99),
                fmt_ms(w.max)
            )
        });
        format!(
            "{label}  {}-{end} s  {} ops  {} ops/s  latency ms {latency}{writes}  {} errors",
            self.second,
            fmt_count(self.ops),
            fmt_rate(self.per_sec),
            fmt_count(self.errors)
        )
    }
}

/// The samples of the seconds closed so far, in order, with no gaps.
#[derive(Debug, Default)]
pub struct Series {
    samples: Vec<Sample>,
}

impl Series {
    /// The first second not closed yet.
    fn next_second(&self) -> u64 {
        self.samples.last().map_or(0, |sample| sample.second + 1)
    }

    /// Closes every second before `end` as a whole second, from `tallies`
    /// (which hold no other seconds); returns the new samples.
    pub fn close_before(&mut self, end: u64, mut tallies: BTreeMap<u64, SecondTally>) -> &[Sample] {
        let first = self.samples.len();
        for second in self.next_second()..end {
            let tally = tallies.remove(&second).unwrap_or_default();
            self.samples.push(Sample::of(second, 1.0, &tally));
        }
        assert!(
            tallies.is_empty(),
            "tallies of seconds already closed or not closing: {:?}",
            tallies.keys()
        );
        &self.samples[first..]
    }

    /// Closes the rest of a run that lasted `duration` (to its last reply):
    /// the seconds before its last one whole, the last one as long as the run
    /// went on in it. `tallies` hold every second not closed yet. Returns the
    /// new samples.
    pub fn finish(&mut self, duration: Duration, mut tallies: BTreeMap<u64, SecondTally>) -> &[Sample] {
        let first = self.samples.len();
        if duration.is_zero() && tallies.is_empty() {
            return &[];
        }
        let last = second_of(duration);
        assert!(
            self.next_second() <= last && tallies.keys().all(|second| *second <= last),
            "the sampler closes only seconds the run went on past, and no reply comes after the last"
        );
        let whole = tallies.split_off(&last);
        self.close_before(last, tallies);
        let tally = whole.get(&last).cloned().unwrap_or_default();
        let length_sec = duration.as_secs_f64() - last as f64;
        self.samples.push(Sample::of(last, length_sec, &tally));
        &self.samples[first..]
    }

    pub fn into_samples(self) -> Vec<Sample> {
        self.samples
    }
}

/// Closes a run's seconds as they end and prints them (or only keeps them).
pub struct Sampler {
    shards: Arc<Shards>,
    label: String,
    print: bool,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Series>,
}

impl Sampler {
    /// None when `mode` is Off.
    pub fn start(shards: Arc<Shards>, start: Instant, label: String, mode: SampleMode) -> Option<Sampler> {
        if mode == SampleMode::Off {
            return None;
        }
        let print = mode == SampleMode::Print;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let shards = Arc::clone(&shards);
            let label = label.clone();
            async move {
                let first_tick = start + Duration::from_secs(1) + TICK_AFTER_SECOND;
                let mut ticks = tokio::time::interval_at(first_tick.into(), Duration::from_secs(1));
                let mut series = Series::default();
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        _ = &mut stopped => return series,
                    }
                    // Two passes: `latest` is recorded, so every reply before
                    // it is too by the time each shard is locked again.
                    let Some(latest) = shards.latest_second() else {
                        continue;
                    };
                    if latest > series.next_second() {
                        let closed = series.close_before(latest, shards.take_before(latest));
                        if print {
                            print_lines(&label, closed);
                        }
                    }
                }
            }
        });
        Some(Sampler {
            shards,
            label,
            print,
            stop,
            task,
        })
    }

    /// Stops sampling a run whose last reply came `duration` after its start
    /// and closes the seconds left; returns every sample.
    pub async fn finish(self, duration: Duration) -> Vec<Sample> {
        let _ = self.stop.send(());
        let mut series = self.task.await.expect("the sampler does not panic");
        let closed = series.finish(duration, self.shards.take_before(u64::MAX));
        if self.print {
            print_lines(&self.label, closed);
        }
        series.into_samples()
    }
}

fn print_lines(label: &str, samples: &[Sample]) {
    let mut stderr = std::io::stderr().lock();
    for sample in samples {
        let _ = writeln!(stderr, "{}", sample.line(label));
    }
}

/// One point of a latency curve: the latency at or below which `percentile`
/// percent of the requests completed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub ms: f64,
}

/// The latency by percentile of `histogram_us` from p0 to p99.999, evenly
/// spaced on a log scale of `1 / (1 - q)` (the HdrHistogram percentile plot);
/// empty for an empty histogram.
pub fn percentile_curve(histogram_us: &Histogram<u64>) -> Vec<PercentilePoint> {
    if histogram_us.is_empty() {
        return Vec::new();
    }
    (0..=CURVE_DECADES * CURVE_POINTS_PER_DECADE)
        .map(|step| {
            let quantile = 1.0 - 10f64.powf(-f64::from(step) / f64::from(CURVE_POINTS_PER_DECADE));
            PercentilePoint {
                percentile: quantile * 100.0,
                ms: histogram_us.value_at_quantile(quantile) as f64 / 1000.0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    fn tally(latencies_us: &[u64], errors: u64) -> SecondTally {
        let mut tally = SecondTally::default();
        for latency in latencies_us {
            tally.ops += 1;
            tally.latency_us.record(*latency).unwrap();
        }
        tally.errors = errors;
        tally
    }

    #[test]
    fn a_reply_belongs_to_the_second_that_ends_at_or_after_it() {
        assert_eq!(second_of(Duration::ZERO), 0);
        assert_eq!(second_of(Duration::from_nanos(1)), 0);
        assert_eq!(second_of(secs(0.5)), 0);
        assert_eq!(second_of(Duration::from_secs(1)), 0, "(0, 1] is second 0");
        assert_eq!(second_of(Duration::from_nanos(1_000_000_001)), 1);
        assert_eq!(second_of(Duration::from_secs(2)), 1);
        assert_eq!(second_of(secs(9.3)), 9);
    }

    #[test]
    fn a_second_with_no_reply_is_a_sample_of_zero() {
        let mut series = Series::default();
        // Below 256 µs the per-second histograms are exact.
        let tallies = BTreeMap::from([(0, tally(&[100, 250], 0)), (2, tally(&[200], 1))]);
        let closed = series.close_before(3, tallies).to_vec();
        assert_eq!(closed.iter().map(|s| s.second).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!((closed[0].ops, closed[0].per_sec), (2, 2.0));
        assert_eq!((closed[1].ops, closed[1].errors, closed[1].per_sec), (0, 0, 0.0));
        assert_eq!(closed[1].latency_ms, None);
        assert_eq!((closed[2].ops, closed[2].errors), (1, 1));
        assert_eq!(closed[2].latency_ms.unwrap().p50, 0.2);
        assert!(closed[1]
            .line("put")
            .contains("1-2 s  0 ops  0.0 ops/s  latency ms -  0 errors"));
        let mut writes = tally(&[100, 200], 0);
        writes.writes_us.record(200).unwrap();
        let line = Sample::of(0, 1.0, &writes).line("kube");
        assert!(
            line.contains("p99 0.200  max 0.200  writes 1  p99 0.200  max 0.200  0 errors"),
            "{line}"
        );
    }

    #[test]
    fn the_last_partial_second_counts_its_rate_over_its_length() {
        let mut series = Series::default();
        series.close_before(2, BTreeMap::from([(0, tally(&[1000], 0)), (1, tally(&[1000], 0))]));
        let closed = series
            .finish(secs(2.25), BTreeMap::from([(2, tally(&[1000; 30], 0))]))
            .to_vec();
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].second, closed[0].ops), (2, 30));
        assert!((closed[0].length_sec - 0.25).abs() < 1e-9, "{closed:?}");
        assert!((closed[0].per_sec - 120.0).abs() < 1e-6, "{closed:?}");
        assert!(
            closed[0].line("put").contains("2-2.250 s  30 ops  120 ops/s"),
            "{}",
            closed[0].line("put")
        );
        assert_eq!(series.into_samples().len(), 3);
    }

    #[test]
    fn finishing_closes_the_whole_seconds_the_sampler_had_not_closed() {
        let mut series = Series::default();
        let rest = BTreeMap::from([(1, tally(&[500], 0)), (3, tally(&[700], 0))]);
        let closed = series.finish(secs(3.5), rest).to_vec();
        let shape: Vec<(u64, f64, u64)> = closed.iter().map(|s| (s.second, s.length_sec, s.ops)).collect();
        assert_eq!(shape, vec![(0, 1.0, 0), (1, 1.0, 1), (2, 1.0, 0), (3, 0.5, 1)]);
    }

    #[test]
    fn a_run_ending_on_a_second_boundary_ends_with_a_whole_second() {
        let mut series = Series::default();
        let closed = series
            .finish(secs(2.0), BTreeMap::from([(1, tally(&[100], 0))]))
            .to_vec();
        let shape: Vec<(u64, f64)> = closed.iter().map(|s| (s.second, s.length_sec)).collect();
        assert_eq!(shape, vec![(0, 1.0), (1, 1.0)]);
        assert!(Series::default().finish(Duration::ZERO, BTreeMap::new()).is_empty());
    }

    #[test]
    fn shards_split_replies_by_second_and_the_seconds_add_up_to_the_totals() {
        let shards = Shards::new(2, SampleMode::Record, &["put"]);
        let start = Instant::now() - secs(2.5);
        let status = tonic::Status::unavailable("down");
        let mut done = Vec::new();
        for index in 0..5 {
            let mut shard = lock(shards.shard(index));
            done.push(shard.record(Ok(Some("put")), start, start + secs(2.4)));
        }
        lock(shards.shard(0)).record(Ok(Some("list")), start, start + secs(2.0));
        lock(shards.shard(1)).record(Err(&status), start, start);
        assert!(done.iter().all(|d| second_of(*d - start) == 2));
        assert_eq!(shards.latest_second(), Some(2));

        assert!(shards.take_before(2).is_empty(), "nothing before second 2");
        let taken = shards.take_before(3);
        assert_eq!(taken.keys().copied().collect::<Vec<_>>(), vec![2]);
        let totals = shards.totals();
        assert_eq!((taken[&2].ops, taken[&2].errors), (totals.ops(), totals.errors()));
        assert_eq!((totals.ops(), totals.errors()), (6, 1));
        assert_eq!(taken[&2].latency_us.len(), 6);
        assert_eq!(taken[&2].writes_us.len(), 5, "the puts, not the list");
        let sample = Sample::of(2, 1.0, &taken[&2]);
        assert_eq!(sample.write_ops, 5);
        assert!(sample.write_latency_ms.unwrap().max < sample.latency_ms.unwrap().max);
        assert!(shards.take_before(u64::MAX).is_empty(), "taken once");
    }

    #[test]
    fn shards_without_sampling_keep_only_totals() {
        let shards = Shards::new(1, SampleMode::Off, &[]);
        let start = Instant::now();
        lock(shards.shard(0)).record(Ok(None), start, start);
        assert_eq!(shards.totals().ops(), 1);
        assert_eq!(shards.latest_second(), None);
    }

    #[test]
    fn the_curve_runs_from_p0_to_p99_999_and_never_falls() {
        let mut histogram = crate::report::latency_histogram();
        for micros in 1..=100_000 {
            histogram.record(micros).unwrap();
        }
        let curve = percentile_curve(&histogram);
        assert_eq!(curve.len(), 26);
        assert_eq!(curve[0].percentile, 0.0);
        assert!((curve[25].percentile - 99.999).abs() < 1e-9);
        assert!((curve[5].ms - 90.0).abs() < 0.1, "p90 of 1..100 ms: {:?}", curve[5]);
        assert!(curve.windows(2).all(|w| w[0].ms <= w[1].ms));
        assert!(percentile_curve(&crate::report::latency_histogram()).is_empty());
    }
}
