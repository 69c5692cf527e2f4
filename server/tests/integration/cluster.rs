//! Replication: clusters of real `ringkv` processes on 127.0.0.1.
//!
//! - writes on any member (followers forward) are read back linearizably on
//!   every member, and all members converge to one HashKV;
//! - member ids, cluster id and MemberList match etcd's for the same flags;
//! - a killed leader (also two of five members), a minority left alone, a paused leader: no acknowledged
//!   write is lost, and the cluster serves again once a quorum is back; a
//!   member without a leader ends the streams that require one, as etcd does;
//! - MoveLeader hands leadership over; etcdctl's cluster commands work;
//! - a follower behind the leader's log catches up from a streamed snapshot.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::cluster_client::ClusterClient;
use ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

use crate::support::cluster::Cluster;
use crate::support::{self, channel, get, put_request as put};

/// Bounds every wait for the cluster to do something (elect, converge).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

async fn member_list(endpoint: &str) -> pb::MemberListResponse {
    ClusterClient::new(channel(endpoint).await)
        .member_list(pb::MemberListRequest { linearizable: false })
        .await
        .expect("member list")
        .into_inner()
}

/// A member as MemberList shows it: (id, name, peer URLs, client URLs, learner).
type Listed = (u64, String, Vec<String>, Vec<String>, bool);

/// The members, sorted: MemberList without its order.
fn members_of(response: &pb::MemberListResponse) -> Vec<Listed> {
    let mut members: Vec<_> = response
        .members
        .iter()
        .map(|m| {
            (
                m.id,
                m.name.clone(),
                m.peer_ur_ls.clone(),
                m.client_ur_ls.clone(),
                m.is_learner,
            )
        })
        .collect();
    members.sort();
    members
}

