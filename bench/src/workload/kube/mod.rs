//! `kube`: kube-apiserver's storage traffic.
//!
//! Objects live under `/registry/pods/<ns>/<name>`. Before the run (untimed)
//! --key-space-size objects are created the way kube-apiserver creates
//! (`Txn(if mod_revision(key) == 0 then Put else Range)`), and --watchers
//! watchers watch the prefix with prev_kv and progress_notify, as its watch
//! cache does. Each op is then a paginated list (--kube-list-ratio of ops) or
//! a write: 90% GuaranteedUpdate (Range the object, then
//! `Txn(if mod_revision == read then Put else Range)`, retried once with the
//! revision a conflict returned), 5% creates of new objects, 5% deletes (the
//! same read-then-CAS, with DeleteRange). See `client` for the requests.
//!
//! Every op kind is counted and timed apart; the kinds that wrote are also
//! reported together as writes/sec. The watchers are not timed: they count
//! events and check each one (prev_kv present for updates and deletes, absent
//! for creates) and, when every write's outcome is known, that each watcher
//! got exactly one event per write.

mod client;
mod list_page;
mod objects;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::channel::Channel;
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use ringkv_proto::mvccpb::{event::EventType, Event};

use super::populate::for_each_index;
use super::txn_put::cas_put;
use super::watchers::{EventSink, WatchTally, WatchTarget, WatcherSet, WATCHERS_MAX};
use super::{kv_client, Extras, FinishFuture, PrepareFuture, Workload, WorkloadClient};
use crate::keys::{self, prefix_end};
use crate::progress::ProgressMode;
use crate::report::{fmt_count, fmt_rate};
use crate::BenchError;
use client::{KubeClient, KubeState, LIST_PAGE_KEYS, WRITE_KINDS};
use list_page::ListPages;
use objects::{object_key, OBJECTS_MAX, PREFIX};

#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Objects created before the run (not measured); lists return all of them.
    #[arg(long, default_value_t = 10_000)]
    pub key_space_size: u64,
    /// Object (value) size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub val_size: usize,
    /// Share of ops that are paginated lists of every object, 0 to 1 (0.05:
    /// 5%); the others are writes.
    #[arg(long, default_value_t = 0.05)]
    pub kube_list_ratio: f64,
    /// Prefix watchers (prev_kv, progress_notify), each on its own Watch
    /// stream; they count and check events, untimed.
    #[arg(long, default_value_t = 3)]
    pub watchers: usize,
}

pub struct Kube {
    preload: u64,
    list_ratio: f64,
    watchers: usize,
    request_timeout: Duration,
    state: Arc<KubeState>,
    /// Preloaded objects that existed already (a server used before).
    preexisting: Arc<AtomicU64>,
    set: Mutex<Option<WatcherSet>>,
}

impl Kube {
    pub fn new(args: &KubeArgs, request_timeout: Duration) -> Result<Kube, BenchError> {
        if !(1..OBJECTS_MAX / 2).contains(&args.key_space_size) {
            return Err(BenchError::Usage(format!(
                "kube: --key-space-size must be 1 to {}",
                OBJECTS_MAX / 2 - 1
            )));
        }
        if !(0.0..=1.0).contains(&args.kube_list_ratio) {
            return Err(BenchError::Usage("--kube-list-ratio must be between 0 and 1".into()));
        }
        if args.watchers > WATCHERS_MAX {
            return Err(BenchError::Usage(format!("--watchers must be at most {WATCHERS_MAX}")));
        }
        Ok(Kube {
            preload: args.key_space_size,
            list_ratio: args.kube_list_ratio,
            watchers: args.watchers,
            request_timeout,
            state: Arc::new(KubeState::new(args.key_space_size, keys::value(args.val_size))),
            preexisting: Arc::default(),
            set: Mutex::new(None),
        })
    }

