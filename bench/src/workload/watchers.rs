//! Watchers for the workloads that watch (watch-latency, kube): Watch streams
//! opened before the run, several watchers each, whose events are checked,
//! counted and handed to the workload as they arrive.
//!
//! Checks every watching workload gets: each event is for a known watch id and
//! has a key-value, its revision is above the revision of the same watcher's
//! previous event (these workloads change one key per revision, so an equal
//! revision is a duplicate), and no watcher is canceled or its stream closed.
//! A response without events is a progress notification: it says the watcher
//! has every event up to its header's revision, so a later event at or below
//! that revision, or a notification below an event already delivered, is
//! wrong. A workload adds its own checks in its [`EventSink`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::Channel;
use hdrhistogram::Histogram;
use ringkv_proto::etcdserverpb::watch_client::WatchClient;
use ringkv_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use ringkv_proto::mvccpb::Event;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::{Code, Status};

use crate::connect::RESPONSE_BYTES_MAX;
use crate::errors::ErrorTally;
use crate::report::{per_sec, LatencyMs, WatchSummary};
use crate::BenchError;

/// Most watchers one workload opens.
pub const WATCHERS_MAX: usize = 100_000;
/// How often `wait_until` looks at the watchers' progress.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// What every watcher of a set watches.
#[derive(Debug, Clone)]
pub struct WatchTarget {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
    pub progress_notify: bool,
}

/// A workload's view of the events.
pub trait EventSink: Send + Sync + 'static {
    /// `event` arrived at watcher `watcher` (numbered from 0 over the set) at
    /// `arrived`. `Err(problem)`: the event is wrong in a way the workload
    /// checks; it is counted under that name.
    fn event(&self, watcher: usize, event: &Event, arrived: Instant) -> Result<(), &'static str>;
}

/// What a set's watchers received, gathered when the set stops.
#[derive(Debug, Clone)]
pub struct WatchTally {
    pub watchers: usize,
    pub streams: usize,
    pub events_by_watcher: Vec<u64>,
    pub progress_notifies: u64,
    pub problems: BTreeMap<String, u64>,
    pub errors: ErrorTally,
    pub last_arrival: Option<Instant>,
}

impl WatchTally {
    pub fn add_problem(&mut self, problem: &str, count: u64) {
        if count > 0 {
            *self.problems.entry(problem.to_string()).or_insert(0) += count;
        }
    }

    pub fn events(&self) -> u64 {
        self.events_by_watcher.iter().sum()
    }

    /// The report's watch section; events/sec over the time from `start` to
    /// the last event.
    pub fn summary(self, start: Instant, latency_us: Option<&Histogram<u64>>) -> WatchSummary {
        let duration_sec = self
            .last_arrival
            .map_or(0.0, |last| last.saturating_duration_since(start).as_secs_f64());
        let events = self.events();
        WatchSummary {
            watchers: self.watchers,
            streams: self.streams,
            events,
            duration_sec,
            events_per_sec: per_sec(events, duration_sec),
            latency_ms: latency_us.and_then(LatencyMs::of),
            progress_notifies: self.progress_notifies,
            problems: self.problems,
            errors: self.errors.total(),
            errors_by_code: self.errors.by_code(),
        }
    }
}

/// Watchers receiving events until [`WatcherSet::stop`] (or until dropped).
pub struct WatcherSet {
    watchers: usize,
    per_stream: usize,
    /// Per watcher: the revision of its last event.
    last_revision: Arc<Vec<AtomicI64>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<StreamTally>>,
}

