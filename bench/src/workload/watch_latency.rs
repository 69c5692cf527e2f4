//! `watch-latency`: how long a Put takes to reach every watcher.
//!
//! Before the run, --watchers watchers (--watchers-per-stream to a Watch
//! stream, the streams spread over the connections) watch the key space. Each
//! op is a Put; its reply's header.revision names the event it causes, and the
//! [`DeliveryTracker`] pairs each event a watcher receives with that Put by
//! revision: the event's latency runs from the Put's send (its intended send
//! under --rate) to the event's arrival, one sample per watcher per Put. An
//! event may arrive before its Put's reply; its arrival time waits for the
//! reply. The runner times the Puts themselves as the run's ops.
//!
//! At the end the tracker knows which (Put, watcher) pairs never met (missed
//! events), which events matched no Put of the run, and whether an event's key
//! differed from its Put's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::channel::Channel;
use clap::Args;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::PutRequest;
use ringkv_proto::mvccpb::Event;
use tonic::Status;

use super::watchers::{EventSink, WatchTarget, WatcherSet, WATCHERS_MAX};
use super::{key_space, kv_client, Extras, FinishFuture, OpFuture, Outcome, PrepareFuture, Workload, WorkloadClient};
use crate::keys::{self, KeySpace};
use crate::pacing::latency_us;
use crate::progress::ProgressMode;
use crate::report::{fmt_count, latency_histogram};
use crate::BenchError;

/// The tracker's pending Puts are split over this many locks.
pub const TRACKER_SHARDS: usize = 16;

#[derive(Debug, Clone, Args)]
pub struct WatchLatencyArgs {
    /// Key size in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys written; the watchers watch all of them.
    #[arg(long, default_value_t = 10_000)]
    pub key_space_size: u64,
    /// Write keys in order (0, 1, 2, ...) instead of picking them at random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Watchers on the key space, created before the run; every Put's event
    /// goes to each of them.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Watchers sharing one Watch stream (etcd's benchmark: --watchers-per-stream).
    #[arg(long, default_value_t = 10)]
    pub watchers_per_stream: usize,
}

pub struct WatchLatency {
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    watchers: usize,
    per_stream: usize,
    request_timeout: Duration,
    tracker: Arc<DeliveryTracker>,
    set: Mutex<Option<WatcherSet>>,
}

impl WatchLatency {
    pub fn new(args: &WatchLatencyArgs, request_timeout: Duration) -> Result<WatchLatency, BenchError> {
        if !(1..=WATCHERS_MAX).contains(&args.watchers) {
            return Err(BenchError::Usage(format!("--watchers must be 1 to {WATCHERS_MAX}")));
        }
        if args.watchers_per_stream == 0 {
            return Err(BenchError::Usage("--watchers-per-stream must be at least 1".into()));
        }
        Ok(WatchLatency {
            keys: key_space(args.key_size, args.key_space_size, args.sequential_keys)?,
            value: Arc::new(keys::value(args.val_size)),
            watchers: args.watchers,
            per_stream: args.watchers_per_stream.min(args.watchers),
            request_timeout,
            tracker: Arc::new(DeliveryTracker::new(args.watchers)),
            set: Mutex::new(None),
        })
    }

    fn target(&self) -> WatchTarget {
        let (key, range_end) = self.keys.bounds();
        WatchTarget {
            key,
            range_end,
            prev_kv: false,
            progress_notify: false,
        }
    }

    async fn wind_down(&self, start: Instant, progress: ProgressMode) -> Extras {
        let set = self.set.lock().expect("not poisoned").take();
        let Some(set) = set else {
            return Extras::default();
        };
        let target = self.tracker.max_revision();
        progress.note(&format!(
            "waiting up to {} for events still on their way",
            humantime::format_duration(self.request_timeout)
        ));
        let mut notes = Vec::new();
        if !set.wait_until(target, self.request_timeout).await {
            notes.push(format!(
                "some watchers had not reached revision {target} (the last Put's) {} after the last Put",
                humantime::format_duration(self.request_timeout)
            ));
        }
        let mut tally = set.stop().await;
        let check = self.tracker.check();
        tally.add_problem("missed: a watcher never got a Put's event", check.missed);
        tally.add_problem(
            "unexpected: an event for a revision no Put of this run returned",
            check.unexpected,
        );
        tally.add_problem(
            "an event's key is not the key its revision's Put wrote",
            check.wrong_key,
        );
        tally.add_problem("two Puts returned the same revision", check.revision_reused);
        Extras {
            watch: Some(tally.summary(start, Some(&check.latency_us))),
            notes,
        }
    }
}