    /// Creates objects `0..preload` as kube-apiserver creates.
    async fn create_objects(&self, channels: &[Channel], progress: ProgressMode) -> Result<(), BenchError> {
        progress.note(&format!(
            "creating {} objects of {} B (not measured)",
            fmt_count(self.preload),
            self.state.value.len()
        ));
        let state = Arc::clone(&self.state);
        let preexisting = Arc::clone(&self.preexisting);
        for_each_index(channels, self.preload, move |index, channel| {
            let request = cas_put(object_key(index), 0, state.value.clone());
            let preexisting = Arc::clone(&preexisting);
            async move {
                let response = kv_client(channel).txn(request).await?.into_inner();
                if !response.succeeded {
                    preexisting.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        })
        .await
        .map_err(|(index, status)| {
            BenchError::Prepare(format!(
                "creating object {index}: {:?}: {}",
                status.code(),
                status.message()
            ))
        })
    }

    async fn open_watchers(&self, channels: &[Channel], progress: ProgressMode) -> Result<(), BenchError> {
        if self.watchers == 0 {
            return Ok(());
        }
        progress.note(&format!("opening {} prefix watchers (not measured)", self.watchers));
        let target = WatchTarget {
            key: PREFIX.as_bytes().to_vec(),
            range_end: prefix_end(PREFIX.as_bytes()),
            prev_kv: true,
            progress_notify: true,
        };
        let sink: Arc<dyn EventSink> = Arc::new(EventCheck);
        let set = WatcherSet::open(channels, &target, self.watchers, 1, self.request_timeout, sink).await?;
        *self.set.lock().expect("not poisoned") = Some(set);
        Ok(())
    }

    async fn wind_down(&self, start: Instant, progress: ProgressMode) -> Extras {
        let mut notes = vec![self.lists_note()];
        let preexisting = self.preexisting.load(Ordering::Relaxed);
        if preexisting > 0 {
            notes.push(format!(
                "{} of the {} preloaded objects existed before the run",
                fmt_count(preexisting),
                fmt_count(self.preload)
            ));
        }
        let set = self.set.lock().expect("not poisoned").take();
        let Some(set) = set else {
            return Extras { watch: None, notes };
        };
        let target = self.state.write_revision_max.load(Ordering::Relaxed);
        progress.note(&format!(
            "waiting up to {} for events still on their way",
            humantime::format_duration(self.request_timeout)
        ));
        if !set.wait_until(target, self.request_timeout).await {
            notes.push(format!(
                "some watchers had not reached revision {target} (the last write's) {} after the last write",
                humantime::format_duration(self.request_timeout)
            ));
        }
        let mut tally = set.stop().await;
        self.check_event_counts(&mut tally, &mut notes);
        Extras {
            watch: Some(tally.summary(start, None)),
            notes,
        }
    }

    /// With every write's outcome known, each watcher got one event per write.
    fn check_event_counts(&self, tally: &mut WatchTally, notes: &mut Vec<String>) {
        let unknown = self.state.writes_unknown.load(Ordering::Relaxed);
        if unknown > 0 {
            notes.push(format!(
                "{} writes failed with an error (applied or not, unknown): events not counted against writes",
                fmt_count(unknown)
            ));
            return;
        }
        let expected = self.state.writes_applied.load(Ordering::Relaxed);
        let missed: u64 = tally
            .events_by_watcher
            .iter()
            .map(|got| expected.saturating_sub(*got))
            .sum();
        let extra: u64 = tally
            .events_by_watcher
            .iter()
            .map(|got| got.saturating_sub(expected))
            .sum();
        tally.add_problem("missed: fewer events at a watcher than writes", missed);
        tally.add_problem("extra: more events at a watcher than writes", extra);
    }

    fn lists_note(&self) -> String {
        let lists = self.state.lists.load(Ordering::Relaxed);
        let pages = self.state.list_pages.load(Ordering::Relaxed);
        let keys = self.state.list_keys.load(Ordering::Relaxed);
        let per_list = |n: u64| if lists > 0 { n as f64 / lists as f64 } else { 0.0 };
        format!(
            "{} lists of {} pages and {} objects on average; {} objects at the end",
            fmt_count(lists),
            fmt_rate(per_list(pages)),
            fmt_rate(per_list(keys)),
            fmt_count(self.state.objects.count() as u64)
        )
    }
}

impl Workload for Kube {
    fn name(&self) -> &'static str {
        "kube"
    }

    fn settings(&self) -> String {
        format!(
            "{} pods of {} B, list ratio {} ({} per page), writes 90% update / 5% create / 5% delete, {} watchers",
            fmt_count(self.preload),
            self.state.value.len(),
            self.list_ratio,
            LIST_PAGE_KEYS,
            self.watchers
        )
    }

    fn writes(&self) -> bool {
        false
    }

    fn write_kinds(&self) -> &'static [&'static str] {
        WRITE_KINDS
    }

