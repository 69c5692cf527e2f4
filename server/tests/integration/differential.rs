//! Differential test against real etcd: the same random KV, Txn, Compact and Range
//! operations go to etcd (Debian's etcd-server) and to ringkv, and every response
//! must match field by field: kvs, count, more, revisions, versions, prev_kvs,
//! nested txn responses, and error codes and messages. Only the raft term is
//! ignored (etcd's first election happens at a different term).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

use pb::compare::{CompareTarget, TargetUnion};
use pb::request_op::Request as Op;

use crate::support;

const OPERATIONS_PER_SEED: usize = 1500;
const SEEDS: [u64; 3] = [1, 2, 3];
/// Few keys, so operations collide; sharing prefixes exercises ranges and prefixes.
const KEYS: [&[u8]; 10] = [
    b"a",
    b"ab",
    b"abc",
    b"abd",
    b"b",
    b"ba",
    b"c",
    b"k\xff",
    b"k\xff\xff",
    b"z",
];

#[derive(Debug, Clone)]
enum Operation {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
}

#[derive(Debug, PartialEq)]
enum Answer {
    Range(pb::RangeResponse),
    Put(pb::PutResponse),
    Delete(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compact(pb::CompactionResponse),
    Error { code: tonic::Code, message: String },
}

impl Answer {
    /// The store revision this answer reports, if any.
    fn revision(&self) -> Option<i64> {
        let header = match self {
            Answer::Range(r) => &r.header,
            Answer::Put(r) => &r.header,
            Answer::Delete(r) => &r.header,
            Answer::Txn(r) => &r.header,
            Answer::Compact(r) => &r.header,
            Answer::Error { .. } => return None,
        };
        header.as_ref().map(|h| h.revision)
    }

    fn without_raft_term(mut self) -> Answer {
        let header = match &mut self {
            Answer::Range(r) => &mut r.header,
            Answer::Put(r) => &mut r.header,
            Answer::Delete(r) => &mut r.header,
            Answer::Txn(r) => &mut r.header,
            Answer::Compact(r) => &mut r.header,
            Answer::Error { .. } => return self,
        };
        if let Some(header) = header {
            header.raft_term = 0;
        }
        self
    }
}

async fn send(client: &mut KvClient<Channel>, operation: &Operation) -> Answer {
    let answer = match operation.clone() {
        Operation::Range(r) => client.range(r).await.map(|r| Answer::Range(r.into_inner())),
        Operation::Put(r) => client.put(r).await.map(|r| Answer::Put(r.into_inner())),
        Operation::Delete(r) => client.delete_range(r).await.map(|r| Answer::Delete(r.into_inner())),
        Operation::Txn(r) => client.txn(r).await.map(|r| Answer::Txn(r.into_inner())),
        Operation::Compact(r) => client.compact(r).await.map(|r| Answer::Compact(r.into_inner())),
    };
    answer
        .unwrap_or_else(|status| Answer::Error {
            code: status.code(),
            message: status.message().to_string(),
        })
        .without_raft_term()
}

/// What the generator knows about the store, to aim revisions where they matter.
struct Aim {
    revision: i64,
    compacted: i64,
}

fn key(rng: &mut StdRng) -> Vec<u8> {
    KEYS[rng.gen_range(0..KEYS.len())].to_vec()
}

/// etcd's prefix end: increment the last byte that is not 0xff, dropping 0xff bytes after it.
fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().unwrap() += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

fn range_end(rng: &mut StdRng, key: &[u8]) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0..=3 => Vec::new(),
        4 | 5 => prefix_end(key),
        6 => vec![0],
        7 => key.to_vec(),
        _ => self::key(rng),
    }
}

fn revision(rng: &mut StdRng, aim: &Aim) -> i64 {
    match rng.gen_range(0..10) {
        0..=4 => 0,
        5 => -1,
        6 => aim.revision + rng.gen_range(0..3),
        _ => rng.gen_range((aim.compacted - 1).max(-1)..=aim.revision),
    }
}

fn range_request(rng: &mut StdRng, aim: &Aim) -> pb::RangeRequest {
    let key = if rng.gen_ratio(1, 20) { Vec::new() } else { key(rng) };
    let range_end = if rng.gen_ratio(1, 10) {
        if rng.gen_bool(0.5) {
            key.clone()
        } else {
            vec![0]
        }
    } else {
        range_end(rng, &key)
    };
    // key "\0" with range_end "\0": everything.
    let key = if rng.gen_ratio(1, 15) { vec![0] } else { key };
    let filter = |rng: &mut StdRng| {
        if rng.gen_ratio(1, 6) {
            rng.gen_range(0..=aim.revision + 1)
        } else {
            0
        }
    };
    pb::RangeRequest {
        key,
        range_end,
        limit: if rng.gen_ratio(1, 3) { rng.gen_range(-1..5) } else { 0 },
        revision: revision(rng, aim),
        sort_order: rng.gen_range(0..=2),
        sort_target: rng.gen_range(0..=4),
        serializable: rng.gen_bool(0.3),
        keys_only: rng.gen_ratio(1, 5),
        count_only: rng.gen_ratio(1, 8),
        min_mod_revision: filter(rng),
        max_mod_revision: filter(rng),
        min_create_revision: filter(rng),
        max_create_revision: filter(rng),
    }
}

