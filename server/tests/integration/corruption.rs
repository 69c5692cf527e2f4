//! etcd's corruption checks on 3-member clusters of real processes: one
//! member's store is damaged on purpose while it is stopped, and the check at
//! start (`--experimental-initial-corrupt-check`) or the leader's periodic one
//! (`--experimental-corrupt-check-time`) must catch it, with etcd 3.4's
//! messages, error codes and alarm (compared by hand with etcd 3.4.23 on a
//! damaged bbolt file; see docs/architecture.md, "Corruption checks").
//!
//! The damage: one revision's value rewritten in the stopped member's page
//! file through the engine's B-tree, so the file stays valid (checksums, tree,
//! revisions, key index) and the member opens as usual; only what that
//! revision holds differs, so its HashKV differs from its peers' at every
//! revision from that one on.

use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use ringkv_datadir::layout::STORE_FILE;
use ringkv_engine::btree::Tree;
use ringkv_engine::mvcc::{Revision, RevisionKeys};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ringkv_proto::mvccpb::KeyValue;

use crate::support::cluster::Cluster;
use crate::support::{self, etcdctl_output, http_get, put_request, START_TIMEOUT};

const INITIAL_CHECK: &str = "--experimental-initial-corrupt-check=true";
const PERIODIC_CHECK: &str = "--experimental-corrupt-check-time=1s";
/// The leader checks every second: a few checks' time, and a member's catch-up.
const ALARM_TIMEOUT: Duration = Duration::from_secs(15);

/// Rewrites the value that revision `revision` wrote to `key` in the page
/// store of a stopped member (record layout: docs/mvcc-format.md, a flags
/// byte and the `mvccpb.KeyValue`).
fn damage(data_dir: &Path, revision: i64, key: &str) {
    let mut tree = Tree::open(&data_dir.join(STORE_FILE)).expect("the page store opens");
    let record_key = RevisionKeys::default().key(Revision::new(revision, 0));
    let record = tree
        .get(&record_key)
        .expect("the revision table reads")
        .expect("the revision is in the page store");
    let (&flags, body) = record.split_first().expect("a record");
    assert_eq!(flags, 0, "a put's record, not a tombstone's");
    let mut kv = KeyValue::decode(body).expect("a key-value");
    assert_eq!(kv.key, key.as_bytes(), "revision {revision} wrote {key}");
    kv.value = b"damaged on purpose".to_vec();
    let mut damaged = vec![flags];
    kv.encode(&mut damaged).expect("a Vec grows");
    tree.insert(&record_key, &damaged).expect("the record is rewritten");
    tree.commit().expect("the page store commits");
}

/// Writes a few keys through member 0, `victim` among them, and compacts
/// through member `durable_on` to the first write with `physical`: its answer
/// comes once that member's page store holds the compaction durably, and with
/// it every write before it. The revision that wrote `victim`.
async fn write_history(cluster: &Cluster, durable_on: usize) -> i64 {
    let mut kv = support::kv_client(&cluster.endpoint(0)).await;
    let mut revisions = Vec::new();
    for (key, value) in [("k0", "v0"), ("k1", "v1"), ("victim", "kept as written"), ("k2", "v2")] {
        let put = kv.put(put_request(key, value)).await.expect("a put").into_inner();
        revisions.push(put.header.expect("a header").revision);
    }
    let mut kv = support::kv_client(&cluster.endpoint(durable_on)).await;
    let compact = pb::CompactionRequest {
        revision: revisions[0],
        physical: true,
    };
    kv.compact(compact).await.expect("a physical compaction");
    revisions[2]
}

async fn maintenance(cluster: &Cluster, index: usize) -> MaintenanceClient<tonic::transport::Channel> {
    MaintenanceClient::new(support::channel(&cluster.endpoint(index)).await)
}

async fn member_id(cluster: &Cluster, index: usize) -> u64 {
    let status = cluster.status(index).await.expect("status");
    status.header.expect("a header").member_id
}

/// The alarms member `index` lists.
async fn alarms(cluster: &Cluster, index: usize) -> Vec<pb::AlarmMember> {
    let list = maintenance(cluster, index)
        .await
        .alarm(pb::AlarmRequest::default())
        .await
        .expect("an alarm list");
    list.into_inner().alarms
}

fn corrupt() -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: 0,
        alarm: pb::AlarmType::Corrupt as i32,
    }
}

