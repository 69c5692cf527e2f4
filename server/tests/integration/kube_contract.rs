//! kube-apiserver's storage contract, played against a real server process.
//!
//! kube-apiserver is ringkv's main client. This test drives the server the way
//! its etcd3 storage layer does, with several writers and watch-cache watchers at
//! once, and checks what kube relies on:
//! - create = Txn(mod_revision == 0, Put, else Range); update and delete =
//!   Txn(mod_revision == R, Put/Delete, else Range), retried on conflict as
//!   GuaranteedUpdate does;
//! - lists paginated with limit, a continue key and the first page's revision;
//!   count_only; reads of the health key;
//! - events written with one shared lease per `EVENTS_PER_LEASE` objects;
//! - the compactor's dance on `compact_rev_key`, compacting while all this runs;
//! - watch-cache watches (prefix, prev_kv, progress_notify, RequestProgress)
//!   started from the list revision + 1.
//!
//! Every watcher must see every acknowledged change exactly once, in revision
//! order, with prev_kv matching what it saw before, and end equal to the final
//! list; resourceVersions (mod revisions) strictly increase; compaction never
//! cancels a live watch. The same test runs against real etcd (Debian's 3.4) as
//! the oracle, so the test itself is known to describe etcd's behaviour.
//!
//! Everything is on 127.0.0.1; every loop and wait is bounded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use ringkv_proto::etcdserverpb::request_op::Request;
use ringkv_proto::etcdserverpb::response_op::Response;
use ringkv_proto::etcdserverpb::watch_client::WatchClient;
use ringkv_proto::etcdserverpb::watch_request::RequestUnion;
use ringkv_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use ringkv_proto::mvccpb::event::EventType;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::support;

const PODS: &str = "/registry/pods/";
const EVENTS: &str = "/registry/events/";
const COMPACT_REV_KEY: &str = "compact_rev_key";
/// kube-apiserver's etcd health check reads this key.
const HEALTH_KEY: &str = "health";

const WRITERS: usize = 4;
/// Pods each writer creates, then updates and partly deletes.
const PODS_PER_WRITER: usize = 300;
const UPDATES_PER_WRITER: usize = 900;
const DELETES_PER_WRITER: usize = 60;
/// Pods every writer updates: GuaranteedUpdate conflicts happen on these.
const SHARED_PODS: usize = 10;
const EVENT_OBJECTS: usize = 2_000;
/// kube-apiserver attaches events to a shared lease; one per this many.
const EVENTS_PER_LEASE: usize = 1_000;
const EVENT_TTL_SECONDS: i64 = 3_600;
const WATCHERS: usize = 3;
const PAGE_LIMIT: i64 = 100;
const COMPACT_INTERVAL: Duration = Duration::from_millis(300);
const PROGRESS_REQUEST_INTERVAL: Duration = Duration::from_millis(100);
/// Retries of one GuaranteedUpdate before the test gives up on it.
const CONFLICT_RETRIES_MAX: usize = 1_000;
/// Relists after a pinned page was compacted away, before giving up.
const RELISTS_MAX: usize = 20;
/// How long the watchers may take to catch up once the writers are done.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// A bound on the whole test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_contract_holds_on_ringkv() {
    let dir = tempfile::tempdir().unwrap();
    let server = support::Ringkv::start(&dir.path().join("data"), &["--watch-progress-notify-interval", "200ms"]);
    let outcome = tokio::time::timeout(TEST_TIMEOUT, play(server.endpoint(), Progress::Synchronised)).await;
    outcome.unwrap_or_else(|_| {
        panic!(
            "the contract did not finish within {TEST_TIMEOUT:?}\n{}",
            server.log.text()
        )
    });
}

/// The oracle: the same contract against Debian's etcd 3.4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_contract_holds_on_etcd() {
    let etcd = support::Etcd::start_with(&["--experimental-watch-progress-notify-interval", "200ms"]);
    let outcome = tokio::time::timeout(TEST_TIMEOUT, play(etcd.endpoint(), Progress::MayLeadEvents)).await;
    outcome.unwrap_or_else(|_| panic!("the contract did not finish within {TEST_TIMEOUT:?} on etcd"));
}