fn put_request(rng: &mut StdRng) -> pb::PutRequest {
    let ignore_value = rng.gen_ratio(1, 10);
    let ignore_lease = rng.gen_ratio(1, 12);
    let value: Vec<u8> = if ignore_value && !rng.gen_ratio(1, 5) {
        Vec::new()
    } else {
        let len = rng.gen_range(0..12);
        (0..len).map(|_| rng.gen_range(b'a'..=b'e')).collect()
    };
    pb::PutRequest {
        key: if rng.gen_ratio(1, 40) { Vec::new() } else { key(rng) },
        value,
        // No leases exist yet: any id is unknown to both servers.
        lease: if rng.gen_ratio(1, 25) {
            rng.gen_range(1..1000)
        } else {
            0
        },
        prev_kv: rng.gen_bool(0.4),
        ignore_value,
        ignore_lease,
    }
}

fn delete_request(rng: &mut StdRng) -> pb::DeleteRangeRequest {
    let key = if rng.gen_ratio(1, 40) { Vec::new() } else { key(rng) };
    pb::DeleteRangeRequest {
        range_end: range_end(rng, &key),
        key,
        prev_kv: rng.gen_bool(0.5),
    }
}

fn compare(rng: &mut StdRng, aim: &Aim) -> pb::Compare {
    let target = rng.gen_range(0..=4);
    let target_union = match (rng.gen_ratio(1, 10), target) {
        // Occasionally a union that does not match the target.
        (true, _) => Some(TargetUnion::Version(rng.gen_range(0..3))),
        (_, t) if t == CompareTarget::Version as i32 => Some(TargetUnion::Version(rng.gen_range(0..4))),
        (_, t) if t == CompareTarget::Create as i32 => {
            Some(TargetUnion::CreateRevision(rng.gen_range(0..=aim.revision)))
        }
        (_, t) if t == CompareTarget::Mod as i32 => Some(TargetUnion::ModRevision(rng.gen_range(0..=aim.revision))),
        (_, t) if t == CompareTarget::Value as i32 => {
            let len = rng.gen_range(0..3);
            Some(TargetUnion::Value(
                (0..len).map(|_| rng.gen_range(b'a'..=b'e')).collect(),
            ))
        }
        _ => Some(TargetUnion::Lease(0)),
    };
    let key = key(rng);
    pb::Compare {
        result: rng.gen_range(0..=3),
        target,
        range_end: if rng.gen_ratio(1, 4) {
            range_end(rng, &key)
        } else {
            Vec::new()
        },
        key,
        target_union,
    }
}

fn request_op(rng: &mut StdRng, aim: &Aim, depth: u32) -> pb::RequestOp {
    let request = match rng.gen_range(0..10) {
        0..=2 => Op::RequestRange(range_request(rng, aim)),
        3..=5 => Op::RequestPut(put_request(rng)),
        6 | 7 => Op::RequestDeleteRange(delete_request(rng)),
        _ if depth < 2 => Op::RequestTxn(txn_request(rng, aim, depth + 1)),
        _ => Op::RequestPut(put_request(rng)),
    };
    pb::RequestOp { request: Some(request) }
}

fn txn_request(rng: &mut StdRng, aim: &Aim, depth: u32) -> pb::TxnRequest {
    let compares = rng.gen_range(0..3);
    let success = rng.gen_range(0..4);
    let failure = rng.gen_range(0..3);
    let mut request = pb::TxnRequest {
        compare: (0..compares).map(|_| compare(rng, aim)).collect(),
        success: (0..success).map(|_| request_op(rng, aim, depth)).collect(),
        failure: (0..failure).map(|_| request_op(rng, aim, depth)).collect(),
    };
    if depth == 0 && rng.gen_ratio(1, 60) {
        // Over the limit of 128 ops.
        request.success = (0..129)
            .map(|i| pb::RequestOp {
                request: Some(Op::RequestRange(pb::RangeRequest {
                    key: format!("r{i}").into_bytes(),
                    ..Default::default()
                })),
            })
            .collect();
    }
    if depth == 0 && rng.gen_ratio(1, 60) {
        // An empty op.
        request.failure.push(pb::RequestOp { request: None });
    }
    request
}

fn operation(rng: &mut StdRng, aim: &Aim) -> Operation {
    match rng.gen_range(0..100) {
        0..=29 => Operation::Range(range_request(rng, aim)),
        30..=54 => Operation::Put(put_request(rng)),
        55..=64 => Operation::Delete(delete_request(rng)),
        65..=94 => Operation::Txn(txn_request(rng, aim, 0)),
        _ => Operation::Compact(pb::CompactionRequest {
            revision: rng.gen_range((aim.compacted - 1).max(0)..=aim.revision + 1),
            physical: rng.gen_bool(0.5),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kv_operations_answer_exactly_as_etcd() {
    for seed in SEEDS {
        let etcd = support::Etcd::start();
        let data_dir = tempfile::tempdir().unwrap();
        let ringkv = support::Ringkv::start(data_dir.path(), &[]);
        let mut etcd_client = support::kv_client(&etcd.endpoint()).await;
        let mut ringkv_client = support::kv_client(&ringkv.endpoint()).await;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut aim = Aim {
            revision: 1,
            compacted: 0,
        };
        for step in 0..OPERATIONS_PER_SEED {
            let operation = operation(&mut rng, &aim);
            let expected = send(&mut etcd_client, &operation).await;
            let actual = send(&mut ringkv_client, &operation).await;
            assert_eq!(
                actual, expected,
                "seed {seed} step {step}: ringkv (left) differs from etcd (right) for {operation:?}"
            );
            if let Some(revision) = expected.revision() {
                aim.revision = aim.revision.max(revision);
            }
            if let (Operation::Compact(request), Answer::Compact(_)) = (&operation, &expected) {
                aim.compacted = request.revision;
            }
        }
        assert!(aim.revision > 100, "the workload wrote (revision {})", aim.revision);
    }
}

#[test]
fn prefix_end_follows_etcd() {
    assert_eq!(prefix_end(b"ab"), b"ac");
    assert_eq!(prefix_end(b"k\xff"), b"l");
    assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
}