/// Waits (bounded) until member `index` lists etcd's CORRUPT alarm, member 0.
async fn wait_corrupt(cluster: &Cluster, index: usize) {
    let deadline = Instant::now() + ALARM_TIMEOUT;
    loop {
        let listed = alarms(cluster, index).await;
        if listed == [corrupt()] {
            return;
        }
        assert!(Instant::now() < deadline, "no CORRUPT alarm: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn etcdctl(cluster: &Cluster, index: usize, args: &[&str]) -> (bool, String) {
    etcdctl_output(&cluster.endpoint(index), "5s", args, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_damaged_store_refuses_to_start_and_the_others_serve_on() {
    // kubeadm's flag on every member; a new member has nothing to compare.
    let mut cluster = Cluster::start(3, &[INITIAL_CHECK]);
    cluster.wait_for_leader().await;
    let victim = 2;
    let victim_revision = write_history(&cluster, victim).await;
    let victim_id = member_id(&cluster, victim).await;

    // Undamaged, the check passes; a peer that cannot answer is a warning.
    cluster.kill(1);
    cluster.kill(victim);
    let restarted = cluster.spawn(victim).ready();
    let log = restarted.log.text();
    assert!(log.contains("failed hash kv request"), "{log}");
    assert!(
        log.contains("initial corruption checking passed; no corruption"),
        "{log}"
    );
    cluster.started(victim, restarted);
    cluster.start_members(&[1]);

    cluster.kill(victim);
    damage(&cluster.members[victim].data_dir, victim_revision, "victim");
    let (status, log) = cluster.spawn(victim).failed(START_TIMEOUT);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("ringkv: {victim_id:x} found data inconsistency with peers")),
        "{log}"
    );
    assert_eq!(
        log.matches("found different hash values from remote peer").count(),
        2,
        "both peers differ: {log}"
    );

    // The others serve on (once they lead without the victim, which may have
    // led), and no alarm is raised: the check at start only stops its member.
    cluster.wait_for_leader().await;
    let mut kv = support::kv_client(&cluster.endpoint(0)).await;
    kv.put(put_request("after", "the refused start")).await.expect("a put");
    assert_eq!(
        support::get(&cluster.endpoint(1), "after").await,
        Some(b"the refused start".to_vec())
    );
    assert_eq!(alarms(&cluster, 0).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_check_raises_corrupt_which_refuses_writes_as_etcd_until_disarmed() {
    let mut cluster = Cluster::stopped(3, &[]);
    let starting: Vec<_> = (0..3)
        .map(|index| cluster.spawn_adding(index, &[PERIODIC_CHECK]))
        .collect();
    for (index, starting) in starting.into_iter().enumerate() {
        cluster.started(index, starting.ready());
    }
    let leader = cluster.wait_for_leader().await;
    let victim = (leader + 1) % 3;
    let victim_revision = write_history(&cluster, victim).await;
    assert_eq!(alarms(&cluster, leader).await, [], "consistent members raise nothing");

    cluster.kill(victim);
    damage(&cluster.members[victim].data_dir, victim_revision, "victim");
    let restarted = cluster.spawn_adding(victim, &[PERIODIC_CHECK]).ready();
    cluster.started(victim, restarted);
    wait_corrupt(&cluster, leader).await;

    // etcd's corrupt applier: writes, compactions and lease calls are refused
    // with DataLoss "etcdserver: corrupt cluster"; reads are served.
    for index in 0..3 {
        let mut kv = support::kv_client(&cluster.endpoint(index)).await;
        let refused = kv.put(put_request("k0", "new")).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::DataLoss, "{refused:?}");
        assert_eq!(refused.message(), "etcdserver: corrupt cluster");
    }
    for args in [
        &["put", "k0", "new"][..],
        &["del", "k1"],
        &["compaction", "3"],
        &["lease", "grant", "60"],
    ] {
        let (ok, out) = etcdctl(&cluster, leader, args);
        assert!(!ok && out.contains("etcdserver: corrupt cluster"), "{args:?}: {out}");
    }
    let (ok, out) = etcdctl(&cluster, victim, &["get", "k0", "--print-value-only"]);
    assert!(ok && out.trim() == "v0", "{out}");
    let (ok, out) = etcdctl(&cluster, leader, &["alarm", "list"]);
    assert!(
        ok && out.trim() == "alarm:CORRUPT",
        "etcd 3.4 prints member 0 so: {out}"
    );
    let (ok, status) = etcdctl(&cluster, leader, &["endpoint", "status", "-w", "json"]);
    assert!(ok && status.contains("\"errors\":[\"alarm:CORRUPT \"]"), "{status}");
    let addr = format!("127.0.0.1:{}", cluster.members[leader].client_port)
        .parse()
        .unwrap();
    assert_eq!(
        http_get(addr, "/health"),
        (503, "{\"health\":\"false\",\"reason\":\"ALARM CORRUPT\"}".to_string())
    );
    let (code, readyz) = http_get(addr, "/readyz?verbose");
    assert_eq!(code, 503);
    assert!(readyz.contains("[-]data_corruption failed"), "{readyz}");

    // Disarmed, the next check finds the damage again.
    let (ok, out) = etcdctl(&cluster, leader, &["alarm", "disarm"]);
    assert!(ok && out.trim() == "alarm:CORRUPT", "{out}");
    wait_corrupt(&cluster, leader).await;

    // The alarm is stored with the data: restarted without the check, the
    // cluster still refuses writes, until the alarm is disarmed.
    for index in 0..3 {
        cluster.kill(index);
    }
    cluster.start_members(&[0, 1, 2]);
    cluster.wait_for_leader().await;
    assert_eq!(alarms(&cluster, 0).await, [corrupt()]);
    let (ok, out) = etcdctl(&cluster, 0, &["put", "k0", "new"]);
    assert!(!ok && out.contains("etcdserver: corrupt cluster"), "{out}");
    let (ok, out) = etcdctl(&cluster, 0, &["alarm", "disarm"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(&cluster, 0, &["put", "k0", "new"]);
    assert!(ok, "{out}");
    assert_eq!(alarms(&cluster, 2).await, []);
}
