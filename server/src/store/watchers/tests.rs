//! The store core's watchers against a real MVCC store, without channels: each
//! test drives commands and writes and reads the outbox.

use ringkv_engine::mvcc::{KeySpan, Mvcc, RangeEnd};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::mvccpb;

use super::*;

struct Harness {
    _dir: tempfile::TempDir,
    mvcc: Mvcc,
    watchers: Watchers,
}

const STREAM: StreamId = 7;

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut mvcc = Mvcc::open(&dir.path().join("s.db")).unwrap();
        mvcc.capture_changes();
        Harness {
            _dir: dir,
            mvcc,
            watchers: Watchers::new(1),
        }
    }

    fn command(&mut self, command: WatchCommand) {
        self.watchers.handle(0, command, &self.mvcc);
    }

    fn create(&mut self, request: pb::WatchCreateRequest) {
        self.command(WatchCommand::Create {
            stream: STREAM,
            request,
            auth: Default::default(),
        });
    }

    fn put(&mut self, key: &str, value: &str) {
        let mut txn = self.mvcc.write();
        txn.put(key.as_bytes(), value.as_bytes(), 0).unwrap();
        txn.end();
        self.publish();
    }

    fn delete(&mut self, key: &str) {
        let mut txn = self.mvcc.write();
        txn.delete_range(KeySpan {
            key: key.as_bytes(),
            end: RangeEnd::Key,
        })
        .unwrap();
        txn.end();
        self.publish();
    }

    fn publish(&mut self) {
        let changes = self.mvcc.take_changes();
        self.watchers.publish(&changes, &self.mvcc);
    }

    /// Runs catch-up passes until nothing is left to do (bounded).
    fn catch_up(&mut self) {
        for _ in 0..1000 {
            if !self.watchers.has_catch_up_work() {
                return;
            }
            self.watchers.catch_up(&self.mvcc);
        }
        panic!("catch-up did not finish");
    }

    fn take(&mut self) -> Vec<NoticeBody> {
        let notices = self.watchers.take_outbox(0);
        let credit: usize = notices.iter().map(|n| n.credit_bytes).sum();
        self.command(WatchCommand::Consumed {
            stream: STREAM,
            credit_bytes: credit,
        });
        notices.into_iter().map(|n| n.body).collect()
    }
}

fn events(body: &NoticeBody) -> Vec<mvccpb::Event> {
    match body {
        NoticeBody::Events { events, .. } => events
            .iter()
            .map(|e| prost::Message::decode(e.as_ref()).unwrap())
            .collect(),
        other => panic!("expected events, got {other:?}"),
    }
}

fn keys_and_revisions(bodies: &[NoticeBody]) -> Vec<(String, i64)> {
    bodies
        .iter()
        .filter(|b| matches!(b, NoticeBody::Events { .. }))
        .flat_map(events)
        .map(|e| {
            let kv = e.kv.unwrap();
            (String::from_utf8(kv.key).unwrap(), kv.mod_revision)
        })
        .collect()
}

fn prefix(key: &str) -> pb::WatchCreateRequest {
    let mut end = key.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    pb::WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        range_end: end,
        ..Default::default()
    }
}

