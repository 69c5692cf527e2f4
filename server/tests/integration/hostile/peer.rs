//! The peer port: whoever can reach it cannot stop, stall or starve a member.
//! Each test attacks a member of a real 3-member cluster over raw TCP while
//! clients keep writing, then checks that writes went on meanwhile, that every
//! member still serves and kept every acknowledged write, that the attack was
//! counted on /metrics, that its warnings were rate limited, and that the
//! attacked member restarts cleanly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::eraftpb::{Message, MessageType};
use ringkv_proto::etcdserverpb as pb;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::cluster::Cluster;
use crate::support::{self, kv_client, kv_client_once, put_request};

/// How long each attack lasts while clients write.
const ATTACK: Duration = Duration::from_secs(8);
/// Bound on the wait for the members to agree again afterwards.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The peer port's raft message frame kind.
const KIND_RAFT: u8 = 1;

type Acknowledged = Arc<Mutex<BTreeMap<String, String>>>;

/// One peer-wire frame: length, crc32, payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn hello(cluster_id: u64, from: u64, to: u64) -> Vec<u8> {
    let mut payload = cluster_id.to_be_bytes().to_vec();
    payload.extend_from_slice(&from.to_be_bytes());
    payload.extend_from_slice(&to.to_be_bytes());
    frame(&payload)
}

fn raft_frame(message: &Message) -> Vec<u8> {
    let mut payload = vec![KIND_RAFT];
    message.encode(&mut payload).unwrap();
    frame(&payload)
}

/// A frame header announcing `length` bytes, and nothing after it.
fn claim(length: u32) -> Vec<u8> {
    let mut out = length.to_be_bytes().to_vec();
    out.extend_from_slice(&[0; 4]);
    out
}

/// Who is who: the cluster id, each member's id, the leader's index and term.
struct Ids {
    cluster_id: u64,
    member_ids: Vec<u64>,
    leader: usize,
    term: u64,
}

async fn ids(cluster: &Cluster) -> Ids {
    let leader = cluster.wait_for_leader().await;
    let mut member_ids = Vec::new();
    let mut cluster_id = 0;
    let mut term = 0;
    for index in 0..cluster.members.len() {
        let status = cluster.status(index).await.expect("status");
        let header = status.header.expect("a header");
        member_ids.push(header.member_id);
        cluster_id = header.cluster_id;
        term = term.max(status.raft_term);
    }
    Ids {
        cluster_id,
        member_ids,
        leader,
        term,
    }
}

/// Opens a connection to member `index`'s peer port and writes `bytes`; the
/// connection stays open while the returned stream lives.
async fn send(cluster: &Cluster, index: usize, bytes: &[u8]) -> Option<TcpStream> {
    let port = cluster.members[index].listen_peer_port;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    // A member that closed the connection already is fine.
    let _ = stream.write_all(bytes).await;
    Some(stream)
}

/// Puts unique keys through `endpoint` until `stop`, recording acknowledged ones.
async fn write_until(endpoint: String, writer: usize, stop: Instant, acked: Acknowledged) {
    let mut seq = 0u64;
    while Instant::now() < stop {
        let Some(mut kv) = kv_client_once(&endpoint).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while Instant::now() < stop {
            let (key, value) = (format!("w/{writer}/{seq:06}"), seq.to_string());
            seq += 1;
            match tokio::time::timeout(Duration::from_secs(3), kv.put(put_request(&key, &value))).await {
                Ok(Ok(_)) => {
                    acked.lock().unwrap().insert(key, value);
                }
                Ok(Err(_)) | Err(_) => break, // reconnect; this put's outcome is unknown
            }
        }
    }
}

/// Runs `attack` for ATTACK while one client writes through each member, and
/// checks that the writes went on meanwhile.
async fn under_attack<F: std::future::Future<Output = ()>>(cluster: &Cluster, attack: F) -> Acknowledged {
    let acked = Acknowledged::default();
    let stop = Instant::now() + ATTACK;
    let writers: Vec<_> = (0..3)
        .map(|writer| tokio::spawn(write_until(cluster.endpoint(writer), writer, stop, Arc::clone(&acked))))
        .collect();
    // Writes are flowing before the attack starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = acked.lock().unwrap().len();
    tokio::time::timeout(ATTACK, attack).await.ok();
    for writer in writers {
        writer.await.unwrap();
    }
    let after = acked.lock().unwrap().len();
    assert!(
        after >= before + 100,
        "writes went on during the attack ({before}, then {after})"
    );
    acked
}

/// Every member still runs and serves, holds every acknowledged write, and
/// member `attacked` restarts cleanly and catches up.
async fn assert_unharmed(cluster: &mut Cluster, acked: &Acknowledged, attacked: usize) {
    for (index, member) in cluster.members.iter_mut().enumerate() {
        let process = member.process.as_mut().expect("started");
        assert_eq!(process.exited(), None, "member {index} exited:\n{}", process.log.text());
    }
    for index in 0..3 {
        super::assert_serves(&cluster.endpoint(index)).await;
    }
    cluster.wait_converged(SETTLE_TIMEOUT).await;
    let acked = acked.lock().unwrap().clone();
    for index in 0..3 {
        assert_all_present(&cluster.endpoint(index), &acked).await;
    }
    cluster.kill(attacked);
    cluster.start_members(&[attacked]);
    cluster.wait_for_leader().await;
    cluster.wait_converged(SETTLE_TIMEOUT).await;
    assert_all_present(&cluster.endpoint(attacked), &acked).await;
}