/// What a progress notification promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// etcd 3.4.25+ / 3.5.8+ (and ringkv): every event at or below the
    /// notified revision was delivered before the notification.
    Synchronised,
    /// etcd before those (Debian's 3.4.23): a requested notification may
    /// overtake events (etcd-io/etcd#15220), so nothing is asserted about it.
    MayLeadEvents,
}

/// One acknowledged change under `PODS`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    key: Vec<u8>,
    revision: i64,
    /// None for a delete.
    value: Option<Vec<u8>>,
}

/// What one watcher built: its cache and every event, in arrival order.
struct Watched {
    list_revision: i64,
    cache: BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
    changes: Vec<Change>,
}

async fn play(endpoint: String, progress: Progress) {
    let kv = support::kv_client(&endpoint).await;
    let channel = channel(&endpoint).await;
    let acknowledged = Arc::new(Mutex::new(Vec::<Change>::new()));

    // The watch cache starts before the writers, as an apiserver that is already up.
    let mut watchers = Vec::new();
    for watcher in 0..WATCHERS {
        let (kv, channel) = (kv.clone(), channel.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        watchers.push((
            tokio::spawn(async move { watch_cache(watcher, kv, channel, progress, ready_tx).await }),
            ready_rx,
        ));
    }
    let mut handles = Vec::new();
    for (handle, ready) in watchers {
        ready.await.expect("the watcher started");
        handles.push(handle);
    }

    for pod in 0..SHARED_PODS {
        let key = shared_key(pod);
        let revision = create(&mut kv.clone(), &key, b"shared").await.expect("a new key");
        let value = Some(b"shared".to_vec());
        acknowledged.lock().await.push(Change { key, revision, value });
    }
    let (compactor_stop_tx, compactor_stop) = tokio::sync::watch::channel(false);
    let compactor = tokio::spawn(compactor(kv.clone(), compactor_stop));

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (kv, acknowledged) = (kv.clone(), Arc::clone(&acknowledged));
        writers.push(tokio::spawn(async move { pod_writer(writer, kv, acknowledged).await }));
    }
    let events = tokio::spawn(event_writer(kv.clone(), LeaseClient::new(channel.clone())));
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
    let leases = events.await.expect("the event writer panicked");
    compactor_stop_tx
        .send(true)
        .expect("the compactor runs until told to stop");
    let compactions = compactor.await.expect("the compactor panicked");
    assert!(
        compactions >= 2,
        "the compactor compacted {compactions} times during the run"
    );

    // A last write the watchers can wait for: they have caught up when they see it.
    let sentinel = format!("{PODS}~sentinel").into_bytes();
    let sentinel_revision = create(&mut kv.clone(), &sentinel, b"done")
        .await
        .expect("the sentinel is new");
    acknowledged.lock().await.push(Change {
        key: sentinel.clone(),
        revision: sentinel_revision,
        value: Some(b"done".to_vec()),
    });

    let mut watched = Vec::new();
    for handle in handles {
        watched.push(handle.await.expect("a watcher panicked"));
    }

    let final_list = list(&mut kv.clone(), sentinel_revision).await;
    let count = count_only(&mut kv.clone()).await;
    assert_eq!(count, final_list.len() as i64, "count_only agrees with the list");
    check_revisions(&acknowledged.lock().await);
    for (index, watched) in watched.iter().enumerate() {
        check_watcher(index, watched, &acknowledged.lock().await, &final_list);
    }
    check_leases(&mut LeaseClient::new(channel), &leases).await;
}

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connects")
}

// ---- writers ----------------------------------------------------------------

fn pod_key(writer: usize, pod: usize) -> Vec<u8> {
    format!("{PODS}ns-{writer}/pod-{pod:05}").into_bytes()
}

fn shared_key(pod: usize) -> Vec<u8> {
    format!("{PODS}shared/pod-{pod:03}").into_bytes()
}

fn mod_revision_is(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::ModRevision(revision)),
        ..Default::default()
    }
}