#[test]
fn auto_ids_count_from_zero_and_duplicates_are_refused() {
    let mut h = Harness::new();
    h.create(prefix("a"));
    h.create(prefix("b"));
    h.create(pb::WatchCreateRequest {
        watch_id: 1,
        ..prefix("c")
    });
    let bodies = h.take();
    let ids: Vec<_> = bodies
        .iter()
        .map(|b| match b {
            NoticeBody::Created {
                watch_id,
                cancel_reason,
                ..
            } => (*watch_id, *cancel_reason),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, vec![(0, None), (1, None), (-1, Some(DUPLICATE_WATCH_ID))]);
}

#[test]
fn live_events_reach_only_matching_watchers_in_revision_order() {
    let mut h = Harness::new();
    h.create(prefix("a"));
    h.create(pb::WatchCreateRequest {
        key: b"b".to_vec(),
        ..Default::default()
    });
    h.take();
    h.put("a1", "x");
    h.put("b", "y");
    h.put("b2", "z");
    h.delete("a1");
    let bodies = h.take();
    assert_eq!(
        keys_and_revisions(&bodies),
        vec![("a1".into(), 2), ("b".into(), 3), ("a1".into(), 5)]
    );
}

#[test]
fn a_past_start_revision_replays_history_then_continues_live_without_gap_or_duplicate() {
    let mut h = Harness::new();
    for i in 0..5 {
        h.put(&format!("k{i}"), "v");
    }
    h.create(pb::WatchCreateRequest {
        start_revision: 3,
        ..prefix("k")
    });
    h.put("k5", "v");
    h.catch_up();
    h.put("k6", "v");
    let revisions: Vec<i64> = keys_and_revisions(&h.take()).into_iter().map(|(_, r)| r).collect();
    assert_eq!(revisions, vec![3, 4, 5, 6, 7, 8]);
}

#[test]
fn filters_and_prev_kv_shape_events() {
    let mut h = Harness::new();
    h.put("k", "old");
    h.create(pb::WatchCreateRequest {
        key: b"k".to_vec(),
        prev_kv: true,
        filters: vec![pb::watch_create_request::FilterType::Noput as i32],
        ..Default::default()
    });
    h.take();
    h.put("k", "new");
    h.delete("k");
    let bodies = h.take();
    assert_eq!(bodies.len(), 1, "the put is filtered out");
    let event = &events(&bodies[0])[0];
    assert_eq!(event.r#type, mvccpb::event::EventType::Delete as i32);
    assert_eq!(event.prev_kv.as_ref().unwrap().value, b"new");
}

#[test]
fn a_compacted_start_revision_cancels_with_the_compaction_point() {
    let mut h = Harness::new();
    for _ in 0..4 {
        h.put("k", "v");
    }
    h.mvcc.compact(4).unwrap();
    h.create(pb::WatchCreateRequest {
        start_revision: 2,
        ..prefix("k")
    });
    h.catch_up();
    let bodies = h.take();
    assert!(matches!(bodies[0], NoticeBody::Created { watch_id: 0, .. }));
    assert_eq!(
        bodies[1],
        NoticeBody::Compacted {
            watch_id: 0,
            compact_revision: 4
        }
    );
    h.command(WatchCommand::Cancel {
        stream: STREAM,
        watch_id: 0,
    });
    assert_eq!(h.take(), vec![NoticeBody::Nothing], "the watcher is gone already");
}

#[test]
fn a_stream_out_of_window_falls_behind_and_catches_up_in_order() {
    let mut h = Harness::new();
    h.create(prefix("k"));
    h.take();
    let value = "v".repeat(64 * 1024);
    // Nobody consumes: the window fills, the watcher falls back to unsynced.
    let mut outbox = Vec::new();
    for i in 0..200 {
        h.put(&format!("k{i}"), &value);
        outbox.extend(h.watchers.take_outbox(0));
    }
    assert!(!h.watchers.unsynced.is_empty(), "the watcher fell behind");
    let in_flight: usize = outbox.iter().map(|n| n.credit_bytes).sum();
    assert!(
        in_flight < STREAM_WINDOW_BYTES + 128 * 1024,
        "memory stays within the window"
    );
    let mut bodies: Vec<NoticeBody> = outbox.into_iter().map(|n| n.body).collect();
    h.command(WatchCommand::Consumed {
        stream: STREAM,
        credit_bytes: in_flight,
    });
    for _ in 0..100 {
        h.catch_up();
        bodies.extend(h.take());
        if h.watchers.unsynced.is_empty() {
            break;
        }
    }
    let revisions: Vec<i64> = keys_and_revisions(&bodies).into_iter().map(|(_, r)| r).collect();
    assert_eq!(revisions, (2..202).collect::<Vec<_>>());
}

#[test]
fn progress_requests_wait_until_every_watcher_is_synced_and_started() {
    let mut h = Harness::new();
    h.put("k", "v");
    h.create(prefix("k"));
    h.command(WatchCommand::Progress { stream: STREAM });
    h.watchers.send_deferred_progress(&h.mvcc);
    let bodies = h.take();
    assert_eq!(bodies.len(), 2, "created, then the request's empty answer: {bodies:?}");
    h.put("k", "w");
    h.watchers.send_deferred_progress(&h.mvcc);
    let bodies = h.take();
    assert_eq!(
        bodies.last().unwrap(),
        &NoticeBody::Progress {
            watch_id: INVALID_WATCH_ID,
            revision: 3
        },
        "sent once the store reached the watch's start revision"
    );
}

#[test]
fn ten_thousand_watchers_of_one_prefix_get_one_write() {
    let mut h = Harness::new();
    for _ in 0..10_000 {
        h.create(prefix("/registry/pods/"));
    }
    h.create(prefix("/registry/nodes/"));
    h.take();
    h.put("/registry/pods/p", "v");
    let bodies = h.take();
    assert_eq!(bodies.len(), 10_000);
}

#[test]
fn a_replaced_store_is_read_from_the_next_revision_or_cancels_if_compacted_there() {
    // The leader's store: the same first writes, then more.
    let dir = tempfile::tempdir().unwrap();
    let leader_store = |compact_to: Option<i64>| {
        let path = dir.path().join(format!("leader-{compact_to:?}.db"));
        let mut leader = Mvcc::open(&path).unwrap();
        for key in ["a1", "a2", "a3", "a4", "a5"] {
            let mut txn = leader.write();
            txn.put(key.as_bytes(), b"v", 0).unwrap();
            txn.end();
        }
        if let Some(revision) = compact_to {
            leader.compact(revision).unwrap();
        }
        leader.capture_changes();
        leader
    };

    let mut h = Harness::new();
    h.create(prefix("a"));
    h.put("a1", "v");
    h.put("a2", "v");
    let before = h.take();
    assert_eq!(keys_and_revisions(&before), vec![("a1".into(), 2), ("a2".into(), 3)]);
    let old_revision = h.mvcc.current_revision();
    h.mvcc = leader_store(None);
    h.watchers.store_replaced(old_revision);
    h.catch_up();
    assert_eq!(
        keys_and_revisions(&h.take()),
        vec![("a3".into(), 4), ("a4".into(), 5), ("a5".into(), 6)],
        "no gap and no repeat across the replacement"
    );

    let mut h = Harness::new();
    h.create(prefix("a"));
    h.put("a1", "v");
    h.take();
    let old_revision = h.mvcc.current_revision();
    h.mvcc = leader_store(Some(5));
    h.watchers.store_replaced(old_revision);
    h.catch_up();
    assert_eq!(
        h.take(),
        vec![NoticeBody::Compacted {
            watch_id: 0,
            compact_revision: 5
        }]
    );
}
