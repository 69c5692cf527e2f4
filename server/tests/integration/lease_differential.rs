//! Differential test of the Lease service against real etcd: the same random
//! grants (client-chosen ids, so both sides use the same ones), revokes,
//! keep-alives, time-to-live and lease list calls, mixed with puts, txns and
//! deletes that attach and detach keys, must get the same answers: ids, TTLs,
//! attached keys, header revisions, error codes and messages.
//!
//! Ignored because they must differ: the raft term; the remaining TTL of
//! TimeToLive (a clock reading; both must lie within the granted TTL); and the
//! order of keys and leases, which etcd takes from Go maps and expiry times.
//! TTLs are long, so nothing expires during the run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use tonic::transport::Channel;

use crate::support;

const OPERATIONS_PER_SEED: usize = 400;
const SEEDS: [u64; 2] = [7, 8];
const KEYS: [&[u8]; 5] = [b"a", b"b", b"c", b"d", b"e"];
/// Few ids, so grants collide and revokes hit; negative and large ones too.
const IDS: [i64; 5] = [1, 2, 0x7fff_ffff_ffff_ffff, -3, 0x694d_0000_0000_0001];
/// Long enough that no lease expires during the run, plus the too-large edge.
const TTLS: [i64; 4] = [60, 3600, 9_000_000_000, 9_000_000_001];

#[derive(Debug, Clone)]
enum Operation {
    Grant(pb::LeaseGrantRequest),
    Revoke(pb::LeaseRevokeRequest),
    KeepAlive(pb::LeaseKeepAliveRequest),
    TimeToLive(pb::LeaseTimeToLiveRequest),
    Leases,
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
}