fn get(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The kv the failure branch's Range found: (value, mod_revision), None if gone.
fn current(response: &TxnResponse) -> Option<(Vec<u8>, i64)> {
    match &response.responses.first()?.response {
        Some(Response::ResponseRange(range)) => range.kvs.first().map(|kv| (kv.value.clone(), kv.mod_revision)),
        other => panic!("a failed kube txn answers its Range, got {other:?}"),
    }
}

/// kube's create: put only if the key does not exist. The revision, or None if it did.
async fn create(kv: &mut KvClient<Channel>, key: &[u8], value: &[u8]) -> Option<i64> {
    let response = txn_put(kv, key, 0, value).await;
    response.succeeded.then(|| response.header.unwrap().revision)
}

async fn txn_put(kv: &mut KvClient<Channel>, key: &[u8], expected: i64, value: &[u8]) -> TxnResponse {
    let put = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    };
    let txn = TxnRequest {
        compare: vec![mod_revision_is(key, expected)],
        success: vec![put],
        failure: vec![get(key)],
    };
    kv.txn(txn).await.expect("a kube write txn succeeds").into_inner()
}

/// kube's GuaranteedUpdate: read, modify, CAS on mod_revision, retry on conflict.
async fn guaranteed_update(kv: &mut KvClient<Channel>, key: &[u8], known: Option<(Vec<u8>, i64)>, tag: &str) -> Change {
    let mut known = known;
    for _ in 0..CONFLICT_RETRIES_MAX {
        let (old, revision) = known.clone().expect("updates are of live objects");
        let value = [&old[..old.len().min(64)], b"|", tag.as_bytes()].concat();
        let response = txn_put(kv, key, revision, &value).await;
        if response.succeeded {
            return Change {
                key: key.to_vec(),
                revision: response.header.unwrap().revision,
                value: Some(value),
            };
        }
        known = current(&response);
    }
    panic!("GuaranteedUpdate of {} kept conflicting", String::from_utf8_lossy(key));
}

/// kube's delete with a precondition on the revision it read.
async fn guaranteed_delete(kv: &mut KvClient<Channel>, key: &[u8], revision: i64) -> Change {
    let delete = RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            prev_kv: true,
            ..Default::default()
        })),
    };
    let txn = TxnRequest {
        compare: vec![mod_revision_is(key, revision)],
        success: vec![delete],
        failure: vec![get(key)],
    };
    let response = kv.txn(txn).await.expect("a kube delete txn succeeds").into_inner();
    assert!(response.succeeded, "only this writer touches its own pods");
    match &response.responses[0].response {
        Some(Response::ResponseDeleteRange(deleted)) => {
            assert_eq!(deleted.deleted, 1);
            assert_eq!(deleted.prev_kvs[0].mod_revision, revision);
        }
        other => panic!("a delete answers DeleteRange, got {other:?}"),
    }
    Change {
        key: key.to_vec(),
        revision: response.header.unwrap().revision,
        value: None,
    }
}

