//! etcd's automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`),
//! as a clock-driven decision: the store core asks on every tick, while it leads,
//! whether a compaction is due and to which revision, and proposes it like a
//! client's Compact. Semantics follow etcd's `server/etcdserver/api/v3compactor`:
//!
//! - **periodic** (retention a duration, or a whole number of hours): the current
//!   revision is sampled every `min(retention, 1h) / 10`; once `retention` has
//!   passed since the start (then every `min(retention, 1h)`), the store is
//!   compacted to the oldest sample kept, the revision of about `retention` ago.
//! - **revision** (retention a number of revisions): every 5 minutes, compact to
//!   `current - retention`.
//!
//! A retention of 0 (etcd's default) turns it off. The flags become an
//! `AutoCompactionPolicy` in `config::auto_compaction`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::auto_compaction::AutoCompactionPolicy;

/// etcd's cap on the compaction interval of periodic mode.
const PERIODIC_INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// Samples per compaction interval in periodic mode (etcd's `retryDivisor`).
const PERIODIC_SAMPLES_PER_INTERVAL: u32 = 10;
/// How often revision mode checks (etcd's `revInterval`).
const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// The compactor's state between ticks.
#[derive(Debug)]
pub struct AutoCompactor {
    policy: AutoCompactionPolicy,
    /// Periodic: sampled revisions, oldest first; at most `samples_kept()`.
    samples: VecDeque<i64>,
    next_sample: Instant,
    /// When the next compaction may happen.
    next_compaction: Instant,
    last_compacted: i64,
}

impl AutoCompactor {
    pub fn new(policy: AutoCompactionPolicy, now: Instant) -> AutoCompactor {
        let first_compaction = match policy {
            AutoCompactionPolicy::Off => now,
            AutoCompactionPolicy::Periodic(period) => now + period,
            AutoCompactionPolicy::Revision(_) => now + REVISION_CHECK_INTERVAL,
        };
        AutoCompactor {
            policy,
            samples: VecDeque::new(),
            next_sample: now,
            next_compaction: first_compaction,
            last_compacted: 0,
        }
    }

    /// Starts over (this member just became leader): time only counts while leading,
    /// as etcd pauses its compactor on followers.
    pub fn restart(&mut self, now: Instant) {
        let last_compacted = self.last_compacted;
        *self = AutoCompactor::new(self.policy, now);
        self.last_compacted = last_compacted;
    }

    /// Called on every tick while leading: the revision to compact to, if due.
    pub fn due(&mut self, now: Instant, current_revision: i64) -> Option<i64> {
        let target = match self.policy {
            AutoCompactionPolicy::Off => return None,
            AutoCompactionPolicy::Periodic(period) => {
                let interval = period.min(PERIODIC_INTERVAL_MAX);
                if now >= self.next_sample {
                    self.samples.push_back(current_revision);
                    let kept = samples_kept(period);
                    while self.samples.len() > kept {
                        self.samples.pop_front();
                    }
                    self.next_sample = now + interval / PERIODIC_SAMPLES_PER_INTERVAL;
                }
                if now < self.next_compaction {
                    return None;
                }
                self.next_compaction = now + interval;
                *self.samples.front().expect("a sample is taken before any compaction")
            }
            AutoCompactionPolicy::Revision(retention) => {
                if now < self.next_compaction {
                    return None;
                }
                self.next_compaction = now + REVISION_CHECK_INTERVAL;
                current_revision - retention
            }
        };
        // Nothing new to drop: compacting again would only answer "compacted".
        if target <= self.last_compacted.max(0) {
            return None;
        }
        self.last_compacted = target;
        Some(target)
    }
}

