//! etcd data in and out, against real etcd 3.4 processes: an etcd snapshot
//! restored into ringkv (`ringkvutl snapshot restore`'s code) serves every
//! retained revision as etcd did, with the compaction, the leases and a watch
//! from an old revision; ringkv's `snapshot save` is etcd's format, which
//! `etcdctl snapshot status` reads and `etcdctl snapshot restore` turns into
//! a data directory etcd serves the same history from; a kube-apiserver-shaped
//! history (CAS updates by mod_revision) keeps every resourceVersion both
//! ways; a damaged or truncated etcd snapshot is refused leaving nothing; a
//! stopped etcd member's data directory is imported when its db holds what its
//! WAL committed, and refused while etcd runs or when the db lags the WAL.

use std::path::{Path, PathBuf};

use ringkv_datadir::restore::RestoreError;
use ringkv_proto::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest,
};

use crate::snapshot_defrag::restore_into;
use crate::support::{etcdctl_output, kv_client, Etcd, Ringkv, WatchSession};

fn etcdctl(endpoint: &str, args: &[&str]) -> (bool, String) {
    etcdctl_output(endpoint, "30s", args, None)
}

fn ok(endpoint: &str, args: &[&str]) -> String {
    let (ok, out) = etcdctl(endpoint, args);
    assert!(ok, "etcdctl {args:?}: {out}");
    out
}

/// The history of the issue: puts, overwrites, deletes, a lease with keys, a
/// txn, a compaction, and writes after it. Returns the lease id (hex) and
/// the compaction's revision.
fn write_history(endpoint: &str) -> (String, i64) {
    ok(endpoint, &["put", "a", "1"]);
    ok(endpoint, &["put", "a", "2"]);
    ok(endpoint, &["put", "b", "x"]);
    ok(endpoint, &["del", "a"]);
    let granted = ok(endpoint, &["lease", "grant", "600"]);
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease <id> granted")
        .to_string();
    ok(endpoint, &["put", "c", "leased", "--lease", &lease]);
    ok(endpoint, &["put", "d", "leased", "--lease", &lease]);
    let (txn_ok, out) = etcdctl_output(endpoint, "30s", &["txn"], Some("\nput t1 v1\nput t2 v2\ndel b\n\n\n"));
    assert!(txn_ok, "{out}");
    ok(endpoint, &["put", "e", "1"]);
    let compact_revision = 6;
    ok(endpoint, &["compact", &compact_revision.to_string(), "--physical"]);
    ok(endpoint, &["put", "a", "3"]);
    ok(endpoint, &["put", "e", "2"]);
    ok(endpoint, &["del", "d"]);
    ok(endpoint, &["put", "f", "leased", "--lease", &lease]);
    (lease, compact_revision)
}