impl WatcherSet {
    /// Opens `watchers` watchers on `target`, `per_stream` per Watch stream,
    /// the streams spread over `channels` round-robin; returns once the server
    /// has confirmed every one (each confirmation within `timeout`).
    pub async fn open(
        channels: &[Channel],
        target: &WatchTarget,
        watchers: usize,
        per_stream: usize,
        timeout: Duration,
        sink: Arc<dyn EventSink>,
    ) -> Result<WatcherSet, BenchError> {
        assert!(
            (1..=WATCHERS_MAX).contains(&watchers) && per_stream > 0,
            "checked when parsing flags"
        );
        let last_revision: Arc<Vec<AtomicI64>> = Arc::new((0..watchers).map(|_| AtomicI64::new(0)).collect());
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for (stream, first) in (0..watchers).step_by(per_stream).enumerate() {
            let count = per_stream.min(watchers - first);
            let channel = channels[stream % channels.len()].clone();
            let opened = open_stream(channel, target, count, timeout).await.map_err(|status| {
                BenchError::Prepare(format!(
                    "opening watch stream {stream}: {:?}: {}",
                    status.code(),
                    status.message()
                ))
            })?;
            let consumer = StreamConsumer {
                first_watcher: first,
                progress_revision: vec![0; count],
                watch_ids: opened.watch_ids,
                last_revision: Arc::clone(&last_revision),
                sink: Arc::clone(&sink),
                tally: StreamTally::new(count),
            };
            tasks.push(tokio::spawn(consumer.run(
                opened.requests,
                opened.responses,
                stop_rx.clone(),
            )));
        }
        Ok(WatcherSet {
            watchers,
            per_stream,
            last_revision,
            stop,
            tasks,
        })
    }

    /// Waits until every watcher whose stream still runs has had an event at
    /// `revision` or later, at most `limit`; false if the limit passed first.
    pub async fn wait_until(&self, revision: i64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let done = (0..self.watchers).all(|watcher| {
                self.last_revision[watcher].load(Ordering::Relaxed) >= revision
                    || self.tasks[watcher / self.per_stream].is_finished()
            });
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Stops every stream and gathers what they received.
    pub async fn stop(self) -> WatchTally {
        let _ = self.stop.send(true);
        let mut tally = WatchTally {
            watchers: self.watchers,
            streams: self.tasks.len(),
            events_by_watcher: Vec::with_capacity(self.watchers),
            progress_notifies: 0,
            problems: BTreeMap::new(),
            errors: ErrorTally::default(),
            last_arrival: None,
        };
        for task in self.tasks {
            match task.await {
                Ok(stream) => stream.add_to(&mut tally),
                Err(error) => tally
                    .errors
                    .record(Code::Internal, &format!("a watch stream's task failed: {error}")),
            }
        }
        tally
    }
}

struct OpenedStream {
    /// Kept open while the stream runs: dropping it half-closes the stream.
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
    watch_ids: Vec<i64>,
}

/// Opens one Watch stream and creates `count` watchers on it (ids chosen by
/// the server), waiting for each confirmation.
async fn open_stream(
    channel: Channel,
    target: &WatchTarget,
    count: usize,
    timeout: Duration,
) -> Result<OpenedStream, Status> {
    let (requests, outgoing) = mpsc::channel(count);
    for _ in 0..count {
        let create = WatchCreateRequest {
            key: target.key.clone(),
            range_end: target.range_end.clone(),
            prev_kv: target.prev_kv,
            progress_notify: target.progress_notify,
            ..Default::default()
        };
        let request = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        };
        requests
            .try_send(request)
            .expect("the channel has room for every create");
    }
    let mut client = WatchClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX);
    let responses = tokio::time::timeout(timeout, client.watch(ReceiverStream::new(outgoing)))
        .await
        .map_err(|_| Status::deadline_exceeded("no response to the Watch call"))??;
    let mut responses = responses.into_inner();
    let mut watch_ids = Vec::with_capacity(count);
    while watch_ids.len() < count {
        let response = tokio::time::timeout(timeout, responses.message())
            .await
            .map_err(|_| Status::deadline_exceeded("a watcher was not confirmed in time"))??
            .ok_or_else(|| Status::unavailable("the server closed the watch stream while creating watchers"))?;
        if !response.created || response.canceled {
            return Err(Status::failed_precondition(format!(
                "expected a created response, got created={} canceled={} reason={:?} events={}",
                response.created,
                response.canceled,
                response.cancel_reason,
                response.events.len()
            )));
        }
        if watch_ids.contains(&response.watch_id) {
            return Err(Status::internal(format!(
                "the server gave watch id {} twice on one stream",
                response.watch_id
            )));
        }
        watch_ids.push(response.watch_id);
    }
    Ok(OpenedStream {
        requests,
        responses,
        watch_ids,
    })
}

