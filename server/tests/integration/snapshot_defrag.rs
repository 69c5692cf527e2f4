//! Snapshot and Defragment against a real `ringkv` process, with writers running
//! while they work: `etcdctl snapshot save` gets a copy in etcd's format that
//! holds every write acknowledged before it and ends with etcd's sha256
//! trailer, and the copy imports as a page store on its own; `etcdctl defrag` gives the space back without
//! losing a write made during it, also across a kill -9; compact + defrag +
//! `alarm disarm` recovers from NOSPACE; and a saved snapshot restores (what
//! `ringkvutl snapshot restore` runs) into a data directory a new member serves
//! the same data from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringkv_datadir::restore::{self, RestoreError};
use ringkv_datadir::wal::Identity;
use ringkv_engine::btree::Tree;
use ringkv_engine::mvcc::{KeySpan, Mvcc, RangeEnd, RangeOptions};
use ringkv_etcdfile::bbolt::read::Reader;
use ringkv_etcdfile::import::import;
use ringkv_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest, StatusRequest};
use ringkv_proto::ringkvpb::Membership;
use sha2::{Digest, Sha256};

use crate::support::cluster::Cluster;
use crate::support::{etcdctl_output, kv_client, Ringkv};

/// etcdctl's exit status and output (see `support::etcdctl_output`); snapshot
/// and defrag run while writers load the machine, hence the longer timeout.
fn etcdctl(endpoint: &str, args: &[&str]) -> (bool, String) {
    etcdctl_output(endpoint, "60s", args, None)
}

fn value_for(key: usize, round: usize) -> Vec<u8> {
    // Every 20th value spans overflow pages; the rest fit a leaf.
    let len = if key.is_multiple_of(20) { 9000 } else { 300 };
    let mut value = format!("{key}/{round}/").into_bytes();
    value.resize(len, b'a' + (key % 26) as u8);
    value
}

async fn put_all(endpoint: &str, keys: std::ops::Range<usize>, round: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut tasks = Vec::new();
    let keys: Vec<usize> = keys.collect();
    for chunk in keys.chunks(keys.len().div_ceil(8).max(1)) {
        let (endpoint, chunk) = (endpoint.to_string(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut client = kv_client(&endpoint).await;
            let mut written = BTreeMap::new();
            for k in chunk {
                let (key, value) = (format!("data/{k:05}").into_bytes(), value_for(k, round));
                client
                    .put(PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("put");
                written.insert(key, value);
            }
            written
        }));
    }
    let mut written = BTreeMap::new();
    for task in tasks {
        written.extend(task.await.unwrap());
    }
    written
}

/// Puts distinct keys under `live/` until `stop`; returns what was acknowledged.
fn spawn_writer(endpoint: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<BTreeMap<Vec<u8>, Vec<u8>>> {
    tokio::spawn(async move {
        let mut client = kv_client(&endpoint).await;
        let mut acknowledged = BTreeMap::new();
        // Bounded: the test stops it long before this.
        for i in 0..1_000_000usize {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (key, value) = (format!("live/{i:07}").into_bytes(), value_for(i, 0));
            let put = PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            };
            client.put(put).await.expect("puts go on during snapshot and defrag");
            acknowledged.insert(key, value);
        }
        acknowledged
    })
}