/// The store's revision, from `endpoint status`.
fn revision(endpoint: &str) -> i64 {
    let out = ok(endpoint, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    status[0]["Status"]["header"]["revision"].as_i64().expect("a revision")
}

/// Every key at `rev` as `etcdctl get -w json` prints it, without the header
/// (member and cluster ids differ).
fn keys_at(endpoint: &str, rev: i64) -> serde_json::Value {
    let out = ok(
        endpoint,
        &["get", "", "--from-key", "--rev", &rev.to_string(), "-w", "json"],
    );
    let mut value: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    value.as_object_mut().expect("an object").remove("header");
    value
}

/// No compaction: every revision from the first is retained.
const NEVER_COMPACTED: i64 = 1;

/// Both serve the same keys at every revision from the compaction to now,
/// and refuse the revision before the compaction alike.
fn assert_same_history(expected: &str, actual: &str, compact_revision: i64) {
    let now = revision(expected);
    assert_eq!(revision(actual), now, "the current revision");
    for rev in compact_revision..=now {
        assert_eq!(keys_at(actual, rev), keys_at(expected, rev), "keys at revision {rev}");
    }
    if compact_revision == NEVER_COMPACTED {
        return;
    }
    let before = (compact_revision - 1).to_string();
    let (expected_ok, expected_out) = etcdctl(expected, &["get", "a", "--rev", &before]);
    let (actual_ok, actual_out) = etcdctl(actual, &["get", "a", "--rev", &before]);
    assert!(!expected_ok && !actual_ok, "{expected_out}\n{actual_out}");
    assert!(
        actual_out.contains("required revision has been compacted"),
        "{actual_out}"
    );
}

/// `lease timetolive --keys`' granted TTL and attached keys, sorted (the
/// remaining time differs, and etcd lists the keys in Go's map order).
fn lease_state(endpoint: &str, lease: &str) -> String {
    let out = ok(endpoint, &["lease", "timetolive", lease, "--keys"]);
    let (granted, rest) = out.split_once(", remaining").expect("etcdctl's lease line");
    let keys = rest.split_once("attached keys").map_or("", |(_, keys)| keys);
    let mut keys: Vec<&str> = keys
        .trim()
        .trim_start_matches("([")
        .trim_end_matches("])")
        .split_whitespace()
        .collect();
    keys.sort_unstable();
    format!("{granted} {keys:?}")
}

/// Every event a watch of all keys from `start` delivers up to revision `now`.
async fn watch_events(endpoint: &str, start: i64, now: i64) -> Vec<(i32, Vec<u8>, i64, i64, Vec<u8>)> {
    let mut session = WatchSession::open(endpoint).await;
    session
        .create(WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: start,
            ..Default::default()
        })
        .await;
    let mut events = Vec::new();
    while events
        .last()
        .is_none_or(|event: &(i32, Vec<u8>, i64, i64, Vec<u8>)| event.2 < now)
    {
        for event in session.next().await.events {
            let kv = event.kv.expect("an event's key-value");
            events.push((event.r#type, kv.key, kv.mod_revision, kv.version, kv.value));
        }
    }
    events
}

fn snapshot_save(endpoint: &str, to: &Path) {
    let out = ok(endpoint, &["snapshot", "save", to.to_str().unwrap()]);
    assert!(out.contains("Snapshot saved at"), "{out}");
}

/// A data directory `etcdctl snapshot restore` makes for etcd's default
/// member (the flags `Etcd` starts with).
pub(crate) fn etcd_restore(snapshot: &Path, data_dir: &Path) {
    let (restored, out) = etcdctl_output(
        "127.0.0.1:1",
        "30s",
        &[
            "snapshot",
            "restore",
            snapshot.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        None,
    );
    assert!(restored, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_restores_into_ringkv_with_every_revision_lease_and_watch() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    let (lease, compact_revision) = write_history(&etcd.endpoint());
    let snapshot = dir.path().join("etcd.db");
    snapshot_save(&etcd.endpoint(), &snapshot);

    let restored = dir.path().join("ringkv");
    let summary = restore_into(&snapshot, &restored).expect("an etcd snapshot restores");
    assert!(summary.etcd_format && summary.hash_checked);
    assert_eq!(summary.compact_revision, compact_revision);
    let ringkv = Ringkv::start(&restored, &[]);
    assert_same_history(&etcd.endpoint(), &ringkv.endpoint(), compact_revision);
    assert_eq!(
        lease_state(&ringkv.endpoint(), &lease),
        lease_state(&etcd.endpoint(), &lease)
    );
    let now = revision(&etcd.endpoint());
    assert_eq!(
        watch_events(&ringkv.endpoint(), compact_revision + 1, now).await,
        watch_events(&etcd.endpoint(), compact_revision + 1, now).await,
        "a watch from a revision taken on etcd continues on ringkv"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ringkv_snapshot_is_etcds_format_and_restores_into_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(&dir.path().join("ringkv"), &[]);
    let (lease, compact_revision) = write_history(&ringkv.endpoint());
    let snapshot = dir.path().join("ringkv.db");
    snapshot_save(&ringkv.endpoint(), &snapshot);

    // etcd 3.4 from the same history: the same revision; ringkv's file holds
    // etcd 3.5's meta bucket, two keys more (term and confState).
    let etcd = Etcd::start();
    write_history(&etcd.endpoint());
    let etcd_snapshot = dir.path().join("etcd.db");
    snapshot_save(&etcd.endpoint(), &etcd_snapshot);
    let status = |file: &PathBuf| -> serde_json::Value {
        let out = ok(
            "127.0.0.1:1",
            &["snapshot", "status", file.to_str().unwrap(), "-w", "json"],
        );
        serde_json::from_str(out.lines().last().unwrap()).expect("JSON")
    };
    let (ours, theirs) = (status(&snapshot), status(&etcd_snapshot));
    assert_eq!(ours["revision"], theirs["revision"], "{ours} {theirs}");
    assert_eq!(
        ours["totalKey"].as_i64().unwrap(),
        theirs["totalKey"].as_i64().unwrap() + 2,
        "{ours} {theirs}"
    );

    let restored = dir.path().join("etcd-restored");
    etcd_restore(&snapshot, &restored);
    let from_ringkv = Etcd::start_with(&["--data-dir", restored.to_str().unwrap()]);
    assert_same_history(&ringkv.endpoint(), &from_ringkv.endpoint(), compact_revision);
    assert_eq!(
        lease_state(&from_ringkv.endpoint(), &lease),
        lease_state(&ringkv.endpoint(), &lease)
    );

    // The way back: ringkv's own snapshot restores into ringkv.
    let back = dir.path().join("ringkv-restored");
    restore_into(&snapshot, &back).expect("ringkv's snapshot restores into ringkv");
    let ringkv_again = Ringkv::start(&back, &[]);
    assert_same_history(&ringkv.endpoint(), &ringkv_again.endpoint(), compact_revision);
}

const PODS: usize = 20;
const UPDATE_ROUNDS: usize = 5;

/// kube-apiserver's writes: create if absent (create_revision 0), update
/// and delete only at the mod_revision last read (its resourceVersion).
async fn write_registry(endpoint: &str) {
    let mut client = kv_client(endpoint).await;
    let key = |pod: usize| format!("/registry/pods/default/pod-{pod:03}").into_bytes();
    let mut versions = [0i64; PODS];
    for round in 0..=UPDATE_ROUNDS {
        for (pod, version) in versions.iter_mut().enumerate() {
            let (target, target_union) = if round == 0 {
                (compare::CompareTarget::Create, compare::TargetUnion::CreateRevision(0))
            } else {
                (compare::CompareTarget::Mod, compare::TargetUnion::ModRevision(*version))
            };
            let put = PutRequest {
                key: key(pod),
                value: format!("{{\"pod\":{pod},\"round\":{round}}}").into_bytes(),
                ..Default::default()
            };
            let response = client
                .txn(TxnRequest {
                    compare: vec![Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: target as i32,
                        key: key(pod),
                        target_union: Some(target_union),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(put)),
                    }],
                    ..Default::default()
                })
                .await
                .expect("txn")
                .into_inner();
            assert!(response.succeeded, "the CAS at the version last read succeeds");
            *version = response.header.unwrap().revision;
        }
    }
    for (pod, version) in versions.iter().enumerate().step_by(4) {
        let response = client
            .txn(TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: key(pod),
                    target_union: Some(compare::TargetUnion::ModRevision(*version)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: key(pod),
                        ..Default::default()
                    })),
                }],
                ..Default::default()
            })
            .await
            .expect("txn")
            .into_inner();
        assert!(response.succeeded);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_history_keeps_every_resource_version_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    write_registry(&etcd.endpoint()).await;
    let snapshot = dir.path().join("etcd.db");
    snapshot_save(&etcd.endpoint(), &snapshot);
    restore_into(&snapshot, &dir.path().join("ringkv")).expect("restore");
    let ringkv = Ringkv::start(&dir.path().join("ringkv"), &[]);
    assert_same_history(&etcd.endpoint(), &ringkv.endpoint(), NEVER_COMPACTED);

    // And back: ringkv's snapshot of it, restored by etcdctl, served by etcd.
    let back = dir.path().join("ringkv.db");
    snapshot_save(&ringkv.endpoint(), &back);
    let restored = dir.path().join("etcd-restored");
    etcd_restore(&back, &restored);
    let etcd_again = Etcd::start_with(&["--data-dir", restored.to_str().unwrap()]);
    assert_same_history(&etcd.endpoint(), &etcd_again.endpoint(), NEVER_COMPACTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_truncated_etcd_snapshot_is_refused_leaving_no_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    write_history(&etcd.endpoint());
    let snapshot = dir.path().join("etcd.db");
    snapshot_save(&etcd.endpoint(), &snapshot);
    let bytes = std::fs::read(&snapshot).unwrap();

    let cases: [(&str, Vec<u8>); 3] = [
        ("truncated", bytes[..bytes.len() - 1000].to_vec()),
        (
            "torn in the middle",
            [&bytes[..8192], &vec![0; 4096][..], &bytes[12288..]].concat(),
        ),
        ("one bit flipped", {
            let mut flipped = bytes.clone();
            flipped[5000] ^= 1;
            flipped
        }),
    ];
    for (what, damaged) in cases {
        let file = dir.path().join(format!("{what}.db"));
        std::fs::write(&file, &damaged).unwrap();
        let data_dir = dir.path().join(what);
        let refused = restore_into(&file, &data_dir);
        assert!(
            matches!(
                refused,
                Err(RestoreError::HashMismatch { .. } | RestoreError::Trailer { .. })
            ),
            "{what}: {refused:?}"
        );
        let message = refused.unwrap_err().to_string();
        assert!(
            message.contains("sha256") || message.contains("trailer"),
            "{what}: {message}"
        );
        assert!(!data_dir.exists(), "{what}: no data directory is left");
        let staging = dir.path().join(format!("{what}.restoring"));
        assert!(!staging.exists(), "{what}: no staging directory is left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_data_dir_imports_only_when_its_db_holds_everything_its_wal_committed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("etcd-data");
    // The db is committed only at a stop (or every 10 minutes): what the
    // history writes is in the WAL alone until then.
    let flags = [
        "--data-dir",
        data.to_str().unwrap(),
        "--backend-batch-interval",
        "10m",
        "--backend-batch-limit",
        "1000000",
    ];
    let etcd = Etcd::start_with(&flags);
    write_history(&etcd.endpoint());
    let refused = restore_into(&data, &dir.path().join("while-running"));
    assert!(matches!(refused, Err(RestoreError::EtcdRunning { .. })), "{refused:?}");
    drop(etcd); // kill -9: the db lags the WAL

    let refused = restore_into(&data, &dir.path().join("behind"));
    assert!(
        matches!(refused, Err(RestoreError::EtcdDbBehind { requests, .. }) if requests > 0),
        "{refused:?}"
    );
    assert!(refused.unwrap_err().to_string().contains("etcdctl snapshot save"));
    assert!(!dir.path().join("behind").exists());

    // etcd replays its WAL at start and writes its db when stopped.
    let etcd = Etcd::start_with(&flags);
    let now = revision(&etcd.endpoint());
    let expected: Vec<serde_json::Value> = (6..=now).map(|rev| keys_at(&etcd.endpoint(), rev)).collect();
    etcd.stop();
    let summary = restore_into(&data, &dir.path().join("whole")).expect("a whole db imports");
    assert!(summary.etcd_format);
    let ringkv = Ringkv::start(&dir.path().join("whole"), &[]);
    let actual: Vec<serde_json::Value> = (6..=now).map(|rev| keys_at(&ringkv.endpoint(), rev)).collect();
    assert_eq!(actual, expected);
}