/// One stream's counts; watchers numbered from 0 within the stream.
#[derive(Debug)]
struct StreamTally {
    events_by_watcher: Vec<u64>,
    progress_notifies: u64,
    problems: BTreeMap<&'static str, u64>,
    errors: ErrorTally,
    last_arrival: Option<Instant>,
}

impl StreamTally {
    fn new(watchers: usize) -> StreamTally {
        StreamTally {
            events_by_watcher: vec![0; watchers],
            progress_notifies: 0,
            problems: BTreeMap::new(),
            errors: ErrorTally::default(),
            last_arrival: None,
        }
    }

    fn problem(&mut self, problem: &'static str) {
        *self.problems.entry(problem).or_insert(0) += 1;
    }

    fn add_to(self, tally: &mut WatchTally) {
        tally.events_by_watcher.extend(self.events_by_watcher);
        tally.progress_notifies += self.progress_notifies;
        for (problem, count) in self.problems {
            tally.add_problem(problem, count);
        }
        tally.errors.merge(&self.errors);
        tally.last_arrival = tally.last_arrival.max(self.last_arrival);
    }
}

struct StreamConsumer {
    first_watcher: usize,
    watch_ids: Vec<i64>,
    /// Per watcher of the stream: the highest revision a progress
    /// notification reported.
    progress_revision: Vec<i64>,
    last_revision: Arc<Vec<AtomicI64>>,
    sink: Arc<dyn EventSink>,
    tally: StreamTally,
}

impl StreamConsumer {
    /// Reads responses until told to stop or the stream fails.
    async fn run(
        mut self,
        requests: mpsc::Sender<WatchRequest>,
        mut responses: Streaming<WatchResponse>,
        mut stop: watch::Receiver<bool>,
    ) -> StreamTally {
        let by_id: HashMap<i64, usize> = self.watch_ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        loop {
            let next = tokio::select! {
                biased;
                // A stop, or the set dropped.
                _ = stop.changed() => break,
                next = responses.message() => next,
            };
            match next {
                Ok(Some(response)) => self.response(&by_id, response, Instant::now()),
                Ok(None) => {
                    self.tally
                        .errors
                        .record(Code::Unavailable, "the server closed the watch stream");
                    break;
                }
                Err(status) => {
                    self.tally.errors.record(status.code(), status.message());
                    break;
                }
            }
        }
        drop(requests);
        self.tally
    }

    fn response(&mut self, by_id: &HashMap<i64, usize>, response: WatchResponse, arrived: Instant) {
        if response.canceled {
            let reason = if response.compact_revision != 0 {
                format!("watcher canceled: compacted at revision {}", response.compact_revision)
            } else if response.cancel_reason.is_empty() {
                "watcher canceled by the server".to_string()
            } else {
                format!("watcher canceled: {}", response.cancel_reason)
            };
            self.tally.errors.record(Code::Cancelled, &reason);
            return;
        }
        if response.created {
            self.tally.problem("a created response after the watchers were created");
            return;
        }
        if response.events.is_empty() {
            self.progress(by_id, &response);
            return;
        }
        let Some(&local) = by_id.get(&response.watch_id) else {
            self.tally.problem("events for a watch id the stream did not create");
            return;
        };
        self.tally.last_arrival = Some(arrived);
        for event in &response.events {
            self.event(local, event, arrived);
        }
    }

    /// A progress notification for one watcher, or (watch id -1, as etcd 3.5
    /// answers a progress request) for every watcher of the stream.
    fn progress(&mut self, by_id: &HashMap<i64, usize>, response: &WatchResponse) {
        self.tally.progress_notifies += 1;
        let Some(revision) = response.header.as_ref().map(|header| header.revision) else {
            self.tally.problem("a progress notification without a header");
            return;
        };
        let locals: Vec<usize> = match by_id.get(&response.watch_id) {
            Some(&local) => vec![local],
            None => (0..self.progress_revision.len()).collect(),
        };
        for local in locals {
            let last_event = self.last_revision[self.first_watcher + local].load(Ordering::Relaxed);
            if revision < last_event {
                self.tally
                    .problem("a progress notification below an event the watcher already got");
            }
            if revision < self.progress_revision[local] {
                self.tally.problem("a progress notification below an earlier one");
            }
            self.progress_revision[local] = self.progress_revision[local].max(revision);
        }
    }