/// Waits (bounded) until `endpoint` lists every member with its client URLs
/// (each member publishes them through raft once it has started).
async fn wait_member_list(endpoint: &str, size: usize) -> pb::MemberListResponse {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let list = member_list(endpoint).await;
        if list.members.len() == size && list.members.iter().all(|m| !m.client_ur_ls.is_empty()) {
            return list;
        }
        assert!(Instant::now() < deadline, "members never all published: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_any_member_are_read_on_every_member() {
    let cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader().await;
    for writer in 0..3 {
        let mut kv = support::kv_client(&cluster.endpoint(writer)).await;
        for seq in 0..20 {
            let response = kv
                .put(put(&format!("k/{writer}/{seq}"), &format!("v{seq}")))
                .await
                .expect("a put through any member is acknowledged")
                .into_inner();
            let header = response.header.unwrap();
            assert_ne!(header.raft_term, 0);
            // A linearizable read on another member sees the write at once.
            let reader = (writer + 1 + seq % 2) % 3;
            assert_eq!(
                get(&cluster.endpoint(reader), &format!("k/{writer}/{seq}")).await,
                Some(format!("v{seq}").into_bytes()),
                "member {reader} reads what member {writer} acknowledged"
            );
        }
    }
    let (_, revision) = cluster.wait_converged(SETTLE_TIMEOUT).await;
    assert_eq!(revision, 61, "60 puts after the empty store's revision 1");

    // Every member answers with its own id and the cluster's.
    let mut ids = Vec::new();
    for index in 0..3 {
        let status = cluster.status(index).await.expect("status");
        let header = status.header.unwrap();
        ids.push((header.cluster_id, header.member_id));
        assert_eq!(status.raft_applied_index, status.raft_index);
    }
    assert!(ids.iter().all(|(cluster_id, _)| *cluster_id == ids[0].0));
    let mut member_ids: Vec<u64> = ids.iter().map(|(_, member)| *member).collect();
    member_ids.sort();
    member_ids.dedup();
    assert_eq!(member_ids.len(), 3);

    // MemberList is the same on every member, with every client URL published.
    let list = wait_member_list(&cluster.endpoint(0), 3).await;
    for index in 1..3 {
        assert_eq!(
            members_of(&wait_member_list(&cluster.endpoint(index), 3).await),
            members_of(&list)
        );
    }
    for member in &cluster.members {
        let listed = list.members.iter().find(|m| m.name == member.name).expect("listed");
        assert_eq!(listed.peer_ur_ls, vec![member.peer_url()]);
        assert_eq!(listed.client_ur_ls, vec![member.endpoint()]);
    }
}

/// etcd derives member and cluster ids from the flags; so does ringkv. Run a
/// ringkv cluster and then an etcd cluster with the same names, URLs and
/// token, and compare what MemberList says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_member_list_match_etcd_for_the_same_flags() {
    // etcd reuses the ports ringkv had: they come from `support::free_port`,
    // below the ephemeral range, so no other test's connection can take one
    // between ringkv's kill and etcd's bind.
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader().await;
    let ours = wait_member_list(&cluster.endpoint(0), 3).await;
    let ours_cluster_id = ours.header.as_ref().unwrap().cluster_id;
    let initial_cluster = cluster
        .members
        .iter()
        .map(|member| format!("{}={}", member.name, member.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    for index in 0..3 {
        cluster.kill(index);
    }
    // A killed process's sockets outlive it a little (io_uring tears down
    // asynchronously): wait until etcd can bind the same ports.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for member in &cluster.members {
        for port in [member.client_port, member.peer_port] {
            while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "port {port} stays busy");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let mut etcds: Vec<(support::KillOnDrop, std::path::PathBuf)> = Vec::new();
    for member in &cluster.members {
        let log = dir.path().join(format!("{}.log", member.name));
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(dir.path().join(&member.name))
            .args(["--listen-client-urls", &member.endpoint()])
            .args(["--advertise-client-urls", &member.endpoint()])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("etcd is installed (Debian package etcd-server)");
        etcds.push((support::KillOnDrop(child), log));
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let theirs = loop {
        let attempt = async {
            let channel = Channel::from_shared(cluster.endpoint(0))
                .ok()?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2))
                .connect()
                .await
                .ok()?;
            let list = ClusterClient::new(channel)
                .member_list(pb::MemberListRequest { linearizable: false })
                .await
                .ok()?
                .into_inner();
            let published = list.members.iter().all(|m| !m.client_ur_ls.is_empty());
            (list.members.len() == 3 && published).then_some(list)
        };
        if let Some(list) = attempt.await {
            break list;
        }
        if Instant::now() >= deadline {
            let mut logs = String::new();
            for (child, log) in &mut etcds {
                let exited = child.0.try_wait().unwrap();
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                logs += &format!("\n{} (exited: {exited:?}):\n{text}", log.display());
            }
            panic!("etcd's cluster did not come up{logs}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(members_of(&ours), members_of(&theirs));
    assert_eq!(ours_cluster_id, theirs.header.unwrap().cluster_id);
}

type Acknowledged = Arc<Mutex<BTreeMap<String, String>>>;

/// Puts unique keys through `endpoint` until `stop`, recording acknowledged ones.
async fn write_until(endpoint: String, writer: usize, stop: Instant, acked: Acknowledged) {
    let mut seq = 0u64;
    while Instant::now() < stop {
        let Some(mut kv) = support::kv_client_once(&endpoint).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while Instant::now() < stop {
            let key = format!("w/{writer}/{seq:06}");
            let value = format!("{seq}");
            seq += 1;
            match tokio::time::timeout(Duration::from_secs(3), kv.put(put(&key, &value))).await {
                Ok(Ok(_)) => {
                    acked.lock().unwrap().insert(key, value);
                }
                Ok(Err(_)) | Err(_) => break, // reconnect; the outcome of this put is unknown
            }
        }
    }
}

/// Every acknowledged key, read linearizably from `endpoint`.
async fn assert_all_present(endpoint: &str, acked: &BTreeMap<String, String>) {
    let mut kv = support::kv_client(endpoint).await;
    let response = kv
        .range(pb::RangeRequest {
            key: b"w/".to_vec(),
            range_end: support::prefix_end(b"w/"),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    let stored: BTreeMap<String, String> = response
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key.clone()).unwrap(),
                String::from_utf8(kv.value.clone()).unwrap(),
            )
        })
        .collect();
    for (key, value) in acked {
        assert_eq!(stored.get(key), Some(value), "acknowledged {key} lost on {endpoint}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader().await;
    let acked = Acknowledged::default();
    let stop = Instant::now() + Duration::from_secs(6);
    let writers: Vec<_> = (0..6)
        .map(|writer| {
            let endpoint = cluster.endpoint(writer % 3);
            tokio::spawn(write_until(endpoint, writer, stop, Arc::clone(&acked)))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acked.lock().unwrap().len();
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    for writer in writers {
        writer.await.unwrap();
    }
    let after = acked.lock().unwrap().len();
    assert!(
        after > before,
        "the survivors kept accepting writes ({before} then {after})"
    );
    cluster.start_members(&[leader]);
    cluster.wait_for_leader().await;
    cluster.wait_converged(SETTLE_TIMEOUT).await;
    let acked = acked.lock().unwrap().clone();
    for index in 0..3 {
        assert_all_present(&cluster.endpoint(index), &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_lose_two_including_the_leader_and_keep_every_write() {
    let mut cluster = Cluster::start(5, &[]);
    let leader = cluster.wait_for_leader().await;
    let second = (leader + 2) % 5;
    let acked = Acknowledged::default();
    let stop = Instant::now() + Duration::from_secs(6);
    let writers: Vec<_> = (0..5)
        .map(|writer| tokio::spawn(write_until(cluster.endpoint(writer), writer, stop, Arc::clone(&acked))))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acked.lock().unwrap().len();
    cluster.kill(leader);
    cluster.kill(second);
    let new_leader = cluster.wait_for_leader().await;
    assert!(new_leader != leader && new_leader != second);
    for writer in writers {
        writer.await.unwrap();
    }
    let after = acked.lock().unwrap().len();
    assert!(
        after > before,
        "three of five kept accepting writes ({before} then {after})"
    );
    cluster.start_members(&[leader, second]);
    cluster.wait_converged(SETTLE_TIMEOUT).await;
    let acked = acked.lock().unwrap().clone();
    for index in 0..5 {
        assert_all_present(&cluster.endpoint(index), &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_write_and_a_full_restart_keeps_everything() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader().await;
    let mut kv = support::kv_client(&cluster.endpoint(0)).await;
    for seq in 0..50 {
        kv.put(put(&format!("w/0/{seq:06}"), &format!("{seq}")))
            .await
            .expect("put");
    }
    // Watch streams on member 0, one requiring a leader (kube-apiserver's kind).
    let mut requiring = support::WatchSession::open_requiring_leader(&cluster.endpoint(0)).await;
    let mut plain = support::WatchSession::open(&cluster.endpoint(0)).await;
    for session in [&mut requiring, &mut plain] {
        session
            .create(pb::WatchCreateRequest {
                key: b"w/".to_vec(),
                range_end: support::prefix_end(b"w/"),
                ..Default::default()
            })
            .await;
        assert!(session.next().await.created);
    }
    cluster.kill(1);
    cluster.kill(2);
    // Alone, member 0 has no quorum: a write is never acknowledged. It fails
    // (no leader, or etcd's request timeout) or the client gives up.
    let lone = tokio::time::timeout(Duration::from_secs(9), kv.put(put("w/0/lone", "x"))).await;
    assert!(!matches!(lone, Ok(Ok(_))), "a minority acknowledged a write: {lone:?}");
    // A linearizable read cannot be served either; a serializable one can.
    let mut serializable = pb::RangeRequest {
        key: b"w/0/000049".to_vec(),
        serializable: true,
        ..Default::default()
    };
    let local = kv
        .range(serializable.clone())
        .await
        .expect("serializable read")
        .into_inner();
    assert_eq!(local.kvs[0].value, b"49");
    // clientv3's WithRequireLeader (gRPC metadata `hasleader: true`, as
    // kube-apiserver's watches send it) fails at once once no leader is known.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut request = tonic::Request::new(serializable.clone());
        request.metadata_mut().insert("hasleader", "true".parse().unwrap());
        match kv.range(request).await {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert_eq!(status.message(), "etcdserver: no leader");
                break;
            }
            Ok(_) => {
                assert!(Instant::now() < deadline, "the lone member still believes in a leader");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // etcd ends a stream that requires a leader once none has been seen for 3
    // election timeouts (1 s each here), and refuses a new one at once; other
    // streams stay.
    let ended = requiring.ended_with(SETTLE_TIMEOUT).await;
    assert_eq!(
        (ended.code(), ended.message()),
        (tonic::Code::Unavailable, "etcdserver: no leader")
    );
    let mut refused = support::WatchSession::open_requiring_leader(&cluster.endpoint(0)).await;
    refused
        .create(pb::WatchCreateRequest {
            key: b"w/".to_vec(),
            ..Default::default()
        })
        .await;
    let refused = refused.ended_with(SETTLE_TIMEOUT).await;
    assert_eq!(refused.message(), "etcdserver: no leader");
    assert!(
        plain.next_within(Duration::from_millis(500)).await.is_none(),
        "still open, quiet"
    );
    let mut leases = ringkv_proto::etcdserverpb::lease_client::LeaseClient::new(channel(&cluster.endpoint(0)).await);
    let mut request = tonic::Request::new(pb::LeaseLeasesRequest {});
    request.metadata_mut().insert("hasleader", "true".parse().unwrap());
    let status = leases.lease_leases(request).await.expect_err("no leader");
    assert_eq!(status.message(), "etcdserver: no leader");

    serializable.serializable = false;
    let linearizable = tokio::time::timeout(Duration::from_secs(3), kv.range(serializable)).await;
    assert!(
        !matches!(linearizable, Ok(Ok(_))),
        "a minority served a linearizable read"
    );

    // Every member down, then all back at once.
    cluster.kill(0);
    cluster.start_members(&[0, 1, 2]);
    cluster.wait_for_leader().await;
    let acked: BTreeMap<String, String> = (0..50).map(|seq| (format!("w/0/{seq:06}"), format!("{seq}"))).collect();
    for index in 0..3 {
        assert_all_present(&cluster.endpoint(index), &acked).await;
    }
    let mut kv = support::kv_client(&cluster.endpoint(1)).await;
    kv.put(put("w/after", "restart"))
        .await
        .expect("writes again with a quorum");
    cluster.wait_converged(SETTLE_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_steps_down_when_it_wakes() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader().await;
    cluster.signal(leader, libc::SIGSTOP);
    let others: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
    // The others elect a new leader among themselves and take writes.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut kv = support::kv_client(&cluster.endpoint(others[0])).await;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(3), kv.put(put("w/paused", "1"))).await;
        if matches!(attempt, Ok(Ok(_))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write without the paused leader: {attempt:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.signal(leader, libc::SIGCONT);
    let now_leading = cluster.wait_for_leader().await;
    assert_ne!(now_leading, leader, "the woken member follows the new leader");
    cluster.wait_converged(SETTLE_TIMEOUT).await;
    assert_eq!(get(&cluster.endpoint(leader), "w/paused").await, Some(b"1".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_hands_over_and_etcdctl_sees_the_cluster() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader().await;
    let target = (leader + 1) % 3;
    let target_id = cluster.status(target).await.unwrap().header.unwrap().member_id;

    // A follower refuses, as etcd's does.
    let follower = (leader + 2) % 3;
    let refused = MaintenanceClient::new(channel(&cluster.endpoint(follower)).await)
        .move_leader(pb::MoveLeaderRequest { target_id })
        .await
        .expect_err("a follower cannot move the leader");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(refused.message(), "etcdserver: not leader");
    let unknown = MaintenanceClient::new(channel(&cluster.endpoint(leader)).await)
        .move_leader(pb::MoveLeaderRequest { target_id: 42 })
        .await
        .expect_err("not a member");
    assert_eq!(unknown.message(), "etcdserver: bad leader transferee");

    MaintenanceClient::new(channel(&cluster.endpoint(leader)).await)
        .move_leader(pb::MoveLeaderRequest { target_id })
        .await
        .expect("the leader hands over");
    assert_eq!(cluster.wait_for_leader().await, target);

    let endpoints = (0..3)
        .map(|index| cluster.endpoint(index))
        .collect::<Vec<_>>()
        .join(",");
    wait_member_list(&cluster.endpoint(0), 3).await;
    let (ok, text) = support::etcdctl_output(&endpoints, "5s", &["member", "list"], None);
    assert!(ok, "{text}");
    for member in &cluster.members {
        assert!(
            text.contains(&format!(
                "started, {}, {}, {}, false",
                member.name,
                member.peer_url(),
                member.endpoint()
            )),
            "{text}"
        );
    }
    let (ok, text) = support::etcdctl_output(&cluster.endpoint(0), "5s", &["endpoint", "status", "--cluster"], None);
    assert!(ok, "{text}");
    assert_eq!(text.lines().filter(|line| line.contains("3.5.")).count(), 3, "{text}");
    assert_eq!(text.matches(", true, false,").count(), 1, "exactly one leader: {text}");
    let (ok, text) = support::etcdctl_output(&cluster.endpoint(0), "5s", &["endpoint", "health", "--cluster"], None);
    assert!(ok, "{text}");
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");
    let (ok, text) = support::etcdctl_output(&cluster.endpoint(0), "5s", &["endpoint", "hashkv", "--cluster"], None);
    assert!(ok, "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    let back_id = cluster.status(leader).await.unwrap().header.unwrap().member_id;
    let (ok, text) = support::etcdctl_output(&endpoints, "10s", &["move-leader", &format!("{back_id:x}")], None);
    assert!(ok && text.contains("Leadership transferred"), "{text}");
    assert_eq!(cluster.wait_for_leader().await, leader);
}

/// Only the leader keeps lease time; a follower forwards KeepAlive and
/// TimeToLive to it, as etcd's followers do, so clients may use any member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_calls_work_through_a_follower() {
    use ringkv_proto::etcdserverpb::lease_client::LeaseClient;

    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let endpoint = cluster.endpoint(follower);
    let mut lease = LeaseClient::new(channel(&endpoint).await);
    let granted = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect("grant through a follower")
        .into_inner();
    assert_eq!(granted.ttl, 30);
    let mut kv = support::kv_client(&endpoint).await;
    kv.put(pb::PutRequest {
        key: b"leased".to_vec(),
        value: b"v".to_vec(),
        lease: granted.id,
        ..Default::default()
    })
    .await
    .expect("put with the lease");

    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    let mut responses = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("keep-alive stream")
        .into_inner();
    for _ in 0..3 {
        requests
            .send(pb::LeaseKeepAliveRequest { id: granted.id })
            .await
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .expect("a keep-alive answer")
            .expect("no stream error")
            .expect("a response");
        assert_eq!((response.id, response.ttl), (granted.id, 30));
        let header = response.header.unwrap();
        let follower_id = cluster.status(follower).await.unwrap().header.unwrap().member_id;
        assert_eq!(
            header.member_id, follower_id,
            "the follower answers with its own header"
        );
    }
    requests.send(pb::LeaseKeepAliveRequest { id: 12345 }).await.unwrap();
    let unknown = responses.message().await.unwrap().unwrap();
    assert_eq!(unknown.ttl, 0, "an unknown lease answers TTL 0");

    let ttl = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: granted.id,
            keys: true,
        })
        .await
        .expect("time-to-live through a follower")
        .into_inner();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(ttl.ttl > 25 && ttl.ttl <= 30, "{ttl:?}");
    assert_eq!(ttl.keys, vec![b"leased".to_vec()]);

    let (ok, text) = support::etcdctl_output(
        &endpoint,
        "5s",
        &["lease", "keep-alive", "--once", &format!("{:x}", granted.id)],
        None,
    );
    assert!(ok && text.contains("keepalived with TTL(30)"), "{text}");
}

/// Every `s/` key with its value, read serializably from `endpoint`'s own store.
async fn local_keys(endpoint: &str) -> BTreeMap<String, String> {
    let mut kv = support::kv_client(endpoint).await;
    let response = kv
        .range(pb::RangeRequest {
            key: b"s/".to_vec(),
            range_end: support::prefix_end(b"s/"),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("serializable range")
        .into_inner();
    response
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key.clone()).unwrap(),
                String::from_utf8(kv.value.clone()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_log_catches_up_from_a_snapshot() {
    // Members keep 20 entries for laggards: a follower that misses hundreds of
    // writes can only catch up from the leader's page store.
    let mut cluster = Cluster::start(3, &["--snapshot-count", "20"]);
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);

    let mut kv = support::kv_client(&cluster.endpoint(leader)).await;
    let mut expected = BTreeMap::new();
    for i in 0..400 {
        let (key, value) = (format!("s/{i:04}"), format!("v{i}"));
        kv.put(put(&key, &value)).await.expect("put");
        expected.insert(key, value);
    }
    kv.delete_range(pb::DeleteRangeRequest {
        key: b"s/0000".to_vec(),
        range_end: b"s/0050".to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete");
    expected.retain(|key, _| key.as_str() >= "s/0050");
    let mut leases =
        ringkv_proto::etcdserverpb::lease_client::LeaseClient::new(channel(&cluster.endpoint(leader)).await);
    let lease = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .expect("lease grant")
        .into_inner()
        .id;
    kv.put(pb::PutRequest {
        lease,
        ..put("s/leased", "l")
    })
    .await
    .expect("put with lease");
    expected.insert("s/leased".into(), "l".into());
    let revision = kv
        .put(put("s/last", "x"))
        .await
        .expect("put")
        .into_inner()
        .header
        .unwrap()
        .revision;
    expected.insert("s/last".into(), "x".into());
    kv.compact(pb::CompactionRequest {
        revision: revision - 100,
        physical: true,
    })
    .await
    .expect("compact");
    // The leader's page-store commits (every 100 ms) release its log behind them.
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.start_members(&[follower]);
    let follower_endpoint = cluster.endpoint(follower);
    assert_eq!(local_keys(&follower_endpoint).await, expected);
    assert!(cluster.metric(follower, "etcd_network_snapshot_receive_success") >= 1);
    assert!(cluster.metric(leader, "etcd_network_snapshot_send_success") >= 1);
    let mut follower_leases =
        ringkv_proto::etcdserverpb::lease_client::LeaseClient::new(channel(&follower_endpoint).await);
    let listed = follower_leases
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .expect("lease list")
        .into_inner();
    assert!(
        listed.leases.iter().any(|l| l.id == lease),
        "the lease came with the snapshot"
    );

    // It replicates on from the snapshot: a write through it reads everywhere.
    let mut through_follower = support::kv_client(&follower_endpoint).await;
    through_follower
        .put(put("s/after", "a"))
        .await
        .expect("put via the follower");
    expected.insert("s/after".into(), "a".into());
    for index in 0..3 {
        assert_eq!(get(&cluster.endpoint(index), "s/after").await, Some(b"a".to_vec()));
    }
    cluster.wait_converged(SETTLE_TIMEOUT).await;

    // A crash after the install: it restarts from the installed store and WAL.
    cluster.kill(follower);
    cluster.start_members(&[follower]);
    assert_eq!(local_keys(&cluster.endpoint(follower)).await, expected);
    cluster.wait_converged(SETTLE_TIMEOUT).await;
}
