//! Watch against real etcd: the same random writes go to etcd and to ringkv, with
//! the same watches open on both (live with prev_kv, filtered, from-key, and ones
//! started later from past revisions, also after a compaction). Every watch must
//! see exactly the same events (types, key-values, prev_kvs) and the same created
//! and canceled answers. Response boundaries may differ (etcd may batch caught-up
//! revisions differently) and are not compared. Debian's etcd is 3.4; the fields
//! compared here behave the same in 3.4 and 3.5.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::mvccpb;
use tonic::transport::Channel;

use crate::support::{self, prefix_end, WatchSession};

const WRITES: usize = 300;
const KEYS: [&str; 6] = ["a", "ab", "abc", "b", "ba", "c"];

fn random_write(rng: &mut StdRng) -> pb::TxnRequest {
    let op = |rng: &mut StdRng, key: &str| -> pb::RequestOp {
        let request = if rng.gen_bool(0.7) {
            pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: format!("v{}", rng.gen_range(0..1000)).into_bytes(),
                ..Default::default()
            })
        } else {
            let range_end = if rng.gen_bool(0.5) {
                prefix_end(key.as_bytes())
            } else {
                Vec::new()
            };
            pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end,
                ..Default::default()
            })
        };
        pb::RequestOp { request: Some(request) }
    };
    // One or two ops on keys that do not overlap (etcd refuses overlapping ones).
    let first = KEYS[rng.gen_range(0..KEYS.len())];
    let mut ops = vec![op(rng, first)];
    if rng.gen_bool(0.3) {
        let second = if first.starts_with('a') { "c" } else { "a" };
        if !matches!(&ops[0].request, Some(pb::request_op::Request::RequestDeleteRange(_))) || second == "c" {
            ops.push(op(rng, second));
        }
    }
    pb::TxnRequest {
        success: ops,
        ..Default::default()
    }
}

fn creates() -> Vec<pb::WatchCreateRequest> {
    use pb::watch_create_request::FilterType;
    vec![
        pb::WatchCreateRequest {
            key: b"a".to_vec(),
            range_end: prefix_end(b"a"),
            prev_kv: true,
            ..Default::default()
        },
        pb::WatchCreateRequest {
            key: b"b".to_vec(),
            filters: vec![FilterType::Nodelete as i32],
            ..Default::default()
        },
        pb::WatchCreateRequest {
            key: b"ab".to_vec(),
            range_end: vec![0],
            filters: vec![FilterType::Noput as i32],
            prev_kv: true,
            ..Default::default()
        },
    ]
}

/// What one server showed a watch: the created answer, then every event.
#[derive(Debug, PartialEq)]
struct Seen {
    created: (i64, bool, String),
    events: Vec<mvccpb::Event>,
    compacted: Option<i64>,
}

async fn watch(session: &mut WatchSession, create: pb::WatchCreateRequest, expected_events: Option<usize>) -> Seen {
    session.create(create).await;
    let created = session.next().await;
    assert!(created.created);
    let mut seen = Seen {
        created: (created.watch_id, created.canceled, created.cancel_reason),
        events: Vec::new(),
        compacted: None,
    };
    if seen.created.1 {
        return seen;
    }
    let Some(expected) = expected_events else {
        let response = session.next().await;
        seen.compacted = Some(response.compact_revision);
        return seen;
    };
    while seen.events.len() < expected {
        let response = session.next().await;
        assert_eq!(response.watch_id, seen.created.0);
        seen.events.extend(response.events);
    }
    seen
}

async fn run_writes(kv: &mut KvClient<Channel>, writes: &[pb::TxnRequest]) {
    for write in writes {
        kv.txn(write.clone()).await.expect("the write succeeds");
    }
}