impl Workload for WatchLatency {
    fn name(&self) -> &'static str {
        "watch-latency"
    }

    fn settings(&self) -> String {
        format!(
            "{} watchers ({} per stream), {}, val-size {} B",
            fmt_count(self.watchers as u64),
            self.per_stream,
            self.keys.describe(),
            self.value.len()
        )
    }

    fn writes(&self) -> bool {
        true
    }

    fn prepare<'a>(&'a self, channels: &'a [Channel], progress: ProgressMode) -> PrepareFuture<'a> {
        Box::pin(async move {
            progress.note(&format!(
                "opening {} watchers (not measured)",
                fmt_count(self.watchers as u64)
            ));
            let sink: Arc<dyn EventSink> = self.tracker.clone();
            let set = WatcherSet::open(
                channels,
                &self.target(),
                self.watchers,
                self.per_stream,
                self.request_timeout,
                sink,
            )
            .await?;
            *self.set.lock().expect("not poisoned") = Some(set);
            Ok(())
        })
    }

    fn client(&self, index: usize, channel: Channel) -> Box<dyn WorkloadClient> {
        Box::new(WatchLatencyClient {
            kv: kv_client(channel),
            keys: self.keys,
            value: Arc::clone(&self.value),
            tracker: Arc::clone(&self.tracker),
            rng: StdRng::seed_from_u64(index as u64),
        })
    }

    fn finish<'a>(&'a self, start: Instant, progress: ProgressMode) -> FinishFuture<'a> {
        Box::pin(self.wind_down(start, progress))
    }
}

struct WatchLatencyClient {
    kv: KvClient<Channel>,
    keys: KeySpace,
    value: Arc<Vec<u8>>,
    tracker: Arc<DeliveryTracker>,
    rng: StdRng,
}

impl WorkloadClient for WatchLatencyClient {
    fn op(&mut self, ticket: u64, from: Instant) -> OpFuture<'_> {
        let key = self.keys.key(self.keys.index(ticket, &mut self.rng));
        let request = PutRequest {
            key: key.clone(),
            value: self.value.to_vec(),
            ..Default::default()
        };
        Box::pin(async move {
            let response = self.kv.put(request).await?.into_inner();
            let revision = response
                .header
                .map(|header| header.revision)
                .ok_or_else(|| Status::internal("put response without a header"))?;
            self.tracker.put_acked(revision, key, from);
            Ok(Outcome::DONE)
        })
    }
}

/// A revision's Put and the events for it seen so far.
#[derive(Debug, Default)]
struct Pending {
    /// The Put's key and its send time, once its reply came.
    put: Option<(Vec<u8>, Instant)>,
    /// The key of the first event for this revision.
    event_key: Option<Vec<u8>>,
    /// Arrivals of events that came before the Put's reply.
    early: Vec<Instant>,
    /// Events for this revision, over all watchers.
    seen: usize,
}

#[derive(Debug)]
struct Shard {
    pending: HashMap<i64, Pending>,
    latency_us: Histogram<u64>,
    wrong_key: u64,
    revision_reused: u64,
}

/// Pairs Puts and events by revision; see the module comment.
#[derive(Debug)]
pub struct DeliveryTracker {
    watchers: usize,
    shards: Vec<Mutex<Shard>>,
    max_revision: AtomicI64,
}

/// What the tracker found, at the end of a run.
#[derive(Debug)]
pub struct DeliveryCheck {
    pub latency_us: Histogram<u64>,
    /// (Put, watcher) pairs without an event.
    pub missed: u64,
    /// Events whose revision no Put of the run returned.
    pub unexpected: u64,
    pub wrong_key: u64,
    pub revision_reused: u64,
}

impl DeliveryTracker {
    pub fn new(watchers: usize) -> DeliveryTracker {
        let shard = || Shard {
            pending: HashMap::new(),
            latency_us: latency_histogram(),
            wrong_key: 0,
            revision_reused: 0,
        };
        DeliveryTracker {
            watchers,
            shards: (0..TRACKER_SHARDS).map(|_| Mutex::new(shard())).collect(),
            max_revision: AtomicI64::new(0),
        }
    }