    fn prepare<'a>(&'a self, channels: &'a [Channel], progress: ProgressMode) -> PrepareFuture<'a> {
        Box::pin(async move {
            self.create_objects(channels, progress).await?;
            self.open_watchers(channels, progress).await
        })
    }

    fn client(&self, index: usize, channel: Channel) -> Box<dyn WorkloadClient> {
        Box::new(KubeClient {
            kv: kv_client(channel.clone()),
            lists: ListPages::new(channel),
            state: Arc::clone(&self.state),
            list_ratio: self.list_ratio,
            rng: StdRng::seed_from_u64(index as u64),
        })
    }

    fn finish<'a>(&'a self, start: Instant, progress: ProgressMode) -> FinishFuture<'a> {
        Box::pin(self.wind_down(start, progress))
    }
}

/// What a watcher with prev_kv must see: creates without a previous value,
/// updates and deletes with the value they replaced, all under the prefix.
struct EventCheck;

impl EventSink for EventCheck {
    fn event(&self, _watcher: usize, event: &Event, _arrived: Instant) -> Result<(), &'static str> {
        check_event(event)
    }
}

pub fn check_event(event: &Event) -> Result<(), &'static str> {
    let kv = event.kv.as_ref().ok_or("an event without a key-value")?;
    if !kv.key.starts_with(PREFIX.as_bytes()) {
        return Err("an event outside the watched prefix");
    }
    let prev = event.prev_kv.as_ref();
    let prev_ok = prev.is_some_and(|prev| prev.key == kv.key && prev.mod_revision < kv.mod_revision);
    match EventType::from_i32(event.r#type) {
        Some(EventType::Put) if kv.create_revision == kv.mod_revision => match prev {
            None => Ok(()),
            Some(_) => Err("a create event with a prev_kv"),
        },
        Some(EventType::Put) if prev_ok => Ok(()),
        Some(EventType::Put) => Err("an update event without its prev_kv"),
        Some(EventType::Delete) if prev_ok => Ok(()),
        Some(EventType::Delete) => Err("a delete event without its prev_kv"),
        None => Err("an event of unknown type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::mvccpb::KeyValue;

    fn kv(key: &[u8], create: i64, modified: i64) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: create,
            mod_revision: modified,
            ..Default::default()
        }
    }

    fn event(kind: EventType, kv: KeyValue, prev: Option<KeyValue>) -> Event {
        Event {
            r#type: kind as i32,
            kv: Some(kv),
            prev_kv: prev,
        }
    }

    #[test]
    fn updates_and_deletes_carry_prev_kv_and_creates_do_not() {
        let key = b"/registry/pods/ns-00/pod-1";
        assert!(check_event(&event(EventType::Put, kv(key, 5, 5), None)).is_ok());
        assert!(check_event(&event(EventType::Put, kv(key, 5, 5), Some(kv(key, 1, 1)))).is_err());
        assert!(check_event(&event(EventType::Put, kv(key, 5, 9), Some(kv(key, 5, 5)))).is_ok());
        assert!(check_event(&event(EventType::Put, kv(key, 5, 9), None)).is_err());
        assert!(check_event(&event(EventType::Put, kv(key, 5, 9), Some(kv(key, 5, 9)))).is_err());
        assert!(check_event(&event(EventType::Delete, kv(key, 0, 12), Some(kv(key, 5, 9)))).is_ok());
        assert!(check_event(&event(EventType::Delete, kv(key, 0, 12), None)).is_err());
        assert!(check_event(&event(EventType::Put, kv(b"/other", 5, 5), None)).is_err());
    }
}