/// Every acknowledged key, read linearizably from `endpoint`.
async fn assert_all_present(endpoint: &str, acked: &BTreeMap<String, String>) {
    let mut kv = kv_client(endpoint).await;
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
            let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
            (text(&kv.key), text(&kv.value))
        })
        .collect();
    for (key, value) in acked {
        assert_eq!(stored.get(key), Some(value), "acknowledged {key} lost on {endpoint}");
    }
}

/// Lines of member `index`'s log holding `text`.
fn log_lines(cluster: &Cluster, index: usize, text: &str) -> usize {
    let process = cluster.members[index].process.as_ref().expect("started");
    process.log.text().lines().filter(|line| line.contains(text)).count()
}

/// Warnings of one kind are written at most once a second (peer::log_limit).
fn assert_rate_limited(cluster: &Cluster, index: usize, text: &str) {
    let lines = log_lines(cluster, index, text);
    assert!(lines >= 1, "the attack was logged");
    let seconds = ATTACK.as_secs() as usize + 10;
    assert!(lines <= seconds, "{lines} warnings in about {seconds} s");
}

/// Resident memory of member `index`, in bytes.
fn resident_bytes(cluster: &Cluster, index: usize) -> u64 {
    let pid = cluster.members[index].process.as_ref().expect("started").pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_claiming_64_mib_frames_cost_nothing() {
    let mut cluster = Cluster::start(3, &[]);
    let ids = ids(&cluster).await;
    let target = (ids.leader + 1) % 3;
    let resident_before = resident_bytes(&cluster, target);
    let held = Arc::new(Mutex::new(Vec::new()));
    let attack = async {
        for round in 0..20 {
            for _ in 0..50 {
                // Before any hello, and after a hello from a real member.
                let claim = claim(64 << 20);
                if let Some(stream) = send(&cluster, target, &claim).await {
                    held.lock().unwrap().push(stream);
                }
                let mut introduced = hello(ids.cluster_id, ids.member_ids[ids.leader], ids.member_ids[target]);
                introduced.extend(claim);
                if let Some(stream) = send(&cluster, target, &introduced).await {
                    held.lock().unwrap().push(stream);
                }
            }
            if round % 5 == 4 {
                // What the member has not closed stays open.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(ATTACK).await;
    };
    let acked = under_attack(&cluster, attack).await;
    let grown = resident_bytes(&cluster, target).saturating_sub(resident_before);
    assert!(
        grown < 64 << 20,
        "{grown} bytes more resident after 2,000 claims of 64 MiB"
    );
    assert!(cluster.metric(target, "ringkv_peer_connections_rejected_total") >= 1000);
    assert_rate_limited(&cluster, target, "peer connection closed");
    drop(held);
    assert_unharmed(&mut cluster, &acked, target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_peer_port_is_dropped() {
    let mut cluster = Cluster::start(3, &[]);
    let ids = ids(&cluster).await;
    let target = ids.leader;
    let attack = async {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let deadline = Instant::now() + ATTACK - Duration::from_secs(1);
        while Instant::now() < deadline {
            let length = (random() % 4096) as usize;
            let noise: Vec<u8> = (0..length).map(|_| random() as u8).collect();
            // Noise alone; and noise after a hello from a real member, as
            // frames with a valid checksum and as raw bytes.
            let _ = send(&cluster, target, &noise).await;
            let from = ids.member_ids[(target + 1) % 3];
            let mut introduced = hello(ids.cluster_id, from, ids.member_ids[target]);
            if random() % 2 == 0 {
                introduced.extend(frame(&noise));
            } else {
                introduced.extend(&noise);
            }
            let _ = send(&cluster, target, &introduced).await;
        }
    };
    let acked = under_attack(&cluster, attack).await;
    assert!(cluster.metric(target, "ringkv_peer_connections_rejected_total") >= 100);
    assert_rate_limited(&cluster, target, "peer connection closed");
    assert_unharmed(&mut cluster, &acked, target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_from_a_non_member_is_refused() {
    let mut cluster = Cluster::start(3, &[]);
    let ids = ids(&cluster).await;
    let target = (ids.leader + 1) % 3;
    let stranger = 0x5eed_0000_0000_0001u64;
    let attack = async {
        let deadline = Instant::now() + ATTACK - Duration::from_secs(1);
        while Instant::now() < deadline {
            // It claims to lead a later term: followed, it would stop the
            // member hearing from its real leader.
            let heartbeat = Message {
                msg_type: MessageType::MsgHeartbeat as i32,
                from: stranger,
                to: ids.member_ids[target],
                term: ids.term + 10,
                ..Default::default()
            };
            let mut bytes = hello(ids.cluster_id, stranger, ids.member_ids[target]);
            bytes.extend(raft_frame(&heartbeat));
            let _ = send(&cluster, target, &bytes).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let acked = under_attack(&cluster, attack).await;
    let status = cluster.status(target).await.expect("status");
    assert!(status.raft_term < ids.term + 10, "the stranger's term was never heard");
    assert!(cluster.metric(target, "ringkv_peer_connections_rejected_total") >= 100);
    assert_rate_limited(&cluster, target, "is not a member this member knows");
    assert_unharmed(&mut cluster, &acked, target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_heartbeat_committing_past_the_log_is_dropped() {
    let mut cluster = Cluster::start(3, &[]);
    let ids = ids(&cluster).await;
    let target = (ids.leader + 1) % 3;
    let leader_id = ids.member_ids[ids.leader];
    let attack = async {
        let deadline = Instant::now() + ATTACK - Duration::from_secs(1);
        let mut term = ids.term;
        while Instant::now() < deadline {
            // An election under load would leave an older term's heartbeat to
            // raft, which ignores it: keep to the member's term.
            if let Some(status) = cluster.status(target).await {
                term = term.max(status.raft_term);
            }
            // From the leader's own id, at its term: raft-rs 0.7 would commit
            // it unchecked, `fatal!("to_commit ... is out of range")`.
            let heartbeat = Message {
                msg_type: MessageType::MsgHeartbeat as i32,
                from: leader_id,
                to: ids.member_ids[target],
                term,
                commit: 1 << 40,
                ..Default::default()
            };
            let mut bytes = hello(ids.cluster_id, leader_id, ids.member_ids[target]);
            for _ in 0..10 {
                bytes.extend(raft_frame(&heartbeat));
            }
            let _ = send(&cluster, target, &bytes).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let acked = under_attack(&cluster, attack).await;
    assert!(cluster.metric(target, "ringkv_peer_raft_messages_dropped_total") >= 100);
    assert_rate_limited(&cluster, target, "raft message from a peer dropped");
    assert_unharmed(&mut cluster, &acked, target).await;
}

/// Runs etcdctl against `endpoint` until it succeeds, retrying (bounded) while
/// it fails with one of `retry_on`; its output.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_catches_up_from_a_leader_added_since() {
    // Member `behind` is stopped while a new member joins, becomes a voter
    // and leads. Restarted, `behind` knows only the members of its own
    // applied index: the leader's hello comes from an id it does not know,
    // which its peers vouch for (peer::admission), and `behind` must answer
    // it before its log shows it a member. (Stopped, not killed: etcd
    // adds no member while a voter is disconnected, and the leader's
    // connection to a stopped process stays up.)
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader().await;
    let behind = (leader + 1) % 3;
    cluster.signal(behind, libc::SIGSTOP);
    let leader_endpoint = cluster.endpoint(leader);
    let joiner = cluster.add_slot();
    let everyone: Vec<usize> = (0..=joiner).collect();
    let peer_url = format!("--peer-urls={}", cluster.members[joiner].peer_url());
    let unhealthy = "etcdserver: unhealthy cluster";
    let add = ["member", "add", "m3", "--learner", &peer_url];
    let output = etcdctl_until_ok(&leader_endpoint, &add, &[unhealthy]).await;
    let id = output
        .split_whitespace()
        .skip_while(|word| *word != "Member")
        .nth(1)
        .and_then(|id| u64::from_str_radix(id, 16).ok())
        .unwrap_or_else(|| panic!("no member id in {output:?}"));
    let joining = cluster.spawn_joining(joiner, &everyone);
    let process = tokio::task::block_in_place(|| joining.ready());
    cluster.started(joiner, process);
    let not_in_sync = "etcdserver: can only promote a learner member which is in sync with leader";
    let promote = ["member", "promote", &format!("{id:x}")];
    etcdctl_until_ok(&leader_endpoint, &promote, &[not_in_sync, unhealthy]).await;
    let move_leader = ["move-leader", &format!("{id:x}")];
    etcdctl_until_ok(
        &leader_endpoint,
        &move_leader,
        &["no leader", "not leader", "timed out"],
    )
    .await;
    // (Not `wait_for_leader`: the stopped member answers no one.)
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while cluster.status(joiner).await.map(|status| status.leader) != Some(id) {
        assert!(Instant::now() < deadline, "the new member does not lead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut kv = kv_client(&cluster.endpoint(joiner)).await;
    kv.put(put_request("while-behind", "written")).await.expect("put");

    // Serving means it heard from the leader: it published its attributes
    // through it and applied everything committed when it started.
    cluster.kill(behind);
    tokio::task::block_in_place(|| cluster.start_members(&[behind]));
    assert_eq!(
        support::get(&cluster.endpoint(behind), "while-behind").await,
        Some(b"written".to_vec())
    );
    assert!(log_lines(&cluster, behind, "is not a member this member knows") >= 1);
    assert!(log_lines(&cluster, behind, "answering a member vouched for by peers") >= 1);
}
