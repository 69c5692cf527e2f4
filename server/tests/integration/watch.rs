//! etcd's Watch service on a real ringkv process: one property per test, each
//! named after etcd's watch guarantee it checks (api_guarantees.md: ordered,
//! unique, atomic, reliable, resumable, bookmarkable) or the behaviour it pins.
//! No timing assertions: every wait is bounded and only fails the test on expiry.

use std::time::Duration;

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::mvccpb;
use tonic::transport::Channel;

use pb::watch_request::RequestUnion;

use crate::support::{self, prefix_end, Ringkv, WatchSession};

fn prefix(key: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        range_end: prefix_end(key.as_bytes()),
        ..Default::default()
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    let request = pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    };
    kv.put(request).await.unwrap().into_inner().header.unwrap().revision
}

async fn start() -> (tempfile::TempDir, Ringkv, KvClient<Channel>) {
    start_with(&[]).await
}

async fn start_with(flags: &[&str]) -> (tempfile::TempDir, Ringkv, KvClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ringkv::start(dir.path(), flags);
    let kv = support::kv_client(&server.endpoint()).await;
    (dir, server, kv)
}

/// Reads responses until `count` events arrived; returns them (flattened) and
/// the responses they came in.
async fn collect_events(session: &mut WatchSession, count: usize) -> (Vec<mvccpb::Event>, Vec<pb::WatchResponse>) {
    let mut events = Vec::new();
    let mut responses = Vec::new();
    while events.len() < count {
        let response = session.next().await;
        assert!(!response.canceled, "unexpected cancel: {response:?}");
        events.extend(response.events.iter().cloned());
        responses.push(response);
    }
    assert_eq!(events.len(), count, "no more events than written");
    (events, responses)
}