    fn shard(&self, revision: i64) -> std::sync::MutexGuard<'_, Shard> {
        let index = revision.rem_euclid(TRACKER_SHARDS as i64) as usize;
        self.shards[index].lock().expect("no thread panicked holding a shard")
    }

    /// The highest revision a Put returned so far.
    pub fn max_revision(&self) -> i64 {
        self.max_revision.load(Ordering::Relaxed)
    }

    /// The Put of `key` sent at `from` returned `revision`.
    pub fn put_acked(&self, revision: i64, key: Vec<u8>, from: Instant) {
        self.max_revision.fetch_max(revision, Ordering::Relaxed);
        let mut shard = self.shard(revision);
        let shard = &mut *shard;
        let pending = shard.pending.entry(revision).or_default();
        if pending.put.is_some() {
            shard.revision_reused += 1;
            return;
        }
        if pending.event_key.as_ref().is_some_and(|seen| *seen != key) {
            shard.wrong_key += 1;
        }
        for arrived in pending.early.drain(..) {
            shard.latency_us.saturating_record(latency_us(from, arrived));
        }
        pending.put = Some((key, from));
        if pending.seen >= self.watchers {
            shard.pending.remove(&revision);
        }
    }

    /// Ends the run's matching: every Put's events not seen by now are missed,
    /// every event without a Put is unexpected.
    pub fn check(&self) -> DeliveryCheck {
        let mut check = DeliveryCheck {
            latency_us: latency_histogram(),
            missed: 0,
            unexpected: 0,
            wrong_key: 0,
            revision_reused: 0,
        };
        for shard in &self.shards {
            let shard = shard.lock().expect("no thread panicked holding a shard");
            check
                .latency_us
                .add(&shard.latency_us)
                .expect("histograms with equal bounds");
            check.wrong_key += shard.wrong_key;
            check.revision_reused += shard.revision_reused;
            for pending in shard.pending.values() {
                match pending.put {
                    Some(_) => check.missed += self.watchers.saturating_sub(pending.seen) as u64,
                    None => check.unexpected += pending.seen as u64,
                }
            }
        }
        check
    }
}

impl EventSink for DeliveryTracker {
    fn event(&self, _watcher: usize, event: &Event, arrived: Instant) -> Result<(), &'static str> {
        let kv = event.kv.as_ref().ok_or("an event without a key-value")?;
        let mut shard = self.shard(kv.mod_revision);
        let shard = &mut *shard;
        let pending = shard.pending.entry(kv.mod_revision).or_default();
        pending.seen += 1;
        if pending.seen > self.watchers {
            return Err("more events for one revision than there are watchers");
        }
        let expected_key = pending.put.as_ref().map(|(key, _)| key).or(pending.event_key.as_ref());
        if expected_key.is_some_and(|key| *key != kv.key) {
            shard.wrong_key += 1;
        }
        if pending.event_key.is_none() {
            pending.event_key = Some(kv.key.clone());
        }
        match &pending.put {
            Some((_, from)) => {
                shard.latency_us.saturating_record(latency_us(*from, arrived));
                if pending.seen == self.watchers {
                    shard.pending.remove(&kv.mod_revision);
                }
            }
            None => pending.early.push(arrived),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::mvccpb::KeyValue;

    fn event(key: &[u8], revision: i64) -> Event {
        Event {
            kv: Some(KeyValue {
                key: key.to_vec(),
                mod_revision: revision,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_watcher_gets_one_sample_from_the_puts_send() {
        let tracker = DeliveryTracker::new(2);
        let sent = Instant::now();
        tracker.put_acked(5, b"k".to_vec(), sent);
        tracker
            .event(0, &event(b"k", 5), sent + Duration::from_millis(3))
            .unwrap();
        tracker
            .event(1, &event(b"k", 5), sent + Duration::from_millis(4))
            .unwrap();
        let check = tracker.check();
        assert_eq!(check.latency_us.len(), 2);
        assert_eq!(check.latency_us.min(), 3000);
        assert_eq!((check.missed, check.unexpected, check.wrong_key), (0, 0, 0));
        assert!(tracker.shards.iter().all(|s| s.lock().unwrap().pending.is_empty()));
    }

    #[test]
    fn an_event_before_the_puts_reply_is_timed_when_the_reply_comes() {
        let tracker = DeliveryTracker::new(1);
        let sent = Instant::now();
        tracker
            .event(0, &event(b"k", 9), sent + Duration::from_millis(2))
            .unwrap();
        tracker.put_acked(9, b"k".to_vec(), sent);
        let check = tracker.check();
        assert_eq!(check.latency_us.len(), 1);
        assert_eq!(check.latency_us.max(), 2000);
        assert_eq!(check.unexpected, 0);
    }

    #[test]
    fn missing_unexpected_and_wrong_key_events_are_counted() {
        let tracker = DeliveryTracker::new(3);
        let sent = Instant::now();
        tracker.put_acked(1, b"a".to_vec(), sent);
        tracker.event(0, &event(b"a", 1), sent).unwrap();
        tracker.event(1, &event(b"b", 1), sent).unwrap();
        tracker.event(0, &event(b"c", 2), sent).unwrap();
        let check = tracker.check();
        assert_eq!(check.missed, 1, "watcher 2 never saw revision 1");
        assert_eq!(check.unexpected, 1, "no Put returned revision 2");
        assert_eq!(check.wrong_key, 1);
    }

    #[test]
    fn more_events_than_watchers_for_a_revision_is_a_problem() {
        let tracker = DeliveryTracker::new(1);
        let sent = Instant::now();
        tracker.event(0, &event(b"k", 3), sent).unwrap();
        assert!(tracker.event(0, &event(b"k", 3), sent).is_err());
    }
}