/// Events of `creates()[i]` over the whole run, counted on etcd first.
async fn live_watches(endpoint: &str, writes: &[pb::TxnRequest]) -> (Vec<Vec<mvccpb::Event>>, WatchSession) {
    let mut kv = support::kv_client(endpoint).await;
    let mut session = WatchSession::open(endpoint).await;
    for create in creates() {
        session.create(create).await;
        assert!(session.next().await.created);
    }
    run_writes(&mut kv, writes).await;
    // The end marker: a put every watch sees (the NODELETE watch is on "b").
    let mut marker = kv
        .put(pb::PutRequest {
            key: b"b".to_vec(),
            value: b"end".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let end = marker.header.take().unwrap().revision;
    let mut per_watch: Vec<Vec<mvccpb::Event>> = vec![Vec::new(); 3];
    // Watch 0 (prefix "a") and 2 (deletes from "ab") do not see the marker: stop
    // once watch 1 has it and the others are past every revision before it.
    let mut done = [false; 3];
    for _ in 0..100_000 {
        if done.iter().all(|d| *d) {
            break;
        }
        let response = session.next_within(std::time::Duration::from_millis(500)).await;
        let Some(response) = response else {
            done = [true; 3]; // quiet: every event before the marker arrived
            continue;
        };
        let id = response.watch_id as usize;
        per_watch[id].extend(response.events);
        if per_watch[id]
            .last()
            .is_some_and(|e| e.kv.as_ref().unwrap().mod_revision == end)
        {
            done[id] = true;
        }
    }
    (per_watch, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_see_the_same_events_as_on_etcd() {
    let mut rng = StdRng::seed_from_u64(7);
    let writes: Vec<_> = (0..WRITES).map(|_| random_write(&mut rng)).collect();
    let etcd = support::Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);

    let (etcd_live, _etcd_session) = live_watches(&etcd.endpoint(), &writes).await;
    let (ringkv_live, _ringkv_session) = live_watches(&ringkv.endpoint(), &writes).await;
    for (i, (etcd_events, ringkv_events)) in etcd_live.iter().zip(&ringkv_live).enumerate() {
        assert!(!etcd_events.is_empty(), "watch {i} saw something on etcd");
        assert_eq!(ringkv_events, etcd_events, "live watch {i}");
    }

    // Watches started afterwards from past revisions replay the same history,
    // before and after a compaction (the compaction point itself keeps no deletes).
    for compact_at in [None, Some(WRITES as i64 / 2)] {
        let mut etcd_kv = support::kv_client(&etcd.endpoint()).await;
        let mut ringkv_kv = support::kv_client(&ringkv.endpoint()).await;
        if let Some(revision) = compact_at {
            let compact = pb::CompactionRequest {
                revision,
                physical: true,
            };
            etcd_kv.compact(compact.clone()).await.unwrap();
            ringkv_kv.compact(compact).await.unwrap();
        }
        for start_revision in [1, 2, WRITES as i64 / 2, WRITES as i64 / 2 + 1, WRITES as i64] {
            let compacted = compact_at.is_some_and(|c| start_revision < c);
            for create in creates() {
                let create = pb::WatchCreateRequest {
                    start_revision,
                    ..create
                };
                let mut etcd_session = WatchSession::open(&etcd.endpoint()).await;
                let expected = if compacted {
                    None
                } else {
                    let counted = watch(&mut etcd_session, create.clone(), Some(0)).await;
                    assert!(counted.events.is_empty());
                    // Count what etcd replays: read until quiet.
                    let mut events = Vec::new();
                    while let Some(r) = etcd_session.next_within(std::time::Duration::from_millis(300)).await {
                        events.extend(r.events);
                    }
                    Some(events)
                };
                let mut ringkv_session = WatchSession::open(&ringkv.endpoint()).await;
                let seen = watch(&mut ringkv_session, create.clone(), expected.as_ref().map(Vec::len)).await;
                match expected {
                    Some(events) => assert_eq!(seen.events, events, "replay of {create:?}"),
                    None => {
                        let etcd_seen = watch(&mut WatchSession::open(&etcd.endpoint()).await, create, None).await;
                        assert_eq!(seen.compacted, etcd_seen.compacted);
                        assert_eq!(seen.created.1, etcd_seen.created.1);
                    }
                }
            }
        }
    }
}