/// Samples spanning `period`: one per sampling interval, plus the one at its start.
fn samples_kept(period: Duration) -> usize {
    let interval = period.min(PERIODIC_INTERVAL_MAX) / PERIODIC_SAMPLES_PER_INTERVAL;
    (period.as_nanos() / interval.as_nanos()) as usize + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn off_never_compacts() {
        let start = Instant::now();
        let mut compactor = AutoCompactor::new(AutoCompactionPolicy::Off, start);
        for tick in 0..1000 {
            assert_eq!(compactor.due(start + seconds(tick * 60), tick as i64 * 100), None);
        }
    }

    /// Ticks every 100 ms for `duration`, the revision growing by `per_tick`;
    /// returns (time since start, revision) of each compaction.
    fn run(compactor: &mut AutoCompactor, start: Instant, duration: Duration, per_tick: i64) -> Vec<(Duration, i64)> {
        let mut compactions = Vec::new();
        let mut revision = 1;
        let mut elapsed = Duration::ZERO;
        while elapsed <= duration {
            if let Some(target) = compactor.due(start + elapsed, revision) {
                assert!(target < revision, "never compacts the current revision away");
                compactions.push((elapsed, target));
            }
            revision += per_tick;
            elapsed += Duration::from_millis(100);
        }
        compactions
    }

    #[test]
    fn periodic_keeps_about_the_retention_of_history() {
        let start = Instant::now();
        let mut compactor = AutoCompactor::new(AutoCompactionPolicy::Periodic(seconds(10)), start);
        // 10 revisions per second.
        let compactions = run(&mut compactor, start, seconds(35), 1);
        let times: Vec<u64> = compactions.iter().map(|(at, _)| at.as_secs()).collect();
        assert_eq!(
            times,
            vec![10, 20, 30],
            "first after the retention, then every interval"
        );
        for (at, target) in compactions {
            // The oldest sample is the revision of `retention` ago (sampled every 1 s).
            let revision_then = (at.as_millis() as i64 - 10_000) / 100 + 1;
            assert!(
                (revision_then..=revision_then + 10).contains(&target),
                "{at:?}: {target}"
            );
        }
    }

    #[test]
    fn periodic_with_a_long_retention_compacts_hourly() {
        let start = Instant::now();
        let mut compactor = AutoCompactor::new(AutoCompactionPolicy::Periodic(seconds(3 * 3600)), start);
        let mut compactions = Vec::new();
        let mut now = start;
        let mut revision = 1;
        while now <= start + seconds(5 * 3600) {
            if let Some(target) = compactor.due(now, revision) {
                compactions.push(((now - start).as_secs(), target));
            }
            revision += 1;
            now += seconds(60);
        }
        let times: Vec<u64> = compactions.iter().map(|(at, _)| *at).collect();
        assert_eq!(times, vec![3 * 3600, 4 * 3600, 5 * 3600]);
        // One revision a minute: three hours ago is 180 revisions back.
        for (at, target) in compactions {
            let now_revision = (at / 60) as i64 + 1;
            assert!(
                (now_revision - 186..=now_revision - 174).contains(&target),
                "{at}: {target}"
            );
        }
    }

    #[test]
    fn revision_mode_compacts_to_current_minus_retention_every_five_minutes() {
        let start = Instant::now();
        let mut compactor = AutoCompactor::new(AutoCompactionPolicy::Revision(1000), start);
        let mut now = start;
        let mut compactions = Vec::new();
        for minute in 0..=16 {
            if let Some(target) = compactor.due(now, 500 * minute + 1) {
                compactions.push((minute, target));
            }
            now += seconds(60);
        }
        assert_eq!(compactions, vec![(5, 1501), (10, 4001), (15, 6501)]);
    }

    #[test]
    fn an_idle_store_is_compacted_once_not_on_every_interval() {
        let start = Instant::now();
        let mut compactor = AutoCompactor::new(AutoCompactionPolicy::Periodic(seconds(1)), start);
        let mut compactions = Vec::new();
        for tick in 0..100 {
            if let Some(target) = compactor.due(start + Duration::from_millis(tick * 100), 21) {
                compactions.push(target);
            }
        }
        assert_eq!(compactions, vec![21]);
    }

    #[test]
    fn time_counts_again_from_a_restart() {
        let start = Instant::now();
        let mut compactor = AutoCompactor::new(AutoCompactionPolicy::Periodic(seconds(10)), start);
        assert_eq!(compactor.due(start, 5), None);
        let later = start + seconds(60);
        compactor.restart(later);
        assert_eq!(compactor.due(later, 50), None, "a new leader waits a whole retention");
        assert_eq!(compactor.due(later + seconds(10), 60), Some(50));
    }
}