async fn pod_writer(writer: usize, mut kv: KvClient<Channel>, acknowledged: Arc<Mutex<Vec<Change>>>) {
    let mut rng = StdRng::seed_from_u64(writer as u64);
    let mut live: HashMap<Vec<u8>, (Vec<u8>, i64)> = HashMap::new();
    let mut changes: Vec<Change> = Vec::new();
    for pod in 0..PODS_PER_WRITER {
        let key = pod_key(writer, pod);
        let value = format!("pod {pod} of writer {writer}").into_bytes();
        let revision = create(&mut kv, &key, &value).await.expect("a new key");
        assert!(create(&mut kv, &key, b"again").await.is_none(), "a second create fails");
        live.insert(key.clone(), (value.clone(), revision));
        changes.push(Change {
            key,
            revision,
            value: Some(value),
        });
    }
    for update in 0..UPDATES_PER_WRITER {
        let tag = format!("w{writer}u{update}");
        let change = if update % 5 == 0 {
            // Shared pods: read first (possibly stale by the time we write).
            let key = shared_key(rng.gen_range(0..SHARED_PODS));
            let range = kv
                .range(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let known = range
                .into_inner()
                .kvs
                .first()
                .map(|kv| (kv.value.clone(), kv.mod_revision));
            guaranteed_update(&mut kv, &key, known, &tag).await
        } else {
            let key = pod_key(writer, rng.gen_range(0..PODS_PER_WRITER));
            let known = live.get(&key).cloned();
            if known.is_none() {
                continue;
            }
            guaranteed_update(&mut kv, &key, known, &tag).await
        };
        if live.contains_key(&change.key) {
            live.insert(change.key.clone(), (change.value.clone().unwrap(), change.revision));
        }
        changes.push(change);
        if update % (UPDATES_PER_WRITER / DELETES_PER_WRITER) == 0 {
            let key = pod_key(writer, rng.gen_range(0..PODS_PER_WRITER));
            if let Some((_, revision)) = live.remove(&key) {
                changes.push(guaranteed_delete(&mut kv, &key, revision).await);
            }
        }
    }
    assert!(
        changes.windows(2).all(|w| w[0].revision < w[1].revision),
        "writer {writer}: one client's writes, one after another, got increasing resourceVersions"
    );
    acknowledged.lock().await.extend(changes);
}

/// Event objects, `EVENTS_PER_LEASE` per shared lease. Returns the leases.
async fn event_writer(mut kv: KvClient<Channel>, mut leases: LeaseClient<Channel>) -> Vec<i64> {
    let mut granted = Vec::new();
    for event in 0..EVENT_OBJECTS {
        if event % EVENTS_PER_LEASE == 0 {
            let grant = LeaseGrantRequest {
                ttl: EVENT_TTL_SECONDS,
                id: 0,
            };
            let response = leases
                .lease_grant(grant)
                .await
                .expect("a lease is granted")
                .into_inner();
            assert!(response.id != 0 && response.ttl == EVENT_TTL_SECONDS, "{response:?}");
            granted.push(response.id);
        }
        let put = PutRequest {
            key: format!("{EVENTS}default/event-{event:05}").into_bytes(),
            value: b"event".to_vec(),
            lease: *granted.last().unwrap(),
            ..Default::default()
        };
        kv.put(put).await.expect("an event is written");
    }
    granted
}

/// kube-apiserver's compactor: a CAS on `compact_rev_key`'s version, then a
/// compaction to the revision seen one interval earlier. Returns how many
/// compactions it made.
async fn compactor(mut kv: KvClient<Channel>, mut stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let mut version = 0;
    let mut previous_revision = 0;
    let mut compactions = 0;
    loop {
        let health = kv
            .range(RangeRequest {
                key: HEALTH_KEY.into(),
                ..Default::default()
            })
            .await;
        assert!(health.is_ok(), "the health read fails: {health:?}");
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Version as i32,
                key: COMPACT_REV_KEY.into(),
                target_union: Some(TargetUnion::Version(version)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: COMPACT_REV_KEY.into(),
                    value: previous_revision.to_string().into_bytes(),
                    ..Default::default()
                })),
            }],
            failure: vec![get(COMPACT_REV_KEY.as_bytes())],
        };
        let response = kv.txn(txn).await.expect("the compactor's txn succeeds").into_inner();
        let revision = response.header.as_ref().unwrap().revision;
        if response.succeeded {
            version += 1;
            if previous_revision > 0 {
                kv.compact(CompactionRequest {
                    revision: previous_revision,
                    physical: false,
                })
                .await
                .expect("compacting to a revision an interval old succeeds");
                compactions += 1;
            }
        } else {
            // Another compactor got there first: take its version, as kube does.
            version = match &response.responses[0].response {
                Some(Response::ResponseRange(range)) => range.kvs.first().map_or(0, |kv| kv.version),
                other => panic!("the compactor's failed txn answers its Range, got {other:?}"),
            };
        }
        previous_revision = revision;
        tokio::select! {
            _ = tokio::time::sleep(COMPACT_INTERVAL) => {}
            _ = stop.changed() => return compactions,
        }
    }
}

// ---- lists --------------------------------------------------------------------

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    end
}

