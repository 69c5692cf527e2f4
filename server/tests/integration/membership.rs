//! Membership changes on clusters of real `ringkv` processes on 127.0.0.1:
//!
//! - a learner added with etcdctl joins (`--initial-cluster-state existing`),
//!   catches up, is promoted (through a follower, which asks the leader), and
//!   takes writes; MemberList shows each step;
//! - removing a follower, then the leader: the removed members exit, the cluster
//!   keeps taking writes;
//! - concurrent changes all apply (raft takes one at a time); a member whose
//!   peer URL was updated is reached at the new one;
//! - the errors of MemberAdd/Remove/Update/Promote are etcd 3.4's, code and
//!   message, for the same operations on a one-member etcd and ringkv.
//!
//! etcd's strict reconfiguration check refuses changes until the peers have
//! been connected for 5 s ("unhealthy cluster"): the tests retry through that.

use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::cluster_client::ClusterClient;
use ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;

use crate::support::cluster::Cluster;
use crate::support::{self, channel, get, put_request as put, Etcd, Ringkv};

/// Bounds every wait for the cluster to do something.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a removed member may take to exit (etcd's 1 s delay, and slack).
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const UNHEALTHY: &str = "etcdserver: unhealthy cluster";
const NOT_IN_SYNC: &str = "etcdserver: can only promote a learner member which is in sync with leader";

async fn members(endpoint: &str) -> Vec<pb::Member> {
    ClusterClient::new(channel(endpoint).await)
        .member_list(pb::MemberListRequest { linearizable: false })
        .await
        .expect("member list")
        .into_inner()
        .members
}