    fn event(&mut self, local: usize, event: &Event, arrived: Instant) {
        self.tally.events_by_watcher[local] += 1;
        let watcher = self.first_watcher + local;
        let Some(kv) = &event.kv else {
            self.tally.problem("an event without a key-value");
            return;
        };
        let previous = self.last_revision[watcher].fetch_max(kv.mod_revision, Ordering::Relaxed);
        if kv.mod_revision <= previous {
            self.tally
                .problem("an event not after the watcher's previous event (duplicate or out of order)");
        }
        if kv.mod_revision <= self.progress_revision[local] {
            self.tally
                .problem("an event at or below a revision a progress notification said was complete");
        }
        if let Err(problem) = self.sink.event(watcher, event, arrived) {
            self.tally.problem(problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::etcdserverpb::ResponseHeader;
    use ringkv_proto::mvccpb::KeyValue;

    struct AcceptAll;

    impl EventSink for AcceptAll {
        fn event(&self, _watcher: usize, _event: &Event, _arrived: Instant) -> Result<(), &'static str> {
            Ok(())
        }
    }

    /// A stream with watchers 7 and 8 (ids), numbered 0 and 1.
    fn consumer() -> (StreamConsumer, HashMap<i64, usize>) {
        let consumer = StreamConsumer {
            first_watcher: 0,
            watch_ids: vec![7, 8],
            progress_revision: vec![0; 2],
            last_revision: Arc::new(vec![AtomicI64::new(0), AtomicI64::new(0)]),
            sink: Arc::new(AcceptAll),
            tally: StreamTally::new(2),
        };
        (consumer, HashMap::from([(7, 0), (8, 1)]))
    }

    fn events(watch_id: i64, revisions: &[i64]) -> WatchResponse {
        let event = |revision| Event {
            kv: Some(KeyValue {
                mod_revision: revision,
                ..Default::default()
            }),
            ..Default::default()
        };
        WatchResponse {
            watch_id,
            events: revisions.iter().copied().map(event).collect(),
            ..Default::default()
        }
    }

    fn progress(watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader {
                revision,
                ..Default::default()
            }),
            watch_id,
            ..Default::default()
        }
    }

    #[test]
    fn events_in_revision_order_after_progress_pass() {
        let (mut consumer, ids) = consumer();
        let now = Instant::now();
        consumer.response(&ids, events(7, &[3, 4]), now);
        consumer.response(&ids, progress(7, 10), now);
        consumer.response(&ids, events(7, &[11]), now);
        consumer.response(&ids, events(8, &[11]), now);
        assert!(consumer.tally.problems.is_empty(), "{:?}", consumer.tally.problems);
        assert_eq!(consumer.tally.events_by_watcher, vec![3, 1]);
        assert_eq!(consumer.tally.progress_notifies, 1);
    }

    #[test]
    fn a_duplicate_or_an_event_below_a_progress_notification_is_a_problem() {
        let (mut consumer, ids) = consumer();
        let now = Instant::now();
        consumer.response(&ids, events(7, &[5, 5]), now);
        consumer.response(&ids, progress(-1, 10), now);
        consumer.response(&ids, events(8, &[9]), now);
        consumer.response(&ids, progress(8, 8), now);
        let problems: Vec<&str> = consumer.tally.problems.keys().copied().collect();
        assert_eq!(
            problems,
            vec![
                "a progress notification below an earlier one",
                "a progress notification below an event the watcher already got",
                "an event at or below a revision a progress notification said was complete",
                "an event not after the watcher's previous event (duplicate or out of order)",
            ]
        );
    }

    #[test]
    fn a_canceled_watcher_is_an_error() {
        let (mut consumer, ids) = consumer();
        let canceled = WatchResponse {
            watch_id: 7,
            canceled: true,
            compact_revision: 4,
            ..Default::default()
        };
        consumer.response(&ids, canceled, Instant::now());
        assert_eq!(consumer.tally.errors.total(), 1);
        let by_code = consumer.tally.errors.by_code();
        assert_eq!(
            by_code[0].messages[0].message,
            "watcher canceled: compacted at revision 4"
        );
    }
}