/// kube's paginated list of `PODS`: pages of `PAGE_LIMIT`, each after the last
/// key of the one before, all at the first page's revision (0: the current one).
/// Returns the items and the revision. A page compacted away restarts the list.
async fn paginated_list(kv: &mut KvClient<Channel>, at: i64) -> (BTreeMap<Vec<u8>, (Vec<u8>, i64)>, i64) {
    'relist: for _ in 0..RELISTS_MAX {
        let mut items = BTreeMap::new();
        let mut key = PODS.as_bytes().to_vec();
        let mut revision = at;
        loop {
            let request = RangeRequest {
                key: key.clone(),
                range_end: prefix_end(PODS),
                limit: PAGE_LIMIT,
                revision,
                ..Default::default()
            };
            let page = match kv.range(request).await {
                Ok(page) => page.into_inner(),
                Err(status) if status.message().contains("required revision has been compacted") => {
                    continue 'relist;
                }
                Err(status) => panic!("a list page failed: {status:?}"),
            };
            if revision == 0 {
                revision = page.header.as_ref().unwrap().revision;
            }
            assert!(page.kvs.len() as i64 <= PAGE_LIMIT);
            for kv in &page.kvs {
                items.insert(kv.key.clone(), (kv.value.clone(), kv.mod_revision));
            }
            if !page.more {
                return (items, revision);
            }
            // kube's continue key: just after the last key of this page.
            key = [&page.kvs.last().unwrap().key[..], b"\0"].concat();
        }
    }
    panic!("the list was compacted away {RELISTS_MAX} times in a row");
}

async fn list(kv: &mut KvClient<Channel>, at: i64) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
    paginated_list(kv, at).await.0
}

async fn count_only(kv: &mut KvClient<Channel>) -> i64 {
    let request = RangeRequest {
        key: PODS.into(),
        range_end: prefix_end(PODS),
        count_only: true,
        ..Default::default()
    };
    let response = kv.range(request).await.unwrap().into_inner();
    assert!(response.kvs.is_empty(), "count_only returns no kvs");
    response.count
}

// ---- watch cache ------------------------------------------------------------------

/// One watch-cache: list, watch from the list's revision + 1 with prev_kv and
/// progress notifications, request progress now and then, apply every event.
/// Returns once it has seen the sentinel pod.
async fn watch_cache(
    index: usize,
    mut kv: KvClient<Channel>,
    channel: Channel,
    progress: Progress,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Watched {
    let (mut cache, list_revision) = paginated_list(&mut kv, 0).await;
    let (requests, requests_rx) = mpsc::channel(16);
    let create = WatchCreateRequest {
        key: PODS.into(),
        range_end: prefix_end(PODS),
        start_revision: list_revision + 1,
        progress_notify: true,
        prev_kv: true,
        ..Default::default()
    };
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .unwrap();
    let mut responses = WatchClient::new(channel)
        .watch(ReceiverStream::new(requests_rx))
        .await
        .expect("the watch stream opens")
        .into_inner();
    let created = responses
        .next()
        .await
        .expect("a created response")
        .expect("the watch is created");
    assert!(created.created && !created.canceled, "watcher {index}: {created:?}");
    let watch_id = created.watch_id;
    let _ = ready.send(());

    // Runs until the watcher is done with the stream (aborted below).
    let progress_requester = tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROGRESS_REQUEST_INTERVAL).await;
            let request = WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
            };
            if requests.send(request).await.is_err() {
                return;
            }
        }
    });

    let sentinel = format!("{PODS}~sentinel").into_bytes();
    let mut changes: Vec<Change> = Vec::new();
    let mut last_revision = list_revision;
    let mut notified = list_revision;
    let mut caught_up = false;
    while !caught_up {
        let next = tokio::time::timeout(CATCH_UP_TIMEOUT, responses.next()).await;
        let response = match next {
            Err(_) => panic!("watcher {index}: no response in {CATCH_UP_TIMEOUT:?}"),
            Ok(None) => panic!("watcher {index}: the stream ended"),
            Ok(Some(Err(status))) => panic!("watcher {index}: the stream failed: {status:?}"),
            Ok(Some(Ok(response))) => response,
        };
        assert!(
            !response.canceled && response.compact_revision == 0,
            "watcher {index}: a live watch was cancelled: {response:?}"
        );
        let header_revision = response.header.as_ref().unwrap().revision;
        if response.events.is_empty() {
            // A progress notification (ours, -1 for a requested one in 3.4+).
            assert!(response.watch_id == watch_id || response.watch_id == -1, "{response:?}");
            if progress == Progress::Synchronised {
                assert!(
                    header_revision >= last_revision,
                    "watcher {index}: progress went back: {response:?}"
                );
                notified = notified.max(header_revision);
            }
            continue;
        }
        assert_eq!(response.watch_id, watch_id);
        for event in &response.events {
            let kv = event.kv.as_ref().unwrap();
            assert!(kv.mod_revision >= last_revision, "watcher {index}: events out of order");
            assert!(
                kv.mod_revision > notified || progress == Progress::MayLeadEvents,
                "watcher {index}: an event at {} after progress was notified at {notified}",
                kv.mod_revision
            );
            last_revision = kv.mod_revision;
            let before = cache.get(&kv.key).cloned();
            let prev = event
                .prev_kv
                .as_ref()
                .map(|prev| (prev.value.clone(), prev.mod_revision));
            assert_eq!(
                prev,
                before,
                "watcher {index}: prev_kv of {}",
                String::from_utf8_lossy(&kv.key)
            );
            let value = match EventType::from_i32(event.r#type).expect("a known event type") {
                EventType::Put => {
                    cache.insert(kv.key.clone(), (kv.value.clone(), kv.mod_revision));
                    Some(kv.value.clone())
                }
                EventType::Delete => {
                    cache.remove(&kv.key);
                    None
                }
            };
            changes.push(Change {
                key: kv.key.clone(),
                revision: kv.mod_revision,
                value,
            });
            caught_up |= kv.key == sentinel;
        }
    }
    progress_requester.abort();
    Watched {
        list_revision,
        cache,
        changes,
    }
}