#[derive(Debug, PartialEq)]
enum Answer {
    Grant(pb::LeaseGrantResponse),
    Revoke(pb::LeaseRevokeResponse),
    KeepAlive(pb::LeaseKeepAliveResponse),
    TimeToLive(pb::LeaseTimeToLiveResponse),
    Leases(pb::LeaseLeasesResponse),
    Put(pb::PutResponse),
    Delete(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Error { code: tonic::Code, message: String },
}

struct Client {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
}

impl Client {
    async fn connect(endpoint: &str) -> Client {
        let kv = support::kv_client(endpoint).await;
        let channel = Channel::from_shared(endpoint.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap();
        Client {
            kv,
            lease: LeaseClient::new(channel),
        }
    }

    async fn send(&mut self, operation: &Operation) -> Answer {
        let answer = match operation.clone() {
            Operation::Grant(r) => self.lease.lease_grant(r).await.map(|r| Answer::Grant(r.into_inner())),
            Operation::Revoke(r) => self.lease.lease_revoke(r).await.map(|r| Answer::Revoke(r.into_inner())),
            Operation::KeepAlive(r) => self.keep_alive_once(r).await.map(Answer::KeepAlive),
            Operation::TimeToLive(r) => self
                .lease
                .lease_time_to_live(r)
                .await
                .map(|r| Answer::TimeToLive(r.into_inner())),
            Operation::Leases => self
                .lease
                .lease_leases(pb::LeaseLeasesRequest {})
                .await
                .map(|r| Answer::Leases(r.into_inner())),
            Operation::Put(r) => self.kv.put(r).await.map(|r| Answer::Put(r.into_inner())),
            Operation::Delete(r) => self.kv.delete_range(r).await.map(|r| Answer::Delete(r.into_inner())),
            Operation::Txn(r) => self.kv.txn(r).await.map(|r| Answer::Txn(r.into_inner())),
        };
        normalize(answer.unwrap_or_else(|status| Answer::Error {
            code: status.code(),
            message: status.message().to_string(),
        }))
    }

    /// One request on its own KeepAlive stream, as `etcdctl lease keep-alive --once`.
    async fn keep_alive_once(
        &mut self,
        request: pb::LeaseKeepAliveRequest,
    ) -> Result<pb::LeaseKeepAliveResponse, tonic::Status> {
        let stream = futures_lite::stream::once(request);
        let mut responses = self.lease.lease_keep_alive(stream).await?.into_inner();
        Ok(responses.message().await?.expect("one answer"))
    }
}

/// Drops what may legitimately differ (see the module comment).
fn normalize(mut answer: Answer) -> Answer {
    let header = match &mut answer {
        Answer::Grant(r) => &mut r.header,
        Answer::Revoke(r) => &mut r.header,
        Answer::KeepAlive(r) => &mut r.header,
        Answer::TimeToLive(r) => {
            if r.ttl >= 0 {
                assert!(r.ttl <= r.granted_ttl + 1, "remaining {} of {}", r.ttl, r.granted_ttl);
                r.ttl = 0;
            }
            r.keys.sort();
            &mut r.header
        }
        Answer::Leases(r) => {
            r.leases.sort_by_key(|status| status.id);
            &mut r.header
        }
        Answer::Put(r) => &mut r.header,
        Answer::Delete(r) => &mut r.header,
        Answer::Txn(r) => &mut r.header,
        Answer::Error { .. } => return answer,
    };
    if let Some(header) = header {
        header.raft_term = 0;
    }
    answer
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

/// Mostly a known id, sometimes none or an unknown one.
fn lease_of_put(rng: &mut StdRng) -> i64 {
    match rng.gen_range(0..10) {
        0..=2 => 0,
        3 => 999,
        _ => pick(rng, &IDS),
    }
}

fn put_request(rng: &mut StdRng) -> pb::PutRequest {
    let ignore_lease = rng.gen_ratio(1, 8);
    pb::PutRequest {
        key: pick(rng, &KEYS).to_vec(),
        value: vec![rng.gen()],
        lease: if ignore_lease { 0 } else { lease_of_put(rng) },
        prev_kv: rng.gen_ratio(1, 4),
        ignore_lease,
        ..Default::default()
    }
}

fn operation(rng: &mut StdRng) -> Operation {
    match rng.gen_range(0..20) {
        0..=3 => Operation::Grant(pb::LeaseGrantRequest {
            ttl: pick(rng, &TTLS),
            id: pick(rng, &IDS),
        }),
        4..=5 => Operation::Revoke(pb::LeaseRevokeRequest { id: pick(rng, &IDS) }),
        6 => Operation::KeepAlive(pb::LeaseKeepAliveRequest { id: pick(rng, &IDS) }),
        7..=8 => Operation::TimeToLive(pb::LeaseTimeToLiveRequest {
            id: pick(rng, &IDS),
            keys: rng.gen_ratio(3, 4),
        }),
        9 => Operation::Leases,
        10..=15 => Operation::Put(put_request(rng)),
        16..=17 => Operation::Delete(pb::DeleteRangeRequest {
            key: pick(rng, &KEYS).to_vec(),
            ..Default::default()
        }),
        _ => Operation::Txn(pb::TxnRequest {
            success: (0..rng.gen_range(1..3))
                .map(|_| pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(put_request(rng))),
                })
                .collect(),
            compare: vec![pb::Compare {
                target: pb::compare::CompareTarget::Lease as i32,
                key: pick(rng, &KEYS).to_vec(),
                target_union: Some(pb::compare::TargetUnion::Lease(pick(rng, &IDS))),
                ..Default::default()
            }],
            failure: vec![],
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_lease_operations_answer_exactly_as_etcd() {
    for seed in SEEDS {
        let etcd = support::Etcd::start();
        let dir = tempfile::tempdir().unwrap();
        let ringkv = support::Ringkv::start(dir.path(), &[]);
        let mut expected_client = Client::connect(&etcd.endpoint()).await;
        let mut actual_client = Client::connect(&ringkv.endpoint()).await;
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut granted, mut revoked, mut listed_keys) = (0, 0, 0);
        for step in 0..OPERATIONS_PER_SEED {
            let operation = operation(&mut rng);
            let expected = expected_client.send(&operation).await;
            let actual = actual_client.send(&operation).await;
            assert_eq!(actual, expected, "seed {seed}, step {step}: {operation:?}");
            match &expected {
                Answer::Grant(_) => granted += 1,
                Answer::Revoke(_) => revoked += 1,
                Answer::TimeToLive(r) if !r.keys.is_empty() => listed_keys += 1,
                _ => {}
            }
        }
        // The run covered what it is for, not just errors.
        assert!(
            granted > 10 && revoked > 3 && listed_keys > 3,
            "{granted} {revoked} {listed_keys}"
        );
    }
}

/// The answers that depend on the server's own choices or the minimum TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_ttl_and_server_chosen_ids_answer_as_etcd() {
    let etcd = support::Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(dir.path(), &[]);
    let mut expected_client = Client::connect(&etcd.endpoint()).await;
    let mut actual_client = Client::connect(&ringkv.endpoint()).await;
    for ttl in [-5, 0, 1, 2] {
        let grant = Operation::Grant(pb::LeaseGrantRequest { ttl, id: 77 });
        let revoke = Operation::Revoke(pb::LeaseRevokeRequest { id: 77 });
        for operation in [grant, revoke] {
            let expected = expected_client.send(&operation).await;
            assert_eq!(actual_client.send(&operation).await, expected, "{operation:?}");
        }
    }
    // A server-chosen id differs; everything else must not.
    let grant = Operation::Grant(pb::LeaseGrantRequest { ttl: 30, id: 0 });
    let mut answers = Vec::new();
    for client in [&mut expected_client, &mut actual_client] {
        let Answer::Grant(mut response) = client.send(&grant).await else {
            panic!("grant failed");
        };
        assert!(response.id > 0);
        response.id = 0;
        answers.push(response);
    }
    assert_eq!(answers[0], answers[1]);
}