async fn read_all(endpoint: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut client = kv_client(endpoint).await;
    let response = client
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    response.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

async fn db_size(endpoint: &str) -> i64 {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut maintenance = ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient::new(channel);
    maintenance
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .db_size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_copies_every_acknowledged_write_while_writers_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ringkv::start(&dir.path().join("data"), &[]);
    let endpoint = server.endpoint();
    let written = put_all(&endpoint, 0..3000, 0).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(endpoint.clone(), Arc::clone(&stop));
    let path = dir.path().join("snapshot.db");
    let saved = {
        let (endpoint, path) = (server.addr.to_string(), path.clone());
        tokio::task::spawn_blocking(move || etcdctl(&endpoint, &["snapshot", "save", path.to_str().unwrap()]))
            .await
            .unwrap()
    };
    stop.store(true, Ordering::Relaxed);
    let during = writer.await.unwrap();
    assert!(saved.0, "snapshot save failed: {}\n{}", saved.1, server.log.text());
    assert!(saved.1.contains("Snapshot saved at"), "{}", saved.1);

    // etcd's trailer: the sha256 of everything before it.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() % 4096, 32, "whole pages, then 32 bytes of sha256");
    let (image, trailer) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(image).as_slice(), trailer);

    // The copy is etcd's backend file: imported, it is a page store of its
    // own, whole, holding every write acknowledged before the call (and none
    // torn by the writes during it).
    let copy_path = dir.path().join("copy.db");
    let file = std::fs::File::open(&path).unwrap();
    let db = Reader::open(file, image.len() as u64).expect("an etcd backend file");
    drop(import(&db, &copy_path).expect("it imports"));
    Tree::open(&copy_path)
        .unwrap()
        .check()
        .expect("the copy passes the integrity check");
    let copy = Mvcc::open(&copy_path).unwrap();
    let all = copy
        .range(
            KeySpan {
                key: &[0],
                end: RangeEnd::ToEnd,
            },
            RangeOptions::default(),
        )
        .unwrap();
    let in_copy: BTreeMap<Vec<u8>, Vec<u8>> = all.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    for (key, value) in &written {
        assert_eq!(in_copy.get(key), Some(value), "{}", String::from_utf8_lossy(key));
    }
    for (key, value) in in_copy.iter().filter(|(key, _)| key.starts_with(b"live/")) {
        assert_eq!(during.get(key), Some(value), "a write the copy holds was acknowledged");
    }
    // The server is fine afterwards, and no pin is left behind: a defrag gives
    // back what the writes during the copy released.
    assert_eq!(read_all(&endpoint).await.len(), written.len() + during.len());
    let (ok, out) = etcdctl(&server.addr.to_string(), &["defrag"]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_gives_the_space_back_and_loses_no_write_made_during_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Ringkv::start(&data_dir, &[]);
    let endpoint = server.endpoint();
    let mut expected = put_all(&endpoint, 0..4000, 0).await;
    // Overwrite most keys, then compact the old versions away: lots of free
    // pages scattered through the file.
    expected.extend(put_all(&endpoint, 0..3600, 1).await);
    let mut client = kv_client(&endpoint).await;
    let revision = client
        .range(RangeRequest {
            key: b"data/00000".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    client
        .compact(CompactionRequest {
            revision,
            physical: true,
        })
        .await
        .expect("compact");
    let before = db_size(&endpoint).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(endpoint.clone(), Arc::clone(&stop));
    let defrag = {
        let endpoint = server.addr.to_string();
        tokio::task::spawn_blocking(move || etcdctl(&endpoint, &["defrag"]))
            .await
            .unwrap()
    };
    stop.store(true, Ordering::Relaxed);
    let during = writer.await.unwrap();
    assert!(defrag.0, "{}\n{}", defrag.1, server.log.text());
    assert!(defrag.1.contains("Finished defragmenting etcd member"), "{}", defrag.1);
    let after = db_size(&endpoint).await;
    assert!(after * 3 < before * 2, "dbSize {before} -> {after}");
    expected.extend(during);
    assert!(read_all(&endpoint).await == expected, "contents changed by the defrag");

    // The trimmed file and everything written during the defrag survive a crash.
    server.kill();
    let server = Ringkv::start(&data_dir, &[]);
    assert!(
        read_all(&server.endpoint()).await == expected,
        "contents changed by the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_defrag_and_disarm_recover_from_nospace() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ringkv::start(&dir.path().join("data"), &["--quota-backend-bytes", "1500000"]);
    let endpoint = server.addr.to_string();
    let value = "x".repeat(20_000);
    let mut refused = false;
    for i in 0..200 {
        let (ok, out) = etcdctl(&endpoint, &["put", &format!("k{i}"), &value]);
        if !ok {
            assert!(out.contains("etcdserver: mvcc: database space exceeded"), "{out}");
            refused = true;
            break;
        }
    }
    assert!(refused, "a 1.5 MB quota cannot hold 4 MB of values");
    let (ok, out) = etcdctl(&endpoint, &["del", "k", "--prefix"]);
    assert!(ok, "{out}");
    let (_, revision) = etcdctl(&endpoint, &["get", "k0", "-w", "fields"]);
    let revision = revision
        .lines()
        .find_map(|line| line.strip_prefix("\"Revision\" : "))
        .expect("a revision")
        .trim()
        .to_string();
    let (ok, out) = etcdctl(&endpoint, &["compact", &revision, "--physical"]);
    assert!(ok, "{out}");
    // Compacted but not defragmented, the file still holds its high-water mark.
    let (ok, out) = etcdctl(&endpoint, &["alarm", "disarm"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(&endpoint, &["put", "big", &value]);
    assert!(!ok && out.contains("database space exceeded"), "{out}");
    let (ok, out) = etcdctl(&endpoint, &["defrag"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(&endpoint, &["alarm", "disarm"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(&endpoint, &["put", "big", &value]);
    assert!(ok, "after compact, defrag and disarm: {out}");
    let (_, alarms) = etcdctl(&endpoint, &["alarm", "list"]);
    assert_eq!(alarms.trim(), "");
}

/// `restore::restore`, as `ringkvutl snapshot restore` runs it, with ringkv's
/// default flags (--name default, peer URL http://localhost:2380, this member
/// alone).
pub(crate) fn restore_into(
    file: &std::path::Path,
    data_dir: &std::path::Path,
) -> Result<restore::SnapshotSummary, RestoreError> {
    let peer_urls = ["http://localhost:2380".to_string()];
    let (identity, membership) = restore::restored_member("default", &peer_urls, None, "etcd-cluster").unwrap();
    assert_eq!(
        (identity.member_id, identity.cluster_id),
        (0x8e9e05c52164694d, 0xcdf818194e3a8c32),
        "etcd's ids for these flags"
    );
    restore_member(file, data_dir, identity, membership)
}

fn restore_member(
    file: &std::path::Path,
    data_dir: &std::path::Path,
    identity: Identity,
    membership: Membership,
) -> Result<restore::SnapshotSummary, RestoreError> {
    restore::restore(file, data_dir, identity, &membership, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_snapshot_serves_the_same_data_from_a_new_member() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ringkv::start(&dir.path().join("data"), &[]);
    let endpoint = server.addr.to_string();
    let written = put_all(&server.endpoint(), 0..500, 0).await;
    let (ok, lease) = etcdctl(&endpoint, &["lease", "grant", "600"]);
    assert!(ok, "{lease}");
    let lease = lease.split_whitespace().nth(1).expect("lease <id> granted").to_string();
    let (ok, out) = etcdctl(&endpoint, &["put", "leased", "v", "--lease", &lease]);
    assert!(ok, "{out}");
    let before = read_all(&server.endpoint()).await;
    let file = dir.path().join("snapshot.db");
    let (ok, out) = etcdctl(&endpoint, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    server.kill();

    // A damaged copy is refused, and no data directory is left behind.
    let mut damaged = std::fs::read(&file).unwrap();
    damaged[5000] ^= 1;
    let damaged_file = dir.path().join("damaged.db");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let refused = restore_into(&damaged_file, &dir.path().join("from-damaged"));
    assert!(matches!(refused, Err(RestoreError::HashMismatch { .. })), "{refused:?}");
    assert!(!dir.path().join("from-damaged").exists());
    let refused = restore_into(&file, &dir.path().join("data"));
    assert!(matches!(refused, Err(RestoreError::Exists(_))), "{refused:?}");

    let restored = dir.path().join("restored");
    let summary = restore_into(&file, &restored).expect("restore");
    assert!(summary.hash_checked);
    assert_eq!(summary.keys, written.len() + 1);
    let server = Ringkv::start(&restored, &[]);
    assert_eq!(read_all(&server.endpoint()).await, before);
    let mut client = kv_client(&server.endpoint()).await;
    let put = client
        .put(PutRequest {
            key: b"after".to_vec(),
            value: b"restore".to_vec(),
            ..Default::default()
        })
        .await
        .expect("a restored member takes writes")
        .into_inner();
    assert_eq!(put.header.unwrap().revision, summary.revision + 1, "revisions go on");
    let (ok, leases) = etcdctl(&server.addr.to_string(), &["lease", "list"]);
    assert!(ok && leases.contains(&lease), "{leases}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_snapshot_restored_on_three_members_makes_a_cluster_with_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ringkv::start(&dir.path().join("data"), &[]);
    let endpoint = server.addr.to_string();
    put_all(&server.endpoint(), 0..300, 0).await;
    let before = read_all(&server.endpoint()).await;
    let file = dir.path().join("snapshot.db");
    let (ok, out) = etcdctl(&endpoint, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    server.kill();

    // As with etcdutl: every member from the same file, each with its own
    // name and peer URL and the same --initial-cluster.
    let mut cluster = Cluster::stopped(3, &[]);
    let mut revision = 0;
    for member in &cluster.members {
        let (identity, membership) = restore::restored_member(
            &member.name,
            &[member.peer_url()],
            Some(cluster.initial_cluster()),
            "etcd-cluster",
        )
        .unwrap();
        revision = restore_member(&file, &member.data_dir, identity, membership)
            .expect("restore")
            .revision;
    }
    cluster.start_members(&[0, 1, 2]);
    cluster.wait_for_leader().await;
    for index in 0..3 {
        assert_eq!(read_all(&cluster.endpoint(index)).await, before);
    }
    let (ok, members) = etcdctl(&cluster.endpoint(0), &["member", "list"]);
    assert!(ok && members.lines().count() == 3, "{members}");
    let put = kv_client(&cluster.endpoint(1))
        .await
        .put(PutRequest {
            key: b"after".to_vec(),
            value: b"restore".to_vec(),
            ..Default::default()
        })
        .await
        .expect("the restored cluster takes writes")
        .into_inner();
    assert_eq!(put.header.unwrap().revision, revision + 1, "revisions go on");
    cluster.wait_converged(Duration::from_secs(30)).await;
}