// ---- checks -------------------------------------------------------------------

/// No two acknowledged writes share a revision (each writer also checked that
/// its own writes got increasing revisions, in the order it made them).
fn check_revisions(acknowledged: &[Change]) {
    let mut revisions: Vec<i64> = acknowledged.iter().map(|c| c.revision).collect();
    revisions.sort_unstable();
    let before = revisions.len();
    revisions.dedup();
    assert_eq!(revisions.len(), before, "two acknowledged writes share a revision");
}

fn check_watcher(
    index: usize,
    watched: &Watched,
    acknowledged: &[Change],
    final_list: &BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
) {
    let mut expected: Vec<&Change> = acknowledged
        .iter()
        .filter(|c| c.revision > watched.list_revision)
        .collect();
    expected.sort_by_key(|c| (c.revision, c.key.clone()));
    let mut seen: Vec<&Change> = watched.changes.iter().collect();
    seen.sort_by_key(|c| (c.revision, c.key.clone()));
    assert_eq!(seen.len(), expected.len(), "watcher {index}: every change exactly once");
    for (seen, expected) in seen.iter().zip(&expected) {
        assert_eq!(seen, expected, "watcher {index}");
    }
    assert!(
        watched.changes.windows(2).all(|w| w[0].revision <= w[1].revision),
        "watcher {index}: events in revision order"
    );
    assert_eq!(
        &watched.cache, final_list,
        "watcher {index}: the cache equals the final list"
    );
}

async fn check_leases(leases: &mut LeaseClient<Channel>, granted: &[i64]) {
    assert_eq!(granted.len(), EVENT_OBJECTS / EVENTS_PER_LEASE);
    for &id in granted {
        let request = LeaseTimeToLiveRequest { id, keys: true };
        let response = leases.lease_time_to_live(request).await.unwrap().into_inner();
        assert_eq!(response.keys.len(), EVENTS_PER_LEASE, "lease {id} holds its events");
        assert!(response.ttl > 0 && response.ttl <= EVENT_TTL_SECONDS);
        assert_eq!(response.granted_ttl, EVENT_TTL_SECONDS);
    }
}