async fn status(endpoint: &str) -> pb::StatusResponse {
    MaintenanceClient::new(channel(endpoint).await)
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// Waits (bounded) until `endpoint`'s MemberList satisfies `done`.
async fn wait_members(endpoint: &str, what: &str, done: impl Fn(&[pb::Member]) -> bool) -> Vec<pb::Member> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let listed = members(endpoint).await;
        if done(&listed) {
            return listed;
        }
        assert!(Instant::now() < deadline, "{what}: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs etcdctl until it succeeds, retrying (bounded) while it fails with one
/// of `retry_on`; its output.
async fn etcdctl_until_ok(endpoint: &str, args: &[&str], retry_on: &[&str]) -> String {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let (ok, output) = support::etcdctl_output(endpoint, "10s", args, None);
        if ok {
            return output;
        }
        let retry = retry_on.iter().any(|error| output.contains(error));
        assert!(retry && Instant::now() < deadline, "etcdctl {args:?}: {output}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The member id in etcdctl's "Member <id> added to cluster <id>".
fn added_id(output: &str) -> u64 {
    let id = output
        .split_whitespace()
        .skip_while(|word| *word != "Member")
        .nth(1)
        .unwrap_or_else(|| panic!("no member id in {output:?}"));
    u64::from_str_radix(id, 16).unwrap()
}

fn find(members: &[pb::Member], id: u64) -> &pb::Member {
    members
        .iter()
        .find(|member| member.id == id)
        .unwrap_or_else(|| panic!("{id:x} not listed: {members:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_catches_up_is_promoted_and_takes_writes() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader().await;
    let leader_endpoint = cluster.endpoint(leader);
    let mut kv = support::kv_client(&leader_endpoint).await;
    for i in 0..20 {
        kv.put(put(&format!("before/{i:02}"), &format!("v{i}")))
            .await
            .expect("put");
    }
    let learner = cluster.add_slot();
    let everyone: Vec<usize> = (0..=learner).collect();

    // Not added yet: the cluster the joiner asks does not list it.
    let refused = cluster.spawn_joining(learner, &everyone);
    let (exit, log) = tokio::task::block_in_place(|| refused.failed(SETTLE_TIMEOUT));
    assert!(!exit.success());
    assert!(log.contains("member count is unequal"), "{log}");

    let peer_url = format!("--peer-urls={}", cluster.members[learner].peer_url());
    let add = ["member", "add", "m3", "--learner", &peer_url];
    let output = etcdctl_until_ok(&leader_endpoint, &add, &[UNHEALTHY]).await;
    assert!(output.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{output}");
    let id = added_id(&output);
    let listed = members(&leader_endpoint).await;
    let added = find(&listed, id);
    assert_eq!(listed.len(), 4);
    assert!(added.is_learner && added.name.is_empty() && added.client_ur_ls.is_empty());
    assert_eq!(added.peer_ur_ls, vec![cluster.members[learner].peer_url()]);

    let joining = cluster.spawn_joining(learner, &everyone);
    let process = tokio::task::block_in_place(|| joining.ready());
    cluster.started(learner, process);
    let learner_endpoint = cluster.endpoint(learner);
    // Serving means caught up: a serializable (local) read sees every earlier write.
    let mut learner_kv = support::kv_client(&learner_endpoint).await;
    let before = learner_kv
        .range(pb::RangeRequest {
            key: b"before/".to_vec(),
            range_end: support::prefix_end(b"before/"),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("serializable range on the learner")
        .into_inner();
    assert_eq!(before.count, 20);
    let learner_status = status(&learner_endpoint).await;
    assert!(learner_status.is_learner);
    assert_eq!(learner_status.header.unwrap().member_id, id);
    let published = wait_members(&leader_endpoint, "the learner publishes", |listed| {
        find(listed, id).name == "m3"
    })
    .await;
    assert_eq!(find(&published, id).client_ur_ls, vec![learner_endpoint.clone()]);
    assert!(find(&published, id).is_learner);
    // As in etcd, a learner serves clients only Status and serializable reads.
    let refused = learner_kv.put(put("on-learner", "no")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(refused.message(), "etcdserver: rpc not supported for learner");
    // And no stream but Snapshot.
    let mut watch = support::WatchSession::open(&learner_endpoint).await;
    watch
        .create(pb::WatchCreateRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await;
    let refused = watch.ended_with(SETTLE_TIMEOUT).await;
    assert_eq!(refused.message(), "etcdserver: rpc not supported for learner");
    let backup = tempfile::tempdir().unwrap();
    let file = backup.path().join("from-learner.db");
    let save = ["snapshot", "save", file.to_str().unwrap()];
    let (ok, output) = support::etcdctl_output(&learner_endpoint, "30s", &save, None);
    assert!(ok, "a learner serves Snapshot: {output}");

    // Called on a follower: it asks the leader whether the learner caught up.
    let follower_endpoint = cluster.endpoint((leader + 1) % 3);
    let promote = ["member", "promote", &format!("{id:x}")];
    let output = etcdctl_until_ok(&follower_endpoint, &promote, &[NOT_IN_SYNC]).await;
    assert!(output.contains("promoted"), "{output}");
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while status(&learner_endpoint).await.is_learner {
        assert!(Instant::now() < deadline, "the learner never applies its promotion");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for index in 0..=learner {
        wait_members(
            &cluster.endpoint(index),
            "every member applies the promotion",
            |listed| listed.len() == 4 && listed.iter().all(|member| !member.is_learner),
        )
        .await;
    }

    // A voter now: writes through it are acknowledged and read elsewhere.
    learner_kv
        .put(put("after", "promoted"))
        .await
        .expect("put through the promoted member");
    assert_eq!(
        get(&cluster.endpoint((leader + 1) % 3), "after").await,
        Some(b"promoted".to_vec())
    );
    let (ok, table) = support::etcdctl_output(&learner_endpoint, "10s", &["member", "list"], None);
    assert!(ok && table.contains(&format!("{id:x}, started, m3, ")), "{table}");

    // Restarted with the same flags, it starts from its WAL like any member.
    cluster.kill(learner);
    let restarted = cluster.spawn_joining(learner, &everyone);
    let process = tokio::task::block_in_place(|| restarted.ready());
    cluster.started(learner, process);
    assert_eq!(status(&learner_endpoint).await.header.unwrap().member_id, id);
    kv.put(put("after-restart", "yes")).await.expect("put");
    assert_eq!(get(&learner_endpoint, "after-restart").await, Some(b"yes".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_members_exit_and_the_cluster_keeps_taking_writes() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader().await;
    let leader_endpoint = cluster.endpoint(leader);
    let follower = (leader + 1) % 3;
    let follower_id = status(&cluster.endpoint(follower)).await.header.unwrap().member_id;

    let remove = ["member", "remove", &format!("{follower_id:x}")];
    let output = etcdctl_until_ok(&leader_endpoint, &remove, &[UNHEALTHY]).await;
    assert!(output.contains("removed from cluster"), "{output}");
    expect_exit(&mut cluster, follower);
    // Its data directory is of a removed member: it does not serve again.
    let restarted = cluster.spawn(follower);
    let (_, log) = tokio::task::block_in_place(|| restarted.failed(SETTLE_TIMEOUT));
    assert!(
        log.contains("the member has been permanently removed from the cluster"),
        "{log}"
    );
    let mut kv = support::kv_client(&leader_endpoint).await;
    kv.put(put("after-follower", "1"))
        .await
        .expect("two members take writes");
    assert_eq!(members(&leader_endpoint).await.len(), 2);

    // The leader removes itself: it hands leadership over and exits.
    let leader_id = status(&leader_endpoint).await.header.unwrap().member_id;
    let remaining = (0..3).find(|&index| index != leader && index != follower).unwrap();
    let remove = ["member", "remove", &format!("{leader_id:x}")];
    let output = etcdctl_until_ok(&leader_endpoint, &remove, &[UNHEALTHY]).await;
    assert!(output.contains("removed from cluster"), "{output}");
    expect_exit(&mut cluster, leader);
    let remaining_endpoint = cluster.endpoint(remaining);
    let remaining_id = status(&remaining_endpoint).await.header.unwrap().member_id;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while status(&remaining_endpoint).await.leader != remaining_id {
        assert!(Instant::now() < deadline, "the last member never leads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut kv = support::kv_client(&remaining_endpoint).await;
    kv.put(put("after-leader", "2"))
        .await
        .expect("the last member takes writes");
    let listed = members(&remaining_endpoint).await;
    assert_eq!(listed.iter().map(|m| m.id).collect::<Vec<_>>(), vec![remaining_id]);
}

/// Member `index` exits by itself, saying why.
fn expect_exit(cluster: &mut Cluster, index: usize) {
    let mut process = cluster.members[index].process.take().expect("the member runs");
    let exit = tokio::task::block_in_place(|| process.wait_exit(EXIT_TIMEOUT));
    let log = process.log.text();
    assert!(exit.is_some(), "removed member {index} still runs:\n{log}");
    assert!(
        log.contains("the member has been permanently removed from the cluster"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_errors_match_etcd_byte_for_byte() {
    // Peer URLs nothing listens on, the same for both servers.
    let urls: Vec<String> = (0..2)
        .map(|_| format!("http://127.0.0.1:{}", support::free_port()))
        .collect();
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let listen_peer = format!("http://127.0.0.1:{}", support::free_port());
    let ringkv = Ringkv::start(dir.path(), &["--listen-peer-urls", &listen_peer]);
    let from_etcd = error_scenario(&etcd.endpoint(), &urls).await;
    let from_ringkv = error_scenario(&ringkv.endpoint(), &urls).await;
    assert_eq!(from_ringkv, from_etcd);
    assert!(from_etcd.iter().any(|seen| seen.contains("too many learner members")));

    // etcdctl prints the same.
    let me = members(&ringkv.endpoint()).await[0].id;
    let promote = ["member", "promote", &format!("{me:x}")];
    let (_, etcd_says) = support::etcdctl_output(&etcd.endpoint(), "10s", &promote, None);
    let (_, ringkv_says) = support::etcdctl_output(&ringkv.endpoint(), "10s", &promote, None);
    assert_eq!(ringkv_says, etcd_says);
    assert!(ringkv_says.contains("Error: etcdserver: can only promote a learner member"));
}

/// etcd 3.4 answers a configuration change once applied but before raft has
/// advanced past it, and its raft silently drops a change proposed in that gap
/// (the call then times out; etcd 3.5 waits for the advance): pause between
/// changes so the comparison sees etcd's answers, not that race.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Each step's outcome: "ok" and the response's shape, or the gRPC code and message.
async fn error_scenario(endpoint: &str, urls: &[String]) -> Vec<String> {
    let mut client = ClusterClient::new(channel(endpoint).await);
    let list = client
        .member_list(pb::MemberListRequest { linearizable: false })
        .await
        .unwrap()
        .into_inner();
    let me = list.members[0].clone();
    let mut seen = vec![format!("list revision {}", list.header.unwrap().revision)];
    let error = |status: tonic::Status| format!("{:?}: {}", status.code(), status.message());
    let add = |peer_ur_ls: Vec<String>, is_learner| pb::MemberAddRequest { peer_ur_ls, is_learner };

    let promote_voter = client.member_promote(pb::MemberPromoteRequest { id: me.id }).await;
    settle().await;
    seen.push(promote_voter.map_or_else(error, |_| "ok".to_string()));
    let remove_unknown = client.member_remove(pb::MemberRemoveRequest { id: 0x1234 }).await;
    settle().await;
    seen.push(remove_unknown.map_or_else(error, |_| "ok".to_string()));
    let update_unknown = client
        .member_update(pb::MemberUpdateRequest {
            id: 0x1234,
            peer_ur_ls: vec![urls[1].clone()],
        })
        .await;
    settle().await;
    seen.push(update_unknown.map_or_else(error, |_| "ok".to_string()));
    let duplicate = client.member_add(add(me.peer_ur_ls.clone(), false)).await;
    settle().await;
    seen.push(duplicate.map_or_else(error, |_| "ok".to_string()));
    let bad_url = client.member_add(add(vec!["foo".to_string()], true)).await;
    settle().await;
    seen.push(bad_url.map_or_else(error, |_| "ok".to_string()));

    let added = client
        .member_add(add(vec![urls[0].clone()], true))
        .await
        .unwrap()
        .into_inner();
    let learner = added.member.unwrap();
    settle().await;
    seen.push(format!(
        "added {:?} {:?} {} of {}",
        learner.name,
        learner.peer_ur_ls,
        learner.is_learner,
        added.members.len()
    ));
    let second = client.member_add(add(vec![urls[1].clone()], true)).await;
    settle().await;
    seen.push(second.map_or_else(error, |_| "ok".to_string()));
    let not_in_sync = client.member_promote(pb::MemberPromoteRequest { id: learner.id }).await;
    settle().await;
    seen.push(not_in_sync.map_or_else(error, |_| "ok".to_string()));
    let removed = client
        .member_remove(pb::MemberRemoveRequest { id: learner.id })
        .await
        .unwrap()
        .into_inner();
    settle().await;
    seen.push(format!("removed: {} left", removed.members.len()));
    for _ in 0..2 {
        let again = client.member_remove(pb::MemberRemoveRequest { id: learner.id }).await;
        settle().await;
        seen.push(again.map_or_else(error, |_| "ok".to_string()));
    }
    let promote_removed = client.member_promote(pb::MemberPromoteRequest { id: learner.id }).await;
    settle().await;
    seen.push(promote_removed.map_or_else(error, |_| "ok".to_string()));
    seen
}

/// A membership call, retried (bounded) while the strict reconfiguration check
/// finds the peers connected for less than etcd's 5 s health interval.
async fn retry_unhealthy<T, F, Fut>(call: F) -> Result<T, tonic::Status>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match call().await {
            Err(status) if status.message() == UNHEALTHY && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            result => return result.map(tonic::Response::into_inner),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_all_apply_and_an_updated_member_is_reached_at_its_new_url() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader().await;
    let leader_endpoint = cluster.endpoint(leader);
    let client = ClusterClient::new(channel(&leader_endpoint).await);
    let add = |url: String, is_learner| {
        let client = client.clone();
        async move {
            let request = pb::MemberAddRequest {
                peer_ur_ls: vec![url],
                is_learner,
            };
            retry_unhealthy(|| {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.member_add(request).await }
            })
            .await
        }
    };
    // Two changes at once: raft takes one at a time, the second waits for it.
    let (learner, voter) = tokio::join!(
        add(format!("http://127.0.0.1:{}", support::free_port()), true),
        add(format!("http://127.0.0.1:{}", support::free_port()), false)
    );
    let learner = learner.expect("learner added").member.unwrap().id;
    let voter = voter.expect("voter added").member.unwrap().id;
    assert_eq!(members(&leader_endpoint).await.len(), 5);
    let remove = |id| {
        let mut client = client.clone();
        async move { client.member_remove(pb::MemberRemoveRequest { id }).await }
    };
    let (first, second) = tokio::join!(remove(learner), remove(voter));
    first.expect("learner removed");
    second.expect("unstarted voter removed");
    assert_eq!(members(&leader_endpoint).await.len(), 3);

    // Move a follower's peer URL: the others connect to the new one.
    let follower = (leader + 1) % 3;
    let follower_id = status(&cluster.endpoint(follower)).await.header.unwrap().member_id;
    let new_port = support::free_port();
    let new_url = format!("http://127.0.0.1:{new_port}");
    let update = [
        "member",
        "update",
        &format!("{follower_id:x}"),
        &format!("--peer-urls={new_url}"),
    ];
    let output = etcdctl_until_ok(&leader_endpoint, &update, &[]).await;
    assert!(output.contains("updated in cluster"), "{output}");
    let listed = members(&leader_endpoint).await;
    assert_eq!(find(&listed, follower_id).peer_ur_ls, vec![new_url]);
    cluster.kill(follower);
    // Restarted listening on the new port only (identity flags are the WAL's).
    cluster.members[follower].listen_peer_port = new_port;
    tokio::task::block_in_place(|| cluster.start_members(&[follower]));
    let mut kv = support::kv_client(&leader_endpoint).await;
    kv.put(put("moved", "yes")).await.expect("put");
    let mut moved = support::kv_client(&cluster.endpoint(follower)).await;
    let read = moved
        .range(pb::RangeRequest {
            key: b"moved".to_vec(),
            ..Default::default()
        })
        .await
        .expect("linearizable read on the moved member")
        .into_inner();
    assert_eq!(read.kvs[0].value, b"yes");
}
