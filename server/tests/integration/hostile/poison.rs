//! Poison pills: requests and raft entries that used to stop every member for
//! good. What the client core accepts, apply decodes and applies; what a peer
//! forges into the log is skipped the same way on every member, and replayed
//! and skipped again after a restart.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType,
};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::{raft_request, RaftRequest};

use super::{assert_serves, value_at, WAIT};
use crate::support::cluster::Cluster;
use pb::request_op::Request as Op;

/// The most transactions the client core accepts one inside another
/// (`apply::check::TXN_DEPTH_MAX`).
const TXN_DEPTH_MAX: usize = 32;

/// A Txn `depth` levels deep (the outermost included) putting `key` innermost.
fn nested_txn(depth: usize, key: &str) -> pb::TxnRequest {
    let mut op = Op::RequestPut(pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: format!("depth {depth}").into_bytes(),
        ..Default::default()
    });
    for _ in 1..depth {
        op = Op::RequestTxn(pb::TxnRequest {
            success: vec![pb::RequestOp { request: Some(op) }],
            ..Default::default()
        });
    }
    pb::TxnRequest {
        success: vec![pb::RequestOp { request: Some(op) }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_txns_are_bounded_where_they_enter_and_every_member_applies_what_was_accepted() {
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    let mut client = crate::support::kv_client(&cluster.endpoint(0)).await;

    let deepest = nested_txn(TXN_DEPTH_MAX, "deep");
    client.txn(deepest).await.expect("the deepest accepted txn commits");

    // 50 levels still decode from a gRPC message (prost's limit is 100 deep),
    // and were fatal at apply one level deeper inside the raft entry.
    for depth in [TXN_DEPTH_MAX + 1, 50] {
        let status = client.txn(nested_txn(depth, "too-deep")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "depth {depth}");
        assert_eq!(status.message(), "etcdserver: too many nested txns in txn request");
    }
    // Deeper than prost decodes at all: the gRPC layer's unmarshalling error.
    let status = client.txn(nested_txn(51, "too-deep")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert!(
        status.message().starts_with("grpc: error unmarshalling request"),
        "{status:?}"
    );

    for index in 0..3 {
        assert_serves(&cluster.endpoint(index)).await;
        let value = value_at(&cluster.endpoint(index), "deep").await;
        assert_eq!(value.as_deref(), Some(format!("depth {TXN_DEPTH_MAX}").as_bytes()));
        assert_eq!(value_at(&cluster.endpoint(index), "too-deep").await, None);
    }

    restart_all(&mut cluster);
    for index in 0..3 {
        assert_serves(&cluster.endpoint(index)).await;
        assert!(value_at(&cluster.endpoint(index), "deep").await.is_some());
    }
}

/// A peer connection to member `to`'s peer port that says it is member `from`.
struct ForgedPeer {
    stream: TcpStream,
    from: u64,
    to: u64,
}

impl ForgedPeer {
    fn connect(port: u16, cluster_id: u64, from: u64, to: u64) -> ForgedPeer {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the peer port accepts");
        let mut hello = Vec::with_capacity(24);
        for word in [cluster_id, from, to] {
            hello.extend_from_slice(&word.to_be_bytes());
        }
        stream.write_all(&frame(&hello)).expect("hello sent");
        ForgedPeer { stream, from, to }
    }

    /// Proposes `entries` as a follower forwards proposals to its leader.
    fn propose(&mut self, entries: Vec<Entry>) {
        let message = Message {
            msg_type: MessageType::MsgPropose as i32,
            from: self.from,
            to: self.to,
            entries,
            ..Default::default()
        };
        let mut payload = vec![1u8]; // kind: a raft message
        payload.extend_from_slice(&message.encode_to_vec());
        self.stream.write_all(&frame(&payload)).expect("proposal sent");
    }
}

/// A peer frame: length and crc32 of the payload, both u32 big endian.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn normal(data: Vec<u8>) -> Entry {
    Entry {
        entry_type: EntryType::EntryNormal as i32,
        data,
        ..Default::default()
    }
}

fn request(id: u64, request: Option<raft_request::Request>) -> Vec<u8> {
    RaftRequest {
        id,
        request,
        auth_header: None,
    }
    .encode_to_vec()
}

/// Waits until every member counts at least `skipped` skipped entries.
fn wait_skipped(cluster: &Cluster, skipped: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let counts: Vec<u64> = (0..3)
            .map(|index| cluster.metric(index, "ringkv_raft_entries_skipped_total"))
            .collect();
        if counts.iter().all(|&count| count >= skipped) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "entries skipped per member: {counts:?}, wanted {skipped}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn restart_all(cluster: &mut Cluster) {
    for index in 0..3 {
        cluster.kill(index);
    }
    tokio::task::block_in_place(|| cluster.start_members(&[0, 1, 2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_peer_forges_are_skipped_by_every_member_and_again_after_a_restart() {
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    let mut client = crate::support::kv_client(&cluster.endpoint(0)).await;
    client
        .put(crate::support::put_request("before", "acknowledged"))
        .await
        .expect("put before");

    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let status = |index| cluster.status(index);
    let leader_header = status(leader)
        .await
        .and_then(|status| status.header)
        .expect("the leader's Status");
    let follower_id = status(follower)
        .await
        .and_then(|status| status.header)
        .expect("a follower's Status")
        .member_id;
    let mut peer = ForgedPeer::connect(
        cluster.members[leader].listen_peer_port,
        leader_header.cluster_id,
        follower_id,
        leader_header.member_id,
    );

    let empty_key = raft_request::Request::Put(pb::PutRequest::default());
    peer.propose(vec![
        // Not a request at all.
        normal(vec![0xff; 16]),
        // A Txn one level past what prost decodes inside a RaftRequest.
        normal(request(1, Some(raft_request::Request::Txn(nested_txn(50, "forged"))))),
        // No request.
        normal(request(2, None)),
        // A put the client core refuses (empty key).
        normal(request(3, Some(empty_key))),
    ]);
    wait_skipped(&cluster, 4);

    // Conf changes one at a time: raft takes one while another is pending.
    let v1 = ConfChange {
        change_type: ConfChangeType::AddNode as i32,
        node_id: 99,
        ..Default::default()
    };
    peer.propose(vec![Entry {
        entry_type: EntryType::EntryConfChange as i32,
        data: v1.encode_to_vec(),
        ..Default::default()
    }]);
    wait_skipped(&cluster, 5);
    let v2 = ConfChangeV2 {
        changes: vec![ConfChangeSingle {
            change_type: ConfChangeType::AddNode as i32,
            node_id: 98,
        }],
        context: vec![0xff; 8], // not a ConfChangeContext
        ..Default::default()
    };
    peer.propose(vec![Entry {
        entry_type: EntryType::EntryConfChangeV2 as i32,
        data: v2.encode_to_vec(),
        ..Default::default()
    }]);
    wait_skipped(&cluster, 6);

    for index in 0..3 {
        assert_serves(&cluster.endpoint(index)).await;
        assert_eq!(
            value_at(&cluster.endpoint(index), "before").await.as_deref(),
            Some(&b"acknowledged"[..])
        );
        assert_eq!(value_at(&cluster.endpoint(index), "forged").await, None);
    }
    let mut client = crate::support::kv_client(&cluster.endpoint(follower)).await;
    client
        .put(crate::support::put_request("after", "acknowledged"))
        .await
        .expect("put after");
    // Nobody was added: the forged conf changes changed nothing.
    let channel = crate::support::channel(&cluster.endpoint(leader)).await;
    let members = pb::cluster_client::ClusterClient::new(channel)
        .member_list(pb::MemberListRequest { linearizable: false })
        .await
        .expect("MemberList")
        .into_inner()
        .members;
    assert_eq!(members.len(), 3, "{members:?}");

    drop(peer);
    restart_all(&mut cluster);
    for index in 0..3 {
        assert_serves(&cluster.endpoint(index)).await;
        for key in ["before", "after"] {
            assert_eq!(
                value_at(&cluster.endpoint(index), key).await.as_deref(),
                Some(&b"acknowledged"[..]),
                "{key} on member {index}"
            );
        }
    }
}