fn revisions(events: &[mvccpb::Event]) -> Vec<i64> {
    events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_answers_come_in_request_order_with_ids_from_zero() {
    let (_dir, server, mut kv) = start().await;
    put(&mut kv, "x", "1").await;
    let mut session = WatchSession::open(&server.endpoint()).await;
    session.create(prefix("a")).await;
    session
        .create(pb::WatchCreateRequest {
            watch_id: 7,
            ..prefix("b")
        })
        .await;
    session
        .create(pb::WatchCreateRequest {
            watch_id: 7,
            ..prefix("c")
        })
        .await;
    session
        .create(pb::WatchCreateRequest {
            key: b"b".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        })
        .await;
    session.create(prefix("d")).await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let response = session.next().await;
        assert!(response.created);
        assert_eq!(
            response.header.unwrap().revision,
            2,
            "created reports the current revision"
        );
        answers.push((response.watch_id, response.canceled, response.cancel_reason));
    }
    assert_eq!(
        answers,
        vec![
            (0, false, String::new()),
            (7, false, String::new()),
            (
                -1,
                true,
                "mvcc: duplicate watch ID provided on the WatchStream".to_string()
            ),
            (-1, true, "mvcc: watcher range is empty".to_string()),
            (1, false, String::new()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_ordered_unique_and_reliable_for_keys_ranges_and_prefixes() {
    let (_dir, server, mut kv) = start().await;
    let mut session = WatchSession::open(&server.endpoint()).await;
    session.create(prefix("p/")).await;
    session
        .create(pb::WatchCreateRequest {
            key: b"p/5".to_vec(),
            ..Default::default()
        })
        .await;
    session
        .create(pb::WatchCreateRequest {
            key: b"p/".to_vec(),
            range_end: vec![0],
            ..Default::default()
        })
        .await;
    for _ in 0..3 {
        assert!(session.next().await.created);
    }
    let mut written = Vec::new();
    for i in 0..50 {
        written.push(put(&mut kv, &format!("p/{}", i % 10), "v").await);
    }
    put(&mut kv, "q", "outside the prefix, inside the from-key range").await;
    let mut per_watch: [Vec<mvccpb::Event>; 3] = Default::default();
    while per_watch[0].len() < 50 || per_watch[1].len() < 5 || per_watch[2].len() < 51 {
        let response = session.next().await;
        per_watch[response.watch_id as usize].extend(response.events);
    }
    assert_eq!(revisions(&per_watch[0]), written, "every write once, in order");
    let key_five: Vec<i64> = written.iter().copied().skip(5).step_by(10).collect();
    assert_eq!(revisions(&per_watch[1]), key_five);
    assert_eq!(per_watch[2].len(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_is_atomic_in_one_response_and_cancel_stops_events() {
    let (_dir, server, mut kv) = start().await;
    let mut session = WatchSession::open(&server.endpoint()).await;
    session.create(prefix("t/")).await;
    assert!(session.next().await.created);
    let ops = (0..20)
        .map(|i| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: format!("t/{i}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        })
        .collect();
    kv.txn(pb::TxnRequest {
        success: ops,
        ..Default::default()
    })
    .await
    .unwrap();
    let response = session.next().await;
    assert_eq!(response.events.len(), 20, "one revision, one response");
    session
        .send(RequestUnion::CancelRequest(pb::WatchCancelRequest { watch_id: 0 }))
        .await;
    let canceled = session.next().await;
    assert!(canceled.canceled && canceled.watch_id == 0);
    put(&mut kv, "t/after", "v").await;
    assert!(session.next_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_from_a_past_revision_replays_then_continues_live_with_prev_kv() {
    let (_dir, server, mut kv) = start().await;
    for i in 0..30 {
        put(&mut kv, "r", &i.to_string()).await;
    }
    let mut session = WatchSession::open(&server.endpoint()).await;
    session
        .create(pb::WatchCreateRequest {
            start_revision: 10,
            prev_kv: true,
            ..prefix("r")
        })
        .await;
    assert!(session.next().await.created);
    // Writes race with the replay: no gap and no duplicate either way.
    for i in 30..40 {
        put(&mut kv, "r", &i.to_string()).await;
    }
    let (events, _) = collect_events(&mut session, 32).await;
    assert_eq!(revisions(&events), (10..42).collect::<Vec<_>>());
    for event in &events {
        let kv = event.kv.as_ref().unwrap();
        let prev = event.prev_kv.as_ref().expect("prev_kv of an update");
        let value: i64 = String::from_utf8_lossy(&kv.value).parse().unwrap();
        assert_eq!(prev.value, (value - 1).to_string().into_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_drop_puts_or_deletes() {
    let (_dir, server, mut kv) = start().await;
    let mut session = WatchSession::open(&server.endpoint()).await;
    use pb::watch_create_request::FilterType;
    session
        .create(pb::WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..prefix("f")
        })
        .await;
    session
        .create(pb::WatchCreateRequest {
            filters: vec![FilterType::Nodelete as i32],
            ..prefix("f")
        })
        .await;
    session.next().await;
    session.next().await;
    put(&mut kv, "f", "v").await;
    kv.delete_range(pb::DeleteRangeRequest {
        key: b"f".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let response = session.next().await;
        seen.push((response.watch_id, response.events[0].r#type));
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        vec![
            (0, mvccpb::event::EventType::Delete as i32),
            (1, mvccpb::event::EventType::Put as i32)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_start_revision_is_canceled_with_the_compact_revision() {
    let (_dir, server, mut kv) = start().await;
    for _ in 0..5 {
        put(&mut kv, "c", "v").await;
    }
    kv.compact(pb::CompactionRequest {
        revision: 4,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut session = WatchSession::open(&server.endpoint()).await;
    session
        .create(pb::WatchCreateRequest {
            start_revision: 2,
            ..prefix("c")
        })
        .await;
    assert!(session.next().await.created);
    let response = session.next().await;
    assert_eq!((response.compact_revision, response.canceled), (4, true));
    assert_eq!(response.header.unwrap().revision, 0, "as etcd sends it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_requests_and_notifications_are_bookmarks() {
    let (_dir, server, mut kv) = start_with(&["--watch-progress-notify-interval", "100ms"]).await;
    let mut session = WatchSession::open(&server.endpoint()).await;
    session
        .create(pb::WatchCreateRequest {
            progress_notify: true,
            ..prefix("b")
        })
        .await;
    assert!(session.next().await.created);
    let revision = put(&mut kv, "b", "v").await;
    let event = session.next().await;
    assert_eq!(event.events.len(), 1);
    session
        .send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    // The requested one (watch_id -1) and periodic ones (the watch's id) may
    // interleave; both must report everything up to the current revision.
    let mut requested = false;
    let mut periodic = false;
    for _ in 0..50 {
        let response = session.next().await;
        assert!(response.events.is_empty());
        assert_eq!(response.header.unwrap().revision, revision);
        match response.watch_id {
            -1 => requested = true,
            0 => periodic = true,
            other => panic!("unexpected watch id {other}"),
        }
        if requested && periodic {
            break;
        }
    }
    assert!(requested && periodic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_responses_reassemble_to_one_revision() {
    let (_dir, server, mut kv) = start_with(&["--max-request-bytes", "4096"]).await;
    let txn = || pb::TxnRequest {
        success: (0..6)
            .map(|i| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: format!("g/{i}").into_bytes(),
                    value: vec![b'v'; 500],
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    };
    kv.txn(txn()).await.unwrap();
    let mut session = WatchSession::open(&server.endpoint()).await;
    // With prev_kv the revision's response is about twice the request limit.
    session
        .create(pb::WatchCreateRequest {
            fragment: true,
            prev_kv: true,
            ..prefix("g/")
        })
        .await;
    assert!(session.next().await.created);
    kv.txn(txn()).await.unwrap();
    let mut events = Vec::new();
    let mut parts = 0;
    loop {
        let response = session.next().await;
        parts += 1;
        events.extend(response.events);
        if !response.fragment {
            break;
        }
    }
    assert!(parts > 1, "the revision was fragmented");
    assert_eq!(events.len(), 6);
    assert!(events.iter().all(|e| e.prev_kv.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_stalls_neither_writes_nor_other_watchers() {
    let (_dir, server, mut kv) = start().await;
    let mut slow = WatchSession::open(&server.endpoint()).await;
    let mut fast = WatchSession::open(&server.endpoint()).await;
    slow.create(prefix("s/")).await;
    fast.create(prefix("s/")).await;
    assert!(slow.next().await.created);
    assert!(fast.next().await.created);
    // 12 MiB of events: far beyond HTTP/2 windows and the stream window.
    let value = "v".repeat(64 * 1024);
    let writes = 192;
    let mut fast_events = Vec::new();
    let mut written = Vec::new();
    for i in 0..writes {
        written.push(put(&mut kv, &format!("s/{}", i % 7), &value).await);
        while let Some(response) = fast.next_within(Duration::from_millis(0)).await {
            fast_events.extend(response.events);
        }
    }
    let (rest, _) = collect_events(&mut fast, writes - fast_events.len()).await;
    fast_events.extend(rest);
    assert_eq!(revisions(&fast_events), written);
    let (slow_events, _) = collect_events(&mut slow, writes).await;
    assert_eq!(
        revisions(&slow_events),
        written,
        "the slow reader caught up with no gap"
    );
}

/// Watchers per stream and streams in the fan-out test: 10,000 watchers of one key.
const FAN_OUT_STREAMS: usize = 10;
const FAN_OUT_WATCHERS_PER_STREAM: usize = 1000;
/// Creates sent before their answers are read: no more than the session's
/// request queue holds, so sending never waits on an unstarted call.
const CREATES_PER_BATCH: usize = 64;

/// Opens a stream with `count` watchers created by `create`; returns it with the
/// watch ids the server answered, after every `created` arrived.
async fn stream_of_watchers(endpoint: &str, count: usize, create: &pb::WatchCreateRequest) -> (WatchSession, Vec<i64>) {
    let mut session = WatchSession::open(endpoint).await;
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let batch = CREATES_PER_BATCH.min(count - ids.len());
        for _ in 0..batch {
            session.create(create.clone()).await;
        }
        for _ in 0..batch {
            let response = session.next().await;
            assert!(response.created && !response.canceled, "{response:?}");
            ids.push(response.watch_id);
        }
    }
    (session, ids)
}

/// Asks for a stream-wide progress notification and returns every event that
/// arrives before it: events are sent before the progress that vouches for them.
async fn events_until_progress(session: &mut WatchSession, revision: i64) -> Vec<(i64, mvccpb::Event)> {
    session
        .send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    let mut events = Vec::new();
    loop {
        let response = session.next().await;
        assert!(!response.canceled, "unexpected cancel: {response:?}");
        if response.watch_id == -1 && response.events.is_empty() {
            assert_eq!(response.header.unwrap().revision, revision);
            return events;
        }
        events.extend(response.events.into_iter().map(|e| (response.watch_id, e)));
    }
}

fn assert_event(event: &mvccpb::Event, key: &str, value: &str, revision: i64) {
    let kv = event.kv.as_ref().expect("an event carries its key-value");
    assert_eq!(event.r#type, mvccpb::event::EventType::Put as i32);
    assert_eq!(kv.key, key.as_bytes());
    assert_eq!(kv.value, value.as_bytes());
    assert_eq!(kv.mod_revision, revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_fans_out_to_ten_thousand_watchers_exactly_once() {
    let (_dir, server, mut kv) = start().await;
    let endpoint = server.endpoint();
    let key_watch = pb::WatchCreateRequest {
        key: b"fan/key".to_vec(),
        ..Default::default()
    };
    let mut streams = Vec::with_capacity(FAN_OUT_STREAMS);
    for _ in 0..FAN_OUT_STREAMS {
        let (session, mut ids) = stream_of_watchers(&endpoint, FAN_OUT_WATCHERS_PER_STREAM, &key_watch).await;
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            FAN_OUT_WATCHERS_PER_STREAM,
            "watch ids are unique per stream"
        );
        streams.push((session, ids));
    }
    let (mut range_session, _) = stream_of_watchers(&endpoint, 1, &prefix("fan/")).await;

    let first = put(&mut kv, "fan/key", "one").await;
    for (session, ids) in &mut streams {
        let (events, responses) = collect_events(session, FAN_OUT_WATCHERS_PER_STREAM).await;
        let mut got: Vec<i64> = responses.iter().map(|response| response.watch_id).collect();
        got.sort_unstable();
        assert_eq!(&got, ids, "every watcher of the stream got one response");
        for event in &events {
            assert_event(event, "fan/key", "one", first);
        }
        assert!(
            events_until_progress(session, first).await.is_empty(),
            "no watcher got the write twice"
        );
    }
    let (events, _) = collect_events(&mut range_session, 1).await;
    assert_event(&events[0], "fan/key", "one", first);

    let second = put(&mut kv, "fan/other", "two").await;
    let (events, _) = collect_events(&mut range_session, 1).await;
    assert_event(&events[0], "fan/other", "two", second);
    assert!(events_until_progress(&mut range_session, second).await.is_empty());
    for (session, _) in &mut streams {
        assert!(
            events_until_progress(session, second).await.is_empty(),
            "a write to another key reaches none of the key's watchers"
        );
    }
}
